"""What stops a vCPU: the closed set of events a backend's run() returns.

One frozen dataclass per kind. Backends build them; the machine layer
(machine/session.py) dispatches on the class, once per event, and never looks
inside a payload to find out what it is. Every field means one thing.

Addresses: `pc` is the program counter as the backend reports debug exits
(x86: linear, arm64: the PC); data addresses are guest-physical (MMIO) or as
the debug hardware saw them (watch hits).

Debug events (SwBreak, HwBreak, WatchHit, ForeignDebug) carry `code`, the
architectural code of the exception the backend caught (x86: the vector;
arm64: the ESR syndrome), or None where there was no exception (a planted
HLT). Backend.reinject() needs it to hand the exception back to the guest.

New kinds (an interrupt a device raised, a snapshot point reached) are added
here as classes of their own and to the `Event` union below, with a handler
in Session; nothing else changes shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Halt:
    """The vCPU executed a halting instruction (x86 HLT) with nothing to wake it.
    `pc` is the halting instruction's own address, not the one after it."""

    pc: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The CPU shut down (x86 triple fault); `detail` says why, for the report."""

    pc: int
    detail: str = "triple fault: the CPU shut down"


@dataclass(frozen=True, slots=True)
class SystemEvent:
    """The guest asked the platform to power off, reset, ... (arm64 PSCI).

    `what` is "off" | "reset" | "crash" | "type N" (a kind kvmrig does not
    name); `code` is the backend's number for it (KVM's event type, the PSCI
    function id on the emulator)."""

    pc: int
    what: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class PortIO:
    """x86 port I/O: `count` accesses of `size` bytes each (string I/O repeats).

    A write carries count * size bytes in `data`; a read carries none and the
    machine must answer with Backend.complete_read(count * size bytes) before
    the next run()."""

    port: int
    size: int
    write: bool
    data: bytes = b""
    count: int = 1


@dataclass(frozen=True, slots=True)
class Mmio:
    """An access to guest-physical memory no RAM backs, or a write to ROM.

    A write carries `size` bytes in `data`; a read is answered with
    Backend.complete_read(`size` bytes) before the next run()."""

    addr: int
    size: int
    write: bool
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class SwBreak:
    """The vCPU stopped on a planted software-breakpoint instruction at `pc`,
    before running it. The backend does not know whose it is: the session
    matches `pc` against what it planted (if nothing: a foreign exit)."""

    pc: int
    code: int | None = None


@dataclass(frozen=True, slots=True)
class HwBreak:
    """A hardware execution breakpoint fired at `pc`, before the instruction.
    `slot` is the index of the HwSlot in the list last given to set_debug()."""

    pc: int
    slot: int
    code: int | None = None


@dataclass(frozen=True, slots=True)
class WatchHit:
    """One instruction's data access hit watchpoints; the access has completed
    and `pc` is the next instruction.

    `slots` lists EVERY slot (index into set_debug()'s list) the access
    matched, first the one the hardware reported; it is never empty. One
    access can hit several watchpoints (overlapping ranges, or one range split
    over registers), and each must be counted once. `addr` is the accessed
    address where the backend knows it, else the address of slots[0]; `size`
    is the access size, or 0 when unknown; `write` is None when the backend
    cannot tell a read from a write."""

    pc: int
    addr: int
    slots: tuple[int, ...]
    size: int = 0
    write: bool | None = None
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """A single-step the session asked for finished; `pc` is the next
    instruction. Steps a backend takes for itself (past a breakpoint) are
    never reported."""

    pc: int
    code: int | None = None


@dataclass(frozen=True, slots=True)
class ForeignDebug:
    """A debug exception kvmrig did not cause (the guest's own debug use);
    `addr` is the data address for a watchpoint-type exception, else 0.
    The session hands it back with Backend.reinject()."""

    pc: int
    addr: int = 0
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Timeout:
    """The deadline given to run() passed while the guest ran; `pc` is where it was."""

    pc: int


@dataclass(frozen=True, slots=True)
class Paused:
    """Another vCPU stopped for a debugger (its breakpoint, watchpoint or
    single-step, cpus > 1): vCPU 0's run() returns so that the session
    reports that stop; `pc` is vCPU 0's, None when it was not running."""

    pc: int | None


@dataclass(frozen=True, slots=True)
class Unhandled:
    """Anything else that stopped the vCPU. `detail` says what, for a person;
    `code` is the backend's raw reason (a KVM exit/suberror, a unicorn error,
    a vector); `pc` is None when the backend cannot know it (failed VM entry)."""

    pc: int | None
    detail: str
    code: int | None = None


# The debug exits Backend.reinject() may be handed back (a Step never is).
DebugEvent = SwBreak | HwBreak | WatchHit | ForeignDebug
Event = Halt | Shutdown | SystemEvent | PortIO | Mmio | DebugEvent | Step | Timeout | Paused | Unhandled
