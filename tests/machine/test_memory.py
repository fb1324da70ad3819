"""Guest memory's reset of written pages (machine/memory.py zero_ranges)."""

from __future__ import annotations

from kvmrig.machine.memory import PAGE, Memory
from kvmrig.errors import Mark
from kvmrig.rig.model import Region

MARK = Mark("t.yaml", 1, 1)


def _filled(regions: list[tuple[int, int]]) -> Memory:
    mem = Memory([Region(at, size, False, MARK) for at, size in regions])
    for at, size in regions:
        mem.write(at, b"\xaa" * size)
    return mem


def test_zero_ranges_handles_a_range_longer_than_its_copy_chunk():
    size = 0x300000   # 3 MiB: more than one shared block of zeros
    mem = _filled([(0x0, size)])
    try:
        assert mem.zero_ranges([(PAGE, size - PAGE)]) == size // PAGE - 2
        assert mem.read(0, PAGE) == b"\xaa" * PAGE and mem.read(size - PAGE, PAGE) == b"\xaa" * PAGE
        assert mem.read(PAGE, size - 2 * PAGE) == bytes(size - 2 * PAGE)
    finally:
        mem.close()


def test_zero_ranges_clears_each_range_across_regions_and_skips_what_is_outside():
    mem = _filled([(0x0, 0x8000), (0x100000, 0x4000)])
    try:
        # a range inside the first region, one from its end into the hole, one from the hole into the
        # second region, one inside that, one wholly outside
        ranges = [(0x1000, 0x3000), (0x7000, 0x9000), (0xFF000, 0x101000), (0x102000, 0x104000), (0x200000, 0x201000)]
        assert mem.zero_ranges(ranges) == 6
        zeroed = {0x1000, 0x2000, 0x7000, 0x100000, 0x102000, 0x103000}
        for page in list(range(0, 0x8000, PAGE)) + list(range(0x100000, 0x104000, PAGE)):
            want = 0 if page in zeroed else 0xAA
            assert mem.read(page, PAGE) == bytes([want]) * PAGE, hex(page)
    finally:
        mem.close()


def test_write_takes_exactly_what_read_takes():
    """write() checks its range itself (the loader's per-rig path): the same
    places as read(), at every edge of two regions with a hole between."""
    from kvmrig.machine.memory import OutsideMemory
    mem = Memory([Region(0x1000, 0x1000, False, MARK), Region(0x4000, 0x2000, True, MARK)])
    try:
        for addr in (0, 0xFFF, 0x1000, 0x1FFF, 0x2000, 0x3FFF, 0x4000, 0x5FFF, 0x6000, 0x7000):
            for length in (0, 1, 2, 0x1000, 0x2000, 0x2001):
                try:
                    mem.read(addr, length)
                except OutsideMemory:
                    readable = False
                else:
                    readable = True
                try:
                    mem.write(addr, b"\xab" * length)
                except OutsideMemory:
                    written = False
                else:
                    written = True
                    assert mem.read(addr, length) == b"\xab" * length
                assert written == readable, (hex(addr), length)
    finally:
        mem.close()
