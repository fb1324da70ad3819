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
        self.idle_polls = 0
        return self.rx.pop(0) if self.rx else 0

    IDLE_POLLS = 64   # status reads in a row, with no input left and no output, that mean "waiting"

    def waiting(self) -> None:
        """The guest read the UART's status with no input left. A driver also
        reads it before each byte it prints, so only IDLE_POLLS reads in a row
        with nothing printed in between count as waiting for input; with
        `idle:` the bus then notes it (the session saves that point and ends
        the run)."""
        self.idle_polls += 1
        if self.idle_polls == self.IDLE_POLLS and self.spec.idle and self.bus_idle is not None:
            self.bus_idle.append(self)

    idle_polls = 0

    bus_idle: list | None = None   # set by the Bus: where waiting() reports

    # Snapshots: the state a device carries from one rig into the next ---------
    STATE = ("rx",)

    def state(self) -> dict:
        """This device's state as JSON-ready values."""
        out = {}
        for name in self.STATE:
            value = getattr(self, name)
            if isinstance(value, bytearray):
                out[name] = value.hex()
            elif isinstance(value, dict):
                out[name] = {str(k): v for k, v in value.items()}
            else:
                out[name] = value
        return out

    def load_state(self, state: dict) -> None:
        for name in self.STATE:
            if name not in state:
                continue
            value, current = state[name], getattr(self, name)
            if isinstance(current, bytearray):
                setattr(self, name, bytearray.fromhex(value))
            elif isinstance(current, dict):
                setattr(self, name, {int(k): int(v) for k, v in value.items()})
            elif isinstance(current, list):
                setattr(self, name, [int(v) for v in value])
            else:
                setattr(self, name, int(value))

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass
