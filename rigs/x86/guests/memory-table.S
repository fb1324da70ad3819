/*
 * memory-table.S - build tables in RAM for the rig's memory checks.
 *
 * Mode: long. Loaded at 0x1000 (the entry).
 *
 * What it does:
 *   0x4000  16 x u32: the squares 0, 1, 4, ..., 225
 *   0x5000  40 x u64: the powers of 3, 3^0 .. 3^39 (3^39 still fits in 63 bits)
 *   0x6000  the 8 bytes "TABLE OK"
 * then halts.
 * What the rig checks: exit hlt and the memory, as raw hex (the first four
 * squares, the string) and as little-endian u32 / u64 (the last entries,
 * and the zero u64 just past the powers table).
 */
        .set    SQUARES, 0x4000
        .set    POWERS, 0x5000
        .set    TAG, 0x6000

        .code64
        .text
        .globl  _start
_start:
        xor     %ecx, %ecx
1:      mov     %ecx, %eax
        imul    %ecx, %eax              # EAX = i * i
        mov     %eax, SQUARES(,%rcx,4)
        inc     %ecx
        cmp     $16, %ecx
        jb      1b

        mov     $1, %eax                # RAX = 3^0 (upper half zeroed too)
        xor     %ecx, %ecx
2:      mov     %rax, POWERS(,%rcx,8)
        lea     (%rax,%rax,2), %rax     # RAX *= 3
        inc     %ecx
        cmp     $40, %ecx
        jb      2b

        lea     tag(%rip), %rsi
        mov     $TAG, %edi
        mov     $tag_len, %ecx
        cld
        rep movsb
        hlt
3:      jmp     3b                      # not reached: HLT ends the run

tag:    .ascii  "TABLE OK"
        .set    tag_len, . - tag
