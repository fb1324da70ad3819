// psci-off: sum 1..100 into x19, leave it and a marker in RAM, then power the
// machine off with PSCI SYSTEM_OFF (HVC #0, function id in w0), which KVM
// turns into KVM_EXIT_SYSTEM_EVENT. Checked by ../psci-off.yaml: exit
// system-off, x19 == 5050, CurrentEL == EL1, the RAM words.
// Loaded and linked at 0x40000000 (RAM of the rig, as on QEMU's virt board).

        .equ    PSCI_SYSTEM_OFF, 0x84000008     // Arm DEN0022, SMC32 function id
        .equ    RESULT, 0x40008000              // two words of RAM the rig checks

        .text
        .global _start
_start:
        mov     x19, #0                 // sum
        mov     x1, #100                // n
1:      add     x19, x19, x1
        subs    x1, x1, #1
        b.ne    1b

        ldr     x2, =RESULT
        str     x19, [x2]               // RESULT+0: u64 5050
        ldr     w3, =0x600dcafe
        str     w3, [x2, #8]            // RESULT+8: u32 marker
        mrs     x20, CurrentEL          // EL in bits [3:2]: 0b0100 = EL1

        ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0                      // KVM's PSCI: the run ends here
        b       .                       // not reached

        .ltorg
