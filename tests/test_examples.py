"""Every example rig under rigs/ is an end-to-end test: it must pass here.

x86_64 rigs run on real KVM. arm64 rigs run wherever this host can run them
(the emulator backend on an x86 host); the real arm64 KVM lane runs them in
tests/backends/kvm/test_arm64.py. A rig may only be skipped with a reason.
"""

from pathlib import Path

import pytest

from kvmrig.rig.load import load_rig
from kvmrig.collect import expand, is_rig_file
from kvmrig.result import PASSED, SKIPPED
from kvmrig.runner import run_rig

RIGS = Path(__file__).resolve().parent.parent / "rigs"
FILES = [p for p in expand([str(RIGS)]) if is_rig_file(p)]


def test_there_are_examples_for_both_arches():
    arches = {load_rig(p).arch for p in FILES}
    assert "x86_64" in arches and len(FILES) >= 10


@pytest.mark.kvm
@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(RIGS)) for p in FILES])
def test_example_rig_passes(path: Path):
    rig = load_rig(path)
    result = run_rig(rig)
    if rig.arch == "x86_64":
        assert result.status == PASSED, "\n".join([result.message, *(
            str(f) for f in (result.outcome.failures if result.outcome else []))])
    else:
        assert result.status in (PASSED, SKIPPED), result.message
        if result.status == SKIPPED:
            assert result.message, "a skipped rig must say why"
