// exit-code: self-checks, then the guest reports its own verdict by writing a
// code to the exit device at 0x0a000000. Checked by ../exit-code.yaml: exit
// code 42 (0x11 / 0x12 / 0x13 name the self-check that failed).
//   0x11: not at EL1        (CurrentEL.EL != 1)
//   0x12: MMU on at boot    (SCTLR_EL1.M != 0)
//   0x13: RAM round trip    (a u64 written to 0x40008000 did not read back)

        .equ    EXIT, 0x0a000000
        .equ    SCRATCH, 0x40008000

        .text
        .global _start
_start:
        mov     w1, #0x11
        mrs     x2, CurrentEL
        cmp     x2, #(1 << 2)
        b.ne    report

        mov     w1, #0x12
        mrs     x2, sctlr_el1
        tbnz    x2, #0, report          // SCTLR_EL1.M, bit 0

        mov     w1, #0x13
        ldr     x3, =SCRATCH
        ldr     x4, =0x1122334455667788
        str     x4, [x3]
        ldr     x5, [x3]
        cmp     x4, x5
        b.ne    report

        mov     w1, #42                 // all passed
report: ldr     x2, =EXIT
        str     w1, [x2]                // the run ends with this write
        b       .

        .ltorg
