/*
 * scribble-mem.S - write a pattern over 16 pages at 0x100000 and one byte
 * in every page from 0x120000 to 0x1c0000 (below the page tables kvmrig puts at the top of 2 MiB), then HLT.
 *
 * Mode: long. Loaded at 0x1000. A later rig with the same memory map must
 * read zeros there (differential test, and the dirty-page reset).
 */
        .code64
        .text
        .globl  _start
_start:
        mov     $0x100000, %rdi
        movabs  $0x5a5a5a5a5a5a5a5a, %rax
        mov     $(16 * 4096 / 8), %rcx
        cld
        rep stosq
        mov     $0x120000, %rdi
1:      movb    $0xa5, (%rdi)
        add     $0x1000, %rdi
        cmp     $0x1c0000, %rdi
        jb      1b
        hlt
