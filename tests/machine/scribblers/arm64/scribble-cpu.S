/*
 * scribble-cpu.S (arm64) - change every piece of vCPU state a later rig
 * could see, then PSCI SYSTEM_OFF with flags set and DAIF unmasked.
 *
 * Loaded at 0x40000000 (RAM 0x40000000, 64 KiB, as the example rigs). For the fresh-vs-reused
 * differential test (tests/machine/test_reuse_arm64.py): EL1 system
 * registers (SCTLR/TCR/TTBR0/TTBR1/MAIR/AMAIR/VBAR/CPACR/CONTEXTIDR/
 * TPIDR*, ESR, FAR, AFSR, PAR, CSSELR, CNTKCTL), SP_EL0, SP_EL1, ELR_EL1,
 * SPSR_EL1 (also by taking an SVC), the FP/SIMD registers with FPSR/FPCR,
 * the debug registers (DBGBCR/BVR/WCR/WVR 0-1, MDSCR_EL1, all disabled so
 * they raise nothing), the virtual and physical timers (CTL and CVAL,
 * interrupts masked), every general register and memory across the region.
 */
        .equ    PSCI_SYSTEM_OFF, 0x84000008
        .text
        .global _start
_start:
        adr     x1, vectors
        msr     vbar_el1, x1
        mov     x2, #(3 << 20)                  // CPACR_EL1.FPEN: FP/SIMD on
        msr     cpacr_el1, x2
        isb
        mrs     x2, sctlr_el1                   // I, C, UCT, DZE, UCI: harmless with the MMU off
        ldr     x3, =((1 << 12) | (1 << 2) | (1 << 15) | (1 << 14) | (1 << 26))
        orr     x2, x2, x3
        msr     sctlr_el1, x2
        ldr     x2, =0x0000000280803510         // TCR_EL1 (MMU stays off: unused)
        msr     tcr_el1, x2
        ldr     x2, =0x0001000040100000
        msr     ttbr0_el1, x2
        ldr     x2, =0x0002000040200000
        msr     ttbr1_el1, x2
        ldr     x2, =0x000000000044ff04
        msr     mair_el1, x2
        ldr     x2, =0x1122334455667788
        msr     amair_el1, x2
        mov     x2, #0x42
        msr     contextidr_el1, x2
        ldr     x2, =0x7e1d0e10
        msr     tpidr_el0, x2
        ldr     x2, =0x7e1d0e11
        msr     tpidr_el1, x2
        ldr     x2, =0x7e1d0e12
        msr     tpidrro_el0, x2
        ldr     x2, =0x96000045
        msr     esr_el1, x2
        ldr     x2, =0xfa0fa0fa0
        msr     far_el1, x2
        mov     x2, #0x11
        msr     afsr0_el1, x2
        mov     x2, #0x22
        msr     afsr1_el1, x2
        ldr     x2, =0x40201000
        msr     par_el1, x2
        mov     x2, #2
        msr     csselr_el1, x2
        mov     x2, #0x203                      // CNTKCTL_EL1: EL0VCTEN, EL0PCTEN, EL0VTEN
        msr     cntkctl_el1, x2
        ldr     x2, =0x40001000
        msr     sp_el0, x2
        ldr     x2, =0x40002000
        mov     sp, x2                          // SP_EL1 (EL1h)
        ldr     x2, =0x40000abc
        msr     elr_el1, x2
        mov     x2, #0x3c5
        msr     spsr_el1, x2
        // Debug registers: values in every field but enable (bit 0) clear.
        ldr     x2, =0x40000100
        msr     dbgbvr0_el1, x2
        ldr     x2, =0x40000200
        msr     dbgbvr1_el1, x2
        ldr     x2, =0x1e6                      // BAS, PMC; E = 0
        msr     dbgbcr0_el1, x2
        msr     dbgbcr1_el1, x2
        ldr     x2, =0x40003000
        msr     dbgwvr0_el1, x2
        msr     dbgwvr1_el1, x2
        ldr     x2, =0x1ff6                     // BAS, LSC, PAC; E = 0
        msr     dbgwcr0_el1, x2
        msr     dbgwcr1_el1, x2
        ldr     x2, =0x1000                     // MDSCR_EL1.TDCC
        msr     mdscr_el1, x2
        // Timers: enabled, interrupt masked, compare far ahead.
        ldr     x2, =0x123456789ab
        msr     cntv_cval_el0, x2
        mov     x2, #3                          // ENABLE | IMASK
        msr     cntv_ctl_el0, x2
        ldr     x2, =0x23456789abc
        msr     cntp_cval_el0, x2
        mov     x2, #3
        msr     cntp_ctl_el0, x2
        isb
        // FP/SIMD: every V register distinct, FPCR and FPSR bits.
        ldr     x2, =0x0101010101010101
        fmov    d31, x2
        fmov    v31.d[1], x2
        .irp    n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
        add     v\n\().16b, v31.16b, v31.16b
        add     v31.16b, v31.16b, v\n\().16b
        .endr
        ldr     x2, =0x03c00000                 // FPCR: RMode, FZ, DN
        msr     fpcr, x2
        ldr     x2, =0x0800009f                 // FPSR: QC and the cumulative flags
        msr     fpsr, x2
        // An exception taken and returned from: ESR/ELR/SPSR as the CPU writes them.
        svc     #0x77
        // Memory: one word on each page past the code (the next rig maps them too).
        ldr     x1, =0x40004000
        ldr     x2, =0xdeadbeefcafef00d
        mov     x3, #12
1:      str     x2, [x1]
        add     x1, x1, #0x1000
        subs    x3, x3, #1
        b.ne    1b
        // General registers, flags, DAIF unmasked; then off.
        .irp    n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
        mov     x\n, #(0x1000 + \n)
        .endr
        msr     daifclr, #0xf
        mov     x0, #-1
        adds    x0, x0, #1                      // Z and C set
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg

// The SVC comes back to the instruction after it; any other exception parks
// the CPU on its vector's `b .` (the run then ends by its timeout).
        .balign 2048
vectors:
        .rept   4                               // current EL with SP_EL0
        b       .
        .balign 128
        .endr
        mrs     x9, esr_el1                     // current EL with SP_ELx: synchronous (the SVC)
        eret
        .balign 128
        .rept   11
        b       .
        .balign 128
        .endr
