"""The Linux x86 boot protocol: bzImage header parsing and the zero page."""

import struct

import pytest

from kvmrig.arch.x86_64 import linux


def bzimage(version=0x020F, xload=1, setup_sects=2, pref=0x1000000, relocatable=1, init_size=0x800000,
            kernel=b"KERNEL" * 10) -> bytes:
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x201] = 0x6A                              # header ends at 0x202 + 0x6a
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, version)
    struct.pack_into("<I", head, 0x214, 0x100000)   # code32_start
    struct.pack_into("<I", head, 0x22C, 0x7FFFFFFF)
    head[0x234] = relocatable
    struct.pack_into("<H", head, 0x236, xload)
    struct.pack_into("<I", head, 0x238, 2047)
    struct.pack_into("<Q", head, 0x258, pref)
    struct.pack_into("<I", head, 0x260, init_size)
    return bytes(head) + kernel


def test_bzimage_header():
    bz = linux.parse_bzimage(bzimage())
    assert bz.kernel == b"KERNEL" * 10 and bz.load_address == 0x1000000 and bz.entry == 0x1000200
    assert (bz.init_size, bz.cmdline_size, bz.initrd_max) == (0x800000, 2047, 0x7FFFFFFF)
    assert len(bz.header) == 0x202 + 0x6A - 0x1F1
    assert linux.parse_bzimage(bzimage(relocatable=0)).load_address == 0x100000


@pytest.mark.parametrize("kw, message", [({"version": 0x020B}, "older than 2.12"), ({"xload": 0}, "64-bit")])
def test_kernels_without_a_64_bit_entry_are_refused(kw, message):
    with pytest.raises(linux.LinuxImageError, match=message):
        linux.parse_bzimage(bzimage(**kw))
    with pytest.raises(linux.LinuxImageError, match="HdrS"):
        linux.parse_bzimage(bytes(4096))


def test_zero_page():
    bz = linux.parse_bzimage(bzimage())
    zp = linux.zero_page(bz.header, [(0, 64 << 20, True), (0xFFFE0000, 0x20000, False)], 0x20000,
                         (0x3000000, 0x1234))
    assert len(zp) == 4096 and zp[0x202:0x206] == b"HdrS"
    assert zp[0x210] == 0xFF and zp[0x211] & 1
    assert struct.unpack_from("<I", zp, 0x228)[0] == 0x20000
    assert struct.unpack_from("<II", zp, 0x218) == (0x3000000, 0x1234)
    n = zp[0x1E8]
    table = [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(n)]
    assert table == [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, (64 << 20) - 0x100000, 1),
                     (0xFFFE0000, 0x20000, 2)]


def test_zero_page_for_a_vmlinux_has_a_minimal_header():
    zp = linux.zero_page(None, [(0, 16 << 20, True)], 0x20000, None)
    assert zp[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", zp, 0x206)[0] == 0x020C
    assert struct.unpack_from("<II", zp, 0x218) == (0, 0)
