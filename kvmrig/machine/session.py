"""Running one prepared rig on one backend: THE run loop.

The loop turns backend events (kvmrig.backends.events) into device accesses,
breakpoint hits and the end of the run; it is the hot path (one turn per VM
exit), so each event class is dispatched once, by a table, and nothing is
computed that the rig did not ask for.

Everything that runs a rig drives this one loop through Session's public
API: start() loads the rig, resume() runs it (until it ends, a debugger's
point stops it, or a caller's time slice is over), step() runs one
instruction for a debugger, finish() computes the verdict. `kvmrig run` and
`--cross-check` call run() (all four in order); the gdb stub
(kvmrig.gdb.controller) calls them stop by stop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvmrig.arch import registers
from kvmrig.backends.base import Backend
from kvmrig.backends.events import (Event, ForeignDebug, Halt, HwBreak, Mmio, Paused, PortIO, Shutdown, Step,
                                    SwBreak, SystemEvent, Timeout, Unhandled, WatchHit)
from kvmrig.coverage import collect
from kvmrig.arch.x86_64.boot import RFLAGS_IF   # machine.irqchip is x86's
from kvmrig.errors import KvmrigError, RigError
from kvmrig.machine.debug import MAX_HIT_RECORDS, ClientPoint, DebugPlan, Point, SwPatches
from kvmrig.machine import verdict
from kvmrig.machine.devices import Bus
from kvmrig.machine.diagnose import stop_report
from kvmrig.machine.expect import check_end, check_state, reg_value
from kvmrig.machine.memory import Memory, OutsideMemory
from kvmrig.machine.outcome import Failure, Hit, Outcome, Stop
from kvmrig.machine.pcdevices import MachineContext
from kvmrig.machine.plan import Plan

if TYPE_CHECKING:   # snapshots and golden files load with the first rig that uses them
    from kvmrig.machine.points import PointStore


@dataclass(frozen=True)
class RunOptions:
    """How to run, beyond what the rig says (from the command line)."""

    update_golden: bool = False
    points: PointStore | None = None   # where snapshot points are saved and children find them
    save_on_fail: str | None = None    # folder: the final state of a failed rig as a snapshot file
    coverage: bool = False   # record executed code (kvmrig.coverage) even without executed/not_executed


TAIL = 16  # executed addresses kept for the failure report when single-stepping
SYSTEM_EXITS = {"off": "system-off", "reset": "reset"}  # SystemEvent.what -> outcome exit


@dataclass(frozen=True)
class Pause:
    """Why resume() or step() returned.

    reason: "end" (the run ended: finish() gives the verdict), "until" (the
    caller's time ran out while the guest still runs), or a debugger's stop:
    "step", or "sw" | "hw" | "watch" with the debugger's `point`, on vCPU `cpu`."""

    reason: str
    point: ClientPoint | None = None
    cpu: int = 0


ENDED = Pause("end")
UNTIL = Pause("until")
STEPPED = Pause("step")


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
        irq = backend.set_irq_line if self.rig.machine.irqchip else None
        ctx = MachineContext(self.rig.memory, memory, self.rig.machine.cpus, irq)
        self.bus = Bus(self.rig.devices, self.outcome, self.rig.unclaimed_io, ctx)
        self.verdict = verdict.Reader(self.rig.verdict.console) if self.rig.verdict.console else None
        if self.verdict is not None:   # every line, as it streams: the console keeps only its head and tail
            self.bus.console.watch = self.verdict.feed
            self.bus.console.line_max = verdict.MAX_LINE
        self.debug = DebugPlan(self.rig, plan.traits, plan.resolve, backend.hw_debug_slots())
        self.patches = SwPatches(memory, backend.sw_break_insn())
        self.user_step = self.rig.trace_max > 0 or self.rig.expect.steps is not None
        self.stepping_over: int | None = None
        self.pc_moved = False  # a breakpoint's `set` changed the program counter
        self.steps = 0
        self.last_pc = plan.boot.first_pc  # the instruction a single-step exit has just executed
        self.tail: deque[int] = deque(maxlen=TAIL)  # last executed addresses, for failure reports
        self.ended = False     # the rig's run is over (finish() may still be due)
        self.exits = 0         # events handled
        self.seconds = 0.0     # guest running time: the rig's timeout counts this, not debugger stops
        self._client_step = False  # a debugger's single-step is armed (only while step() runs)
        self._client_stop: Pause | None = None  # set by a handler: stop for the debugger
        self._started = False
        self._finished = False
        self._armed = False
        self.coverage = (collect.Collector(plan, self.options.coverage)
                         if collect.wanted(self.rig, self.options.coverage) else None)
        self.ap_stop: Stop | None = None  # how another vCPU ended the run (cpus > 1)
        self.ap_stop_cpu = 0
        self.end_stop: Stop | None = None  # how the run ended (set before the other vCPUs are stopped)
        self.saved_end: dict | None = None  # a child's snapshot was saved as its run ended: end so (snapfile)
        self.end_cpu = 0       # the vCPU whose event ended the run
        self.ap_stops: deque[Pause] = deque()   # other vCPUs' stops for a debugger, not reported yet
        self._handlers: dict[type, Callable[[Event], None]] = {
            PortIO: self._io, Mmio: self._mmio, Step: self._step, SwBreak: self._sw, HwBreak: self._hw,
            WatchHit: self._watch, ForeignDebug: self._foreign_exit, Halt: self._halt,
            Shutdown: self._shutdown, SystemEvent: self._system, Timeout: self._timeout,
            Paused: self._paused, Unhandled: self._unhandled,
        }

    # The public loop -------------------------------------------------------
    def run(self) -> Outcome:
        """Run the rig to its end and judge it: what `kvmrig run` does."""
        while not self.ended:
            self.resume()
        return self.finish()

    def start(self) -> None:
        """Load the rig into memory and the vCPU (once); the guest has not run yet."""
        if self._started:
            return
        self._started = True
        if self.rig.start is not None:   # a child: its snapshot instead of a boot
            self._start_child()
            return
        for img in self.plan.images:
            for addr, body in img.segments:
                self.memory.write(addr, body)
        for addr, data in self.plan.boot.writes:
            self.memory.write(addr, data)
        for b in self.memory.backings:
            self.backend.map_memory(b.start, b.buf, b.region.rom)
        # One vCPU is always there (KVM's limits are >= 1): ask KVM only for more.
        limit = self.backend.max_cpus() if self.rig.cpus > 1 else None
        if limit is not None and self.rig.cpus > limit:
            raise RigError(f"{self.rig.cpus} vCPUs asked, this {self.backend.name} offers at most {limit} per VM "
                           "(KVM_CAP_MAX_VCPUS)", self.rig.cpus_mark or self.rig.mark)
        self.backend.set_initial_state(self.plan.boot.state)
        without_pmu = self.plan.boot.dtb_without_pmu
        if without_pmu is not None and not self.backend.offers_pmu(self.plan.boot.state):
            self.memory.write(*without_pmu)   # the generated tree lists no PMU the vCPUs lack
        self.patches.insn = self.backend.sw_break_insn()  # may depend on the machine (irqchip)
        if self.rig.arch == "arm64" and any(d.irq is not None for d in self.rig.devices):
            self.bus.connect_irqs(self.backend.set_irq_line)
        if self.rig.cpu is not None:
            apply_regs(self.backend, self.rig.arch, self.rig.cpu.regs)
        self._plant_and_arm()

    def _plant_and_arm(self) -> None:
        for addr in self.debug.sw:
            self.patches.plant(addr)
        if self.coverage is not None and not self.patches.insn and not self.user_step:
            # Nothing can be planted (x86 under machine.irqchip on a KVM without
            # INT3 interception, or with cpus > 1): every instruction is seen by single-steps.
            self.user_step = True
            self.outcome.notes.append("coverage: recorded by single-stepping every vCPU (no breakpoint "
                                      "instruction can be planted on this machine), so the run is slower")
        if self.coverage is not None:
            self.coverage.start(self)
        self._arm(self.user_step)
        if self.rig.machine.cpus > 1 and self.saved_end is None:   # armed first: an AP restored
            self.backend.start_aps(self._ap_event)                 # running must not pass a breakpoint unarmed
        if self.user_step and self.rig.trace_max:
            self.outcome.trace.append(self.last_pc)
        if self.user_step and self.debug.sw_all:
            self.arrive(self.last_pc)  # a breakpoint on the first instruction

    def _start_child(self) -> None:
        """start() of a rig with `from:`: memory mapped, the snapshot in, then
        the rig's `input`, `set` and `call` on top."""
        from kvmrig.machine.points import enter_call, start_child

        rig, backend, memory = self.rig, self.backend, self.memory
        for b in memory.backings:
            backend.map_memory(b.start, b.buf, b.region.rom)
        self.saved_end = start_child(rig, self.options.points, backend, memory, self.bus).ending
        self.patches.insn = backend.sw_break_insn()   # the vCPU exists now (with the snapshot's irqchip, if any)
        if rig.gic is not None:   # the devices' lines to the restored GIC (the child's input may raise one)
            self.bus.connect_irqs(backend.set_irq_line, sync=True)
        if rig.start_set is not None:
            apply_regs(backend, rig.arch, rig.start_set.regs)
            for write in rig.start_set.memory:
                memory.write(self.plan.resolve(write.at), write.data)
        if rig.start_call is not None:
            call = rig.start_call
            enter_call(backend, memory, rig.arch, self.plan.resolve(call.to), call.args,
                       self.plan.resolve(call.return_to))
        self.last_pc = backend.get_pc()
        self._plant_and_arm()
        if self.saved_end is not None:
            self._end_as_saved(self.saved_end)

    def _end_as_saved(self, ending: dict) -> None:
        """The parent's run was ending as it saved this child's point (another
        vCPU's exit handled while the machine was being stopped for it): the
        child, which continues from the point, ends as the parent did there,
        before any vCPU runs (its APs were never started)."""
        self.ended = True
        self.end_cpu = ending["cpu"]
        outcome = self.outcome
        outcome.exit, outcome.exit_code, outcome.detail = ending["exit"], ending["code"], ending["detail"]
        outcome.notes.append(f"the run that saved {self.rig.start} was ending as it saved it (vCPU {ending['cpu']}: "
                             f"{ending['exit']}): this run ends there too, before any instruction")

    def save_point(self, name: str) -> Path | None:
        """Save the machine as this rig's snapshot point `name` (planted
        breakpoint instructions lifted for the copy, then planted again).
        While the machine is being stopped for it, another vCPU's pending
        event may end the run: the point is still the machine as it stopped
        (that event handled), and the snapshot says how the run ended there
        (`ending`), so a child ends the same way. A point saved after the run
        ended (`save:` at the end) is the final state: children go on from it."""
        store = self.options.points
        if store is None:
            return None
        running = not self.ended
        patches = self.patches
        planted = [a for a in patches.saved if self.memory.read(a, len(patches.insn)) == patches.insn]
        for addr in planted:
            patches.lift(addr)
        try:
            with self.backend.world_stopped():   # cpus > 1: every vCPU stopped, its device access done
                ending = self._ending() if running else None
                return store.save(self.rig, name, self.backend, self.memory, self.bus.state(), ending)
        finally:
            for addr in planted:
                patches.plant(addr)

    def _ending(self) -> dict | None:
        """How the run ended while the machine was stopped for a save (every
        vCPU is stopped now), or None. A timeout is the parent's clock, not
        the machine's: a child has its own."""
        if self.ap_stop is not None:
            stop, cpu = self.ap_stop, self.ap_stop_cpu
        elif self.end_stop is not None:
            stop, cpu = self.end_stop, 0
        else:
            return None
        if stop.exit == "timeout":
            return None
        return {"cpu": cpu, "exit": stop.exit, "code": stop.code, "detail": stop.detail}

    def _save_at(self, name: str, mark) -> None:
        """save_point() mid-run; a point that cannot be saved is a failure of
        the run (its children then say the point is missing), not an error."""
        try:
            self.save_point(name)
        except (KvmrigError, OSError) as e:
            self.outcome.failures.append(Failure("snapshot", f"point {name!r} saved", f"not saved: {e}", mark))

    def resume(self, until: float | None = None) -> Pause:
        """Run until the run ends, a debugger's point or step stops it, or the
        monotonic time `until` passes (then "until": call again to go on).

        The rig's timeout counts the guest's running time over all calls."""
        self.start()
        if self.ended:
            return ENDED
        self._client_stop = None
        begun = time.monotonic()
        deadline = begun + max(0.0, self.rig.timeout - self.seconds)
        limit = deadline if until is None or until > deadline else until
        run, handlers = self.backend.run, self._handlers
        ev = None
        try:
            while True:
                ev = run(limit)
                if type(ev) is Timeout and time.monotonic() < deadline:
                    return UNTIL  # only the caller's slice ended
                self.exits += 1
                handlers[type(ev)](ev)  # raises Stop at the end of the run
                if self._client_stop is not None:
                    return self._client_stop
                if until is not None and time.monotonic() >= until:
                    return UNTIL  # a guest that exits often never lets a slice end
        except Stop as stop:
            self._end(stop, ev)
            return ENDED
        finally:
            self.seconds += time.monotonic() - begun

    def step(self, until: float | None = None, cpu: int = 0) -> Pause:
        """Run one instruction of vCPU `cpu` for a debugger: "step" when it is
        done, or whatever stops it first (a debugger point, the end, `until`).
        With several vCPUs the caller lets only `cpu` run (Backend.debug_go)."""
        self.start()
        if self.ended:
            return ENDED
        self._set_client_step(True)
        self.backend.debug_go([cpu])   # several vCPUs: only the one stepped runs, once the step is armed
        try:
            if self.debug.sw_all and cpu == 0:   # (vCPUs 1.. run on x86 only, where nothing is planted)
                self.arrive(self.backend.get_pc())  # a planted breakpoint here counts now; the step runs the original
            return self.resume(until)
        finally:
            if not self.ended:
                self._set_client_step(False)

    def finish(self) -> Outcome:
        """The verdict, computed once after the run ended: final registers,
        hit counts, the end expectations and the golden file."""
        if self._finished:
            return self.outcome
        self._finished = True
        outcome, rig = self.outcome, self.rig
        outcome.exits = self.exits
        outcome.seconds = self.seconds
        try:
            outcome.regs = self.backend.get_regs()
        except Exception as e:  # a dead vCPU must not hide the verdict
            outcome.notes.append(f"could not read the final registers: {e}")
        self.patches.lift_all()
        if rig.save is not None and self.options.points is not None:
            try:
                self.save_point(rig.save)
            except Exception as e:  # noqa: BLE001 - reported; its children then say the point is missing
                outcome.failures.append(Failure("snapshot", f"point {rig.save!r} saved", f"not saved: {e}",
                                                rig.mark))
        self.bus.console.flush()
        outcome.console = bytes(self.bus.console.data)
        outcome.hit_counts = self.debug.hit_counts()
        if self.user_step:
            outcome.steps = self.steps
        outcome.failures.extend(self.debug.count_failures())
        if self.coverage is not None:
            outcome.coverage = self.coverage.ranges(outcome)
            outcome.failures.extend(self.coverage.check(outcome.coverage))
        outcome.failures.extend(check_end(rig.arch, rig.expect, outcome, self.memory.read, self.plan.resolve))
        if rig.verdict.console or rig.verdict.exit_codes:
            outcome.failures.extend(verdict.apply(rig, outcome, self.verdict))
        golden_spec = rig.expect.golden
        if golden_spec is not None:
            from kvmrig.machine import golden

            if self.options.update_golden:
                outcome.notes.extend(golden.update(rig, golden_spec, outcome, self.memory.read))
            else:
                outcome.failures.extend(golden.check(rig, golden_spec, outcome, self.memory.read))
        if outcome.failures and self.options.save_on_fail:
            from kvmrig.machine.points import save_snapshot

            try:
                path = save_snapshot(Path(self.options.save_on_fail) / f"{rig.name}.snap", rig, "end",
                                     self.backend, self.memory, self.bus.state())
                outcome.notes.append(f"final state saved to {path} (`kvmrig debug {path}` starts from it)")
            except Exception as e:  # noqa: BLE001 - the verdict stands without it
                outcome.notes.append(f"could not save the final state: {e}")
        if outcome.failures:
            at_hit = next((h for h in outcome.hits if h.report), None)
            at_hits = {id(f) for h in outcome.hits for f in h.failures}
            at_end = at_hit is None or any(id(f) not in at_hits for f in outcome.failures)
            if at_hit is not None:
                where = f" on vCPU {at_hit.cpu}" if rig.cpus > 1 else ""
                outcome.report = [f"at {at_hit.point}, hit {at_hit.number}{where}:", *at_hit.report]
            if at_end:
                if at_hit is not None:
                    outcome.report.append("where the run ended:")
                outcome.report += stop_report(rig.arch, outcome.regs, outcome.stop_pc, self.memory.read,
                                              list(self.tail), self.plan.symbols)
            if rig.start is not None:
                outcome.report.insert(0, f"started from the snapshot {rig.start}")
            extra = self.backend.describe_failure()  # e.g. the last debug syndrome on arm64
            if extra:
                outcome.report.append(extra)
        return outcome

    # A debugger's points (kvmrig.gdb) ----------------------------------------
    def add_client_point(self, kind: str, addr: int, length: int = 1) -> ClientPoint:
        """A debugger's breakpoint ("sw" | "hw") or watchpoint ("write" | "read" |
        "access"), armed at once; NoDebugSlot when no register is left."""
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

    def _set_client_step(self, on: bool) -> None:
        if on != self._client_step:
            self._client_step = on
            self._arm(self.user_step or self.stepping_over is not None)

    def _arm(self, single_step: bool) -> None:
        single_step = single_step or self._client_step
        sw = self.debug.sw_all
        if self.coverage is not None and self.coverage.planted:
            sw = self.coverage.with_planted(sw)
        if self.debug.slots or sw or single_step or self._armed:
            self._armed = True
            self.backend.set_debug(self.debug.slots, single_step, sw)

    # The end ---------------------------------------------------------------
    def _end(self, stop: Stop, ev: Event | None) -> None:
        """Record how the run ended (`ev`: the last event); finish() judges it."""
        self.end_stop = stop   # before quiesce(): a snapshot another vCPU takes meanwhile records it
        self.backend.quiesce()   # other vCPUs stop before anything is judged
        self.ended = True
        self.end_cpu = self.ap_stop_cpu if stop is self.ap_stop else 0
        self._client_step = False
        outcome = self.outcome
        outcome.exit, outcome.exit_code, outcome.detail = stop.exit, stop.code, stop.detail
        if outcome.stop_pc is None and ev is not None and type(ev) not in (PortIO, Mmio):
            outcome.stop_pc = ev.pc
        if self.user_step and stop.exit != "timeout":
            self.steps += 1  # the instruction that ended the run

    def _halt(self, ev: Halt) -> None:
        raise Stop("hlt", None, f"hlt at {ev.pc:#x}")

    def _shutdown(self, ev: Shutdown) -> None:
        raise Stop("shutdown", None, ev.detail)

    def _system(self, ev: SystemEvent) -> None:
        where = f" on vCPU {self.backend.current_cpu()}" if self.rig.cpus > 1 else ""
        raise Stop(SYSTEM_EXITS.get(ev.what, "unhandled"), None, f"system event {ev.what}{where}")

    def _timeout(self, ev: Timeout) -> None:
        raise Stop("timeout", None, f"still running after {self.rig.timeout:g}s (pc {ev.pc:#x})")

    def _paused(self, ev: Paused) -> None:
        """Another vCPU stopped for the debugger (_ap_event): report its stop now."""
        if self.ap_stops:
            self._client_stop = self.ap_stops.popleft()

    def _unhandled(self, ev: Unhandled) -> None:
        if self.ap_stop is not None:   # "another vCPU ended the run": how it did
            raise self.ap_stop
        raise Stop("unhandled", None, ev.detail or f"backend stopped: code {ev.code!r}")

    # Devices ---------------------------------------------------------------
    def _ap_event(self, index: int, ev: Event) -> None:
        """An event of vCPU `index` > 0 (on its own thread, under the machine
        lock; the backend's calls address that vCPU meanwhile): handled as
        vCPU 0's are (devices, hits, watch hits); what ends the run is kept,
        naming the vCPU, and the main loop raises it."""
        last_pc = self.last_pc   # vCPU 0's: the halt check of its next step reads it
        bsp_stop, self._client_stop = self._client_stop, None   # vCPU 0's, not reported yet
        self.exits += 1
        try:
            if type(ev) is Step:
                self._ap_step(ev)
            else:
                self._handlers[type(ev)](ev)
        except Stop as stop:
            stop.detail = f"vCPU {index}: {stop.detail}"
            self.ap_stop, self.ap_stop_cpu = stop, index
            raise
        finally:
            self.last_pc = last_pc
            stop, self._client_stop = self._client_stop, bsp_stop
            if stop is not None:   # it stopped for a debugger: everything stops (Backend.ask_stop)
                self.ap_stops.append(Pause(stop.reason, stop.point, index))
                self.backend.ask_stop(index)

    def _ap_step(self, ev: Step) -> None:
        """Another vCPU's single-step (trace, `steps`, coverage by steps): counted;
        an AP's HLT is idling, never the end of the run."""
        if self.user_step:
            self.steps += 1
            if self.coverage is not None:
                self.coverage.saw(ev.pc)
            if len(self.outcome.trace) < self.rig.trace_max:
                self.outcome.trace.append(ev.pc)
        if self._client_step:   # a debugger's step of this vCPU (only it ran)
            self._client_stop = STEPPED

    def _io(self, ev: PortIO) -> None:
        size, bus, port = ev.size, self.bus, ev.port
        if ev.write:
            data = ev.data
            for i in range(ev.count):
                bus.port_write(port, size, int.from_bytes(data[i * size:(i + 1) * size], "little"))
        else:
            out = b"".join(bus.port_read(port, size).to_bytes(size, "little") for _ in range(ev.count))
            self.backend.complete_read(out)
            if bus.idle:
                self._idle()

    def _mmio(self, ev: Mmio) -> None:
        if ev.write:
            value = int.from_bytes(ev.data[:ev.size], "little")
            self.bus.mmio_write(ev.addr, ev.size, value, rom=self.memory.find(ev.addr) is not None)
        else:
            self.backend.complete_read(self.bus.mmio_read(ev.addr, ev.size).to_bytes(ev.size, "little"))
            if self.bus.idle:
                self._idle()

    def _idle(self) -> None:
        """A UART with `idle:` saw the guest wait for input that is not there:
        save its point (a rig that booted; a child ends here too) and end the run."""
        dev = self.bus.idle[0]
        if self.rig.start is None:
            self._save_at(dev.spec.idle, dev.spec.mark)
        raise Stop("idle", None, f"{dev.name} waits for input and none is left")

    # Debug ---------------------------------------------------------------
    def _step(self, ev: Step) -> None:
        self._check_halted(ev.pc)
        self.last_pc = ev.pc
        if self.stepping_over is not None:
            if self.stepping_over in self.debug.sw_all:  # a debugger may have removed its point
                self.patches.plant(self.stepping_over)
            self.stepping_over = None
            self.backend.step_alone(False)
            if not self.user_step:
                self._arm(False)
        if self.user_step:
            self.steps += 1
            self.tail.append(ev.pc)
            if self.coverage is not None:
                self.coverage.saw(ev.pc)
            if len(self.outcome.trace) < self.rig.trace_max:
                self.outcome.trace.append(ev.pc)
        if self.user_step or self._client_step:
            if self.debug.sw_all:
                self.arrive(ev.pc)
            if self._client_step:
                self._client_stop = STEPPED

    def _sw(self, ev: SwBreak) -> None:
        pc = ev.pc
        if self.coverage is not None and self.coverage.on_sw(self, pc):
            return
        points = self.debug.sw.get(pc)
        client = self.debug.client_at("sw", pc) if self.debug.client else None
        if not points and client is None:
            self._foreign(ev, "a software breakpoint the rig did not plant")
            return
        self.pc_moved = False
        for point in points or ():
            self._hit(point, pc, None)
        if client is not None:
            self._client_stop = Pause("sw", client)
        self.last_pc = pc
        if not self.pc_moved and self.patches.insn:   # unless `set` moved the pc: step over it
            self.step_over(pc)   # (nothing planted: the backend steps past its debug register itself)

    def step_over(self, pc: int) -> None:
        """Run the original instruction under a planted one at `pc` by a single-step;
        the step re-plants it if a breakpoint still wants it."""
        self.patches.lift(pc)
        self.stepping_over = pc
        self.backend.step_alone(True)   # until the step: no other vCPU may pass the lifted breakpoint
        if not self.user_step:
            self._arm(True)

    def _hw(self, ev: HwBreak) -> None:
        debug = self.debug
        if not 0 <= ev.slot < len(debug.slot_owner):
            self._foreign(ev, "a debug exit kvmrig did not cause (hw)")
            return
        if ev.slot < debug.rig_slots:
            self._hit(debug.slot_owner[ev.slot], ev.pc, None)
            if self.coverage is not None:
                self.coverage.saw(ev.pc)
        if debug.client and (client := debug.client_at("hw", ev.pc)) is not None:
            self._client_stop = Pause("hw", client)
        self.last_pc = ev.pc

    def _watch(self, ev: WatchHit) -> None:
        debug = self.debug
        owners = debug.slot_owner
        if not 0 <= ev.slots[0] < len(owners):
            self._foreign(ev, "a debug exit kvmrig did not cause (watch)")
            return
        # One access can hit several watchpoints (overlapping ranges, or one
        # split over registers): each of the rig's points counts it once.
        counted: list[Point] = []
        for i in ev.slots:
            if 0 <= i < debug.rig_slots and not any(p is owners[i] for p in counted):
                counted.append(owners[i])
        for point in counted:
            self._hit(point, ev.pc, ev.addr)
        if debug.client and (client := debug.client_watch(ev)) is not None:
            self._client_stop = Pause("watch", client)

    def _foreign_exit(self, ev: ForeignDebug) -> None:
        self._foreign(ev, "a debug exit kvmrig did not cause (foreign)")

    def arrive(self, pc: int) -> None:
        """The vCPU will single-step the instruction at `pc`: a breakpoint planted
        there is hit now, and stepped over, so no single-step runs a planted
        instruction (a KVM that plants HLT reports that as a plain step and
        leaves the vCPU halted)."""
        if pc == self.stepping_over or pc not in self.debug.sw_all:
            return
        insn = self.patches.insn
        if not insn:   # the backend holds software breakpoints in debug registers: it reports them
            return
        try:
            if self.memory.read(pc, len(insn)) != insn:
                return
        except LookupError:
            return
        self._sw(SwBreak(pc))

    def _check_halted(self, pc: int) -> None:
        """A single-step over a halting instruction exits as a step, not a halt
        (`pc`: where the step ended)."""
        halt = self.plan.traits.halt
        if halt is None:
            return
        try:
            insn = self.patches.view(self.last_pc, len(halt))
        except LookupError:
            return
        if insn == halt:
            if self.rig.machine.irqchip and (pc != self.last_pc + len(halt)
                                             or self.backend.get_regs().get("rflags", 0) & RFLAGS_IF):
                return   # an interrupt woke it (or can): not the end; `exit: hlt` is a HLT with IF clear
            self.outcome.stop_pc = self.last_pc
            raise Stop("hlt", None, f"hlt at {self.last_pc:#x}")

    def _foreign(self, ev: SwBreak | HwBreak | WatchHit | ForeignDebug, what: str) -> None:
        self.outcome.notes.append(f"{what} at pc {ev.pc:#x}: handed back to the guest")
        self.backend.reinject(ev)

    def _hit(self, point: Point, pc: int, addr: int | None) -> None:
        """Count a hit of the rig's `point` (`addr`: the accessed address of a
        watch hit) and apply its per-hit `expect` and `set`."""
        point.hits += 1
        spec = point.spec
        applies = point.applies()
        cpu = self.backend.current_cpu()
        hit = Hit(point.label, point.hits, pc, addr, cpu=cpu)
        if applies and (spec.expect is not None or spec.set is not None):
            regs = self.backend.get_regs()
            if spec.expect is not None:
                watched = (point.addr, point.length) if point.is_watch else None
                where = f" on vCPU {cpu}" if self.rig.cpus > 1 else ""
                hit.failures = check_state(self.rig.arch, f"{point.label}, hit {point.hits}{where}: ", spec.expect,
                                           regs, self.patches.view, self.plan.resolve, watched)
                self.outcome.failures.extend(hit.failures)
                hit.regs = {c.name: v for c in spec.expect.regs
                            if (v := reg_value(self.rig.arch, regs, c.name)) is not None}
                if hit.failures and not any(h.report for h in self.outcome.hits):
                    # the first failing hit: the state there, not only where the run ended
                    hit.report = stop_report(self.rig.arch, regs, pc, self.patches.view, [], self.plan.symbols)
            if spec.set is not None:
                if spec.set.regs:
                    before = self.backend.get_pc()
                    apply_regs(self.backend, self.rig.arch, spec.set.regs)
                    self.pc_moved = self.pc_moved or self.backend.get_pc() != before
                for write in spec.set.memory:  # through the patches: a planted breakpoint stays planted
                    self.patches.write(self.plan.resolve(write.at), write.data)
        if spec.save is not None and point.hits == (spec.on_hit or 1):
            self._save_at(spec.save, spec.mark)   # after the hit's `set`, as the guest goes on
        if point.hits <= MAX_HIT_RECORDS or hit.failures:
            self.outcome.hits.append(hit)


def execute(plan: Plan, make_backend: Callable[[], Backend], options: RunOptions | None = None,
            after: Callable[[Memory], None] | None = None) -> Outcome:
    """Run a prepared rig on a fresh backend; everything is released on return.
    `after` sees the final memory first (cross-check digests it)."""
    memory = Memory(plan.rig.memory)
    try:
        with make_backend() as backend:
            outcome = Session(plan, backend, memory, options).run()
        if after is not None:
            after(memory)
        return outcome
    finally:
        memory.close()
