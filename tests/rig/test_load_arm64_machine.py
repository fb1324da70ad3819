"""The arm64 machine keys (extensions): cpus, gic, a pl011's irq, dtb, and
Linux Images - loaded into the model, and every mistake at its file:line:col."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from kvmrig.errors import RigError
from kvmrig.rig.load import load_rig, load_rig_text

ARM = "kvmrig: 1\narch: arm64\nmemory: [{at: 0x40000000, size: 64K}]\n"


def error(text: str, path: str | Path = "r.yaml") -> str:
    with pytest.raises(RigError) as info:
        if isinstance(path, Path):
            path.write_text(text)
            load_rig(path)
        else:
            load_rig_text(text, path)
    message = str(info.value)
    assert re.match(r"^\S*r\.yaml:\d+:\d+: \S", message), message
    return message


def linux_image(text_offset: int = 0, image_size: int = 0x20000, flags: int = 0xA) -> bytes:
    """An arm64 Image header (booting.rst): code0/1, text_offset, image_size, flags, magic at 56."""
    head = struct.pack("<IIQQQQQQ", 0x91005A4D, 0x14000000, text_offset, image_size, flags, 0, 0, 0)
    return head + b"ARM\x64" + bytes(4) + bytes(0x100)


def test_defaults_are_qemu_virts():
    rig = load_rig_text(ARM + "gic: {}\ndevices: [{type: pl011, at: 0x09000000}]\n")
    assert (rig.gic.distributor, rig.gic.redistributor, rig.gic.irqs) == (0x08000000, 0x080A0000, 288)
    assert rig.devices[0].irq == 1 and rig.cpus == 1 and rig.wants_dtb
    assert not load_rig_text(ARM).wants_dtb, "a bare rig gets no device tree (x0 stays as it was)"


def test_explicit_values():
    rig = load_rig_text(ARM + "cpus: 4\ngic: {distributor: 0x2000000, redistributor: 0x2100000, irqs: 64}\n"
                        "devices: [{type: pl011, at: 0x09000000, irq: 31}]\n")
    assert rig.cpus == 4 and rig.gic.irqs == 64 and rig.devices[0].irq == 31


@pytest.mark.parametrize("body, expected", [
    ("gic: {distributor: 0x40000000}\n",
     "r.yaml:4:20: gic.distributor: the GICv3 distributor 0x40000000..0x4000ffff overlaps memory[0] (0x40000000..0x4000ffff)"),
    ("cpus: 3\ngic: {redistributor: 0x3ffc0000}\n",
     "r.yaml:5:22: gic.redistributor: the GICv3 redistributor 0x3ffc0000..0x4001ffff overlaps memory[0] (0x40000000..0x4000ffff) (3 vCPUs x 128 KiB)"),
    ("gic: {distributor: 0x8001000}\n", "r.yaml:4:20: gic.distributor: the GICv3 distributor at 0x8001000 must be 64 KiB aligned"),
    ("gic: {distributor: 0x80a0000}\n", "r.yaml:4:6: gic: the GICv3 distributor 0x80a0000..0x80affff overlaps its redistributors"),
    ("gic: {irqs: 100}\n", "r.yaml:4:13: gic.irqs: 100 interrupts: KVM's GICv3 takes a multiple of 32 from 64 to 1024"),
    ("gic: {irqs: 2048}\n", "r.yaml:4:13: gic.irqs: 2048 interrupts"),
    ("gic: {irqs: 64}\ndevices: [{type: pl011, at: 0x09000000, irq: 32}]\n",
     "r.yaml:5:46: devices[0].irq: SPI 32 is INTID 64, beyond the 64 interrupts of the rig's GIC"),
    ("devices: [{type: pl011, at: 0x09000000, irq: 1}]\n",
     "r.yaml:4:41: devices[0].irq: irq needs an interrupt controller: add `gic:`"),
    ("gic: {}\ndevices: [{type: exit, at: 0x0a000000, irq: 2}]\n",
     "r.yaml:5:40: devices[0].irq: irq is for devices that raise interrupts (serial, pl011), not exit"),
    ("gic: {}\ndevices: [{type: pl011, at: 0x09000000}, {type: pl011, at: 0x09001000}]\n",
     "r.yaml:5:42: devices[1]: SPI 1 is already raised by devices[0]"),
    ("gic: {}\ndevices: [{type: exit, at: 0x08000ff8}]\n",
     "r.yaml:5:28: devices[0].at: exit MMIO 0x8000ff8..0x8000fff overlaps the GICv3 distributor"),
    ("cpus: 0\n", "r.yaml:4:7: cpus: a machine needs at least 1 vCPU"),
    ("cpus: 513\n", "r.yaml:4:7: cpus: 513 vCPUs: an arm64 KVM VM with a GICv3 has at most 512"),
    ("dtb: {at: 0x40000004}\n", "r.yaml:4:11: dtb.at: 0x40000004: the device tree must be 8-byte aligned"),
    ("dtb: {file: nope.dtb}\n", "r.yaml:4:13: dtb.file: image file not found"),
])
def test_arm64_machine_errors(body: str, expected: str):
    assert error(ARM + body).startswith(expected)


def test_x86_has_no_gic_or_dtb():
    x86 = "kvmrig: 1\narch: x86_64\n"
    assert error(x86 + "gic: {}\n").startswith("r.yaml:3:1: gic: gic is an arm64 interrupt controller")
    assert error(x86 + "dtb: {at: 0}\n").startswith("r.yaml:3:1: dtb: dtb (a device tree in x0) is for arm64")
    assert error(x86 + "cpus: 2\n").startswith("r.yaml:3:7: cpus: 2 vCPUs on x86_64 need `machine: {irqchip: true}`")


def test_a_linux_image_needs_no_at_and_is_detected_by_its_magic(tmp_path: Path):
    (tmp_path / "Image").write_bytes(linux_image())
    rig = load_rig(_write(tmp_path, ARM + "images: [{file: Image}]\n"))
    assert rig.images[0].linux and rig.wants_dtb


def test_a_linux_image_at_a_wrong_offset_is_refused(tmp_path: Path):
    (tmp_path / "Image").write_bytes(linux_image(text_offset=0x80000))
    message = error(ARM + "images: [{file: Image, at: 0x40000000}]\n", tmp_path / "r.yaml")
    assert ":4:28: images[0].at: Image is an arm64 Linux Image with text_offset 0x80000: it must load " \
           "text_offset above a 2 MiB boundary, not at 0x40000000" in message
    load_rig(_write(tmp_path, ARM + "images: [{file: Image, at: 0x40080000}]\n"))  # 2 MiB + text_offset: fine


def _write(folder: Path, text: str) -> Path:
    path = folder / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", ["gic: {}\n", "cpus: 2\n", "cpus: 2\ngic: {irqs: 64}\n"])
def test_a_rig_with_a_gic_or_vcpus_saves_points_and_its_children_inherit_the_machine(tmp_path, text):
    """Snapshots hold every vCPU and the GIC: such a rig saves points, and a
    child gets its parent's vCPU count and GIC (it has no machine of its own)."""
    parent = load_rig(_write(tmp_path, ARM + text + "save: here\n"))
    assert list(parent.save_points()) == ["here"]
    (tmp_path / "p.yaml").write_text(ARM + text + "save: here\n")
    child = load_rig_text("kvmrig: 1\narch: arm64\nfrom: p.yaml#here\n", tmp_path / "c.yaml")
    assert (child.cpus, child.gic and (child.gic.distributor, child.gic.redistributor, child.gic.irqs)) == \
        (parent.cpus, parent.gic and (parent.gic.distributor, parent.gic.redistributor, parent.gic.irqs))


def _parent(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(ARM + "cpus: 2\ngic: {}\nsave: here\n")


@pytest.mark.parametrize("own", ["cpus: 2\n", "gic: {}\n", "cpus: 2\ngic: {distributor: 0x08000000}\n"])
def test_a_child_may_restate_its_snapshots_machine(tmp_path, own):
    _parent(tmp_path)
    child = load_rig_text("kvmrig: 1\narch: arm64\nfrom: p.yaml#here\n" + own, tmp_path / "c.yaml")
    assert child.cpus == 2 and child.gic.distributor == 0x08000000


@pytest.mark.parametrize("own, words", [
    ("cpus: 1\n", ":4:7: cpus: cpus: 1, but the snapshot's machine has 2 vCPUs"),
    ("cpus: 4\n", ":4:7: cpus: cpus: 4, but the snapshot's machine has 2 vCPUs"),
    ("gic: {distributor: 0x09000000}\n", ":4:6: gic: distributor 0x9000000, redistributor 0x80a0000, 288 "
     "interrupts; the snapshot's GIC has distributor 0x8000000, redistributor 0x80a0000, 288 interrupts"),
    ("gic: {irqs: 64}\n", "64 interrupts; the snapshot's GIC has distributor 0x8000000"),
])
def test_a_child_whose_machine_differs_from_its_snapshots_is_an_error_naming_it(tmp_path, own, words):
    _parent(tmp_path)
    message = error("kvmrig: 1\narch: arm64\nfrom: p.yaml#here\n" + own, tmp_path / "r.yaml")
    assert words in message, message


def test_a_child_with_a_gic_of_a_snapshot_without_one_is_an_error(tmp_path):
    (tmp_path / "p.yaml").write_text(ARM + "save: here\n")
    message = error("kvmrig: 1\narch: arm64\nfrom: p.yaml#here\ngic: {}\n", tmp_path / "r.yaml")
    assert ":4:1: gic: the snapshot's machine has no GIC" in message, message


