"""Multiboot v1: the header search, a.out kludge loading and the information structure."""

import struct

import pytest

from kvmrig.arch.x86_64 import multiboot as mb


def _header(flags: int, *aout: int) -> bytes:
    return struct.pack("<III", mb.HEADER_MAGIC, flags, (-(mb.HEADER_MAGIC + flags)) & 0xFFFFFFFF) + \
        struct.pack(f"<{len(aout)}I", *aout)


def test_header_is_found_on_a_4_byte_boundary_with_its_checksum():
    data = bytes(64) + _header(0x3) + bytes(16)
    h = mb.find_header(data)
    assert h.offset == 64 and h.flags == 3 and not h.aout


def test_a_bad_checksum_is_no_header():
    bad = struct.pack("<III", mb.HEADER_MAGIC, 3, 0)
    with pytest.raises(mb.MultibootError, match="no multiboot header"):
        mb.find_header(bad + bytes(100))


def test_aout_kludge_loads_from_the_header_addresses_with_bss():
    # header at file offset 16, header_addr 0x100010: the file is loaded at 0x100000
    body = bytes(range(16)) + _header(mb.FLAG_AOUT_KLUDGE, 0x100010, 0x100000, 0x100040, 0x100080, 0x100020)
    body += bytes(0x40 - len(body))
    h = mb.find_header(body)
    segments, entry = mb.aout_segments(body, h)
    assert entry == 0x100020
    (at, data), = segments
    assert at == 0x100000 and len(data) == 0x80 and data[:16] == bytes(range(16)) and data[0x40:] == bytes(0x40)


def test_memory_sizes_follow_contiguous_ram():
    assert mb.memory_sizes([(0, 128 << 20)]) == (640, (127 << 20) // 1024)
    assert mb.memory_sizes([(0, 0x9F000), (0x100000, 1 << 20)]) == (0x9F000 // 1024, 1024)


def test_info_structure_layout():
    regions = [(0, 8 << 20, True), (0xFFFE0000, 0x20000, False)]
    info = mb.build_info(0x500000, regions, "kernel.flat arg", [mb.Module(b"NR_CPUS=1\n", "env")], 0x9F000)
    mem = {}
    for addr, data in info.writes:
        for i, b in enumerate(data):
            mem[addr + i] = b

    def u32(a):
        return int.from_bytes(bytes(mem[a + i] for i in range(4)), "little")

    def cstr(a):
        out = b""
        while mem[a]:
            out += bytes([mem[a]])
            a += 1
        return out.decode()

    base = info.address
    flags = u32(base)
    assert flags & (mb.INFO_MEM | mb.INFO_CMDLINE | mb.INFO_MODS | mb.INFO_MMAP) == 0x4D
    assert u32(base + 4) == 0x9F000 // 1024 and u32(base + 8) == 7 * 1024
    assert cstr(u32(base + 16)) == "kernel.flat arg"
    assert u32(base + 20) == 1
    mods = u32(base + 24)
    start, end = u32(mods), u32(mods + 4)
    assert start % 0x1000 == 0 and bytes(mem[a] for a in range(start, end)) == b"NR_CPUS=1\n"
    assert cstr(u32(mods + 8)) == "env"
    length, mmap = u32(base + 44), u32(base + 48)
    assert length == 2 * 24
    entries = [struct.unpack("<IQQI", bytes(mem[a] for a in range(mmap + 24 * i, mmap + 24 * i + 24)))
               for i in range(2)]
    assert entries == [(20, 0, 8 << 20, mb.RAM), (20, 0xFFFE0000, 0x20000, mb.RESERVED)]
    assert info.end >= end
