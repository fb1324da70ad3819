"""With `cpus: N`, the run names the vCPU of every hit, failed hit check and
system event (a scripted backend stands in for KVM's vCPUs here; the real
ones run in the arm64 lane: rigs-kvm/arm64/smp-psci.yaml, kvm-unit-tests)."""

from __future__ import annotations

from kvmrig.backends.base import Backend
from kvmrig.backends.events import HwBreak, SystemEvent
from kvmrig.machine.memory import Memory
from kvmrig.machine.plan import prepare
from kvmrig.machine.session import Session
from kvmrig.rig.load import load_rig_text

RIG = """\
kvmrig: 1
arch: arm64
cpus: 2
memory: [{at: 0x40000000, size: 64K}]
images: [{hex: "1f2003d5 1f2003d5", at: 0x40000000}]
breakpoints:
  - {at: 0x40000004, kind: hw, hits: 2, expect: {regs: {x5: 7}}}
expect: {exit: system-off}
"""


class Scripted(Backend):
    """Plays a list of events; registers are one dict per vCPU."""

    name, arch = "scripted", "arm64"

    def __init__(self, events: list[tuple[int, object]]):
        self.events = list(events)   # (vCPU, event)
        self.regs = {0: {"x5": 7, "pc": 0x40000004}, 1: {"x5": 9, "pc": 0x40000004}}
        self.current = 0

    def map_memory(self, gpa, buf, rom): pass
    def set_initial_state(self, state): self.state = state
    def hw_debug_slots(self): return (6, 4, False)
    def set_debug(self, slots, single_step, sw): pass
    def complete_read(self, data): pass
    def set_regs(self, regs): self.regs[self.current].update(regs)

    def get_regs(self):
        return dict(self.regs[self.current])

    def current_cpu(self) -> int:
        return self.current

    def run(self, deadline):
        self.current, ev = self.events.pop(0)
        return ev


def test_hits_and_the_end_name_their_vcpu():
    rig = load_rig_text(RIG)
    plan = prepare(rig)
    assert plan.boot.state.cpus == 2 and plan.boot.state.dtb is not None  # SMP gets a device tree (cpu@0, cpu@1)
    backend = Scripted([(0, HwBreak(0x40000004, 0)), (1, HwBreak(0x40000004, 0)),
                        (1, SystemEvent(0x40000008, "off"))])
    memory = Memory(rig.memory)
    try:
        outcome = Session(plan, backend, memory).run()
    finally:
        memory.close()
    assert outcome.exit == "system-off" and outcome.detail == "system event off on vCPU 1"
    assert [h.cpu for h in outcome.hits] == [0, 1]
    failures = [str(f) for f in outcome.failures]
    assert len(failures) == 1 and "hit 2 on vCPU 1: register x5: expected 7, got 9" in failures[0]


GIC_RIG = """\
kvmrig: 1
arch: arm64
memory: [{at: 0x40000000, size: 64K}]
images: [{hex: "1f2003d5", at: 0x40000000}]
gic: {}
expect: {exit: system-off}
"""


def _tree_after_start(offers: bool) -> tuple[list[str], bytes, int]:
    """The root's node names in the device tree the guest finds in memory, its bytes, and its address."""
    import libfdt

    rig = load_rig_text(GIC_RIG)
    plan = prepare(rig)
    backend = Scripted([(0, SystemEvent(0x40000004, "off"))])
    backend.offers_pmu = lambda state: offers and state.gic is not None
    memory = Memory(rig.memory)
    try:
        Session(plan, backend, memory).run()
        at = plan.boot.state.dtb
        blob = memory.read(at, len(plan.boot.writes[-1][1]))
    finally:
        memory.close()
    fdt = libfdt.Fdt(blob)
    names, node = [], fdt.first_subnode(0, libfdt.QUIET_NOTFOUND)
    while node >= 0:
        names.append(fdt.get_name(node))
        node = fdt.next_subnode(node, libfdt.QUIET_NOTFOUND)
    return names, blob, at


def test_the_generated_tree_lists_a_pmu_only_where_the_backend_gives_one():
    with_pmu, blob, at = _tree_after_start(True)
    assert "pmu" in with_pmu and "intc@8000000" in with_pmu
    without, blob2, at2 = _tree_after_start(False)
    assert "pmu" not in without and "intc@8000000" in without and at2 == at
    assert [n for n in with_pmu if n != "pmu"] == without
    assert len(blob2) == len(blob) and blob2.rstrip(b"\0") != blob.rstrip(b"\0")   # written over, same space


SW_RIG = """\
kvmrig: 1
arch: arm64
cpus: 2
memory: [{at: 0x40000000, size: 64K}]
images: [{hex: "1f2003d5 1f2003d5 1f2003d5", at: 0x40000000}]
breakpoints:
  - {at: 0x40000004, hits: 2}
expect: {exit: system-off}
"""


def test_stepping_over_a_software_breakpoint_holds_the_other_vcpus():
    """While a vCPU steps over a lifted BRK, the backend is told to run it
    alone (step_alone), and told again when its step is done: the lane's
    rigs-kvm/arm64/smp-breakpoint.yaml shows what happens otherwise."""
    from kvmrig.backends.events import Step, SwBreak

    rig = load_rig_text(SW_RIG)
    plan = prepare(rig)
    backend = Scripted([(0, SwBreak(0x40000004)), (0, Step(0x40000008)), (1, SwBreak(0x40000004)),
                        (1, Step(0x40000008)), (1, SystemEvent(0x4000000c, "off"))])
    calls: list[tuple[int, bool, bytes]] = []
    memory = Memory(rig.memory)
    backend.step_alone = lambda on: calls.append((backend.current, on, memory.read(0x40000004, 4)))
    try:
        outcome = Session(plan, backend, memory).run()
    finally:
        memory.close()
    brk, nop = bytes.fromhex("000020d4"), bytes.fromhex("1f2003d5")
    # on: the BRK already lifted (the original nop back); off: planted again
    assert calls == [(0, True, nop), (0, False, brk), (1, True, nop), (1, False, brk)]
    assert list(outcome.hit_counts.values()) == [2]
    assert [h.cpu for h in outcome.hits] == [0, 1] and not outcome.failures
