/*
 * rom-write.S - firmware running from flash that (wrongly) writes to it.
 *
 * Mode: protected. Linked and loaded at 0xffff0000, the start of a 64 KiB
 * ROM region (rom: true), and started there.
 *
 * What it does: reads a signature from its own ROM (reads of a ROM work),
 * copies it to RAM at 0x1000 (writes to RAM work), then increments a
 * "boot_count" variable that lives in the ROM - the classic bug of a global
 * left in flash. A write to a ROM region is not memory: the CPU's access
 * becomes an MMIO exit that nothing claims, and the run ends there.
 * What the rig checks: exit mmio, eax == 0x214d4f52 ("ROM!" as a u32),
 * RAM 0x1000 = "ROM!".
 */
        .code32
        .text
        .globl  _start
_start:
        mov     signature, %eax         # read from ROM: fine
        mov     %eax, 0x1000            # write to RAM: fine
        incl    boot_count              # write to ROM: MMIO exit, run ends
        hlt                             # not reached
1:      jmp     1b

signature:
        .ascii  "ROM!"
boot_count:
        .long   0
