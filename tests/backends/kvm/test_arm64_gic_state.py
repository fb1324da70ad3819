"""The vGICv3 state of arm64 snapshots, without KVM: attr encodings, the
register lists, the text round trip through a recording device, the restore
order, and every malformed GIC part named (never a crash)."""

from __future__ import annotations

import errno

import pytest

from kvmrig.arch.arm64 import onereg
from kvmrig.arch.arm64.boot import GicLayout
from kvmrig.backends.kvm import abi, arm64_gic_state as gs, arm64_snap
from kvmrig.errors import BackendError, KvmError

DIST, REDIST = abi.KVM_DEV_ARM_VGIC_GRP_DIST_REGS, abi.KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
SYSREGS, LEVELS = abi.KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, abi.KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO


# -- encodings ---------------------------------------------------------------------

def test_mpidr_becomes_the_affinity_field_of_the_attr():
    assert gs.mpidr_field(0x80000000) == 0                       # vCPU 0 (bit 31 is RES1)
    assert gs.mpidr_field(0x80000001) == 0x1 << 32               # Aff0 1
    assert gs.mpidr_field(0xC0000203) == 0x203 << 32             # Aff1 2, Aff0 3; U (bit 30) dropped
    assert gs.mpidr_field(0x07_8004_0506) == 0x07040506 << 32    # Aff3 (bits 39:32) above Aff2
    assert gs.reg_attr(0x80000001, 0x10200) == 0x1_0001_0200     # GICR_ISPENDR0 of vCPU 1
    assert gs.reg_attr(0x80000001, 0x10200) & abi.KVM_DEV_ARM_VGIC_V3_MPIDR_MASK == 1 << 32


def test_sysreg_instr_is_the_one_reg_encoding_of_the_same_register():
    # KVM's ONE_REG sysreg ids carry op0:op1:CRn:CRm:op2 in their low 16 bits, the same layout.
    for name, enc in (("vbar_el1", (3, 0, 12, 0, 0)), ("mpidr_el1", (3, 0, 0, 0, 5)),
                      ("tpidr_el0", (3, 3, 13, 0, 2))):
        assert gs.sysreg_instr(*enc) == onereg.reg_id(name) & 0xFFFF
    assert gs.sysreg_instr(3, 0, 4, 6, 0) == 0xC230                # ICC_PMR_EL1
    assert gs.sysreg_attr(0x80000001, 0xC230) == 0x1_0000_C230


def test_line_level_attrs_name_a_bank_of_32():
    assert gs.level_attr(0x80000000, 32) == 32
    assert gs.level_attr(0x80000001, 0) == 1 << 32
    assert gs.level_attr(0, 64) & abi.KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_MASK == 0  # VGIC_LEVEL_INFO_LINE_LEVEL
    with pytest.raises(ValueError, match="banks of 32"):
        gs.level_attr(0, 33)


@pytest.mark.parametrize("pri_bits, n", [(5, 1), (6, 2), (7, 4), (8, 4)])
def test_active_priority_registers_follow_the_priority_bits(pri_bits, n):
    ctlr = (pri_bits - 1) << 8
    assert gs.apr_count(ctlr) == n
    names = [name for name, _ in gs.icc_regs(ctlr)]
    assert names[:2] == ["ICC_SRE_EL1", "ICC_CTLR_EL1"]   # restored first
    assert [x for x in names if x.startswith("ICC_AP")] == \
        [f"ICC_AP0R{i}_EL1" for i in range(n)] + [f"ICC_AP1R{i}_EL1" for i in range(n)]
    assert dict(gs.icc_regs(ctlr))["ICC_AP1R0_EL1"] == gs.sysreg_instr(3, 0, 12, 9, 0)


def test_register_lists_cover_the_shared_interrupts_only_once():
    regs = gs.dist_head() + gs.dist_config(64) + gs.dist_state(64)
    by_name = {r.name: r for r in regs}
    assert len(by_name) == len(regs)
    assert by_name["GICD_ISENABLER1"].offset == 0x104 and by_name["GICD_ISENABLER1"].clear == 0x184
    assert by_name["GICD_ICFGR2"].offset == 0xC08 and "GICD_ICFGR1" not in by_name   # SPIs only
    assert by_name["GICD_IPRIORITYR8"].offset == 0x420 and "GICD_IPRIORITYR7" not in by_name
    assert by_name["GICD_IROUTER32"].offset == 0x6100 and by_name["GICD_IROUTER63"].words == 2
    assert "GICD_ISENABLER0" not in by_name and "GICD_IROUTER64" not in by_name
    redist = {r.name: r for r in gs.redist_config() + gs.redist_state()}
    assert redist["GICR_ISPENDR0"].offset == 0x10200 and redist["GICR_IPRIORITYR7"].offset == 0x1041C
    assert redist["GICR_WAKER"].offset == 0x14


# -- save, parse, restore through a recording device ----------------------------------

class RecordingDevice:
    """A vGIC device as a table of attrs: get reads it (0 if unset), set writes and logs."""

    def __init__(self, values=None, missing=()):
        self.values = dict(values or {})
        self.missing = set(missing)   # (group, attr) that answer ENXIO
        self.writes: list[tuple[int, int, int]] = []

    def get_attr(self, group, attr, size=8):
        if (group, attr) in self.missing:
            raise KvmError("KVM_GET_DEVICE_ATTR", errno.ENXIO)
        return self.values.get((group, attr), 0)

    def set_attr(self, group, attr, value=None, size=8):
        assert value is not None and 0 <= value < 1 << (8 * size)
        self.values[(group, attr)] = value
        self.writes.append((group, attr, value))


LAYOUT = GicLayout(0x08000000, 0x080A0000, 64)
MPIDRS = [0x80000000, 0x80000001]


def _busy_gic() -> RecordingDevice:
    ctlr = 4 << 8   # 5 priority bits
    values = {
        (DIST, 0x0008): 0x0300043B, (DIST, 0x0000): 0x13, (DIST, 0x0104): 0x2, (DIST, 0x0204): 0x1,
        (DIST, 0x6100): 0x1, (DIST, 0x6104): 0x0, (DIST, 0x6108): 0x101,   # IROUTER32 lo/hi, IROUTER33 lo
        (LEVELS, gs.level_attr(0, 32)): 0x4,
    }
    for i, m in enumerate(MPIDRS):
        f = gs.mpidr_field(m)
        values[(REDIST, f | 0x10100)] = 0x08000002 + i
        values[(REDIST, f | 0x10300)] = 0x08000000   # INTID 27 active
        values[(REDIST, f | 0x10418)] = 0x80000000
        values[(LEVELS, f | 0)] = 0x08000000
        for name, instr in gs.icc_regs(ctlr):
            values[(SYSREGS, f | instr)] = {"ICC_CTLR_EL1": ctlr, "ICC_SRE_EL1": 7, "ICC_PMR_EL1": 0xF0,
                                            "ICC_AP1R0_EL1": 1 << 16, "ICC_IGRPEN1_EL1": 1}.get(name, 0)
    return RecordingDevice(values)


def test_a_gic_state_round_trips_through_text():
    dev = _busy_gic()
    text = gs.save(dev, LAYOUT, MPIDRS)
    assert text["dist"]["GICD_IROUTER32"] == "0x1" and text["dist"]["GICD_IROUTER33"] == "0x101"
    assert text["cpus"][1]["redist"]["GICR_ISENABLER0"] == "0x8000003"
    assert text["cpus"][0]["icc"]["ICC_AP1R0_EL1"] == "0x10000" and "ICC_AP1R1_EL1" not in text["cpus"][0]["icc"]
    state = gs.parse(text)
    fresh = RecordingDevice()
    gs.restore(fresh, state, MPIDRS)
    for key, value in dev.values.items():
        assert fresh.values.get(key, 0) == value, (key, value)
    assert gs.save(fresh, LAYOUT, MPIDRS) == text


def test_the_restore_follows_the_documented_order():
    fresh = RecordingDevice()
    gs.restore(fresh, gs.parse(gs.save(_busy_gic(), LAYOUT, MPIDRS)), MPIDRS)
    order = [(g, a) for g, a, _ in fresh.writes]
    assert order[0] == (DIST, 0x0008), "GICD_IIDR is written before anything else"

    def first(group, attr):
        return order.index((group, attr))
    f1 = gs.mpidr_field(MPIDRS[1])
    assert first(DIST, 0x0000) < first(REDIST, 0x0000) < first(REDIST, 0x10100)       # CTLR, then redists
    assert first(REDIST, f1 | 0x10C04) < first(LEVELS, f1) < first(REDIST, f1 | 0x10200)  # config, level, pending
    assert first(REDIST, f1 | 0x10180) == first(REDIST, f1 | 0x10100) - 1   # ICENABLER0 just before ISENABLER0
    assert dict(((g, a), v) for g, a, v in fresh.writes)[(REDIST, f1 | 0x10180)] == ~0x08000003 & 0xFFFFFFFF
    assert first(REDIST, f1 | 0x1041C) < first(DIST, 0x0084)                 # redistributors before the SPIs
    assert first(DIST, 0x0C08) < first(LEVELS, 32) < first(DIST, 0x0204)
    sre, pmr = gs.sysreg_instr(3, 0, 12, 12, 5), gs.sysreg_instr(3, 0, 4, 6, 0)
    assert max(i for i, (g, _a) in enumerate(order) if g != SYSREGS) < first(SYSREGS, sre) < first(SYSREGS, pmr)


def test_a_register_this_kvm_lacks_is_left_out():
    dev = _busy_gic()
    dev.missing.add((REDIST, gs.mpidr_field(MPIDRS[0]) | 0x0010))   # GICR_STATUSR
    text = gs.save(dev, LAYOUT, MPIDRS)
    assert "GICR_STATUSR" not in text["cpus"][0]["redist"] and "GICR_STATUSR" in text["cpus"][1]["redist"]
    gs.parse(text)


def test_other_errors_of_kvm_are_not_swallowed():
    dev = _busy_gic()
    dev.get_attr = lambda *a: (_ for _ in ()).throw(KvmError("KVM_GET_DEVICE_ATTR", errno.EBUSY))
    with pytest.raises(KvmError, match="EBUSY"):
        gs.save(dev, LAYOUT, MPIDRS)


def test_a_restore_into_other_vcpus_is_refused():
    state = gs.parse(gs.save(_busy_gic(), LAYOUT, MPIDRS))
    with pytest.raises(gs.GicStateError, match="names vCPUs 0x80000000, 0x80000001; this machine's are 0x80000000$"):
        gs.restore(RecordingDevice(), state, MPIDRS[:1])


def _text():
    return gs.save(_busy_gic(), LAYOUT, MPIDRS)


@pytest.mark.parametrize("damage, words", [
    (lambda t: t.pop("dist"), "lacks 'dist'"),
    (lambda t: t.update(version=2), "GIC version 2; kvmrig saves and loads GICv3"),
    (lambda t: t.update(irqs=100), "irqs 100: not a GICv3 interrupt count"),
    (lambda t: t.update(distributor="nowhere"), "distributor: 'nowhere' is not a number"),
    (lambda t: t["dist"].update(GICD_ISENABLER9="0x1"), "distributor: unknown register 'GICD_ISENABLER9'"),
    (lambda t: t["dist"].update(GICD_CTLR="0x1ffffffff"), "distributor GICD_CTLR: '0x1ffffffff' does not fit 32"),
    (lambda t: t["dist"].update(GICD_CTLR=True), "is not a number"),
    (lambda t: t["spi_levels"].update({"40": "0x0"}), "spi_levels: '40' is not the first INTID"),
    (lambda t: t.update(cpus=[]), "cpus: not a list of vCPUs"),
    (lambda t: t["cpus"][1].pop("icc"), "vCPU 1: needs mpidr, redist, ppi_levels and icc"),
    (lambda t: t["cpus"][0]["icc"].pop("ICC_CTLR_EL1"), "vCPU 0: its CPU interface registers lack ICC_CTLR_EL1"),
    (lambda t: t["cpus"][0]["icc"].update(ICC_AP0R3_EL1="0x0"), "unknown register 'ICC_AP0R3_EL1'"),
    (lambda t: t["cpus"][1]["redist"].update(GICR_X="0x0"), "vCPU 1 redistributor: unknown register 'GICR_X'"),
    (lambda t: t["cpus"][1].update(ppi_levels=[1]), "vCPU 1 ppi_levels: \\[1\\] is not a number"),
])
def test_a_damaged_gic_part_is_named(damage, words):
    text = _text()
    damage(text)
    with pytest.raises(gs.GicStateError, match=words):
        gs.parse(text)


def test_a_gic_part_that_is_not_a_table_is_named():
    with pytest.raises(gs.GicStateError, match="not a table"):
        gs.parse(["GICD_CTLR"])


# -- the machine's CPU text (arm64_snap) ---------------------------------------------------

def _machine_text():
    vcpu = {"one_reg": {"0x6030000000100040": "0x40000000"}, "mp_state": "00000000"}
    return {**vcpu, "arch": {}, "secondaries": [{"one_reg": {}, "mp_state": "05000000"}], "gic": _text(),
            "pmu": True}


def test_a_machine_text_parses_into_vcpus_gic_and_pmu():
    assert arm64_snap.is_machine(_machine_text()) and not arm64_snap.is_machine({"one_reg": {}, "mp_state": ""})
    vcpus, gic, pmu = arm64_snap.parse(_machine_text())
    assert [mp for _r, mp in vcpus] == [bytes(4), bytes([5, 0, 0, 0])]
    assert vcpus[0][0] == {0x6030000000100040: 0x40000000}
    assert gic.irqs == 64 and len(gic.cpus) == 2 and pmu is True


@pytest.mark.parametrize("damage, words", [
    (lambda t: t.update(secondaries={}), "secondaries are not a list"),
    (lambda t: t["secondaries"][0].pop("mp_state"), "saved state of vCPU 1 is malformed"),
    (lambda t: t["secondaries"][0].update(mp_state="0500"), "MP state of vCPU 1 is 2 bytes, not 4"),
    (lambda t: t["secondaries"].append({"one_reg": {}, "mp_state": "00000000"}),
     "2 CPU interfaces for 3 vCPUs"),
    (lambda t: t["gic"]["cpus"][0]["icc"].update(ICC_PMR_EL1="x"), "saved GIC state is malformed: vCPU 0"),
    (lambda t: t.update(pmu="yes"), "pmu flag 'yes' is not true or false"),
])
def test_a_damaged_machine_text_is_a_backend_error_naming_it(damage, words):
    text = _machine_text()
    damage(text)
    with pytest.raises(BackendError, match=words):
        arm64_snap.parse(text)


def test_the_header_machine_names_vcpus_and_gic_layout():
    class Backend:
        _gic = LAYOUT
        _cpus = [object(), object()]
    assert arm64_snap.machine_shape(Backend()) == {
        "cpus": 2, "gic": {"version": 3, "distributor": 0x08000000, "redistributor": 0x080A0000, "irqs": 64}}
    Backend._gic, Backend._cpus = None, None
    assert arm64_snap.machine_shape(Backend()) == {"cpus": 1, "gic": None}
