"""Host files a rig names: only regular files, size-checked before they are
read, no traceback for odd paths, and the opt-in --images-under restriction
(issue 11 items 4, 9, 10 and "untrusted rigs")."""

from __future__ import annotations

import os
import resource
import struct
from pathlib import Path

import pytest

from kvmrig.errors import RigError
from kvmrig.machine.plan import prepare
from kvmrig.rig import hostfiles
from kvmrig.rig.load import load_rig, load_rig_text

HEAD = "kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\n"


def error(text: str, folder: Path) -> str:
    with pytest.raises(RigError) as info:
        prepare(load_rig_text(text, folder / "r.yaml"))
    return str(info.value)


@pytest.fixture
def restriction():
    yield hostfiles.restrict_to
    hostfiles.restrict_to(())


def test_a_nul_byte_in_an_image_path_is_a_rig_error_at_its_line(tmp_path):
    # it was a ValueError traceback, and in a folder the whole run died
    message = error(HEAD + 'images: [{file: "a\\0b", at: 0x1000}]\n', tmp_path)
    assert message.startswith(f"{tmp_path / 'r.yaml'}:4:17: images[0].file: image ")
    assert message.endswith("a\\x00b: the path contains a NUL byte")


@pytest.mark.parametrize("device, kind", [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_a_device_image_is_refused_without_reading_it(tmp_path, device, kind):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = error(HEAD + f"images: [{{file: {device}, at: 0x1000}}]\n", tmp_path)
    assert f"r.yaml:4:17: images[0].file: image {device} is {kind}, not a regular file" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing was read


def test_a_fifo_image_is_refused_at_once_not_waited_on(tmp_path):
    import threading
    os.mkfifo(tmp_path / "pipe.bin")
    got: list[str] = []
    worker = threading.Thread(target=lambda: got.append(
        error(HEAD + "images: [{file: pipe.bin, at: 0x1000}]\n", tmp_path)), daemon=True)
    worker.start()
    worker.join(60)   # it hung validate and the whole run before: never returned
    assert got and "pipe.bin is a FIFO, not a regular file" in got[0]


def test_a_raw_image_larger_than_its_memory_is_refused_before_reading(tmp_path):
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(1 << 40)  # sparse: 1 TiB that costs nothing on disk
    message = error(HEAD + "images: [{file: big.bin, at: 0x1000}]\n", tmp_path)
    assert "r.yaml:4:17: cannot use image: image" in message and "more than the 0x10000 it can use" in message


def _elf(memsz: int, filesz: int = 0x78) -> bytes:
    """A minimal x86-64 ELF with one PT_LOAD at 0x1000 of `memsz` bytes."""
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x1000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x1000, 0x1000, filesz, memsz, 0x1000)
    return header + phdr


@pytest.mark.parametrize("memsz", [1 << 40, 2 << 30])
def test_a_huge_elf_segment_is_refused_before_it_is_allocated(tmp_path, memsz):
    (tmp_path / "huge.elf").write_bytes(_elf(memsz))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = error(HEAD + "images: [{file: huge.elf}]\n", tmp_path)
    assert f"a PT_LOAD segment at 0x1000 of {memsz:#x} bytes" in message
    assert "does not fit in any memory region of the rig (largest 0x10000 bytes)" in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # it cost 2.1 GB before


def test_images_under_refuses_files_outside_the_folders(tmp_path, restriction):
    inside = tmp_path / "rigs"
    inside.mkdir()
    (inside / "ok.bin").write_bytes(b"\xf4")
    (tmp_path / "secret").write_bytes(b"\xf4")
    (inside / "escape.bin").symlink_to(tmp_path / "secret")  # a symlink does not get out
    restriction([inside])
    load_rig_text(HEAD + "images: [{file: ok.bin, at: 0x1000}]\n", inside / "r.yaml")
    for name in ("../secret", "escape.bin", "/etc/passwd"):
        with pytest.raises(RigError, match="is outside the folders this run allows"):
            load_rig_text(HEAD + f"images: [{{file: {name}, at: 0x1000}}]\n", inside / "r.yaml")
    restriction(())
    load_rig_text(HEAD + "images: [{file: ../secret, at: 0x1000}]\n", inside / "r.yaml")


def test_read_regular_checks_the_size_first(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    assert hostfiles.read_regular(tmp_path / "f", 5) == b"12345"
    with pytest.raises(hostfiles.HostFileProblem, match="is 0x5 bytes, more than the 0x4"):
        hostfiles.read_regular(tmp_path / "f", 4)


def test_a_rig_file_that_is_a_folder_or_has_a_nul_is_a_rig_error(tmp_path):
    with pytest.raises(RigError, match="cannot read the rig file"):
        load_rig(tmp_path)
    with pytest.raises(RigError, match="cannot read the rig file"):
        load_rig(str(tmp_path / "a\0b.yaml"))


@pytest.mark.parametrize("arch, watch, why", [
    ("x86_64", "{at: 0x2000, len: 0x10000000}", "needs at least 33554432 debug registers"),
    ("arm64", "{at: 0xfffffffffffffff0, len: 0x20}", "leaves the 64-bit address space"),
    ("arm64", "{at: 0x0001000000000000, len: 8}", "is not sign-extended from bit 48"),
])
def test_watchpoints_no_register_can_hold_are_rig_errors_quickly(tmp_path, arch, watch, why):
    # issue 11 items 3 (> 3 GB in 6 s) and 13 (ValueError traceback)
    at = "0x40000000" if arch == "arm64" else "0"
    text = (f"kvmrig: 1\narch: {arch}\nmemory: [{{at: {at}, size: 64K}}]\nimages: [{{hex: '00000014', at: {at}}}]\n"
            f"watchpoints: [{watch}]\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = error(text, tmp_path)
    assert message.startswith(f"{tmp_path / 'r.yaml'}:5:15: watchpoint[0] at ") and why in message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000
