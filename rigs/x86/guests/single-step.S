/*
 * single-step.S - a guest small enough to count its instructions by hand.
 *
 * Mode: long. Loaded at 0x1000 (the entry).
 *
 * What it does: EAX = 4 + 3 + 2 + 1 = 10 with the LOOP instruction
 * (decrement RCX, jump while it is not zero), then halts.
 *
 *     0x1000  mov  $4, %ecx          1 instruction
 *     0x1005  xor  %eax, %eax        1
 *     0x1007  next: add %ecx, %eax   4 turns x 2 instructions = 8
 *     0x1009        loop next
 *     0x100b  hlt                    1 (the last instruction executed)
 *                                   --
 *                                   11
 *
 * What the rig checks: exactly 11 instructions executed (`steps`, which
 * counts the final HLT) and the result; the rig's `trace: {max: 16}`
 * records every executed address, in order:
 *     0x1000 0x1005 0x1007 0x1009 0x1007 0x1009 0x1007 0x1009 0x1007 0x1009 0x100b
 */
        .code64
        .text
        .globl  _start
_start:
        mov     $4, %ecx
        xor     %eax, %eax
next:
        add     %ecx, %eax
        loop    next
        hlt
