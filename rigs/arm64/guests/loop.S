// loop: x20 = 0 + 1 + ... + 9, counting x19 from 0 to 9, then PSCI SYSTEM_OFF.
// ../hw-breakpoint.yaml stops at `body` (0x40000008) on every turn.
// Results live in x19/x20: KVM's PSCI code overwrites x0-x3 with return
// values (x0 = INTERNAL_FAILURE, x1-x3 = 0) before the SYSTEM_OFF exit.
//
//   0x40000000  mov x19, #0
//   0x40000004  mov x20, #0
//   0x40000008  body: add x20, x20, x19   <- 10 hits, x19 = 0..9 before it runs
//   0x4000000c  add x19, x19, #1
//   0x40000010  cmp x19, #10
//   0x40000014  b.ne body

        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        mov     x19, #0
        mov     x20, #0
body:   add     x20, x20, x19
        add     x19, x19, #1
        cmp     x19, #10
        b.ne    body
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg
