/*
 * watch-read.S - a configuration word that is read four times and written
 * once, for a watchpoint that counts only the reads.
 *
 * Mode: long. Loaded at 0x1000 (the entry). The configuration word is at
 * 0x6000, on a page that holds nothing else: on a KVM without data
 * breakpoints a read watchpoint unmaps the whole 4 KiB page, so the code,
 * its stack and any other data must live elsewhere.
 *
 * What it does: reads `config` (0x6000, loaded by the rig with 0x00000007)
 * four times, adding it to RAX each turn (RAX = 28); then writes the new
 * value 0x00000009 to it once, and halts.
 *
 *     0x1000  xor  %eax, %eax
 *     0x1002  mov  $4, %ecx
 *     0x1007  next: add 0x6000, %eax             a read of config
 *     0x100e        dec %ecx
 *     0x1010        jnz next
 *     0x1012  movl $9, 0x6000                    the one write
 *     0x101d  hlt
 *
 * What the rig checks: the read watchpoint on config is hit exactly 4 times
 * (the write is not a read), and at its 4th hit config still holds 7; at
 * the end exit hlt, eax == 28 and config == 9.
 */
        .set    CONFIG, 0x6000

        .code64
        .text
        .globl  _start
_start:
        xor     %eax, %eax
        mov     $4, %ecx
next:
        add     CONFIG, %eax            # read the configuration word
        dec     %ecx
        jnz     next
        movl    $9, CONFIG              # update it once
        hlt
1:      jmp     1b                      # not reached: HLT ends the run
