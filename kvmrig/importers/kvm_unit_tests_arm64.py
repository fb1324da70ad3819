"""The arm64 half of `kvmrig import kvm-unit-tests`: the rig for one section
of the suite's arm/unittests.cfg (read by unittests_cfg.read_cfg), running a
`.flat` the way the suite's arm/run runs it under QEMU (`-M
virt,gic-version=3 -kernel X.flat -append ARGS`):

- RAM at 0x40000000 (256 MiB unless `-m` says otherwise), the binary where
  QEMU loads a raw arm64 kernel (RAM + 0x80000; the suite relocates itself);
- a generated device tree in x0: memory, cpus (`smp`), PSCI over HVC, the
  GICv3 with the generic timer (and KVM's PMUv3 where KVM offers it), the
  PL011 at 0x09000000 as stdout-path, and the test's arguments in
  /chosen/bootargs; QEMU virt's virtio-mmio window answers reads with 0 (no
  transports);
- the verdict: `verdict: {console: kvm-unit-tests, exit_codes:
  kvm-unit-tests}` as on x86: each PASS/FAIL/SKIP line is a JUnit testcase,
  and the `EXIT: STATUS=N` line the suite prints before PSCI SYSTEM_OFF
  (N = code << 1 | 1) says pass, fail, skip or abort (machine/verdict.py).

What QEMU options a section has that kvmrig does not model (gic-version=2,
mte=on, migration, ...) is named in the rig's description and tags, and such
rigs are still written so the table of results shows them.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvmrig.importers.unittests_cfg import GUEST_CHECKS, Test

RAM = 0x40000000
LOAD_OFFSET = 0x80000     # QEMU hw/arm/boot.c: a raw (headerless) arm64 kernel goes to RAM + 0x80000
DEFAULT_MEMORY_MB = 256   # arm/run's default
PL011 = 0x09000000        # hw/arm/virt.c VIRT_UART
VIRTIO_MMIO = 0x0A000000  # hw/arm/virt.c VIRT_MMIO


def unmodelled(test: Test) -> list[str]:
    """What the section asks of QEMU that kvmrig's arm64 machine does not do."""
    out = list(test.ignored)
    if test.gic_version not in (None, "3"):
        out.append(f"-machine gic-version={test.gic_version}")
    if "migration" in test.args:
        out.append("migration (the test migrates the VM half way)")
    if test.accel and test.accel != "kvm":
        out.append(f"accel = {test.accel}")
    return out


def rig_for(test: Test, flat: Path, out_dir: Path) -> dict:
    """The rig (as plain data, ready for YAML) for one arm64 test."""
    ignored = unmodelled(test)
    memory_mb = test.memory_mb if test.memory_given else DEFAULT_MEMORY_MB
    note = f" Not modelled: {'; '.join(ignored)}." if ignored else ""
    rig: dict = {
        "kvmrig": 1,
        "name": test.name,
        "description": f"kvm-unit-tests {test.name}: {flat.name} {test.args}".rstrip()
                       + f", {test.smp} vCPU(s), {memory_mb} MiB, as arm/run runs it on QEMU virt with a GICv3.{note}",
        "arch": "arm64",
        "backend": "kvm",
        "tags": ["kvm-unit-tests", *test.groups, *(["smp"] if test.smp > 1 else []),
                 *(["not-modelled"] if ignored else [])],
        "timeout": f"{test.timeout:g}s",
        "verdict": {"console": GUEST_CHECKS, "exit_codes": GUEST_CHECKS},
        "memory": [{"at": RAM, "size": f"{memory_mb}M"}],
        "images": [{"file": os.path.relpath(flat, out_dir), "at": RAM + LOAD_OFFSET}],
        "gic": {},
        "devices": [{"type": "pl011", "at": PL011},
                    # QEMU virt's 32 virtio-mmio transports, empty (reads 0: no magic, no device);
                    # micro-bench times MMIO exits to the VMM here.
                    {"type": "constant", "at": VIRTIO_MMIO, "size": "16K", "value": 0}],
        "dtb": {"bootargs": test.args} if test.args else {},
        "expect": {"exit": "system-off"},
    }
    if test.smp > 1:
        rig["cpus"] = test.smp
    return rig
