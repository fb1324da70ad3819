"""The guest's own verdict (rig `verdict:`, a kvmrig extension): checks it
prints on the console become subtests, and its exit code convention decides
pass, fail or skip.

kvm-unit-tests (lib/report.c) prints one line per check, `PASS: name`,
`FAIL: name`, `SKIP: name`, `XFAIL: name` (a known failure, counted as
expected) or `XPASS: name` (a known failure that passed: unexpected), then
`SUMMARY: N tests, M unexpected failures[, K expected failures][, S skipped]`,
and ends by writing a code to its exit port: 0 pass, 1 fail, 38 skip (QEMU
status 77), 63 abort. TAP (testanything.org, version 12/13) prints
`ok N - name`, `not ok N - name`, with `# SKIP reason` or `# TODO` directives.
"""

from __future__ import annotations

import re

from kvmrig.machine.outcome import Failure, Outcome, Subtest
from kvmrig.rig.model import Rig

KUT_LINE = re.compile(r"^(PASS|FAIL|SKIP|XFAIL|XPASS): ?(.*)$")
KUT_SUMMARY = re.compile(r"^SUMMARY: (.*)$")
TAP_LINE = re.compile(r"^(not )?ok\b(?: +(\d+))?(?: *-? *)?([^#]*?)\s*(?:#\s*(SKIP|TODO)\b\s*(.*))?$", re.I)
KUT_STATUS = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped", "XFAIL": "xfail", "XPASS": "xpass"}
KUT_EXIT = {0: "pass", 1: "fail", 38: "skip", 63: "abort"}


MAX_LINE = 512          # bytes of one console line a verdict looks at (longer lines: their start)
MAX_SUBTESTS = 10_000   # subtests listed one by one (JUnit testcases); later ones are counted


def kut_line(line: str) -> tuple[Subtest | None, str | None]:
    """One kvm-unit-tests console line: (its subtest, or None; the SUMMARY text, or None)."""
    m = KUT_LINE.match(line)
    if m:
        return Subtest(m.group(2).strip(), KUT_STATUS[m.group(1)], line), None
    m = KUT_SUMMARY.match(line)
    return None, (m.group(1) if m else None)


def tap_line(line: str) -> tuple[Subtest | None, str | None]:
    """One TAP line: (its subtest, or None; the plan line `1..N`, or None)."""
    if re.match(r"^1\.\.\d+", line):
        return None, line
    m = TAP_LINE.match(line)
    if not m:
        return None, None
    failed, number, name, directive = bool(m.group(1)), m.group(2), m.group(3).strip(), (m.group(4) or "").upper()
    if directive == "SKIP":
        status = "skipped"
    elif directive == "TODO":
        status = "xpass" if not failed else "xfail"
    else:
        status = "failed" if failed else "passed"
    return Subtest(name or f"test {number}", status, line), None


class Reader:
    """The guest's report read line by line as the console streams (Console.watch),
    so no check is lost however much the console keeps (its head and tail).

    Memory is bounded: the first MAX_SUBTESTS subtests are kept (each line at
    most MAX_LINE bytes, so about 10 MB at worst); later ones are counted by
    status, and the first failed one among them is kept for the report."""

    def __init__(self, kind: str):
        self.parse = tap_line if kind == "tap" else kut_line
        self.subtests: list[Subtest] = []
        self.summary: str | None = None     # kvm-unit-tests SUMMARY text, or the TAP plan
        self.more: dict[str, int] = {}      # status -> subtests past MAX_SUBTESTS
        self.more_failed: str | None = None  # the first failed or xpass line past MAX_SUBTESTS
        self.last_skip: str | None = None   # the last SKIP's name (a skipped guest's reason)
        self.last_line = ""                 # the last non-empty line but a SUMMARY
        self._seen: dict[str, int] = {}

    def feed(self, raw: bytes) -> None:
        """One console line (without its newline; at most MAX_LINE bytes)."""
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        st, other = self.parse(line)
        if other is not None:
            self.summary = other
        if line.strip() and not KUT_SUMMARY.match(line):
            self.last_line = line.strip()
        if st is None:
            return
        if st.status == "skipped":
            self.last_skip = st.name
        if len(self.subtests) < MAX_SUBTESTS:
            n = self._seen.get(st.name, 0) + 1   # repeated names get ` #2`...: each testcase its own
            self._seen[st.name] = n
            if n > 1:
                st.name = f"{st.name} #{n}"
            self.subtests.append(st)
            return
        self.more[st.status] = self.more.get(st.status, 0) + 1
        if st.status in ("failed", "xpass") and self.more_failed is None:
            self.more_failed = line

    def read_all(self, text: str) -> "Reader":
        for line in text.splitlines():
            self.feed(line.encode()[:MAX_LINE])
        return self


def parse_kvm_unit_tests(text: str) -> tuple[list[Subtest], str | None]:
    """Subtests in console order (repeated names numbered), and the SUMMARY line's text (None if missing)."""
    r = Reader("kvm-unit-tests").read_all(text)
    return r.subtests, r.summary


def parse_tap(text: str) -> tuple[list[Subtest], str | None]:
    """Subtests in console order, and the plan line (None if missing)."""
    r = Reader("tap").read_all(text)
    return r.subtests, r.summary


def apply(rig: Rig, outcome: Outcome, reader: Reader | None = None) -> list[Failure]:
    """Fill outcome.subtests and outcome.skipped from the guest's report (what
    `reader` read as the console streamed; without one, the console kept); the
    failures it implies."""
    spec = rig.verdict
    failures: list[Failure] = []
    if reader is None:
        reader = Reader(spec.console or "kvm-unit-tests").read_all(outcome.console.decode("utf-8", errors="replace"))
    if spec.console is not None:
        outcome.subtests = reader.subtests
        for st in reader.subtests:
            if st.status in ("failed", "xpass"):
                failures.append(Failure(f"guest check {st.line!r}", "PASS", st.status.upper(), spec.mark))
        if reader.more:
            counts = ", ".join(f"{n} {status}" for status, n in sorted(reader.more.items()))
            outcome.notes.append(f"subtests past the first {MAX_SUBTESTS} were counted, not listed: {counts}")
            bad = reader.more.get("failed", 0) + reader.more.get("xpass", 0)
            if bad:
                failures.append(Failure(f"guest checks past the first {MAX_SUBTESTS} (first: {reader.more_failed!r})",
                                        "PASS", f"{bad} FAILED or XPASS", spec.mark))
        if spec.console == "kvm-unit-tests" and reader.summary is None and outcome.exit == "exit-code":
            outcome.notes.append("the guest printed no SUMMARY line")
    if spec.exit_codes == "kvm-unit-tests" and outcome.exit == "exit-code" and outcome.exit_code is not None:
        meaning = KUT_EXIT.get(outcome.exit_code)
        if meaning == "skip":
            why = reader.last_skip or reader.last_line
            outcome.skipped = "the guest skipped itself (exit code 38)" + (f": {why}" if why else "")
        elif meaning != "pass":
            what = {"fail": "the guest reported failure", "abort": "the guest aborted"}.get(
                meaning, "the guest ended with a code kvm-unit-tests does not define")
            failures.append(Failure(f"guest exit code ({what})", "0 (pass) or 38 (skip)",
                                    str(outcome.exit_code), spec.mark))
    return failures
