// gic-snap: interrupt state a snapshot of a `gic:` machine must carry. An
// SGI is made pending while IRQs are masked (a point saved there holds it
// only in the redistributor's pending latch), then the virtual timer ticks
// TICKS times (a point saved in the handler holds an active interrupt, its
// running priority in ICC_AP1R0_EL1, the timer's CNTV_CTL/CVAL). Uses
// QEMU virt's GIC layout (distributor 0x08000000, redistributor 0x080a0000).
// Checked by ../../../rigs-kvm/arm64/gic-snap*.yaml:
//   x25 = SGIs taken (1), x19 = timer ticks (TICKS), x21 = the last INTID
//   (27), x26 = GICR_ISPENDR0 once the SGI was seen pending (bit 1),
//   x22 = timer periods elapsed on CNTVCT_EL0 (>= TICKS), x27 = ICC_PMR_EL1
//   read back at the end (0xf0), x28 = the SGI's priority byte read back (0x40).

        .equ    GICD, 0x08000000
        .equ    GICD_CTLR, 0x0000
        .equ    GICR_RD, 0x080a0000
        .equ    GICR_SGI, 0x080a0000 + 0x10000
        .equ    GICR_WAKER, 0x0014                     // RD_base frame
        .equ    GICR_IGROUPR0, 0x0080                  // SGI_base frame
        .equ    GICR_ISENABLER0, 0x0100
        .equ    GICR_ISPENDR0, 0x0200
        .equ    GICR_IPRIORITYR0, 0x0400
        .equ    SGI_INTID, 1
        .equ    VTIMER_INTID, 27
        .equ    SPURIOUS, 1023
        .equ    TICKS, 5
        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        adr     x0, vectors
        msr     vbar_el1, x0
        mov     x19, #0                         // ticks
        mov     x20, #0                         // wake-ups
        mov     x21, #0                         // last INTID
        mov     x25, #0                         // SGIs taken

        ldr     x1, =GICD
        mov     w2, #0x13                       // ARE | EnableGrp1 | EnableGrp0
        str     w2, [x1, #GICD_CTLR]
        ldr     x1, =GICR_RD
        ldr     w2, [x1, #GICR_WAKER]
        bic     w2, w2, #2                      // ProcessorSleep = 0
        str     w2, [x1, #GICR_WAKER]
1:      ldr     w2, [x1, #GICR_WAKER]
        tbnz    w2, #2, 1b
        ldr     x1, =GICR_SGI
        mov     w2, #-1
        str     w2, [x1, #GICR_IGROUPR0]
        mov     w2, #0x4000                     // SGI 1: priority 0x40
        str     w2, [x1, #GICR_IPRIORITYR0]
        movz    w2, #0x8000, lsl #16            // INTID 27: priority 0x80 (byte 3 of word 6)
        str     w2, [x1, #GICR_IPRIORITYR0 + 24]
        ldr     w2, =((1 << VTIMER_INTID) | (1 << SGI_INTID))
        str     w2, [x1, #GICR_ISENABLER0]
        mrs     x2, S3_0_C12_C12_5              // ICC_SRE_EL1
        orr     x2, x2, #1
        msr     S3_0_C12_C12_5, x2
        isb
        mov     x2, #0xf0
        msr     S3_0_C4_C6_0, x2                // ICC_PMR_EL1: priorities below 0xf0 pass
        mov     x2, #1
        msr     S3_0_C12_C12_7, x2              // ICC_IGRPEN1_EL1
        isb

        // SGI 1 to this vCPU (target list bit 0, affinity 0.0.0) with IRQs masked.
        mov     x2, #(SGI_INTID << 24)
        orr     x2, x2, #1
        msr     S3_0_C12_C11_5, x2              // ICC_SGI1R_EL1
        isb
1:      ldr     w26, [x1, #GICR_ISPENDR0]
        tbz     w26, #SGI_INTID, 1b             // until the redistributor has it pending
        .global pending
pending:
        nop                                     // a point saved here: the SGI pending, IRQs masked

        mrs     x23, cntfrq_el0
        mov     x2, #1000
        udiv    x23, x23, x2                    // a period of 1 ms
        mrs     x24, cntvct_el0
        msr     cntv_tval_el0, x23
        mov     x2, #1                          // ENABLE, IMASK = 0
        msr     cntv_ctl_el0, x2
        isb
        msr     daifclr, #2                     // the SGI is taken here

wait:   wfi
        add     x20, x20, #1
        cmp     x19, #TICKS
        b.lo    wait

        msr     daifset, #2
        mrs     x22, cntvct_el0
        sub     x22, x22, x24
        udiv    x22, x22, x23                   // whole periods elapsed
        mrs     x27, S3_0_C4_C6_0               // ICC_PMR_EL1
        ldr     x1, =GICR_SGI
        ldr     w28, [x1, #GICR_IPRIORITYR0]
        ubfx    x28, x28, #8, #8                // SGI 1's priority byte
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

// IRQ: acknowledge, count, end of interrupt (not for a spurious 1023).
irq:    mrs     x9, S3_0_C12_C12_0              // ICC_IAR1_EL1
        cmp     x9, #SPURIOUS
        b.eq    out
        mov     x21, x9
        cmp     x9, #SGI_INTID
        b.ne    1f
        add     x25, x25, #1
        b       eoi
1:      cmp     x9, #VTIMER_INTID
        b.ne    eoi
        .global tick
tick:   add     x19, x19, #1                    // a point saved here: INTID 27 active
        cmp     x19, #TICKS
        b.hs    last
        msr     cntv_tval_el0, x23
        b       eoi
last:   msr     cntv_ctl_el0, xzr
eoi:    msr     S3_0_C12_C12_1, x9              // ICC_EOIR1_EL1
        isb
out:    eret

unexpected:
        mov     x21, #0xbad
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg

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
