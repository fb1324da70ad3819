"""The arm64 half of importing kvm-unit-tests: one rig per section of the
suite's arm/unittests.cfg, running a `.flat` the way the suite's arm/run runs
it under QEMU (`-M virt,gic-version=3 -kernel X.flat -append ARGS`):

- RAM at 0x40000000 (256 MiB unless `-m` says otherwise), the binary where
  QEMU loads a raw arm64 kernel (RAM + 0x80000; the suite relocates itself);
- a generated device tree in x0: memory, cpus (`smp`), PSCI over HVC, the
  GICv3 with the generic timer (and KVM's PMUv3), the PL011 at 0x09000000 as
  stdout-path, and the test's arguments in /chosen/bootargs; QEMU virt's
  virtio-mmio window answers reads with 0 (no transports);
- the verdict: the suite prints `EXIT: STATUS=N` (N = code << 1 | 1) and
  calls PSCI SYSTEM_OFF, so the rig expects `system-off` and STATUS=1.

`arm64_rig()` is what an importer calls per section (kvmrig import
kvm-unit-tests, shared with x86_64); `python3 -m
kvmrig.importers.kvm_unit_tests_arm64 CFG FLAT_DIR -o DIR` writes them all.
What QEMU options a section has that kvmrig does not model (gic-version=2,
mte=on, migration, ...) is named in the rig's description and tags, and
such rigs are still written so the table of results shows them.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

RAM = 0x40000000
LOAD_OFFSET = 0x80000     # QEMU hw/arm/boot.c: a raw (headerless) arm64 kernel goes to RAM + 0x80000
DEFAULT_MEMORY_MB = 256
DEFAULT_TIMEOUT = 90.0    # run_tests.sh's default per test
PASS_LINE = "EXIT: STATUS=1\n"
VIRTIO_MMIO = 0x0A000000  # hw/arm/virt.c VIRT_MMIO


def max_smp_expr(text: str, max_smp: int) -> int:
    """`smp` of a section: a number, $MAX_SMP, or the suite's
    `$((($MAX_SMP < N)?$MAX_SMP:N))` (the smaller of the two)."""
    text = text.strip()
    capped = re.fullmatch(r"\$\(\(\(\$MAX_SMP\s*<\s*(\d+)\)\?\$MAX_SMP:(\d+)\)\)", text)
    if capped:
        return min(max_smp, int(capped.group(2)))
    if text == "$MAX_SMP":
        return max_smp
    return int(text)


def unmodelled(qemu_params: str, test_args: str) -> list[str]:
    """What the section asks of QEMU that kvmrig's machine does not do."""
    out = []
    words = shlex.split(qemu_params)
    for i, word in enumerate(words):
        if word == "-machine" and i + 1 < len(words):
            for opt in words[i + 1].split(","):
                if opt != "gic-version=3":
                    out.append(f"-machine {opt}")
    if "migration" in test_args:
        out.append("migration (the test migrates the VM half way)")
    return out


def arm64_rig(name: str, flat: str, *, smp: int = 1, args: str = "", groups: list[str] | None = None,
              timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB,
              ignored: list[str] | None = None) -> dict:
    """The rig (as YAML-ready data) for one kvm-unit-tests arm64 test."""
    ignored = ignored or []
    note = f" Not modelled: {'; '.join(ignored)}." if ignored else ""
    return {
        "kvmrig": 1,
        "name": f"kvm-unit-tests-arm64-{name}",
        "description": f"kvm-unit-tests {name}: {Path(flat).name} {args}".rstrip()
                       + f", {smp} vCPU(s), {memory_mb} MiB, as arm/run runs it on QEMU virt with a GICv3.{note}",
        "arch": "arm64",
        "backend": "kvm",
        "tags": ["kvm-unit-tests", *(groups or [])] + (["not-modelled"] if ignored else []),
        "timeout": f"{timeout:g}s",
        **({"cpus": smp} if smp != 1 else {}),
        "memory": [{"at": hex(RAM), "size": f"{memory_mb}M"}],
        "images": [{"file": flat, "at": hex(RAM + LOAD_OFFSET)}],
        "gic": {},
        "devices": [{"type": "pl011", "at": "0x09000000"},
                    # QEMU virt's 32 virtio-mmio transports, empty (reads 0: no magic, no device);
                    # micro-bench times MMIO exits to the VMM here.
                    {"type": "constant", "at": hex(VIRTIO_MMIO), "size": "16K", "value": 0}],
        "dtb": {"bootargs": args} if args else {},
        "expect": {"exit": "system-off", "console": {"contains": PASS_LINE, "not_contains": "FAIL: "}},
    }


def _memory(qemu_params: str) -> int:
    m = re.search(r"-m\s+(\d+)", qemu_params)
    return int(m.group(1)) if m else DEFAULT_MEMORY_MB


def rigs_from_cfg(cfg: Path, flat_dir: Path, out: Path, max_smp: int) -> list[Path]:
    """Write one rig per arm64 section of `cfg` into `out`; the rigs name the
    binaries in `flat_dir` by a path relative to `out`."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cfg)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in parser.sections():
        sec = parser[name]
        if sec.get("arch", "arm64") != "arm64":
            continue
        args = sec.get("test_args", "").strip().strip("'\"")
        qemu = sec.get("qemu_params", "")
        timeout = float(re.sub(r"s$", "", sec.get("timeout", "").strip()) or DEFAULT_TIMEOUT)
        flat = os.path.relpath(flat_dir / sec["file"], out)
        rig = arm64_rig(name, flat, smp=max_smp_expr(sec.get("smp", "1"), max_smp), args=args,
                        groups=sec.get("groups", "").split(), timeout=timeout, memory_mb=_memory(qemu),
                        ignored=unmodelled(qemu, args) + ([f"accel = {sec['accel']}"] if "accel" in sec
                                                          and sec["accel"] != "kvm" else []))
        path = out / f"{name}.yaml"
        path.write_text("# Written by kvmrig.importers.kvm_unit_tests_arm64 from " + str(cfg) + "\n"
                        + yaml.safe_dump(rig, sort_keys=False, width=100))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m kvmrig.importers.kvm_unit_tests_arm64",
                                description="Write one arm64 rig per kvm-unit-tests unittests.cfg section")
    p.add_argument("cfg", type=Path)
    p.add_argument("flat_dir", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--max-smp", type=int, default=2, help="what $MAX_SMP means (default 2)")
    a = p.parse_args(argv)
    for path in rigs_from_cfg(a.cfg, a.flat_dir, a.out, a.max_smp):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
