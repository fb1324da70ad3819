"""The arm64 Image header (Documentation/arch/arm64/booting.rst)."""

import struct

import pytest

from kvmrig.arch.arm64 import linux


def header(text_offset: int, image_size: int, flags: int = 0xA) -> bytes:
    return struct.pack("<IIQQQQQQ", 0x91005A4D, 0x14000000, text_offset, image_size, flags, 0, 0, 0) \
        + b"ARM\x64" + bytes(4)


def test_debian_like_header():
    # Debian 12's cloud kernel: text_offset 0, image_size 0x2240000, flags 0xa (LE, 4K pages, anywhere)
    h = linux.parse_header(header(0, 0x2240000))
    assert (h.text_offset, h.image_size, h.big_endian) == (0, 0x2240000, False)
    assert h.load_address(0x40000000) == 0x40000000
    assert h.load_address(0x40001000) == 0x40200000          # the next 2 MiB boundary


def test_old_kernels_have_text_offset_0x80000():
    h = linux.parse_header(header(0x1234, 0))
    assert h.text_offset == 0x80000 and h.load_address(0x40000000) == 0x40080000


def test_not_an_image():
    assert not linux.is_image(b"\x7fELF" + bytes(60)) and not linux.is_image(b"ARM\x64")
    with pytest.raises(ValueError):
        linux.parse_header(bytes(64))
    assert linux.parse_header(header(0, 1, flags=1)).big_endian
