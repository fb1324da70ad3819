"""x86 segment descriptors and the flat GDT kvmrig boots protected and long mode with.

Descriptor layout: Intel SDM vol. 3A, 3.4.5 "Segment Descriptors" (figure
3-8); the 16-byte system descriptors of IA-32e mode (TSS): 7.2.3, figure 7-4.
Everything here is pure; the KVM backend copies `Segment` fields into
`struct kvm_segment`.

The flat GDT (selector: descriptor word, base 0 and 4 GiB limit unless said):

    0x00  NULL
    0x08  CODE64   64-bit code (L=1)                          0x00af9b000000ffff
    0x10  CODE32   32-bit code (D=1)                          0x00cf9b000000ffff
    0x18  DATA     32/64-bit data, read/write (B=1)           0x00cf93000000ffff
    0x20  CODE16   16-bit code, 64 KiB limit (protected mode) 0x00009b000000ffff
    0x28  DATA16   16-bit data, 64 KiB limit                  0x000093000000ffff
    0x30  TSS      64-bit/32-bit available TSS, 16 bytes (0x30 and 0x38)

Every code/data descriptor has its accessed bit already set, so the CPU never
writes back into the GDT when it loads a selector (the table may sit in a
read-only memory slot).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Selectors (index << 3, TI = 0, RPL = 0).
NULL = 0x00
CODE64 = 0x08
CODE32 = 0x10
DATA = 0x18
CODE16 = 0x20
DATA16 = 0x28
TSS = 0x30

# Access byte (descriptor bits 47:40): P | DPL | S | type.
ACCESS_P = 0x80
ACCESS_S = 0x10               # 1 = code/data, 0 = system
ACCESS_CODE = 0x9B            # P, S, type 0xB: execute/read, accessed
ACCESS_DATA = 0x93            # P, S, type 0x3: read/write, accessed
TYPE_TSS_AVAILABLE = 0x9      # system type: 32-bit TSS, or 64-bit TSS in IA-32e mode
TYPE_TSS_BUSY = 0xB           # what TR must hold on VM entry
TYPE_LDT = 0x2

# Flags nibble (descriptor bits 55:52).
FLAG_G = 0x8                  # limit in 4 KiB units
FLAG_DB = 0x4                 # default operand size 32 (code) / big (data)
FLAG_L = 0x2                  # 64-bit code
FLAG_AVL = 0x1

TSS_LIMIT = 0x67              # a 104-byte TSS without an I/O bitmap


def gdt_entry(base: int, limit: int, access: int, flags: int) -> int:
    """One 8-byte code/data/system descriptor as an integer (SDM 3.4.5).

    `limit` is the raw 20-bit field (units of 4 KiB when flags has G),
    `access` the byte at bits 47:40, `flags` the nibble at bits 55:52.
    """
    if not 0 <= base <= 0xFFFF_FFFF:
        raise ValueError(f"descriptor base {base:#x} does not fit 32 bits")
    if not 0 <= limit <= 0xF_FFFF:
        raise ValueError(f"descriptor limit {limit:#x} does not fit 20 bits")
    if not 0 <= access <= 0xFF or not 0 <= flags <= 0xF:
        raise ValueError("access is a byte and flags a nibble")
    return ((limit & 0xFFFF)                  # bits 15:0   limit 15:0
            | (base & 0xFF_FFFF) << 16        # bits 39:16  base 23:0
            | access << 40                    # bits 47:40  P, DPL, S, type
            | (limit >> 16) << 48             # bits 51:48  limit 19:16
            | flags << 52                     # bits 55:52  G, D/B, L, AVL
            | (base >> 24) << 56)             # bits 63:56  base 31:24


def system_entry_64(base: int, limit: int, type_: int, dpl: int = 0) -> tuple[int, int]:
    """A 16-byte IA-32e system descriptor (TSS/LDT, SDM 7.2.3) as (low, high) words."""
    if not 0 <= base < 1 << 64:
        raise ValueError(f"descriptor base {base:#x} does not fit 64 bits")
    low = gdt_entry(base & 0xFFFF_FFFF, limit, ACCESS_P | dpl << 5 | type_, 0)
    high = base >> 32                         # bits 31:0 base 63:32, rest reserved 0
    return low, high


@dataclass(frozen=True)
class Segment:
    """A segment register's hidden state, as VMX/SVM (and kvm_segment) hold it.

    `limit` is the byte limit with granularity applied (0xffffffff for a
    flat 4 GiB segment), `type` the 4-bit type field; the rest are 0/1 bits
    (db is D/B, s is 1 for code/data, l the 64-bit code bit). `unusable`
    marks a null selector loaded into a data register or an absent LDT.
    """

    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int  # noqa: E741 - the SDM's name
    g: int
    avl: int
    unusable: int = 0


def decode(word: int, selector: int = 0) -> Segment:
    """The hidden state a CPU loads from descriptor `word` for `selector`."""
    access = (word >> 40) & 0xFF
    flags = (word >> 52) & 0xF
    raw_limit = (word & 0xFFFF) | ((word >> 48) & 0xF) << 16
    g = flags >> 3 & 1
    return Segment(
        base=((word >> 16) & 0xFF_FFFF) | ((word >> 56) & 0xFF) << 24,
        limit=(raw_limit << 12) | 0xFFF if g else raw_limit,
        selector=selector,
        type=access & 0xF,
        present=access >> 7 & 1,
        dpl=access >> 5 & 3,
        db=flags >> 2 & 1,
        s=access >> 4 & 1,
        l=flags >> 1 & 1,
        g=g,
        avl=flags & 1,
    )


#: selector -> descriptor word of the flat code/data segments.
FLAT_DESCRIPTORS: dict[int, int] = {
    NULL: 0,
    CODE64: gdt_entry(0, 0xF_FFFF, ACCESS_CODE, FLAG_G | FLAG_L),
    CODE32: gdt_entry(0, 0xF_FFFF, ACCESS_CODE, FLAG_G | FLAG_DB),
    DATA: gdt_entry(0, 0xF_FFFF, ACCESS_DATA, FLAG_G | FLAG_DB),
    CODE16: gdt_entry(0, 0xFFFF, ACCESS_CODE, 0),
    DATA16: gdt_entry(0, 0xFFFF, ACCESS_DATA, 0),
}

FLAT_GDT_SIZE = TSS + 16      # bytes; the GDTR limit is FLAT_GDT_SIZE - 1


def flat_gdt(tss_base: int = 0) -> bytes:
    """The flat GDT above as little-endian bytes, to place at the GDTR base.

    `tss_base` is where the (104-byte, zeroed is fine) TSS lives; the CPU only
    reads it on a privilege change or IST interrupt, which ring-0 test code
    without an IDT never causes.
    """
    words = [FLAT_DESCRIPTORS[sel] for sel in sorted(FLAT_DESCRIPTORS)]
    words.extend(system_entry_64(tss_base, TSS_LIMIT, TYPE_TSS_AVAILABLE))
    table = struct.pack(f"<{len(words)}Q", *words)
    assert len(table) == FLAT_GDT_SIZE
    return table


def segment(selector: int) -> Segment:
    """The hidden state of one flat code/data selector (CODE64, DATA, ...)."""
    try:
        word = FLAT_DESCRIPTORS[selector]
    except KeyError:
        raise ValueError(f"selector {selector:#x} is not a flat code/data segment") from None
    if selector == NULL:
        return Segment(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, unusable=1)
    return decode(word, selector)


def tss_segment(base: int = 0) -> Segment:
    """TR's hidden state for the GDT's TSS: busy type, as VM entry requires."""
    return Segment(base=base, limit=TSS_LIMIT, selector=TSS, type=TYPE_TSS_BUSY, present=1,
                   dpl=0, db=0, s=0, l=0, g=0, avl=0)


def ldt_none() -> Segment:
    """LDTR with no LDT: null selector, marked unusable."""
    return Segment(base=0, limit=0, selector=0, type=TYPE_LDT, present=0, dpl=0, db=0, s=0,
                   l=0, g=0, avl=0, unusable=1)


def real_mode_segment(selector: int, code: bool = False) -> Segment:
    """A real-mode segment register: base = selector * 16, 64 KiB limit."""
    if not 0 <= selector <= 0xFFFF:
        raise ValueError(f"selector {selector:#x} does not fit 16 bits")
    return Segment(base=selector << 4, limit=0xFFFF, selector=selector,
                   type=0xB if code else 0x3, present=1, dpl=0, db=0, s=1, l=0, g=0, avl=0)
