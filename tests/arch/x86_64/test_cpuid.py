"""CPUID feature names and edits."""

import pytest

from kvmrig.arch.x86_64 import cpuid


def test_names_in_linux_and_qemu_spelling():
    assert cpuid.feature("x2apic") == (1, 0, "ecx", 21)
    assert cpuid.feature("tsc-deadline") == cpuid.feature("tsc_deadline_timer") == (1, 0, "ecx", 24)
    assert cpuid.feature("pcid") == (1, 0, "ecx", 17)
    assert cpuid.feature("invpcid") == (7, 0, "ebx", 10)
    assert cpuid.feature("umip") == (7, 0, "ecx", 2)
    assert cpuid.feature("lm") == (0x80000001, 0, "edx", 29)
    assert cpuid.feature("no-such-flag") is None


def test_apply_sets_clears_vendor_and_leaves():
    entries = [cpuid.Entry(0, 0, 0, 0xD, 1, 2, 3), cpuid.Entry(1, 0, 0, 0, 0, 1 << 21, 0),
               cpuid.Entry(7, 0, 1, 0, 0, 0, 0), cpuid.Entry(7, 1, 1, 0, 0, 0, 0)]
    out = cpuid.apply(entries, add=["pcid", "invpcid"], remove=["x2apic"], vendor="AuthenticAMD",
                      leaves=[(0x40000000, 0, {"eax": 0x40000001}), (7, 1, {"eax": 5})])
    by = {(e.leaf, e.subleaf): e for e in out}
    assert by[(1, 0)].ecx == 1 << 17
    assert by[(7, 0)].ebx == 1 << 10 and by[(7, 1)].eax == 5
    assert (by[(0, 0)].ebx, by[(0, 0)].edx, by[(0, 0)].ecx) == cpuid.VENDORS["AuthenticAMD"]
    assert by[(0x40000000, 0)].eax == 0x40000001
    with pytest.raises(ValueError):
        cpuid.apply([], add=["bogus"])
