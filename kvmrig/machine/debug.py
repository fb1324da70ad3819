"""The arch-neutral debug model: breakpoints and watchpoints, resolved to
addresses, assigned to debug registers, counted, and checked at every hit.

Backends only report "sw at pc", "hw slot n fired", "watch slots n.. fired" or
"step" (kvmrig.backends.events); everything a hit means for the rig (counting, `on_hit`, per-hit
`expect` and `set`, hit records) is decided here, once for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmrig.arch.traits import Traits
from kvmrig.backends.base import HwSlot
from kvmrig.backends.events import WatchHit
from kvmrig.errors import NoDebugSlot, RigError
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

    def check_count(self) -> list[Failure]:
        failures = []
        if self.spec.hits is not None and not self.spec.hits.matches(self.hits):
            failures.append(Failure(f"{self.label} hits", self.spec.hits.text, str(self.hits), self.spec.hits.mark))
        spec = self.spec
        if spec.on_hit is not None and self.hits < spec.on_hit and (spec.expect is not None or spec.set is not None):
            # the checks or the fault injection the rig asked for never happened
            failures.append(Failure(f"{self.label} on_hit", f"a hit number {spec.on_hit}",
                                    f"{self.hits} hit(s), so its expect/set never applied", spec.mark))
        return failures


@dataclass(eq=False)
class ClientPoint:
    """A breakpoint or watchpoint a debugger (kvmrig.gdb) adds while the rig runs.

    It only stops the run for the debugger: it is never counted or checked,
    and the rig's own points keep their hits and expectations whatever the
    debugger does. kind: "sw" | "hw" (execution) | "write" | "read" | "access".
    """

    kind: str
    addr: int
    length: int = 1
    slots: list[int] = field(default_factory=list)

    @property
    def is_watch(self) -> bool:
        return self.kind in ("write", "read", "access")


class DebugPlan:
    """Points resolved to addresses and hardware slots assigned."""

    def __init__(self, rig: Rig, traits: Traits, resolve, capacity: tuple[int, int, bool] | None = None):
        self.traits = traits
        self.watch_max = traits.watch_max(rig.cpu.mode if rig.cpu else "")
        self.points: list[Point] = []
        self.sw: dict[int, list[Point]] = {}
        self.slots: list[HwSlot] = []
        self.slot_owner: list[Point | ClientPoint] = []  # per slot: the rig's (below rig_slots), then a debugger's
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
            try:  # the arch refuses ranges its registers cannot express (ValueError, with why)
                pieces = traits.split_watch(addr, wp.len, self.watch_max)
            except ValueError as e:
                raise RigError(f"{label}: {e}", wp.mark) from None
            take("watch", point, wp.mark, len(pieces))
            for piece_addr, piece_len in pieces:
                point.slots.append(len(self.slots))
                self.slots.append(HwSlot(piece_addr, wp.access, piece_len))
                self.slot_owner.append(point)
        self.capacity = (n_bp, n_wp, shared)
        self.rig_used = (used_bp, used_wp)
        self.rig_slots = len(self.slots)      # the rig's slots come first; a debugger's follow
        self.client: list[ClientPoint] = []
        self.client_sw: frozenset[int] = frozenset()
        self.sw_all: frozenset[int] = frozenset(self.sw)  # where instructions are planted

    @property
    def any_sw(self) -> bool:
        return bool(self.sw_all)

    def count_failures(self) -> list[Failure]:
        return [f for p in self.points for f in p.check_count()]

    def hit_counts(self) -> dict[str, int]:
        return {p.label: p.hits for p in self.points}

    # A debugger's points, added and removed while the rig runs -------------
    def add_client(self, kind: str, addr: int, length: int = 1) -> ClientPoint:
        """Add a debugger's point; NoDebugSlot when too few debug registers are left."""
        point = ClientPoint(kind, addr, length)
        self.client.append(point)
        try:
            self._slot_clients()
        except NoDebugSlot:
            self.client.pop()
            self._slot_clients()
            raise
        return point

    def remove_client(self, kind: str, addr: int, length: int = 1) -> bool:
        for i, p in enumerate(self.client):
            if (p.kind, p.addr) == (kind, addr) and (p.length == length or not p.is_watch):
                del self.client[i]
                self._slot_clients()
                return True
        return False

    def _slot_clients(self) -> None:
        """Give the debugger's points the hardware slots after the rig's."""
        del self.slots[self.rig_slots:]
        del self.slot_owner[self.rig_slots:]
        n_bp, n_wp, shared = self.capacity
        used_bp, used_wp = self.rig_used
        rig_exec = {s.addr for s in self.slots if s.kind == "exec"}
        for p in self.client:
            p.slots = []
            if p.kind == "sw" or (p.kind == "hw" and p.addr in rig_exec):
                continue  # planted, or the rig's own register already stops there
            exec_ = p.kind == "hw"
            try:
                pieces = [(p.addr, 1)] if exec_ else self.traits.split_watch(p.addr, p.length, self.watch_max)
            except ValueError as e:  # a range the arch cannot watch (gdb Z2 len 0x10000000)
                raise NoDebugSlot(str(e)) from None
            if shared:
                left = n_bp - len(self.slots)
            else:
                left = n_bp - used_bp if exec_ else n_wp - used_wp
            if len(pieces) > left:
                raise NoDebugSlot(f"{len(pieces)} hardware debug register(s) needed, {max(left, 0)} left "
                                  "after the rig's own points")
            if exec_:
                used_bp += len(pieces)
            else:
                used_wp += len(pieces)
            for piece_addr, piece_len in pieces:
                p.slots.append(len(self.slots))
                self.slots.append(HwSlot(piece_addr, "exec" if exec_ else p.kind, piece_len))
                self.slot_owner.append(p)
        self.client_sw = frozenset(p.addr for p in self.client if p.kind == "sw")
        self.sw_all = frozenset(self.sw) | self.client_sw

    def client_at(self, kind: str, pc: int) -> ClientPoint | None:
        """The debugger's execution breakpoint ("sw" | "hw") at `pc`, if any."""
        return next((p for p in self.client if p.kind == kind and p.addr == pc), None)

    def client_watch(self, ev: WatchHit) -> ClientPoint | None:
        """The debugger's watchpoint a watch hit stops at, if any.

        A fired slot the debugger owns names it; else (the hardware reported
        only the rig's slot for an access both watch) the debugger's watches
        are matched by the accessed range and, where the backend knows it, by
        read or write."""
        for n in ev.slots:
            if self.rig_slots <= n < len(self.slots):
                return self.slot_owner[n]  # type: ignore[return-value]  # past rig_slots: the debugger's
        lo = ev.addr
        first = ev.slots[0]
        size = ev.size or (self.slots[first].length if 0 <= first < len(self.slots) else 1)
        for p in self.client:
            if p.is_watch and p.addr < lo + size and lo < p.addr + p.length:
                if ev.write is not None and ((p.kind == "write" and not ev.write) or (p.kind == "read" and ev.write)):
                    continue
                return p
        return None


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

    def write(self, addr: int, data: bytes) -> None:
        """Write guest memory as a debugger does: bytes that fall under a planted
        instruction go to its saved original, and the instruction stays."""
        n, end = len(self.insn), addr + len(data)
        planted = [at for at in self.saved
                   if at + n > addr and at < end and self.memory.read(at, n) == self.insn]
        self.memory.write(addr, data)
        for at in planted:
            orig = bytearray(self.saved[at])
            for i in range(n):
                if addr <= at + i < end:
                    orig[i] = data[at + i - addr]
            self.saved[at] = bytes(orig)
            self.memory.write(at, self.insn)

    def view(self, addr: int, length: int) -> bytes:
        data = bytearray(self.memory.read(addr, length))
        n = len(self.insn)
        for at, orig in self.saved.items():
            if at + n > addr and at < addr + length and self.memory.read(at, n) == self.insn:
                for i in range(n):
                    if addr <= at + i < addr + length:
                        data[at + i - addr] = orig[i]
        return bytes(data)
