"""Initial x86 states: exact control words and where the tables go."""

import struct

import pytest

from kvmrig.arch.x86_64 import boot, gdt, paging


def _entry(tables: bytes, base: int, addr: int, level: int) -> int:
    return struct.unpack_from("<Q", tables, addr - base)[0]


def test_reset_state_is_the_power_on_state():
    st = boot.initial_state("reset", 0, 0, [])
    assert st.segments["cs"].selector == 0xF000 and st.segments["cs"].base == 0xFFFF0000
    assert st.rip == 0xFFF0 and st.first_pc == 0xFFFFFFF0
    assert st.cr0 & boot.CR0_PE == 0 and st.writes == []


@pytest.mark.parametrize("entry,cs,ip", [(0x7C00, 0, 0x7C00), (0x12345, 0x1000, 0x2345), (0xF0000, 0xF000, 0)])
def test_real_mode_derives_cs_from_entry(entry, cs, ip):
    st = boot.initial_state("real", entry, 0, [])
    assert (st.segments["cs"].selector, st.rip) == (cs, ip)
    assert st.segments["cs"].base + st.rip == entry


def test_real_mode_refuses_entries_above_1mib():
    with pytest.raises(ValueError, match="below 1 MiB"):
        boot.initial_state("real", 0x100000, 0, [])


def test_protected_mode_has_flat_32bit_segments_and_gdt_at_tables():
    st = boot.initial_state("protected", 0x1000, 0x1F000, [(0, 0x200000)])
    assert st.cr0 & boot.CR0_PE and not st.cr0 & boot.CR0_PG
    assert st.segments["cs"].selector == gdt.CODE32 and st.segments["cs"].db == 1
    assert st.gdt == (0x1F000, gdt.FLAT_GDT_SIZE - 1)
    assert st.writes[0][0] == 0x1F000 and st.writes[0][1][:len(gdt.flat_gdt())][8:16] != bytes(8)


def test_long_mode_identity_maps_high_regions_too():
    high = (0x1_0000_0000, 0x200000)  # (start, size) above 4 GiB
    ranges = [(0, 0x200000), high]
    st = boot.initial_state("long", 0x1000, 0x100000, ranges)
    assert st.efer == boot.EFER_LME | boot.EFER_LMA and st.cr0 & boot.CR0_PG
    assert st.segments["cs"].l == 1 and st.segments["cs"].selector == gdt.CODE64
    assert st.cr3 == 0x100000 + boot.GDT_SIZE
    tables_at, tables = st.writes[1]
    assert len(tables) == paging.tables_size(boot.identity_ranges(ranges))
    assert boot.reserve_size("long", ranges) == boot.GDT_SIZE + len(tables)
    # Walk the tables for the high region: PML4[0] -> PDPT[4] -> PD[0] maps 0x1_0000_0000.
    pml4 = _entry(tables, tables_at, st.cr3, 4)
    pdpt = pml4 & paging.ADDR_MASK
    pde_table = _entry(tables, tables_at, pdpt + 4 * 8, 3) & paging.ADDR_MASK
    pde = _entry(tables, tables_at, pde_table, 2)
    assert pde & paging.PS and pde & paging.ADDR_MASK == high[0]


def test_modes_without_tables_reserve_nothing():
    assert boot.reserve_size("real", [(0, 0x1000)]) == 0
    assert boot.reserve_size("reset", [(0, 0x1000)]) == 0
    assert boot.reserve_size("protected", [(0, 0x1000)]) == boot.GDT_SIZE
