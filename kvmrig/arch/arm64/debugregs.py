"""arm64 hardware breakpoint and watchpoint registers, as pure functions.

Field names and positions follow the Arm ARM (DDI 0487), D13.3:
DBGBCR<n>_EL1 / DBGBVR<n>_EL1 (breakpoints) and DBGWCR<n>_EL1 /
DBGWVR<n>_EL1 (watchpoints). The backend copies the words built here into
struct kvm_guest_debug_arch (dbg_bcr[], dbg_bvr[], dbg_wcr[], dbg_wvr[], 16
of each: arch/arm64/include/uapi/asm/kvm.h) and passes it to
KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_HW; KVM loads them as given.

Beyond the encoders this module holds the two rules a debugger gets wrong
most easily:

- `plan_watch` covers EXACTLY the bytes asked for, with the fewest
  registers: a byte run inside one doubleword uses BAS, aligned power-of-two
  blocks of 16 bytes or more use MASK, anything else is split (a 2-byte
  watch at 0x1007 is two registers, never a silently shortened one).
- `watch_hit` attributes a watchpoint exit to the watch whose bytes OVERLAP
  the access the FAR points into, not only to the watch that starts at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# --- Field values (Arm ARM D13.3: DBGBCR<n>_EL1, DBGWCR<n>_EL1) ---

# PMC (breakpoints) / PAC (watchpoints), with HMC=0 and SSC=0b00: which ELs
# match. QEMU's KVM gdbstub (target/arm/hyp_gdbstub.c) programs 0b11 for
# both; Linux's KVM selftests (debug-exceptions.c) use 0b01 for EL1-only
# guests. KVM itself builds nothing: it loads userspace's words verbatim.
PMC_EL1 = 0b01
PMC_EL0 = 0b10
PMC_EL1_EL0 = 0b11          # our default: a rig's guest may drop to EL0

# BT, DBGBCR bits [23:20]: breakpoint type.
BT_UNLINKED_ADDR = 0b0000   # unlinked instruction address match
BT_LINKED_ADDR = 0b0001
BT_UNLINKED_MISMATCH = 0b0100

# LSC, DBGWCR bits [4:3]: which accesses match (0b00 is reserved).
LSC_LOAD = 0b01
LSC_STORE = 0b10
LSC_BOTH = 0b11

# HwSlot.kind (kvmrig.backends.base) -> LSC.
ACCESS_LSC = {"read": LSC_LOAD, "write": LSC_STORE, "access": LSC_BOTH}

# BAS for an A64 instruction breakpoint: all four bytes of the word (DBGBCR:
# any other value with an A64 address match is CONSTRAINED UNPREDICTABLE).
BAS_A64 = 0b1111
BAS_DOUBLEWORD = 0xFF

MASK_MIN = 3                # MASK 0b00001 and 0b00010 are reserved
MASK_MAX = 31               # "only objects up to 2GB can be watched"
MAX_SLOTS = 16              # KVM_ARM_MAX_DBG_REGS; the CPU has 2..16 of each


def _fit(value: int, width: int, name: str) -> int:
    if not isinstance(value, int) or not 0 <= value < (1 << width):
        raise ValueError(f"{name}={value!r} does not fit its {width}-bit field")
    return value


# --- Control registers ---

def bcr(enable: bool = True, pmc: int = PMC_EL1_EL0, bas: int = BAS_A64,
        bt: int = BT_UNLINKED_ADDR, hmc: int = 0, ssc: int = 0, lbn: int = 0) -> int:
    """DBGBCR<n>_EL1 (Arm ARM D13.3, DBGBCR<n>_EL1).

    E bit 0, PMC [2:1], BAS [8:5], HMC 13, SSC [15:14], LBN [19:16],
    BT [23:20]; bits [4:3] and [12:9] are RES0. The defaults make a plain
    unlinked address-match breakpoint for A64 code at EL1 and EL0: 0x1e7.
    """
    return (int(bool(enable))
            | _fit(pmc, 2, "PMC") << 1
            | _fit(bas, 4, "BAS") << 5
            | _fit(hmc, 1, "HMC") << 13
            | _fit(ssc, 2, "SSC") << 14
            | _fit(lbn, 4, "LBN") << 16
            | _fit(bt, 4, "BT") << 20)


def _contiguous(bas: int) -> bool:
    """True when the set bits of `bas` form one run (and there is one)."""
    if bas == 0:
        return False
    run = bas >> ((bas & -bas).bit_length() - 1)
    return run & (run + 1) == 0


def wcr(enable: bool, pac: int, lsc: int, bas: int, mask: int = 0,
        hmc: int = 0, ssc: int = 0, lbn: int = 0, wt: int = 0) -> int:
    """DBGWCR<n>_EL1 (Arm ARM D13.3, DBGWCR<n>_EL1).

    E bit 0, PAC [2:1], LSC [4:3], BAS [12:5], HMC 13, SSC [15:14],
    LBN [19:16], WT 20, MASK [28:24]; [23:21] and [31:29] are RES0.
    An 8-byte write watch at EL1/EL0 is 0x1ff7.

    Refused (ValueError) rather than left CONSTRAINED UNPREDICTABLE: an
    enabled watch with LSC 0b00; a BAS whose set bits are not one contiguous
    run ("the valid values for BAS are nonzero binary numbers all of whose
    set bits are contiguous"); MASK 1 or 2 (reserved); a MASK with a BAS
    other than 0xff.
    """
    _fit(lsc, 2, "LSC")
    _fit(bas, 8, "BAS")
    _fit(mask, 5, "MASK")
    if enable:
        if lsc == 0:
            raise ValueError("LSC=0b00 is reserved: a watchpoint must match loads, stores or both")
        if not _contiguous(bas):
            raise ValueError(f"BAS={bas:#04x} is not one contiguous run of bytes (Arm ARM, DBGWCR<n>_EL1.BAS)")
    if mask and not MASK_MIN <= mask <= MASK_MAX:
        raise ValueError(f"MASK={mask} is reserved (valid: 0, or {MASK_MIN}..{MASK_MAX})")
    if mask and bas != BAS_DOUBLEWORD:
        raise ValueError(f"MASK={mask} needs BAS=0xff, not {bas:#04x}")
    return (int(bool(enable))
            | _fit(pac, 2, "PAC") << 1
            | lsc << 3
            | bas << 5
            | _fit(hmc, 1, "HMC") << 13
            | _fit(ssc, 2, "SSC") << 14
            | _fit(lbn, 4, "LBN") << 16
            | _fit(wt, 1, "WT") << 20
            | mask << 24)


# --- Value registers ---

def _va(addr: int, lva: bool, align: int, what: str) -> int:
    """Check `addr` is a value DBGBVR/DBGWVR can hold, and return it.

    Both registers hold VA[48:2] (VA[52:2] with FEAT_LVA) and bits [1:0]
    are RES0. The bits above the VA field are RESS: software must program
    them all to the value of the top VA bit (bit 48, or 52 with FEAT_LVA),
    i.e. the register holds the sign-extended address. An address that is
    not already sign-extended that way could never match, so it is refused
    instead of being silently rewritten into another address.
    """
    if not isinstance(addr, int) or not 0 <= addr < 1 << 64:
        raise ValueError(f"{what} address {addr!r} is not a 64-bit address")
    top = 52 if lva else 48
    upper = addr >> top                           # bits [63:top]
    if upper not in (0, (1 << (64 - top)) - 1):
        raise ValueError(
            f"{what} address {addr:#x} is not sign-extended from bit {top}: bits "
            f"[63:{top + 1}] are RESS in DBG{what[0].upper()}VR and it could never match")
    if addr % align:
        raise ValueError(f"{what} address {addr:#x} must be {align}-byte aligned")
    return addr


def bvr(addr: int, lva: bool = False) -> int:
    """DBGBVR<n>_EL1 for an address-match breakpoint (Arm ARM D13.3).

    A64 instructions are word-aligned and bits [1:0] are RES0, so `addr`
    must be 4-byte aligned. Bits [63:49] (without FEAT_LVA; [63:53] with it)
    must equal bit 48 (52): a canonical address passes unchanged.
    """
    return _va(addr, lva, 4, "breakpoint")


def wvr(addr: int, lva: bool = False) -> int:
    """DBGWVR<n>_EL1 (Arm ARM D13.3), always doubleword-aligned here.

    Bits [1:0] are RES0 and the manual deprecates bit 2 = 1 (a word-aligned
    value with a 4-bit BAS), so this module only ever programs 8-byte
    aligned values and lets BAS pick the bytes. Sign extension as `bvr`.
    """
    return _va(addr, lva, 8, "watchpoint")


# --- Decoding back (used by watch_hit, and by anyone checking a plan) ---

@dataclass(frozen=True, slots=True)
class BcrFields:
    e: int
    pmc: int
    bas: int
    hmc: int
    ssc: int
    lbn: int
    bt: int


@dataclass(frozen=True, slots=True)
class WcrFields:
    e: int
    pac: int
    lsc: int
    bas: int
    hmc: int
    ssc: int
    lbn: int
    wt: int
    mask: int


def decode_bcr(word: int) -> BcrFields:
    return BcrFields(e=word & 1, pmc=(word >> 1) & 3, bas=(word >> 5) & 0xF,
                     hmc=(word >> 13) & 1, ssc=(word >> 14) & 3,
                     lbn=(word >> 16) & 0xF, bt=(word >> 20) & 0xF)


def decode_wcr(word: int) -> WcrFields:
    return WcrFields(e=word & 1, pac=(word >> 1) & 3, lsc=(word >> 3) & 3,
                     bas=(word >> 5) & 0xFF, hmc=(word >> 13) & 1,
                     ssc=(word >> 14) & 3, lbn=(word >> 16) & 0xF,
                     wt=(word >> 20) & 1, mask=(word >> 24) & 0x1F)


def watched_range(wvr_word: int, wcr_word: int) -> tuple[int, int]:
    """(start, length) of the bytes one register pair watches.

    MASK != 0: the 2**MASK-byte block containing DBGWVR. Otherwise the BAS
    bytes of the doubleword at DBGWVR (DBGWCR.BAS; must be contiguous).
    """
    f = decode_wcr(wcr_word)
    if f.mask:
        size = 1 << f.mask
        return wvr_word & ~(size - 1), size
    if not f.bas:
        return wvr_word, 0
    low = (f.bas & -f.bas).bit_length() - 1
    return (wvr_word & ~7) + low, bin(f.bas).count("1")


# --- Planning ---

@dataclass(frozen=True, slots=True)
class BreakReg:
    """One breakpoint register pair: the words, and the address it matches."""

    bvr: int
    bcr: int
    addr: int


@dataclass(frozen=True, slots=True)
class WatchReg:
    """One watchpoint register pair and exactly the bytes it watches."""

    wvr: int
    wcr: int
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def plan_break(addr: int, pmc: int = PMC_EL1_EL0, lva: bool = False) -> BreakReg:
    """The register pair for an unlinked A64 instruction breakpoint."""
    return BreakReg(bvr=bvr(addr, lva), bcr=bcr(pmc=pmc), addr=addr)


def _pieces(addr: int, length: int) -> list[tuple[int, int, int]]:
    """Split [addr, addr+length) into (start, length, MASK) pieces.

    The split is minimal: every register covers either a byte run inside one
    doubleword (BAS) or an aligned 2**k block, 8 <= 2**k <= 2**31 (MASK, or
    BAS=0xff for k=3). The first piece of an unaligned range and the last
    piece of a range ending inside a doubleword can only be BAS runs, and
    the aligned middle is split greedily into the largest aligned blocks,
    which is the canonical (fewest-blocks) dyadic decomposition.
    """
    if not isinstance(length, int) or length <= 0:
        raise ValueError(f"watch length must be a positive number of bytes, not {length!r}")
    if not isinstance(addr, int) or addr < 0 or addr + length > 1 << 64:
        raise ValueError(f"watch range {addr!r}+{length!r} leaves the 64-bit address space")
    end = addr + length
    pieces: list[tuple[int, int, int]] = []
    pos = addr
    while pos < end:
        if pos % 8 or end - pos < 8:
            stop = min(end, (pos & ~7) + 8)
            pieces.append((pos, stop - pos, 0))
            pos = stop
            continue
        k = MASK_MIN
        while k < MASK_MAX and pos % (1 << (k + 1)) == 0 and pos + (1 << (k + 1)) <= end:
            k += 1
        pieces.append((pos, 1 << k, k if k > MASK_MIN else 0))
        pos += 1 << k
    return pieces


def count_watch_regs(addr: int, length: int) -> int:
    """How many watchpoint registers `plan_watch(addr, length, ...)` needs."""
    return len(_pieces(addr, length))


def plan_watch(addr: int, length: int, access: str, pac: int = PMC_EL1_EL0,
               lva: bool = False) -> list[WatchReg]:
    """Registers that watch exactly [addr, addr+length) for `access`.

    `access` is a HwSlot kind: "read", "write" or "access". Pieces inside
    one doubleword use BAS (12 bytes at 0x1004 -> BAS 0xf0 at 0x1000 and
    BAS 0xff at 0x1008); an aligned 8-byte piece uses BAS 0xff with MASK 0
    (equivalent to MASK 3, and the form Linux and QEMU program); aligned
    power-of-two blocks of 16 bytes..2 GiB use MASK with BAS 0xff. The
    caller checks the count against the CPU's watchpoints (ID_AA64DFR0_EL1
    .WRPs + 1, as KVM reports it) before arming anything.
    """
    if access not in ACCESS_LSC:
        raise ValueError(f"watch access must be one of {sorted(ACCESS_LSC)}, not {access!r}")
    lsc = ACCESS_LSC[access]
    regs = []
    for start, size, mask in _pieces(addr, length):
        if mask:
            base, bas = start, BAS_DOUBLEWORD
        else:
            base = start & ~7
            bas = ((1 << size) - 1) << (start - base)
        regs.append(WatchReg(wvr=wvr(base, lva), wcr=wcr(True, pac, lsc, bas, mask),
                             start=start, length=size))
    return regs


# --- Attributing a debug exit ---

def bp_hit(breaks: Sequence[BreakReg | int], pc: int) -> int | None:
    """Index of the breakpoint whose address is `pc` (the ELR/PC of the exit)."""
    for i, b in enumerate(breaks):
        if (b.bvr if isinstance(b, BreakReg) else b) == pc:
            return i
    return None


def _ranges(item: WatchReg | Sequence[WatchReg], write: bool | None) -> list[tuple[int, int]]:
    regs = [item] if isinstance(item, WatchReg) else list(item)
    out = []
    for r in regs:
        f = decode_wcr(r.wcr)
        if not f.e or (write is True and not f.lsc & LSC_STORE) or (write is False and not f.lsc & LSC_LOAD):
            continue
        start, size = watched_range(r.wvr, r.wcr)
        if size:
            out.append((start, start + size))
    return out


def watch_hit(plans: Sequence[WatchReg | Sequence[WatchReg]], far: int,
              access_size: int = 8, *, write: bool | None = None,
              block: int = 8) -> int | None:
    """Index in `plans` of the watchpoint a watchpoint exit belongs to.

    Each item of `plans` is one watchpoint: a WatchReg, or the list
    `plan_watch` returned for it. Ranges are decoded from the wvr/wcr words.

    What the FAR holds (Arm ARMv8 D2.10.5 "Determining the memory location
    that caused a Watchpoint exception"): not necessarily a watched address.
    For an ordinary load or store it lies between the lowest address the
    access touched and the highest watched address it touched, inside a
    naturally aligned power-of-two block (no larger than the DC ZVA block)
    that holds a watched byte. For a data-cache maintenance instruction
    such as DC ZVA it is any address the instruction touched (for DC ZVA,
    possibly the block start), which may even lie above the watched bytes.

    The rule here, generous but checkable: a watch is hit when its bytes
    overlap the window [far rounded down to `block`, that + `block`) joined
    with [far, far + access_size). For a load/store of `access_size` bytes
    this window always contains the highest watched byte touched (it lies
    between far and the end of the access), so the true watch is never
    missed; QEMU's first-byte-only check misses a store into the middle of
    a watched range. Among hits, a watch containing far wins, then the one
    nearest to far, then the first listed. `write` (ESR WnR) drops watches
    whose LSC cannot match that direction.

    Limits: pass the instruction's real access size for wider accesses (16
    for LDP/STP of X registers, up to 64 for LD4/ST4 of Q registers), and
    `block` = DC ZVA block size (4 << DCZID_EL0.BS) to cover DC ZVA. Two
    watches within one window are told apart only by distance, which can
    pick the wrong one when a single access touches both; tagged addresses
    (TBI) are compared as given.
    """
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of two, not {block!r}")
    base = far & ~(block - 1)
    lo, hi = min(base, far), max(base + block, far + max(access_size, 1))
    best: tuple[int, int] | None = None
    for index, item in enumerate(plans):
        score = None
        for start, end in _ranges(item, write):
            if start <= far < end:
                dist = 0
            elif start < hi and lo < end:
                dist = start - far if start > far else far - end + 1
            else:
                continue
            score = dist if score is None else min(score, dist)
        if score is not None and (best is None or score < best[0]):
            best = (score, index)
    return None if best is None else best[1]


# Slots as a backend arms them -------------------------------------------

# Watchpoint attribution window (watch_hit): the largest ordinary access is
# an LDP/STP of two X registers (16 bytes); DC ZVA may report any address of
# its block, at most 2 KiB (DCZID_EL0.BS <= 9).
WATCH_ACCESS = 16
DC_ZVA_MAX_BLOCK = 2048


def watch_slot(watches: list[tuple[int, WatchReg]], far: int, write: bool | None,
               cache_op: bool = False) -> int | None:
    """The slot (index in the set_debug list) of the watch a watchpoint exit at `far` belongs to.

    Any access that OVERLAPS a watched range counts (watch_hit): the
    window of an ordinary load/store (up to an LDP/STP of two X registers), or
    for a cache maintenance instruction (ESR CM = 1, e.g. DC ZVA, whose FAR may
    be anywhere in its block) the largest DC ZVA block.
    """
    regs = [w for _, w in watches]
    block = DC_ZVA_MAX_BLOCK if cache_op else 8
    index = watch_hit(regs, far, WATCH_ACCESS, write=write, block=block)
    return None if index is None else watches[index][0]


def plan_slots(slots: list) -> tuple[list[tuple[int, BreakReg]],
                                             list[tuple[int, WatchReg]]]:
    """Break and watch register pairs for the machine's slots, each tagged with its slot index."""
    breaks: list[tuple[int, BreakReg]] = []
    watches: list[tuple[int, WatchReg]] = []
    for i, slot in enumerate(slots):
        try:
            if slot.kind == "exec":
                breaks.append((i, plan_break(slot.addr)))
                continue
            plan = plan_watch(slot.addr, slot.length, slot.kind)
        except ValueError as e:
            raise ValueError(f"debug slot {i} ({slot.kind} at {slot.addr:#x}): {e}") from None
        if len(plan) != 1:
            raise ValueError(f"watch slot {i} ({slot.addr:#x}, {slot.length} bytes) needs {len(plan)} "
                               "watchpoint registers; the machine layer must split it first")
        watches.append((i, plan[0]))
    return breaks, watches


def debug_words(breaks, watches, disabled=frozenset()) -> tuple[list[int], list[int], list[int], list[int]]:
    """(bcr, bvr, wcr, wvr) lists for KVM_SET_GUEST_DEBUG; slots in `disabled` get E = 0."""
    bcr = [0 if i in disabled else b.bcr for i, b in breaks]
    bvr = [b.bvr for _, b in breaks]
    wcr = [0 if i in disabled else w.wcr for i, w in watches]
    wvr = [w.wvr for _, w in watches]
    return bcr, bvr, wcr, wvr
