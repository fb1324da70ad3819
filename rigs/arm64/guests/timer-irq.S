// timer-irq: count 10 ticks of the virtual timer (PPI 11, INTID 27) taken as
// IRQs through the rig's in-kernel GICv3 (QEMU virt layout: distributor at
// 0x08000000, redistributor at 0x080a0000), sleeping in WFI between them,
// then PSCI SYSTEM_OFF. Checked by ../timer-irq.yaml:
//   x19 = ticks counted by the handler (10), x20 = wake-ups from WFI (>= 10),
//   x21 = the last INTID acknowledged (27), x22 = timer periods elapsed on
//   CNTVCT_EL0 from the first arming to the end (>= 10), breakpoint on `tick`.
//
// GIC registers are accessed with plain LDR/STR (KVM needs the syndrome);
// the CPU interface is the ICC_* system registers (GICv3 SRE).

        .equ    GICD, 0x08000000
        .equ    GICD_CTLR, 0x0000
        .equ    GICR_SGI, 0x080a0000 + 0x10000         // SGI_base frame of vCPU 0
        .equ    GICR_WAKER, 0x0014                     // in the RD_base frame
        .equ    GICR_IGROUPR0, 0x0080
        .equ    GICR_ISENABLER0, 0x0100
        .equ    VTIMER_INTID, 27
        .equ    PERIOD_DIVISOR, 1000                   // tick every CNTFRQ/1000: 1 ms
        .equ    TICKS, 10
        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        adr     x0, vectors
        msr     vbar_el1, x0
        mov     x19, #0                         // ticks
        mov     x20, #0                         // wake-ups
        mov     x21, #0                         // last INTID

        // Distributor: affinity routing, group 1 enabled (single security state).
        ldr     x1, =GICD
        mov     w2, #0x13                       // ARE | EnableGrp1 | EnableGrp0
        str     w2, [x1, #GICD_CTLR]
        // Redistributor: wake it, PPI 27 in group 1 and enabled.
        ldr     x1, =GICR_SGI - 0x10000
        ldr     w2, [x1, #GICR_WAKER]
        bic     w2, w2, #2                      // ProcessorSleep = 0
        str     w2, [x1, #GICR_WAKER]
1:      ldr     w2, [x1, #GICR_WAKER]
        tbnz    w2, #2, 1b                      // until ChildrenAsleep = 0
        ldr     x1, =GICR_SGI
        mov     w2, #-1
        str     w2, [x1, #GICR_IGROUPR0]
        mov     w2, #(1 << VTIMER_INTID)
        str     w2, [x1, #GICR_ISENABLER0]
        // CPU interface: system registers on, every priority, group 1 on.
        mrs     x2, S3_0_C12_C12_5              // ICC_SRE_EL1
        orr     x2, x2, #1
        msr     S3_0_C12_C12_5, x2
        isb
        mov     x2, #0xff
        msr     S3_0_C4_C6_0, x2                // ICC_PMR_EL1
        mov     x2, #1
        msr     S3_0_C12_C12_7, x2              // ICC_IGRPEN1_EL1
        isb

        // The virtual timer: a period of CNTFRQ/1000, interrupt unmasked.
        mrs     x23, cntfrq_el0
        mov     x2, #PERIOD_DIVISOR
        udiv    x23, x23, x2                    // x23 = period in counter ticks
        mrs     x24, cntvct_el0                 // start
        msr     cntv_tval_el0, x23
        mov     x2, #1                          // ENABLE, IMASK = 0
        msr     cntv_ctl_el0, x2
        isb
        msr     daifclr, #2                     // take IRQs

wait:   wfi                             // a tick between the check and here: the next one wakes us
        add     x20, x20, #1
        cmp     x19, #TICKS
        b.lo    wait

        msr     daifset, #2
        mrs     x22, cntvct_el0
        sub     x22, x22, x24                   // counter ticks the 10 periods took
        udiv    x22, x22, x23                   // ... in whole periods
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

// The IRQ handler: acknowledge, count a timer tick and re-arm it (or, at the
// last tick, turn the timer off, so no 11th tick can come), end of interrupt.
irq:    mrs     x9, S3_0_C12_C12_0              // ICC_IAR1_EL1: the INTID
        mov     x21, x9
        cmp     x9, #VTIMER_INTID
        b.ne    eoi
        .global tick
tick:   add     x19, x19, #1
        cmp     x19, #TICKS
        b.hs    last
        msr     cntv_tval_el0, x23              // next period (lowers the level)
        b       eoi
last:   msr     cntv_ctl_el0, xzr               // the last tick: timer off (lowers the level)
eoi:    msr     S3_0_C12_C12_1, x9              // ICC_EOIR1_EL1
        isb
        eret

unexpected:
        mov     x21, #0xbad
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg

// Vector table (Arm ARM D1.10.2): 16 entries of 0x80; IRQ from the current
// EL with SP_ELx is at 0x280. Everything else is unexpected here.
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
