// fault-inject: a self-test runs three passes; each pass calls `selftest`,
// which returns x0 = 0 when it passed, and `check` branches on x0. When all
// three pass the guest writes exit code 0 to the exit device; when pass N
// fails it writes 0xe0 + N. The self-test always passes on its own:
// ../fault-inject.yaml sets x0 = 1 at `check` on its 2nd hit and expects the
// guest to take the failure path (exit code 0xe2, x19 = 1 pass done).
//
//   0x40000000  mov x19, #0             passes done
//   0x40000004  pass: bl selftest
//   0x40000008  check: cbnz x0, failed  <- breakpoint, x0 = 0 from selftest

        .equ    EXIT, 0x0a000000

        .text
        .global _start
_start:
        mov     x19, #0
pass:   bl      selftest
check:  cbnz    x0, failed
        add     x19, x19, #1
        cmp     x19, #3
        b.ne    pass
        mov     w1, #0                  // every pass passed
        b       report
failed: add     w1, w19, #0xe1          // 0xe0 + (passes done + 1)
report: ldr     x2, =EXIT
        str     w1, [x2]
        b       .

// x0 = 0 when 6 * 7 == 42 (it is).
selftest:
        mov     x9, #6
        mov     x10, #7
        mul     x11, x9, x10
        sub     x0, x11, #42
        ret

        .ltorg
