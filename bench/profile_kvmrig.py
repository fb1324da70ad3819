"""Where kvmrig's time goes: the profiles behind bench/README.md.

    python bench/profile_kvmrig.py imports            # -X importtime: `kvmrig --version` and `kvmrig run`
    python bench/profile_kvmrig.py cli COUNT JOBS     # cProfile of `kvmrig run` (main process and each worker)
    python bench/profile_kvmrig.py op OP K [N]        # cProfile of N runs of one benchmark rig (bench/rigs.py)
    python bench/profile_kvmrig.py timeline COUNT     # wall-clock phases of `kvmrig run -j 1` on COUNT rigs
    python bench/profile_kvmrig.py micro [N]          # cost of single pieces of the per-exit path
    python bench/profile_kvmrig.py ioctls OP K        # ioctls kvmrig makes for one benchmark rig, by name
    python bench/profile_kvmrig.py phases [N]         # wall-clock phases of run_rig() on the trivial rig

Profiles are printed (top functions by own and cumulative time) and kept as
.prof files in a temp folder whose name is printed, for snakeviz/pstats.
cProfile slows Python code down (about 2x on call-heavy code), so read its
numbers as shares, and the benchmark's as absolute costs.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rigs  # noqa: E402


def show(path: str, title: str, top: int = 25) -> None:
    print(f"\n=== {title} ({path})")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(path, stream=out).strip_dirs().sort_stats(key).print_stats(top)
        text = out.getvalue()
        start = text.find("   ncalls")
        print(f"--- by {key}")
        print(text[start:].rstrip())


def imports() -> None:
    script = Path(sysconfig.get_path("scripts")) / "kvmrig"
    exe = [str(script)] if script.exists() else ["-m", "kvmrig"]
    with tempfile.TemporaryDirectory() as tmp:
        rig = rigs.write_rig(Path(tmp), "lifecycle")
        for args in (["--version"], ["run", "-j", "1", "--junit", "", str(rig)]):
            p = subprocess.run([sys.executable, "-X", "importtime", *exe, *args], capture_output=True, text=True)
            rows = []
            for line in p.stderr.splitlines():
                m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
                if m:
                    rows.append((int(m.group(2)), int(m.group(1)), len(m.group(3)), m.group(4)))
            total = sum(c for c, _s, depth, _n in rows if depth == 1)
            print(f"\n=== imports of `kvmrig {' '.join(args[:1])}`: {total / 1000:.1f} ms in top-level imports "
                  "(the main process only); biggest cumulative:")
            for cum, self_us, depth, name in sorted(rows, reverse=True)[:25]:
                print(f"  {cum / 1000:7.1f} ms cumulative {self_us / 1000:6.1f} ms self  {'  ' * (depth - 1)}{name}")


def cli(count: int, jobs: int) -> None:
    """`kvmrig run -j JOBS` on COUNT trivial rigs, in this process, under cProfile;
    each worker profiles itself (runner._worker wrapped before the fork)."""
    import kvmrig.runner as runner
    from kvmrig import cli as cli_mod

    out = Path(tempfile.mkdtemp(prefix="kvmrig-prof-"))
    folder = rigs.write_suite(out / "rigs", count)
    original = runner._worker

    def profiled_worker(*args, **kwargs):
        prof = cProfile.Profile()
        prof.enable()
        try:
            original(*args, **kwargs)
        finally:
            prof.disable()
            prof.dump_stats(str(out / f"worker-{os.getpid()}.prof"))

    runner._worker = profiled_worker
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    devnull = open(os.devnull, "w")
    saved, sys.stdout = sys.stdout, devnull
    try:
        rc = cli_mod.main(["run", "-j", str(jobs), "--junit", str(out / "junit.xml"), str(folder)])
    finally:
        sys.stdout = saved
        prof.disable()
    wall = time.perf_counter() - t0
    prof.dump_stats(str(out / "main.prof"))
    print(f"kvmrig run -j {jobs} on {count} rigs: exit {rc}, {wall:.2f} s under cProfile; profiles in {out}")
    show(str(out / "main.prof"), "main process")
    for w in sorted(out.glob("worker-*.prof")):
        show(str(w), f"worker {w.stem}")


def op(name: str, k: int, n: int) -> None:
    import kvmrig_side

    out = Path(tempfile.mkdtemp(prefix="kvmrig-prof-"))
    path = str(out / f"{name}-{k}.prof")
    kvmrig_side.measure(name, k, n, profile=path)
    show(path, f"{n} runs of the {name} rig, K={k}")


def timeline(count: int) -> None:
    """Wall-clock phases of the CLI on COUNT rigs, measured from outside."""
    script = Path(sysconfig.get_path("scripts")) / "kvmrig"
    with tempfile.TemporaryDirectory() as tmp:
        folder = rigs.write_suite(Path(tmp) / "rigs", count)

        def t(cmd: list[str]) -> float:
            best = []
            for _ in range(5):
                t0 = time.perf_counter()
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
                best.append(time.perf_counter() - t0)
            return sorted(best)[len(best) // 2] * 1000

        py = sys.executable
        steps = [
            ("python -c pass", [py, "-c", "pass"]),
            ("python -S -c pass (no site, no editable finder)", [py, "-S", "-c", "pass"]),
            ("kvmrig --version", [str(script), "--version"]),
            ("import the run path (cli, runner, load, schema, junit)",
             [py, "-c", "import kvmrig.cli, kvmrig.runner, kvmrig.report.junit, kvmrig.report.terminal"]),
            ("  + kvm backend (cffi abi, x86_64)",
             [py, "-c", "import kvmrig.cli, kvmrig.runner, kvmrig.report.junit, kvmrig.report.terminal, "
                        "kvmrig.backends.kvm.x86_64, kvmrig.machine.session"]),
            (f"kvmrig list ({count} rigs: load only)", [str(script), "list", str(folder)]),
            (f"kvmrig run -j 1 --junit '' ({count} rigs)", [str(script), "run", "-j", "1", "--junit", "", str(folder)]),
            (f"kvmrig run -j 1 ({count} rigs, default JUnit)", [str(script), "run", "-j", "1", str(folder)]),
        ]
        for label, cmd in steps:
            print(f"  {t(cmd):8.1f} ms  {label}")


def micro(n: int = 2000) -> None:
    """Median cost (us) of pieces of the hot path on a live KvmX86Backend parked
    on a HLT, next to the raw ioctl: what each layer adds per call."""
    import statistics

    from kvmrig.backends.events import HwBreak
    from kvmrig.backends.kvm import abi
    from kvmrig.backends.kvm.x86_64 import KvmX86Backend
    from kvmrig.machine.expect import check_state
    from kvmrig.machine.plan import prepare
    from kvmrig.machine.session import Session
    from kvmrig.machine.memory import Memory
    from kvmrig.rig.load import load_rig

    with tempfile.TemporaryDirectory() as tmp:
        rig = load_rig(rigs.write_rig(Path(tmp), "hwbp", 3))
    plan = prepare(rig)
    memory = Memory(rig.memory)
    backend = KvmX86Backend()
    session = Session(plan, backend, memory)
    session.start()
    ev = backend.run(time.monotonic() + 5)   # the first breakpoint hit
    vcpu = backend.vcpu
    fd, libc_ioctl = vcpu.fd, abi.libc.ioctl
    regs_buf = vcpu._regs
    point = session.debug.slot_owner[0]
    spec = point.spec

    def t(fn) -> float:
        xs = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            xs.append(time.perf_counter_ns() - t0)
        return statistics.median(xs) / 1000

    empty = t(lambda: None)
    cases = [
        ("raw cffi ioctl(KVM_GET_REGS)", lambda: libc_ioctl(fd, abi.KVM_GET_REGS, regs_buf)),
        ("Vcpu.get_regs() (KVM_GET_REGS via _call)", vcpu.get_regs),
        ("Vcpu.get_sregs() (KVM_GET_SREGS via _call)", vcpu.get_sregs),
        ("KvmX86Backend.get_pc() (GET_REGS)", backend.get_pc),
        ("KvmX86Backend._linear_pc() (GET_REGS + GET_SREGS)", backend._linear_pc),
        ("KvmX86Backend.get_regs() (GET_REGS + GET_SREGS + dict of 31)", backend.get_regs),
        ("KvmX86Backend._apply() (SET_GUEST_DEBUG, DR0 armed)", backend._apply),
        ("Vcpu.set_guest_debug(0) (SET_GUEST_DEBUG)", lambda: vcpu.set_guest_debug(0)),
        ("HwBreak(...) creation (an event)", lambda: HwBreak(0x1002, 0)),
        ("check_state(dx == 0x55aa) on a regs dict (no ioctl)",
         lambda r=backend.get_regs(): check_state(rig.arch, "bp: ", spec.expect, r, session.patches.view,
                                                  plan.resolve, None)),
        ("SwPatches.view(pc, 1) (memory read)", lambda: session.patches.view(0x1002, 1)),
    ]
    print(f"median of {n} calls, us (an empty lambda call costs {empty:.3f} us, included):")
    for label, fn in cases:
        print(f"  {t(fn):8.2f}  {label}")
    backend._apply()
    backend.close()
    memory.close()


def phases(n: int = 300) -> None:
    """Median wall-clock time of each phase of runner.run_rig() on the trivial
    rig, measured by wrapping the functions (no profiler): compare with
    `limit lifecycle`'s phases_median_ns."""
    import statistics
    from collections import defaultdict

    import kvmrig.machine.session as session_mod
    import kvmrig.runner as runner_mod
    import kvmrig.result as result_mod
    from kvmrig.backends.kvm import common, x86_64
    from kvmrig.machine import memory as memory_mod
    from kvmrig.rig.load import load_rig

    spent: dict[str, list[int]] = defaultdict(list)
    current: dict[str, int] = defaultdict(int)

    def wrap(owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def timed(*a, **kw):
            t0 = time.perf_counter_ns()
            try:
                return fn(*a, **kw)
            finally:
                current[label] += time.perf_counter_ns() - t0
        setattr(owner, attr, timed)

    # run_rig's own pieces, outermost first (inner ones are also inside the outer).
    wrap(result_mod, "result_for", "result object (classname_for)")
    import kvmrig.machine.plan as plan_mod
    wrap(plan_mod, "prepare", "prepare()")
    wrap(memory_mod.Memory, "__init__", "Memory() (mmap)")
    wrap(memory_mod.Memory, "close", "Memory.close()")
    wrap(x86_64.KvmX86Backend, "__init__", "backend init (KVM_CREATE_VM)")
    wrap(x86_64.KvmX86Backend, "set_initial_state", "set_initial_state (vCPU, CPUID, sregs, regs)")
    wrap(common.KvmBackendBase, "map_memory", "map_memory (SET_USER_MEMORY_REGION)")
    wrap(common.KvmBackendBase, "run", "backend.run (timer + KVM_RUN + HLT event)")
    wrap(session_mod.Session, "finish", "Session.finish (final regs, checks)")
    wrap(common.KvmBackendBase, "close", "backend.close (VM teardown)")
    with tempfile.TemporaryDirectory() as tmp:
        rig = load_rig(rigs.write_rig(Path(tmp), "lifecycle"))
    run = runner_mod.run_rig
    run(rig)
    for _ in range(n):
        current.clear()
        t0 = time.perf_counter_ns()
        result = run(rig)
        current["run_rig total"] = time.perf_counter_ns() - t0
        assert result.status == "passed", result.message
        for k, v in current.items():
            spent[k].append(v)
    print(f"median of {n} run_rig() calls on the trivial rig, us:")
    for label, xs in sorted(spent.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {statistics.median(xs) / 1000:8.1f}  {label}")


def count_ioctls(name: str, k: int) -> dict[str, int]:
    """Every ioctl kvmrig makes for one run of a benchmark rig, by request
    name (the warm-up run, which also probes the debug features, is not counted)."""
    from collections import Counter

    from kvmrig.backends.kvm import abi, system
    from kvmrig.rig.load import load_rig
    from kvmrig.runner import run_rig

    names = {getattr(abi, a): a for a in dir(abi)
             if a.startswith("KVM_") and not a.startswith(("KVM_EXIT", "KVM_CAP")) and isinstance(getattr(abi, a), int)
             and getattr(abi, a) >= 0xAE00 and a not in ("KVM_API_VERSION",)}
    with tempfile.TemporaryDirectory() as tmp:
        rig = load_rig(rigs.write_rig(Path(tmp), name, k))
    run_rig(rig)
    counts: Counter = Counter()
    real = system._ioctl

    def counting(fd, request, arg):
        counts[names.get(request, hex(request))] += 1
        return real(fd, request, arg)

    system._ioctl = counting
    try:
        result = run_rig(rig)
    finally:
        system._ioctl = real
    assert result.status == "passed", result.message
    return dict(counts.most_common())


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "imports":
        imports()
    elif cmd == "cli":
        cli(int(rest[0]), int(rest[1]) if len(rest) > 1 else 1)
    elif cmd == "op":
        op(rest[0], int(rest[1]), int(rest[2]) if len(rest) > 2 else 5)
    elif cmd == "phases":
        phases(int(rest[0]) if rest else 300)
    elif cmd == "ioctls":
        k = int(rest[1]) if len(rest) > 1 else 0
        got = count_ioctls(rest[0], k)
        print(f"{rest[0]} rig, K={k}: {sum(got.values())} ioctls: {got}")
        if k:
            base = count_ioctls(rest[0], 0)
            per = {key: round((got.get(key, 0) - base.get(key, 0)) / k, 2) for key in got
                   if got.get(key, 0) != base.get(key, 0)}
            print(f"per turn (K={k} minus K=0, / K): {per}")
    elif cmd == "micro":
        micro(int(rest[0]) if rest else 2000)
    elif cmd == "timeline":
        timeline(int(rest[0]) if rest else 100)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
