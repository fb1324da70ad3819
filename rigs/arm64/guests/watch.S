// watch: three turns of stores into the MIDDLE of two watched buffers, then
// PSCI SYSTEM_OFF. Checked by ../watchpoint.yaml, which watches for writes:
//   A = 16 bytes at 0x40008000: a 4-byte store at offset 8 each turn (a hit),
//       a load from there and a store at 0x40008010, just past A (no hits);
//   B = 8 bytes at 0x40008018: a 2-byte store at offset 4 each turn (a hit).
// Each watchpoint is hit exactly 3 times. The stored values grow each turn:
// w2 = 0x11111111, 0x22222222, 0x33333333 and w6 = 0x1111, 0x2222, 0x3333.
// Data accesses are aligned: with the MMU off memory is Device memory, where
// an unaligned access is an alignment fault.

        .equ    BUF, 0x40008000
        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        ldr     x1, =BUF
        ldr     w2, =0x11111111         // A's value this turn
        ldr     w5, =0x11111111         // A's step between turns
        mov     w6, #0x1111             // B's value this turn
        mov     w7, #0x1111             // B's step between turns
        mov     x3, #3                  // turns
1:      str     w2, [x1, #8]            // A + 8..11: a hit in A's middle
        ldr     w4, [x1, #8]            // a read: not a write watch hit
        str     w2, [x1, #16]           // 0x40008010, between A and B: no hit
        strh    w6, [x1, #0x1c]         // B + 4..5: a hit in B's middle
        add     w2, w2, w5
        add     w6, w6, w7
        subs    x3, x3, #1
        b.ne    1b
        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg
