/*
 * power-off.S (arm64) - leave the vCPU powered off: PSCI CPU_OFF of the
 * only vCPU. KVM then sleeps in KVM_RUN until the rig's timeout, and the next
 * rig on a reused VM must find the vCPU runnable again (MP state).
 */
        .equ    PSCI_CPU_OFF, 0x84000002
        .text
        .global _start
_start:
        ldr     x1, =0x40000800
        mov     x2, #0x5a
        str     x2, [x1]
        ldr     w0, =PSCI_CPU_OFF
        hvc     #0
        b       .
        .ltorg
