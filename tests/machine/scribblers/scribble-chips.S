/*
 * scribble-chips.S - leave the in-kernel chips (rig `machine: {pit: true}`)
 * unlike a new VM's, for the next rig on a reused VM to find: the PIT's
 * channel 0 in mode 2 with count 0x1234 and channel 2 in mode 0, the PICs'
 * masks, IOAPIC pin 1's redirection entry, the local APIC's TPR, spurious
 * vector register, LVT timer (periodic, masked) and initial count.
 *
 * Mode: long (the low 4 GiB identity-mapped). Loaded at 0x1000. Ends in
 * CLI; HLT.
 */
        .code64
        .text
        .globl  _start
_start:
        cli
        mov     $0x34, %al              /* PIT channel 0: lo/hi, mode 2 */
        out     %al, $0x43
        mov     $0x34, %al
        out     %al, $0x40
        mov     $0x12, %al
        out     %al, $0x40
        mov     $0xb0, %al              /* PIT channel 2: lo/hi, mode 0 */
        out     %al, $0x43
        mov     $0x78, %al
        out     %al, $0x42
        mov     $0x56, %al
        out     %al, $0x42
        mov     $0xa5, %al              /* PIC masks (OCW1) */
        out     %al, $0x21
        mov     $0x5a, %al
        out     %al, $0xa1
        mov     $0xfec00000, %esi       /* IOAPIC: pin 1, vector 0x31, level, masked */
        movl    $0x12, (%rsi)
        movl    $0x18031, 0x10(%rsi)
        mov     $0xfee00000, %esi       /* local APIC */
        movl    $0x1ff, 0xf0(%rsi)      /* software enabled, spurious vector 0xff */
        movl    $0x70, 0x80(%rsi)       /* TPR */
        movl    $0x30040, 0x320(%rsi)   /* LVT timer: periodic, masked, vector 0x40 */
        movl    $0x0b, 0x3e0(%rsi)      /* divide by 1 */
        movl    $0x100000, 0x380(%rsi)  /* initial count: the timer runs */
        hlt
