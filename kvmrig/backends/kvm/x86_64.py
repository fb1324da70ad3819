"""The x86_64 KVM backend: CPUID, segment/control state, registers by name,
and debugging through KVM_SET_GUEST_DEBUG.

Debug strategies follow what this KVM really delivers (x86_probe):
- hardware breakpoints use DR0-DR3 everywhere; after a hit the backend steps
  one instruction with that register disabled (the breakpoint is a fault and
  not every KVM honours RFLAGS.RF), then re-arms it;
- software breakpoints plant INT3 where KVM intercepts it, else HLT (1 byte
  too), whose exit at a planted address is reported as the breakpoint;
- watchpoints use DR0-DR3 where data breakpoints fire, else page traps: the
  watched pages become read-only (write watches) or unmapped (read/access),
  so accesses exit as MMIO, are completed here and matched byte-exactly.
x86 has no read-only data breakpoint: `read` arms read-or-write and a hit that
changed the watched bytes is dropped (a write storing the same value still
counts as a read; page traps tell reads from writes exactly).

Code on an unmapped (read-trapped) page cannot run: KVM cannot fetch from
MMIO and stops with an emulation failure. Then the backend maps that page
read-only and single-steps its instructions one at a time, learning what each
reads from its decoding (arch/x86_64/access.py; writes still exit); once the
code leaves the page, the page is unmapped again. So a watchpoint on .rodata
beside .text means what it means on the emulator (README: "the semantics of a
rig do not change").
"""

from __future__ import annotations

import operator
import os
import struct
from collections import Counter
from collections.abc import Callable, Collection

from kvmrig.arch.x86_64 import cpuid
from kvmrig.arch.x86_64 import dr7 as dr7_mod
from kvmrig.arch.x86_64.boot import RFLAGS_IF, X86State, system_area
from kvmrig.arch.x86_64.access import READ, WRITE, accesses, mode_of
from kvmrig.arch.x86_64 import cpustate
from kvmrig.arch.x86_64.faults import explain_shutdown
from kvmrig.arch.x86_64.fpu import gdb_registers
from kvmrig.arch.x86_64.regs import CONTROL, GPRS, SEGMENTS
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import DebugEvent, Event, ForeignDebug, Halt, HwBreak, Shutdown, Step, SwBreak, WatchHit
from kvmrig.backends.kvm import abi, x86_state
from kvmrig.backends.kvm.common import PAGE, KvmBackendBase
from kvmrig.backends.kvm.perprocess import PerProcess
from kvmrig.backends.kvm.x86_probe import debug_support
from kvmrig.errors import BackendError

DR6_BS = dr7_mod.DR6_BS
VECTOR_DB, VECTOR_BP = 1, 3
SYSTEM_PAGES = 4 * PAGE
SYSTEM_CANDIDATES = (0xFEFFC000, 0xFEFFC000 - 0x1000000, 0xD0000000, 0xB0000000, 0x90000000)
INT3, HLT = b"\xcc", b"\xf4"
# KVM needs 3 pages for the real-mode TSS and 1 for the EPT identity map,
# somewhere no memory slot is; QEMU's choice first, then lower holes.
_REG_FIELDS = GPRS + ("rip", "rflags")
_ZERO_REGS = bytes(8 * len(_REG_FIELDS))
SYNC = abi.KVM_SYNC_X86_REGS | abi.KVM_SYNC_X86_SREGS
_sync_cache: PerProcess[bool] = PerProcess()
_created_cache: PerProcess[dict[int, int]] = PerProcess()
#: Debug exits taken natively in this process ("int3", "dr-exec", "dr-watch"):
#: how the x86_64 lane's test run shows the native path really ran.
NATIVE_HITS: Counter[str] = Counter()


def _sregs_reader() -> tuple[struct.Struct, Callable, tuple[str, ...]]:
    """What get_regs() reads of kvm_sregs: a Struct picking the segment
    selectors, control registers and CS base at their offsets in the ABI's
    struct, a getter putting them in _SREG_NAMES' order, and those names."""
    ffi = abi.ffi
    selector, base = ffi.offsetof("struct kvm_segment", "selector"), ffi.offsetof("struct kvm_segment", "base")
    picks = ([(ffi.offsetof("struct kvm_sregs", name) + selector, "H", name) for name in SEGMENTS]
             + [(ffi.offsetof("struct kvm_sregs", name), "Q", name) for name in CONTROL]
             + [(ffi.offsetof("struct kvm_sregs", "cs") + base, "Q", "cs_base")])
    names = tuple(name for _at, _code, name in picks)
    fmt, at = "=", 0
    for offset, code, _name in sorted(picks):
        fmt += f"{offset - at}x{code}" if offset > at else code
        at = offset + struct.calcsize("=" + code)
    by_offset = [name for _at, _code, name in sorted(picks)]
    return struct.Struct(fmt), operator.itemgetter(*(by_offset.index(name) for name in names)), names


# kvm_regs is _REG_FIELDS' u64s in order (as _ZERO_REGS assumes too)
assert [abi.ffi.offsetof("struct kvm_regs", name) for name in _REG_FIELDS] == list(range(0, 8 * len(_REG_FIELDS), 8))
assert abi.ffi.sizeof("struct kvm_regs") == 8 * len(_REG_FIELDS)
_REGS = struct.Struct(f"={len(_REG_FIELDS)}Q")
_SREGS, _sreg_order, _SREG_NAMES = _sregs_reader()

# set_initial_state's results: (sregs before, GDTR, IDTR, CR0, CR3, CR4, EFER)
# -> (the state's segments, sregs after); at most SREGS_MEMO_MAX kept.
_sregs_memo: dict[tuple, tuple[tuple, bytes]] = {}
SREGS_MEMO_MAX = 64


def load_sregs(s, state: X86State) -> None:
    """Write the state's segments, descriptor tables and control registers
    into kvm_sregs `s` (the rest of it, e.g. CR8 and the APIC base, kept)."""
    for name, seg in state.segments.items():
        dst = getattr(s, name)
        dst.selector, dst.base, dst.limit, dst.type = seg.selector, seg.base, seg.limit, seg.type
        dst.present, dst.dpl, dst.db, dst.s, dst.l, dst.g = seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g
        dst.avl, dst.unusable = seg.avl, seg.unusable
    s.gdt.base, s.gdt.limit = state.gdt
    s.idt.base, s.idt.limit = state.idt
    s.cr0, s.cr3, s.cr4, s.efer = state.cr0, state.cr3, state.cr4, state.efer


def _sync_regs_supported(kvm) -> bool:
    """KVM_CAP_SYNC_REGS covers regs and sregs here (asked once per process;
    KVMRIG_KVM_SYNC_REGS=0 turns it off, to compare)."""
    if os.environ.get("KVMRIG_KVM_SYNC_REGS", "1") == "0":
        return False
    return _sync_cache.get(lambda: kvm.check_extension(abi.KVM_CAP_SYNC_REGS) & SYNC == SYNC)


def _created_msrs() -> dict[int, int]:
    """The MSR values of a vCPU as kvmrig creates it (a throwaway VM, once per
    process): a snapshot marks the MSRs still at them, which a backend without
    them may leave out."""
    def probe() -> dict[int, int]:
        with KvmX86Backend() as backend:
            return backend.capture_cpu().msrs
    return _created_cache.get(probe)


class KvmX86Backend(KvmBackendBase):
    arch = "x86_64"
    runs_aps = False   # x86_smp's subclass runs vCPUs 1.. (cpus > 1)

    def __init__(self) -> None:
        super().__init__()
        self.support = debug_support(self.kvm)
        self.pristine: x86_state.X86CpuState | None = None   # the vCPU as created, for reuse
        self.stepped = False   # KVM single-stepped this vCPU (see reusable())
        self._ap_vcpus: list = []   # vCPUs 1.. (cpus > 1; x86_smp runs them)
        self._lines_high: set[int] = set()   # ISA lines the rig's devices left raised (lowered at reset)
        self.irqchip = False   # machine.irqchip: KVM runs HLT and the interrupt controllers (kept by reset())
        self.pit = False       # machine.pit: KVM's 8254 too
        self._forget_debug()

    def _forget_debug(self) -> None:
        self._user_step = False
        self._sw_int3 = False
        self._sw_addrs: frozenset[int] = frozenset()
        self._dr: list[int] = [0] * 8
        self._dr_kind: list[str] = []     # per DR index: exec | write | access | read
        self._dr_owner: list[int] = []    # per DR index: the HwSlot index it serves
        self._dr_len: list[int] = []
        self._shadow: dict[int, bytes] = {}  # DR index -> watched bytes, for `read` filtering
        self._soft: list[tuple[int, HwSlot]] = []  # page-trapped watches: (HwSlot index, slot)
        self._resume: int | None = None   # DR index being stepped past
        self._resume_pc = 0               # where that breakpoint hit
        self._regs_set = False            # registers were set since the last exit
        self._fixup = False               # _before_run has work before the next KVM_RUN
        self._debug_cache: dict[tuple, tuple[int, list[int] | None]] = {}
        self._armed: tuple[int, list[int] | None] = (0, None)  # what KVM_SET_GUEST_DEBUG holds now
        self._setup: tuple = ()                # (slots, sw addresses) of the last set_debug
        self._trap_pages: dict[int, str] = {}  # the page traps set_debug chose
        self._exec_page: int | None = None     # a trapped page mapped read-only to step its code
        self._exec_reads: list[Event] = []     # the watch hits of the instruction being stepped there
        self._exec_hlt = False                 # its next instruction is HLT: run it unstepped

    # Boot ----------------------------------------------------------------------
    def _system_area(self) -> int:
        start = system_area(self.regions)  # machine/plan.py checks it first, at the rig's line
        if start is not None:
            return start
        raise BackendError("no free 16 KiB below 4 GiB for KVM's TSS and identity map: "
                           "the rig's memory map covers every candidate hole")

    def _create_vcpu(self, state: X86State | None = None):
        """The vCPU (and, for a rig's `machine:`, the in-kernel irqchip and PIT
        before it and the APs after it; `cpu.cpuid` on each)."""
        area = self._system_area()
        self.vm.set_identity_map_addr(area)
        self.vm.set_tss_addr(area + PAGE)
        if state is None:
            state = X86State("long", 0, 0, {}, 0)   # no machine, no CPUID edits (a VM kept for reuse)
        if state.irqchip:
            self.vm.create_irqchip()   # before the vcpu, so it gets a local APIC
            self.irqchip = True
            if state.pit:
                self.vm.create_pit2(abi.KVM_PIT_SPEAKER_DUMMY)
                self.pit = True
        vcpu = self.vcpu = self.vm.create_vcpu(0)
        vcpu.set_cpuid2(self._cpuid(state.cpuid))
        vcpu.cpuid_key = None if state.cpuid is None else state.cpuid.key()   # its MSRs depend on it
        if state.cpus > 1:
            if not self.runs_aps:
                raise BackendError("cpus > 1 needs the SMP backend (kvmrig.backends.kvm.x86_smp), which runs the APs")
            aps = []
            for index in range(1, state.cpus):
                ap = self.vm.create_vcpu(index)   # waits for INIT/SIPI from the guest (in-kernel LAPIC)
                ap.set_cpuid2(self._cpuid(state.cpuid, apic_id=index))
                ap.cpuid_key = vcpu.cpuid_key
                aps.append(ap)
            self._ap_vcpus = aps
        if _sync_regs_supported(self.kvm):
            vcpu.enable_sync_regs(SYNC)  # registers come with every exit: no GET ioctls
        return vcpu

    def set_initial_state(self, state: X86State) -> None:
        vcpu = self.vcpu or self._create_vcpu(state)
        s = vcpu.get_sregs()
        # The sregs are a pure function of the vCPU's (the pristine ones on a
        # reused VM) and the state's segments, tables and control registers:
        # rigs that boot alike reuse the bytes instead of ~80 field writes.
        before = bytes(abi.ffi.buffer(s))
        key = (before, state.gdt, state.idt, state.cr0, state.cr3, state.cr4, state.efer)
        segments = tuple(state.segments.items())
        known = _sregs_memo.get(key)
        if known is not None and known[0] == segments:   # equal values (the same Segments: at once)
            abi.ffi.memmove(s, known[1], len(known[1]))
        else:
            load_sregs(s, state)
            if len(_sregs_memo) >= SREGS_MEMO_MAX:
                _sregs_memo.clear()
            _sregs_memo[key] = (segments, bytes(abi.ffi.buffer(s)))
        vcpu.set_sregs(s)
        r = vcpu.get_regs()
        abi.ffi.memmove(r, _ZERO_REGS, len(_ZERO_REGS))   # kvm_regs holds just _REG_FIELDS
        for name, value in state.gprs.items():
            setattr(r, name, value)
        r.rip, r.rflags = state.rip, state.rflags
        vcpu.set_regs(r)

    def _cpuid(self, spec, apic_id: int = 0):
        """What KVM supports, with the rig's `cpu.cpuid` edits applied (and,
        for an AP, its own APIC ID in leaves 1 and 0xb)."""
        table = self.kvm.supported_cpuid()
        if spec is None and apic_id == 0:
            return table
        entries = [cpuid.Entry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                   for e in table.entries[0:table.nent]]
        if spec is not None:
            leaves = [(leaf.leaf, leaf.subleaf, dict(leaf.regs)) for leaf in spec.leaves]
            entries = cpuid.apply(entries, spec.add, spec.remove, spec.vendor, leaves)
        for e in entries:
            if e.leaf == 1:
                e.ebx = (e.ebx & 0x00FFFFFF) | (apic_id << 24)
            elif e.leaf in (0xB, 0x1F):
                e.edx = apic_id
        out = abi.new_cpuid2(max(abi.CPUID_MAX_ENTRIES, len(entries)))
        out.nent = len(entries)
        for i, e in enumerate(entries):
            d = out.entries[i]
            d.function, d.index, d.flags, d.eax, d.ebx, d.ecx, d.edx = \
                e.leaf, e.subleaf, e.flags, e.eax, e.ebx, e.ecx, e.edx
        return out

    # Interrupts ---------------------------------------------------------------------
    def set_irq_line(self, intid: int, level: bool) -> None:
        """Drive ISA IRQ `intid` (PIC and IOAPIC pin) of the in-kernel irqchip."""
        if not self.irqchip:
            raise BackendError(f"IRQ {intid} raised without an interrupt controller: set machine.irqchip")
        self.vm.irq_line(intid, bool(level))
        (self._lines_high.add if level else self._lines_high.discard)(intid)

    def _halted(self) -> Event | None:
        """With the in-kernel irqchip KVM runs HLT itself; after a kick, a vCPU
        still halted with interrupts masked (RFLAGS.IF clear) can never wake:
        that is the guest's `hlt` end. A halted vCPU with IF set waits for an
        interrupt and keeps running.

        The state is written back as read: KVM_SET_MP_STATE makes KVM look
        for pending interrupts again (KVM_REQ_EVENT), which it otherwise does
        only when an interrupt controller's output rises. A PIC output that
        rose while LVT0 refused it (Linux without ACPI tables drives the PIC
        through LINT0 and masks LVT0 while it sets up its local APIC) would
        stay high and undelivered, and with it every ISA interrupt after it:
        Debian's kernel then hung at its first console write from user space.
        Re-checking at each kick delivers it within one kick period."""
        state = self.vcpu.get_mp_state()
        if state in (abi.KVM_MP_STATE_RUNNABLE, abi.KVM_MP_STATE_HALTED):
            self.vcpu.set_mp_state(state)
        if state != abi.KVM_MP_STATE_HALTED:
            return None
        r = self.vcpu.get_regs()
        if r.rflags & RFLAGS_IF:
            return None
        return Halt(self.vcpu.get_sregs().cs.base + r.rip - 1)

    # Whole state: snapshots and reuse --------------------------------------------
    def capture_cpu(self) -> x86_state.X86CpuState:
        """The vCPU's complete state (a pending I/O access completed first)."""
        if self.vcpu is None:
            self._create_vcpu()
        self.settle_io()
        return x86_state.capture(self.kvm, self.vcpu, self.vm if self.irqchip else None, self.pit)

    def restore_cpu(self, state: x86_state.X86CpuState) -> None:
        """Put a captured state back, exactly (a snapshot resumes where it was taken)."""
        chips = bool(state.vm_blobs)
        if self.vcpu is None:
            self._create_vcpu(X86State("long", 0, 0, {}, 0, irqchip=chips, pit="pit2" in state.vm_blobs))
        elif chips != self.irqchip or ("pit2" in state.vm_blobs) != self.pit:
            raise BackendError(f"the state is of a machine {'with' if chips else 'without'} the in-kernel "
                               f"irqchip{' and PIT' if 'pit2' in state.vm_blobs else ''}; this VM is not")
        self.settle_io()
        if chips:
            x86_state.restore_chips(self.vm, state)
        x86_state.restore(self.vcpu, state)

    def export_cpu(self) -> dict:
        """The complete vCPU state as text (snapshot files), with the neutral
        form the emulator loads (`arch`). vCPU 0's: x86_smp adds the others."""
        state = self.capture_cpu()
        text = x86_state.to_text(state)
        created = self.pristine.msrs if self.pristine is not None else _created_msrs()
        text["arch"] = cpustate.to_text(x86_state.to_arch(state, created))
        return text

    def import_arch(self, text: dict) -> None:
        """Load the neutral state another backend took (cpustate); BackendError
        naming what KVM cannot take."""
        try:
            state = x86_state.with_arch(self.capture_cpu(), cpustate.from_text(text))
        except cpustate.CrossError as e:
            raise BackendError(str(e)) from None
        self.restore_cpu(state)

    def import_cpu(self, text: dict) -> None:
        """Load export_cpu() text; BackendError if it is not a state of this backend."""
        aps = text.get("aps") if isinstance(text, dict) else None
        if aps and not self.runs_aps:
            raise BackendError(f"the state is of a machine with {1 + len(aps)} vCPUs; this VM has one")
        try:
            state = x86_state.from_text(text)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise BackendError(f"the saved KVM x86_64 CPU state is malformed ({type(e).__name__}: {e})") from None
        self.restore_cpu(state)

    def reset(self) -> None:
        """Make this backend what a new one is, its memory slots kept: the
        vCPU back to the state it was created in, no debug setup, no traps.
        The caller puts the memory back (dirty_ranges() says where)."""
        if self.vcpu is None:
            return
        self.settle_io()
        self.forget_run()
        self._forget_debug()
        if self.pristine is None:
            raise BackendError("reset() of a vCPU whose created state was not kept (call keep_pristine first)")
        if self.irqchip:
            # A line a device left high stays high in KVM's per-source line
            # state, which KVM_SET_IRQCHIP does not hold: lower it first (the
            # chips' registers it touches are written back next).
            for line in sorted(self._lines_high):
                self.vm.irq_line(line, False)
            self._lines_high.clear()
            # The chips as created: PICs, IOAPIC, and the PIT (KVM_SET_PIT2
            # reloads each counter now, so it counts from the reset as a new
            # VM's from its creation); the LAPIC and MP state go with the vCPU.
            x86_state.restore_chips(self.vm, self.pristine)
        x86_state.restore(self.vcpu, self.pristine, reuse=True)

    def _disarm_debug(self) -> None:
        if self.vcpu is not None and self._armed[0]:
            self.vcpu.set_guest_debug(0)

    def reusable(self) -> bool:
        """Whether reset() can make this VM indistinguishable from a new one.
        Not after KVM single-stepped it: KVM keeps state from that no ioctl
        reads or writes (on kvm_pvm a later UD2 then completes instead of
        faulting; the differential test in tests/machine/test_reuse.py caught it).
        Nor with APs (cpus > 1): their state is not reset. With the in-kernel
        irqchip (one vCPU) reset() writes the chips back as created."""
        return not self.stepped and not self._ap_vcpus

    def build_machine(self, irqchip: bool, pit: bool, cpuid=None) -> None:
        """Create the vCPU with a rig's `machine:` (irqchip, PIT) and
        `cpu.cpuid` (rig.model.Cpuid) before keep_pristine(), for a VM kept
        for rigs with that machine and CPUID."""
        if self.vcpu is not None:
            raise BackendError("build_machine() after the vCPU exists")
        self._create_vcpu(X86State("long", 0, 0, {}, 0, irqchip=irqchip or pit, pit=pit, cpuid=cpuid))

    def keep_pristine(self) -> None:
        """Remember the vCPU as created (before any rig ran), for reset();
        with the in-kernel irqchip also its LAPIC, PICs, IOAPIC and PIT."""
        if self.vcpu is None:
            self._create_vcpu()
        self.pristine = x86_state.capture(self.kvm, self.vcpu, self.vm if self.irqchip else None, self.pit)

    # Registers -------------------------------------------------------------------
    def get_regs(self) -> dict[str, int]:
        """kvm_regs by name, then the segment selectors, control registers and
        cs_base (not a register name users write: for linear addresses in
        reports), each struct read with one unpack."""
        out = dict(zip(_REG_FIELDS, _REGS.unpack(abi.ffi.buffer(self.vcpu.get_regs()))))
        out.update(zip(_SREG_NAMES, _sreg_order(_SREGS.unpack_from(abi.ffi.buffer(self.vcpu.get_sregs())))))
        return out

    def get_pc(self) -> int:
        return self.vcpu.get_regs().rip

    def get_extra_regs(self) -> dict[str, int]:
        s = self.vcpu.get_sregs()
        f = self.vcpu.get_fpu()
        out = gdb_registers([bytes(f.fpr[i]) for i in range(8)], f.fcw, f.fsw, f.ftwx, f.last_opcode,
                            f.last_ip, f.last_dp, [bytes(f.xmm[i]) for i in range(16)], f.mxcsr)
        out.update(fs_base=s.fs.base, gs_base=s.gs.base)
        return out

    def set_regs(self, regs: dict[str, int]) -> None:
        self._regs_set = True
        if "rip" in regs and self.irqchip and self.vcpu.get_mp_state() == abi.KVM_MP_STATE_HALTED:
            # KVM holds a halted vCPU in the kernel: moving its pc (a child's
            # `set`, a debugger's jump) means running from there.
            self.vcpu.set_mp_state(abi.KVM_MP_STATE_RUNNABLE)
        plain = {k: v for k, v in regs.items() if k in _REG_FIELDS}
        special = {k: v for k, v in regs.items() if k not in _REG_FIELDS}
        if plain:
            r = self.vcpu.get_regs()
            for name, value in plain.items():
                setattr(r, name, value & 0xFFFFFFFFFFFFFFFF)
            self.vcpu.set_regs(r)
        if special:
            s = self.vcpu.get_sregs()
            for name, value in special.items():
                if name in SEGMENTS:
                    seg = getattr(s, name)
                    seg.selector = value
                    if not s.cr0 & 1:  # real mode: the hidden base follows the selector
                        seg.base = value << 4
                else:
                    setattr(s, name, value)
            self.vcpu.set_sregs(s)

    def _linear_pc(self) -> tuple[int, object]:
        """(cs.base + rip, the kvm_regs buffer): debug exits report linear addresses."""
        r = self.vcpu.get_regs()
        return self.vcpu.get_sregs().cs.base + r.rip, r

    # Debug -------------------------------------------------------------------------
    def hw_debug_slots(self) -> tuple[int, int, bool]:
        if self.support.data_breakpoints:
            return (4, 4, True)  # DR0-DR3, shared by breakpoints and watchpoints
        return (4, 64, False)    # DR0-DR3 for breakpoints; page traps for watchpoints

    def sw_break_insn(self) -> bytes:
        if self.support.int3:
            return INT3
        # With the in-kernel irqchip KVM runs a planted HLT itself (and this KVM
        # reports neither INT3 nor ICEBP): software breakpoints take debug
        # registers instead, so nothing is planted.
        return b"" if self.irqchip else HLT

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: Collection[int]) -> None:
        setup = (tuple(slots), frozenset(sw_breakpoints or ()))
        if setup == self._setup:  # only single-step changes (stepping over a planted breakpoint)
            self._user_step = single_step
            self._apply()
            return
        self._setup = setup
        dr_slots = [(i, s) for i, s in enumerate(slots) if s.kind == "exec" or self.support.data_breakpoints]
        soft = [(i, s) for i, s in enumerate(slots) if not (s.kind == "exec" or self.support.data_breakpoints)]
        held = not self.sw_break_insn()
        if held:  # see sw_break_insn(): DR exec breakpoints
            dr_slots += [(-1, HwSlot(addr, "sw")) for addr in sorted(sw_breakpoints or ())]
            if len(dr_slots) > dr7_mod.SLOTS:
                why = ("with cpus > 1 no instruction is planted (stepping one vCPU over it would lift it for all)"
                       if self._ap_vcpus else "this KVM intercepts neither INT3 nor ICEBP and, with "
                       "machine.irqchip, runs HLT itself")
                raise BackendError(f"{len(dr_slots)} debug registers needed: {why}, so kind: sw breakpoints "
                                   f"use debug registers too; x86 has {dr7_mod.SLOTS}")
        if len(dr_slots) > dr7_mod.SLOTS:
            raise BackendError(f"{len(dr_slots)} debug registers asked for; x86 has {dr7_mod.SLOTS}")
        self._user_step = single_step
        self._sw_addrs = frozenset(sw_breakpoints or ())
        self._sw_int3 = bool(self._sw_addrs) and self.support.int3 and not held
        self._dr = [0] * 8
        self._dr_owner, self._dr_kind, self._dr_len = [], [], []
        for n, (i, s) in enumerate(dr_slots):
            self._dr[n] = s.addr
            self._dr_owner.append(i)
            self._dr_kind.append(s.kind)
            self._dr_len.append(s.length)
        self._shadow = {n: self.peek(self._dr[n], self._dr_len[n]) or b""
                        for n, kind in enumerate(self._dr_kind) if kind == "read"}
        pages: dict[int, str] = {}
        self._watch_mmio = False
        for _i, s in soft:
            mode = "ro" if s.kind == "write" else "absent"
            for page in range(s.addr & ~(PAGE - 1), s.addr + s.length, PAGE):
                if self._host(page, PAGE) is None:
                    self._watch_mmio = True  # device or unbacked: its accesses exit as MMIO anyway
                elif pages.get(page) != "absent":
                    pages[page] = mode
        self._soft = soft
        self._trap_pages = dict(pages)
        if self._exec_page is not None and pages.get(self._exec_page) == "absent":
            pages[self._exec_page] = "ro"   # still stepping the code there
        else:
            self._exec_page = None
        self.set_traps(pages)
        self._debug_cache = {}
        self._apply()

    def _apply(self, skip: int | None = None, step: bool = False) -> None:
        """KVM_SET_GUEST_DEBUG for the current setup (DR `skip` left out, `step` forced).

        A breakpoint hit switches between a few settings many times: each is
        computed once per set_debug() and kept."""
        key = (skip, step or self._user_step or (self._exec_page is not None and not self._exec_hlt))
        cached = self._debug_cache.get(key)
        if cached is None:
            kinds = [None if n == skip else ({"read": "access", "sw": "exec"}.get(k, k), self._dr_len[n])
                     for n, k in enumerate(self._dr_kind)]
            armed = any(kinds)
            control = 0
            if armed or key[1] or self._sw_int3:
                control = abi.KVM_GUESTDBG_ENABLE
                if key[1]:
                    control |= abi.KVM_GUESTDBG_SINGLESTEP
                if self._sw_int3:
                    control |= abi.KVM_GUESTDBG_USE_SW_BP
                if armed:
                    control |= abi.KVM_GUESTDBG_USE_HW_BP
            dr = list(self._dr)
            dr[7] = dr7_mod.encode_dr7(kinds) if armed else 0
            cached = self._debug_cache[key] = (control, dr if armed else None)
        self._armed = cached
        if cached[0] & abi.KVM_GUESTDBG_SINGLESTEP:
            self.stepped = True
        self.vcpu.set_guest_debug(*cached)

    def _debug_event(self, info) -> Event | None:
        exception, pc = info.exception, info.pc
        if exception == VECTOR_BP:
            NATIVE_HITS["int3"] += 1
            return SwBreak(pc, exception)
        if exception != VECTOR_DB:
            return ForeignDebug(pc, code=exception)
        dr6 = info.dr6
        fired = [n for n in range(len(self._dr_kind)) if dr6 & (1 << n)]
        # A single-step trap (BS) is this backend's own only while it steps;
        # otherwise it is the guest's TF, handed back to it.
        trap = bool(dr6 & DR6_BS)
        stepped = trap and self._stepping()
        watched = [n for n in fired if self._dr_kind[n] not in ("exec", "sw")]
        # An instruction breakpoint is a fault, taken before its instruction
        # runs; single-steps and data breakpoints are traps, taken after theirs.
        # So with BS or a data bit, an instruction breakpoint's bit can only
        # mean the *next* instruction matches (QEMU's TCG reports that early):
        # it faults when that instruction runs, and is not a hit yet.
        if not trap and not watched:
            for n in fired:
                if self._dr_kind[n] == "sw":   # a software breakpoint held in a debug register (irqchip)
                    self._resume = n
                    self._resume_pc = pc
                    self._fixup = True
                    return SwBreak(pc, VECTOR_DB)
                if self._dr_kind[n] == "exec":
                    NATIVE_HITS["dr-exec"] += 1
                    self._resume = n  # a fault: step past it with DRn off, then re-arm
                    self._resume_pc = pc
                    self._fixup = True
                    return HwBreak(pc, self._dr_owner[n], exception)
        watches = self._watch_slots(watched)
        step = self._step_done(pc) if stepped else None
        own = ForeignDebug(pc, code=exception) if trap and not stepped else None
        if watches:
            NATIVE_HITS["dr-watch"] += 1
            if step or own:
                self._queue.append(step or own)  # the same instruction also ended a step
            return WatchHit(pc, self._dr[watched[0]], tuple(watches), code=exception)
        if stepped or own:
            return step or own  # step None: the backend's own step past a breakpoint
        if fired:
            return None  # only `read` watches that saw writes
        return ForeignDebug(pc, code=exception)

    def _watch_slots(self, fired: list[int]) -> list[int]:
        """The HwSlot indexes of the DR watches that fired, less the `read` ones
        whose bytes changed (a write: x86 has no read-only data breakpoint)."""
        watches = []
        for n in fired:
            if self._dr_kind[n] == "read":
                now = self.peek(self._dr[n], self._dr_len[n]) or b""
                if now != self._shadow.get(n):
                    self._shadow[n] = now
                    continue
            watches.append(self._dr_owner[n])
        return watches

    def _stepping(self) -> bool:
        return self._user_step or self._resume is not None or self._exec_page is not None

    def _step_done(self, pc: int) -> Event | None:
        if self._exec_page is not None:
            self._exec_stepped(pc)
        if self._resume is not None:  # the step past a hardware breakpoint: re-arm it
            self._resume = None
            self._apply()
        return Step(pc) if self._user_step else None

    def _pc_now(self) -> int:
        return self._linear_pc()[0]

    def _needs_fixup(self) -> bool:
        return self._fixup or bool(self._shadow)

    def _before_run(self) -> None:
        self._fixup = False
        # `read` watches tell reads from writes by the bytes: what changed them
        # since the last exit (a `set` at a hit) was not the guest.
        for n in self._shadow:
            self._shadow[n] = self.peek(self._dr[n], self._dr_len[n]) or b""
        if self._resume is None:
            return
        # The exit gave the pc; only a `set` at the hit can have moved it since.
        pc = self._linear_pc()[0] if self._regs_set else self._resume_pc
        self._regs_set = False
        if self.peek(pc, 1) == HLT:
            # Stepping a HLT would swallow it: run it with DRn off instead. If it
            # is a planted breakpoint the session steps it next; keep DRn off
            # until that step is done, so the breakpoint there is not hit twice.
            self._apply(skip=self._resume)
            self._fixup = True
        else:
            self._apply(skip=self._resume, step=True)

    def _watch_access(self, addr: int, size: int, write: bool) -> WatchHit | None:
        """The watch hit of an access seen as MMIO (pc: 0 until delivered)."""
        slots = tuple(i for i, s in self._soft
                      if addr < s.addr + s.length and s.addr < addr + size
                      and not (s.kind == "write" and not write) and not (s.kind == "read" and write))
        if not slots:
            return None
        return WatchHit(0, addr, slots, size, write)

    # Code on a read-trapped page ------------------------------------------------
    def _exec_enter(self, pc: int) -> None:
        """The guest runs code on an unmapped (read-trapped) page: map it read-only
        and step its instructions, starting with the one at `pc`."""
        self._exec_page = pc & ~(PAGE - 1)
        self.set_traps({**self._trap_pages, self._exec_page: "ro"})
        self._exec_next(pc)

    def _exec_next(self, pc: int) -> None:
        """Before the instruction at `pc` (on the exec page) runs: its reads of watched bytes."""
        code = self.peek(pc, 15) or self.peek(pc, PAGE - (pc & (PAGE - 1))) or b""
        self._exec_hlt = code[:1] == HLT   # stepping HLT swallows it on some KVMs: run it unstepped
        r, s = self.vcpu.get_regs(), self.vcpu.get_sregs()
        regs = {name: getattr(r, name) for name in _REG_FIELDS}
        regs.update(fs_base=s.fs.base, gs_base=s.gs.base)
        _size, found = accesses(code, pc, regs, mode_of(s.cr0, s.efer, s.cs.l, s.cs.db))
        self._exec_reads = [hit for a in found if a.kind & READ and not a.kind & WRITE  # writes still exit
                            if (hit := self._watch_access(a.addr, a.size, False)) is not None]
        self._apply()

    def _exec_stepped(self, pc: int) -> None:
        """An instruction on the exec page ran: report its reads, then step the
        next one there, or unmap the page again once the code has left it."""
        self._owe_hits.extend(self._exec_reads)   # reported with the state after the access
        self._exec_reads = []
        if pc & ~(PAGE - 1) == self._exec_page:
            self._exec_next(pc)
            return
        self._exec_page, self._exec_hlt = None, False
        self.set_traps(self._trap_pages)
        self._apply()

    def _other_exit(self, reason: int, rs) -> Event | None:
        if (reason == abi.KVM_EXIT_INTERNAL_ERROR and rs.internal.suberror == abi.KVM_INTERNAL_ERROR_EMULATION
                and self._traps.get(self._pc_now() & ~(PAGE - 1)) == "absent"):
            self.vcpu.drop_pending_exception()   # KVM on VMX/SVM queues #UD with the exit
            self._exec_enter(self._pc_now())
            return None   # run on: the page is mapped and stepped now
        if reason != abi.KVM_EXIT_SHUTDOWN:
            return super()._other_exit(reason, rs)
        # KVM does not say which exception failed: read it from the code and the IDT.
        s = self.vcpu.get_sregs()
        pc = self._pc_now()
        detail = explain_shutdown(pc, self.peek, s.idt.base, s.idt.limit, s.cr0, s.efer)
        return Shutdown(pc, detail)

    def _halt_event(self) -> Event:
        pc, r = self._linear_pc()
        pc -= 1  # HLT exits with rip past the 1-byte instruction
        # While single-stepping no planted HLT runs (the session lifts it before
        # stepping onto it; the exec page runs HLTs unstepped), so this HLT is
        # the guest's own: KVM on VMX/SVM reports a stepped HLT as KVM_EXIT_HLT.
        stepped = bool(self._armed[0] & abi.KVM_GUESTDBG_SINGLESTEP)
        if self._exec_hlt:   # the HLT the exec page ran unstepped: step again from what follows
            self._exec_hlt = False
            self._apply()
        if pc in self._sw_addrs and not self._sw_int3 and not stepped:
            r.rip -= 1  # a planted HLT: the breakpoint, with rip back on it
            self.vcpu.set_regs(r)
            return SwBreak(pc)
        return Halt(pc)

    def reinject(self, event: DebugEvent) -> None:
        flag = abi.KVM_GUESTDBG_INJECT_BP if event.code == VECTOR_BP else abi.KVM_GUESTDBG_INJECT_DB
        control, dr = self._armed  # as armed now, DR7 included: injecting must not disarm anything
        self.vcpu.set_guest_debug(control | abi.KVM_GUESTDBG_ENABLE | flag, dr)
