"""The kvm-unit-tests rows (group `kut`): per-test wall time of the suite's
x86 binaries under `kvmrig run` (rigs from `kvmrig import kvm-unit-tests`)
against QEMU running the same binary the way the suite's own x86/run does
(`-kernel X.flat`, pc-testdev, isa-debug-exit on 0xf4, -accel kvm).

Only the tests QEMU gives a verdict for here are measured (the hangs and
emulation failures would only time their timeouts). `kut_suite` sums them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KUT = Path(os.environ.get("KVMRIG_KUT_DIR", ROOT.parent / "shared" / "kvm-unit-tests")) / "x86"
# QEMU's verdicts here (the suite's README): the tests both can finish.
TESTS = ("realmode", "rmap_chain", "setjmp", "idt_test", "smptest", "vmexit_cpuid", "vmexit_mov_from_cr8",
         "vmexit_mov_to_cr8", "vmexit_inl_pmtimer", "tsc", "msr", "msr64", "tsc_adjust", "umip", "syscall")
QEMU_TIMEOUT = 120


def qemu_cmd(qemu: str, test, flat: Path) -> list[str]:
    """The suite's x86/run command line for one test (with this KVM's -cpu caveat:
    `max`/`host` need -arch-capabilities here, see the suite's README)."""
    cpu = "qemu64"
    if test.cpu_model:
        parts = [test.cpu_model] + [f"+{f}" for f in test.add] + [f"-{f}" for f in test.remove]
        if test.vendor:
            parts.append(f"vendor={test.vendor}")
        if test.cpu_model in ("max", "host"):
            parts.append("-arch-capabilities")
        cpu = ",".join(p.replace("tsc_deadline_timer", "tsc-deadline") for p in parts)
    cmd = [qemu, "--no-reboot", "-nodefaults", "-global", "kvm-pit.lost_tick_policy=discard",
           "-device", "pc-testdev", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-display", "none",
           "-serial", "stdio", "-machine", "accel=kvm", "-cpu", cpu, "-smp", str(test.smp),
           "-m", str(test.memory_mb), "-kernel", str(flat)]
    if test.args:
        cmd += ["-append", test.args]
    return cmd


def kut_rows(row_cls, rounds: int = 1) -> list:
    """One row per test (seconds, QEMU as the limit) and the kut_suite total."""
    from kvmrig.importers.kvm_unit_tests import import_suite, read_cfg

    cfg = KUT / "unittests.cfg"
    if not cfg.is_file():
        return [row_cls("kut_suite", "s", None, None, 0, f"no kvm-unit-tests binaries in {KUT}")]
    qemu = shutil.which("qemu-system-x86_64")
    tests = {t.name: t for t in read_cfg(cfg)}
    rows, total_k, total_q = [], 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="kvmrig-kut-") as tmp:
        written, _ = import_suite(cfg, KUT, Path(tmp))
        rigs = {p.stem: p for p in written}
        for name in TESTS:
            k_samples, q_samples = [], []
            for _ in range(rounds):
                start = time.monotonic()
                subprocess.run([sys.executable, "-m", "kvmrig", "run", str(rigs[name]), "-j", "1", "--junit", "",
                                "-q"], cwd=ROOT, capture_output=True)
                k_samples.append(time.monotonic() - start)
                if qemu:
                    start = time.monotonic()
                    try:
                        subprocess.run(qemu_cmd(qemu, tests[name], KUT / tests[name].file), capture_output=True,
                                       timeout=QEMU_TIMEOUT, stdin=subprocess.DEVNULL)
                    except subprocess.TimeoutExpired:
                        pass
                    q_samples.append(time.monotonic() - start)
            k = sorted(k_samples)[len(k_samples) // 2]
            q = sorted(q_samples)[len(q_samples) // 2] if q_samples else None
            total_k += k
            total_q += q or 0
            cmd = " ".join(shlex.quote(c) for c in qemu_cmd("qemu-system-x86_64", tests[name], Path(tests[name].file)))
            rows.append(row_cls(f"kut_{name}", "s", q, k, rounds,
                                f"`kvmrig run` of the imported rig (whole process) vs `{cmd}`",
                                ratio_kind="limit/kvmrig"))
    note = ("sum over " + ", ".join(TESTS) + (": QEMU per test as the suite's x86/run starts it" if qemu
                                               else ": qemu-system-x86_64 not installed (scripts/setup-bench.sh)"))
    rows.insert(0, row_cls("kut_suite", "s", total_q if qemu else None, total_k, rounds, note,
                           ratio_kind="limit/kvmrig"))
    return rows
