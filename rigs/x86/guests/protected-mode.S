/*
 * protected-mode.S - 32-bit protected mode, flat segments, paging off.
 *
 * Mode: protected. Loaded at 0x1000 (the entry). Its inputs come from the
 * rig's cpu.regs: EBX = a, ECX = b.
 *
 * What it does: Euclid's algorithm with 32-bit DIV: EAX = gcd(a, b), stores
 * the result at 0x2000 and CR0 at 0x2004, then halts.
 * What the rig checks (with a = 1071, b = 462): exit hlt, eax == 21,
 * ecx == 0, RAM 0x2000 = 21 (u32), and CR0 with a mask: PE (bit 0) set,
 * PG (bit 31) clear.
 */
        .code32
        .text
        .globl  _start
_start:
        mov     %ebx, %eax              # EAX = a, ECX = b
1:      test    %ecx, %ecx
        jz      2f
        xor     %edx, %edx
        div     %ecx                    # EDX = EDX:EAX mod ECX
        mov     %ecx, %eax              # (a, b) <- (b, a mod b)
        mov     %edx, %ecx
        jmp     1b
2:      mov     %eax, 0x2000            # flat DS: a 32-bit linear address
        mov     %cr0, %edx
        mov     %edx, 0x2004
        hlt
3:      jmp     3b                      # not reached: HLT ends the run
