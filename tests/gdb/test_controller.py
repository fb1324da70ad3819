"""The debug controller on real backends (no gdb): a rig's Session driven
stop by stop, with a debugger's breakpoints, watchpoints and steps beside
the rig's own, which still count and are still checked."""

from __future__ import annotations

import platform
import time

import pytest

from kvmrig.gdb.controller import Controller
from kvmrig.machine.plan import prepare
from kvmrig.machine.session import execute
from kvmrig.rig.load import load_rig_text

from tests.conftest import emu_unavailable, hexof

x86_host = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86_64 guest code")


BACKENDS = [pytest.param("kvm", marks=[pytest.mark.kvm, x86_host]),
            pytest.param("emu", marks=pytest.mark.skipif(emu_unavailable() is not None, reason=str(emu_unavailable())))]

# fib-like doubling loop in long mode at 0x1000
CODE = """
    b8 01 00 00 00         # 1000: mov eax, 1
    b9 05 00 00 00         # 1005: mov ecx, 5
    01 c0                  # 100a: add eax, eax      (the rig's sw breakpoint)
    ff c9                  # 100c: dec ecx
    75 fa                  # 100e: jnz 0x100a
    89 04 25 00 50 00 00   # 1010: mov [0x5000], eax
    bb 34 12 00 00         # 1017: mov ebx, 0x1234
    f4                     # 101c: hlt
"""


def rig_text(extra: str = "", code: str = CODE, timeout: str = "5s") -> str:
    return (f"kvmrig: 1\nname: loop\narch: x86_64\ntimeout: {timeout}\nmemory: [{{at: 0, size: 2M}}]\n"
            f"images: [{{hex: '{hexof(code)}', at: 0x1000}}]\ncpu: {{mode: long}}\n" + extra)


LOOP_RIG = rig_text("""\
breakpoints:
  - {at: 0x100a, hits: 5}
  - {at: 0x1010, kind: hw, hits: 1}
expect:
  exit: hlt
  regs: {rax: 32, rbx: 0x1234, rcx: 0}
  memory: [{at: 0x5000, u32: 32}]
""")


def factory(backend: str):
    if backend == "kvm":
        from kvmrig.backends.kvm.x86_64 import KvmX86Backend
        return KvmX86Backend
    from kvmrig.backends.emu import backend_class
    return backend_class("x86_64")


@pytest.fixture
def controller():
    made = []

    def make(text: str, backend: str) -> Controller:
        ctl = Controller(prepare(load_rig_text(text, "/rigs/loop.yaml")), factory(backend))
        made.append(ctl)
        ctl.start()
        return ctl

    yield make
    for ctl in made:
        ctl.close()


def assert_passed(ctl: Controller):
    assert ctl.ended
    assert ctl.outcome.failures == [], [str(f) for f in ctl.outcome.failures]


@pytest.mark.parametrize("backend", BACKENDS)
def test_client_breakpoints_stop_and_the_rigs_still_count(controller, backend):
    ctl = controller(LOOP_RIG, backend)
    assert ctl.pc() == 0x1000 and ctl.last.reason == "entry"
    ctl.insert("sw", 0x100A)          # where the rig has its own
    ctl.insert("hw", 0x100C)
    seen = []
    for _ in range(10):
        info = ctl.resume()
        seen.append((info.reason, ctl.pc(), ctl.read_regs()["rcx"]))
    assert seen == [r for n in (5, 4, 3, 2, 1) for r in (("sw", 0x100A, n), ("hw", 0x100C, n))]
    ctl.remove("sw", 0x100A)
    ctl.remove("hw", 0x100C)
    assert ctl.resume().reason == "end"
    assert_passed(ctl)
    assert ctl.outcome.hit_counts == {"breakpoint[0] at 0x100a": 5, "breakpoint[1] at 0x1010": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_client_hw_breakpoint_on_the_rigs_hw_breakpoint(controller, backend):
    ctl = controller(LOOP_RIG, backend)
    ctl.insert("hw", 0x1010)
    info = ctl.resume()
    assert (info.reason, ctl.pc()) == ("hw", 0x1010)
    assert ctl.resume().reason == "end"
    assert_passed(ctl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_steps_walk_every_instruction_over_the_rigs_breakpoints(controller, backend):
    ctl = controller(LOOP_RIG, backend)
    pcs = [ctl.pc()]
    while True:
        info = ctl.resume(step=True)
        if info.reason == "end":
            break
        assert info.reason == "step"
        pcs.append(ctl.pc())
    body = [0x100A, 0x100C, 0x100E]
    assert pcs == [0x1000, 0x1005] + body * 5 + [0x1010, 0x1017, 0x101C]
    assert_passed(ctl)
    assert ctl.outcome.hit_counts["breakpoint[0] at 0x100a"] == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_stepping_a_traced_rig_counts_steps_as_a_plain_run(controller, backend):
    text = rig_text("trace: {max: 64}\nbreakpoints: [{at: 0x100a, hits: 5}]\n"
                    "expect: {exit: hlt, regs: {rax: 32}, steps: 20}\n")
    plain = execute(prepare(load_rig_text(text, "/rigs/loop.yaml")), factory(backend))
    assert plain.failures == [], [str(f) for f in plain.failures]
    ctl = controller(text, backend)
    for _ in range(7):
        assert ctl.resume(step=True).reason == "step"
    ctl.insert("sw", 0x1017)
    assert ctl.resume().reason == "sw"
    ctl.remove("sw", 0x1017)
    assert ctl.resume().reason == "end"
    assert_passed(ctl)
    assert ctl.outcome.steps == plain.steps == 20
    assert ctl.outcome.trace == plain.trace


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_client_watchpoint_stops_after_the_write(controller, backend):
    ctl = controller(LOOP_RIG, backend)
    ctl.insert("write", 0x5000, 4)
    info = ctl.resume()
    assert info.reason == "watch" and info.point.addr == 0x5000
    assert ctl.pc() == 0x1017
    assert ctl.read_memory(0x5000, 4) == (32).to_bytes(4, "little")
    ctl.insert("read", 0x5000, 4)      # nothing reads it: no stop
    assert ctl.resume().reason == "end"
    assert_passed(ctl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_reads_show_the_code_not_the_planted_breakpoints(controller, backend):
    ctl = controller(LOOP_RIG, backend)
    ctl.insert("sw", 0x100C)
    code = bytes.fromhex(hexof(CODE))
    assert ctl.read_memory(0x1000, len(code)) == code
    assert len(ctl.read_memory(0x1FFFF0, 0x100)) == 0x10     # memory ends at 2M: what exists
    assert ctl.read_memory(0x400000, 4) == b""


@pytest.mark.parametrize("backend", BACKENDS)
def test_registers_and_memory_written_by_the_debugger_reach_the_verdict(controller, backend):
    ctl = controller(LOOP_RIG, backend)
    ctl.insert("sw", 0x1017)
    assert ctl.resume().reason == "sw"
    ctl.write_regs({"rcx": 7})
    assert ctl.write_memory(0x1010, b"\x90")             # over code: harmless, the write already ran
    assert not ctl.write_memory(0x400000, b"\x00")
    ctl.remove("sw", 0x1017)
    ctl.resume()
    assert ctl.ended
    assert [f.what for f in ctl.outcome.failures] == ["register rcx"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_to_end_drops_the_debuggers_points(controller, backend):
    ctl = controller(LOOP_RIG, backend)
    ctl.insert("sw", 0x100C)
    ctl.insert("write", 0x5000, 4)
    assert ctl.resume().reason == "sw"
    ctl.run_to_end()
    assert_passed(ctl)
    assert ctl.resume().reason == "end"        # nothing more happens


# 1.2 s of guest time: the two interrupts below (after 0.2 s and 0.1 s) must
# land before it runs out even when a loaded machine delays them (with 0.6 s
# the second one lost that race under a load of ~7).
SPIN = rig_text("expect: {exit: timeout}\n", code="48 ff c0  eb fb   # 1000: inc rax; jmp 0x1000",
                timeout="1.2s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_interrupt_stops_a_spinning_guest_and_stopped_time_is_not_timeout(controller, backend):
    ctl = controller(SPIN, backend)
    asked = time.monotonic()
    info = ctl.resume(interrupted=lambda: time.monotonic() - asked > 0.2)
    assert info.reason == "interrupt"
    assert ctl.read_regs()["rax"] > 0
    time.sleep(1.3)                          # longer than the rig's timeout, spent stopped
    asked = time.monotonic()
    assert ctl.resume(interrupted=lambda: time.monotonic() - asked > 0.1).reason == "interrupt"
    assert not ctl.ended
    began = time.monotonic()
    assert ctl.resume().reason == "end"
    assert ctl.outcome.exit == "timeout"
    # Time spent stopped did not count: the rest of the 1.2 s still had to run
    # (had the stopped 1.3 s counted, the timeout would end this at once).
    assert 0.15 < time.monotonic() - began
    assert_passed(ctl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_stepped_rigs_hit_planted_breakpoints_even_on_the_first_instruction(backend):
    """Session.arrive: a step never runs a planted instruction (on a KVM that
    plants HLT, that was a plain step that skipped the breakpoint and left
    the vCPU halted)."""
    text = rig_text("trace: {max: 64}\nbreakpoints: [{at: 0x1000, hits: 1}, {at: 0x100a, hits: 5}]\n"
                    "expect: {exit: hlt, regs: {rax: 32}, steps: 20}\n")
    out = execute(prepare(load_rig_text(text, "/rigs/loop.yaml")), factory(backend))
    assert out.failures == [], [str(f) for f in out.failures]
    assert out.trace[:4] == [0x1000, 0x1005, 0x100A, 0x100C]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stepping_from_the_entry_onto_the_rigs_breakpoint(controller, backend):
    text = LOOP_RIG.replace("{at: 0x100a, hits: 5}", "{at: 0x1000, hits: 1}")
    ctl = controller(text, backend)
    assert ctl.resume(step=True).reason == "step" and ctl.pc() == 0x1005
    assert ctl.resume().reason == "end"
    assert_passed(ctl)
