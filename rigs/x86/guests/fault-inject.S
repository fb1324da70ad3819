/*
 * fault-inject.S - wait for a disk controller, retrying on errors: the
 * error path is only reachable when the rig injects a fault.
 *
 * Mode: long. Loaded at 0x1000 (the entry). Needs a stack (RSP from the
 * rig) for the CALLs.
 *
 * What it does: reads the ATA status register (port 0x1f7). ERR (bit 0)
 * set: prints "status error, retrying" and tries again, at most 3 times;
 * then prints "disk failed" and reports exit code 0xe1. DRDY (bit 6) set
 * and ERR clear: prints "disk ready" and reports exit code 0. RBX counts the
 * tries left. Output goes to the debug console (port 0xe9), the verdict to
 * an exit device (port 0xf4); the rig's constant device answers 0x50
 * (DRDY | DSC) on port 0x1f7, so on its own the guest never sees an error.
 *
 *     0x1000  mov  $3, %ebx
 *     0x1005  retry: mov $0x1f7, %edx
 *     0x100a         in   (%dx), %al       read status
 *     0x100b  check: test $1, %al          <- the rig's breakpoint: AL = status
 *     0x100d         jnz  error
 *     ...
 *
 * What the rig checks: a breakpoint at `check` (0x100b) that, at its first
 * hit only, sets AL = 0x51 (DRDY | DSC | ERR) as if the controller had
 * failed; the guest must print the retry message, read the status a second
 * time (2 hits), succeed, and exit with code 0 and RBX == 2 tries left.
 */
        .set    ATA_STATUS, 0x1f7
        .set    STATUS_ERR, 0x01
        .set    STATUS_DRDY, 0x40
        .set    DEBUGCON, 0xe9
        .set    EXIT_PORT, 0xf4
        .set    TRIES, 3

        .code64
        .text
        .globl  _start
_start:
        mov     $TRIES, %ebx
retry:
        mov     $ATA_STATUS, %edx
        in      (%dx), %al              # AL = controller status
check:                                  # 0x100b
        test    $STATUS_ERR, %al
        jnz     error
        test    $STATUS_DRDY, %al
        jz      error
        lea     ready_msg(%rip), %rsi
        call    puts
        xor     %eax, %eax              # exit code 0: passed
        out     %al, $EXIT_PORT
        hlt                             # not reached: the exit device ends the run
error:
        lea     retry_msg(%rip), %rsi
        call    puts
        dec     %ebx
        jnz     retry
        lea     failed_msg(%rip), %rsi
        call    puts
        mov     $0xe1, %al              # exit code 0xe1: the disk never came up
        out     %al, $EXIT_PORT
        hlt                             # not reached

/* puts: print the NUL-terminated string at RSI on the debug console. */
puts:
        lodsb
        test    %al, %al
        jz      1f
        out     %al, $DEBUGCON
        jmp     puts
1:      ret

ready_msg:  .asciz "disk ready\n"
retry_msg:  .asciz "status error, retrying\n"
failed_msg: .asciz "disk failed\n"
