// smp-breakpoint: two vCPUs run the same loop, N turns each; its first
// instruction (`hit`, at 0x40000104) carries the rig's software breakpoint,
// so every turn of either vCPU must count one hit (2 N in all) while the
// other vCPU may be anywhere, including at that same instruction while the
// breakpoint is lifted for a step over it. Checked by
// ../../../rigs-kvm/arm64/smp-breakpoint.yaml:
//   0x40008000: vCPU 0's turns (N), 0x40008008: vCPU 1's turns (N),
//   x19 = CPU_ON's return (0 = SUCCESS).

        .equ    PSCI_CPU_OFF, 0x84000002
        .equ    PSCI_CPU_ON, 0xc4000003
        .equ    PSCI_SYSTEM_OFF, 0x84000008
        .equ    MAILBOX, 0x40008000
        .equ    TURNS, 100

        .text
        .global _start
_start:
        ldr     x0, =PSCI_CPU_ON
        mov     x1, #1                          // target: MPIDR affinity 0.0.0.1
        adr     x2, secondary                   // entry point (physical: the MMU is off)
        mov     x3, #0
        hvc     #0
        mov     x19, x0                         // 0 = SUCCESS
        ldr     x4, =MAILBOX                    // vCPU 0 counts at +0
        bl      turns
        ldr     x4, =MAILBOX
1:      ldr     x5, [x4, #0x10]                 // vCPU 1 done?
        cbz     x5, 1b
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

secondary:
        ldr     x4, =MAILBOX + 8                // vCPU 1 counts at +8
        bl      turns
        ldr     x4, =MAILBOX
        mov     x5, #1
        dmb     ish
        str     x5, [x4, #0x10]                 // done
        ldr     w0, =PSCI_CPU_OFF
        hvc     #0
        b       .                               // not reached

        .ltorg

        .org    0x100
// turns: TURNS times, add 1 to the counter at [x4] (the first instruction
// is the breakpoint's); x5, x6 clobbered.
turns:
        mov     x6, #TURNS
hit:    ldr     x5, [x4]                        // 0x40000104: the breakpoint
        add     x5, x5, #1
        str     x5, [x4]
        subs    x6, x6, #1
        b.ne    hit
        ret
