"""Application processors (rig `cpus` > 1 on x86_64): one host thread per AP.

With the in-kernel irqchip an AP's KVM_RUN blocks until the guest starts it
through its local APIC (INIT, SIPI: KVM does both), so every AP thread simply
enters KVM_RUN at once. Its port I/O and MMIO go to the same devices as the
BSP's, one vCPU at a time: the machine lock is held by whoever is handling an
exit (the BSP's holder is the session, from backend.run() returning an event
to the next run()). Anything that ends the run on an AP (an exit device, a
triple fault, an exit KVM cannot handle) is kept, the run is stopped on every
vCPU, and the BSP's next run() reports it.

Breakpoints, watchpoints and single-step apply to the BSP (vCPU 0) only.
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Callable

from kvmrig.backends.events import Event, Mmio, PortIO, Shutdown, Unhandled
from kvmrig.backends.kvm import abi
from kvmrig.errors import KvmError

ffi = abi.ffi
JOIN_TIMEOUT = 2.0


def ap_event(vcpu) -> Event:
    """A KVM exit of an AP as a backend event (the exits an AP can make)."""
    rs = vcpu.run_struct
    reason = rs.exit_reason
    if reason == abi.KVM_EXIT_IO:
        io = rs.io
        if io.direction == abi.KVM_EXIT_IO_OUT:
            return PortIO(io.port, io.size, True, bytes(vcpu.io_data()), io.count)
        return PortIO(io.port, io.size, False, b"", io.count)
    if reason == abi.KVM_EXIT_MMIO:
        m = rs.mmio
        if m.is_write:
            return Mmio(m.phys_addr, m.len, True, bytes(ffi.buffer(m.data, m.len)))
        return Mmio(m.phys_addr, m.len, False)
    if reason == abi.KVM_EXIT_SHUTDOWN:
        return Shutdown(0)
    if reason == abi.KVM_EXIT_INTERNAL_ERROR:
        return Unhandled(None, f"KVM internal error (suberror {rs.internal.suberror}): KVM could not emulate "
                               "an instruction or deliver an event", reason)
    return Unhandled(None, f"unexpected KVM exit {abi.exit_name(reason)} ({reason})", reason)


class Aps:
    """The AP threads of one VM and the lock that serialises the machine."""

    def __init__(self, vcpus: list, handler: Callable[[int, Event], bytes | None]):
        self.vcpus = vcpus
        self.handler = handler           # (vCPU index, event) -> answer bytes for reads; raises to end the run
        self.lock = threading.Lock()
        self.stopping = False
        self.ended: BaseException | None = None  # what an AP's exit raised
        self.main = threading.main_thread().ident
        self.threads = [threading.Thread(target=self._loop, args=(v,), name=f"kvmrig-vcpu{v.index}", daemon=True)
                        for v in vcpus]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self, vcpu) -> None:
        rs = vcpu.run_struct
        while not self.stopping:
            try:
                reason = vcpu.run()
            except KvmError as e:
                if e.errno == errno.EAGAIN:
                    continue             # the AP left its wait-for-SIPI state: KVM asks to enter again
                self._end(RuntimeError(f"vCPU {vcpu.index}: {e}"))
                return
            except Exception as e:       # KVM_RUN itself failed: end the run with the reason
                self._end(RuntimeError(f"vCPU {vcpu.index}: {e}"))
                return
            if self.stopping:
                return
            if reason == abi.KVM_EXIT_INTR:
                rs.immediate_exit = 0
                continue
            ev = ap_event(vcpu)
            with self.lock:
                if self.stopping:
                    return
                try:
                    answer = self.handler(vcpu.index, ev)
                except BaseException as e:   # a Stop (or anything) ends the whole run
                    self._end(e)
                    return
            if answer is not None:
                if isinstance(ev, PortIO):
                    vcpu.io_data()[:] = answer
                else:
                    ffi.memmove(rs.mmio.data, answer, len(answer))

    def _end(self, exc: BaseException) -> None:
        if self.ended is None:
            self.ended = exc
        self.stopping = True
        try:
            signal.pthread_kill(self.main, signal.SIGALRM)   # the BSP's KVM_RUN returns EINTR
        except (ProcessLookupError, OSError):
            pass

    def stop(self) -> None:
        """Stop every AP (immediate_exit plus a signal into its KVM_RUN) and wait for it."""
        self.stopping = True
        for v, t in zip(self.vcpus, self.threads):
            if t.is_alive():
                v.run_struct.immediate_exit = 1
                try:
                    signal.pthread_kill(t.ident, signal.SIGALRM)
                except (ProcessLookupError, OSError, TypeError):
                    pass
        for t in self.threads:
            if t.ident is not None:
                t.join(JOIN_TIMEOUT)
