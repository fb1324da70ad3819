"""What snapshots of an SMP machine cost (x86 KVM): stopping the other vCPUs
at a hit, saving a point, starting a child from one.

    python bench/smp_snapshot.py [N]     # N runs of rigs/x86/smp-snap.yaml and its 4 children (default 20)

Times are taken around kvmrig's own functions (wrapped here, nothing else
changed): KvmX86SmpBackend._stop_others (only while the other vCPU runs,
not after the run ended), Session.save_point at the two mid-run points, and
points.start_child (the snapshot file read once per process, then every
vCPU, the chips and the memory put back). Medians, 95th percentiles and maxima, printed;
reported, never asserted (docs/snapshots.md quotes them).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvmrig.backends.kvm import x86_smp
from kvmrig.backends.select import kvm_factory
from kvmrig.machine import session as session_mod
from kvmrig.machine.memory import Memory
from kvmrig.machine.plan import prepare
from kvmrig.machine.points import PointStore
from kvmrig.machine.session import RunOptions, Session
from kvmrig.rig.load import load_rig

X86 = Path(__file__).resolve().parent.parent / "rigs" / "x86"
CHILDREN = sorted(X86.glob("smp-snap-from-*.yaml"))
MID_RUN = ("bsp-round-3", "ap-round-2")


def _timed(owner, name: str, sink: list, keep=lambda *a: True) -> None:
    """Wrap owner.name to append its duration (seconds) to `sink` when keep(*args)."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        wanted = keep(*args)
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if wanted:
                sink.append((args, time.perf_counter() - t0))
    setattr(owner, name, wrapper)


def _run(path: Path, points: Path) -> None:
    rig = load_rig(path)
    memory = Memory(rig.memory)
    try:
        with kvm_factory(rig)() as backend:
            outcome = Session(prepare(rig), backend, memory, RunOptions(points=PointStore(points))).run()
    finally:
        memory.close()
    if outcome.failures or outcome.exit != "exit-code":
        sys.exit(f"{path.name} failed: {outcome.exit} {[str(f) for f in outcome.failures]}")


def main(runs: int) -> None:
    stops: list = []
    saves: list = []
    starts: list = []
    _timed(x86_smp.KvmX86SmpBackend, "_stop_others", stops, keep=lambda self, here, aps: not aps.stopping)
    _timed(session_mod.Session, "save_point", saves, keep=lambda self, name: name in MID_RUN)
    _timed(session_mod, "start_child", starts)
    for _ in range(runs):
        folder = Path(tempfile.mkdtemp(prefix="kvmrig-smp-bench-"))
        _run(X86 / "smp-snap.yaml", folder)
        for child in CHILDREN:
            _run(child, folder)

    def line(what: str, values: list) -> str:
        times = sorted(t for _a, t in values)
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        return (f"{what}: median {statistics.median(times) * 1e3:.3f} ms, p95 {p95 * 1e3:.3f} ms, "
                f"max {times[-1] * 1e3:.3f} ms (n={len(times)})")
    print(line("stopping the other vCPU at a hit", stops))
    print(line("saving a mid-run point (stop, 2 vCPUs, chips, 2 MiB, file)", saves))
    print(line("starting a child (2 vCPUs, chips, memory)", starts))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
