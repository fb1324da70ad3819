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
