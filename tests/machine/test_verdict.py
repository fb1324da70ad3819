"""The guest's own report: kvm-unit-tests lines, TAP, exit-code conventions."""

from pathlib import Path

from kvmrig.machine import devbase, verdict
from kvmrig.machine.outcome import Outcome
from kvmrig.rig.model import Rig, Verdict
from tests.conftest import hexof
from tests.machine.test_session import kvm, run

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
        ("fifth", "xpass"), ("first #2", "passed")]
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


def test_a_streaming_reader_keeps_every_check_and_bounds_the_list():
    r = verdict.Reader("kvm-unit-tests")
    for i in range(verdict.MAX_SUBTESTS + 5):
        r.feed(b"PASS: p" if i != verdict.MAX_SUBTESTS + 2 else b"FAIL: late one")
    r.feed(b"SUMMARY: many")
    assert len(r.subtests) == verdict.MAX_SUBTESTS and r.more == {"passed": 4, "failed": 1}
    out = Outcome("exit-code", exit_code=1, console=b"")
    failures = verdict.apply(_rig("kvm-unit-tests", "kvm-unit-tests"), out, r)
    assert any("past the first" in f.what and "late one" in f.what and f.actual.startswith("1 FAILED") for f in failures)
    assert any("counted, not listed: 1 failed, 4 passed" in n for n in out.notes)


def test_the_console_shows_its_watcher_every_line_even_those_it_cuts():
    from kvmrig.machine.devbase import CONSOLE_KEEP, Console
    seen = []
    c = Console()
    c.watch = seen.append
    text = b"PASS: x\n" * (CONSOLE_KEEP // 8) + b"FAIL: middle\n" + b"PASS: y\n" * (CONSOLE_KEEP // 8) + b"end"
    for byte in text:
        c.put(byte)
    c.flush()
    assert b"FAIL: middle" not in c.data and b"cut here" in c.data
    assert seen.count(b"FAIL: middle") == 1 and seen[-1] == b"end" and len(seen) == 2 * (CONSOLE_KEEP // 8) + 2


# A guest printing 6 x 4 KiB of PASS lines, a FAIL line, 6 x 4 KiB more, the
# SUMMARY, then exit code 1, with the console's cap lowered to 16 KiB of head
# and of tail: this KVM exits once per byte of `rep outsb` (327,745 exits, 8-16 s,
# for the 320 KiB the real 128 KiB cap needs to cut anything).
CHATTY = """
    bb 06 00 00 00          # 1000: mov ebx, 6
    66 ba e9 00             # 1005: mov dx, 0xe9
    be 00 00 01 00          # 1009: mov esi, 0x10000     (4 KiB of PASS lines)
    b9 00 10 00 00          # 100e: mov ecx, 0x1000
    f3 6e                   # 1013: rep outsb
    4b                      # 1015: dec ebx
    75 f1                   # 1016: jnz 0x1009
    be 00 00 02 00          # 1018: mov esi, 0x20000     (the FAIL line)
    b9 {fail:02x} 00 00 00          # 101d: mov ecx, len
    f3 6e                   # 1022: rep outsb
    bb 06 00 00 00          # 1024: mov ebx, 6
    be 00 00 01 00          # 1029: mov esi, 0x10000
    b9 00 10 00 00          # 102e: mov ecx, 0x1000
    f3 6e                   # 1033: rep outsb
    4b                      # 1035: dec ebx
    75 f1                   # 1036: jnz 0x1029
    be 00 00 03 00          # 1038: mov esi, 0x30000     (SUMMARY)
    b9 {summary:02x} 00 00 00          # 103d: mov ecx, len
    f3 6e                   # 1042: rep outsb
    b0 01                   # 1044: mov al, 1
    e6 f4                   # 1046: out 0xf4, al         (exit code 1: failure)
    f4                      # 1048: hlt
"""


@kvm
def test_a_fail_line_in_the_cut_middle_of_a_chatty_console_still_fails_the_rig(tmp_path, monkeypatch):
    monkeypatch.setattr(devbase, "CONSOLE_KEEP", 16 << 10)
    line = b"PASS: " + b"n" * 121 + b"\n"          # 128 bytes: 32 lines a 4 KiB block
    (tmp_path / "pass.bin").write_bytes(line * 32)
    fail, summary = b"FAIL: the middle one\n", b"SUMMARY: 385 tests, 1 unexpected failures\n"
    (tmp_path / "fail.bin").write_bytes(fail)
    (tmp_path / "summary.bin").write_bytes(summary)
    code = hexof(CHATTY.format(fail=len(fail), summary=len(summary)))
    text = ("kvmrig: 1\narch: x86_64\ntimeout: 60s\nmemory: [{at: 0, size: 2M}]\n"
            f"images: [{{hex: '{code}', at: 0x1000}}, {{file: pass.bin, at: 0x10000}},"
            " {file: fail.bin, at: 0x20000}, {file: summary.bin, at: 0x30000}]\n"
            "devices: [{type: debugcon, port: 0xe9}, {type: exit, port: 0xf4}]\n"
            "cpu: {mode: protected}\nverdict: {console: kvm-unit-tests, exit_codes: kvm-unit-tests}\n")
    out = run(text, str(tmp_path / "chatty.yaml"))
    assert out.exit == "exit-code" and out.exit_code == 1
    assert b"cut here" in out.console and b"FAIL: the middle one" not in out.console
    assert len(out.subtests) == 2 * 6 * 32 + 1
    assert [s.name for s in out.subtests if s.status != "passed"] == ["the middle one"]
    assert any("FAIL: the middle one" in f.what for f in out.failures)
