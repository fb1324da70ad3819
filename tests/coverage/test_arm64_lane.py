"""Coverage on real arm64 KVM (the nested lane, kvmrig.invm): one-shot BRKs,
lifted at their first hit, also where QEMU TCG keeps running a stale copy of
the planted code; `--coverage` reports come back to the host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARM64 = ROOT / "rigs" / "arm64"

# fault-inject.S at 0x40000000: 0x18 `mov w1, #0` is the all-passed path (never
# taken: the rig injects a failure), 0x20 `failed:`, 0x30 `selftest` (called twice).
EXPECT = """  executed: [0x40000020, 0x40000030]
  not_executed: [0x40000018]
"""


@pytest.mark.arm64vm
def test_coverage_on_real_arm64_kvm(tmp_path):
    from kvmrig.invm import qemu as invm_qemu

    qemu = os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} is not installed (run scripts/setup-arm64-lane.sh)")
    text = (ARM64 / "fault-inject.yaml").read_text()
    text = text.replace("guests/fault-inject.bin", str(ARM64 / "guests" / "fault-inject.bin"))
    assert "\nexpect:\n" in text
    rig = tmp_path / "fault-inject-covered.yaml"
    rig.write_text(text.replace("\nexpect:\n", "\nexpect:\n" + EXPECT))
    out = tmp_path / "cov"
    done = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "arm64", "--junit", "",
                           "--coverage", str(out), str(rig)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS " in done.stdout and "(kvm" in done.stdout, done.stdout
    ranges = json.loads((out / "coverage-ranges.json").read_text())
    (label, image), = ranges.items()
    assert label.endswith("fault-inject.bin")
    executed = [(int(lo, 16), int(hi, 16)) for lo, hi in image["executed"]]

    def ran(addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in executed)

    assert ran(0x40000000) and ran(0x40000020) and ran(0x40000030) and not ran(0x40000018)

    # The emulator (block hooks, exact) ran the same bytes.
    pytest.importorskip("unicorn")
    emu = tmp_path / "emu"
    done = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--backend", "emu", "--junit", "",
                           "--coverage", str(emu), str(rig)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    on_emu = json.loads((emu / "coverage-ranges.json").read_text())
    assert on_emu[label]["executed"] == image["executed"]
