"""What every KVM backend shares: memory slots, the timeout alarm, and turning
the arch-neutral exits of kvm_run into backend events.

Timeouts: KVM_RUN blocks until the guest exits, so a runaway guest is stopped
by SIGALRM. The handler sets kvm_run.immediate_exit (so a signal that lands
just before KVM_RUN still stops it) and the timer repeats every 10 ms after the
deadline until the run ends; KVM_RUN then returns EINTR and run() reports
TIMEOUT. This needs the main thread, which is where workers run rigs.
"""

from __future__ import annotations

import signal
import threading
import time

from kvmrig.backends import base
from kvmrig.backends.base import Backend, Event
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.system import Kvm
from kvmrig.errors import BackendError

ffi = abi.ffi
TIMER_REPEAT = 0.01

_kvm: Kvm | None = None
_kvm_pid = 0
_alarmed_run = None  # the kvm_run of the vCPU a SIGALRM should stop


def shared_kvm() -> Kvm:
    """One /dev/kvm fd per process (re-opened after fork)."""
    global _kvm, _kvm_pid
    import os
    if _kvm is None or _kvm_pid != os.getpid():
        _kvm, _kvm_pid = Kvm(), os.getpid()
    return _kvm


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
        self._slot = 0
        self._answer = None  # where complete_read() writes: "io" | "mmio"
        self._timer_armed = False
        self._old_handler = None

    # Memory ----------------------------------------------------------------
    def map_memory(self, gpa: int, buf, rom: bool) -> None:
        ptr = ffi.from_buffer(buf)
        self._buffers.append(ptr)
        host = int(ffi.cast("uintptr_t", ptr))
        self.vm.set_memory(self._slot, gpa, len(buf), host, readonly=rom)
        self._slot += 1
        self.regions.append((gpa, gpa + len(buf)))

    # Timeout ---------------------------------------------------------------
    def _arm_timer(self, deadline: float) -> None:
        global _alarmed_run
        if threading.current_thread() is not threading.main_thread():
            raise BackendError("the KVM backend must run rigs on the main thread (timeouts use SIGALRM)")
        _alarmed_run = self.vcpu.run_struct
        self._old_handler = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.0001), TIMER_REPEAT)
        self._timer_armed = True

    def _disarm_timer(self) -> None:
        global _alarmed_run
        if self._timer_armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler or signal.SIG_DFL)
            self._timer_armed = False
        _alarmed_run = None

    # Running ---------------------------------------------------------------
    def run(self, deadline: float) -> Event:
        if not self._timer_armed:
            self._arm_timer(deadline)
        vcpu = self.vcpu
        rs = vcpu.run_struct
        run = vcpu.run
        self._before_run()
        while True:
            reason = run()
            if reason == abi.KVM_EXIT_IO:
                io = rs.io
                if io.direction == abi.KVM_EXIT_IO_OUT:
                    return Event(base.IO, io.port, io.size, True, bytes(vcpu.io_data()), io.count)
                self._answer = "io"
                return Event(base.IO, io.port, io.size, False, b"", io.count)
            if reason == abi.KVM_EXIT_MMIO:
                m = rs.mmio
                if m.is_write:
                    return Event(base.MMIO, m.phys_addr, m.len, True, bytes(ffi.buffer(m.data, m.len)))
                self._answer = "mmio"
                return Event(base.MMIO, m.phys_addr, m.len, False)
            if reason == abi.KVM_EXIT_DEBUG:
                return self._debug_event(rs.debug.arch)
            if reason == abi.KVM_EXIT_INTR:
                rs.immediate_exit = 0
                if time.monotonic() >= deadline:
                    return Event(base.TIMEOUT, pc=self.get_pc())
                continue
            return self._other_exit(reason, rs)

    def _before_run(self) -> None:
        """Arch hook: state to fix up before the next KVM_RUN."""

    def _debug_event(self, arch_info) -> Event:
        raise NotImplementedError

    def _other_exit(self, reason: int, rs) -> Event:
        if reason == abi.KVM_EXIT_HLT:
            return Event(base.HALT, pc=self._halt_pc())
        if reason == abi.KVM_EXIT_SHUTDOWN:
            return Event(base.SHUTDOWN, pc=self.get_pc(),
                         detail="triple fault: the CPU shut down (an exception could not be delivered, "
                                "e.g. with no valid IDT)")
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            kind = {abi.KVM_SYSTEM_EVENT_SHUTDOWN: "off", abi.KVM_SYSTEM_EVENT_RESET: "reset",
                    abi.KVM_SYSTEM_EVENT_CRASH: "crash"}.get(rs.system_event.type, f"type {rs.system_event.type}")
            return Event(base.SYSTEM, detail=kind, pc=self.get_pc(), raw=rs.system_event.type)
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            sub = rs.internal.suberror
            text = INTERNAL.get(sub, f"KVM internal error, suberror {sub}")
            return Event(base.UNHANDLED, pc=self.get_pc(), detail=f"{text} (pc {self.get_pc():#x})", raw=sub)
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            why = rs.fail_entry.hardware_entry_failure_reason
            return Event(base.UNHANDLED, detail=f"VM entry failed (hardware reason {why:#x}): the CPU state is "
                                                "invalid for this mode", raw=why)
        return Event(base.UNHANDLED, pc=self.get_pc(),
                     detail=f"unexpected KVM exit {abi.exit_name(reason)} ({reason})", raw=reason)

    def _halt_pc(self) -> int:
        return self.get_pc()

    def complete_read(self, data: bytes) -> None:
        if self._answer == "io":
            self.vcpu.io_data()[:] = data
        elif self._answer == "mmio":
            ffi.memmove(self.vcpu.run_struct.mmio.data, data, len(data))
        self._answer = None

    def close(self) -> None:
        self._disarm_timer()
        vm, self.vm = self.vm, None
        if vm is not None:
            vm.close()
        self.vcpu = None
        for ptr in self._buffers:
            ffi.release(ptr)
        self._buffers = []
