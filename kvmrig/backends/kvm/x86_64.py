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
"""

from __future__ import annotations

import os
from collections.abc import Collection

from kvmrig.arch.x86_64 import dr7 as dr7_mod
from kvmrig.arch.x86_64.boot import X86State, system_area
from kvmrig.arch.x86_64.regs import CONTROL, GPRS, SEGMENTS
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import DebugEvent, Event, ForeignDebug, Halt, HwBreak, Step, SwBreak, WatchHit
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.common import PAGE, KvmBackendBase
from kvmrig.backends.kvm.perprocess import PerProcess
from kvmrig.backends.kvm.x86_probe import debug_support
from kvmrig.errors import BackendError

DR6_BS = dr7_mod.DR6_BS
VECTOR_DB, VECTOR_BP = 1, 3
INT3, HLT = b"\xcc", b"\xf4"
# KVM needs 3 pages for the real-mode TSS and 1 for the EPT identity map,
# somewhere no memory slot is; QEMU's choice first, then lower holes.
_REG_FIELDS = GPRS + ("rip", "rflags")
SYNC = abi.KVM_SYNC_X86_REGS | abi.KVM_SYNC_X86_SREGS
_sync_cache: PerProcess[bool] = PerProcess()


def _sync_regs_supported(kvm) -> bool:
    """KVM_CAP_SYNC_REGS covers regs and sregs here (asked once per process;
    KVMRIG_KVM_SYNC_REGS=0 turns it off, to compare)."""
    if os.environ.get("KVMRIG_KVM_SYNC_REGS", "1") == "0":
        return False
    return _sync_cache.get(lambda: kvm.check_extension(abi.KVM_CAP_SYNC_REGS) & SYNC == SYNC)


class KvmX86Backend(KvmBackendBase):
    arch = "x86_64"

    def __init__(self) -> None:
        super().__init__()
        self.support = debug_support(self.kvm)
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

    # Boot ----------------------------------------------------------------------
    def _system_area(self) -> int:
        start = system_area(self.regions)  # machine/plan.py checks it first, at the rig's line
        if start is not None:
            return start
        raise BackendError("no free 16 KiB below 4 GiB for KVM's TSS and identity map: "
                           "the rig's memory map covers every candidate hole")

    def set_initial_state(self, state: X86State) -> None:
        area = self._system_area()
        self.vm.set_identity_map_addr(area)
        self.vm.set_tss_addr(area + PAGE)
        vcpu = self.vcpu = self.vm.create_vcpu(0)
        vcpu.set_cpuid2(self.kvm.supported_cpuid())
        if _sync_regs_supported(self.kvm):
            vcpu.enable_sync_regs(SYNC)  # registers come with every exit: no GET ioctls
        s = vcpu.get_sregs()
        for name, seg in state.segments.items():
            dst = getattr(s, name)
            dst.selector, dst.base, dst.limit, dst.type = seg.selector, seg.base, seg.limit, seg.type
            dst.present, dst.dpl, dst.db, dst.s, dst.l, dst.g = seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g
            dst.avl, dst.unusable = seg.avl, seg.unusable
        s.gdt.base, s.gdt.limit = state.gdt
        s.idt.base, s.idt.limit = state.idt
        s.cr0, s.cr3, s.cr4, s.efer = state.cr0, state.cr3, state.cr4, state.efer
        vcpu.set_sregs(s)
        r = vcpu.get_regs()
        for name in _REG_FIELDS:
            setattr(r, name, 0)
        r.rip, r.rflags = state.rip, state.rflags
        vcpu.set_regs(r)

    # Registers -------------------------------------------------------------------
    def get_regs(self) -> dict[str, int]:
        r = self.vcpu.get_regs()
        out = {name: getattr(r, name) for name in _REG_FIELDS}
        s = self.vcpu.get_sregs()
        for name in SEGMENTS:
            out[name] = getattr(s, name).selector
        for name in CONTROL:
            out[name] = getattr(s, name)
        out["cs_base"] = s.cs.base  # not a register name users write: for linear addresses in reports
        return out

    def get_pc(self) -> int:
        return self.vcpu.get_regs().rip

    def set_regs(self, regs: dict[str, int]) -> None:
        self._regs_set = True
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
        return INT3 if self.support.int3 else HLT

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: Collection[int]) -> None:
        setup = (tuple(slots), frozenset(sw_breakpoints or ()))
        if setup == self._setup:  # only single-step changes (stepping over a planted breakpoint)
            self._user_step = single_step
            self._apply()
            return
        self._setup = setup
        dr_slots = [(i, s) for i, s in enumerate(slots) if s.kind == "exec" or self.support.data_breakpoints]
        soft = [(i, s) for i, s in enumerate(slots) if not (s.kind == "exec" or self.support.data_breakpoints)]
        if len(dr_slots) > dr7_mod.SLOTS:
            raise BackendError(f"{len(dr_slots)} debug registers asked for; x86 has {dr7_mod.SLOTS}")
        self._user_step = single_step
        self._sw_addrs = frozenset(sw_breakpoints or ())
        self._sw_int3 = bool(self._sw_addrs) and self.support.int3
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
        self.set_traps(pages)
        self._debug_cache = {}
        self._apply()

    def _apply(self, skip: int | None = None, step: bool = False) -> None:
        """KVM_SET_GUEST_DEBUG for the current setup (DR `skip` left out, `step` forced).

        A breakpoint hit switches between a few settings many times: each is
        computed once per set_debug() and kept."""
        key = (skip, step or self._user_step)
        cached = self._debug_cache.get(key)
        if cached is None:
            kinds = [None if n == skip else ("access" if k == "read" else k, self._dr_len[n])
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
        self.vcpu.set_guest_debug(*cached)

    def _debug_event(self, info) -> Event | None:
        exception, pc = info.exception, info.pc
        if exception == VECTOR_BP:
            return SwBreak(pc, exception)
        if exception != VECTOR_DB:
            return ForeignDebug(pc, code=exception)
        dr6 = info.dr6
        if self._resume is not None and dr6 & DR6_BS:
            return self._step_done(pc)
        fired = [n for n in range(len(self._dr_kind)) if dr6 & (1 << n)]
        for n in fired:
            if self._dr_kind[n] == "exec":
                self._resume = n  # a fault: step past it with DRn off, then re-arm
                self._resume_pc = pc
                self._fixup = True
                return HwBreak(pc, self._dr_owner[n], exception)
        watches = []
        for n in fired:
            if self._dr_kind[n] == "read":
                now = self.peek(self._dr[n], self._dr_len[n]) or b""
                if now != self._shadow.get(n):
                    self._shadow[n] = now  # the bytes changed: a write, not a read
                    continue
            watches.append(self._dr_owner[n])
        if watches:
            return WatchHit(pc, self._dr[fired[0]], tuple(watches), code=exception)
        if dr6 & DR6_BS:
            return self._step_done(pc)
        if fired:
            return None  # only `read` watches that saw writes fired
        return ForeignDebug(pc, code=exception)

    def _stepping(self) -> bool:
        return self._user_step or self._resume is not None

    def _step_done(self, pc: int) -> Event | None:
        if self._resume is not None:  # the step past a hardware breakpoint: re-arm it
            self._resume = None
            self._apply()
        return Step(pc) if self._user_step else None

    def _pc_now(self) -> int:
        return self._linear_pc()[0]

    def _needs_fixup(self) -> bool:
        return self._fixup

    def _before_run(self) -> None:
        self._fixup = False
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

    def _halt_event(self) -> Event:
        pc, r = self._linear_pc()
        pc -= 1  # HLT exits with rip past the 1-byte instruction
        if pc in self._sw_addrs and not self._sw_int3:
            r.rip -= 1  # a planted HLT: the breakpoint, with rip back on it
            self.vcpu.set_regs(r)
            return SwBreak(pc)
        return Halt(pc)

    def reinject(self, event: DebugEvent) -> None:
        flag = abi.KVM_GUESTDBG_INJECT_BP if event.code == VECTOR_BP else abi.KVM_GUESTDBG_INJECT_DB
        control, dr = self._armed  # as armed now, DR7 included: injecting must not disarm anything
        self.vcpu.set_guest_debug(control | abi.KVM_GUESTDBG_ENABLE | flag, dr)
