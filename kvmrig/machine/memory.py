"""Guest-physical memory: one host mapping per declared region.

The machine layer owns the bytes; backends only map them (KVM points a
memory slot at the mapping, the emulator maps the same pointer), so images,
expectations and breakpoint patching all read and write one copy.
"""

from __future__ import annotations

import bisect
import functools
import mmap
from dataclasses import dataclass

from kvmrig.errors import OutsideMemory  # noqa: F401 - raised here, importable from here
from kvmrig.rig.model import Region

PAGE = 0x1000
_ZERO_CHUNK = 0x100000                 # zero_ranges() copies at most this much at once
_ZEROS = memoryview(bytes(_ZERO_CHUNK))


@functools.cache  # MemTotal does not change while kvmrig runs
def host_ram() -> int:
    """Bytes of RAM this host has (MemTotal): the most one rig's memory may add
    up to (docs/limits.md). The mappings are lazy (MAP_NORESERVE) and only
    touched pages cost, but a map larger than the host is refused by the kernel
    (ENOMEM) or is a typo."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 40  # no /proc: let the mapping itself say


@dataclass
class Backing:
    region: Region
    buf: mmap.mmap

    @property
    def start(self) -> int:
        return self.region.at

    @property
    def end(self) -> int:
        return self.region.end


class Memory:
    """The guest's RAM and ROM, zeroed at creation."""

    def __init__(self, regions: tuple[Region, ...] | list[Region]):
        self.backings: list[Backing] = []
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        try:
            for region in sorted(regions, key=lambda r: r.at):
                self.backings.append(Backing(region, mmap.mmap(-1, region.size, flags=flags)))
        except BaseException:
            self.close()
            raise
        self._starts = [b.start for b in self.backings]
        self._spans = [(b.start, b.end, b.buf) for b in self.backings]   # for _span and zero_ranges: no lookups
        self.written: set[int] | None = None   # pages written from the host side, once tracked

    def track_writes(self) -> None:
        """Record every page write() touches (for a reset: the guest's own
        writes come from the backend's dirty log)."""
        self.written = set()

    def take_written(self) -> set[int]:
        pages, self.written = self.written or set(), set()
        return pages

    def zero_ranges(self, ranges) -> int:
        """Zero each guest-physical [start, end) range (page aligned; parts
        outside any region skipped), one copy per range: the reset of a reused
        VM from a backend's dirty log. Returns how many pages."""
        n = 0
        starts, spans = self._starts, self._spans
        for start, end in ranges:
            i = bisect.bisect_right(starts, start) - 1
            if i >= 0:
                at, stop, buf = spans[i]
                if end <= stop and end - start <= _ZERO_CHUNK:   # the usual case: one copy, no more steps
                    buf[start - at:end - at] = _ZEROS[:end - start]
                    n += -(-(end - start) // PAGE)
                    continue
            n += self._zero(start, end)
        return n

    def _zero(self, start: int, end: int) -> int:
        n = 0
        while start < end:
            b = self.find(start)
            if b is None:
                start += PAGE
                continue
            off = start - b.start
            stop = min(end, b.end) - b.start
            buf = b.buf
            for at in range(off, stop, _ZERO_CHUNK):   # a copy from shared zeros: no call per page
                size = min(_ZERO_CHUNK, stop - at)
                buf[at:at + size] = _ZEROS[:size]
            n += -(-(stop - off) // PAGE)
            start = b.start + stop
        return n

    def zero_all(self) -> None:
        """Give every region fresh zero pages (madvise MADV_DONTNEED on the
        private anonymous mappings): the reset when nobody logged writes."""
        for b in self.backings:
            b.buf.madvise(mmap.MADV_DONTNEED)

    def find(self, addr: int) -> Backing | None:
        """The backing that holds `addr`, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.backings[i].end:
            return self.backings[i]
        return None

    def _span(self, addr: int, length: int) -> tuple[mmap.mmap, int]:
        """(the region's buffer, offset of `addr` in it) for `length` bytes
        inside one region, else OutsideMemory. On _spans, without a Backing
        lookup: the loader writes through here for every rig."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or addr >= self._spans[i][1] or addr + length > self._spans[i][1]:
            raise OutsideMemory(f"{addr:#x}..{addr + length:#x} is not inside one memory region")
        at, _end, buf = self._spans[i]
        return buf, addr - at

    def contains(self, addr: int, length: int) -> bool:
        b = self.find(addr)
        return b is not None and addr + length <= b.end

    def read(self, addr: int, length: int) -> bytes:
        buf, off = self._span(addr, length)
        return buf[off:off + length]

    def write(self, addr: int, data: bytes) -> None:
        """Write guest memory from the host side (ROM included: this is the loader)."""
        buf, off = self._span(addr, len(data))
        buf[off:off + len(data)] = data
        if self.written is not None:
            self.written.update(range(addr & ~(PAGE - 1), addr + len(data), PAGE))

    def close(self) -> None:
        for b in self.backings:
            try:
                b.buf.close()
            except BufferError:
                # A backend still holds a pointer into it; the mapping goes with the process.
                pass
        self.backings = []
        self._starts = []
        self._spans = []
