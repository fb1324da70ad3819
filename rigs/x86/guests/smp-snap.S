/*
 * smp-snap.S - two CPUs, each counting in its own memory: a machine to take
 * snapshots of while both run (rigs/x86/smp-snap*.yaml).
 *
 * Mode: protected (the BSP). Loaded at 0x1000 (the entry). Needs the rig's
 * `cpus: 2` and machine.irqchip (the local APICs are KVM's).
 *
 * What it does:
 *   - the BSP copies the AP's 16-bit code (ap_start..ap_end) to 0x8000,
 *     software-enables its local APIC and starts the AP: INIT (at
 *     `start_ap`), then a STARTUP IPI with vector 0x08 (at `sipi`);
 *   - the BSP runs ROUNDS rounds (`round`) of TURNS turns, each adding 1 to
 *     BSP_COUNT (0x5000) and the turn's counter to EBX; the AP runs the same
 *     (`ap_round`) on AP_COUNT (0x5004) and EDX, then stores EDX at AP_SUM
 *     (0x5008), sets AP_DONE (0x5010) and halts with interrupts off;
 *   - the BSP waits for AP_DONE and writes BSP_COUNT + AP_COUNT to the exit
 *     port 0xf4.
 * Nothing depends on how the two interleave: the end state is always the
 * same (exit code 2 x ROUNDS x TURNS = 8000, EBX and AP_SUM = ROUNDS x
 * TURNS x (TURNS + 1) / 2 = 2002000), wherever a snapshot was taken.
 */
        .set    BSP_COUNT, 0x5000
        .set    AP_COUNT, 0x5004
        .set    AP_SUM, 0x5008
        .set    AP_STARTED, 0x500c
        .set    AP_DONE, 0x5010
        .set    AP_CODE, 0x8000         # = SIPI vector 0x08 << 12
        .set    ICR_LOW, 0xfee00300
        .set    ICR_HIGH, 0xfee00310
        .set    SVR, 0xfee000f0
        .set    ROUNDS, 4
        .set    TURNS, 1000
        .set    EXIT_PORT, 0xf4

        .code32
        .text
        .globl  _start
_start:
        mov     $ap_start, %esi
        mov     $AP_CODE, %edi
        mov     $(ap_end - ap_start), %ecx
        cld
        rep movsb
        xor     %ebx, %ebx
        movl    $0x1ff, SVR             # software-enable the local APIC (spurious vector 0xff)
        movl    $(1 << 24), ICR_HIGH    # destination: APIC ID 1
start_ap:
        movl    $0x00004500, ICR_LOW    # INIT, level assert
sipi:
        movl    $0x00004608, ICR_LOW    # STARTUP, vector 0x08 (once: KVM keeps a second
                                        # SIPI pending, and it wakes the started AP from its
                                        # final HLT once, so its end state would be halted
                                        # or woken by timing)

        mov     $ROUNDS, %edx
round:
        mov     $TURNS, %ecx
1:      incl    BSP_COUNT
        add     %ecx, %ebx
        loop    1b
        dec     %edx
        jnz     round

wait:   cmpb    $1, AP_DONE             # wait for the AP
        je      2f
        pause
        jmp     wait
2:      mov     BSP_COUNT, %eax
        add     AP_COUNT, %eax
        out     %eax, $EXIT_PORT        # ends the run: exit code = both counts
        hlt

        /* The AP: real mode, CS:IP = 0800:0000, copied to 0x8000 by the BSP. */
        .code16
ap_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        movb    $1, AP_STARTED
        xor     %edx, %edx              # (INIT left the CPU signature in EDX)
        xor     %ecx, %ecx
        mov     $ROUNDS, %si
ap_round:
        mov     $TURNS, %cx
3:      incl    AP_COUNT
        add     %ecx, %edx
        loop    3b
        dec     %si
        jnz     ap_round
        mov     %edx, AP_SUM
        movb    $1, AP_DONE
4:      hlt
        jmp     4b
ap_end:
