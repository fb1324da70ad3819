/*
 * bp-mixed.S - one loop for a hardware breakpoint, a software breakpoint
 * and a write watchpoint at the same time.
 *
 * Mode: long. Loaded at 0x1000 (the entry). `total` is at 0x5000, on a
 * page of its own (see watch-write.S for why).
 *
 * What it does: adds the powers of two 1, 2, 4, ..., 32 (six turns, RCX
 * counting down from 6), storing the running sum in EAX and to `total`
 * after every addition; EDX holds the next power. Halts with
 * total = EAX = 63.
 *
 *     0x1000  mov  $6, %ecx
 *     0x1005  xor  %eax, %eax
 *     0x1007  mov  $1, %edx
 *     0x100c  next: add %edx, %eax       <- `kind: hw` breakpoint (turn start)
 *     0x100e        mov %eax, 0x5000     <- write watchpoint on 0x5000, len 4
 *     0x1015        shl %edx             <- `kind: sw` breakpoint (after the store)
 *     0x1017        dec %ecx
 *     0x1019        jnz next
 *     0x101b  hlt
 *
 * What the rig checks: each of the three points is hit exactly 6 times; at
 * every hw hit RCX is in [1, 6] and EDX in [1, 32]; at the 4th sw hit
 * EAX == 15 and EDX == 8; at the 6th watch hit total == 63. At the end:
 * exit hlt, eax == 63, edx == 64, total == 63.
 */
        .set    TOTAL, 0x5000

        .code64
        .text
        .globl  _start
_start:
        mov     $6, %ecx
        xor     %eax, %eax
        mov     $1, %edx
next:
        add     %edx, %eax
        mov     %eax, TOTAL
        shl     %edx
        dec     %ecx
        jnz     next
        hlt
1:      jmp     1b                      # not reached: HLT ends the run
