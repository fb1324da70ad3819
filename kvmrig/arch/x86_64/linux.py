"""The Linux x86 boot protocol (Documentation/arch/x86/boot.rst) as pure data:
the bzImage setup header and the zero page (struct boot_params) a loader
hands the kernel at its 64-bit entry, as VMMs such as Firecracker and
cloud-hypervisor do (no real-mode setup code runs: it is the slowest path
on KVMs that emulate real mode).

64-bit entry contract: long mode, paging on with an identity map of the
kernel (init_size from its load address), the zero page and the command line;
a GDT with flat 4 GiB segments; interrupts off; RSI = the zero page.
bzImage: the protected-mode kernel (after the setup sectors) is loaded at
pref_address (relocatable kernels) or 0x100000, entered at load + 0x200.
vmlinux (ELF): its PT_LOAD segments at their physical addresses, entered at
the ELF entry (startup_64's physical address).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HDR_MAGIC = b"HdrS"
SETUP_HEADER = 0x1F1          # where the setup header sits, in the bzImage and in boot_params
ZERO_PAGE_SIZE = 0x1000
MIN_VERSION = 0x020C          # 2.12: xloadflags, the 64-bit entry
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH = 1 << 0
KEEP_SEGMENTS = 1 << 6
CAN_USE_HEAP = 1 << 7
LOADER_UNDEFINED = 0xFF
E820_RAM, E820_RESERVED = 1, 2
E820_MAX = 128
ENTRY_64 = 0x200              # the 64-bit entry, from the protected-mode kernel's start

# boot_params offsets (arch/x86/include/uapi/asm/bootparam.h)
BP_EXT_RAMDISK_IMAGE, BP_EXT_RAMDISK_SIZE, BP_EXT_CMD_LINE_PTR = 0x0C0, 0x0C4, 0x0C8
BP_E820_ENTRIES, BP_E820_TABLE = 0x1E8, 0x2D0
# setup header offsets, from the start of boot_params / the bzImage
H_SETUP_SECTS, H_JUMP, H_VERSION, H_TYPE_OF_LOADER, H_LOADFLAGS = 0x1F1, 0x200, 0x206, 0x210, 0x211
H_CODE32_START, H_RAMDISK_IMAGE, H_RAMDISK_SIZE, H_HEAP_END_PTR = 0x214, 0x218, 0x21C, 0x224
H_CMD_LINE_PTR, H_INITRD_ADDR_MAX, H_KERNEL_ALIGNMENT, H_RELOCATABLE = 0x228, 0x22C, 0x230, 0x234
H_XLOADFLAGS, H_CMDLINE_SIZE, H_PREF_ADDRESS, H_INIT_SIZE = 0x236, 0x238, 0x258, 0x260


class LinuxImageError(ValueError):
    """The file is not a kernel kvmrig can boot."""


@dataclass(frozen=True)
class BzImage:
    header: bytes          # the setup header bytes, 0x1f1 .. end of header
    kernel: bytes          # the protected-mode kernel
    version: int
    load_address: int      # where the protected-mode kernel goes
    init_size: int         # memory it needs from there (decompression)
    cmdline_size: int
    initrd_max: int
    xloadflags: int

    @property
    def entry(self) -> int:
        return self.load_address + ENTRY_64


def parse_bzimage(data: bytes) -> BzImage:
    """The setup header and protected-mode kernel of a bzImage."""
    if len(data) < 0x270 or data[0x202:0x206] != HDR_MAGIC:
        raise LinuxImageError("not a Linux bzImage (no 'HdrS' boot header at 0x202)")
    version = struct.unpack_from("<H", data, H_VERSION)[0]
    if version < MIN_VERSION:
        raise LinuxImageError(f"boot protocol {version >> 8}.{version & 0xff} is older than 2.12: "
                              "no 64-bit entry point")
    xloadflags = struct.unpack_from("<H", data, H_XLOADFLAGS)[0]
    if not xloadflags & XLF_KERNEL_64:
        raise LinuxImageError("the kernel has no 64-bit entry point (xloadflags bit 0 clear)")
    setup_sects = data[H_SETUP_SECTS] or 4
    kernel = data[(setup_sects + 1) * 512:]
    header_end = 0x202 + data[0x201]
    relocatable = data[H_RELOCATABLE]
    pref = struct.unpack_from("<Q", data, H_PREF_ADDRESS)[0]
    code32 = struct.unpack_from("<I", data, H_CODE32_START)[0]
    return BzImage(header=data[SETUP_HEADER:header_end], kernel=kernel, version=version,
                   load_address=pref if relocatable and pref else code32,
                   init_size=struct.unpack_from("<I", data, H_INIT_SIZE)[0],
                   cmdline_size=struct.unpack_from("<I", data, H_CMDLINE_SIZE)[0] or 255,
                   initrd_max=struct.unpack_from("<I", data, H_INITRD_ADDR_MAX)[0] or 0x37FFFFFF,
                   xloadflags=xloadflags)


EBDA, BIOS_END = 0x9FC00, 0x100000


def e820(regions: list[tuple[int, int, bool]]) -> list[tuple[int, int, int]]:
    """(addr, size, type) entries: RAM regions as RAM, ROM as reserved, and the
    PC's legacy hole (EBDA, VGA, BIOS: 0x9fc00..1 MiB) reserved as a BIOS
    reports it, which the kernel's early memory setup expects."""
    out: list[tuple[int, int, int]] = []
    for at, size, ram in sorted(regions):
        end = at + size
        if ram and at < BIOS_END and end > EBDA:
            if at < EBDA:
                out.append((at, EBDA - at, E820_RAM))
            out.append((max(at, EBDA), min(end, BIOS_END) - max(at, EBDA), E820_RESERVED))
            if end > BIOS_END:
                out.append((BIOS_END, end - BIOS_END, E820_RAM))
        else:
            out.append((at, size, E820_RAM if ram else E820_RESERVED))
    return out[:E820_MAX]


def zero_page(header: bytes | None, regions: list[tuple[int, int, bool]], cmdline_addr: int,
              initrd: tuple[int, int] | None) -> bytes:
    """struct boot_params for the 64-bit entry. `header`: the bzImage's setup
    header (None for a vmlinux, which has none: a minimal 2.12 header is made)."""
    bp = bytearray(ZERO_PAGE_SIZE)
    if header is not None:
        bp[SETUP_HEADER:SETUP_HEADER + len(header)] = header
    else:
        struct.pack_into("<4sH", bp, 0x202, HDR_MAGIC, MIN_VERSION)
        struct.pack_into("<H", bp, 0x1FE, 0xAA55)
    bp[H_TYPE_OF_LOADER] = LOADER_UNDEFINED
    bp[H_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<I", bp, H_CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if initrd is not None:
        at, size = initrd
        struct.pack_into("<II", bp, H_RAMDISK_IMAGE, at & 0xFFFFFFFF, size & 0xFFFFFFFF)
        struct.pack_into("<II", bp, BP_EXT_RAMDISK_IMAGE, at >> 32, size >> 32)
    table = e820(regions)
    bp[BP_E820_ENTRIES] = len(table)
    for i, (at, size, kind) in enumerate(table):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + 20 * i, at, size, kind)
    return bytes(bp)
