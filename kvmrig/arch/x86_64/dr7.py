"""x86 debug registers: DR7 encoding, DR6 decoding, splitting watch ranges.

Intel SDM vol. 3B, 17.2 "Debug Registers": DR0-DR3 hold linear addresses,
DR7 (17.2.4) enables them and sets what each one traps, DR6 (17.2.3) says
which fired. Pure functions; the backend installs the words through
KVM_SET_GUEST_DEBUG (debugreg[0..3] = DR0-3, debugreg[7] = DR7).

Per slot n (0..3) in DR7:
    Ln  bit 2n      local enable        Gn  bit 2n+1  global enable
    R/Wn bits 16+4n..17+4n: 00 instruction fetch, 01 data write,
                            10 I/O (needs CR4.DE), 11 data read or write
    LENn bits 18+4n..19+4n: 00 1 byte, 01 2 bytes, 11 4 bytes,
                            10 8 bytes (IA-32e mode only)
LE (bit 8) / GE (bit 9) ask for exact data breakpoints (ignored by CPUs since
the P6 family but recommended by the SDM).

x86 cannot trap reads alone: "read" is encoded as read-or-write (11), and the
layer above must tell reads from writes itself.
"""

from __future__ import annotations

from typing import Sequence

SLOTS = 4

# R/W field values
RW_EXEC = 0b00
RW_WRITE = 0b01
RW_IO = 0b10
RW_ACCESS = 0b11

#: kind -> R/W bits. "read" has no encoding of its own (see module doc).
KINDS = {"exec": RW_EXEC, "write": RW_WRITE, "io": RW_IO, "access": RW_ACCESS, "read": RW_ACCESS}

#: byte length -> LEN bits (note 8 bytes is 10, 4 bytes 11).
LENGTHS = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}

DR7_LE = 1 << 8
DR7_GE = 1 << 9
DR7_RESERVED_1 = 1 << 10      # reads as 1 on hardware; harmless to leave clear

# DR6 status bits (17.2.3)
DR6_B = (1 << 0, 1 << 1, 1 << 2, 1 << 3)   # B0-B3: slot n's condition was met
DR6_BD = 1 << 13              # debug-register access detected (DR7.GD)
DR6_BS = 1 << 14              # single step (TF)
DR6_BT = 1 << 15              # task switch


def slot_bits(slot: int, kind: str, length: int, *, local: bool = False) -> int:
    """The DR7 bits enabling one slot for `kind` over `length` bytes."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"x86 has debug register slots 0..3, not {slot}")
    try:
        rw = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown breakpoint kind {kind!r} (one of {', '.join(KINDS)})") from None
    if length not in LENGTHS:
        raise ValueError(f"x86 watches 1, 2, 4 or 8 bytes, not {length}")
    if rw == RW_EXEC and length != 1:
        raise ValueError("an instruction breakpoint must have length 1 (LEN = 00)")
    enable = 1 << (2 * slot + (0 if local else 1))
    return enable | rw << (16 + 4 * slot) | LENGTHS[length] << (18 + 4 * slot)


def encode_dr7(slots: Sequence[tuple[str, int] | None], *, local: bool = False,
               exact: bool = False) -> int:
    """DR7 for up to four slots: slots[n] = (kind, length) arms DRn, None leaves it off.

    Enables with the global bits G0-G3 (local=True uses L0-L3); exact=True
    adds GE (or LE). E.g. [("exec", 1)] -> 0x2, [None, ("write", 4)] -> 0xd00008.
    """
    if len(slots) > SLOTS:
        raise ValueError(f"{len(slots)} hardware slots asked for; x86 has {SLOTS}")
    dr7 = 0
    for n, slot in enumerate(slots):
        if slot is not None:
            kind, length = slot
            dr7 |= slot_bits(n, kind, length, local=local)
    if exact:
        dr7 |= DR7_LE if local else DR7_GE
    return dr7


def dr6_slots(dr6: int) -> list[int]:
    """The slots (0..3) whose B bit is set in `dr6`; see DR6_BS for single-step."""
    return [n for n in range(SLOTS) if dr6 & DR6_B[n]]


def split_watch(addr: int, length: int, max_len: int = 8) -> list[tuple[int, int]]:
    """Split [addr, addr+length) into the fewest naturally aligned 1/2/4/8-byte pieces.

    x86 requires a length-N watch to be N-aligned (the CPU ignores the low
    address bits), so e.g. 6 bytes at 0x1003 become (0x1003, 1), (0x1004, 4),
    (0x1008, 1). Taking the largest aligned piece that fits at each step is
    optimal: any other cover of the aligned block boundaries needs at least as
    many pieces. max_len=4 for guests not in IA-32e mode (LEN=10 undefined).
    """
    if length <= 0:
        raise ValueError(f"watch length must be positive, not {length}")
    if addr < 0:
        raise ValueError(f"watch address {addr:#x} is negative")
    if max_len not in (1, 2, 4, 8):
        raise ValueError(f"max_len must be 1, 2, 4 or 8, not {max_len}")
    pieces = []
    end = addr + length
    while addr < end:
        size = max_len
        while addr % size or addr + size > end:
            size //= 2
        pieces.append((addr, size))
        addr += size
    return pieces
