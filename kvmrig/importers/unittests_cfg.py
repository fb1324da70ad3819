"""A kvm-unit-tests `unittests.cfg`, read once for every arch: one Test per
section, with what its keys and QEMU options say (kvm_unit_tests and
kvm_unit_tests_arm64 turn a Test into a rig for their arch)."""

from __future__ import annotations

import configparser
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from kvmrig.arch.x86_64 import cpuid as features
from kvmrig.errors import UsageError

DEFAULT_TIMEOUT = 90        # seconds: kvm-unit-tests' run_tests.sh default
DEFAULT_MEMORY_MB = 128     # QEMU's default -m (x86/run)
GUEST_CHECKS = "kvm-unit-tests"
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
