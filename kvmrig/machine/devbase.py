"""What every device is: a base class answering reads and taking writes, and
the console all console devices print to (machine/devices.py and
machine/pcdevices.py build on these)."""

from __future__ import annotations

from kvmrig.machine.outcome import Outcome
from kvmrig.rig.model import Device


def mask_of(size: int) -> int:
    """All ones for an access of `size` bytes."""
    return (1 << (8 * size)) - 1


class Console:
    """Everything the guest printed, across all console devices, in order."""

    def __init__(self) -> None:
        self.data = bytearray()

    def put(self, byte: int) -> None:
        self.data.append(byte & 0xFF)


class Dev:
    """Base device: reads 0, writes ignored."""

    def __init__(self, spec: Device, console: Console, outcome: Outcome):
        self.spec = spec
        self.console = console
        self.outcome = outcome
        self.base = spec.port if spec.port is not None else spec.at
        self.name = f"{spec.type}@{self.base:#x}"
        # Console input (kvmrig extension, UARTs only): bytes the guest still has to read.
        self.rx = bytearray(spec.input or b"")

    def receive(self) -> int:
        """The next input byte, or 0 when there is none left."""
        return self.rx.pop(0) if self.rx else 0

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass
