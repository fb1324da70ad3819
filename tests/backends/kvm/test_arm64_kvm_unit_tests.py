"""kvm-unit-tests' arm64 binaries (../shared/kvm-unit-tests/arm64) as rigs,
on REAL arm64 KVM in the arm64 VM of kvmrig.invm: the rigs written by
kvmrig.importers.kvm_unit_tests_arm64 from the suite's unittests.cfg, run
with `kvmrig run --in-vm arm64`. Each test of SUBSET must pass: its own
checks (PASS lines, `EXIT: STATUS=1`, then PSCI SYSTEM_OFF), with a
generated device tree, the in-kernel GICv3, the timer, 2 vCPUs where the
test asks for them. docs/kvm-unit-tests-arm64.md has every test's result.

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

from kvmrig.importers.kvm_unit_tests_arm64 import rigs_from_cfg
from kvmrig.invm import qemu as invm_qemu

QEMU = os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU
ROOT = Path(__file__).resolve().parents[3]
SUITE = Path(os.environ.get("KVMRIG_KUT_ARM64", ROOT.parent / "shared" / "kvm-unit-tests" / "arm64"))

# The tests this lane must pass (the debug ones matter most: the guest drives
# its own hardware breakpoints, watchpoints and single-step).
SUBSET = ["selftest-setup", "selftest-vectors-kernel", "selftest-vectors-user", "selftest-smp", "psci",
          "gicv3-ipi", "gicv3-active", "timer", "cache", "debug-bp", "debug-wp", "debug-sstep"]

pytestmark = [
    pytest.mark.arm64vm,
    pytest.mark.skipif(shutil.which(QEMU) is None,
                       reason=f"{QEMU} is not installed (run scripts/setup-arm64-lane.sh)"),
    pytest.mark.skipif(not (SUITE / "unittests.cfg").is_file(),
                       reason=f"the kvm-unit-tests arm64 binaries are not at {SUITE} (set KVMRIG_KUT_ARM64)"),
]


def test_kvm_unit_tests_arm64_pass_on_real_kvm(tmp_path):
    written = rigs_from_cfg(SUITE / "unittests.cfg", SUITE, tmp_path / "rigs", max_smp=2)
    for path in written:
        if path.stem not in SUBSET:
            path.unlink()
            continue
        # The suite's own timeouts are for QEMU on real hardware; the lane's vCPU is emulated.
        path.write_text(path.read_text().replace("timeout: 10s", "timeout: 60s"))
    assert sorted(p.stem for p in (tmp_path / "rigs").glob("*.yaml")) == sorted(SUBSET)
    junit = tmp_path / "junit.xml"
    r = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "arm64", "-j", "1",
                        "--junit", str(junit), str(tmp_path / "rigs")], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800)
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")} if junit.exists() else {}
    for name in SUBSET:
        case = cases.get(f"kvm-unit-tests-arm64-{name}")
        assert case is not None, f"{name} did not run:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        assert bad is None, f"{name}: {(bad.get('message') or '')[:2000]}"
        console = case.findtext("system-out") or ""
        assert "EXIT: STATUS=1\n" in console and "PASS: " in console and "FAIL: " not in console, name
    assert r.returncode == 0, r.stdout[-3000:]
