// pl011-hello: print a line on a PL011 UART at 0x09000000 (as on QEMU's virt
// board), polling FR.TXFF before each byte, then PSCI SYSTEM_OFF.
// Checked by ../pl011-hello.yaml: the console text.
//
// Device registers are accessed with plain LDR/STR (register offset
// addressing, no writeback): only those give KVM a valid syndrome (ISV) to
// emulate the access as MMIO; LDP/STP or writeback forms do not.

        .equ    UART, 0x09000000
        .equ    UARTDR, 0x000                   // data register: write = transmit
        .equ    UARTFR, 0x018                   // flag register
        .equ    FR_TXFF, 5                      // bit 5: transmit FIFO full
        .equ    PSCI_SYSTEM_OFF, 0x84000008

        .text
        .global _start
_start:
        ldr     x1, =UART
        adr     x2, message
next:   ldrb    w3, [x2], #1            // RAM: writeback is fine here
        cbz     w3, done
wait:   ldr     w4, [x1, #UARTFR]
        tbnz    w4, #FR_TXFF, wait
        str     w3, [x1, #UARTDR]
        b       next
done:   ldr     w0, =PSCI_SYSTEM_OFF
        hvc     #0
        b       .

        .ltorg
message:
        .asciz  "Hello from arm64 EL1 over PL011\n"
        .balign 4
