"""What keeping VMs for `cpu.cpuid` rigs saves (x86 KVM): one rig that reads
a CPUID leaf only its table has, run on a new VM each time (`--no-reuse`, and
what every cpuid rig got before) and on a kept VM of its table, alternately.

    python bench/reuse_cpuid.py [N]     # N runs of each, three rounds (default 40)

Medians per rig, whole run (VM, load, run, verdict); reported, never asserted
(docs/snapshots.md quotes them).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvmrig.backends.select import kvm_factory
from kvmrig.machine.plan import prepare
from kvmrig.machine.reuse import VmPool, run_fresh
from kvmrig.rig.load import load_rig

RIG = """kvmrig: 1
arch: x86_64
timeout: 5s
memory: [{at: 0, size: 2M}]
images: [{hex: 'b8 00 00 ff 4f 31 c9 0f a2 f4', at: 0x1000}]   # mov eax, 0x4fff0000; xor ecx, ecx; cpuid; hlt
cpu: {mode: long, cpuid: {leaves: [{leaf: 0x4fff0000, eax: 0x11}]}}
expect: {exit: hlt, regs: {eax: 0x11}}
"""


def main(runs: int) -> None:
    path = Path(tempfile.mkdtemp(prefix="kvmrig-cpuid-bench-")) / "cpuid.yaml"
    path.write_text(RIG)
    rig = load_rig(path)
    plan, factory = prepare(rig), kvm_factory(rig)
    for round_ in range(3):
        fresh, kept = [], []
        pool = VmPool()
        try:
            for _ in range(runs):
                for sink, run in ((fresh, lambda: run_fresh(plan, factory)), (kept, lambda: pool.execute(plan, factory))):
                    t0 = time.perf_counter()
                    outcome = run()
                    sink.append(time.perf_counter() - t0)
                    if outcome.failures:
                        sys.exit(f"the cpuid rig failed: {[str(f) for f in outcome.failures]}")
        finally:
            pool.close()
        print(f"round {round_ + 1}: new VM median {statistics.median(fresh) * 1e3:.2f} ms, kept VM median "
              f"{statistics.median(kept[1:]) * 1e3:.2f} ms (VMs made for the kept runs: {pool.created}, "
              f"reused: {pool.reused})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
