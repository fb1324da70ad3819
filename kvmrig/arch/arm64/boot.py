"""The arm64 start state kvmrig gives a rig: EL1h, DAIF masked, MMU off; with
a device tree, its address in x0 (Linux arm64 booting.rst: x0 = DTB, x1-x3 =
0); and the machine the backend builds around the vCPUs (GICv3, count)."""

from __future__ import annotations

from dataclasses import dataclass

# Arm ARM C5.2.18 SPSR/PSTATE: M[3:0] = 0b0101 EL1h; D, A, I, F = bits 9..6.
PSTATE_EL1H_DAIF = 0x3C5


@dataclass(frozen=True)
class GicLayout:
    distributor: int
    redistributor: int
    irqs: int


@dataclass(frozen=True)
class Arm64State:
    pc: int
    pstate: int = PSTATE_EL1H_DAIF
    dtb: int | None = None          # x0 at entry
    gic: GicLayout | None = None    # an in-kernel GICv3 to create
    cpus: int = 1

    @property
    def first_pc(self) -> int:
        return self.pc

    @property
    def entry_regs(self) -> dict[str, int]:
        """Registers set at entry besides pc and pstate."""
        if self.dtb is None:
            return {}
        return {"x0": self.dtb, "x1": 0, "x2": 0, "x3": 0}


def initial_state(entry: int, dtb: int | None = None, gic: GicLayout | None = None, cpus: int = 1) -> Arm64State:
    return Arm64State(entry, dtb=dtb, gic=gic, cpus=cpus)
