/*
 * pit-ticks.S - count timer interrupts: the 8254 PIT ticks IRQ 0 through the
 * 8259 PIC, a handler counts them, the main loop sleeps in HLT between ticks.
 *
 * Mode: long. Loaded at 0x1000 (the entry). Needs the rig's machine.pit
 * (in-kernel PIC, IOAPIC, local APIC and PIT).
 *
 * What it does:
 *   - builds a 256-entry IDT at 0x3000 whose vector 0x20 goes to `tick`
 *     (every other vector to `stray`, which halts with RAX = 0xdead);
 *   - initialises the master PIC (ICW1-4): IRQ 0-7 -> vectors 0x20-0x27,
 *     only IRQ 0 unmasked; the slave PIC all masked;
 *   - programs PIT channel 0, mode 2 (rate generator), divisor 1193
 *     (about 1 kHz);
 *   - STI; HLT until the handler has counted TARGET (RDI) ticks;
 *   - CLI; HLT with interrupts masked: the end (exit hlt), RAX = the count.
 * What the rig checks: exit hlt, RAX = 10.
 */
        .set    IDT, 0x3000
        .set    PIC1_CMD, 0x20
        .set    PIC1_DATA, 0x21
        .set    PIC2_DATA, 0xa1
        .set    PIT_CH0, 0x40
        .set    PIT_MODE, 0x43
        .set    DIVISOR, 1193           # 1.193182 MHz / 1193 = about 1 kHz
        .set    CODE64, 0x08            # kvmrig's 64-bit code selector

        .code64
        .text
        .globl  _start
_start:
        /* the IDT: 16-byte gates, interrupt gate type 0xe, present */
        mov     $IDT, %rbx
        xor     %ecx, %ecx
1:      lea     stray(%rip), %rax
        cmp     $0x20, %ecx
        jne     2f
        lea     tick(%rip), %rax
2:      mov     %ax, (%rbx)             # offset 15:0
        movw    $CODE64, 2(%rbx)
        movw    $0x8e00, 4(%rbx)        # P, DPL 0, 64-bit interrupt gate
        shr     $16, %rax
        mov     %ax, 6(%rbx)            # offset 31:16
        movl    $0, 8(%rbx)             # offset 63:32 (code below 4 GiB)
        movl    $0, 12(%rbx)
        add     $16, %rbx
        inc     %ecx
        cmp     $256, %ecx
        jne     1b
        lidt    idtr(%rip)

        /* PIC: ICW1 edge + ICW4, ICW2 base 0x20, ICW3 slave on IRQ2, ICW4 8086 mode */
        mov     $0x11, %al
        out     %al, $PIC1_CMD
        mov     $0x20, %al
        out     %al, $PIC1_DATA
        mov     $0x04, %al
        out     %al, $PIC1_DATA
        mov     $0x01, %al
        out     %al, $PIC1_DATA
        mov     $0xfe, %al              # only IRQ 0
        out     %al, $PIC1_DATA
        mov     $0xff, %al
        out     %al, $PIC2_DATA

        /* PIT channel 0: lobyte/hibyte, mode 2 */
        mov     $0x34, %al
        out     %al, $PIT_MODE
        mov     $(DIVISOR & 0xff), %al
        out     %al, $PIT_CH0
        mov     $(DIVISOR >> 8), %al
        out     %al, $PIT_CH0

        xor     %esi, %esi              # the tick count (the handler adds)
        sti
wait:   hlt                             # sleep until the next interrupt
        cmp     %rdi, %rsi
        jb      wait
        cli
        mov     %rsi, %rax
        hlt                             # interrupts masked: the end
        jmp     .

tick:   cmp     %rdi, %rsi              # count up to the target only: ticks the KVM
        jae     1f                      # re-injects back to back cannot overshoot it
        inc     %rsi
1:
        push    %rax
        mov     $0x20, %al              # non-specific EOI
        out     %al, $PIC1_CMD
        pop     %rax
        iretq

stray:  mov     $0xdead, %eax
        cli
        hlt
        jmp     .

        .p2align 3
idtr:   .word   256 * 16 - 1
        .quad   IDT
