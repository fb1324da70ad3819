// nested-loops: 3 outer turns of 4 inner turns; x21 counts inner turns in
// total (12), then PSCI SYSTEM_OFF. ../sw-breakpoint.yaml plants BRK at
// `outer` (3 hits) and `inner` (12 hits). Counters live in x19-x21: KVM's
// PSCI code overwrites x0-x3 with return values before the SYSTEM_OFF exit.
//
//   0x40000000  mov x19, #0             outer counter
//   0x40000004  mov x21, #0             total inner turns
//   0x40000008  outer: mov x20, #0      <- 3 hits, x19 = 0..2
//   0x4000000c  inner: add x21, x21, #1 <- 12 hits, x20 = 0..3, x21 = 0..11
//   0x40000010  add x20, x20, #1
//   0x40000014  cmp x20, #4
//   0x40000018  b.ne inner
//   0x4000001c  add x19, x19, #1
//   0x40000020  cmp x19, #3
//   0x40000024  b.ne outer

        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        mov     x19, #0
        mov     x21, #0
outer:  mov     x20, #0
inner:  add     x21, x21, #1
        add     x20, x20, #1
        cmp     x20, #4
        b.ne    inner
        add     x19, x19, #1
        cmp     x19, #3
        b.ne    outer
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg
