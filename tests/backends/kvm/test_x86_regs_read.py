"""get_regs() of the x86 KVM backend reads kvm_regs and kvm_sregs with one
unpack each: the same names, order and values as reading them field by field
(pure: a fake vCPU over random bytes, no KVM)."""

from __future__ import annotations

import random

import pytest

from kvmrig.arch.x86_64.regs import CONTROL, GPRS, SEGMENTS
from kvmrig.backends.kvm import abi

pytestmark = pytest.mark.arch_only("x86_64")


class FakeVcpu:
    def __init__(self, rng: random.Random):
        self.regs = abi.ffi.new("struct kvm_regs *")
        self.sregs = abi.ffi.new("struct kvm_sregs *")
        for struct in (self.regs, self.sregs):
            size = abi.ffi.sizeof(struct[0])
            abi.ffi.memmove(struct, rng.randbytes(size), size)

    def get_regs(self):
        return self.regs

    def get_sregs(self):
        return self.sregs


def _field_by_field(vcpu) -> dict[str, int]:
    r, s = vcpu.get_regs(), vcpu.get_sregs()
    out = {name: getattr(r, name) for name in GPRS + ("rip", "rflags")}
    for name in SEGMENTS:
        out[name] = getattr(s, name).selector
    for name in CONTROL:
        out[name] = getattr(s, name)
    out["cs_base"] = s.cs.base
    return out


@pytest.mark.parametrize("seed", range(20))
def test_get_regs_reads_what_the_fields_hold(seed):
    from kvmrig.backends.kvm.x86_64 import KvmX86Backend
    backend = KvmX86Backend.__new__(KvmX86Backend)   # no VM: get_regs reads self.vcpu only
    backend.vcpu = FakeVcpu(random.Random(seed))
    got = backend.get_regs()
    want = _field_by_field(backend.vcpu)
    assert list(got.items()) == list(want.items())   # values and order
