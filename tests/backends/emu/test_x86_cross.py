"""x86_64 CPU state across backends (backends/emu/x86_cross.py,
backends/kvm/x86_state.py to_arch/with_arch): a state full of distinct
values set on one backend, written by name and loaded on the other, reads
back the same in everything both hold; what one cannot hold is an error
naming it."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from kvmrig.arch.x86_64 import cpustate
from kvmrig.backends.emu import x86_cross
from kvmrig.backends.select import emu_factory, kvm_factory
from kvmrig.errors import BackendError
from kvmrig.machine.memory import Memory
from kvmrig.machine.plan import prepare
from kvmrig.machine.session import Session
from kvmrig.rig.load import load_rig

pytestmark = pytest.mark.kvm
UNSCRIBBLED = {0x1A0, 0x277}   # MISC_ENABLE and PAT take only some bit patterns
FIB = Path(__file__).resolve().parents[3] / "rigs" / "x86" / "fib.yaml"


def _scribbled(a: cpustate.X86Arch, seed: int, msrs_both: set[int]) -> cpustate.X86Arch:
    """`a` with every register both backends hold set to a distinct value
    (`msrs_both`: the MSRs both have on this host)."""
    rnd = random.Random(seed)
    regs = {k: rnd.getrandbits(64) for k in a.regs}
    regs["rip"] = a.regs["rip"]
    regs["rflags"] = 0x2 | 0x8D5   # CF PF AF ZF SF OF set, IF clear
    msrs = dict(a.msrs)
    for index in msrs_both:
        if index in UNSCRIBBLED:
            continue
        msrs[index] = rnd.getrandbits(32) & ~0xF if index != 0x174 else rnd.getrandbits(16)
    msrs.update({i: v for i, v in ((0xC0000082, 0xFFFF800000001000), (0xC0000102, 0x00007F0000002000),
                                   (0xC0000083, 0x12340)) if i in msrs_both})   # canonical addresses
    fpu = cpustate.Fpu(fcw=0x27F, fsw=0x3000 | 0x41, ftw=0b1100_0000, fop=0x123, fip=0x4000, fdp=0x5000,
                       mxcsr=0x1F80 | 0x3F, st=[0] * 6 + [rnd.getrandbits(64) | 1 << 63 | 0x3FFF << 64] * 2,
                       xmm=[rnd.getrandbits(128) for _ in range(16)], ymmh=a.fpu.ymmh)
    segs = dict(a.segments)
    segs["fs"] = dataclasses.replace(segs["fs"], base=0x00007F00DEAD0000)
    segs["gs"] = dataclasses.replace(segs["gs"], base=0xFFFF8000BEEF0000)
    control = {**a.control, "cr2": 0xFFFF800012345678, "cr8": 5}
    debug = {"dr0": 0x1000, "dr1": 0x2000, "dr2": 0x3000, "dr3": 0x4000, "dr6": 0xFFFF0FF0, "dr7": 0x400}
    return dataclasses.replace(a, regs=regs, segments=segs, control=control, msrs=msrs,
                               msrs_as_created=frozenset(), fpu=fpu, debug=debug)


def _same(got: cpustate.X86Arch, want: cpustate.X86Arch, msrs_both: set[int]) -> None:
    assert got.regs == want.regs
    for name in cpustate.SEGMENT_NAMES:
        g, w = got.segments[name], want.segments[name]
        for f in ("selector", "base", "limit", "present", "dpl", "db", "s", "l", "g"):
            assert getattr(g, f) == getattr(w, f), (name, f)
    assert (got.gdt, got.idt) == (want.gdt, want.idt)
    assert got.control == want.control
    changed = msrs_both - UNSCRIBBLED   # those keep each backend's own created value
    assert {i: got.msrs[i] for i in changed} == {i: want.msrs[i] for i in changed}
    assert got.fpu == want.fpu
    assert got.debug == want.debug


def _booted(factory, memory: Memory, rig):
    backend = factory()
    Session(prepare(rig), backend, memory).start()
    return backend


def test_a_kvm_state_reads_back_the_same_on_the_emulator():
    rig = load_rig(FIB)
    mk, me = Memory(rig.memory), Memory(rig.memory)
    with _booted(kvm_factory(rig), mk, rig) as kvm, _booted(emu_factory(rig), me, rig) as emu:
        a = cpustate.from_text(kvm.export_cpu()["arch"])
        both = set(a.msrs) & set(x86_cross.MSRS)
        want = _scribbled(a, 1, both)
        kvm.import_arch(cpustate.to_text(want))       # KVM takes it by name too
        text = kvm.export_cpu()["arch"]
        _same(cpustate.from_text(text), want, both)
        emu.import_arch(text)
        _same(x86_cross.to_arch(emu), want, both)
    mk.close()
    me.close()


def test_an_emulator_state_reads_back_the_same_on_kvm():
    rig = load_rig(FIB)
    mk, me = Memory(rig.memory), Memory(rig.memory)
    with _booted(kvm_factory(rig), mk, rig) as kvm, _booted(emu_factory(rig), me, rig) as emu:
        both = set(cpustate.from_text(kvm.export_cpu()["arch"]).msrs) & set(x86_cross.MSRS)
        want = _scribbled(x86_cross.to_arch(emu), 2, both)
        emu.import_arch(cpustate.to_text(want))
        text = emu.export_cpu()["arch"]
        _same(cpustate.from_text(text), want, both)
        kvm.import_arch(text)
        _same(cpustate.from_text(kvm.export_cpu()["arch"]), want, both)
    mk.close()
    me.close()


@pytest.mark.parametrize("change, named", [
    (lambda a: a.msrs.update({0x4B564D05: 0}), r"MSR 0x4b564d05 = 0x0 \(the guest changed it\); the emulator "
                                               "has no such MSR"),
    (lambda a: a.debug.update(dr7=0x401), "arms breakpoints \\(DR7 = 0x401\\)"),
    (lambda a: a.pending.append("an NMI"), "an NMI pending"),
    (lambda a: setattr(a, "xcr0", 7), "XCR0 = 0x7"),
])
def test_what_the_emulator_cannot_hold_is_an_error_naming_it(change, named):
    rig = load_rig(FIB)
    mk, me = Memory(rig.memory), Memory(rig.memory)
    with _booted(kvm_factory(rig), mk, rig) as kvm, _booted(emu_factory(rig), me, rig) as emu:
        a = cpustate.from_text(kvm.export_cpu()["arch"])
        a.msrs_as_created = frozenset(i for i in a.msrs_as_created if i != 0x4B564D05)
        change(a)
        with pytest.raises(BackendError, match=named):
            emu.import_arch(cpustate.to_text(a))
    mk.close()
    me.close()


def test_real_mode_segments_with_any_base_are_carried():
    """Real mode with bases that are not selector * 16 ("unreal mode"): the
    emulator holds them (each segment is read back and compared on loading)."""
    rig = load_rig(FIB)
    mk, me = Memory(rig.memory), Memory(rig.memory)
    with _booted(kvm_factory(rig), mk, rig) as kvm:
        a = cpustate.from_text(kvm.export_cpu()["arch"])
    mk.close()
    emu = _booted(emu_factory(rig), me, rig)
    real = dataclasses.replace(a, control={**a.control, "cr0": 0x10, "cr4": 0, "efer": 0},
                               segments={n: dataclasses.replace(s, base=s.selector << 4, limit=0xFFFF, l=0, db=0,
                                                                g=0, type=3 if n != "cs" else 0xB, dpl=0,
                                                                present=1, unusable=0, s=1)
                                         if n not in ("tr", "ldt") else s for n, s in a.segments.items()})
    real.regs["rip"] = 0x1000
    real.segments["fs"] = dataclasses.replace(real.segments["fs"], selector=0x10, base=0x10000000)
    real.segments["ds"] = dataclasses.replace(real.segments["ds"], selector=0x20, base=0x2000000, limit=0xFFFFF,
                                              g=0)
    emu.import_arch(cpustate.to_text(real))
    got = x86_cross.to_arch(emu).segments
    assert (got["fs"].selector, got["fs"].base) == (0x10, 0x10000000)
    assert (got["ds"].selector, got["ds"].base, got["ds"].limit) == (0x20, 0x2000000, 0xFFFFF)
    # A byte-granular limit above 1 MiB fits no descriptor: refused, naming the segment.
    real.segments["ds"] = dataclasses.replace(real.segments["ds"], limit=0xFFFFFFFF)
    with pytest.raises(BackendError, match="cannot hold the snapshot's ds .*limit 0xffffffff.*gave .*limit 0xfffff,"):
        emu.import_arch(cpustate.to_text(real))
    emu.close()
    me.close()
