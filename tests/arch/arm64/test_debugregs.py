"""DBGBCR/DBGBVR/DBGWCR/DBGWVR encoding, watch planning and hit attribution.

The covered bytes of every plan are reconstructed from the encoded wvr/wcr
words by the small decoder below, written from the Arm ARM field table
(DBGWCR: E 0, PAC 2:1, LSC 4:3, BAS 12:5, HMC 13, SSC 15:14, LBN 19:16,
WT 20, MASK 28:24), not from the planner's own start/length values.
"""

from __future__ import annotations

import pytest

from kvmrig.arch.arm64 import debugregs as d


# --- an independent decoder -----------------------------------------------

def bits(word: int, hi: int, lo: int) -> int:
    return (word >> lo) & ((1 << (hi - lo + 1)) - 1)


def covered(wvr: int, wcr: int) -> tuple[int, int]:
    """[start, end) one register pair watches, checking it is legal."""
    assert bits(wcr, 0, 0) == 1, "E must be set"
    assert bits(wcr, 4, 3) != 0, "LSC 0b00 is reserved"
    assert bits(wcr, 23, 21) == 0 and bits(wcr, 63, 29) == 0, "RES0 bits set"
    assert bits(wvr, 2, 0) == 0, "WVR must be doubleword aligned (bits [1:0] RES0, bit 2 deprecated)"
    bas, mask = bits(wcr, 12, 5), bits(wcr, 28, 24)
    if mask:
        assert 3 <= mask <= 31, "MASK 1 and 2 are reserved"
        assert bas == 0xFF, "MASK needs BAS=0xff"
        assert wvr % (1 << mask) == 0, "masked WVR bits must be zero"
        return wvr, wvr + (1 << mask)
    selected = [i for i in range(8) if bas >> i & 1]
    assert selected, "BAS selects nothing"
    assert selected == list(range(selected[0], selected[-1] + 1)), f"BAS {bas:#x} not contiguous"
    return wvr + selected[0], wvr + selected[-1] + 1


def union(regs) -> list[tuple[int, int]]:
    """Sorted intervals of all registers; asserts no two overlap."""
    spans = sorted(covered(r.wvr, r.wcr) for r in regs)
    for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False):
        assert e1 <= s2, f"registers overlap: {spans}"
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def fewest(addr: int, length: int) -> int:
    """Minimal register count by dynamic programming over every legal piece:
    a BAS run inside one doubleword, or an aligned 2**k block, 8..2**31."""
    end = addr + length
    best = {addr: 0}
    for pos in range(addr, end):
        if pos not in best:
            continue
        nxt = []
        dword_end = (pos & ~7) + 8
        nxt += [stop for stop in range(pos + 1, min(end, dword_end) + 1)]
        nxt += [pos + (1 << k) for k in range(3, 32) if pos % (1 << k) == 0 and pos + (1 << k) <= end]
        for stop in nxt:
            if best.get(stop, 1 << 30) > best[pos] + 1:
                best[stop] = best[pos] + 1
    return best[end]


# --- exact coverage, exhaustively ---------------------------------------

@pytest.mark.parametrize("offset", range(8))
@pytest.mark.parametrize("length", range(1, 25))
def test_every_small_range_is_covered_exactly(offset, length):
    addr = 0x8000 + offset
    regs = d.plan_watch(addr, length, "write")
    assert union(regs) == [(addr, addr + length)]
    assert len(regs) == fewest(addr, length) == d.count_watch_regs(addr, length)
    for r in regs:
        assert bits(r.wcr, 4, 3) == 0b10               # store
        assert covered(r.wvr, r.wcr) == (r.start, r.end)


def test_lengths_within_one_doubleword_take_one_register():
    for offset in range(8):
        for length in range(1, 9 - offset):
            (reg,) = d.plan_watch(0x1000 + offset, length, "access")
            assert reg.wvr == 0x1000
            assert bits(reg.wcr, 12, 5) == ((1 << length) - 1) << offset


def test_small_range_crossing_a_doubleword_is_split_not_truncated():
    # QEMU deposits (1 << len) - 1 at the offset and loses the bytes past 8.
    regs = d.plan_watch(0x1007, 2, "write")
    assert [(r.wvr, bits(r.wcr, 12, 5)) for r in regs] == [(0x1000, 0x80), (0x1008, 0x01)]


def test_twelve_bytes_at_0x1004():
    regs = d.plan_watch(0x1004, 12, "write")
    assert [(r.wvr, bits(r.wcr, 12, 5), bits(r.wcr, 28, 24)) for r in regs] == [
        (0x1000, 0xF0, 0), (0x1008, 0xFF, 0)]


@pytest.mark.parametrize("k", range(4, 32))
def test_aligned_power_of_two_blocks_use_mask(k):
    size = 1 << k
    addr = 3 << 32 | size        # aligned to its size, with high bits set
    (reg,) = d.plan_watch(addr, size, "read")
    assert bits(reg.wcr, 28, 24) == k
    assert bits(reg.wcr, 12, 5) == 0xFF
    assert reg.wvr == addr
    assert union([reg]) == [(addr, addr + size)]


def test_aligned_doubleword_uses_bas_ff_without_mask():
    (reg,) = d.plan_watch(0x2000, 8, "write")
    assert reg.wcr == 0x1FF7 and reg.wvr == 0x2000


def test_block_over_two_gib_needs_two_registers():
    regs = d.plan_watch(0, 1 << 32, "write")
    assert [bits(r.wcr, 28, 24) for r in regs] == [31, 31]
    assert union(regs) == [(0, 1 << 32)]


def test_unaligned_power_of_two_is_split():
    regs = d.plan_watch(0x1008, 16, "write")
    assert union(regs) == [(0x1008, 0x1018)] and len(regs) == 2


@pytest.mark.parametrize("addr,length", [
    (0x1003, 100), (0x1000, 24), (0x1001, 13), (0x10000, 0x30), (0xFFF8, 0x1010),
    (0x7, 0x1000 - 7), (0x12345, 777), (0x40000000 - 3, 0x40), (0x1000, 0x3FF),
])
def test_odd_lengths_over_eight_split_exactly_and_minimally(addr, length):
    regs = d.plan_watch(addr, length, "access")
    assert union(regs) == [(addr, addr + length)]
    assert len(regs) == fewest(addr, length)


def test_large_odd_length_count():
    # [1 MiB, 4 MiB): a 1 MiB block at 1 MiB, then a 2 MiB block at 2 MiB.
    addr, length = 0x100000, 3 << 20
    regs = d.plan_watch(addr, length, "write")
    assert union(regs) == [(addr, addr + length)]
    assert [bits(r.wcr, 28, 24) for r in regs] == [20, 21]


def test_plan_refuses_bad_requests():
    for args in [(0x1000, 0, "write"), (0x1000, -1, "write"), (0x1000, 4, "exec"),
                 ((1 << 64) - 2, 4, "write")]:
        with pytest.raises(ValueError):
            d.plan_watch(*args)
    with pytest.raises(ValueError):           # crosses the sign-extension boundary
        d.plan_watch((1 << 48) - 4, 8, "write")


# --- field positions and golden words -----------------------------------

def test_bcr_golden_el1_el0_exec_breakpoint():
    assert d.bcr() == 0x1E7                   # E=1, PMC=0b11, BAS=0b1111
    assert d.bcr(pmc=d.PMC_EL1) == 0x1E3      # KVM selftests' EL1-only form


@pytest.mark.parametrize("field,lo,width", [
    ("pmc", 1, 2), ("bas", 5, 4), ("hmc", 13, 1), ("ssc", 14, 2), ("lbn", 16, 4), ("bt", 20, 4)])
def test_bcr_field_positions(field, lo, width):
    base = dict(enable=False, pmc=0, bas=0, bt=0, hmc=0, ssc=0, lbn=0)
    full = (1 << width) - 1
    assert d.bcr(**{**base, field: full}) == full << lo
    assert d.bcr(**{**base, field: 1}) == 1 << lo
    with pytest.raises(ValueError):
        d.bcr(**{**base, field: full + 1})
    assert d.bcr(**base) == 0 and d.bcr(**{**base, "enable": True}) == 1


@pytest.mark.parametrize("field,lo,width", [
    ("pac", 1, 2), ("lsc", 3, 2), ("hmc", 13, 1), ("ssc", 14, 2), ("lbn", 16, 4), ("wt", 20, 1)])
def test_wcr_field_positions(field, lo, width):
    base = dict(enable=False, pac=0, lsc=0, bas=0, mask=0, hmc=0, ssc=0, lbn=0, wt=0)
    full = (1 << width) - 1
    assert d.wcr(**{**base, field: full}) == full << lo
    with pytest.raises(ValueError):
        d.wcr(**{**base, field: full + 1})


def test_wcr_bas_and_mask_positions():
    assert d.wcr(False, 0, 0, 0xFF) == 0xFF << 5
    assert d.wcr(False, 0, 0, 0xFF, mask=31) == 0xFF << 5 | 31 << 24
    assert d.wcr(True, 3, 3, 0xFF, mask=31) == 0x1F001FFF


def test_wcr_golden_words():
    assert d.wcr(True, 0b11, d.LSC_STORE, 0xFF) == 0x1FF7     # 8-byte write watch
    assert d.wcr(True, 0b11, d.LSC_LOAD, 0xFF) == 0x1FEF
    assert d.wcr(True, 0b11, d.LSC_BOTH, 0xFF) == 0x1FFF
    assert d.wcr(True, 0b01, d.LSC_STORE, 0x01) == 0x33       # 1 byte, EL1 only
    assert d.wcr(True, 0b11, d.LSC_STORE, 0xFF, mask=12) == 0x0C001FF7


@pytest.mark.parametrize("kwargs", [
    dict(bas=0b101), dict(bas=0x81), dict(bas=0), dict(lsc=0),
    dict(mask=1), dict(mask=2), dict(mask=4, bas=0x0F),
])
def test_wcr_refuses_unpredictable_programming(kwargs):
    args = dict(enable=True, pac=3, lsc=2, bas=0xFF) | kwargs
    with pytest.raises(ValueError):
        d.wcr(**args)


def test_every_contiguous_bas_is_accepted():
    for lo in range(8):
        for n in range(1, 9 - lo):
            bas = ((1 << n) - 1) << lo
            assert bits(d.wcr(True, 3, 3, bas), 12, 5) == bas


def test_value_registers_sign_extension_and_alignment():
    assert d.bvr(0x40080000) == 0x40080000
    assert d.bvr(0xFFFF000000001000) == 0xFFFF000000001000     # sign-extended from bit 48
    assert d.wvr(0xFFFF800000000008) == 0xFFFF800000000008
    for bad in (0x0001000000000000, 0x8000000000001000, 0xFFFE000000000000):
        with pytest.raises(ValueError):
            d.bvr(bad)
    assert d.bvr(0xFFF0000000001000, lva=True) == 0xFFF0000000001000
    with pytest.raises(ValueError):
        d.bvr(0xFFF0000000001000)
    assert d.bvr(0x000F000000001000, lva=True) == 0x000F000000001000
    with pytest.raises(ValueError):
        d.bvr(0x1002)                          # bits [1:0] are RES0
    with pytest.raises(ValueError):
        d.wvr(0x1004)                          # bit 2 is deprecated: we never set it


def test_plan_break_and_decode():
    b = d.plan_break(0x40001234 & ~3)
    assert (b.bvr, b.bcr) == (0x40001234, 0x1E7)
    f = d.decode_bcr(b.bcr)
    assert (f.e, f.pmc, f.bas, f.hmc, f.ssc, f.lbn, f.bt) == (1, 3, 0xF, 0, 0, 0, 0)
    assert d.bp_hit([d.plan_break(0x1000), b], 0x40001234) == 1
    assert d.bp_hit([b], 0x40001238) is None


def test_decode_wcr_round_trip():
    w = d.wcr(True, 2, 1, 0x3C, hmc=1, ssc=2, lbn=5, wt=1)
    f = d.decode_wcr(w)
    assert (f.e, f.pac, f.lsc, f.bas, f.hmc, f.ssc, f.lbn, f.wt, f.mask) == (1, 2, 1, 0x3C, 1, 2, 5, 1, 0)


# --- attributing a watchpoint exit --------------------------------------

def test_access_in_the_middle_of_a_watched_range_is_attributed():
    watches = [d.plan_watch(0x1000, 4, "write"), d.plan_watch(0x2000, 64, "write")]
    assert d.watch_hit(watches, 0x2020, 8) == 1            # middle of a MASK block
    assert d.watch_hit(watches, 0x2003, 1) == 1
    assert d.watch_hit(watches, 0x1002, 1) == 0            # middle of a BAS run


def test_access_in_the_second_register_of_a_split_watch():
    watches = [d.plan_watch(0x3000, 4, "write"), d.plan_watch(0x1004, 12, "write")]
    assert d.watch_hit(watches, 0x100C, 4) == 1
    flat = [r for plan in watches for r in plan]
    assert d.watch_hit(flat, 0x100C, 4) == 2               # per register when flat


def test_far_below_the_watch_within_the_access():
    watches = [d.plan_watch(0x1008, 8, "read")]
    assert d.watch_hit(watches, 0x1000, 16) == 0           # LDP x0, x1, [0x1000]
    assert d.watch_hit(watches, 0x1000, 8) is None          # an 8-byte access there cannot hit it


def test_far_rounded_down_to_block():
    watches = [d.plan_watch(0x1004, 2, "write")]
    assert d.watch_hit(watches, 0x1000, 1) == 0            # same doubleword
    dc_zva = [d.plan_watch(0x1030, 8, "write")]
    assert d.watch_hit(dc_zva, 0x1000, 1) is None
    assert d.watch_hit(dc_zva, 0x1000, 1, block=64) == 0   # DC ZVA, 64-byte block


def test_nearest_watch_wins_and_exact_wins_over_near():
    watches = [d.plan_watch(0x1000, 2, "write"), d.plan_watch(0x1006, 2, "write")]
    assert d.watch_hit(watches, 0x1006, 2) == 1
    assert d.watch_hit(watches, 0x1001, 8) == 0
    assert d.watch_hit(watches, 0x1004, 4) == 1            # touches only the second
    assert d.watch_hit(watches, 0x1005, 1) == 1            # same doubleword, nearer the second
    assert d.watch_hit(watches, 0x1003, 1) == 0            # same doubleword, nearer the first
    assert d.watch_hit(watches, 0x1009, 1) is None         # next doubleword: neither


def test_direction_filter_and_foreign():
    watches = [d.plan_watch(0x1000, 8, "read"), d.plan_watch(0x1000, 8, "write")]
    assert d.watch_hit(watches, 0x1000, write=True) == 1
    assert d.watch_hit(watches, 0x1000, write=False) == 0
    assert d.watch_hit(watches, 0x5000) is None
    assert d.watch_hit([], 0x1000) is None
    with pytest.raises(ValueError):
        d.watch_hit(watches, 0x1000, block=12)


def test_seeded_random_ranges_exact_and_minimal():
    import random
    rng = random.Random(0xA64)
    for _ in range(300):
        addr = rng.randrange(0, 1 << 20)
        length = rng.randrange(1, 400)
        regs = d.plan_watch(addr, length, "access")
        assert union(regs) == [(addr, addr + length)], (hex(addr), length)
        assert len(regs) == fewest(addr, length), (hex(addr), length)
