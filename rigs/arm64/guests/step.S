// step: five instructions, the last one ending the run (PSCI SYSTEM_OFF).
// ../single-step.yaml counts them with expect.steps. The result is in x19:
// KVM's PSCI code overwrites x0-x3 before the SYSTEM_OFF exit.
//
//   0x40000000  mov x19, #1
//   0x40000004  add x19, x19, #2
//   0x40000008  lsl x19, x19, #3        x19 = 24
//   0x4000000c  ldr w0, =0x84000008     (a literal load from the pool)
//   0x40000010  hvc #0                  SYSTEM_OFF: the run ends here

        .text
        .global _start
_start:
        mov     x19, #1
        add     x19, x19, #2
        lsl     x19, x19, #3
        ldr     w0, =0x84000008
        hvc     #0
        b       .

        .ltorg
