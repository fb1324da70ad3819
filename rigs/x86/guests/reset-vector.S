/*
 * reset-vector.S - a 4 KiB "ROM" that starts at the x86 reset vector.
 *
 * Mode: reset (16-bit real mode, the CPU's power-on state).
 * Linked at IP 0xf000, loaded at 0xfffff000: the top 4 KiB of a 64 KiB ROM
 * at 0xffff0000. At power-on CS has selector 0xf000 but base 0xffff0000 and
 * IP is 0xfff0, so the first instruction is fetched from 0xfffffff0 (Intel
 * SDM vol. 3, 9.1.4 "First Instruction Executed"). From there a NEAR jump
 * keeps CS's base and lands in this ROM; a far jump would reload CS with a
 * base of 0xf0000 (selector << 4), which here is plain RAM.
 *
 * What it does: copies the string "RESET OK" out of the ROM (read through a
 * CS: override, since CS is the only segment whose base points at the ROM)
 * into RAM at 0x500, stores the CS selector at 0x510, sets BX = 0x55aa and
 * halts.
 * What the rig checks: exit hlt, bx == 0x55aa, RAM 0x500 = "RESET OK",
 * RAM 0x510 = 0xf000 (the power-on CS selector).
 */
        .code16
        .text
        .globl  _start
_start:                                 # IP 0xf000 = physical 0xfffff000
        cli
        cld
        xor     %ax, %ax
        mov     %ax, %ds                # DS and ES base 0: the RAM at 0
        mov     %ax, %es
        mov     $banner, %si            # offset inside the ROM segment
        mov     $0x500, %di
        mov     $banner_len, %cx
1:      mov     %cs:(%si), %al          # read the ROM through CS (base 0xffff0000)
        stosb                           # ES:DI <- AL, DI++
        inc     %si
        loop    1b
        mov     %cs, %ax                # the power-on selector: 0xf000
        mov     %ax, 0x510
        mov     $0x55aa, %bx            # "done" marker the rig checks
        hlt
2:      jmp     2b                      # not reached: HLT ends the run

banner: .ascii  "RESET OK"
        .set    banner_len, . - banner

        .org    0xff0                   # IP 0xfff0 = physical 0xfffffff0
reset_vector:
        jmp     _start                  # near jump: CS base stays 0xffff0000
        .org    0x1000, 0x00            # fill the ROM's last 4 KiB to the end
