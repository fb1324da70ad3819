"""The terminal report on hand-made results: a line per rig, the failed
checks, quiet and verbose modes, and the summary line's counts."""

from __future__ import annotations

import io
import re

import pytest

from kvmrig.errors import Mark
from kvmrig.machine.outcome import Failure, Outcome
from kvmrig.report.terminal import Terminal, failure_lines
from kvmrig.result import ERROR, FAILED, PASSED, SKIPPED, RigResult


def result(name: str, status: str, **kw) -> RigResult:
    return RigResult(f"/rigs/{name}.yaml", name, status, "rigs", **kw)


def failed(name: str = "f") -> RigResult:
    outcome = Outcome(exit="exit-code", exit_code=0x11, detail="exit device exit@0xf4 written with 0x11 (17)",
                      regs={"rip": 0x1004}, notes=["a note for the reader"],
                      failures=[Failure("exit_code", "0x2a (42)", "0x11 (17)", Mark("/rigs/f.yaml", 9, 3)),
                                Failure("register rbx", "1", "0x20 (32)", Mark("/rigs/f.yaml", 11, 5))])
    return result(name, FAILED, outcome=outcome, seconds=0.0123, backend="kvm")


def passed(name: str = "p", console: bytes = b"") -> RigResult:
    return result(name, PASSED, outcome=Outcome(exit="hlt", console=console, regs={"rip": 0x1001}),
                  seconds=0.002, backend="kvm")


def errored(name: str = "e") -> RigResult:
    return result(name, ERROR, message=f"/rigs/{name}.yaml:3:1: unknown key 'memry'\nsecond line")


def skipped(name: str = "s") -> RigResult:
    return result(name, SKIPPED, message="KVM cannot run this rig: not arm64")


def terminal(verbosity: int = 0, color: bool | None = False) -> tuple[Terminal, io.StringIO]:
    stream = io.StringIO()
    return Terminal(stream, verbosity=verbosity, color=color), stream


# -- failure_lines -------------------------------------------------------------------

def test_failure_lines_list_every_check_then_the_stop_then_notes():
    lines = failure_lines(failed())
    assert lines[0] == "exit_code: expected 0x2a (42), got 0x11 (17) [/rigs/f.yaml:9]"
    assert lines[1] == "register rbx: expected 1, got 0x20 (32) [/rigs/f.yaml:11]"
    assert lines[2] == ("exit exit-code (code 0x11 (17)): exit device exit@0xf4 written with 0x11 (17); "
                        "final pc 0x1004")
    assert "note: a note for the reader" in lines[3:]


def test_failure_lines_without_an_outcome_are_the_message():
    assert failure_lines(errored()) == ["/rigs/e.yaml:3:1: unknown key 'memry'\nsecond line"]
    assert failure_lines(result("x", ERROR)) == []


def test_failure_lines_use_pc_on_arm64():
    res = result("a", FAILED, outcome=Outcome(exit="timeout", regs={"pc": 0x4000_0010}))
    assert failure_lines(res)[-1].endswith("final pc 0x40000010")


# -- one line per rig -----------------------------------------------------------------

def test_pass_line():
    term, out = terminal()
    term.start(1)
    term.result(passed())
    assert out.getvalue() == "PASS  /rigs/p.yaml::p (kvm, 2.0 ms)\n"


def test_fail_shows_every_failed_check_indented():
    term, out = terminal()
    term.result(failed())
    lines = out.getvalue().splitlines()
    assert lines[0] == "FAIL  /rigs/f.yaml::f (kvm, 12.3 ms)"
    assert "      exit_code: expected 0x2a (42), got 0x11 (17) [/rigs/f.yaml:9]" in lines
    assert "      register rbx: expected 1, got 0x20 (32) [/rigs/f.yaml:11]" in lines
    assert any(line.startswith("      exit exit-code") and "final pc 0x1004" in line for line in lines)


def test_error_shows_the_message_lines():
    term, out = terminal()
    term.result(errored())
    assert out.getvalue().splitlines() == ["ERROR /rigs/e.yaml::e (0.0 ms)",
                                           "      /rigs/e.yaml:3:1: unknown key 'memry'",
                                           "      second line"]


def test_skip_line_gives_the_reason():
    term, out = terminal()
    term.result(skipped())
    assert out.getvalue() == "SKIP  /rigs/s.yaml::s (0.0 ms): KVM cannot run this rig: not arm64\n"


def test_slow_rigs_are_timed_in_seconds():
    term, out = terminal()
    res = passed()
    res.seconds = 2.5
    term.result(res)
    assert "(kvm, 2.50 s)" in out.getvalue()


def test_verbose_shows_the_console_of_passing_rigs():
    term, out = terminal(verbosity=1)
    term.result(passed(console=b"line one\nline two\n"))
    lines = out.getvalue().splitlines()
    assert "      | line one" in lines and "      | line two" in lines
    quiet_term, quiet_out = terminal(verbosity=0)
    quiet_term.result(passed(console=b"line one\n"))
    assert "| line one" not in quiet_out.getvalue()


def test_verbose_console_is_cut_to_the_last_20_lines():
    term, out = terminal(verbosity=1)
    term.result(passed(console=b"".join(b"line %d\n" % i for i in range(50))))
    shown = [line for line in out.getvalue().splitlines() if line.startswith("      | ")]
    assert shown == [f"      | line {i}" for i in range(30, 50)]


# -- quiet ----------------------------------------------------------------------------

def test_quiet_prints_one_character_per_rig_and_the_count():
    term, out = terminal(verbosity=-1)
    results = [passed(), failed(), errored(), skipped()]
    term.start(len(results))
    for r in results:
        term.result(r)
    assert out.getvalue() == ".FEs [4/4]\n"


def test_quiet_wraps_every_80_rigs():
    term, out = terminal(verbosity=-1)
    term.start(100)
    for i in range(100):
        term.result(passed(f"p{i}"))
    assert out.getvalue() == "." * 80 + " [80/100]\n" + "." * 20 + " [100/100]\n"


def test_quiet_summary_still_details_failures_and_errors():
    term, out = terminal(verbosity=-1)
    results = [passed(), failed(), errored()]
    term.start(3)
    for r in results:
        term.result(r)
    term.summary(results, 0.5)
    text = out.getvalue()
    assert "FAIL /rigs/f.yaml::f" in text
    assert "exit_code: expected 0x2a (42), got 0x11 (17)" in text
    assert "ERROR /rigs/e.yaml::e" in text and "unknown key 'memry'" in text
    assert "/rigs/p.yaml" not in text


# -- summary --------------------------------------------------------------------------

@pytest.mark.parametrize("statuses, words", [
    ([PASSED, PASSED], "2 passed"),
    ([FAILED, PASSED, PASSED, SKIPPED, ERROR, ERROR], "1 failed, 2 passed, 1 skipped, 2 error"),
    ([SKIPPED], "1 skipped"),
    ([], "no rigs ran"),
])
def test_summary_line_counts_each_status(statuses, words):
    makers = {PASSED: passed, FAILED: failed, ERROR: errored, SKIPPED: skipped}
    results = [makers[s](f"r{i}") for i, s in enumerate(statuses)]
    term, out = terminal()
    line = term.summary(results, 1.234)
    assert re.fullmatch(rf"== {words}s? in 1\.23s ==", line), line
    assert out.getvalue().endswith(line + "\n")


def test_summary_says_interrupted():
    term, _ = terminal()
    line = term.summary([skipped(), skipped("t")], 0.1, interrupted=True)
    assert line == "== 2 skipped (interrupted) in 0.10s =="


def test_colour_only_when_asked_or_on_a_tty(monkeypatch):
    term, out = terminal(color=True)
    term.result(failed())
    term.summary([failed()], 0.1)
    assert "\x1b[31mFAIL\x1b[0m" in out.getvalue()
    assert "\x1b[31m== 1 failed" in out.getvalue()
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    plain, plain_out = terminal(color=None)   # a StringIO is no tty
    plain.result(failed())
    assert "\x1b[" not in plain_out.getvalue()
    monkeypatch.setenv("FORCE_COLOR", "1")
    forced, forced_out = terminal(color=None)
    forced.result(failed())
    assert "\x1b[31mFAIL" in forced_out.getvalue()


def test_no_color_wins_over_a_tty(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert Terminal(Tty()).color
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Terminal(Tty()).color


def test_colour_does_not_change_the_layout():
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for make in (passed, failed, errored, skipped):
        plain, plain_out = terminal(color=False)
        coloured, coloured_out = terminal(color=True)
        plain.result(make())
        coloured.result(make())
        assert ansi.sub("", coloured_out.getvalue()) == plain_out.getvalue()


class CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


@pytest.mark.parametrize("verbosity", [0, -1])
def test_batched_results_wait_for_flush_but_failures_and_the_last_go_out_at_once(verbosity):
    stream = CountingStream()
    term = Terminal(stream, verbosity=verbosity, color=False)
    term.start(4)
    term.result(passed("a"))
    assert stream.flushes == 1, "unbatched: every result is flushed"
    term.batched = True
    term.result(passed("b"))
    assert stream.flushes == 1, "batched: a passed rig waits for the runner's flush()"
    term.flush()
    assert stream.flushes == 2
    term.result(failed("c"))
    assert stream.flushes == 3, "a failure is shown at once"
    term.result(passed("d"))
    assert stream.flushes == 4, "the last result too"
