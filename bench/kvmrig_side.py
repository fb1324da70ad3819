"""kvmrig's side of the per-operation rows, in a fresh interpreter per call.

    python bench/kvmrig_side.py OP K N [--profile FILE] [--backend auto|kvm|emu]
        OP = lifecycle | pio | mmio | singlestep | hwbp | swbp | load | reset | reset-remap | growth

Prints one JSON line {"op", "k", "exits", "ns": [N samples], "ns_0": [N samples]}
(ns_0, for K > 0: the same rig with 0 turns, interleaved). A sample is one
call of kvmrig.runner.run_rig(rig) -- what a worker does per rig: prepare
(images, symbols, boot plan, debug plan), pick the backend, execute (memory,
VM, vCPU, the per-exit loop, checks) -- on a rig loaded once beforehand; the
run must pass, so a sample that did less work than asked fails loudly. One
untimed warm-up run first (the first rig in a process also probes the debug
features and reads the supported CPUID). `load` times load_rig() (YAML +
schema + model) of the trivial rig instead.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rigs  # noqa: E402


def measure(op: str, k: int, n: int, profile: str | None = None, backend: str = "auto") -> dict:
    from kvmrig.rig.load import load_rig
    from kvmrig.runner import run_rig

    with tempfile.TemporaryDirectory(prefix="kvmrig-bench-") as tmp:
        path = rigs.write_rig(Path(tmp), "lifecycle" if op == "load" else op, k)
        if op == "load":
            load_rig(path)
            samples = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                load_rig(path)
                samples.append(time.perf_counter_ns() - t0)
            return {"op": op, "k": k, "exits": 0, "ns": samples}
        rig = load_rig(path)
        rig0 = load_rig(rigs.write_rig(Path(tmp), op, 0)) if k else None
        for r in (rig, rig0):
            if r is not None:
                _check(run_rig(r, backend), op, r, backend)  # warm-up, untimed
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile()
        samples, samples0 = [], []
        exits = 0
        for _ in range(n):
            if prof:
                prof.enable()
            t0 = time.perf_counter_ns()
            result = run_rig(rig, backend)
            t1 = time.perf_counter_ns()
            if prof:
                prof.disable()
            _check(result, op, rig, backend)
            exits = result.outcome.exits if result.outcome else 0
            samples.append(t1 - t0)
            if rig0 is not None:
                t0 = time.perf_counter_ns()
                result = run_rig(rig0, backend)
                samples0.append(time.perf_counter_ns() - t0)
                _check(result, op, rig0, backend)
        if prof:
            prof.dump_stats(profile)
        out = {"op": op, "k": k, "exits": exits, "ns": samples, "backend": result.backend}
        if rig0 is not None:
            out["ns_0"] = samples0
        return out


DIRTY16 = bytes.fromhex("b800108ec031ffb9100026c6050181c70010e2f6f4")  # 16 pages written (limit.c G_DIRTY16)
RESET_RIG = """kvmrig: 1
name: dirty16
arch: x86_64
memory:
  - {at: 0x0, size: 128K}
images:
  - {file: dirty16.bin, at: 0x1000}
cpu: {mode: real}
expect: {exit: hlt, memory: [{at: 0x1f000, u8: 1}]}
"""


def measure_reset(n: int, strategy: str = "dirty-log") -> dict:
    """Time VmPool's reset between two runs of a rig that dirties 16 pages:
    the vCPU reset, the dirty log, and zeroing the pages (strategy "dirty-log")
    or handing every region fresh pages (strategy "remap": madvise DONTNEED,
    the kernel then faults zero pages back in as the next rig touches them)."""
    from kvmrig.backends.select import kvm_factory
    from kvmrig.machine.plan import prepare
    from kvmrig.machine.reuse import VmPool
    from kvmrig.rig.load import load_rig

    with tempfile.TemporaryDirectory(prefix="kvmrig-bench-") as tmp:
        (Path(tmp) / "dirty16.bin").write_bytes(DIRTY16)
        path = Path(tmp) / "dirty16.yaml"
        path.write_text(RESET_RIG)
        rig = load_rig(path)
        plan, factory = prepare(rig), kvm_factory(rig)
        pool = VmPool()
        samples, run_ns, pages = [], [], 0
        original = VmPool._reset

        def timed_reset(kept):
            nonlocal pages
            t0 = time.perf_counter_ns()
            if strategy == "remap":
                kept.backend.reset()
                kept.backend.dirty_ranges()
                kept.memory.take_written()
                kept.memory.zero_all()
            else:
                original(kept)
            samples.append(time.perf_counter_ns() - t0)

        VmPool._reset = staticmethod(timed_reset)
        try:
            for _ in range(n + 1):
                t0 = time.perf_counter_ns()
                outcome = pool.execute(plan, factory)
                run_ns.append(time.perf_counter_ns() - t0)
                if outcome.failures or outcome.exit != "hlt":
                    raise SystemExit(f"kvmrig_side: the dirty16 rig failed: {outcome.failures}")
                kept = next(iter(pool._kept.values()))
                pages = len(kept.backend._dirty) if hasattr(kept.backend, "_dirty") else 0
        finally:
            VmPool._reset = staticmethod(original)
            pool.close()
        return {"op": f"reset-{strategy}", "k": 0, "exits": 1, "ns": samples,
                "run_ns": run_ns[1:], "reused": pool.reused}


def measure_growth(n: int) -> dict:
    """Run the trivial rig `n` times through one worker's VM pool (what a
    `kvmrig run` worker does) and report RSS and open fds after a warm-up
    of 100 rigs and at the end."""
    import kvmrig.runner as runner
    from kvmrig.machine.reuse import VmPool
    from kvmrig.rig.load import load_rig

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    with tempfile.TemporaryDirectory(prefix="kvmrig-bench-") as tmp:
        rig = load_rig(rigs.write_rig(Path(tmp), "lifecycle", 0))
        runner._pool = VmPool()
        try:
            start = None
            t0 = time.perf_counter_ns()
            for i in range(n):
                if i == 100:
                    start = (rss_kib(), len(os.listdir("/proc/self/fd")))
                result = runner.run_rig(rig)
                if result.status != runner.PASSED:
                    raise SystemExit(f"kvmrig_side: growth: rig {i} did not pass: {result.message}")
            seconds = (time.perf_counter_ns() - t0) / 1e9
            end = (rss_kib(), len(os.listdir("/proc/self/fd")))
            created, reused = runner._pool.created, runner._pool.reused
        finally:
            runner._pool.close()
            runner._pool = None
    return {"op": "growth", "k": 0, "exits": 1, "ns": [], "rigs": n, "rss_kib_start": start[0],
            "rss_kib_end": end[0], "fds_start": start[1], "fds_end": end[1], "created": created,
            "reused": reused, "seconds": seconds}


def _check(result, op: str, rig, backend: str = "auto") -> None:
    from kvmrig.result import PASSED

    if backend != "auto" and result.backend and result.backend != backend:
        raise SystemExit(f"kvmrig_side: asked for backend {backend}, the rig ran on {result.backend}")
    if result.status != PASSED:
        failures = [f.__dict__ for f in result.outcome.failures] if result.outcome else []
        raise SystemExit(f"kvmrig_side: the {op} rig {rig.path.name} did not pass: {result.status} "
                         f"{result.message} {failures}")


def main(argv: list[str]) -> int:
    profile, backend = None, "auto"
    if "--profile" in argv:
        i = argv.index("--profile")
        profile = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if "--backend" in argv:
        i = argv.index("--backend")
        backend = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    op, k, n = argv[0], int(argv[1]), int(argv[2])
    if op == "growth":
        print(json.dumps(measure_growth(n)))
        return 0
    if op.startswith("reset"):
        print(json.dumps(measure_reset(n, op.partition("-")[2] or "dirty-log")))
        return 0
    print(json.dumps(measure(op, k, n, profile, backend)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
