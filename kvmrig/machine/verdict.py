"""The guest's own verdict (rig `verdict:`, a kvmrig extension): checks it
prints on the console become subtests, and its exit code convention decides
pass, fail or skip.

kvm-unit-tests (lib/report.c) prints one line per check, `PASS: name`,
`FAIL: name`, `SKIP: name`, `XFAIL: name` (a known failure, counted as
expected) or `XPASS: name` (a known failure that passed: unexpected), then
`SUMMARY: N tests, M unexpected failures[, K expected failures][, S skipped]`,
and ends with a code: 0 pass, 1 fail, 38 skip (QEMU status 77), 63 abort.
On x86 it writes the code to its exit port (isa-debug-exit: outcome
`exit-code`); on arm (lib/arm/io.c exit()) it prints `EXIT: STATUS=N` with
N = (code << 1) | 1, QEMU's exit status for that code, then calls PSCI
SYSTEM_OFF (outcome `system-off`): the code is read back from the last such
line. TAP (testanything.org, version 12/13) prints
`ok N - name`, `not ok N - name`, with `# SKIP reason` or `# TODO` directives.
"""

from __future__ import annotations

import re

from kvmrig.machine.outcome import Failure, Outcome, Subtest
from kvmrig.rig.model import Rig, Verdict

KUT_LINE = re.compile(r"^(PASS|FAIL|SKIP|XFAIL|XPASS): ?(.*)$")
KUT_SUMMARY = re.compile(r"^SUMMARY: (.*)$")
TAP_LINE = re.compile(r"^(not )?ok\b(?: +(\d+))?(?: *-? *)?([^#]*?)\s*(?:#\s*(SKIP|TODO)\b\s*(.*))?$", re.I)
KUT_STATUS = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped", "XFAIL": "xfail", "XPASS": "xpass"}
KUT_EXIT = {0: "pass", 1: "fail", 38: "skip", 63: "abort"}
KUT_EXIT_LINE = re.compile(r"^EXIT: STATUS=(\d+)\s*$", re.M)


def parse_kvm_unit_tests(text: str) -> tuple[list[Subtest], str | None]:
    """Subtests in console order, and the SUMMARY line's text (None if missing)."""
    subtests, summary = [], None
    for line in text.splitlines():
        line = line.rstrip("\r")
        m = KUT_LINE.match(line)
        if m:
            subtests.append(Subtest(m.group(2).strip(), KUT_STATUS[m.group(1)], line))
            continue
        m = KUT_SUMMARY.match(line)
        if m:
            summary = m.group(1)
    return subtests, summary


def parse_tap(text: str) -> tuple[list[Subtest], str | None]:
    subtests, plan = [], None
    for line in text.splitlines():
        line = line.rstrip("\r")
        if re.match(r"^1\.\.\d+", line):
            plan = line
            continue
        m = TAP_LINE.match(line)
        if not m:
            continue
        failed, number, name, directive = bool(m.group(1)), m.group(2), m.group(3).strip(), (m.group(4) or "").upper()
        if directive == "SKIP":
            status = "skipped"
        elif directive == "TODO":
            status = "xpass" if not failed else "xfail"
        else:
            status = "failed" if failed else "passed"
        subtests.append(Subtest(name or f"test {number}", status, line))
    return subtests, plan


def kvm_unit_tests_code(outcome: Outcome, text: str) -> tuple[int | None, str | None]:
    """The guest's exit code and, where it cannot be read, why: the code
    written to an exit device, or after a PSCI SYSTEM_OFF the last
    `EXIT: STATUS=N` line (N = (code << 1) | 1). (None, None): the run ended
    another way, which the rig's `expect.exit` judges."""
    if outcome.exit == "exit-code":
        return outcome.exit_code, None
    if outcome.exit != "system-off":
        return None, None
    lines = KUT_EXIT_LINE.findall(text.replace("\r", ""))
    if not lines:
        return None, "the guest powered off without an `EXIT: STATUS=N` line"
    status = int(lines[-1])
    if status % 2 == 0:
        return None, f"`EXIT: STATUS={status}` is even: not (code << 1) | 1"
    return status >> 1, None


def _unique(subtests: list[Subtest]) -> None:
    """Repeated check names get ` #2`, ` #3`... so each JUnit testcase is its own."""
    seen: dict[str, int] = {}
    for st in subtests:
        n = seen.get(st.name, 0) + 1
        seen[st.name] = n
        if n > 1:
            st.name = f"{st.name} #{n}"


def apply(rig: Rig, outcome: Outcome) -> list[Failure]:
    """Fill outcome.subtests and outcome.skipped from the guest's report; the failures it implies."""
    spec = rig.verdict
    failures: list[Failure] = []
    text = outcome.console.decode("utf-8", errors="replace")
    if spec.console is not None:
        parse = parse_tap if spec.console == "tap" else parse_kvm_unit_tests
        subtests, summary = parse(text)
        _unique(subtests)
        outcome.subtests = subtests
        for st in subtests:
            if st.status in ("failed", "xpass"):
                failures.append(Failure(f"guest check {st.line!r}", "PASS", st.status.upper(), spec.mark))
        if spec.console == "kvm-unit-tests" and summary is None and outcome.exit in ("exit-code", "system-off"):
            outcome.notes.append("the guest printed no SUMMARY line")
    if spec.exit_codes == "kvm-unit-tests":
        code, unreadable = kvm_unit_tests_code(outcome, text)
        if unreadable:
            failures.append(Failure("guest exit code", "`EXIT: STATUS=1` (pass) or 77 (skip)", unreadable,
                                    spec.mark))
        elif code is not None:
            failures.extend(_exit_code(spec, outcome, code, text))
    return failures


def _exit_code(spec: Verdict, outcome: Outcome, code: int, text: str) -> list[Failure]:
    meaning = KUT_EXIT.get(code)
    if meaning == "skip":
        skips = [st.name for st in outcome.subtests if st.status == "skipped"]
        lines = [ln for ln in text.strip().splitlines()
                 if ln.strip() and not KUT_SUMMARY.match(ln) and not KUT_EXIT_LINE.match(ln)]
        last = lines[-1].strip() if lines else ""
        outcome.skipped = f"the guest skipped itself (exit code {code})" + (
            f": {skips[-1]}" if skips else (f": {last}" if last else ""))
        return []
    if meaning == "pass":
        return []
    what = {"fail": "the guest reported failure", "abort": "the guest aborted"}.get(
        meaning, "the guest ended with a code kvm-unit-tests does not define")
    return [Failure(f"guest exit code ({what})", "0 (pass) or 38 (skip)", _shown(outcome, code), spec.mark)]


def _shown(outcome: Outcome, code: int) -> str:
    """The code as the guest gave it: on arm also the printed status."""
    return str(code) if outcome.exit == "exit-code" else f"{code} (EXIT: STATUS={(code << 1) | 1})"
