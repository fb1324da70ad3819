"""DR7/DR6 encodings (Intel SDM vol. 3B 17.2) and watch-range splitting."""

from __future__ import annotations

import functools

import pytest

from kvmrig.arch.x86_64 import dr7


def test_golden_dr7_words():
    assert dr7.encode_dr7([]) == 0
    assert dr7.encode_dr7([("exec", 1)]) == 0x2                        # G0
    assert dr7.encode_dr7([("exec", 1)], local=True) == 0x1            # L0
    assert dr7.encode_dr7([("exec", 1)] * 4) == 0xAA                   # G0-G3
    # slot 1, write, 4 bytes: G1 | R/W1=01 (bit 20) | LEN1=11 (bits 23:22)
    assert dr7.encode_dr7([None, ("write", 4)]) == 0x00D0_0008
    # slot 0, read/write, 8 bytes: G0 | R/W0=11 | LEN0=10
    assert dr7.encode_dr7([("access", 8)]) == 0x000B_0002
    # slot 3, write, 2 bytes: G3 | R/W3=01 (bit 28) | LEN3=01 (bit 30)
    assert dr7.encode_dr7([None, None, None, ("write", 2)]) == 0x5000_0080
    # slot 2, I/O, 1 byte: G2 (bit 5) | R/W2=10 (bits 25:24)
    assert dr7.encode_dr7([None, None, ("io", 1)]) == 0x0200_0020
    # "read" is read-or-write on x86
    assert dr7.encode_dr7([("read", 1)]) == dr7.encode_dr7([("access", 1)]) == 0x0003_0002
    # exact: GE (bit 9) or LE (bit 8)
    assert dr7.encode_dr7([("write", 1)], exact=True) == 0x0001_0202
    assert dr7.encode_dr7([("write", 1)], local=True, exact=True) == 0x0001_0101


def test_mixed_slots():
    word = dr7.encode_dr7([("exec", 1), ("write", 4), ("access", 2), ("exec", 1)])
    assert word == 0x2 | 0x8 | 0x20 | 0x80 | 0x00D0_0000 | 0x0700_0000
    assert word == 0x07D0_00AA


def test_dr7_rejections():
    with pytest.raises(ValueError):
        dr7.encode_dr7([("exec", 1)] * 5)
    with pytest.raises(ValueError):
        dr7.encode_dr7([("exec", 4)])          # instruction breakpoints are LEN=00
    with pytest.raises(ValueError):
        dr7.encode_dr7([("write", 3)])
    with pytest.raises(ValueError):
        dr7.encode_dr7([("fetch", 1)])


def test_dr6_slots():
    assert dr7.dr6_slots(0) == []
    assert dr7.dr6_slots(0b0101) == [0, 2]
    assert dr7.dr6_slots(0xFFFF0FF2) == [1]     # as KVM reports it: reserved bits set
    assert dr7.dr6_slots(dr7.DR6_BS | 0xFFFF0FF0) == []
    assert dr7.DR6_BS == 1 << 14


def test_split_examples():
    assert dr7.split_watch(0x1000, 8) == [(0x1000, 8)]
    assert dr7.split_watch(0x1003, 6) == [(0x1003, 1), (0x1004, 4), (0x1008, 1)]
    assert dr7.split_watch(0x1001, 16) == [(0x1001, 1), (0x1002, 2), (0x1004, 4), (0x1008, 8),
                                           (0x1010, 1)]
    assert dr7.split_watch(0x1000, 16, max_len=4) == [(0x1000, 4), (0x1004, 4), (0x1008, 4),
                                                      (0x100C, 4)]
    with pytest.raises(ValueError):
        dr7.split_watch(0x1000, 0)


@functools.cache
def fewest_pieces(addr: int, end: int, max_len: int) -> int:
    """Brute force: the minimum number of aligned pieces covering [addr, end)."""
    if addr == end:
        return 0
    return min(1 + fewest_pieces(addr + n, end, max_len)
               for n in (1, 2, 4, 8) if n <= max_len and addr % n == 0 and addr + n <= end)


@pytest.mark.parametrize("max_len", [8, 4])
def test_split_property_all_alignments_and_lengths(max_len):
    for base in (0x1000, 0xFFFF_FFF0):
        for start in range(8):
            for length in range(1, 17):
                addr = base + start
                pieces = dr7.split_watch(addr, length, max_len=max_len)
                # covers exactly [addr, addr+length), in order, without overlap
                cursor = addr
                for piece_addr, size in pieces:
                    assert piece_addr == cursor
                    assert size in (1, 2, 4, 8) and size <= max_len
                    assert piece_addr % size == 0           # naturally aligned
                    cursor += size
                assert cursor == addr + length
                # and is as short as any cover can be
                assert len(pieces) == fewest_pieces(addr, addr + length, max_len)
                # each piece is encodable in a DR7 slot
                for _, size in pieces:
                    dr7.slot_bits(0, "write", size)
