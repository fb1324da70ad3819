"""kvmrig's side of the per-operation rows, in a fresh interpreter per call.

    python bench/kvmrig_side.py OP K N [--profile FILE] [--backend auto|kvm|emu]
        OP = lifecycle | pio | mmio | singlestep | hwbp | swbp | load

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
    print(json.dumps(measure(op, k, n, profile, backend)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
