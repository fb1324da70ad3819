"""The devices a rig declares, and the bus that routes port I/O and MMIO to them.

Devices answer reads with an int and take writes; ending the run is a Stop
raised from a write. Anything no device claims follows the contract: port reads
give 0xff (an empty ISA bus), port writes are recorded (POST codes), MMIO ends
the run with exit `mmio`.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmrig.arch.arm64.virt import SPI_BASE
from kvmrig.machine import pcdevices as pc
from kvmrig.machine.devbase import CONSOLE_KEEP, MAX_RECORDS, Console, Dev, record  # noqa: F401 (the bounds: re-exported)
from kvmrig.machine.devbase import mask_of as _mask
from kvmrig.machine.outcome import Outcome, Stop, num
from kvmrig.rig.model import Device


class Serial16550(Dev):
    """Enough of a 16550 for polled output and input (`input:`) and the usual
    presence probes."""

    LSR_READY = 0x60  # THRE | TEMT: transmitter empty, nothing received
    LSR_DR = 0x01     # data ready: a received byte waits in RBR

    COM_IRQ = {0x3F8: 4, 0x2F8: 3, 0x3E8: 4, 0x2E8: 3}

    def __init__(self, spec: Device, console: Console, outcome: Outcome):
        super().__init__(spec, console, outcome)
        self.regs = [0] * 8  # IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR by offset
        self.dll = self.dlm = 0
        self.ctx = None           # set by attach_irq: interrupts need machine.irqchip
        self.irq = 4
        self.thre = False         # "transmitter empty" interrupt pending

    def attach_irq(self, ctx, spec: Device) -> None:
        """With an interrupt controller, THRE and RX interrupts raise `irq`
        (default: the PC's COM1/COM2 lines by port)."""
        self.ctx = ctx
        self.irq = spec.irq if spec.irq is not None else self.COM_IRQ.get(self.base, 4)

    def _update_irq(self) -> None:
        if self.ctx is not None and self.ctx.irq is not None:
            ier = self.regs[1]
            pending = bool((ier & 0x01 and self.rx) or (ier & 0x02 and self.thre))
            self.ctx.set_irq(self.irq, int(pending))

    def receive(self) -> int:
        byte = super().receive()
        self._update_irq()
        return byte

    STATE = ("rx", "regs", "dll", "dlm")

    def read(self, offset: int, size: int) -> int:
        dlab = self.regs[3] & 0x80
        if offset == 2 and self.thre and not (self.regs[1] & 0x01 and self.rx):
            self.thre = False     # reading IIR that reports THRE acknowledges it
            value = 0x02 | (0xC0 if self.regs[2] & 1 else 0)
            self._update_irq()
            return value
        if offset == 0:
            return self.dll if dlab else self.receive()  # RBR
        if offset == 1:
            return self.dlm if dlab else self.regs[1]
        if offset == 2:
            # IIR: "transmitter empty" pending when that interrupt is enabled (IER bit 1),
            # else none; FIFO bits when FCR enabled them. Firmware probes this.
            # "Received data available" (IER bit 0) outranks it.
            if self.regs[1] & 0x01 and self.rx:
                iir = 0x04
            else:
                iir = 0x02 if self.regs[1] & 0x02 else 0x01
            return iir | (0xC0 if self.regs[2] & 1 else 0)
        if offset == 5:
            if not self.rx:
                self.waiting()
            return self.LSR_READY | (self.LSR_DR if self.rx else 0)
        if offset == 6:
            mcr = self.regs[4]
            if mcr & 0x10:  # loopback: CTS<-RTS, DSR<-DTR, RI<-OUT1, DCD<-OUT2
                return ((mcr & 2) << 3) | ((mcr & 1) << 5) | ((mcr & 4) << 4) | ((mcr & 8) << 4)
            return 0xB0  # DCD, DSR, CTS
        return self.regs[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.regs[3] & 0x80
        if offset == 0:
            if dlab:
                self.dll = value
            else:
                if not self.regs[4] & 0x10:
                    self.idle_polls = 0
                    self.console.put(value)
                self.thre = True   # sent at once: the holding register is empty again
                self._update_irq()
        elif offset == 1 and dlab:
            self.dlm = value
        elif offset not in (5, 6):
            if offset == 1 and value & 0x02 and not self.regs[1] & 0x02:
                self.thre = True   # enabling THRE with the holding register empty interrupts at once
            self.regs[offset] = value
            if offset == 1:
                self._update_irq()


class Debugcon(Dev):
    """Byte written = byte printed; reads return 0xe9, which firmware probes for."""

    def read(self, offset: int, size: int) -> int:
        return 0xE9

    def write(self, offset: int, size: int, value: int) -> None:
        self.console.put(value)


class Pl011(Dev):
    """PL011 UART (Arm DDI 0183): DR prints, FR says transmit FIFO empty; DR
    reads give the `input:` bytes in order, FR.RXFE is clear while some remain.

    Interrupts (3.3.13-3.3.15, with a `gic`): the raw status RIS has TXRIS
    (bit 5) always set, since a byte written leaves at once and the transmit
    FIFO is never above its trigger level, and RXRIS (bit 4) and RTRIS (bit
    6) while input remains; the line to the GIC is high while RIS & IMSC is
    not 0 (MIS), as the combined UARTINTR. ICR writes change nothing: the
    conditions they would clear hold again at once."""

    FR_TXFE = 0x80
    FR_RXFE = 0x10
    IMSC, RIS, MIS, ICR = 0x38, 0x3C, 0x40, 0x44
    RXRIS, TXRIS, RTRIS = 1 << 4, 1 << 5, 1 << 6

    ID = {0xFE0: 0x11, 0xFE4: 0x10, 0xFE8: 0x14, 0xFEC: 0x00,
          0xFF0: 0x0D, 0xFF4: 0xF0, 0xFF8: 0x05, 0xFFC: 0xB1}

    def __init__(self, spec: Device, console: Console, outcome: Outcome):
        super().__init__(spec, console, outcome)
        self.regs: dict[int, int] = {0x30: 0x300}  # CR: TXE | RXE

    STATE = ("rx", "regs")

    def read(self, offset: int, size: int) -> int:
        if offset == 0x18:  # FR: transmit FIFO empty, not busy, not full
            if not self.rx:
                self.waiting()
            return self.FR_TXFE | (0 if self.rx else self.FR_RXFE)
        if offset in self.ID:
            return self.ID[offset]
        if offset == 0x00:
            byte = self.receive()  # DR: no error bits
            self.update_line(self.mis() != 0)
            return byte
        if offset == self.RIS:
            return self.ris()
        if offset == self.MIS:
            return self.mis()
        return self.regs.get(offset, 0)

    def ris(self) -> int:
        return self.TXRIS | (self.RXRIS | self.RTRIS if self.rx else 0)

    def mis(self) -> int:
        return self.ris() & self.regs.get(self.IMSC, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0x00:
            self.idle_polls = 0
            self.console.put(value)
        elif offset != self.ICR:
            self.regs[offset] = value
            if offset == self.IMSC:
                self.update_line(self.mis() != 0)


class ExitDevice(Dev):
    """A write of V ends the run with exit code V."""

    def write(self, offset: int, size: int, value: int) -> None:
        raise Stop("exit-code", value, f"exit device {self.name} written with {num(value)}")


class ResetDevice(Dev):
    """kvmrig extension: any write ends the run with exit `reset`."""

    def write(self, offset: int, size: int, value: int) -> None:
        raise Stop("reset", None, f"reset device {self.name} written with {num(value)}")


class Constant(Dev):
    """Reads return `value` (cut to the access width); writes are recorded."""

    def read(self, offset: int, size: int) -> int:
        return (self.spec.value or 0) & _mask(size)

    def write(self, offset: int, size: int, value: int) -> None:
        record(self.outcome, self.outcome.device_writes, (self.name, self.base + offset, size, value))


KINDS = {
    "serial": Serial16550, "debugcon": Debugcon, "pl011": Pl011,
    "exit": ExitDevice, "reset": ResetDevice, "constant": Constant,
}


class Bus:
    """Routes port I/O and MMIO to devices; applies the unclaimed-access rules."""

    def __init__(self, specs: tuple[Device, ...], outcome: Outcome, unclaimed_io: str = "record", ctx=None):
        self.console = Console()
        self.outcome = outcome
        self.unclaimed_io = unclaimed_io
        self.ctx = ctx if ctx is not None else pc.MachineContext()
        self.ports: dict[int, tuple[Dev, int]] = {}
        self.mmio: list[tuple[int, int, Dev]] = []
        self.devices: list[Dev] = []
        self.idle: list[Dev] = []   # UARTs with `idle:` whose guest waits for input that is not there
        pc_kinds = {"pc-testdev": pc.PcTestdev, "fw-cfg": pc.FwCfg, "cmos": pc.Cmos}
        for spec in specs:
            if spec.type in pc_kinds:
                dev = pc_kinds[spec.type](spec, self.console, outcome, self.ctx)
            elif spec.type == "isa-debug-exit":
                dev = pc.IsaDebugExit(spec, self.console, outcome)
            else:
                dev = KINDS[spec.type](spec, self.console, outcome)
            if isinstance(dev, Serial16550):
                dev.attach_irq(self.ctx, spec)
            dev.bus_idle = self.idle
            self.devices.append(dev)
            if spec.port is not None:
                for off in range(spec.span):
                    self.ports[spec.port + off] = (dev, off)
            else:
                assert spec.at is not None
                self.mmio.append((spec.at, spec.at + spec.span, dev))
            if isinstance(dev, pc.PcTestdev):
                irq = pc.PcTestdevIrq(dev)
                for line in range(pc.PC_TESTDEV_IRQ_LINES):
                    self.ports[pc.PC_TESTDEV_IRQ_PORT + line] = (irq, line)
                self.mmio.append((pc.PC_TESTDEV_MMIO, pc.PC_TESTDEV_MMIO + pc.PC_TESTDEV_MMIO_LEN,
                                  pc.PcTestdevMem(dev)))

    def connect_irqs(self, set_line: Callable[[int, bool], None], sync: bool = False) -> None:
        """Wire every device that has an SPI (`irq`) to the interrupt controller:
        set_line(INTID, level) is the backend's set_irq_line. With `sync` (a
        device state loaded from a snapshot, new input given) each line is
        driven to the level the device's state says now."""
        for _start, _end, dev in self.mmio:
            spi = dev.spec.irq if dev.spec.type == "pl011" else None
            if spi is not None:
                intid = SPI_BASE + spi
                dev._line = lambda level, intid=intid: set_line(intid, level)
                if sync:
                    dev.drive_line(dev.mis() != 0)

    # Port I/O -----------------------------------------------------------
    def port_read(self, port: int, size: int) -> int:
        hit = self.ports.get(port)
        if hit is None:
            if self.unclaimed_io == "stop":
                raise Stop("io", None, f"read of {size} byte(s) from unclaimed port {port:#x}")
            return _mask(size)  # empty ISA bus: all ones
        dev, off = hit
        return dev.read(off, size) & _mask(size)

    def port_write(self, port: int, size: int, value: int) -> None:
        hit = self.ports.get(port)
        if hit is None:
            if self.unclaimed_io == "stop":
                raise Stop("io", None, f"write of {num(value)} ({size} byte(s)) to unclaimed port {port:#x}")
            record(self.outcome, self.outcome.port_writes, (port, size, value))
            return
        dev, off = hit
        dev.write(off, size, value)

    # MMIO -----------------------------------------------------------------
    def find_mmio(self, addr: int) -> tuple[Dev, int] | None:
        for start, end, dev in self.mmio:
            if start <= addr < end:
                return dev, addr - start
        return None

    def mmio_read(self, addr: int, size: int) -> int:
        hit = self.find_mmio(addr)
        if hit is None:
            raise Stop("mmio", None, f"MMIO read of {size} byte(s) at {addr:#x}: no memory region or device there")
        dev, off = hit
        return dev.read(off, size) & _mask(size)

    def mmio_write(self, addr: int, size: int, value: int, rom: bool = False) -> None:
        hit = self.find_mmio(addr)
        if hit is None:
            what = "a ROM region (read-only)" if rom else "no memory region or device there"
            raise Stop("mmio", None, f"MMIO write of {num(value)} ({size} byte(s)) at {addr:#x}: {what}")
        dev, off = hit
        dev.write(off, size, value)

    # Snapshots -------------------------------------------------------------------
    def state(self) -> list[dict]:
        """Every device's spec and state, in rig order (snapshot files)."""
        return [{"type": d.spec.type, "port": d.spec.port, "at": d.spec.at, "size": d.spec.size,
                 "value": d.spec.value, "idle": d.spec.idle, "irq": d.spec.irq, "state": d.state()}
                for d in self.devices]

    def load_state(self, saved: list[dict], console_input: bytes | None = None) -> None:
        """Device states from a snapshot (the same devices, in the same order);
        `console_input` then replaces what the UARTs have left to give."""
        for dev, entry in zip(self.devices, saved):
            dev.load_state(entry.get("state", {}))
            if console_input is not None and dev.spec.type in ("serial", "pl011"):
                dev.rx = bytearray(console_input)
