/*
 * read-chips.S - read what scribble-chips.S changes, into registers the
 * outcome shows: rax the PICs' masks (master | slave << 8), rbx PIT channel
 * 0's and channel 2's status (read-back: output, null count, access, mode;
 * channel 2's in bits 8-15), rcx IOAPIC pin 1's redirection entry (low
 * word), rdx the local APIC's LVT timer, rsi its TPR, rdi its spurious
 * vector register, r8 its initial count, r9 its divide configuration.
 *
 * Mode: long (the low 4 GiB identity-mapped). Loaded at 0x1000. Ends in
 * CLI; HLT.
 */
        .code64
        .text
        .globl  _start
_start:
        cli
        in      $0xa1, %al
        shl     $8, %eax
        in      $0x21, %al
        movzwl  %ax, %r10d
        mov     $0xe2, %al              /* read-back: status of channel 0 */
        out     %al, $0x43
        in      $0x40, %al
        movzbl  %al, %ebx
        mov     $0xe8, %al              /* read-back: status of channel 2 */
        out     %al, $0x43
        in      $0x42, %al
        movzbl  %al, %eax
        shl     $8, %eax
        or      %eax, %ebx
        mov     $0xfec00000, %esi
        movl    $0x12, (%rsi)
        mov     0x10(%rsi), %ecx
        mov     $0xfee00000, %esi
        mov     0x320(%rsi), %edx
        mov     0x3e0(%rsi), %r9d
        mov     0x380(%rsi), %r8d
        mov     0xf0(%rsi), %edi
        mov     0x80(%rsi), %esi
        mov     %r10, %rax
        hlt
