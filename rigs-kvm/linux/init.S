// init: PID 1 of the initramfs of debian-arm64.yaml. It prints a marker on
// the console the kernel gave it (fd 1 = /dev/console = ttyAMA0, the rig's
// PL011) and powers the machine off: reboot(POWER_OFF), which Linux carries
// out as PSCI SYSTEM_OFF, so the run ends with exit `system-off`.
// No libc: raw Linux arm64 system calls (number in x8, `svc #0`).

        .equ    SYS_write, 64
        .equ    SYS_reboot, 142
        .equ    LINUX_REBOOT_MAGIC1, 0xfee1dead
        .equ    LINUX_REBOOT_MAGIC2, 0x28121969
        .equ    LINUX_REBOOT_CMD_POWER_OFF, 0x4321fedc

        .text
        .global _start
_start:
        mov     x0, #1                          // stdout
        adr     x1, marker
        mov     x2, #(marker_end - marker)
        mov     x8, #SYS_write
        svc     #0
        ldr     x0, =LINUX_REBOOT_MAGIC1
        ldr     x1, =LINUX_REBOOT_MAGIC2
        ldr     x2, =LINUX_REBOOT_CMD_POWER_OFF
        mov     x3, #0
        mov     x8, #SYS_reboot
        svc     #0
        b       .                               // not reached: the machine is off

        .ltorg
marker:
        .ascii  "KVMRIG-INIT: PID 1 of the initramfs reached, powering off\n"
marker_end:
