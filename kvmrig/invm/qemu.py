"""Run a command inside the Linux VM of a lane (kvmrig.invm.lanes: arm64 under
qemu-system-aarch64, x86_64 under the lane's patched qemu-system-x86_64; both
TCG) whose own /dev/kvm runs kvmrig's rigs.

One call boots a fresh VM: the base initramfs (kvmrig.invm.image) with a small
per-run overlay archive appended (Linux unpacks concatenated archives in turn,
later entries replacing earlier ones) that holds:

* ``/opt/kvmrig/kvmrig``: the kvmrig package of *this* checkout (on PYTHONPATH),
* the caller's input files (relative guest paths are under the work dir),
* ``/kvmrig/conf`` (token, work dir), ``/kvmrig/run.sh`` (the command),
  ``/kvmrig/fetch`` (result files wanted back) and ``/init``.

The cloud kernel has no 9p or virtio-fs worth using, so results come back over
the serial console: ``/init`` (init.sh) streams the command's output, then
each result file base64-encoded between markers carrying a random token, then
the exit status, and powers off.  This module parses that back.

Environment overrides: ``KVMRIG_QEMU`` (qemu-system-aarch64 binary),
``KVMRIG_QEMU_X86_64`` (the x86_64 lane's qemu-system-x86_64),
``KVMRIG_QEMU_FLAGS`` (extra qemu arguments, shell-quoted),
``KVMRIG_QEMU_CPU`` (the -cpu value), ``KVMRIG_QEMU_APPEND`` (extra kernel
arguments).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Sequence, Union

from kvmrig.errors import BackendError
from kvmrig.invm.cpio import CpioWriter
from kvmrig.invm.image import INIT_SH, BaseImage, ensure_base_image
from kvmrig.invm.lanes import ARM64, LANES, Lane
from kvmrig.invm.pyc import host_pyc

QEMU_ENV = ARM64.qemu_env
FLAGS_ENV = "KVMRIG_QEMU_FLAGS"
CPU_ENV = "KVMRIG_QEMU_CPU"
APPEND_ENV = "KVMRIG_QEMU_APPEND"

DEFAULT_QEMU = ARM64.qemu_default
DEFAULT_CPU = ARM64.cpu
#: cryptomgr.notests: skips the crypto self-tests (0.6 s of each boot under TCG);
#: panic=-1 + -no-reboot: a kernel panic ends qemu at once instead of hanging
DEFAULT_APPEND = "rdinit=/init quiet panic=-1 cryptomgr.notests"
GUEST_WORKDIR = "/work"
GUEST_KVMRIG = "/opt/kvmrig"

EXIT_TIMEOUT = 124  # like timeout(1)
EXIT_VM_FAILED = 125  # the VM stopped (or never started) before the command ended

#: dirs the base image already has (not re-emitted by the overlay, keeping their modes)
_BASE_DIRS = ("bin", "dev", "etc", "lib", "opt", "proc", "root", "run", "sbin", "sys", "tmp",
              "usr", "usr/bin", "usr/lib", "usr/sbin", "work")

FileSpec = Union[Mapping[str, Union[bytes, str]], Iterable[tuple[str, Union[str, os.PathLike]]]]


@dataclass
class VmResult:
    """What came back from one VM run."""

    exit_status: int
    output: str  # the command's stdout+stderr, as it went to the console
    files_back: dict[str, bytes] = field(default_factory=dict)
    boot_seconds: float | None = None  # qemu start -> the command starts (host clock)
    command_seconds: float | None = None  # the command's own run time (host clock)
    total_seconds: float = 0.0  # qemu start -> qemu gone
    started_at: float = 0.0  # time.monotonic() when qemu started (to place on_output calls in time)
    guest_uptime_at_start: float | None = None  # the guest's /proc/uptime when the command started
    missing_files: list[str] = field(default_factory=list)
    timed_out: bool = False
    error: str | None = None  # set when the run did not complete (no exit status from the guest)
    console: str = ""  # the whole serial console, for diagnosis
    qemu_command: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0

    def check(self) -> "VmResult":
        """Raise BackendError unless the run completed with exit status 0."""
        if self.error:
            raise BackendError(self.error)
        if self.exit_status != 0:
            raise BackendError(f"command in the VM exited with status {self.exit_status}\n"
                               f"{_tail(self.output)}")
        return self


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.replace("\r", "").rstrip("\n").split("\n")[-lines:])


def qemu_binary(lane: Lane = ARM64) -> str:
    """The QEMU that boots ``lane``; BackendUnavailable when there is none."""
    return lane.qemu_binary()


def qemu_command(qemu: str, kernel: Path, initrd: Path, memory_mb: int = 1024,
                 append_extra: str = "", lane: Lane = ARM64) -> list[str]:
    append = f"console={lane.console} {DEFAULT_APPEND}"
    extra = " ".join(x for x in (os.environ.get(APPEND_ENV, ""), append_extra) if x)
    if extra:
        append += " " + extra
    cmd = [
        qemu,
        *lane.machine,
        "-cpu", os.environ.get(CPU_ENV) or lane.cpu,
        "-smp", "1",
        "-m", str(memory_mb),
        "-nographic", "-monitor", "none",
        "-nic", "none",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", append,
    ]
    cmd += shlex.split(os.environ.get(FLAGS_ENV, ""))
    return cmd


# --------------------------------------------------------------------------
# the per-run overlay
# --------------------------------------------------------------------------

def kvmrig_package_dir() -> Path:
    import kvmrig

    return Path(kvmrig.__file__).resolve().parent


def add_kvmrig_package(w: CpioWriter, src: Path | None = None, dest: str = GUEST_KVMRIG) -> int:
    """Copy the kvmrig package (sources, not tests) to ``dest``/kvmrig; returns files added."""
    src = src or kvmrig_package_dir()
    n = 0
    tag = sys.implementation.cache_tag
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for fn in sorted(filenames):
            if fn.endswith((".pyc", ".pyo")) or fn.startswith("."):
                continue
            full = Path(dirpath, fn)
            if not full.is_file():
                continue
            guest = f"{dest}/kvmrig/{rel_dir}{fn}"
            try:
                data = full.read_bytes()
            except OSError:
                continue  # a file another process is replacing right now
            w.file(guest, data, 0o755 if os.access(full, os.X_OK) else 0o644)
            n += 1
            if fn.endswith(".py"):
                pyc = host_pyc(full, guest)
                if pyc is not None:
                    w.file(f"{dest}/kvmrig/{rel_dir}__pycache__/{fn[:-3]}.{tag}.pyc", pyc)
    return n


def _guest_path(p: str, workdir: str) -> str:
    pp = PurePosixPath(p)
    if not pp.is_absolute():
        pp = PurePosixPath(workdir) / pp
    parts = []
    for part in pp.parts[1:]:
        if part == "..":
            raise ValueError(f"guest path {p!r} must not contain '..'")
        if part != ".":
            parts.append(part)
    if not parts:
        raise ValueError(f"bad guest path {p!r}")
    return "/".join(parts)


def _add_files(w: CpioWriter, files: FileSpec | None, workdir: str) -> None:
    if not files:
        return
    items = files.items() if isinstance(files, Mapping) else files
    for guest, value in items:
        name = _guest_path(str(guest), workdir)
        if isinstance(value, (bytes, bytearray, memoryview)):
            w.file(name, bytes(value), 0o644)
            continue
        if isinstance(value, str) and isinstance(files, Mapping):
            w.file(name, value.encode(), 0o644)  # a dict value str is file *content*
            continue
        host = Path(value)
        if host.is_dir():
            for dirpath, dirnames, filenames in os.walk(host):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                rel = os.path.relpath(dirpath, host)
                base = name if rel == "." else f"{name}/{rel}"
                w.mkdir(base)
                for fn in sorted(filenames):
                    fp = Path(dirpath, fn)
                    if fp.is_file():
                        w.file(f"{base}/{fn}", fp.read_bytes(), 0o755 if os.access(fp, os.X_OK) else 0o644)
        elif host.is_file():
            w.file(name, host.read_bytes(), 0o755 if os.access(host, os.X_OK) else 0o644)
        else:
            raise FileNotFoundError(f"input file for the VM not found: {host}")


def _run_script(command: Sequence[str] | str, env: Mapping[str, str] | None) -> str:
    lines = ["# generated by kvmrig.invm.qemu"]
    for k, v in (env or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"bad environment variable name {k!r}")
        lines.append(f"export {k}={shlex.quote(str(v))}")
    if isinstance(command, str):
        lines.append(command)
    else:
        if not command:
            raise ValueError("empty command")
        lines.append("exec " + " ".join(shlex.quote(str(a)) for a in command))
    return "\n".join(lines) + "\n"


def write_overlay(path: Path, base: BaseImage, *, token: str, command: Sequence[str] | str,
                  files: FileSpec | None, fetch: Iterable[str], env: Mapping[str, str] | None,
                  workdir: str, include_kvmrig: bool, symlinks: Mapping[str, str] | None = None) -> None:
    """Write base initramfs + the per-run overlay archive into ``path``."""
    with open(path, "wb") as out:
        with open(base.initramfs, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        pad = (-out.tell()) % 4
        out.write(b"\0" * pad)
        w = CpioWriter(out, ino_start=1 << 24, known_dirs=_BASE_DIRS)
        w.file("init", INIT_SH.read_bytes(), 0o755)
        w.file("kvmrig/conf", f"KVMRIG_TOKEN={token}\nKVMRIG_WORKDIR={shlex.quote(workdir)}\n".encode())
        w.file("kvmrig/run.sh", _run_script(command, env).encode(), 0o755)
        fetch_lines = []
        for f in fetch:
            f = str(f)
            if "\n" in f or not f.strip():
                raise ValueError(f"bad result file name {f!r}")
            fetch_lines.append(f)
        w.file("kvmrig/fetch", "".join(x + "\n" for x in fetch_lines).encode())
        if include_kvmrig:
            add_kvmrig_package(w)
        w.mkdir(workdir.strip("/"))
        for link, target in sorted((symlinks or {}).items()):
            w.symlink(_guest_path(link, workdir), target)
        _add_files(w, files, workdir)
        w.close()


# --------------------------------------------------------------------------
# the console protocol
# --------------------------------------------------------------------------


class _Console:
    """Collects the serial output; streams the command's lines to a callback."""

    def __init__(self, token: str, on_output: Callable[[str], None] | None):
        self.tok = token.encode()
        self.buf = bytearray()
        self.cb = on_output
        self.begin_at: int | None = None  # offset in buf just after the BEGIN line
        self.end_at: int | None = None  # offset of the "\nT:END" marker
        self.exit_seen = False
        self._scan = 0  # next unscanned line start
        self._held_empty = False
        self.t_begin: float | None = None
        self.t_end: float | None = None

    def feed(self, data: bytes, now: float) -> None:
        self.buf += data
        while True:
            nl = self.buf.find(b"\n", self._scan)
            if nl < 0:
                return
            line = bytes(self.buf[self._scan:nl])
            start = self._scan
            self._scan = nl + 1
            self._line(line, start, now)

    def _line(self, line: bytes, start: int, now: float) -> None:
        stripped = line.rstrip(b"\r")
        if self.begin_at is None:
            i = stripped.find(self.tok + b":BEGIN")
            if i >= 0:
                self.begin_at = self._scan
                self.t_begin = now
            return
        if self.end_at is None:
            if stripped.startswith(self.tok + b":END "):
                self.end_at = start - 1  # the "\n" /init prints before the marker
                self.t_end = now
                self._held_empty = False
                return
            if self.cb is None:
                return
            if stripped == b"":
                if self._held_empty:
                    self._emit(b"")
                self._held_empty = True
                return
            if self._held_empty:
                self._emit(b"")
                self._held_empty = False
            self._emit(stripped)
            return
        if stripped.startswith(self.tok + b":EXIT "):
            self.exit_seen = True

    def _emit(self, line: bytes) -> None:
        try:
            self.cb(line.decode("utf-8", "replace"))  # type: ignore[misc]
        except Exception:  # a broken callback must not lose the run
            self.cb = None

    def flush_partial(self) -> None:
        """At the end: give the callback an unterminated last line of output."""
        if self.cb and self.begin_at is not None and self.end_at is None and self._scan < len(self.buf):
            self._emit(bytes(self.buf[self._scan:]).rstrip(b"\r"))

    def text(self) -> str:
        return self.buf.decode("utf-8", "replace")

    def output(self) -> str:
        if self.begin_at is None:
            return ""
        end = self.end_at if self.end_at is not None else len(self.buf)
        return self.buf[self.begin_at:max(self.begin_at, end)].decode("utf-8", "replace")

    def parse_after_end(self) -> tuple[int | None, float | None, dict[str, bytes], list[str], str | None]:
        """(exit status, guest uptime at end, files, missing files, problem)."""
        if self.end_at is None:
            return None, None, {}, [], None
        tok = self.tok.decode()
        lines = self.buf[self.end_at + 1:].decode("utf-8", "replace").replace("\r", "").split("\n")
        status = uptime = None
        files: dict[str, bytes] = {}
        missing: list[str] = []
        problem = None
        m = re.match(rf"{re.escape(tok)}:END (-?\d+)(?: ([\d.]+))?$", lines[0])
        if m:
            status = int(m.group(1))
            uptime = float(m.group(2)) if m.group(2) else None
        i = 1
        exit_status = None
        while i < len(lines):
            line = lines[i]
            i += 1
            if line.startswith(f"{tok}:FILE "):
                try:
                    _, size_s, name = line.split(" ", 2)
                    size = int(size_s)
                except ValueError:
                    problem = f"bad file header {line!r}"
                    continue
                chunks = []
                while i < len(lines) and lines[i] != f"{tok}:ENDFILE":
                    chunks.append(lines[i].strip())
                    i += 1
                if i >= len(lines):
                    problem = f"result file {name!r} was cut off"
                    break
                i += 1
                try:
                    data = base64.b64decode("".join(chunks), validate=True)
                except (binascii.Error, ValueError):
                    problem = f"result file {name!r} arrived garbled"
                    continue
                if len(data) != size:
                    problem = f"result file {name!r}: got {len(data)} bytes, the guest sent {size}"
                    continue
                files[name] = data
            elif line.startswith(f"{tok}:NOFILE "):
                missing.append(line.split(" ", 1)[1])
            elif line.startswith(f"{tok}:EXIT "):
                try:
                    exit_status = int(line.split(" ", 1)[1])
                except ValueError:
                    pass
                break
        if exit_status is None and problem is None:
            problem = "the VM stopped while sending result files"
        return (status if status is not None else exit_status), uptime, files, missing, problem


def run_in_vm(
    command: Sequence[str] | str,
    files: FileSpec | None = None,
    timeout: float = 300.0,
    *,
    fetch: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    on_output: Callable[[str], None] | None = None,
    workdir: str = GUEST_WORKDIR,
    base: BaseImage | None = None,
    include_kvmrig: bool = True,
    memory_mb: int = 1024,
    append: str = "",
    lane: Lane = ARM64,
    progress: Callable[[str], None] | None = None,
    symlinks: Mapping[str, str] | None = None,
) -> VmResult:
    """Boot the lane's VM, run ``command`` in it, and return what came back.

    command:  argv list (exec'd by /bin/sh in the guest) or a shell script string.
    files:    input files: {guest_path: bytes} or [(guest_path, host_path)] (a
              host directory is copied recursively); relative guest paths are
              under ``workdir`` (the command's cwd).
    fetch:    guest paths (relative to ``workdir``, or absolute) to send back;
              a directory sends every file under it.  ``files_back`` keys are
              these paths as given (files of a directory: "dir/sub/file").
    symlinks: {guest path: target}: symbolic links to create (before the files).
    timeout:  seconds for the whole run, boot included; qemu is killed then.
    on_output: called with each line of the command's output as it runs.
    progress: hears what happens before the command starts (an image build,
              the boot), for a terminal.

    A run that never reports an exit status (kernel panic, timeout, qemu
    failing to start) returns exit_status 124 (timeout) or 125 with ``error``
    set and the console tail in it; ``VmResult.check()`` raises for those.
    """
    qemu = qemu_binary(lane)
    if base is not None and not (base.kernel.is_file() and base.initramfs.is_file()):
        # another process rebuilt the image (new package versions) and removed this one
        base = ensure_base_image(base.initramfs.parent.parent, lane=lane, compression=base.compression,
                                 progress=progress)
    base = base or ensure_base_image(lane=lane, progress=progress)
    token = "KVMRIG" + secrets.token_hex(8)
    workdir = "/" + workdir.strip("/")
    fetch = list(fetch)
    tmpdir = tempfile.mkdtemp(prefix="kvmrig-vm-")
    proc: subprocess.Popen | None = None
    console = _Console(token, on_output)
    timed_out = False
    booted = False
    cmd: list[str] = []
    t0 = time.monotonic()
    try:
        initrd = Path(tmpdir, "initrd")
        write_overlay(initrd, base, token=token, command=command, files=files, fetch=fetch,
                      env=env, workdir=workdir, include_kvmrig=include_kvmrig, symlinks=symlinks)
        cmd = qemu_command(qemu, base.kernel, initrd, memory_mb, append, lane)
        if progress:
            progress(f"booting the {lane.arch} VM")
        stderr_path = Path(tmpdir, "stderr")
        t0 = time.monotonic()
        deadline = t0 + timeout
        with open(stderr_path, "wb") as errf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=errf, start_new_session=True)
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                break
            console.feed(data, time.monotonic())
            if progress and console.t_begin is not None and not booted:
                booted = True
                progress(f"the {lane.arch} VM is up after {console.t_begin - t0:.1f}s; running the command")
            if console.exit_seen:
                # everything is in; no need to wait for the emulated power-off
                break
        console.flush_partial()
        _stop(proc, force=timed_out or console.exit_seen)
        t_done = time.monotonic()
        stderr_text = stderr_path.read_text(errors="replace").strip()
    finally:
        if proc is not None and proc.poll() is None:
            _stop(proc, force=True)
        if proc is not None and proc.stdout:
            proc.stdout.close()
        shutil.rmtree(tmpdir, ignore_errors=True)

    status, _uptime_end, files_back, missing, problem = console.parse_after_end()
    text = console.text()
    result = VmResult(
        exit_status=0,
        output=console.output(),
        files_back=files_back,
        boot_seconds=(console.t_begin - t0) if console.t_begin else None,
        command_seconds=(console.t_end - console.t_begin) if console.t_end and console.t_begin else None,
        total_seconds=t_done - t0,
        started_at=t0,
        missing_files=missing,
        timed_out=timed_out,
        console=text,
        qemu_command=cmd,
    )
    m = re.search(re.escape(token) + r":BEGIN ([\d.]+)", text)
    if m:
        result.guest_uptime_at_start = float(m.group(1))
    phase = ("booting" if console.begin_at is None else
             "running the command" if console.end_at is None else "sending result files")
    if status is None:
        result.exit_status = EXIT_TIMEOUT if timed_out else EXIT_VM_FAILED
        why = (f"timed out after {timeout:g}s while {phase}" if timed_out else
               f"the VM stopped while {phase} (qemu exit status {proc.returncode if proc else '?'})")
        hint = ""
        if "Kernel panic" in text:
            hint = " [kernel panic]"
        msg = f"{lane.arch} VM run failed: {why}{hint}\n--- console tail ---\n{_tail(text)}"
        if stderr_text:
            msg += f"\n--- qemu stderr ---\n{_tail(stderr_text, 20)}"
        result.error = msg
    else:
        result.exit_status = status
        if problem or timed_out:
            why = problem or f"timed out after {timeout:g}s while {phase}"
            result.error = f"{lane.arch} VM run incomplete: {why}\n--- console tail ---\n{_tail(text, 10)}"
    return result


def _stop(proc: subprocess.Popen, force: bool) -> None:
    if proc.poll() is None:
        if not force:
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str] | None = None) -> int:
    """``python3 -m kvmrig.invm.qemu [options] -- command...``: run one command
    in a lane's VM, streaming its output; exits with the guest's exit status."""
    import argparse

    ap = argparse.ArgumentParser(prog="python3 -m kvmrig.invm.qemu",
                                 description="Run a command in the VM of a KVM lane.")
    ap.add_argument("--arch", choices=sorted(LANES), default="arm64", help="the lane (default: arm64)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--put", action="append", default=[], metavar="GUEST=HOST",
                    help="copy a host file or directory into the guest (relative: under /work)")
    ap.add_argument("--fetch", action="append", default=[], metavar="GUEST",
                    help="bring a guest file or directory back (into --out)")
    ap.add_argument("--out", default=".", help="where fetched files go (default: .)")
    ap.add_argument("--repeat", type=int, default=1, help="boot this many times (for timings)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command")
    puts = []
    for spec in args.put:
        guest, sep, host = spec.partition("=")
        if not sep:
            ap.error(f"--put wants GUEST=HOST, not {spec!r}")
        puts.append((guest, host))
    t0 = time.monotonic()
    lane = LANES[args.arch]
    base = ensure_base_image(lane=lane, verbose=True)
    t_image = time.monotonic() - t0
    status = 0
    for i in range(args.repeat):
        r = run_in_vm(command, puts, args.timeout, fetch=args.fetch, base=base, lane=lane,
                      on_output=lambda line: print(line, flush=True))
        for name, data in r.files_back.items():
            dest = Path(args.out, name.lstrip("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        for name in r.missing_files:
            print(f"[kvmrig {lane.arch} vm] no such file in the guest: {name}", file=sys.stderr)
        if r.error:
            print(r.error, file=sys.stderr)
        boot = f"{r.boot_seconds:.2f}s" if r.boot_seconds is not None else "-"
        cmd_s = f"{r.command_seconds:.2f}s" if r.command_seconds is not None else "-"
        print(f"[kvmrig {lane.arch} vm] run {i + 1}: exit {r.exit_status}; image {t_image:.3f}s, boot {boot} "
              f"(guest uptime {r.guest_uptime_at_start}), command {cmd_s}, total {r.total_seconds:.2f}s",
              file=sys.stderr, flush=True)
        status = r.exit_status
        t_image = 0.0
    return status


if __name__ == "__main__":
    raise SystemExit(main())
