"""The arch-neutral debug model: breakpoints and watchpoints, resolved to
addresses, assigned to debug registers, counted, and checked at every hit.

Backends only report "sw at pc", "hw slot n fired", "watch slot n fired" or
"step"; everything a hit means for the rig (counting, `on_hit`, per-hit
`expect` and `set`, hit records) is decided here, once for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmrig.arch.traits import Traits
from kvmrig.backends.base import HwSlot
from kvmrig.errors import RigError
from kvmrig.machine.outcome import Failure
from kvmrig.rig.model import Breakpoint, Rig, Watchpoint

MAX_HIT_RECORDS = 1000  # per point: counts stay exact, detailed records stop here


@dataclass
class Point:
    """One breakpoint or watchpoint of the rig, resolved."""

    spec: Breakpoint | Watchpoint
    addr: int
    length: int
    label: str
    hits: int = 0
    slots: list[int] = field(default_factory=list)

    @property
    def is_watch(self) -> bool:
        return isinstance(self.spec, Watchpoint)

    def applies(self) -> bool:
        """Whether this hit is one the rig's `expect`/`set` speak about."""
        on_hit = self.spec.on_hit
        return on_hit is None or on_hit == self.hits

    def check_count(self) -> Failure | None:
        if self.spec.hits is not None and not self.spec.hits.matches(self.hits):
            return Failure(f"{self.label} hits", self.spec.hits.text, str(self.hits), self.spec.hits.mark)
        return None


class DebugPlan:
    """Points resolved to addresses and hardware slots assigned."""

    def __init__(self, rig: Rig, traits: Traits, resolve, capacity: tuple[int, int, bool] | None = None):
        self.traits = traits
        self.points: list[Point] = []
        self.sw: dict[int, list[Point]] = {}
        self.slots: list[HwSlot] = []
        self.slot_owner: list[Point] = []
        n_bp, n_wp, shared = capacity or traits.hw_slots
        used_bp = used_wp = 0

        def take(kind: str, point: Point, spec_mark, need: int) -> None:
            nonlocal used_bp, used_wp
            if shared:
                left = n_bp - len(self.slots)
            else:
                left = (n_bp - used_bp) if kind == "exec" else (n_wp - used_wp)
            if need > left:
                pool = (f"{n_bp} debug registers for breakpoints and watchpoints together" if shared else
                        f"{n_bp if kind == 'exec' else n_wp} {'breakpoint' if kind == 'exec' else 'watchpoint'} registers")
                raise RigError(
                    f"{point.label} needs {need} hardware debug register(s) but only {max(left, 0)} "
                    f"of the {pool} on {traits.arch} are left; use `kind: sw` for breakpoints, "
                    f"or watch fewer/shorter ranges", spec_mark)
            if kind == "exec":
                used_bp += need
            else:
                used_wp += need

        for bp in rig.breakpoints:
            addr = resolve(bp.at)
            label = f"breakpoint[{bp.index}] at {bp.at}" + (f" ({addr:#x})" if bp.at.symbol else "")
            point = Point(bp, addr, 1, label)
            self.points.append(point)
            if bp.kind == "sw":
                self.sw.setdefault(addr, []).append(point)
            else:
                take("exec", point, bp.mark, 1)
                point.slots.append(len(self.slots))
                self.slots.append(HwSlot(addr, "exec", 1))
                self.slot_owner.append(point)
        for wp in rig.watchpoints:
            addr = resolve(wp.at)
            label = f"watchpoint[{wp.index}] at {wp.at}" + (f" ({addr:#x})" if wp.at.symbol else "") + f" len {wp.len}"
            point = Point(wp, addr, wp.len, label)
            self.points.append(point)
            pieces = traits.split_watch(addr, wp.len)
            take("watch", point, wp.mark, len(pieces))
            for piece_addr, piece_len in pieces:
                point.slots.append(len(self.slots))
                self.slots.append(HwSlot(piece_addr, wp.access, piece_len))
                self.slot_owner.append(point)

    @property
    def any_sw(self) -> bool:
        return bool(self.sw)

    def count_failures(self) -> list[Failure]:
        return [f for p in self.points if (f := p.check_count()) is not None]

    def hit_counts(self) -> dict[str, int]:
        return {p.label: p.hits for p in self.points}


class SwPatches:
    """Planted software-breakpoint instructions and the bytes they replaced.

    Reads through `view()` show the original bytes, so memory checks and the
    final image never see an instruction the runner planted.
    """

    def __init__(self, memory, insn: bytes):
        self.memory = memory
        self.insn = insn
        self.saved: dict[int, bytes] = {}

    def plant(self, addr: int) -> None:
        current = self.memory.read(addr, len(self.insn))
        if current != self.insn or addr not in self.saved:
            self.saved[addr] = current  # the guest may have rewritten it since
        self.memory.write(addr, self.insn)

    def lift(self, addr: int) -> None:
        if addr in self.saved:
            self.memory.write(addr, self.saved[addr])

    def lift_all(self) -> None:
        for addr in list(self.saved):
            self.lift(addr)

    def view(self, addr: int, length: int) -> bytes:
        data = bytearray(self.memory.read(addr, length))
        n = len(self.insn)
        for at, orig in self.saved.items():
            if at + n > addr and at < addr + length and self.memory.read(at, n) == self.insn:
                for i in range(n):
                    if addr <= at + i < addr + length:
                        data[at + i - addr] = orig[i]
        return bytes(data)
