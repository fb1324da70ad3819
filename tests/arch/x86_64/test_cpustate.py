"""The neutral x86_64 CPU state (arch/x86_64/cpustate.py): XSAVE images,
tag words, segment flags and the text form, against hand-built layouts."""

from __future__ import annotations

import struct

import pytest

from kvmrig.arch.x86_64 import cpustate, gdt


def _image(bv: int) -> bytearray:
    img = bytearray(4096)
    struct.pack_into("<HHBxHQQII", img, 0, 0x27F, 0x3841, 0xC0, 0x1DD, 0x1234, 0x5678, 0x1FBF, 0xFFFF)
    img[32 + 7 * 16:32 + 7 * 16 + 10] = (0x3FFF << 64 | 1 << 63).to_bytes(10, "little")   # ST7 = 1.0
    img[160 + 3 * 16:160 + 4 * 16] = (0xAB << 120 | 7).to_bytes(16, "little")             # XMM3
    img[576 + 15 * 16:576 + 16 * 16] = (0xCD << 120).to_bytes(16, "little")               # YMM15's upper half
    img[512:520] = bv.to_bytes(8, "little")
    return img


def test_xsave_fields_come_from_the_sdm_offsets():
    fpu, others = cpustate.fpu_from_xsave(bytes(_image(0b111)))
    assert (fpu.fcw, fpu.fsw, fpu.ftw, fpu.fop, fpu.fip, fpu.fdp, fpu.mxcsr) == \
        (0x27F, 0x3841, 0xC0, 0x1DD, 0x1234, 0x5678, 0x1FBF)
    assert fpu.st[7] == 0x3FFF << 64 | 1 << 63 and fpu.st[:7] == [0] * 7
    assert fpu.xmm[3] == 0xAB << 120 | 7 and fpu.ymmh[15] == 0xCD << 120
    assert others == []


def test_components_in_init_state_read_as_their_init_values():
    fpu, _ = cpustate.fpu_from_xsave(bytes(_image(0)))
    assert fpu == cpustate.Fpu()
    assert (fpu.fcw, fpu.mxcsr) == (0x37F, 0x1F80)


def test_other_components_in_use_are_named():
    _, others = cpustate.fpu_from_xsave(bytes(_image(0b111 | 1 << 9 | 1 << 5)))
    assert others == ["AVX-512 opmask", "PKRU"]


def test_an_image_written_back_reads_the_same_and_keeps_the_rest():
    base = _image(0b1 | 1 << 9)
    base[2688:2692] = b"PKRU"
    fpu, _ = cpustate.fpu_from_xsave(bytes(_image(0b111)))
    out = cpustate.xsave_with_fpu(bytes(base), fpu)
    again, others = cpustate.fpu_from_xsave(out)
    assert again == fpu and others == ["PKRU"]
    assert out[2688:2692] == b"PKRU" and out[28:32] == base[28:32]   # MXCSR_MASK kept
    no_avx = cpustate.xsave_with_fpu(bytes(base), cpustate.Fpu())
    assert int.from_bytes(no_avx[512:520], "little") & 0b111 == 0b011


def test_tag_words():
    assert cpustate.full_tag_word(0b1000_0001) == 0b00_11_11_11_11_11_11_00   # ST regs 0 and 7 in use
    assert cpustate.abridged_tag(cpustate.full_tag_word(0b1010_0101)) == 0b1010_0101
    assert cpustate.abridged_tag(0xFFFF) == 0


def test_segment_flags_are_descriptor_bits_32_to_63():
    seg = cpustate.segment_from_flags(0x10, 0x1000, 0xFFFFF, 0x00A09B00)   # 64-bit code, DPL 0, G
    assert seg == gdt.Segment(base=0x1000, limit=0xFFFFF, selector=0x10, type=0xB, present=1, dpl=0, db=0, s=1,
                              l=1, g=1, avl=0, unusable=0)
    assert cpustate.segment_from_flags(0, 0, 0, 0).unusable == 1


def _arch() -> cpustate.X86Arch:
    seg = gdt.Segment(base=0, limit=0xFFFF, selector=0, type=3, present=1, dpl=0, db=0, s=1, l=0, g=0, avl=0)
    return cpustate.X86Arch({r: i for i, r in enumerate(cpustate.GPRS + ("rip", "rflags"))},
                            {n: seg for n in cpustate.SEGMENT_NAMES}, (0x1000, 0x3F), (0, 0xFFF),
                            {n: 0 for n in cpustate.CONTROL_NAMES}, {0x174: 8, 0x10: 99, 0x1A0: 1},
                            frozenset({0x1A0}), cpustate.Fpu(),
                            {"dr0": 0, "dr1": 0, "dr2": 0, "dr3": 0, "dr6": 0xFFFF0FF0, "dr7": 0x400})


def test_text_round_trip():
    a = _arch()
    assert cpustate.from_text(cpustate.to_text(a)) == a


def test_malformed_text_is_an_error_naming_it():
    text = cpustate.to_text(_arch())
    del text["segments"]["tr"]
    with pytest.raises(cpustate.CrossError, match="malformed.*tr"):
        cpustate.from_text(text)
    text = cpustate.to_text(_arch())
    text["fpu"]["st"] = text["fpu"]["st"][:7]
    with pytest.raises(cpustate.CrossError, match="malformed"):
        cpustate.from_text(text)


def test_changed_msrs_leave_out_clocks_and_those_as_created():
    assert cpustate.changed_msrs(_arch()) == {0x174: 8}
