/*
 * serial-hello.S - "Hello from long mode" on a 16550 UART at port 0x3f8.
 *
 * Mode: long. Loaded at 0x1000 (the entry).
 *
 * What it does: for each byte of a NUL-terminated string, polls the Line
 * Status Register (port 0x3fd) until THRE (bit 5, "transmit holding
 * register empty") is set, then writes the byte to THR (port 0x3f8); halts
 * after the NUL. kvmrig's UART needs no baud-rate setup, so there is none.
 * What the rig checks: exit hlt, console contains "Hello from long mode".
 */
        .set    COM1, 0x3f8
        .set    THR, COM1 + 0           # transmit holding register (write)
        .set    LSR, COM1 + 5           # line status register (read)
        .set    LSR_THRE, 0x20          # bit 5: ready for the next byte

        .code64
        .text
        .globl  _start
_start:
        lea     message(%rip), %rsi
next:
        movzbl  (%rsi), %ebx            # BL = next byte
        test    %bl, %bl
        jz      done
        mov     $LSR, %dx
wait:   in      %dx, %al
        test    $LSR_THRE, %al
        jz      wait                    # UART busy: poll again
        mov     $THR, %dx
        mov     %bl, %al
        out     %al, %dx
        inc     %rsi
        jmp     next
done:
        hlt
1:      jmp     1b                      # not reached: HLT ends the run

message:
        .asciz  "Hello from long mode\n"
