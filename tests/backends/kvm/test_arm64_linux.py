"""Debian's arm64 cloud kernel as a rig (rigs-kvm/linux/debian-arm64.yaml) on REAL
arm64 KVM, in the arm64 VM of kvmrig.invm: an arm64 Image placed by its
header, a generated device tree (GICv3, timer, PL011 on SPI 1, PSCI, /chosen
with bootargs and the initrd), booting to its initramfs, whose /init prints a
marker and powers off by PSCI.

The kernel is the one the lane itself boots (rigs-kvm/linux/fetch-kernel.py
copies it from the lane's cache to rigs-kvm/linux/build/Image). Skipped only
where qemu-system-aarch64 is absent. The boot takes about 80 s of emulated
CPU inside the lane; reported, not asserted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig.invm import qemu as invm_qemu

QEMU = os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU
ROOT = Path(__file__).resolve().parents[3]
LINUX = ROOT / "rigs-kvm" / "linux"
MARKER = "KVMRIG-INIT: PID 1 of the initramfs reached, powering off"

pytestmark = [
    pytest.mark.arm64vm,
    pytest.mark.skipif(shutil.which(QEMU) is None,
                       reason=f"{QEMU} is not installed (run scripts/setup-arm64-lane.sh)"),
]


def test_debian_kernel_boots_to_its_initramfs_marker(tmp_path):
    fetch = subprocess.run([sys.executable, str(LINUX / "fetch-kernel.py")], cwd=ROOT, capture_output=True,
                           text=True, timeout=1800)
    assert fetch.returncode == 0, fetch.stderr
    junit = tmp_path / "junit.xml"
    r = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "arm64", "-j", "1",
                        "--junit", str(junit), "rigs-kvm/linux"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "PASS  rigs-kvm/linux/debian-arm64.yaml::debian-arm64-linux (kvm," in r.stdout
    case, = ET.parse(junit).getroot().iter("testcase")
    console = case.findtext("system-out") or ""
    # the kernel saw the machine kvmrig described, and its init ran
    for words in ("Machine model: kvmrig arm64", "GICv3: CPU0: found redistributor 0 region 0:0x00000000080a0000",
                  "arch_timer: cp15 timer(s) running", "ttyAMA0 at MMIO 0x9000000", "Run /init as init process",
                  MARKER):
        assert words in console, words
    assert console.index(MARKER) > console.index("Run /init as init process")
