"""Running one prepared rig on one backend: the per-exit loop.

The loop turns backend events into device accesses, breakpoint hits and the
end of the run; it is the hot path (one turn per VM exit), so each event kind
is dispatched once and nothing is computed that the rig did not ask for.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kvmrig.arch import registers
from kvmrig.backends import base
from kvmrig.backends.base import Backend, Event
from kvmrig.machine.debug import MAX_HIT_RECORDS, ClientPoint, DebugPlan, Point, SwPatches
from kvmrig.machine import golden
from kvmrig.machine.devices import Bus
from kvmrig.machine.diagnose import stop_report
from kvmrig.machine.expect import check_end, check_state, reg_value
from kvmrig.machine.memory import Memory, OutsideMemory
from kvmrig.machine.outcome import Hit, Outcome, Stop
from kvmrig.machine.plan import Plan



@dataclass(frozen=True)
class RunOptions:
    """How to run, beyond what the rig says (from the command line)."""

    update_golden: bool = False


TAIL = 16  # executed addresses kept for the failure report when single-stepping


def apply_regs(backend: Backend, arch: str, values: tuple[tuple[str, int, object], ...]) -> None:
    """Set user-named registers, merging sub-registers (eax, w0) into their full register."""
    if not values:
        return
    current = backend.get_regs()
    update: dict[str, int] = {}
    for name, value, _mark in values:
        field = registers.lookup(arch, name)
        assert field is not None  # the rig layer rejected unknown names
        full = update.get(field.reg, current.get(field.reg, 0))
        update[field.reg] = registers.insert(full, value, field.shift, field.width)
    backend.set_regs(update)


class Session:
    """One run: memory, devices, debug state and the loop over events."""

    def __init__(self, plan: Plan, backend: Backend, memory: Memory, options: RunOptions | None = None):
        self.plan = plan
        self.options = options or RunOptions()
        self.rig = plan.rig
        self.backend = backend
        self.memory = memory
        self.outcome = Outcome(exit="?", backend=backend.name)
        self.bus = Bus(self.rig.devices, self.outcome, self.rig.unclaimed_io)
        self.debug = DebugPlan(self.rig, plan.traits, plan.resolve, backend.hw_debug_slots())
        self.patches = SwPatches(memory, backend.sw_break_insn())
        self.user_step = self.rig.trace_max > 0 or self.rig.expect.steps is not None
        self.stepping_over: int | None = None
        self.pc_moved = False  # a breakpoint's `set` changed the program counter
        self.steps = 0
        self.last_pc = plan.boot.first_pc  # the instruction a single-step exit has just executed
        self.tail: deque[int] = deque(maxlen=TAIL)  # last executed addresses, for failure reports
        # A debugger driving this session event by event (kvmrig.gdb): its single-step,
        # and why the last dispatch() stopped for it: ("step" | "sw" | "hw" | "watch", point).
        self.client_step = False
        self.client_stop: tuple[str, ClientPoint | None] | None = None
        self._armed = False

    # Setup ---------------------------------------------------------------
    def setup(self) -> None:
        for img in self.plan.images:
            for addr, body in img.segments:
                self.memory.write(addr, body)
        for addr, data in self.plan.boot.writes:
            self.memory.write(addr, data)
        for b in self.memory.backings:
            self.backend.map_memory(b.start, b.buf, b.region.rom)
        self.backend.set_initial_state(self.plan.boot.state)
        if any(d.irq is not None for d in self.rig.devices):
            self.bus.connect_irqs(self.backend.set_irq_line)
        if self.rig.cpu is not None:
            apply_regs(self.backend, self.rig.arch, self.rig.cpu.regs)
        for addr in self.debug.sw:
            self.patches.plant(addr)
        self._arm(self.user_step)
        if self.user_step and self.rig.trace_max:
            self.outcome.trace.append(self.plan.boot.first_pc)
        if self.user_step and self.debug.sw_all:
            self.arrive(self.plan.boot.first_pc)  # a breakpoint on the first instruction

    def _arm(self, single_step: bool) -> None:
        single_step = single_step or self.client_step
        if self.debug.slots or self.debug.any_sw or single_step or self._armed:
            self._armed = True
            self.backend.set_debug(self.debug.slots, single_step, self.debug.sw_all)

    # Hooks for a debugger (kvmrig.gdb drives dispatch() itself) ------------
    def add_client_point(self, kind: str, addr: int, length: int = 1) -> ClientPoint:
        """A debugger's breakpoint ("sw" | "hw") or watchpoint ("write" | "read" |
        "access"), armed at once; debug.NoDebugSlot when no register is left."""
        if kind == "sw" and not self.memory.contains(addr, len(self.patches.insn)):
            raise OutsideMemory(f"no memory at {addr:#x} to plant a breakpoint in")
        point = self.debug.add_client(kind, addr, length)
        if kind == "sw" and addr != self.stepping_over:  # being stepped over: the step re-plants it
            self.patches.plant(addr)
        self._arm(self.user_step or self.stepping_over is not None)
        return point

    def remove_client_point(self, kind: str, addr: int, length: int = 1) -> bool:
        if not self.debug.remove_client(kind, addr, length):
            return False
        if kind == "sw" and addr not in self.debug.sw_all and addr != self.stepping_over:
            self.patches.lift(addr)
        self._arm(self.user_step or self.stepping_over is not None)
        return True

    def set_client_step(self, on: bool) -> None:
        """Single-step for a debugger: dispatch() sets client_stop at the next step."""
        if on != self.client_step:
            self.client_step = on
            self._arm(self.user_step or self.stepping_over is not None)

    # The loop --------------------------------------------------------------
    def run(self) -> Outcome:
        started = time.monotonic()
        deadline = started + self.rig.timeout
        backend, outcome = self.backend, self.outcome
        exits = 0
        ev = None
        try:
            self.setup()
            dispatch = self.dispatch
            while True:
                ev = backend.run(deadline)
                exits += 1
                dispatch(ev)
        except Stop as stop:
            self.ended(stop, ev)
        outcome.exits = exits
        outcome.seconds = time.monotonic() - started
        self._finish()
        return outcome

    def dispatch(self, ev: Event) -> None:
        """Handle one backend event; raise Stop when it ends the run. The body of
        run()'s loop, also driven event by event by a debugger (kvmrig.gdb)."""
        kind = ev.kind
        if kind == base.IO:
            self._io(ev)
        elif kind == base.MMIO:
            self._mmio(ev)
        elif kind == base.DEBUG:
            self._debug(ev)
        elif kind == base.HALT:
            raise Stop("hlt", None, f"hlt at {ev.pc:#x}")
        elif kind == base.SHUTDOWN:
            raise Stop("shutdown", None, ev.detail or "triple fault: the CPU shut down")
        elif kind == base.SYSTEM:
            exit = {"off": "system-off", "reset": "reset"}.get(ev.detail, "unhandled")
            raise Stop(exit, None, f"system event {ev.detail}" + (f" on vCPU {ev.cpu}" if self.rig.cpus > 1 else ""))
        elif kind == base.TIMEOUT:
            raise Stop("timeout", None, f"still running after {self.rig.timeout:g}s (pc {ev.pc:#x})")
        else:
            raise Stop("unhandled", None, ev.detail or f"backend stopped: {ev.raw!r}")

    def ended(self, stop: Stop, ev: Event | None) -> None:
        """Record how the run ended (`ev`: the last event); _finish() follows."""
        outcome = self.outcome
        outcome.exit, outcome.exit_code, outcome.detail = stop.exit, stop.code, stop.detail
        if outcome.stop_pc is None and ev is not None and ev.kind not in (base.IO, base.MMIO):
            outcome.stop_pc = ev.pc
        if self.user_step and stop.exit != "timeout":
            self.steps += 1  # the instruction that ended the run

    def _io(self, ev: Event) -> None:
        size, bus = ev.size, self.bus
        if ev.write:
            data = ev.data
            for i in range(ev.count):
                bus.port_write(ev.addr, size, int.from_bytes(data[i * size:(i + 1) * size], "little"))
        else:
            out = b"".join(bus.port_read(ev.addr, size).to_bytes(size, "little") for _ in range(ev.count))
            self.backend.complete_read(out)

    def _mmio(self, ev: Event) -> None:
        if ev.write:
            value = int.from_bytes(ev.data[:ev.size], "little")
            self.bus.mmio_write(ev.addr, ev.size, value, rom=self.memory.find(ev.addr) is not None)
        else:
            self.backend.complete_read(self.bus.mmio_read(ev.addr, ev.size).to_bytes(ev.size, "little"))

    # Debug ---------------------------------------------------------------
    def _debug(self, ev: Event) -> None:
        cause = ev.detail
        if cause == "step":
            self._check_halted()
            self.last_pc = ev.pc
            if self.stepping_over is not None:
                if self.stepping_over in self.debug.sw_all:  # a debugger may have removed its point
                    self.patches.plant(self.stepping_over)
                self.stepping_over = None
                if not self.user_step:
                    self._arm(False)
            if self.user_step:
                self.steps += 1
                self.tail.append(ev.pc)
                if len(self.outcome.trace) < self.rig.trace_max:
                    self.outcome.trace.append(ev.pc)
            if self.user_step or self.client_step:
                if self.debug.sw_all:
                    self.arrive(ev.pc)
                if self.client_step:
                    self.client_stop = ("step", None)
            return
        if cause == "sw":
            points = self.debug.sw.get(ev.pc)
            client = self.debug.client_hit(ev) if self.debug.client else None
            if not points and client is None:
                self._foreign(ev, "a software breakpoint the rig did not plant")
                return
            self.pc_moved = False
            for point in points or ():
                self._hit(point, ev)
            if client is not None:
                self.client_stop = ("sw", client)
            self.last_pc = ev.pc
            if not self.pc_moved:   # unless `set` moved the pc: step over it
                self.patches.lift(ev.pc)
                self.stepping_over = ev.pc
                if not self.user_step:
                    self._arm(True)
            return
        if cause in ("hw", "watch") and 0 <= ev.slot < len(self.debug.slot_owner):
            # One access can hit several watchpoints (overlapping ranges, or one
            # split over registers): each of the rig's points counts it once.
            slots = ev.raw if cause == "watch" and isinstance(ev.raw, tuple) else (ev.slot,)
            owners: list = []
            for i in slots:
                if 0 <= i < len(self.debug.slot_owner) and not any(o is self.debug.slot_owner[i] for o in owners):
                    owners.append(self.debug.slot_owner[i])
            for owner in owners:
                if isinstance(owner, Point):
                    self._hit(owner, ev)
            if self.debug.client and (client := self.debug.client_hit(ev)) is not None:
                self.client_stop = (cause, client)
            if cause == "hw":
                self.last_pc = ev.pc
            return
        self._foreign(ev, f"a debug exit kvmrig did not cause ({cause})")

    def arrive(self, pc: int) -> None:
        """The vCPU will single-step the instruction at `pc`: a breakpoint planted
        there is hit now, and stepped over, so no single-step runs a planted
        instruction (a KVM that plants HLT reports that as a plain step and
        leaves the vCPU halted)."""
        if pc == self.stepping_over or pc not in self.debug.sw_all:
            return
        insn = self.patches.insn
        try:
            if self.memory.read(pc, len(insn)) != insn:
                return
        except LookupError:
            return
        self._debug(Event(base.DEBUG, pc=pc, detail="sw"))

    def _check_halted(self) -> None:
        """A single-step over a halting instruction exits as a step, not a halt."""
        halt = self.plan.traits.halt
        if halt is None:
            return
        try:
            insn = self.patches.view(self.last_pc, len(halt))
        except LookupError:
            return
        if insn == halt:
            self.outcome.stop_pc = self.last_pc
            raise Stop("hlt", None, f"hlt at {self.last_pc:#x}")

    def _foreign(self, ev: Event, what: str) -> None:
        self.outcome.notes.append(f"{what} at pc {ev.pc:#x}: handed back to the guest")
        self.backend.reinject(ev)

    def _hit(self, point: Point, ev: Event) -> None:
        point.hits += 1
        spec = point.spec
        applies = point.applies()
        hit = Hit(point.label, point.hits, ev.pc, ev.addr if point.is_watch else None, cpu=ev.cpu)
        if applies and (spec.expect is not None or spec.set is not None):
            regs = self.backend.get_regs()
            if spec.expect is not None:
                watched = (point.addr, point.length) if point.is_watch else None
                where = f" on vCPU {ev.cpu}" if self.rig.cpus > 1 else ""
                hit.failures = check_state(self.rig.arch, f"{point.label}, hit {point.hits}{where}: ", spec.expect,
                                           regs, self.patches.view, self.plan.resolve, watched)
                self.outcome.failures.extend(hit.failures)
                hit.regs = {c.name: v for c in spec.expect.regs
                            if (v := reg_value(self.rig.arch, regs, c.name)) is not None}
            if spec.set is not None:
                if spec.set.regs:
                    before = self.backend.get_pc()
                    apply_regs(self.backend, self.rig.arch, spec.set.regs)
                    self.pc_moved = self.pc_moved or self.backend.get_pc() != before
                for write in spec.set.memory:  # through the patches: a planted breakpoint stays planted
                    self.patches.write(self.plan.resolve(write.at), write.data)
        if point.hits <= MAX_HIT_RECORDS or hit.failures:
            self.outcome.hits.append(hit)

    # End -------------------------------------------------------------------
    def _finish(self) -> None:
        outcome, rig = self.outcome, self.rig
        try:
            outcome.regs = self.backend.get_regs()
        except Exception as e:  # a dead vCPU must not hide the verdict
            outcome.notes.append(f"could not read the final registers: {e}")
        self.patches.lift_all()
        outcome.console = bytes(self.bus.console.data)
        outcome.hit_counts = self.debug.hit_counts()
        if self.user_step:
            outcome.steps = self.steps
        outcome.failures.extend(self.debug.count_failures())
        outcome.failures.extend(check_end(rig.arch, rig.expect, outcome, self.memory.read, self.plan.resolve))
        golden_spec = rig.expect.golden
        if golden_spec is not None:
            if self.options.update_golden:
                outcome.notes.extend(golden.update(rig, golden_spec, outcome, self.memory.read))
            else:
                outcome.failures.extend(golden.check(rig, golden_spec, outcome, self.memory.read))
        if outcome.failures:
            outcome.report = stop_report(rig.arch, outcome.regs, outcome.stop_pc, self.memory.read, list(self.tail))
            extra = self.backend.describe_failure()  # e.g. the last debug syndrome on arm64
            if extra:
                outcome.report.append(extra)


def execute(plan: Plan, make_backend: Callable[[], Backend], options: RunOptions | None = None) -> Outcome:
    """Run a prepared rig on a fresh backend; everything is released on return."""
    memory = Memory(plan.rig.memory)
    try:
        with make_backend() as backend:
            return Session(plan, backend, memory, options).run()
    finally:
        memory.close()
