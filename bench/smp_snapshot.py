"""What snapshots of an SMP machine cost (x86 KVM): stopping the other vCPUs
at a hit, saving a point, starting a child from one.

    python bench/smp_snapshot.py [N]     # N runs of rigs/x86/smp-snap.yaml and its 4 children (default 20)
    python bench/smp_snapshot.py N --ap-events   # N runs of an AP printing 2000 bytes: its event path

Times are taken around kvmrig's own functions (wrapped here, nothing else
changed): KvmX86SmpBackend._stop_others (only while the other vCPU runs,
not after the run ended), Session.save_point at the two mid-run points, and
points.start_child (the snapshot file read once per process, then every
vCPU, the chips and the memory put back). Medians, 95th percentiles and maxima, printed;
reported, never asserted (docs/snapshots.md quotes them).

--ap-events: the whole run of a two-vCPU rig whose AP writes 2000 bytes to
the debug console (one port exit each, handled on the AP's thread under the
machine lock), divided by 2000: what one AP event costs end to end.
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


START_AP = ("c705f000e0feff010000" "c7051003e0fe00000001"   # APIC on; ICR high: APIC 1
            "c7050003e0fe00450000" "c7050003e0fe08460000")  # INIT; SIPI 0x08
PRINTER = f"""kvmrig: 1
arch: x86_64
timeout: 20s
memory: [{{at: 0, size: 2M}}]
cpus: 2
machine: {{irqchip: true}}
devices: [{{type: debugcon, port: 0xe9}}]
images:
  - {{hex: '{START_AP}803d1050000001 75f7 faf4', at: 0x1000}}   # wait for AP_DONE; cli; hlt
  - {{hex: 'fa31c08ed8 b9d007 b061 e6e9 e2fa c606105001 f4ebfd', at: 0x8000}}  # 2000 x out 0xe9; AP_DONE
cpu: {{mode: protected, entry: 0x1000}}
expect: {{exit: hlt}}
"""


def ap_events(runs: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="kvmrig-smp-bench-"))
    rig_path = folder / "printer.yaml"
    rig_path.write_text(PRINTER)
    rig = load_rig(rig_path)
    times = []
    for _ in range(runs):
        memory = Memory(rig.memory)
        try:
            with kvm_factory(rig)() as backend:
                session = Session(prepare(rig), backend, memory)
                t0 = time.perf_counter()
                outcome = session.run()
                times.append(time.perf_counter() - t0)
        finally:
            memory.close()
        if outcome.failures or outcome.console != b"a" * 2000:
            sys.exit(f"the printer failed: {outcome.exit} {[str(f) for f in outcome.failures]}")
    times.sort()
    print(f"an AP's port write, end to end (2000 per run): median {statistics.median(times) / 2000 * 1e6:.2f} us, "
          f"min {times[0] / 2000 * 1e6:.2f} us (n={runs} runs)")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if "--ap-events" in sys.argv[2:]:
        ap_events(count)
    else:
        main(count)
