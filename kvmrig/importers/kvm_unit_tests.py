"""`kvmrig import kvm-unit-tests UNITTESTS_CFG FLAT_DIR -o DIR [--arch A]`:
one rig per test of a kvm-unit-tests `unittests.cfg`. The cfg is read here
for every arch; the arch (from the binaries' ELF headers, else the host's)
picks the rig: arm64 in kvm_unit_tests_arm64 (QEMU virt, as arm/run), x86_64
here, running the suite's binaries the way
its x86 runner runs them under QEMU (x86/run): a multiboot `-kernel`, the
16550 on 0x3f8, pc-testdev and isa-debug-exit on 0xf4, fw_cfg, the PIC, IOAPIC,
local APIC and PIT, 128 MiB unless `-m` says otherwise.

What a section says becomes rig keys: `smp` (a number, `$MAX_SMP` or the
suite's `$((($MAX_SMP < N)?$MAX_SMP:N))`) -> `cpus` (tagged `smp`), `-cpu MODEL,+f,-f,vendor=V` ->
`cpu.cpuid` add/remove/vendor (the model name itself is not imitated: the CPU
is KVM's), `test_args` / `-append` -> the multiboot command line, `groups` ->
tags, `timeout` -> timeout, `arch` -> which sections are written at all,
`-m` -> memory, `-machine pit=off` -> no PIT. Everything else is named in the
rig's description as not modelled.
"""

from __future__ import annotations

import configparser
import os
import platform
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kvmrig.arch.x86_64 import cpuid as features
from kvmrig.errors import UsageError

DEFAULT_TIMEOUT = 90        # seconds: kvm-unit-tests' run_tests.sh default
DEFAULT_MEMORY_MB = 128     # QEMU's default -m
LOW_LIMIT = 3 << 30         # RAM below 4 GiB ends here; the rest goes above 4 GiB
GUEST_CHECKS = "kvm-unit-tests"
ARCHES = ("x86_64", "arm64")
ELF_MACHINES = {3: "x86_64", 62: "x86_64", 183: "arm64"}   # EM_386 (the x86 .flat), EM_X86_64, EM_AARCH64
QEMU_FEATURE_NAMES = {"tsc-deadline": "tsc_deadline_timer", "arch-capabilities": "arch_capabilities"}


@dataclass
class Test:
    """One section of unittests.cfg, as kvmrig understands it."""

    name: str
    file: str
    smp: int = 1
    args: str = ""
    groups: list[str] = field(default_factory=list)
    arch: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = DEFAULT_MEMORY_MB
    memory_given: bool = False   # `-m` was given (else each arch's runner has its own default)
    pit: bool = True
    gic_version: str | None = None   # arm: `-machine gic-version=N`
    cpu_model: str | None = None
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    vendor: str | None = None
    ignored: list[str] = field(default_factory=list)   # QEMU options kvmrig does not model
    check: str = ""
    accel: str = ""


def max_smp_expr(text: str, max_smp: int) -> int:
    """`smp` of a section: a number, $MAX_SMP, or the suite's
    `$((($MAX_SMP < N)?$MAX_SMP:N))` (the smaller of the two)."""
    text = text.strip()
    capped = re.fullmatch(r"\$\(\(\(\$MAX_SMP\s*<\s*(\d+)\)\?\$MAX_SMP:(\d+)\)\)", text)
    if capped:
        return min(max_smp, int(capped.group(2)))
    if text == "$MAX_SMP":
        return max_smp
    if not text.isdigit():
        raise UsageError(f"smp {text!r} is neither a number nor a $MAX_SMP expression")
    return int(text) or 1


def _duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise UsageError(f"timeout {text!r} is not a duration")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _memory_mb(text: str) -> int:
    m = re.fullmatch(r"(?:size=)?(\d+)([MGmg]?)", text.strip())
    if not m:
        raise UsageError(f"-m {text!r} is not a memory size")
    return int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)


def _cpu(test: Test, spec: str) -> None:
    parts = spec.split(",")
    test.cpu_model = parts[0]
    for part in parts[1:]:
        if part.startswith(("+", "-")):
            name = QEMU_FEATURE_NAMES.get(part[1:], part[1:])
            if features.feature(name) is None:
                test.ignored.append(f"-cpu {part} (no such CPUID flag known to kvmrig)")
                continue
            (test.add if part[0] == "+" else test.remove).append(name)
        elif part.startswith("vendor="):
            vendor = part.split("=", 1)[1]
            if vendor in features.VENDORS:
                test.vendor = vendor
            else:
                test.ignored.append(f"-cpu {part}")
        else:
            test.ignored.append(f"-cpu {part}")


def _qemu_params(test: Test, text: str) -> None:
    words = shlex.split(text)
    i = 0
    while i < len(words):
        opt = words[i]
        value = words[i + 1] if i + 1 < len(words) else ""
        if opt == "-cpu":
            _cpu(test, value)
        elif opt == "-append":
            test.args = (test.args + " " + value).strip()
        elif opt == "-m":
            test.memory_mb = _memory_mb(value)
            test.memory_given = True
        elif opt == "-smp":
            test.smp = int(value.split(",")[0].split("=")[-1])
        elif opt == "-machine":
            rest = []
            for v in value.split(","):
                if v == "pit=off":
                    test.pit = False
                elif v.startswith("gic-version="):
                    test.gic_version = v.split("=", 1)[1]
                else:
                    rest.append(v)
            if rest:
                test.ignored.append("-machine " + ",".join(rest))
        elif opt.startswith("-"):
            test.ignored.append(f"{opt} {value}".strip() if not value.startswith("-") else opt)
            if value.startswith("-"):
                i -= 1
        i += 2


def read_cfg(path: Path, max_smp: int = 2) -> list[Test]:
    """Every section of a unittests.cfg, in file order (`$MAX_SMP` = max_smp)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#",),
                                       inline_comment_prefixes=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except (OSError, configparser.Error) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    tests = []
    for name in parser.sections():
        sec = parser[name]
        if "file" not in sec:
            raise UsageError(f"{path}: section [{name}] has no `file`")
        test = Test(name, sec["file"].strip())
        test.smp = max_smp_expr(sec.get("smp", "1").strip() or "1", max_smp)
        test.groups = sec.get("groups", "").split()
        test.arch = sec.get("arch", "").strip() or None
        test.check = sec.get("check", "").strip()
        test.accel = sec.get("accel", "").strip()
        if "timeout" in sec:
            test.timeout = _duration(sec["timeout"])
        for key in ("extra_params", "qemu_params"):
            if key in sec:
                _qemu_params(test, sec[key])
        if "test_args" in sec:
            test.args = (test.args + " " + " ".join(shlex.split(sec["test_args"]))).strip()
        tests.append(test)
    return tests


def _memory(test: Test) -> list[dict]:
    size = test.memory_mb << 20
    if size <= LOW_LIMIT:
        return [{"at": 0, "size": f"{test.memory_mb}M", "name": "RAM"}]
    return [{"at": 0, "size": f"{LOW_LIMIT >> 20}M", "name": "RAM below 4 GiB"},
            {"at": "0x100000000", "size": f"{(size - LOW_LIMIT) >> 20}M", "name": "RAM above 4 GiB"}]


def rig_for(test: Test, flat: Path, out_dir: Path) -> dict:
    """The rig (as plain data, ready for YAML) for one test."""
    rel = os.path.relpath(flat, out_dir)
    notes = []
    if test.cpu_model:
        notes.append(f"QEMU CPU model {test.cpu_model} (kvmrig keeps KVM's CPUID, with the flag changes)")
    if test.ignored:
        notes.append("not modelled: " + "; ".join(test.ignored))
    if test.check:
        notes.append(f"kvm-unit-tests runs it only if {test.check}")
    if test.gic_version:
        notes.append(f"not modelled: -machine gic-version={test.gic_version} (an arm option)")
    image = {"file": rel, "format": "multiboot", "cmdline": f"{flat.name} {test.args}".strip()}
    rig: dict = {
        "kvmrig": 1,
        "name": test.name,
        "description": f"kvm-unit-tests {test.name}: {flat.name}"
                       + (f" {test.args}" if test.args else "")
                       + (" (smp " + str(test.smp) + ")" if test.smp > 1 else "")
                       + ("; " + "; ".join(notes) if notes else ""),
        "arch": "x86_64",
        "tags": ["kvm-unit-tests", *test.groups, *(["smp"] if test.smp > 1 else [])],
        "timeout": f"{test.timeout:g}s",
        "backend": "kvm",
        "machine": {"irqchip": True, "pit": test.pit},
        "verdict": {"console": GUEST_CHECKS, "exit_codes": GUEST_CHECKS},
        "memory": _memory(test),
        "images": [image],
        "devices": [
            {"type": "serial", "port": 0x3F8},
            {"type": "isa-debug-exit", "port": 0xF4, "size": 4},
            {"type": "pc-testdev"},
            {"type": "fw-cfg"},
            {"type": "cmos"},
        ],
        "expect": {"exit": "exit-code"},
    }
    if test.smp > 1:
        rig["cpus"] = test.smp
    cpuid: dict = {}
    if test.add:
        cpuid["add"] = test.add
    if test.remove:
        cpuid["remove"] = test.remove
    if test.vendor:
        cpuid["vendor"] = test.vendor
    if cpuid:
        rig["cpu"] = {"cpuid": cpuid}
    return rig


def _yaml_text(rig: dict) -> str:
    head = ("# yaml-language-server: $schema=https://kvmrig.invalid/schemas/rig.schema.json\n"
            "# Generated by `kvmrig import kvm-unit-tests`; edit the cfg and re-import rather than this file.\n")

    class Dumper(yaml.SafeDumper):
        pass

    def ints(dumper, value):  # ports in hex, as firmware people write them
        text = hex(value) if value > 9 else str(value)
        return dumper.represent_scalar("tag:yaml.org,2002:int", text)

    Dumper.add_representer(int, ints)
    return head + yaml.dump(rig, Dumper=Dumper, sort_keys=False, default_flow_style=None, width=110)


def elf_arch(path: Path) -> str | None:
    """The arch of an ELF file by its e_machine (None: not ELF, or not one kvmrig imports)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))


def detect_arch(tests: list[Test], flat_dir: Path) -> str:
    """Which arch the binaries are for: a `.flat` that is an ELF (x86's
    multiboot kernels), or its `.elf` sibling (arm's raw `.flat`s); else the
    host's."""
    for test in tests:
        flat = flat_dir / test.file
        for candidate in (flat, flat.with_suffix(".elf")):
            arch = elf_arch(candidate)
            if arch:
                return arch
    return {"aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "x86_64")


def import_suite(cfg: Path, flat_dir: Path, out_dir: Path, arch: str | None = None,
                 max_smp: int = 2) -> tuple[list[Path], list[str]]:
    """Write one rig per test for `arch` (None: detect_arch) into out_dir:
    (files written, what was left out and why)."""
    from kvmrig.importers import kvm_unit_tests_arm64  # the arm64 half builds on this module

    tests = read_cfg(cfg, max_smp)
    arch = arch or detect_arch(tests, flat_dir)
    if arch not in ARCHES:
        raise UsageError(f"arch {arch!r}: kvmrig imports kvm-unit-tests for {', '.join(ARCHES)}")
    build = kvm_unit_tests_arm64.rig_for if arch == "arm64" else rig_for
    out_dir.mkdir(parents=True, exist_ok=True)
    written, left_out = [], []
    for test in tests:
        if test.arch not in (None, arch):
            left_out.append(f"{test.name}: arch {test.arch}")
            continue
        flat = flat_dir / test.file
        if not flat.is_file():
            left_out.append(f"{test.name}: {flat} is missing")
            continue
        path = out_dir / f"{test.name}.yaml"
        path.write_text(_yaml_text(build(test, flat.resolve(), out_dir.resolve())), encoding="utf-8")
        written.append(path)
    return written, left_out
