"""The x86_64 KVM backend: CPUID, segment/control state, registers by name,
and DR0-DR3/DR7 debugging through KVM_SET_GUEST_DEBUG.
"""

from __future__ import annotations

from kvmrig.arch.x86_64 import dr7 as dr7_mod
from kvmrig.arch.x86_64.boot import X86State
from kvmrig.arch.x86_64.regs import CONTROL, GPRS, SEGMENTS
from kvmrig.backends import base
from kvmrig.backends.base import Event, HwSlot
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.common import KvmBackendBase

RFLAGS_RF = 1 << 16          # SDM vol.3 17.3.1.1: resume flag, suppresses the next instruction breakpoint
DR6_BS = 1 << 14             # single-step
VECTOR_DB, VECTOR_BP = 1, 3
# KVM needs 3 pages for the real-mode TSS and 1 for the EPT identity map,
# somewhere no memory slot is; QEMU's choice first, then lower holes.
SYSTEM_PAGES = 4 * 0x1000
SYSTEM_CANDIDATES = (0xFEFFC000, 0xFFFFC000 - 0x1000000, 0xD0000000, 0xB0000000, 0x90000000)
_REG_FIELDS = GPRS + ("rip", "rflags")


class KvmX86Backend(KvmBackendBase):
    arch = "x86_64"

    def __init__(self) -> None:
        super().__init__()
        self._control = 0
        self._dr: list[int] = [0] * 8
        self._slot_kinds: list[str] = []
        self._rf_next = False

    # Boot ----------------------------------------------------------------------
    def _system_area(self) -> int:
        for start in SYSTEM_CANDIDATES:
            end = start + SYSTEM_PAGES
            if all(end <= lo or start >= hi for lo, hi in self.regions):
                return start
        from kvmrig.errors import BackendError
        raise BackendError("no free 16 KiB below 4 GiB for KVM's TSS and identity map: "
                           "the rig's memory map covers every candidate hole")

    def set_initial_state(self, state: X86State) -> None:
        area = self._system_area()
        self.vm.set_identity_map_addr(area)
        self.vm.set_tss_addr(area + 0x1000)
        vcpu = self.vcpu = self.vm.create_vcpu(0)
        vcpu.set_cpuid2(self.kvm.supported_cpuid())
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
        return out

    def get_pc(self) -> int:
        return self.vcpu.get_regs().rip

    def set_regs(self, regs: dict[str, int]) -> None:
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

    # Debug -------------------------------------------------------------------------
    def hw_debug_slots(self) -> tuple[int, int, bool]:
        return (4, 4, True)  # DR0-DR3, shared by breakpoints and watchpoints

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: bool) -> None:
        control = 0
        if slots or single_step or sw_breakpoints:
            control = abi.KVM_GUESTDBG_ENABLE
            if single_step:
                control |= abi.KVM_GUESTDBG_SINGLESTEP
            if sw_breakpoints:
                control |= abi.KVM_GUESTDBG_USE_SW_BP
            if slots:
                control |= abi.KVM_GUESTDBG_USE_HW_BP
        dr = [0] * 8
        kinds = []
        for i, slot in enumerate(slots):
            dr[i] = slot.addr
            # x86 has no read-only data breakpoint: `read` arms read-or-write
            # (R/W = 11) and the machine layer drops the hits that changed memory.
            kinds.append("access" if slot.kind == "read" else slot.kind)
        dr[7] = dr7_mod.encode_dr7([(k, s.length) for k, s in zip(kinds, slots)]) if slots else 0
        self._control, self._dr, self._slot_kinds = control, dr, kinds
        self.vcpu.set_guest_debug(control, dr if slots else None)

    def _debug_event(self, info) -> Event:
        exception, pc = info.exception, info.pc
        if exception == VECTOR_BP:
            return Event(base.DEBUG, pc=pc, detail="sw", raw=exception)
        if exception == VECTOR_DB:
            dr6 = info.dr6
            fired = tuple(i for i in range(len(self._slot_kinds)) if dr6 & (1 << i))
            if fired:
                slot = fired[0]
                if self._slot_kinds[slot] == "exec":
                    self._rf_next = True  # the breakpoint is a fault: resume past it once
                    return Event(base.DEBUG, pc=pc, slot=slot, addr=self._dr[slot], detail="hw", raw=fired)
                return Event(base.DEBUG, pc=pc, slot=slot, addr=self._dr[slot], detail="watch", raw=fired)
            if dr6 & DR6_BS:
                return Event(base.DEBUG, pc=pc, detail="step", raw=dr6)
        return Event(base.DEBUG, pc=pc, detail="foreign", raw=exception)

    def _before_run(self) -> None:
        if self._rf_next:
            self._rf_next = False
            r = self.vcpu.get_regs()
            r.rflags |= RFLAGS_RF
            self.vcpu.set_regs(r)

    def reinject(self, event: Event) -> None:
        flag = abi.KVM_GUESTDBG_INJECT_BP if event.raw == VECTOR_BP else abi.KVM_GUESTDBG_INJECT_DB
        self.vcpu.set_guest_debug(self._control | abi.KVM_GUESTDBG_ENABLE | flag,
                                  self._dr if self._slot_kinds else None)

    def _halt_pc(self) -> int:
        return self.vcpu.get_regs().rip - 1  # HLT exits with rip past the 1-byte instruction
