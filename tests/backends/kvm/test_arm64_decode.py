"""The arm64 KVM backend without KVM: ESR -> event decoding, slot bookkeeping,
the internal step past hardware breakpoints and watchpoints, reinjection and
the lazy register dict, all against a fake vCPU that answers ONE_REG from a
dict and records KVM_SET_GUEST_DEBUG. Runs on any host; the real thing is
tests/backends/kvm/test_arm64.py (inside the arm64 VM).
"""

from __future__ import annotations

import pickle
from collections import deque
from types import SimpleNamespace

import pytest

from kvmrig.arch.arm64 import debugregs, onereg
from kvmrig.arch.arm64.regs import CANONICAL
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import ForeignDebug, HwBreak, Step, SwBreak, WatchHit
from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm import arm64 as a64
from kvmrig.errors import BackendError, KvmError

# ESR_EL2 values as KVM reports them in kvm_run->debug.arch.hsr (EC << 26 | IL | ISS).
ESR_BRK0 = 0xF2000000            # EC 0x3c BRK #0
ESR_BRK7 = 0xF2000007
ESR_HW_BP = 0xC2000022           # EC 0x30 breakpoint, lower EL, IFSC "debug"
ESR_STEP = 0xCA000022            # EC 0x32 software step, lower EL
ESR_WATCH_W = 0xD2000062         # EC 0x34 watchpoint, lower EL, WnR
ESR_WATCH_R = 0xD2000022         # EC 0x34, a read
ESR_WATCH_CM = 0xD2000162        # EC 0x34 with CM (cache maintenance, e.g. DC ZVA)
ESR_DABT = 0x92000046            # EC 0x24 data abort: not a debug exception

EL1H = 0x3C5
ID_TO_NAME = {reg_id: name for name, (reg_id, _size) in onereg.ONE_REGS.items()}


class FakeVcpu:
    """ONE_REG from a dict; KVM_SET_GUEST_DEBUG calls recorded."""

    def __init__(self, regs: dict[str, int] | None = None, absent: tuple[str, ...] = ()):
        self.regs = {name: 0 for name in onereg.ONE_REGS}
        self.regs["pstate"] = EL1H
        self.regs.update(regs or {})
        self.absent = set(absent)
        self.gets: list[str] = []
        self.sets: list[tuple[str, int]] = []
        self.debug: list[dict] = []

    def get_one_reg(self, reg_id: int) -> int:
        name = ID_TO_NAME[reg_id]
        self.gets.append(name)
        if name in self.absent:
            raise KvmError("KVM_GET_ONE_REG", 2)  # ENOENT
        return self.regs[name]

    def set_one_reg(self, reg_id: int, value: int) -> None:
        name = ID_TO_NAME[reg_id]
        self.sets.append((name, value))
        self.regs[name] = value

    def set_guest_debug_arm64(self, control, bcr=(), bvr=(), wcr=(), wvr=()) -> None:
        self.debug.append({"control": control, "bcr": list(bcr), "bvr": list(bvr),
                           "wcr": list(wcr), "wvr": list(wvr)})


def backend(regs: dict[str, int] | None = None, caps=(6, 4), **kw) -> a64.KvmArm64Backend:
    """A KvmArm64Backend around a FakeVcpu: no /dev/kvm, no VM."""
    b = a64.KvmArm64Backend.__new__(a64.KvmArm64Backend)
    b._init_state()
    b._queue = deque()  # common.KvmBackendBase state the fake needs
    b.vcpu = FakeVcpu(regs, **kw)
    b._caps = caps
    return b


def exit_info(esr: int, far: int = 0):
    """A kvm_debug_exit_arch look-alike."""
    return SimpleNamespace(hsr=esr & 0xFFFFFFFF, hsr_high=esr >> 32, far=far)


def stop(b: a64.KvmArm64Backend, esr: int, pc: int, far: int = 0, **regs):
    """One KVM_EXIT_DEBUG as common.run() would handle it: registers of the new stop, then decode."""
    if b._needs_fixup():
        b._before_run()
    b.vcpu.regs["pc"] = pc
    b.vcpu.regs.update(regs)
    return b._debug_event(exit_info(esr, far))


def last_debug(b) -> dict:
    return b.vcpu.debug[-1]


# --- pure helpers ---------------------------------------------------------------

def test_full_esr_joins_iss2():
    assert a64.full_esr(exit_info(ESR_BRK0)) == ESR_BRK0
    assert a64.full_esr(SimpleNamespace(hsr=0xF2000000, hsr_high=0x5, far=0)) == 0x5_F2000000


def test_debug_control():
    assert a64.debug_control(False, False, False) == 0
    assert a64.debug_control(True, False, False) == abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW
    assert a64.debug_control(False, True, True) == (abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_SINGLESTEP
                                                    | abi.KVM_GUESTDBG_USE_SW_BP)


def test_plan_slots_keeps_slot_indices_and_maps_access_to_lsc():
    slots = [HwSlot(0x4000_8000, "write", 16), HwSlot(0x4000_0010, "exec"),
             HwSlot(0x4000_8020, "read", 8), HwSlot(0x4000_8040, "access", 4)]
    breaks, watches = debugregs.plan_slots(slots)
    assert [i for i, _ in breaks] == [1]
    assert breaks[0][1].bvr == 0x4000_0010 and breaks[0][1].bcr == debugregs.bcr()
    assert [i for i, _ in watches] == [0, 2, 3]
    lsc = [debugregs.decode_wcr(w.wcr).lsc for _, w in watches]
    assert lsc == [debugregs.LSC_STORE, debugregs.LSC_LOAD, debugregs.LSC_BOTH]
    # 16 aligned bytes: one register with MASK = 4; 4 bytes at +0x40: BAS 0x0f.
    assert debugregs.decode_wcr(watches[0][1].wcr).mask == 4
    assert debugregs.watched_range(watches[2][1].wvr, watches[2][1].wcr) == (0x4000_8040, 4)


def test_plan_slots_refuses_what_one_register_cannot_cover():
    with pytest.raises(ValueError, match="needs 2 watchpoint registers"):
        debugregs.plan_slots([HwSlot(0x4000_8006, "write", 4)])
    with pytest.raises(ValueError, match="must be 4-byte aligned"):
        debugregs.plan_slots([HwSlot(0x4000_0002, "exec")])


def test_debug_words_disable_only_the_given_slots():
    breaks, watches = debugregs.plan_slots([HwSlot(0x1000, "exec"), HwSlot(0x2000, "write", 8), HwSlot(0x1004, "exec")])
    bcr, bvr, wcr, wvr = debugregs.debug_words(breaks, watches, {2})
    assert bcr == [debugregs.bcr(), 0] and bvr == [0x1000, 0x1004]
    assert wcr[0] & 1 and wvr == [0x2000]


@pytest.mark.parametrize("far, write, expected", [
    (0x4000_8008, True, 0),        # a 4-byte store in the middle of the 16-byte watch
    (0x4000_8000, True, 0),        # an STP whose FAR is its first byte, below the watched upper half
    (0x4000_8024, False, 1),       # a load in the middle of the read watch
    (0x4000_8024, True, None),     # ... but a store there is not what that watch looks for
    (0x4000_8400, True, None),     # far away
])
def test_watch_slot_attributes_overlapping_accesses(far, write, expected):
    _, watches = debugregs.plan_slots([HwSlot(0x4000_8000, "write", 16), HwSlot(0x4000_8020, "read", 8)])
    assert debugregs.watch_slot(watches, far, write) == expected


def test_watch_slot_covers_a_dc_zva_block():
    _, watches = debugregs.plan_slots([HwSlot(0x4000_8100, "write", 8)])
    # DC ZVA may report the start of its block, up to 2 KiB below the watch.
    assert debugregs.watch_slot(watches, 0x4000_8000, None, cache_op=True) == 0
    assert debugregs.watch_slot(watches, 0x4000_8000, True) is None, "an ordinary store there does not touch it"


# --- events ---------------------------------------------------------------------

def test_brk_is_a_software_breakpoint_at_its_own_address():
    b = backend()
    ev = stop(b, ESR_BRK0, 0x4000_0010)
    assert ev == SwBreak(0x4000_0010, ESR_BRK0)


def test_not_a_debug_class_is_foreign():
    b = backend()
    ev = stop(b, ESR_DABT, 0x4000_0020)
    assert ev == ForeignDebug(0x4000_0020, code=ESR_DABT)


def test_hw_breakpoint_reported_before_the_instruction_then_stepped_past_once():
    b = backend()
    b.set_debug([HwSlot(0x4000_8000, "write", 8), HwSlot(0x4000_0008, "exec")], False, ())
    armed = last_debug(b)
    assert armed["control"] == abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW
    assert armed["bcr"] == [debugregs.bcr()] and armed["bvr"] == [0x4000_0008]

    ev = stop(b, ESR_HW_BP, 0x4000_0008)
    assert ev == HwBreak(0x4000_0008, 1, ESR_HW_BP)
    assert len(b.vcpu.debug) == 1, "nothing changes until the machine resumes"

    # Resuming: the breakpoint is off for one single-step, watches stay armed.
    b._before_run()
    stepping = last_debug(b)
    assert stepping["control"] & abi.KVM_GUESTDBG_SINGLESTEP
    assert stepping["bcr"] == [0] and stepping["wcr"] == armed["wcr"]

    assert stop(b, ESR_STEP, 0x4000_000C) is None, "the internal step is not the machine's business"
    assert last_debug(b) == armed, "re-armed, no longer stepping"


def test_hw_breakpoint_not_stepped_when_set_moved_the_pc():
    b = backend()
    b.set_debug([HwSlot(0x4000_0008, "exec")], False, ())
    stop(b, ESR_HW_BP, 0x4000_0008)
    b.set_regs({"pc": 0x4000_0100})
    n = len(b.vcpu.debug)
    b._before_run()
    assert len(b.vcpu.debug) == n and b._step is None


def test_hw_exit_at_an_unknown_address_is_foreign():
    b = backend()
    b.set_debug([HwSlot(0x4000_0008, "exec")], False, ())
    ev = stop(b, ESR_HW_BP, 0x4000_0040)
    assert type(ev) is ForeignDebug and b._resume_bp is None


def test_watchpoint_reported_after_the_access_with_the_next_pc():
    b = backend()
    b.set_debug([HwSlot(0x4000_0010, "exec"), HwSlot(0x4000_8000, "write", 16)], False, ())
    armed = last_debug(b)
    # The store at 0x40000010 (also a breakpoint address) writes 0x40008008.
    assert stop(b, ESR_WATCH_W, 0x4000_0010, far=0x4000_8008) is None
    stepping = last_debug(b)
    assert stepping["control"] & abi.KVM_GUESTDBG_SINGLESTEP
    assert stepping["wcr"] == [0] and stepping["bcr"] == [0], "watches and a breakpoint on this insn are off"
    ev = stop(b, ESR_STEP, 0x4000_0014)
    assert (type(ev), ev.slots, ev.addr, ev.pc, ev.write) == (WatchHit, (1,), 0x4000_8008, 0x4000_0014, True)
    assert last_debug(b) == armed


def test_watchpoint_read_and_cache_maintenance_direction():
    b = backend()
    b.set_debug([HwSlot(0x4000_8000, "access", 8)], False, ())
    stop(b, ESR_WATCH_R, 0x4000_0010, far=0x4000_8004)
    assert stop(b, ESR_STEP, 0x4000_0014).write is False
    stop(b, ESR_WATCH_CM, 0x4000_0018, far=0x4000_8000)
    cm = stop(b, ESR_STEP, 0x4000_001C)
    assert type(cm) is WatchHit and cm.write is None, "a cache operation is neither a read nor a write"


def test_watchpoint_under_single_step_reports_the_hit_then_the_step():
    b = backend()
    b.set_debug([HwSlot(0x4000_8000, "write", 8)], True, ())
    assert stop(b, ESR_WATCH_W, 0x4000_0010, far=0x4000_8000) is None
    first = stop(b, ESR_STEP, 0x4000_0014)
    assert type(first) is WatchHit
    second = b.run(0)  # from the queue, without entering KVM
    assert type(second) is Step and second.pc == 0x4000_0014
    assert last_debug(b)["control"] & abi.KVM_GUESTDBG_SINGLESTEP, "the machine still steps"


def test_watch_exit_no_watch_explains_is_foreign():
    b = backend()
    b.set_debug([HwSlot(0x4000_8000, "write", 8)], False, ())
    ev = stop(b, ESR_WATCH_W, 0x4000_0010, far=0x5000_0000)
    assert type(ev) is ForeignDebug and ev.addr == 0x5000_0000 and b._step is None


def test_step_nobody_waits_for_is_dropped():
    b = backend()
    assert stop(b, ESR_STEP, 0x4000_0004) is None
    b.set_debug([], True, ())
    ev = stop(b, ESR_STEP, 0x4000_0008)
    assert type(ev) is Step and ev.pc == 0x4000_0008


def test_too_many_registers_refused_with_the_counts():
    b = backend(caps=(2, 2))
    with pytest.raises(BackendError, match="3 watchpoint registers wanted, this CPU has 2 and 2"):
        b.set_debug([HwSlot(0x4000_8000 + 8 * i, "write", 8) for i in range(3)], False, ())


# --- reinjection ----------------------------------------------------------------

def test_reinject_brk_enters_the_guest_vector_like_the_cpu():
    b = backend({"vbar_el1": 0x4000_0800, "pstate": 0x600003C5})
    ev = stop(b, ESR_BRK7, 0x4000_0010)
    b.reinject(ev)
    r = b.vcpu.regs
    assert r["esr_el1"] == ESR_BRK7
    assert r["elr_el1"] == 0x4000_0010 and r["spsr_el1"] == 0x600003C5
    assert r["pstate"] == 0x3C5 and r["pc"] == 0x4000_0800 + 0x200
    assert ("far_el1", 0) not in b.vcpu.sets


def test_reinject_from_el0_uses_the_lower_el_vector_and_sets_far_for_watchpoints():
    b = backend({"vbar_el1": 0x4000_0800, "pstate": 0x0})
    b.set_debug([HwSlot(0x4000_8000, "write", 8)], False, ())
    ev = stop(b, ESR_WATCH_W, 0x4000_0010, far=0x5000_0000)   # foreign: no watch there
    b.reinject(ev)
    r = b.vcpu.regs
    assert r["pc"] == 0x4000_0800 + 0x400
    assert r["far_el1"] == 0x5000_0000
    assert r["esr_el1"] >> 26 == 0x34, "taken from EL0: still the lower-EL class"


def test_reinject_from_el1_reports_the_same_el_class():
    b = backend({"vbar_el1": 0x4000_0800})
    b.set_debug([HwSlot(0x4000_0008, "exec")], False, ())
    ev = stop(b, ESR_HW_BP, 0x4000_0040)  # foreign
    b.reinject(ev)
    assert b.vcpu.regs["esr_el1"] >> 26 == 0x31


# --- registers ------------------------------------------------------------------

def test_sp_is_the_stack_pointer_of_the_current_el():
    b = backend({"sp_el0": 0x1000, "sp_el1": 0x2000})
    assert b.get_regs()["sp"] == 0x2000
    b.set_regs({"sp": 0x3000})
    assert b.vcpu.regs["sp_el1"] == 0x3000 and b.vcpu.regs["sp_el0"] == 0x1000
    # PSTATE is written first, so "sp" in the same call means the new EL's.
    b.set_regs({"sp": 0x4000, "pstate": 0x3C4})
    assert b.vcpu.regs["sp_el0"] == 0x4000 and b.vcpu.regs["sp_el1"] == 0x3000
    assert b.get_regs()["sp"] == 0x4000


def test_set_regs_masks_to_the_register_width_and_rejects_unknown_names():
    b = backend()
    b.set_regs({"x0": -1, "fpsr": 0x1_0000_0001, "v3": 1 << 127})
    assert b.vcpu.regs["x0"] == (1 << 64) - 1
    assert b.vcpu.regs["fpsr"] == 1
    assert b.vcpu.regs["v3"] == 1 << 127
    with pytest.raises(BackendError, match="rip"):
        b.set_regs({"rip": 0})


def test_registers_are_read_once_per_stop_and_only_when_asked():
    b = backend({"x1": 7, "x2": 9})
    regs = b.get_regs()
    assert b.vcpu.gets == []
    assert regs["x1"] == 7 and regs["x1"] == 7 and b.get_regs()["x2"] == 9 and "x2" in regs
    assert b.vcpu.gets == ["x1", "x2"]
    assert regs.get("rip") is None and "rip" not in regs and b.vcpu.gets == ["x1", "x2"]


def test_a_stop_forgets_the_registers_of_the_last_one():
    b = backend({"x1": 1})
    old = b.get_regs()
    assert old["x1"] == 1
    b._before_run()                  # the vCPU runs
    b.vcpu.regs["x1"] = 2
    assert old["x1"] == 1, "what was read stays"
    with pytest.raises(BackendError, match="after the vCPU ran again"):
        old["x2"]
    assert b.get_regs()["x1"] == 2


def test_whole_dict_views_read_everything_and_pickle_as_a_plain_dict():
    b = backend({"x5": 5}, absent=("par_el1",))
    regs = b.get_regs()
    assert len(regs) == len(CANONICAL) - 1
    assert set(regs) == set(CANONICAL) - {"par_el1"}
    assert "par_el1" not in regs and regs.get("par_el1") is None
    copy = pickle.loads(pickle.dumps(regs))
    assert type(copy) is dict and copy["x5"] == 5 and copy == dict(regs.items())


def test_close_completes_the_last_stop_so_outcome_regs_outlive_the_vm():
    b = backend({"x7": 77})
    regs = b.get_regs()
    regs["pc"]
    b._regs.fill()
    b._forget_regs()
    assert regs["x7"] == 77 and len(regs) == len(CANONICAL)
    assert "nonsense" not in regs


def test_fixup_only_when_there_is_something_to_do():
    b = backend()
    assert not b._needs_fixup()
    b.get_pc()
    assert b._needs_fixup()
    b._before_run()
    assert not b._needs_fixup()


def test_hw_debug_slots_are_not_shared():
    assert backend(caps=(6, 4)).hw_debug_slots() == (6, 4, False)


def test_backend_for_picks_the_arm64_backend_on_an_arm64_host(monkeypatch):
    from kvmrig.backends import select
    monkeypatch.setattr(select, "HOST_ARCH", "arm64")
    monkeypatch.setattr(select, "kvm_usable", lambda: None)
    rig = SimpleNamespace(arch="arm64", backend="any")
    name, factory = select.backend_for(rig)
    assert name == "kvm" and factory is a64.KvmArm64Backend
