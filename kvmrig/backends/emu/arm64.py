"""The arm64 emulator backend: EL1 on unicorn's Cortex-A72, registers by
name, PSCI through HVC/SMC, WFI, and synchronous exceptions taken to the
guest's own vectors.

Boot: unicorn's AArch64 CPU starts at EL1h (CurrentEL = 1) with the MMU off
and CPACR_EL1 = 0, as a KVM vCPU does; set_initial_state writes PSTATE
(EL1h, DAIF masked) and the pc.

Exceptions: unicorn never takes a synchronous exception to the guest's
vectors; it reports it to UC_HOOK_INTR *before* anything is updated (ESR,
ELR and the pc are still those of the instruction). This backend looks at
the instruction at the pc and does what KVM (with PSCI 0.2) would:

* HVC or SMC (undefined at EL1 on this CPU, so intno 1): an SMCCC call
  answered here, as KVM answers it in the kernel. PSCI SYSTEM_OFF and
  SYSTEM_RESET end the run as SYSTEM "off" / "reset" with x0 = -6
  (INTERNAL_FAILURE, what KVM preloads), x1..x3 = 0 and the pc after the
  call; PSCI_VERSION answers 1.1, PSCI_FEATURES 0 for the functions here,
  anything else NOT_SUPPORTED (-1), and the guest goes on.
* BRK not planted by kvmrig: with software breakpoints armed, KVM traps
  every BRK, so it is reported as a "sw" debug event the machine hands back
  (reinject); otherwise, and on reinject, it is taken by the guest: ESR_EL1 =
  EC 0x3c | IL | imm16, ELR_EL1 = the BRK, SPSR_EL1 = PSTATE, PSTATE = EL1h
  with DAIF masked, pc = VBAR_EL1 + the synchronous vector.
* SVC (EC 0x15, ELR = the next instruction) and undefined instructions
  (EC 0x00) are taken by the guest the same way.
* Data and instruction aborts end the run UNHANDLED: unicorn does not
  expose their syndrome, so they cannot be handed to the guest faithfully.

WFI / WFE: with no interrupt source a KVM vCPU sleeps in WFI until the
rig's timeout; so does this backend (the run ends with `timeout`, the pc
after the WFI).
"""

from __future__ import annotations

import time

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc, UcError
from unicorn import arm64_const as A

from kvmrig.arch.arm64 import esr
from kvmrig.arch.arm64.boot import Arm64State
from kvmrig.arch.arm64.onereg import ONE_REGS, sp_for_pstate
from kvmrig.arch.arm64.regs import CANONICAL, SYSREGS
from kvmrig.backends import base
from kvmrig.backends.base import Event
from kvmrig.backends.emu.core import EmuBackendBase
from kvmrig.errors import BackendError

TCG_BUFFER = 64 << 20
PAGE = 0x1000

# QEMU's exception numbers (target/arm/cpu.h EXCP_*), as UC_HOOK_INTR gets them.
EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT = 1, 2, 3, 4, 7
EXCP_HVC, EXCP_SMC = 11, 13

# A64 encodings (Arm ARM C6.2: exception generation, hints).
def _is(insn: int, mask: int, value: int) -> bool:
    return insn & mask == value


MASK_EXC = 0xFFE0001F
SVC, HVC, SMC, BRK = 0xD4000001, 0xD4000002, 0xD4000003, 0xD4200000
WFI, WFE = 0xD503207F, 0xD503205F

# SMCCC / PSCI function ids (Arm DEN0022, DEN0028) and return values.
PSCI_VERSION, PSCI_FEATURES = 0x84000000, 0x8400000A
PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET = 0x84000008, 0x84000009
PSCI_SYSTEM_OFF64, PSCI_SYSTEM_RESET64 = 0xC4000008, 0xC4000009
SMCCC_VERSION = 0x80000000
PSCI_1_1 = 0x10001
NOT_SUPPORTED = (1 << 64) - 1             # -1
INTERNAL_FAILURE = (1 << 64) - 6          # -6: what KVM leaves in x0 at SYSTEM_OFF/RESET
KNOWN = {PSCI_VERSION, PSCI_FEATURES, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, SMCCC_VERSION}


def _sysreg_fields(reg_id: int) -> tuple[int, int, int, int, int]:
    """(crn, crm, op0, op1, op2) of a KVM_REG_ARM64_SYSREG id (onereg.sys_reg's layout)."""
    return ((reg_id >> 7) & 0xF, (reg_id >> 3) & 0xF, (reg_id >> 14) & 0x3, (reg_id >> 11) & 0x7, reg_id & 0x7)


# Canonical name -> unicorn register id, or a (crn, crm, op0, op1, op2) system register.
REGS: dict[str, int | tuple[int, int, int, int, int]] = {
    **{f"x{n}": getattr(A, f"UC_ARM64_REG_X{n}") for n in range(31)},
    "sp_el0": A.UC_ARM64_REG_SP_EL0, "sp_el1": A.UC_ARM64_REG_SP_EL1,
    "pc": A.UC_ARM64_REG_PC, "pstate": A.UC_ARM64_REG_PSTATE,
    "elr_el1": A.UC_ARM64_REG_ELR_EL1, "spsr_el1": (4, 0, 3, 0, 0),   # SPSR_EL1: op0 3, op1 0, CRn 4, CRm 0, op2 0
    "fpsr": A.UC_ARM64_REG_FPSR, "fpcr": A.UC_ARM64_REG_FPCR,
    **{f"v{n}": getattr(A, f"UC_ARM64_REG_V{n}") for n in range(32)},
    **{name: _sysreg_fields(ONE_REGS[name][0]) for name in SYSREGS},
}


class EmuArm64Backend(EmuBackendBase):
    arch = "arm64"
    PC_REG = A.UC_ARM64_REG_PC

    def _create(self):
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
        uc.ctl_set_page_size(PAGE)
        return uc

    def _install_base_hooks(self) -> None:
        super()._install_base_hooks()
        self._trap: tuple[int, int] | None = None
        self._deadline = 0.0

    # Boot ----------------------------------------------------------------
    def set_initial_state(self, state: Arm64State) -> None:
        self.set_regs({"pstate": state.pstate, "pc": state.pc})

    # Registers -----------------------------------------------------------
    def _read(self, name: str) -> int:
        reg = REGS[name]
        if isinstance(reg, tuple):
            return self.uc.reg_read(A.UC_ARM64_REG_CP_REG, reg)
        return self.uc.reg_read(reg)

    def get_regs(self) -> dict[str, int]:
        self._settle()
        uc = self.uc
        # The banked copy of the live stack pointer is stale in unicorn: take "sp" for it.
        live = uc.reg_read(A.UC_ARM64_REG_SP)
        out = {name: self._read(name) for name in CANONICAL if name != "sp"}
        try:
            out[sp_for_pstate(out["pstate"])] = live
        except ValueError:
            pass
        out["sp"] = live
        return out

    def get_pc(self) -> int:
        self._settle()
        return self.uc.reg_read(A.UC_ARM64_REG_PC)

    def set_regs(self, regs: dict[str, int]) -> None:
        self._settle()
        uc = self.uc
        items = sorted(regs.items(), key=lambda kv: kv[0].lower() != "pstate")   # PSTATE first: it decides "sp"
        for name, value in items:
            key = name.lower()
            try:
                if key == "sp" or (key in ("sp_el0", "sp_el1")
                                   and key == sp_for_pstate(uc.reg_read(A.UC_ARM64_REG_PSTATE))):
                    uc.reg_write(A.UC_ARM64_REG_SP, value & (2**64 - 1))
                    continue
                reg = REGS[key]
            except KeyError:
                raise BackendError(f"arm64 has no register {name!r} kvmrig can set") from None
            width = 128 if key.startswith("v") else 64
            value &= (1 << width) - 1
            try:
                if isinstance(reg, tuple):
                    uc.reg_write(A.UC_ARM64_REG_CP_REG, (*reg, value))
                else:
                    uc.reg_write(reg, value)
            except UcError as e:
                raise BackendError(f"setting {name} to {value:#x}: {e}") from None

    # Running ---------------------------------------------------------------
    def run(self, deadline: float) -> Event:
        self._deadline = deadline
        return super().run(deadline)

    def _insn(self, addr: int) -> int | None:
        data = self.peek(addr, 4)
        return None if data is None else int.from_bytes(data, "little")

    def _on_interrupt(self, intno: int, _ud=None) -> None:
        if self._trap is None and self._stop_event is None:
            self._trap = (intno, self.uc.reg_read(A.UC_ARM64_REG_PC))
        self.uc.emu_stop()

    def _finished(self, err):
        trap, self._trap = self._trap, None
        if trap is not None and self._hook_error is None and self._stop_event is None:
            return self._exception(*trap)
        return super()._finished(err)

    def _exception(self, intno: int, pc: int) -> Event | None:
        insn = self._insn(pc)
        call_at = None
        if insn is not None and (_is(insn, MASK_EXC, HVC) or _is(insn, MASK_EXC, SMC)):
            call_at = pc                       # undefined at EL1 here: pc on the call
        elif intno in (EXCP_HVC, EXCP_SMC):
            call_at = pc - 4                   # taken as HVC/SMC: pc already past it
        if call_at is not None:
            return self._smccc(call_at)
        if intno == EXCP_BKPT and insn is not None and _is(insn, MASK_EXC, BRK):
            syndrome = esr.EC_BRK64 << 26 | 1 << 25 | (insn >> 5) & 0xFFFF
            if self._sw:   # as KVM, which traps every BRK while software breakpoints are armed
                return Event(base.DEBUG, pc=pc, detail="sw", raw=syndrome)
            return self._take(syndrome, pc)
        if intno == EXCP_SWI:
            prev = self._insn(pc - 4)
            imm = (prev >> 5) & 0xFFFF if prev is not None and _is(prev, MASK_EXC, SVC) else 0
            return self._take(esr.EC_SVC64 << 26 | 1 << 25 | imm, pc)
        if intno == EXCP_UDEF:
            return self._take(esr.EC_UNKNOWN << 26 | 1 << 25, pc)
        what = {EXCP_DATA_ABORT: "a data abort", EXCP_PREFETCH_ABORT: "an instruction abort"}.get(
            intno, f"exception {intno}")
        return Event(base.UNHANDLED, pc=pc, raw=intno, detail=(
            f"{what} at pc {pc:#x}: unicorn does not report its syndrome, so the emulator backend cannot "
            "hand it to the guest's vectors; run this rig on KVM (`backend: kvm`)"))

    def _take(self, syndrome: int, return_to: int) -> None:
        """Synchronous exception entry to EL1 (Arm ARM D1.10): ESR, ELR, SPSR,
        PSTATE = EL1h with DAIF masked, pc = VBAR_EL1 + the vector."""
        regs = {name: self._read(name) for name in ("pstate", "vbar_el1")}
        try:
            vector = esr.sync_vector(regs["pstate"])
        except ValueError as e:
            raise BackendError(f"cannot take an exception to EL1: {e}") from None
        self.set_regs({"esr_el1": syndrome, "elr_el1": return_to, "spsr_el1": regs["pstate"],
                       "pstate": esr.PSTATE_EL1H_MASKED, "pc": regs["vbar_el1"] + vector})
        return None

    def _smccc(self, at: int) -> Event | None:
        """An HVC/SMC call: PSCI as KVM answers it (module doc)."""
        fn = self.uc.reg_read(A.UC_ARM64_REG_X0) & 0xFFFFFFFF
        result = NOT_SUPPORTED
        off = {PSCI_SYSTEM_OFF: "off", PSCI_SYSTEM_OFF64: "off",
               PSCI_SYSTEM_RESET: "reset", PSCI_SYSTEM_RESET64: "reset"}.get(fn)
        if off is not None:
            result = INTERNAL_FAILURE
        elif fn in (PSCI_VERSION, SMCCC_VERSION):
            result = PSCI_1_1
        elif fn == PSCI_FEATURES:
            result = 0 if (self.uc.reg_read(A.UC_ARM64_REG_X1) & 0xFFFFFFFF) in KNOWN else NOT_SUPPORTED
        self.set_regs({"x0": result, "x1": 0, "x2": 0, "x3": 0, "pc": at + 4})
        if off is not None:
            return Event(base.SYSTEM, pc=at + 4, detail=off, raw=fn)
        return None

    def reinject(self, event: Event) -> None:
        """Hand a BRK kvmrig did not plant to the guest."""
        if isinstance(event.raw, int) and event.raw >> 26 == esr.EC_BRK64:
            self._take(event.raw, event.pc)
            self._flush = True

    def _natural_stop(self) -> Event:
        pc = self.get_pc()
        if self._insn(pc - 4) in (WFI, WFE):
            # No interrupt will come: sleep as a KVM vCPU does, until the timeout.
            time.sleep(max(self._deadline - time.monotonic(), 0.0))
            return Event(base.TIMEOUT, pc=pc)
        return Event(base.UNHANDLED, pc=pc, detail=f"the emulator stopped at {pc:#x} for no reason it "
                                                   "reported (emulator backend)")
