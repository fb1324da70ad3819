"""restore() of an x86 vCPU state: what it says when KVM refuses part of it
(its ioctls go through fcntl.ioctl, which raises instead of returning -1)."""

from __future__ import annotations

import dataclasses
import errno

import pytest

from kvmrig.backends.kvm import abi, x86_state
from kvmrig.backends.kvm.x86_64 import KvmX86Backend
from kvmrig.errors import BackendError, KvmError

MSR_EFER = 0xC0000080
pytestmark = [pytest.mark.kvm, pytest.mark.arch_only("x86_64")]


@pytest.fixture
def backend():
    with KvmX86Backend() as b:
        b.keep_pristine()
        yield b


def test_a_refused_ioctl_is_a_kvm_error_naming_it(backend):
    xcrs = abi.ffi.new("struct kvm_xcrs *")
    abi.ffi.memmove(xcrs, backend.pristine.blobs["xcrs"], abi.ffi.sizeof("struct kvm_xcrs"))
    assert xcrs.nr_xcrs >= 1 and xcrs.xcrs[0].xcr == 0
    xcrs.xcrs[0].value = 0   # XCR0 without x87: KVM answers EINVAL
    state = dataclasses.replace(backend.pristine, _prepared=None,
                                blobs={**backend.pristine.blobs, "xcrs": bytes(abi.ffi.buffer(xcrs))})
    with pytest.raises(KvmError) as info:
        x86_state.restore(backend.vcpu, state, reuse=True)
    assert info.value.call == "KVM_SET_XCRS" and info.value.errno == errno.EINVAL
    x86_state.restore(backend.vcpu, backend.pristine, reuse=True)   # the vCPU itself is fine


def test_a_refused_msr_is_named_with_its_value(backend):
    msrs = {MSR_EFER: 1 << 63, **{i: v for i, v in backend.pristine.msrs.items() if i != MSR_EFER}}   # a reserved bit
    state = dataclasses.replace(backend.pristine, _prepared=None, msrs=msrs)
    with pytest.raises(BackendError, match=r"KVM refused to restore MSR 0xc0000080 \(value 0x8000000000000000\)"):
        x86_state.restore(backend.vcpu, state, reuse=True)
