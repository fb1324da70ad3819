/*
 * smp-counter.S - two CPUs increment one counter under a spinlock.
 *
 * Mode: protected (the BSP). Loaded at 0x1000 (the entry). Needs the rig's
 * machine.cpus: 2 (and so machine.irqchip: the local APICs are KVM's).
 *
 * What it does:
 *   - the BSP copies the AP's 16-bit code (ap_start..ap_end) to 0x8000;
 *   - it software-enables its local APIC (SVR bit 8) and starts the AP as firmware does, through its local APIC's interrupt
 *     command register (0xfee00300, destination in 0xfee00310): INIT, then
 *     two STARTUP IPIs with vector 0x08, so the AP starts in real mode at
 *     CS:IP 0800:0000 = 0x8000;
 *   - both CPUs add 1 to COUNTER (0x5004) 1000 times, each time holding the
 *     spinlock at 0x5000 (XCHG is atomic); the AP then adds 1 to DONE
 *     (0x5008) and halts;
 *   - the BSP waits for DONE and writes COUNTER to the exit port 0xf4.
 * What the rig checks: exit code 2000 (no increment lost), DONE = 1.
 */
        .set    LOCK, 0x5000
        .set    COUNTER, 0x5004
        .set    DONE, 0x5008
        .set    AP_CODE, 0x8000         # = SIPI vector 0x08 << 12
        .set    ICR_LOW, 0xfee00300
        .set    ICR_HIGH, 0xfee00310
        .set    SVR, 0xfee000f0
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

        movl    $0x1ff, SVR             # software-enable the local APIC (spurious vector 0xff)
        movl    $(1 << 24), ICR_HIGH    # destination: APIC ID 1
        movl    $0x00004500, ICR_LOW    # INIT, level assert
        movl    $0x00004608, ICR_LOW    # STARTUP, vector 0x08
        movl    $0x00004608, ICR_LOW    # and again, as the MP spec says

        mov     $TURNS, %ecx
1:      mov     $1, %al
2:      xchg    %al, LOCK               # take the lock
        test    %al, %al
        jz      3f
        pause
        jmp     2b
3:      incl    COUNTER
        movb    $0, LOCK                # release it
        loop    1b

4:      cmpb    $1, DONE                # wait for the AP
        je      5f
        pause
        jmp     4b
5:      mov     COUNTER, %eax
        out     %eax, $EXIT_PORT        # ends the run: exit code = the count
        hlt

        /* The AP: real mode, CS:IP = 0800:0000, copied to 0x8000 by the BSP. */
        .code16
ap_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     $TURNS, %cx
6:      mov     $1, %al
7:      xchg    %al, LOCK
        test    %al, %al
        jz      8f
        pause
        jmp     7b
8:      incl    COUNTER
        movb    $0, LOCK
        loop    6b
        lock incb DONE
9:      hlt
        jmp     9b
ap_end:
