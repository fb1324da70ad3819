// smp-psci: vCPU 0 starts vCPU 1 with PSCI CPU_ON (KVM's in-kernel PSCI:
// vCPU 1 is created powered off), waits for it to check in through RAM,
// waits for AFFINITY_INFO to say it is off again (it calls CPU_OFF), and
// powers the machine off. Checked by ../smp-psci.yaml:
//   0x40008000: vCPU 1's MPIDR_EL1 (affinity 0.0.0.1, bit 31 RES1),
//   0x40008008: the context id CPU_ON handed to vCPU 1 in x0 (0x5eed),
//   0x40008010: vCPU 1's CurrentEL (EL1 = 4),
//   x19 = CPU_ON's return (0 = SUCCESS), x20 = AFFINITY_INFO at the end (1 = OFF),
//   x21 = vCPU 0's own MPIDR_EL1 affinity (0).

        .equ    PSCI_CPU_OFF, 0x84000002
        .equ    PSCI_CPU_ON, 0xc4000003
        .equ    PSCI_AFFINITY_INFO, 0xc4000004
        .equ    PSCI_SYSTEM_OFF, 0x84000008
        .equ    MAILBOX, 0x40008000
        .equ    CONTEXT, 0x5eed

        .text
        .global _start
_start:
        mrs     x21, mpidr_el1
        and     x21, x21, #0xffffff             // Aff2.Aff1.Aff0
        ldr     x0, =PSCI_CPU_ON
        mov     x1, #1                          // target: MPIDR affinity 0.0.0.1
        adr     x2, secondary                   // entry point (physical: the MMU is off)
        ldr     x3, =CONTEXT                    // arrives in the secondary's x0
        hvc     #0
        mov     x19, x0                         // 0 = SUCCESS
        ldr     x4, =MAILBOX
1:      ldr     x5, [x4, #0x18]                 // the check-in flag
        cbz     x5, 1b
2:      ldr     x0, =PSCI_AFFINITY_INFO
        mov     x1, #1
        mov     x2, #0                          // lowest affinity level
        hvc     #0
        cmp     x0, #1                          // 1 = OFF
        b.ne    2b
        mov     x20, x0
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

secondary:
        ldr     x4, =MAILBOX
        mrs     x5, mpidr_el1
        str     x5, [x4]
        str     x0, [x4, #0x08]                 // the context id
        mrs     x5, CurrentEL
        str     x5, [x4, #0x10]
        mov     x5, #1
        dmb     ish
        str     x5, [x4, #0x18]                 // check in
        ldr     w0, =PSCI_CPU_OFF
        hvc     #0
        b       .                               // not reached

        .ltorg
