/*
 * bp-elf-symbols.S - an ELF guest whose rig sets breakpoints and a
 * watchpoint by symbol ("sym:loop", "sym:loop+8", "sym:checksum").
 *
 * Mode: long. Linked by bp-elf-symbols.ld at 0x10000 (code, read-only data)
 * and 0x11000 (data and bss on their own page), entry `_start`.
 *
 * What it does: hashes the NUL-terminated `message` ("kvmrig") with
 * h = h * 31 + byte, like Java's String.hashCode, keeping the byte index in
 * RCX; stores the hash to `checksum` and the length to `length`; halts.
 *
 *     loop+0   movzbl (%rsi,%rcx), %edx   4 bytes: EDX = the next byte
 *     loop+4   test   %edx, %edx          2 bytes
 *     loop+6   jz     done                2 bytes
 *     loop+8   imul   $31, %eax, %eax     <- after the NUL test: EDX is a
 *     loop+11  add    %edx, %eax             character of the message
 *     loop+13  inc    %ecx
 *     loop+15  jmp    loop
 *
 * What the rig checks: `sym:loop` (hw) is hit 7 times (6 characters and the
 * NUL), `sym:loop+8` (sw) 6 times with EDX a lowercase letter every time,
 * `sym:done` once with RCX == 6; the write watch on `sym:checksum` fires
 * once, with the hash 0xbd48a56e stored. At the end exit hlt and the
 * results at `sym:checksum` and `sym:length`.
 */
        .code64
        .text
        .globl  _start
        .type   _start, @function
_start:
        lea     message(%rip), %rsi
        xor     %eax, %eax              # the hash
        xor     %ecx, %ecx              # the index
        .globl  loop
loop:
        movzbl  (%rsi,%rcx), %edx
        test    %edx, %edx
        jz      done
        imul    $31, %eax, %eax
        add     %edx, %eax
        inc     %ecx
        jmp     loop
        .globl  done
done:
        mov     %eax, checksum(%rip)
        mov     %ecx, length(%rip)
        hlt
1:      jmp     1b                      # not reached: HLT ends the run
        .size   _start, . - _start

        .section .rodata
        .globl  message
        .type   message, @object
message:
        .asciz  "kvmrig"
        .size   message, . - message

        .bss
        .balign 4
        .globl  checksum
        .type   checksum, @object
checksum:
        .skip   4
        .size   checksum, . - checksum
        .globl  length
        .type   length, @object
length:
        .skip   4
        .size   length, . - length
