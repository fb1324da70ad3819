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
* Data and instruction aborts end the run UNHANDLED. A fault of the
  translation (below) is described exactly: kind, VA, level, the descriptor
  and the ESR_EL1/FAR_EL1 the guest would have got (the event's `raw` is that
  ESR, `addr` the VA). Other aborts (unicorn's own, e.g. alignment) have no
  syndrome unicorn would give.

The MMU (SCTLR_EL1.M = 1): translation is kvmrig's own VMSAv8-64 stage-1
walk (kvmrig/arch/arm64/mmu.py), run from unicorn's UC_HOOK_TLB_FILL with
the TLB in UC_TLB_VIRTUAL mode. QEMU's softmmu TLB stays in front of it, so
the hook runs only on a TLB miss (the first access to a 4 KiB page after a
flush; SCTLR_EL1/TCR_EL1 writes, TTBRn_EL1 writes with a new ASID and TLBI
flush it, as on QEMU). At a miss the hook reads SCTLR_EL1, TCR_EL1,
TTBR0/1_EL1 and PSTATE (EL, PAN) with one prepared call, walks the guest's
tables in the machine's memory and installs the page with what the access's
EL may do on it, or refuses it: unicorn then stops with UC_ERR_EXCEPTION
before the access, pc on the instruction, and the recorded fault becomes the
UNHANDLED event. The hook sees only the page, so the exact address (FAR_EL1)
comes from the instruction: the pc for a fetch, the address a load/store
computes (mmu.access_address) for data.

* With the MMU off the TLB is unicorn's own (UC_TLB_CPU, the flat map) and
  no Python runs per page: the mode follows SCTLR_EL1.M through a hook on
  MSR (before the write, which flushes the TLB; ~2 us per MSR to a system
  register) and at every run() (the machine may set SCTLR_EL1).
* The entries we install are 4 KiB pieces, also of 2 MiB / 1 GiB blocks,
  and QEMU's TLBI by VA drops only the piece holding that VA (it knows of
  large pages only from its own walk): a hook on SYS flushes the whole TLB
  at every TLBI while we walk (over-invalidation is always allowed).

Why not unicorn's own walk: unicorn resets its Cortex-A72 with SCR_EL3.RW = 0
and HCR_EL2.RW = 0, so QEMU's MMU code takes EL1 for AArch32 and reads the
tables with the AArch32 TTBCR/short-descriptor rules: an AArch64 identity
map prefetch-aborts on the instruction after the MSR that enables it. The
backend sets SCR_EL3.NS|RW and HCR_EL2.RW at creation (EL1 non-secure
AArch64, as under KVM), which makes QEMU's own walk right too (it serves AT
S1E1R and friends, and tests/backends/emu/test_emu_arm64_mmu.py checks it
against ours on random tables); the translation of accesses is ours so that
a fault says what and where.

WFI / WFE: with no interrupt source a KVM vCPU sleeps in WFI until the
rig's timeout; so does this backend (the run ends with `timeout`, the pc
after the WFI).
"""

from __future__ import annotations

import ctypes
import struct
import time
from dataclasses import replace

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc, UcError
from unicorn import arm64_const as A
from unicorn import unicorn_const as U

from kvmrig.arch.arm64 import cpustate, esr, mmu
from kvmrig.arch.arm64.boot import Arm64State
from kvmrig.arch.arm64.onereg import ONE_REGS, sp_for_pstate
from kvmrig.arch.arm64.regs import CANONICAL, SYSREGS
from kvmrig.arch.arm64.reset import EMU_RESET
from kvmrig.backends.events import DebugEvent, Event, SwBreak, SystemEvent, Timeout, Unhandled
from kvmrig.backends.emu.core import EmuBackendBase
from kvmrig.errors import BackendError


def refusal(gic: bool, cpus: int) -> str:
    """Why this backend cannot run a rig with an interrupt controller or several vCPUs."""
    what = []
    if gic:
        what.append("a GICv3 with the generic timer's interrupts (`gic:`)")
    if cpus > 1:
        what.append(f"{cpus} vCPUs (`cpus:`)")
    return (f"the emulator backend cannot give this rig {' or '.join(what)}: unicorn models no interrupt "
            "controller and one CPU only, and a guest waiting for interrupts would just time out there; "
            "run it on arm64 KVM (from an x86_64 host: kvmrig run --in-vm arm64)")


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

# System registers the boot fix and the walk use: (crn, crm, op0, op1, op2).
SCR_EL3, HCR_EL2 = (1, 1, 3, 6, 0), (1, 1, 3, 4, 0)
SCTLR_EL1, TCR_EL1, ID_AA64MMFR0_EL1 = (1, 0, 3, 0, 0), (2, 0, 3, 0, 2), (0, 7, 3, 0, 0)
SCR_NS, SCR_RW, HCR_RW = 1 << 0, 1 << 10, 1 << 31
_U64 = struct.Struct("<Q").unpack_from
# unicorn's access types in UC_HOOK_TLB_FILL -> the walker's.
TLB_ACCESS = {U.UC_MEM_READ: mmu.READ, U.UC_MEM_WRITE: mmu.WRITE, U.UC_MEM_FETCH: mmu.FETCH}


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
        # EL1 is non-secure AArch64, as on KVM: unicorn resets SCR_EL3 and HCR_EL2
        # with RW = 0, which makes QEMU treat EL1 as AArch32 (module doc).
        cp = A.UC_ARM64_REG_CP_REG
        uc.reg_write(cp, (*SCR_EL3, uc.reg_read(cp, SCR_EL3) | SCR_NS | SCR_RW))
        uc.reg_write(cp, (*HCR_EL2, uc.reg_read(cp, HCR_EL2) | HCR_RW))
        return uc

    def _install_base_hooks(self) -> None:
        super()._install_base_hooks()
        self._trap: tuple[int, int] | None = None
        self._deadline = 0.0
        uc = self.uc
        parange = uc.reg_read(A.UC_ARM64_REG_CP_REG, ID_AA64MMFR0_EL1) & 0xF
        self.pa_bits = mmu.PARANGE_BITS[min(parange, len(mmu.PARANGE_BITS) - 1)]
        self._walk_fault: mmu.Fault | None = None
        self.tlb_fills = 0                 # TLB-fill hook calls (for measurements)
        self._regime_regs = self._regime_reader()
        self._walking = False              # UC_TLB_VIRTUAL (our walk) rather than UC_TLB_CPU (the MMU off)
        uc.hook_add(U.UC_HOOK_TLB_FILL, self._guard(self._on_tlb_fill, False))
        uc.hook_add(U.UC_HOOK_INSN, self._guard(self._on_msr, False), aux1=A.UC_ARM64_INS_MSR)
        uc.hook_add(U.UC_HOOK_INSN, self._guard(self._on_sys, False), aux1=A.UC_ARM64_INS_SYS)

    def _forget_arch(self) -> None:
        self._trap, self._walk_fault = None, None
        self._walk(False)   # the created context has the MMU off

    # The MMU -------------------------------------------------------------------
    def _regime_reader(self):
        """A function returning (SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, PSTATE)
        with one prepared call into unicorn (~1 us; the binding's reg_read_batch
        builds its arguments each time, ~10 us), for the TLB-fill hook."""
        uc = self.uc
        try:
            from unicorn.unicorn_py3.arch.arm64 import UcRegCP64
            raw = uc._do_reg_read_batch
        except (ImportError, AttributeError):   # another binding layout: the public, slower call
            ids = [(A.UC_ARM64_REG_CP_REG, SCTLR_EL1), (A.UC_ARM64_REG_CP_REG, TCR_EL1),
                   A.UC_ARM64_REG_TTBR0_EL1, A.UC_ARM64_REG_TTBR1_EL1, A.UC_ARM64_REG_PSTATE]
            return lambda: uc.reg_read_batch(ids)
        sctlr, tcr = UcRegCP64(*SCTLR_EL1, 0), UcRegCP64(*TCR_EL1, 0)
        ttbr0, ttbr1, pstate = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64()
        values = (sctlr, tcr, ttbr0, ttbr1, pstate)
        reg_ids = (ctypes.c_int * 5)(A.UC_ARM64_REG_CP_REG, A.UC_ARM64_REG_CP_REG, A.UC_ARM64_REG_TTBR0_EL1,
                                     A.UC_ARM64_REG_TTBR1_EL1, A.UC_ARM64_REG_PSTATE)
        pointers = (ctypes.c_void_p * 5)(*(ctypes.addressof(v) for v in values))
        count = ctypes.c_int(5)

        def read() -> tuple[int, int, int, int, int]:
            status = raw(reg_ids, pointers, count)
            if status:
                raise UcError(status)
            return sctlr.val, tcr.val, ttbr0.value, ttbr1.value, pstate.value
        return read

    def _read64(self, pa: int) -> int | None:
        """A descriptor: the little-endian word at `pa` in RAM or ROM, None elsewhere."""
        for start, end, _rom, view in self._regions:
            if start <= pa and pa + 8 <= end:
                return _U64(view, pa - start)[0]
        return None

    def regime(self) -> mmu.Regime:
        """The translation regime the vCPU is in now (for the walker)."""
        sctlr, tcr, ttbr0, ttbr1, pstate = (self._read(n) for n in
                                            ("sctlr_el1", "tcr_el1", "ttbr0_el1", "ttbr1_el1", "pstate"))
        return mmu.Regime(sctlr, tcr, ttbr0, ttbr1, (pstate >> 2) & 3, bool(pstate & mmu.PSTATE_PAN), self.pa_bits)

    def translate(self, va: int, access: str = mmu.READ) -> mmu.Translation | mmu.Fault:
        """Translate a virtual address as the vCPU would now (the MMU off: itself)."""
        return mmu.translate(self.regime(), va, access, self._read64)

    def _walk(self, on: bool) -> None:
        """Translate with our walk (the MMU on) or unicorn's flat map (off)."""
        if on != self._walking:
            self._walking = on
            self.uc.ctl_set_tlb_mode(U.UC_TLB_VIRTUAL if on else U.UC_TLB_CPU)
            self.uc.ctl(U.UC_CTL_TLB_FLUSH, U.UC_CTL_IO_WRITE)   # no entry of the other mode may survive

    def _on_msr(self, _reg: int, cp, _ud=None) -> bool:
        """Every MSR to a system register, before it runs: a write to SCTLR_EL1
        switches the translation with its M bit (False: the MSR then runs)."""
        if (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2) == (3, 0, 1, 0, 0):
            self._walk(bool(cp.val & mmu.SCTLR_M))
        return False

    def _on_sys(self, _reg: int, cp, _ud=None) -> bool:
        """Every SYS instruction (TLBI, DC, IC, AT), before it runs: a TLBI while
        we walk flushes the whole TLB. Our entries are 4 KiB pieces of what may be
        a block, and QEMU's TLBI by VA would drop only the piece holding that VA."""
        if self._walking and cp.crn in (8, 9):
            self.uc.ctl(U.UC_CTL_TLB_FLUSH, U.UC_CTL_IO_WRITE)
        return False

    def _on_tlb_fill(self, vaddr: int, access: int, entry, _ud=None) -> bool:
        """UC_HOOK_TLB_FILL, on a TLB miss (module doc): walk, fill `entry`, or
        refuse (False: unicorn stops with UC_ERR_EXCEPTION, _error_event reports it)."""
        self.tlb_fills += 1
        sctlr, tcr, ttbr0, ttbr1, pstate = self._regime_regs()
        if not sctlr & mmu.SCTLR_M and not vaddr >> self.pa_bits:   # the flat map (_walk lags behind)
            entry.paddr = vaddr
            entry.perms = mmu.PROT_ALL
            return True
        regime = mmu.Regime(sctlr, tcr, ttbr0, ttbr1, (pstate >> 2) & 3, bool(pstate & mmu.PSTATE_PAN),
                            self.pa_bits)
        result = mmu.translate(regime, vaddr, TLB_ACCESS.get(access, mmu.READ), self._read64)
        if type(result) is mmu.Fault:
            self._walk_fault = result
            return False
        entry.paddr = result.pa & ~(PAGE - 1)
        entry.perms = result.prot
        return True

    def _error_event(self, err: UcError) -> Event | None:
        fault, self._walk_fault = self._walk_fault, None
        if err.errno != U.UC_ERR_EXCEPTION or fault is None:
            return super()._error_event(err)
        pc = self.get_pc()
        fault = self._exact(fault, pc)
        syndrome = fault.esr()
        what = "an instruction abort" if fault.access == mmu.FETCH else f"a data abort ({fault.access})"
        return Unhandled(pc, code=syndrome, detail=(
            f"{what} at pc {pc:#x}: {fault.describe()}; the guest would get ESR_EL1 {syndrome:#x} "
            f"({esr.describe(syndrome)}), FAR_EL1 {fault.va:#x}. The emulator backend ends the run here "
            "instead of taking the abort to the guest's vectors; run this rig on KVM (`backend: kvm`) for that"))

    def _exact(self, fault: mmu.Fault, pc: int) -> mmu.Fault:
        """The fault with the exact address FAR_EL1 would hold: the hook sees
        only the page; a fetch faults at the pc, a load/store at the address
        its instruction computes (mmu.access_address) or, when the access
        starts in the page before, at the first byte of the faulting page."""
        page = fault.va
        if fault.access == mmu.FETCH:
            return replace(fault, va=pc) if pc & ~(PAGE - 1) == page else fault
        insn = self._insn(pc)
        uc = self.uc

        def xreg(n: int) -> int:
            return uc.reg_read(A.UC_ARM64_REG_SP if n == 31 else REGS[f"x{n}"])
        access = None if insn is None else mmu.access_address(insn, pc, xreg)
        if access is not None and access[0] & ~(PAGE - 1) == page:
            return replace(fault, va=access[0])
        return fault      # an access that starts in the page before: its first byte in this page

    # Boot ----------------------------------------------------------------
    def set_initial_state(self, state: Arm64State) -> None:
        if state.gic is not None or state.cpus > 1:  # emu_factory refuses such rigs first; this is the backstop
            raise BackendError(refusal(state.gic is not None, state.cpus))
        # The EL1 system registers as KVM resets them (arch/arm64/reset.py), then the start state.
        self.set_regs({**EMU_RESET, "pstate": state.pstate, "pc": state.pc, **state.entry_regs})

    # Registers -----------------------------------------------------------
    def _read(self, name: str) -> int:
        reg = REGS[name]
        if isinstance(reg, tuple):
            return self.uc.reg_read(A.UC_ARM64_REG_CP_REG, reg)
        return self.uc.reg_read(reg)

    def _settle_for_reading(self) -> None:
        """arm64 KVM shows an MMIO store not yet done (pc on it: KVM steps past it
        when the vCPU runs again, Linux kvm_handle_mmio_return), unlike x86 and
        unlike a port write: read the registers as the hook left them then."""
        if not (self._in_hook == "write" and self._hook_src == "mmio"):
            self._settle()

    def get_regs(self) -> dict[str, int]:
        self._settle_for_reading()
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
        self._settle_for_reading()
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

    # Snapshots that cross backends (arch/arm64/cpustate.py) -----------------------
    def _arch_text(self) -> dict | None:
        return cpustate.to_text(self.get_regs())

    def _load_arch(self, text: dict) -> None:
        try:
            regs = cpustate.from_text(text, "emu")
        except cpustate.CrossError as e:
            raise BackendError(str(e)) from None
        self.set_regs(regs)
        got = self.get_regs()
        for name, value in regs.items():
            if got[name] != value:
                raise BackendError(f"the emulator cannot hold the snapshot's {name} = {value:#x} (it took "
                                   f"{got[name]:#x})")

    # Running ---------------------------------------------------------------
    def run(self, deadline: float) -> Event:
        self._deadline = deadline
        if not self._in_hook:
            self._walk_fault = None     # a refused probe of an earlier run is no fault of this one
            self._walk(bool(self._read("sctlr_el1") & mmu.SCTLR_M))   # the machine may have set SCTLR_EL1
        return super().run(deadline)

    def _insn(self, addr: int) -> int | None:
        """The instruction at virtual address `addr` (through the MMU when it is on)."""
        where = self.translate(addr, mmu.FETCH)
        if type(where) is mmu.Fault:
            return None
        data = self.peek(where.pa, 4)
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
                return SwBreak(pc, syndrome)
            return self._take(syndrome, pc)
        if intno == EXCP_SWI:
            prev = self._insn(pc - 4)
            imm = (prev >> 5) & 0xFFFF if prev is not None and _is(prev, MASK_EXC, SVC) else 0
            return self._take(esr.EC_SVC64 << 26 | 1 << 25 | imm, pc)
        if intno == EXCP_UDEF:
            return self._take(esr.EC_UNKNOWN << 26 | 1 << 25, pc)
        what = {EXCP_DATA_ABORT: "a data abort", EXCP_PREFETCH_ABORT: "an instruction abort"}.get(
            intno, f"exception {intno}")
        return Unhandled(pc, code=intno, detail=(
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
            return SystemEvent(at + 4, off, fn)
        return None

    def reinject(self, event: DebugEvent) -> None:
        """Hand a BRK kvmrig did not plant to the guest."""
        if event.code is not None and event.code >> 26 == esr.EC_BRK64:
            self._take(event.code, event.pc)
            self._flush = True

    def _natural_stop(self) -> Event:
        pc = self.get_pc()
        if self._insn(pc - 4) in (WFI, WFE):
            # No interrupt will come: sleep as a KVM vCPU does, until the timeout.
            time.sleep(max(self._deadline - time.monotonic(), 0.0))
            return Timeout(pc)
        return Unhandled(pc, f"the emulator stopped at {pc:#x} for no reason it reported (emulator backend)")
