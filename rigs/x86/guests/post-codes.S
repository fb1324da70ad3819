/*
 * post-codes.S - firmware progress codes on the POST port 0x80.
 *
 * Mode: real. Loaded at 0x1000; the entry is below 64 KiB, so the runner
 * starts it with CS = 0, IP = 0x1000.
 *
 * What it does: three "boot stages", each a subroutine that writes its POST
 * code to port 0x80 (as PC firmware does for a diagnostic display): 0x01
 * CPU init, 0x02 memory init, 0x10 boot. Then halts. No device claims port
 * 0x80, so kvmrig records each write.
 * What the rig checks: exit hlt, port_writes on 0x80 == [0x01, 0x02, 0x10].
 */
        .set    POST_PORT, 0x80

        .code16
        .text
        .globl  _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ss
        mov     $0x1000, %sp            # stack just below the code
        call    cpu_init
        call    memory_init
        call    boot
        hlt
1:      jmp     1b                      # not reached: HLT ends the run

cpu_init:
        mov     $0x01, %al
        out     %al, $POST_PORT
        ret
memory_init:
        mov     $0x02, %al
        out     %al, $POST_PORT
        ret
boot:
        mov     $0x10, %al
        out     %al, $POST_PORT
        ret
