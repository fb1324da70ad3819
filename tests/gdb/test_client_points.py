"""A debugger's points in the debug model (machine/debug.py), pure: hardware
slots after the rig's, matching events to them, and memory writes under
planted breakpoints. No KVM."""

from __future__ import annotations

import pytest

from kvmrig.backends.events import WatchHit
from kvmrig.machine.debug import ClientPoint, DebugPlan, NoDebugSlot, Point, SwPatches
from kvmrig.machine.memory import Memory
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig_text

RIG = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
images: [{hex: "90 90 90 90 f4", at: 0x1000}]
cpu: {mode: long, tables_at: 0x8000}
breakpoints:
  - {at: 0x1001}
  - {at: 0x1002, kind: hw}
watchpoints:
  - {at: 0x3000, len: 4, access: write}
"""


def plan(capacity):
    p = prepare(load_rig_text(RIG, "/rigs/points.yaml"))
    return DebugPlan(p.rig, p.traits, p.resolve, capacity)


def test_client_points_take_slots_after_the_rigs_and_give_them_back():
    d = plan((4, 4, True))                        # x86 with data breakpoints: 4 shared
    assert len(d.slots) == 2 and d.rig_slots == 2
    hw = d.add_client("hw", 0x1003)
    watch = d.add_client("access", 0x3004, 2)
    assert [(s.addr, s.kind, s.length) for s in d.slots[2:]] == [(0x1003, "exec", 1), (0x3004, "access", 2)]
    assert d.slot_owner[2] is hw and d.slot_owner[3] is watch
    assert hw.slots == [2] and watch.slots == [3]
    with pytest.raises(NoDebugSlot):
        d.add_client("hw", 0x1004)
    assert len(d.client) == 2 and len(d.slots) == 4    # the refused one left nothing behind
    assert d.remove_client("hw", 0x1003)
    assert [(s.addr, s.kind) for s in d.slots[2:]] == [(0x3004, "access")]
    assert watch.slots == [2]
    assert not d.remove_client("hw", 0x1003)


def test_a_client_hw_breakpoint_where_the_rig_has_one_shares_its_register():
    d = plan((4, 4, True))
    d.add_client("hw", 0x1002)
    assert len(d.slots) == 2


def test_separate_pools_and_watch_ranges_split_like_the_rigs():
    d = plan((4, 64, False))                      # x86 with page-trapped watchpoints
    d.add_client("write", 0x4001, 6)              # naturally aligned pieces, as for the rig's watches
    assert [(s.addr, s.length) for s in d.slots[2:]] == [(0x4001, 1), (0x4002, 2), (0x4004, 2), (0x4006, 1)]
    for addr in (0x1010, 0x1011, 0x1012):
        d.add_client("hw", addr)
    with pytest.raises(NoDebugSlot):               # the rig uses 1 of the 4 breakpoint registers
        d.add_client("hw", 0x1013)


def test_sw_points_are_planted_not_slotted():
    d = plan((4, 4, True))
    assert d.sw_all == {0x1001} and d.any_sw
    d.add_client("sw", 0x1004)
    assert d.sw_all == {0x1001, 0x1004} and d.client_sw == {0x1004}
    assert len(d.slots) == 2
    d.remove_client("sw", 0x1004)
    assert d.sw_all == {0x1001}


def test_client_hit_matches_events():
    d = plan((4, 64, False))
    sw = d.add_client("sw", 0x1004)
    hw = d.add_client("hw", 0x1002)               # shares the rig's register
    wr = d.add_client("write", 0x3002, 4)          # overlaps the rig's watch
    rd = d.add_client("read", 0x5000, 1)
    assert d.client_at("sw", 0x1004) is sw
    assert d.client_at("sw", 0x1001) is None
    assert d.client_at("hw", 0x1002) is hw
    # A write the rig's slot reported: matched by the range it touched.
    assert d.client_watch(WatchHit(0, 0x3003, (1,), 1, True)) is wr
    assert d.client_watch(WatchHit(0, 0x3000, (1,), 2, True)) is None
    # A read does not stop a write watch; the read watch's own slot does.
    assert d.client_watch(WatchHit(0, 0x3003, (1,), 1, False)) is None
    assert d.client_watch(WatchHit(0, 0x5000, (rd.slots[0],), 1)) is rd
    # Where the backend cannot tell reads from writes, the range decides.
    assert d.client_watch(WatchHit(0, 0x3003, (1,))) is wr
    # Backends name every slot an access matched: the debugger's is found too.
    assert d.client_watch(WatchHit(0, 0x3000, (1, wr.slots[0]), 8, True)) is wr
    assert isinstance(d.slot_owner[1], Point) and isinstance(d.slot_owner[wr.slots[0]], ClientPoint)


def test_rig_counting_ignores_client_points():
    d = plan((4, 4, True))
    d.add_client("hw", 0x1003)
    assert set(d.hit_counts()) == {p.label for p in d.points}
    assert len(d.points) == 3


def test_writes_under_a_planted_instruction_go_to_its_saved_bytes():
    p = prepare(load_rig_text(RIG, "/rigs/points.yaml"))
    mem = Memory(p.rig.memory)
    try:
        mem.write(0x1000, bytes.fromhex("90 90 90 90 f4"))
        patches = SwPatches(mem, b"\xcc")
        patches.plant(0x1001)
        patches.write(0x1000, b"\x11\x22\x33")
        assert mem.read(0x1000, 3) == b"\x11\xcc\x33"           # still planted
        assert patches.view(0x1000, 3) == b"\x11\x22\x33"      # what a debugger reads
        patches.lift(0x1001)
        assert mem.read(0x1000, 3) == b"\x11\x22\x33"          # lifting restores the new byte
        patches.write(0x1001, b"\x44")                          # not planted now: a plain write
        assert mem.read(0x1001, 1) == b"\x44"
    finally:
        mem.close()
