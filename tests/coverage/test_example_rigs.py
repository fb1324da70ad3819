"""Every example rig under --coverage: the same verdict, hit counts and final
registers as without, on KVM and on the emulator; and for images without line
tables, KVM's one-shot breakpoints at basic-block leaders give the same
executed byte ranges as the emulator's block hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmrig.coverage.collect import raw_blocks
from kvmrig.coverage.report import rig_code
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig
from kvmrig.runner import run_rig

pytest.importorskip("unicorn", reason="the emulator backend needs unicorn (pip install -e '.[emu]')")

RIGS = Path(__file__).resolve().parents[2] / "rigs"
X86 = sorted((RIGS / "x86").glob("*.yaml"))


def _ran(addr: int, ranges) -> bool:
    return any(lo <= addr < hi for lo, hi in ranges)


@pytest.mark.kvm
@pytest.mark.parametrize("path", X86, ids=lambda p: p.stem)
def test_x86_rig_under_coverage(path):
    rig = load_rig(path)
    plain = run_rig(rig, "kvm")
    kvm = run_rig(rig, "kvm", coverage=True)
    emu = run_rig(rig, "emu", coverage=True)
    assert kvm.status == plain.status, kvm.outcome and [str(f) for f in kvm.outcome.failures]
    assert kvm.outcome.hit_counts == plain.outcome.hit_counts
    assert kvm.outcome.regs == plain.outcome.regs
    assert emu.status == plain.status
    blocks = raw_blocks(prepare(rig))
    on_kvm = {a for a in blocks if _ran(a, kvm.outcome.coverage)}
    on_emu = {a for a in blocks if _ran(a, emu.outcome.coverage)}
    assert on_kvm == on_emu
    codes, _raw = rig_code(rig)
    if not any(code.has_lines for code in codes):   # byte ranges: the same on both (C rigs: lines, elsewhere)
        assert kvm.outcome.coverage == emu.outcome.coverage


@pytest.mark.parametrize("path", sorted((RIGS / "arm64").glob("*.yaml")), ids=lambda p: p.stem)
def test_arm64_rig_under_coverage_on_the_emulator(path):
    rig = load_rig(path)
    plain = run_rig(rig, "emu")
    covered = run_rig(rig, "emu", coverage=True)
    assert covered.status == plain.status
    assert covered.outcome.hit_counts == plain.outcome.hit_counts
    assert covered.outcome.coverage
