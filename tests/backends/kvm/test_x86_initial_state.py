"""set_initial_state's memo of kvm_sregs (backends/kvm/x86_64.py): a rig
whose initial state differs from a remembered one in any field the sregs are
built from, or that starts from other sregs, gets its own bytes, exactly as
built field by field (pure: a fake vCPU, no KVM)."""

from __future__ import annotations

import dataclasses

import pytest

from kvmrig.arch.x86_64 import boot
from kvmrig.backends.kvm import abi

pytestmark = pytest.mark.arch_only("x86_64")


class FakeVcpu:
    """kvm_sregs/kvm_regs held in plain cffi structs, as KVM's sync area holds them."""

    def __init__(self, sregs: bytes):
        self.sregs = abi.ffi.new("struct kvm_sregs *")
        abi.ffi.memmove(self.sregs, sregs, len(sregs))
        self.regs = abi.ffi.new("struct kvm_regs *")

    def get_sregs(self):
        return self.sregs

    def set_sregs(self, s) -> None:
        abi.ffi.memmove(self.sregs, s, abi.ffi.sizeof("struct kvm_sregs"))

    def get_regs(self):
        return self.regs

    def set_regs(self, r) -> None:
        abi.ffi.memmove(self.regs, r, abi.ffi.sizeof("struct kvm_regs"))


def _pristine() -> bytes:
    s = abi.ffi.new("struct kvm_sregs *")
    s.cr8, s.apic_base, s.cr2 = 3, 0xFEE00900, 0x55
    return bytes(abi.ffi.buffer(s))


def _loaded(state, before: bytes) -> bytes:
    """What set_initial_state must leave: `before` with the state written field by field."""
    from kvmrig.backends.kvm.x86_64 import load_sregs
    s = abi.ffi.new("struct kvm_sregs *")
    abi.ffi.memmove(s, before, len(before))
    load_sregs(s, state)
    return bytes(abi.ffi.buffer(s))


def _run(state, before: bytes) -> bytes:
    from kvmrig.backends.kvm.x86_64 import KvmX86Backend
    backend = KvmX86Backend.__new__(KvmX86Backend)   # no VM: only set_initial_state is used
    backend.vcpu = FakeVcpu(before)
    backend.set_initial_state(state)
    return bytes(abi.ffi.buffer(backend.vcpu.sregs))


def _base():
    return boot.initial_state("protected", 0x1000, 0x8000, [(0, 0x100000)])


def _variants():
    """(what, a state or sregs that differs from _base()'s in exactly that)."""
    base = _base()
    for name, seg in base.segments.items():
        for f in dataclasses.fields(seg):
            value = getattr(seg, f.name)
            segments = dict(base.segments)
            segments[name] = dataclasses.replace(seg, **{f.name: value + 0x1000 if f.name == "base" else value ^ 1})
            yield f"{name}.{f.name}", dataclasses.replace(base, segments=segments), None
    for table in ("gdt", "idt"):
        at, limit = getattr(base, table)
        yield f"{table} base", dataclasses.replace(base, **{table: (at + 0x1000, limit)}), None
        yield f"{table} limit", dataclasses.replace(base, **{table: (at, limit ^ 8)}), None
    for reg in ("cr0", "cr3", "cr4", "efer"):
        yield reg, dataclasses.replace(base, **{reg: getattr(base, reg) ^ 0x10}), None
    for reg in ("cr8", "apic_base", "cr2"):   # not the state's: the vCPU's own, kept
        s = abi.ffi.new("struct kvm_sregs *")
        abi.ffi.memmove(s, _pristine(), abi.ffi.sizeof("struct kvm_sregs"))
        setattr(s, reg, getattr(s, reg) + 1)
        yield f"vCPU {reg}", base, bytes(abi.ffi.buffer(s))


def test_the_memo_gives_what_field_by_field_gives():
    from kvmrig.backends.kvm import x86_64
    x86_64._sregs_memo.clear()
    base = _base()
    first = _run(base, _pristine())
    assert first == _loaded(base, _pristine())
    assert len(x86_64._sregs_memo) == 1
    again = _run(_base(), _pristine())   # an equal state, other objects: from the memo
    assert again == first and len(x86_64._sregs_memo) == 1


@pytest.mark.parametrize("what, state, before", list(_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_state_that_differs_in_any_field_gets_its_own_sregs(what, state, before):
    before = before or _pristine()
    _run(_base(), _pristine())   # remembered
    out = _run(state, before)
    assert out == _loaded(state, before)
    assert out != _loaded(_base(), _pristine()), f"{what}: the variant changes nothing"


def test_the_memo_stays_small():
    from kvmrig.backends.kvm import x86_64
    for i in range(x86_64.SREGS_MEMO_MAX + 5):
        _run(dataclasses.replace(_base(), cr3=i << 12), _pristine())
        assert len(x86_64._sregs_memo) <= x86_64.SREGS_MEMO_MAX
