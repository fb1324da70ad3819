"""What a debugger's stops cost on an SMP machine (x86 KVM, all-stop:
kvmrig.gdb.controller over KvmX86SmpBackend.debug_stop/debug_go).

    python bench/gdb_smp.py [N]     # N of each, on rigs/x86/smp-snap.yaml (default 100)

The rig runs without its own breakpoints. Measured per Controller call, as gdb's packets cause them (no gdb, no
socket): a `stepi` of vCPU 1 alone and of vCPU 0 alone (the other stays
stopped), and a `continue` of both to a breakpoint on the AP's inner loop
(0x8016, hit once per turn): each call lets the vCPUs go and ends with every
vCPU stopped again. Medians, 95th percentiles and maxima, printed; reported,
never asserted.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from kvmrig.backends.select import kvm_factory
from kvmrig.gdb.controller import Controller
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig_text

RIG = Path(__file__).resolve().parent.parent / "rigs" / "x86" / "smp-snap.yaml"
AP_TURN = 0x8016   # `3: incl AP_COUNT` of the AP's copy at 0x8000


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    return (f"median {statistics.median(s) * 1e3:.3f} ms, p95 {s[int(len(s) * 0.95) - 1] * 1e3:.3f} ms, "
            f"max {s[-1] * 1e3:.3f} ms (n={len(s)})")


def main(n: int) -> None:
    text = RIG.read_text()   # without its own breakpoints: they would take all four debug registers
    start, end = text.index("\nbreakpoints:"), text.index("\nexpect:")
    rig = load_rig_text(text[:start] + text[end:], RIG)
    ctl = Controller(prepare(rig), kvm_factory(rig))
    try:
        ctl.start()
        ctl.insert("hw", AP_TURN)
        first = ctl.resume()          # the BSP starts the AP, which reaches its first turn
        if (first.reason, first.cpu) != ("hw", 1):
            sys.exit(f"expected the AP at {AP_TURN:#x}, got {first}")
        times: dict[str, list[float]] = {"continue to the AP's breakpoint": [], "stepi vCPU 1 alone": [],
                                         "stepi vCPU 0 alone": []}
        for _ in range(n):
            for what, call in (("continue to the AP's breakpoint", lambda: ctl.resume()),
                               ("stepi vCPU 1 alone", lambda: ctl.resume(step=True, cpu=1)),
                               ("stepi vCPU 0 alone", lambda: ctl.resume(step=True, cpu=0))):
                t0 = time.perf_counter()
                info = call()
                times[what].append(time.perf_counter() - t0)
                if info.reason not in ("hw", "step"):
                    sys.exit(f"{what}: stopped for {info.reason}")
        for what, samples in times.items():
            print(f"{what}: {_ms(samples)}")
    finally:
        ctl.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
