"""The one small interface every backend implements, and the events it returns.

A backend maps memory the machine layer owns, gets and sets registers by their
architectural names, arms debug hardware, and runs the vCPU until something
happens. It decides nothing about the rig: devices, hit counting and
expectations live in the machine layer, which reads the events below.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

# Event kinds: a closed set. Unhandled carries the backend's raw reason.
HALT = "halt"            # the vCPU executed HLT (x86) / nothing else to do
SHUTDOWN = "shutdown"    # triple fault (x86)
SYSTEM = "system"        # PSCI SYSTEM_OFF / SYSTEM_RESET etc.; detail = "off" | "reset" | ...
IO = "io"                # port I/O (x86)
MMIO = "mmio"            # access to guest-physical memory no RAM region backs (or ROM write)
DEBUG = "debug"          # breakpoint, watchpoint or single-step
TIMEOUT = "timeout"      # the deadline passed while the guest ran
UNHANDLED = "unhandled"  # anything else: detail says what, raw the backend's code


@dataclass(slots=True)
class Event:
    """What stopped the vCPU.

    For IO/MMIO: addr (port or guest-physical address), size (bytes per
    access), write, data (the bytes written; for reads the machine answers with
    Backend.complete_read) and count (string I/O repeats).
    For DEBUG: detail is "sw" | "hw" | "watch" | "step" | "foreign", pc is
    where the vCPU stopped, addr the data address for watchpoints, slot the
    debug register that fired (or -1).
    """

    kind: str
    addr: int = 0
    size: int = 0
    write: bool = False
    data: bytes = b""
    count: int = 1
    pc: int = 0
    slot: int = -1
    detail: str = ""
    raw: Any = None
    cpu: int = 0             # the vCPU it happened on (arm64 `cpus: N`)


@dataclass(frozen=True, slots=True)
class HwSlot:
    """One hardware debug register's job: an exec breakpoint or a data watch.

    `kind` is "exec" | "write" | "read" | "access"; `length` is what one
    register covers (x86: 1, 2, 4, 8 naturally aligned; arm64 adds
    byte-select and power-of-two masks).
    """

    addr: int
    kind: str
    length: int = 1


class Backend(ABC):
    """How a rig runs. One instance runs one rig once, then is closed."""

    name: str = "?"
    arch: str = "?"

    @abstractmethod
    def map_memory(self, gpa: int, buf: Any, rom: bool) -> None:
        """Back [gpa, gpa+len(buf)) with `buf` (writable buffer the machine owns)."""

    @abstractmethod
    def set_initial_state(self, state: Any) -> None:
        """Apply the arch's initial CPU state (from kvmrig.arch.<arch>.boot)."""

    @abstractmethod
    def get_regs(self) -> dict[str, int]:
        """All architectural registers kvmrig knows, by canonical name."""

    @abstractmethod
    def set_regs(self, regs: dict[str, int]) -> None:
        """Set registers by canonical name; others keep their value."""

    @abstractmethod
    def hw_debug_slots(self) -> tuple[int, int, bool]:
        """(breakpoint slots, watchpoint slots, shared): x86 has 4 shared."""

    @abstractmethod
    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: Collection[int]) -> None:
        """Arm hardware slots, single-step, and trapping of the software
        breakpoints planted at `sw_breakpoints` (addresses)."""

    @abstractmethod
    def run(self, deadline: float) -> Event:
        """Run until an event; `deadline` is time.monotonic() seconds."""

    @abstractmethod
    def complete_read(self, data: bytes) -> None:
        """Answer the IO/MMIO read of the last event before the next run()."""

    def sw_break_insn(self) -> bytes:
        """The instruction planted for `kind: sw` breakpoints on this backend."""
        from kvmrig.arch.traits import traits
        return traits(self.arch).sw_break

    def get_pc(self) -> int:
        """The program counter (cheaper than get_regs where a backend can)."""
        from kvmrig.arch.traits import traits
        return self.get_regs()[traits(self.arch).pc]

    def set_irq_line(self, intid: int, level: bool) -> None:
        """Drive a device's interrupt line (arm64: a GIC SPI by INTID) to `level`."""
        from kvmrig.errors import BackendError
        raise BackendError(f"the {self.name} backend has no interrupt controller (INTID {intid})")

    def reinject(self, event: Event) -> None:
        """Hand a debug exception kvmrig did not cause back to the guest."""

    def describe_failure(self) -> str:
        """Extra text for a failure report (e.g. KVM's entry failure reason)."""
        return ""

    def close(self) -> None:
        """Release everything; must be safe to call twice."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
