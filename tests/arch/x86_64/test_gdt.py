"""GDT descriptors against golden words (Intel SDM vol. 3A 3.4.5)."""

from __future__ import annotations

import struct

import pytest

from kvmrig.arch.x86_64 import gdt
from kvmrig.arch.x86_64.gdt import Segment


def test_golden_descriptors():
    # 64-bit code: P DPL0 S type=B (exec/read/accessed), G L, limit 0xfffff
    assert gdt.gdt_entry(0, 0xFFFFF, 0x9B, 0xA) == 0x00AF9B000000FFFF
    # flat 32-bit code: G D
    assert gdt.gdt_entry(0, 0xFFFFF, 0x9B, 0xC) == 0x00CF9B000000FFFF
    # flat data, read/write/accessed
    assert gdt.gdt_entry(0, 0xFFFFF, 0x93, 0xC) == 0x00CF93000000FFFF
    # 16-bit code, byte granular 64 KiB
    assert gdt.gdt_entry(0, 0xFFFF, 0x9B, 0x0) == 0x00009B000000FFFF


def test_base_and_limit_are_scattered_per_the_sdm():
    # base 0x12345678: bits 39:16 = 0x345678, bits 63:56 = 0x12; limit 0xabcde
    word = gdt.gdt_entry(0x12345678, 0xABCDE, 0x93, 0x4)
    assert word == 0x124A93345678BCDE
    assert gdt.decode(word).base == 0x12345678
    assert gdt.decode(word).limit == 0xABCDE


def test_entry_rejects_out_of_range_fields():
    for args in ((1 << 32, 0, 0x93, 0), (0, 1 << 20, 0x93, 0), (0, 0, 0x100, 0), (0, 0, 0x93, 0x10)):
        with pytest.raises(ValueError):
            gdt.gdt_entry(*args)


def test_flat_gdt_bytes():
    table = gdt.flat_gdt(tss_base=0x1234_5000)
    assert len(table) == gdt.FLAT_GDT_SIZE == 0x40
    words = struct.unpack("<8Q", table)
    assert words[gdt.NULL // 8] == 0
    assert words[gdt.CODE64 // 8] == 0x00AF9B000000FFFF
    assert words[gdt.CODE32 // 8] == 0x00CF9B000000FFFF
    assert words[gdt.DATA // 8] == 0x00CF93000000FFFF
    assert words[gdt.CODE16 // 8] == 0x00009B000000FFFF
    assert words[gdt.DATA16 // 8] == 0x000093000000FFFF
    # 64-bit TSS: limit 0x67, base 23:0 at 39:16, type 9 present, base 31:24, then base 63:32
    assert words[gdt.TSS // 8] == 0x1200893450000067
    assert words[gdt.TSS // 8 + 1] == 0


def test_tss_descriptor_with_high_base():
    low, high = gdt.system_entry_64(0xFFFF_8000_0000_1000, 0x67, gdt.TYPE_TSS_AVAILABLE)
    assert low == 0x0000_8900_1000_0067    # base 23:0 = 0x001000 at bits 39:16
    assert high == 0xFFFF8000


def test_selectors_are_distinct_and_in_the_table():
    sels = [gdt.NULL, gdt.CODE64, gdt.CODE32, gdt.DATA, gdt.CODE16, gdt.DATA16, gdt.TSS]
    assert len(set(sels)) == len(sels)
    assert all(s % 8 == 0 and s < gdt.FLAT_GDT_SIZE for s in sels)


def test_segments_for_sregs():
    assert gdt.segment(gdt.CODE64) == Segment(base=0, limit=0xFFFFFFFF, selector=0x08, type=0xB,
                                              present=1, dpl=0, db=0, s=1, l=1, g=1, avl=0)
    assert gdt.segment(gdt.CODE32) == Segment(0, 0xFFFFFFFF, 0x10, 0xB, 1, 0, 1, 1, 0, 1, 0)
    assert gdt.segment(gdt.DATA) == Segment(0, 0xFFFFFFFF, 0x18, 0x3, 1, 0, 1, 1, 0, 1, 0)
    assert gdt.segment(gdt.CODE16) == Segment(0, 0xFFFF, 0x20, 0xB, 1, 0, 0, 1, 0, 0, 0)
    assert gdt.segment(gdt.DATA16) == Segment(0, 0xFFFF, 0x28, 0x3, 1, 0, 0, 1, 0, 0, 0)
    assert gdt.segment(gdt.NULL).unusable == 1
    with pytest.raises(ValueError):
        gdt.segment(gdt.TSS)


def test_segment_is_frozen():
    seg = gdt.segment(gdt.DATA)
    with pytest.raises(AttributeError):
        seg.base = 1  # type: ignore[misc]


def test_tr_ldt_and_real_mode():
    tr = gdt.tss_segment(0x4000)
    assert (tr.base, tr.limit, tr.selector, tr.type, tr.present, tr.s) == (0x4000, 0x67, 0x30, 0xB, 1, 0)
    ldt = gdt.ldt_none()
    assert ldt.unusable == 1 and ldt.selector == 0
    cs = gdt.real_mode_segment(0xF000, code=True)
    assert (cs.base, cs.limit, cs.type, cs.s, cs.present) == (0xF0000, 0xFFFF, 0xB, 1, 1)
    assert gdt.real_mode_segment(0x1234).base == 0x12340
