/*
 * long-mode.S - 64-bit code, as the runner sets it up for mode: long.
 *
 * Mode: long (CS = 0x08, 64-bit; identity paging built by the runner at
 * cpu.tables_at). Loaded at 0x1000 (the entry).
 *
 * What it does: things only 64-bit mode can do: a 64-bit immediate and
 * BSWAP, a shift into bit 63, RIP-relative addressing; stores RAX at 0x3000
 * and halts.
 * What the rig checks: exit hlt, rax == 0xefcdab8967452301,
 * r15 == 0x8000000000000000, rbx == "LONGMODE" read as a little-endian u64,
 * RAM 0x3000 = rax (u64), and the mode itself: CS == 0x08, CR0.PG and PE,
 * CR4.PAE, EFER.LMA (masked register checks).
 */
        .code64
        .text
        .globl  _start
_start:
        movabs  $0x0123456789abcdef, %rax
        bswap   %rax                    # RAX = 0xefcdab8967452301
        mov     $1, %r15d
        shl     $63, %r15               # R15 = 1 << 63
        mov     message(%rip), %rbx     # RIP-relative load of 8 bytes
        mov     %rax, 0x3000
        hlt
1:      jmp     1b                      # not reached: HLT ends the run

message:
        .ascii  "LONGMODE"
