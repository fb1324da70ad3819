"""What every device is: a base class answering reads and taking writes, and
the console all console devices print to (machine/devices.py and
machine/pcdevices.py build on these)."""

from __future__ import annotations

from collections.abc import Callable

from kvmrig.machine.outcome import Outcome
from kvmrig.rig.model import Device


def mask_of(size: int) -> int:
    """All ones for an access of `size` bytes."""
    return (1 << (8 * size)) - 1


# Bounds on what one run keeps (docs/limits.md): a guest that prints or pokes
# ports in a loop until its timeout must not grow the worker, the parent or the
# reports without bound.
CONSOLE_KEEP = 128 << 10   # bytes of console kept from the start, and again from the end
MAX_RECORDS = 10_000       # unclaimed port writes and constant-device writes kept (the first ones)


class Console:
    """Everything the guest printed, across all console devices, in order —
    the first and the last CONSOLE_KEEP bytes of it, with a line saying how
    much was cut between them."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.cut = 0       # bytes dropped between head and tail
        self.watch: Callable[[bytes], None] | None = None   # sees every line as it completes (rig `verdict:`)
        self.line_max = 512    # bytes of a line `watch` sees (its start)
        self._line = bytearray()

    def put(self, byte: int) -> None:
        if self.watch is not None:
            if byte == 0x0A:
                self.watch(bytes(self._line))
                self._line.clear()
            elif len(self._line) < self.line_max:
                self._line.append(byte & 0xFF)
        if len(self.head) < CONSOLE_KEEP:
            self.head.append(byte & 0xFF)
            return
        self.tail.append(byte & 0xFF)
        if len(self.tail) >= 2 * CONSOLE_KEEP:  # trimmed in halves: amortised O(1) a byte
            drop = len(self.tail) - CONSOLE_KEEP
            del self.tail[:drop]
            self.cut += drop

    def flush(self) -> None:
        """The run is over: `watch` sees the last line even without its newline."""
        if self.watch is not None and self._line:
            self.watch(bytes(self._line))
            self._line.clear()

    @property
    def total(self) -> int:
        return len(self.head) + self.cut + len(self.tail)

    @property
    def data(self) -> bytes:
        """The console as reported: all of it, or head, a cut line and tail."""
        if len(self.tail) > CONSOLE_KEEP:
            drop = len(self.tail) - CONSOLE_KEEP
            del self.tail[:drop]
            self.cut += drop
        if not self.cut:
            return bytes(self.head + self.tail)
        note = f"\n[kvmrig: {self.cut} bytes of console output cut here; {self.total} in all]\n"
        return bytes(self.head) + note.encode() + bytes(self.tail)


def record(outcome: Outcome, records: list, item: tuple) -> None:
    """Keep the first MAX_RECORDS port or device writes; count the rest."""
    if len(outcome.port_writes) + len(outcome.device_writes) < MAX_RECORDS:
        records.append(item)
    else:
        if not outcome.records_cut:
            outcome.notes.append(f"port and device writes after the first {MAX_RECORDS} were counted, not recorded")
        outcome.records_cut += 1


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
        # The interrupt line (arm64 pl011 with a gic): Bus.connect_irqs wires it.
        self._line: Callable[[bool], None] | None = None
        self._level = False

    def update_line(self, level: bool) -> None:
        """Drive the device's interrupt line, telling the interrupt controller only of changes."""
        if self._line is not None and level != self._level:
            self.drive_line(level)

    def drive_line(self, level: bool) -> None:
        """Tell the interrupt controller the line's level, changed or not (a
        line newly wired to a controller whose state was loaded)."""
        self._level = level
        if self._line is not None:
            self._line(level)

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
