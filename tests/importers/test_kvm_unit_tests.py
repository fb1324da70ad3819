"""kvmrig import kvm-unit-tests: unittests.cfg sections to rigs."""

from __future__ import annotations

from pathlib import Path

from kvmrig.cli import main
from kvmrig.importers.kvm_unit_tests import import_suite, read_cfg
from kvmrig.rig.load import load_rig

CFG = """
# comment
[plain]
file = a.flat

[cpu-flags]
file = a.flat
smp = 2
extra_params = -cpu qemu64,+x2apic,-pcid,vendor=GenuineIntel,+no-such -append 'one two' -m 2048
groups = apic nodefault
timeout = 2m

[args]
file = a.flat
test_args = "x y"
qemu_params = -machine pit=off -device foo
arch = x86_64

[i386-only]
file = a.flat
arch = i386

[missing]
file = nothere.flat
"""


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "unittests.cfg"
    cfg.write_text(CFG)
    flats = tmp_path / "x86"
    flats.mkdir()
    (flats / "a.flat").write_bytes(b"\0" * 16)
    return cfg, flats


def test_sections_are_read(tmp_path: Path):
    cfg, _ = _setup(tmp_path)
    tests = {t.name: t for t in read_cfg(cfg)}
    t = tests["cpu-flags"]
    assert (t.smp, t.args, t.memory_mb, t.timeout) == (2, "one two", 2048, 120.0)
    assert (t.add, t.remove, t.vendor, t.cpu_model) == (["x2apic"], ["pcid"], "GenuineIntel", "qemu64")
    assert any("no-such" in i for i in t.ignored)
    assert tests["args"].args == "x y" and tests["args"].pit is False
    assert any(i.startswith("-device foo") for i in tests["args"].ignored)


def test_rigs_are_written_and_load(tmp_path: Path):
    cfg, flats = _setup(tmp_path)
    out = tmp_path / "rigs"
    written, left_out = import_suite(cfg, flats, out)
    assert sorted(p.stem for p in written) == ["args", "cpu-flags", "plain"]
    assert any(line.startswith("i386-only: arch i386") for line in left_out)
    assert any(line.startswith("missing:") for line in left_out)
    rig = load_rig(out / "cpu-flags.yaml")
    assert rig.cpus == 2 and rig.machine.cpus == 2 and rig.machine.irqchip and rig.machine.pit
    assert rig.cpu.cpuid.add == ("x2apic",) and rig.cpu.cpuid.remove == ("pcid",)
    assert rig.images[0].format == "multiboot" and rig.images[0].cmdline == "a.flat one two"
    assert [r.size for r in rig.memory] == [2048 << 20]
    assert set(rig.tags) >= {"kvm-unit-tests", "apic", "nodefault", "smp"} and rig.timeout == 120
    assert rig.verdict.console == "kvm-unit-tests" and rig.verdict.exit_codes == "kvm-unit-tests"
    assert {d.type for d in rig.devices} == {"serial", "isa-debug-exit", "pc-testdev", "fw-cfg", "cmos"}
    assert load_rig(out / "args.yaml").machine.pit is False


def test_the_command(tmp_path: Path, capsys):
    cfg, flats = _setup(tmp_path)
    assert main(["import", "kvm-unit-tests", str(cfg), str(flats), "-o", str(tmp_path / "o")]) == 0
    assert "wrote 3 rig(s)" in capsys.readouterr().out
    assert main(["import", "kvm-unit-tests", str(tmp_path / "nope.cfg"), str(flats), "-o", "x"]) == 2
