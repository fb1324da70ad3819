"""The complete architectural state of an x86_64 KVM vCPU: capture and restore.

Everything a guest can change and a later run could see is captured: general
registers, segment/control/descriptor-table state (sregs), every MSR of
KVM_GET_MSR_INDEX_LIST that KVM also lets userspace set back (the TSC among
them), the XSAVE image (x87/SSE/AVX), the XCRs, the guest's debug registers,
pending events (exceptions, NMIs, interrupt shadow, SMM) and the MP state;
with a rig's `machine:` also the in-kernel local APIC, PICs, IOAPIC and PIT
(snapshots, and the reset of a reused one-vCPU VM with `machine:`).

Restore replays prepared structs (built once per state), so a reset is a
fixed list of ioctls with nothing allocated: this is the hot path of VM reuse.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from typing import Any

from kvmrig.arch.x86_64 import cpustate, gdt
from kvmrig.arch.x86_64.regs import GPRS
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.system import Kvm, Vcpu
from kvmrig.errors import BackendError, KvmError

ffi = abi.ffi
# restore() issues its ioctls through fcntl.ioctl: CPython's own C wrapper
# costs ~0.5 us less per call than a cffi call of libc's variadic ioctl
# (bench/README.md, "The reset of a reused VM against C").
_ioctl = fcntl.ioctl
MSR_IA32_TSC = 0x10
MSR_IA32_TSC_ADJUST = 0x3B
_EVENTS_FLAGS = ffi.offsetof("struct kvm_vcpu_events", "flags")
_EVENTS_SET = abi.KVM_VCPUEVENT_VALID_NMI_PENDING | abi.KVM_VCPUEVENT_VALID_SIPI_VECTOR

# (name, ctype, get ioctl, set ioctl, capability): the opaque blobs, in restore
# order (XCR0 decides which XSAVE components are valid, so XCRs go first).
BLOBS = (
    ("xcrs", "struct kvm_xcrs", "KVM_GET_XCRS", "KVM_SET_XCRS", abi.KVM_CAP_XCRS),
    ("xsave", "struct kvm_xsave", "KVM_GET_XSAVE", "KVM_SET_XSAVE", abi.KVM_CAP_XSAVE),
    ("debugregs", "struct kvm_debugregs", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", abi.KVM_CAP_DEBUGREGS),
    ("mp_state", "struct kvm_mp_state", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", abi.KVM_CAP_MP_STATE),
    ("events", "struct kvm_vcpu_events", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", abi.KVM_CAP_VCPU_EVENTS),
)

# The local APIC (vcpu) with an in-kernel irqchip: restored after the MSRs
# (the APIC base) and before the MP state and events.
LAPIC = ("lapic", "struct kvm_lapic_state", "KVM_GET_LAPIC", "KVM_SET_LAPIC", None)
# The VM-level chips with rig `machine:`: (name, ctype, get, set, chip id or None).
CHIPS = (("pic_master", "struct kvm_irqchip", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP", abi.KVM_IRQCHIP_PIC_MASTER),
         ("pic_slave", "struct kvm_irqchip", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP", abi.KVM_IRQCHIP_PIC_SLAVE),
         ("ioapic", "struct kvm_irqchip", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP", abi.KVM_IRQCHIP_IOAPIC))
PIT = ("pit2", "struct kvm_pit_state2", "KVM_GET_PIT2", "KVM_SET_PIT2", None)
_RESTORE_ORDER = ("xcrs", "xsave", "debugregs", "lapic", "mp_state", "events")
_BLOB_TYPES = {name: (ctype, set_) for name, ctype, _get, set_, _cap in BLOBS + (LAPIC,)}

_msr_cache: dict[tuple, tuple[int, ...]] = {}   # (pid, in-kernel LAPIC, CPUID edits) -> MSR indices
_blob_cache: tuple[int, tuple[str, ...]] | None = None


def restorable_msrs(kvm: Kvm, vcpu: Vcpu, lapic: bool = False) -> tuple[int, ...]:
    """The MSRs of KVM_GET_MSR_INDEX_LIST that this KVM reads and lets
    userspace write back unchanged (probed once per process on a live vCPU;
    TSC_ADJUST sorted before TSC, as KVM wants them). Separately for vCPUs
    with an in-kernel local APIC (`lapic`): KVM takes more MSRs there (e.g.
    MSR_KVM_PV_EOI_EN), and a list probed on one made every later reset of a
    plain vCPU in that process fail. And per CPUID table (`cpu.cpuid` edits,
    Vcpu.cpuid_key): KVM refuses an MSR whose feature the guest's CPUID lacks
    (TSC_AUX without RDTSCP, ...)."""
    key = (os.getpid(), lapic, getattr(vcpu, "cpuid_key", None))
    found = _msr_cache.get(key)
    if found is None:
        indices = kvm.msr_index_list()
        values = vcpu.get_msrs(indices)
        keep = [i for i, v in zip(indices, values) if v is not None and vcpu.set_msrs([(i, v)]) == 1]
        keep.sort(key=lambda i: (i == MSR_IA32_TSC, i))   # the TSC last: writing it resyncs the clock
        found = _msr_cache[key] = tuple(keep)
    return found


def available_blobs(kvm: Kvm) -> tuple[str, ...]:
    """Which of BLOBS this KVM offers (asked once per process)."""
    global _blob_cache
    pid = os.getpid()
    if _blob_cache is None or _blob_cache[0] != pid:
        _blob_cache = (pid, tuple(name for name, *_r, cap in BLOBS if kvm.check_extension(cap)))
    return _blob_cache[1]


@dataclass
class X86CpuState:
    """One vCPU's state as KVM hands it out: kvm_regs and kvm_sregs bytes,
    MSR values by index, and the opaque blobs of BLOBS by name.

    `taken` (time.monotonic()) and `tsc_khz` let a reuse reset move the TSC on
    by the time that passed, as the TSC of a VM nobody touched would have."""

    regs: bytes
    sregs: bytes
    msrs: dict[int, int]
    blobs: dict[str, bytes]
    taken: float = 0.0
    tsc_khz: int = 0
    vm_blobs: dict[str, bytes] = field(default_factory=dict)   # rig `machine:`: PICs, IOAPIC, PIT
    _prepared: object = field(default=None, repr=False, compare=False)

    def same_as(self, other: "X86CpuState") -> bool:
        """Equal in everything a guest can observe (the TSC moves on by itself)."""
        mine = {k: v for k, v in self.msrs.items() if k not in (MSR_IA32_TSC,)}
        theirs = {k: v for k, v in other.msrs.items() if k not in (MSR_IA32_TSC,)}
        return (self.regs, self.sregs, mine, self.blobs) == (other.regs, other.sregs, theirs, other.blobs)


def capture(kvm: Kvm, vcpu: Vcpu, vm=None, pit: bool = False, lapic: bool | None = None) -> X86CpuState:
    """Everything the vCPU holds now (pending port/MMIO completions excluded:
    the caller finishes those first); with `vm` (a VM with the in-kernel
    irqchip) also its local APIC, the PICs and IOAPIC, and with `pit` the 8254.
    `lapic=True` without `vm`: the local APIC but not the VM's chips (an AP's)."""
    lapic = vm is not None if lapic is None else lapic
    regs = bytes(ffi.buffer(vcpu.get_regs()))
    sregs = bytes(ffi.buffer(vcpu.get_sregs()))
    indices = restorable_msrs(kvm, vcpu, lapic)
    values = vcpu.get_msrs(indices)
    msrs = {i: v for i, v in zip(indices, values) if v is not None}
    blobs = {}
    names = available_blobs(kvm)
    for name, ctype, get, _set, _cap in BLOBS:
        if name in names:
            blobs[name] = vcpu.get_blob(get, ctype)
    try:
        khz = vcpu.call("KVM_GET_TSC_KHZ", abi.ulong(0)) if abi.KVM_GET_TSC_KHZ is not None else 0
    except KvmError:
        khz = 0
    vm_blobs = {}
    if lapic:
        blobs["lapic"] = vcpu.get_blob(LAPIC[2], LAPIC[1])
    if vm is not None:
        for name, ctype, get, _set, chip in CHIPS + ((PIT,) if pit else ()):
            vm_blobs[name] = vm.get_blob(get, ctype, b"" if chip is None else chip.to_bytes(4, "little"))
    return X86CpuState(regs, sregs, msrs, blobs, time.monotonic(), khz, vm_blobs)


class _Prepared:
    """A state's structs, built once: restore() only issues ioctls."""

    def calls(self, vcpu: Vcpu, staged: bool, reuse: bool) -> tuple[tuple[str, int, object, int], ...]:
        """(name, request, argument, expected result) of every ioctl restore()
        issues, in order (KVM_SET_MSRS answers how many MSRs it set, the
        others 0). The argument is a writable buffer over the prepared struct,
        exactly its size, as fcntl.ioctl takes it."""
        key = (staged, reuse)
        cached = self._calls.get(key)
        if cached is None:
            plan = [] if staged else [("KVM_SET_SREGS", self.sregs)]
            plan += [(name, arg) for name, arg, _buf in self.early]
            plan += [] if staged else [("KVM_SET_REGS", self.regs)]
            plan.append(("KVM_SET_MSRS", self.msrs))
            plan += [(name, arg) for name, arg, _buf in self.late
                     if not (staged and name == "KVM_SET_VCPU_EVENTS")
                     and not (reuse and not self.lapic and name == "KVM_SET_MP_STATE")]
            cached = self._calls[key] = tuple((name, getattr(abi, name), ffi.buffer(arg),
                                               self.count if name == "KVM_SET_MSRS" else 0)
                                              for name, arg in plan)
        vcpu.forget_sync()
        return cached

    def __init__(self, state: X86CpuState):
        self.regs = ffi.new("struct kvm_regs *")
        ffi.memmove(self.regs, state.regs, len(state.regs))
        self.sregs = ffi.new("struct kvm_sregs *")
        ffi.memmove(self.sregs, state.sregs, len(state.sregs))
        self.cr8 = int(self.sregs.cr8)
        self.lapic = "lapic" in state.blobs   # an in-kernel LAPIC: KVM changes the MP state itself
        items = list(state.msrs.items())
        self.msrs = ffi.new("struct kvm_msrs *", {"entries": len(items)})
        self.msrs.nmsrs = len(items)
        self.tsc_entry = None
        self.tsc = state.msrs.get(MSR_IA32_TSC, 0)
        self.tsc_hz = state.tsc_khz * 1000
        for i, (index, value) in enumerate(items):
            self.msrs.entries[i].index = index
            self.msrs.entries[i].data = value
            if index == MSR_IA32_TSC:
                self.tsc_entry = self.msrs.entries[i]
        self.count = len(items)
        self._calls: dict = {}
        self.events = None      # the vcpu events struct, for staging in kvm_run
        self.early: list = []   # before the registers: XCRs, then XSAVE
        self.late: list = []
        for name in _RESTORE_ORDER:
            data = state.blobs.get(name)
            if data is None:
                continue
            ctype, set_ = _BLOB_TYPES[name]
            if name == "events":
                flags = int.from_bytes(data[_EVENTS_FLAGS:_EVENTS_FLAGS + 4], "little") | _EVENTS_SET
                data = data[:_EVENTS_FLAGS] + flags.to_bytes(4, "little") + data[_EVENTS_FLAGS + 4:]
            buf = ffi.new("char[]", data)
            if name == "events":
                self.events = ffi.cast(ctype + " *", buf)
            early = name in ("xcrs", "xsave")
            (self.early if early else self.late).append((set_, ffi.cast(ctype + " *", buf), buf))
        self.sync = None        # regs, sregs and events as kvm_run's sync area holds them: one copy
        if self.events is not None:
            self.sync = ffi.new("struct kvm_sync_regs *")
            self.sync.regs, self.sync.sregs, self.sync.events = self.regs[0], self.sregs[0], self.events[0]


def restore_chips(vm, state: X86CpuState) -> None:
    """The VM-level chips of `state` (PICs, IOAPIC, PIT) back into `vm`,
    before its vCPU's state."""
    for name, ctype, _get, set_, _chip in CHIPS + (PIT,):
        if name in state.vm_blobs:
            vm.set_blob(set_, ctype, state.vm_blobs[name])


def restore(vcpu: Vcpu, state: X86CpuState, reuse: bool = False) -> None:
    """Put `state` back into the vCPU.

    `reuse` is the reset between two rigs: the TSC is set to its captured
    value plus the cycles since capture (a reused VM then looks like one
    created fresh: its TSC has been running), and the MP state is left alone
    unless the vCPU has an in-kernel LAPIC (without one nothing but userspace
    changes it). Without
    `reuse` everything is exact: a snapshot resumes where it was taken.

    Registers, sregs and pending events go through kvm_run's sync area where
    KVM offers it (applied at the next KVM_RUN, no ioctl): each vCPU ioctl
    costs ~9 us on some hosts, and this is the hot path of reuse."""
    prep = state._prepared
    if prep is None:
        prep = state._prepared = _Prepared(state)
    if prep.tsc_entry is not None:
        value = prep.tsc
        if reuse and prep.tsc_hz:
            value += int((time.monotonic() - state.taken) * prep.tsc_hz)
        prep.tsc_entry.data = value & 0xFFFFFFFFFFFFFFFF
    # Without an in-kernel LAPIC every KVM_RUN first loads CR8 from kvm_run.cr8
    # (the TPR as of the last exit): that copy must say the restored CR8 too.
    rs = vcpu.run_struct
    rs.cr8 = prep.cr8
    rs.request_interrupt_window = 0
    staged = vcpu.stage_all(prep.sync) if prep.sync is not None else vcpu.stage(prep.regs, prep.sregs, prep.events)
    fd, ioctl = vcpu.fd, _ioctl
    for name, request, arg, expect in prep.calls(vcpu, staged, reuse):
        try:
            r = ioctl(fd, request, arg)
        except OSError as e:
            raise KvmError(name, e.errno) from None
        if r != expect:
            _refused(prep, name, r)


def _refused(prep: _Prepared, name: str, r: int) -> None:
    """Raise for KVM_SET_MSRS that stopped short (it answers how many MSRs
    it set) or another ioctl of restore() with an unexpected answer."""
    if name == "KVM_SET_MSRS" and 0 <= r < prep.count:
        raise BackendError(f"KVM refused to restore MSR {prep.msrs.entries[r].index:#x} "
                           f"(value {prep.msrs.entries[r].data:#x})")
    raise BackendError(f"{name} answered {r}, not {0 if name != 'KVM_SET_MSRS' else prep.count}")


# Text form (snapshot files) ---------------------------------------------------

def _to_text(value) -> Any:
    """A cffi struct/array/int as JSON-ready text: fields by name, ints in hex."""
    kind = ffi.typeof(value).kind if isinstance(value, ffi.CData) else None
    if kind == "struct":
        return {name: _to_text(getattr(value, name)) for name, _f in ffi.typeof(value).fields}
    if kind == "array":
        return [_to_text(v) for v in value]
    return hex(value)


def _from_text(text) -> Any:
    """The inverse of _to_text, as a cffi initializer (dicts and lists nest)."""
    if isinstance(text, dict):
        return {k: _from_text(v) for k, v in text.items()}
    if isinstance(text, list):
        return [_from_text(v) for v in text]
    return int(text, 16)


def to_text(state: X86CpuState) -> dict[str, Any]:
    """The state with every register by name (kvm_regs, kvm_sregs), MSRs by
    index and the opaque blobs in hex."""
    regs = ffi.new("struct kvm_regs *")
    ffi.memmove(regs, state.regs, len(state.regs))
    sregs = ffi.new("struct kvm_sregs *")
    ffi.memmove(sregs, state.sregs, len(state.sregs))
    return {"regs": _to_text(regs[0]), "sregs": _to_text(sregs[0]),
            "msrs": {hex(i): hex(v) for i, v in state.msrs.items()},
            "blobs": {name: data.hex() for name, data in state.blobs.items()},
            "vm_blobs": {name: data.hex() for name, data in state.vm_blobs.items()},
            "tsc_khz": state.tsc_khz}


def from_text(text: dict[str, Any]) -> X86CpuState:
    """Rebuild a state from to_text(); ValueError/KeyError/TypeError on bad text."""
    regs = ffi.new("struct kvm_regs *", _from_text(text["regs"]))
    sregs = ffi.new("struct kvm_sregs *", _from_text(text["sregs"]))
    blobs = {name: bytes.fromhex(data) for name, data in text["blobs"].items()}
    vm_blobs = {name: bytes.fromhex(data) for name, data in text.get("vm_blobs", {}).items()}
    for group, table in ((blobs, BLOBS + (LAPIC,)), (vm_blobs, CHIPS + (PIT,))):
        for name, ctype, *_ in table:
            if name in group and len(group[name]) != ffi.sizeof(ctype):
                raise ValueError(f"{name} holds {len(group[name])} bytes, not {ffi.sizeof(ctype)}")
        unknown = set(group) - {name for name, *_ in table}
        if unknown:
            raise ValueError(f"unknown state {', '.join(sorted(unknown))}")
    return X86CpuState(bytes(ffi.buffer(regs)), bytes(ffi.buffer(sregs)),
                       {int(i, 16): int(v, 16) for i, v in text["msrs"].items()}, blobs,
                       time.monotonic(), int(text.get("tsc_khz", 0)), vm_blobs)


# The neutral form (arch/x86_64/cpustate.py): snapshots that cross backends -------

_SEG_NAMES = cpustate.SEGMENT_NAMES


def _struct(ctype: str, data: bytes):
    value = ffi.new(ctype + " *")
    ffi.memmove(value, data, len(data))
    return value


def _pending(events) -> list[str]:
    """What kvm_vcpu_events holds pending that a register cannot say."""
    out = []
    e = events.exception
    if e.injected or e.pending:
        out.append(f"an exception (vector {e.nr}{', error code %#x' % e.error_code if e.has_error_code else ''})")
    if events.interrupt.injected:
        out.append(f"an interrupt being injected (vector {events.interrupt.nr})")
    if events.nmi.injected or events.nmi.pending:
        out.append("an NMI")
    if events.smi.smm or events.smi.pending:
        out.append("SMM" if events.smi.smm else "an SMI")
    if events.triple_fault.pending:
        out.append("a triple fault")
    return out


def to_arch(state: X86CpuState, created_msrs: dict[int, int]) -> cpustate.X86Arch:
    """`state` by architectural name; `created_msrs` are the MSR values of a
    vCPU as created, which mark the ones the guest left alone."""
    r = _struct("struct kvm_regs", state.regs)
    s = _struct("struct kvm_sregs", state.sregs)
    regs = {name: int(getattr(r, name)) for name in GPRS + ("rip", "rflags")}
    segments = {n: gdt.Segment(**{f: int(getattr(getattr(s, n), f)) for f in cpustate.SEGMENT_FIELDS})
                for n in _SEG_NAMES}
    control = {name: int(getattr(s, name)) for name in cpustate.CONTROL_NAMES}
    msrs = {i: v for i, v in state.msrs.items() if i not in cpustate.NOT_MSRS}
    as_created = frozenset(i for i, v in msrs.items() if created_msrs.get(i) == v)
    fpu, others = cpustate.fpu_from_xsave(state.blobs["xsave"]) if "xsave" in state.blobs else (cpustate.Fpu(), [])
    pending = [f"XSAVE state of {name}" for name in others]
    xcr0 = 1
    if "xcrs" in state.blobs:
        x = _struct("struct kvm_xcrs", state.blobs["xcrs"])
        xcr0 = next((int(x.xcrs[i].value) for i in range(x.nr_xcrs) if x.xcrs[i].xcr == 0), 1)
    debug = {"dr0": 0, "dr1": 0, "dr2": 0, "dr3": 0, "dr6": 0xFFFF0FF0, "dr7": 0x400}
    if "debugregs" in state.blobs:
        d = _struct("struct kvm_debugregs", state.blobs["debugregs"])
        debug = {**{f"dr{i}": int(d.db[i]) for i in range(4)}, "dr6": int(d.dr6), "dr7": int(d.dr7)}
    if "events" in state.blobs:
        pending += _pending(_struct("struct kvm_vcpu_events", state.blobs["events"]))
    if state.vm_blobs or "lapic" in state.blobs:
        pending.append("in-kernel interrupt controller state (rig machine:)")
    if "mp_state" in state.blobs:
        mp = int.from_bytes(state.blobs["mp_state"][:4], "little")
        if mp != abi.KVM_MP_STATE_RUNNABLE:
            pending.append(f"MP state {mp} (not runnable)")
    return cpustate.X86Arch(regs, segments, (int(s.gdt.base), int(s.gdt.limit)), (int(s.idt.base), int(s.idt.limit)),
                            control, msrs, as_created, fpu, debug, xcr0, pending)


def with_arch(base: X86CpuState, a: cpustate.X86Arch) -> X86CpuState:
    """`base` (this vCPU as created) holding the neutral state `a`, taken on
    another backend. CrossError for what KVM cannot take (see cpustate)."""
    cpustate.refuse_pending(a, "kvm")
    r = _struct("struct kvm_regs", base.regs)
    for name, value in a.regs.items():
        setattr(r, name, value)
    s = _struct("struct kvm_sregs", base.sregs)
    for n in _SEG_NAMES:
        seg = getattr(s, n)
        for f in cpustate.SEGMENT_FIELDS:
            setattr(seg, f, getattr(a.segments[n], f))
    s.gdt.base, s.gdt.limit = a.gdt
    s.idt.base, s.idt.limit = a.idt
    for name, value in a.control.items():
        setattr(s, name, value)
    msrs = dict(base.msrs)
    for index, value in cpustate.changed_msrs(a).items():
        if index not in msrs:
            raise cpustate.CrossError(f"the snapshot has {cpustate.msr_name(index)} = {value:#x}, which this KVM "
                                      "cannot restore")
        msrs[index] = value
    blobs = dict(base.blobs)
    if "xsave" in blobs:
        blobs["xsave"] = cpustate.xsave_with_fpu(blobs["xsave"], a.fpu)
    elif a.fpu != cpustate.Fpu():
        raise cpustate.CrossError("the snapshot's x87/SSE registers are in use, and this KVM has no XSAVE")
    if a.xcr0 is not None and a.xcr0 != 1:
        if "xcrs" not in blobs:
            raise cpustate.CrossError(f"the snapshot has XCR0 = {a.xcr0:#x}, and this KVM has no XCRs")
        x = _struct("struct kvm_xcrs", blobs["xcrs"])
        x.nr_xcrs, x.xcrs[0].xcr, x.xcrs[0].value = max(1, x.nr_xcrs), 0, a.xcr0
        blobs["xcrs"] = bytes(ffi.buffer(x))
    if "debugregs" in blobs:
        d = _struct("struct kvm_debugregs", blobs["debugregs"])
        for i in range(4):
            d.db[i] = a.debug[f"dr{i}"]
        d.dr6, d.dr7 = a.debug["dr6"], a.debug["dr7"]
        blobs["debugregs"] = bytes(ffi.buffer(d))
    elif a.debug["dr7"] & cpustate.DR7_ENABLES:
        raise cpustate.CrossError(f"the snapshot's guest arms breakpoints (DR7 = {a.debug['dr7']:#x}), and this "
                                  "KVM cannot set debug registers")
    return X86CpuState(bytes(ffi.buffer(r)), bytes(ffi.buffer(s)), msrs, blobs, time.monotonic(), base.tsc_khz)
