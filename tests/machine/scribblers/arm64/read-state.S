/*
 * read-state.S (arm64) - read back what a reused VM could leak into a new
 * rig: system, timer, debug and FP registers and memory words, folded into
 * x0-x7 and x10-x21, then PSCI SYSTEM_OFF. On a fresh VM and on a reused one
 * the rig must end identically.
 */
        .equ    PSCI_SYSTEM_OFF, 0x84000008
        .text
        .global _start
_start:
        mrs     x0, sctlr_el1
        mrs     x1, tcr_el1
        mrs     x2, ttbr0_el1
        mrs     x3, mair_el1
        mrs     x4, vbar_el1
        mrs     x5, cpacr_el1
        mrs     x6, tpidr_el0
        mrs     x7, cntv_ctl_el0
        mrs     x10, cntv_cval_el0
        mrs     x11, dbgbvr0_el1
        mrs     x12, dbgwcr0_el1
        mrs     x13, mdscr_el1
        mrs     x14, cntkctl_el1
        mrs     x15, sp_el0
        mrs     x16, elr_el1
        mrs     x17, spsr_el1
        mrs     x18, cntp_ctl_el0
        mrs     x19, tpidr_el1
        // Memory the scribbler wrote: the sum of its words must be 0.
        ldr     x1, =0x40004000
        mov     x3, #12
        mov     x20, #0
1:      ldr     x2, [x1]
        add     x20, x20, x2
        add     x1, x1, #0x1000
        subs    x3, x3, #1
        b.ne    1b
        ldr     x1, =0x40000800
        ldr     x21, [x1]                       // power-off's word
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .
        .ltorg
