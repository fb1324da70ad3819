"""Identity page tables against golden entries (Intel SDM vol. 3A 4.5)."""

from __future__ import annotations

import struct

import pytest

from kvmrig.arch.x86_64 import paging

GIB = 1 << 30
BASE = 0x9000


def entry(table: bytes, table_offset: int, index: int) -> int:
    return struct.unpack_from("<Q", table, table_offset + 8 * index)[0]


def translate(table: bytes, base: int, vaddr: int) -> int | None:
    """Walk the tables as the CPU would; None where nothing is mapped."""
    pml4e = entry(table, 0, (vaddr >> 39) & 0x1FF)
    if not pml4e & paging.P:
        return None
    pdpte = entry(table, (pml4e & paging.ADDR_MASK) - base, (vaddr >> 30) & 0x1FF)
    if not pdpte & paging.P:
        return None
    pde = entry(table, (pdpte & paging.ADDR_MASK) - base, (vaddr >> 21) & 0x1FF)
    if not pde & paging.P:
        return None
    assert pde & paging.PS
    return (pde & paging.ADDR_MASK & ~(paging.PAGE_2M - 1)) | (vaddr & (paging.PAGE_2M - 1))


def test_size_for_4_gib():
    assert paging.tables_size([]) == 6 * 4096       # PML4 + 1 PDPT + 4 PDs
    assert paging.tables_size([(0, 4 * GIB)]) == 6 * 4096
    assert paging.tables_size([(0x1000, 0x2000)]) == 6 * 4096


def test_golden_entries_for_0_2mib_3gib():
    table, cr3 = paging.identity_tables(BASE, [])
    assert cr3 == BASE and len(table) == 0x6000
    # PML4[0] -> PDPT at base+0x1000; PDPT[0..3] -> PDs at base+0x2000..0x5000
    assert entry(table, 0x0000, 0) == 0xA000 | 0x23          # P RW A
    assert all(entry(table, 0x0000, i) == 0 for i in range(1, 512))
    assert [entry(table, 0x1000, i) for i in range(4)] == [0xB023, 0xC023, 0xD023, 0xE023]
    assert all(entry(table, 0x1000, i) == 0 for i in range(4, 512))
    # PDEs: P RW A D PS = 0xe3
    assert entry(table, 0x2000, 0) == 0x0000_0000 | 0xE3      # address 0
    assert entry(table, 0x2000, 1) == 0x0020_0000 | 0xE3      # 2 MiB
    assert entry(table, 0x5000, 0) == 0xC000_0000 | 0xE3      # 3 GiB
    assert entry(table, 0x5000, 511) == 0xFFE0_0000 | 0xE3    # last 2 MiB below 4 GiB


def test_every_2mib_page_below_4gib_is_identity_mapped():
    table, cr3 = paging.identity_tables(BASE, [])
    for page in range(0, 4 * GIB, paging.PAGE_2M):
        assert translate(table, cr3, page + 0x1234) == page + 0x1234
    assert translate(table, cr3, 4 * GIB) is None


def test_ranges_above_4gib_add_tables():
    ranges = [(0x1_0000_0000, 0x1000), (512 * GIB + 5 * GIB + 7, 1)]
    size = paging.tables_size(ranges)
    # PML4, PDPTs for 512 GiB regions 0 and 1, PDs for GiB 0-3, 4, 517
    assert size == 4096 * (1 + 2 + 6)
    table, cr3 = paging.identity_tables(BASE, ranges)
    assert len(table) == size
    for addr in (0x1_0000_0000, 0x1_3FFF_FFFF, 512 * GIB + 5 * GIB, 512 * GIB + 6 * GIB - 1):
        assert translate(table, cr3, addr) == addr
    assert translate(table, cr3, 0x1_4000_0000) is None
    # layout: PML4 first, then PDPTs ascending, then PDs ascending
    assert entry(table, 0, 0) & paging.ADDR_MASK == BASE + 0x1000
    assert entry(table, 0, 1) & paging.ADDR_MASK == BASE + 0x2000
    assert entry(table, 0x1000, 4) & paging.ADDR_MASK == BASE + 0x7000
    assert entry(table, 0x2000, 5) & paging.ADDR_MASK == BASE + 0x8000


def test_range_at_the_top_of_48_bits():
    top = (1 << 48) - paging.PAGE_2M
    table, cr3 = paging.identity_tables(0, [(top, paging.PAGE_2M)])
    assert translate(table, cr3, top + 5) == top + 5
    with pytest.raises(ValueError):
        paging.identity_tables(0, [(top, paging.PAGE_2M + 1)])


def test_rejects_misaligned_base_and_bad_ranges():
    with pytest.raises(ValueError):
        paging.identity_tables(0x9001, [])
    with pytest.raises(ValueError):
        paging.tables_size([(-1, 5)])


def _memory(pages: dict[int, dict[int, int]]):
    """read_entry over {table address: {index: entry}}."""
    def read(pa: int) -> int:
        table, index = pa & ~0xFFF, (pa & 0xFFF) // 8
        if table not in pages:
            raise LookupError(pa)
        return pages[table].get(index, 0)
    return read


def test_translate_walks_4k_2m_and_1g_pages():
    va = 0xFFFF_FFFF_8305_E26C   # a kernel text address: PML4 511, PDPT 510, PD 24, PT 94
    tables = {0x1000: {511: 0x2000 | paging.P}, 0x2000: {510: 0x3000 | paging.P},
              0x3000: {24: 0x4000 | paging.P}, 0x4000: {94: 0x305E000 | paging.P}}
    assert paging.translate(va, 0x1000, _memory(tables)) == 0x305E26C
    tables[0x3000][24] = 0x3000000 | paging.P | paging.PS            # a 2 MiB page
    assert paging.translate(va, 0x1000, _memory(tables)) == 0x305E26C
    tables[0x2000][510] = 0x40000000 | paging.P | paging.PS          # a 1 GiB page
    assert paging.translate(va, 0x1000, _memory(tables)) == 0x4305E26C


def test_translate_of_what_the_tables_do_not_map_is_none():
    tables = {0x1000: {511: 0x2000 | paging.P}, 0x2000: {}}
    assert paging.translate(0xFFFF_FFFF_8000_0000, 0x1000, _memory(tables)) is None   # PDPTE not present
    assert paging.translate(0x1234, 0x1000, _memory(tables)) is None                  # PML4E not present
    assert paging.translate(0xFFFF_FFFF_8000_0000, 0x9000, _memory(tables)) is None   # CR3 outside memory


def test_translate_agrees_with_the_identity_tables():
    data, cr3 = paging.identity_tables(0x10000, [(0, 8 << 20)])
    mem = {0x10000 + i: data[i:i + 8] for i in range(0, len(data), 8)}
    read = lambda pa: int.from_bytes(mem[pa], "little") if pa in mem else (_ for _ in ()).throw(LookupError(pa))
    for va in (0, 0x1234, 0x7F_FFFF, 0xFFFF_FFFF):
        assert paging.translate(va, cr3, read) == va
