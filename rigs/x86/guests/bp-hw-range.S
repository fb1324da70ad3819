/*
 * bp-hw-range.S - a counted loop for a hardware breakpoint that checks a
 * register range on every turn.
 *
 * Mode: long. Loaded at 0x1000 (the entry).
 *
 * What it does: RAX = 10^2 + 9^2 + ... + 1^2 = 385, counting RCX down from
 * 10 to 1; RDX holds the square of the current turn. Halts.
 *
 *     0x1000  mov  $10, %ecx
 *     0x1005  xor  %eax, %eax
 *     0x1007  loop: mov %ecx, %edx      <- the rig's `kind: hw` breakpoint
 *     0x1009        imul %edx, %edx
 *     0x100c        add %rdx, %rax
 *     0x100f        dec %ecx
 *     0x1011        jnz loop
 *     0x1013  hlt
 *
 * What the rig checks: the breakpoint at `loop` (0x1007) is hit exactly 10
 * times, and at every hit RCX is in [1, 10] and RAX (the sum so far) in
 * [0, 384]; at the end exit hlt, rax == 385, rcx == 0.
 */
        .code64
        .text
        .globl  _start
_start:
        mov     $10, %ecx               # turns left (RCX's top half is cleared too)
        xor     %eax, %eax              # the sum
loop:                                   # 0x1007
        mov     %ecx, %edx
        imul    %edx, %edx              # RDX = RCX * RCX
        add     %rdx, %rax
        dec     %ecx
        jnz     loop
        hlt
1:      jmp     1b                      # not reached: HLT ends the run
