"""The arm64 KVM backend: vCPU init with PSCI 0.2, registers through ONE_REG
(read lazily, once per stop), and DBGBCR/DBGWCR debugging through
KVM_SET_GUEST_DEBUG.

Boot: KVM_ARM_PREFERRED_TARGET, then KVM_ARM_VCPU_INIT with the PSCI 0.2
feature, so KVM itself answers the guest's `HVC #0` PSCI calls and turns
SYSTEM_OFF / SYSTEM_RESET into KVM_EXIT_SYSTEM_EVENT (common.py maps them to
"off" / "reset"). The reset state is already EL1h with DAIF masked and the
MMU off (SCTLR_EL1.M = 0); set_initial_state writes PSTATE and PC anyway.
A rig with `gic:` gets KVM's in-kernel GICv3 (created after the vCPU,
placed, sized and initialised: _create_gic), which also delivers the generic
timer's PPIs; devices raise their SPIs through set_irq_line (KVM_IRQ_LINE).
Without one the vCPU has no interrupt source at all.

Halting: arm64 KVM never exits with KVM_EXIT_HLT. WFI and WFE are handled in
the kernel: a WFI blocks the vCPU until an interrupt the GIC would deliver
(with no irqchip: never), or a signal, so a guest that ends in WFI ends the
run by `timeout` (the SIGALRM of common.py). Guests end their run with PSCI SYSTEM_OFF or an exit
device instead; `_halt_event` is inherited and never reached.

Registers: get_regs() returns a `LazyRegs`, a dict that reads each register
with one KVM_GET_ONE_REG on first access and keeps it until the vCPU runs
again (a hit that checks two registers costs two ioctls, not ~90). Every
whole-dict operation (iteration, len, copy, pickling) reads the rest first,
and close() completes the last one, so `outcome.regs` stays a full snapshot
after the VM is gone. "sp" is the stack pointer of the current exception
level (SP_EL1 at EL1h, SP_EL0 at EL0t/EL1t; onereg.sp_for_pstate).

Reuse: reset() puts a kept VM back for the next rig (KVM_ARM_VCPU_INIT
again, plus the few registers it leaves); VMs with a GIC or several vCPUs are
not reused (machine/reuse.py; docs/snapshots.md).

Debug: breakpoints are taken BEFORE the instruction executes and watchpoints
BEFORE the access completes (the instruction re-executes on return), so
progress needs "disable, step one instruction, re-enable", which this
backend does itself:

* a hardware breakpoint is reported at once, with the state before the
  instruction (like x86, so `expect` and `set` at a hit see and change the
  inputs of that instruction); on the next run() the slot(s) at that
  address are disabled for one single-step, then re-armed;
* a watchpoint is reported AFTER the access: the watch slots (and any
  breakpoint at that pc) are disabled, the instruction is stepped, the
  slots re-armed, and then the hit is reported with the registers and
  memory after the access (`expect.value` reads the new bytes); its pc is
  the next instruction's, as x86 reports a data breakpoint trap;
* while one of these internal steps runs, an MMIO exit of the stepped
  instruction is returned as usual and the step finishes on the next run();
  a step exit the machine asked for itself (single_step) is still reported.

Known limits:

* One watchpoint exit reports one slot (the watch the FAR points into, else
  the nearest overlapping one): two rig watchpoints over the same bytes do
  not both count one access.
* Guest code written from the host (planted and lifted BRKs, `set: memory`
  over code) is fetched correctly by CPUs with CTR_EL0.DIC = 1, and KVM
  cleans the I-cache when it first maps a page. On cores without DIC a BRK
  lifted after the guest ran it may still be fetched from the I-cache; that
  needs IC IVAU over the written bytes from the host, i.e. a hook from the
  machine layer naming what it wrote (not there yet).
* Under QEMU TCG (7.2, the arm64 lane of kvmrig.invm) host writes to guest
  code the guest already executed are never seen at all (stale
  translations), and a new VM whose RAM lands on a recycled host page at the
  same guest address may run the previous guest's code. kvmrig's software
  breakpoints still work there only because stepping over one runs freshly
  translated single-step code. A reused VM (reset()) was not seen to: the
  pool zeroes the old code pages from the host, which QEMU does notice.
"""

from __future__ import annotations

import errno
from collections.abc import Collection
import dataclasses
from dataclasses import dataclass, field

from kvmrig.arch.arm64 import cpustate, debugregs, esr, onereg, virt
from kvmrig.arch.arm64.boot import Arm64State, GicLayout
from kvmrig.arch.arm64.regs import CANONICAL
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import DebugEvent, Event, ForeignDebug, HwBreak, Step, SwBreak, Unhandled, WatchHit
from kvmrig.backends.kvm import abi, arm64_snap
from kvmrig.backends.kvm.common import KvmBackendBase
from kvmrig.backends.kvm.lazyregs import LazyRegs
from kvmrig.backends.kvm.perprocess import PerProcess
from kvmrig.errors import BackendError, KvmError

# Registers whose value decides where "sp" lives: writing them forgets a cached "sp".
_SP_DEPENDS = frozenset({"pstate", "sp_el0", "sp_el1"})
# Registers KVM_ARM_VCPU_INIT does not reset (Linux 6.12: the EL1 exception
# registers kept in the vCPU's sysreg file, and the timers' compare values):
# reset() writes them back; tests/machine/arm64_reuse_checks.py (reinit) proves the list.
INIT_KEEPS = (onereg.reg_id("sp_el1"), onereg.reg_id("elr_el1"), onereg.reg_id("spsr_el1"),
              onereg.sys_reg(3, 3, 14, 0, 2),    # KVM_REG_ARM_TIMER_CVAL: CNTV_CVAL_EL0
              onereg.sys_reg(3, 3, 14, 2, 2))    # CNTP_CVAL_EL0
TIMER_CNT = onereg.sys_reg(3, 3, 14, 3, 2)       # KVM_REG_ARM_TIMER_CNT: CNTVCT_EL0 (writing it sets CNTVOFF)


@dataclass
class _Step:
    """An internal single-step in progress: which slots are off, what to report after."""

    disabled: set[int] = field(default_factory=set)
    report: list[WatchHit] = field(default_factory=list)  # pc filled when the step ends


def full_esr(info) -> int:
    """ESR_EL2 of a debug exit: kvm_debug_exit_arch.hsr plus ISS2 in hsr_high (bits 63:32)."""
    return int(info.hsr) | int(info.hsr_high) << 32


def debug_control(any_slots: bool, single_step: bool, sw: bool) -> int:
    """kvm_guest_debug.control: 0 (debugging off) or ENABLE plus the wanted parts."""
    if not (any_slots or single_step or sw):
        return 0
    control = abi.KVM_GUESTDBG_ENABLE
    if single_step:
        control |= abi.KVM_GUESTDBG_SINGLESTEP
    if sw:
        control |= abi.KVM_GUESTDBG_USE_SW_BP
    if any_slots:
        control |= abi.KVM_GUESTDBG_USE_HW
    return control


_created_cache: PerProcess[dict[int, int]] = PerProcess()


def _created_regs() -> dict[int, int]:
    """Every ONE_REG register of a vCPU as kvmrig creates it (a throwaway VM,
    once per process): a snapshot names the KVM-only ones the guest changed."""
    def probe() -> dict[int, int]:
        with KvmArm64Backend() as backend:
            backend._ensure_vcpu()
            out = {}
            for reg in backend.vcpu.get_reg_list():
                try:
                    out[reg] = backend.vcpu.get_one_reg(reg)
                except KvmError:
                    pass
            return out
    return _created_cache.get(probe)


class KvmArm64Backend(KvmBackendBase):
    arch = "arm64"

    def __init__(self) -> None:
        super().__init__()
        self._init_state()
        self._vcpu_init: tuple[int, tuple[int, ...]] | None = None   # (target, features) of vCPU 0
        self._pristine: dict[int, int] | None = None   # keep_pristine(): what reset() writes after the init

    def _init_state(self) -> None:
        """The arm64 part of the state (tests build a backend around a fake vCPU with it)."""
        self._regs: LazyRegs | None = None
        self._caps: tuple[int, int] | None = None
        self._slots: list[HwSlot] = []
        self._breaks: list[tuple[int, debugregs.BreakReg]] = []
        self._watches: list[tuple[int, debugregs.WatchReg]] = []
        self._user_step = False
        self._sw = False
        self._step: _Step | None = None           # internal step in progress
        self._resume_bp: tuple[int, frozenset[int]] | None = None  # (pc, exec slots) to step past
        self._last_esr = 0
        self._gic: GicLayout | None = None
        self._gic_dev = None      # the vGICv3 device (its state: arm64_gic_state)
        self._pmu = False         # the vCPUs were made with KVM_ARM_VCPU_PMU_V3

    # Boot ----------------------------------------------------------------
    def set_initial_state(self, state: Arm64State) -> None:
        if state.cpus > 1:  # select.py picks arm64_smp.KvmArm64SmpBackend for those
            raise BackendError(f"cpus: {state.cpus}: this backend drives one vCPU (KvmArm64SmpBackend drives more)")
        if self.vcpu is None:
            # PSCI 0.2: KVM answers HVC #0 PSCI calls, SYSTEM_OFF/RESET exit as system events.
            vcpu = self._create_boot_vcpu(self.vcpu_features(state, boot=True))
            if state.gic is not None:
                self._create_gic(state.gic, [vcpu], self.offers_pmu(state))
        elif state.gic is not None:   # machine/reuse.py keeps `gic:` rigs fresh-only
            raise BackendError("a kept VM (created without an in-kernel GIC) cannot take a rig with `gic:`")
        self.set_regs({"pstate": state.pstate, "pc": state.pc, **state.entry_regs})

    def vcpu_features(self, state: Arm64State, boot: bool) -> list[int]:
        """KVM_ARM_VCPU_INIT features for a rig: a PMUv3 with a GIC where KVM
        has one (QEMU's -cpu max/host have one by default)."""
        return self.init_features(boot, self.offers_pmu(state))

    @staticmethod
    def init_features(boot: bool, pmu: bool) -> list[int]:
        """KVM_ARM_VCPU_INIT features: PSCI 0.2; powered off unless it is the
        boot vCPU; a PMUv3 with `pmu`."""
        features = [abi.KVM_ARM_VCPU_PSCI_0_2]
        if not boot:
            features.append(abi.KVM_ARM_VCPU_POWER_OFF)
        if pmu:
            features.append(abi.KVM_ARM_VCPU_PMU_V3)
        return features

    def offers_pmu(self, state: Arm64State) -> bool:
        """A PMUv3 needs an in-kernel GIC (its overflow PPI) and KVM_CAP_ARM_PMU_V3."""
        return state.gic is not None and self.vm.check_extension(abi.KVM_CAP_ARM_PMU_V3) > 0

    def _create_gic(self, gic: GicLayout, vcpus: list, pmu: bool) -> None:
        """The in-kernel GICv3 (arm-vgic-v3.rst): created after the vCPUs,
        placed, sized, initialised; then, with `pmu` (the vCPUs were made with
        KVM_ARM_VCPU_PMU_V3), each vCPU's PMU wired to PPI 7 and
        initialised (arm-vcpu.rst; QEMU's order). The generic timer's PPIs are
        KVM's defaults (virtual 27, physical 30), which the device tree lists."""
        if not self.vm.check_extension(abi.KVM_CAP_DEVICE_CTRL):
            raise BackendError("this KVM cannot create in-kernel devices (no KVM_CAP_DEVICE_CTRL): no GICv3")
        try:
            dev = self.vm.create_device(abi.KVM_DEV_TYPE_ARM_VGIC_V3)
        except KvmError as e:
            raise BackendError(f"this KVM has no GICv3 to offer (the host's GIC cannot virtualise one?): {e}") \
                from None
        steps = (
            ("placing the distributor", abi.KVM_DEV_ARM_VGIC_GRP_ADDR, abi.KVM_VGIC_V3_ADDR_TYPE_DIST,
             gic.distributor, 8),
            ("placing the redistributors", abi.KVM_DEV_ARM_VGIC_GRP_ADDR, abi.KVM_VGIC_V3_ADDR_TYPE_REDIST,
             gic.redistributor, 8),
            (f"asking for {gic.irqs} interrupts", abi.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, gic.irqs, 4),
        )
        for what, group, attr, value, size in steps:
            try:
                dev.set_attr(group, attr, value, size)
            except KvmError as e:
                raise BackendError(f"GICv3: {what} failed: {e}") from None
        try:
            dev.set_attr(abi.KVM_DEV_ARM_VGIC_GRP_CTRL, abi.KVM_DEV_ARM_VGIC_CTRL_INIT)
        except KvmError as e:
            raise BackendError(f"GICv3: initialising it failed: {e}") from None
        if pmu:
            for vcpu in vcpus:  # the PMU's INIT needs the vGIC initialised (ENODEV before)
                try:
                    vcpu.set_attr(abi.KVM_ARM_VCPU_PMU_V3_CTRL, abi.KVM_ARM_VCPU_PMU_V3_IRQ,
                                  virt.PPI_BASE + virt.PMU_PPI, 4)  # INTID 23
                    vcpu.set_attr(abi.KVM_ARM_VCPU_PMU_V3_CTRL, abi.KVM_ARM_VCPU_PMU_V3_INIT)
                except KvmError as e:
                    raise BackendError(f"PMUv3 of vCPU {vcpu.index}: {e}") from None
        self._gic, self._gic_dev, self._pmu = gic, dev, pmu

    def set_irq_line(self, intid: int, level: bool) -> None:
        """A device's SPI through KVM_IRQ_LINE (level-triggered: it stays until lowered)."""
        if self._gic is None:
            raise BackendError(f"INTID {intid} raised, but the rig has no interrupt controller")
        self.vm.irq_line(abi.arm_irq_spi(intid), level)

    # Whole state: snapshots ------------------------------------------------
    def _create_boot_vcpu(self, features: list[int]):
        """vCPU 0, initialised with `features` (remembered: reset() re-issues the same init)."""
        init = self.vm.arm_preferred_target()
        vcpu = self.vcpu = self.vm.create_vcpu(0)
        vcpu.arm_vcpu_init(init.target, features)
        self._vcpu_init = (init.target, tuple(features))
        return vcpu

    def _ensure_vcpu(self) -> None:
        if self.vcpu is None:
            self._create_boot_vcpu([abi.KVM_ARM_VCPU_PSCI_0_2])

    def export_cpu(self) -> dict:
        """Every register of KVM_GET_REG_LIST (core, FP/SIMD, system, timer and
        firmware registers) by id, and the MP state (powered off or not), as text;
        the other vCPUs and the GIC too (arm64_snap)."""
        self._ensure_vcpu()
        text = arm64_snap.vcpu_text(self)
        mp = bytes.fromhex(text["mp_state"])
        text["arch"] = self._arch_text(text["one_reg"], mp)
        arm64_snap.export_machine(self, text)
        return text

    def snapshot_machine(self) -> dict:
        """The snapshot header's `machine`: vCPU count and GIC layout."""
        return arm64_snap.machine_shape(self)

    def _build_for_snapshot(self, cpus: int, gic: GicLayout | None, pmu: bool) -> None:
        """The vCPU (and GIC) a snapshot loads into, made as the one that took it."""
        if cpus != 1:
            raise BackendError(f"the snapshot's machine has {cpus} vCPUs; this backend drives one")
        if self.vcpu is not None:
            if gic is not None or pmu:
                raise BackendError("a GIC snapshot needs a machine of its own; this one exists already")
            return
        arm64_snap.check_pmu(self, pmu)
        vcpu = self._create_boot_vcpu(self.init_features(boot=True, pmu=pmu))
        if gic is not None:
            self._create_gic(gic, [vcpu], pmu)

    def _arch_text(self, one_reg: dict[str, str], mp: bytes) -> dict:
        """The neutral form the emulator loads (arch/arm64/cpustate.py): the
        registers both have by name, and those only KVM has that the guest
        changed from a vCPU as created."""
        values = {int(k, 16): int(v, 16) for k, v in one_reg.items()}
        named = {cpustate.ID_NAMES[r]: v for r, v in values.items() if r in cpustate.ID_NAMES}
        created = _created_regs()
        only_here = {cpustate.describe_id(r): v for r, v in values.items()
                     if r not in cpustate.ID_NAMES and not cpustate.is_clock(r) and not cpustate.is_identity(r)
                     and created.get(r, 0) != v}
        state = int.from_bytes(mp[:4], "little")
        pending = [] if state == abi.KVM_MP_STATE_RUNNABLE else [f"the vCPU in MP state {state} (not runnable)"]
        return cpustate.to_text(named, only_here, pending)

    def import_arch(self, text: dict) -> None:
        """Load the neutral state the emulator took: each register both have,
        by name (PSTATE first); the rest keep their created values."""
        try:
            regs = cpustate.from_text(text, "kvm")
        except cpustate.CrossError as e:
            raise BackendError(str(e)) from None
        self._ensure_vcpu()
        for name in sorted(regs, key=lambda n: n != "pstate"):
            reg = onereg.reg_id(name)
            if self.vcpu.get_one_reg(reg) != regs[name]:
                self.vcpu.set_one_reg(reg, regs[name])
                if self.vcpu.get_one_reg(reg) != regs[name]:
                    raise BackendError(f"KVM did not take {name} = {regs[name]:#x} "
                                       f"(it holds {self.vcpu.get_one_reg(reg):#x})")
        self._forget_regs(complete=True)

    def import_cpu(self, text: dict) -> None:
        """Load export_cpu() text: each register whose value differs from the
        vCPU's is set (some, like the firmware's PSCI version, may not change
        once the vCPU ran; equal ones need no write). A machine with more
        vCPUs or a GIC is built and loaded by arm64_snap."""
        if arm64_snap.is_machine(text):
            arm64_snap.import_machine(self, text)
            return
        self._ensure_vcpu()
        try:
            saved = {int(k, 16): int(v, 16) for k, v in text["one_reg"].items()}
            mp = bytes.fromhex(text["mp_state"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BackendError(f"the saved KVM arm64 CPU state is malformed ({type(e).__name__}: {e})") from None
        known = set(self.vcpu.get_reg_list())
        for reg, value in saved.items():
            if reg not in known:
                raise BackendError(f"the saved KVM arm64 state has register {reg:#x}, which this KVM does not know")
            if self.vcpu.get_one_reg(reg) != value:
                self.vcpu.set_one_reg(reg, value)
        self.vcpu.set_blob("KVM_SET_MP_STATE", "struct kvm_mp_state", mp)
        self._forget_regs(complete=True)

    # Reuse between rigs (machine/reuse.py) -----------------------------------
    def keep_pristine(self) -> None:
        """Remember what reset() must write after re-initialising the vCPU:
        the registers KVM_ARM_VCPU_INIT leaves alone, and the virtual counter
        as a new VM's reads (KVM starts it at 0 when it creates the VM)."""
        self._ensure_vcpu()
        known = set(self.vcpu.get_reg_list())   # an older KVM may lack the physical timer's
        self._pristine = {reg: self.vcpu.get_one_reg(reg) for reg in (*INIT_KEEPS, TIMER_CNT) if reg in known}

    def reset(self) -> None:
        """Make this backend what a new one is, its memory slots kept.

        The vCPU is re-initialised with KVM_ARM_VCPU_INIT (the same target and
        features), which api.rst allows "multiple times for a given vcpu,
        including after the vcpu has been run" and which "will reset the vcpu
        to its initial state": core and FP/SIMD registers, PSTATE, every
        system register with a reset value (SCTLR/TCR/TTBR/MAIR/VBAR/CPACR/
        TPIDR*/SP_EL0/..., MDSCR and DBGBCR/BVR/WCR/WVR), the timers' CTL, the
        MP state (runnable again after PSCI CPU_OFF or SYSTEM_OFF). Not a
        pending SError: reusable() refuses a VM with one. On a vCPU that ran it also
        cleans the guest's view of memory as for a reboot (stage 2 unmapped,
        or the I-cache invalidated where stage 2 forces write-back), so code
        the host writes next is fetched as on a new VM. One ioctl, where
        writing the 177 registers a guest can change one by one costs ~7x
        more (bench row reset_reuse_arm64, in the TCG lane).

        What the init leaves (INIT_KEEPS: SP_EL1, ELR_EL1, SPSR_EL1, the
        timers' CVAL; tests/machine/arm64_reuse_checks.py checks that list
        against every register of the lane's KVM) is written back, and the
        virtual counter is set back to its value on a new VM (this rewrites
        the VM's CNTVOFF; it runs on from there). A pending MMIO access is
        completed first: KVM would complete it into the re-initialised
        registers at the next KVM_RUN."""
        if self.vcpu is None:
            return
        if self._pristine is None or self._vcpu_init is None:
            raise BackendError("reset() of a vCPU whose created state was not kept (call keep_pristine first)")
        self.settle_io()
        self.forget_run()
        caps, gic = self._caps, self._gic
        self._forget_regs()
        self._init_state()   # debug setup, internal steps, cached registers
        self._caps, self._gic = caps, gic
        target, features = self._vcpu_init
        self.vcpu.arm_vcpu_init(target, features)
        for reg, value in self._pristine.items():
            self.vcpu.set_one_reg(reg, value)

    def reusable(self) -> bool:
        """One vCPU without an in-kernel GIC (the vGIC's state and the other
        vCPUs' are not reset; machine/reuse.py keeps `gic:` and `cpus:` rigs
        fresh-only anyway), and no virtual SError or external abort pending:
        KVM_ARM_VCPU_INIT does not withdraw one (Linux 6.12, seen in the lane)
        and KVM_SET_VCPU_EVENTS can only add one, so such a VM is closed. One
        KVM_GET_VCPU_EVENTS per rig; a KVM without it is not reused."""
        if self._gic is not None or len(getattr(self, "_cpus", (self,))) != 1:
            return False
        if self.vcpu is None:
            return True
        try:
            blob = self.vcpu.get_blob("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events")
        except KvmError:
            return False
        pending = abi.ffi.cast("struct kvm_vcpu_events *", abi.ffi.from_buffer(blob)).exception
        return not (pending.serror_pending or pending.ext_dabt_pending)

    # Registers -----------------------------------------------------------
    def _read_reg(self, name: str) -> int | None:
        """One KVM_GET_ONE_REG; None when KVM does not have that register (ENOENT)."""
        if name == "sp":
            regs = self.get_regs()
            return regs[onereg.sp_for_pstate(regs["pstate"])]
        try:
            return self.vcpu.get_one_reg(onereg.reg_id(name))
        except KvmError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def get_regs(self) -> LazyRegs:
        regs = self._regs
        if regs is None:
            regs = self._regs = LazyRegs(self._read_reg, CANONICAL)
        return regs

    def get_pc(self) -> int:
        return self.get_regs()["pc"]

    def set_regs(self, regs: dict[str, int]) -> None:
        cache = self.get_regs()
        items = sorted(regs.items(), key=lambda kv: kv[0].lower() != "pstate")  # PSTATE first: it decides "sp"
        for name, value in items:
            key = name.lower()
            if key == "sp":
                key = onereg.sp_for_pstate(cache["pstate"])
            try:
                reg, size = onereg.reg_id(key), onereg.reg_size(key)
            except KeyError:
                raise BackendError(f"arm64 has no register {name!r} kvmrig can set") from None
            value &= (1 << (8 * size)) - 1
            self.vcpu.set_one_reg(reg, value)
            dict.__setitem__(cache, key, value)
            if key in _SP_DEPENDS:
                dict.pop(cache, "sp", None)

    def _forget_regs(self, complete: bool = False) -> None:
        if self._regs is not None:
            self._regs.detach(complete)
            self._regs = None

    # Debug ---------------------------------------------------------------
    def hw_debug_slots(self) -> tuple[int, int, bool]:
        if self._caps is None:
            # KVM_CAP_GUEST_DEBUG_HW_BPS / _WPS: ID_AA64DFR0_EL1.BRPs+1 / WRPs+1 (0: no guest debug).
            self._caps = (self.vm.check_extension(abi.KVM_CAP_GUEST_DEBUG_HW_BPS),
                          self.vm.check_extension(abi.KVM_CAP_GUEST_DEBUG_HW_WPS))
        return (*self._caps, False)

    def set_debug(self, slots: list[HwSlot], single_step: bool, sw_breakpoints: Collection[int]) -> None:
        try:
            breaks, watches = debugregs.plan_slots(list(slots))
        except ValueError as e:
            raise BackendError(str(e)) from None
        n_bp, n_wp, _ = self.hw_debug_slots()
        if len(breaks) > n_bp or len(watches) > n_wp:
            raise BackendError(f"{len(breaks)} breakpoint and {len(watches)} watchpoint registers wanted, "
                               f"this CPU has {n_bp} and {n_wp} (KVM_CAP_GUEST_DEBUG_HW_BPS/_WPS)")
        self._slots, self._breaks, self._watches = list(slots), breaks, watches
        self._user_step, self._sw = single_step, bool(sw_breakpoints)
        self._program()

    def _program(self) -> None:
        """KVM_SET_GUEST_DEBUG from the armed slots, minus those an internal step disabled."""
        step = self._step
        disabled = step.disabled if step is not None else frozenset()
        control = debug_control(bool(self._slots), self._user_step or step is not None, self._sw)
        bcr, bvr, wcr, wvr = debugregs.debug_words(self._breaks, self._watches, disabled)
        self.vcpu.set_guest_debug_arm64(control, bcr, bvr, wcr, wvr)

    def _begin_step(self, disabled: set[int]) -> None:
        if self._step is None:
            self._step = _Step()
        self._step.disabled |= disabled
        self._program()

    def _exec_slots_at(self, pc: int) -> set[int]:
        return {i for i, b in self._breaks if b.addr == pc}

    # Running -------------------------------------------------------------
    def run(self, deadline: float) -> Event:
        try:
            return super().run(deadline)
        except KvmError as e:
            if e.call == "KVM_RUN" and e.errno == errno.ENOSYS:
                return Unhandled(self.get_pc(), code=e.errno,
                                 detail="the guest accessed MMIO with an instruction KVM cannot emulate "
                                    "(no valid syndrome: LDP/STP, pre/post-index writeback, SIMD...); "
                                    "use a plain LDR/STR for device registers")
            raise

    def _needs_fixup(self) -> bool:
        return self._regs is not None or self._resume_bp is not None

    def _before_run(self) -> None:
        resume, self._resume_bp = self._resume_bp, None
        if resume is not None and self.get_pc() == resume[0]:
            self._begin_step(set(resume[1]))  # unless `set` moved the pc away from the breakpoint
        self._forget_regs()  # the vCPU runs next: what was read belongs to the last stop

    def _debug_event(self, info) -> Event | None:
        syndrome = self._last_esr = full_esr(info)
        cause = esr.debug_cause(syndrome)
        pc = self.get_pc()
        if cause == "step":
            return self._step_done(pc, syndrome)
        if cause == "sw":
            return SwBreak(pc, syndrome)
        if cause == "hw":
            index = debugregs.bp_hit([b for _, b in self._breaks], pc)
            if index is None:
                return ForeignDebug(pc, code=syndrome)
            self._resume_bp = (pc, frozenset(self._exec_slots_at(pc)))
            return HwBreak(pc, self._breaks[index][0], syndrome)
        if cause == "watch":
            far = int(info.far)
            cache_op = esr.cm(syndrome)
            write = None if cache_op else bool(esr.wnr(syndrome))  # CM sets WnR whatever the operation
            slot = debugregs.watch_slot(self._watches, far, write, cache_op)
            if slot is None:
                return ForeignDebug(pc, far, syndrome)
            # Let the access complete: step the instruction with every watch (and a
            # breakpoint on this very instruction) off, then report the hit.
            self._begin_step({i for i, _ in self._watches} | self._exec_slots_at(pc))
            self._step.report.append(WatchHit(0, far, (slot,), write=write, code=syndrome))
            return None
        return ForeignDebug(pc, code=syndrome)

    def _step_done(self, pc: int, syndrome: int) -> Event | None:
        step, self._step = self._step, None
        events = []
        if step is not None:
            self._program()  # re-arm what the step disabled (and stop stepping unless asked)
            events.extend(dataclasses.replace(hit, pc=pc) for hit in step.report)
        if self._user_step:
            events.append(Step(pc, syndrome))
        if not events:
            return None  # a step nobody waits for any more (stepping was just turned off)
        self._queue.extend(events[1:])
        return events[0]

    # Foreign debug exceptions ----------------------------------------------
    def reinject(self, event: DebugEvent) -> None:
        """Take the exception in the guest, as if KVM were not there (Arm ARM,
        AArch64 exception entry): ESR_EL1, ELR_EL1 = the pc, SPSR_EL1 = PSTATE,
        FAR_EL1 for watchpoints, PSTATE = EL1h with DAIF masked, PC = VBAR_EL1
        + the synchronous vector for the old PSTATE."""
        syndrome = event.code if event.code is not None else self._last_esr
        regs = self.get_regs()
        pstate, vbar = regs["pstate"], regs["vbar_el1"]
        try:
            vector = esr.sync_vector(pstate)
        except ValueError as e:
            raise BackendError(f"cannot hand the debug exception back to the guest: {e}") from None
        update = {"esr_el1": esr.reflect(syndrome, pstate), "elr_el1": event.pc, "spsr_el1": pstate}
        if esr.debug_cause(syndrome) == "watch" and isinstance(event, (WatchHit, ForeignDebug)):
            update["far_el1"] = event.addr
        update["pstate"] = esr.PSTATE_EL1H_MASKED
        update["pc"] = vbar + vector
        self.set_regs(update)

    def describe_failure(self) -> str:
        if self._last_esr:
            return f"last debug exit: ESR_EL2 {self._last_esr:#x} ({esr.describe(self._last_esr)})"
        return ""

    def close(self) -> None:
        if self._regs is not None and self.vcpu is not None:
            try:
                self._regs.fill()  # outcome.regs must stay readable after the VM is gone
            except Exception:
                pass
        self._forget_regs()
        super().close()
