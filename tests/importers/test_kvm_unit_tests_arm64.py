"""The arm64 rigs `kvmrig import kvm-unit-tests` writes from the suite's
arm unittests.cfg: what each section's keys become, that the arch is told
from the binaries, and that every rig written loads and plans."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvmrig.cli import main
from kvmrig.importers.kvm_unit_tests import detect_arch, import_suite
from kvmrig.importers.unittests_cfg import Test as Section
from kvmrig.importers.unittests_cfg import max_smp_expr, read_cfg
from kvmrig.importers.kvm_unit_tests_arm64 import rig_for, unmodelled
from kvmrig.machine.plan import prepare
from kvmrig.errors import UsageError
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


# An ELF header's first 20 bytes: class 64, little-endian, e_machine EM_AARCH64 (183).
AARCH64_ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + (183).to_bytes(2, "little")


def test_smp_expressions():
    assert max_smp_expr("2", 4) == 2 and max_smp_expr("$MAX_SMP", 4) == 4
    assert max_smp_expr("$((($MAX_SMP < 8)?$MAX_SMP:8))", 4) == 4
    assert max_smp_expr("$((($MAX_SMP < 3)?$MAX_SMP:3))", 4) == 3
    with pytest.raises(UsageError, match="neither a number"):
        max_smp_expr("$((1+1))", 2)


def test_what_is_not_modelled_is_named():
    assert unmodelled(Section("t", "f", gic_version="3", args="ipi")) == []
    assert unmodelled(Section("t", "f", gic_version="2", args="mmio")) == ["-machine gic-version=2"]
    assert unmodelled(Section("t", "f", args="bp-migration")) == ["migration (the test migrates the VM half way)"]
    assert unmodelled(Section("t", "f", accel="tcg")) == ["accel = tcg"]


def test_a_section_becomes_a_qemu_virt_like_rig(tmp_path: Path):
    rig = rig_for(Section("psci", "psci.flat", smp=2, args="a b", groups=["psci"], timeout=30),
                  tmp_path / "arm64" / "psci.flat", tmp_path / "rigs")
    assert rig["cpus"] == 2 and rig["gic"] == {} and rig["dtb"] == {"bootargs": "a b"}
    assert rig["images"] == [{"file": "../arm64/psci.flat", "at": 0x40080000}]
    assert rig["memory"] == [{"at": 0x40000000, "size": "256M"}]
    assert rig["verdict"] == {"console": "kvm-unit-tests", "exit_codes": "kvm-unit-tests"}
    assert rig["expect"] == {"exit": "system-off"}
    assert rig["backend"] == "kvm" and rig["timeout"] == "30s" and {"psci", "smp"} <= set(rig["tags"])


def _suite(tmp_path: Path, elf: bool = True) -> tuple[Path, Path]:
    flats = tmp_path / "arm64"
    flats.mkdir()
    for name in ("selftest", "gic", "timer", "x"):
        (flats / f"{name}.flat").write_bytes(bytes.fromhex("1f2003d5") * 16)   # raw: nops
        if elf:
            (flats / f"{name}.elf").write_bytes(AARCH64_ELF + bytes(64))
    (flats / "unittests.cfg").write_text(CFG)
    return flats / "unittests.cfg", flats


def test_the_arch_comes_from_the_binaries(tmp_path: Path):
    cfg, flats = _suite(tmp_path)
    assert detect_arch(read_cfg(cfg), flats) == "arm64"
    x86 = tmp_path / "x86"
    x86.mkdir()
    # an x86 .flat is an ELF32 (EM_386) multiboot kernel
    (x86 / "selftest.flat").write_bytes(b"\x7fELF\x01\x01\x01" + bytes(9) + (2).to_bytes(2, "little")
                                        + (3).to_bytes(2, "little") + bytes(32))
    assert detect_arch(read_cfg(cfg), x86) == "x86_64"


def test_every_written_rig_loads_and_plans(tmp_path: Path):
    cfg, flats = _suite(tmp_path)
    written, left_out = import_suite(cfg, flats, tmp_path / "rigs", max_smp=2)
    assert sorted(p.stem for p in written) == ["gicv2-mmio", "gicv3-ipi", "selftest-setup", "timer"]
    assert left_out == ["x86-only: arch x86_64"]
    data = {p.stem: yaml.safe_load(p.read_text()) for p in written}
    assert data["selftest-setup"]["cpus"] == 2 and data["selftest-setup"]["memory"][0]["size"] == "256M"
    assert data["selftest-setup"]["dtb"] == {"bootargs": "setup smp=2 mem=256"}
    assert "not-modelled" in data["gicv2-mmio"]["tags"] and "gic-version=2" in data["gicv2-mmio"]["description"]
    assert "not-modelled" not in data["gicv3-ipi"]["tags"] and data["gicv3-ipi"]["cpus"] == 2
    assert data["timer"]["timeout"] == "10s" and "cpus" not in data["timer"]
    for path in written:
        rig = load_rig(path)
        assert rig.verdict.console == "kvm-unit-tests" and rig.verdict.exit_codes == "kvm-unit-tests"
        plan = prepare(rig)
        assert plan.entry == 0x40080000 and plan.boot.state.dtb is not None and plan.boot.state.gic is not None


def test_the_command_takes_arm64(tmp_path: Path, capsys):
    cfg, flats = _suite(tmp_path, elf=False)   # no ELF to tell the arch by: --arch says it
    out = tmp_path / "o"
    assert main(["import", "kvm-unit-tests", str(cfg), str(flats), "-o", str(out), "--arch", "arm64",
                 "--max-smp", "4"]) == 0
    assert "wrote 4 rig(s)" in capsys.readouterr().out
    assert load_rig(out / "gicv3-ipi.yaml").arch == "arm64" and load_rig(out / "gicv3-ipi.yaml").cpus == 4
