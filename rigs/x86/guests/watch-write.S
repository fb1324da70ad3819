/*
 * watch-write.S - stores that write watchpoints must catch, and stores
 * right next to them that they must not.
 *
 * Mode: long. Loaded at 0x1000 (the entry). Its data lives on a page of its
 * own (0x5000..0x5fff), away from the code: on a KVM without data
 * breakpoints kvmrig write-protects the watched page, so every store to
 * that page exits to kvmrig (and only the watched bytes count as hits).
 *
 * Data:
 *     0x5000  u32 counter          watched (len 4)
 *     0x500c  u32 below            right below the descriptor: not watched
 *     0x5010  16-byte descriptor   watched (len 16); the guest writes only
 *                                  the u32 at 0x5016, in its middle and
 *                                  across the 8-byte boundary at 0x5018
 *     0x5020  u32 above            right after the descriptor: not watched
 *
 * What it does: for RCX = 1 .. 5 stores RCX to counter, below, above, and
 * RCX * 0x01010101 to descriptor+6; then halts.
 *
 *     0x1000  mov  $1, %ecx
 *     0x1005  next: mov %ecx, 0x5000             counter
 *     0x100c        mov %ecx, 0x500c             below
 *     0x1013        imul $0x01010101, %ecx, %eax
 *     0x1019        mov %eax, 0x5016             descriptor+6 (4 bytes)
 *     0x1020        mov %ecx, 0x5020             above
 *     0x1027        inc %ecx
 *     0x1029        cmp $6, %ecx
 *     0x102c        jne next
 *     0x102e  hlt
 *
 * What the rig checks: the counter watch is hit exactly 5 times and at its
 * 3rd hit the counter reads 3; the descriptor watch is hit exactly 5 times
 * (once per store, although x86 needs two debug registers for 16 bytes and
 * the store touches both) and after its last hit the descriptor holds
 * 05 05 05 05 at offset 6; the stores to 0x500c and 0x5020 count for
 * neither. At the end: exit hlt and the memory.
 */
        .set    COUNTER, 0x5000
        .set    BELOW, 0x500c
        .set    DESCRIPTOR, 0x5010
        .set    ABOVE, 0x5020

        .code64
        .text
        .globl  _start
_start:
        mov     $1, %ecx
next:
        mov     %ecx, COUNTER
        mov     %ecx, BELOW
        imul    $0x01010101, %ecx, %eax # the byte RCX in all four bytes
        mov     %eax, DESCRIPTOR+6
        mov     %ecx, ABOVE
        inc     %ecx
        cmp     $6, %ecx
        jne     next
        hlt
1:      jmp     1b                      # not reached: HLT ends the run
