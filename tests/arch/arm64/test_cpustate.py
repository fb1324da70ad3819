"""The neutral arm64 CPU state (arch/arm64/cpustate.py): ONE_REG ids named,
identity registers told apart from guest state, refusals by name."""

from __future__ import annotations

import pytest

from kvmrig.arch.arm64 import cpustate
from kvmrig.arch.arm64.onereg import reg_id, sys_reg


def test_ids_are_named():
    assert cpustate.describe_id(reg_id("sctlr_el1")) == "sctlr_el1"
    assert cpustate.describe_id(sys_reg(3, 3, 14, 3, 1)) == "CNTV_CTL_EL0 (S3_3_C14_C3_1)"
    assert cpustate.describe_id(sys_reg(2, 0, 0, 3, 5)) == "DBGBCR3_EL1 (S2_0_C0_C3_5)"
    assert cpustate.describe_id(sys_reg(3, 0, 0, 4, 0)) == "system register S3_0_C0_C4_0"
    assert cpustate.describe_id(0x6030000000140001).startswith("firmware register 0x1")


def test_identity_and_clocks_are_not_guest_state():
    assert cpustate.is_identity(sys_reg(3, 0, 0, 4, 0))       # ID_AA64PFR0_EL1
    assert cpustate.is_identity(sys_reg(3, 0, 0, 1, 1))       # ID_PFR1_EL1
    assert cpustate.is_identity(0x6030000000140000)           # PSCI version (KVM_REG_ARM_FW)
    assert not cpustate.is_identity(reg_id("csselr_el1"))     # CRn 0, but the guest writes it
    assert not cpustate.is_identity(sys_reg(3, 3, 14, 3, 1))  # CNTV_CTL_EL0
    assert cpustate.is_clock(sys_reg(3, 3, 14, 3, 2)) and not cpustate.is_clock(sys_reg(3, 3, 14, 3, 1))


def _text(**extra):
    regs = {n: i for i, n in enumerate(cpustate.CARRIED)}
    return cpustate.to_text(regs, **extra)


def test_round_trip_carries_every_register_but_identity():
    text = _text()
    assert "midr_el1" not in text["regs"] and "sp" not in text["regs"] and "v31" in text["regs"]
    assert cpustate.from_text(text, "emu") == {n: i for i, n in enumerate(cpustate.CARRIED)}


def test_refusals_name_the_register_or_event():
    with pytest.raises(cpustate.CrossError, match="emu backend does not have: CNTV_CTL_EL0 = 0x1"):
        cpustate.from_text(_text(only_here={"CNTV_CTL_EL0": 1}), "emu")
    with pytest.raises(cpustate.CrossError, match="MP state 1"):
        cpustate.from_text(_text(pending=["the vCPU in MP state 1 (not runnable)"]), "kvm")
    text = _text()
    del text["regs"]["x3"]
    with pytest.raises(cpustate.CrossError, match="malformed.*x3"):
        cpustate.from_text(text, "kvm")


def test_guest_writable_registers_are_what_a_reset_puts_back():
    """A reused VM's reset must restore these; ID, cache-ID (CCSIDR table,
    32-bit KVM_REG_ARM_DEMUX ids), firmware, MIDR/MPIDR and counters are not
    the guest's to change."""
    for name in ("x0", "pc", "pstate", "sp_el1", "v31", "fpcr", "sctlr_el1", "vbar_el1", "mdscr_el1"):
        assert cpustate.guest_writable(reg_id(name)), name
    cntv_cval, cntvct = sys_reg(3, 3, 14, 0, 2), sys_reg(3, 3, 14, 3, 2)
    assert cpustate.guest_writable(cntv_cval) and not cpustate.guest_writable(cntvct)
    id_aa64pfr0 = sys_reg(3, 0, 0, 4, 0)
    for reg in (reg_id("midr_el1"), reg_id("mpidr_el1"), id_aa64pfr0,
                0x6020000000110000,      # CCSIDR of level 1 (KVM_REG_ARM_DEMUX, 32-bit)
                cpustate.KVM_REG_ARM_FW):  # the PSCI version
        assert not cpustate.guest_writable(reg), hex(reg)
