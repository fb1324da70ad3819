"""arm64 exception syndromes (ESR_ELx): decode, describe, classify.

Layout (Arm ARM, register description of ESR_EL1/ESR_EL2; Linux arch/arm64/include/asm/
esr.h): EC bits [31:26], IL bit 25, ISS bits [24:0], ISS2 bits [55:32].
KVM reports the ESR_EL2 of a debug exit in kvm_run->debug.arch.hsr, and
the fault address of a watchpoint in debug.arch.far.

A guest at EL1 that hits one of our breakpoints traps to EL2, i.e. "from a
lower Exception level", so KVM exits carry the *_LOW classes (0x30, 0x32,
0x34); BRK (0x3c) has one class for every EL. The *_CUR classes are what
the guest itself sees when an exception is handed back to it at EL1
(`reflect`).
"""

from __future__ import annotations

from kvmrig.arch.arm64.boot import PSTATE_EL1H_DAIF

# --- Exception classes (Arm ARM, ESR_ELx.EC; Linux asm/esr.h ESR_ELx_EC_*) ---
EC_UNKNOWN = 0x00        # unknown reason, e.g. an undefined instruction
EC_WFX = 0x01
EC_FP_ASIMD = 0x07
EC_BTI = 0x0D
EC_ILLEGAL = 0x0E        # illegal execution state
EC_SVC32 = 0x11
EC_HVC32 = 0x12
EC_SMC32 = 0x13
EC_SVC64 = 0x15
EC_HVC64 = 0x16
EC_SMC64 = 0x17
EC_SYS64 = 0x18          # trapped MSR/MRS/system instruction
EC_SVE = 0x19
EC_IABT_LOW = 0x20       # instruction abort, lower EL
EC_IABT_CUR = 0x21       # instruction abort, same EL
EC_PC_ALIGN = 0x22
EC_DABT_LOW = 0x24       # data abort, lower EL
EC_DABT_CUR = 0x25       # data abort, same EL
EC_SP_ALIGN = 0x26
EC_FP_EXC64 = 0x2C
EC_SERROR = 0x2F
EC_BREAKPT_LOW = 0x30    # hardware breakpoint, lower EL
EC_BREAKPT_CUR = 0x31    # hardware breakpoint, same EL
EC_SOFTSTP_LOW = 0x32    # software step, lower EL
EC_SOFTSTP_CUR = 0x33    # software step, same EL
EC_WATCHPT_LOW = 0x34    # watchpoint, lower EL
EC_WATCHPT_CUR = 0x35    # watchpoint, same EL
EC_BKPT32 = 0x38         # BKPT instruction, AArch32
EC_BRK64 = 0x3C          # BRK instruction, AArch64

EC_NAMES = {
    EC_UNKNOWN: "unknown reason",
    EC_WFX: "trapped WFI/WFE",
    0x03: "trapped MCR/MRC (cp15)",
    0x04: "trapped MCRR/MRRC (cp15)",
    0x05: "trapped MCR/MRC (cp14)",
    0x06: "trapped LDC/STC (cp14)",
    EC_FP_ASIMD: "trapped SVE/SIMD/FP access",
    0x0C: "trapped MRRC (cp14)",
    EC_BTI: "branch target exception",
    EC_ILLEGAL: "illegal execution state",
    EC_SVC32: "SVC (AArch32)",
    EC_HVC32: "HVC (AArch32)",
    EC_SMC32: "SMC (AArch32)",
    EC_SVC64: "SVC",
    EC_HVC64: "HVC",
    EC_SMC64: "SMC",
    EC_SYS64: "trapped MSR/MRS/system instruction",
    EC_SVE: "trapped SVE access",
    0x1A: "trapped ERET",
    0x1C: "pointer authentication failure",
    EC_IABT_LOW: "instruction abort",
    EC_IABT_CUR: "instruction abort",
    EC_PC_ALIGN: "PC alignment fault",
    EC_DABT_LOW: "data abort",
    EC_DABT_CUR: "data abort",
    EC_SP_ALIGN: "SP alignment fault",
    0x28: "floating-point exception (AArch32)",
    EC_FP_EXC64: "floating-point exception",
    EC_SERROR: "SError interrupt",
    EC_BREAKPT_LOW: "hardware breakpoint",
    EC_BREAKPT_CUR: "hardware breakpoint",
    EC_SOFTSTP_LOW: "software step",
    EC_SOFTSTP_CUR: "software step",
    EC_WATCHPT_LOW: "watchpoint",
    EC_WATCHPT_CUR: "watchpoint",
    EC_BKPT32: "BKPT (AArch32)",
    0x3A: "vector catch (AArch32)",
    EC_BRK64: "BRK",
}

# Classes that come in a (lower EL, same EL) pair: the low one is even.
_PAIRED = {EC_IABT_LOW, EC_DABT_LOW, EC_BREAKPT_LOW, EC_SOFTSTP_LOW, EC_WATCHPT_LOW}

# --- ISS bits shared by data aborts and watchpoints (ESR_ELx ISS encodings) ---
ISS_WNR = 1 << 6         # write, not read
ISS_S1PTW = 1 << 7       # fault on a stage-1 translation table walk
ISS_CM = 1 << 8          # cache maintenance instruction
ISS_ISV = 1 << 24        # data abort: SAS/SSE/SRT/SF/AR are valid; step: EX valid
ISS_STEP_EX = 1 << 6     # software step: the stepped instruction was a load-exclusive

FSC_DEBUG = 0x22         # DFSC/IFSC of every debug exception: "debug exception"


def ec(esr: int) -> int:
    """Exception class, ESR bits [31:26]."""
    return (esr >> 26) & 0x3F


def iss(esr: int) -> int:
    """Instruction-specific syndrome, bits [24:0]."""
    return esr & 0x1FFFFFF


def fsc(esr: int) -> int:
    """DFSC/IFSC, ISS bits [5:0] (aborts and debug exceptions)."""
    return esr & 0x3F


def wnr(esr: int) -> bool:
    """ISS bit 6 for data aborts and watchpoints: the access was a write.

    For a watchpoint hit by a cache maintenance instruction (CM=1) the
    manual sets WnR to 1, so check `cm` before calling that a store.
    """
    return bool(esr & ISS_WNR)


def cm(esr: int) -> bool:
    """ISS bit 8: the abort or watchpoint came from a cache maintenance instruction."""
    return bool(esr & ISS_CM)


def brk_imm(esr: int) -> int:
    """The #imm16 of BRK (EC 0x3c) or AArch32 BKPT (EC 0x38), ISS bits [15:0]."""
    if ec(esr) not in (EC_BRK64, EC_BKPT32):
        raise ValueError(f"ESR {esr:#x} is not a BRK/BKPT syndrome (EC {ec(esr):#04x})")
    return esr & 0xFFFF


def call_imm(esr: int) -> int:
    """The #imm16 of SVC/HVC/SMC (AArch64), ISS bits [15:0]."""
    if ec(esr) not in (EC_SVC64, EC_HVC64, EC_SMC64):
        raise ValueError(f"ESR {esr:#x} is not an SVC/HVC/SMC syndrome (EC {ec(esr):#04x})")
    return esr & 0xFFFF


def from_lower_el(esr: int) -> bool | None:
    """For classes with lower/same-EL variants: True when from a lower EL."""
    e = ec(esr)
    if e in _PAIRED:
        return True
    if e - 1 in _PAIRED:
        return False
    return None


def debug_cause(esr: int) -> str:
    """What kind of debug exit the syndrome reports.

    "sw" (BRK/BKPT instruction), "hw" (breakpoint register), "watch",
    "step", or "foreign" for any class that is not a debug exception. The
    ESR cannot say whether a BRK is one we planted or one the guest's own
    code contains: the caller checks the PC against its planted set and
    reports an unplanted BRK as "foreign" too (and hands it back to the
    guest, see `reflect`).
    """
    e = ec(esr)
    if e in (EC_BRK64, EC_BKPT32):
        return "sw"
    if e in (EC_BREAKPT_LOW, EC_BREAKPT_CUR):
        return "hw"
    if e in (EC_WATCHPT_LOW, EC_WATCHPT_CUR):
        return "watch"
    if e in (EC_SOFTSTP_LOW, EC_SOFTSTP_CUR):
        return "step"
    return "foreign"


# --- Fault status codes (ESR_ELx.ISS DFSC/IFSC) ---

_FSC_LEVELLED = {
    0x00: "address size fault",
    0x04: "translation fault",
    0x08: "access flag fault",
    0x0C: "permission fault",
    0x14: "synchronous external abort on translation table walk",
    0x1C: "synchronous parity/ECC error on translation table walk",
}
_FSC_SINGLE = {
    0x10: "synchronous external abort",
    0x11: "synchronous tag check fault",
    0x13: "synchronous external abort on translation table walk level -1",
    0x18: "synchronous parity/ECC error",
    0x1B: "synchronous parity/ECC error on translation table walk level -1",
    0x21: "alignment fault",
    FSC_DEBUG: "debug exception",
    0x29: "address size fault level -1",
    0x2B: "translation fault level -1",
    0x30: "TLB conflict abort",
    0x31: "unsupported atomic hardware update fault",
    0x34: "implementation defined fault (lockdown)",
    0x35: "implementation defined fault (unsupported exclusive or atomic access)",
}


def describe_fsc(code: int) -> str:
    """"translation fault level 2" and the like, for a DFSC/IFSC value."""
    code &= 0x3F
    if code in _FSC_SINGLE:
        return _FSC_SINGLE[code]
    kind = _FSC_LEVELLED.get(code & ~3)
    if kind is not None:
        return f"{kind} level {code & 3}"
    return f"reserved fault status {code:#04x}"


def _el(esr: int) -> str:
    low = from_lower_el(esr)
    return "" if low is None else (", lower EL" if low else ", same EL")


def describe(esr: int) -> str:
    """One line a person can read, e.g. "BRK #0x0" or
    "data abort, translation fault level 2 (read, same EL)"."""
    e = ec(esr)
    if e == EC_BRK64:
        return f"BRK #{brk_imm(esr):#x}"
    if e == EC_BKPT32:
        return f"BKPT #{brk_imm(esr):#x} (AArch32)"
    if e in (EC_SVC64, EC_HVC64, EC_SMC64):
        return f"{EC_NAMES[e]} #{call_imm(esr):#x}"
    if e in (EC_BREAKPT_LOW, EC_BREAKPT_CUR):
        return f"hardware breakpoint ({_el(esr)[2:]})"
    if e in (EC_SOFTSTP_LOW, EC_SOFTSTP_CUR):
        extra = ", after a load-exclusive" if esr & ISS_ISV and esr & ISS_STEP_EX else ""
        return f"software step ({_el(esr)[2:]}{extra})"
    if e in (EC_WATCHPT_LOW, EC_WATCHPT_CUR):
        kind = "cache maintenance" if cm(esr) else ("write" if wnr(esr) else "read")
        return f"watchpoint ({kind}{_el(esr)})"
    if e in (EC_DABT_LOW, EC_DABT_CUR):
        parts = ["cache maintenance" if cm(esr) else ("write" if wnr(esr) else "read")]
        if esr & ISS_ISV:
            sas, srt, sf = (esr >> 22) & 3, (esr >> 16) & 0x1F, (esr >> 15) & 1
            parts.append(f"{1 << sas}-byte access, {'x' if sf else 'w'}{srt}")
        if esr & ISS_S1PTW:
            parts.append("on stage-1 table walk")
        return f"data abort, {describe_fsc(fsc(esr))} ({', '.join(parts)}{_el(esr)})"
    if e in (EC_IABT_LOW, EC_IABT_CUR):
        return f"instruction abort, {describe_fsc(fsc(esr))} ({_el(esr)[2:]})"
    if e == EC_UNKNOWN:
        return "unknown reason (EC 0x00: e.g. an undefined instruction)"
    name = EC_NAMES.get(e, "unallocated exception class")
    return f"{name} (EC {e:#04x}, ISS {iss(esr):#x})"


# --- Handing an exception back to the guest ---
#
# A debug exit that is not ours (a BRK the guest's own code contains) must
# reach the guest's EL1 vectors as if KVM were not there. Arm ARM,
# "Exception entry" (AArch64 exception model): ESR_EL1 = the syndrome as EL1 would record it,
# ELR_EL1 = the PC, SPSR_EL1 = the old PSTATE, PSTATE = EL1h with D, A, I,
# F masked, PC = VBAR_EL1 + the vector offset below. A watchpoint also
# needs FAR_EL1 = the FAR.

PSTATE_EL1H_MASKED = PSTATE_EL1H_DAIF  # M[3:0]=0b0101 (EL1h), DAIF (bits 9:6) all set

_VECTOR_CUR_SP0 = 0x000      # from the same EL, using SP_EL0
_VECTOR_CUR_SPX = 0x200      # from the same EL, using SP_ELx
_VECTOR_LOW_A64 = 0x400      # from a lower EL in AArch64
_VECTOR_LOW_A32 = 0x600      # from a lower EL in AArch32


def sync_vector(pstate: int) -> int:
    """Offset from VBAR_EL1 of the synchronous vector for an exception taken
    to EL1 from a context with this PSTATE (SPSR layout: M[4] = AArch32,
    M[3:2] = EL, M[0] = SP select)."""
    if pstate & 0x10:
        return _VECTOR_LOW_A32
    el = (pstate >> 2) & 3
    if el == 0:
        return _VECTOR_LOW_A64
    if el == 1:
        return _VECTOR_CUR_SPX if pstate & 1 else _VECTOR_CUR_SP0
    raise ValueError(f"PSTATE {pstate:#x} is at EL{el}: an EL1 guest cannot take that to EL1")


def reflect(esr: int, pstate: int) -> int:
    """The ESR_EL1 value the guest would have seen for this exception.

    KVM reports exceptions from the guest's EL1 as "lower EL" (it took them
    to EL2); taken to EL1 from EL1 they are the same-EL class.
    """
    low = from_lower_el(esr)
    from_el1 = not pstate & 0x10 and (pstate >> 2) & 3 == 1
    if low is None:
        return esr
    e = ec(esr) & ~1 | (1 if from_el1 else 0)
    return (esr & ~(0x3F << 26)) | e << 26
