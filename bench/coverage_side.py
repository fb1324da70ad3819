"""The coverage rows' measurement, in a fresh interpreter per call.

    python bench/coverage_side.py BACKEND N

Runs the C example suite (rigs/x86/cov-*.yaml) N times through
kvmrig.runner.run_rig(rig, BACKEND) without coverage (and without the rigs'
executed/not_executed, so nothing is recorded) and with it, interleaved
(so load affects both alike), after one untimed warm-up of each. A sample is
the whole suite, in-process, as a worker runs it: prepare, VM, run, checks
(and, with coverage, the DWARF line tables -- read once per process and image,
so the cold first run is reported apart). Every run must pass, and a coverage
run must have recorded something, else the sample is void and this fails.

Prints one JSON line {"backend", "rigs", "plain_ns": [...], "coverage_ns": [...],
"cold_coverage_ns", "exits_plain", "exits_coverage"}.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    backend, n = argv[0], int(argv[1])
    from kvmrig.rig.load import load_rig
    from kvmrig.result import PASSED
    from kvmrig.runner import run_rig

    rigs = [load_rig(p) for p in sorted((ROOT / "rigs" / "x86").glob("cov-*.yaml"))]
    # The baseline records nothing at all: the rigs without their executed/not_executed.
    bare = [replace(r, expect=replace(r.expect, executed=(), not_executed=())) for r in rigs]

    def suite(coverage: bool) -> tuple[int, int]:
        exits = 0
        t0 = time.perf_counter_ns()
        for rig in (rigs if coverage else bare):
            r = run_rig(rig, backend, coverage=coverage)
            if r.status != PASSED or r.backend != backend or (coverage and not r.outcome.coverage):
                raise SystemExit(f"{rig.path}: {r.status} on {r.backend}: {r.message}")
            exits += r.outcome.exits
        return time.perf_counter_ns() - t0, exits

    suite(False)                      # warm-up: probes, imports
    cold, _ = suite(True)             # the first coverage run reads the line tables
    plain, coverage = [], []
    for _ in range(n):
        t, exits_plain = suite(False)
        plain.append(t)
        t, exits_cov = suite(True)
        coverage.append(t)
    print(json.dumps({"backend": backend, "rigs": len(rigs), "plain_ns": plain, "coverage_ns": coverage,
                      "cold_coverage_ns": cold, "exits_plain": exits_plain, "exits_coverage": exits_cov}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
