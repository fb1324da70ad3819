"""gdb's view of the x87/SSE state (kvmrig/arch/x86_64/fpu.py) from FXSAVE-style fields."""

from __future__ import annotations

from kvmrig.arch.x86_64.fpu import full_tag, gdb_registers

ONE = 0x3FFF_8000000000000000      # 1.0 as an 80-bit extended: exponent 0x3fff, integer bit set
ZERO, INF = 0, 0x7FFF_8000000000000000


def test_the_full_tag_word_is_rebuilt_from_the_abridged_byte_and_the_values():
    # TOP = 6: ST(0) is physical R6, ST(1) is R7; the abridged byte marks R6 and R7 in use
    fsw = 6 << 11
    assert full_tag(0b1100_0000, fsw, [ONE, ZERO] + [0] * 6) == 0x4FFF   # R7 zero (01), R6 valid (00), R0-R5 empty
    assert full_tag(0b1100_0000, fsw, [INF, ONE] + [0] * 6) == 0x2FFF   # R7 valid (00), R6 special (10)
    assert full_tag(0, 0, [0] * 8) == 0xFFFF


def test_gdb_registers_from_kvm_fpu_fields():
    fpr = [ONE.to_bytes(10, "little") + bytes(6)] + [bytes(16)] * 7
    xmm = [(0x1122334455667788).to_bytes(16, "little")] + [bytes(16)] * 15
    regs = gdb_registers(fpr, 0x37F, 7 << 11, 0x80, 0x1D9, 0x0000_0001_0000_1000, 0x2000, xmm, 0x1F80)
    assert regs["st0"] == ONE and regs["fctrl"] == 0x37F and regs["ftag"] == 0x3FFF
    assert (regs["fioff"], regs["fiseg"], regs["fooff"], regs["fop"]) == (0x1000, 1, 0x2000, 0x1D9)
    assert regs["xmm0"] == 0x1122334455667788 and regs["mxcsr"] == 0x1F80
