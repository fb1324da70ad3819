"""The flattened device tree kvmrig hands an arm64 guest (x0 at entry), built
from what the rig declares: memory, cpus, PSCI, the GICv3, the generic timer,
PL011s, a fixed 24 MHz APB clock for them, and /chosen (bootargs,
stdout-path, initrd). Node names, compatibles and cells follow QEMU's `virt`
board (hw/arm/virt.c), so software that boots there reads it unchanged.

The tree is written with pylibfdt (`libfdt`, the Python binding of the dtc
project's reference libfdt: Debian's python3-libfdt, PyPI's pylibfdt): its
sequential-write API (FdtSw) produces the blob and its reader (Fdt) checks
a rig's own DTB. Bindings followed: devicetree-specification v0.4 (memory,
cpus, chosen), Linux Documentation/devicetree/bindings: arm/psci.yaml,
timer/arm,arch_timer.yaml, interrupt-controller/arm,gic-v3.yaml,
serial/pl011.yaml, clock/fixed-clock.yaml.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvmrig.arch.arm64 import virt

PHANDLE_GIC = 0x8001   # the numbers QEMU virt uses, handy when comparing trees
PHANDLE_CLOCK = 0x8000
APB_CLOCK_HZ = 24_000_000


@dataclass(frozen=True)
class Uart:
    at: int
    spi: int | None    # SPI number (INTID - 32), None: no interrupt


@dataclass(frozen=True)
class Gic:
    distributor: int
    redistributor: int
    cpus: int


@dataclass
class TreeSpec:
    """What the tree describes; every address guest-physical."""

    memory: list[tuple[int, int]]                # (start, size) of each RAM region
    cpus: int = 1
    gic: Gic | None = None
    uarts: list[Uart] = field(default_factory=list)
    bootargs: str = ""
    initrd: tuple[int, int] | None = None        # [start, end)
    pmu: bool = True                             # with a GIC: a PMUv3 node (when KVM gives the vCPUs one)


def _cells(*values: int) -> bytes:
    """Big-endian 32-bit cells (a 64-bit value is given as its two halves)."""
    return struct.pack(f">{len(values)}I", *values)


def _u64_pair(value: int) -> tuple[int, int]:
    return value >> 32, value & 0xFFFFFFFF


def _reg(*spans: tuple[int, int]) -> bytes:
    """A `reg` with #address-cells = #size-cells = 2 (the root's)."""
    out = []
    for start, size in spans:
        out += [*_u64_pair(start), *_u64_pair(size)]
    return _cells(*out)


def _strings(*values: str) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


def generate(spec: TreeSpec) -> bytes:
    """The DTB for `spec`, as bytes."""
    import libfdt

    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    with sw.add_node(""):
        sw.property_string("compatible", "linux,dummy-virt")
        sw.property_string("model", "kvmrig arm64")
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        if spec.gic is not None:
            sw.property_u32("interrupt-parent", PHANDLE_GIC)
        _chosen(sw, spec)
        for start, size in spec.memory:
            with sw.add_node(f"memory@{start:x}"):
                sw.property_string("device_type", "memory")
                sw.property("reg", _reg((start, size)))
        _cpus(sw, spec.cpus)
        with sw.add_node("psci"):
            sw.property("compatible", _strings("arm,psci-1.0", "arm,psci-0.2", "arm,psci"))
            sw.property_string("method", "hvc")  # KVM's in-kernel PSCI answers HVC #0
        _timer(sw, spec.gic is not None)
        if spec.gic is not None:
            _gic(sw, spec.gic)
        if spec.gic is not None and spec.pmu:
            with sw.add_node("pmu"):  # KVM's PMUv3, given to the vCPUs with a GIC where KVM has one
                sw.property("compatible", _strings("arm,armv8-pmuv3"))
                sw.property("interrupts", _cells(virt.GIC_PPI, virt.PMU_PPI, virt.IRQ_TYPE_LEVEL_HIGH))
        if spec.uarts:
            with sw.add_node("apb-pclk"):
                sw.property_string("compatible", "fixed-clock")
                sw.property_u32("#clock-cells", 0)
                sw.property_u32("clock-frequency", APB_CLOCK_HZ)
                sw.property_string("clock-output-names", "clk24mhz")
                sw.property_u32("phandle", PHANDLE_CLOCK)
        for uart in spec.uarts:
            with sw.add_node(f"pl011@{uart.at:x}"):
                sw.property("compatible", _strings("arm,pl011", "arm,primecell"))
                sw.property("reg", _reg((uart.at, 0x1000)))
                if uart.spi is not None and spec.gic is not None:
                    sw.property("interrupts", _cells(virt.GIC_SPI, uart.spi, virt.IRQ_TYPE_LEVEL_HIGH))
                sw.property("clocks", _cells(PHANDLE_CLOCK, PHANDLE_CLOCK))
                sw.property("clock-names", _strings("uartclk", "apb_pclk"))
    fdt = sw.as_fdt()
    fdt.pack()
    return bytes(fdt.as_bytearray())


def _chosen(sw, spec: TreeSpec) -> None:
    with sw.add_node("chosen"):
        if spec.uarts:
            sw.property_string("stdout-path", f"/pl011@{spec.uarts[0].at:x}")
        if spec.bootargs:
            sw.property_string("bootargs", spec.bootargs)
        if spec.initrd is not None:
            sw.property_u64("linux,initrd-start", spec.initrd[0])
            sw.property_u64("linux,initrd-end", spec.initrd[1])


def _cpus(sw, count: int) -> None:
    with sw.add_node("cpus"):
        sw.property_u32("#address-cells", 1)
        sw.property_u32("#size-cells", 0)
        for i in range(count):
            aff = virt.mpidr(i)
            with sw.add_node(f"cpu@{aff:x}"):
                sw.property_string("device_type", "cpu")
                sw.property_string("compatible", "arm,armv8")
                sw.property_u32("reg", aff)
                sw.property_string("enable-method", "psci")  # secondaries start by PSCI CPU_ON


def _timer(sw, with_irqs: bool) -> None:
    with sw.add_node("timer"):
        sw.property("compatible", _strings("arm,armv8-timer", "arm,armv7-timer"))
        sw.property("always-on", b"")
        if with_irqs:
            cells = []
            for ppi in virt.TIMER_PPIS:
                cells += [virt.GIC_PPI, ppi, virt.IRQ_TYPE_LEVEL_HIGH]
            sw.property("interrupts", _cells(*cells))


def _gic(sw, gic: Gic) -> None:
    with sw.add_node(f"intc@{gic.distributor:x}"):
        sw.property_string("compatible", "arm,gic-v3")
        sw.property_u32("#interrupt-cells", 3)
        sw.property("interrupt-controller", b"")
        sw.property_u32("#address-cells", 2)
        sw.property_u32("#size-cells", 2)
        sw.property("ranges", b"")
        sw.property_u32("#redistributor-regions", 1)
        sw.property("reg", _reg((gic.distributor, virt.GIC_DIST_SIZE),
                                (gic.redistributor, virt.redist_size(gic.cpus))))
        sw.property_u32("phandle", PHANDLE_GIC)


def check_blob(data: bytes) -> str | None:
    """None when `data` is a device tree libfdt can walk, else what is wrong."""
    import libfdt

    if len(data) > (2 << 20):
        return f"{len(data)} bytes: a DTB may not exceed 2 MiB (arm64 booting.rst)"
    try:
        fdt = libfdt.Fdt(bytearray(data))
        if fdt.totalsize() > len(data):
            return f"its header says {fdt.totalsize()} bytes, the file has {len(data)}"
        fdt.path_offset("/")
        node, depth = 0, 0
        while node >= 0 and depth >= 0:  # walk every node and property: a broken structure block fails here
            prop = fdt.first_property_offset(node, (libfdt.NOTFOUND,))
            while prop >= 0:
                fdt.get_property_by_offset(prop)
                prop = fdt.next_property_offset(prop, (libfdt.NOTFOUND,))
            node, depth = fdt.next_node(node, depth, (libfdt.NOTFOUND,))  # depth -1: past the root
    except libfdt.FdtException as e:
        return f"libfdt: {e}"
    return None
