"""An arm64 CPU's state by architectural name, shared by both backends.

A snapshot holds the CPU state of the backend that took it (KVM: every
ONE_REG register by id; the emulator: unicorn's context). To load it on the
other backend each also writes this neutral form (snapshot header
`cpu.arch`): every register of regs.CANONICAL both backends hold, by name
(general and vector registers, PC, PSTATE, both stack pointers, ELR/SPSR,
FPSR/FPCR and the EL1 system registers), plus `only_here`: registers only
the taking backend has (KVM's timer, debug and firmware registers) whose
value the guest changed from a vCPU as created. Loading refuses
`only_here` and `pending` by name (CrossError); registers only the loader
has keep its own created values.

Not carried: MIDR_EL1, MPIDR_EL1 and the other ID registers say which CPU
this is (each backend's own; is_identity), and the counters CNTVCT/CNTPCT
are clocks that run on.
"""

from __future__ import annotations

from typing import Any

from kvmrig.arch.arm64.onereg import ONE_REGS
from kvmrig.arch.arm64.regs import CANONICAL

IDENTITY = ("midr_el1", "mpidr_el1")
CARRIED = tuple(n for n in CANONICAL if n != "sp" and n not in IDENTITY)
ID_NAMES = {ONE_REGS[n][0]: n for n in CANONICAL if n in ONE_REGS}
KVM_REG_ARM64_SYSREG = 0x6030000000130000
KVM_REG_ARM_FW = 0x6030000000140000
SYSREG_NAMES = {(3, 3, 14, 3, 1): "CNTV_CTL_EL0", (3, 3, 14, 3, 2): "CNTVCT_EL0", (3, 3, 14, 0, 2): "CNTV_CVAL_EL0",
                (3, 3, 14, 2, 1): "CNTP_CTL_EL0", (3, 3, 14, 0, 1): "CNTPCT_EL0", (3, 3, 14, 2, 2): "CNTP_CVAL_EL0",
                (2, 0, 0, 2, 2): "MDSCR_EL1", (3, 0, 10, 4, 0): "MPAM", (3, 0, 4, 6, 0): "ICC_PMR_EL1"}
CLOCKS = frozenset({"CNTVCT_EL0", "CNTPCT_EL0"})


class CrossError(ValueError):
    """State of one backend that the other cannot hold; the message names it."""


def describe_id(reg: int) -> str:
    """A ONE_REG id as a person reads it: its name where kvmrig knows one."""
    if reg in ID_NAMES:
        return ID_NAMES[reg]
    if reg & 0xFFFFFFFFFFFF0000 == KVM_REG_ARM64_SYSREG:
        fields = ((reg >> 14) & 3, (reg >> 11) & 7, (reg >> 7) & 0xF, (reg >> 3) & 0xF, reg & 7)
        name = SYSREG_NAMES.get(fields)
        if name is None and fields[:2] == (2, 0) and fields[2] == 0 and fields[4] in (4, 5, 6, 7):
            name = ("DBGBVR", "DBGBCR", "DBGWVR", "DBGWCR")[fields[4] - 4] + f"{fields[3]}_EL1"
        text = "S{}_{}_C{}_C{}_{}".format(*fields)
        return f"{name} ({text})" if name else f"system register {text}"
    if reg & 0xFFFFFFFFFFFF0000 == KVM_REG_ARM_FW:
        return f"firmware register {reg & 0xFFFF:#x} (KVM_REG_ARM_FW)"
    return f"register {reg:#x}"


def is_clock(reg: int) -> bool:
    return describe_id(reg).split(" ")[0] in CLOCKS


KVM_REG_ARM_DEMUX = 0x6011000000110000   # CCSIDR_EL1 values, per cache level


def is_identity(reg: int) -> bool:
    """Registers that say what the CPU is, not what the guest did: the ID and
    cache-identification registers (op0 3, CRn 0; the guest cannot write
    them, KVM's differ with the vCPU's features), KVM's CCSIDR table and its
    firmware registers (PSCI and SMCCC versions the VMM chooses)."""
    if reg & 0xFFFFFFFFFFFF0000 == KVM_REG_ARM64_SYSREG:
        return (reg >> 14) & 3 == 3 and (reg >> 7) & 0xF == 0 and reg not in ID_NAMES
    return reg & 0xFFFFFFFFFFFF0000 in (KVM_REG_ARM_FW, KVM_REG_ARM_DEMUX & 0xFFFFFFFFFFFF0000)


def guest_writable(reg: int) -> bool:
    """Registers a guest can change: not the identity ones (is_identity),
    MIDR_EL1/MPIDR_EL1 or the CCSIDR table (KVM_REG_ARM_DEMUX, 32-bit ids),
    which only the VMM sets, nor the running counters. What a reused VM's
    reset must put back (tests/machine/arm64_reuse_checks.py, bench/arm64_reset.py)."""
    return not (is_identity(reg) or is_clock(reg) or (reg >> 16) & 0xFFFF == KVM_REG_ARM_DEMUX >> 16 & 0xFFFF
                or ID_NAMES.get(reg) in IDENTITY)


def to_text(regs: dict[str, int], only_here: dict[str, int] | None = None,
            pending: list[str] | None = None) -> dict[str, Any]:
    """The neutral form: CARRIED registers by name, numbers in hex."""
    return {"regs": {n: hex(regs[n]) for n in CARRIED if n in regs},
            "only_here": {k: hex(v) for k, v in (only_here or {}).items()},
            "pending": list(pending or [])}


def from_text(text: dict[str, Any], loader: str) -> dict[str, int]:
    """The registers of a neutral form `loader` can take; CrossError naming
    what it cannot (a register only the other backend has, changed by the
    guest; something pending) or what is malformed."""
    try:
        regs = {n: int(text["regs"][n], 16) for n in CARRIED}
        only_here = dict(text.get("only_here", {}))
        pending = [str(p) for p in text.get("pending", [])]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CrossError(f"the snapshot's arm64 register state is malformed ({type(e).__name__}: {e})") from None
    if pending:
        raise CrossError(f"the snapshot has {', '.join(pending)}, which the {loader} backend cannot carry over")
    if only_here:
        names = ", ".join(f"{k} = {v}" for k, v in list(only_here.items())[:4])
        raise CrossError(f"the guest changed registers the {loader} backend does not have: {names}"
                         f"{' and more' if len(only_here) > 4 else ''}")
    return regs
