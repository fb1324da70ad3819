"""Multiboot v1 (the GNU Multiboot Specification 0.6.96): the kernel header
and the information structure a boot loader hands over, as pure data.

A multiboot kernel carries a header (magic 0x1badb002, flags, checksum) in its
first 8 KiB. Bit 16 of the flags ("a.out kludge") gives load addresses in the
header; otherwise the file is an ELF loaded by its program headers. The loader
enters it in 32-bit protected mode, paging off, with EAX = 0x2badb002 and EBX =
the physical address of the information structure below.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_MAGIC = 0x1BADB002
BOOT_MAGIC = 0x2BADB002      # EAX at entry
SEARCH = 8192
FLAG_AOUT_KLUDGE = 1 << 16
INFO_SIZE = 120              # through the framebuffer fields of 0.6.96 (zeroed)
# info.flags bits
INFO_MEM, INFO_CMDLINE, INFO_MODS, INFO_MMAP, INFO_LOADER = 1 << 0, 1 << 2, 1 << 3, 1 << 6, 1 << 9
LOADER_NAME = b"kvmrig\0"
RAM, RESERVED = 1, 2         # memory map entry types


class MultibootError(ValueError):
    """The file is not a multiboot kernel kvmrig can load."""


@dataclass(frozen=True)
class Header:
    offset: int   # where the header sits in the file
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0

    @property
    def aout(self) -> bool:
        return bool(self.flags & FLAG_AOUT_KLUDGE)


def find_header(data: bytes) -> Header:
    """The multiboot header in the first 8 KiB, checksum verified."""
    for off in range(0, min(len(data), SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic != HEADER_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if flags & FLAG_AOUT_KLUDGE:
            if off + 32 > len(data):
                raise MultibootError("the multiboot header is cut short (a.out kludge fields missing)")
            return Header(off, flags, *struct.unpack_from("<IIIII", data, off + 12))
        return Header(off, flags)
    raise MultibootError("no multiboot header (magic 0x1badb002 with a valid checksum) in the first 8 KiB")


def aout_segments(data: bytes, h: Header) -> tuple[list[tuple[int, bytes]], int]:
    """(segments, entry) of an a.out-kludge kernel: the file from the header's
    load_addr to load_end_addr (0: to the end of the file), then zeroed bss."""
    start = h.offset - (h.header_addr - h.load_addr)
    if start < 0 or h.header_addr < h.load_addr:
        raise MultibootError(f"header_addr {h.header_addr:#x} and load_addr {h.load_addr:#x} do not fit the file")
    end = len(data) if h.load_end_addr == 0 else start + (h.load_end_addr - h.load_addr)
    if end > len(data) or end < start:
        raise MultibootError(f"load_end_addr {h.load_end_addr:#x} lies beyond the file")
    body = data[start:end]
    if h.bss_end_addr:
        body += bytes(max(0, h.bss_end_addr - (h.load_addr + len(body))))
    return [(h.load_addr, body)], h.entry_addr


@dataclass(frozen=True)
class Module:
    data: bytes
    cmdline: str


@dataclass
class Info:
    """Where the information structure and everything it points to go."""

    address: int                           # EBX
    writes: list[tuple[int, bytes]]        # (guest-physical, bytes)
    end: int                               # first byte after it all


def _align(n: int, to: int) -> int:
    return (n + to - 1) & ~(to - 1)


def memory_sizes(ram: list[tuple[int, int]]) -> tuple[int, int]:
    """(mem_lower, mem_upper) in KiB: RAM from 0 (at most 640 KiB) and RAM
    contiguous from 1 MiB, as a BIOS reports them."""
    def reach(start: int) -> int:
        end = start
        for at, size in sorted(ram):
            if at <= end < at + size:
                end = at + size
        return end - start

    return min(reach(0), 0xA0000) // 1024, reach(0x100000) // 1024


def build_info(at: int, regions: list[tuple[int, int, bool]], cmdline: str, modules: list[Module],
               lower_limit: int | None = None) -> Info:
    """The information structure at `at` (page aligned), followed by the memory
    map, strings, module list and the modules (each page aligned).
    `regions`: (start, size, is_ram) of the machine's memory."""
    ram = [(s, n) for s, n, is_ram in regions if is_ram]
    lower, upper = memory_sizes(ram)
    if lower_limit is not None:
        lower = min(lower, lower_limit // 1024)
    cursor = at + INFO_SIZE
    writes: list[tuple[int, bytes]] = []

    mmap = b"".join(struct.pack("<IQQI", 20, s, n, RAM if is_ram else RESERVED)
                    for s, n, is_ram in sorted(regions))
    mmap_addr = cursor
    writes.append((mmap_addr, mmap))
    cursor += len(mmap)

    def string(text: str) -> int:
        nonlocal cursor
        addr = cursor
        raw = text.encode("utf-8") + b"\0"
        writes.append((addr, raw))
        cursor += len(raw)
        return addr

    cmdline_addr = string(cmdline)
    loader_addr = cursor
    writes.append((loader_addr, LOADER_NAME))
    cursor += len(LOADER_NAME)
    names = [string(m.cmdline) for m in modules]
    cursor = _align(cursor, 4)
    mods_addr = cursor
    cursor += 16 * len(modules)
    table = b""
    for m, name in zip(modules, names):
        cursor = _align(cursor, 0x1000)
        writes.append((cursor, m.data))
        table += struct.pack("<IIII", cursor, cursor + len(m.data), name, 0)
        cursor += len(m.data)
    if modules:
        writes.append((mods_addr, table))

    flags = INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER | (INFO_MODS if modules else 0)
    info = bytearray(INFO_SIZE)
    struct.pack_into("<IIIIIII", info, 0, flags, lower, upper, 0xFFFFFFFF, cmdline_addr,
                     len(modules), mods_addr if modules else 0)
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, loader_addr)
    writes.insert(0, (at, bytes(info)))
    return Info(at, writes, cursor)
