"""Identity-mapping 4-level page tables with 2 MiB pages, built as bytes.

4-level paging: Intel SDM vol. 3A, 4.5 (tables 4-15 PML4E, 4-17 PDPTE
referencing a page directory, 4-18 PDE mapping a 2 MiB page). Virtual address
bits 47:39 index the PML4, 38:30 a PDPT, 29:21 a page directory.

What gets mapped: every 1 GiB region that [0, 4 GiB) or any given range
touches is identity-mapped in full, with 512 2 MiB pages, present and
writable, supervisor-only, cacheable. Addresses must stay below 2**48.

Layout of the tables (each 4 KiB, placed contiguously at `base`):

    base + 0x0000          PML4
    next n_pdpt pages      one PDPT per 512 GiB region used, ascending
    next n_pd pages        one page directory per 1 GiB region used, ascending

CR3 is `base` (PWT = PCD = 0). The accessed bit is preset at every level and
the dirty bit in every 2 MiB page, so the page walker never writes to the
tables or needs them writable (they may live in a read-only slot).
"""

from __future__ import annotations

import struct

PAGE_SIZE = 0x1000
PAGE_2M = 0x20_0000
GIB = 1 << 30
PML4_SPAN = 1 << 39           # what one PML4 entry (one PDPT) covers: 512 GiB
ADDRESS_LIMIT = 1 << 48       # 4-level paging: 48-bit linear addresses
ALWAYS = (0, 4 * GIB)         # always mapped: the 32-bit address space

# Entry bits (SDM tables 4-15 .. 4-18).
P = 1 << 0                    # present
RW = 1 << 1                   # writable
US = 1 << 2                   # user accessible (not set: supervisor only)
A = 1 << 5                    # accessed
D = 1 << 6                    # dirty (leaf entries only)
PS = 1 << 7                   # page size: this PDE maps a 2 MiB page
ADDR_MASK = 0x000F_FFFF_FFFF_F000

TABLE_ENTRY = P | RW | A      # PML4E / PDPTE pointing at the next table
PAGE_2M_ENTRY = P | RW | A | D | PS


def _regions(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(sorted 512 GiB indices, sorted 1 GiB indices) the ranges touch."""
    gibs: set[int] = set()
    for start, size in [ALWAYS, *ranges]:
        if start < 0 or size < 0:
            raise ValueError(f"range ({start:#x}, {size:#x}) is negative")
        if size == 0:
            continue
        end = start + size
        if end > ADDRESS_LIMIT:
            raise ValueError(f"range [{start:#x}, {end:#x}) goes past 2**48, "
                             "the reach of 4-level paging")
        gibs.update(range(start // GIB, (end - 1) // GIB + 1))
    pds = sorted(gibs)
    pdpts = sorted({g >> 9 for g in pds})
    return pdpts, pds


def tables_size(ranges: list[tuple[int, int]]) -> int:
    """Bytes identity_tables() will return for these (start, size) ranges.

    [0, 4 GiB) alone: PML4 + 1 PDPT + 4 PDs = 6 pages = 0x6000 bytes.
    """
    pdpts, pds = _regions(ranges)
    return PAGE_SIZE * (1 + len(pdpts) + len(pds))


def identity_tables(base: int, ranges: list[tuple[int, int]]) -> tuple[bytes, int]:
    """Page tables identity-mapping [0, 4 GiB) and every (start, size) range.

    Returns (table bytes to place at guest-physical `base`, the CR3 value).
    `base` must be 4 KiB aligned; the caller reserves tables_size(ranges)
    bytes there.
    """
    if base % PAGE_SIZE or base < 0:
        raise ValueError(f"page tables at {base:#x}: not 4 KiB aligned")
    pdpts, pds = _regions(ranges)
    size = PAGE_SIZE * (1 + len(pdpts) + len(pds))
    if base + size > 1 << 52:
        raise ValueError(f"page tables at {base:#x} do not fit physical memory")
    table = bytearray(size)
    pdpt_addr = {idx: base + PAGE_SIZE * (1 + i) for i, idx in enumerate(pdpts)}
    pd_addr = {gib: base + PAGE_SIZE * (1 + len(pdpts) + j) for j, gib in enumerate(pds)}

    def put(table_addr: int, index: int, entry: int) -> None:
        struct.pack_into("<Q", table, table_addr - base + 8 * index, entry)

    for idx, addr in pdpt_addr.items():               # PML4E: bits 47:39
        put(base, idx, addr | TABLE_ENTRY)
    for gib, addr in pd_addr.items():                 # PDPTE: bits 38:30
        put(pdpt_addr[gib >> 9], gib & 0x1FF, addr | TABLE_ENTRY)
        first = gib * GIB                              # PDE: bits 29:21
        entries = [(first + i * PAGE_2M) | PAGE_2M_ENTRY for i in range(512)]
        struct.pack_into("<512Q", table, addr - base, *entries)
    return bytes(table), base


def translate(va: int, cr3: int, read_entry, la57: bool = False) -> int | None:
    """The physical address a guest's own 4- (or 5-) level page tables give
    linear address `va`, or None where they do not map it; `read_entry(pa)`
    reads the 8-byte entry at physical `pa` (LookupError: not in memory).
    For failure reports: code a kernel runs at virtual addresses."""
    table = cr3 & ADDR_MASK
    for level in range(5 if la57 else 4, 0, -1):
        shift = 12 + 9 * (level - 1)
        try:
            entry = read_entry(table + ((va >> shift) & 0x1FF) * 8)
        except LookupError:
            return None
        if not entry & P:
            return None
        if level == 1 or (level in (2, 3) and entry & PS):
            base = entry & ADDR_MASK & ~((1 << shift) - 1)
            return base | (va & ((1 << shift) - 1))
        table = entry & ADDR_MASK
    return None
