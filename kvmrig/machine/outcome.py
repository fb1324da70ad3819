"""What a run produced: how it ended, what it printed, what the checks found.

These records cross the process boundary (workers pickle them to the parent),
so they hold plain data only.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields

from kvmrig.errors import Mark


class Stop(Exception):
    """Raised by a device or the debug model to end the run (control flow only)."""

    def __init__(self, exit: str, code: int | None = None, detail: str = ""):
        super().__init__(exit, code, detail)
        self.exit = exit
        self.code = code
        self.detail = detail


def num(value: int) -> str:
    """A number as firmware people read it: hex and decimal."""
    if -10 < value < 10:
        return str(value)
    if value < 0:
        return f"-{-value:#x} ({value})"
    return f"{value:#x} ({value})"


@dataclass
class Failure:
    """One failed check: what, expected, actual, and where the rig asked for it."""

    what: str
    expected: str
    actual: str
    mark: Mark | None = None

    def __str__(self) -> str:
        # the path as the run was given it: two exit-code.yaml in one run must not read alike
        where = f" [{self.mark.path}:{self.mark.line}]" if self.mark else ""
        return f"{self.what}: expected {self.expected}, got {self.actual}{where}"


@dataclass
class Hit:
    """One breakpoint or watchpoint hit, for the report."""

    point: str      # "breakpoint[0] sym:loop (0x1010)" style label
    number: int     # 1-based hit count of that point
    pc: int
    addr: int | None = None
    regs: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    report: list[str] = field(default_factory=list)   # code and registers at the hit (the first failing hit)
    cpu: int = 0    # the vCPU that hit it


@dataclass
class Subtest:
    """One check the guest reported itself (rig `verdict:`): a JUnit testcase under the rig."""

    name: str
    status: str     # passed | failed | skipped | xfail (known failure: fine) | xpass (unexpected pass)
    line: str = ""  # the console line it came from


@dataclass
class Outcome:
    """The result of running one rig on one backend."""

    exit: str
    exit_code: int | None = None
    detail: str = ""
    backend: str = ""
    regs: dict[str, int] = field(default_factory=dict)
    console: bytes = b""
    port_writes: list[tuple[int, int, int]] = field(default_factory=list)   # (port, size, value)
    device_writes: list[tuple[str, int, int, int]] = field(default_factory=list)  # (device, addr, size, value)
    records_cut: int = 0  # port and device writes not kept beyond devices.MAX_RECORDS
    hits: list[Hit] = field(default_factory=list)
    hit_counts: dict[str, int] = field(default_factory=dict)
    steps: int | None = None
    trace: list[int] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: list[str] = field(default_factory=list)  # code at the stop, registers (failed rigs only)
    stop_pc: int | None = None
    exits: int = 0      # vCPU exits handled (for benchmarks and reports)
    coverage: list[tuple[int, int]] | None = None   # executed code as [start, end) ranges (kvmrig.coverage)
    seconds: float = 0.0
    subtests: list[Subtest] = field(default_factory=list)  # the guest's own checks (rig `verdict:`)
    skipped: str | None = None  # the guest skipped itself (verdict exit codes): the reason

    def __reduce__(self):
        # Pickled as its field values in order (one per rig, worker to parent):
        # no field names in each message, and a plain call to load.
        return Outcome, _outcome_fields(self)


_outcome_fields = operator.attrgetter(*(f.name for f in fields(Outcome)))
