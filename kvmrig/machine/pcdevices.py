"""PC devices that real firmware and third-party test suites expect, modelled
on QEMU's so guests built for QEMU run unchanged (kvmrig extensions):

- isa-debug-exit: a write of V ends the run with exit code V (QEMU itself
  would exit with status (V << 1) | 1);
- pc-testdev: QEMU's test device (hw/misc/pc-testdev.c): port 0xe0 a 32-bit
  latch, 0xe4 "flush page" (the page is mprotect'ed away and back so the next
  guest access faults in the host, as QEMU does), ports 0x2000+n drive IRQ
  line n, and a 64 KiB RAM-like MMIO window at 0xff000000;
- fw-cfg: QEMU's firmware configuration interface (docs/specs/fw_cfg.rst):
  selector 0x510, data 0x511, DMA 0x514;
- cmos: an MC146818 RTC with the CMOS fields PC firmware reads for memory
  sizes and the CPU count.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmrig.machine.devbase import Console, Dev
from kvmrig.machine.outcome import Outcome, Stop, num
from kvmrig.rig.model import Device

PC_TESTDEV_MMIO = 0xFF000000
PC_TESTDEV_MMIO_LEN = 0x10000
PC_TESTDEV_IRQ_PORT = 0x2000
PC_TESTDEV_IRQ_LINES = 24


@dataclass
class MachineContext:
    """What PC devices need beyond their registers: the memory map, guest
    memory (fw_cfg DMA, pc-testdev page flush), the CPU count and IRQ lines."""

    regions: tuple = ()                      # rig.model.Region
    memory: object = None                    # machine.memory.Memory
    cpus: int = 1
    irq: Callable[[int, int], None] | None = None
    irq_levels: dict[int, int] = field(default_factory=dict)

    def set_irq(self, line: int, level: int) -> None:
        """Drive an IRQ line. Every call reaches the interrupt controller, as
        QEMU's qemu_set_irq does: asserting a level-triggered line again
        re-evaluates its delivery (the IOAPIC's retrigger semantics); an edge
        line only fires on a rising edge anyway."""
        self.irq_levels[line] = level
        if self.irq is not None:
            self.irq(line, level)

    def ram_below_4g(self) -> int:
        """RAM contiguous from address 0 (what a PC reports as its low memory)."""
        end = 0
        for r in sorted(self.regions, key=lambda r: r.at):
            if not r.rom and r.at <= end < r.end:
                end = r.end
        return min(end, 1 << 32)

    def ram_above_4g(self) -> int:
        return sum(r.size for r in self.regions if not r.rom and r.at >= 1 << 32)


class IsaDebugExit(Dev):
    def write(self, offset: int, size: int, value: int) -> None:
        raise Stop("exit-code", value, f"isa-debug-exit {self.name} written with {num(value)} "
                                       f"(QEMU would exit with status {(value << 1) | 1})")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _flush_page(memory, gpa: int) -> None:
    """Take a page away from the guest's host mapping and give it back, so KVM
    must fault it in again (QEMU's pc-testdev does this with mprotect)."""
    if memory is None:
        return
    b = memory.find(gpa & ~0xFFF)
    if b is None:
        return
    host = ctypes.addressof(ctypes.c_char.from_buffer(b.buf)) + (gpa & ~0xFFF) - b.start
    _libc.mprotect(host, 0x1000, 0)  # PROT_NONE
    _libc.mprotect(host, 0x1000, mmap.PROT_READ | mmap.PROT_WRITE)


class PcTestdev(Dev):
    """Port 0xe0..0xe7 (this object); the IRQ ports and the MMIO window are
    the companions below, registered by the bus."""

    def __init__(self, spec: Device, console: Console, outcome: Outcome, ctx: MachineContext):
        super().__init__(spec, console, outcome)
        self.ctx = ctx
        self.latch = 0
        self.iomem = bytearray(PC_TESTDEV_MMIO_LEN)

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            return self.latch >> (8 * offset)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            mask = (1 << (8 * size)) - 1
            self.latch = (self.latch & ~(mask << (8 * offset)) | (value & mask) << (8 * offset)) & 0xFFFFFFFF
        elif offset == 4:
            _flush_page(self.ctx.memory, value)


class _Part(Dev):
    """Another address range of a pc-testdev, sharing its state."""

    BASE, WHAT = 0, ""

    def __init__(self, owner: PcTestdev):
        super().__init__(owner.spec, owner.console, owner.outcome)
        self.owner = owner
        self.base = self.BASE
        self.name = f"pc-testdev {self.WHAT}@{self.base:#x}"


class PcTestdevIrq(_Part):
    """Ports 0x2000+n: a write drives IRQ line n to (value != 0)."""

    BASE, WHAT = PC_TESTDEV_IRQ_PORT, "irq"

    def write(self, offset: int, size: int, value: int) -> None:
        self.owner.ctx.set_irq(offset, 1 if value else 0)


class PcTestdevMem(_Part):
    """The 64 KiB window at 0xff000000: reads give what was written (MMIO, so
    every access exits: QEMU's emulator tests run instructions against it)."""

    BASE, WHAT = PC_TESTDEV_MMIO, "iomem"

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.owner.iomem[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.owner.iomem[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")[
            :PC_TESTDEV_MMIO_LEN - offset]


# fw_cfg ----------------------------------------------------------------------

FW_CFG_SIGNATURE, FW_CFG_ID, FW_CFG_UUID, FW_CFG_RAM_SIZE = 0x00, 0x01, 0x02, 0x03
FW_CFG_NOGRAPHIC, FW_CFG_NB_CPUS, FW_CFG_MAX_CPUS, FW_CFG_FILE_DIR = 0x04, 0x05, 0x0F, 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_ID_TRADITIONAL, FW_CFG_ID_DMA = 1, 2
DMA_ERROR, DMA_READ, DMA_SKIP, DMA_SELECT, DMA_WRITE = 0x01, 0x02, 0x04, 0x08, 0x10
DMA_SIGNATURE = b"QEMU CFG"


def fw_cfg_items(ctx: MachineContext, files: list[tuple[str, bytes]]) -> dict[int, bytes]:
    """Every fw_cfg item by selector, as QEMU's x86 machines fill them."""
    items = {
        FW_CFG_SIGNATURE: b"QEMU",
        FW_CFG_ID: struct.pack("<I", FW_CFG_ID_TRADITIONAL | FW_CFG_ID_DMA),
        FW_CFG_UUID: bytes(16),
        FW_CFG_RAM_SIZE: struct.pack("<Q", ctx.ram_below_4g() + ctx.ram_above_4g()),
        FW_CFG_NOGRAPHIC: struct.pack("<H", 1),
        FW_CFG_NB_CPUS: struct.pack("<H", ctx.cpus),
        FW_CFG_MAX_CPUS: struct.pack("<H", ctx.cpus),
    }
    directory = struct.pack(">I", len(files))
    for i, (name, data) in enumerate(sorted(files)):
        select = FW_CFG_FILE_FIRST + i
        items[select] = data
        directory += struct.pack(">IHH56s", len(data), select, 0, name.encode())
    items[FW_CFG_FILE_DIR] = directory
    return items


class FwCfg(Dev):
    """Ports 0x510 (selector, 16-bit), 0x511 (data, byte at a time), 0x514
    (DMA address, big-endian: high half at 0x514, low half at 0x518 starts it)."""

    def __init__(self, spec: Device, console: Console, outcome: Outcome, ctx: MachineContext):
        super().__init__(spec, console, outcome)
        self.ctx = ctx
        files = [(name, path.read_bytes()) for name, path in spec.files]
        self.items = fw_cfg_items(ctx, files)
        self.select = 0
        self.pos = 0
        self.dma_high = 0

    def _item(self) -> bytes:
        return self.items.get(self.select & 0x3FFF, b"")

    def read(self, offset: int, size: int) -> int:
        if offset == 1:
            out = 0
            item = self._item()
            for i in range(size):  # wider reads take consecutive bytes (QEMU allows up to 8)
                out |= (item[self.pos] if self.pos < len(item) else 0) << (8 * i)
                self.pos += 1
            return out
        if 4 <= offset < 12:   # DMA port reads give its signature, big-endian
            return int.from_bytes(DMA_SIGNATURE[offset - 4:offset - 4 + size], "big")
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.select, self.pos = value & 0xFFFF, 0
        elif offset == 4 and size == 4:
            self.dma_high = int.from_bytes(value.to_bytes(4, "little"), "big")
        elif offset == 8 and size == 4:
            low = int.from_bytes(value.to_bytes(4, "little"), "big")
            self._dma((self.dma_high << 32) | low)
            self.dma_high = 0
        elif offset == 4 and size == 8:
            self._dma(int.from_bytes(value.to_bytes(8, "little"), "big"))

    def _dma(self, addr: int) -> None:
        mem = self.ctx.memory
        try:
            control, length, target = struct.unpack(">IIQ", mem.read(addr, 16))
        except LookupError:
            return
        if control & DMA_SELECT:
            self.select, self.pos = control >> 16, 0
        item = self._item()
        status = 0
        if control & DMA_READ:
            chunk = item[self.pos:self.pos + length]
            chunk += bytes(length - len(chunk))
            try:
                mem.write(target, chunk)
            except LookupError:
                status = DMA_ERROR
            self.pos += length
        elif control & DMA_SKIP:
            self.pos += length
        elif control & DMA_WRITE:
            status = DMA_ERROR   # fw_cfg items are read-only here
        mem.write(addr, struct.pack(">I", status))


# RTC / CMOS ---------------------------------------------------------------------

def _bcd(n: int) -> int:
    return ((n // 10) << 4) | (n % 10)


def cmos_memory_fields(ctx: MachineContext) -> dict[int, int]:
    """The CMOS bytes PC firmware reads for memory sizes and the CPU count (as QEMU's pc machine sets them)."""
    low, high = ctx.ram_below_4g(), ctx.ram_above_4g()
    ext_kb = min(max(low // 1024 - 1024, 0), 0xFFFF)          # KiB above 1 MiB
    above16 = min(max((low - (16 << 20)) // 65536, 0), 0xFFFF)  # 64 KiB blocks above 16 MiB
    above4g = high // 65536                                    # 64 KiB blocks above 4 GiB
    fields = {0x15: 640 & 0xFF, 0x16: 640 >> 8, 0x17: ext_kb & 0xFF, 0x18: ext_kb >> 8,
              0x30: ext_kb & 0xFF, 0x31: ext_kb >> 8, 0x34: above16 & 0xFF, 0x35: above16 >> 8,
              0x5B: above4g & 0xFF, 0x5C: (above4g >> 8) & 0xFF, 0x5D: (above4g >> 16) & 0xFF,
              0x5F: ctx.cpus - 1}
    return fields


class Cmos(Dev):
    """Port 0x70 selects a register (bit 7: NMI mask), 0x71 reads/writes it.
    Time registers give the host's UTC time in BCD, 24-hour (status B = 0x02);
    status A never shows an update in progress; status D says the RAM is valid."""

    def __init__(self, spec: Device, console: Console, outcome: Outcome, ctx: MachineContext):
        super().__init__(spec, console, outcome)
        self.index = 0
        self.ram = bytearray(128)
        self.ram[0x0A], self.ram[0x0B], self.ram[0x0D] = 0x26, 0x02, 0x80
        for reg, value in cmos_memory_fields(ctx).items():
            self.ram[reg] = value & 0xFF

    def _clock(self, reg: int) -> int | None:
        import datetime   # the CMOS clock only

        now = datetime.datetime.now(datetime.timezone.utc)
        values = {0x00: now.second, 0x02: now.minute, 0x04: now.hour, 0x06: now.isoweekday() % 7 + 1,
                  0x07: now.day, 0x08: now.month, 0x09: now.year % 100, 0x32: now.year // 100}
        value = values.get(reg)
        if value is None:
            return None
        return value if self.ram[0x0B] & 0x04 else _bcd(value)

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF   # the index port reads back as an empty bus on most chipsets
        clock = self._clock(self.index)
        if clock is not None:
            return clock
        value = self.ram[self.index]
        if self.index == 0x0C:
            self.ram[0x0C] = 0   # reading status C acknowledges
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.index = value & 0x7F
        elif self.index not in (0x0C, 0x0D):
            self.ram[self.index] = value & 0xFF
