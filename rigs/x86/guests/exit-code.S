/*
 * exit-code.S - report a test result through an exit device at port 0xf4.
 *
 * Mode: long. Loaded at 0x1000 (the entry).
 *
 * What it does: three self-checks of the state it was started in, each
 * with its own failure code, then writes the result byte to port 0xf4:
 *   0x11  EFER.LMA (bit 10, read with RDMSR 0xc0000080) is clear
 *   0x12  CR0.PG (bit 31) is clear
 *   0x13  a 64-bit store to 0x5000 does not read back
 *   42    all passed
 * Writing V to the exit device ends the run with exit code V, so the guest
 * never reaches the HLT after the OUT.
 * What the rig checks: exit exit-code with exit_code 42, RAM 0x5000 =
 * 0x1122334455667788 (u64).
 */
        .set    EXIT_PORT, 0xf4
        .set    MSR_EFER, 0xc0000080
        .set    EFER_LMA, 10            # bit: long mode active
        .set    CR0_PG, 31              # bit: paging enabled

        .code64
        .text
        .globl  _start
_start:
        mov     $MSR_EFER, %ecx
        rdmsr                           # EDX:EAX = EFER
        mov     $0x11, %bl              # MOV leaves the flags alone
        bt      $EFER_LMA, %eax
        jnc     report
        mov     %cr0, %rax
        mov     $0x12, %bl
        bt      $CR0_PG, %rax
        jnc     report
        movabs  $0x1122334455667788, %rax
        mov     %rax, 0x5000
        mov     $0x13, %bl
        cmp     0x5000, %rax
        jne     report
        mov     $42, %bl                # all passed
report:
        mov     %bl, %al
        out     %al, $EXIT_PORT         # ends the run: exit code = AL
        hlt                             # not reached
1:      jmp     1b
