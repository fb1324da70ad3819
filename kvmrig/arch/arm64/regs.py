"""arm64 register names as users write them (Arm ARM, C1.2 / D17 names).

Canonical names are what a backend reads and writes; `w0`..`w30` are the low
32 bits of `x0`..`x30`. Vector registers v0..v31 are 128-bit.
"""

from __future__ import annotations

from typing import NamedTuple

XREGS = tuple(f"x{n}" for n in range(31))
VREGS = tuple(f"v{n}" for n in range(32))
CORE = XREGS + ("sp", "pc", "pstate", "sp_el0", "sp_el1", "elr_el1", "spsr_el1", "fpsr", "fpcr")
SYSREGS = (
    "sctlr_el1", "ttbr0_el1", "ttbr1_el1", "tcr_el1", "mair_el1", "vbar_el1",
    "esr_el1", "far_el1", "tpidr_el0", "tpidr_el1", "tpidrro_el0", "contextidr_el1",
    "cpacr_el1", "amair_el1", "par_el1", "cntkctl_el1", "mpidr_el1", "midr_el1",
    "afsr0_el1", "afsr1_el1", "csselr_el1", "mdscr_el1",
)
CANONICAL = CORE + VREGS + SYSREGS


class Field(NamedTuple):
    reg: str
    shift: int
    width: int


def _table() -> dict[str, Field]:
    table = {name: Field(name, 0, 64) for name in CORE + SYSREGS}
    table.update({name: Field(name, 0, 128) for name in VREGS})
    table.update({f"w{n}": Field(f"x{n}", 0, 32) for n in range(31)})
    return table


REGISTERS: dict[str, Field] = _table()


def lookup(name: str) -> Field | None:
    return REGISTERS.get(name.lower())
