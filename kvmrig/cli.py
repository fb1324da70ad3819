"""The `kvmrig` command: run, validate, list rigs; print the schema.

Exit status of `kvmrig run`, as the contract says (and as pytest does):
0 every rig passed (or was skipped), 1 some rig failed, 2 usage errors, rig
file errors or an interrupted run with no failure.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from kvmrig import __version__

EPILOG = """\
rig files:
  A rig is one YAML file (see docs/rig-format.md and schemas/rig.schema.json).
  Folders given as PATHS expand to the rig files (*.yaml starting with `kvmrig:`) below them.

exit status (run):
  0 all rigs passed or were skipped, 1 some rig failed (or, with --strict, was skipped),
  2 usage or rig file errors only.

examples:
  kvmrig run rigs/                 run every example rig, JUnit to reports/junit.xml
  kvmrig run -j 1 -v rigs/x86/fib.yaml
  kvmrig run --tag smoke -k serial rigs/
  kvmrig validate rigs/            check rig files without running them
  kvmrig run --backend emu rigs/   run on the unicorn emulator, no /dev/kvm needed
  kvmrig run --cross-check rigs/x86   run on KVM and the emulator and compare the two
  kvmrig run --shard 2/4 --junit j2.xml --json r2.json rigs/   the 2nd quarter (CI: docs/ci.md)
  kvmrig merge junit.xml j1.xml j2.xml j3.xml j4.xml           one report from the shards'
  kvmrig run --coverage --coverage-root rigs rigs/x86   coverage to reports/coverage/coverage.info
  genhtml -o reports/coverage/html reports/coverage/coverage.info   ... as HTML (Debian package lcov)
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
    run.add_argument("--strict", action="store_true",
                     help="skipped rigs count as failures (exit 1): for CI, where a rig that cannot run "
                          "(no /dev/kvm, no emulator) must not pass unnoticed")
    run.add_argument("--backend", choices=("auto", "kvm", "emu"), default="auto",
                     help="where rigs run: kvm, emu (the unicorn emulator), or auto (default): KVM where "
                          "/dev/kvm can run the rig's arch, else the emulator. A rig's `backend:` pin "
                          "must agree, or the rig is skipped with the reason")
    run.add_argument("--cross-check", action="store_true",
                     help="run each rig on KVM and on the emulator where both can, and fail it where "
                          "exit, exit code, final registers, hit counts, console or RAM digest differ")
    run.add_argument("--no-reuse", action="store_true",
                     help="build a fresh VM for every rig (default: a worker resets and reuses its VM "
                          "between rigs with the same arch and memory map)")
    run.add_argument("--no-cache", action="store_true",
                     help="load every rig file anew (default: rigs loaded by an earlier run and unchanged since, "
                          "with the files they read, come from ~/.cache/kvmrig/rigs; KVMRIG_NO_CACHE=1 also)")
    run.add_argument("--save-on-fail", metavar="DIR",
                     help="save the final state of every failed rig as DIR/NAME.snap (a rig with "
                          "`from: DIR/NAME.snap` or kvmrig debug starts from it)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="show registers checked and console")
    run.add_argument("-q", "--quiet", action="count", default=0, help="one character per rig")
    run.add_argument("--rerun-failed", action="store_true",
                     help="run only the rigs that failed or errored last time (recorded in "
                          ".kvmrig_cache/last-failed.json at the project root, or $KVMRIG_CACHE_DIR; "
                          "all of them when none is recorded)")
    run.add_argument("--update-golden", action="store_true",
                     help="write or refresh the golden snapshot files of rigs with expect.golden, "
                          "printing what changed, instead of comparing with them")
    run.add_argument("--shard", type=_parse_shard, metavar="K/N",
                     help="run only shard K of N (1-based): a deterministic share of the rigs, "
                          "balanced by --durations-from, else round-robin by file and name")
    run.add_argument("--durations-from", metavar="FILE",
                     help="JSON results of an earlier run (--json) whose durations balance --shard")
    run.add_argument("--in-vm", choices=("arm64", "x86_64"), metavar="ARCH",
                     help="run the rigs on the KVM inside a Linux booted under QEMU "
                          "(arm64: real arm64 KVM, scripts/setup-arm64-lane.sh; x86_64: nested SVM whose "
                          "KVM intercepts INT3 and raises debug-register breakpoints, scripts/setup-x86-lane.sh); "
                          "lines, reports and exit status come back as if run here")
    run.add_argument("--json", metavar="FILE", help="write JSON results, one record per rig, to FILE")
    run.add_argument("--images-under", action="append", default=[], metavar="DIR",
                     help="only let rigs load image and golden files below DIR (repeatable; symlinks resolved): "
                          "for CI that runs rigs it did not write (docs/limits.md)")
    run.add_argument("--coverage", nargs="?", const="reports/coverage", metavar="DIR",
                     help="record which guest code ran and write DIR/coverage.info (lcov) and DIR/coverage.xml "
                          "(Cobertura) (default DIR: %(const)s); source lines from the ELF images' DWARF")
    run.add_argument("--coverage-root", action="append", default=[], metavar="DIR|OLD=NEW",
                     help="remap source paths in the coverage reports: DIR goes before relative paths, "
                          "OLD=NEW replaces a leading OLD (repeatable; the first that applies wins)")
    run.add_argument("--gdb-on-fail", metavar="[HOST]:PORT",
                     help="after the run, run the first rig that failed again in this process, to its end, "
                          "and serve its final state to gdb on [HOST]:PORT (see `kvmrig debug`)")

    val = sub.add_parser("validate", help="check rig files (schema, images, symbols) without running")
    val.add_argument("paths", nargs="+", metavar="PATH")

    lst = sub.add_parser("list", help="list rigs: name, arch, tags, file")
    lst.add_argument("paths", nargs="+", metavar="PATH")

    sch = sub.add_parser("schema", help="print the rig file JSON Schema (or write it with -o)",
                         description="The rig file JSON Schema, for editors: write it into the project "
                                     "(kvmrig schema -o rig.schema.json) and point the YAML language "
                                     "server's modeline at it.")
    sch.add_argument("-o", "--output", metavar="FILE", help="write the schema to FILE instead of printing it")
    sch.add_argument("--results", action="store_true", help="the JSON results schema (--json) instead")

    mrg = sub.add_parser("merge", help="merge JUnit XML, JSON results or lcov coverage of several runs into one",
                         description="Merge JUnit XML files (OUT.xml) or JSON results (OUT.json): suites of "
                                     "the same name become one, every count is recounted; or lcov coverage "
                                     "(OUT.info, from run --coverage): line and function counts add up.")
    mrg.add_argument("out", metavar="OUT", help="the merged report: .xml (JUnit) or .json (JSON results)")
    mrg.add_argument("inputs", nargs="+", metavar="IN", help="reports of the same kind to merge")
    imp = sub.add_parser("import", help="write rigs for another test suite's tests",
                         description="kvm-unit-tests: one rig per test of UNITTESTS_CFG for the binaries' arch "
                                     "(x86_64 or arm64, from their ELF headers; else the host's), running "
                                     "FLAT_DIR's binaries as the suite's QEMU runner does.")
    imp.add_argument("suite", choices=("kvm-unit-tests",), help="the suite")
    imp.add_argument("cfg", metavar="UNITTESTS_CFG", help="the suite's unittests.cfg")
    imp.add_argument("flat_dir", metavar="FLAT_DIR", help="the folder with its built *.flat files")
    imp.add_argument("-o", "--output", required=True, metavar="DIR", help="where to write the rigs")
    imp.add_argument("--arch", choices=("x86_64", "arm64"), help="the arch to write rigs for (default: detected)")
    imp.add_argument("--max-smp", type=int, default=2, metavar="N", help="what $MAX_SMP means (default 2)")
    dbg = sub.add_parser("debug", help="run one rig under gdb: stopped at its entry, served over TCP",
                         description="Load RIG, stop it at its first instruction and serve it to one gdb "
                                     "(GDB remote protocol): breakpoints, watchpoints, stepping, registers and "
                                     "memory. The rig's own breakpoints still count and its checks still run; "
                                     "detaching lets it run to its end and prints the verdict. An x86_64 KVM "
                                     "machine with `cpus: N` shows each vCPU as a thread (thread N = vCPU N-1), "
                                     "all-stop: any vCPU's stop stops all, continue runs all, stepi runs only "
                                     "the vCPU stepped. arm64 with cpus > 1 shows one thread (the vCPU of the "
                                     "last event); the emulator runs one vCPU.")
    dbg.add_argument("rig", metavar="RIG", help="the rig file, or a snapshot file (FILE.snap) to start from")
    dbg.add_argument("--gdb", default="127.0.0.1:1234", metavar="[HOST]:PORT",
                     help="where to listen (default %(default)s; the host defaults to 127.0.0.1, port 0 picks one)")
    dbg.add_argument("--backend", choices=("auto", "kvm", "emu"), default="auto",
                     help="backend for rigs with `backend: any` (default %(default)s)")
    snap = sub.add_parser("snapshot", help="run a rig to one of its snapshot points and write it to a file",
                          description="Run RIG (its parents first, if it starts from a point) until it saves "
                                      "POINT, and write that snapshot to FILE (docs/snapshots.md). Rigs start "
                                      "from it with `from: FILE`; kvmrig debug FILE serves it to gdb.")
    snap.add_argument("target", metavar="RIG#POINT", help="a rig file and the name of a point it saves")
    snap.add_argument("-o", "--output", required=True, metavar="FILE", help="the snapshot file to write")
    snap.add_argument("--backend", choices=("auto", "kvm", "emu"), default="auto",
                      help="backend for rigs with `backend: any` (default %(default)s)")
    return p


def _collect(paths: list[str]):
    from kvmrig.collect import expand, load_all

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise SystemExit(_usage(f"no such file or folder: {', '.join(missing)}"))
    return load_all(expand(paths), {Path(p) for p in paths if Path(p).is_file()})


def _usage(message: str) -> int:
    print(f"kvmrig: error: {message}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    if args.in_vm:
        return _run_in_vm(args)
    if args.cross_check and args.backend != "auto":
        return _usage("--cross-check runs both backends: it cannot be combined with --backend")
    if args.coverage and args.cross_check:
        return _usage("--coverage records one backend's runs: run --backend kvm and --backend emu with "
                      "--coverage and merge the two coverage.info files with `kvmrig merge`")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        return _usage(f"no such file or folder: {', '.join(missing)}")
    if args.images_under:
        bad = [d for d in args.images_under if not Path(d).is_dir()]
        if bad:
            return _usage(f"--images-under needs folders: {', '.join(bad)}")
        from kvmrig.rig.hostfiles import restrict_to
        restrict_to(args.images_under)
    from kvmrig.errors import UsageError
    from kvmrig.run_command import run_command
    try:
        return run_command(args)
    except UsageError as e:
        return _usage(str(e))


def _run_in_vm(args: argparse.Namespace) -> int:
    from kvmrig.errors import BackendUnavailable
    from kvmrig.invm.remote import run_in_vm_cli
    from kvmrig.collect import expand, is_rig_file

    clash = [flag for flag, on in (("--cross-check", args.cross_check), ("--update-golden", args.update_golden),
                                   ("--gdb-on-fail", args.gdb_on_fail), ("--shard", args.shard),
                                   ("--backend emu", args.backend == "emu"),
                                   ("--save-on-fail", args.save_on_fail),
                                   ("--rerun-failed", args.rerun_failed)) if on]
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
    from importlib import resources

    name = "results.schema.json" if args.results else "rig.schema.json"
    text = (resources.files("kvmrig") / "schemas" / name).read_text(encoding="utf-8")
    if not args.output:
        sys.stdout.write(text)
        return 0
    from kvmrig.atomic import write_atomic
    try:
        write_atomic(args.output, text, prefix=".schema-")
    except OSError as e:
        return _usage(f"cannot write {args.output}: {e.strerror or e}")
    print(f"wrote {args.output}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from kvmrig.errors import UsageError
    from kvmrig.merge import merge_files

    try:
        print(merge_files(args.out, args.inputs))
    except UsageError as e:
        return _usage(str(e))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from kvmrig.errors import UsageError
    from kvmrig.importers.kvm_unit_tests import import_suite  # imported when used, as the other commands

    for path in (args.cfg, args.flat_dir):
        if not Path(path).exists():
            return _usage(f"no such file or folder: {path}")
    try:
        written, left_out = import_suite(Path(args.cfg), Path(args.flat_dir), Path(args.output), args.arch,
                                         max(1, args.max_smp))
    except UsageError as e:
        return _usage(str(e))
    for line in left_out:
        print(f"left out {line}")
    print(f"wrote {len(written)} rig(s) to {args.output}")
    return 0


def cmd_debug(args: argparse.Namespace) -> int:
    from kvmrig.errors import RigError, SnapshotError
    from kvmrig.gdb.server import serve_rig
    from kvmrig.machine import snapfile
    from kvmrig.rig.load import load_rig, load_rig_text

    if not Path(args.rig).is_file():
        return _usage(f"no such rig file: {args.rig}")
    try:
        with open(args.rig, "rb") as f:
            is_snapshot = f.read(len(snapfile.MAGIC)) == snapfile.MAGIC
        if is_snapshot:   # a snapshot: a rig that only starts from it
            head = snapfile.read_header(args.rig)
            path = Path(args.rig).resolve()
            rig = load_rig_text(f"kvmrig: 1\narch: {head.arch}\nname: {path.stem}\nbackend: {head.backend}\n"
                                f"from: {json.dumps(path.name)}\nexpect: {{}}\n", path.with_suffix(".yaml"))
        else:
            rig = load_rig(args.rig)
    except (RigError, SnapshotError) as e:
        print(e, file=sys.stderr)
        return 2
    return serve_rig(rig, args.gdb, args.backend)


def cmd_snapshot(args: argparse.Namespace) -> int:
    """kvmrig snapshot RIG#POINT -o FILE."""
    import os
    import shutil
    import tempfile

    from kvmrig.errors import RigError
    from kvmrig.machine.points import PointStore
    from kvmrig.rig.load import load_rig
    from kvmrig.result import PASSED
    from kvmrig.runner import run_rig

    file, sep, point = args.target.rpartition("#")
    if not sep or not file or not point:
        return _usage(f"{args.target}: name a rig and one of its points, as RIG.yaml#POINT")
    if not Path(file).is_file():
        return _usage(f"no such rig file: {file}")
    out = Path(args.output)
    if out.is_symlink() or (out.exists() and not out.is_file()):
        return _usage(f"{out} exists and is not a regular file; not replacing it")
    if not out.parent.is_dir():
        return _usage(f"{out.parent}: no such folder for the snapshot")
    try:
        rig = load_rig(file)
    except RigError as e:
        print(e, file=sys.stderr)
        return 2
    if point not in rig.save_points():
        return _usage(f"{file} saves no point {point!r} (it saves: {', '.join(rig.save_points()) or 'none'})")
    with tempfile.TemporaryDirectory(prefix="kvmrig-snapshot-") as tmp:
        result = run_rig(rig, args.backend, points=tmp)
        saved = PointStore(tmp).file(rig.path, point)
        if not saved.exists():
            unsaved = [f for f in (result.outcome.failures if result.outcome else []) if f.what == "snapshot"]
            print(f"kvmrig: {rig.path} did not reach point {point!r}: {result.status}"
                  f"{': ' + result.message if result.message else ''}"
                  f"{'; ' + result.outcome.detail if result.outcome else ''}"
                  f"{'; ' + str(unsaved[0]) if unsaved else ''}", file=sys.stderr)
            return 1
        part = out.with_name(f".{out.name}.part{os.getpid()}")
        try:
            shutil.copyfile(saved, part)
            os.chmod(part, 0o666 & ~_umask())
            os.replace(part, out)
        except OSError as e:
            part.unlink(missing_ok=True)
            print(f"kvmrig: cannot write {out}: {e.strerror}", file=sys.stderr)
            return 2
    print(f"kvmrig: wrote {out} ({rig.name}#{point}, {result.backend or 'no backend'})")
    if result.status != PASSED:
        print(f"kvmrig: note: the rig itself {result.status}", file=sys.stderr)
        return 1
    return 0


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    if argv is None:   # the command itself: its dataclasses compiled once, not at every run
        from kvmrig import dataclass_code
        dataclass_code.install()
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    handler = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "schema": cmd_schema,
               "merge": cmd_merge, "debug": cmd_debug, "snapshot": cmd_snapshot, "import": cmd_import}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\nkvmrig: interrupted", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    finally:
        if argv is None:   # the command itself (not a caller's main([...])): the process ends here, and
            dataclass_code.save()
            gc.freeze()    # the collector's last pass over every rig and result it holds (~30 ms) frees nothing
