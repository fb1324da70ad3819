"""A pl011's interrupt line (kvmrig extension, with a `gic`): high while an
unmasked interrupt is pending (RIS & IMSC), reported to the interrupt
controller only when it changes, as the INTID of its SPI."""

from __future__ import annotations

from kvmrig.errors import Mark
from kvmrig.machine.devices import Bus
from kvmrig.machine.outcome import Outcome
from kvmrig.rig.model import Device

UART = 0x09000000
IMSC, RIS, MIS, DR = UART + 0x38, UART + 0x3C, UART + 0x40, UART


def bus_with(input: bytes | None, irq: int | None = 1) -> tuple[Bus, list[tuple[int, bool]]]:
    bus = Bus((Device("pl011", None, UART, None, None, Mark("r.yaml", 1, 1), input, irq),), Outcome(exit="?"))
    lines: list[tuple[int, bool]] = []
    bus.connect_irqs(lambda intid, level: lines.append((intid, level)))
    return bus, lines


def test_receive_interrupt_until_the_input_is_read():
    bus, lines = bus_with(b"ab", irq=5)
    assert bus.mmio_read(RIS, 4) == 0x70 and bus.mmio_read(MIS, 4) == 0 and lines == []
    bus.mmio_write(IMSC, 4, 1 << 4)                     # RXIM
    assert lines == [(37, True)] and bus.mmio_read(MIS, 4) == 0x10
    assert bus.mmio_read(DR, 4) == ord("a") and lines == [(37, True)]   # still input: no change
    assert bus.mmio_read(DR, 4) == ord("b") and lines == [(37, True), (37, False)]
    assert bus.mmio_read(RIS, 4) == 0x20                # only TXRIS is left


def test_transmit_interrupt_follows_its_mask():
    bus, lines = bus_with(None)
    bus.mmio_write(IMSC, 4, 1 << 5)                     # TXIM: the FIFO is always empty
    bus.mmio_write(UART + 0x44, 4, 0x7FF)               # ICR cannot clear a condition that holds
    bus.mmio_write(IMSC, 4, 0)
    assert lines == [(33, True), (33, False)]


def test_no_line_without_an_irq():
    bus, lines = bus_with(b"x", irq=None)
    bus.mmio_write(IMSC, 4, 0x7FF)
    assert lines == [] and bus.mmio_read(MIS, 4) == 0x70


def test_a_child_drives_its_lines_to_its_loaded_state_and_new_input():
    """A snapshot child: the UART's state (IMSC set, no input left) is loaded,
    the child's input given, then the line is wired: it goes high at once
    (the guest waits in WFI for that interrupt, and writes no register first)."""
    parent, _ = bus_with(None)
    parent.mmio_write(IMSC, 4, 1 << 4)                  # RXIM, nothing received
    child = Bus((Device("pl011", None, UART, None, None, Mark("r.yaml", 1, 1), None, 1),), Outcome(exit="?"))
    child.load_state(parent.state(), b"k")
    lines: list[tuple[int, bool]] = []
    child.connect_irqs(lambda intid, level: lines.append((intid, level)), sync=True)
    assert lines == [(33, True)]
    assert child.mmio_read(DR, 4) == ord("k") and lines == [(33, True), (33, False)]
    quiet = Bus((Device("pl011", None, UART, None, None, Mark("r.yaml", 1, 1), None, 1),), Outcome(exit="?"))
    quiet.load_state(parent.state(), None)
    lines.clear()
    quiet.connect_irqs(lambda intid, level: lines.append((intid, level)), sync=True)
    assert lines == [(33, False)], "a low line is said low too: the GIC may hold the parent's level"
