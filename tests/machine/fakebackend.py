"""A scripted backend for unit tests of the session loop (machine/session.py).

FakeBackend replays a script of events (kvmrig.backends.events) and records
what the session asked of it: debug arming, read answers, reinjections,
register writes. No KVM, no unicorn: the session's hot path (hit counting,
step-over, per-hit checks, `set`, foreign exits, timeouts) runs against it in
microseconds, and a test can say exactly which exits the "CPU" produced.

A script item is an event, or a callable taking the backend and returning one
(to look at the state mid-run, or to change registers as a guest would).
`TIMEOUT` waits for the deadline run() was given, as a real backend does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from kvmrig.backends.base import Backend, HwSlot
from kvmrig.backends.events import DebugEvent, Event, Timeout

TIMEOUT = "timeout"   # script item: run() returns Timeout once its deadline has passed


class ScriptExhausted(AssertionError):
    """The session asked for more events than the script has."""


class FakeBackend(Backend):
    name = "fake"
    arch = "x86_64"

    def __init__(self, script: Iterable[Event | str | Callable[["FakeBackend"], Event]],
                 regs: dict[str, int] | None = None, slots: tuple[int, int, bool] = (4, 4, True)):
        self.script = list(script)
        self.regs: dict[str, int] = {"rip": 0x1000, "rax": 0, "rbx": 0, "rcx": 0, "rflags": 2}
        self.regs.update(regs or {})
        self.slots_capacity = slots
        self.mapped: list[tuple[int, int, bool]] = []
        self.debug_calls: list[tuple[list[HwSlot], bool, frozenset[int]]] = []
        self.reads: list[bytes] = []
        self.reinjected: list[DebugEvent] = []
        self.set_calls: list[dict[str, int]] = []
        self.deadlines: list[float] = []
        self.closed = False

    # What the session asked -------------------------------------------------
    @property
    def single_step(self) -> bool:
        """Whether the session has single-stepping armed now."""
        return bool(self.debug_calls) and self.debug_calls[-1][1]

    # Backend ------------------------------------------------------------------
    def map_memory(self, gpa: int, buf: Any, rom: bool) -> None:
        self.mapped.append((gpa, len(buf), rom))

    def set_initial_state(self, state: Any) -> None:
        pass

    def get_regs(self) -> dict[str, int]:
        return dict(self.regs)

    def set_regs(self, regs: dict[str, int]) -> None:
        self.set_calls.append(dict(regs))
        self.regs.update(regs)

    def get_pc(self) -> int:
        return self.regs["rip"]

    def hw_debug_slots(self) -> tuple[int, int, bool]:
        return self.slots_capacity

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: Collection[int]) -> None:
        self.debug_calls.append((list(slots), single_step, frozenset(sw_breakpoints)))

    def run(self, deadline: float) -> Event:
        self.deadlines.append(deadline)
        if not self.script:
            raise ScriptExhausted("the session ran past the end of the script")
        item = self.script.pop(0)
        if item == TIMEOUT:
            time.sleep(max(0.0, deadline - time.monotonic()))
            return Timeout(self.regs["rip"])
        event = item(self) if callable(item) else item
        pc = getattr(event, "pc", None)
        if pc is not None:
            self.regs["rip"] = pc
        return event

    def complete_read(self, data: bytes) -> None:
        self.reads.append(bytes(data))

    def reinject(self, event: DebugEvent) -> None:
        self.reinjected.append(event)

    def close(self) -> None:
        self.closed = True
