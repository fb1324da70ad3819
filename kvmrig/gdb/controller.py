"""One rig under a debugger: its Session driven from stop to stop.

The controller owns the rig's memory, backend and Session, and drives the
Session's one run loop (Session.resume / step / finish), so devices, the rig's
breakpoints and watchpoints (counted and checked as in any run) and the end of
the run behave exactly as in `kvmrig run`. What it adds:

- the debugger's points (Session.add_client_point / remove_client_point),
  which stop the run;
- single-steps (Session.step);
- the vCPU runs in slices of SLICE seconds (resume's `until`), so an
  interrupt from the debugger (Ctrl-C) stops it promptly; the rig's timeout
  counts the guest's running time only (Session.seconds), not the time it
  sits stopped in the debugger;
- when the run ends, the verdict is computed as usual (Session.finish) and
  the VM is kept, so the debugger can still read the final registers and
  memory;
- with several vCPUs (x86_64 KVM, `cpus: N`) each is a thread of the
  debugger, all-stop: whenever the controller returns, every vCPU is
  stopped (Backend.debug_stop); resume() lets them all run, or only one
  (a single-step runs only the vCPU stepped, the others stay stopped; a
  continue of one vCPU likewise), and stops when any of them stops for
  the debugger. A stop another vCPU had meanwhile (while the machine was
  being stopped) is reported at the next resume() without running, as
  gdbserver reports a pending status.

Addresses are the guest's physical addresses as the Memory maps them, and
breakpoints are at the addresses the backend reports (x86: linear). That is
the guest's view wherever code runs identity-mapped (MMU off, or the runner's
long-mode paging) with a zero code segment base.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kvmrig.backends.base import Backend
from kvmrig.machine.debug import ClientPoint
from kvmrig.machine.memory import Memory
from kvmrig.machine.outcome import Outcome
from kvmrig.machine.plan import Plan
from kvmrig.machine.session import RunOptions, Session

SLICE = 0.05  # seconds the vCPU runs before the controller looks for an interrupt


@dataclass
class StopInfo:
    """Why the guest is stopped: "entry" (not run yet), "sw" / "hw" (a debugger
    breakpoint), "watch", "step", "interrupt", or "end" (the rig's run ended);
    `cpu`: the vCPU that stopped (that ended the run, for "end")."""

    reason: str
    point: ClientPoint | None = None
    cpu: int = 0


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
        self.last = StopInfo("entry")

    # Lifetime ---------------------------------------------------------------
    def start(self) -> StopInfo:
        """Load the rig and stop at its first instruction (every vCPU)."""
        self.backend.debug_stop()   # before the start: the other vCPUs start stopped
        self.session.start()
        self.backend.debug_stop()
        return self.last

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            self.memory.close()

    @property
    def outcome(self) -> Outcome:
        return self.session.outcome

    @property
    def cpus(self) -> int:
        """The vCPUs the debugger sees (threads): 1, or all with `cpus: N` on x86_64 KVM."""
        return self.backend.debug_cpus()

    def cpu_status(self, cpu: int) -> str:
        """What vCPU `cpu` is doing ("running", "halted", "waiting for SIPI", ...), or ""."""
        return self.backend.cpu_status(cpu)

    @property
    def ended(self) -> bool:
        """The rig's run is over (and judged: outcome holds the verdict)."""
        return self.session.ended

    @property
    def exits(self) -> int:
        return self.session.exits

    @property
    def seconds(self) -> float:
        """Guest running time so far."""
        return self.session.seconds

    @property
    def budget(self) -> float:
        """Guest running time left before the rig's timeout."""
        return max(0.0, float(self.rig.timeout) - self.session.seconds)

    # Running ----------------------------------------------------------------
    def resume(self, step: bool = False, interrupted: Callable[[], bool] = lambda: False, cpu: int = 0,
               alone: bool = False) -> StopInfo:
        """Run until a debugger point, the end of a single-step, an interrupt
        (`interrupted()` is asked every SLICE seconds) or the end of the run.
        With several vCPUs: all run, but for a step (`cpu` alone) or with
        `alone` (only `cpu` continues); all are stopped again on return."""
        s = self.session
        s.start()
        if s.ap_stops and not s.ended:   # another vCPU stopped meanwhile: that first, nothing runs
            pause = s.ap_stops.popleft()
            self.last = StopInfo(pause.reason, pause.point, pause.cpu)
            return self.last
        multi = self.cpus > 1
        if multi and not step:   # (a step lets its vCPU go once it is armed: Session.step)
            self.backend.debug_go([cpu] if alone else None)
        try:
            self.last = self._run(step, interrupted, cpu)
        finally:
            if multi:
                self.backend.debug_stop()
        return self.last

    def _run(self, step: bool, interrupted: Callable[[], bool], cpu: int) -> StopInfo:
        s = self.session
        while True:
            pause = s.step(time.monotonic() + SLICE, cpu) if step else s.resume(time.monotonic() + SLICE)
            if pause.reason == "end":
                s.finish()
                return StopInfo("end", cpu=s.end_cpu)
            if pause.reason != "until":
                return StopInfo(pause.reason, pause.point, pause.cpu)
            if interrupted():
                return StopInfo("interrupt", cpu=cpu)

    def run_to_end(self) -> Outcome:
        """Drop the debugger's points and run the rig to its end (detach)."""
        s = self.session
        s.start()
        if not s.ended:
            for p in list(s.debug.client):
                s.remove_client_point(p.kind, p.addr, p.length)
            while not s.ended:
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
    def read_regs(self, cpu: int = 0) -> dict[str, int]:
        """vCPU `cpu`'s registers, and those only a debugger shows (read-only: x87, SSE, fs_base, ...)."""
        with self.backend.on_cpu(cpu):
            return {**self.backend.get_extra_regs(), **self.backend.get_regs()}

    def write_regs(self, values: dict[str, int], cpu: int = 0) -> None:
        with self.backend.on_cpu(cpu):
            values = {k: v for k, v in values.items() if k not in self.backend.get_extra_regs()}
            if values:
                self.backend.set_regs(values)

    def pc(self, cpu: int = 0) -> int:
        with self.backend.on_cpu(cpu):
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
