"""The one small interface every backend implements, and the events it returns.

A backend maps memory the machine layer owns, gets and sets registers by their
architectural names, arms debug hardware, and runs the vCPU until something
happens (kvmrig.backends.events). It decides nothing about the rig: devices,
hit counting and expectations live in the machine layer, which reads the events.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from kvmrig.arch.traits import traits
from kvmrig.backends.events import DebugEvent, Event
from kvmrig.errors import BackendError


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

    def max_cpus(self) -> int | None:
        """How many vCPUs one VM of this backend can have (None: only the
        rig's own limits apply): the machine layer checks the rig's `cpus`
        against it, so the error names that key's line."""
        return None

    def offers_pmu(self, state: Any) -> bool:
        """Whether the vCPUs of a VM with this initial state get a PMU (arm64:
        KVM's PMUv3): the generated device tree lists one only then."""
        return False

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
        """Answer the PortIO/Mmio read of the last event before the next run()."""

    def sw_break_insn(self) -> bytes:
        """The instruction planted for `kind: sw` breakpoints on this backend."""
        return traits(self.arch).sw_break

    def get_pc(self) -> int:
        """The program counter (cheaper than get_regs where a backend can)."""
        return self.get_regs()[traits(self.arch).pc]

    def start_aps(self, handler) -> None:
        """Start the other vCPUs (cpus > 1) on their own threads; `handler(index,
        event)` handles each of their events (this backend's calls address that
        vCPU meanwhile) and raises to end the run."""

    def quiesce(self) -> None:
        """Stop every vCPU but the one run() drives (before the verdict)."""

    def world_stopped(self) -> contextlib.AbstractContextManager:
        """A context in which no vCPU runs and none has an access in flight (a
        snapshot of the whole machine is taken in it). One vCPU, or a
        backend that runs the others only while its own run() runs: nothing to do."""
        return contextlib.nullcontext()

    # A debugger's view of every vCPU (kvmrig.gdb) ------------------------------
    def debug_cpus(self) -> int:
        """How many vCPUs a debugger can show as threads (each addressed by
        on_cpu() and stopped and started by debug_stop()/debug_go()). 1: the
        one vCPU, or a backend that shows only the vCPU of the last event."""
        return 1

    def on_cpu(self, index: int) -> contextlib.AbstractContextManager:
        """A context in which get_regs, set_regs, get_pc and get_extra_regs
        address vCPU `index` (a debugger's thread), called while
        debug_stop() holds the machine or after the run ended."""
        if index != 0:
            raise BackendError(f"the {self.name} backend shows a debugger vCPU 0 only, not {index}")
        return contextlib.nullcontext()

    def cpu_status(self, index: int) -> str:
        """What vCPU `index` is doing, for a debugger ("running", "halted",
        "waiting for SIPI", ...); "" where the backend cannot say."""
        return ""

    def debug_stop(self) -> None:
        """Every vCPU out of the guest (its access in flight completed) until
        debug_go(): what a debugger's stop means with several vCPUs. Before
        the run starts: the others start stopped. One vCPU: nothing to do."""

    def debug_go(self, cpus: Collection[int] | None) -> None:
        """Let the vCPUs in `cpus` (None: all) run at the next run() calls; the
        others stay stopped. Without vCPU 0, run() does not enter the guest:
        it returns when another vCPU stops (Paused), the run ends or the
        deadline passes. One vCPU: nothing to do."""

    def ask_stop(self, index: int) -> None:
        """Called on vCPU `index`'s thread (> 0) as it handles an event that
        stops the debugger: that vCPU stays out of the guest, and vCPU 0's
        run() returns Paused so the session reports the stop."""

    def step_alone(self, on: bool) -> None:
        """While on, only the vCPU of the last event runs: the machine has lifted
        a software breakpoint from the memory every vCPU shares to single-step
        that vCPU over it, and another vCPU would run past it uncounted. One
        vCPU (the default): nothing to do."""

    def get_extra_regs(self) -> dict[str, int]:
        """Registers only a debugger shows (x86: fs_base, gs_base, the x87 and
        SSE registers, named as gdb names them): read on demand, read-only,
        never on a rig's hot path. Default: none."""
        return {}

    def record_blocks(self, sink: Callable[[int, int], None]) -> bool:
        """Call sink(start, size) for every basic block the guest executes
        (for coverage); False where the backend cannot, and coverage plants
        one-shot breakpoints instead."""
        return False

    def blocks_done(self, stop: int | None) -> None:
        """The run is over: report to record_blocks' sink what is still pending;
        `stop` is where it stopped (the instruction there did not run), if known."""

    def set_irq_line(self, intid: int, level: bool) -> None:
        """Drive a device's interrupt line to `level`: arm64 a GIC SPI by INTID
        (with a `gic`), x86 an ISA IRQ / IOAPIC pin (with machine.irqchip)."""
        raise BackendError(f"the {self.name} backend has no interrupt controller (interrupt {intid} raised)")

    def current_cpu(self) -> int:
        """The vCPU the last event came from (and get_regs/set_regs address): 0 but with `cpus: N`."""
        return 0

    def reinject(self, event: DebugEvent) -> None:
        """Hand a debug exception kvmrig did not cause back to the guest (the
        event's `code` says which)."""

    def describe_failure(self) -> str:
        """Extra text for a failure report (e.g. KVM's entry failure reason)."""
        return ""

    def close(self) -> None:
        """Release everything; must be safe to call twice."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
