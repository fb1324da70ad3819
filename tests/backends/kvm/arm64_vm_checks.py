"""Checks of the arm64 KVM backend that run INSIDE the arm64 VM (no pytest there).

tests/backends/kvm/test_arm64.py ships this file into the VM of kvmrig.invm,
runs `python3 arm64_vm_checks.py result.json` and asserts on the JSON it
writes: {check name: {"ok": bool, "detail": str, ...facts}}. Every check runs
even when another fails; an exception in one is recorded as its failure.

The guests are hand-assembled A64 words (assembled with binutils, the
disassembly beside each word) in 64 KiB of RAM. Every Machine gets RAM at a
guest-physical base no earlier Machine of the VM used (0x50000000, 0x51000000,
...; the rigs use 0x40000000): under QEMU TCG (7.2) an L1 host's writes to
guest code are not seen by code L2 already ran, so a new VM whose RAM lands on
a reused host page at a reused address could run the old guest's code.
"""

from __future__ import annotations

import json
import mmap
import sys
import time
import traceback

from kvmrig.arch.arm64 import onereg
from kvmrig.arch.arm64.boot import initial_state
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import Event, ForeignDebug, HwBreak, Mmio, Step, SwBreak, SystemEvent, WatchHit
from kvmrig.backends.kvm.arm64 import KvmArm64Backend
from kvmrig.errors import BackendError

RAM_SIZE = 0x10000
DATA_OFFSET = 0x8000       # data the guests touch: base + 0x8000
FIRST_BASE = 0x50000000    # Machine n has its RAM at FIRST_BASE + n * BASE_STEP
BASE_STEP = 0x01000000
PSCI_RET_INTERNAL_FAILURE = (1 << 64) - 6   # x0 after SYSTEM_OFF: KVM preloads it in case of a resume


def movz(rd: int, imm16: int, shift: int = 0) -> int:
    """MOVZ Xd, #imm16, LSL #shift (A64: sf=1 opc=10 100101 hw imm16 Rd)."""
    return 0xD2800000 | (shift // 16) << 21 | imm16 << 5 | rd


def movk(rd: int, imm16: int, shift: int) -> int:
    """MOVK Xd, #imm16, LSL #shift (A64: sf=1 opc=11 100101 hw imm16 Rd)."""
    return 0xF2800000 | (shift // 16) << 21 | imm16 << 5 | rd


def mov32(rd: int, value: int) -> list[tuple[int, str]]:
    """Xd = a 32-bit value, as MOVZ + MOVK."""
    return [(movz(rd, value & 0xFFFF), f"mov  x{rd}, #{value & 0xFFFF:#x}"),
            (movk(rd, value >> 16, 16), f"movk x{rd}, #{value >> 16:#x}, lsl #16")]


# Registers: the guest copies what we set into x5..x11, then SYSTEM_OFF.
REGS_GUEST = [
    (0x910003E5, "mov  x5, sp"),              # SP_EL1 at EL1h
    (0xD5384106, "mrs  x6, sp_el0"),
    (0x4E083C07, "mov  x7, v0.d[0]"),
    (0x4E183C08, "mov  x8, v0.d[1]"),
    (0xD538D089, "mrs  x9, tpidr_el1"),
    (0xD538C00A, "mrs  x10, vbar_el1"),
    (0x8B1D03CB, "add  x11, x30, x29"),
    (0x52800100, "mov  w0, #0x8"),
    (0x72B08000, "movk w0, #0x8400, lsl #16"),  # PSCI SYSTEM_OFF
    (0xD4000002, "hvc  #0"),
]

# Watches: stores/loads into the middle of watched ranges (offsets from base).
def watch_guest(base: int) -> list[tuple[int, str]]:
    return mov32(1, base + DATA_OFFSET) + [      # x1 = data
        (0x5297DDE2, "mov  w2, #0xbeef"),
        (0x72BBD5A2, "movk w2, #0xdead, lsl #16"),  # w2 = 0xdeadbeef
        (0xB9000822, "str  w2, [x1, #8]"),           # +0x10: 4 bytes at data + 0x08
        (0xB9402423, "ldr  w3, [x1, #36]"),          # +0x14: 4 bytes at data + 0x24
        (0xA9030822, "stp  x2, x2, [x1, #48]"),      # +0x18: 16 bytes at data + 0x30
        (0xB9004822, "str  w2, [x1, #72]"),          # +0x1c: 4 bytes at data + 0x48
        (0x52800100, "mov  w0, #0x8"),
        (0x72B08000, "movk w0, #0x8400, lsl #16"),
        (0xD4000002, "hvc  #0"),
    ]

# A guest BRK handled by the guest's own vector (VBAR_EL1 = base + 0x800).
def brk_guest(base: int) -> list[tuple[int, str]]:
    return mov32(1, base + 0x800) + [
        (0xD518C001, "msr  vbar_el1, x1"),
        (0xD5033FDF, "isb"),
        (0xD42000E0, "brk  #7"),                     # +0x10
        (0x14000000, "b    ."),
    ]


BRK_HANDLER = [                                  # at VBAR_EL1 + 0x200: sync, current EL, SP_ELx
    (0xD5385214, "mrs  x20, esr_el1"),
    (0xD5384035, "mrs  x21, elr_el1"),
    (0xD5384016, "mrs  x22, spsr_el1"),
    (0x52800100, "mov  w0, #0x8"),
    (0x72B08000, "movk w0, #0x8400, lsl #16"),
    (0xD4000002, "hvc  #0"),
]

# A hardware breakpoint on an MMIO store: stepping past it must pass the MMIO exit through.
MMIO_GUEST = [
    (0xD2800002, "mov  x2, #0"),
    (0xF2A14002, "movk x2, #0xa00, lsl #16"),    # x2 = 0x0a000000, no memory there
    (0x52800541, "mov  w1, #42"),
    (0xB9000041, "str  w1, [x2]"),               # +0xc: MMIO write of 42
    (0xD2800033, "mov  x19, #1"),
    (0x52800100, "mov  w0, #0x8"),
    (0x72B08000, "movk w0, #0x8400, lsl #16"),
    (0xD4000002, "hvc  #0"),
]


def code(words) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w, _ in words)


class Machine:
    """A backend with 64 KiB of RAM at a fresh base; `images` maps offsets
    from the base to bytes, or is a function of the base giving that map."""

    count = 0

    def __init__(self, images):
        self.base = _fresh_base()
        if callable(images):
            images = images(self.base)
        self.ram = mmap.mmap(-1, RAM_SIZE)
        for offset, data in images.items():
            self.ram[offset:offset + len(data)] = data
        self.data = self.base + DATA_OFFSET
        self.b = KvmArm64Backend()
        self.b.map_memory(self.base, self.ram, False)
        self.b.set_initial_state(initial_state(self.base))

    def run(self, limit: int = 1000, answer=None) -> list[Event]:
        """Events until a non-debug, non-MMIO one (included); MMIO reads get `answer`."""
        events = []
        deadline = time.monotonic() + 20
        for _ in range(limit):
            ev = self.b.run(deadline)
            events.append(ev)
            if isinstance(ev, Mmio):
                if not ev.write:
                    self.b.complete_read(bytes(ev.size))
                continue
            if not isinstance(ev, DEBUG_EVENTS):
                break
        return events

    def u32(self, addr: int) -> int:
        return int.from_bytes(self.ram[addr - self.base:addr - self.base + 4], "little")

    def close(self) -> None:
        self.b.close()
        self.ram.close()


DEBUG_EVENTS = (SwBreak, HwBreak, WatchHit, Step, ForeignDebug)


def summary(events) -> list[str]:
    return [repr(e) for e in events]


# --- the checks ---------------------------------------------------------------

def check_caps(res: dict) -> None:
    m = Machine({0: code(REGS_GUEST)})
    try:
        bps, wps, shared = m.b.hw_debug_slots()
        res.update(bps=bps, wps=wps, shared=shared)
        assert bps >= 2 and wps >= 2 and not shared, (bps, wps, shared)
    finally:
        m.close()


def check_regs_round_trip(res: dict) -> None:
    m = Machine({0: code(REGS_GUEST)})
    try:
        b = m.b
        v0 = 0xFEDCBA9876543210_0123456789ABCDEF
        sp1, sp0 = m.base + 0xF000, m.base + 0xE000
        b.set_regs({"sp": sp1, "sp_el0": sp0, "v0": v0, "tpidr_el1": 0x5EED,
                    "vbar_el1": m.base + 0x800, "x30": 0x30, "x29": 0x29, "fpcr": 0x3 << 22,
                    "cpacr_el1": 3 << 20})   # CPACR_EL1.FPEN: the guest may touch v0
        r = b.get_regs()
        res["before"] = {k: hex(r[k]) for k in ("sp", "sp_el1", "sp_el0", "pstate", "v0", "fpcr")}
        assert r["pstate"] & 0xF == 0b0101, "boots at EL1h"
        assert r["sp"] == r["sp_el1"] == sp1, "sp at EL1h is SP_EL1"
        assert r["sp_el0"] == sp0
        assert r["v0"] == v0 and r["fpcr"] == 0x3 << 22
        # At EL1t the same name means SP_EL0.
        b.set_regs({"pstate": 0x3C4})
        assert b.get_regs()["sp"] == sp0, "sp at EL1t is SP_EL0"
        b.set_regs({"pstate": 0x3C5})
        assert b.get_regs()["sp"] == sp1
        events = m.run()
        assert isinstance(events[-1], SystemEvent) and events[-1].what == "off", summary(events)
        r = b.get_regs()
        res["guest_saw"] = {f"x{n}": hex(r[f"x{n}"]) for n in range(5, 12)}
        assert r["x5"] == sp1, "mov x5, sp read SP_EL1"
        assert r["x6"] == sp0
        assert (r["x8"] << 64) | r["x7"] == v0, "v0 is 128 bits wide both ways"
        assert r["x9"] == 0x5EED and r["x10"] == m.base + 0x800 and r["x11"] == 0x59
        assert r["x0"] == PSCI_RET_INTERNAL_FAILURE
        assert r["pc"] == m.base + 4 * len(REGS_GUEST), "pc after the HVC"
        full = dict(r)
        missing = sorted(set(onereg.ONE_REGS) - set(full))
        res["registers"] = len(full)
        assert not missing, f"registers KVM did not give: {missing}"
    finally:
        m.close()


def check_lazy_registers(res: dict) -> None:
    m = Machine({0: code(MMIO_GUEST)})
    try:
        b = m.b
        calls = []
        real = b.vcpu.get_one_reg
        b.vcpu.get_one_reg = lambda reg: (calls.append(reg), real(reg))[1]
        b.set_debug([HwSlot(m.base + 0xC, "exec")], False, ())
        ev = b.run(time.monotonic() + 20)
        assert isinstance(ev, HwBreak), ev
        calls.clear()
        regs = b.get_regs()
        x1, x2 = regs["x1"], regs["x2"]
        _ = regs["x1"], b.get_regs()["x2"], b.get_pc()
        n = len(calls)
        res["ioctls_for_two_registers"] = n
        assert (x1, x2) == (42, 0x0A000000) and n == 2, (x1, x2, n)
        b.run(time.monotonic() + 20)  # the MMIO write
        try:
            regs["x19"]
        except BackendError:
            pass
        else:
            raise AssertionError("a register of an earlier stop was read after the vCPU ran")
        b.vcpu.get_one_reg = real
    finally:
        m.close()


def check_watch_middle(res: dict) -> None:
    """Watch hits in the middle of ranges; reported after the access completed."""
    m = Machine(lambda base: {0: code(watch_guest(base))})
    try:
        data = m.data
        slots = [HwSlot(data, "write", 16),          # 0: A, one MASK register; hit by str at +8
                 HwSlot(data + 0x20, "read", 8),     # 1: B; hit by the 4-byte load at +0x24
                 HwSlot(data + 0x44, "write", 4),    # 2: D, first half (the machine splits 0x44+8)
                 HwSlot(data + 0x48, "write", 4)]    # 3: D, second half; hit by str at +0x48
        m.b.set_debug(slots, False, ())
        events = m.run()
        res["events"] = summary(events)
        watches = [e for e in events if isinstance(e, DEBUG_EVENTS)]
        assert [(type(e), e.slots) for e in watches] == [(WatchHit, (0,)), (WatchHit, (1,)), (WatchHit, (3,))], \
            summary(events)
        a, bb, d = watches
        assert a.pc == m.base + 0x14 and a.write, "reported after the store, pc of the next instruction"
        assert data <= a.addr < data + 16
        assert bb.pc == m.base + 0x18 and not bb.write
        assert d.pc == m.base + 0x20 and data + 0x44 <= d.addr < data + 0x4C
        assert isinstance(events[-1], SystemEvent)
        assert m.u32(data + 8) == 0xDEADBEEF and m.u32(data + 0x48) == 0xDEADBEEF
    finally:
        m.close()

    # The value is already in memory when the hit is reported.
    m = Machine(lambda base: {0: code(watch_guest(base))})
    try:
        m.b.set_debug([HwSlot(m.data, "write", 16)], False, ())
        ev = m.b.run(time.monotonic() + 20)
        res["value_at_report"] = hex(m.u32(m.data + 8))
        assert isinstance(ev, WatchHit) and m.u32(m.data + 8) == 0xDEADBEEF
        assert m.b.get_regs()["pc"] == m.base + 0x14
    finally:
        m.close()

    # A 16-byte STP at data + 0x30 into a watch of its upper half only.
    m = Machine(lambda base: {0: code(watch_guest(base))})
    try:
        m.b.set_debug([HwSlot(m.data + 0x38, "write", 8)], False, ())
        events = m.run()
        res["stp_events"] = summary(events)
        hits = [e for e in events if isinstance(e, DEBUG_EVENTS)]
        assert [(type(e), e.slots) for e in hits] == [(WatchHit, (0,))], summary(events)
        assert hits[0].pc == m.base + 0x1C
        res["stp_far_offset"] = hex(hits[0].addr - m.data)
    finally:
        m.close()


def check_hw_breakpoint_on_mmio(res: dict) -> None:
    """Stepping past a hardware breakpoint whose instruction exits as MMIO."""
    for single_step in (False, True):
        m = Machine({0: code(MMIO_GUEST)})
        try:
            m.b.set_debug([HwSlot(m.base + 0xC, "exec")], single_step, ())
            events = m.run()
            kinds = [type(e).__name__ for e in events]
            res[f"events_step_{single_step}"] = summary(events)
            hw = [e for e in events if isinstance(e, HwBreak)]
            mmio = [e for e in events if isinstance(e, Mmio)]
            steps = [e for e in events if isinstance(e, Step)]
            assert len(hw) == 1 and hw[0].pc == m.base + 0xC and hw[0].slot == 0, kinds
            assert len(mmio) == 1 and mmio[0].addr == 0x0A000000, kinds
            assert mmio[0].data[:4] == (42).to_bytes(4, "little"), mmio[0].data
            assert isinstance(events[-1], SystemEvent), kinds
            assert m.b.get_regs()["x19"] == 1
            # Single-stepping: one step exit per completed instruction, the HVC excluded.
            assert len(steps) == (len(MMIO_GUEST) - 1 if single_step else 0), kinds
        finally:
            m.close()


def check_hw_breakpoint_loop(res: dict) -> None:
    """A breakpoint in a loop fires once per turn, never twice for one execution."""
    loop = [
        (0xD2800013, "mov  x19, #0"),
        (0x91000673, "add  x19, x19, #1"),       # +0x4: breakpoint
        (0xF100967F, "cmp  x19, #37"),
        (0x54FFFFC1, "b.ne +0x4"),
        (0x52800100, "mov  w0, #0x8"),
        (0x72B08000, "movk w0, #0x8400, lsl #16"),
        (0xD4000002, "hvc  #0"),
    ]
    m = Machine({0: code(loop)})
    try:
        m.b.set_debug([HwSlot(m.base + 4, "exec")], False, ())
        t0 = time.perf_counter()
        events = m.run()
        res["seconds_for_37_hits"] = round(time.perf_counter() - t0, 4)
        hits = [e for e in events if isinstance(e, HwBreak)]
        assert len(hits) == 37 and isinstance(events[-1], SystemEvent), summary(events)[-3:]
        assert m.b.get_regs()["x19"] == 37
    finally:
        m.close()


def check_foreign_brk(res: dict) -> None:
    """A BRK the guest owns, trapped because kvmrig uses software breakpoints,
    reaches the guest's own VBAR_EL1 + 0x200 handler with the right syndrome."""
    m = Machine(lambda base: {0: code(brk_guest(base)), 0xA00: code(BRK_HANDLER)})
    try:
        brk_at = m.base + 0x10
        m.b.set_debug([], False, {m.base + 0x100})   # a breakpoint planted elsewhere turns BRK trapping on
        ev = m.b.run(time.monotonic() + 20)
        res["first"] = summary([ev])
        assert isinstance(ev, SwBreak) and ev.pc == brk_at, ev
        m.b.reinject(ev)
        assert m.b.get_regs()["pc"] == m.base + 0x800 + 0x200
        events = m.run()
        assert isinstance(events[-1], SystemEvent), summary(events)
        r = m.b.get_regs()
        res["esr_el1"], res["elr_el1"], res["spsr_el1"] = hex(r["x20"]), hex(r["x21"]), hex(r["x22"])
        assert r["x20"] == 0xF2000007, "ESR_EL1: EC 0x3c | IL | #7"
        assert r["x21"] == brk_at, "ELR_EL1: the BRK"
        assert r["x22"] & 0x3CF == 0x3C5, "SPSR_EL1: EL1h, DAIF masked"
    finally:
        m.close()


def check_too_many_slots(res: dict) -> None:
    m = Machine({0: code(REGS_GUEST)})
    try:
        _bps, wps, _ = m.b.hw_debug_slots()
        try:
            m.b.set_debug([HwSlot(m.data + 8 * i, "write", 8) for i in range(wps + 1)], False, ())
        except BackendError as e:
            res["message"] = str(e)
        else:
            raise AssertionError("more watch slots than the CPU has were accepted")
    finally:
        m.close()


def _fresh_base() -> int:
    """A RAM base no Machine or rig of this process used before (see the module docstring)."""
    base = FIRST_BASE + Machine.count * BASE_STEP
    Machine.count += 1
    return base


# Reads ID_AA64DFR0_EL1 (PMUVer, bits 11:8: 0 = no PMU) into x5, then SYSTEM_OFF.
PMUVER_GUEST = [
    (0xD5380505, "mrs  x5, id_aa64dfr0_el1"),
    (0x52800100, "mov  w0, #0x8"),
    (0x72B08000, "movk w0, #0x8400, lsl #16"),  # PSCI SYSTEM_OFF
    (0xD4000002, "hvc  #0"),
]


def check_pmu_in_tree(res: dict) -> None:
    """The generated device tree lists a PMU exactly when the vCPU has one:
    as KVM offers it, and with the backend told to give none (a real VM whose
    vCPU is made without KVM_ARM_VCPU_PMU_V3)."""
    import libfdt

    from kvmrig.machine.plan import prepare
    from kvmrig.machine.session import execute
    from kvmrig.rig.load import load_rig_text

    offered = KvmArm64Backend.offers_pmu
    try:
        for give in (True, False):
            if not give:
                KvmArm64Backend.offers_pmu = lambda self, state: False
            base = _fresh_base()
            rig = load_rig_text(f"kvmrig: 1\narch: arm64\nmemory: [{{at: {base:#x}, size: 64K}}]\n"
                                f"images: [{{hex: '{code(PMUVER_GUEST).hex()}', at: {base:#x}}}]\ngic: {{}}\n"
                                "expect: {exit: system-off}\n", "/rigs/pmu.yaml")
            plan = prepare(rig)
            at, size = plan.boot.state.dtb, len(plan.boot.writes[-1][1])
            seen: dict = {}
            out = execute(plan, KvmArm64Backend, after=lambda memory: seen.update(dtb=memory.read(at, size)))
            assert out.exit == "system-off" and not out.failures, (out.exit, out.detail, out.failures)
            pmuver = (out.regs["x5"] >> 8) & 0xF
            node = libfdt.Fdt(seen["dtb"]).path_offset("/pmu", libfdt.QUIET_NOTFOUND) >= 0
            res["offered" if give else "withheld"] = {"pmuver": pmuver, "pmu_node": node}
            assert node == (pmuver != 0), f"PMU node {node}, but PMUVer {pmuver} (give={give})"
            if not give:
                assert pmuver == 0 and not node
    finally:
        KvmArm64Backend.offers_pmu = offered


def check_max_cpus(res: dict) -> None:
    """KVM_CAP_MAX_VCPUS is read from the VM; a rig asking more vCPUs than it
    (a smaller limit stands in for such a KVM: this one offers 512) is a rig
    error naming the `cpus` line."""
    from kvmrig.backends.kvm import abi
    from kvmrig.backends.kvm.common import KvmBackendBase
    from kvmrig.rig.load import load_rig_text
    from kvmrig.runner import run_rig

    b = KvmArm64Backend()
    try:
        res["max_vcpus"] = real = b.max_cpus()
        assert real == b.vm.check_extension(abi.KVM_CAP_MAX_VCPUS) and real >= 2, real
    finally:
        b.close()
    base = _fresh_base()
    text = (f"kvmrig: 1\narch: arm64\nmemory: [{{at: {base:#x}, size: 64K}}]\n"
            f"images: [{{hex: '{code(PMUVER_GUEST).hex()}', at: {base:#x}}}]\ncpus: 2\n"
            "expect: {exit: system-off}\n")
    limit = KvmBackendBase.max_cpus
    try:
        KvmBackendBase.max_cpus = lambda self: 1
        result = run_rig(load_rig_text(text, "/rigs/many.yaml"), backend="kvm")
    finally:
        KvmBackendBase.max_cpus = limit
    res["message"] = result.message
    assert result.status == "error" and result.message == (
        "/rigs/many.yaml:5:7: 2 vCPUs asked, this kvm offers at most 1 per VM (KVM_CAP_MAX_VCPUS)"), result.message


CHECKS = [check_caps, check_regs_round_trip, check_lazy_registers, check_watch_middle,
          check_hw_breakpoint_on_mmio, check_hw_breakpoint_loop, check_foreign_brk, check_too_many_slots,
          check_pmu_in_tree, check_max_cpus]


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else "result.json"
    results = {}
    for check in CHECKS:
        res: dict = {}
        t0 = time.perf_counter()
        try:
            check(res)
            res["ok"] = True
        except Exception as e:  # record and go on: the host test reports each check
            res["ok"] = False
            res["detail"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        res["seconds"] = round(time.perf_counter() - t0, 4)
        results[check.__name__.removeprefix("check_")] = res
        print(f"{'ok  ' if res['ok'] else 'FAIL'} {check.__name__} ({res['seconds']:.3f}s)"
              + ("" if res["ok"] else "\n" + res["detail"]), flush=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
