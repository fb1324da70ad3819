"""Reading KVM_GET_DIRTY_LOG bitmaps into page addresses (common.py _harvest):
the bit order across 64-bit words and across the 512-byte chunks it reads
as one integer, and slots that do not log."""

from __future__ import annotations

from types import SimpleNamespace

from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.common import PAGE, KvmBackendBase


class _Vm:
    """Hands out a prepared dirty bitmap per slot, as KVM_GET_DIRTY_LOG would."""

    def __init__(self, pages_by_slot: dict[int, list[int]]):
        self.pages_by_slot = pages_by_slot

    def get_dirty_log(self, slot: int, bitmap) -> None:
        n = len(abi.ffi.buffer(bitmap)) // 8
        for w in range(n):
            bitmap[w] = 0
        for index in self.pages_by_slot.get(slot, []):
            bitmap[index // 64] |= 1 << (index % 64)


def test_every_set_bit_becomes_its_page_in_every_logged_slot():
    big = 3 * 4096 + 70   # pages: the bitmap spans several 512-byte chunks and a partial word
    indices = [0, 1, 63, 64, 65, 4095, 4096, 4097, 8191, 8192, big - 1]
    fake = SimpleNamespace(_dirty={0xDEAD000}, _bitmaps={},
                           _slot_ids=[(0, 0x100000, big * PAGE, True), (1, 0x0, 16 * PAGE, True),
                                      (2, 0x40000000, 16 * PAGE, False)],
                           vm=_Vm({0: indices, 1: [15], 2: [0]}))
    KvmBackendBase._harvest(fake)
    want = {0xDEAD000} | {0x100000 + i * PAGE for i in indices} | {15 * PAGE}
    assert fake._dirty == want


def test_a_clean_log_adds_nothing():
    fake = SimpleNamespace(_dirty=set(), _bitmaps={}, _slot_ids=[(0, 0x0, 0x20000, True)], vm=_Vm({}))
    KvmBackendBase._harvest(fake)
    assert fake._dirty == set()
