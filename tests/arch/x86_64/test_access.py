"""What one x86 instruction reads and writes (kvmrig/arch/x86_64/access.py), from
hand-assembled bytes (disassembly beside each) and register values."""

from __future__ import annotations

import pytest

from kvmrig.arch.x86_64.access import READ, WRITE, Access, accesses, mode_of

REGS = {"rax": 0x3000, "rbx": 0x2000, "rcx": 2, "rsi": 0x5000, "rdi": 0x6000, "rsp": 0x8000, "rbp": 0x7000,
        "fs_base": 0x10000}


@pytest.mark.parametrize("code, found", [
    ("8b 05 10 00 00 00", [Access(0x1016, 4, READ)]),            # mov 0x10(%rip),%eax
    ("8b 04 25 00 18 00 00", [Access(0x1800, 4, READ)]),         # mov 0x1800,%eax
    ("89 54 8b 08", [Access(0x2010, 4, WRITE)]),                 # mov %edx,0x8(%rbx,%rcx,4)
    ("83 00 01", [Access(0x3000, 4, READ | WRITE)]),             # addl $0x1,(%rax)
    ("64 48 8b 00", [Access(0x13000, 8, READ)]),                 # mov %fs:(%rax),%rax
    ("ac", [Access(0x5000, 1, READ)]),                           # lods %ds:(%rsi),%al
    ("c3", [Access(0x8000, 8, READ)]),                           # ret
    ("50", [Access(0x7ff8, 8, WRITE)]),                          # push %rax
    ("8d 05 10 00 00 00", []),                                   # lea 0x10(%rip),%rax: no access
    ("90", []),                                                  # nop
])
def test_long_mode_accesses(code, found):
    size, got = accesses(bytes.fromhex(code), 0x1000, REGS, 64)
    assert size == len(bytes.fromhex(code))
    assert got == found


def test_32_bit_addresses_wrap_at_4_gib():
    _size, got = accesses(bytes.fromhex("8b 43 10"), 0x1000, {"rbx": 0xFFFFFFF8}, 32)   # mov 0x10(%ebx),%eax
    assert got == [Access(0x8, 4, READ)]


def test_what_does_not_decode_accesses_nothing():
    assert accesses(b"", 0x1000, REGS, 64) == (0, [])
    assert accesses(b"\x0f", 0x1000, REGS, 64) == (0, [])   # half an instruction


@pytest.mark.parametrize("cr0, efer, l, db, bits", [(0, 0, 0, 0, 16), (1, 0, 0, 1, 32), (1, 0, 0, 0, 16),
                                                    (0x80000001, 0x500, 1, 0, 64), (0x80000001, 0x500, 0, 1, 32)])
def test_the_code_size_follows_cr0_efer_and_cs(cr0, efer, l, db, bits):
    assert mode_of(cr0, efer, l, db) == bits
