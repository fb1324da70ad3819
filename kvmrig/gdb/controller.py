"""One rig under a debugger: its Session driven from stop to stop.

The controller owns the rig's memory, backend and Session, and runs the
Session's own per-event handling (Session.dispatch), so devices, the rig's
breakpoints and watchpoints (counted and checked as in any run) and the end of
the run behave exactly as in `kvmrig run`. What it adds:

- the debugger's points (Session.add_client_point / remove_client_point),
  which stop the run: dispatch() sets Session.client_stop;
- single-steps (Session.set_client_step);
- the rig's timeout counts the guest's running time only, not the time it
  sits stopped in the debugger;
- the vCPU runs in slices of SLICE seconds (the backend's own timeout
  machinery), so an interrupt from the debugger (Ctrl-C) stops it promptly;
- when the run ends, the verdict is computed as usual and the VM is kept, so
  the debugger can still read the final registers and memory.

Addresses are the guest's physical addresses as the Memory maps them, and
breakpoints are at the addresses the backend reports (x86: linear). That is
the guest's view wherever code runs identity-mapped (MMU off, or the runner's
long-mode paging) with a zero code segment base.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kvmrig.backends import base
from kvmrig.backends.base import Backend
from kvmrig.machine.debug import ClientPoint
from kvmrig.machine.memory import Memory
from kvmrig.machine.outcome import Outcome, Stop
from kvmrig.machine.plan import Plan
from kvmrig.machine.session import RunOptions, Session

SLICE = 0.05  # seconds the vCPU runs before the controller looks for an interrupt


@dataclass
class StopInfo:
    """Why the guest is stopped: "entry" (not run yet), "sw" / "hw" (a debugger
    breakpoint), "watch", "step", "interrupt", or "end" (the rig's run ended)."""

    reason: str
    point: ClientPoint | None = None


class Controller:
    def __init__(self, plan: Plan, make_backend: Callable[[], Backend], options: RunOptions | None = None):
        self.plan = plan
        self.rig = plan.rig
        self.memory = Memory(plan.rig.memory)
        try:
            self.backend = make_backend()
        except BaseException:
            self.memory.close()
            raise
        self.session = Session(plan, self.backend, self.memory, options)
        self.budget = float(self.rig.timeout)   # guest running time left
        self.seconds = 0.0                       # guest running time so far
        self.exits = 0
        self.ended = False
        self.last = StopInfo("entry")
        self._started = False

    # Lifetime ---------------------------------------------------------------
    def start(self) -> StopInfo:
        """Load the rig and stop at its first instruction."""
        if not self._started:
            self._started = True
            self.session.setup()
        return self.last

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            self.memory.close()

    @property
    def outcome(self) -> Outcome:
        return self.session.outcome

    # Running ----------------------------------------------------------------
    def resume(self, step: bool = False, interrupted: Callable[[], bool] = lambda: False) -> StopInfo:
        """Run until a debugger point, the end of a single-step, an interrupt
        (`interrupted()` is asked every SLICE seconds) or the end of the run."""
        self.start()
        if self.ended:
            return self.last
        s = self.session
        s.set_client_step(step)
        if step and s.debug.sw_all:
            s.arrive(self.backend.get_pc())  # a planted breakpoint here counts now; the step runs the original
        s.client_stop = None
        run, dispatch = self.backend.run, s.dispatch
        begun = time.monotonic()
        until = begun + self.budget
        poll = begun + SLICE
        ev = None
        try:
            while True:
                ev = run(min(until, time.monotonic() + SLICE))
                now = time.monotonic()
                if ev.kind == base.TIMEOUT and now < until:  # only our slice ended
                    poll = now + SLICE
                    if interrupted():
                        return self._stopped(StopInfo("interrupt"))
                    continue
                self.exits += 1
                dispatch(ev)  # raises Stop at the end of the run
                if s.client_stop is not None:
                    why, point = s.client_stop
                    return self._stopped(StopInfo(why, point))
                if now >= poll:  # a guest that exits often never lets a slice end
                    poll = now + SLICE
                    if interrupted():
                        return self._stopped(StopInfo("interrupt"))
        except Stop as stop:
            s.ended(stop, ev)
            self._account(begun)
            self._end()
            return self.last
        finally:
            if not self.ended:
                self._account(begun)
                s.set_client_step(False)

    def _account(self, begun: float) -> None:
        spent = time.monotonic() - begun
        self.seconds += spent
        self.budget = max(0.0, self.budget - spent)

    def _stopped(self, info: StopInfo) -> StopInfo:
        self.last = info
        return info

    def _end(self) -> None:
        s = self.session
        s.client_step = False
        s.outcome.exits = self.exits
        s.outcome.seconds = self.seconds
        s._finish()  # the verdict, as Session.run() computes it
        self.ended = True
        self.last = StopInfo("end")

    def run_to_end(self) -> Outcome:
        """Drop the debugger's points and run the rig to its end (detach)."""
        self.start()
        s = self.session
        if not self.ended:
            for p in list(s.debug.client):
                s.remove_client_point(p.kind, p.addr, p.length)
            while not self.ended:
                self.resume()
        return self.outcome

    # Points -----------------------------------------------------------------
    def insert(self, kind: str, addr: int, length: int = 1) -> None:
        """A debugger point (idempotent, as the protocol asks). Raises
        NoDebugSlot or OutsideMemory."""
        if self.ended:
            return
        if any((p.kind, p.addr) == (kind, addr) and (p.length == length or not p.is_watch)
               for p in self.session.debug.client):
            return
        self.session.add_client_point(kind, addr, length)

    def remove(self, kind: str, addr: int, length: int = 1) -> None:
        if not self.ended:
            self.session.remove_client_point(kind, addr, length)

    # State ------------------------------------------------------------------
    def read_regs(self) -> dict[str, int]:
        """The registers, and those only a debugger shows (read-only: x87, SSE, fs_base, ...)."""
        return {**self.backend.get_extra_regs(), **self.backend.get_regs()}

    def write_regs(self, values: dict[str, int]) -> None:
        values = {k: v for k, v in values.items() if k not in self.backend.get_extra_regs()}
        if values:
            self.backend.set_regs(values)

    def pc(self) -> int:
        return self.backend.get_pc()

    def read_memory(self, addr: int, length: int) -> bytes:
        """Up to `length` bytes at `addr` (fewer where memory ends), planted
        breakpoint instructions shown as the bytes they replaced."""
        out = bytearray()
        view = self.session.patches.view
        while length > 0:
            b = self.memory.find(addr)
            if b is None:
                break
            n = min(length, b.end - addr)
            out += view(addr, n)
            addr += n
            length -= n
        return bytes(out)

    def write_memory(self, addr: int, data: bytes) -> bool:
        if not data:
            return True
        if not self.memory.contains(addr, len(data)):
            return False
        self.session.patches.write(addr, data)
        return True
