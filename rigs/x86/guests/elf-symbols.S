/*
 * elf-symbols.S - an ELF guest whose rig addresses things by symbol.
 *
 * Mode: long. Linked by elf-symbols.ld at 0x10000 into an ELF with a symbol
 * table (two PT_LOAD segments: code+rodata, data+bss). _start is NOT the
 * first byte of .text, so the rig's `entry: "sym:_start"` really resolves a
 * symbol.
 *
 * What it does: sums and finds the maximum of a u32 array (`table`, the
 * digits 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9), stores the sum (u64) at `result`,
 * the maximum (u32) at `result+8` and the element count (u32) at
 * `result+12`, then halts. It sets up its own stack in .bss.
 * What the rig checks: exit hlt, rax == 77, memory at sym:result (77),
 * sym:result+8 (9), sym:result+12 (15), and the first bytes at sym:table.
 */
        .code64
        .text

/* sum_max: RSI = u32 array, ECX = count (> 0) -> RAX = sum, EDX = max. */
        .type   sum_max, @function
sum_max:
        xor     %eax, %eax
        xor     %edx, %edx
1:      mov     (%rsi), %r8d
        add     %r8, %rax
        cmp     %edx, %r8d
        cmova   %r8d, %edx              # unsigned max
        add     $4, %rsi
        dec     %ecx
        jnz     1b
        ret
        .size   sum_max, . - sum_max

        .globl  _start
        .type   _start, @function
_start:
        lea     stack_top(%rip), %rsp
        lea     table(%rip), %rsi
        mov     $TABLE_LEN, %ecx
        call    sum_max
        mov     %rax, result(%rip)
        mov     %edx, result+8(%rip)
        movl    $TABLE_LEN, result+12(%rip)
        hlt
2:      jmp     2b                      # not reached: HLT ends the run
        .size   _start, . - _start

        .section .rodata
        .balign 4
        .globl  table
        .type   table, @object
table:
        .long   3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9
        .size   table, . - table
        .set    TABLE_LEN, (. - table) / 4

        .bss
        .balign 16
        .globl  result
        .type   result, @object
result:                                 # u64 sum, u32 max, u32 count
        .skip   16
        .size   result, . - result
        .balign 16
stack:
        .skip   4096
stack_top:
