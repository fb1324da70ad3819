"""Everything about a rig that can be known without a VM.

`prepare` reads images and symbols, resolves every address, checks placement,
plans debug registers and the boot state. `kvmrig validate` stops here; a run
builds on the plan, so a rig that validates cannot fail for these reasons later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kvmrig.arch import registers
from kvmrig.arch.traits import Traits, traits
from kvmrig.arch.x86_64 import boot as x86
from kvmrig.errors import RigError
from kvmrig.machine import boot
from kvmrig.machine.debug import DebugPlan
from kvmrig.machine.images import LoadedImage, Symbols, check_placement, load_images
from kvmrig.machine.memory import host_ram
from kvmrig.rig.model import Address, Rig


@dataclass
class Plan:
    rig: Rig
    images: list[LoadedImage]
    symbols: Symbols
    entry: int
    traits: Traits
    boot: Any  # boot.BootPlan

    def resolve(self, addr: Address) -> int:
        return self.symbols.resolve(addr)


def _entry(rig: Rig, images: list[LoadedImage], symbols: Symbols) -> int:
    if rig.cpu is not None and rig.cpu.entry is not None:
        return symbols.resolve(rig.cpu.entry)
    for img in images:
        if img.entry is not None:
            return img.entry
    if images:
        return images[0].segments[0][0]
    return 0


def _all_addresses(rig: Rig):
    """Every Address in the rig, so unknown symbols fail at prepare time."""
    checks = [rig.expect]
    for point in (*rig.breakpoints, *rig.watchpoints):
        yield point.at
        if point.expect:
            checks.append(point.expect)
        if point.set:
            yield from (m.at for m in point.set.memory)
    for check in checks:
        yield from (m.at for m in check.memory)
    yield from rig.expect.executed
    yield from rig.expect.not_executed
    if rig.start_set is not None:
        yield from (m.at for m in rig.start_set.memory)
    if rig.start_call is not None:
        yield rig.start_call.to
        yield rig.start_call.return_to


def _names_symbol_in_regs(rig: Rig) -> bool:
    """Whether any register value _register_symbols looks at is a `sym:` (most
    rigs have none: then it has nothing to do, and is asked for every rig)."""
    sets = [rig.cpu, rig.start_set]
    checks = [rig.expect]
    for p in (*rig.breakpoints, *rig.watchpoints):
        sets.append(p.set)
        checks.append(p.expect)
    for s in sets:
        if s is not None:
            for _name, v, _mark in s.regs:
                if isinstance(v, Address):
                    return True
    for c in checks:
        if c is not None:
            for check in c.regs:
                if isinstance(check.value, Address):
                    return True
    return False


def _register_symbols(rig: Rig, symbols: Symbols) -> Rig:
    """The rig with every `sym:` register value (cpu.regs, set.regs, expected
    regs) replaced by its address, fitted to the register's width."""
    if not _names_symbol_in_regs(rig):
        return rig

    def value(name: str, v, mark):
        if not isinstance(v, Address):
            return v
        n = symbols.resolve(v)
        width = registers.lookup(rig.arch, name).width
        if not 0 <= n < 1 << width:
            raise RigError(f"{v} is {n:#x}, which does not fit in {name} ({width} bits)", mark)
        return n

    def sets(regs):
        if not any(isinstance(v, Address) for _name, v, _mark in regs):
            return regs
        return tuple((name, value(name, v, mark), mark) for name, v, mark in regs)

    def checks(state):
        if state is None or not any(isinstance(c.value, Address) for c in state.regs):
            return state
        return replace(state, regs=tuple(replace(c, value=value(c.name, c.value, c.mark)) for c in state.regs))

    def point(p):
        expect = checks(p.expect)
        set_regs = None if p.set is None else sets(p.set.regs)
        if expect is p.expect and (p.set is None or set_regs is p.set.regs):
            return p
        return replace(p, expect=expect, set=p.set if p.set is None else replace(p.set, regs=set_regs))

    def same(new: tuple, old: tuple) -> bool:
        return all(a is b for a, b in zip(new, old))

    cpu_regs = None if rig.cpu is None else sets(rig.cpu.regs)
    breakpoints = tuple(point(b) for b in rig.breakpoints)
    watchpoints = tuple(point(w) for w in rig.watchpoints)
    expect = checks(rig.expect)
    start_regs = None if rig.start_set is None else sets(rig.start_set.regs)
    if ((rig.cpu is None or cpu_regs is rig.cpu.regs) and same(breakpoints, rig.breakpoints)
            and same(watchpoints, rig.watchpoints) and expect is rig.expect
            and (rig.start_set is None or start_regs is rig.start_set.regs)):
        return rig   # no register names a symbol (most rigs): nothing to replace
    return replace(rig, cpu=rig.cpu if rig.cpu is None else replace(rig.cpu, regs=cpu_regs),
                   breakpoints=breakpoints, watchpoints=watchpoints, expect=expect,
                   start_set=rig.start_set if rig.start_set is None else replace(rig.start_set, regs=start_regs))


def prepare(rig: Rig) -> Plan:
    """Load and resolve everything; raise RigError (file:line:col) on any problem."""
    _check_ram(rig)
    images = load_images(rig)
    check_placement(rig, images)
    symbols = Symbols(images)
    for addr in _all_addresses(rig):
        symbols.resolve(addr)
    rig = _register_symbols(rig, symbols)
    entry = _entry(rig, images, symbols)
    arch = traits(rig.arch)
    plan = Plan(rig, images, symbols, entry, arch, None)
    plan.boot = boot.plan_boot(plan)
    if rig.start is None and not any(r.at <= plan.boot.first_pc < r.end for r in rig.memory):
        mark = rig.cpu.entry.mark if rig.cpu and rig.cpu.entry else (rig.cpu.mark if rig.cpu else rig.mark)
        raise RigError(f"the CPU starts at {plan.boot.first_pc:#x}, which is not inside any memory region", mark)
    _check_sw_breakpoints(rig, symbols)
    _check_set_memory(rig, symbols)
    if rig.arch == "x86_64":
        _check_x86(rig, plan.boot.state)
    if rig.breakpoints or rig.watchpoints:   # raises if the arch's debug registers cannot hold them
        DebugPlan(rig, arch, symbols.resolve)
    return plan


def _check_sw_breakpoints(rig: Rig, symbols: Symbols) -> None:
    """A software breakpoint is an instruction written into guest memory: it needs memory there."""
    for bp in rig.breakpoints:
        if bp.kind != "sw":
            continue
        addr = symbols.resolve(bp.at)
        if not any(r.at <= addr < r.end for r in rig.memory):
            raise RigError(f"breakpoint[{bp.index}] at {addr:#x} (kind: sw) is outside every memory region: a "
                           "software breakpoint is planted in guest memory; use kind: hw for addresses "
                           "without memory", bp.at.mark)


def _check_ram(rig: Rig) -> None:
    """The rig's memory must fit the host (checked before anything is mapped)."""
    total = sum(r.size for r in rig.memory)
    limit = host_ram()
    if total > limit and rig.memory:
        big = max(rig.memory, key=lambda r: r.size)
        raise RigError(f"the rig's memory adds up to {total:#x} bytes ({total >> 20} MiB), more than this host's "
                       f"RAM ({limit >> 20} MiB), the most one rig may map (docs/limits.md)", big.mark)


def _check_set_memory(rig: Rig, symbols: Symbols) -> None:
    """`set: {memory: ...}` writes guest memory at a hit: it needs memory there."""
    for point in (*rig.breakpoints, *rig.watchpoints):
        for write in point.set.memory if point.set else ():
            addr = symbols.resolve(write.at)
            end = addr + len(write.data)
            if not any(r.at <= addr and end <= r.end for r in rig.memory):
                raise RigError(f"set.memory writes {addr:#x}..{end - 1:#x}, which is not inside one memory region",
                               write.mark)


def _check_x86(rig: Rig, state) -> None:
    """What KVM would refuse at the first ioctl, refused here at the rig's line:
    control registers KVM_SET_SREGS rejects (EINVAL), and a memory map with no
    16 KiB hole below 4 GiB for KVM's TSS and identity map."""
    regs = {"cr0": state.cr0, "cr4": state.cr4, "efer": state.efer}
    mark = rig.cpu.mark if rig.cpu else rig.mark
    for name, value, where in rig.cpu.regs if rig.cpu else ():
        field = registers.lookup(rig.arch, name)
        if field is not None and field.reg in regs:
            mask = ((1 << field.width) - 1) << field.shift
            regs[field.reg] = (regs[field.reg] & ~mask) | ((value << field.shift) & mask)
            mark = where
    cs = state.segments.get("cs")
    problem = x86.control_problem(regs["cr0"], regs["cr4"], regs["efer"], bool(cs is not None and cs.l))
    if problem:
        raise RigError(f"cpu.regs: {problem}: KVM refuses this CPU state", mark)
    for point in (*rig.breakpoints, *rig.watchpoints):
        for name, value, where in point.set.regs if point.set else ():
            field = registers.lookup(rig.arch, name)
            if field is not None and field.reg in ("cr0", "cr4", "efer") and field.shift == 0:
                written = {"cr0": 0x80000011, "cr4": 0, "efer": 0, field.reg: value}
                problem = x86.control_problem(written["cr0"], written["cr4"], written["efer"])
                if problem:  # the other two are valid: the problem is in the one written
                    raise RigError(f"set.regs: {problem}: KVM refuses this CPU state", where)
    if x86.system_area([(r.at, r.end) for r in rig.memory]) is None:
        raise RigError("the memory map leaves no 16 KiB hole below 4 GiB at any of "
                       + ", ".join(f"{a:#x}" for a in x86.SYSTEM_CANDIDATES)
                       + ": KVM needs one for its TSS and identity map (end a region below one of them)",
                       max(rig.memory, key=lambda r: r.size).mark)
