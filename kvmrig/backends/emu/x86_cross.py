"""The x86_64 emulator's CPU in the neutral form of arch/x86_64/cpustate.py:
reading it for a snapshot KVM can load, and loading one KVM took.

Reading: unicorn's register API gives the general, control, FPU/SSE/AVX and
debug registers and TR/LDTR/GDTR/IDTR whole, but of CS/DS/ES/SS only the
selector (UC_MODE_64); their hidden parts come from the segment cache in
unicorn's saved context, found by CsBase (the layout QEMU keeps: selector,
base, limit, descriptor flags).

Loading: the segments are loaded as a CPU loads them, by the backend's own
set_initial_state (a trampoline that loads each from a descriptor, so QEMU
derives its mode flags from them), then the rest is written by register;
afterwards every segment is read back and compared, so a segment unicorn
cannot hold (unreal mode, a null selector used in 32-bit protected mode) is
an error naming it, not a different run. The trampoline runs with the
snapshot's paging: its scratch page must be mapped by the guest's tables (it
is by kvmrig's boot tables; a guest that replaced them may refuse).
"""

from __future__ import annotations

import ctypes
import re
import struct

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from kvmrig.arch.x86_64 import cpustate, gdt
from kvmrig.arch.x86_64.boot import X86State
from kvmrig.arch.x86_64.regs import GPRS
from kvmrig.errors import BackendError

# The MSRs unicorn keeps (QEMU's TCG rdmsr/wrmsr) that KVM has too.
MSRS = (0x174, 0x175, 0x176, 0x1A0, 0x277, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102,
        0xC0000103)
_CACHE_ORDER = ("es", "cs", "ss", "ds", "fs", "gs")   # QEMU's R_ES..R_GS
_DEBUG = {"dr0": X.UC_X86_REG_DR0, "dr1": X.UC_X86_REG_DR1, "dr2": X.UC_X86_REG_DR2, "dr3": X.UC_X86_REG_DR3,
          "dr6": X.UC_X86_REG_DR6, "dr7": X.UC_X86_REG_DR7}
_created: dict[int, int] | None = None
EFER_LMA, CR0_PE = 1 << 10, 1


class CsBase:
    """Where unicorn keeps the hidden base of CS in a saved context.

    Unicorn's register API reads selectors only, but the linear pc (what
    KVM reports and code hooks see) is CS.base + RIP, and CS.base is not
    selector * 16 after a reset. unicorn's CPU state keeps the segment
    caches in the order ES, CS, SS, DS, FS, GS, one stride apart; the
    offsets of FS's and GS's bases are found once per process by loading
    two known real-mode selectors (the register API loads FS and GS fully)
    and looking for (selector, base, limit 0xffff). If the stride is not
    what it must be, None: callers fall back to what the selector implies.
    """

    offset: int | None = None
    stride = 0
    probed = False

    @classmethod
    def find(cls) -> int | None:
        if cls.probed:
            return cls.offset
        cls.probed = True
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_tcg_buffer_size(1 << 20)
        uc.reg_write(X.UC_X86_REG_CR0, 0x10)
        uc.reg_write(X.UC_X86_REG_FS, 0x1234)
        uc.reg_write(X.UC_X86_REG_GS, 0x4321)
        blob = context_bytes(uc.context_save())
        found = []
        for sel in (0x1234, 0x4321):
            pattern = re.escape(struct.pack("<I", sel)) + b"...." + re.escape(struct.pack("<QI", sel << 4, 0xFFFF))
            hits = [m.start() + 8 for m in re.finditer(pattern, blob, re.DOTALL)]
            if len(hits) != 1:
                return None
            found.append(hits[0])
        stride = found[1] - found[0]
        if stride in (24, 32):
            cls.offset = found[0] - 3 * stride   # FS is segs[4], CS segs[1]
            cls.stride = stride
        return cls.offset


def context_bytes(ctx) -> bytes:
    ptr = ctypes.cast(ctx.context, ctypes.c_void_p).value
    return ctypes.string_at(ptr, ctx.size + 64)


def created_msrs() -> dict[int, int]:
    """MSRS as a new unicorn x86 CPU has them (once per process)."""
    global _created
    if _created is None:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        _created = {i: uc.msr_read(i) for i in MSRS}
    return _created


def _segments(backend) -> dict[str, gdt.Segment]:
    uc = backend.uc
    offset = CsBase.find()
    if offset is None:
        raise BackendError("the emulator's segment state cannot be read (unicorn's context is not laid out as "
                           "kvmrig expects), so it cannot be written for KVM")
    blob = context_bytes(uc.context_save())
    out = {}
    for i, name in enumerate(_CACHE_ORDER):
        at = offset + (i - 1) * CsBase.stride
        selector = struct.unpack_from("<I", blob, at - 8)[0] & 0xFFFF
        base, limit, flags = struct.unpack_from("<QII", blob, at)
        out[name] = cpustate.segment_from_flags(selector, base, limit, flags)
    for name, reg in (("tr", X.UC_X86_REG_TR), ("ldt", X.UC_X86_REG_LDTR)):
        selector, base, limit, flags = uc.reg_read(reg)
        out[name] = cpustate.segment_from_flags(selector, base, limit, flags)
    return out


def to_arch(backend) -> cpustate.X86Arch:
    """The emulator's CPU now, by name (the caller settled any pending I/O)."""
    uc = backend.uc
    regs = {name: uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")) for name in GPRS + ("rip", "rflags")}
    _s, gdt_base, gdt_limit, _f = uc.reg_read(X.UC_X86_REG_GDTR)
    _s, idt_base, idt_limit, _f = uc.reg_read(X.UC_X86_REG_IDTR)
    control = {name: uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}")) for name in ("cr0", "cr2", "cr3", "cr4",
                                                                                          "cr8")}
    control["efer"] = uc.msr_read(cpustate.MSR_EFER)
    msrs = {i: uc.msr_read(i) for i in MSRS}
    created = created_msrs()
    as_created = frozenset(i for i, v in msrs.items() if created.get(i) == v)
    fsw = uc.reg_read(X.UC_X86_REG_FPSW)
    top = (fsw >> 11) & 7
    st = []
    for i in range(8):
        mantissa, exponent = uc.reg_read(X.UC_X86_REG_FP0 + (top + i) % 8)
        st.append((exponent & 0xFFFF) << 64 | mantissa)
    ymm = [uc.reg_read(X.UC_X86_REG_YMM0 + i) for i in range(16)]
    fpu = cpustate.Fpu(uc.reg_read(X.UC_X86_REG_FPCW), fsw, cpustate.abridged_tag(uc.reg_read(X.UC_X86_REG_FPTAG)),
                       uc.reg_read(X.UC_X86_REG_FOP) & 0x7FF, uc.reg_read(X.UC_X86_REG_FIP),
                       uc.reg_read(X.UC_X86_REG_FDP), uc.reg_read(X.UC_X86_REG_MXCSR), st,
                       [v & (1 << 128) - 1 for v in ymm], [v >> 128 for v in ymm])
    debug = {name: uc.reg_read(reg) for name, reg in _DEBUG.items()}
    return cpustate.X86Arch(regs, _segments(backend), (gdt_base, gdt_limit), (idt_base, idt_limit), control, msrs,
                            as_created, fpu, debug, None, [])


def _usable(name: str, seg: gdt.Segment, cs: gdt.Segment, long_mode: bool, protected: bool) -> gdt.Segment:
    """A segment unicorn can load for KVM's unusable one: in 64-bit mode a
    null data segment is never checked (a present one of the same base acts
    the same); in 32-bit protected mode using it faults, which the emulator
    could not do."""
    if not seg.unusable or name in ("cs", "tr", "ldt"):
        return seg
    if protected and not long_mode:
        raise cpustate.CrossError(f"the snapshot's {name} is unusable (a null selector in 32-bit protected mode), "
                                  "which the emulator cannot hold")
    return gdt.Segment(base=seg.base, limit=seg.limit, selector=seg.selector, type=3, present=1,
                       dpl=cs.dpl if name == "ss" else seg.dpl, db=seg.db, s=1, l=0, g=seg.g, avl=seg.avl)


def load_arch(backend, a: cpustate.X86Arch) -> None:
    """Load a neutral state another backend took into a new or reset
    emulator; CrossError/BackendError naming what it cannot hold."""
    cpustate.refuse_pending(a, "emu")
    if a.xcr0 is not None and a.xcr0 != 1:
        raise cpustate.CrossError(f"the snapshot has XCR0 = {a.xcr0:#x}; the emulator cannot set XCR0")
    if a.debug["dr7"] & cpustate.DR7_ENABLES:
        raise cpustate.CrossError(f"the snapshot's guest arms breakpoints (DR7 = {a.debug['dr7']:#x}), which the "
                                  "emulator does not emulate")
    msrs = cpustate.changed_msrs(a)
    for index, value in msrs.items():
        if index not in MSRS:
            raise cpustate.CrossError(f"the snapshot has {cpustate.msr_name(index)} = {value:#x} (the guest changed "
                                      "it); the emulator has no such MSR")
    c = a.control
    long_mode, protected = bool(c["efer"] & EFER_LMA), bool(c["cr0"] & CR0_PE)
    segs = {n: _usable(n, s, a.segments["cs"], long_mode, protected) for n, s in a.segments.items()}
    gprs = {name: a.regs[name] for name in GPRS}
    state = X86State("snapshot", a.regs["rip"], a.regs["rip"], segs, c["cr0"], c["cr3"], c["cr4"], c["efer"],
                     a.regs["rflags"], a.gdt, a.idt, gprs=gprs)
    backend.set_initial_state(state)
    if protected:
        _set_selectors(backend, {n: segs[n].selector for n in ("fs", "gs")})
    uc = backend.uc
    f = a.fpu
    try:
        uc.reg_write(X.UC_X86_REG_CR2, c["cr2"])
        uc.reg_write(X.UC_X86_REG_CR8, c["cr8"])
        uc.reg_write(X.UC_X86_REG_FS_BASE, segs["fs"].base)
        uc.reg_write(X.UC_X86_REG_GS_BASE, segs["gs"].base)
        for index, value in msrs.items():
            uc.msr_write(index, value)
            if uc.msr_read(index) != value:
                raise cpustate.CrossError(f"the emulator did not take {cpustate.msr_name(index)} = {value:#x}")
        uc.reg_write(X.UC_X86_REG_FPCW, f.fcw)
        uc.reg_write(X.UC_X86_REG_FPSW, f.fsw)
        top = (f.fsw >> 11) & 7
        for i, value in enumerate(f.st):
            uc.reg_write(X.UC_X86_REG_FP0 + (top + i) % 8, (value & (1 << 64) - 1, value >> 64))
        uc.reg_write(X.UC_X86_REG_FPTAG, cpustate.full_tag_word(f.ftw))
        uc.reg_write(X.UC_X86_REG_FOP, f.fop)
        uc.reg_write(X.UC_X86_REG_FIP, f.fip)
        uc.reg_write(X.UC_X86_REG_FDP, f.fdp)
        uc.reg_write(X.UC_X86_REG_MXCSR, f.mxcsr)
        for i in range(16):
            uc.reg_write(X.UC_X86_REG_YMM0 + i, f.ymmh[i] << 128 | f.xmm[i])
        for name, reg in _DEBUG.items():
            uc.reg_write(reg, a.debug[name])
    except UcError as e:
        raise BackendError(f"loading the snapshot's registers into the emulator: {e}") from None
    _check_segments(backend, segs)


def _set_selectors(backend, selectors: dict[str, int]) -> None:
    """Write the visible selector of segment registers, their hidden parts
    kept (set_initial_state loads FS and GS from scratch descriptors in
    protected mode; the register API would reload them from the guest's GDT)."""
    uc = backend.uc
    offset = CsBase.find()
    if offset is None:
        raise BackendError("the emulator's segment state cannot be written (unicorn's context is not laid out as "
                           "kvmrig expects)")
    ctx = uc.context_save()
    ptr = ctypes.cast(ctx.context, ctypes.c_void_p).value
    for name, selector in selectors.items():
        at = offset + (_CACHE_ORDER.index(name) - 1) * CsBase.stride - 8
        ctypes.memmove(ptr + at, struct.pack("<I", selector), 4)
    uc.context_restore(ctx)


def _check_segments(backend, want: dict[str, gdt.Segment]) -> None:
    got = _segments(backend)
    for name in _CACHE_ORDER:
        w, g = want[name], got[name]
        keys = ("selector", "base", "limit", "dpl", "db", "l", "g", "present", "s")
        if w.s:   # loading a code/data descriptor sets its accessed bit
            same_type = (w.type | 1) == (g.type | 1)
        else:
            same_type = w.type == g.type
        if not same_type or any(getattr(w, k) != getattr(g, k) for k in keys):
            raise cpustate.CrossError(
                f"the emulator cannot hold the snapshot's {name} as it is (selector {w.selector:#x}, base "
                f"{w.base:#x}, limit {w.limit:#x}, type {w.type:#x}); loading it gave selector {g.selector:#x}, "
                f"base {g.base:#x}, limit {g.limit:#x}, type {g.type:#x}")
