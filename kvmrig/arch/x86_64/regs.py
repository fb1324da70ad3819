"""x86_64 register names as users write them, and how sub-registers nest.

Canonical registers are the full-width ones a backend reads and writes
(rax..r15, rip, rflags, segment selectors, control registers, EFER).
Aliases (eax, ax, al, ah, r8d, eip, ...) are a bit-field of a canonical
register: reading one extracts the field, setting one replaces only those bits
(Intel SDM vol. 1, 3.4.1: "general-purpose registers" naming).
"""

from __future__ import annotations

from typing import NamedTuple

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
CANONICAL = GPRS + ("rip", "rflags") + SEGMENTS + CONTROL


class Field(NamedTuple):
    reg: str    # canonical register
    shift: int  # lowest bit
    width: int  # bits


def _aliases() -> dict[str, Field]:
    table: dict[str, Field] = {name: Field(name, 0, 64) for name in GPRS + ("rip", "rflags") + CONTROL}
    table.update({name: Field(name, 0, 16) for name in SEGMENTS})
    for letter in "abcd":
        full = f"r{letter}x"
        table[f"e{letter}x"] = Field(full, 0, 32)
        table[f"{letter}x"] = Field(full, 0, 16)
        table[f"{letter}l"] = Field(full, 0, 8)
        table[f"{letter}h"] = Field(full, 8, 8)
    for name in ("si", "di", "sp", "bp"):
        full = f"r{name}"
        table[f"e{name}"] = Field(full, 0, 32)
        table[name] = Field(full, 0, 16)
        table[f"{name}l"] = Field(full, 0, 8)
    for n in range(8, 16):
        full = f"r{n}"
        table[f"r{n}d"] = Field(full, 0, 32)
        table[f"r{n}w"] = Field(full, 0, 16)
        table[f"r{n}b"] = Field(full, 0, 8)
    table["eip"] = Field("rip", 0, 32)
    table["ip"] = Field("rip", 0, 16)
    table["eflags"] = Field("rflags", 0, 32)
    table["flags"] = Field("rflags", 0, 16)
    return table


REGISTERS: dict[str, Field] = _aliases()


def lookup(name: str) -> Field | None:
    """The field a user-written register name means, or None if unknown."""
    return REGISTERS.get(name.lower())
