"""`kvmrig run` from paths to reports: collect, load, filter, run, report —
with a complete report whatever happens on the way.

Ctrl-C and SIGTERM (what CI sends on cancel) may come at any moment: while
rig files load, before, during or after the worker pool. The run keeps a
`_RunState` up to date as it goes, so that on an interrupt the report still
lists every rig: the results there are, and every other rig as skipped with
why. A closed stdout (`| head -1`) is the terminal's business
(report/terminal.py): it changes neither the verdict nor the reports.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import signal
import sys
import time
from pathlib import Path

from kvmrig import lastfailed, runner
from kvmrig.collect import expand, is_rig_file, load_all
from kvmrig.errors import UsageError
from kvmrig.report.terminal import Terminal
from kvmrig.result import ERROR, FAILED, SKIPPED, RigResult, classname_for, error_result, result_for
from kvmrig.rig import cache as rig_cache
from kvmrig.rig.model import Rig


class _Interrupts:
    """Ctrl-C and SIGTERM (what CI sends on cancel) in the parent of a run.

    While armed, the first signal raises KeyboardInterrupt wherever the run is
    (loading rig files, the worker pool, the summary); every later one, and any
    while the reports are written, is only recorded: the report must be
    complete whatever the user or CI sends. A forked worker that inherits this
    handler dies from SIGTERM as it would without it (workers ignore SIGINT)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.armed = True
        self.seen: int | None = None
        self.saved: dict[int, object] = {}

    def __enter__(self) -> _Interrupts:
        for sig in self.SIGNALS:
            self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        first = self.seen is None
        if first:
            self.seen = signum
        if first and self.armed:
            raise KeyboardInterrupt

    def disarm(self) -> None:
        self.armed = False


class _RunState:
    """What a run knows so far: enough for a complete report at any moment."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.explicit: set[Path] = set()
        self.loaded = 0              # files[:loaded] were loaded (into rigs or errors)
        self.rigs: list[Rig] = []
        self.errors: list[RigResult] = []
        self.results: list[RigResult | None] | None = None
        self.ran: list[Rig] = []     # the rigs handed to run_rigs, in the order of results
        self.interrupted = False


def run_command(args: argparse.Namespace) -> int:
    """Run what the command line asks; the exit status (cli.py's contract)."""
    # The run's objects (rigs, results) are trees, freed by reference counts;
    # the collector's passes over them (~30 ms per 1000 rigs) free nothing.
    # Workers turn it back on for themselves (runner._worker).
    collecting = gc.isenabled()
    gc.disable()
    try:
        with _Interrupts() as interrupts:
            return _run(args, interrupts)
    finally:
        if collecting:
            gc.enable()


def _run(args: argparse.Namespace, interrupts: _Interrupts) -> int:
    started = time.monotonic()
    state = _RunState()
    term = Terminal(verbosity=args.verbose - args.quiet)
    try:
        _load_and_run(args, state, term)
    except KeyboardInterrupt:
        state.interrupted = True
    interrupts.disarm()  # from here on a signal is recorded, never lost in a half-written report
    return _finish(args, state, term, started, interrupts)


def _load_and_run(args: argparse.Namespace, state: _RunState, term: Terminal) -> None:
    """Collect, load, filter and run, updating `state` as it goes (UsageError
    when there is nothing to run)."""
    files = expand(args.paths)
    state.explicit = {Path(p) for p in args.paths if not Path(p).is_dir()}  # a FIFO too: `run <(gen)`
    if args.rerun_failed:
        files = [f for f in files if f in state.explicit or is_rig_file(f)]
        files, narrowed = lastfailed.select(files, lastfailed.record_for(args.paths))
        term.line(f"rerun-failed: {len(files)} rig(s) that failed last time" if narrowed
                  else "rerun-failed: no failures recorded for these rigs: running all")
    state.files = files
    cache = rig_cache.for_run(args.paths, enabled=not getattr(args, "no_cache", False))
    for f in files:
        try:
            rigs, errors = load_all([f], state.explicit, cache)
        except Exception:  # a kvmrig bug while loading: this file's error, not the run's end
            import traceback
            rigs, errors = [], [_error(f, f"{f}: internal error in kvmrig while loading:\n{traceback.format_exc()}")]
        state.rigs += rigs
        state.errors += errors
        state.loaded += 1
    if cache is not None:
        cache.save()
    rigs, errors = [r for r in state.rigs if _selected(args, r)], state.errors
    total = 0
    if args.shard or args.durations_from:  # after the filters: every shard must split the same list
        from kvmrig.shard import shard_rigs  # only with --shard
        total = len(rigs) + len(errors)
        rigs, errors = shard_rigs(rigs, errors, args.shard, args.durations_from)  # UsageError: cli.py says it
        term.line(f"shard {args.shard}: {len(rigs) + len(errors)} of {total} rigs")
    if not rigs and not errors and not (args.shard and total):  # an empty shard of a real run passes
        raise UsageError("no rigs found" + (" matching the filters" if args.keyword or args.tag else ""))
    state.rigs, state.errors, state.ran = rigs, errors, rigs
    term.start(len(rigs) + len(errors))
    for e in errors:
        term.result(e)
    if args.cross_check:
        from kvmrig.crosscheck import cross_check
        executor = functools.partial(cross_check, update_golden=args.update_golden)
    else:
        executor = functools.partial(runner.run_rig, backend=args.backend, update_golden=args.update_golden,
                                     save_on_fail=args.save_on_fail, coverage=bool(args.coverage))
    state.results = [None] * len(rigs)
    if args.exitfirst and errors:  # -x: a rig file error is the first error; run nothing more
        return
    term.batched = True   # run_rigs flushes it before each wait (on_wait)
    state.results, state.interrupted = runner.run_rigs(rigs, args.jobs, executor, on_result=term.result,
                                                       on_wait=term.flush,
                                                       exitfirst=args.exitfirst, reuse=not args.no_reuse)


def _selected(args: argparse.Namespace, rig: Rig) -> bool:
    """-k and --tag."""
    return ((not args.keyword or args.keyword in rig.name or args.keyword in str(rig.path))
            and (not args.tag or bool(set(args.tag) & set(rig.tags))))


def _error(path: Path, message: str) -> RigResult:
    return error_result(str(path), message)


def _not_run(path: Path, why: str) -> RigResult:
    return RigResult(str(path), path.stem, SKIPPED, classname_for(path), message=why)


def _final_results(args: argparse.Namespace, state: _RunState) -> tuple[list[RigResult], int]:
    """Every rig of the run: its result, or skipped with why it did not run —
    except those -x left out (as pytest leaves out what it did not run);
    (the results, how many -x left out)."""
    final = list(state.errors)
    results = state.results if state.results is not None else [None] * len(state.ran)
    left_out = 0
    if state.ran:
        for rig, result in zip(state.ran, results):
            if result is None and not state.interrupted:
                left_out += 1
                continue
            final.append(result or result_for(rig, SKIPPED, message="not run (interrupted)"))
    else:  # interrupted before the rigs were handed out: every loaded rig is not run
        final += [result_for(rig, SKIPPED, message="not run (interrupted)")
                  for rig in state.rigs if _selected(args, rig)]
    for f in state.files[state.loaded:]:  # interrupted while loading
        if f in state.explicit or is_rig_file(f):
            final.append(_not_run(f, "not run (interrupted while the rig files were loading)"))
    return final, left_out


def _finish(args: argparse.Namespace, state: _RunState, term: Terminal, started: float,
            interrupts: _Interrupts) -> int:
    final, left_out = _final_results(args, state)
    term.summary(final, time.monotonic() - started, state.interrupted,
                 f"{left_out} not run (--exitfirst)" if left_out else "")
    unwritten = False
    if not state.interrupted:
        try:
            lastfailed.update(final, lastfailed.record_for(args.paths))
        except OSError as e:
            print(f"kvmrig: warning: cannot record the failed rigs for --rerun-failed: {e}", file=sys.stderr)
    for flag, target, write in (("--junit", args.junit, lambda: _write_junit(args.junit, final)),
                                ("--json", args.json, lambda: _write_json(args.json, final, started))):
        if not target:
            continue
        try:
            write()
        except (OSError, ValueError) as e:
            print(f"kvmrig: error: cannot write the report {flag} {target}: {getattr(e, 'strerror', None) or e}",
                  file=sys.stderr)
            unwritten = True
    if args.coverage and not _write_coverage(args, state.ran, final, args.verbose - args.quiet):
        unwritten = True
    if state.interrupted or interrupts.seen is not None:
        print("kvmrig: interrupted" + (" (SIGTERM)" if interrupts.seen == signal.SIGTERM else "")
              + ": the reports list the rigs not run as skipped", file=sys.stderr)
    elif args.gdb_on_fail and state.results is not None:
        _gdb_on_fail(args.gdb_on_fail, state.ran, state.results)
    if any(r.status == FAILED for r in final):
        return 1
    skipped = sum(r.status == SKIPPED for r in final)
    if args.strict and skipped:
        print(f"kvmrig: --strict: {skipped} skipped rig(s) count as failures", file=sys.stderr)
        return 1
    if state.interrupted or interrupts.seen is not None or unwritten or any(r.status == ERROR for r in final):
        return 2
    return 0


def _write_coverage(args: argparse.Namespace, rigs, final, verbosity: int) -> bool:
    """Print the coverage summary and write the reports; False if they could not be written."""
    from kvmrig.coverage import output, report  # only with --coverage

    cov = report.remapped(report.from_results(final, rigs), args.coverage_root)
    output.summary(cov, sys.stdout, verbose=verbosity > 0)
    try:
        written = output.write(cov, args.coverage)
    except OSError as e:
        print(f"kvmrig: error: cannot write the coverage reports to {args.coverage}: {e.strerror or e}",
              file=sys.stderr)
        return False
    print(f"coverage: {', '.join(str(p) for p in written)}")
    return True


def _write_junit(path: str, final) -> None:
    from kvmrig.report.junit import write_junit  # only when a report is asked for
    write_junit(path, final)


def _write_json(path: str, final, started: float) -> None:
    from kvmrig.report.json_report import write_json  # only with --json
    write_json(path, final, time.monotonic() - started)


def _gdb_on_fail(address: str, rigs, results) -> None:
    """Re-run the first rig that failed in this process and serve its final state to gdb."""
    from kvmrig.gdb.server import serve_rig  # only with --gdb-on-fail
    failed = next(((rig, r) for rig, r in zip(rigs, results) if r is not None and r.status == FAILED), None)
    if failed is None:
        print("kvmrig: --gdb-on-fail: no rig failed", file=sys.stderr)
        return
    rig, result = failed
    backend = result.backend if result.backend in ("kvm", "emu") else "auto"  # the one it failed on
    print(f"kvmrig: --gdb-on-fail: running {rig.path} again on {backend}, to its end, for gdb", flush=True)
    serve_rig(rig, address, backend, at_end=True)
