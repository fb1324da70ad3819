"""Application processors (rig `cpus` > 1 on x86_64): one host thread per AP.

With the in-kernel irqchip an AP's KVM_RUN blocks until the guest starts it
through its local APIC (INIT, SIPI: KVM does both), so every AP thread simply
enters KVM_RUN at once. Each AP is a backend view of its own vCPU
(x86_smp.ApView): its exits become events exactly as the BSP's do (debug
exits, page-trapped watch accesses, port I/O, MMIO), and every event is
handled by the machine, one vCPU at a time: the machine lock is held by
whoever is handling an event (the BSP's holder is the session, from
backend.run() returning an event to the next run()). Anything that ends the
run on an AP (an exit device, a triple fault, an exit KVM cannot handle) is
kept, the run is stopped on every vCPU, and the BSP's next run() reports it.

A vCPU's debug setup changes only on its own thread (KVM_SET_GUEST_DEBUG
waits for the vCPU's KVM_RUN to return): another thread leaves the new setup
pending and kicks the vCPU out of KVM_RUN (kick()), and the vCPU applies it
before it enters the guest again.
"""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections.abc import Callable

from kvmrig.backends.events import Event
from kvmrig.errors import KvmError

JOIN_TIMEOUT = 2.0


def kick(vcpu, thread_id: int | None) -> None:
    """Make `vcpu`'s KVM_RUN (running on thread `thread_id`) return soon:
    immediate_exit covers a KVM_RUN about to start, the signal one under way
    (KVM_RUN returns EINTR; the SIGALRM handler itself runs on the main thread)."""
    vcpu.run_struct.immediate_exit = 1
    if thread_id is None:
        return
    try:
        signal.pthread_kill(thread_id, signal.SIGALRM)
    except (ProcessLookupError, OSError):
        pass


class Aps:
    """The AP threads of one VM and the lock that serialises the machine.

    `cpus` are the APs' views: `.index`, `.vcpu`, `next_event()` (run until an
    event, None when kicked) and `thread_id` (set here)."""

    def __init__(self, cpus: list, handler: Callable[[int, Event], None], bind: Callable[[object], None]):
        self.cpus = cpus
        self.handler = handler           # (vCPU index, event); raises to end the run
        self.bind = bind                 # called on each AP thread with its view first
        self.lock = threading.Lock()
        self.stopping = False
        self.ended: BaseException | None = None  # what an AP's exit raised
        self.paused = False              # an AP stopped for a debugger: the BSP's run() returns Paused
        self.main = threading.main_thread().ident
        self.threads = [threading.Thread(target=self._loop, args=(c,), name=f"kvmrig-vcpu{c.index}", daemon=True)
                        for c in cpus]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self, cpu) -> None:
        cpu.thread_id = threading.get_ident()
        self.bind(cpu)
        while not self.stopping:
            try:
                ev = cpu.next_event()
            except KvmError as e:
                if e.errno == errno.EAGAIN:
                    continue             # the AP left its wait-for-SIPI state: KVM asks to enter again
                self._end(RuntimeError(f"vCPU {cpu.index}: {e}"))
                return
            except Exception as e:       # KVM_RUN or a debug setup failed: end the run with the reason
                self._end(RuntimeError(f"vCPU {cpu.index}: {e}"))
                return
            if self.stopping:
                return
            if ev is None:
                continue                 # kicked: a new debug setup, or the end
            with self.lock:
                if self.stopping:
                    return
                try:
                    self.handler(cpu.index, ev)
                except BaseException as e:   # a Stop (or anything) ends the whole run
                    self._end(e)
                    return

    def _end(self, exc: BaseException) -> None:
        if self.ended is None:
            self.ended = exc
        self.stopping = True
        try:
            signal.pthread_kill(self.main, signal.SIGALRM)   # the BSP's KVM_RUN returns EINTR
        except (ProcessLookupError, OSError):
            pass

    def stop(self) -> None:
        """Stop every AP (immediate_exit plus a signal into its KVM_RUN) and wait
        for it, kicking again meanwhile (a kick can land just as the AP clears
        immediate_exit after another exit)."""
        self.stopping = True
        deadline = time.monotonic() + JOIN_TIMEOUT
        for c, t in zip(self.cpus, self.threads):
            while t.ident is not None and t.is_alive() and time.monotonic() < deadline:
                kick(c.vcpu, t.ident)
                t.join(0.02)
