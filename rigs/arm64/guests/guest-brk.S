// guest-brk: the guest's own BRK #0x42, handled by its own exception vector,
// while the rig also plants a software breakpoint (so KVM traps every BRK to
// kvmrig). kvmrig must hand the guest's BRK back to it, as the CPU would:
// ESR_EL1 = EC 0x3c (BRK) | IL | #0x42, ELR_EL1 = the BRK, PC = VBAR_EL1 + 0x200.
// The handler saves ESR_EL1 and ELR_EL1 at 0x40008000, counts in x21 and
// resumes after the BRK. Checked by ../guest-brk.yaml.
//
//   0x40000010  mark: add x19, x19, #1   <- the rig's software breakpoint
//   0x40000014  brk #0x42                <- the guest's own

        .equ    RESULT, 0x40008000
        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        adr     x1, vectors
        msr     vbar_el1, x1
        isb
        ldr     x20, =RESULT
mark:   add     x19, x19, #1
        brk     #0x42
        add     x19, x19, #0x10         // runs after the handler returns
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg

        .balign 2048
vectors:
        .rept   4                       // current EL with SP_EL0: sync, IRQ, FIQ, SError
        b       .
        .balign 128
        .endr
sync_spx:                               // VBAR_EL1 + 0x200: synchronous, current EL, SP_ELx
        mrs     x2, esr_el1
        str     x2, [x20]
        mrs     x3, elr_el1
        str     x3, [x20, #8]
        add     x3, x3, #4              // resume after the BRK
        msr     elr_el1, x3
        add     x21, x21, #1
        eret
        .balign 128
        .rept   11                      // the rest: IRQ/FIQ/SError, then the lower-EL groups
        b       .
        .balign 128
        .endr
