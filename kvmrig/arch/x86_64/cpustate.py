"""An x86_64 CPU's state by architectural name, shared by both backends.

A snapshot holds the CPU state of the backend that took it, in that
backend's own shape (KVM's structs, unicorn's context). To load it on the
other backend each backend also writes this neutral form (snapshot header
`cpu.arch`): general registers, every segment register with its hidden part,
GDTR/IDTR, CR0-CR8, EFER, XCR0 (not the APIC base: neither backend
gives the guest an APIC it could move), the MSRs it has, the x87/SSE/AVX registers,
DR0-DR7, and what is pending that a register cannot say (an exception, an
NMI, an interrupt being injected, SMM). The loading backend maps what both
have; state only one has is converted or refused by name (CrossError), never
dropped silently:

* an MSR the loader lacks is refused unless it still holds the value the
  taking backend's vCPU was created with (`msrs_as_created`: the guest did
  not change it, so the loader's own reset value stands in for it); the
  TSC is a clock that runs on and is not carried;
* pending events and SMM are refused (the emulator has no event injection);
  the interrupt shadow after STI/MOV SS is dropped: the emulator delivers no
  interrupts it could hold off;
* armed guest breakpoints (DR7 enable bits), XSAVE components beyond
  x87/SSE/AVX in use, and an XCR0 the loader cannot set are refused.

The XSAVE image layout is Intel SDM vol.1 13.4 (legacy region = FXSAVE
64-bit format, 10.5.1) and 13.5 (AVX at offset 576); KVM_GET_XSAVE returns
the standard (non-compacted) form.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from kvmrig.arch.x86_64 import gdt
from kvmrig.arch.x86_64.regs import GPRS  # noqa: F401 - re-exported for callers

SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
SEGMENT_FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")
CONTROL_NAMES = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")

MSR_TSC = 0x10
MSR_TSC_ADJUST = 0x3B
MSR_APIC_BASE = 0x1B
MSR_EFER = 0xC0000080
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
# Carried as registers (segments, control), never as MSRs of the neutral form.
NOT_MSRS = frozenset({MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_APIC_BASE})
# Clocks: they run on by themselves, so no backend can carry their value over.
CLOCKS = frozenset({MSR_TSC, MSR_TSC_ADJUST})
MSR_NAMES = {
    0x10: "IA32_TSC", 0x1B: "IA32_APIC_BASE", 0x3A: "IA32_FEATURE_CONTROL", 0x3B: "IA32_TSC_ADJUST",
    0x48: "IA32_SPEC_CTRL", 0x8B: "IA32_BIOS_SIGN_ID", 0x174: "IA32_SYSENTER_CS", 0x175: "IA32_SYSENTER_ESP",
    0x176: "IA32_SYSENTER_EIP", 0x17A: "IA32_MCG_STATUS", 0x1A0: "IA32_MISC_ENABLE", 0x1D9: "IA32_DEBUGCTL",
    0x277: "IA32_PAT", 0x6E0: "IA32_TSC_DEADLINE", 0xC0000081: "STAR", 0xC0000082: "LSTAR",
    0xC0000083: "CSTAR", 0xC0000084: "SFMASK", 0xC0000102: "KERNEL_GS_BASE", 0xC0000103: "TSC_AUX",
}

FCW_INIT = 0x037F
MXCSR_INIT = 0x1F80
XSAVE_HEADER = 512
XSAVE_YMMH = 576
XFEATURE_X87, XFEATURE_SSE, XFEATURE_AVX = 1, 2, 4
XFEATURE_NAMES = {3: "MPX BNDREGS", 4: "MPX BNDCSR", 5: "AVX-512 opmask", 6: "AVX-512 ZMM_Hi256",
                  7: "AVX-512 Hi16_ZMM", 9: "PKRU", 17: "AMX TILECFG", 18: "AMX TILEDATA"}
DR7_ENABLES = 0xFF   # L0/G0 .. L3/G3


class CrossError(ValueError):
    """State of one backend that the other cannot hold; the message names it."""


def msr_name(index: int) -> str:
    name = MSR_NAMES.get(index)
    return f"MSR {index:#x}" + (f" ({name})" if name else "")


@dataclass
class Fpu:
    """The x87/SSE/AVX registers. `ftw` is FXSAVE's abridged tag (bit i set:
    physical register i is not empty); `st` are ST(0)..ST(7) as 80-bit
    numbers (ST order, as FXSAVE stores them); `ymmh` the upper 128 bits of
    YMM0..15."""

    fcw: int = FCW_INIT
    fsw: int = 0
    ftw: int = 0
    fop: int = 0
    fip: int = 0
    fdp: int = 0
    mxcsr: int = MXCSR_INIT
    st: list[int] = field(default_factory=lambda: [0] * 8)
    xmm: list[int] = field(default_factory=lambda: [0] * 16)
    ymmh: list[int] = field(default_factory=lambda: [0] * 16)


@dataclass
class X86Arch:
    """An x86_64 CPU by architectural name (ints); see the module doc."""

    regs: dict[str, int]                        # GPRS, rip, rflags
    segments: dict[str, gdt.Segment]            # SEGMENT_NAMES
    gdt: tuple[int, int]                        # (base, limit)
    idt: tuple[int, int]
    control: dict[str, int]                     # CONTROL_NAMES
    msrs: dict[int, int]
    msrs_as_created: frozenset[int]
    fpu: Fpu
    debug: dict[str, int]                       # dr0..dr3, dr6, dr7
    xcr0: int | None = 1                        # None: the backend cannot tell
    pending: list[str] = field(default_factory=list)   # events a register cannot say


# Text (snapshot header) ---------------------------------------------------------

def to_text(a: X86Arch) -> dict[str, Any]:
    """The neutral state as JSON-ready text, numbers in hex."""
    return {
        "regs": {k: hex(v) for k, v in a.regs.items()},
        "segments": {n: {f: hex(getattr(s, f)) for f in SEGMENT_FIELDS} for n, s in a.segments.items()},
        "gdt": [hex(a.gdt[0]), hex(a.gdt[1])], "idt": [hex(a.idt[0]), hex(a.idt[1])],
        "control": {k: hex(v) for k, v in a.control.items()},
        "xcr0": None if a.xcr0 is None else hex(a.xcr0),
        "msrs": {hex(i): hex(v) for i, v in sorted(a.msrs.items())},
        "msrs_as_created": [hex(i) for i in sorted(a.msrs_as_created)],
        "fpu": {"fcw": hex(a.fpu.fcw), "fsw": hex(a.fpu.fsw), "ftw": hex(a.fpu.ftw), "fop": hex(a.fpu.fop),
                "fip": hex(a.fpu.fip), "fdp": hex(a.fpu.fdp), "mxcsr": hex(a.fpu.mxcsr),
                "st": [hex(v) for v in a.fpu.st], "xmm": [hex(v) for v in a.fpu.xmm],
                "ymmh": [hex(v) for v in a.fpu.ymmh]},
        "debug": {k: hex(v) for k, v in a.debug.items()},
        "pending": list(a.pending),
    }


def from_text(t: dict[str, Any]) -> X86Arch:
    """to_text()'s inverse; CrossError naming what is missing or malformed."""
    h = _hex
    try:
        regs = {k: h(t["regs"][k]) for k in GPRS + ("rip", "rflags")}
        segments = {n: gdt.Segment(**{f: h(t["segments"][n][f]) for f in SEGMENT_FIELDS}) for n in SEGMENT_NAMES}
        f = t["fpu"]
        fpu = Fpu(h(f["fcw"]), h(f["fsw"]), h(f["ftw"]), h(f["fop"]), h(f["fip"]), h(f["fdp"]), h(f["mxcsr"]),
                  [h(v) for v in f["st"]], [h(v) for v in f["xmm"]], [h(v) for v in f["ymmh"]])
        if (len(fpu.st), len(fpu.xmm), len(fpu.ymmh)) != (8, 16, 16):
            raise ValueError("fpu register counts")
        return X86Arch(regs, segments, (h(t["gdt"][0]), h(t["gdt"][1])), (h(t["idt"][0]), h(t["idt"][1])),
                       {k: h(t["control"][k]) for k in CONTROL_NAMES},
                       {h(i): h(v) for i, v in t["msrs"].items()},
                       frozenset(h(i) for i in t["msrs_as_created"]), fpu,
                       {k: h(t["debug"][k]) for k in ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")},
                       None if t.get("xcr0") is None else h(t["xcr0"]),
                       [str(p) for p in t.get("pending", [])])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CrossError(f"the snapshot's x86_64 register state is malformed ({type(e).__name__}: {e})") from None


def _hex(text) -> int:
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not a hex string")
    return int(text, 16)


# XSAVE --------------------------------------------------------------------------

def fpu_from_xsave(image: bytes) -> tuple[Fpu, list[str]]:
    """The x87/SSE/AVX registers of a standard-form XSAVE image, and the
    names of other components it holds in a non-init state."""
    bv = int.from_bytes(image[XSAVE_HEADER:XSAVE_HEADER + 8], "little")
    fpu = Fpu()
    if bv & XFEATURE_X87:
        fpu.fcw, fpu.fsw, fpu.ftw, fpu.fop, fpu.fip, fpu.fdp = struct.unpack_from("<HHBxHQQ", image, 0)
        fpu.st = [int.from_bytes(image[32 + 16 * i:42 + 16 * i], "little") for i in range(8)]
    if bv & (XFEATURE_SSE | XFEATURE_AVX):
        fpu.mxcsr = struct.unpack_from("<I", image, 24)[0]
    if bv & XFEATURE_SSE:
        fpu.xmm = [int.from_bytes(image[160 + 16 * i:176 + 16 * i], "little") for i in range(16)]
    if bv & XFEATURE_AVX:
        fpu.ymmh = [int.from_bytes(image[XSAVE_YMMH + 16 * i:XSAVE_YMMH + 16 + 16 * i], "little") for i in range(16)]
    others = [XFEATURE_NAMES.get(b, f"component {b}") for b in range(3, 64) if bv >> b & 1]
    return fpu, others


def xsave_with_fpu(image: bytes, fpu: Fpu) -> bytes:
    """`image` (a standard-form XSAVE image) holding `fpu` instead: the
    legacy region and AVX rewritten, XSTATE_BV saying x87 and SSE are in
    use, AVX only if an upper half is not zero. Other components stay."""
    out = bytearray(image)
    struct.pack_into("<HHBxHQQI", out, 0, fpu.fcw, fpu.fsw, fpu.ftw, fpu.fop, fpu.fip, fpu.fdp, fpu.mxcsr)
    for i, v in enumerate(fpu.st):
        out[32 + 16 * i:48 + 16 * i] = v.to_bytes(10, "little") + bytes(6)
    for i, v in enumerate(fpu.xmm):
        out[160 + 16 * i:176 + 16 * i] = v.to_bytes(16, "little")
    for i, v in enumerate(fpu.ymmh):
        out[XSAVE_YMMH + 16 * i:XSAVE_YMMH + 16 + 16 * i] = v.to_bytes(16, "little")
    bv = int.from_bytes(image[XSAVE_HEADER:XSAVE_HEADER + 8], "little") | XFEATURE_X87 | XFEATURE_SSE
    bv = bv | XFEATURE_AVX if any(fpu.ymmh) else bv & ~XFEATURE_AVX
    out[XSAVE_HEADER:XSAVE_HEADER + 8] = bv.to_bytes(8, "little")
    return bytes(out)


def full_tag_word(abridged: int) -> int:
    """A 16-bit tag word with empty (11) exactly where the abridged tag says
    so (a backend that keeps only "empty or not", like QEMU's, reads it)."""
    return sum((0 if abridged >> i & 1 else 3) << (2 * i) for i in range(8))


def abridged_tag(full: int) -> int:
    """FXSAVE's abridged tag byte from a full tag word."""
    return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


# Segments in QEMU's cache layout (flags = descriptor bits 32..63) ---------------

def segment_from_flags(selector: int, base: int, limit: int, flags: int) -> gdt.Segment:
    """A segment register from (selector, base, byte limit, descriptor flags),
    as QEMU's segment cache and unicorn's TR/LDTR tuples hold it."""
    present = flags >> 15 & 1
    return gdt.Segment(base=base, limit=limit, selector=selector, type=flags >> 8 & 0xF, present=present,
                       dpl=flags >> 13 & 3, db=flags >> 22 & 1, s=flags >> 12 & 1, l=flags >> 21 & 1,
                       g=flags >> 23 & 1, avl=flags >> 20 & 1, unusable=0 if present else 1)


# Checks both loaders share ---------------------------------------------------------

def refuse_pending(a: X86Arch, loader: str) -> None:
    """CrossError if `a` has events pending that `loader` cannot carry."""
    if a.pending:
        raise CrossError(f"the snapshot has {', '.join(a.pending)} pending, which the {loader} backend cannot "
                         "carry over; save the point where nothing is pending")


def changed_msrs(a: X86Arch) -> dict[int, int]:
    """The MSRs of `a` the guest changed from the taking backend's created
    values (the others stand in for the loader's own), clocks left out."""
    return {i: v for i, v in a.msrs.items()
            if i not in a.msrs_as_created and i not in CLOCKS and i not in NOT_MSRS}
