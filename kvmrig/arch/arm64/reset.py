"""The EL1 system registers as arm64 KVM resets them, for the emulator to
start from the same state (so a golden snapshot written on one backend holds
on the other).

KVM gives architecturally UNKNOWN registers a recognisable poison value,
0x1de7ec7edbadc0de (Linux arch/arm64/kvm/sys_regs.c, reset_unknown), and
SCTLR_EL1 its RES1 bits with the MMU and caches off (0x00c50078). The table
below is what the nested lane's real arm64 KVM showed for the registers
kvmrig reads (tests/backends/kvm arm64vm checks keep it honest).
"""

from __future__ import annotations

KVM_UNKNOWN = 0x1DE7EC7EDBADC0DE
SCTLR_EL1_RESET = 0x00C50078

# UNKNOWN at reset (Arm ARM: "On a Warm reset, this field resets to an
# architecturally UNKNOWN value"), poisoned by KVM.
UNKNOWN_AT_RESET = ("ttbr0_el1", "ttbr1_el1", "mair_el1", "esr_el1", "far_el1", "tpidr_el0", "tpidr_el1",
                    "tpidrro_el0", "par_el1", "csselr_el1")

# What the emulator writes at reset to start as KVM does. CSSELR_EL1 stays 0
# there: QEMU indexes its CCSIDR table with it unmasked.
EMU_RESET = {"sctlr_el1": SCTLR_EL1_RESET,
             **{name: KVM_UNKNOWN for name in UNKNOWN_AT_RESET if name != "csselr_el1"}}


def never_written(name: str, value: int) -> bool:
    """Whether `value` says an UNKNOWN-at-reset register still holds its reset
    value on either backend (the guest never wrote it)."""
    return name in UNKNOWN_AT_RESET and value in (KVM_UNKNOWN, EMU_RESET.get(name, 0))
