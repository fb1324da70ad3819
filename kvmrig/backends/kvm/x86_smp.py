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

Known limits: the final registers are vCPU 0's; `trace` and `expect.steps`
single-step every vCPU and count all their instructions; a debugger (kvmrig
gdb) sees vCPU 0.
"""

from __future__ import annotations

import threading

from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import DebugEvent, Event, Timeout, Unhandled
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.smp import Aps, kick
from kvmrig.backends.kvm.x86_64 import SYNC, KvmX86Backend, _sync_regs_supported

NEVER = float("inf")   # an AP has no deadline of its own: the BSP's run ends it
KICKED = Timeout(0)    # an AP's KVM_RUN returned for a signal (ApView.next_event)


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
        return self._pending is not None or KvmX86Backend._needs_fixup(self)

    def _before_run(self) -> None:
        with self._pending_lock:
            setup, self._pending = self._pending, None
        if setup is not None:
            KvmX86Backend.set_debug(self, *setup)
        if KvmX86Backend._needs_fixup(self):
            KvmX86Backend._before_run(self)

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

    def next_event(self) -> Event | None:
        """Run this AP until an event the machine must see; None when it was
        kicked out of KVM_RUN (a new debug setup, or the end of the run)."""
        ev = self._next_event(NEVER)
        return None if ev is KICKED else ev

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
        self._aps = Aps(self._cpus[1:], handler, self._bind)
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
            return super().run(deadline)
        finally:
            aps.lock.acquire()
            self._holding = True

    def quiesce(self) -> None:
        """Stop every AP (before the verdict is taken)."""
        if self._aps is not None:
            if self._holding:
                self._holding = False
                self._aps.lock.release()
            self._aps.stop()
