/*
 * read-state.S - report what an earlier rig could have left behind.
 *
 * Mode: long. Loaded at 0x1000. Exit code (port 0xf4) is a bit set, 0 when
 * the vCPU looks as created: 1 TSC >= 2^59, 2 STAR != 0, 4 DR7 has an enable
 * bit, 8 EFER.SCE, 16 CR8 != 0, 32 the first 8 bytes of a page in
 * 0x100000..0x1c0000 are not zero.
 */
        .code64
        .text
        .globl  _start
_start:
        xor     %ebx, %ebx
        rdtsc
        shl     $32, %rdx
        or      %rax, %rdx
        shr     $59, %rdx
        jz      1f
        or      $1, %bl
1:      mov     $0xc0000081, %ecx
        rdmsr
        or      %edx, %eax
        jz      2f
        or      $2, %bl
2:      mov     %dr7, %rax
        test    $0xff, %al
        jz      3f
        or      $4, %bl
3:      mov     $0xc0000080, %ecx
        rdmsr
        test    $1, %al
        jz      4f
        or      $8, %bl
4:      mov     %cr8, %rax
        test    %rax, %rax
        jz      5f
        or      $16, %bl
5:      mov     $0x100000, %rsi
6:      cmpq    $0, (%rsi)
        jne     7f
        add     $0x1000, %rsi
        cmp     $0x1c0000, %rsi
        jb      6b
        jmp     8f
7:      or      $32, %bl
8:      mov     %bl, %al
        out     %al, $0xf4
        hlt
