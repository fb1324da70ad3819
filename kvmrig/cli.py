"""The `kvmrig` command: run, validate, list rigs; print the schema.

Exit status of `kvmrig run`, as the contract says (and as pytest does):
0 every rig passed (or was skipped), 1 some rig failed, 2 usage errors, rig
file errors or an interrupted run with no failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from kvmrig import __version__

EPILOG = """\
rig files:
  A rig is one YAML file (see docs/rig-format.md and schemas/rig.schema.json).
  Folders given as PATHS expand to the rig files (*.yaml starting with `kvmrig:`) below them.

exit status (run):
  0 all rigs passed or were skipped, 1 some rig failed, 2 usage or rig file errors only.

examples:
  kvmrig run rigs/                 run every example rig, JUnit to reports/junit.xml
  kvmrig run -j 1 -v rigs/x86/fib.yaml
  kvmrig run --tag smoke -k serial rigs/
  kvmrig validate rigs/            check rig files without running them
  kvmrig run --backend emu rigs/   run on the unicorn emulator, no /dev/kvm needed
  kvmrig run --cross-check rigs/x86   run on KVM and the emulator and compare the two
  kvmrig run --shard 2/4 --junit j2.xml --json r2.json rigs/   the 2nd quarter (CI: docs/ci.md)
  kvmrig merge junit.xml j1.xml j2.xml j3.xml j4.xml           one report from the shards'
"""


def _parse_shard(text: str):
    from kvmrig.shard import parse_shard  # imported when used: `kvmrig --version` stays fast
    return parse_shard(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmrig", description="Run bare-metal guest code under real Linux KVM and check what it does.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"kvmrig {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run rigs and report (terminal + JUnit)",
                         description="Run rigs, one VM each, in parallel worker processes.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("paths", nargs="+", metavar="PATH", help="rig files or folders")
    run.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                     help="worker processes (default: one per core)")
    run.add_argument("--junit", default="reports/junit.xml", metavar="FILE",
                     help="JUnit XML report (default: %(default)s); '' to skip")
    run.add_argument("-k", dest="keyword", metavar="SUBSTR",
                     help="only rigs whose name or path contains SUBSTR")
    run.add_argument("--tag", action="append", default=[], metavar="T",
                     help="only rigs with this tag (repeatable: any of them)")
    run.add_argument("-x", "--exitfirst", action="store_true", help="stop after the first failure or error")
    run.add_argument("--backend", choices=("auto", "kvm", "emu"), default="auto",
                     help="where rigs run: kvm, emu (the unicorn emulator), or auto (default): KVM where "
                          "/dev/kvm can run the rig's arch, else the emulator. A rig's `backend:` pin "
                          "must agree, or the rig is skipped with the reason")
    run.add_argument("--cross-check", action="store_true",
                     help="run each rig on KVM and on the emulator where both can, and fail it where "
                          "exit, exit code, final registers, hit counts, console or RAM digest differ")
    run.add_argument("-v", "--verbose", action="count", default=0, help="show registers checked and console")
    run.add_argument("-q", "--quiet", action="count", default=0, help="one character per rig")
    run.add_argument("--rerun-failed", action="store_true",
                     help="run only the rigs that failed or errored last time (recorded in "
                          "reports/last-failed.json; all of them when none is recorded)")
    run.add_argument("--update-golden", action="store_true",
                     help="write or refresh the golden snapshot files of rigs with expect.golden, "
                          "printing what changed, instead of comparing with them")
    run.add_argument("--shard", type=_parse_shard, metavar="K/N",
                     help="run only shard K of N (1-based): a deterministic share of the rigs, "
                          "balanced by --durations-from, else round-robin by file and name")
    run.add_argument("--durations-from", metavar="FILE",
                     help="JSON results of an earlier run (--json) whose durations balance --shard")
    run.add_argument("--in-vm", choices=("arm64",), metavar="ARCH",
                     help="run the rigs on real KVM of another arch, inside a Linux booted under QEMU "
                          "(arm64: qemu-system-aarch64, set up by scripts/setup-arm64-lane.sh); "
                          "lines, reports and exit status come back as if run here")
    run.add_argument("--json", metavar="FILE", help="write JSON results, one record per rig, to FILE")
    run.add_argument("--images-under", action="append", default=[], metavar="DIR",
                     help="only let rigs load image and golden files below DIR (repeatable; symlinks resolved): "
                          "for CI that runs rigs it did not write (docs/limits.md)")
    run.add_argument("--gdb-on-fail", metavar="[HOST]:PORT",
                     help="after the run, run the first rig that failed again in this process, to its end, "
                          "and serve its final state to gdb on [HOST]:PORT (see `kvmrig debug`)")

    val = sub.add_parser("validate", help="check rig files (schema, images, symbols) without running")
    val.add_argument("paths", nargs="+", metavar="PATH")

    lst = sub.add_parser("list", help="list rigs: name, arch, tags, file")
    lst.add_argument("paths", nargs="+", metavar="PATH")

    sub.add_parser("schema", help="print the rig file JSON Schema")

    mrg = sub.add_parser("merge", help="merge JUnit XML or JSON results of several runs (shards) into one",
                         description="Merge JUnit XML files (OUT.xml) or JSON results (OUT.json): suites of "
                                     "the same name become one, every count is recounted.")
    mrg.add_argument("out", metavar="OUT", help="the merged report: .xml (JUnit) or .json (JSON results)")
    mrg.add_argument("inputs", nargs="+", metavar="IN", help="reports of the same kind to merge")
    dbg = sub.add_parser("debug", help="run one rig under gdb: stopped at its entry, served over TCP",
                         description="Load RIG, stop it at its first instruction and serve it to one gdb "
                                     "(GDB remote protocol): breakpoints, watchpoints, stepping, registers and "
                                     "memory. The rig's own breakpoints still count and its checks still run; "
                                     "detaching lets it run to its end and prints the verdict.")
    dbg.add_argument("rig", metavar="RIG", help="the rig file")
    dbg.add_argument("--gdb", default="127.0.0.1:1234", metavar="[HOST]:PORT",
                     help="where to listen (default %(default)s; the host defaults to 127.0.0.1, port 0 picks one)")
    dbg.add_argument("--backend", choices=("auto", "kvm", "emu"), default="auto",
                     help="backend for rigs with `backend: any` (default %(default)s)")
    return p


def _collect(paths: list[str]):
    from kvmrig.runner import expand, load_all

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise SystemExit(_usage(f"no such file or folder: {', '.join(missing)}"))
    return load_all(expand(paths), {Path(p) for p in paths if Path(p).is_file()})


def _usage(message: str) -> int:
    print(f"kvmrig: error: {message}", file=sys.stderr)
    return 2


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
        self.rigs: list = []
        self.errors: list = []
        self.results: list | None = None
        self.ran: list = []          # the rigs handed to run_rigs, in the order of results
        self.interrupted = False
        self.exitfirst_stop = False


def cmd_run(args: argparse.Namespace) -> int:
    if args.in_vm:
        return _run_in_vm(args)
    if args.cross_check and args.backend != "auto":
        return _usage("--cross-check runs both backends: it cannot be combined with --backend")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        return _usage(f"no such file or folder: {', '.join(missing)}")
    if args.images_under:
        bad = [d for d in args.images_under if not Path(d).is_dir()]
        if bad:
            return _usage(f"--images-under needs folders: {', '.join(bad)}")
        from kvmrig.rig.hostfiles import restrict_to
        restrict_to(args.images_under)
    with _Interrupts() as interrupts:
        return _run(args, interrupts)


def _run(args: argparse.Namespace, interrupts: _Interrupts) -> int:
    from kvmrig.report.terminal import Terminal
    from kvmrig.runner import run_rigs

    started = time.monotonic()
    state = _RunState()
    term = Terminal(verbosity=args.verbose - args.quiet)
    try:
        status = _load_and_run(args, state, term, run_rigs)
        if status is not None:
            return status
    except KeyboardInterrupt:
        state.interrupted = True
    interrupts.disarm()  # from here on a signal is recorded, never lost in a half-written report
    status = _finish(args, state, term, started, interrupts)
    return status


def _load_and_run(args: argparse.Namespace, state: _RunState, term, run_rigs) -> int | None:
    """Collect, load, filter and run, updating `state` as it goes; a usage
    error's exit status, or None when the run is to be reported."""
    from kvmrig.runner import CROSS, expand, is_rig_file, load_all

    files = expand(args.paths)
    state.explicit = {Path(p) for p in args.paths if not Path(p).is_dir()}  # a FIFO too: `run <(gen)`
    if args.rerun_failed:
        from kvmrig import lastfailed
        files = [f for f in files if f in state.explicit or is_rig_file(f)]
        files, narrowed = lastfailed.select(files)
        term.line(f"rerun-failed: {len(files)} rig(s) that failed last time" if narrowed
                  else "rerun-failed: no failures recorded for these rigs: running all")
    state.files = files
    for f in files:
        try:
            rigs, errors = load_all([f], state.explicit)
        except Exception:  # a kvmrig bug while loading: this file's error, not the run's end
            rigs, errors = [], [_error(f, f"{f}: internal error in kvmrig while loading:\n{traceback.format_exc()}")]
        state.rigs += rigs
        state.errors += errors
        state.loaded += 1
    rigs, errors = [r for r in state.rigs if _selected(args, r)], state.errors
    total = 0
    if args.shard or args.durations_from:  # after the filters: every shard must split the same list
        from kvmrig.errors import UsageError
        from kvmrig.shard import shard_rigs
        total = len(rigs) + len(errors)
        try:
            rigs, errors = shard_rigs(rigs, errors, args.shard, args.durations_from)
        except UsageError as e:
            return _usage(str(e))
        term.line(f"shard {args.shard}: {len(rigs) + len(errors)} of {total} rigs")
    if not rigs and not errors and not (args.shard and total):  # an empty shard of a real run passes
        return _usage("no rigs found" + (" matching the filters" if args.keyword or args.tag else ""))
    state.rigs, state.errors, state.ran = rigs, errors, rigs
    term.start(len(rigs) + len(errors))
    for e in errors:
        term.result(e)
    backend = CROSS if args.cross_check else args.backend
    if args.exitfirst and errors:  # -x: a rig file error is the first error; run nothing more
        state.results, state.exitfirst_stop = [None] * len(rigs), True
        return None
    state.results = [None] * len(rigs)
    results, interrupted = run_rigs(rigs, args.jobs, backend=backend, on_result=term.result,
                                    exitfirst=args.exitfirst, update_golden=args.update_golden)
    state.results, state.interrupted = results, interrupted
    return None


def _selected(args: argparse.Namespace, rig) -> bool:
    """-k and --tag."""
    return ((not args.keyword or args.keyword in rig.name or args.keyword in str(rig.path))
            and (not args.tag or bool(set(args.tag) & set(rig.tags))))


def _error(path: Path, message: str):
    from kvmrig.runner import error_result
    return error_result(str(path), message)


def _not_run(path: Path, why: str):
    from kvmrig.runner import SKIPPED, RigResult, classname_for
    return RigResult(str(path), path.stem, SKIPPED, classname_for(path), message=why)


def _final_results(args: argparse.Namespace, state: _RunState) -> list:
    """Every rig of the run: its result, or skipped with why it did not run."""
    from kvmrig.runner import SKIPPED, _result_for, is_rig_file

    final = list(state.errors)
    results = state.results if state.results is not None else [None] * len(state.ran)
    why = "not run (interrupted)" if state.interrupted else "not run (--exitfirst)"
    if state.ran:
        for rig, result in zip(state.ran, results):
            final.append(result or _result_for(rig, SKIPPED, message=why))
    else:  # interrupted before the rigs were handed out: every loaded rig is not run
        final += [_result_for(rig, SKIPPED, message=why) for rig in state.rigs if _selected(args, rig)]
    for f in state.files[state.loaded:]:  # interrupted while loading
        if f in state.explicit or is_rig_file(f):
            final.append(_not_run(f, "not run (interrupted while the rig files were loading)"))
    return final


def _finish(args: argparse.Namespace, state: _RunState, term, started: float, interrupts: _Interrupts) -> int:
    from kvmrig.runner import ERROR, FAILED

    final = _final_results(args, state)
    term.summary(final, time.monotonic() - started, state.interrupted)
    unwritten = False
    if not state.interrupted:
        try:
            from kvmrig import lastfailed
            lastfailed.update(final)
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
    if state.interrupted or interrupts.seen is not None:
        print("kvmrig: interrupted" + (" (SIGTERM)" if interrupts.seen == signal.SIGTERM else "")
              + ": the reports list the rigs not run as skipped", file=sys.stderr)
    elif args.gdb_on_fail and state.results is not None:
        _gdb_on_fail(args.gdb_on_fail, state.ran, state.results)
    if any(r.status == FAILED for r in final):
        return 1
    if state.interrupted or interrupts.seen is not None or unwritten or any(r.status == ERROR for r in final):
        return 2
    return 0


def _write_junit(path: str, final) -> None:
    from kvmrig.report.junit import write_junit
    write_junit(path, final)


def _write_json(path: str, final, started: float) -> None:
    from kvmrig.report.json_report import write_json
    write_json(path, final, time.monotonic() - started)


def _run_in_vm(args: argparse.Namespace) -> int:
    from kvmrig.errors import BackendUnavailable
    from kvmrig.invm.remote import run_in_vm_cli
    from kvmrig.runner import expand, is_rig_file

    clash = [flag for flag, on in (("--cross-check", args.cross_check), ("--update-golden", args.update_golden),
                                   ("--gdb-on-fail", args.gdb_on_fail), ("--shard", args.shard),
                                   ("--backend emu", args.backend == "emu")) if on]
    if clash:
        return _usage(f"--in-vm cannot be combined with {', '.join(clash)}")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        return _usage(f"no such file or folder: {', '.join(missing)}")
    explicit = {Path(p) for p in args.paths if Path(p).is_file()}
    files = [p for p in expand(args.paths) if p in explicit or is_rig_file(p)]
    if not files:
        return _usage("no rigs found")
    try:
        return run_in_vm_cli(args, files)
    except BackendUnavailable as e:
        return _usage(str(e))


def cmd_validate(args: argparse.Namespace) -> int:
    from kvmrig.errors import RigError
    from kvmrig.machine.plan import prepare

    rigs, errors = _collect(args.paths)
    for e in errors:
        print(e.message, file=sys.stderr)
    bad = len(errors)
    for rig in rigs:
        try:
            prepare(rig)
        except RigError as e:
            print(e, file=sys.stderr)
            bad += 1
        else:
            print(f"ok    {rig.path}::{rig.name}")
    print(f"{len(rigs) + len(errors) - bad} valid, {bad} invalid")
    return 2 if bad else 0


def cmd_list(args: argparse.Namespace) -> int:
    rigs, errors = _collect(args.paths)
    for rig in rigs:
        tags = ",".join(rig.tags)
        print(f"{rig.name:30} {rig.arch:7} {tags:20} {rig.path}")
    for e in errors:
        print(e.message, file=sys.stderr)
    return 2 if errors else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from kvmrig.rig.schema import load_schema

    json.dump(load_schema(), sys.stdout, indent=2)
    print()
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from kvmrig.errors import UsageError
    from kvmrig.merge import merge_files

    try:
        print(merge_files(args.out, args.inputs))
    except UsageError as e:
        return _usage(str(e))
    return 0


def cmd_debug(args: argparse.Namespace) -> int:
    from kvmrig.errors import RigError
    from kvmrig.gdb.server import serve_rig
    from kvmrig.rig.load import load_rig

    if not Path(args.rig).is_file():
        return _usage(f"no such rig file: {args.rig}")
    try:
        rig = load_rig(args.rig)
    except RigError as e:
        print(e, file=sys.stderr)
        return 2
    return serve_rig(rig, args.gdb, args.backend)


def _gdb_on_fail(address: str, rigs, results) -> None:
    """Re-run the first rig that failed in this process and serve its final state to gdb."""
    from kvmrig.gdb.server import serve_rig
    from kvmrig.runner import FAILED

    failed = next(((rig, r) for rig, r in zip(rigs, results) if r is not None and r.status == FAILED), None)
    if failed is None:
        print("kvmrig: --gdb-on-fail: no rig failed", file=sys.stderr)
        return
    rig, result = failed
    backend = result.backend if result.backend in ("kvm", "emu") else "auto"  # the one it failed on
    print(f"kvmrig: --gdb-on-fail: running {rig.path} again on {backend}, to its end, for gdb", flush=True)
    serve_rig(rig, address, backend, at_end=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    handler = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "schema": cmd_schema,
               "merge": cmd_merge, "debug": cmd_debug}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\nkvmrig: interrupted", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
