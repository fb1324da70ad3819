/*
 * debugcon.S - print through the debug console port 0xe9 (Bochs/QEMU style).
 *
 * Mode: protected. Loaded at 0x1000 (the entry).
 *
 * What it does: probes for the port the way firmware does (a read of 0xe9
 * returns 0xe9 when the debug console is there); if present, writes each
 * byte of a string to port 0xe9 and sets EAX = 1; if absent, prints
 * nothing and sets EAX = 0. Halts either way.
 * What the rig checks: exit hlt, eax == 1 (the probe saw the device),
 * console contains "Hello from debugcon".
 */
        .set    DEBUGCON, 0xe9

        .code32
        .text
        .globl  _start
_start:
        in      $DEBUGCON, %al
        cmp     $DEBUGCON, %al
        jne     absent
        mov     $message, %esi          # flat segments: a linear address
        cld
1:      lodsb                           # AL = *ESI++
        test    %al, %al
        jz      2f
        out     %al, $DEBUGCON
        jmp     1b
2:      mov     $1, %eax
        hlt
absent:
        xor     %eax, %eax
        hlt
3:      jmp     3b                      # not reached: HLT ends the run

message:
        .asciz  "Hello from debugcon (port 0xe9)\n"
