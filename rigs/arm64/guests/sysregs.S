// sysregs: set up EL1 system registers the way early boot code does, then
// PSCI SYSTEM_OFF. ../sysregs.yaml checks them (some under a mask) and a
// 128-bit SIMD register:
//   VBAR_EL1  = `vectors` (0x40000800, 2 KiB aligned as the architecture requires)
//   TPIDR_EL1 = 0x5eed
//   CPACR_EL1.FPEN = 0b11 (FP/SIMD no longer trap at EL1), needed before using v0
//   SCTLR_EL1.I = 1 (instruction cache on; the MMU stays off)
//   v0 = 0xfedcba9876543210_0123456789abcdef (high doubleword, low doubleword)

        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        adr     x1, vectors
        msr     vbar_el1, x1
        ldr     x2, =0x5eed
        msr     tpidr_el1, x2

        mrs     x3, cpacr_el1
        orr     x3, x3, #(3 << 20)      // CPACR_EL1.FPEN, bits [21:20]
        msr     cpacr_el1, x3
        isb                             // the new FPEN applies from here

        ldr     x4, =0x0123456789abcdef
        ldr     x5, =0xfedcba9876543210
        fmov    d0, x4                  // v0[63:0], clears v0[127:64]
        fmov    v0.d[1], x5             // v0[127:64]

        mrs     x6, sctlr_el1
        orr     x6, x6, #(1 << 12)      // SCTLR_EL1.I
        msr     sctlr_el1, x6
        isb

        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg

// Any exception parks the CPU on its vector's `b .`, so a wrong turn shows up
// as a timeout with the pc inside this table.
        .balign 2048
vectors:
        .rept   16
        b       .
        .balign 128
        .endr
