"""PC devices modelled on QEMU's, driven through the bus by hand (no VM)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmrig.errors import Mark
from kvmrig.machine.devices import Bus
from kvmrig.machine.memory import Memory
from kvmrig.machine.outcome import Outcome, Stop
from kvmrig.machine.pcdevices import MachineContext
from kvmrig.rig.model import Device, Region

MARK = Mark("rig.yaml", 1, 1)
RAM = (Region(0, 0x200000, False, MARK), Region(0x100000000, 0x10000000, False, MARK))


def bus_with(*devices: Device, cpus: int = 1, memory=None, irqs=None) -> Bus:
    irq = (lambda line, level: irqs.append((line, level))) if irqs is not None else None
    return Bus(devices, Outcome("?"), "record", MachineContext(RAM, memory, cpus, irq))


def dev(kind: str, port: int | None = None, **kw) -> Device:
    return Device(kind, port, None, kw.pop("size", None), None, MARK, **kw)


def test_isa_debug_exit_ends_with_the_written_value():
    bus = bus_with(dev("isa-debug-exit", 0xF4, size=4))
    with pytest.raises(Stop) as stop:
        bus.port_write(0xF6, 1, 38)
    assert stop.value.exit == "exit-code" and stop.value.code == 38 and "status 77" in stop.value.detail


def test_pc_testdev_latch_irq_ports_and_mmio_window():
    irqs: list = []
    bus = bus_with(dev("pc-testdev", 0xE0), irqs=irqs)
    bus.port_write(0xE0, 4, 0x12345678)
    assert bus.port_read(0xE0, 4) == 0x12345678 and bus.port_read(0xE1, 1) == 0x56
    bus.port_write(0xE0, 1, 0xAA)
    assert bus.port_read(0xE0, 4) == 0x123456AA
    bus.port_write(0x2000 + 10, 1, 1)
    bus.port_write(0x2000 + 10, 1, 5)   # asserted again: sent again (level-triggered lines re-deliver)
    bus.port_write(0x2000 + 10, 1, 0)
    assert irqs == [(10, 1), (10, 1), (10, 0)]
    bus.mmio_write(0xFF000010, 8, 0x1122334455667788)
    assert bus.mmio_read(0xFF000014, 4) == 0x11223344
    assert bus.mmio_read(0xFF00FFFF, 1) == 0


def test_pc_testdev_flush_page_keeps_the_contents():
    memory = Memory(RAM[:1])
    try:
        memory.write(0x3000, b"keep")
        bus = bus_with(dev("pc-testdev", 0xE0), memory=memory)
        bus.port_write(0xE4, 4, 0x3010)
        assert memory.read(0x3000, 4) == b"keep"
    finally:
        memory.close()


def _fw_read(bus: Bus, key: int, n: int) -> bytes:
    bus.port_write(0x510, 2, key)
    return bytes(bus.port_read(0x511, 1) for _ in range(n))


def test_fw_cfg_signature_counts_and_files(tmp_path: Path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello fw_cfg")
    bus = bus_with(Device("fw-cfg", 0x510, None, None, None, MARK, files=(("opt/test", blob),)), cpus=3)
    assert _fw_read(bus, 0, 4) == b"QEMU"
    assert struct.unpack("<I", _fw_read(bus, 1, 4))[0] & 3 == 3           # traditional + DMA
    assert struct.unpack("<H", _fw_read(bus, 5, 2))[0] == 3               # NB_CPUS
    assert struct.unpack("<Q", _fw_read(bus, 3, 8))[0] == 0x200000 + 0x10000000
    directory = _fw_read(bus, 0x19, 4 + 64)
    count, = struct.unpack(">I", directory[:4])
    size, select, _, name = struct.unpack(">IHH56s", directory[4:])
    assert count == 1 and size == len(b"hello fw_cfg") and name.rstrip(b"\0") == b"opt/test"
    assert _fw_read(bus, select, size) == b"hello fw_cfg"
    assert bus.port_read(0x514, 4) == int.from_bytes(b"QEMU", "big")


def test_fw_cfg_dma_read_with_select(tmp_path: Path):
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(40)))
    memory = Memory(RAM[:1])
    try:
        bus = bus_with(Device("fw-cfg", 0x510, None, None, None, MARK, files=(("opt/b", blob),)), memory=memory)
        control = (0x20 << 16) | 0x08 | 0x02        # select 0x20, read
        memory.write(0x1000, struct.pack(">IIQ", control, 16, 0x2000))
        bus.port_write(0x514, 4, 0)                                   # high half (big-endian) 0
        bus.port_write(0x518, 4, int.from_bytes((0x1000).to_bytes(4, "big"), "little"))
        assert memory.read(0x2000, 16) == bytes(range(16))
        assert memory.read(0x1000, 4) == bytes(4)                     # control cleared: done, no error
    finally:
        memory.close()


def test_cmos_memory_fields_and_clock():
    bus = bus_with(dev("cmos", 0x70), cpus=2)

    def cmos(reg: int) -> int:
        bus.port_write(0x70, 1, reg)
        return bus.port_read(0x71, 1)

    assert cmos(0x15) | cmos(0x16) << 8 == 640
    assert cmos(0x17) | cmos(0x18) << 8 == 2048 - 1024                 # KiB above 1 MiB
    assert cmos(0x34) | cmos(0x35) << 8 == 0                           # nothing above 16 MiB
    assert cmos(0x5B) | cmos(0x5C) << 8 | cmos(0x5D) << 16 == 0x10000000 // 65536
    assert cmos(0x5F) == 1                                             # CPUs - 1
    assert cmos(0x0D) == 0x80 and cmos(0x0A) & 0x80 == 0
    second = cmos(0x00)
    assert second & 0x0F <= 9 and second >> 4 <= 5                     # BCD
    bus.port_write(0x70, 1, 0x40)
    bus.port_write(0x71, 1, 0x5A)
    assert cmos(0x40) == 0x5A


def test_serial_raises_its_irq_for_thre_and_rx():
    irqs: list = []
    bus = bus_with(Device("serial", 0x3F8, None, None, None, MARK, b"x"), irqs=irqs)
    bus.port_write(0x3F9, 1, 0x02)          # IER: THRE
    assert irqs == [(4, 1)]
    assert bus.port_read(0x3FA, 1) & 0x0F == 0x02   # IIR says THRE, and acknowledges it
    assert irqs[-1] == (4, 0)
    bus.port_write(0x3F9, 1, 0x01)          # IER: RX only; a byte waits
    assert irqs[-1] == (4, 1)
    assert bus.port_read(0x3F8, 1) == ord("x")
    assert irqs[-1] == (4, 0)
