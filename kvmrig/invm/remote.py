"""`kvmrig run --in-vm ARCH PATHS...`: run rigs on the KVM of a VM lane
(kvmrig.invm.lanes) as if they ran here: arm64 rigs on real arm64 KVM from
an x86_64 host, x86_64 rigs on an x86 KVM that intercepts INT3 and raises
DR0-DR3 breakpoints (the native debug path) where the host's KVM does not.

Every file the rigs need (the rig files, their images, golden files) is
shipped at its own host path, and every symbolic link on the way to it is
recreated as a link, so paths, `file:line:col` messages and JUnit names
inside read exactly as they would locally (a rig reached through a linked
folder finds its images the same way). The command runs in the host's
working directory. The per-rig lines stream back as the rigs run; the JUnit
and JSON reports come back as files; the exit status is the inner run's.
On a terminal, the steps before the rigs (image build, boot) are shown and
the run ends with its host wall time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kvmrig.atomic import write_atomic
from kvmrig.errors import RigError
from kvmrig.invm.lanes import LANES, lane_for
from kvmrig.invm.qemu import EXIT_VM_FAILED, run_in_vm
from kvmrig.rig.load import load_rig

ARCHES = tuple(LANES)
REPORT_DIR = "/tmp/kvmrig-reports"
COVERAGE_DIR = f"{REPORT_DIR}/coverage"   # --coverage inside; its files come back to the host's DIR
BOOT_ALLOWANCE = 180.0  # seconds for booting (and a first image build) beyond the rigs' own timeouts
#: forwarded into the VM when set here (the x86 debug strategy, for one)
FORWARD_ENV = ("KVMRIG_KVM_DEBUG",)


def needed_files(rig_files: list[Path]) -> tuple[list[Path], float]:
    """(absolute paths, as reached, of every file the rigs read; the sum of their timeouts)."""
    files: set[Path] = set()
    budget = 0.0
    for path in rig_files:
        files.add(path.absolute())
        try:
            rig = load_rig(path)
        except RigError:
            budget += 10.0
            continue  # the run inside reports the same error, with the same path and line
        budget += rig.timeout
        for image in rig.images:   # with a Linux kernel's initrd, multiboot modules
            for f in (image.file, image.initrd, *(m.file for m in image.modules)):
                if f is not None and f.is_file():
                    files.add(f.absolute())
        golden = rig.expect.golden
        if golden is not None and golden.file.is_file():
            files.add(golden.file.absolute())
        dtb = rig.dtb  # arm64: a rig's own device tree and its initrd
        for extra in (dtb.file, dtb.initrd) if dtb is not None else ():
            if extra is not None and extra.is_file():
                files.add(extra.absolute())
    return sorted(files), budget


def host_view(paths: list[Path]) -> tuple[list[str], dict[str, str]]:
    """(the files at their real paths, {link path: link target}) that rebuild in
    the guest what reaching ``paths`` on the host goes through.

    Each link is recorded where it really is (its parent folder resolved), so
    no recorded path passes through another link; a link's target is followed
    in turn, so chains and relative targets (`../x`) resolve as on the host.
    """
    links: dict[str, str] = {}
    files: set[str] = set()
    todo = [os.path.abspath(str(p)) if not os.path.isabs(p) else str(p) for p in paths]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        cur = "/"
        for part in Path(path).parts[1:]:
            if part in ("", "."):
                continue
            if part == "..":
                cur = os.path.dirname(cur) or "/"
                continue
            nxt = os.path.join(cur, part)
            if os.path.islink(nxt):
                target = os.readlink(nxt)
                links[nxt] = target
                todo.append(os.path.join(cur, target))
                cur = os.path.realpath(nxt)
            else:
                cur = nxt
        if os.path.isfile(cur):
            files.add(cur)
    return sorted(files), links


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
    if getattr(args, "strict", False):
        argv.append("--strict")      # the inner run's skips fail it: its exit status is ours
    if getattr(args, "no_reuse", False):
        argv.append("--no-reuse")
    argv += ["-v"] * args.verbose + ["-q"] * args.quiet
    if getattr(args, "coverage", None):
        argv += ["--coverage", COVERAGE_DIR]
        for root in args.coverage_root:
            argv += ["--coverage-root", root]
    return argv


def host_line(line: str, coverage: str | None) -> str:
    """An inner run's output line as the host reads it: the coverage files it
    names are where they come back to (the host's DIR), not the guest's folder."""
    if coverage and line.startswith("coverage: "):
        return line.replace(COVERAGE_DIR, str(Path(coverage)))
    return line


def run_in_vm_cli(args, rig_files: list[Path], out: Callable[[str], None] | None = None) -> int:
    """Run `kvmrig run` on the rigs inside the VM of the lane ``args.in_vm``; returns its exit status."""
    lane = lane_for(args.in_vm)
    out = out or (lambda line: print(line, flush=True))
    terminal = sys.stderr.isatty()
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        if terminal:
            print(f"kvmrig --in-vm {lane.arch}: {msg} ({time.monotonic() - t0:.1f}s)", file=sys.stderr, flush=True)

    files, budget = needed_files(rig_files)
    real_files, links = host_view(files)
    junit = f"{REPORT_DIR}/junit.xml" if args.junit else None
    json_out = f"{REPORT_DIR}/results.json" if getattr(args, "json", None) else None
    argv = inner_argv(args, list(args.paths), junit, json_out)
    coverage = getattr(args, "coverage", None)
    fetch = [p for p in (junit, json_out, COVERAGE_DIR if coverage else None) if p]
    cwd = str(Path.cwd())
    env = {"KVMRIG_IN_VM": "1", "PYTHONUNBUFFERED": "1",
           # the guest's stdout is a serial console: color as the host's terminal is
           ("FORCE_COLOR" if sys.stdout.isatty() else "NO_COLOR"): "1"}
    env.update({k: os.environ[k] for k in FORWARD_ENV if k in os.environ})
    result = run_in_vm(argv, files=[(f, f) for f in real_files], symlinks=links,
                       timeout=budget + BOOT_ALLOWANCE, fetch=fetch,
                       on_output=lambda line: out(host_line(line, coverage)), workdir=cwd,
                       env=env, lane=lane, progress=progress)
    wall = time.monotonic() - t0
    boot = f"{result.boot_seconds:.1f}s" if result.boot_seconds is not None else "-"
    rigs = f"{result.command_seconds:.1f}s" if result.command_seconds is not None else "-"
    print(f"kvmrig --in-vm {lane.arch}: wall time {wall:.1f}s (boot {boot}, rigs {rigs})",
          file=sys.stderr, flush=True)
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
