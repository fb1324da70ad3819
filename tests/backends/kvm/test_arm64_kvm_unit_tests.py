"""kvm-unit-tests' arm64 binaries (../shared/kvm-unit-tests/arm64) as rigs,
on REAL arm64 KVM in the arm64 VM of kvmrig.invm: the rigs `kvmrig import
kvm-unit-tests` writes from the suite's unittests.cfg (the arch told from the
binaries), run with `kvmrig run --in-vm arm64`. Each test of SUBSET must
pass (but for the timer's two checks of the host's latency, HOST_TIMED): its own checks (PASS lines, `EXIT: STATUS=1`, then PSCI SYSTEM_OFF),
with a generated device tree, the in-kernel GICv3, the timer, 2 vCPUs where
the test asks for them; each PASS/FAIL/SKIP line the guest printed is one
JUnit testcase under its rig (`verdict: {console: kvm-unit-tests}`); a test
that skips itself (STATUS=77) is a skipped rig. docs/kvm-unit-tests-arm64.md
has every test's result.

Skipped where qemu-system-aarch64 is absent, or where the suite's binaries
are not beside the checkout (they are test data in ../shared, not part of
the project).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig.machine.verdict import KUT_LINE
from kvmrig.invm import qemu as invm_qemu

QEMU = os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU
ROOT = Path(__file__).resolve().parents[3]
SUITE = Path(os.environ.get("KVMRIG_KUT_ARM64", ROOT.parent / "shared" / "kvm-unit-tests" / "arm64"))

# The tests this lane must pass (the debug ones matter most: the guest drives
# its own hardware breakpoints, watchpoints and single-step).
SUBSET = ["selftest-setup", "selftest-vectors-kernel", "selftest-vectors-user", "selftest-smp", "psci",
          "gicv3-ipi", "gicv3-active", "timer", "cache", "debug-bp", "debug-wp", "debug-sstep"]
# ...and one the suite skips itself here (`SKIP: No ITS`, STATUS=77): a skipped rig, not a failure.
SKIPS = ["its-trigger"]
# Checks that time the host, not KVM: how late the nested lane's emulated CPU
# takes a timer interrupt (within 10 ms) depends on the load on the machine
# running the lane. They must run and be reported; failing, they fail only
# themselves (the rest of the test still must pass).
HOST_TIMED = {"timer": {"vtimer-busy-loop: latency within 10 ms", "ptimer-busy-loop: latency within 10 ms"}}

pytestmark = [
    pytest.mark.arm64vm,
    pytest.mark.skipif(shutil.which(QEMU) is None,
                       reason=f"{QEMU} is not installed (run scripts/setup-arm64-lane.sh)"),
    pytest.mark.skipif(not (SUITE / "unittests.cfg").is_file(),
                       reason=f"the kvm-unit-tests arm64 binaries are not at {SUITE} (set KVMRIG_KUT_ARM64)"),
]


def test_kvm_unit_tests_arm64_pass_on_real_kvm(tmp_path):
    rigs = tmp_path / "rigs"
    r = subprocess.run([sys.executable, "-m", "kvmrig", "import", "kvm-unit-tests", str(SUITE / "unittests.cfg"),
                        str(SUITE), "-o", str(rigs)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for path in rigs.glob("*.yaml"):
        if path.stem not in SUBSET + SKIPS:
            path.unlink()
            continue
        assert "arch: arm64" in path.read_text(), path
        # The suite's own timeouts are for QEMU on real hardware; the lane's vCPU is emulated.
        path.write_text(path.read_text().replace("timeout: 10s", "timeout: 60s"))
    assert sorted(p.stem for p in rigs.glob("*.yaml")) == sorted(SUBSET + SKIPS)
    junit = tmp_path / "junit.xml"
    r = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "arm64", "-j", "1",
                        "--junit", str(junit), str(rigs)], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800)
    all_cases = list(ET.parse(junit).getroot().iter("testcase")) if junit.exists() else []
    cases = {c.get("name"): c for c in all_cases if not c.get("classname", "").endswith(tuple(SUBSET + SKIPS))}
    for name in SUBSET + SKIPS:
        case = cases.get(name)
        assert case is not None, f"{name} did not run:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
        console = case.findtext("system-out") or ""
        checks = [KUT_LINE.match(line.rstrip("\r")) for line in console.splitlines()]
        checks = [m for m in checks if m]
        sub = [c for c in all_cases if c.get("classname", "").endswith("." + name)]
        # one testcase per PASS/FAIL/SKIP line, in console order, with the check's status
        assert [c.get("name").split(" #")[0] for c in sub] == [m.group(2).strip() for m in checks], name
        assert [("skipped" if c.find("skipped") is not None else "failed" if c.find("failure") is not None
                 else "passed") for c in sub] == [{"PASS": "passed", "SKIP": "skipped"}.get(m.group(1), "failed")
                                                  for m in checks], name
        failed = {m.group(2).strip() for m in checks if m.group(1) == "FAIL"}
        assert failed <= HOST_TIMED.get(name, set()), f"{name}: failed checks {sorted(failed)}"
        if name in SKIPS:
            assert case.find("skipped") is not None and "EXIT: STATUS=77\n" in console, name
            assert "SKIP: " in console, name
            continue
        assert case.find("skipped") is None and checks and any(m.group(1) == "PASS" for m in checks), name
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failed:   # only host-timed checks failed: the guest said so (STATUS=3) and the rig failed with it
            assert "EXIT: STATUS=3\n" in console and bad is not None, name
            continue
        assert bad is None, f"{name}: {(bad.get('message') or '')[:2000]}"
        assert "EXIT: STATUS=1\n" in console, name
    lenient = any(cases[n].find("failure") is not None for n in HOST_TIMED if n in cases)
    assert r.returncode == (1 if lenient else 0), r.stdout[-3000:]
