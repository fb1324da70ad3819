"""plan.prepare (what `kvmrig validate` runs) rejects, at the rig's line, what
a run would reject from the file alone (issue 11 items 12 and 14)."""

from __future__ import annotations

import resource

import pytest

from kvmrig.errors import RigError
from kvmrig.machine.memory import host_ram
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig_text

HEAD = "kvmrig: 1\narch: x86_64\n"


def error(text: str) -> str:
    with pytest.raises(RigError) as info:
        prepare(load_rig_text(text, "r.yaml"))
    return str(info.value)


@pytest.mark.parametrize("size", ["1024G", "262144G"])   # 1 TiB: ENOMEM at run; 256 TiB: 13 s, 2.1 GB in validate
def test_memory_beyond_the_hosts_ram_is_refused_up_front(size):
    if host_ram() >= 1 << 40:
        pytest.skip("this host has a terabyte of RAM")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = error(HEAD + f"memory: [{{at: 0, size: {size}}}]\nimages: [{{hex: f4, at: 0x1000}}]\n"
                           "cpu: {mode: long}\n")
    assert message.startswith("r.yaml:3:10: the rig's memory adds up to ")
    assert "more than this host's RAM" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # no page tables were built


def test_set_memory_outside_every_region_is_a_rig_error():
    message = error(HEAD + "memory: [{at: 0, size: 64K}]\nimages: [{hex: f4, at: 0x1000}]\ncpu: {mode: real}\n"
                           "breakpoints: [{at: 0x1000, set: {memory: [{at: 0x100000, u16: 1}]}}]\n")
    assert message == "r.yaml:6:43: set.memory writes 0x100000..0x100001, which is not inside one memory region"


@pytest.mark.parametrize("regs, why", [
    ("{cr0: 0}", "are not long mode (it needs efer.LME and cr0.PG), but efer.LMA is set"),
    ("{cr4: 0}", "long mode (efer.LME and cr0.PG) needs cr4.PAE"),
    ("{efer: 0x100000}", "sets reserved bits 0x100000"),
    ("{cr0: 0xa0000011}", "sets NW (bit 29) without CD (bit 30)"),
])
def test_control_registers_kvm_refuses_are_rig_errors(regs, why):
    # they were "KVM_SET_SREGS failed: EINVAL" at run time, without a line
    message = error(HEAD + "memory: [{at: 0, size: 2M}]\nimages: [{hex: f4, at: 0x1000}]\n"
                           f"cpu: {{mode: long, regs: {regs}}}\n")
    assert message.startswith("r.yaml:5:") and "cpu.regs: " in message and why in message


def test_control_registers_set_at_a_hit_are_checked_too():
    message = error(HEAD + "memory: [{at: 0, size: 2M}]\nimages: [{hex: f4, at: 0x1000}]\ncpu: {mode: long}\n"
                           "breakpoints: [{at: 0x1000, kind: hw, set: {regs: {cr0: 0x80000000}}}]\n")
    assert message.startswith("r.yaml:6:") and "set.regs: cr0 0x80000000 sets PG (paging) without PE" in message


def test_a_memory_map_without_a_hole_for_kvm_is_a_rig_error():
    # it was "no free 16 KiB below 4 GiB for KVM's TSS and identity map" at run time, without a line
    message = error(HEAD + "memory: [{at: 0, size: 4G}]\nimages: [{hex: f4, at: 0x1000}]\ncpu: {mode: real}\n")
    assert message.startswith("r.yaml:3:10: the memory map leaves no 16 KiB hole below 4 GiB")


@pytest.mark.kvm
@pytest.mark.parametrize("cpu", ["{mode: long, regs: {cr4: 0x6a0}}", "{mode: protected, regs: {cr0: 0x11}}",
                                 "{mode: real, regs: {efer: 0x1}}"])
def test_control_registers_validate_accepts_run_accepts(cpu):
    from kvmrig.result import PASSED
    from kvmrig.runner import run_rig
    rig = load_rig_text(HEAD + "memory: [{at: 0, size: 2M}, {at: 0xfec00000, size: 0x3fc000}]\n"
                               f"images: [{{hex: f4, at: 0x1000}}]\ncpu: {cpu}\n", "r.yaml")
    prepare(rig)
    result = run_rig(rig, "kvm")
    assert result.status == PASSED, result.message or result.outcome


# -- sym: register values: the fast "no symbol anywhere" check sees every place ------

SYM_PLACES = HEAD + """\
memory: [{at: 0, size: 64K}]
images: [{hex: f4, at: 0x1000}]
cpu: {mode: real, regs: {rax: 1}}
breakpoints: [{at: 0x1000, kind: hw, expect: {regs: {rbx: 2}}, set: {regs: {rcx: 3}}}]
watchpoints: [{at: 0x2000, len: 4, access: write, expect: {regs: {rdx: 4}}, set: {regs: {rsi: 5}}}]
expect: {exit: hlt, regs: {rdi: 6}}
"""


class _Symbols:
    def resolve(self, addr):
        return 0x1234 if addr.symbol == "here" else addr.value


def _sym(mark):
    from kvmrig.rig.model import Address
    return Address(None, "here", 0, mark)


def _with_symbol(rig, place: str):
    """`rig` with the register value at `place` replaced by sym:here."""
    from dataclasses import replace

    def in_set(s):
        (name, _v, mark), *rest = s.regs
        return replace(s, regs=((name, _sym(mark), mark), *rest))

    def in_check(c):
        first, *rest = c.regs
        return replace(c, regs=(replace(first, value=_sym(first.mark)), *rest))

    bp, wp = rig.breakpoints[0], rig.watchpoints[0]
    return {
        "cpu.regs": lambda: replace(rig, cpu=in_set(rig.cpu)),
        "breakpoint expect": lambda: replace(rig, breakpoints=(replace(bp, expect=in_check(bp.expect)),)),
        "breakpoint set": lambda: replace(rig, breakpoints=(replace(bp, set=in_set(bp.set)),)),
        "watchpoint expect": lambda: replace(rig, watchpoints=(replace(wp, expect=in_check(wp.expect)),)),
        "watchpoint set": lambda: replace(rig, watchpoints=(replace(wp, set=in_set(wp.set)),)),
        "expect": lambda: replace(rig, expect=in_check(rig.expect)),
        "child set": lambda: replace(rig, start_set=in_set(rig.cpu)),
    }[place]()


@pytest.mark.parametrize("place", ["cpu.regs", "breakpoint expect", "breakpoint set", "watchpoint expect",
                                   "watchpoint set", "expect", "child set"])
def test_a_symbol_in_any_register_value_is_resolved(place):
    from kvmrig.machine.plan import _register_symbols
    from kvmrig.rig.model import Address

    rig = load_rig_text(SYM_PLACES, "r.yaml")
    assert _register_symbols(rig, _Symbols()) is rig   # no sym: anywhere: the rig itself
    out = _register_symbols(_with_symbol(rig, place), _Symbols())
    values = [v for _n, v, _m in (*out.cpu.regs, *out.breakpoints[0].set.regs, *out.watchpoints[0].set.regs,
                                  *(out.start_set.regs if out.start_set else ()))]
    values += [c.value for c in (*out.breakpoints[0].expect.regs, *out.watchpoints[0].expect.regs,
                                 *out.expect.regs)]
    assert not any(isinstance(v, Address) for v in values)
    assert 0x1234 in values
