"""The generated arm64 device tree, read back with libfdt: every node a rig
implies, with the cells the bindings ask for; and the DTB checker."""

from __future__ import annotations

import struct

import libfdt
import pytest

from kvmrig.arch.arm64 import devicetree as dt
from kvmrig.arch.arm64 import linux, virt


def tree(**kw) -> libfdt.Fdt:
    spec = dt.TreeSpec(**{"memory": [(0x40000000, 0x10000000)], **kw})
    return libfdt.Fdt(bytearray(dt.generate(spec)))


def cells(fdt: libfdt.Fdt, path: str, prop: str) -> tuple[int, ...]:
    raw = bytes(fdt.getprop(fdt.path_offset(path), prop))
    return struct.unpack(f">{len(raw) // 4}I", raw)


def text(fdt: libfdt.Fdt, path: str, prop: str) -> list[str]:
    return bytes(fdt.getprop(fdt.path_offset(path), prop)).rstrip(b"\0").decode().split("\0")


def test_a_full_machine():
    fdt = tree(cpus=3, gic=dt.Gic(0x08000000, 0x080A0000, 3), uarts=[dt.Uart(0x09000000, 1)],
               bootargs="console=ttyAMA0", initrd=(0x48000000, 0x48001000))
    assert cells(fdt, "/memory@40000000", "reg") == (0, 0x40000000, 0, 0x10000000)
    assert [fdt.get_name(fdt.path_offset(f"/cpus/cpu@{i}")) for i in range(3)] == ["cpu@0", "cpu@1", "cpu@2"]
    assert cells(fdt, "/cpus/cpu@2", "reg") == (2,)
    assert text(fdt, "/cpus/cpu@1", "enable-method") == ["psci"]
    assert text(fdt, "/psci", "method") == ["hvc"] and "arm,psci-0.2" in text(fdt, "/psci", "compatible")
    # GICv3: distributor 64 KiB, redistributors 128 KiB per vCPU; the root's interrupt parent
    assert cells(fdt, "/intc@8000000", "reg") == (0, 0x08000000, 0, 0x10000, 0, 0x080A0000, 0, 3 * 0x20000)
    assert text(fdt, "/intc@8000000", "compatible") == ["arm,gic-v3"]
    assert cells(fdt, "/", "interrupt-parent") == cells(fdt, "/intc@8000000", "phandle")
    # timer: secure phys 13, phys 14, virt 11, hyp 10, all PPIs, level high
    assert cells(fdt, "/timer", "interrupts") == (1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4)
    assert cells(fdt, "/pl011@9000000", "interrupts") == (virt.GIC_SPI, 1, virt.IRQ_TYPE_LEVEL_HIGH)
    assert text(fdt, "/pl011@9000000", "clock-names") == ["uartclk", "apb_pclk"]
    clock = cells(fdt, "/apb-pclk", "phandle")[0]
    assert cells(fdt, "/pl011@9000000", "clocks") == (clock, clock)
    assert text(fdt, "/chosen", "stdout-path") == ["/pl011@9000000"]
    assert text(fdt, "/chosen", "bootargs") == ["console=ttyAMA0"]
    assert cells(fdt, "/chosen", "linux,initrd-start") == (0, 0x48000000)
    assert cells(fdt, "/chosen", "linux,initrd-end") == (0, 0x48001000)


def test_without_a_gic_nothing_names_an_interrupt():
    fdt = tree(uarts=[dt.Uart(0x09000000, None)])
    for path in ("/", "/timer", "/pl011@9000000"):
        node = fdt.path_offset(path)
        assert not fdt.hasprop(node, "interrupts") and not fdt.hasprop(node, "interrupt-parent")
    assert fdt.path_offset("/intc@8000000", (libfdt.NOTFOUND,)) < 0
    assert not fdt.hasprop(fdt.path_offset("/chosen"), "bootargs")


def test_the_blob_is_small_and_valid():
    blob = dt.generate(dt.TreeSpec([(0x40000000, 0x1000)]))
    assert dt.check_blob(blob) is None and len(blob) < linux.DTB_MAX and len(blob) % 4 == 0


@pytest.mark.parametrize("mangle, why", [
    (lambda b: b"\0" * 64, "FDT_ERR_BADMAGIC"),
    (lambda b: b[:60], "its header says"),
    (lambda b: b[:0x40] + b"\xff" * 8 + b[0x48:], "FDT_ERR_"),
])
def test_a_broken_blob_is_named(mangle, why):
    blob = dt.generate(dt.TreeSpec([(0x40000000, 0x1000)], uarts=[dt.Uart(0x09000000, None)]))
    problem = dt.check_blob(mangle(blob))
    assert problem is not None and why in problem
