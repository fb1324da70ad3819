"""What every KVM backend shares: memory slots, the timeout alarm, and turning
the arch-neutral exits of kvm_run into backend events.

Timeouts: KVM_RUN blocks until the guest exits, so a runaway guest is stopped
by SIGALRM. The handler sets kvm_run.immediate_exit (so a signal that lands
just before KVM_RUN still stops it) and the timer repeats every 10 ms after the
deadline until the run ends; KVM_RUN then returns EINTR and run() reports
TIMEOUT. This needs the main thread, which is where workers run rigs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from _signal import getsignal as _handler_of   # signal.getsignal without its enum conversion (per rig)
import time
from collections import deque
from collections.abc import Iterable

from kvmrig.backends.base import Backend
from kvmrig.backends.events import (Event, Halt, Mmio, Paused, PortIO, Shutdown, Step, SystemEvent, Timeout, Unhandled,
                                    WatchHit)
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.perprocess import PerProcess
from kvmrig.backends.kvm.system import Kvm
from kvmrig.errors import BackendError

ffi = abi.ffi
TIMER_REPEAT = 0.01
PAGE = 0x1000
_LOG_CHUNK = 512   # bytes of a dirty-log bitmap read as one int (4096 pages)

_kvm: PerProcess[Kvm] = PerProcess()
_alarmed_run = None  # the kvm_run of the vCPU a SIGALRM should stop


def shared_kvm() -> Kvm:
    """One /dev/kvm fd per process (re-opened after fork)."""
    return _kvm.get(lambda: Kvm(os.environ.get("KVMRIG_KVM_DEVICE", "/dev/kvm")))


def _on_alarm(signum, frame) -> None:
    run = _alarmed_run
    if run is not None:
        run.immediate_exit = 1


INTERNAL = {
    abi.KVM_INTERNAL_ERROR_EMULATION: "KVM could not emulate an instruction (did the guest jump into "
                                      "unbacked memory or MMIO, or use an instruction KVM cannot emulate there?)",
    abi.KVM_INTERNAL_ERROR_SIMUL_EX: "an exception occurred while another was being delivered",
    abi.KVM_INTERNAL_ERROR_DELIVERY_EV: "an event could not be delivered (e.g. a fault while delivering an "
                                        "exception through a bad IDT or stack)",
    abi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "KVM saw a VM exit it did not expect",
}


class KvmBackendBase(Backend):
    """Vm + one Vcpu; subclasses add the arch's registers, boot state and debug."""

    name = "kvm"

    def __init__(self) -> None:
        self.kvm = shared_kvm()
        self.vm = self.kvm.create_vm()
        self.vcpu = None
        self.regions: list[tuple[int, int]] = []
        self._buffers: list = []
        self._backing: list[tuple[int, int, int, bool]] = []  # (gpa, size, host address, rom)
        self._slot_ids: list[tuple[int, int, int, bool]] = []  # (slot, gpa, size, dirty-logged)
        self._log_dirty = False    # memory slots log the pages the guest writes (VM reuse, snapshots)
        self._dirty: set[int] = set()   # pages written since the last dirty_ranges(), not yet in a slot's log
        self._bitmaps: dict[int, tuple] = {}   # slot size -> (dirty-log bitmap, a buffer over it)
        self._traps: dict[int, str] = {}  # page gpa -> "ro" | "absent" (watchpoint page traps)
        self._watch_mmio = False   # watchpoints over MMIO (unbacked) addresses are matched on MMIO exits
        self._slot = 0
        self._reset_vcpu_state()

    def _reset_vcpu_state(self) -> None:
        """What belongs to one vCPU's run (another vCPU of the same VM has its own)."""
        self._queue: deque[Event] = deque()   # events found, not yet returned
        self._owe_step = False     # a step to report once pending I/O completes
        self._owe_hits: list[WatchHit] = []   # watch hits to report once pending I/O completes (pc filled then)
        self._answer = None  # where complete_read() writes: "io" | "mmio"
        self._timer_armed = False
        self._handler_installed = False
        self._old_handler = None

    # Memory ----------------------------------------------------------------
    def map_memory(self, gpa: int, buf, rom: bool) -> None:
        ptr = ffi.from_buffer(buf)
        host = int(ffi.cast("uintptr_t", ptr))
        if (gpa, len(buf), host, rom) in self._backing:
            ffi.release(ptr)
            return  # a reused VM: this buffer backs this range already
        self._buffers.append(ptr)
        self._backing.append((gpa, len(buf), host, rom))
        self._slot_ids.append(self._add_slot(gpa, len(buf), host, rom))
        self.regions.append((gpa, gpa + len(buf)))

    def _add_slot(self, gpa: int, size: int, host: int, readonly: bool) -> tuple[int, int, int, bool]:
        slot = self._slot
        logged = self._log_dirty and not readonly  # the guest cannot write a read-only slot
        self.vm.set_memory(slot, gpa, size, host, readonly=readonly, log_dirty=logged)
        self._slot += 1
        return (slot, gpa, size, logged)

    def _host(self, gpa: int, length: int) -> int | None:
        for start, size, host, _rom in self._backing:
            if start <= gpa and gpa + length <= start + size:
                return host + gpa - start
        return None

    def peek(self, gpa: int, length: int) -> bytes | None:
        """Guest-physical bytes from the host side (None outside memory)."""
        host = self._host(gpa, length)
        return None if host is None else bytes(ffi.buffer(ffi.cast("char *", host), length))

    def poke(self, gpa: int, data: bytes) -> bool:
        host = self._host(gpa, len(data))
        if host is None:
            return False
        ffi.memmove(ffi.cast("char *", host), data, len(data))
        if self._log_dirty:
            self._dirty.update(range(gpa & ~(PAGE - 1), gpa + len(data), PAGE))
        return True

    # Page traps: watchpoints where the debug hardware cannot ----------------
    def set_traps(self, pages: dict[int, str]) -> None:
        """Make each page read-only ("ro": writes exit as MMIO) or unmapped
        ("absent": every access exits as MMIO), rebuilding the memory slots."""
        if pages == self._traps:
            return
        self._rebuild_slots(pages)

    def _rebuild_slots(self, pages: dict[int, str]) -> None:
        if self._log_dirty:
            self._harvest()  # a deleted slot takes its dirty log with it
        for slot, *_ in self._slot_ids:
            self.vm.set_memory(slot, 0, 0, 0)  # size 0 deletes the slot
        self._slot_ids = []
        for gpa, size, host, rom in self._backing:
            cut = gpa
            for page in sorted(p for p in pages if gpa <= p < gpa + size):
                if page > cut:
                    self._slot_ids.append(self._add_slot(cut, page - cut, host + cut - gpa, rom))
                if pages[page] == "ro":
                    self._slot_ids.append(self._add_slot(page, PAGE, host + page - gpa, True))
                cut = page + PAGE
            if cut < gpa + size:
                self._slot_ids.append(self._add_slot(cut, gpa + size - cut, host + cut - gpa, rom))
        self._traps = dict(pages)

    def _watch_access(self, addr: int, size: int, write: bool) -> WatchHit | None:
        """Arch hook: which watchpoint (if any) a trapped access hits."""
        return None

    # Dirty pages: what a reset must put back ------------------------------
    def track_dirty(self) -> None:
        """From now on record every page written (by the guest, through the
        slots' KVM dirty log, and by the backend's own pokes)."""
        if not self._log_dirty:
            self._log_dirty = True
            self._rebuild_slots(self._traps)
            self._dirty.clear()

    def dirty_ranges(self) -> list[tuple[int, int]]:
        """Guest-physical [start, end) page ranges written since track_dirty()
        or the last call (KVM_GET_DIRTY_LOG also clears each slot's log):
        runs of neighbouring pages come as one range, so the caller zeroes
        each run with one copy and Python never steps page by page."""
        ranges = self._log_runs()
        if self._dirty:   # the backend's own pokes, and logs taken before a slot rebuild
            ranges += [(page, page + PAGE) for page in sorted(self._dirty)]
            self._dirty = set()
        return ranges

    def _harvest(self) -> None:
        """Move the slots' logs into self._dirty (before the slots are rebuilt)."""
        for start, end in self._log_runs():
            self._dirty.update(range(start, end, PAGE))

    def _log_runs(self) -> list[tuple[int, int]]:
        """KVM_GET_DIRTY_LOG of every logged slot, as runs of written pages.
        This runs right after the reset's vCPU ioctls, whose exit to the outer
        hypervisor here leaves the CPU caches cold (bench/README.md): every
        Python step costs several times its usual, so the steps are few."""
        runs: list[tuple[int, int]] = []
        get_log = self.vm.get_dirty_log
        for slot, gpa, size, logged in self._slot_ids:
            if not logged:
                continue
            log = self._bitmaps.get(size)
            if log is None:
                bitmap = ffi.new("uint64_t[]", (size // PAGE + 63) // 64)
                log = self._bitmaps[size] = (bitmap, ffi.buffer(bitmap))
            bitmap, data = log
            get_log(slot, bitmap)
            if len(data) <= _LOG_CHUNK:   # slots up to 16 MiB: the whole log is one int
                chunks: Iterable[tuple[int, int]] = ((gpa, int.from_bytes(data, "little")),)
            else:                         # larger ones by chunks, so a few written pages stay cheap
                chunks = ((gpa + at * 8 * PAGE, int.from_bytes(data[at:at + _LOG_CHUNK], "little"))
                          for at in range(0, len(data), _LOG_CHUNK))
            for base, bits in chunks:
                while bits:   # one turn per run of set bits
                    low = bits & -bits     # the run's first page
                    bits += low            # the carry clears the run and sets the bit after it
                    high = bits & -bits
                    bits ^= high
                    start, end = base + (low.bit_length() - 1) * PAGE, base + (high.bit_length() - 1) * PAGE
                    if runs and runs[-1][1] == start:   # a run across two chunks
                        start = runs.pop()[0]
                    runs.append((start, end))
        return runs

    def settle_io(self) -> None:
        """Finish a port/MMIO access the vCPU still waits on (and apply registers
        staged in kvm_run), so the state read or written next is final: KVM completes it at the next KVM_RUN, which
        with immediate_exit set returns before entering the guest."""
        if self.vcpu is None:
            return
        rs = self.vcpu.run_struct
        if rs.exit_reason not in (abi.KVM_EXIT_IO, abi.KVM_EXIT_MMIO) and not rs.kvm_dirty_regs:
            return  # nothing waits, nothing staged (an ioctl saved)
        rs.immediate_exit = 1
        try:
            self.vcpu.run()
        finally:
            rs.immediate_exit = 0
        self._answer = None

    def park(self) -> None:
        """Between two rigs on a kept VM: no alarm may fire (it would repeat
        every 10 ms after a timeout until the next reset)."""
        self._disarm_timer(keep_handler=True)

    def forget_run(self) -> None:
        """Drop everything this backend remembers of the last run (queued
        events, debug setup, watch traps, the timer), as a new backend would
        have it; the vCPU state itself is the caller's to restore."""
        self._disarm_timer(keep_handler=True)
        self._queue.clear()
        self._owe_step, self._owe_hits, self._answer = False, [], None
        self._watch_mmio = False
        self._fixup = False
        self._disarm_debug()
        if self._traps:
            self._rebuild_slots({})
            self._traps = {}

    def _disarm_debug(self) -> None:
        """Turn KVM_SET_GUEST_DEBUG off (arch hook: skip it when never armed)."""
        if self.vcpu is not None:
            self.vcpu.set_guest_debug(0)

    # Timeout ---------------------------------------------------------------
    def _arm_timer(self, deadline: float) -> None:
        global _alarmed_run
        if threading.current_thread() is not threading.main_thread():
            raise BackendError("the KVM backend must run rigs on the main thread (timeouts use SIGALRM)")
        _alarmed_run = self.vcpu.run_struct
        self._install_alarm()
        first = max(deadline - time.monotonic(), 0.0001)
        if self.irqchip:  # KVM runs HLT itself: kick the vcpu now and then to look (_halted)
            first = min(first, TIMER_REPEAT)
        signal.setitimer(signal.ITIMER_REAL, first, TIMER_REPEAT)
        self._timer_armed = True

    def _install_alarm(self) -> None:
        """kvmrig's SIGALRM handler (main thread only): the timeout, and the kicks
        that get a vCPU out of KVM_RUN (x86_smp), must not kill the process."""
        if _handler_of(signal.SIGALRM) is not _on_alarm:   # another kept VM's close() may have put
            self._old_handler = signal.signal(signal.SIGALRM, _on_alarm)   # the old one back meanwhile
            self._handler_installed = True

    def _disarm_timer(self, keep_handler: bool = False) -> None:
        """Stop the alarm; put the old SIGALRM handler back unless `keep_handler`
        (a reused VM runs again soon: the handler stays until close())."""
        global _alarmed_run
        if self._timer_armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._timer_armed = False
        if self._handler_installed and not keep_handler:
            if signal.getsignal(signal.SIGALRM) is _on_alarm:
                signal.signal(signal.SIGALRM, self._old_handler or signal.SIG_DFL)
            self._handler_installed = False
        _alarmed_run = None

    def max_cpus(self) -> int | None:
        """KVM_CAP_MAX_VCPUS of this VM (arm64: 512 with a GICv3 host, 8 with
        a GICv2 one), else the recommended KVM_CAP_NR_VCPUS."""
        return (self.vm.check_extension(abi.KVM_CAP_MAX_VCPUS) or self.vm.check_extension(abi.KVM_CAP_NR_VCPUS)
                or None)

    _aps = None   # x86_smp: the AP threads (smp.Aps), whose `ended` ends the BSP's run too

    # Running ---------------------------------------------------------------
    def run(self, deadline: float) -> Event:
        if self._queue:
            return self._queue.popleft()
        if not self._timer_armed:
            self._arm_timer(deadline)
        return self._next_event(deadline)

    def _next_event(self, deadline: float) -> Event:
        """KVM_RUN until an exit is an event (no timer: the caller's, if any)."""
        if self._queue:
            return self._queue.popleft()
        run = self.vcpu.run
        while True:
            if self._owe_step or self._owe_hits:
                events = self._settle(deadline)
                if events:
                    self._queue.extend(events[1:])
                    return events[0]
            if self._needs_fixup():
                self._before_run()
            ev = self._event(run(), deadline)
            if ev is not None:
                return ev

    def _event(self, reason: int, deadline: float) -> Event | None:
        """One KVM exit as an event, or None to keep running (the hot path)."""
        rs = self.vcpu.run_struct
        if reason == abi.KVM_EXIT_IO:
            io = rs.io
            if self._stepping():
                self._owe_step = True
            if io.direction == abi.KVM_EXIT_IO_OUT:
                return PortIO(io.port, io.size, True, bytes(self.vcpu.io_data()), io.count)
            self._answer = "io"
            return PortIO(io.port, io.size, False, b"", io.count)
        if reason == abi.KVM_EXIT_MMIO:
            m = rs.mmio
            addr, size, write = m.phys_addr, m.len, bool(m.is_write)
            if self._traps and (addr & ~(PAGE - 1)) in self._traps:
                return self._trapped_access(addr, size, write, m.data)
            if self._stepping():
                self._owe_step = True
            if self._watch_mmio:
                hit = self._watch_access(addr, size, write)
                if hit is not None:
                    self._owe_hits.append(hit)  # delivered once the device access completed
            if write:
                return Mmio(addr, size, True, bytes(ffi.buffer(m.data, size)))
            self._answer = "mmio"
            return Mmio(addr, size, False)
        if reason == abi.KVM_EXIT_DEBUG:
            return self._debug_event(rs.debug.arch)  # None: the backend's own (stepping past a breakpoint)
        if reason == abi.KVM_EXIT_INTR:
            rs.immediate_exit = 0
            if time.monotonic() >= deadline:
                return Timeout(self._pc_now())
            aps = self._aps
            if aps is not None:
                if aps.ended is not None:
                    return Unhandled(self._pc_now(), f"another vCPU ended the run: {aps.ended}")
                if aps.paused:   # another vCPU stopped for a debugger (x86_smp.ask_stop)
                    aps.paused = False
                    return Paused(self._pc_now())
            return self._halted() if self.irqchip else None
        return self._other_exit(reason, rs)

    def _settle(self, deadline: float) -> list[Event]:
        """Complete the access the guest is waiting on, then deliver what was
        owed: watch hits (with the state after the access) and, when stepping,
        the step of that instruction if this KVM does not report it itself.

        KVM_RUN with immediate_exit set finishes pending port/MMIO I/O and
        returns EINTR before entering the guest (api.rst, immediate_exit)."""
        owe_step, hits = self._owe_step, self._owe_hits
        self._owe_step, self._owe_hits = False, []
        rs = self.vcpu.run_struct
        rs.immediate_exit = 1
        reason = self.vcpu.run()
        rs.immediate_exit = 0
        events: list[Event] = []
        if hits or (owe_step and reason == abi.KVM_EXIT_INTR):
            pc = self._pc_now()
            events.extend(dataclasses.replace(hit, pc=pc) for hit in hits)
            if owe_step and reason == abi.KVM_EXIT_INTR:
                step = self._step_done(pc)
                if step is not None:
                    events.append(step)
        if reason != abi.KVM_EXIT_INTR:
            follow = self._event(reason, deadline)  # e.g. the step exit a full KVM reports
            if follow is not None:
                events.append(follow)
        return events

    def _trapped_access(self, addr: int, size: int, write: bool, data) -> Event | None:
        """A guest access to a page trapped for watchpoints: complete it here.
        A write to ROM is not applied: it ends the run as the MMIO exit it is."""
        hit = self._watch_access(addr, size, write)
        if write and self._is_rom(addr):
            end = Mmio(addr, size, True, bytes(ffi.buffer(data, size)))
            if hit is None:
                return end
            self._queue.append(end)
            return dataclasses.replace(hit, pc=self._pc_now())
        if write:
            self.poke(addr, bytes(ffi.buffer(data, size)))
        else:
            ffi.memmove(data, self.peek(addr, size) or bytes(size), size)
        if self._stepping():
            self._owe_step = True
        if hit is not None:
            self._owe_hits.append(hit)
        return None

    def _is_rom(self, gpa: int) -> bool:
        return any(start <= gpa < start + size and rom for start, size, _h, rom in self._backing)

    # Arch hooks ----------------------------------------------------------
    def _needs_fixup(self) -> bool:
        """Whether _before_run has work to do before the next KVM_RUN."""
        return False

    irqchip = False  # an in-kernel interrupt controller runs HLT itself

    def _halted(self) -> Event | None:
        """After a kick (irqchip only): the end of the run if the vcpu can never wake."""
        return None

    def _before_run(self) -> None:
        """State to fix up before the next KVM_RUN (only called when _needs_fixup())."""

    def _debug_event(self, arch_info) -> Event | None:
        """A KVM_EXIT_DEBUG as an event, or None to keep running."""
        raise NotImplementedError

    def _stepping(self) -> bool:
        """Whether the vCPU is single-stepping (for the session or the backend itself)."""
        return False

    def _step_done(self, pc: int) -> Event | None:
        """A single-step finished at `pc`: the event for it, or None if it was the backend's."""
        return Step(pc)

    def _pc_now(self) -> int:
        """The program counter as debug exits report it (x86: linear)."""
        return self.get_pc()

    def _other_exit(self, reason: int, rs) -> Event:
        if reason == abi.KVM_EXIT_HLT:
            return self._halt_event()
        if reason == abi.KVM_EXIT_SHUTDOWN:
            return Shutdown(self._pc_now(),
                            "triple fault: the CPU shut down (an exception could not be delivered, "
                                "e.g. with no valid IDT)")
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            kind = {abi.KVM_SYSTEM_EVENT_SHUTDOWN: "off", abi.KVM_SYSTEM_EVENT_RESET: "reset",
                    abi.KVM_SYSTEM_EVENT_CRASH: "crash"}.get(rs.system_event.type, f"type {rs.system_event.type}")
            return SystemEvent(self._pc_now(), kind, rs.system_event.type)
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            sub = rs.internal.suberror
            text = INTERNAL.get(sub, f"KVM internal error, suberror {sub}")
            if self._traps.get(self._pc_now() & ~(PAGE - 1)) == "absent":
                text = ("the guest ran code on a page kvmrig unmapped to catch reads for a watchpoint (this KVM "
                        "raises no data breakpoints): keep watched data off code pages, or watch writes only")
            return Unhandled(self._pc_now(), f"{text} (pc {self._pc_now():#x})", sub)
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            why = rs.fail_entry.hardware_entry_failure_reason
            return Unhandled(None, f"VM entry failed (hardware reason {why:#x}): the CPU state is "
                                   "invalid for this mode", why)
        return Unhandled(self._pc_now(), f"unexpected KVM exit {abi.exit_name(reason)} ({reason})", reason)

    def _halt_event(self) -> Event:
        return Halt(self._pc_now())

    def complete_read(self, data: bytes) -> None:
        if self._answer == "io":
            self.vcpu.io_data()[:] = data
        elif self._answer == "mmio":
            ffi.memmove(self.vcpu.run_struct.mmio.data, data, len(data))
        self._answer = None

    def close(self) -> None:
        self.quiesce()
        self._disarm_timer()
        vm, self.vm = self.vm, None
        if vm is not None:
            vm.close()
        self.vcpu = None
        for ptr in self._buffers:
            ffi.release(ptr)
        self._buffers = []
