"""VMSAv8-64 stage-1 address translation for the EL1&0 regime, as a pure function.

    translate(regime, va, access, read64) -> Translation | Fault

`regime` holds the registers the walk reads (SCTLR_EL1, TCR_EL1, TTBR0_EL1,
TTBR1_EL1, the Exception level and PSTATE.PAN of the access, the CPU's
physical address size); `read64(pa)` returns the 64-bit word at a physical
address as stored in memory (little-endian), or None where no memory is (the
walk then ends in a synchronous external abort on the walk). Nothing here
touches an emulator or a VM: the emulator backend calls it from unicorn's
TLB-fill hook, the tests call it on hand-built tables.

What is modelled (Arm ARM D5 "The AArch64 Virtual Memory System
Architecture", D5.2 translation table walks, D5.3 descriptor formats, D5.4
memory access control; the AArch64.TranslateAddress pseudocode):

* SCTLR_EL1.M = 0: the flat map, PA = VA, every access allowed; an address
  above the physical address size is an address size fault, level 0.
* VA bit 55 selects TTBR1_EL1 (1) or TTBR0_EL1 (0). TCR_EL1.T0SZ/T1SZ give
  the size of each range (64 - TxSZ bits; a TxSZ outside 16..39 is
  CONSTRAINED UNPREDICTABLE on a Cortex-A72, clamped here as QEMU does); the bits above it (up to bit 55 where TBI0/TBI1
  ignores the top byte, else bit 63) must all equal bit 55, else a
  translation fault at level 0. EPD0/EPD1 disable a range's walks
  (translation fault, level 0).
* Granules per TG0 (00 4 KiB, 10 16 KiB, 01 64 KiB) and TG1 (10 4 KiB,
  01 16 KiB, 11 64 KiB); the start level is 4 - ceil((inputsize - granule
  bits) / (granule bits - 3)), e.g. 4 KiB: 48-bit VA level 0, 39-bit level 1;
  64 KiB: 48-bit level 1, 42-bit level 2.
* Descriptors: bit 0 clear is invalid (translation fault at that level);
  table descriptors below level 3; block descriptors where the granule
  allows them (4 KiB: levels 1 and 2, 1 GiB and 2 MiB; 16 KiB: level 2,
  32 MiB; 64 KiB: level 2, 512 MiB; anything else, e.g. a level-0 block, is
  a translation fault); level 3 needs bits[1:0] = 11 (a page), 01 is
  reserved, a translation fault.
* Output addresses: bits [47:granule] of a table or leaf descriptor (the
  TTBR's BADDR [47:1] aligned to its table); bits at or above the output
  size, min(TCR_EL1.IPS, the CPU's PARange), are an address size fault at
  that level (level 0 for the TTBR).
* The access flag: AF = 0 is an access flag fault (no hardware AF update).
* Permissions: AP[2:1] with APTable[1:0] from every table on the way (ignored
  under TCR_EL1.HPD0/HPD1), UXN/PXN with XNTable/PXNTable, a page writable
  at EL0 never executable at EL1, SCTLR_EL1.WXN, PSTATE.PAN (EL1 data
  accesses to pages EL0 can access fault). A refused access is a permission
  fault at the level of the leaf.
* SCTLR_EL1.EE = 1: descriptors are big-endian.

Not modelled: stage 2 (kvmrig guests run at EL1 with none visible), the EL2
and EL3 regimes, 52-bit addresses (FEAT_LPA/LPA2), hardware AF/dirty updates
(FEAT_HAFDBS), EPAN, E0PD, the contiguous hint (a hint: ignoring it is
allowed), ASIDs and nG (they matter only to TLBs), memory attributes beyond
reporting AttrIndx, and unprivileged loads/stores (LDTR/STTR) at EL1.

Faults carry their ESR fault status code (`Fault.fsc`) and the syndrome an
EL1 guest would see (`Fault.esr()`), so an abort can be described exactly or
handed to the guest's vectors. A walk sees pages; `access_address` gives the
exact address a faulting load/store used (what FAR_EL1 holds).

tests/arch/arm64/test_mmu.py checks all of this on hand-built tables;
tests/backends/emu/test_emu_arm64_mmu.py checks it against QEMU's own walk
(AT S1E1R/W, S1E0R/W) on random tables, and the aborts against arm64 KVM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from kvmrig.arch.arm64.boot import PSTATE_EL1H_DAIF

READ, WRITE, FETCH = "read", "write", "fetch"

# Permission bits of a Translation, the same values as unicorn's UC_PROT_*.
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
PROT_ALL = PROT_READ | PROT_WRITE | PROT_EXEC
NEED = {READ: PROT_READ, WRITE: PROT_WRITE, FETCH: PROT_EXEC}

# Fault kinds, and their DFSC/IFSC base (level in bits [1:0]).
ADDRESS_SIZE = "address size fault"
TRANSLATION = "translation fault"
ACCESS_FLAG = "access flag fault"
PERMISSION = "permission fault"
WALK_ABORT = "synchronous external abort on translation table walk"
FSC_BASE = {ADDRESS_SIZE: 0x00, TRANSLATION: 0x04, ACCESS_FLAG: 0x08, PERMISSION: 0x0C, WALK_ABORT: 0x14}

# SCTLR_EL1 bits.
SCTLR_M = 1 << 0
SCTLR_WXN = 1 << 19
SCTLR_EE = 1 << 25
PSTATE_PAN = 1 << 22

M64 = (1 << 64) - 1
OA_MASK = (1 << 48) - 1             # descriptor and TTBR address bits [47:0]

# TCR_EL1.IPS -> bits (0b111 reserved: the largest).
IPS_BITS = (32, 36, 40, 42, 44, 48, 52, 52)
# PARange of ID_AA64MMFR0_EL1 -> bits.
PARANGE_BITS = (32, 36, 40, 42, 44, 48, 52)

# TG0 and TG1 encode the granule differently: field value -> granule shift.
TG0_SHIFT = {0b00: 12, 0b01: 16, 0b10: 14, 0b11: 12}   # 0b11 reserved: 4 KiB (as QEMU)
TG1_SHIFT = {0b10: 12, 0b01: 14, 0b11: 16, 0b00: 12}   # 0b00 reserved: 4 KiB
# Levels at which a block descriptor is allowed, per granule shift (no 52-bit support).
BLOCK_LEVELS = {12: (1, 2), 14: (2,), 16: (2,)}


class Regime(NamedTuple):
    """The state a stage-1 EL1&0 translation depends on."""

    sctlr: int = 0
    tcr: int = 0
    ttbr0: int = 0
    ttbr1: int = 0
    el: int = 1                 # the Exception level of the access: 0 or 1
    pan: bool = False           # PSTATE.PAN (EL1 only)
    pa_bits: int = 48           # the CPU's physical address size (ID_AA64MMFR0_EL1.PARange)

    @property
    def mmu_on(self) -> bool:
        return bool(self.sctlr & SCTLR_M)


class Translation(NamedTuple):
    """A successful translation of `va`.

    `prot` is what the access's Exception level may do on the page
    (PROT_READ | PROT_WRITE | PROT_EXEC); `size` is how much the leaf maps
    (the granule, a block, or with the MMU off 4 KiB); `level` is the leaf's
    level (None with the MMU off); `ttbr` 0 or 1 (None with the MMU off).
    """

    va: int
    pa: int
    prot: int
    size: int
    level: int | None = None
    ttbr: int | None = None
    descriptor: int | None = None

    @property
    def attr_index(self) -> int | None:
        """AttrIndx, the MAIR_EL1 byte the leaf selects (None with the MMU off)."""
        return None if self.descriptor is None else (self.descriptor >> 2) & 7


@dataclass(frozen=True, slots=True)
class Fault:
    """Why `va` could not be accessed: an MMU fault as the CPU reports it."""

    kind: str                       # TRANSLATION, ACCESS_FLAG, PERMISSION, ADDRESS_SIZE, WALK_ABORT
    level: int
    va: int
    access: str                     # READ | WRITE | FETCH
    el: int = 1
    ttbr: int | None = None
    descriptor_pa: int | None = None   # where the descriptor that faulted is (None: none was read)
    descriptor: int | None = None
    reason: str = ""                # what in the tables or registers caused it

    @property
    def fsc(self) -> int:
        """The DFSC/IFSC value (ESR_ELx.ISS[5:0])."""
        return FSC_BASE[self.kind] | (self.level & 3)

    def esr(self, to_el: int = 1) -> int:
        """The ESR_EL1 an exception for this fault would carry (Arm ARM D17,
        ESR_ELx: EC 0x20/0x21 instruction abort, 0x24/0x25 data abort from a
        lower/the same EL; IL = 1; WnR for writes; ISV = 0)."""
        same = self.el == to_el
        if self.access == FETCH:
            ec = 0x21 if same else 0x20
            iss = self.fsc
        else:
            ec = 0x25 if same else 0x24
            iss = self.fsc | (1 << 6 if self.access == WRITE else 0)
        return ec << 26 | 1 << 25 | iss

    def describe(self) -> str:
        """"permission fault at VA 0x80008000, level 3 (write at EL1: ...)"."""
        text = f"{self.kind} at VA {self.va:#x}, level {self.level} ({self.access} at EL{self.el}"
        if self.ttbr is not None:
            text += f", TTBR{self.ttbr}_EL1"
        return text + (f": {self.reason})" if self.reason else ")")


def regime_from_regs(regs: dict[str, int], pa_bits: int = 48) -> Regime:
    """A Regime from kvmrig's canonical arm64 register names (pstate gives EL and PAN)."""
    pstate = regs.get("pstate", PSTATE_EL1H_DAIF)
    return Regime(sctlr=regs.get("sctlr_el1", 0), tcr=regs.get("tcr_el1", 0), ttbr0=regs.get("ttbr0_el1", 0),
                  ttbr1=regs.get("ttbr1_el1", 0), el=(pstate >> 2) & 3, pan=bool(pstate & PSTATE_PAN),
                  pa_bits=pa_bits)


def granule_shift(tcr: int, ttbr: int) -> int:
    """log2 of the granule of TTBR0 (TG0) or TTBR1 (TG1)."""
    return TG1_SHIFT[(tcr >> 30) & 3] if ttbr else TG0_SHIFT[(tcr >> 14) & 3]


def input_bits(tcr: int, ttbr: int) -> int:
    """64 - TxSZ, with TxSZ clamped to 16..39."""
    tsz = (tcr >> (16 if ttbr else 0)) & 0x3F
    return 64 - min(max(tsz, 16), 39)


def start_level(inputsize: int, shift: int) -> int:
    """The level a walk starts at: 4 - ceil((inputsize - shift) / stride)."""
    stride = shift - 3
    return 4 - -(-(inputsize - shift) // stride)


@lru_cache(maxsize=64)
def _range(tcr: int, sel: int, pa_bits: int) -> tuple[int, int, int, int, int, int, int, int]:
    """What TCR_EL1 says about one VA range: (inputsize, top (the highest VA
    bit that is checked: 55 under TBI, else 63), EPD, granule shift, start
    level, output address bits, log2 of the first table's size, HPD)."""
    inputsize = input_bits(tcr, sel)
    shift = granule_shift(tcr, sel)
    level = start_level(inputsize, shift)
    table_bits = max(inputsize - (shift - 3) * (4 - level), 6)    # >= 64 bytes
    oa_bits = min(IPS_BITS[(tcr >> 32) & 7], pa_bits)
    return (inputsize, 55 if (tcr >> (38 if sel else 37)) & 1 else 63, (tcr >> (23 if sel else 7)) & 1,
            shift, level, oa_bits, table_bits, (tcr >> (42 if sel else 41)) & 1)


def translate(regime: Regime, va: int, access: str,
              read64: Callable[[int], int | None]) -> Translation | Fault:
    """Translate `va` for `access` ("read" | "write" | "fetch") in `regime`."""
    va &= M64
    el = regime.el
    sel = (va >> 55) & 1
    if not regime.sctlr & SCTLR_M:
        pa_bits = regime.pa_bits
        top = 55 if (regime.tcr >> (38 if sel else 37)) & 1 else 63
        if (va & ((2 << top) - 1)) >> pa_bits:
            return Fault(ADDRESS_SIZE, 0, va, access, el,
                         reason=f"the MMU is off and the address is above the {pa_bits}-bit physical address space")
        return Translation(va, va & ((1 << pa_bits) - 1), PROT_ALL, 1 << 12)

    inputsize, top, epd, shift, level, oa_bits, table_bits, hpd = _range(regime.tcr, sel, regime.pa_bits)
    # Bits [top:inputsize] must all be copies of bit 55.
    span = (1 << (top + 1 - inputsize)) - 1
    if (va >> inputsize) & span != (span if sel else 0):
        return Fault(TRANSLATION, 0, va, access, el, sel,
                     reason=f"the address is outside the {inputsize}-bit TTBR{sel}_EL1 range "
                            f"(T{sel}SZ {64 - inputsize}{', top byte ignored' if top == 55 else ''})")
    if epd:
        return Fault(TRANSLATION, 0, va, access, el, sel, reason=f"TCR_EL1.EPD{sel} disables TTBR{sel}_EL1 walks")
    ttbr = regime.ttbr1 if sel else regime.ttbr0
    base = ttbr & OA_MASK & ~((1 << table_bits) - 1)
    if base >> oa_bits:
        return Fault(ADDRESS_SIZE, 0, va, access, el, sel,
                     reason=f"TTBR{sel}_EL1 {ttbr:#x} is above the {oa_bits}-bit output address size")
    stride = shift - 3
    granule_mask = OA_MASK & ~((1 << shift) - 1)
    big_endian = regime.sctlr & SCTLR_EE
    table_attrs = 0                                   # descriptor bits [63:59] of the tables on the way
    lsb = shift + stride * (3 - level)
    index_mask = (1 << (inputsize - lsb)) - 1         # the first table may be smaller than a granule
    while True:
        at = base + ((va >> lsb) & index_mask) * 8
        desc = read64(at)
        if desc is None:
            return Fault(WALK_ABORT, level, va, access, el, sel, at,
                         reason=f"the level {level} descriptor at PA {at:#x} is outside memory")
        if big_endian:
            desc = int.from_bytes(desc.to_bytes(8, "little"), "big")
        kind = desc & 3
        if kind == 3 and level < 3:                   # a table
            base = desc & granule_mask
            if base >> oa_bits:
                return Fault(ADDRESS_SIZE, level, va, access, el, sel, at, desc,
                             f"the level {level} table descriptor at PA {at:#x} points above the "
                             f"{oa_bits}-bit output address size ({base:#x})")
            if not hpd:
                table_attrs |= desc >> 59
            level += 1
            lsb -= stride
            index_mask = (1 << stride) - 1
            continue
        break
    if not kind & 1:
        return Fault(TRANSLATION, level, va, access, el, sel, at, desc,
                     f"the level {level} descriptor at PA {at:#x} is invalid ({desc:#x})")
    if level == 3 and kind != 3:
        return Fault(TRANSLATION, level, va, access, el, sel, at, desc,
                     f"the level 3 descriptor at PA {at:#x} uses the reserved encoding 0b01 ({desc:#x})")
    if level < 3 and level not in BLOCK_LEVELS[shift]:
        return Fault(TRANSLATION, level, va, access, el, sel, at, desc,
                     f"the level {level} descriptor at PA {at:#x} is a block, which a "
                     f"{1 << (shift - 10)} KiB granule does not allow at level {level} ({desc:#x})")
    out = desc & OA_MASK & ~((1 << lsb) - 1)
    if out >> oa_bits:
        return Fault(ADDRESS_SIZE, level, va, access, el, sel, at, desc,
                     f"the level {level} descriptor at PA {at:#x} maps {out:#x}, above the "
                     f"{oa_bits}-bit output address size")
    if not desc & 0x400:
        return Fault(ACCESS_FLAG, level, va, access, el, sel, at, desc,
                     f"the level {level} descriptor at PA {at:#x} has AF = 0 ({desc:#x})")
    ap_table, xn_table, pxn_table = (table_attrs >> 2) & 3, (table_attrs >> 1) & 1, table_attrs & 1
    prot = _permissions(regime, desc, ap_table, xn_table, pxn_table)
    if not prot & NEED[access]:
        why = _refusal(regime, desc, ap_table, xn_table, pxn_table, access)
        return Fault(PERMISSION, level, va, access, el, sel, at, desc,
                     f"the level {level} descriptor at PA {at:#x} ({desc:#x}): {why}")
    return Translation(va, out | (va & ((1 << lsb) - 1)), prot, 1 << lsb, level, sel, desc)


def _permissions(regime: Regime, desc: int, ap_table: int, xn_table: int, pxn_table: int) -> int:
    """What the regime's Exception level may do on the page a leaf maps (PROT_*)."""
    ap = (desc >> 6) & 3                 # AP[2:1]
    if ap_table & 1:                     # APTable[0]: no EL0 access below
        ap &= ~1
    if ap_table & 2:                     # APTable[1]: no write access below
        ap |= 2
    el0_rw = (PROT_READ if ap & 1 else 0) | (PROT_WRITE if ap == 1 else 0)
    if regime.el == 0:
        rw = el0_rw
        xn = ((desc >> 54) & 1) | xn_table
    else:
        rw = 0 if regime.pan and el0_rw else (PROT_READ | (0 if ap & 2 else PROT_WRITE))
        xn = ((desc >> 53) & 1) | pxn_table | (el0_rw & PROT_WRITE)
    if xn or (rw & PROT_WRITE and regime.sctlr & SCTLR_WXN):
        return rw
    return rw | PROT_EXEC


def _refusal(regime: Regime, desc: int, ap_table: int, xn_table: int, pxn_table: int, access: str) -> str:
    """Why _permissions refused `access`, in words."""
    ap = (desc >> 6) & 3
    ap = (ap & ~1 if ap_table & 1 else ap) | (2 if ap_table & 2 else 0)
    el0_rw = ap & 1
    if access == FETCH:
        if regime.el == 0 and (desc >> 54) & 1 | xn_table:
            return "UXN" + (" (XNTable)" if xn_table else "") + ": not executable at EL0"
        if regime.el == 1 and (desc >> 53) & 1 | pxn_table:
            return "PXN" + (" (PXNTable)" if pxn_table else "") + ": not executable at EL1"
        if regime.el == 1 and ap == 1:
            return "AP[2:1] = 0b01: writable at EL0, so never executable at EL1"
        return "SCTLR_EL1.WXN: writable, so not executable"
    if regime.el == 1 and regime.pan and el0_rw:
        return "PSTATE.PAN: EL1 data accesses to memory EL0 can access fault"
    ap_text = f"AP[2:1] = {ap:#04b}" + (" after APTable" if ap_table else "")
    readable = el0_rw if regime.el == 0 else True
    if access == WRITE and readable:
        return f"{ap_text}: read-only at EL{regime.el}"
    return f"{ap_text}: no access at EL{regime.el}"


def table_descriptor(next_table: int, *, ap_table: int = 0, xn_table: bool = False, pxn_table: bool = False) -> int:
    """A table descriptor (for tests and guests built from Python)."""
    return (next_table & OA_MASK) | 3 | ap_table << 61 | int(xn_table) << 60 | int(pxn_table) << 59


def leaf_descriptor(out: int, *, level: int, attr_index: int = 0, ap: int = 0, sh: int = 3, af: bool = True,
                    uxn: bool = False, pxn: bool = False) -> int:
    """A block (level < 3) or page (level 3) descriptor."""
    return ((out & OA_MASK) | (3 if level == 3 else 1) | attr_index << 2 | ap << 6 | sh << 8
            | int(af) << 10 | int(pxn) << 53 | int(uxn) << 54)


# --- The address a load or store accesses --------------------------------------
#
# A translation hook sees only the page of a faulting access; the fault
# address register (FAR_EL1) holds the exact address. For the A64 load/store
# classes (Arm ARM C4.1 "Loads and Stores") the address is computed from the
# instruction and the registers before it runs, which is the state a fault
# leaves them in.

def access_address(insn: int, pc: int, xreg: Callable[[int], int]) -> tuple[int, int] | None:
    """(first byte, bytes) a load/store instruction accesses, or None for
    anything else (for SIMD structure loads/stores the bytes are one
    element's). `xreg(n)` returns Xn for n < 31 and SP for n == 31 (the
    base register of every form); register offsets read xreg(m) with
    m == 31 meaning XZR, which is handled here."""
    if insn & 0x0A000000 != 0x08000000:            # op0 x1x0: the load/store class
        return None
    size = insn >> 30
    vector = (insn >> 26) & 1
    rn = (insn >> 5) & 0x1F
    top = (insn >> 27) & 7                          # bits [29:27]
    if insn & 0x3F000000 == 0x08000000:             # exclusive / acquire-release: [Xn]
        pair = (insn >> 21) & 1 and not (insn >> 23) & 1
        n = 1 << size
        return xreg(rn) & M64, n * 2 if pair else n
    if top == 0b011 and not (insn >> 24) & 1:      # load literal: pc + imm19 * 4
        imm = _sext((insn >> 5) & 0x7FFFF, 19) << 2
        return (pc + imm) & M64, (4, 8, 16, 4)[size] if vector else (4, 8, 4, 4)[size]   # LDRSW: 4; PRFM
    if top == 0b101:                                # pairs: [Xn, #imm7 * scale]
        opc = size
        scale = (2 + opc) if vector else (2 + (opc >> 1))
        imm = _sext((insn >> 15) & 0x7F, 7) << scale
        mode = (insn >> 23) & 3                     # 00 no-allocate, 01 post, 10 offset, 11 pre
        base = xreg(rn)
        return (base if mode == 1 else base + imm) & M64, 2 << scale
    if top == 0b111:
        scale = 4 if vector and size == 0 and (insn >> 23) & 1 else size    # 128-bit Q registers
        if (insn >> 24) & 1:                        # unsigned immediate: imm12 << scale
            return (xreg(rn) + (((insn >> 10) & 0xFFF) << scale)) & M64, 1 << scale
        if not (insn >> 21) & 1:                    # imm9: unscaled, post, unprivileged, pre
            imm = _sext((insn >> 12) & 0x1FF, 9)
            base = xreg(rn)
            return (base if (insn >> 10) & 3 == 1 else base + imm) & M64, 1 << scale
        kind = (insn >> 10) & 3
        if kind == 0b10:                            # register offset
            rm = (insn >> 16) & 0x1F
            offset = 0 if rm == 31 else xreg(rm)
            option = (insn >> 13) & 7
            if option & 3 == 0b10:                  # UXTW / SXTW
                offset &= 0xFFFFFFFF
                if option & 4:
                    offset = _sext(offset, 32)
            elif option == 0b111:                   # SXTX
                offset = _sext(offset & M64, 64)
            shift = scale if (insn >> 12) & 1 else 0
            return (xreg(rn) + (offset << shift)) & M64, 1 << scale
        if kind == 0b00 and not vector:             # atomic memory operations: [Xn]
            return xreg(rn) & M64, 1 << size
        return None
    if insn & 0xBE000000 == 0x0C000000:             # SIMD structures (LD1..ST4): [Xn], one element
        return xreg(rn) & M64, 1 << ((insn >> 10) & 3)
    return None


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value
