/*
 * real-mode.S - a 512-byte boot sector in 16-bit real mode.
 *
 * Mode: real. Loaded at 0x7c00 where a PC BIOS loads a boot sector; since
 * the entry is below 64 KiB the runner starts it with CS = 0, IP = 0x7c00.
 *
 * What it does: the usual boot-sector prologue (far jump to normalise CS:IP,
 * zero the segment registers, a stack below the sector), then calls a subroutine
 * that sums 1..100, stores the sum right after the sector (0x7e00) and halts.
 * The sector ends with the 0x55 0xaa boot signature.
 * What the rig checks: exit hlt, ax == 5050, cx == 0, sp back at 0x7c00
 * (CALL/RET balanced), RAM 0x7e00 = 5050 (u16), RAM 0x7dfe = 55 aa.
 */
        .code16
        .text
        .globl  _start
_start:
        ljmp    $0, $start              # CS:IP = 0000:7c05 whatever the loader used
start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp            # stack grows down from the sector
                                        # (interrupts stay off: no PIC here)

        mov     $100, %cx
        call    sum_to                  # AX = 1 + 2 + ... + CX
        mov     %ax, 0x7e00             # just past the 512-byte sector
        hlt
1:      jmp     1b                      # not reached: HLT ends the run

/* sum_to: AX = CX + (CX-1) + ... + 1; leaves CX = 0. */
sum_to:
        push    %bx                     # exercise the stack a little
        xor     %bx, %bx
1:      add     %cx, %bx
        loop    1b
        mov     %bx, %ax
        pop     %bx
        ret

        .org    510
        .byte   0x55, 0xaa              # boot signature
