"""Choosing a backend for an arm64 rig with an interrupt controller or several
vCPUs: the emulator refuses it with a reason the user sees (a skip), never a
run that would only time out."""

from __future__ import annotations

import pytest

from kvmrig.backends import emu
from kvmrig.backends.select import HOST_ARCH, NoBackend, backend_for
from kvmrig.rig.load import load_rig_text

pytestmark = pytest.mark.skipif(emu.unavailable() is not None, reason="unicorn is not installed")
ARM = "kvmrig: 1\narch: arm64\nmemory: [{at: 0x40000000, size: 64K}]\n"


@pytest.mark.parametrize("body, words", [
    ("gic: {}\n", "a GICv3 with the generic timer's interrupts (`gic:`)"),
    ("cpus: 2\n", "2 vCPUs (`cpus:`)"),
])
def test_the_emulator_refuses_with_the_reason(body, words):
    rig = load_rig_text(ARM + body)
    with pytest.raises(NoBackend) as info:
        backend_for(rig, "emu")
    assert words in str(info.value) and "kvmrig run --in-vm arm64" in str(info.value)
    if HOST_ARCH != "arm64":
        with pytest.raises(NoBackend) as both:
            backend_for(rig, "auto")          # KVM is x86 here, the emulator refuses: a skip with both reasons
        assert words in str(both.value)


def test_a_bare_arm64_rig_still_runs_on_the_emulator():
    assert backend_for(load_rig_text(ARM), "emu")[0] == "emu"
