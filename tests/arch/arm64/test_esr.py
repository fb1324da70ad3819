"""ESR decoding against golden syndromes, and the instruction words behind them.

Each golden is written out as EC << 26 | IL << 25 | ISS next to its value.
"""

from __future__ import annotations

import pytest

from kvmrig.arch.arm64 import esr, insn

IL = 1 << 25

GOLDEN = [
    # value       EC     cause      describe
    (0xF2000000, 0x3C, "sw", "BRK #0x0"),                           # BRK #0 (from any EL)
    (0xF2001234, 0x3C, "sw", "BRK #0x1234"),
    (0xE2000005, 0x38, "sw", "BKPT #0x5 (AArch32)"),
    (0xC2000022, 0x30, "hw", "hardware breakpoint (lower EL)"),     # IFSC 0x22 debug
    (0xC6000022, 0x31, "hw", "hardware breakpoint (same EL)"),
    (0xCA000022, 0x32, "step", "software step (lower EL)"),
    (0xCB000062, 0x32, "step", "software step (lower EL, after a load-exclusive)"),
    (0xCE000022, 0x33, "step", "software step (same EL)"),
    (0xD2000062, 0x34, "watch", "watchpoint (write, lower EL)"),   # WnR bit 6
    (0xD2000022, 0x34, "watch", "watchpoint (read, lower EL)"),
    (0xD2000162, 0x34, "watch", "watchpoint (cache maintenance, lower EL)"),
    (0xD6000062, 0x35, "watch", "watchpoint (write, same EL)"),
    (0x5A000000, 0x16, "foreign", "HVC #0x0"),
    (0x5E000000, 0x17, "foreign", "SMC #0x0"),
    (0x56000007, 0x15, "foreign", "SVC #0x7"),
    (0x96000006, 0x25, "foreign", "data abort, translation fault level 2 (read, same EL)"),
    (0x96000045, 0x25, "foreign", "data abort, translation fault level 1 (write, same EL)"),
    (0x93C18047, 0x24, "foreign",
     "data abort, translation fault level 3 (write, 8-byte access, x1, lower EL)"),
    (0x96000021, 0x25, "foreign", "data abort, alignment fault (read, same EL)"),
    (0x82000007, 0x20, "foreign", "instruction abort, translation fault level 3 (lower EL)"),
    (0x8600000F, 0x21, "foreign", "instruction abort, permission fault level 3 (same EL)"),
    (0x02000000, 0x00, "foreign", "unknown reason (EC 0x00: e.g. an undefined instruction)"),
]


@pytest.mark.parametrize("value,ec,cause,text", GOLDEN)
def test_golden_syndromes(value, ec, cause, text):
    assert esr.ec(value) == ec
    assert (value >> 25) & 1 == 1, "IL: a 32-bit instruction"
    assert esr.debug_cause(value) == cause
    assert esr.describe(value) == text


def test_goldens_are_what_their_fields_say():
    assert 0xF2000000 == esr.EC_BRK64 << 26 | IL
    assert 0xC2000022 == esr.EC_BREAKPT_LOW << 26 | IL | esr.FSC_DEBUG
    assert 0xD2000062 == esr.EC_WATCHPT_LOW << 26 | IL | esr.ISS_WNR | esr.FSC_DEBUG
    assert 0xCB000062 == esr.EC_SOFTSTP_LOW << 26 | IL | esr.ISS_ISV | esr.ISS_STEP_EX | esr.FSC_DEBUG
    # ISV, SAS=0b11 (8 bytes), SRT=1, SF=1, WnR, DFSC translation fault level 3
    assert 0x93C18047 == esr.EC_DABT_LOW << 26 | IL | 1 << 24 | 3 << 22 | 1 << 16 | 1 << 15 | 1 << 6 | 0x07


def test_ec_constants_match_linux_esr_h():
    assert (esr.EC_UNKNOWN, esr.EC_HVC64, esr.EC_SMC64, esr.EC_IABT_LOW, esr.EC_IABT_CUR,
            esr.EC_DABT_LOW, esr.EC_DABT_CUR, esr.EC_BREAKPT_LOW, esr.EC_BREAKPT_CUR,
            esr.EC_SOFTSTP_LOW, esr.EC_SOFTSTP_CUR, esr.EC_WATCHPT_LOW, esr.EC_WATCHPT_CUR,
            esr.EC_BKPT32, esr.EC_BRK64) == (0x00, 0x16, 0x17, 0x20, 0x21, 0x24, 0x25, 0x30, 0x31,
                                             0x32, 0x33, 0x34, 0x35, 0x38, 0x3C)


def test_only_debug_classes_are_debug_causes():
    debug = {0x30: "hw", 0x31: "hw", 0x32: "step", 0x33: "step", 0x34: "watch", 0x35: "watch",
             0x38: "sw", 0x3C: "sw"}
    for ec in range(64):
        value = ec << 26 | IL | 0x22
        assert esr.debug_cause(value) == debug.get(ec, "foreign")
        assert esr.describe(value)          # never raises, for any class


def test_fields():
    assert esr.brk_imm(0xF200FFFF) == 0xFFFF
    with pytest.raises(ValueError):
        esr.brk_imm(0x96000045)
    assert esr.call_imm(0x5A00002A) == 0x2A
    assert esr.wnr(0xD2000062) and not esr.wnr(0xD2000022)
    assert esr.cm(0xD2000162)
    assert esr.fsc(0x96000045) == 0x05
    assert esr.iss(0xF2001234) == 0x1234
    assert esr.from_lower_el(0xC2000022) is True
    assert esr.from_lower_el(0xC6000022) is False
    assert esr.from_lower_el(0xF2000000) is None


def test_fault_status_codes():
    assert esr.describe_fsc(0x04) == "translation fault level 0"
    assert esr.describe_fsc(0x0B) == "access flag fault level 3"
    assert esr.describe_fsc(0x0D) == "permission fault level 1"
    assert esr.describe_fsc(0x02) == "address size fault level 2"
    assert esr.describe_fsc(0x10) == "synchronous external abort"
    assert esr.describe_fsc(0x15) == "synchronous external abort on translation table walk level 1"
    assert esr.describe_fsc(0x2B) == "translation fault level -1"
    assert esr.describe_fsc(0x22) == "debug exception"
    assert esr.describe_fsc(0x3F).startswith("reserved")


def test_reflect_to_the_guest():
    el1h, el1t, el0t = 0x3C5, 0x3C4, 0x000
    assert esr.reflect(0xC2000022, el1h) == 0xC6000022     # BP from EL1 is same-EL at EL1
    assert esr.reflect(0xD2000062, el1h) == 0xD6000062
    assert esr.reflect(0xCA000022, el1h) == 0xCE000022
    assert esr.reflect(0xC2000022, el0t) == 0xC2000022     # from EL0 stays lower-EL
    assert esr.reflect(0xF2000000, el1h) == 0xF2000000     # BRK: one class for all ELs
    assert esr.sync_vector(el1h) == 0x200
    assert esr.sync_vector(el1t) == 0x000
    assert esr.sync_vector(el0t) == 0x400
    assert esr.sync_vector(0x10) == 0x600
    with pytest.raises(ValueError):
        esr.sync_vector(0x3C9)                               # EL2h
    assert esr.PSTATE_EL1H_MASKED == 0b1111 << 6 | 0b0101


# --- the instruction words behind these syndromes (insn.py) --------------

def test_brk_encoding():
    assert insn.brk() == bytes([0x00, 0x00, 0x20, 0xD4])   # d4200000  brk #0
    assert insn.brk_word(0x1234) == 0xD4224680
    assert insn.brk(0xF000) == (0xD43E0000).to_bytes(4, "little")
    assert insn.is_brk(insn.brk(7)) and insn.is_brk(0xD4200000)
    assert insn.brk_imm_of(insn.brk(0xBEEF)) == 0xBEEF
    for other in (insn.NOP, 0xD4000002, 0xD4000001, 0xD4200001, 0xD4400000, 0):
        assert not insn.is_brk(other)
    with pytest.raises(ValueError):
        insn.brk(0x10000)
    assert insn.hvc() == (0xD4000002).to_bytes(4, "little")


def test_brk_disassembles():
    capstone = pytest.importorskip("capstone")
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    code = insn.brk(0) + insn.brk(0x1234) + insn.hvc(0)
    got = [(i.mnemonic, i.op_str) for i in md.disasm(code, 0)]
    assert got == [("brk", "#0"), ("brk", "#0x1234"), ("hvc", "#0")]


def test_psci_function_ids():
    assert insn.PSCI_VERSION == 0x84000000
    assert insn.PSCI_CPU_OFF == 0x84000002
    assert insn.PSCI_CPU_ON64 == 0xC4000003
    assert insn.PSCI_SYSTEM_OFF == 0x84000008
    assert insn.PSCI_SYSTEM_RESET == 0x84000009
    assert insn.PSCI_FEATURES == 0x8400000A
    assert insn.PSCI_SYSTEM_RESET2 == 0x84000012
    for fn in insn.PSCI_NAMES:
        base = insn.PSCI_FN64_BASE if fn & 1 << 30 else insn.PSCI_FN_BASE
        assert fn & ~0xFF == base
