"""The `kvmrig` command: run, validate, list rigs; print the schema.

Exit status of `kvmrig run`, as the contract says (and as pytest does):
0 every rig passed (or was skipped), 1 some rig failed, 2 usage errors, rig
file errors or an interrupted run with no failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
"""


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
    run.add_argument("-v", "--verbose", action="count", default=0, help="show registers checked and console")
    run.add_argument("-q", "--quiet", action="count", default=0, help="one character per rig")
    run.add_argument("--update-golden", action="store_true",
                     help="write or refresh the golden snapshot files of rigs with expect.golden, "
                          "printing what changed, instead of comparing with them")

    val = sub.add_parser("validate", help="check rig files (schema, images, symbols) without running")
    val.add_argument("paths", nargs="+", metavar="PATH")

    lst = sub.add_parser("list", help="list rigs: name, arch, tags, file")
    lst.add_argument("paths", nargs="+", metavar="PATH")

    sub.add_parser("schema", help="print the rig file JSON Schema")
    return p


def _collect(paths: list[str]):
    from kvmrig.runner import expand, load_all

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise SystemExit(_usage(f"no such file or folder: {', '.join(missing)}"))
    files = expand(paths)
    explicit = {Path(p) for p in paths if Path(p).is_file()}
    return load_all(files, explicit)


def _usage(message: str) -> int:
    print(f"kvmrig: error: {message}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from kvmrig.report.junit import write_junit
    from kvmrig.report.terminal import Terminal
    from kvmrig.runner import ERROR, FAILED, SKIPPED, RigResult, _result_for, run_rigs

    started = time.monotonic()
    rigs, errors = _collect(args.paths)
    if args.keyword:
        rigs = [r for r in rigs if args.keyword in r.name or args.keyword in str(r.path)]
    if args.tag:
        rigs = [r for r in rigs if set(args.tag) & set(r.tags)]
    if not rigs and not errors:
        return _usage("no rigs found" + (" matching the filters" if args.keyword or args.tag else ""))
    verbosity = args.verbose - args.quiet
    term = Terminal(verbosity=verbosity)
    term.start(len(rigs) + len(errors))
    for e in errors:
        term.result(e)
    results, interrupted = run_rigs(rigs, args.jobs, on_result=term.result, exitfirst=args.exitfirst,
                                    update_golden=args.update_golden)
    final: list[RigResult] = list(errors)
    for rig, result in zip(rigs, results):
        final.append(result or _result_for(rig, SKIPPED, message="not run (interrupted)" if interrupted
                                           else "not run (--exitfirst)"))
    term.summary(final, time.monotonic() - started, interrupted)
    if args.junit:
        write_junit(args.junit, final)
    if any(r.status == FAILED for r in final):
        return 1
    if interrupted or any(r.status == ERROR for r in final):
        return 2
    return 0


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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    handler = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "schema": cmd_schema}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\nkvmrig: interrupted", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
