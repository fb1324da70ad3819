"""arm64 KVM with more than one vCPU (`cpus: N`): the vCPUs take turns on the
one thread that runs the rig, and the machine layer sees one stream of
events, each naming its vCPU.

Why turns and not threads: the machine layer (devices, debug points,
expectations) is single-threaded and a rig's timeout is a SIGALRM on the main
thread; guests under test are small. Each vCPU runs for a slice (SLICE, or
until an exit the machine must see); a SIGALRM at the slice's end sets
immediate_exit and kicks it out of KVM_RUN (a vCPU waiting in WFI, or
powered off, sleeps in KVM_RUN until then). A vCPU whose exit went to the
machine keeps its turn until its slice ends, so an MMIO read is answered
and completed on the vCPU that made it.

What KVM does itself: PSCI (secondaries are created with
KVM_ARM_VCPU_POWER_OFF; CPU_ON, CPU_OFF and AFFINITY_INFO are answered in
the kernel), the GICv3 (IPIs, routing), MPIDR_EL1 (Aff0 = index % 16,
Aff1 = index / 16).

Each vCPU is a KvmArm64Backend "view" sharing the VM (memory slots, GIC)
with its own vcpu fd, register cache and debug state; this class is vCPU
0's view and the facade the machine drives: registers, complete_read and
reinject go to the vCPU of the last event, set_debug arms every vCPU (KVM
debug registers are per vCPU). The final registers are those of the vCPU
that ended the run (the event detail names it).

Single-step (trace, `steps`, stepping over a software breakpoint) follows
the vCPU of the last event. Software breakpoints are planted in memory all
vCPUs share: while the machine steps one vCPU over one it hit (the BRK
lifted, step_alone), that vCPU keeps the turn until its step exits, so no
other vCPU can pass the lifted breakpoint uncounted. A step always ends: a
stepped WFI is woken by the slice's signal, as any WFI is.

Known limits: watchpoints by page traps (KVMs without data breakpoints) are
vCPU 0's only; arm64 KVM has real watchpoints.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from kvmrig.arch.arm64.boot import Arm64State, GicLayout
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import DebugEvent, Event, Timeout
from kvmrig.backends.kvm import arm64_snap
from kvmrig.backends.kvm.arm64 import KvmArm64Backend
from kvmrig.errors import BackendError

SLICE = 0.002  # seconds a vCPU runs before the next one's turn


class _Secondary(KvmArm64Backend):
    """vCPU `index`'s view: the primary's VM, its own vcpu and per-vCPU state."""

    def __init__(self, primary: KvmArm64Backend, index: int) -> None:  # no super().__init__: no new VM
        self.kvm, self.vm = primary.kvm, primary.vm
        self.regions, self._buffers, self._backing = primary.regions, [], primary._backing
        self._slot_ids, self._traps, self._watch_mmio, self._slot = [], {}, False, primary._slot
        self._log_dirty, self._dirty, self._bitmaps = False, set(), {}   # the VM's pages are the primary's
        self.vcpu = None
        self.index = index
        self._reset_vcpu_state()
        self._init_state()

    def close(self) -> None:  # the VM (and this vcpu fd with it) belongs to the primary
        self._disarm_timer()
        if self._regs is not None and self.vcpu is not None:
            try:
                self._regs.fill()
            except Exception:
                pass
        self._forget_regs()
        self.vcpu = None


class KvmArm64SmpBackend(KvmArm64Backend):
    """vCPU 0 and the facade over all vCPUs (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = 0
        self._cpus: list[KvmArm64Backend] = [self]
        self._current: KvmArm64Backend = self
        self._turn = 0
        self._slice_end: float | None = None
        self._alone = False   # step_alone: the current vCPU keeps its turn

    # Boot ----------------------------------------------------------------
    def set_initial_state(self, state: Arm64State) -> None:
        # (more vCPUs than max_cpus() is a rig error the session raised before this, at `cpus`)
        self._create_machine(state.cpus, state.gic, self.offers_pmu(state))
        self.set_regs({"pstate": state.pstate, "pc": state.pc, **state.entry_regs})

    def _build_for_snapshot(self, cpus: int, gic: GicLayout | None, pmu: bool) -> None:
        """The vCPUs (and GIC) a snapshot loads into, made as the ones that took it (arm64_snap)."""
        if self.vcpu is not None:
            raise BackendError("a snapshot of several vCPUs needs a machine of its own; this one exists already")
        arm64_snap.check_pmu(self, pmu)
        self._create_machine(cpus, gic, pmu)

    def _create_machine(self, cpus: int, gic: GicLayout | None, pmu: bool) -> None:
        """vCPU 0, the others powered off until the guest's PSCI CPU_ON (KVM
        answers it in the kernel), then the GIC, after every vCPU exists."""
        init = self.vm.arm_preferred_target()
        self.vcpu = self.vm.create_vcpu(0)
        self.vcpu.arm_vcpu_init(init.target, self.init_features(boot=True, pmu=pmu))
        for i in range(1, cpus):
            cpu = _Secondary(self, i)
            cpu.vcpu = self.vm.create_vcpu(i)
            cpu.vcpu.arm_vcpu_init(init.target, self.init_features(boot=False, pmu=pmu))
            self._cpus.append(cpu)
        if gic is not None:
            self._create_gic(gic, [cpu.vcpu for cpu in self._cpus], pmu)

    # Running -------------------------------------------------------------
    def run(self, deadline: float) -> Event:
        n = len(self._cpus)
        while True:
            cpu = self._current = self._cpus[self._turn]  # this facade's calls go to it meanwhile
            if self._slice_end is None:
                self._slice_end = min(deadline, time.monotonic() + SLICE)
            ev = (KvmArm64Backend.run(self, self._slice_end) if cpu is self else cpu.run(self._slice_end))
            if type(ev) is not Timeout:
                return ev                 # current_cpu() names its vCPU
            cpu._disarm_timer()           # the slice is over
            self._slice_end = None
            if time.monotonic() >= deadline:
                self._current = self
                return Timeout(self.get_pc())
            if not self._alone:
                self._turn = (self._turn + 1) % n

    def step_alone(self, on: bool) -> None:
        self._alone = on

    def current_cpu(self) -> int:
        return self._current.index

    # The machine's calls go to the vCPU of the last event -------------------
    def _cpu(self) -> KvmArm64Backend | None:
        return self._current if self._current is not self else None

    def get_regs(self):
        cpu = self._cpu()
        return cpu.get_regs() if cpu else super().get_regs()

    def get_pc(self) -> int:
        cpu = self._cpu()
        return cpu.get_pc() if cpu else super().get_pc()

    def set_regs(self, regs: dict[str, int]) -> None:
        cpu = self._cpu()
        return cpu.set_regs(regs) if cpu else super().set_regs(regs)

    def complete_read(self, data: bytes) -> None:
        cpu = self._cpu()
        return cpu.complete_read(data) if cpu else super().complete_read(data)

    def reinject(self, event: DebugEvent) -> None:
        cpu = self._cpu()
        return cpu.reinject(event) if cpu else super().reinject(event)

    def describe_failure(self) -> str:
        cpu = self._cpu()
        text = cpu.describe_failure() if cpu else super().describe_failure()
        return f"vCPU {self._current.index}: {text}" if text else ""

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: Collection[int]) -> None:
        """Breakpoints and watchpoints on every vCPU; single-step on the vCPU of
        the last event only (the machine steps the vCPU it is looking at: over
        a software breakpoint it hit, or through its trace)."""
        for cpu in self._cpus:
            step = single_step and cpu is self._current
            if cpu is self:
                super().set_debug(slots, step, sw_breakpoints)
            else:
                cpu.set_debug(slots, step, sw_breakpoints)

    def close(self) -> None:
        for cpu in self._cpus[1:]:
            cpu.close()
        super().close()
