/*
 * triple-fault.S - a fault with no way to handle it: triple fault, shutdown.
 *
 * Mode: long. Loaded at 0x1000 (the entry).
 *
 * What it does: leaves a marker at 0x3000, loads an IDT with limit 0 (no
 * gate can be read), then executes UD2. The #UD cannot be delivered (its
 * gate is past the limit) so it becomes #GP, which cannot be delivered
 * either, so #DF; failing that too is a triple fault, and the CPU shuts down
 * (Intel SDM vol. 3, 6.15 "Interrupt 8 - Double Fault Exception").
 * What the rig checks: exit shutdown, RAM 0x3000 = 0x600dcafe (u32): the
 * guest did run up to the fault, and memory is still readable after it.
 */
        .code64
        .text
        .globl  _start
_start:
        movl    $0x600dcafe, 0x3000     # "I got here"
        lidt    empty_idt(%rip)
        ud2                             # -> #UD -> #GP -> #DF -> shutdown
        hlt                             # not reached
1:      jmp     1b

empty_idt:                              # pseudo-descriptor for LIDT in 64-bit mode
        .word   0                       # limit: 0
        .quad   0                       # base
