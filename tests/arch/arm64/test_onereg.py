"""ONE_REG ids against the kernel's documented values and the struct layout.

Core ids are checked against the table in Documentation/virt/kvm/api.rst
("arm64 core/FP-SIMD registers"), which agrees with offsetof() on struct
kvm_regs compiled from arch/arm64/include/uapi/asm/{kvm,ptrace}.h:
regs.regs[0] 0, sp 248, pc 256, pstate 264, sp_el1 272, elr_el1 280,
spsr[0] 288, fp_regs.vregs[0] 336 (16-byte aligned), fpsr 848, fpcr 852.
"""

from __future__ import annotations

import pytest

from kvmrig.arch.arm64 import onereg, regs

CORE_GOLDEN = {
    "x0": 0x6030000000100000,
    "x1": 0x6030000000100002,
    "x30": 0x603000000010003C,
    "sp_el0": 0x603000000010003E,     # api.rst "SP  regs.sp"
    "pc": 0x6030000000100040,
    "pstate": 0x6030000000100042,
    "sp_el1": 0x6030000000100044,
    "elr_el1": 0x6030000000100046,
    "spsr_el1": 0x6030000000100048,
    "v0": 0x6040000000100054,
    "v1": 0x6040000000100058,
    "v31": 0x60400000001000D0,
    "fpsr": 0x60200000001000D4,
    "fpcr": 0x60200000001000D5,
}

SYS_GOLDEN = {
    "sctlr_el1": 0x603000000013C080,  # (3,0,1,0,0)
    "midr_el1": 0x603000000013C000,   # (3,0,0,0,0)
    "mpidr_el1": 0x603000000013C005,  # (3,0,0,0,5)
    "tpidr_el0": 0x603000000013DE82,  # (3,3,13,0,2)
    "vbar_el1": 0x603000000013C600,   # (3,0,12,0,0)
    "mdscr_el1": 0x6030000000138012,  # (2,0,0,2,2)
    "csselr_el1": 0x603000000013D000,  # (3,2,0,0,0)
}


@pytest.mark.parametrize("name,value", sorted(CORE_GOLDEN.items()))
def test_core_ids(name, value):
    assert onereg.reg_id(name) == value


@pytest.mark.parametrize("name,value", sorted(SYS_GOLDEN.items()))
def test_sysreg_ids(name, value):
    assert onereg.reg_id(name) == value


def test_sys_reg_helper_matches_kvm_header_constants():
    # KVM_REG_ARM_TIMER_CTL = ARM64_SYS_REG(3, 3, 14, 3, 1) (asm/kvm.h)
    assert onereg.sys_reg(3, 3, 14, 3, 1) == 0x603000000013DF19
    assert onereg.sys_reg(3, 0, 1, 0, 0) == 0x603000000013C080
    with pytest.raises(ValueError):
        onereg.sys_reg(4, 0, 0, 0, 0)


def test_sysreg_encodings_decode_back():
    expected = {
        "sctlr_el1": (3, 0, 1, 0, 0), "ttbr0_el1": (3, 0, 2, 0, 0), "ttbr1_el1": (3, 0, 2, 0, 1),
        "tcr_el1": (3, 0, 2, 0, 2), "mair_el1": (3, 0, 10, 2, 0), "vbar_el1": (3, 0, 12, 0, 0),
        "esr_el1": (3, 0, 5, 2, 0), "far_el1": (3, 0, 6, 0, 0), "tpidr_el0": (3, 3, 13, 0, 2),
        "tpidr_el1": (3, 0, 13, 0, 4), "tpidrro_el0": (3, 3, 13, 0, 3),
        "contextidr_el1": (3, 0, 13, 0, 1), "cpacr_el1": (3, 0, 1, 0, 2),
        "amair_el1": (3, 0, 10, 3, 0), "par_el1": (3, 0, 7, 4, 0), "cntkctl_el1": (3, 0, 14, 1, 0),
        "mpidr_el1": (3, 0, 0, 0, 5), "midr_el1": (3, 0, 0, 0, 0), "afsr0_el1": (3, 0, 5, 1, 0),
        "afsr1_el1": (3, 0, 5, 1, 1), "csselr_el1": (3, 2, 0, 0, 0), "mdscr_el1": (2, 0, 0, 2, 2),
    }
    assert set(expected) == set(regs.SYSREGS)
    for name, enc in expected.items():
        rid = onereg.reg_id(name)
        assert rid >> 16 == 0x6030_0000_0013, name
        low = rid & 0xFFFF
        assert (low >> 14, low >> 11 & 7, low >> 7 & 15, low >> 3 & 15, low & 7) == enc, name


def test_every_name_has_an_id_and_no_two_share_one():
    for name in regs.CORE + regs.VREGS + regs.SYSREGS:
        assert onereg.reg_id(name)
        assert onereg.reg_size(name) == onereg.size_of_id(onereg.reg_id(name))
    ids = [rid for rid, _ in onereg.ONE_REGS.values()]
    assert len(ids) == len(set(ids))
    # The table holds exactly the canonical names; aliases are the only extras.
    assert set(onereg.ONE_REGS) == set(regs.CANONICAL) - set(onereg.ALIASES)
    assert onereg.ALIASES == {"sp": "sp_el0"}


def test_sizes():
    assert onereg.reg_size("x5") == 8
    assert onereg.reg_size("v7") == 16
    assert onereg.reg_size("fpsr") == onereg.reg_size("fpcr") == 4
    assert onereg.reg_size("sctlr_el1") == 8
    with pytest.raises(KeyError):
        onereg.reg_id("w0")                 # a field of x0, not a register of its own
    with pytest.raises(KeyError):
        onereg.reg_size("cr0")


def test_core_ids_follow_the_struct_layout():
    for n in range(31):
        assert onereg.reg_id(f"x{n}") == 0x6030000000100000 + 2 * n
    for n in range(32):
        assert onereg.reg_id(f"v{n}") == 0x6040000000100054 + 4 * n


def test_stack_pointer_resolution():
    assert onereg.reg_id("sp") == onereg.reg_id("sp_el0") == 0x603000000010003E
    assert onereg.sp_for_pstate(0x3C5) == "sp_el1"        # EL1h, DAIF masked
    assert onereg.sp_for_pstate(0x005) == "sp_el1"
    assert onereg.sp_for_pstate(0x3C4) == "sp_el0"        # EL1t
    assert onereg.sp_for_pstate(0x000) == "sp_el0"        # EL0t
    assert onereg.resolve("SP", 0x3C5) == "sp_el1"
    assert onereg.resolve("x3", 0x3C5) == "x3"
    for bad in (0x3C9, 0x10, 0x001):
        with pytest.raises(ValueError):
            onereg.sp_for_pstate(bad)
