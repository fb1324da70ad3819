"""The VMSAv8-64 stage-1 walk (kvmrig.arch.arm64.mmu) against hand-built tables.

Tables live in a dictionary standing for 16 MiB of RAM at 0x40000000 (other
addresses are no memory: a walk there is an external abort). TCR values are
built from their fields, descriptors with mmu.table_descriptor and
mmu.leaf_descriptor, so each test reads as the tables it builds.
"""

from __future__ import annotations

import pytest

from kvmrig.arch.arm64 import esr, mmu
from kvmrig.arch.arm64.mmu import (
    FETCH,
    READ,
    WRITE,
    Fault,
    Regime,
    Translation,
    translate,
)

RAM, RAM_END = 0x40000000, 0x41000000
SCTLR = 0x30D00801 | 1          # a typical SCTLR_EL1 (RES1 bits) with M set
T0, T1 = 0x40100000, 0x40200000  # where each test puts its first TTBR0 / TTBR1 table


class Mem:
    """Physical memory of descriptors: 0 where nothing was written, None outside RAM."""

    def __init__(self) -> None:
        self.words: dict[int, int] = {}

    def __setitem__(self, pa: int, value: int) -> None:
        assert pa % 8 == 0 and RAM <= pa < RAM_END
        self.words[pa] = value

    def read64(self, pa: int) -> int | None:
        return self.words.get(pa, 0) if RAM <= pa < RAM_END else None


def tcr(t0sz: int = 16, tg0: int = 0b00, t1sz: int = 16, tg1: int = 0b10, ips: int = 0b101, *,
        epd0: bool = False, epd1: bool = False, tbi0: bool = False, tbi1: bool = False,
        hpd0: bool = False, hpd1: bool = False) -> int:
    """TCR_EL1 from its fields (TG0: 00 4K, 01 64K, 10 16K; TG1: 10 4K, 01 16K, 11 64K)."""
    return (t0sz | epd0 << 7 | tg0 << 14 | t1sz << 16 | epd1 << 23 | tg1 << 30 | ips << 32
            | tbi0 << 37 | tbi1 << 38 | hpd0 << 41 | hpd1 << 42)


def regime(tcr_value: int, *, ttbr0: int = T0, ttbr1: int = T1, el: int = 1, sctlr: int = SCTLR,
           pan: bool = False, pa_bits: int = 48) -> Regime:
    return Regime(sctlr, tcr_value, ttbr0, ttbr1, el, pan, pa_bits)


def table(level_pa: int, index: int, next_pa: int, mem: Mem, **attrs) -> None:
    mem[level_pa + 8 * index] = mmu.table_descriptor(next_pa, **attrs)


def leaf(level_pa: int, index: int, out: int, level: int, mem: Mem, **attrs) -> None:
    mem[level_pa + 8 * index] = mmu.leaf_descriptor(out, level=level, **attrs)


def ok(result) -> Translation:
    assert isinstance(result, Translation), result
    return result


def fault(result, kind: str, level: int) -> Fault:
    assert isinstance(result, Fault), result
    assert (result.kind, result.level) == (kind, level), result
    return result


def idx4k(va: int) -> tuple[int, int, int, int]:
    return (va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF


# Geometry -----------------------------------------------------------------------------

@pytest.mark.parametrize("shift, inputsize, level", [
    (12, 48, 0), (12, 40, 0), (12, 39, 1), (12, 31, 1), (12, 30, 2), (12, 25, 2),
    (14, 48, 0), (14, 47, 1), (14, 36, 2), (14, 25, 3),
    (16, 48, 1), (16, 43, 1), (16, 42, 2), (16, 29, 3), (16, 25, 3),
])
def test_start_level(shift, inputsize, level):
    assert mmu.start_level(inputsize, shift) == level


def test_txsz_is_clamped_and_tg_fields_differ_between_the_ttbrs():
    assert mmu.input_bits(tcr(t0sz=8), 0) == 48 and mmu.input_bits(tcr(t0sz=48), 0) == 25
    assert mmu.input_bits(tcr(t1sz=25), 1) == 39
    assert [mmu.granule_shift(tcr(tg0=g), 0) for g in (0b00, 0b01, 0b10)] == [12, 16, 14]
    assert [mmu.granule_shift(tcr(tg1=g), 1) for g in (0b10, 0b01, 0b11)] == [12, 14, 16]


# The MMU off ----------------------------------------------------------------------------

def test_mmu_off_is_the_flat_map_with_every_permission():
    r = ok(translate(Regime(sctlr=0, pa_bits=44), 0x40001234, WRITE, Mem().read64))
    assert (r.pa, r.prot, r.level, r.ttbr) == (0x40001234, mmu.PROT_ALL, None, None)


def test_mmu_off_above_the_physical_address_size_is_an_address_size_fault():
    fault(translate(Regime(sctlr=0, pa_bits=44), 1 << 44, READ, Mem().read64), mmu.ADDRESS_SIZE, 0)
    # with TBI0 the top byte is ignored, the rest still checked
    r = ok(translate(Regime(sctlr=0, tcr=tcr(tbi0=True), pa_bits=44), 0x5A00000040001000, READ, Mem().read64))
    assert r.pa == 0x40001000


# 4 KiB granule, 48-bit VA -----------------------------------------------------------------

def four_k_blocks() -> Mem:
    """L0[0] -> L1; L1[1]: identity 1 GiB; L1[2]: VA 0x80000000 -> PA 0x40000000."""
    mem = Mem()
    table(T0, 0, T0 + 0x1000, mem)
    leaf(T0 + 0x1000, 1, 0x40000000, 1, mem)
    leaf(T0 + 0x1000, 2, 0x40000000, 1, mem, attr_index=3)
    return mem


def test_1gib_blocks_identity_and_alias():
    mem = four_k_blocks()
    r = regime(tcr())
    ident = ok(translate(r, 0x40001234, READ, mem.read64))
    assert (ident.pa, ident.level, ident.size, ident.ttbr, ident.attr_index) == (0x40001234, 1, 1 << 30, 0, 0)
    alias = ok(translate(r, 0x80008008, WRITE, mem.read64))
    assert (alias.pa, alias.level, alias.attr_index) == (0x40008008, 1, 3)
    assert alias.prot == mmu.PROT_ALL


def test_an_address_beyond_the_mapped_gigabytes_faults_where_the_walk_stops():
    mem = four_k_blocks()
    f = fault(translate(regime(tcr()), 0xC0000000, READ, mem.read64), mmu.TRANSLATION, 1)
    assert f.descriptor_pa == T0 + 0x1000 + 3 * 8 and f.descriptor == 0
    # VA 0x80_4000_8000: L0 index 1, never written
    f = fault(translate(regime(tcr()), 0x8040008000, READ, mem.read64), mmu.TRANSLATION, 0)
    assert f.descriptor_pa == T0 + 8


def test_2mib_blocks():
    mem = Mem()
    table(T0, 0, T0 + 0x1000, mem)
    table(T0 + 0x1000, 2, T0 + 0x2000, mem)
    leaf(T0 + 0x2000, 1, 0x40600000, 2, mem)
    r = ok(translate(regime(tcr()), 0x80234567, READ, mem.read64))
    assert (r.pa, r.level, r.size) == (0x40634567, 2, 2 << 20)


def test_4kib_pages_through_four_levels_with_distinct_indices():
    va = 5 << 39 | 6 << 30 | 7 << 21 | 8 << 12 | 0x123
    assert idx4k(va) == (5, 6, 7, 8)
    mem = Mem()
    table(T0, 5, T0 + 0x1000, mem)
    table(T0 + 0x1000, 6, T0 + 0x2000, mem)
    table(T0 + 0x2000, 7, T0 + 0x3000, mem)
    leaf(T0 + 0x3000, 8, 0x40ABC000, 3, mem)
    r = ok(translate(regime(tcr()), va, READ, mem.read64))
    assert (r.pa, r.level, r.size, r.descriptor) == (0x40ABC123, 3, 0x1000, mem.words[T0 + 0x3000 + 64])
    # one page further is not mapped
    fault(translate(regime(tcr()), va + 0x1000, READ, mem.read64), mmu.TRANSLATION, 3)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_an_invalid_descriptor_is_a_translation_fault_at_its_level(level):
    va = 1 << 39 | 2 << 30 | 3 << 21 | 4 << 12
    tables = [T0, T0 + 0x1000, T0 + 0x2000, T0 + 0x3000]
    mem = Mem()
    for lvl in range(level):
        table(tables[lvl], idx4k(va)[lvl], tables[lvl + 1], mem)
    mem[tables[level] + 8 * idx4k(va)[level]] = 0x40000000 | 0x702     # bit 0 clear: invalid
    f = fault(translate(regime(tcr()), va, READ, mem.read64), mmu.TRANSLATION, level)
    assert f.descriptor_pa == tables[level] + 8 * idx4k(va)[level]
    assert f.fsc == 0x04 | level
    assert f"level {level} descriptor at PA {f.descriptor_pa:#x} is invalid" in f.reason


def test_level_3_needs_the_page_encoding():
    mem = Mem()
    table(T0, 0, T0 + 0x1000, mem)
    table(T0 + 0x1000, 1, T0 + 0x2000, mem)
    table(T0 + 0x2000, 0, T0 + 0x3000, mem)
    mem[T0 + 0x3000] = 0x40000000 | 0x701          # bits[1:0] = 01 at level 3: reserved
    f = fault(translate(regime(tcr()), 0x40000000, READ, mem.read64), mmu.TRANSLATION, 3)
    assert "reserved" in f.reason


def test_no_level_0_block_with_4kib_pages():
    mem = Mem()
    mem[T0] = mmu.leaf_descriptor(0, level=1)         # a "block" at level 0
    f = fault(translate(regime(tcr()), 0x1000, READ, mem.read64), mmu.TRANSLATION, 0)
    assert "does not allow" in f.reason


def test_a_first_table_smaller_than_a_granule():
    # T0SZ 24: 40 bits, the walk starts at level 0 with 2 entries (16 bytes, 64-byte aligned).
    mem = Mem()
    base = T0 + 0x40
    table(base, 1, T0 + 0x1000, mem)
    leaf(T0 + 0x1000, 0, 0x40000000, 1, mem)
    r = ok(translate(regime(tcr(t0sz=24), ttbr0=base), 1 << 39 | 0x1234, READ, mem.read64))
    assert r.pa == 0x40001234


def test_ttbr_cnp_and_asid_bits_are_not_part_of_the_address():
    mem = four_k_blocks()
    r = ok(translate(regime(tcr(), ttbr0=0xABCD << 48 | T0 | 1), 0x80000010, READ, mem.read64))
    assert r.pa == 0x40000010


def test_39_bit_range_starts_at_level_1():
    mem = Mem()
    leaf(T0, 1, 0x40000000, 1, mem)
    r = regime(tcr(t0sz=25))
    assert ok(translate(r, 0x40008000, READ, mem.read64)).pa == 0x40008000
    f = fault(translate(r, 0x8040008000, READ, mem.read64), mmu.TRANSLATION, 0)   # bit 39: outside
    assert f.descriptor_pa is None and "outside the 39-bit TTBR0_EL1 range" in f.reason


# 16 KiB and 64 KiB granules -------------------------------------------------------------------

def test_64k_granule_48_bit_from_level_1_to_pages():
    # 64K: level 1 index VA[47:42], level 2 VA[41:29], level 3 VA[28:16].
    va = 3 << 42 | 0x101 << 29 | 0x1A2 << 16 | 0x4321
    mem = Mem()
    table(T0, 3, T0 + 0x10000, mem)
    table(T0 + 0x10000, 0x101, T0 + 0x20000, mem)
    leaf(T0 + 0x20000, 0x1A2, 0x40A30000, 3, mem)
    r = ok(translate(regime(tcr(tg0=0b01)), va, WRITE, mem.read64))
    assert (r.pa, r.level, r.size) == (0x40A34321, 3, 64 << 10)


def test_64k_granule_42_bit_starts_at_level_2_with_512mib_blocks():
    mem = Mem()
    leaf(T0, 2, 0x40000000, 2, mem)
    r = ok(translate(regime(tcr(t0sz=22, tg0=0b01)), 0x5FFFFFF8, READ, mem.read64))
    assert (r.pa, r.level, r.size) == (0x5FFFFFF8, 2, 512 << 20)


def test_64k_granule_has_no_level_1_blocks():
    mem = Mem()
    mem[T0] = mmu.leaf_descriptor(0, level=1)
    fault(translate(regime(tcr(tg0=0b01)), 0x1000, READ, mem.read64), mmu.TRANSLATION, 1)


def test_16k_granule_blocks_and_pages():
    # 16K, 47-bit: level 1 VA[46:36], level 2 VA[35:25] (32 MiB blocks), level 3 VA[24:14].
    mem = Mem()
    table(T0, 0, T0 + 0x4000, mem)
    leaf(T0 + 0x4000, 2, 0x42000000, 2, mem)                         # VA 0x4000000 -> 0x42000000
    table(T0 + 0x4000, 3, T0 + 0x8000, mem)
    leaf(T0 + 0x8000, 5, 0x40014000, 3, mem)                         # VA 0x6014000 -> 0x40014000
    r = regime(tcr(t0sz=17, tg0=0b10))
    block = ok(translate(r, 0x4000000 + 0x123456, READ, mem.read64))
    assert (block.pa, block.level, block.size) == (0x42123456, 2, 32 << 20)
    page = ok(translate(r, 0x6000000 + 5 * 0x4000 + 0x10, READ, mem.read64))
    assert (page.pa, page.level, page.size) == (0x40014010, 3, 16 << 10)
    mem[T0 + 0x4000 + 8] = mmu.leaf_descriptor(0, level=1)           # a level-1 block: not with 16K
    fault(translate(r, 1 << 36, READ, mem.read64), mmu.TRANSLATION, 1)


# TTBR1 and the address ranges ------------------------------------------------------------------

def test_ttbr1_high_addresses_with_4kib_pages():
    va = 0xFFFF_FF29_6780_7010                                        # indices 0x1fe, 0xa5, 0x13c, 7
    mem = Mem()
    table(T1, 0x1FE, T1 + 0x1000, mem)
    table(T1 + 0x1000, 0xA5, T1 + 0x2000, mem)
    table(T1 + 0x2000, 0x13C, T1 + 0x3000, mem)
    leaf(T1 + 0x3000, 7, 0x40009000, 3, mem)
    r = ok(translate(regime(tcr()), va, READ, mem.read64))
    assert (r.pa, r.ttbr, r.level) == (0x40009010, 1, 3)


def test_ttbr1_uses_tg1_and_t1sz():
    mem = Mem()
    # T1SZ 25 with a 64K granule (TG1 = 11): 39 bits, start level 2 (VA[38:29]).
    leaf(T1, 0x3FF, 0x40000000, 2, mem)
    r = regime(tcr(t1sz=25, tg1=0b11))
    assert ok(translate(r, 0xFFFF_FFFF_E000_0100, READ, mem.read64)).pa == 0x40000100
    fault(translate(r, 0xFFFF_FF00_0000_0000, READ, mem.read64), mmu.TRANSLATION, 0)   # bits above 39 not all ones


def test_the_gap_between_the_ranges_and_epd():
    mem = four_k_blocks()
    fault(translate(regime(tcr()), 0x0001_0000_4000_0000, READ, mem.read64), mmu.TRANSLATION, 0)
    fault(translate(regime(tcr()), 0x0080_0000_0000_0000, READ, mem.read64), mmu.TRANSLATION, 0)   # bit 55 alone
    f = fault(translate(regime(tcr(epd0=True)), 0x40000000, READ, mem.read64), mmu.TRANSLATION, 0)
    assert "EPD0" in f.reason
    f = fault(translate(regime(tcr(epd1=True)), 0xFFFF_0000_0000_0000, READ, mem.read64), mmu.TRANSLATION, 0)
    assert "EPD1" in f.reason and f.ttbr == 1


def test_top_byte_ignore():
    mem = four_k_blocks()
    tagged = 0x5A00_0000_8000_0040
    fault(translate(regime(tcr()), tagged, READ, mem.read64), mmu.TRANSLATION, 0)
    assert ok(translate(regime(tcr(tbi0=True)), tagged, READ, mem.read64)).pa == 0x40000040


# Access flag, permissions ----------------------------------------------------------------------

def one_block(mem: Mem | None = None, **attrs) -> Mem:
    """VA 0x40000000 -> PA 0x40000000 as a level-2 block with `attrs`."""
    mem = mem or Mem()
    table(T0, 0, T0 + 0x1000, mem)
    table(T0 + 0x1000, 1, T0 + 0x2000, mem)
    leaf(T0 + 0x2000, 0, 0x40000000, 2, mem, **attrs)
    return mem


def test_access_flag_clear_is_an_access_flag_fault_before_permissions():
    mem = one_block(af=False, ap=0b11)
    f = fault(translate(regime(tcr()), 0x40000000, WRITE, mem.read64), mmu.ACCESS_FLAG, 2)
    assert f.fsc == 0x0A


# (AP[2:1], EL) -> what data accesses may do; fetches: EL1 unless PXN or EL0-writable, EL0 unless UXN.
AP_TABLE = {
    (0b00, 1): "rw", (0b00, 0): "",
    (0b01, 1): "rw", (0b01, 0): "rw",
    (0b10, 1): "r", (0b10, 0): "",
    (0b11, 1): "r", (0b11, 0): "r",
}


@pytest.mark.parametrize("ap, el", sorted(AP_TABLE))
@pytest.mark.parametrize("access", [READ, WRITE, FETCH])
def test_ap_permissions(ap, el, access):
    mem = one_block(ap=ap)
    result = translate(regime(tcr(), el=el), 0x40000000, access, mem.read64)
    if access == FETCH:
        allowed = el == 0 or ap != 0b01
    else:
        allowed = access[0] in AP_TABLE[(ap, el)]
    if allowed:
        ok(result)
    else:
        f = fault(result, mmu.PERMISSION, 2)
        assert f.fsc == 0x0E and f.el == el


def test_a_write_to_a_read_only_page_says_so():
    mem = one_block(ap=0b10)
    f = fault(translate(regime(tcr()), 0x40000008, WRITE, mem.read64), mmu.PERMISSION, 2)
    assert "AP[2:1] = 0b10: read-only at EL1" in f.reason
    assert ok(translate(regime(tcr()), 0x40000008, READ, mem.read64)).prot == mmu.PROT_READ | mmu.PROT_EXEC


def test_uxn_and_pxn():
    mem = one_block(ap=0b01, uxn=True)
    fault(translate(regime(tcr(), el=0), 0x40000000, FETCH, mem.read64), mmu.PERMISSION, 2)
    mem = one_block(ap=0b00, pxn=True)
    f = fault(translate(regime(tcr()), 0x40000000, FETCH, mem.read64), mmu.PERMISSION, 2)
    assert "PXN" in f.reason
    assert ok(translate(regime(tcr()), 0x40000000, WRITE, mem.read64)).prot == mmu.PROT_READ | mmu.PROT_WRITE


def test_table_attributes_limit_everything_below_and_hpd_ignores_them():
    mem = Mem()
    table(T0, 0, T0 + 0x1000, mem, ap_table=0b10, pxn_table=True)   # APTable[1]: read-only below; PXNTable
    table(T0 + 0x1000, 1, T0 + 0x2000, mem, ap_table=0b01, xn_table=True)   # APTable[0]: no EL0 below; XNTable
    leaf(T0 + 0x2000, 0, 0x40000000, 2, mem, ap=0b01)                 # the leaf alone: EL0/EL1 read/write
    r = regime(tcr())
    f = fault(translate(r, 0x40000000, WRITE, mem.read64), mmu.PERMISSION, 2)
    assert "after APTable" in f.reason
    fault(translate(r, 0x40000000, FETCH, mem.read64), mmu.PERMISSION, 2)
    fault(translate(r._replace(el=0), 0x40000000, READ, mem.read64), mmu.PERMISSION, 2)
    assert ok(translate(r, 0x40000000, READ, mem.read64)).prot == mmu.PROT_READ
    hpd = r._replace(tcr=tcr(hpd0=True))
    assert ok(translate(hpd._replace(el=0), 0x40000000, WRITE, mem.read64)).prot == mmu.PROT_READ | mmu.PROT_WRITE | mmu.PROT_EXEC


def test_wxn_makes_writable_memory_execute_never():
    wxn = SCTLR | mmu.SCTLR_WXN
    fault(translate(regime(tcr(), sctlr=wxn), 0x40000000, FETCH, one_block(ap=0b00).read64), mmu.PERMISSION, 2)
    ok(translate(regime(tcr(), sctlr=wxn), 0x40000000, FETCH, one_block(ap=0b10).read64))


def test_pan_stops_el1_data_accesses_to_el0_memory_but_not_fetches():
    r = regime(tcr(), pan=True)
    f = fault(translate(r, 0x40000000, READ, one_block(ap=0b11).read64), mmu.PERMISSION, 2)
    assert "PAN" in f.reason
    ok(translate(r, 0x40000000, FETCH, one_block(ap=0b11).read64))
    ok(translate(r, 0x40000000, WRITE, one_block(ap=0b00).read64))
    ok(translate(r._replace(el=0), 0x40000000, READ, one_block(ap=0b11).read64))   # PAN is EL1's


def test_regime_from_registers():
    r = mmu.regime_from_regs({"sctlr_el1": SCTLR, "tcr_el1": 7, "ttbr0_el1": T0, "ttbr1_el1": T1,
                              "pstate": 1 << 22 | 0x3C0}, pa_bits=44)
    assert r == Regime(SCTLR, 7, T0, T1, 0, True, 44) and r.mmu_on


# Output address size, walks outside memory, endianness -----------------------------------------

def test_output_addresses_above_the_size_are_address_size_faults():
    mem = Mem()
    table(T0, 0, T0 + 0x1000, mem)
    leaf(T0 + 0x1000, 4, 0x1_0000_0000, 1, mem)                   # PA 4 GiB
    fault(translate(regime(tcr(ips=0b000)), 4 << 30, READ, mem.read64), mmu.ADDRESS_SIZE, 1)
    assert ok(translate(regime(tcr(ips=0b001)), 4 << 30, READ, mem.read64)).pa == 1 << 32
    fault(translate(regime(tcr(ips=0b101), pa_bits=32), 4 << 30, READ, mem.read64), mmu.ADDRESS_SIZE, 1)
    f = fault(translate(regime(tcr(ips=0b000), ttbr0=0x1_4000_0000), 0, READ, mem.read64), mmu.ADDRESS_SIZE, 0)
    assert "TTBR0_EL1" in f.reason


def test_a_walk_outside_memory_is_an_external_abort_on_the_walk():
    mem = Mem()
    table(T0, 0, 0x2000_0000, mem)                                 # level 1 table where no RAM is
    f = fault(translate(regime(tcr()), 0x1000, READ, mem.read64), mmu.WALK_ABORT, 1)
    assert f.fsc == 0x15 and f.descriptor_pa == 0x2000_0000


def test_big_endian_descriptors():
    mem = Mem()

    def swap(d: int) -> int:
        return int.from_bytes(d.to_bytes(8, "little"), "big")
    mem[T0] = swap(mmu.table_descriptor(T0 + 0x1000))
    mem[T0 + 0x1000 + 8] = swap(mmu.leaf_descriptor(0x40000000, level=1))
    r = ok(translate(regime(tcr(), sctlr=SCTLR | mmu.SCTLR_EE), 0x40000010, READ, mem.read64))
    assert r.pa == 0x40000010


# Syndromes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, level, access, el, syndrome, text", [
    (mmu.PERMISSION, 3, WRITE, 1, 0x9600004F, "data abort, permission fault level 3 (write, same EL)"),
    (mmu.TRANSLATION, 0, READ, 0, 0x92000004, "data abort, translation fault level 0 (read, lower EL)"),
    (mmu.TRANSLATION, 1, FETCH, 1, 0x86000005, "instruction abort, translation fault level 1 (same EL)"),
    (mmu.ACCESS_FLAG, 2, READ, 1, 0x9600000A, "data abort, access flag fault level 2 (read, same EL)"),
    (mmu.ADDRESS_SIZE, 0, FETCH, 0, 0x82000000, "instruction abort, address size fault level 0 (lower EL)"),
    (mmu.WALK_ABORT, 2, WRITE, 1, 0x96000056,
     "data abort, synchronous external abort on translation table walk level 2 (write, same EL)"),
])
def test_fault_syndromes(kind, level, access, el, syndrome, text):
    f = Fault(kind, level, 0x1234, access, el)
    assert f.esr() == syndrome
    assert esr.describe(syndrome) == text


def test_fault_describe_names_the_address_and_level():
    f = Fault(mmu.TRANSLATION, 2, 0x80000000, READ, 1, 0, 0x40012000, 0, "why")
    assert f.describe() == "translation fault at VA 0x80000000, level 2 (read at EL1, TTBR0_EL1: why)"


# The address of a load/store (for FAR_EL1) -------------------------------------------------------

X = {2: 0x1000, 3: 0xFFFFFFF0, 31: 0x8000}   # x2, x3 and SP


@pytest.mark.parametrize("word, pc, expected", [
    (0xF9400441, 0x00, (0x1008, 8)),            # ldr x1, [x2, #8]
    (0x39400C41, 0x04, (0x1003, 1)),            # ldrb w1, [x2, #3]
    (0xF85F8041, 0x08, (0xFF8, 8)),             # ldur x1, [x2, #-8]
    (0xF8410441, 0x0C, (0x1000, 8)),            # ldr x1, [x2], #16        (post-index: the base)
    (0xF8410C41, 0x10, (0x1010, 8)),            # ldr x1, [x2, #16]!
    (0xF8637841, 0x14, (0x800000F80, 8)),       # ldr x1, [x2, x3, lsl #3]
    (0xB863D841, 0x18, (0xFC0, 4)),             # ldr w1, [x2, w3, sxtw #2]  (w3 = -16)
    (0x78636841, 0x1C, (0x100000FF0, 2)),       # ldrh w1, [x2, x3]
    (0xA97F1041, 0x20, (0xFF0, 16)),            # ldp x1, x4, [x2, #-16]
    (0x28811041, 0x24, (0x1000, 8)),            # stp w1, w4, [x2], #8
    (0xAD410440, 0x28, (0x1020, 32)),           # ldp q0, q1, [x2, #32]
    (0x3DC00440, 0x2C, (0x1010, 16)),           # ldr q0, [x2, #16]
    (0x58FFF801, 0x30, (0xFFFFFFFFFFFFFF30, 8)),  # ldr x1, .-0x100          (literal)
    (0x18000201, 0x34, (0x74, 4)),              # ldr w1, .+0x40
    (0xC85F7C41, 0x38, (0x1000, 8)),            # ldxr x1, [x2]
    (0xC87F9041, 0x3C, (0x1000, 16)),           # ldaxp x1, x4, [x2]
    (0x889FFC41, 0x40, (0x1000, 4)),            # stlr w1, [x2]
    (0xF90007E1, 0x44, (0x8008, 8)),            # str x1, [sp, #8]
    (0x4C407040, 0x48, (0x1000, 1)),            # ld1 {v0.16b}, [x2]
    (0x4D9F8440, 0x4C, (0x1000, 2)),            # st1 {v0.d}[1], [x2], #8
    (0xF87F6841, 0x50, (0x1000, 8)),            # ldr x1, [x2, xzr]
    (0xF8408841, 0x54, (0x1008, 8)),            # ldtr x1, [x2, #8]
    (0xF8210043, 0x58, (0x1000, 8)),            # ldadd x1, x3, [x2]
    (0x381FFC41, 0x60, (0xFFF, 1)),             # strb w1, [x2, #-1]!
    (0xB9800441, 0x64, (0x1004, 4)),            # ldrsw x1, [x2, #4]
    (0xFC634840, 0x68, (0x100000FF0, 8)),       # ldr d0, [x2, w3, uxtw]
    (0x91000441, 0x5C, None),                   # add x1, x2, #1
    (0xD4000002, 0x6C, None),                   # hvc #0
])
def test_access_address(word, pc, expected):
    assert mmu.access_address(word, pc, lambda n: X.get(n, 0)) == expected
