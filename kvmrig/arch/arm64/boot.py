"""The arm64 start state kvmrig gives a rig: EL1h, DAIF masked, MMU off."""

from __future__ import annotations

from dataclasses import dataclass

# Arm ARM C5.2.18 SPSR/PSTATE: M[3:0] = 0b0101 EL1h; D, A, I, F = bits 9..6.
PSTATE_EL1H_DAIF = 0x3C5


@dataclass(frozen=True)
class Arm64State:
    pc: int
    pstate: int = PSTATE_EL1H_DAIF

    @property
    def first_pc(self) -> int:
        return self.pc


def initial_state(entry: int) -> Arm64State:
    return Arm64State(entry)
