"""What a person sees: a line per rig (or a progress line), failure details,
and a summary like pytest's."""

from __future__ import annotations

import errno
import os
import sys
import unicodedata
from collections import Counter
from typing import TextIO

from kvmrig.machine.outcome import num
from kvmrig.result import ERROR, FAILED, PASSED, SKIPPED, RigResult

WORD = {PASSED: "PASS", FAILED: "FAIL", ERROR: "ERROR", SKIPPED: "SKIP"}
COLOR = {PASSED: "32", FAILED: "31", ERROR: "31", SKIPPED: "33"}


def printable(text: str) -> str:
    """Guest-controlled text made safe for a terminal: control and format
    characters (escape sequences that recolour it, retitle the window, move
    the cursor) shown escaped, as Python writes them; tabs kept."""
    if text.isprintable():
        return text
    return "".join(c if c == "\t" or not unicodedata.category(c).startswith("C") else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                    else f"\\U{ord(c):08x}") for c in text)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def failure_lines(result: RigResult) -> list[str]:
    """Every failed check of a rig, then where the guest stopped."""
    out = result.outcome
    if out is None:
        return [result.message] if result.message else []
    lines = [str(f) for f in out.failures]
    end = f"exit {out.exit}" + (f" (code {num(out.exit_code)})" if out.exit_code is not None else "")
    if out.detail:
        end += f": {out.detail}"
    pc = out.regs.get("rip", out.regs.get("pc"))
    if pc is not None:
        end += f"; final pc {pc:#x}"
    lines.append(end)
    lines.extend(f"note: {n}" for n in out.notes)
    lines.extend(out.report)
    lines.extend(result.details)
    return lines


MESSAGE_ITEM = 100   # characters of one failed check in a one-line message


def _one_line(text: str, limit: int = MESSAGE_ITEM) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def failure_message(result: RigResult) -> str:
    """One line naming every failed check, each shortened: a JUnit failure's
    `message` (both `kvmrig run --junit` and the pytest plugin write it)."""
    out = result.outcome
    if out is None or not out.failures:
        lines = failure_lines(result)
        return _one_line(lines[0], 4 * MESSAGE_ITEM) if lines else "failed"
    n = len(out.failures)
    return f"{n} failed check{'s' if n > 1 else ''}: " + "; ".join(_one_line(str(f)) for f in out.failures)


def failure_text(result: RigResult) -> str:
    """The whole diagnosis of a failed rig, as one text (a JUnit failure's body)."""
    return "\n".join(failure_lines(result)).strip()


class Terminal:
    """Prints results as they arrive; verbosity -1 (quiet), 0, 1 (verbose)."""

    def __init__(self, stream: TextIO | None = None, verbosity: int = 0, color: bool | None = None):
        stream = stream or sys.stdout  # looked up now: tests and callers replace sys.stdout
        self.stream = stream
        self.verbosity = verbosity
        if color is None:  # NO_COLOR / FORCE_COLOR as other tools honour them
            color = bool(os.environ.get("FORCE_COLOR")) or (stream.isatty() and not os.environ.get("NO_COLOR"))
        self.color = color
        self.count = 0
        self.total = 0
        # Set by a caller that calls flush() whenever it is about to wait: the
        # results that arrive together then go out in one write, not one each
        # (a CI log reader is woken once per write).
        self.batched = False

    def _out(self, text: str) -> None:
        """Write, surviving a reader that went away (`kvmrig run | head -1`):
        the run goes on and its reports and exit status stay what they are."""
        if self.stream is None:
            return
        try:
            self.stream.write(text)
        except OSError as e:
            self._lost(e)

    def _flush(self) -> None:
        if self.stream is None:
            return
        try:
            self.stream.flush()
        except OSError as e:
            self._lost(e)

    def _lost(self, e: OSError) -> None:
        if e.errno not in (errno.EPIPE, errno.EIO, errno.ENOSPC):
            raise e
        try:  # the interpreter flushes stdout again at exit: send that to /dev/null
            if self.stream is sys.stdout:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        self.stream = None

    def line(self, text: str) -> None:
        """One line of run information (shard, rerun-failed)."""
        self._out(text + "\n")
        self._flush()

    def _paint(self, status: str, text: str) -> str:
        return f"\x1b[{COLOR[status]}m{text}\x1b[0m" if self.color else text

    def start(self, total: int) -> None:
        self.total = total

    def result(self, result: RigResult) -> None:
        self.count += 1
        if self.verbosity < 0:
            mark = {PASSED: ".", FAILED: "F", ERROR: "E", SKIPPED: "s"}[result.status]
            self._out(self._paint(result.status, mark))
            if self.count == self.total or self.count % 80 == 0:
                self._out(f" [{self.count}/{self.total}]\n")
            self._flush_unless_batched(result)
            return
        where = f"{result.path}::{result.name}"
        info = [x for x in (result.backend, _ms(result.seconds)) if x]
        word = WORD[result.status]
        line = f"{self._paint(result.status, word)}{' ' * (5 - len(word))} {printable(where)} ({', '.join(info)})"
        if result.status == SKIPPED:
            line += f": {printable(result.message)}"
        self._out(line + "\n")
        if result.status in (FAILED, ERROR) or (self.verbosity > 0 and result.outcome):
            for text in (failure_lines(result) if result.status != ERROR else result.message.splitlines()):
                self._out(f"      {printable(text)}\n")
        if result.status == PASSED and result.outcome:
            for note in result.outcome.notes:
                if note.startswith("golden "):
                    self._out(f"      {note}\n")
        if self.verbosity > 0 and result.outcome and result.outcome.console:
            console = result.outcome.console.decode("utf-8", errors="replace").rstrip("\n")
            for text in console.splitlines()[-20:]:
                self._out(f"      | {printable(text)}\n")
        self._flush_unless_batched(result)

    def _flush_unless_batched(self, result: RigResult) -> None:
        if not self.batched or result.status in (FAILED, ERROR) or self.count == self.total:
            self._flush()

    def flush(self) -> None:
        """Write what result() left buffered: the runner calls it before it
        waits for workers (see batched)."""
        self._flush()

    def summary(self, results: list[RigResult], seconds: float, interrupted: bool = False, extra: str = "") -> str:
        counts = Counter(r.status for r in results)
        parts = [f"{counts[s]} {s}" + ("s" if s == ERROR and counts[s] > 1 else "")
                 for s in (FAILED, PASSED, SKIPPED, ERROR) if counts[s]]
        if self.verbosity < 0 and any(r.status in (FAILED, ERROR) for r in results):
            self._out("\n")
            for r in results:
                if r.status in (FAILED, ERROR):
                    self._out(f"{WORD[r.status]} {r.path}::{r.name}\n")
                    for text in (failure_lines(r) if r.status != ERROR else r.message.splitlines()):
                        self._out(f"      {printable(text)}\n")
        text = ", ".join(parts + ([extra] if extra else [])) or "no rigs ran"
        if interrupted:
            text += " (interrupted)"
        line = f"== {text} in {seconds:.2f}s =="
        worst = FAILED if counts[FAILED] else ERROR if counts[ERROR] else PASSED
        self._out(self._paint(worst, line) + "\n")
        self._flush()
        return line
