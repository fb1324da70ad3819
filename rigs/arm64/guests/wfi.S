// wfi: WFI in a loop with every interrupt masked and no interrupt source.
// arm64 KVM has no "halt" exit: KVM handles WFI in the kernel (the vCPU
// sleeps until an interrupt, or WFI runs natively when KVM does not trap it),
// so this guest never stops on its own. ../wfi.yaml expects `timeout`.
//
//   0x40000000  mov x1, #0x77
//   0x40000004  1: wfi
//   0x40000008  b 1b

        .text
        .global _start
_start:
        mov     x1, #0x77
1:      wfi
        b       1b
