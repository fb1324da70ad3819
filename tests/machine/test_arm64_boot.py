"""An arm64 rig's boot plan: the device tree (generated or the rig's own) and
the initrd placed in RAM, x0 pointing at the tree, a Linux Image placed by its
header - and every conflict a rig error at its key, found by `validate`."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path

import libfdt
import pytest

from kvmrig.arch.arm64 import devicetree as dt
from kvmrig.errors import RigError
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig

HEAD = "kvmrig: 1\narch: arm64\n"


def plan_for(folder: Path, body: str):
    (folder / "g.bin").write_bytes(bytes.fromhex("1f2003d5") * 4)  # nop
    path = folder / "r.yaml"
    path.write_text(HEAD + textwrap.dedent(body))
    return prepare(load_rig(path))


def linux_image(image_size: int) -> bytes:
    return struct.pack("<IIQQQQQQ", 0x91005A4D, 0x14000000, 0, image_size, 0xA, 0, 0, 0) + b"ARM\x64" + bytes(68)


def test_a_gic_rig_gets_a_tree_at_the_top_of_ram_in_x0(tmp_path: Path):
    plan = plan_for(tmp_path, """
        memory: [{at: 0x40000000, size: 64K}]
        images: [{file: g.bin, at: 0x40000000}]
        gic: {}
        devices: [{type: pl011, at: 0x09000000}]
    """)
    state = plan.boot.state
    (at, blob), = plan.boot.writes
    assert state.dtb == at and at + len(blob) <= 0x40010000 and at % 0x1000 == 0 and at > 0x40000010
    assert state.entry_regs == {"x0": at, "x1": 0, "x2": 0, "x3": 0}
    assert state.gic.distributor == 0x08000000 and state.gic.irqs == 288
    fdt = libfdt.Fdt(bytearray(blob))
    assert fdt.path_offset("/intc@8000000") > 0 and fdt.path_offset("/pl011@9000000") > 0


def test_a_bare_rig_keeps_x0_and_gets_no_tree(tmp_path: Path):
    plan = plan_for(tmp_path, """
        memory: [{at: 0x40000000, size: 64K}]
        images: [{file: g.bin, at: 0x40000000}]
    """)
    assert plan.boot.writes == [] and plan.boot.state.dtb is None and plan.boot.state.entry_regs == {}


def test_linux_image_initrd_and_bootargs(tmp_path: Path):
    (tmp_path / "Image").write_bytes(linux_image(0x400000))
    (tmp_path / "initrd").write_bytes(b"\x07" * 5000)
    plan = plan_for(tmp_path, """
        memory: [{at: 0x40000000, size: 16M}]
        images: [{file: Image}]
        dtb: {bootargs: "console=ttyAMA0", initrd: initrd}
    """)
    assert plan.entry == 0x40000000 and plan.images[0].span == (0x40000000, 0x40400000)
    (initrd_at, initrd), (dtb_at, blob) = plan.boot.writes
    assert initrd == b"\x07" * 5000 and initrd_at % 0x1000 == 0 and initrd_at + 5000 <= dtb_at
    fdt = libfdt.Fdt(bytearray(blob))
    chosen = fdt.path_offset("/chosen")
    assert fdt.getprop(chosen, "linux,initrd-start").as_uint64() == initrd_at
    assert fdt.getprop(chosen, "linux,initrd-end").as_uint64() == initrd_at + 5000
    assert fdt.getprop(chosen, "bootargs").as_str() == "console=ttyAMA0"


def test_the_kernels_bss_counts_for_placement(tmp_path: Path):
    (tmp_path / "Image").write_bytes(linux_image(0x2000000))  # 32 MiB with its BSS, in 16 MiB of RAM
    with pytest.raises(RigError, match=r"r\.yaml:5:17: image .*Image with its image_size \(0x40000000\.\.0x42000000"):
        plan_for(tmp_path, """
            memory: [{at: 0x40000000, size: 16M}]
            images: [{file: Image}]
        """)


def test_a_tree_over_an_image_is_refused_at_dtb(tmp_path: Path):
    with pytest.raises(RigError, match=r"r\.yaml:7:6: the device tree \(0x40000000\.\.0x4000.*overlaps image "):
        plan_for(tmp_path, """
            memory: [{at: 0x40000000, size: 64K}]
            images: [{file: g.bin, at: 0x40000000}]
            gic: {}
            dtb: {at: 0x40000000}
        """)


def test_a_dtb_that_does_not_parse_fails_validation_at_its_file(tmp_path: Path):
    (tmp_path / "bad.dtb").write_bytes(b"\xd0\x0d\xfe\xed" + bytes(60))
    with pytest.raises(RigError, match=r"r\.yaml:6:13: bad\.dtb is not a valid device tree blob: libfdt: .*FDT_ERR_"):
        plan_for(tmp_path, """
            memory: [{at: 0x40000000, size: 64K}]
            images: [{file: g.bin, at: 0x40000000}]
            dtb: {file: bad.dtb, at: 0x40008000}
        """)


def test_the_rigs_own_dtb_is_loaded_as_is(tmp_path: Path):
    blob = dt.generate(dt.TreeSpec([(0x40000000, 0x10000)]))
    (tmp_path / "own.dtb").write_bytes(blob)
    plan = plan_for(tmp_path, """
        memory: [{at: 0x40000000, size: 64K}]
        images: [{file: g.bin, at: 0x40000000}]
        dtb: {file: own.dtb, at: 0x40008000}
    """)
    assert plan.boot.writes == [(0x40008000, blob)] and plan.boot.state.dtb == 0x40008000


def test_a_linux_images_cmdline_is_the_trees_bootargs(tmp_path: Path):
    """One spelling of the kernel command line on both arches: x86's images[].cmdline."""
    (tmp_path / "Image").write_bytes(linux_image(0x400000))
    plan = plan_for(tmp_path, """
        memory: [{at: 0x40000000, size: 16M}]
        images: [{file: Image, cmdline: "console=ttyAMA0 quiet"}]
    """)
    (_at, blob), = plan.boot.writes
    fdt = libfdt.Fdt(bytearray(blob))
    assert fdt.getprop(fdt.path_offset("/chosen"), "bootargs").as_str() == "console=ttyAMA0 quiet"
    same = plan_for(tmp_path, """
        memory: [{at: 0x40000000, size: 16M}]
        images: [{file: Image, cmdline: "a b"}]
        dtb: {bootargs: "a b"}
    """)
    assert same.boot.writes


@pytest.mark.parametrize("body, message", [
    ("""
        memory: [{at: 0x40000000, size: 16M}]
        images: [{file: Image, cmdline: "a"}]
        dtb: {bootargs: "b"}
    """, r"r\.yaml:5:24: images\[0\]\.cmdline: cmdline 'a' and dtb.bootargs 'b' are both the kernel command line"),
    ("""
        memory: [{at: 0x40000000, size: 16M}]
        images: [{file: g.bin, at: 0x40000000, cmdline: "a"}]
    """, r"r\.yaml:5:40: images\[0\]\.cmdline: cmdline is for arm64 Linux Image images"),
])
def test_a_cmdline_said_twice_differently_or_on_no_kernel_is_refused(tmp_path: Path, body, message):
    (tmp_path / "Image").write_bytes(linux_image(0x400000))
    with pytest.raises(RigError, match=message):
        plan_for(tmp_path, body)
