/*
 * bp-sw-on-hit.S - walk a table in a loop, for a software breakpoint with an
 * exact hit count and a check that applies at one hit only (`on_hit`).
 *
 * Mode: long. Loaded at 0x1000 (the entry).
 *
 * What it does: finds the maximum (RBX) and the sum (RDI) of the eight u16
 * entries of `table` (31 41 59 26 53 58 97 93: the first 16 digits of pi in
 * pairs); RSI walks the table, RCX counts the entries left. Halts with
 * RBX = 97, RDI = 458.
 *
 *     0x1000  lea  table(%rip), %rsi
 *     0x1007  mov  $8, %ecx
 *     0x100c  xor  %ebx, %ebx
 *     0x100e  xor  %edi, %edi
 *     0x1010  next: movzwl (%rsi), %eax
 *     0x1013        add  %rax, %rdi        <- the rig's `kind: sw` breakpoint:
 *                                             AX = the entry just loaded
 *     0x1016        cmp  %eax, %ebx
 *     0x1018        cmovb %eax, %ebx
 *     0x101b        add  $2, %rsi
 *     0x101f        dec  %ecx
 *     0x1021        jnz  next
 *     0x1023  hlt
 *     0x1024  table (16 bytes)
 *
 * What the rig checks: the breakpoint at 0x1013 is hit exactly 8 times;
 * at hit 5 only: AX == 53 (the 5th entry), RBX == 59 and RDI == 157 (the
 * maximum and the sum of the first four), RSI == table + 8 (0x102c),
 * RCX == 4 entries left. At the end:
 * exit hlt, rbx == 97, rdi == 458, and the table unchanged in memory.
 */
        .code64
        .text
        .globl  _start
_start:
        lea     table(%rip), %rsi
        mov     $TABLE_LEN, %ecx
        xor     %ebx, %ebx              # maximum so far
        xor     %edi, %edi              # sum so far
next:                                   # 0x1010
        movzwl  (%rsi), %eax            # AX = *RSI
        add     %rax, %rdi              # 0x1013: the breakpoint
        cmp     %eax, %ebx
        cmovb   %eax, %ebx              # unsigned max
        add     $2, %rsi
        dec     %ecx
        jnz     next
        hlt

table:  .short  31, 41, 59, 26, 53, 58, 97, 93
        .set    TABLE_LEN, (. - table) / 2
