"""The arm64 rigs written from a kvm-unit-tests unittests.cfg: what each
section's keys become, and that every rig written loads and plans."""

from __future__ import annotations

from pathlib import Path

import yaml

from kvmrig.importers.kvm_unit_tests_arm64 import arm64_rig, max_smp_expr, rigs_from_cfg, unmodelled
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig

CFG = """\
[selftest-setup]
file = selftest.flat
smp = 2
test_args = 'setup smp=2 mem=256'
qemu_params = -m 256
groups = selftest

[gicv3-ipi]
file = gic.flat
smp = $((($MAX_SMP < 8)?$MAX_SMP:8))
test_args = ipi
qemu_params = -machine gic-version=3
groups = gic

[gicv2-mmio]
file = gic.flat
smp = $MAX_SMP
test_args = mmio
qemu_params = -machine gic-version=2
groups = gic

[timer]
file = timer.flat
arch = arm64
timeout = 10s

[x86-only]
file = x.flat
arch = x86_64
"""


def test_smp_expressions():
    assert max_smp_expr("2", 4) == 2 and max_smp_expr("$MAX_SMP", 4) == 4
    assert max_smp_expr("$((($MAX_SMP < 8)?$MAX_SMP:8))", 4) == 4
    assert max_smp_expr("$((($MAX_SMP < 3)?$MAX_SMP:3))", 4) == 3


def test_what_is_not_modelled_is_named():
    assert unmodelled("-machine gic-version=3", "ipi") == []
    assert unmodelled("-machine gic-version=2", "mmio") == ["-machine gic-version=2"]
    assert unmodelled("", "bp-migration") == ["migration (the test migrates the VM half way)"]


def test_a_section_becomes_a_qemu_virt_like_rig():
    rig = arm64_rig("psci", "../psci.flat", smp=2, args="a b", groups=["psci"], timeout=30)
    assert rig["cpus"] == 2 and rig["gic"] == {} and rig["dtb"] == {"bootargs": "a b"}
    assert rig["images"] == [{"file": "../psci.flat", "at": "0x40080000"}]
    assert rig["expect"]["exit"] == "system-off" and rig["expect"]["console"]["contains"] == "EXIT: STATUS=1\n"
    assert rig["backend"] == "kvm" and rig["timeout"] == "30s" and "psci" in rig["tags"]


def test_every_written_rig_loads_and_plans(tmp_path: Path):
    flats = tmp_path / "arm64"
    flats.mkdir()
    for name in ("selftest", "gic", "timer", "x"):
        (flats / f"{name}.flat").write_bytes(bytes.fromhex("1f2003d5") * 16)
    (flats / "unittests.cfg").write_text(CFG)
    written = rigs_from_cfg(flats / "unittests.cfg", flats, tmp_path / "rigs", max_smp=2)
    assert sorted(p.stem for p in written) == ["gicv2-mmio", "gicv3-ipi", "selftest-setup", "timer"]
    data = {p.stem: yaml.safe_load(p.read_text()) for p in written}
    assert data["selftest-setup"]["cpus"] == 2 and data["selftest-setup"]["memory"][0]["size"] == "256M"
    assert data["selftest-setup"]["dtb"] == {"bootargs": "setup smp=2 mem=256"}
    assert "not-modelled" in data["gicv2-mmio"]["tags"] and "gic-version=2" in data["gicv2-mmio"]["description"]
    assert data["timer"]["timeout"] == "10s" and "cpus" not in data["timer"]
    for path in written:
        plan = prepare(load_rig(path))
        assert plan.entry == 0x40080000 and plan.boot.state.dtb is not None and plan.boot.state.gic is not None
