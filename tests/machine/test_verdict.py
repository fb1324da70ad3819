"""The guest's own report: kvm-unit-tests lines, TAP, exit-code conventions."""

from pathlib import Path

from kvmrig.machine import verdict
from kvmrig.machine.outcome import Outcome
from kvmrig.rig.model import Rig, Verdict

KUT = """enabling apic
PASS: first
FAIL: second
SKIP: third: no foo
XFAIL: fourth
XPASS: fifth
PASS: first
SUMMARY: 6 tests, 2 unexpected failures, 1 expected failures, 1 skipped
"""


def _rig(console=None, exit_codes=None) -> Rig:
    return Rig(Path("r.yaml"), "r", "x86_64", verdict=Verdict(console, exit_codes))


def test_kvm_unit_tests_lines_become_subtests_in_order():
    subtests, summary = verdict.parse_kvm_unit_tests(KUT)
    assert [(s.name, s.status) for s in subtests] == [
        ("first", "passed"), ("second", "failed"), ("third: no foo", "skipped"), ("fourth", "xfail"),
        ("fifth", "xpass"), ("first", "passed")]
    assert summary.startswith("6 tests")


def test_failed_and_unexpectedly_passed_checks_fail_the_rig():
    out = Outcome("exit-code", exit_code=1, console=KUT.encode())
    failures = verdict.apply(_rig("kvm-unit-tests", "kvm-unit-tests"), out)
    assert [s.name for s in out.subtests][-1] == "first #2"
    whats = [f.what for f in failures]
    assert any("FAIL: second" in w for w in whats) and any("XPASS: fifth" in w for w in whats)
    assert any("reported failure" in w for w in whats)
    assert out.skipped is None


def test_exit_codes_pass_skip_abort():
    ok = Outcome("exit-code", exit_code=0, console=b"PASS: a\nSUMMARY: 1 tests\n")
    assert verdict.apply(_rig("kvm-unit-tests", "kvm-unit-tests"), ok) == []
    skip = Outcome("exit-code", exit_code=38, console=b"SKIP: no TSC deadline\nSUMMARY: 1 tests, 1 skipped\n")
    assert verdict.apply(_rig("kvm-unit-tests", "kvm-unit-tests"), skip) == []
    assert "no TSC deadline" in skip.skipped
    abort = Outcome("exit-code", exit_code=63, console=b"")
    (f,) = verdict.apply(_rig(None, "kvm-unit-tests"), abort)
    assert "aborted" in f.what and f.actual == "63"
    odd = Outcome("exit-code", exit_code=5, console=b"")
    assert verdict.apply(_rig(None, "kvm-unit-tests"), odd)[0].actual == "5"


def test_tap():
    text = "1..4\nok 1 - alpha\nnot ok 2 - beta\nok 3 gamma # SKIP no gamma\nnot ok 4 delta # TODO later\n"
    subtests, plan = verdict.parse_tap(text)
    assert plan == "1..4"
    assert [(s.name, s.status) for s in subtests] == [
        ("alpha", "passed"), ("beta", "failed"), ("gamma", "skipped"), ("delta", "xfail")]


def _arm(console: str, exit: str = "system-off") -> Outcome:
    return Outcome(exit, console=console.encode())


def test_arm_exit_status_line_maps_like_the_exit_port():
    """kvm-unit-tests' arm exit(): `EXIT: STATUS=(code << 1) | 1`, then PSCI SYSTEM_OFF."""
    rig = _rig("kvm-unit-tests", "kvm-unit-tests")
    ok = _arm("PASS: a\nSUMMARY: 1 tests\n\nEXIT: STATUS=1\n")
    assert verdict.apply(rig, ok) == [] and ok.skipped is None and [s.name for s in ok.subtests] == ["a"]
    fail = _arm("FAIL: a\nSUMMARY: 1 tests, 1 unexpected failures\n\nEXIT: STATUS=3\n")
    whats = [f.what for f in verdict.apply(rig, fail)]
    assert any("FAIL: a" in w for w in whats) and any("reported failure" in w for w in whats)
    skip = _arm("SKIP: No ITS\nSUMMARY: 1 tests, 1 skipped\n\nEXIT: STATUS=77\n")
    assert verdict.apply(rig, skip) == [] and skip.skipped.endswith("(exit code 38): No ITS")
    no_checks = _arm("GICv3 MMIO tests NYI\n\nEXIT: STATUS=77\n")
    assert verdict.apply(_rig(None, "kvm-unit-tests"), no_checks) == []
    assert no_checks.skipped.endswith(": GICv3 MMIO tests NYI")
    (abort,) = verdict.apply(rig, _arm("GICv3 MMIO tests NYI\nSUMMARY: 0 tests\n\nEXIT: STATUS=127\n"))
    assert "aborted" in abort.what and abort.actual == "63 (EXIT: STATUS=127)"


def test_arm_exit_status_is_the_last_line_and_must_be_there_and_odd():
    rig = _rig(None, "kvm-unit-tests")
    assert verdict.apply(rig, _arm("EXIT: STATUS=3\r\nEXIT: STATUS=1\r\n")) == []
    (missing,) = verdict.apply(rig, _arm("PASS: a\nSUMMARY: 1 tests\n"))
    assert "without an `EXIT: STATUS=N` line" in missing.actual
    (even,) = verdict.apply(rig, _arm("EXIT: STATUS=2\n"))
    assert "even" in even.actual
    # a line that only contains the text is not the exit line; other ends are expect.exit's business
    assert verdict.apply(rig, _arm("x EXIT: STATUS=1\n"))[0].actual.startswith("the guest powered off")
    assert verdict.apply(rig, _arm("EXIT: STATUS=3\n", exit="timeout")) == []
