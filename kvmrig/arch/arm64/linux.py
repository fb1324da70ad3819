"""The Linux arm64 Image header and where the boot protocol wants things
(Documentation/arch/arm64/booting.rst, "Call the kernel image").

The 64-byte header: code0/code1, text_offset (u64 at 8), image_size (u64 at
16), flags (u64 at 24), reserved, magic "ARM\\x64" (at 56). The image must be
placed text_offset bytes above a 2 MiB aligned base; image_size bytes from
there (BSS included) must be free RAM. An image_size of 0 marks a kernel
older than 3.17: text_offset is then 0x80000 by convention and the size
unknown (the file's size is all kvmrig can check).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"ARM\x64"
MAGIC_AT = 56
HEADER_SIZE = 64
ALIGN = 2 << 20           # the base must be 2 MiB aligned
OLD_TEXT_OFFSET = 0x80000  # image_size 0: pre-3.17 kernels
DTB_MAX = 2 << 20          # booting.rst: the DTB must not exceed 2 MiB, 8-byte aligned


@dataclass(frozen=True)
class ImageHeader:
    text_offset: int
    image_size: int   # bytes the kernel occupies from its load address, BSS included
    flags: int

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & 1)  # flags bit 0: kernel endianness

    def load_address(self, ram_start: int) -> int:
        """Where the image goes in a RAM region starting at `ram_start`: the
        first 2 MiB boundary at or above it, plus text_offset."""
        return align_up(ram_start, ALIGN) + self.text_offset


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def is_image(head: bytes) -> bool:
    """Whether `head` (at least the first 64 bytes of a file) is an arm64 Image."""
    return len(head) >= HEADER_SIZE and head[MAGIC_AT:MAGIC_AT + 4] == MAGIC


def parse_header(head: bytes) -> ImageHeader:
    """The header of an arm64 Image; ValueError when `head` is not one."""
    if not is_image(head):
        raise ValueError("no arm64 Image magic ('ARM\\x64' at offset 56)")
    text_offset, image_size, flags = struct.unpack_from("<QQQ", head, 8)
    if image_size == 0:
        text_offset = OLD_TEXT_OFFSET
    return ImageHeader(text_offset, image_size, flags)
