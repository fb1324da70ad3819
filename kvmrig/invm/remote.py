"""`kvmrig run --in-vm arm64 PATHS...`: run rigs on real arm64 KVM from an
x86_64 host, inside the arm64 Linux of kvmrig.invm, as if they ran here.

Every file the rigs need (the rig files, their images, golden files) is
shipped at its own absolute host path, and the command runs in the host's
working directory, so paths, `file:line:col` messages and JUnit names inside
read exactly as they would locally. The per-rig lines stream back as the rigs
run; the JUnit and JSON reports come back as files; the exit status is the
inner run's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from kvmrig.atomic import write_atomic
from kvmrig.errors import RigError
from kvmrig.rig.load import load_rig

ARCHES = ("arm64",)
REPORT_DIR = "/tmp/kvmrig-reports"
COVERAGE_DIR = f"{REPORT_DIR}/coverage"   # --coverage inside; its files come back to the host's DIR
BOOT_ALLOWANCE = 180.0  # seconds for booting (and a first image build) beyond the rigs' own timeouts


def needed_files(rig_files: list[Path]) -> tuple[list[Path], float]:
    """(absolute paths of every file the rigs read, the sum of their timeouts)."""
    files: set[Path] = set()
    budget = 0.0
    for path in rig_files:
        files.add(path.resolve())
        try:
            rig = load_rig(path)
        except RigError:
            budget += 10.0
            continue  # the run inside reports the same error, with the same path and line
        budget += rig.timeout
        for image in rig.images:
            if image.file is not None and image.file.is_file():
                files.add(image.file.resolve())
        golden = rig.expect.golden
        if golden is not None and golden.file.is_file():
            files.add(golden.file.resolve())
        dtb = rig.dtb  # arm64: a rig's own device tree and its initrd
        for extra in (dtb.file, dtb.initrd) if dtb is not None else ():
            if extra is not None and extra.is_file():
                files.add(extra.resolve())
    return sorted(files), budget


def inner_argv(args, paths: list[str], junit: str | None, json_out: str | None) -> list[str]:
    """The `kvmrig run` command line for inside the VM (host-only options left out)."""
    argv = ["python3", "-m", "kvmrig", "run", *paths, "--backend", "kvm"]
    if args.jobs:
        argv += ["-j", str(args.jobs)]
    argv += ["--junit", junit or ""]
    if json_out:
        argv += ["--json", json_out]
    if args.keyword:
        argv += ["-k", args.keyword]
    for tag in args.tag:
        argv += ["--tag", tag]
    if args.exitfirst:
        argv.append("-x")
    argv += ["-v"] * args.verbose + ["-q"] * args.quiet
    if getattr(args, "coverage", None):
        argv += ["--coverage", COVERAGE_DIR]
        for root in args.coverage_root:
            argv += ["--coverage-root", root]
    return argv


def run_in_vm_cli(args, rig_files: list[Path], out: Callable[[str], None] | None = None) -> int:
    """Run `kvmrig run` on the rigs inside the arm64 VM; returns its exit status."""
    from kvmrig.invm.qemu import EXIT_VM_FAILED, run_in_vm

    out = out or (lambda line: print(line, flush=True))
    files, budget = needed_files(rig_files)
    junit = f"{REPORT_DIR}/junit.xml" if args.junit else None
    json_out = f"{REPORT_DIR}/results.json" if getattr(args, "json", None) else None
    argv = inner_argv(args, list(args.paths), junit, json_out)
    coverage = getattr(args, "coverage", None)
    fetch = [p for p in (junit, json_out, COVERAGE_DIR if coverage else None) if p]
    cwd = str(Path.cwd())
    result = run_in_vm(argv, files=[(str(f), str(f)) for f in files], timeout=budget + BOOT_ALLOWANCE,
                       fetch=fetch, on_output=out, workdir=cwd,
                       env={"KVMRIG_IN_VM": "1", "PYTHONUNBUFFERED": "1",
                            # the guest's stdout is a serial console: color as the host's terminal is
                            ("FORCE_COLOR" if sys.stdout.isatty() else "NO_COLOR"): "1"})
    if result.error:
        print(f"kvmrig: {result.error}", file=sys.stderr)
        return 2 if result.exit_status in (0, EXIT_VM_FAILED) else result.exit_status
    for inner, host in ((junit, args.junit), (json_out, getattr(args, "json", None))):
        if inner and host and inner in result.files_back:
            write_atomic(host, result.files_back[inner].decode("utf-8", errors="replace"))
    if coverage:
        for inner, data in result.files_back.items():
            if inner.startswith(COVERAGE_DIR + "/"):
                name = inner[len(COVERAGE_DIR) + 1:]
                write_atomic(Path(coverage) / name, data.decode("utf-8", errors="replace"))
    return result.exit_status
