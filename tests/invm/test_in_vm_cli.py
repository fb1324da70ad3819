"""`kvmrig run --in-vm arm64`: the user-facing way to real arm64 KVM from this
x86_64 host. One VM boot runs every arm64 example rig, Debian's U-Boot
(rigs/firmware), the U-Boot snapshot fan-out (rigs/firmware/u-boot: booted
once to its prompt, 24 children each typing a command) and a broken rig kept
outside the checkout, and everything must come back as if run locally."""

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.arm64vm,
              pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None,
                                 reason="qemu-system-aarch64 is absent (scripts/setup-arm64-lane.sh installs it)")]

BROKEN = """\
kvmrig: 1
arch: arm64
memory: [{at: 0x40000000, size: 64K}]
images: [{hex: "00 00 80 d2", at: 0x40000000}]
expect:
  exitt: system-off
"""


def test_in_vm_runs_the_arm64_rigs_and_reports_as_if_local(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    junit = tmp_path / "junit.xml"
    r = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "arm64", "-j", "1",
                        "--junit", str(junit), "rigs/arm64", "rigs/firmware/u-boot-arm64.yaml", "rigs/firmware/u-boot",
                        str(broken)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    rigs = sorted(p.stem for p in (ROOT / "rigs" / "arm64").glob("*.yaml"))
    uboot = sorted(p.stem for p in (ROOT / "rigs" / "firmware" / "u-boot").glob("*.yaml"))
    out = r.stdout
    # the snapshot fan-out: the parent booted once to the prompt, every child from that point, on KVM
    assert len(uboot) >= 21 and out.count("PASS  rigs/firmware/u-boot/") == len(uboot), out
    assert "PASS  rigs/firmware/u-boot/boot.yaml::u-boot-boot-to-prompt (kvm" in out
    # real firmware on real arm64 KVM: Debian's U-Boot, powering off through PSCI
    assert "PASS  rigs/firmware/u-boot-arm64.yaml::" in out, out
    assert r.returncode == 2, out + r.stderr          # all passed, but one rig file is an error
    for name in rigs:
        assert f"PASS  rigs/arm64/{name}.yaml::" in out
    # the rig file error names the host path, line and column
    assert "\x1b[" not in out                                   # no color codes into a pipe
    assert f"{broken}:6:3: " in out and "exitt" in out
    assert f"{len(rigs) + len(uboot) + 1} passed" in out and "1 error" in out
    suites = ET.parse(junit).getroot()
    cases = list(suites.iter("testcase"))
    assert len(cases) == len(rigs) + len(uboot) + 2
    backend = {p.get("name"): p.get("value") for p in suites.iter("property")}   # on the suite (junit-10.xsd)
    props = {c.get("name"): backend.get(f"backend:{c.get('classname')}::{c.get('name')}") for c in cases}
    assert all(props[name] == "kvm" for name in rigs)
    assert sum(1 for c in cases if c.get("name", "").startswith("u-boot-") and props[c.get("name")] == "kvm") \
        == len(uboot) + 1   # and u-boot-arm64.yaml
    assert sum(1 for c in cases if c.find("error") is not None) == 1
