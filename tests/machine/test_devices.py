"""The Bus and its devices, driven by hand: no VM, just the port/MMIO calls the
run loop makes for each exit."""

from __future__ import annotations

import pytest

from kvmrig.errors import Mark
from kvmrig.machine.devices import Bus
from kvmrig.machine.outcome import Outcome, Stop
from kvmrig.rig.model import Device

MARK = Mark("rig.yaml", 1, 1)
COM1 = 0x3F8
# 16550 register offsets (PC16550D datasheet, table 2).
THR = RBR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
DLAB = 0x80


def port_dev(kind: str, port: int, value: int | None = None) -> Device:
    return Device(kind, port, None, None, value, MARK)


def mmio_dev(kind: str, at: int, size: int | None = None, value: int | None = None) -> Device:
    return Device(kind, None, at, size, value, MARK)


def bus_of(*devices: Device, unclaimed_io: str = "record") -> tuple[Bus, Outcome]:
    outcome = Outcome(exit="?")
    return Bus(devices, outcome, unclaimed_io), outcome


# -- 16550 -------------------------------------------------------------------

@pytest.fixture
def serial():
    bus, _ = bus_of(port_dev("serial", COM1))
    return bus


def test_serial_thr_prints_and_lsr_says_ready(serial):
    assert serial.port_read(COM1 + LSR, 1) & 0x60 == 0x60     # THRE | TEMT: ready to send
    assert serial.port_read(COM1 + LSR, 1) & 0x01 == 0         # DR: nothing received
    for byte in b"OK\n":
        serial.port_write(COM1 + THR, 1, byte)
    assert bytes(serial.console.data) == b"OK\n"


def test_serial_write_keeps_only_the_low_byte(serial):
    serial.port_write(COM1 + THR, 2, 0x1241)                   # out dx, ax: the UART takes AL
    assert bytes(serial.console.data) == b"A"


def test_serial_scratch_register_round_trips(serial):
    for value in (0x55, 0xAA, 0x00):
        serial.port_write(COM1 + SCR, 1, value)
        assert serial.port_read(COM1 + SCR, 1) == value


def test_serial_dlab_switches_to_the_divisor_latch(serial):
    serial.port_write(COM1 + LCR, 1, DLAB | 0x03)              # DLAB on, 8N1
    serial.port_write(COM1 + DLL, 1, 0x0C)                     # 9600 baud
    serial.port_write(COM1 + DLM, 1, 0x00)
    assert serial.port_read(COM1 + DLL, 1) == 0x0C
    assert serial.port_read(COM1 + DLM, 1) == 0x00
    assert serial.port_read(COM1 + LCR, 1) == DLAB | 0x03
    assert bytes(serial.console.data) == b"", "a divisor write is not output"
    serial.port_write(COM1 + LCR, 1, 0x03)                     # DLAB off
    serial.port_write(COM1 + IER, 1, 0x00)
    assert serial.port_read(COM1 + DLL, 1) == 0                # RBR now: nothing received
    serial.port_write(COM1 + THR, 1, ord("x"))
    assert bytes(serial.console.data) == b"x"
    serial.port_write(COM1 + LCR, 1, DLAB | 0x03)
    assert serial.port_read(COM1 + DLL, 1) == 0x0C, "the divisor survives DLAB off/on"


def test_serial_ier_is_separate_from_dlm(serial):
    serial.port_write(COM1 + IER, 1, 0x05)
    serial.port_write(COM1 + LCR, 1, DLAB)
    serial.port_write(COM1 + DLM, 1, 0x01)
    assert serial.port_read(COM1 + DLM, 1) == 0x01
    serial.port_write(COM1 + LCR, 1, 0)
    assert serial.port_read(COM1 + IER, 1) == 0x05


def test_serial_iir_reports_fifos_once_enabled(serial):
    assert serial.port_read(COM1 + IIR, 1) == 0x01             # no interrupt pending, no FIFO
    serial.port_write(COM1 + FCR, 1, 0x07)                     # enable + clear FIFOs
    assert serial.port_read(COM1 + IIR, 1) == 0xC1             # FIFOs enabled (the 16550A probe)


def test_serial_loopback_mirrors_mcr_into_msr_and_prints_nothing(serial):
    # Linux's probe: MCR = loop | OUT2 | OUT1 | RTS | DTR must read back as
    # MSR = DCD | RI | DSR | CTS (0xf0).
    serial.port_write(COM1 + MCR, 1, 0x1F)
    assert serial.port_read(COM1 + MSR, 1) & 0xF0 == 0xF0
    serial.port_write(COM1 + MCR, 1, 0x10 | 0x02)              # loop | RTS -> CTS only
    assert serial.port_read(COM1 + MSR, 1) & 0xF0 == 0x10
    serial.port_write(COM1 + MCR, 1, 0x10 | 0x01)              # loop | DTR -> DSR only
    assert serial.port_read(COM1 + MSR, 1) & 0xF0 == 0x20
    serial.port_write(COM1 + THR, 1, ord("L"))
    assert bytes(serial.console.data) == b"", "loopback output goes to the receiver, not the console"
    serial.port_write(COM1 + MCR, 1, 0x03)                     # loopback off
    assert serial.port_read(COM1 + MSR, 1) == 0xB0             # DCD | DSR | CTS: a cable is there
    serial.port_write(COM1 + THR, 1, ord("L"))
    assert bytes(serial.console.data) == b"L"


def test_serial_input_is_read_from_rbr_in_order_while_lsr_says_data_ready():
    bus, _ = bus_of(Device("serial", COM1, None, None, None, MARK, b"hi\n"))
    got = []
    while bus.port_read(COM1 + LSR, 1) & 0x01:                # DR: a byte waits
        assert bus.port_read(COM1 + LSR, 1) & 0x60 == 0x60     # still ready to send
        got.append(bus.port_read(COM1 + RBR, 1))
    assert bytes(got) == b"hi\n"
    assert bus.port_read(COM1 + LSR, 1) == 0x60               # exhausted: nothing received
    assert bus.port_read(COM1 + RBR, 1) == 0
    assert bytes(bus.console.data) == b"", "input is not echoed by the UART"


def test_serial_input_raises_received_data_in_iir_when_enabled_and_dlab_hides_rbr():
    bus, _ = bus_of(Device("serial", COM1, None, None, None, MARK, b"x"))
    assert bus.port_read(COM1 + IIR, 1) == 0x01                # RX interrupt not enabled
    bus.port_write(COM1 + IER, 1, 0x03)                        # RX data + THR empty
    assert bus.port_read(COM1 + IIR, 1) == 0x04                # received data outranks THRE
    bus.port_write(COM1 + LCR, 1, DLAB)
    bus.port_write(COM1 + DLL, 1, 0x01)
    assert bus.port_read(COM1 + DLL, 1) == 0x01                # the divisor, not the input
    bus.port_write(COM1 + LCR, 1, 0x03)
    assert bus.port_read(COM1 + RBR, 1) == ord("x")
    assert bus.port_read(COM1 + IIR, 1) == 0x02                # now only THRE
    assert bus.port_read(COM1 + LSR, 1) & 0x01 == 0


def test_serial_claims_exactly_eight_ports():
    bus, outcome = bus_of(port_dev("serial", COM1))
    assert bus.port_read(COM1 - 1, 1) == 0xFF
    assert bus.port_read(COM1 + 8, 1) == 0xFF
    bus.port_write(COM1 + 8, 1, 0x42)
    assert outcome.port_writes == [(COM1 + 8, 1, 0x42)]


# -- debugcon, constant ---------------------------------------------------------

def test_debugcon_reads_e9_and_prints_writes():
    bus, outcome = bus_of(port_dev("debugcon", 0xE9))
    assert bus.port_read(0xE9, 1) == 0xE9
    for byte in b"hi":
        bus.port_write(0xE9, 1, byte)
    assert bytes(bus.console.data) == b"hi"
    assert outcome.port_writes == [], "a claimed port's writes are not 'unclaimed' events"


def test_console_is_shared_by_all_console_devices_in_order():
    bus, _ = bus_of(port_dev("serial", COM1), port_dev("debugcon", 0xE9))
    bus.port_write(COM1, 1, ord("a"))
    bus.port_write(0xE9, 1, ord("b"))
    bus.port_write(COM1, 1, ord("c"))
    assert bytes(bus.console.data) == b"abc"


@pytest.mark.parametrize("size, expected", [(1, 0x78), (2, 0x5678), (4, 0x12345678)])
def test_constant_port_read_is_cut_to_the_access_width(size, expected):
    bus, _ = bus_of(port_dev("constant", 0x71, value=0x12345678))
    assert bus.port_read(0x71, size) == expected


def test_constant_port_writes_are_recorded_as_device_writes():
    bus, outcome = bus_of(port_dev("constant", 0x71, value=0))
    bus.port_write(0x71, 1, 0x0A)
    assert outcome.device_writes == [("constant@0x71", 0x71, 1, 0x0A)]
    assert outcome.port_writes == []


@pytest.mark.parametrize("size, expected", [(1, 0xEF), (2, 0xBEEF), (4, 0xDEADBEEF), (8, 0x00000000DEADBEEF)])
def test_constant_mmio_read_is_cut_to_the_access_width(size, expected):
    bus, _ = bus_of(mmio_dev("constant", 0x1000_0000, size=0x1000, value=0xDEADBEEF))
    assert bus.mmio_read(0x1000_0000 + 0x10, size) == expected


def test_constant_mmio_covers_its_size_and_no_more():
    bus, outcome = bus_of(mmio_dev("constant", 0x1000_0000, size=0x1000, value=7))
    assert bus.mmio_read(0x1000_0FFF, 1) == 7
    bus.mmio_write(0x1000_0004, 4, 0xCAFE)
    assert outcome.device_writes == [("constant@0x10000000", 0x1000_0004, 4, 0xCAFE)]
    with pytest.raises(Stop) as info:
        bus.mmio_read(0x1000_1000, 4)
    assert info.value.exit == "mmio" and "0x10001000" in info.value.detail


# -- exit and reset ----------------------------------------------------------------

def test_exit_device_on_a_port_stops_with_the_value():
    bus, _ = bus_of(port_dev("exit", 0xF4))
    with pytest.raises(Stop) as info:
        bus.port_write(0xF4, 1, 42)
    assert (info.value.exit, info.value.code) == ("exit-code", 42)
    assert "0x2a (42)" in info.value.detail


def test_exit_device_on_mmio_stops_with_the_full_value():
    bus, _ = bus_of(mmio_dev("exit", 0x0A00_0000))
    with pytest.raises(Stop) as info:
        bus.mmio_write(0x0A00_0000, 4, 0x1234_5678)
    assert (info.value.exit, info.value.code) == ("exit-code", 0x1234_5678)
    with pytest.raises(Stop):
        bus.mmio_write(0x0A00_0007, 1, 1)                      # the exit device spans 8 bytes
    with pytest.raises(Stop) as info:
        bus.mmio_write(0x0A00_0008, 1, 1)
    assert info.value.exit == "mmio"


def test_exit_device_reads_do_not_stop():
    bus, _ = bus_of(port_dev("exit", 0xF4))
    assert bus.port_read(0xF4, 1) == 0


def test_reset_device_stops_with_reset_and_no_code():
    bus, _ = bus_of(port_dev("reset", 0xCF9))
    with pytest.raises(Stop) as info:
        bus.port_write(0xCF9, 1, 0x06)
    assert (info.value.exit, info.value.code) == ("reset", None)


# -- what no device claims ----------------------------------------------------------

@pytest.mark.parametrize("size, expected", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF)])
def test_unclaimed_port_reads_float_high(size, expected):
    bus, outcome = bus_of()
    assert bus.port_read(0x80, size) == expected
    assert outcome.port_writes == []


def test_unclaimed_port_writes_are_recorded_in_order():
    bus, outcome = bus_of(port_dev("debugcon", 0xE9))
    bus.port_write(0x80, 1, 0x01)
    bus.port_write(0xE9, 1, ord("x"))
    bus.port_write(0x80, 1, 0x02)
    bus.port_write(0x70, 2, 0x1234)
    assert outcome.port_writes == [(0x80, 1, 0x01), (0x80, 1, 0x02), (0x70, 2, 0x1234)]


def test_unclaimed_io_stop_ends_the_run_on_read_and_write():
    bus, outcome = bus_of(port_dev("debugcon", 0xE9), unclaimed_io="stop")
    assert bus.port_read(0xE9, 1) == 0xE9                      # claimed ports still work
    with pytest.raises(Stop) as info:
        bus.port_write(0x80, 1, 0x10)
    assert info.value.exit == "io" and "0x80" in info.value.detail
    with pytest.raises(Stop) as info:
        bus.port_read(0x64, 1)
    assert info.value.exit == "io" and "0x64" in info.value.detail
    assert outcome.port_writes == []


def test_unclaimed_mmio_read_and_write_stop_with_the_address():
    bus, _ = bus_of()
    with pytest.raises(Stop) as info:
        bus.mmio_read(0xFEE0_0030, 4)
    assert info.value.exit == "mmio"
    assert "0xfee00030" in info.value.detail and "read" in info.value.detail
    with pytest.raises(Stop) as info:
        bus.mmio_write(0xFEC0_0000, 4, 0x10)
    assert info.value.exit == "mmio"
    assert "0xfec00000" in info.value.detail and "write" in info.value.detail


def test_rom_write_says_rom():
    bus, _ = bus_of()
    with pytest.raises(Stop) as info:
        bus.mmio_write(0xFFFF_0017, 1, 1, rom=True)
    assert info.value.exit == "mmio"
    assert "0xffff0017" in info.value.detail and "ROM" in info.value.detail


# -- PL011 ------------------------------------------------------------------------

PL011 = 0x0900_0000


def test_pl011_fr_says_transmit_fifo_empty_and_not_busy():
    bus, _ = bus_of(mmio_dev("pl011", PL011))
    fr = bus.mmio_read(PL011 + 0x18, 4)
    assert fr & (1 << 7), "TXFE"
    assert fr & (1 << 4), "RXFE"
    assert not fr & (1 << 5), "TXFF: never full"
    assert not fr & (1 << 3), "BUSY: never busy"


def test_pl011_id_registers_identify_a_pl011():
    bus, _ = bus_of(mmio_dev("pl011", PL011))
    periph = [bus.mmio_read(PL011 + off, 4) for off in (0xFE0, 0xFE4, 0xFE8, 0xFEC)]
    cell = [bus.mmio_read(PL011 + off, 4) for off in (0xFF0, 0xFF4, 0xFF8, 0xFFC)]
    assert periph[0] == 0x11 and periph[1] & 0x0F == 0x0   # part number 0x011
    assert periph[1] >> 4 == 0x1 and periph[2] & 0x0F == 0x4   # designer 0x41 (Arm)
    assert cell == [0x0D, 0xF0, 0x05, 0xB1]                 # PrimeCell ID


def test_pl011_dr_prints_and_other_registers_read_back():
    bus, _ = bus_of(mmio_dev("pl011", PL011))
    for byte in b"ok":
        bus.mmio_write(PL011, 4, byte)
    assert bytes(bus.console.data) == b"ok"
    bus.mmio_write(PL011 + 0x24, 4, 0x27)                      # IBRD
    assert bus.mmio_read(PL011 + 0x24, 4) == 0x27
    assert bus.mmio_read(PL011 + 0x30, 4) & 0x300 == 0x300     # CR: TXE | RXE at reset
    with pytest.raises(Stop):
        bus.mmio_read(PL011 + 0x1000, 4)                       # past its 4 KiB


def test_pl011_input_is_read_from_dr_in_order_while_fr_rxfe_is_clear():
    bus, _ = bus_of(Device("pl011", None, PL011, None, None, MARK, b"ok\r"))
    got = []
    while not bus.mmio_read(PL011 + 0x18, 4) & (1 << 4):       # RXFE clear: a byte waits
        assert bus.mmio_read(PL011 + 0x18, 4) & (1 << 7)       # TXFE: still ready to send
        got.append(bus.mmio_read(PL011, 4))
    assert bytes(got) == b"ok\r"
    assert bus.mmio_read(PL011 + 0x18, 4) == 0x90             # exhausted: TXFE | RXFE
    assert bus.mmio_read(PL011, 4) == 0
    assert bytes(bus.console.data) == b"", "input is not echoed by the UART"


def test_pl011_without_input_reads_empty():
    bus, _ = bus_of(mmio_dev("pl011", PL011))
    assert bus.mmio_read(PL011 + 0x18, 4) & (1 << 4)
    assert bus.mmio_read(PL011, 4) == 0


# -- bounds (issue 11 items 7 and 8) -------------------------------------------------

def test_the_console_keeps_head_and_tail_and_says_how_much_was_cut():
    from kvmrig.machine.devices import CONSOLE_KEEP, Console
    console = Console()
    total = 5 * CONSOLE_KEEP + 123
    for i in range(total):
        console.put(ord("a") + (i * 7 // CONSOLE_KEEP) % 26)
    data = console.data
    assert console.total == total
    assert len(data) < 2 * CONSOLE_KEEP + 200               # 20 MB took 3.2 s and 742 MB into JUnit
    assert data.startswith(b"a" * 100) and data[:CONSOLE_KEEP] == bytes(console.head)
    cut = total - 2 * CONSOLE_KEEP
    assert f"[kvmrig: {cut} bytes of console output cut here; {total} in all]".encode() in data
    assert data.endswith(bytes(console.tail)) and len(console.tail) == CONSOLE_KEEP
    small = Console()
    for b in b"hello":
        small.put(b)
    assert small.data == b"hello"


def test_unclaimed_port_writes_are_bounded_and_summarised():
    from kvmrig.machine.devices import MAX_RECORDS
    from kvmrig.machine.expect import check_end
    from kvmrig.rig.model import Expect

    outcome = Outcome("hlt")
    bus = Bus((port_dev("constant", 0x60, 1),), outcome)
    for i in range(MAX_RECORDS + 5000):
        bus.port_write(0x80, 1, i & 0xFF)
        bus.port_write(0x60, 1, 1)
    assert len(outcome.port_writes) + len(outcome.device_writes) == MAX_RECORDS
    assert outcome.records_cut == 2 * (MAX_RECORDS + 5000) - MAX_RECORDS
    assert outcome.notes == [f"port and device writes after the first {MAX_RECORDS} were counted, not recorded"]
    failures = check_end("x86_64", Expect(port_writes=((0x80, (1,), MARK),)), outcome,
                         lambda a, n: bytes(n), lambda a: 0)
    assert len(failures) == 1
    text = str(failures[0])
    assert len(text) < 400 and "more ..." in text and f"and {outcome.records_cut} more write(s) not recorded" in text
