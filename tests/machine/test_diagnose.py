"""The failure report's code listing (kvmrig/machine/diagnose.py): symbols on
each line, and what the ELF says is data shown as data (arm64 literal pools,
x86 .rodata), on ELF files built here with GNU binutils."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmrig.machine.diagnose import disassemble
from kvmrig.machine.images import Symbols, load_image
from kvmrig.rig.model import Image

A64_AS, A64_LD = shutil.which("aarch64-linux-gnu-as"), shutil.which("aarch64-linux-gnu-ld")

# _start loads a 64-bit constant from a literal pool placed right after the
# code (the assembler marks it with a $d mapping symbol), then loops.
LITERAL_POOL = """\
        .text
        .globl _start
_start: ldr     x0, =0x1122334455667788
        ldr     x1, =0xdeadbeef
        b       .
        .ltorg
after:  nop
        .rept   16
        nop
        .endr
"""


def loaded(path: Path):
    img = load_image(Image(path, None, None, None))
    return img, Symbols([img])


@pytest.mark.skipif(not (A64_AS and A64_LD), reason="binutils-aarch64-linux-gnu is needed to build an arm64 ELF")
def test_arm64_literal_pool_is_shown_as_data_and_code_after_it_decodes(tmp_path):
    (tmp_path / "p.S").write_text(LITERAL_POOL)
    subprocess.run([A64_AS, "-o", str(tmp_path / "p.o"), str(tmp_path / "p.S")], check=True)
    subprocess.run([A64_LD, "-Ttext=0x40000000", "-o", str(tmp_path / "p.elf"), str(tmp_path / "p.o")], check=True)
    img, symbols = loaded(tmp_path / "p.elf")
    (start, body), = img.segments[:1]

    def read(addr: int, size: int) -> bytes:
        off = addr - start
        if off < 0 or off + size > len(body):
            raise LookupError(addr)
        return body[off:off + size]

    lines = disassemble("arm64", {}, 0x40000000, read, symbols)
    assert lines[0].startswith("=> 0x40000000 <_start>: ") and "ldr" in lines[0]
    assert "<_start+0x8>" in lines[2] and lines[2].rstrip().endswith("b #0x40000008")
    pool = [line for line in lines[3:] if ".word" in line]
    assert pool and "0x55667788" in pool[0], lines   # the pool's words, not `ldr`/`udf` made of them
    assert not any(w in line for line in pool for w in ("ldr ", "udf", "unknown")), lines
    without = disassemble("arm64", {}, 0x40000000, read)
    assert ".word" not in "\n".join(without) and "<_start>" not in without[0], "no symbols: plain decoding"


def test_x86_rodata_in_an_example_elf_is_data():
    elf = Path(__file__).resolve().parents[2] / "rigs" / "x86" / "guests" / "elf-symbols.elf"
    img, symbols = loaded(elf)
    table = symbols.lookup("table")
    assert symbols.data_end(table) is not None and symbols.data_end(symbols.lookup("_start")) is None
    assert symbols.nearest(table + 8) == "table+0x8"
    assert symbols.nearest(0x10) is None, "absolute symbols (TABLE_LEN = 15) are numbers, not places"


def test_x86_code_at_a_virtual_address_is_read_through_the_guest_page_tables():
    # a kernel stopped at 0xffffffff81000010 (PML4 511 -> PDPT 510 -> a 2 MiB page at physical 0x1000000)
    mem = {0x1000 + 511 * 8: (0x2000 | 1).to_bytes(8, "little"),
           0x2000 + 510 * 8: (0x3000 | 1).to_bytes(8, "little"),
           0x3000 + 8 * 8: (0x1000000 | 0x81).to_bytes(8, "little"),
           0x1000010: bytes.fromhex("0fae0f") + b"\x90" * 13}   # fxrstor [rdi]

    def read(addr: int, size: int) -> bytes:
        for base, data in mem.items():
            if base <= addr and addr + size <= base + len(data):
                return data[addr - base:addr - base + size]
        raise LookupError(addr)

    regs = {"cr0": 0x80050033, "cr3": 0x1000, "cr4": 0x20, "efer": 0xD01}
    lines = disassemble("x86_64", regs, 0xFFFF_FFFF_8100_0010, read)
    assert "physical 0x1000010" in lines[0]
    assert "fxrstor" in lines[1] and lines[1].lstrip().startswith("=> 0xffffffff81000010")
    # without paging the address is physical, and not in memory
    assert disassemble("x86_64", {"cr0": 0x11}, 0xFFFF_FFFF_8100_0010, read) == \
        ["   0xffffffff81000010: <not in guest memory>"]
