"""Register names per arch, so the rig layer can reject unknown names early."""

from __future__ import annotations

from kvmrig.arch.arm64 import regs as _arm64
from kvmrig.arch.x86_64 import regs as _x86

_TABLES = {"x86_64": _x86, "arm64": _arm64}


def lookup(arch: str, name: str):
    """The (reg, shift, width) field `name` means on `arch`, or None."""
    return _TABLES[arch].lookup(name)


def names(arch: str) -> list[str]:
    return sorted(_TABLES[arch].REGISTERS)


def extract(value: int, shift: int, width: int) -> int:
    return (value >> shift) & ((1 << width) - 1)


def insert(full: int, value: int, shift: int, width: int) -> int:
    mask = ((1 << width) - 1) << shift
    return (full & ~mask) | ((value << shift) & mask)
