"""The arm64 KVM backend: vCPU init with PSCI 0.2, registers through ONE_REG
(read lazily, once per stop), and DBGBCR/DBGWCR debugging through
KVM_SET_GUEST_DEBUG.

Boot: KVM_ARM_PREFERRED_TARGET, then KVM_ARM_VCPU_INIT with the PSCI 0.2
feature, so KVM itself answers the guest's `HVC #0` PSCI calls and turns
SYSTEM_OFF / SYSTEM_RESET into KVM_EXIT_SYSTEM_EVENT (common.py maps them to
"off" / "reset"). The reset state is already EL1h with DAIF masked and the
MMU off (SCTLR_EL1.M = 0); set_initial_state writes PSTATE and PC anyway.
No interrupt controller is created: a bare-metal rig has no interrupt source.

Halting: arm64 KVM never exits with KVM_EXIT_HLT. WFI and WFE are handled in
the kernel: with no irqchip and no timer interrupt a WFI blocks the vCPU
until a signal, so a guest that ends in WFI ends the run by `timeout` (the
SIGALRM of common.py). Guests end their run with PSCI SYSTEM_OFF or an exit
device instead; `_halt_event` is inherited and never reached.

Registers: get_regs() returns a `LazyRegs`, a dict that reads each register
with one KVM_GET_ONE_REG on first access and keeps it until the vCPU runs
again (a hit that checks two registers costs two ioctls, not ~90). Every
whole-dict operation (iteration, len, copy, pickling) reads the rest first,
and close() completes the last one, so `outcome.regs` stays a full snapshot
after the VM is gone. "sp" is the stack pointer of the current exception
level (SP_EL1 at EL1h, SP_EL0 at EL0t/EL1t; onereg.sp_for_pstate).

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
  translated single-step code.
"""

from __future__ import annotations

import errno
from collections.abc import Collection
from dataclasses import dataclass, field

from kvmrig.arch.arm64 import debugregs, esr, onereg
from kvmrig.arch.arm64.boot import Arm64State
from kvmrig.arch.arm64.regs import CANONICAL
from kvmrig.backends import base
from kvmrig.backends.base import Event, HwSlot
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.common import KvmBackendBase
from kvmrig.errors import BackendError, KvmError

REG_NAMES = frozenset(CANONICAL)
# Registers whose value decides where "sp" lives: writing them forgets a cached "sp".
_SP_DEPENDS = frozenset({"pstate", "sp_el0", "sp_el1"})
# Watchpoint attribution window (debugregs.watch_hit): the largest ordinary
# access is an LDP/STP of two X registers (16 bytes); DC ZVA may report any
# address of its block, at most 2 KiB (DCZID_EL0.BS <= 9).
WATCH_ACCESS = 16
DC_ZVA_MAX_BLOCK = 2048


class LazyRegs(dict):
    """Registers of one stop by canonical name, each read on first access.

    `read(name)` returns the value, or None when KVM does not expose the
    register (it is then simply absent). After `detach()` (the vCPU ran
    again) reading a register not yet fetched raises: the values of a past
    stop are gone. Pickles as a plain dict.
    """

    __slots__ = ("_read", "_live", "_complete")

    def __init__(self, read) -> None:
        super().__init__()
        self._read = read
        self._live = True
        self._complete = False

    def _fetch(self, key: str):
        if not self._live:
            if self._complete:
                return None  # everything KVM has was read: this one does not exist
            raise BackendError(f"register {key} of an earlier stop was read after the vCPU ran again "
                               "(call get_regs() again)")
        value = self._read(key)
        if value is not None:
            dict.__setitem__(self, key, value)
        return value

    def __missing__(self, key):
        if key in REG_NAMES and (value := self._fetch(key)) is not None:
            return value
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        if dict.__contains__(self, key):
            return True
        return key in REG_NAMES and self._fetch(key) is not None

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def fill(self) -> "LazyRegs":
        """Read every register not read yet."""
        if self._live and not self._complete:
            for name in CANONICAL:
                if not dict.__contains__(self, name):
                    self._fetch(name)
            self._complete = True
        return self

    def detach(self, complete: bool = False) -> None:
        """The vCPU is about to change: keep what was read (or read all first)."""
        if complete and self._live:
            self.fill()
        self._live = False

    # Whole-dict views read everything first.
    def __iter__(self):
        return dict.__iter__(self.fill())

    def __len__(self) -> int:
        return dict.__len__(self.fill())

    def keys(self):
        return dict.keys(self.fill())

    def values(self):
        return dict.values(self.fill())

    def items(self):
        return dict.items(self.fill())

    def copy(self) -> dict:
        return dict(self.items())

    def __eq__(self, other) -> bool:
        return dict(self.items()) == other

    def __repr__(self) -> str:
        return f"LazyRegs({dict.__repr__(self)}{'' if self._live else ', detached'})"

    def __reduce__(self):
        return (dict, (dict(self.items()),))


@dataclass
class _Step:
    """An internal single-step in progress: which slots are off, what to report after."""

    disabled: set[int] = field(default_factory=set)
    report: list[Event] = field(default_factory=list)


def full_esr(info) -> int:
    """ESR_EL2 of a debug exit: kvm_debug_exit_arch.hsr plus ISS2 in hsr_high (bits 63:32)."""
    return int(info.hsr) | int(info.hsr_high) << 32


def watch_slot(watches: list[tuple[int, debugregs.WatchReg]], far: int, write: bool | None,
               cache_op: bool = False) -> int | None:
    """The slot (index in the set_debug list) of the watch a watchpoint exit at `far` belongs to.

    Any access that OVERLAPS a watched range counts (debugregs.watch_hit): the
    window of an ordinary load/store (up to an LDP/STP of two X registers), or
    for a cache maintenance instruction (ESR CM = 1, e.g. DC ZVA, whose FAR may
    be anywhere in its block) the largest DC ZVA block.
    """
    regs = [w for _, w in watches]
    block = DC_ZVA_MAX_BLOCK if cache_op else 8
    index = debugregs.watch_hit(regs, far, WATCH_ACCESS, write=write, block=block)
    return None if index is None else watches[index][0]


def plan_slots(slots: list[HwSlot]) -> tuple[list[tuple[int, debugregs.BreakReg]],
                                             list[tuple[int, debugregs.WatchReg]]]:
    """Break and watch register pairs for the machine's slots, each tagged with its slot index."""
    breaks: list[tuple[int, debugregs.BreakReg]] = []
    watches: list[tuple[int, debugregs.WatchReg]] = []
    for i, slot in enumerate(slots):
        try:
            if slot.kind == "exec":
                breaks.append((i, debugregs.plan_break(slot.addr)))
                continue
            plan = debugregs.plan_watch(slot.addr, slot.length, slot.kind)
        except ValueError as e:
            raise BackendError(f"debug slot {i} ({slot.kind} at {slot.addr:#x}): {e}") from None
        if len(plan) != 1:
            raise BackendError(f"watch slot {i} ({slot.addr:#x}, {slot.length} bytes) needs {len(plan)} "
                               "watchpoint registers; the machine layer must split it first")
        watches.append((i, plan[0]))
    return breaks, watches


def debug_words(breaks, watches, disabled=frozenset()) -> tuple[list[int], list[int], list[int], list[int]]:
    """(bcr, bvr, wcr, wvr) lists for KVM_SET_GUEST_DEBUG; slots in `disabled` get E = 0."""
    bcr = [0 if i in disabled else b.bcr for i, b in breaks]
    bvr = [b.bvr for _, b in breaks]
    wcr = [0 if i in disabled else w.wcr for i, w in watches]
    wvr = [w.wvr for _, w in watches]
    return bcr, bvr, wcr, wvr


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


class KvmArm64Backend(KvmBackendBase):
    arch = "arm64"

    def __init__(self) -> None:
        super().__init__()
        self._init_state()

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
        self._pending: list[Event] = []           # reported by the next run() without running
        self._last_esr = 0

    # Boot ----------------------------------------------------------------
    def set_initial_state(self, state: Arm64State) -> None:
        init = self.vm.arm_preferred_target()
        vcpu = self.vcpu = self.vm.create_vcpu(0)
        # PSCI 0.2: KVM answers HVC #0 PSCI calls, SYSTEM_OFF/RESET exit as system events.
        vcpu.arm_vcpu_init(init.target, [abi.KVM_ARM_VCPU_PSCI_0_2])
        self.set_regs({"pstate": state.pstate, "pc": state.pc})

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
            regs = self._regs = LazyRegs(self._read_reg)
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
        breaks, watches = plan_slots(list(slots))
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
        bcr, bvr, wcr, wvr = debug_words(self._breaks, self._watches, disabled)
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
        if self._pending:
            return self._pending.pop(0)
        try:
            return super().run(deadline)
        except KvmError as e:
            if e.call == "KVM_RUN" and e.errno == errno.ENOSYS:
                return Event(base.UNHANDLED, pc=self.get_pc(), raw=e.errno,
                             detail="the guest accessed MMIO with an instruction KVM cannot emulate "
                                    "(no valid syndrome: LDP/STP, pre/post-index writeback, SIMD...); "
                                    "use a plain LDR/STR for device registers")
            raise

    @property
    def _fixup(self) -> bool:
        """common.run() calls _before_run before a KVM_RUN while this holds."""
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
            return Event(base.DEBUG, pc=pc, detail="sw", raw=syndrome)
        if cause == "hw":
            index = debugregs.bp_hit([b for _, b in self._breaks], pc)
            if index is None:
                return Event(base.DEBUG, pc=pc, detail="foreign", raw=syndrome)
            self._resume_bp = (pc, frozenset(self._exec_slots_at(pc)))
            return Event(base.DEBUG, pc=pc, slot=self._breaks[index][0], addr=pc, detail="hw", raw=syndrome)
        if cause == "watch":
            far = int(info.far)
            cache_op = esr.cm(syndrome)
            write = None if cache_op else esr.wnr(syndrome)  # CM sets WnR whatever the operation
            slot = watch_slot(self._watches, far, write, cache_op)
            if slot is None:
                return Event(base.DEBUG, pc=pc, addr=far, detail="foreign", raw=syndrome)
            # Let the access complete: step the instruction with every watch (and a
            # breakpoint on this very instruction) off, then report the hit.
            self._begin_step({i for i, _ in self._watches} | self._exec_slots_at(pc))
            self._step.report.append(Event(base.DEBUG, addr=far, write=bool(write), slot=slot,
                                           detail="watch", raw=syndrome))
            return None
        return Event(base.DEBUG, pc=pc, detail="foreign", raw=syndrome)

    def _step_done(self, pc: int, syndrome: int) -> Event | None:
        step, self._step = self._step, None
        events = []
        if step is not None:
            self._program()  # re-arm what the step disabled (and stop stepping unless asked)
            for ev in step.report:
                ev.pc = pc
                events.append(ev)
        if self._user_step:
            events.append(Event(base.DEBUG, pc=pc, detail="step", raw=syndrome))
        if not events:
            return None  # a step nobody waits for any more (stepping was just turned off)
        self._pending.extend(events[1:])
        return events[0]

    # Foreign debug exceptions ----------------------------------------------
    def reinject(self, event: Event) -> None:
        """Take the exception in the guest, as if KVM were not there (Arm ARM,
        AArch64 exception entry): ESR_EL1, ELR_EL1 = the pc, SPSR_EL1 = PSTATE,
        FAR_EL1 for watchpoints, PSTATE = EL1h with DAIF masked, PC = VBAR_EL1
        + the synchronous vector for the old PSTATE."""
        syndrome = event.raw if isinstance(event.raw, int) else self._last_esr
        regs = self.get_regs()
        pstate, vbar = regs["pstate"], regs["vbar_el1"]
        try:
            vector = esr.sync_vector(pstate)
        except ValueError as e:
            raise BackendError(f"cannot hand the debug exception back to the guest: {e}") from None
        update = {"esr_el1": esr.reflect(syndrome, pstate), "elr_el1": event.pc, "spsr_el1": pstate}
        if esr.debug_cause(syndrome) == "watch":
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
