/*
 * fib.S - fib(n) in 64-bit mode, plus a read of a CMOS register.
 *
 * Mode: long. Loaded at 0x1000 (the entry). Inputs from the rig's cpu.regs:
 * RDI = n, RSP = a stack (the CALL needs one).
 *
 * What it does: RAX = fib(RDI) with fib(0) = 0, fib(1) = 1 (iterative);
 * then selects CMOS register 0x0a (RTC status A) by writing 0x0a to the
 * index port 0x70 and reads it from the data port 0x71 into RBX. Halts.
 * What the rig checks (n = 20): exit hlt, rax == 6765, rbx == the value
 * of the rig's constant device on port 0x71 (0x26), rdi == 20, rsp back at
 * its start value, and the index write recorded on port 0x70 (no device
 * claims 0x70).
 */
        .set    CMOS_INDEX, 0x70
        .set    CMOS_DATA, 0x71
        .set    RTC_STATUS_A, 0x0a

        .code64
        .text
        .globl  _start
_start:
        call    fib                     # RAX = fib(RDI)
        mov     %rax, %r12
        mov     $RTC_STATUS_A, %al
        out     %al, $CMOS_INDEX
        in      $CMOS_DATA, %al
        movzbl  %al, %ebx               # RBX = the CMOS byte
        mov     %r12, %rax
        hlt
1:      jmp     1b                      # not reached: HLT ends the run

/* fib: RAX = fib(RDI). Clobbers RCX, RDX, R8. */
fib:
        xor     %eax, %eax              # a = fib(0)
        mov     $1, %edx                # b = fib(1)
        mov     %rdi, %rcx
        test    %rcx, %rcx
        jz      3f
2:      lea     (%rax,%rdx), %r8        # (a, b) <- (b, a + b)
        mov     %rdx, %rax
        mov     %r8, %rdx
        dec     %rcx
        jnz     2b
3:      ret
