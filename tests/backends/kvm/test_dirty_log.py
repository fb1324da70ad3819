"""Reading KVM_GET_DIRTY_LOG bitmaps into runs of written pages (common.py
dirty_ranges): the bit order across 64-bit words and across the 512-byte
chunks it reads as one integer, runs that cross both, slots that do not log,
and the backend's own pokes."""

from __future__ import annotations

from types import MethodType, SimpleNamespace

from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.common import PAGE, KvmBackendBase


class _Vm:
    """Hands out a prepared dirty bitmap per slot once, as KVM_GET_DIRTY_LOG would."""

    def __init__(self, pages_by_slot: dict[int, list[int]]):
        self.pages_by_slot = pages_by_slot

    def get_dirty_log(self, slot: int, bitmap) -> None:
        n = len(abi.ffi.buffer(bitmap)) // 8
        for w in range(n):
            bitmap[w] = 0
        for index in self.pages_by_slot.pop(slot, []):   # KVM clears the log it hands out
            bitmap[index // 64] |= 1 << (index % 64)


def _fake(slot_ids, pages_by_slot, dirty=()):
    fake = SimpleNamespace(_dirty=set(dirty), _bitmaps={}, _slot_ids=slot_ids, vm=_Vm(pages_by_slot))
    for name in ("dirty_ranges", "_harvest", "_log_runs"):
        setattr(fake, name, MethodType(getattr(KvmBackendBase, name), fake))
    return fake


def _pages(ranges) -> set[int]:
    return {page for start, end in ranges for page in range(start, end, PAGE)}


BIG = 3 * 4096 + 70   # pages: the bitmap spans several 512-byte chunks and a partial word
INDICES = [0, 1, 63, 64, 65, 4095, 4096, 4097, 8191, 8192, BIG - 1]
SLOTS = [(0, 0x100000, BIG * PAGE, True), (1, 0x0, 16 * PAGE, True), (2, 0x40000000, 16 * PAGE, False)]


def test_every_set_bit_becomes_its_page_in_every_logged_slot():
    fake = _fake(SLOTS, {0: INDICES, 1: [15], 2: [0]}, dirty={0xDEAD000})
    ranges = fake.dirty_ranges()
    assert _pages(ranges) == {0xDEAD000} | {0x100000 + i * PAGE for i in INDICES} | {15 * PAGE}
    assert fake._dirty == set() and fake.dirty_ranges() == []


def test_neighbouring_pages_come_as_one_range_across_words_and_chunks():
    fake = _fake(SLOTS[:1], {0: INDICES})
    at = lambda i: 0x100000 + i * PAGE   # noqa: E731
    assert fake.dirty_ranges() == [(at(0), at(2)), (at(63), at(66)), (at(4095), at(4098)),
                                   (at(8191), at(8193)), (at(BIG - 1), at(BIG))]


def test_harvest_keeps_the_log_as_pages_for_later():
    fake = _fake(SLOTS, {0: INDICES, 1: [15]})
    fake._harvest()   # before the slots are rebuilt (watch traps): their logs go with them
    assert fake._dirty == {0x100000 + i * PAGE for i in INDICES} | {15 * PAGE}
    want = sorted(fake._dirty)
    assert fake.dirty_ranges() == [(page, page + PAGE) for page in want] and fake._dirty == set()


def test_a_clean_log_adds_nothing():
    fake = _fake([(0, 0x0, 0x20000, True)], {})
    assert fake.dirty_ranges() == []
    fake._harvest()
    assert fake._dirty == set()
