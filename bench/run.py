"""kvmrig's benchmark: per-rig cost against the raw-ioctl limit and against QEMU.

    python bench/run.py [--quick] [--out reports/bench.json] [--only GROUP[,GROUP...]] [--wait-idle S]

GROUPS: ops (lifecycle, per-exit rows, C vs kvmrig in-process), cli (start-up),
suite + qemu (`kvmrig run` on 1/100/1000 rigs against QEMU per test and the
C floor), rss (peak memory), emu (the emulator backend), coverage (the C
example suite with and without coverage, on KVM and on the emulator), reuse
(VM reuse: the reset against C, the re-mapping alternative, fork_100 from a
booted U-Boot, growth over 10,000 rigs), kut (the kvm-unit-tests x86 binaries per test under kvmrig
and under QEMU, bench/kut.py), arm64 (the reset of a reused arm64 VM in the nested arm64 lane,
bench/arm64_reset.py; informational).

Prints a table and writes reports/bench.json:
    {"machine": {...}, "params": {...}, "rows": [{"name", "unit", "limit", "kvmrig",
      "ratio", "n", "note", "target", "met", "detail"}]}
All figures are medians of n repetitions. What each row measures, how the
limit is made and how to read the ratio: bench/README.md.

--quick takes well under 5 minutes on 2 cores (fewer repetitions, the same rows).
Nothing here asserts a target: `met` only says whether it was reached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import rigs  # noqa: E402
from kut import kut_rows  # noqa: E402

PY = sys.executable
# Per-operation rows: (row name, limit.c / kvmrig_side op, unit note)
OP_ROWS = (
    ("pio_exit", "pio", "one `out` to an unclaimed port (KVM_EXIT_IO), recorded"),
    ("mmio_exit", "mmio", "one MMIO write to a `constant` device (KVM_EXIT_MMIO), recorded"),
    ("singlestep_exit", "singlestep", "one single-step debug exit (trace/steps on)"),
    ("hw_bp_hit", "hwbp", "one hw breakpoint hit with a per-hit register check: DEBUG exit, GET_REGS, "
                          "step past with DR0 off (SET_GUEST_DEBUG, RUN), re-arm (SET_GUEST_DEBUG)"),
    ("sw_bp_hit", "swbp", "one sw breakpoint hit; kvm_pvm cannot intercept INT3, so both sides plant HLT: "
                          "HLT exit, rip-1 (GET/SET_REGS), restore byte, single-step (SET_GUEST_DEBUG, RUN), "
                          "re-plant, SET_GUEST_DEBUG off"),
)
SUITES = ((1, 1), (100, 1), (100, 2), (1000, 1), (1000, 2))
QEMU_CONFIGS = (("microvm", "kvm"), ("pc", "kvm"), ("microvm", "tcg"), ("pc", "tcg"))
QEMU_EXIT = 0x21  # the guest writes this to isa-debug-exit: status (0x21 << 1) | 1 = 67


@dataclass
class Params:
    k: int
    n_op: int
    n_lifecycle: int
    n_suite_1000: int
    n_suite_100: int
    n_suite_1: int
    n_version: int
    n_qemu: int
    qemu_j2_batch: int
    n_rss: int
    rounds: int
    n_coverage: int = 9


QUICK = Params(k=1000, n_op=9, n_lifecycle=30, n_suite_1000=3, n_suite_100=5, n_suite_1=7,
               n_version=11, n_qemu=7, qemu_j2_batch=20, n_rss=1, rounds=3, n_coverage=9)
FULL = Params(k=3000, n_op=25, n_lifecycle=100, n_suite_1000=7, n_suite_100=11, n_suite_1=15,
              n_version=31, n_qemu=21, qemu_j2_batch=60, n_rss=3, rounds=5, n_coverage=31)


@dataclass
class Row:
    name: str
    unit: str
    limit: float | None
    kvmrig: float | None
    n: int
    note: str
    ratio_kind: str = "kvmrig/limit"   # or "limit/kvmrig" (suite rows: how many times faster than QEMU)
    target: str = ""
    met: bool | None = None
    detail: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.limit is None or self.kvmrig is None or self.limit <= 0 or self.kvmrig <= 0:
            return None
        return self.kvmrig / self.limit if self.ratio_kind == "kvmrig/limit" else self.limit / self.kvmrig

    def as_json(self) -> dict:
        return {"name": self.name, "unit": self.unit, "limit": _round(self.limit), "kvmrig": _round(self.kvmrig),
                "ratio": _round(self.ratio), "ratio_is": self.ratio_kind, "n": self.n, "note": self.note,
                "target": self.target, "met": self.met, "detail": self.detail}


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return float(f"{x:.4g}")


def median(xs) -> float:
    return float(statistics.median(xs))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Machine ------------------------------------------------------------------------

def machine_info() -> dict:
    info: dict = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    info["kernel"] = platform.release()
    mods = [m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path("/sys/module", m).exists()]
    info["kvm_module"] = ",".join(mods) or ("kvm" if Path("/sys/module/kvm").exists() else None)
    info["kvm_device"] = os.path.exists("/dev/kvm")
    info["python"] = platform.python_version()
    try:
        import kvmrig
        info["kvmrig_version"] = kvmrig.__version__
    except ImportError:
        info["kvmrig_version"] = None
    try:
        info["kvmrig_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "kvmrig"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["kvmrig_tree_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    if os.path.exists("/dev/kvm"):
        try:
            from kvmrig.backends.kvm.common import shared_kvm
            from kvmrig.backends.kvm.x86_probe import debug_support
            info["kvm_debug"] = debug_support(shared_kvm()).describe
        except Exception as e:  # informational only
            info["kvm_debug"] = f"probe failed: {e}"
    cc = shutil.which("cc")
    if cc:
        info["cc"] = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        info["qemu"] = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return info


# The C limit --------------------------------------------------------------------

def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kvmrig-bench"


def build_limit(out_dir: Path | None = None) -> Path:
    """Compile bench/limit.c with the system's cc (cached by source hash)."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise RuntimeError("no C compiler (cc) on PATH: install gcc (scripts/setup-bench.sh)")
    src = HERE / "limit.c"
    digest = hashlib.sha256(src.read_bytes() + cc.encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"limit-{digest}"
    if not exe.exists():
        tmp = out_dir / f".limit-{digest}.{os.getpid()}"
        subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(src)], check=True)
        os.replace(tmp, exe)
    return exe


def run_limit(exe: Path, op: str, k: int, n: int) -> dict:
    p = subprocess.run([str(exe), op, str(k), str(n)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"limit {op} {k} {n} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout)


def run_kvmrig_side(op: str, k: int, n: int, backend: str = "auto") -> dict:
    p = subprocess.run([PY, str(HERE / "kvmrig_side.py"), op, str(k), str(n), "--backend", backend],
                       capture_output=True, text=True, timeout=600, env=ENV or None)
    if p.returncode != 0:
        raise RuntimeError(f"kvmrig_side {op} {k} {n} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def per_op(samples_k: list[int], samples_0: list[int], k: int) -> float:
    """Microseconds per operation: (median with K - median with 0) / K."""
    return (median(samples_k) - median(samples_0)) / k / 1000.0


def _rounds(p: Params, exe: Path | None, op: str, k: int, n: int) -> tuple[dict | None, dict]:
    """C and kvmrig samples for one op, in p.rounds alternating rounds (so that
    both sides see the same background load), each round n // rounds samples."""
    per_round = -(-n // p.rounds)
    acc = {"c": {"ns": [], "ns_0": []}, "kvmrig": {"ns": [], "ns_0": []}}
    for _ in range(p.rounds):
        for side in ("c", "kvmrig"):
            if side == "c" and exe is None:
                continue
            got = run_limit(exe, op, k, per_round) if side == "c" else run_kvmrig_side(op, k, per_round)
            acc[side]["ns"] += got["ns"]
            acc[side]["ns_0"] += got.get("ns_0", [])
            acc[side]["exits"] = got["exits"]
            if "phases_median_ns" in got:
                acc[side].setdefault("phases", []).append(got["phases_median_ns"])
    return (acc["c"] if exe is not None else None), acc["kvmrig"]


def op_rows(p: Params, exe: Path | None) -> list[Row]:
    rows = []
    # Lifecycle: one trivial rig from nothing to nothing.
    log("lifecycle")
    c, kv = _rounds(p, exe, "lifecycle", 0, p.n_lifecycle)
    phases = {}
    if c and c.get("phases"):
        phases = {name: _round(median([ph[name] for ph in c["phases"]]) / 1000) for name in c["phases"][0]}
    rows.append(Row(
        "lifecycle", "us", median(c["ns"]) / 1000 if c else None, median(kv["ns"]) / 1000, len(kv["ns"]),
        "one trivial rig (real mode, `hlt` at 0x1000, 32 KiB RAM): C = create VM, slot, TSS/identity map, vCPU, "
        "CPUID, sregs, regs, timer, RUN to HLT, GET_REGS/SREGS, teardown; kvmrig = runner.run_rig() "
        "(prepare + execute + result) on a loaded rig",
        target="<= 2x limit", detail={"limit_phases_us": phases}))
    if exe:
        log("lifecycle_reuse")
        reuse = run_limit(exe, "reuse", 0, p.n_lifecycle)
        rows.append(Row("lifecycle_reuse", "us", median(reuse["ns"]) / 1000, None, len(reuse["ns"]),
                        "the lifecycle rig on a VM + vCPU kept from the previous rig (C only: reset sregs, regs, "
                        "FPU, vcpu events, guest debug; zero RAM; run; read regs): the floor a per-worker VM pool "
                        "would reach; kvmrig creates and destroys a VM per rig"))
    for name, op, what in OP_ROWS:
        log(name)
        c, kv = _rounds(p, exe, op, p.k, p.n_op)
        limit = per_op(c["ns"], c["ns_0"], p.k) if c else None
        mine = per_op(kv["ns"], kv["ns_0"], p.k)
        note = f"{what}; (median of a K={p.k} rig - median of the K=0 rig, interleaved) / K"
        if op == "swbp":
            note += "; kvmrig's HLT fallback, as x86_probe picks on this KVM"
        rows.append(Row(name, "us", limit, mine, len(kv["ns"]), note, target="<= 2x limit", detail={
            "k": p.k,
            "limit_ms_k": _round(median(c["ns"]) / 1e6) if c else None,
            "limit_ms_0": _round(median(c["ns_0"]) / 1e6) if c else None,
            "kvmrig_ms_k": _round(median(kv["ns"]) / 1e6), "kvmrig_ms_0": _round(median(kv["ns_0"]) / 1e6),
            "kvm_exits_k": kv["exits"]}))
    if exe:
        costs = subprocess.run([str(exe), "ioctls", "0", "500"], capture_output=True, text=True, timeout=300)
        if costs.returncode == 0:
            rows[0].detail["ioctl_median_ns"] = json.loads(costs.stdout)["median_ns"]
    log("rig_load")
    ld = run_kvmrig_side("load", 0, p.n_lifecycle)
    rows.append(Row("rig_load", "us", None, median(ld["ns"]) / 1000, p.n_lifecycle,
                    "load_rig() of the trivial rig (YAML, schema, model): paid by the CLI's main process "
                    "per rig file, before any worker runs it"))
    for r in rows:
        if r.target and r.ratio is not None:
            r.met = r.ratio <= 2.0
    return rows


# The CLI --------------------------------------------------------------------------

def kvmrig_exe() -> list[str]:
    """The real console script (not a pyenv shim), else `python -m kvmrig`."""
    script = Path(sysconfig.get_path("scripts")) / "kvmrig"
    if script.exists():
        return [str(script)]
    return [PY, "-m", "kvmrig"]


def bench_env(bytecode: bool = True) -> dict[str, str]:
    """The environment for every kvmrig process the benchmark starts.

    bytecode=True: Python may cache compiled modules (as in any normal
    install), in a folder of the benchmark's cache, never in the source tree,
    even where PYTHONDONTWRITEBYTECODE=1 is set (it is, in this project's
    sandbox, which makes an editable kvmrig recompile every module at every
    start). bytecode=False: no cache at all, for the `cold` figures.
    """
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir() / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir() / "pycache-never-written")
    return env


ENV: dict[str, str] = {}


def timed(cmd: list[str], cwd: Path | None = None, ok=(0,), env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900,
                          env=env or ENV or None)
    dt = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return dt


def cli_version_row(p: Params) -> Row:
    log("cli_version")
    exe = kvmrig_exe()
    timed(exe + ["--version"])  # writes the bytecode cache
    samples, floor, cold = [], [], []
    for _ in range(p.n_version):  # interleaved, so that all three see the same load
        samples.append(timed(exe + ["--version"]) * 1000)
        floor.append(timed([PY, "-c", "pass"]) * 1000)
        cold.append(timed(exe + ["--version"], env=bench_env(bytecode=False)) * 1000)
    shim = shutil.which("kvmrig")
    shim_ms = None
    if shim and "shims" in shim:
        shim_ms = median([timed([shim, "--version"]) * 1000 for _ in range(min(5, p.n_version))])
    v = median(samples)
    note = (f"`{' '.join(Path(x).name for x in exe)} --version` (the console script), wall clock, bytecode "
            f"cached; `python -c pass` takes {median(floor):.1f} ms here; without a bytecode cache "
            f"(PYTHONDONTWRITEBYTECODE=1, as this sandbox sets) {median(cold):.1f} ms")
    if shim_ms is not None:
        note += f"; through the pyenv shim on PATH {shim_ms:.0f} ms (the shim's cost, not kvmrig's)"
    return Row("cli_version", "ms", None, v, p.n_version, note, target="< 150 ms", met=v < 150,
               detail={"python_floor_ms": _round(median(floor)), "no_bytecode_cache_ms": _round(median(cold)),
                       "pyenv_shim_ms": _round(shim_ms)})


# QEMU (the alternative) and the suites, measured in alternating rounds -----------------

def qemu_guest(tmp: Path) -> Path:
    """A 64 KiB BIOS image: at the reset vector, `mov $0x21,%al; out %al,$0xf4; hlt`."""
    img = bytearray(b"\xf4" * 0x10000)
    img[0xFFF0:0xFFF5] = bytes([0xB0, QEMU_EXIT, 0xE6, 0xF4, 0xF4])
    path = tmp / "qemu-guest.bin"
    path.write_bytes(bytes(img))
    return path


def qemu_cmd(qemu: str, machine: str, accel: str, bios: Path) -> list[str]:
    return [qemu, "-M", machine, "-accel", accel, "-nodefaults", "-nographic", "-no-user-config",
            "-display", "none", "-m", "16M", "-bios", str(bios),
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


QEMU_OK = ((QEMU_EXIT << 1) | 1,)


def qemu_two_lanes(cmd: list[str], count: int) -> float:
    """Seconds per test when `count` QEMU runs go 2 at a time (a -j 2 runner)."""
    t0 = time.perf_counter()
    pending, running = count, []
    while pending or running:
        while pending and len(running) < 2:
            pending -= 1
            running.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        running[0].wait()
        done = running.pop(0)
        if done.returncode not in QEMU_OK:
            raise RuntimeError(f"qemu exited {done.returncode}")
    return (time.perf_counter() - t0) / count


def c_floor(exe: Path, count: int, jobs: int) -> float:
    """Seconds for `count` lifecycle rigs in C over `jobs` processes at once:
    the kernel's floor for a suite, with no Python and no rig files."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([str(exe), "lifecycle", "0", str(count // jobs)], stdout=subprocess.DEVNULL)
             for _ in range(jobs)]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"limit lifecycle exited {proc.returncode}")
    return time.perf_counter() - t0


def suites_and_qemu(p: Params, tmp: Path, want_suites: bool, want_qemu: bool,
                    exe: Path | None = None) -> list[Row]:
    """The suite rows and the qemu rows. QEMU per-test samples and kvmrig suite
    samples are taken in p.rounds alternating rounds, so a change of machine
    load during the run hits both sides alike."""
    limit_exe = exe
    exe = kvmrig_exe()
    qemu = shutil.which("qemu-system-x86_64") if (want_qemu or want_suites) else None
    configs: list[tuple[str, str, list[str]]] = []
    broken: list[Row] = []
    if qemu:
        bios = qemu_guest(tmp)
        for machine, accel in QEMU_CONFIGS:
            cmd = qemu_cmd(qemu, machine, accel, bios)
            try:
                timed(cmd, ok=QEMU_OK)
                configs.append((machine, accel, cmd))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                broken.append(Row(f"qemu_{accel}_{machine}", "ms", None, None, 0,
                                  f"does not run here: {str(e)[-300:]}", ratio_kind="limit/kvmrig"))
    kvm_configs = [c for c in configs if c[1] == "kvm"]
    folders = {count: rigs.write_suite(tmp / f"suite-{count}", count) for count in {c for c, _ in SUITES}}
    work = tmp / "cwd"  # the default --junit (reports/junit.xml) lands here, not in the project
    work.mkdir(exist_ok=True)
    if want_suites:
        timed(exe + ["run", "-j", "1", str(folders[1])], cwd=work)  # bytecode and page cache
        for folder in folders.values():   # the load cache (~/.cache/kvmrig/rigs), as after any earlier run
            timed(exe + ["run", "-j", "2", str(folder)], cwd=work)
    q_samples: dict[str, list[float]] = {f"{m}/{a}": [] for m, a, _ in configs}
    j2_samples: list[float] = []
    s_samples: dict[tuple[int, int], list[float]] = {key: [] for key in SUITES}
    floor: dict[int, list[float]] = {1: [], 2: []}
    noreuse: list[float] = []
    nocache: list[float] = []
    n_of = {1: p.n_suite_1, 100: p.n_suite_100, 1000: p.n_suite_1000}
    for rnd in range(p.rounds):
        for machine, accel, cmd in configs:
            log(f"round {rnd + 1}/{p.rounds}: qemu {machine} {accel}")
            q_samples[f"{machine}/{accel}"] += [timed(cmd, ok=QEMU_OK) * 1000
                                                for _ in range(-(-p.n_qemu // p.rounds))]
        if kvm_configs:
            fastest = min(kvm_configs, key=lambda c: median(q_samples[f"{c[0]}/{c[1]}"]))
            j2_samples.append(qemu_two_lanes(fastest[2], max(2, p.qemu_j2_batch // p.rounds)) * 1000)
        if want_suites:
            for count, jobs in SUITES:
                log(f"round {rnd + 1}/{p.rounds}: suite_{count}_j{jobs}")
                s_samples[(count, jobs)] += [timed(exe + ["run", "-j", str(jobs), str(folders[count])], cwd=work)
                                             for _ in range(-(-n_of[count] // p.rounds))]
            log(f"round {rnd + 1}/{p.rounds}: suite_1000_j2 --no-reuse")
            noreuse += [timed(exe + ["run", "-j", "2", "--no-reuse", str(folders[1000])], cwd=work)
                        for _ in range(-(-n_of[1000] // p.rounds))]
            log(f"round {rnd + 1}/{p.rounds}: suite_1000_j2 --no-cache")
            nocache += [timed(exe + ["run", "-j", "2", "--no-cache", str(folders[1000])], cwd=work)
                        for _ in range(-(-n_of[1000] // p.rounds))]
            if limit_exe is not None:
                log(f"round {rnd + 1}/{p.rounds}: C floor for 1000 rigs")
                for jobs in floor:
                    floor[jobs].append(c_floor(limit_exe, 1000, jobs))
    rows: list[Row] = []
    kvmrig_per_test = median(s_samples[(1000, 1)]) if s_samples[(1000, 1)] else None  # s/1000 = ms per rig
    qemu_ms = {key: median(v) for key, v in q_samples.items()}
    best = min(((qemu_ms[f"{m}/{a}"], m) for m, a, _ in kvm_configs), default=None)
    per_test: dict[int, tuple[float, str]] = {}
    if best is not None:
        per_test[1] = (best[0], f"qemu -M {best[1]} -accel kvm, {best[0]:.1f} ms per test, one at a time")
        j2 = median(j2_samples)
        per_test[2] = (j2, f"qemu -M {best[1]} -accel kvm, 2 at a time: {j2:.1f} ms per test")
    if want_suites:
        junit_written = (work / "reports" / "junit.xml").exists()
        for count, jobs in SUITES:
            v = median(s_samples[(count, jobs)])
            limit, how = None, "QEMU not available"
            if jobs in per_test:
                limit, how = per_test[jobs][0] * count / 1000, per_test[jobs][1]
            row = Row(f"suite_{count}_j{jobs}", "s", limit, v, len(s_samples[(count, jobs)]),
                      f"`kvmrig run -j {jobs}` on {count} trivial rig file(s), wall clock from exec to exit, default "
                      f"JUnit report{' (written)' if junit_written else ''}; limit = {count} x QEMU per test "
                      f"({how}); ratio = how many times faster than QEMU", ratio_kind="limit/kvmrig",
                      detail={"per_rig_ms": _round(v * 1000 / count)})
            if (count, jobs) == (1000, 2):
                row.target = "<= 0.5 s and >= 50x QEMU (issue 15)"
                row.met = v <= 0.5 and row.ratio is not None and row.ratio >= 50
            elif (count, jobs) == (1000, 1) and row.ratio is not None:
                row.target, row.met = ">= 20x QEMU", row.ratio >= 20
            rows.append(row)
        if noreuse and s_samples[(1000, 2)]:
            rows.append(Row("suite_1000_j2_noreuse", "s", median(noreuse), median(s_samples[(1000, 2)]), len(noreuse),
                            "limit = `kvmrig run -j 2 --no-reuse` on the 1000 trivial rigs (a fresh VM per rig); "
                            "kvmrig = suite_1000_j2 (VMs reused per worker); ratio = reused/fresh"))
        if nocache and s_samples[(1000, 2)]:
            rows.append(Row("suite_1000_j2_nocache", "s", median(nocache), median(s_samples[(1000, 2)]), len(nocache),
                            "limit = `kvmrig run -j 2 --no-cache` on the 1000 trivial rigs (every file parsed and "
                            "checked again); kvmrig = suite_1000_j2 (rigs from the load cache); ratio = cached/uncached"))
        for jobs, samples in floor.items():
            if samples and s_samples[(1000, jobs)]:
                rows.append(Row(f"floor_1000_j{jobs}", "s", median(samples), median(s_samples[(1000, jobs)]),
                                len(samples),
                                f"limit = 1000 lifecycle rigs in C (bench/limit.c) over {jobs} process(es) at once: "
                                f"the kernel's floor for suite_1000_j{jobs}; kvmrig = suite_1000_j{jobs}; ratio = "
                                "kvmrig/limit"))
    if want_qemu:
        if not qemu:
            rows.append(Row("qemu", "ms", None, None, 0,
                            "qemu-system-x86_64 is not installed (scripts/setup-bench.sh installs it)"))
        for machine, accel, _cmd in configs:
            ms = qemu_ms[f"{machine}/{accel}"]
            row = Row(f"qemu_{accel}_{machine}", "ms", ms, kvmrig_per_test, len(q_samples[f"{machine}/{accel}"]),
                      f"`qemu-system-x86_64 -M {machine} -accel {accel} -bios guest -device isa-debug-exit` per "
                      "test, one process per test; the guest writes isa-debug-exit at the reset vector (exit "
                      "status 67 checked); kvmrig = ms per rig in `kvmrig run -j 1` of 1000 rigs; ratio = how "
                      "many times faster kvmrig is", ratio_kind="limit/kvmrig")
            if row.ratio is not None:
                row.target, row.met = ">= 20x QEMU", row.ratio >= 20
            rows.append(row)
        if j2_samples:
            rows.append(Row("qemu_kvm_j2", "ms", median(j2_samples),
                            median(s_samples[(1000, 2)]) if s_samples[(1000, 2)] else None, len(j2_samples),
                            f"{per_test[2][1]} (batches of {max(2, p.qemu_j2_batch // p.rounds)}); kvmrig = ms per "
                            "rig in `kvmrig run -j 2` of 1000 rigs; ratio = how many times faster kvmrig is",
                            ratio_kind="limit/kvmrig"))
        rows += broken
    return rows


def emu_rows(p: Params, tmp: Path, qemu_tcg_ms: float | None, kvm_rows: list[Row]) -> list[Row]:
    """kvmrig's emulator backend (`--backend emu`), where this kvmrig has one."""
    help_text = subprocess.run(kvmrig_exe() + ["run", "--help"], capture_output=True, text=True, env=ENV).stdout
    names = ("emu_lifecycle", "emu_pio_exit", "emu_suite_100_j1", "emu_suite_1000_j2")
    if "--backend" not in help_text or "emu" not in help_text:
        return [Row(name, "us" if "suite" not in name else "s", None, None, 0,
                    "not available: `kvmrig run --help` has no --backend emu", ratio_kind="limit/kvmrig")
                for name in names]
    rows: list[Row] = []
    kvm = {r.name: r for r in kvm_rows}
    work = tmp / "cwd"
    work.mkdir(exist_ok=True)
    try:
        log("emu_lifecycle")
        life = run_kvmrig_side("lifecycle", 0, p.n_lifecycle, backend="emu")
        kv_life = kvm.get("lifecycle")
        rows.append(Row("emu_lifecycle", "us", None, median(life["ns"]) / 1000, len(life["ns"]),
                        "the lifecycle rig through runner.run_rig(rig, 'emu') (unicorn)"
                        + (f"; on KVM it takes {kv_life.kvmrig:.0f} us" if kv_life and kv_life.kvmrig else "")))
        log("emu_pio_exit")
        kk = run_kvmrig_side("pio", p.k, p.n_op, backend="emu")
        k0 = run_kvmrig_side("pio", 0, p.n_op, backend="emu")
        kv_pio = kvm.get("pio_exit")
        rows.append(Row("emu_pio_exit", "us", None, per_op(kk["ns"], k0["ns"], p.k), len(kk["ns"]),
                        f"one `out` to an unclaimed port on the emulator, (K={p.k} - K=0) / K"
                        + (f"; on KVM it takes {kv_pio.kvmrig:.1f} us" if kv_pio and kv_pio.kvmrig else "")))
    except RuntimeError as e:
        rows.append(Row("emu_lifecycle", "us", None, None, 0, f"the emulator failed here: {str(e)[-300:]}"))
    for count, jobs in ((100, 1), (1000, 2)):
        name = f"emu_suite_{count}_j{jobs}"
        folder = tmp / f"suite-{count}"
        if not folder.exists():
            rigs.write_suite(folder, count)
        cmd = kvmrig_exe() + ["run", "-j", str(jobs), "--backend", "emu", str(folder)]
        log(name)
        try:
            probe = subprocess.run(kvmrig_exe() + ["run", "-j", "1", "--junit", "", "--backend", "emu",
                                                   str(sorted(folder.glob("*.yaml"))[0])],
                                   capture_output=True, text=True, env=ENV, cwd=work, timeout=300)
            if probe.returncode != 0 or "(emu" not in probe.stdout:
                raise RuntimeError(f"exit {probe.returncode}: {(probe.stdout + probe.stderr)[-300:]}")
            n = p.n_suite_100 if count == 100 else p.n_suite_1000
            v = median([timed(cmd, cwd=work) for _ in range(n)])
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rows.append(Row(name, "s", None, None, 0, f"`--backend emu` failed here: {str(e)[-300:]}",
                            ratio_kind="limit/kvmrig"))
            continue
        limit = qemu_tcg_ms * count / 1000 / jobs if qemu_tcg_ms else None
        rows.append(Row(name, "s", limit, v, n,
                        f"`kvmrig run -j {jobs} --backend emu` on {count} trivial rigs (the rigs ran on emu: "
                        f"checked); limit = {count} x QEMU TCG per test ({qemu_tcg_ms or 0:.1f} ms, its fastest "
                        "machine)" + (" / 2 lanes (perfect scaling assumed, which flatters QEMU)" if jobs == 2 else "")
                        + "; ratio = how many times faster than QEMU TCG", ratio_kind="limit/kvmrig",
                        detail={"per_rig_ms": _round(v * 1000 / count)}))
    return rows


# Coverage --------------------------------------------------------------------------

COVERAGE_TARGETS = {"kvm": 3.0, "emu": 1.5}   # issue 16: with / without coverage, at most


def coverage_rows(p: Params) -> list[Row]:
    """The C example suite (rigs/x86/cov-*.yaml) in-process, with coverage
    against without (bench/coverage_side.py), on each backend."""
    rows = []
    for backend in ("emu", "kvm"):
        name = f"coverage_overhead_{backend}"
        log(name)
        proc = subprocess.run([PY, str(HERE / "coverage_side.py"), backend, str(p.n_coverage)],
                              capture_output=True, text=True, timeout=900, env=ENV or None)
        if proc.returncode != 0:
            rows.append(Row(name, "ms", None, None, 0, f"failed here: {(proc.stdout + proc.stderr)[-300:]}"))
            continue
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        plain, cov = median(got["plain_ns"]) / 1e6, median(got["coverage_ns"]) / 1e6
        target = COVERAGE_TARGETS[backend]
        how = ("block hooks (unicorn UC_HOOK_BLOCK)" if backend == "emu" else
               "one-shot breakpoints (planted HLT on kvm_pvm) at every line-table row and jump target, "
               "lifted at their first hit")
        rows.append(Row(name, "ms", plain, cov, len(got["coverage_ns"]),
                        f"the {got['rigs']} C example rigs (rigs/x86/cov-*.yaml) on {backend}, one suite "
                        f"in-process: limit = without coverage (and without their executed/not_executed), "
                        f"kvmrig = with coverage by {how}; exits {got['exits_plain']} -> {got['exits_coverage']}",
                        target=f"<= {target:g}x", met=(cov / plain <= target) if plain else None,
                        detail={"cold_first_suite_ms": _round(got["cold_coverage_ns"] / 1e6),
                                "min_plain_ms": _round(min(got["plain_ns"]) / 1e6),
                                "min_coverage_ms": _round(min(got["coverage_ns"]) / 1e6),
                                "exits_plain": got["exits_plain"], "exits_coverage": got["exits_coverage"]}))
    return rows


# Peak memory ---------------------------------------------------------------------

def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        try:
            kids = Path(f"/proc/{q}/task/{q}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.append(int(k))
            todo.append(int(k))
    return out


def _hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


RSS_HELPER = r"""
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_row(p: Params, tmp: Path) -> Row:
    """max RSS over kvmrig's processes for `kvmrig run -j 1` of 100 rigs (getrusage
    RUSAGE_CHILDREN in a fresh helper), and per process from /proc VmHWM sampling."""
    log("peak_rss_mib")
    folder = tmp / "suite-100"
    if not folder.exists():
        rigs.write_suite(folder, 100)
    work = tmp / "cwd"
    work.mkdir(exist_ok=True)
    peaks, mains, workers = [], [], []
    for _ in range(p.n_rss):
        proc = subprocess.Popen([PY, "-c", RSS_HELPER, *kvmrig_exe(), "run", "-j", "1", str(folder)],
                                cwd=work, stdout=subprocess.PIPE, text=True, env=ENV or None)
        seen: dict[int, int] = {}
        main_pids: set[int] = set()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    main_pids.update(int(x) for x in
                                     Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
                except OSError:
                    pass
                for pid in _descendants(proc.pid):
                    hwm = _hwm_kib(pid)
                    if hwm is not None:
                        seen[pid] = max(seen.get(pid, 0), hwm)
                time.sleep(0.005)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        out, _ = proc.communicate(timeout=600)
        stop.set()
        t.join()
        rc, maxrss = (int(x) for x in out.split())
        if rc != 0:
            raise RuntimeError(f"kvmrig run for the RSS measurement exited {rc}")
        peaks.append(maxrss / 1024)
        # The kvmrig main process is the helper's child; workers are its children.
        main_hwm = [kib for pid, kib in seen.items() if pid in main_pids]
        worker_hwm = [kib for pid, kib in seen.items() if pid not in main_pids]
        if main_hwm:
            mains.append(max(main_hwm) / 1024)
        if worker_hwm:
            workers.append(max(worker_hwm) / 1024)
    v = median(peaks)
    main_m = median(mains) if mains else None
    work_m = median(workers) if workers else None
    note = ("max RSS over kvmrig's processes (getrusage RUSAGE_CHILDREN) for `kvmrig run -j 1` of 100 trivial rigs"
            + (f"; sampled VmHWM: main {main_m:.1f} MiB, worker {work_m:.1f} MiB (a forked worker's RSS "
               "counts pages it shares with the main process)" if main_m and work_m else ""))
    return Row("peak_rss_mib", "MiB", None, v, p.n_rss, note, target="< 60 MiB per worker",
               met=(work_m if work_m is not None else v) < 60,
               detail={"main_mib": _round(main_m), "worker_mib": _round(work_m)})


# Output ------------------------------------------------------------------------------

def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def table(rows: list[Row]) -> str:
    head = ("name", "unit", "limit", "kvmrig", "ratio", "n", "target", "met")
    body = []
    for r in rows:
        ratio = "-" if r.ratio is None else (f"{r.ratio:.2f}x" if r.ratio_kind == "kvmrig/limit"
                                             else f"{r.ratio:.1f}x faster")
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        body.append((r.name, r.unit, fmt(r.limit), fmt(r.kvmrig), ratio, str(r.n), r.target or "-", met))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i in (0, 1, 6) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [line(head), line(tuple("-" * w for w in widths))]
    out += [line(b) for b in body]
    out.append("")
    out.append("ratio: per-operation and floor_* rows kvmrig/limit (limit = bench/limit.c, the same ioctls from C); "
               "suite_*, qemu_* and emu_suite_* rows QEMU/kvmrig (how many times faster kvmrig is; in qemu_* rows "
               "the kvmrig column is ms per rig in suite_1000_j1, or _j2 for qemu_kvm_j2).")
    out.append("notes:")
    out += [f"  {r.name}: {r.note}" for r in rows]
    return "\n".join(out)


class LoadWatch:
    """The machine's 1-minute load average, sampled every 5 s during the run:
    other work on the same cores slows both sides, and the report says so."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(5)

    def __enter__(self) -> "LoadWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def fork_row(p: Params, tmp: Path) -> Row:
    """fork_100: 100 children, each typing one command, from one booted
    U-Boot (rigs/firmware/u-boot/boot.yaml) with -j 2, against booting U-Boot
    for each (100 x the parent's own time)."""
    children = 100 if p.n_lifecycle > 1 else 4
    folder = tmp / "fork"
    folder.mkdir(exist_ok=True)
    boot = (ROOT / "rigs" / "firmware" / "u-boot" / "boot.yaml").read_text()
    dtb = ROOT / "rigs" / "firmware" / "u-boot-arm64.dtb"
    (folder / "boot.yaml").write_text(boot.replace("file: ../u-boot-arm64.dtb", f"file: {dtb}"))
    for i in range(children):
        (folder / f"child-{i:03d}.yaml").write_text(
            f"kvmrig: 1\nname: child-{i:03d}\narch: arm64\nfrom: boot.yaml#at-prompt\n"
            f'input: "echo child {i}\\n"\nexpect:\n  exit: idle\n  console: {{contains: "child {i}"}}\n')
    report = tmp / "fork.json"
    samples, parent = [], []
    for _ in range(max(1, p.rounds)):
        samples.append(timed(kvmrig_exe() + ["run", "-j", "2", "--json", str(report), "--junit", "",
                                             str(folder)], cwd=tmp))
        doc = json.loads(report.read_text())
        results = doc["rigs"]
        statuses = {r.get("status") for r in results}
        if statuses != {"passed"} or len(results) != children + 1:
            raise RuntimeError(f"fork: the U-Boot children did not all pass: {statuses}")
        parent += [r["duration"] for r in results if r["name"] == "u-boot-boot-to-prompt"]
    wall, boot_s = median(samples), median(parent)
    backend = results[0].get("backend", "?")
    row = Row(f"fork_{children}", "s", boot_s * children, wall, len(samples),
              f"`kvmrig run -j 2` of U-Boot booted once to its prompt (snapshot point at-prompt) and {children} "
              f"children each typing `echo` from there, wall clock incl. the boot ({boot_s:.2f} s) on {backend}; "
              f"limit = {children} x that boot, as if every test booted U-Boot; ratio = how many times faster",
              ratio_kind="limit/kvmrig", target="<= 2 s with -j 2",
              detail={"boot_s": _round(boot_s), "children_s": _round(wall - boot_s), "backend": backend})
    row.met = wall <= 2.0
    return row


def reuse_rows(p: Params, exe: Path | None, tmp: Path) -> list[Row]:
    """VM reuse (machine/reuse.py): the reset between two rigs against the
    same ioctls and copies in C, the re-mapping alternative, and a worker's
    memory and fds over 10,000 reused rigs."""
    rows: list[Row] = []
    n = max(p.n_lifecycle * 3, 30)
    log("reset_reuse")
    c, kv = None, {"ns": [], "run_ns": []}
    per_round = -(-n // p.rounds)
    for _ in range(p.rounds):   # C and kvmrig alternate, so that both see the same background load
        if exe:
            got = run_limit(exe, "reset", 0, per_round)
            c = {**got, "ns": (c["ns"] if c else []) + got["ns"]}
        got = run_kvmrig_side("reset", 0, per_round)
        kv = {**got, "ns": kv["ns"] + got["ns"], "run_ns": kv["run_ns"] + got["run_ns"]}
    row = Row("reset_reuse", "us", median(c["ns"]) / 1000 if c else None, median(kv["ns"]) / 1000, len(kv["ns"]),
              "reset of a reused KVM VM after a rig that wrote 16 pages (real mode, 128 KiB RAM): vCPU back to "
              "its created state (regs/sregs/events staged in kvm_run, XCRS, XSAVE, every settable MSR, "
              "DEBUGREGS), KVM_GET_DIRTY_LOG, the dirty pages and the loader's page zeroed; limit = the same "
              "ioctls and memsets in the same order in C (bench/limit.c reset), the two in alternating rounds",
              target="<= 100 us and <= 2x limit",
              detail={"c_dirty_pages": c.get("dirty_pages") if c else None, "c_msrs": c.get("msrs") if c else None,
                      "kvmrig_rig_with_reset_us": _round(median(kv["run_ns"]) / 1000)})
    row.met = row.kvmrig is not None and row.kvmrig <= 100 and (row.ratio is None or row.ratio <= 2.0)
    rows.append(row)
    log("reset_remap")
    remap = run_kvmrig_side("reset-remap", 0, n)
    rows.append(Row("reset_remap", "us", median(kv["run_ns"]) / 1000, median(remap["run_ns"]) / 1000,
                    len(remap["ns"]),
                    "the other memory reset: every region given fresh zero pages (madvise MADV_DONTNEED) instead "
                    "of zeroing the dirty-logged pages; compared as a whole reused rig (reset + run), since the "
                    "cost moves into page faults of the next rig; limit = the same with the dirty-log reset "
                    "(kvmrig's choice); ratio > 1: the dirty log is cheaper",
                    detail={"reset_only_us": _round(median(remap["ns"]) / 1000)}))
    rows.append(fork_row(p, tmp))
    count = 10000 if p.n_lifecycle > 1 else 300   # TINY: the smoke test's row only
    log(f"growth_{count}")
    g = run_kvmrig_side("growth", 0, count)
    grow = (g["rss_kib_end"] - g["rss_kib_start"]) / 1024
    row = Row(f"growth_{count}", "MiB", None, grow, 1,
              f"RSS growth of one worker over {count:,} reused trivial rigs (after 100 warm-up): RSS "
              f"{g['rss_kib_start'] / 1024:.1f} -> {g['rss_kib_end'] / 1024:.1f} MiB, open fds {g['fds_start']} -> "
              f"{g['fds_end']}; {g['created']} VM created, {g['reused']} reuses, {g['seconds']:.1f} s",
              target="no growth; < 60 MiB + guest RAM", detail=g)
    row.met = grow <= 1.0 and g["fds_end"] == g["fds_start"] and g["rss_kib_end"] < 60 * 1024
    rows.append(row)
    return rows


def arm64_reset_row(p: Params) -> Row | None:
    """arm64 VM reuse in the nested arm64 lane (bench/arm64_reset.py inside
    qemu-system-aarch64 TCG): informational, every ioctl there is emulated."""
    from kvmrig.invm import qemu as invm_qemu
    if shutil.which(os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU) is None:
        log("reset_reuse_arm64: no qemu-system-aarch64 (scripts/setup-arm64-lane.sh)")
        return None
    n = 50 if p.rounds > 3 else 20
    log("reset_reuse_arm64 (boots the arm64 lane)")
    r = invm_qemu.run_in_vm(f"python3 arm64_reset.py {n}", files=[("arm64_reset.py", str(HERE / "arm64_reset.py"))],
                            timeout=600)
    line = next((x for x in r.output.splitlines() if x.startswith("ARM64RESET ")), None)
    if line is None:
        log(f"reset_reuse_arm64 failed: {r.error or r.output[-2000:]}")
        return None
    m = json.loads(line.split(" ", 1)[1])
    return Row("reset_reuse_arm64", "us", m["new_vm_us"], m["reset_us"], m["n"],
               f"arm64 KVM in the nested lane (QEMU TCG: informational): reset of a reused VM after a guest that "
               f"wrote {m['dirty_pages']} pages and two system registers (KVM_ARM_VCPU_INIT again, SP_EL1/ELR_EL1/"
               f"SPSR_EL1/timer CVALs and the counter written back, KVM_GET_DIRTY_LOG, pages zeroed); limit = a new "
               f"VM with its vCPU; writing all {m['registers']} guest-writable registers instead of the re-init "
               f"took {m['write_all_us']:.0f} us", detail=m)


GROUPS = ("ops", "cli", "suite", "qemu", "rss", "emu", "coverage", "reuse", "kut", "arm64")
# The smallest run that still makes every selected row (tests/test_bench_smoke.py).
TINY = Params(k=3, n_op=1, n_lifecycle=1, n_suite_1000=1, n_suite_100=1, n_suite_1=1,
              n_version=1, n_qemu=1, qemu_j2_batch=2, n_rss=1, rounds=1, n_coverage=1)


def bench(p: Params, groups: set[str], out: Path, quick: bool = False) -> dict:
    """Measure the selected groups, write the JSON report to `out`, return it."""
    global ENV
    ENV = bench_env()
    started = time.monotonic()
    machine = machine_info()
    machine["bytecode_cache"] = ENV["PYTHONPYCACHEPREFIX"]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kvmrig-bench-") as tmpname, LoadWatch() as load:
        tmp = Path(tmpname)
        exe: Path | None = None
        if "ops" in groups:
            try:
                exe = build_limit()
            except (RuntimeError, subprocess.CalledProcessError) as e:
                log(f"no C limit: {e}")
                exe = None
            rows += op_rows(p, exe)
        if "cli" in groups:
            rows.append(cli_version_row(p))
        qrows: list[Row] = []
        if "suite" in groups or "qemu" in groups:
            if "ops" not in groups:
                try:
                    exe = build_limit()
                except (RuntimeError, subprocess.CalledProcessError):
                    exe = None
            srows = suites_and_qemu(p, tmp, "suite" in groups, "qemu" in groups, exe)
            rows += srows
            qrows = [r for r in srows if r.name.startswith("qemu")]
        if "rss" in groups:
            rows.append(peak_rss_row(p, tmp))
        if "reuse" in groups:
            if exe is None:
                try:
                    exe = build_limit()
                except (RuntimeError, subprocess.CalledProcessError):
                    exe = None
            rows += reuse_rows(p, exe, tmp)
        if "emu" in groups:
            tcg = [r.limit for r in qrows if r.name.startswith("qemu_tcg") and r.limit]
            rows += emu_rows(p, tmp, min(tcg) if tcg else None, rows)
        if "coverage" in groups:
            rows += coverage_rows(p)
        if "kut" in groups:
            rows += kut_rows(Row, rounds=1 if p.rounds <= 3 else 3)
        if "arm64" in groups:
            row = arm64_reset_row(p)
            rows += [row] if row is not None else []
    machine["loadavg_1min"] = {"min": min(load.samples), "median": median(load.samples), "max": max(load.samples)}
    report = {"machine": machine, "params": {"quick": quick, **p.__dict__},
              "seconds": round(time.monotonic() - started, 1), "rows": [r.as_json() for r in rows]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["_rows"] = rows
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (under 5 minutes on 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench.json"), help="JSON report (default: %(default)s)")
    ap.add_argument("--only", default="", help=f"comma-separated groups: {','.join(GROUPS)} (default: all)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait up to SECONDS for the 1-minute load average to drop below 0.5")
    args = ap.parse_args(argv)
    groups = set(filter(None, args.only.split(","))) or set(GROUPS)
    unknown = groups - set(GROUPS)
    if unknown:
        ap.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    if not os.path.exists("/dev/kvm"):
        print("bench: /dev/kvm is absent: nothing to measure", file=sys.stderr)
        return 2
    if args.wait_idle > 0:
        deadline = time.monotonic() + args.wait_idle
        while os.getloadavg()[0] >= 0.5 and time.monotonic() < deadline:
            log(f"waiting for an idle machine: load average {os.getloadavg()[0]:.2f}")
            time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
    out = Path(args.out)
    report = bench(QUICK if args.quick else FULL, groups, out, args.quick)
    machine, rows = report["machine"], report.pop("_rows")
    la = machine["loadavg_1min"]
    print(f"machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, kernel {machine.get('kernel')}, "
          f"{machine.get('kvm_module')}, Python {machine.get('python')}, kvmrig {machine.get('kvmrig_version')}"
          f" ({machine.get('kvmrig_commit')}{' + uncommitted changes' if machine.get('kvmrig_tree_dirty') else ''})")
    print(f"load average during the run: {la['min']:.2f} .. {la['max']:.2f} (median {la['median']:.2f})"
          + ("  -- other work shared these cores: absolute figures are inflated, ratios less so"
             if la["max"] > 0.5 else ""))
    print(table(rows))
    print(f"\nwrote {out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
