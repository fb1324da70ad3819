"""Reading KVM_GET_DIRTY_LOG bitmaps into runs of written pages (common.py
dirty_ranges): the bit order across 64-bit words and across the 512-byte
chunks it reads as one integer, runs that cross both, slots that do not log,
and the backend's own pokes."""

from __future__ import annotations

from types import MethodType, SimpleNamespace

import pytest

from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.common import PAGE, KvmBackendBase
from kvmrig.backends.select import kvm_factory
from kvmrig.machine.plan import prepare
from kvmrig.machine.reuse import VmPool
from kvmrig.rig.load import load_rig_text


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


# mov byte [A], 1 for A = 0xFFF000 (the last page of the first 16 MiB, the
# last of a 512-byte chunk of the log), 0x1000000 (the next), 0x1FFF000 (the
# slot's last page); then hlt.
_WRITER = "".join(f"c60425{a.to_bytes(4, 'little').hex()}01" for a in (0xFFF000, 0x1000000, 0x1FFF000)) + "f4"
_BIG_RIG = f"""kvmrig: 1
name: big-writer
arch: x86_64
memory:
  - {{at: 0x0, size: 32M}}
images:
  - {{hex: "{_WRITER}", at: 0x1000}}
cpu: {{mode: long}}
expect: {{exit: hlt, memory: [{{at: 0xFFF000, u8: 1}}, {{at: 0x1000000, u8: 1}}, {{at: 0x1FFF000, u8: 1}}]}}
"""


@pytest.mark.kvm
@pytest.mark.arch_only("x86_64")
def test_a_real_vm_logs_writes_across_chunks_as_runs_and_the_reset_zeroes_them(tmp_path):
    """A 32 MiB slot (a log of two 512-byte chunks) on a real VM: the pool's
    reset zeroes what the guest wrote and the loader's page, and the guest's
    writes come back as runs (one across the chunk boundary)."""
    rig = load_rig_text(_BIG_RIG, tmp_path / "big.yaml")
    plan, factory = prepare(rig), kvm_factory(rig)
    pool = VmPool()
    try:
        outcome = pool.execute(plan, factory)
        assert not outcome.failures and outcome.exit == "hlt"
        kept = next(iter(pool._kept.values()))
        VmPool._reset(kept)
        for at in (0x1000, 0xFFF000, 0x1000000, 0x1FFF000):
            assert kept.memory.read(at, PAGE) == bytes(PAGE), hex(at)
        seen = []
        outcome = pool.execute(plan, factory, inspect=lambda backend, memory: seen.append(backend.dirty_ranges()))
        assert not outcome.failures and pool.reused == 1
        # (other hosts may also log the page tables the CPU sets accessed bits in)
        assert (0xFFF000, 0x1001000) in seen[0] and (0x1FFF000, 0x2000000) in seen[0]
    finally:
        pool.close()
