"""The session's run loop (machine/session.py) against a scripted backend:
hit counting, `hits` bounds, `on_hit`, per-hit checks, `set`, step-over after
a breakpoint, foreign debug exits, timeouts and the public resume/step/finish
API. No KVM, no unicorn: tests/machine/fakebackend.py replays the exits.
(The same behaviour on real VMs: test_debug_kvm.py, test_session.py.)"""

from __future__ import annotations

import time

import pytest

from kvmrig.backends.events import (ForeignDebug, Halt, HwBreak, Mmio, PortIO, Shutdown, Step, SwBreak,
                                    SystemEvent, Unhandled, WatchHit)
from kvmrig.machine.memory import Memory
from kvmrig.machine.plan import prepare
from kvmrig.machine.session import ENDED, UNTIL, Session
from kvmrig.rig.load import load_rig_text

from tests.machine.fakebackend import TIMEOUT, FakeBackend, ScriptExhausted

INT3, NOP = b"\xcc", b"\x90"
BP = 0x1002          # where the rig's breakpoints sit in the image below (a NOP)


def session_for(extra: str, script, regs=None, timeout: str = "2s") -> tuple[Session, FakeBackend]:
    text = (f"kvmrig: 1\narch: x86_64\ntimeout: {timeout}\nmemory: [{{at: 0, size: 2M}}]\n"
            "images: [{hex: '90 90 90 90 90 90 90 90 f4', at: 0x1000}]\n"
            "cpu: {mode: long}\n" + extra)
    plan = prepare(load_rig_text(text, "/rigs/loop.yaml"))
    backend = FakeBackend(script, regs)
    memory = Memory(plan.rig.memory)
    return Session(plan, backend, memory), backend


@pytest.fixture
def run():
    """run(extra, script, ...) -> (outcome, session, backend); memory released after the test."""
    made: list[Session] = []

    def go(extra: str, script, regs=None, timeout: str = "2s"):
        s, b = session_for(extra, script, regs, timeout)
        made.append(s)
        return s.run(), s, b

    yield go
    for s in made:
        s.memory.close()


def looped(n: int, at: int = BP) -> list:
    """A breakpoint at `at` hit n times, each followed by the step over it, then HLT."""
    return [ev for _ in range(n) for ev in (SwBreak(at), Step(at + 1))] + [Halt(0x1008)]


def whats(outcome) -> list[str]:
    return [f.what for f in outcome.failures]


# -- hit counting and `hits` ------------------------------------------------------

def test_every_hit_of_a_breakpoint_is_counted(run):
    out, _s, _b = run(f"breakpoints: [{{at: {BP:#x}, hits: 3}}]\n", looped(3))
    assert out.failures == []
    assert out.hit_counts == {f"breakpoint[0] at {BP:#x}": 3}
    assert [h.number for h in out.hits] == [1, 2, 3] and {h.pc for h in out.hits} == {BP}
    assert out.exit == "hlt" and out.stop_pc == 0x1008 and out.exits == 7


@pytest.mark.parametrize("hits, n, ok", [
    (3, 2, False), (3, 4, False), ('">=2"', 2, True), ('">=2"', 1, False),
    ('"<=3"', 3, True), ('"<=3"', 4, False), ("{range: [2, 3]}", 3, True), ("{range: [2, 3]}", 0, False),
])
def test_hits_bounds_are_checked_at_the_end(run, hits, n, ok):
    out, _s, _b = run(f"breakpoints: [{{at: {BP:#x}, hits: {hits}}}]\n", looped(n))
    assert (whats(out) == []) == ok, whats(out)
    if not ok:
        assert whats(out) == [f"breakpoint[0] at {BP:#x} hits"] and out.failures[0].actual == str(n)


def test_two_breakpoints_at_one_address_each_count(run):
    out, _s, _b = run(f"breakpoints: [{{at: {BP:#x}, hits: 2}}, {{at: {BP:#x}, hits: 2}}]\n", looped(2))
    assert out.failures == [] and list(out.hit_counts.values()) == [2, 2]


# -- step-over after a breakpoint ---------------------------------------------------

def test_a_hit_lifts_the_breakpoint_steps_over_it_and_plants_it_again(run):
    seen = {}

    def step_after_hit(b: FakeBackend):
        # Between the hit and the step: the original byte is back and one step is armed.
        seen["byte"] = s.memory.read(BP, 1)
        seen["stepping"] = b.single_step
        return Step(BP + 1)

    def after_step(b: FakeBackend):
        seen["byte_after"] = s.memory.read(BP, 1)
        seen["stepping_after"] = b.single_step
        return Halt(0x1008)

    s, b = session_for(f"breakpoints: [{{at: {BP:#x}}}]\n", [SwBreak(BP), step_after_hit, after_step])
    try:
        s.start()
        assert s.memory.read(BP, 1) == INT3, "planted at start"
        assert not b.single_step
        out = s.run()
    finally:
        s.memory.close()
    assert seen == {"byte": NOP, "stepping": True, "byte_after": INT3, "stepping_after": False}
    assert out.failures == [] and out.exit == "hlt"


def test_a_set_that_moves_the_pc_skips_the_step_over(run):
    script = [SwBreak(BP), lambda b: (b.single_step and pytest.fail("stepping after pc moved"), Halt(0x1008))[1]]
    out, s, b = run(f"breakpoints: [{{at: {BP:#x}, set: {{regs: {{rip: 0x1006}}}}}}]\n", script)
    assert out.failures == []
    assert b.regs["rip"] == 0x1008 and {"rip": 0x1006} in b.set_calls
    assert not any(step for _slots, step, _sw in b.debug_calls), "never single-stepped"


def test_single_stepping_rig_counts_steps_and_a_breakpoint_on_the_way(run):
    # trace: the session steps every instruction; a planted breakpoint met by a
    # step is hit on arrival, without a breakpoint exit.
    script = [Step(0x1001), Step(BP), Step(0x1003), Halt(0x1003)]
    out, _s, _b = run(f"trace: {{max: 10}}\nbreakpoints: [{{at: {BP:#x}, hits: 1}}]\n", script)
    assert out.failures == [], whats(out)
    assert out.trace == [0x1000, 0x1001, BP, 0x1003]
    assert out.steps == 4     # three steps and the halting instruction


# -- on_hit, per-hit expect, set --------------------------------------------------------

def rax_counts_hits():
    """A script where rax is the hit number at each hit (as a guest loop counter would be)."""
    script = []
    for i in range(1, 4):
        script.append(lambda b, i=i: (b.regs.__setitem__("rax", i), SwBreak(BP))[1])
        script.append(Step(BP + 1))
    return script + [Halt(0x1008)]


def test_per_hit_expect_names_the_hit_that_failed(run):
    out, _s, _b = run(f"breakpoints: [{{at: {BP:#x}, expect: {{regs: {{rax: {{range: [1, 2]}}}}}}}}]\n",
                      rax_counts_hits())
    assert len(out.failures) == 1 and "hit 3" in out.failures[0].what and "rax" in out.failures[0].what
    assert [h.failures != [] for h in out.hits] == [False, False, True]
    assert [h.regs for h in out.hits] == [{"rax": 1}, {"rax": 2}, {"rax": 3}]


def test_on_hit_checks_only_that_hit(run):
    out, _s, _b = run(f"breakpoints: [{{at: {BP:#x}, on_hit: 2, expect: {{regs: {{rax: 2}}}}}}]\n",
                      rax_counts_hits())
    assert out.failures == [] and out.hit_counts[f"breakpoint[0] at {BP:#x}"] == 3
    out, _s, _b = run(f"breakpoints: [{{at: {BP:#x}, on_hit: 3, expect: {{regs: {{rax: 2}}}}}}]\n",
                      rax_counts_hits())
    assert len(out.failures) == 1 and "hit 3" in out.failures[0].what


def test_on_hit_that_never_came_fails(run):
    out, _s, _b = run(f"breakpoints: [{{at: {BP:#x}, on_hit: 5, set: {{regs: {{rbx: 1}}}}}}]\n", looped(2))
    assert whats(out) == [f"breakpoint[0] at {BP:#x} on_hit"]
    assert all("rbx" not in c for c in _b.set_calls), "set never applied"


def test_set_applies_at_its_hit_and_memory_writes_keep_the_breakpoint_planted(run):
    out, s, b = run(f"breakpoints: [{{at: {BP:#x}, on_hit: 2, set: {{regs: {{rbx: 0x55}}, "
                    f"memory: [{{at: {BP:#x}, hex: '91'}}]}}}}]\n", looped(2))
    assert out.failures == []
    assert [c for c in b.set_calls if "rbx" in c] == [{"rbx": 0x55}]
    assert s.memory.read(BP, 1) == b"\x91", "the written byte, not the planted INT3, after the run"


# -- watchpoints ----------------------------------------------------------------------

def test_one_access_over_several_slots_counts_once_per_watchpoint(run):
    # len 16 splits over two 8-byte registers; both fire for one access.
    out, _s, _b = run("watchpoints: [{at: 0x3000, len: 16, access: write, hits: 2}]\n",
                      [WatchHit(0x1004, 0x3006, (0, 1), 4, True), WatchHit(0x1006, 0x3000, (0,), 1, True),
                       Halt(0x1008)])
    assert out.failures == [], whats(out)
    assert [h.addr for h in out.hits] == [0x3006, 0x3000]


def test_a_hardware_breakpoint_counts_by_its_slot(run):
    out, _s, b = run(f"breakpoints: [{{at: {BP:#x}, kind: hw, hits: 2}}]\n",
                     [HwBreak(BP, 0), HwBreak(BP, 0), Halt(0x1008)])
    assert out.failures == [] and b.debug_calls[0][0][0].addr == BP


# -- foreign debug exits ---------------------------------------------------------------

def test_debug_exits_kvmrig_did_not_cause_go_back_to_the_guest(run):
    foreign = [SwBreak(0x1005, 3), ForeignDebug(0x1006, code=1), HwBreak(0x1007, 9), WatchHit(0x1007, 0x9000, (7,))]
    out, _s, b = run("", foreign + [Halt(0x1008)])
    assert b.reinjected == foreign
    assert out.exit == "hlt" and out.failures == []
    assert len(out.notes) == 4 and all("handed back to the guest" in n for n in out.notes)


# -- devices and the end of the run ----------------------------------------------------------

def test_port_reads_are_answered_and_the_exit_device_ends_the_run(run):
    out, _s, b = run("devices: [{type: exit, port: 0xf4}]\n",
                     [PortIO(0x80, 1, False), PortIO(0x80, 2, False, count=2), PortIO(0xF4, 1, True, b"\x07")])
    assert b.reads == [b"\xff", b"\xff" * 4]
    assert (out.exit, out.exit_code) == ("exit-code", 7)
    assert out.stop_pc is None, "an I/O event has no pc"


@pytest.mark.parametrize("event, exit", [
    (Shutdown(0x1003, "triple fault"), "shutdown"), (SystemEvent(0x1003, "off", 8), "system-off"),
    (SystemEvent(0x1003, "reset"), "reset"), (SystemEvent(0x1003, "crash"), "unhandled"),
    (Unhandled(0x1003, "KVM internal error", 1), "unhandled"), (Mmio(0xF000_0000, 4, False), "mmio"),
])
def test_each_kind_of_end(run, event, exit):
    out, _s, _b = run("", [event])
    assert out.exit == exit


def test_the_timeout_ends_a_guest_that_never_stops(run):
    out, _s, _b = run("", [PortIO(0x80, 1, True, b"\x00"), TIMEOUT], timeout="50ms")
    assert out.exit == "timeout" and "still running after 0.05s" in out.detail
    assert out.exits == 2


# -- the public loop: resume(until), step, finish -----------------------------------------------

def test_resume_until_pauses_without_using_up_the_rigs_timeout():
    s, b = session_for("", [TIMEOUT, TIMEOUT], timeout="300ms")
    try:
        assert s.resume(time.monotonic() + 0.02) is UNTIL
        assert not s.ended and s.exits == 0, "a slice that ended is not an exit"
        time.sleep(1.0)   # stopped "in the debugger": not guest time
        assert s.seconds < 0.3
        assert s.resume() is ENDED and s.ended
        out = s.finish()
        assert out.exit == "timeout" and 0.29 < out.seconds < 0.9, out.seconds
        assert s.finish() is out, "judged once"
    finally:
        s.memory.close()


def test_a_debugger_point_stops_resume_and_step_runs_one_instruction():
    s, b = session_for("", [SwBreak(0x1004), Step(0x1005), Step(0x1006), Halt(0x1008)])
    try:
        s.start()
        point = s.add_client_point("sw", 0x1004)
        pause = s.resume()
        assert (pause.reason, pause.point) == ("sw", point)
        assert s.step().reason == "step" and b.regs["rip"] == 0x1005
        assert s.memory.read(0x1004, 1) == INT3, "re-planted after the step over it"
        assert s.step().reason == "step" and not b.single_step
        assert s.resume() is ENDED
        assert s.finish().hit_counts == {}, "a debugger's points are never counted"
    finally:
        s.memory.close()


def test_the_session_never_asks_for_more_than_the_run_needs(run):
    with pytest.raises(ScriptExhausted):
        run("", [PortIO(0x80, 1, True, b"\x00")])
