"""The arm64 guests of test_emu_arm64_mmu.py: their sources and the words they assemble to.

Each guest builds translation tables in RAM (0x40000000, tables from
0x40010000), sets MAIR_EL1/TCR_EL1/TTBRn_EL1, turns the MMU on and runs through
the mapping it made. The words below, with their disassembly, are what the
tests load; `test_guests_rebuild_from_their_sources` assembles SOURCES with
binutils-aarch64-linux-gnu (where installed) and checks they are exactly these
words. After editing a source, print the new words with

    python -m tests.backends.emu.arm64_mmu_guests
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PREFIX = "aarch64-linux-gnu-"
TOOLS = ("as", "ld", "objcopy", "objdump")

# Shared by every source (prepended to it): descriptor and register values, macros.
COMMON = r"""
        .equ L0, 0x40010000                 // level-0 table (TTBR0_EL1)
        .equ L1, 0x40011000                 // level-1 table
        .equ L2, 0x40012000                 // level-2 table
        .equ L3, 0x40013000                 // level-3 table
        .equ TABLE, 0x3                     // table descriptor
        .equ BLOCK, 0x701                   // block: AttrIndx 0 (normal), SH inner, AF, AP 00
        .equ DEVBLOCK, 0x0060000000000405   // block: AttrIndx 1 (device), AF, UXN, PXN
        .equ PAGE, 0x703                    // page: AttrIndx 0, SH inner, AF, AP 00 (EL1 RW)
        .equ ROPAGE, 0x783                  // page: AP 10 (EL1 read-only)
        .equ DEVPAGE, 0x0060000000000407    // page: AttrIndx 1 (device), AF, UXN, PXN
        .equ MAIR, 0xff                     // Attr0 normal write-back, Attr1 device nGnRnE
        // T0SZ 16 (48-bit VA), IRGN0/ORGN0 write-back, SH0 inner, TG0 4K, EPD1, IPS 40-bit
        .equ TCR, 0x200803510
        .macro li reg, imm                  // a 64-bit constant: movz + a movk per non-zero half-word
        movz \reg, #((\imm) & 0xffff)
        .if ((\imm) >> 16) & 0xffff
        movk \reg, #(((\imm) >> 16) & 0xffff), lsl 16
        .endif
        .if ((\imm) >> 32) & 0xffff
        movk \reg, #(((\imm) >> 32) & 0xffff), lsl 32
        .endif
        .if ((\imm) >> 48) & 0xffff
        movk \reg, #(((\imm) >> 48) & 0xffff), lsl 48
        .endif
        .endm
        .macro put table, index, desc       // table[index] = desc (x0, x1)
        li x0, \table + 8 * (\index)
        li x1, \desc
        str x1, [x0]
        .endm
        .macro mmu_on tcr, ttbr0            // MAIR, TCR, TTBR0, then SCTLR_EL1.M = 1
        li x1, MAIR
        msr mair_el1, x1
        li x1, \tcr
        msr tcr_el1, x1
        li x1, \ttbr0
        msr ttbr0_el1, x1
        isb
        mrs x1, sctlr_el1
        orr x1, x1, #1
        msr sctlr_el1, x1
        isb
        .endm
        .macro psci_off                     // PSCI SYSTEM_OFF
        mov w0, #8
        movk w0, #0x8400, lsl 16
        hvc #0
        .endm
        .macro map_low                      // L0[0] -> L1; L1[0]: 0 -> 0 device; L1[1]: identity RAM
        put L0, 0, L1 | TABLE
        put L1, 0, 0 | DEVBLOCK
        put L1, 1, 0x40000000 | BLOCK
        .endm
"""

# name -> (link address, source)
SOURCES: dict[str, tuple[int, str]] = {
    "identity": (0x40000000, r"""
// (a) An identity map (1 GiB blocks), the MMU on, then code and data run through it.
        .globl _start
_start: map_low
        mmu_on TCR, L0
        mov x19, #0                         // the MMU is on: x19 = 1 + 2 + ... + 100
        mov x4, #100
1:      add x19, x19, x4
        subs x4, x4, #1
        b.ne 1b
        li x5, 0x40008000
        str x19, [x5]
        mrs x20, sctlr_el1
        psci_off
"""),
    "alias": (0x40000000, r"""
// (b) VA 0x80000000 -> PA 0x40000000 (a 1 GiB block beside the identity map):
// data written through one mapping is read through the other, then the code
// jumps to its own alias and powers off from there.
        .globl _start
_start: map_low
        put L1, 2, 0x40000000 | BLOCK       // L1[2]: VA 0x80000000 -> PA 0x40000000
        mmu_on TCR, L0
        li x5, 0x80008008                   // the alias of PA 0x40008008
        li x6, 0x40008008                   // the same byte through the identity map
        li x19, 0x1122334455667788
        str x19, [x5]                       // write through the alias
        ldr x20, [x6]                       // read back through the identity map
        li x7, 0xcafe
        str x7, [x6, #8]                    // write PA 0x40008010 through the identity map
        ldr x21, [x5, #8]                   // read it through the alias
        adr x8, there
        li x9, 0x40000000
        sub x8, x8, x9
        li x9, 0x80000000
        add x8, x8, x9
        br x8                               // to `there` through the alias
there:  adr x22, .                          // x22 = the alias address of this instruction
        psci_off
"""),
    "high": (0x40000000, r"""
// (c) TTBR1_EL1: 4 KiB pages at VA 0xffffff2967807000 (indices 0x1fe, 0xa5, 0x13c, 7):
// data at PA 0x40009000, the PL011 at the next page, this code at the one after.
        .equ H0, 0x40014000                 // TTBR1 tables, levels 0..3
        .equ H1, 0x40015000
        .equ H2, 0x40016000
        .equ H3, 0x40017000
        .equ HI, 0xffffff2967807000
        // TCR + T1SZ 16, IRGN1/ORGN1 write-back, SH1 inner, TG1 4K (0b10), EPD1 clear
        .equ TCR_HI, (TCR & ~(1 << 23)) | (16 << 16) | (1 << 24) | (1 << 26) | (3 << 28) | (2 << 30)
        .globl _start
_start: map_low
        put H0, 0x1fe, H1 | TABLE
        put H1, 0xa5, H2 | TABLE
        put H2, 0x13c, H3 | TABLE
        put H3, 7, 0x40009000 | PAGE        // HI -> PA 0x40009000
        put H3, 8, 0x09000000 | DEVPAGE     // HI + 0x1000 -> the PL011
        put H3, 9, 0x40000000 | PAGE        // HI + 0x2000 -> this code
        li x1, H0
        msr ttbr1_el1, x1
        mmu_on TCR_HI, L0
        li x5, HI
        li x19, 0x5eed
        str x19, [x5, #0x10]                // PA 0x40009010
        ldr x20, [x5, #0x10]
        add x6, x5, #0x1000                 // the PL011 through its high mapping
        mov w7, #'h'
        strb w7, [x6]
        mov w7, #'i'
        strb w7, [x6]
        ldr w21, [x6, #0x18]                // UARTFR
        adr x8, there
        li x9, 0x40000000
        sub x8, x8, x9
        li x9, HI + 0x2000
        add x8, x8, x9
        br x8                               // on to `there` at its high address
there:  adr x22, .
        psci_off
"""),
    "readonly": (0x40000000, r"""
// (d) A read-only 4 KiB page: VA 0x80008000 -> PA 0x40008000 with AP 10. A read
// through it works, a write is a permission fault at level 3.
        .globl _start
_start: map_low
        put L1, 2, L2 | TABLE               // VA 0x80000000: level 2 ...
        put L2, 0, L3 | TABLE               // ... level 3
        put L3, 8, 0x40008000 | ROPAGE      // VA 0x80008000 -> PA 0x40008000, read-only
        mmu_on TCR, L0
        li x5, 0x80008000
        li x6, 0x40008000
        li x7, 0xbeef
        str x7, [x6, #8]                    // through the identity map: writable
        ldr x19, [x5, #8]                   // through the read-only page: allowed
        mov x20, #1
store:  str x20, [x5, #8]                   // permission fault, level 3
        mov x21, #2                         // not reached
        psci_off
"""),
    "outside": (0x40000000, r"""
// (e) A 39-bit TTBR0 range (T0SZ 25, the walk starts at level 1): VA 0x40008000
// works, VA 0x8040008000 has bit 39 set, outside the range: a translation
// fault at level 0.
        .equ TCR39, (TCR & ~0x3f) | 25
        .globl _start
_start: put L1, 0, 0 | DEVBLOCK
        put L1, 1, 0x40000000 | BLOCK
        mmu_on TCR39, L1
        li x5, 0x40008000
        ldr x19, [x5]
        li x6, 0x8040008000
load:   ldr x20, [x6]                       // translation fault, level 0
        psci_off
"""),
    "granule64k": (0x40000000, r"""
// (f) The 64 KiB granule with a 42-bit VA (T0SZ 22): the walk starts at level 2
// (512 MiB blocks); VA 0x80000000 goes on to a level-3 table of 64 KiB pages.
        .equ K2, 0x40010000                 // level-2 table (64 KiB, aligned)
        .equ K3, 0x40020000                 // level-3 table
        .equ TCR64, (TCR & ~0x3f) | 22 | (1 << 14)      // T0SZ 22, TG0 64K (0b01)
        .globl _start
_start: put K2, 0, 0 | DEVBLOCK             // VA 0: 512 MiB device block
        put K2, 2, 0x40000000 | BLOCK       // VA 0x40000000: identity, 512 MiB
        put K2, 4, K3 | TABLE               // VA 0x80000000: level 3
        put K3, 0, 0x40000000 | PAGE        // VA 0x80000000 -> PA 0x40000000, 64 KiB
        put K3, 1, 0x40010000 | PAGE        // VA 0x80010000 -> PA 0x40010000 (K2 itself)
        mmu_on TCR64, K2
        li x5, 0x80008000
        li x19, 0x6464
        str x19, [x5]                       // PA 0x40008000
        li x6, 0x40008000
        ldr x20, [x6]
        li x7, 0x80010010
        ldr x21, [x7]                       // K2[2] read through the page that maps K2
        psci_off
"""),
    "el0": (0x40000000, r"""
// (g) EL0 through the MMU: ERET to EL0 code at VA 0x80000000 + offset (a page
// EL0 may execute, AP 01), which either (x9 = 0) makes an SVC, taken at EL1
// through VBAR_EL1 = 0x40000800 (the identity map; the
// handler at +0x400 is el0-vectors), or (x9 = 1) reads VA
// 0x80008000, a page only EL1 may access: a permission fault at EL0.
        .equ EL0PAGE, 0x743                 // page: AP 01 (EL0 and EL1 read/write), AF, SH inner
        .globl _start
_start: map_low
        put L1, 2, L2 | TABLE
        put L2, 0, L3 | TABLE
        put L3, 0, 0x40000000 | EL0PAGE     // VA 0x80000000 -> this code, for EL0
        put L3, 8, 0x40008000 | PAGE        // VA 0x80008000 -> PA 0x40008000, EL1 only
        li x1, 0x40000800                   // VBAR_EL1: the handler (el0-vectors) is at +0x400
        msr vbar_el1, x1
        mmu_on TCR, L0
        msr spsr_el1, xzr                   // EL0t
        adr x8, el0
        li x1, 0x40000000
        sub x8, x8, x1
        li x1, 0x80000000
        add x8, x8, x1
        msr elr_el1, x8
        eret
el0:    li x5, 0x80008000
        cbz x9, 1f
load:   ldr x22, [x5]                       // EL1-only page: permission fault at EL0
1:      svc #1
        b .
"""),
    "el0-vectors": (0x40000c00, r"""
// The EL0 guest's handler at VBAR_EL1 + 0x400 (synchronous, from EL0 in AArch64):
// ESR_EL1, ELR_EL1 and SPSR_EL1 to x19..x21, then power off.
        .globl _start
_start: mrs x19, esr_el1
        mrs x20, elr_el1
        mrs x21, spsr_el1
        psci_off
"""),
    "tlbi": (0x40000000, r"""
// (h) Break-before-make on a 2 MiB block: VA 0x80000000 -> PA 0x40000000, two of
// its 4 KiB pieces read, the block replaced by PA 0x40200000 with one TLBI VAE1
// for its first page; then the MMU off again (the flat map).
        .globl _start
_start: map_low
        put L1, 2, L2 | TABLE               // VA 0x80000000: level 2 ...
        put L2, 0, 0x40000000 | BLOCK       // ... a 2 MiB block -> PA 0x40000000
        mmu_on TCR, L0
        li x4, 0x80000000
        li x5, 0x80008000
        ldr x19, [x4]                       // two pieces of the block in the TLB
        ldr x20, [x5]                       // PA 0x40008000
        li x0, L2
        str xzr, [x0]                       // break ...
        dsb ishst
        lsr x1, x4, #12
        tlbi vae1, x1                       // ... invalidate the block (by its first page) ...
        dsb ish
        li x1, 0x40200000 | BLOCK
        str x1, [x0]                        // ... make: VA 0x80000000 -> PA 0x40200000
        dsb ishst
        isb
        ldr x21, [x5]                       // PA 0x40208000
        mrs x1, sctlr_el1
        bic x1, x1, #1
        msr sctlr_el1, x1                   // the MMU off
        isb
        li x6, 0x40208000
        ldr x22, [x6]                       // the same word through the flat map
        psci_off
"""),
    "preset": (0x40000000, r"""
// (i) The MMU on from the first instruction: the rig sets MAIR_EL1, TCR_EL1,
// TTBR0_EL1 and SCTLR_EL1 and loads the tables (those of map_low plus L1[2],
// VA 0x80000000 -> PA 0x40000000) as images.
        .globl _start
_start: li x5, 0x80008000
        ldr x19, [x5]                       // PA 0x40008000
        psci_off
"""),
}


def missing_tools() -> str | None:
    """Why the guests cannot be assembled here, or None."""
    missing = [PREFIX + t for t in TOOLS if shutil.which(PREFIX + t) is None]
    return f"needs {', '.join(missing)} (binutils-aarch64-linux-gnu)" if missing else None


def build(name: str) -> tuple[bytes, dict[int, str]]:
    """Assemble and link one guest: (its .text, disassembly by address)."""
    at, source = SOURCES[name]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "guest.S").write_text(COMMON + source)

        def run(*cmd: str) -> str:
            return subprocess.run(cmd, cwd=d, check=True, capture_output=True, text=True).stdout
        run(PREFIX + "as", "--fatal-warnings", "guest.S", "-o", "guest.o")
        run(PREFIX + "ld", "--build-id=none", "-nostdlib", "-static", "-N", f"-Ttext={at:#x}", "-e", "_start",
            "guest.o", "-o", "guest.elf")
        run(PREFIX + "objcopy", "-O", "binary", "-j", ".text", "guest.elf", "guest.bin")
        listing = run(PREFIX + "objdump", "-d", "--no-show-raw-insn", "guest.elf")
        text = (d / "guest.bin").read_bytes()
    insns, labels = {}, {}
    for line in listing.splitlines():
        if m := re.match(r"\s+([0-9a-f]+):\s+(.*)$", line):
            insns[int(m.group(1), 16)] = re.sub(r"\s+", " ", re.sub(r" <[^>]+>", "", m.group(2).split("//")[0])).strip()
        elif m := re.match(r"([0-9a-f]+) <(\w+)>:", line):
            labels[int(m.group(1), 16)] = m.group(2)
    return text, {a: (f"{labels[a]}: " if labels.get(a, "_start") != "_start" else "") + t for a, t in insns.items()}


def words_source(name: str) -> str:
    """The WORDS entry of one guest, as Python source."""
    at = SOURCES[name][0]
    text, listing = build(name)
    lines = [f'    "{name}": [']
    for i in range(0, len(text), 4):
        word = int.from_bytes(text[i:i + 4], "little")
        lines.append(f"        {word:#010x},  # {(at + i) & 0xFFF:03x}: {listing.get(at + i, '?')}")
    return "\n".join(lines + ["    ],"])


def image(name: str) -> str:
    """A guest as the hex an inline rig image takes."""
    return " ".join(w.to_bytes(4, "little").hex() for w in WORDS[name])


# name -> the guest's instruction words (the offset in the page, then the disassembly)
WORDS: dict[str, list[int]] = {
    "identity": [
        0xd2800000,  # 000: mov x0, #0x0
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd2820061,  # 008: mov x1, #0x1003
        0xf2a80021,  # 00c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 010: str x1, [x0]
        0xd2820000,  # 014: mov x0, #0x1000
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 01c: mov x1, #0x405
        0xf2e00c01,  # 020: movk x1, #0x60, lsl #48
        0xf9000001,  # 024: str x1, [x0]
        0xd2820100,  # 028: mov x0, #0x1008
        0xf2a80020,  # 02c: movk x0, #0x4001, lsl #16
        0xd280e021,  # 030: mov x1, #0x701
        0xf2a80001,  # 034: movk x1, #0x4000, lsl #16
        0xf9000001,  # 038: str x1, [x0]
        0xd2801fe1,  # 03c: mov x1, #0xff
        0xd518a201,  # 040: msr mair_el1, x1
        0xd286a201,  # 044: mov x1, #0x3510
        0xf2a01001,  # 048: movk x1, #0x80, lsl #16
        0xf2c00041,  # 04c: movk x1, #0x2, lsl #32
        0xd5182041,  # 050: msr tcr_el1, x1
        0xd2800001,  # 054: mov x1, #0x0
        0xf2a80021,  # 058: movk x1, #0x4001, lsl #16
        0xd5182001,  # 05c: msr ttbr0_el1, x1
        0xd5033fdf,  # 060: isb
        0xd5381001,  # 064: mrs x1, sctlr_el1
        0xb2400021,  # 068: orr x1, x1, #0x1
        0xd5181001,  # 06c: msr sctlr_el1, x1
        0xd5033fdf,  # 070: isb
        0xd2800013,  # 074: mov x19, #0x0
        0xd2800c84,  # 078: mov x4, #0x64
        0x8b040273,  # 07c: add x19, x19, x4
        0xf1000484,  # 080: subs x4, x4, #0x1
        0x54ffffc1,  # 084: b.ne 4000007c
        0xd2900005,  # 088: mov x5, #0x8000
        0xf2a80005,  # 08c: movk x5, #0x4000, lsl #16
        0xf90000b3,  # 090: str x19, [x5]
        0xd5381014,  # 094: mrs x20, sctlr_el1
        0x52800100,  # 098: mov w0, #0x8
        0x72b08000,  # 09c: movk w0, #0x8400, lsl #16
        0xd4000002,  # 0a0: hvc #0x0
    ],
    "alias": [
        0xd2800000,  # 000: mov x0, #0x0
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd2820061,  # 008: mov x1, #0x1003
        0xf2a80021,  # 00c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 010: str x1, [x0]
        0xd2820000,  # 014: mov x0, #0x1000
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 01c: mov x1, #0x405
        0xf2e00c01,  # 020: movk x1, #0x60, lsl #48
        0xf9000001,  # 024: str x1, [x0]
        0xd2820100,  # 028: mov x0, #0x1008
        0xf2a80020,  # 02c: movk x0, #0x4001, lsl #16
        0xd280e021,  # 030: mov x1, #0x701
        0xf2a80001,  # 034: movk x1, #0x4000, lsl #16
        0xf9000001,  # 038: str x1, [x0]
        0xd2820200,  # 03c: mov x0, #0x1010
        0xf2a80020,  # 040: movk x0, #0x4001, lsl #16
        0xd280e021,  # 044: mov x1, #0x701
        0xf2a80001,  # 048: movk x1, #0x4000, lsl #16
        0xf9000001,  # 04c: str x1, [x0]
        0xd2801fe1,  # 050: mov x1, #0xff
        0xd518a201,  # 054: msr mair_el1, x1
        0xd286a201,  # 058: mov x1, #0x3510
        0xf2a01001,  # 05c: movk x1, #0x80, lsl #16
        0xf2c00041,  # 060: movk x1, #0x2, lsl #32
        0xd5182041,  # 064: msr tcr_el1, x1
        0xd2800001,  # 068: mov x1, #0x0
        0xf2a80021,  # 06c: movk x1, #0x4001, lsl #16
        0xd5182001,  # 070: msr ttbr0_el1, x1
        0xd5033fdf,  # 074: isb
        0xd5381001,  # 078: mrs x1, sctlr_el1
        0xb2400021,  # 07c: orr x1, x1, #0x1
        0xd5181001,  # 080: msr sctlr_el1, x1
        0xd5033fdf,  # 084: isb
        0xd2900105,  # 088: mov x5, #0x8008
        0xf2b00005,  # 08c: movk x5, #0x8000, lsl #16
        0xd2900106,  # 090: mov x6, #0x8008
        0xf2a80006,  # 094: movk x6, #0x4000, lsl #16
        0xd28ef113,  # 098: mov x19, #0x7788
        0xf2aaacd3,  # 09c: movk x19, #0x5566, lsl #16
        0xf2c66893,  # 0a0: movk x19, #0x3344, lsl #32
        0xf2e22453,  # 0a4: movk x19, #0x1122, lsl #48
        0xf90000b3,  # 0a8: str x19, [x5]
        0xf94000d4,  # 0ac: ldr x20, [x6]
        0xd2995fc7,  # 0b0: mov x7, #0xcafe
        0xf90004c7,  # 0b4: str x7, [x6, #8]
        0xf94004b5,  # 0b8: ldr x21, [x5, #8]
        0x10000108,  # 0bc: adr x8, 400000dc
        0xd2800009,  # 0c0: mov x9, #0x0
        0xf2a80009,  # 0c4: movk x9, #0x4000, lsl #16
        0xcb090108,  # 0c8: sub x8, x8, x9
        0xd2800009,  # 0cc: mov x9, #0x0
        0xf2b00009,  # 0d0: movk x9, #0x8000, lsl #16
        0x8b090108,  # 0d4: add x8, x8, x9
        0xd61f0100,  # 0d8: br x8
        0x10000016,  # 0dc: there: adr x22, 400000dc
        0x52800100,  # 0e0: mov w0, #0x8
        0x72b08000,  # 0e4: movk w0, #0x8400, lsl #16
        0xd4000002,  # 0e8: hvc #0x0
    ],
    "high": [
        0xd2800000,  # 000: mov x0, #0x0
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd2820061,  # 008: mov x1, #0x1003
        0xf2a80021,  # 00c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 010: str x1, [x0]
        0xd2820000,  # 014: mov x0, #0x1000
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 01c: mov x1, #0x405
        0xf2e00c01,  # 020: movk x1, #0x60, lsl #48
        0xf9000001,  # 024: str x1, [x0]
        0xd2820100,  # 028: mov x0, #0x1008
        0xf2a80020,  # 02c: movk x0, #0x4001, lsl #16
        0xd280e021,  # 030: mov x1, #0x701
        0xf2a80001,  # 034: movk x1, #0x4000, lsl #16
        0xf9000001,  # 038: str x1, [x0]
        0xd289fe00,  # 03c: mov x0, #0x4ff0
        0xf2a80020,  # 040: movk x0, #0x4001, lsl #16
        0xd28a0061,  # 044: mov x1, #0x5003
        0xf2a80021,  # 048: movk x1, #0x4001, lsl #16
        0xf9000001,  # 04c: str x1, [x0]
        0xd28aa500,  # 050: mov x0, #0x5528
        0xf2a80020,  # 054: movk x0, #0x4001, lsl #16
        0xd28c0061,  # 058: mov x1, #0x6003
        0xf2a80021,  # 05c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 060: str x1, [x0]
        0xd28d3c00,  # 064: mov x0, #0x69e0
        0xf2a80020,  # 068: movk x0, #0x4001, lsl #16
        0xd28e0061,  # 06c: mov x1, #0x7003
        0xf2a80021,  # 070: movk x1, #0x4001, lsl #16
        0xf9000001,  # 074: str x1, [x0]
        0xd28e0700,  # 078: mov x0, #0x7038
        0xf2a80020,  # 07c: movk x0, #0x4001, lsl #16
        0xd292e061,  # 080: mov x1, #0x9703
        0xf2a80001,  # 084: movk x1, #0x4000, lsl #16
        0xf9000001,  # 088: str x1, [x0]
        0xd28e0800,  # 08c: mov x0, #0x7040
        0xf2a80020,  # 090: movk x0, #0x4001, lsl #16
        0xd28080e1,  # 094: mov x1, #0x407
        0xf2a12001,  # 098: movk x1, #0x900, lsl #16
        0xf2e00c01,  # 09c: movk x1, #0x60, lsl #48
        0xf9000001,  # 0a0: str x1, [x0]
        0xd28e0900,  # 0a4: mov x0, #0x7048
        0xf2a80020,  # 0a8: movk x0, #0x4001, lsl #16
        0xd280e061,  # 0ac: mov x1, #0x703
        0xf2a80001,  # 0b0: movk x1, #0x4000, lsl #16
        0xf9000001,  # 0b4: str x1, [x0]
        0xd2880001,  # 0b8: mov x1, #0x4000
        0xf2a80021,  # 0bc: movk x1, #0x4001, lsl #16
        0xd5182021,  # 0c0: msr ttbr1_el1, x1
        0xd2801fe1,  # 0c4: mov x1, #0xff
        0xd518a201,  # 0c8: msr mair_el1, x1
        0xd286a201,  # 0cc: mov x1, #0x3510
        0xf2b6a201,  # 0d0: movk x1, #0xb510, lsl #16
        0xf2c00041,  # 0d4: movk x1, #0x2, lsl #32
        0xd5182041,  # 0d8: msr tcr_el1, x1
        0xd2800001,  # 0dc: mov x1, #0x0
        0xf2a80021,  # 0e0: movk x1, #0x4001, lsl #16
        0xd5182001,  # 0e4: msr ttbr0_el1, x1
        0xd5033fdf,  # 0e8: isb
        0xd5381001,  # 0ec: mrs x1, sctlr_el1
        0xb2400021,  # 0f0: orr x1, x1, #0x1
        0xd5181001,  # 0f4: msr sctlr_el1, x1
        0xd5033fdf,  # 0f8: isb
        0xd28e0005,  # 0fc: mov x5, #0x7000
        0xf2acf005,  # 100: movk x5, #0x6780, lsl #16
        0xf2dfe525,  # 104: movk x5, #0xff29, lsl #32
        0xf2ffffe5,  # 108: movk x5, #0xffff, lsl #48
        0xd28bddb3,  # 10c: mov x19, #0x5eed
        0xf90008b3,  # 110: str x19, [x5, #16]
        0xf94008b4,  # 114: ldr x20, [x5, #16]
        0x914004a6,  # 118: add x6, x5, #0x1, lsl #12
        0x52800d07,  # 11c: mov w7, #0x68
        0x390000c7,  # 120: strb w7, [x6]
        0x52800d27,  # 124: mov w7, #0x69
        0x390000c7,  # 128: strb w7, [x6]
        0xb94018d5,  # 12c: ldr w21, [x6, #24]
        0x10000148,  # 130: adr x8, 40000158
        0xd2800009,  # 134: mov x9, #0x0
        0xf2a80009,  # 138: movk x9, #0x4000, lsl #16
        0xcb090108,  # 13c: sub x8, x8, x9
        0xd2920009,  # 140: mov x9, #0x9000
        0xf2acf009,  # 144: movk x9, #0x6780, lsl #16
        0xf2dfe529,  # 148: movk x9, #0xff29, lsl #32
        0xf2ffffe9,  # 14c: movk x9, #0xffff, lsl #48
        0x8b090108,  # 150: add x8, x8, x9
        0xd61f0100,  # 154: br x8
        0x10000016,  # 158: there: adr x22, 40000158
        0x52800100,  # 15c: mov w0, #0x8
        0x72b08000,  # 160: movk w0, #0x8400, lsl #16
        0xd4000002,  # 164: hvc #0x0
    ],
    "readonly": [
        0xd2800000,  # 000: mov x0, #0x0
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd2820061,  # 008: mov x1, #0x1003
        0xf2a80021,  # 00c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 010: str x1, [x0]
        0xd2820000,  # 014: mov x0, #0x1000
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 01c: mov x1, #0x405
        0xf2e00c01,  # 020: movk x1, #0x60, lsl #48
        0xf9000001,  # 024: str x1, [x0]
        0xd2820100,  # 028: mov x0, #0x1008
        0xf2a80020,  # 02c: movk x0, #0x4001, lsl #16
        0xd280e021,  # 030: mov x1, #0x701
        0xf2a80001,  # 034: movk x1, #0x4000, lsl #16
        0xf9000001,  # 038: str x1, [x0]
        0xd2820200,  # 03c: mov x0, #0x1010
        0xf2a80020,  # 040: movk x0, #0x4001, lsl #16
        0xd2840061,  # 044: mov x1, #0x2003
        0xf2a80021,  # 048: movk x1, #0x4001, lsl #16
        0xf9000001,  # 04c: str x1, [x0]
        0xd2840000,  # 050: mov x0, #0x2000
        0xf2a80020,  # 054: movk x0, #0x4001, lsl #16
        0xd2860061,  # 058: mov x1, #0x3003
        0xf2a80021,  # 05c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 060: str x1, [x0]
        0xd2860800,  # 064: mov x0, #0x3040
        0xf2a80020,  # 068: movk x0, #0x4001, lsl #16
        0xd290f061,  # 06c: mov x1, #0x8783
        0xf2a80001,  # 070: movk x1, #0x4000, lsl #16
        0xf9000001,  # 074: str x1, [x0]
        0xd2801fe1,  # 078: mov x1, #0xff
        0xd518a201,  # 07c: msr mair_el1, x1
        0xd286a201,  # 080: mov x1, #0x3510
        0xf2a01001,  # 084: movk x1, #0x80, lsl #16
        0xf2c00041,  # 088: movk x1, #0x2, lsl #32
        0xd5182041,  # 08c: msr tcr_el1, x1
        0xd2800001,  # 090: mov x1, #0x0
        0xf2a80021,  # 094: movk x1, #0x4001, lsl #16
        0xd5182001,  # 098: msr ttbr0_el1, x1
        0xd5033fdf,  # 09c: isb
        0xd5381001,  # 0a0: mrs x1, sctlr_el1
        0xb2400021,  # 0a4: orr x1, x1, #0x1
        0xd5181001,  # 0a8: msr sctlr_el1, x1
        0xd5033fdf,  # 0ac: isb
        0xd2900005,  # 0b0: mov x5, #0x8000
        0xf2b00005,  # 0b4: movk x5, #0x8000, lsl #16
        0xd2900006,  # 0b8: mov x6, #0x8000
        0xf2a80006,  # 0bc: movk x6, #0x4000, lsl #16
        0xd297dde7,  # 0c0: mov x7, #0xbeef
        0xf90004c7,  # 0c4: str x7, [x6, #8]
        0xf94004b3,  # 0c8: ldr x19, [x5, #8]
        0xd2800034,  # 0cc: mov x20, #0x1
        0xf90004b4,  # 0d0: store: str x20, [x5, #8]
        0xd2800055,  # 0d4: mov x21, #0x2
        0x52800100,  # 0d8: mov w0, #0x8
        0x72b08000,  # 0dc: movk w0, #0x8400, lsl #16
        0xd4000002,  # 0e0: hvc #0x0
    ],
    "outside": [
        0xd2820000,  # 000: mov x0, #0x1000
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 008: mov x1, #0x405
        0xf2e00c01,  # 00c: movk x1, #0x60, lsl #48
        0xf9000001,  # 010: str x1, [x0]
        0xd2820100,  # 014: mov x0, #0x1008
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd280e021,  # 01c: mov x1, #0x701
        0xf2a80001,  # 020: movk x1, #0x4000, lsl #16
        0xf9000001,  # 024: str x1, [x0]
        0xd2801fe1,  # 028: mov x1, #0xff
        0xd518a201,  # 02c: msr mair_el1, x1
        0xd286a321,  # 030: mov x1, #0x3519
        0xf2a01001,  # 034: movk x1, #0x80, lsl #16
        0xf2c00041,  # 038: movk x1, #0x2, lsl #32
        0xd5182041,  # 03c: msr tcr_el1, x1
        0xd2820001,  # 040: mov x1, #0x1000
        0xf2a80021,  # 044: movk x1, #0x4001, lsl #16
        0xd5182001,  # 048: msr ttbr0_el1, x1
        0xd5033fdf,  # 04c: isb
        0xd5381001,  # 050: mrs x1, sctlr_el1
        0xb2400021,  # 054: orr x1, x1, #0x1
        0xd5181001,  # 058: msr sctlr_el1, x1
        0xd5033fdf,  # 05c: isb
        0xd2900005,  # 060: mov x5, #0x8000
        0xf2a80005,  # 064: movk x5, #0x4000, lsl #16
        0xf94000b3,  # 068: ldr x19, [x5]
        0xd2900006,  # 06c: mov x6, #0x8000
        0xf2a80006,  # 070: movk x6, #0x4000, lsl #16
        0xf2c01006,  # 074: movk x6, #0x80, lsl #32
        0xf94000d4,  # 078: load: ldr x20, [x6]
        0x52800100,  # 07c: mov w0, #0x8
        0x72b08000,  # 080: movk w0, #0x8400, lsl #16
        0xd4000002,  # 084: hvc #0x0
    ],
    "granule64k": [
        0xd2800000,  # 000: mov x0, #0x0
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 008: mov x1, #0x405
        0xf2e00c01,  # 00c: movk x1, #0x60, lsl #48
        0xf9000001,  # 010: str x1, [x0]
        0xd2800200,  # 014: mov x0, #0x10
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd280e021,  # 01c: mov x1, #0x701
        0xf2a80001,  # 020: movk x1, #0x4000, lsl #16
        0xf9000001,  # 024: str x1, [x0]
        0xd2800400,  # 028: mov x0, #0x20
        0xf2a80020,  # 02c: movk x0, #0x4001, lsl #16
        0xd2800061,  # 030: mov x1, #0x3
        0xf2a80041,  # 034: movk x1, #0x4002, lsl #16
        0xf9000001,  # 038: str x1, [x0]
        0xd2800000,  # 03c: mov x0, #0x0
        0xf2a80040,  # 040: movk x0, #0x4002, lsl #16
        0xd280e061,  # 044: mov x1, #0x703
        0xf2a80001,  # 048: movk x1, #0x4000, lsl #16
        0xf9000001,  # 04c: str x1, [x0]
        0xd2800100,  # 050: mov x0, #0x8
        0xf2a80040,  # 054: movk x0, #0x4002, lsl #16
        0xd280e061,  # 058: mov x1, #0x703
        0xf2a80021,  # 05c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 060: str x1, [x0]
        0xd2801fe1,  # 064: mov x1, #0xff
        0xd518a201,  # 068: msr mair_el1, x1
        0xd28ea2c1,  # 06c: mov x1, #0x7516
        0xf2a01001,  # 070: movk x1, #0x80, lsl #16
        0xf2c00041,  # 074: movk x1, #0x2, lsl #32
        0xd5182041,  # 078: msr tcr_el1, x1
        0xd2800001,  # 07c: mov x1, #0x0
        0xf2a80021,  # 080: movk x1, #0x4001, lsl #16
        0xd5182001,  # 084: msr ttbr0_el1, x1
        0xd5033fdf,  # 088: isb
        0xd5381001,  # 08c: mrs x1, sctlr_el1
        0xb2400021,  # 090: orr x1, x1, #0x1
        0xd5181001,  # 094: msr sctlr_el1, x1
        0xd5033fdf,  # 098: isb
        0xd2900005,  # 09c: mov x5, #0x8000
        0xf2b00005,  # 0a0: movk x5, #0x8000, lsl #16
        0xd28c8c93,  # 0a4: mov x19, #0x6464
        0xf90000b3,  # 0a8: str x19, [x5]
        0xd2900006,  # 0ac: mov x6, #0x8000
        0xf2a80006,  # 0b0: movk x6, #0x4000, lsl #16
        0xf94000d4,  # 0b4: ldr x20, [x6]
        0xd2800207,  # 0b8: mov x7, #0x10
        0xf2b00027,  # 0bc: movk x7, #0x8001, lsl #16
        0xf94000f5,  # 0c0: ldr x21, [x7]
        0x52800100,  # 0c4: mov w0, #0x8
        0x72b08000,  # 0c8: movk w0, #0x8400, lsl #16
        0xd4000002,  # 0cc: hvc #0x0
    ],
    "el0": [
        0xd2800000,  # 000: mov x0, #0x0
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd2820061,  # 008: mov x1, #0x1003
        0xf2a80021,  # 00c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 010: str x1, [x0]
        0xd2820000,  # 014: mov x0, #0x1000
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 01c: mov x1, #0x405
        0xf2e00c01,  # 020: movk x1, #0x60, lsl #48
        0xf9000001,  # 024: str x1, [x0]
        0xd2820100,  # 028: mov x0, #0x1008
        0xf2a80020,  # 02c: movk x0, #0x4001, lsl #16
        0xd280e021,  # 030: mov x1, #0x701
        0xf2a80001,  # 034: movk x1, #0x4000, lsl #16
        0xf9000001,  # 038: str x1, [x0]
        0xd2820200,  # 03c: mov x0, #0x1010
        0xf2a80020,  # 040: movk x0, #0x4001, lsl #16
        0xd2840061,  # 044: mov x1, #0x2003
        0xf2a80021,  # 048: movk x1, #0x4001, lsl #16
        0xf9000001,  # 04c: str x1, [x0]
        0xd2840000,  # 050: mov x0, #0x2000
        0xf2a80020,  # 054: movk x0, #0x4001, lsl #16
        0xd2860061,  # 058: mov x1, #0x3003
        0xf2a80021,  # 05c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 060: str x1, [x0]
        0xd2860000,  # 064: mov x0, #0x3000
        0xf2a80020,  # 068: movk x0, #0x4001, lsl #16
        0xd280e861,  # 06c: mov x1, #0x743
        0xf2a80001,  # 070: movk x1, #0x4000, lsl #16
        0xf9000001,  # 074: str x1, [x0]
        0xd2860800,  # 078: mov x0, #0x3040
        0xf2a80020,  # 07c: movk x0, #0x4001, lsl #16
        0xd290e061,  # 080: mov x1, #0x8703
        0xf2a80001,  # 084: movk x1, #0x4000, lsl #16
        0xf9000001,  # 088: str x1, [x0]
        0xd2810001,  # 08c: mov x1, #0x800
        0xf2a80001,  # 090: movk x1, #0x4000, lsl #16
        0xd518c001,  # 094: msr vbar_el1, x1
        0xd2801fe1,  # 098: mov x1, #0xff
        0xd518a201,  # 09c: msr mair_el1, x1
        0xd286a201,  # 0a0: mov x1, #0x3510
        0xf2a01001,  # 0a4: movk x1, #0x80, lsl #16
        0xf2c00041,  # 0a8: movk x1, #0x2, lsl #32
        0xd5182041,  # 0ac: msr tcr_el1, x1
        0xd2800001,  # 0b0: mov x1, #0x0
        0xf2a80021,  # 0b4: movk x1, #0x4001, lsl #16
        0xd5182001,  # 0b8: msr ttbr0_el1, x1
        0xd5033fdf,  # 0bc: isb
        0xd5381001,  # 0c0: mrs x1, sctlr_el1
        0xb2400021,  # 0c4: orr x1, x1, #0x1
        0xd5181001,  # 0c8: msr sctlr_el1, x1
        0xd5033fdf,  # 0cc: isb
        0xd518401f,  # 0d0: msr spsr_el1, xzr
        0x10000128,  # 0d4: adr x8, 400000f8
        0xd2800001,  # 0d8: mov x1, #0x0
        0xf2a80001,  # 0dc: movk x1, #0x4000, lsl #16
        0xcb010108,  # 0e0: sub x8, x8, x1
        0xd2800001,  # 0e4: mov x1, #0x0
        0xf2b00001,  # 0e8: movk x1, #0x8000, lsl #16
        0x8b010108,  # 0ec: add x8, x8, x1
        0xd5184028,  # 0f0: msr elr_el1, x8
        0xd69f03e0,  # 0f4: eret
        0xd2900005,  # 0f8: el0: mov x5, #0x8000
        0xf2b00005,  # 0fc: movk x5, #0x8000, lsl #16
        0xb4000049,  # 100: cbz x9, 40000108
        0xf94000b6,  # 104: load: ldr x22, [x5]
        0xd4000021,  # 108: svc #0x1
        0x14000000,  # 10c: b 4000010c
    ],
    "el0-vectors": [
        0xd5385213,  # c00: mrs x19, esr_el1
        0xd5384034,  # c04: mrs x20, elr_el1
        0xd5384015,  # c08: mrs x21, spsr_el1
        0x52800100,  # c0c: mov w0, #0x8
        0x72b08000,  # c10: movk w0, #0x8400, lsl #16
        0xd4000002,  # c14: hvc #0x0
    ],
    "tlbi": [
        0xd2800000,  # 000: mov x0, #0x0
        0xf2a80020,  # 004: movk x0, #0x4001, lsl #16
        0xd2820061,  # 008: mov x1, #0x1003
        0xf2a80021,  # 00c: movk x1, #0x4001, lsl #16
        0xf9000001,  # 010: str x1, [x0]
        0xd2820000,  # 014: mov x0, #0x1000
        0xf2a80020,  # 018: movk x0, #0x4001, lsl #16
        0xd28080a1,  # 01c: mov x1, #0x405
        0xf2e00c01,  # 020: movk x1, #0x60, lsl #48
        0xf9000001,  # 024: str x1, [x0]
        0xd2820100,  # 028: mov x0, #0x1008
        0xf2a80020,  # 02c: movk x0, #0x4001, lsl #16
        0xd280e021,  # 030: mov x1, #0x701
        0xf2a80001,  # 034: movk x1, #0x4000, lsl #16
        0xf9000001,  # 038: str x1, [x0]
        0xd2820200,  # 03c: mov x0, #0x1010
        0xf2a80020,  # 040: movk x0, #0x4001, lsl #16
        0xd2840061,  # 044: mov x1, #0x2003
        0xf2a80021,  # 048: movk x1, #0x4001, lsl #16
        0xf9000001,  # 04c: str x1, [x0]
        0xd2840000,  # 050: mov x0, #0x2000
        0xf2a80020,  # 054: movk x0, #0x4001, lsl #16
        0xd280e021,  # 058: mov x1, #0x701
        0xf2a80001,  # 05c: movk x1, #0x4000, lsl #16
        0xf9000001,  # 060: str x1, [x0]
        0xd2801fe1,  # 064: mov x1, #0xff
        0xd518a201,  # 068: msr mair_el1, x1
        0xd286a201,  # 06c: mov x1, #0x3510
        0xf2a01001,  # 070: movk x1, #0x80, lsl #16
        0xf2c00041,  # 074: movk x1, #0x2, lsl #32
        0xd5182041,  # 078: msr tcr_el1, x1
        0xd2800001,  # 07c: mov x1, #0x0
        0xf2a80021,  # 080: movk x1, #0x4001, lsl #16
        0xd5182001,  # 084: msr ttbr0_el1, x1
        0xd5033fdf,  # 088: isb
        0xd5381001,  # 08c: mrs x1, sctlr_el1
        0xb2400021,  # 090: orr x1, x1, #0x1
        0xd5181001,  # 094: msr sctlr_el1, x1
        0xd5033fdf,  # 098: isb
        0xd2800004,  # 09c: mov x4, #0x0
        0xf2b00004,  # 0a0: movk x4, #0x8000, lsl #16
        0xd2900005,  # 0a4: mov x5, #0x8000
        0xf2b00005,  # 0a8: movk x5, #0x8000, lsl #16
        0xf9400093,  # 0ac: ldr x19, [x4]
        0xf94000b4,  # 0b0: ldr x20, [x5]
        0xd2840000,  # 0b4: mov x0, #0x2000
        0xf2a80020,  # 0b8: movk x0, #0x4001, lsl #16
        0xf900001f,  # 0bc: str xzr, [x0]
        0xd5033a9f,  # 0c0: dsb ishst
        0xd34cfc81,  # 0c4: lsr x1, x4, #12
        0xd5088721,  # 0c8: tlbi vae1, x1
        0xd5033b9f,  # 0cc: dsb ish
        0xd280e021,  # 0d0: mov x1, #0x701
        0xf2a80401,  # 0d4: movk x1, #0x4020, lsl #16
        0xf9000001,  # 0d8: str x1, [x0]
        0xd5033a9f,  # 0dc: dsb ishst
        0xd5033fdf,  # 0e0: isb
        0xf94000b5,  # 0e4: ldr x21, [x5]
        0xd5381001,  # 0e8: mrs x1, sctlr_el1
        0x927ff821,  # 0ec: and x1, x1, #0xfffffffffffffffe
        0xd5181001,  # 0f0: msr sctlr_el1, x1
        0xd5033fdf,  # 0f4: isb
        0xd2900006,  # 0f8: mov x6, #0x8000
        0xf2a80406,  # 0fc: movk x6, #0x4020, lsl #16
        0xf94000d6,  # 100: ldr x22, [x6]
        0x52800100,  # 104: mov w0, #0x8
        0x72b08000,  # 108: movk w0, #0x8400, lsl #16
        0xd4000002,  # 10c: hvc #0x0
    ],
    "preset": [
        0xd2900005,  # 000: mov x5, #0x8000
        0xf2b00005,  # 004: movk x5, #0x8000, lsl #16
        0xf94000b3,  # 008: ldr x19, [x5]
        0x52800100,  # 00c: mov w0, #0x8
        0x72b08000,  # 010: movk w0, #0x8400, lsl #16
        0xd4000002,  # 014: hvc #0x0
    ],
}


if __name__ == "__main__":
    if why := missing_tools():
        sys.exit(why)
    print("\n".join(words_source(name) for name in SOURCES))
