"""The line sets of KVM coverage (one-shot breakpoints), emulator coverage
(block hooks) and a single-step trace on KVM (every executed instruction:
the ground truth) are identical for the C example rigs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kvmrig.coverage.lines import image_code
from kvmrig.rig.load import load_rig
from kvmrig.result import PASSED
from kvmrig.runner import run_rig

pytest.importorskip("unicorn", reason="the emulator backend needs unicorn (pip install -e '.[emu]')")

RIGS = Path(__file__).resolve().parents[2] / "rigs" / "x86"
C_RIGS = sorted(p for p in RIGS.glob("cov-*.yaml"))


def test_there_are_c_example_rigs():
    assert len(C_RIGS) >= 2


@pytest.mark.kvm
@pytest.mark.parametrize("path", C_RIGS, ids=lambda p: p.stem)
def test_kvm_emulator_and_trace_agree_line_for_line(path):
    rig = load_rig(path)
    code = image_code(Path(rig.images[0].file))   # the rig's one image, cov-*.elf
    kvm = run_rig(rig, "kvm", coverage=True)
    emu = run_rig(rig, "emu", coverage=True)
    traced = run_rig(dataclasses.replace(rig, trace_max=1 << 20), "kvm")
    for r in (kvm, emu, traced):
        assert r.status == PASSED, (r.backend, r.message, r.outcome and [str(f) for f in r.outcome.failures])
    assert traced.outcome.trace[-1] == traced.outcome.stop_pc     # the whole run was traced
    truth = code.covered_lines([(pc, pc + 1) for pc in traced.outcome.trace])
    on_kvm = code.covered_lines(kvm.outcome.coverage)
    on_emu = code.covered_lines(emu.outcome.coverage)
    assert on_kvm == truth, _diff(on_kvm, truth)
    assert on_emu == truth, _diff(on_emu, truth)
    every = code.all_lines()
    assert truth and any(truth[f] != every[f] for f in every), "a useful example runs some lines, not all"
    assert code.covered_functions(kvm.outcome.coverage) == code.covered_functions(emu.outcome.coverage) \
        == code.covered_functions([(pc, pc + 1) for pc in traced.outcome.trace])


def _diff(got: dict[str, set[int]], want: dict[str, set[int]]) -> str:
    files = set(got) | set(want)
    return "; ".join(f"{f}: extra {sorted(got.get(f, set()) - want.get(f, set()))}, "
                     f"missing {sorted(want.get(f, set()) - got.get(f, set()))}" for f in sorted(files))
