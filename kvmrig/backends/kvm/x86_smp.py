"""x86_64 KVM with more than one vCPU (`cpus: N`, with machine.irqchip):
vCPU 0 (the BSP) runs on the rig's thread, each AP on a thread of its own
(kvmrig.backends.kvm.smp), started by the guest through its local APIC.

Every vCPU is a KvmX86Backend of its own: the BSP is this class, the facade
the machine drives; each AP is an ApView sharing the VM (memory slots, page
traps) with its own vcpu fd, registers and debug state. The machine handles
one vCPU's event at a time (the machine lock) on that vCPU's thread, and the
facade's calls go to the vCPU of the thread calling: registers, completing
a read, handing a debug exception back.

Debugging applies to every vCPU: set_debug() arms the same debug registers
(and single-step) on each vCPU (KVM_SET_GUEST_DEBUG is per vCPU; another
vCPU applies it on its own thread before it enters the guest again, kicked
out of KVM_RUN for that). Watchpoints by page traps are the VM's memory
slots, so every vCPU's accesses exit; each vCPU matches its own.

Software breakpoints are held in the debug registers DR0-DR3 of every vCPU
(with `kind: hw` breakpoints and, where this KVM raises data breakpoints,
watchpoints: four in all), never planted: stepping a vCPU over a planted
instruction means lifting it from memory every vCPU shares, and another vCPU
could run past it meanwhile. A vCPU steps past a debug-register breakpoint
by itself (that register off for one instruction, on that vCPU only).

Snapshots (save:, on_hit) hold every vCPU: world_stopped() stops them all
first. The vCPU saving (at its hit, holding the machine lock) kicks the
others out of KVM_RUN and lets go of the lock until each is parked: a vCPU
with an event still to handle handles it (its device access is done, as it
would be before the save), completes the access in flight (KVM_RUN with
immediate_exit) and waits outside the guest in _park(). Then the saver
takes each vCPU's registers, sregs, MSRs, XSAVE/XCRs, debug registers,
events, local APIC and MP state (an AP still waiting for INIT or SIPI says
so in its MP state), the VM's PICs/IOAPIC/PIT with vCPU 0, and the memory;
the others go on after. So a snapshot at a hit is the machine with the
hitting vCPU at its breakpoint (after the hit's `set`) and every other vCPU
between two instructions. A child restores every vCPU and its APs run on
their threads from where they were (halted, waiting for SIPI, or running).
An event handled while the machine is being stopped may end the run (an
exit device, a fault, on any vCPU): that vCPU never enters the guest again
and counts as stopped (vCPU 0 waits in quiesce() until the snapshot is
written), and the session records the end in the snapshot.

A debugger (kvmrig gdb) sees every vCPU as a thread, all-stop: when one
vCPU stops for it (its breakpoint, watchpoint, single-step, an interrupt,
the end) every vCPU is stopped as for a snapshot and stays parked
(`_World.held`) until debug_go() lets them run again: all of them to
continue, only one to single-step (the others stay stopped). An AP that
stops for the debugger asks for it (ask_stop): it parks before it enters
the guest again, and vCPU 0's run() returns Paused, so the session reports
that stop. When vCPU 0 is not to run (another vCPU steps alone), run()
waits outside the guest for that stop, the end or the deadline. While the
debugger holds the machine, on_cpu() points the register calls of the
debugger's thread at the vCPU it selected.

Known limits: the final registers are vCPU 0's; `trace` and `expect.steps`
single-step every vCPU and count all their instructions.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections.abc import Collection, Iterator

from kvmrig.arch.x86_64.boot import X86State
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import DebugEvent, Event, Mmio, Paused, PortIO, Timeout, Unhandled
from kvmrig.backends.kvm import abi, x86_state
from kvmrig.backends.kvm.smp import Aps, kick
from kvmrig.backends.kvm.x86_64 import SYNC, KvmX86Backend, _sync_regs_supported
from kvmrig.errors import BackendError, KvmError

NEVER = float("inf")   # an AP has no deadline of its own: the BSP's run ends it
KICKED = Timeout(0)    # an AP's KVM_RUN returned for a signal (ApView.next_event)
KICK_AGAIN = 0.02      # while stopping every vCPU: kick the ones not parked yet this often
STOP_TIMEOUT = 10.0    # ... and give up (a clear error) if one has not stopped by then
MP_STATES = {abi.KVM_MP_STATE_RUNNABLE: "running", abi.KVM_MP_STATE_UNINITIALIZED: "waiting for INIT",
             abi.KVM_MP_STATE_INIT_RECEIVED: "waiting for SIPI", abi.KVM_MP_STATE_HALTED: "halted",
             abi.KVM_MP_STATE_SIPI_RECEIVED: "SIPI received"}   # what a debugger shows per vCPU


class _World:
    """Every vCPU stopped for a snapshot (KvmX86SmpBackend.world_stopped)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.depth = 0                # snapshots under way (one may be taken while another waits)
        self.still: set[int] = set()  # vCPUs parked, saving or done (they ended the run): out of the guest
        self.savers: list[int] = []   # the threads taking them
        self.held: set[int] = set()   # APs a debugger keeps stopped (debug_stop / debug_go / ask_stop)

    def mark_still(self, index: int) -> None:
        with self.cond:
            self.still.add(index)
            self.cond.notify_all()

    def wait_out(self) -> None:
        """Stay out of the guest while a snapshot another thread takes is under way."""
        me = threading.get_ident()
        while self.depth and me not in self.savers:
            self.cond.wait(0.05)


class _PerVcpu(KvmX86Backend):
    """What the BSP and every AP view do alike: take a debug setup another
    thread posted, before the vCPU next enters the guest."""

    index = 0
    thread_id: int | None = None
    primary: "KvmX86SmpBackend"

    def _init_pending(self) -> None:
        self._pending: tuple | None = None
        self._posted: tuple | None = None    # the last setup posted or applied
        self._pending_lock = threading.Lock()

    def post(self, setup: tuple) -> None:
        """Apply `setup` (slots, single_step, sw) before this vCPU's next KVM_RUN."""
        if setup == self._posted:
            return
        with self._pending_lock:
            self._pending = self._posted = setup
        kick(self.vcpu, self.thread_id)

    def apply(self, setup: tuple) -> None:
        """Apply `setup` now (on this vCPU's own thread)."""
        with self._pending_lock:
            self._pending, self._posted = None, setup
        KvmX86Backend.set_debug(self, *setup)

    def _needs_fixup(self) -> bool:
        world = self.primary._world
        return (self._pending is not None or world.depth > 0 or (world.held and self.index in world.held)
                or KvmX86Backend._needs_fixup(self))

    def _before_run(self) -> None:
        world = self.primary._world
        if world.depth or self.index in world.held:
            self._park()
        with self._pending_lock:
            setup, self._pending = self._pending, None
        if setup is not None:
            KvmX86Backend.set_debug(self, *setup)
        if KvmX86Backend._needs_fixup(self):
            KvmX86Backend._before_run(self)

    def _park(self) -> None:
        """A snapshot is being taken, or a debugger holds this vCPU: complete
        the access in flight, then stay out of the guest until that is over;
        if the run ended meanwhile, leave without running another instruction
        (to be joined)."""
        self.settle_io()
        world, aps = self.primary._world, self.primary._aps
        with world.cond:
            world.still.add(self.index)
            world.cond.notify_all()
            while True:
                world.wait_out()
                if self.index not in world.held or (aps is not None and aps.stopping):
                    break
                world.cond.wait(0.05)   # held by a debugger (the run ending lets it go, to be joined)
            world.still.discard(self.index)
        if aps is not None and aps.stopping:
            self.vcpu.run_struct.immediate_exit = 1   # KVM_RUN returns at once (EINTR)

    def _rebuild_slots(self, pages: dict[int, str]) -> None:
        with self.primary._slots_lock:   # the VM's memory slots: one rebuild at a time
            KvmX86Backend._rebuild_slots(self, pages)

    def sw_break_insn(self) -> bytes:
        return b""   # software breakpoints are held in the debug registers (module doc)


def _shared(name: str) -> property:
    """An attribute of the VM (memory slots and their traps), read and written on the BSP's object."""
    return property(lambda self: getattr(self.primary, name),
                    lambda self, value: setattr(self.primary, name, value))


class ApView(_PerVcpu):
    """vCPU `index` > 0: the BSP's VM, its own vcpu, registers and debug state."""

    regions = _shared("regions")
    _buffers = _shared("_buffers")
    _backing = _shared("_backing")
    _slot_ids = _shared("_slot_ids")
    _slot = _shared("_slot")
    _log_dirty = _shared("_log_dirty")
    _dirty = _shared("_dirty")
    _bitmaps = _shared("_bitmaps")
    _traps = _shared("_traps")

    def __init__(self, primary: "KvmX86SmpBackend", vcpu, index: int) -> None:  # no new VM: the primary's
        self.primary = primary
        self.kvm, self.vm, self.support = primary.kvm, primary.vm, primary.support
        self.pristine, self.stepped, self._ap_vcpus = None, False, []
        self.vcpu, self.index = vcpu, index
        self._watch_mmio = False
        self._reset_vcpu_state()
        self._forget_debug()
        self._init_pending()
        self.irqchip = True
        self.unhandled: Event | None = None   # an access returned to the machine and not handled yet
        self.first: Event | None = None       # a child's: the write its snapshot left pending, seen first

    def next_event(self) -> Event | None:
        """Run this AP until an event the machine must see; None when it was
        kicked out of KVM_RUN (a new debug setup, or the end of the run). A
        KVM_RUN or debug setup that fails is an Unhandled event: the machine
        ends the run with it, as with any other event, naming this vCPU."""
        if self.first is not None:   # the access was completed in KVM when saved: only the device is due
            ev, self.first = self.first, None
            return ev
        try:
            ev = self._next_event(NEVER)
        except KvmError as e:
            if e.errno == errno.EAGAIN:
                raise   # the AP left its wait-for-SIPI state: Aps enters again
            return Unhandled(None, str(e))
        except BackendError as e:
            return Unhandled(None, str(e))
        if ev is KICKED:
            return None
        if type(ev) in (PortIO, Mmio):
            self.unhandled = ev   # cleared once the machine handled it (KvmX86SmpBackend.start_aps)
        return ev

    def _event(self, reason: int, deadline: float) -> Event | None:
        if reason == abi.KVM_EXIT_INTR:
            self.vcpu.run_struct.immediate_exit = 0
            return KICKED
        return super()._event(reason, deadline)

    def _halted(self) -> Event | None:
        return None   # an AP halted for good is idle, not the end of the run

    def close(self) -> None:   # the VM, and this vcpu fd with it, belong to the BSP
        self.vcpu = None


class KvmX86SmpBackend(_PerVcpu):
    """vCPU 0 and the facade over every vCPU (see the module doc)."""

    runs_aps = True

    def __init__(self) -> None:
        super().__init__()
        self.primary = self
        self.thread_id = threading.main_thread().ident
        self._cpus: list[_PerVcpu] = [self]
        self._here = threading.local()       # .cpu: the view of the AP thread calling
        self._slots_lock = threading.Lock()
        self._holding = False                # this thread holds the machine lock (between run() calls)
        self._world = _World()
        self._debugged = False   # a debugger holds the machine stopped: the APs start stopped
        self._bsp_held = False   # debug_go() without vCPU 0: run() waits outside the guest
        self._init_pending()

    def _create_vcpu(self, state=None):
        vcpu = super()._create_vcpu(state)
        if not self._ap_vcpus:
            return vcpu
        sync = _sync_regs_supported(self.kvm)
        views: list[_PerVcpu] = [self]
        for i, ap in enumerate(self._ap_vcpus, start=1):
            if sync:
                ap.enable_sync_regs(SYNC)
            views.append(ApView(self, ap, i))
        self._cpus = views
        return vcpu

    def _cpu(self) -> _PerVcpu:
        return getattr(self._here, "cpu", self)

    def _bind(self, cpu: _PerVcpu) -> None:
        self._here.cpu = cpu

    # The machine's calls go to the vCPU of the calling thread --------------
    def current_cpu(self) -> int:
        return self._cpu().index

    def get_regs(self) -> dict[str, int]:
        return KvmX86Backend.get_regs(self._cpu())

    def get_pc(self) -> int:
        return KvmX86Backend.get_pc(self._cpu())

    def get_extra_regs(self) -> dict[str, int]:
        return KvmX86Backend.get_extra_regs(self._cpu())

    def set_regs(self, regs: dict[str, int]) -> None:
        KvmX86Backend.set_regs(self._cpu(), regs)

    def complete_read(self, data: bytes) -> None:
        KvmX86Backend.complete_read(self._cpu(), data)

    def reinject(self, event: DebugEvent) -> None:
        KvmX86Backend.reinject(self._cpu(), event)

    def describe_failure(self) -> str:
        cpu = self._cpu()
        text = KvmX86Backend.describe_failure(cpu)
        return f"vCPU {cpu.index}: {text}" if text and cpu is not self else text

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints) -> None:
        """The same breakpoints, watchpoints and single-step on every vCPU:
        now on the calling thread's vCPU (a setup error is raised here), the
        others before they next enter the guest."""
        setup = (list(slots), single_step, frozenset(sw_breakpoints or ()))
        here = self._cpu()
        here.apply(setup)
        for cpu in self._cpus:
            if cpu is not here:
                cpu.post(setup)

    # Running ---------------------------------------------------------------
    def start_aps(self, handler) -> None:
        """Start the AP threads; `handler(index, event)` handles each AP event
        on that AP's thread under the machine lock, and raises to end the run."""
        if len(self._cpus) < 2:
            return
        self._install_alarm()   # kicks are SIGALRMs
        cpus = self._cpus

        def handle(index: int, ev: Event) -> None:
            cpus[index].unhandled = None   # the device sees the access (even if it ends the run)
            try:
                handler(index, ev)
            except BaseException:
                # It ended the run and never enters the guest again: a snapshot
                # under way counts it as stopped (its end is the snapshot's `ending`).
                self._world.mark_still(index)
                raise
        self._aps = Aps(self._cpus[1:], handle, self._bind)
        if self._debugged:
            self._world.held = {c.index for c in self._cpus[1:]}
        self._aps.lock.acquire()
        self._holding = True
        self._aps.start()

    def run(self, deadline: float) -> Event:
        aps = self._aps
        if aps is None:
            return super().run(deadline)
        if self._holding:
            self._holding = False
            aps.lock.release()
        try:
            if aps.ended is not None:
                return Unhandled(None, f"another vCPU ended the run: {aps.ended}")
            if aps.paused:
                aps.paused = False
                return Paused(None)
            if self._bsp_held:
                return self._wait_aps(aps, deadline)
            return super().run(deadline)
        finally:
            aps.lock.acquire()
            self._holding = True

    def _wait_aps(self, aps: Aps, deadline: float) -> Event:
        """run() while a debugger keeps vCPU 0 stopped: wait (not holding the
        machine lock) until another vCPU stops for it, the run ends or `deadline`."""
        world = self._world
        with world.cond:
            while True:
                if aps.ended is not None:
                    return Unhandled(None, f"another vCPU ended the run: {aps.ended}")
                if aps.paused:
                    aps.paused = False
                    return Paused(None)
                left = deadline - time.monotonic()
                if left <= 0:
                    return Timeout(self._pc_now())
                world.cond.wait(min(left, KICK_AGAIN))

    def quiesce(self) -> None:
        """Stop every AP (before the verdict is taken). If another vCPU is
        taking a snapshot, vCPU 0 (its last access handled: the one that
        ended the run) waits, stopped, until it is written (world_stopped)."""
        aps = self._aps
        if aps is None:
            return
        aps.stopping = True   # an AP taking a snapshot stops after it; none starts another
        if self._holding:
            self._holding = False
            aps.lock.release()
        world = self._world
        with world.cond:
            if world.depth and threading.get_ident() not in world.savers:
                world.still.add(self.index)
                world.cond.notify_all()
                world.wait_out()
                world.still.discard(self.index)
        aps.stop()

    # Snapshots: every vCPU -------------------------------------------------
    @contextlib.contextmanager
    def world_stopped(self) -> Iterator[None]:
        """Every vCPU out of the guest, its access in flight completed (see the
        module doc); called by the thread handling an event (holding the
        machine lock), or after the run ended."""
        aps, world, here = self._aps, self._world, self._cpu()
        if aps is None or len(self._cpus) < 2:
            yield
            return
        with world.cond:
            world.depth += 1
            world.savers.append(threading.get_ident())
            world.still.add(here.index)   # a snapshot taken while this one waits counts this vCPU as stopped
        try:
            self._stop_others(here, aps)
            yield
        finally:
            with world.cond:
                world.still.discard(here.index)
                world.savers.remove(threading.get_ident())
                world.depth -= 1
                world.cond.notify_all()

    def _stop_others(self, here: _PerVcpu, aps: Aps, purpose: str = "the snapshot") -> None:
        """Wait until every other vCPU is parked (or has ended the run, or its
        thread has ended), kicking them meanwhile and letting go of the
        machine lock so that they can handle the events they already have.
        One of those events may end the run (an exit device, a triple fault,
        an exit KVM cannot handle, on any vCPU): that vCPU is stopped too, and
        the session records the end in the snapshot (Session.save_point), or
        the debugger's next resume() ends the run (`purpose`: what it is for)."""
        world = self._world
        threads = {cpu.index: thread for cpu, thread in zip(aps.cpus, aps.threads)}

        def stopped(cpu: _PerVcpu) -> bool:
            if cpu.index in world.still:
                return True
            thread = threads.get(cpu.index)   # None: the BSP (the main thread, which parks)
            return thread is not None and thread.ident is not None and not thread.is_alive()

        others = [c for c in self._cpus if c is not here]
        if all(stopped(c) for c in others):
            return   # e.g. after the run ended: every AP thread is gone
        holding = here is not self or self._holding   # an AP handles its event holding the lock
        if holding:
            if here is self:
                self._holding = False
            aps.lock.release()
        try:
            deadline = time.monotonic() + STOP_TIMEOUT
            with world.cond:
                while True:
                    waiting = [c for c in others if not stopped(c)]
                    if not waiting:
                        return
                    if time.monotonic() > deadline:
                        raise BackendError("vCPU " + ", ".join(str(c.index) for c in waiting) + " did not stop "
                                           f"for {purpose} within {STOP_TIMEOUT:g}s")
                    for c in waiting:
                        kick(c.vcpu, c.thread_id)
                    world.cond.wait(KICK_AGAIN)
        finally:
            if holding:
                aps.lock.acquire()
                if here is self:
                    self._holding = True

    # A debugger: every vCPU a thread, all-stop (module doc) ----------------
    def debug_cpus(self) -> int:
        return len(self._cpus)

    @contextlib.contextmanager
    def on_cpu(self, index: int) -> Iterator[None]:
        if not 0 <= index < len(self._cpus):
            raise BackendError(f"no vCPU {index}: this machine has {len(self._cpus)}")
        cpu = self._cpus[index]
        if cpu is not self:
            # Stopped outside the guest: read by ioctl, not from the copy its last
            # exit left in kvm_run (an INIT or SIPI taken since makes that stale).
            cpu.vcpu.forget_sync()
        before = getattr(self._here, "cpu", None)
        self._here.cpu = cpu
        try:
            yield
        finally:
            if before is None:
                del self._here.cpu
            else:
                self._here.cpu = before

    def cpu_status(self, index: int) -> str:
        cpu = self._cpus[index]
        state = cpu.vcpu.get_mp_state()   # takes a pending INIT/SIPI, as the vCPU's next KVM_RUN would
        cpu.vcpu.forget_sync()
        return MP_STATES.get(state, f"MP state {state}")

    def debug_stop(self) -> None:
        """Every vCPU stopped and kept so (the AP threads parked) until
        debug_go(); before the run starts, the APs will start stopped."""
        aps, world = self._aps, self._world
        if aps is None:
            self._debugged = True
            return
        self._bsp_held = True
        if aps.stopping:
            return   # the run ended: the APs were stopped with it, and every vCPU stays as it ended
        with world.cond:
            world.held = {c.index for c in self._cpus[1:]}
            world.still.add(0)   # out of the guest, for a snapshot an AP takes meanwhile (export_cpu settles it)
        self._stop_others(self, aps, "the debugger")

    def debug_go(self, cpus: Collection[int] | None) -> None:
        aps, world = self._aps, self._world
        if aps is None:
            return
        run = set(range(len(self._cpus))) if cpus is None else set(cpus)
        with world.cond:
            world.held = {c.index for c in self._cpus[1:] if c.index not in run}
            self._bsp_held = 0 not in run
            if not self._bsp_held:
                world.still.discard(0)
            world.cond.notify_all()

    def ask_stop(self, index: int) -> None:
        aps, world = self._aps, self._world
        if aps is None or index == 0:
            return
        with world.cond:
            world.held.add(index)   # parks before it enters the guest again (_needs_fixup)
            aps.paused = True
            world.cond.notify_all()   # vCPU 0 waiting outside the guest (_wait_aps)
        kick(self.vcpu, self.thread_id)   # vCPU 0 in KVM_RUN: out, and run() returns Paused

    def export_cpu(self) -> dict:
        """vCPU 0's state and the VM's chips (KvmX86Backend.export_cpu) and,
        in `aps`, every other vCPU's, local APIC and MP state included. Call
        inside world_stopped()."""
        pending = {}
        for cpu in self._cpus[1:]:
            if cpu.unhandled is not None:
                pending[cpu.index] = _pending_text(cpu.index, cpu.unhandled)
        self.settle_io()
        self.vcpu.get_mp_state()   # as for the APs (_capture_ap): an INIT another vCPU sent it is taken now
        self.vcpu.forget_sync()
        text = KvmX86Backend.export_cpu(self)
        if len(self._cpus) > 1:
            text["aps"] = [x86_state.to_text(_capture_ap(cpu)) for cpu in self._cpus[1:]]
            for index, access in pending.items():
                text["aps"][index - 1]["pending"] = access
        return text

    def snapshot_machine(self) -> dict:
        """The snapshot header's `machine`: every vCPU (export_cpu's `aps`), no GIC."""
        return {"cpus": len(self._cpus), "gic": None}

    def import_cpu(self, text: dict) -> None:
        """Load export_cpu() text: vCPU 0 and the chips, then each AP (which its
        thread runs from there once the run starts)."""
        aps = text.get("aps", [])
        if not isinstance(aps, list):
            raise BackendError("the saved KVM x86_64 CPU state is malformed (aps is not a list)")
        states = [_ap_state(i, t) for i, t in enumerate(aps, start=1)]
        count = 1 + len(states)
        if self.vcpu is None:
            chips = text.get("vm_blobs") if isinstance(text.get("vm_blobs"), dict) else {}
            if count > 1 and "pic_master" not in chips:
                raise BackendError(f"the saved state has {count} vCPUs but no in-kernel irqchip, which starts them")
            self._create_vcpu(X86State("long", 0, 0, {}, 0, irqchip=bool(chips), pit="pit2" in chips, cpus=count))
        elif count != len(self._cpus):
            raise BackendError(f"the saved state is of a machine with {count} vCPUs; this VM has {len(self._cpus)}")
        KvmX86Backend.import_cpu(self, {k: v for k, v in text.items() if k != "aps"})
        firsts = [_pending_event(i, t.get("pending")) for i, t in enumerate(aps, start=1)]
        for cpu, state, first in zip(self._cpus[1:], states, firsts):
            cpu.first = first
            x86_state.restore(cpu.vcpu, state)
            # Into KVM now, not staged in kvm_run: a vCPU waiting for INIT takes
            # staged registers only at its first KVM_RUN after the SIPI, over
            # the state the SIPI gave it.
            cpu.vcpu.flush_staged()


def _pending_text(index: int, ev: Event) -> dict:
    """An AP's access the run ended before the machine handled it (its thread
    stopped with the run), for the snapshot. A write is saved: _capture_ap
    completes it in KVM (KVM_RUN with immediate_exit: the instruction is done,
    as the guest sees it) and a child's device sees the data before the AP
    runs on. A read is refused: KVM finishes the instruction only with the
    answer, and until then the vCPU's state is not consistent (KVM's API doc,
    KVM_EXIT_IO/MMIO), so there is nothing to resume from."""
    if type(ev) is PortIO:
        what = f"port {ev.port:#x}"
        text = {"port": hex(ev.port), "size": ev.size, "count": ev.count, "data": ev.data.hex()}
    else:
        what = f"MMIO at {ev.addr:#x}"
        text = {"mmio": hex(ev.addr), "size": ev.size, "data": ev.data.hex()}
    if not ev.write:
        raise BackendError(f"vCPU {index} was stopped at the end of the run in the middle of a read ({what}, "
                           f"{ev.size} byte(s)) the machine did not answer (the run ended first): KVM completes "
                           "that instruction only with the answer, and until then the vCPU's state is not one to "
                           "resume from, so the end of this run cannot be saved (writes can; save at a breakpoint "
                           "instead)")
    return text


def _pending_event(index: int, text) -> Event | None:
    """The write a saved AP had pending (_pending_text), as the event its child's device sees first."""
    if text is None:
        return None
    try:
        data = bytes.fromhex(text["data"])
        if "port" in text:
            ev: Event = PortIO(int(text["port"], 16), int(text["size"]), True, data, int(text["count"]))
        else:
            ev = Mmio(int(text["mmio"], 16), int(text["size"]), True, data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BackendError(f"vCPU {index}'s pending write is malformed ({type(e).__name__}: {e})") from None
    return ev


def _capture_ap(cpu: _PerVcpu) -> x86_state.X86CpuState:
    """An AP's complete state with its local APIC (the VM's chips are vCPU 0's)."""
    cpu.settle_io()
    # KVM takes a pending INIT or SIPI when asked for the MP state: that resets
    # the registers (or starts the AP at its SIPI vector), so the copy its last
    # exit left in kvm_run is stale and they are read by ioctl.
    cpu.vcpu.get_mp_state()
    cpu.vcpu.forget_sync()
    return x86_state.capture(cpu.kvm, cpu.vcpu, lapic=True)


def _ap_state(index: int, text) -> x86_state.X86CpuState:
    """vCPU `index`'s saved state; BackendError naming it if it is malformed or cut short."""
    try:
        state = x86_state.from_text(text)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise BackendError(f"vCPU {index}'s saved state is malformed ({type(e).__name__}: {e})") from None
    if "lapic" not in state.blobs or "mp_state" not in state.blobs:
        missing = "lapic" if "lapic" not in state.blobs else "mp_state"
        raise BackendError(f"vCPU {index}'s saved state is incomplete (no {missing})")
    return state
