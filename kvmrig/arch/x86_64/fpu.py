"""The x87 and SSE registers as gdb shows them, from the FXSAVE-style state
KVM_GET_FPU returns (pure; Intel SDM vol.1 8.1, 10.5.1 "FXSAVE area").

FXSAVE keeps an *abridged* tag byte (one bit per physical register: 1 =
not empty); gdb wants the full x87 tag word (two bits per physical register:
00 valid, 01 zero, 10 special, 11 empty), rebuilt here from the registers'
contents. ST(i) is physical register (TOP + i) mod 8.
"""

from __future__ import annotations

VALID, ZERO, SPECIAL, EMPTY = 0, 1, 2, 3


def _class(ext80: int) -> int:
    exponent, mantissa = (ext80 >> 64) & 0x7FFF, ext80 & ((1 << 64) - 1)
    if exponent == 0:
        return ZERO if mantissa == 0 else SPECIAL          # zero, or denormal
    if exponent == 0x7FFF or not mantissa >> 63:
        return SPECIAL                                      # infinity/NaN, or unnormal
    return VALID


def full_tag(abridged: int, fsw: int, st: list[int]) -> int:
    """The 16-bit x87 tag word from FXSAVE's abridged tag byte."""
    top = (fsw >> 11) & 7
    tag = 0
    for phys in range(8):
        if not abridged >> phys & 1:
            kind = EMPTY
        else:
            kind = _class(st[(phys - top) % 8])
        tag |= kind << (2 * phys)
    return tag


def gdb_registers(fpr: list[bytes], fcw: int, fsw: int, ftwx: int, fop: int, fip: int, fdp: int,
                  xmm: list[bytes], mxcsr: int) -> dict[str, int]:
    """st0-st7, fctrl, fstat, ftag, fiseg, fioff, foseg, fooff, fop, xmm0-15, mxcsr."""
    st = [int.from_bytes(bytes(r[:10]), "little") for r in fpr]
    out = {f"st{i}": v for i, v in enumerate(st)}
    out.update(fctrl=fcw, fstat=fsw, ftag=full_tag(ftwx, fsw, st), fop=fop & 0x7FF,
               fioff=fip & 0xFFFFFFFF, fiseg=(fip >> 32) & 0xFFFF,
               fooff=fdp & 0xFFFFFFFF, foseg=(fdp >> 32) & 0xFFFF, mxcsr=mxcsr)
    out.update({f"xmm{i}": int.from_bytes(bytes(x), "little") for i, x in enumerate(xmm)})
    return out
