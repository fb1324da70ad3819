"""Images: raw files, inline hex and ELF, placed and resolved by plan.prepare
(no VM). The ELF is built here with GNU as + ld."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmrig.errors import RigError
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig, load_rig_text

# A guest with code, initialised data loaded at a different physical address
# than it runs at (AT()), and bss after the data in the same PT_LOAD.
ELF_SOURCE = """\
    .code64
    .section .text
    .globl _start
_start:
    mov table(%rip), %eax
    hlt
loop_top:
    jmp loop_top
    .section .data
    .globl table
table:
    .long 1, 2, 3, 4
result:
    .quad 0
    .section .bss
    .globl buffer
buffer:
    .skip 0x40
"""
ELF_SCRIPT = """\
ENTRY(_start)
SECTIONS {
  . = 0x10000;
  .text : { *(.text) }
  . = 0x11000;
  .data : AT(0x12000) { *(.data) }
  .bss : { *(.bss) }
}
"""
TEXT, DATA_VMA, DATA_LMA = 0x10000, 0x11000, 0x12000
DATA_FILESZ = 4 * 4 + 8          # table + result
BSS = 0x40


@pytest.fixture(scope="module")
def elf(tmp_path_factory) -> Path:
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("GNU as and ld are needed to build the test ELF")
    d = tmp_path_factory.mktemp("elf")
    (d / "g.S").write_text(ELF_SOURCE)
    (d / "g.ld").write_text(ELF_SCRIPT)
    try:
        subprocess.run(["as", "--64", "-o", str(d / "g.o"), str(d / "g.S")], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "--build-id=none", "-nostdlib", "-static",
                        "-T", str(d / "g.ld"), "-o", str(d / "g.elf"), str(d / "g.o")],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"this binutils cannot build an x86_64 ELF: {e.stderr.decode(errors='replace')}")
    return d / "g.elf"


def elf_rig(tmp_path: Path, elf: Path, extra: str = "") -> Path:
    shutil.copy(elf, tmp_path / "g.elf")
    path = tmp_path / "rig.yaml"
    path.write_text("kvmrig: 1\n"
                    "arch: x86_64\n"
                    "memory: [{at: 0, size: 2M}]\n"
                    "images:\n"
                    "  - {file: g.elf}\n" + extra)
    return path


# -- raw and hex -------------------------------------------------------------------

def test_raw_file_loads_at_its_address(make_rig):
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0, size: 64K}]
        images: [{file: guests/boot.bin, at: 0x7c00}]
        cpu: {mode: real}
        """, guests={"guests/boot.bin": "fa f4 55 aa"})
    plan = prepare(load_rig(path))
    (img,) = plan.images
    assert img.segments == [(0x7C00, bytes.fromhex("faf455aa"))]
    assert img.entry is None and img.symbols == {}
    assert plan.entry == 0x7C00, "no ELF entry: the first image's address"


def test_hex_images_load_in_order_and_entry_is_the_first(make_rig):
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0, size: 64K}]
        images:
          - {hex: "90 90 f4", at: 0x2000}
          - {hex: "0xdead_beef", at: 0x3000}
        cpu: {mode: real}
        """)
    plan = prepare(load_rig(path))
    assert [img.segments for img in plan.images] == [[(0x2000, b"\x90\x90\xf4")], [(0x3000, b"\xde\xad\xbe\xef")]]
    assert plan.entry == 0x2000


def test_raw_elf_with_at_is_loaded_as_raw_bytes(tmp_path, elf):
    shutil.copy(elf, tmp_path / "g.elf")
    path = tmp_path / "rig.yaml"
    path.write_text("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 2M}]\n"
                    "images: [{file: g.elf, at: 0x100000}]\n")
    (img,) = prepare(load_rig(path)).images
    assert img.segments == [(0x100000, elf.read_bytes())]


# -- ELF -------------------------------------------------------------------------

def test_elf_segments_load_at_their_physical_address(tmp_path, elf):
    plan = prepare(load_rig(elf_rig(tmp_path, elf)))
    (img,) = plan.images
    addrs = [addr for addr, _ in img.segments]
    assert addrs == [TEXT, DATA_LMA], "p_paddr (AT()), not p_vaddr"
    text = dict(img.segments)[TEXT]
    disp = (DATA_VMA - (TEXT + 6)).to_bytes(4, "little")
    assert text[:7] == b"\x8b\x05" + disp + b"\xf4"   # mov eax, [rip+table] ; hlt


def test_elf_bss_is_zero_filled_after_the_file_bytes(tmp_path, elf):
    (img,) = prepare(load_rig(elf_rig(tmp_path, elf))).images
    data = dict(img.segments)[DATA_LMA]
    assert len(data) == DATA_FILESZ + BSS, "p_memsz bytes, not p_filesz"
    assert data[:16] == bytes.fromhex("01000000 02000000 03000000 04000000")
    assert data[DATA_FILESZ:] == bytes(BSS)


def test_elf_entry_and_symbols(tmp_path, elf):
    plan = prepare(load_rig(elf_rig(tmp_path, elf)))
    (img,) = plan.images
    assert img.entry == TEXT
    assert plan.entry == TEXT
    assert img.symbols["_start"] == TEXT
    assert img.symbols["loop_top"] == TEXT + 7, "local symbols are usable too"
    assert img.symbols["table"] == DATA_VMA
    assert img.symbols["result"] == DATA_VMA + 16
    assert img.symbols["buffer"] == DATA_VMA + DATA_FILESZ
    assert not any(name.endswith((".S", ".o")) for name in img.symbols), "no STT_FILE symbols"
    assert plan.symbols.nearest(TEXT + 8) == "loop_top+0x1"


def test_sym_addresses_resolve_with_offsets(tmp_path, elf):
    path = elf_rig(tmp_path, elf, "cpu: {entry: 'sym:loop_top'}\n"
                                  "expect:\n  memory:\n"
                                  "    - {at: 'sym:table', u32: 1}\n"
                                  "    - {at: 'sym:table+0xc', u32: 4}\n"
                                  "    - {at: 'sym:buffer-8', u64: 0}\n")
    plan = prepare(load_rig(path))
    assert plan.entry == TEXT + 7
    assert [plan.resolve(m.at) for m in plan.rig.expect.memory] == [DATA_VMA, DATA_VMA + 0xC, DATA_VMA + 16]


def test_unknown_symbol_names_the_rig_line_and_suggests_close_names(tmp_path, elf):
    path = elf_rig(tmp_path, elf, "expect:\n  memory:\n    - {at: 'sym:tabel+4', u32: 2}\n")
    with pytest.raises(RigError) as info:
        prepare(load_rig(path))
    text = str(info.value)
    assert re.match(rf"{re.escape(str(path))}:8:\d+: ", text), text
    assert "unknown symbol 'tabel'" in text
    assert "did you mean 'table'" in text


def test_unknown_symbol_without_any_elf_says_only_elf_has_symbols(make_rig):
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0, size: 64K}]
        images: [{hex: f4, at: 0x1000}]
        cpu: {mode: real, entry: "sym:start"}
        """)
    with pytest.raises(RigError) as info:
        prepare(load_rig(path))
    assert str(info.value).startswith(f"{path}:5:")
    assert "only ELF images" in str(info.value)


def test_not_an_elf_file_without_at_is_a_rig_error(make_rig):
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0, size: 64K}]
        images:
          - {file: raw.bin}
        """, guests={"raw.bin": "f4"})
    with pytest.raises(RigError) as info:
        load_rig(path)
    assert str(info.value).startswith(f"{path}:5:")
    assert "needs `at:`" in str(info.value)


def test_corrupt_elf_is_a_rig_error_at_the_file_key(make_rig):
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0, size: 64K}]
        images:
          - {file: broken.elf}
        """, guests={"broken.elf": b"\x7fELF" + b"\x02\x01\x01" + bytes(5)})
    rig = load_rig(path)
    with pytest.raises(RigError) as info:
        prepare(rig)
    assert str(info.value).startswith(f"{path}:5:")
    assert "not a valid ELF" in str(info.value)


# -- placement --------------------------------------------------------------------

def placement_error(text: str) -> str:
    with pytest.raises(RigError) as info:
        prepare(load_rig_text(text, "/rigs/place.yaml"))
    return str(info.value)


def test_image_outside_memory_names_the_image_line():
    text = placement_error("kvmrig: 1\narch: x86_64\n"
                           "memory: [{at: 0, size: 64K}]\n"
                           "cpu: {mode: real}\n"
                           "images:\n"
                           "  - {hex: f4, at: 0x1000}\n"
                           "  - {hex: '00 01', at: 0x20000}\n")
    assert text.startswith("/rigs/place.yaml:7:")
    assert "outside memory" in text and "0x20000" in text and "0x0..0x10000" in text


def test_image_larger_than_its_region_names_the_image_line():
    text = placement_error("kvmrig: 1\narch: x86_64\n"
                           "memory: [{at: 0, size: 64K}, {at: 0x10000, size: 64K}]\n"
                           "cpu: {mode: real}\n"
                           "images:\n"
                           "  - {hex: 'f4 f4 f4 f4', at: 0xfffe}\n")
    assert text.startswith("/rigs/place.yaml:6:")
    assert "larger than its region" in text and "0xfffe" in text


def test_elf_segment_outside_memory_names_the_file_key(tmp_path, elf):
    shutil.copy(elf, tmp_path / "g.elf")
    path = tmp_path / "rig.yaml"
    path.write_text("kvmrig: 1\narch: x86_64\n"
                    "memory: [{at: 0, size: 0x11000}]\n"           # the data segment (0x12000) is outside
                    "images:\n"
                    "  - {file: g.elf}\n")
    with pytest.raises(RigError) as info:
        prepare(load_rig(path))
    assert str(info.value).startswith(f"{path}:5:")
    assert "0x12000" in str(info.value) and "outside memory" in str(info.value)


def test_entry_outside_memory_is_a_rig_error():
    text = placement_error("kvmrig: 1\narch: x86_64\n"
                           "memory: [{at: 0, size: 64K}]\n"
                           "images: [{hex: f4, at: 0x1000}]\n"
                           "cpu: {mode: real, entry: 0x20000}\n")
    assert text.startswith("/rigs/place.yaml:5:")
    assert "0x20000" in text and "not inside any memory region" in text


# -- the ELF's machine and class against the rig -----------------------------------

@pytest.fixture(scope="module")
def elf32(tmp_path_factory) -> Path:
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("GNU as and ld are needed to build the test ELF")
    d = tmp_path_factory.mktemp("elf32")
    (d / "g.S").write_text("        .code32\n        .globl _start\n_start: hlt\n")
    try:
        subprocess.run(["as", "--32", "-o", str(d / "g.o"), str(d / "g.S")], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_i386", "-nostdlib", "-static", "-Ttext=0x10000", "-o", str(d / "g.elf"),
                        str(d / "g.o")], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"this binutils cannot build an i386 ELF: {e.stderr.decode(errors='replace')}")
    return d / "g.elf"


@pytest.mark.parametrize("mode, ok", [("long", False), ("protected", True), ("real", True)])
def test_a_32_bit_elf_cannot_start_in_long_mode(tmp_path, elf32, mode, ok):
    rig = load_rig(elf_rig(tmp_path, elf32, f"cpu: {{mode: {mode}}}\n"))
    if ok:
        assert prepare(rig).entry == 0x10000
        return
    with pytest.raises(RigError, match=r"g.elf is a 32-bit ELF \(EM_386\), but cpu.mode is long") as caught:
        prepare(rig)
    assert caught.value.mark.line == 5, "at the image's file: line"


def test_an_elf_for_another_machine_is_refused(tmp_path):
    asm, ld = shutil.which("aarch64-linux-gnu-as"), shutil.which("aarch64-linux-gnu-ld")
    if not (asm and ld):
        pytest.skip("binutils-aarch64-linux-gnu is needed to build an arm64 ELF")
    (tmp_path / "a.S").write_text("        .globl _start\n_start: wfi\n")
    subprocess.run([asm, "-o", str(tmp_path / "a.o"), str(tmp_path / "a.S")], check=True)
    subprocess.run([ld, "-Ttext=0x10000", "-o", str(tmp_path / "arm.elf"), str(tmp_path / "a.o")], check=True)
    rig = load_rig(elf_rig(tmp_path, tmp_path / "arm.elf"))
    with pytest.raises(RigError, match="is an ELF for EM_AARCH64 .* but the rig's arch is x86_64"):
        prepare(rig)
