// pl011-irq: receive one byte from the PL011 (at 0x09000000, SPI 1 = INTID
// 33) by interrupt through the rig's in-kernel GICv3, waiting in WFI, echo
// it in a line, then PSCI SYSTEM_OFF. Checked by ../pl011-irq.yaml:
//   x19 = the byte received, x21 = the INTID acknowledged (33),
//   x20 = wake-ups from WFI (0 when the interrupt came before the first WFI),
//   the console line "got: k".
//
// The UART raises its line while RIS & IMSC != 0 (kvmrig's PL011: RXRIS
// while input remains), kvmrig drives SPI 1 with KVM_IRQ_LINE, and the GIC
// routes it to vCPU 0 (GICD_IROUTER33 = affinity 0).

        .equ    GICD, 0x08000000
        .equ    GICD_CTLR, 0x0000
        .equ    GICD_IGROUPR1, 0x0084                  // INTIDs 32..63
        .equ    GICD_ISENABLER1, 0x0104
        .equ    GICD_IROUTER33, 0x6000 + 8 * 33
        .equ    GICR, 0x080a0000
        .equ    GICR_WAKER, 0x0014
        .equ    UART, 0x09000000
        .equ    UARTDR, 0x000
        .equ    UARTFR, 0x018
        .equ    UARTIMSC, 0x038
        .equ    IMSC_RXIM, 1 << 4
        .equ    UART_INTID, 33
        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        adr     x0, vectors
        msr     vbar_el1, x0
        mov     x19, #0                         // the byte
        mov     x20, #0                         // wake-ups
        mov     x21, #0                         // last INTID

        ldr     x1, =GICD
        mov     w2, #0x13                       // ARE | EnableGrp1 | EnableGrp0
        str     w2, [x1, #GICD_CTLR]
        mov     w2, #-1
        str     w2, [x1, #GICD_IGROUPR1]        // SPIs 32..63: group 1
        ldr     x3, =GICD_IROUTER33
        str     xzr, [x1, x3]                   // route INTID 33 to affinity 0.0.0.0
        mov     w2, #(1 << (UART_INTID - 32))
        str     w2, [x1, #GICD_ISENABLER1]
        ldr     x1, =GICR
        ldr     w2, [x1, #GICR_WAKER]
        bic     w2, w2, #2
        str     w2, [x1, #GICR_WAKER]
1:      ldr     w2, [x1, #GICR_WAKER]
        tbnz    w2, #2, 1b
        mrs     x2, S3_0_C12_C12_5              // ICC_SRE_EL1.SRE
        orr     x2, x2, #1
        msr     S3_0_C12_C12_5, x2
        isb
        mov     x2, #0xff
        msr     S3_0_C4_C6_0, x2                // ICC_PMR_EL1
        mov     x2, #1
        msr     S3_0_C12_C12_7, x2              // ICC_IGRPEN1_EL1
        isb

        ldr     x1, =UART
        mov     w2, #IMSC_RXIM
        str     w2, [x1, #UARTIMSC]             // receive interrupt on
        msr     daifclr, #2

wait:   cbnz    x19, got                // the handler may run before the first WFI
        wfi
        add     x20, x20, #1
        b       wait
got:
        msr     daifset, #2
        adr     x2, message
next:   ldrb    w3, [x2], #1
        cbz     w3, done
        str     w3, [x1, #UARTDR]
        b       next
done:   str     w19, [x1, #UARTDR]              // the byte itself
        mov     w3, #'\n'
        str     w3, [x1, #UARTDR]
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

// IRQ: acknowledge; for the UART read the byte (which lowers its line once
// the input is used up) and mask its receive interrupt; end of interrupt.
irq:    mrs     x9, S3_0_C12_C12_0              // ICC_IAR1_EL1
        mov     x21, x9
        cmp     x9, #UART_INTID
        b.ne    eoi
        ldr     x10, =UART
        ldr     w19, [x10, #UARTDR]
        str     wzr, [x10, #UARTIMSC]
eoi:    msr     S3_0_C12_C12_1, x9              // ICC_EOIR1_EL1
        isb
        eret

unexpected:
        mov     x21, #0xbad
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg
message:
        .asciz  "got: "
        .balign 4

        .balign 0x800
vectors:
        .rept   5
        b       unexpected
        .balign 0x80
        .endr
        b       irq                             // 0x280: IRQ, current EL, SP_ELx
        .balign 0x80
        .rept   10
        b       unexpected
        .balign 0x80
        .endr
