"""Snapshots of machines with several vCPUs or a GIC (arm64), where no KVM is
needed: the machine a child gets from a snapshot file, a child whose machine
differs, the emulator refusing such a snapshot, a damaged GIC part named."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmrig.backends import emu
from kvmrig.backends.kvm import arm64_snap
from kvmrig.errors import BackendError, NoBackend, SnapshotError
from kvmrig.machine import points, snapfile, snapshot
from kvmrig.machine.memory import Memory
from kvmrig.rig.load import load_rig_text

RAM = (0x40000000, 0x10000, False)
GIC = snapfile.gic_text(3, 0x08000000, 0x080A0000, 288)


def _snap(machine: dict, cpu: dict | None = None, backend: str = "kvm") -> snapfile.Snapshot:
    vcpu = {"one_reg": {}, "mp_state": "00000000"}
    others = {"secondaries": [dict(vcpu)] * (machine["cpus"] - 1)} if machine["cpus"] > 1 else {}
    return snapfile.Snapshot("arm64", backend, [(*RAM, [(0, b"\x01" * 0x1000)])],
                             cpu if cpu is not None else {**vcpu, "arch": {}, **others},
                             {"rig": "p.yaml", "point": "here"}, [], machine)


def test_a_child_of_a_snapshot_file_gets_its_vcpus_and_gic(tmp_path: Path):
    snapfile.write(tmp_path / "m.snap", _snap({"cpus": 2, "gic": GIC}))
    child = load_rig_text("kvmrig: 1\narch: arm64\nfrom: m.snap\n", tmp_path / "c.yaml")
    assert child.cpus == 2
    assert (child.gic.distributor, child.gic.redistributor, child.gic.irqs) == (0x08000000, 0x080A0000, 288)
    assert points.rig_gic(child) == GIC


def test_a_child_restating_another_machine_than_its_files_is_an_error(tmp_path: Path):
    snapfile.write(tmp_path / "m.snap", _snap({"cpus": 2, "gic": None}))
    with pytest.raises(Exception, match=r"c\.yaml:4:7: cpus: cpus: 3, but the snapshot's machine has 2 vCPUs"):
        load_rig_text("kvmrig: 1\narch: arm64\nfrom: m.snap\ncpus: 3\n", tmp_path / "c.yaml")


def test_a_snapshot_file_that_changed_under_a_child_is_refused_naming_the_mismatch(tmp_path: Path):
    """The child was loaded for a one-vCPU snapshot; the file now holds two vCPUs and a GIC."""
    path = tmp_path / "m.snap"
    snapfile.write(path, _snap(dict(snapfile.ONE_CPU)))
    child = load_rig_text("kvmrig: 1\narch: arm64\nfrom: m.snap\n", tmp_path / "c.yaml")
    snapfile.write(path, _snap({"cpus": 2, "gic": GIC}))

    class Backend:
        arch, name = "arm64", "kvm"
    memory = Memory(child.memory)
    with pytest.raises(SnapshotError, match="m.snap: the snapshot's machine has 2 vCPUs, this one 1; the "
                                            "snapshot's machine has a GICv3 .*, this one no GIC"):
        points.start_child(child, None, Backend(), memory, bus=None)


@pytest.mark.skipif(emu.unavailable() is not None, reason="unicorn is not installed")
@pytest.mark.parametrize("machine", [{"cpus": 2, "gic": None}, {"cpus": 1, "gic": GIC}])
def test_the_emulator_refuses_a_kvm_snapshot_with_vcpus_or_a_gic(tmp_path: Path, machine):
    """unicorn has no GIC and one CPU: loading such a snapshot is an error, never vCPU 0 alone."""
    snap = _snap(machine)
    memory = Memory(load_rig_text("kvmrig: 1\narch: arm64\nmemory: [{at: 0x40000000, size: 64K}]\n").memory)
    with emu.backend_class("arm64")() as backend:
        for b in memory.backings:
            backend.map_memory(b.start, b.buf, b.region.rom)
        with pytest.raises(SnapshotError, match="the snapshot's machine has .*: the emu backend for arm64 loads "
                                                "only one-vCPU machines without a GIC"):
            snapshot.put(snap, backend, memory)


@pytest.mark.skipif(emu.unavailable() is not None, reason="unicorn is not installed")
def test_the_emulator_backend_is_not_chosen_for_a_child_of_such_a_machine(tmp_path: Path):
    from kvmrig.backends.select import emu_factory
    snapfile.write(tmp_path / "m.snap", _snap({"cpus": 2, "gic": GIC}))
    child = load_rig_text("kvmrig: 1\narch: arm64\nfrom: m.snap\n", tmp_path / "c.yaml")
    with pytest.raises(NoBackend, match="GIC|vCPU"):
        emu_factory(child)


class _FakeKvmArm64:
    """Stands for the arm64 KVM backend up to the point where it would touch KVM."""

    arch, name = "arm64", "kvm"

    def import_cpu(self, text):
        assert arm64_snap.is_machine(text)
        arm64_snap.import_machine(self, text)

    def _build_for_snapshot(self, *args):
        raise AssertionError("a damaged snapshot must be refused before the machine is built")


@pytest.mark.parametrize("damage, words", [
    (lambda c: c["gic"].pop("cpus"), "the saved GIC state is malformed: the GIC part lacks 'cpus'"),
    (lambda c: c["gic"]["dist"].update(GICD_CTLR="0xzz"), "GICD_CTLR: '0xzz' is not a number"),
    (lambda c: c["secondaries"][0].update(one_reg=[]), "the saved state of vCPU 1 is malformed"),
])
def test_a_damaged_gic_or_vcpu_part_is_a_snapshot_error_naming_it(damage, words):
    cpu = {"one_reg": {}, "mp_state": "00000000", "arch": {}, "pmu": False,
           "secondaries": [{"one_reg": {}, "mp_state": "05000000"}],
           "gic": {"version": 3, "distributor": "0x8000000", "redistributor": "0x80a0000", "irqs": 64,
                   "dist": {"GICD_CTLR": "0x13"}, "spi_levels": {"32": "0x0"},
                   "cpus": [{"mpidr": "0x80000000", "redist": {}, "ppi_levels": "0x0",
                             "icc": {"ICC_CTLR_EL1": "0x400"}}] * 2}}
    damage(cpu)
    memory = Memory(load_rig_text("kvmrig: 1\narch: arm64\nmemory: [{at: 0x40000000, size: 64K}]\n").memory)
    with pytest.raises(SnapshotError, match=words):
        snapshot.put(_snap({"cpus": 2, "gic": dict(GIC, irqs=64)}, cpu), _FakeKvmArm64(), memory)


def test_a_gic_snapshot_cut_inside_its_gic_part_is_truncated(tmp_path: Path):
    cpu = {"one_reg": {}, "mp_state": "00000000", "gic": {"dist": {f"GICD_IROUTER{i}": "0x0" for i in range(32, 288)}}}
    path = tmp_path / "g.snap"
    snapfile.write(path, _snap({"cpus": 1, "gic": GIC}, cpu))
    raw = path.read_bytes()
    cut = raw.index(b"GICD_IROUTER200")
    path.write_bytes(raw[:cut])
    with pytest.raises(SnapshotError, match="truncated snapshot: the header needs"):
        snapfile.read(path)
    with pytest.raises(BackendError):   # and the parts themselves never crash on nonsense
        arm64_snap.parse({"one_reg": {}, "mp_state": "00000000", "gic": None})


@pytest.mark.parametrize("machine", [{"cpus": 2, "gic": None}, {"cpus": 1, "gic": GIC}])
def test_a_child_of_such_a_machine_never_runs_on_a_kept_vm(tmp_path: Path, machine):
    """A kept VM has one vCPU and no GIC: the pool builds such a child its own machine."""
    from kvmrig.machine.reuse import fresh_only
    snapfile.write(tmp_path / "m.snap", _snap(machine))
    assert fresh_only(load_rig_text("kvmrig: 1\narch: arm64\nfrom: m.snap\n", tmp_path / "c.yaml"))
    snapfile.write(tmp_path / "one.snap", _snap({"cpus": 1, "gic": None}))
    assert not fresh_only(load_rig_text("kvmrig: 1\narch: arm64\nfrom: one.snap\n", tmp_path / "d.yaml"))
