"""VM reuse: a worker keeps one VM per (backend, arch, memory map) and resets
it for the next rig instead of building a new one.

A reset must leave nothing a rig could see: the backend puts its vCPU back
to the state it was created in (every register, MSR, FPU/XSAVE, debug
register and pending event; see backends/kvm/x86_state.py and the emulator's
context restore) and forgets its debug setup; the machine zeroes exactly the
pages written since the last reset (the backend's dirty log plus the host
side's own writes), or every page where no log exists. Devices, debug plans
and outcomes are built per rig by the Session, so nothing else carries over.

Backends opt in with the Reusable methods below; a backend without them is
used once and closed, as before. A VM whose run or reset raised is closed,
never reused: the next rig gets a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from kvmrig.backends.base import Backend
from kvmrig.machine.memory import PAGE, Memory
from kvmrig.machine.outcome import Outcome
from kvmrig.machine.plan import Plan
from kvmrig.machine.session import Session
from kvmrig.rig.model import Rig


@runtime_checkable
class Reusable(Protocol):
    """What a backend offers to be reset between rigs."""

    def keep_pristine(self) -> None:
        """Remember the vCPU as created (memory already mapped), before any rig."""

    def track_dirty(self) -> None:
        """Start recording the pages the guest writes."""

    def dirty_ranges(self) -> list[tuple[int, int]] | None:
        """[start, end) page ranges written since the last call; None if the backend cannot tell."""

    def reset(self) -> None:
        """The vCPU back to its pristine state, debug setup and traps gone."""

    def reusable(self) -> bool:
        """False when the run left state a reset cannot undo (the VM is closed)."""

    def park(self) -> None:
        """Between rigs: stop anything that runs on its own (KVM's timeout alarm)."""


def shape(rig: Rig) -> tuple:
    """What two rigs must share to share a VM: the arch, the machine (x86
    in-kernel irqchip, PIT), the x86 CPUID table (`cpu.cpuid`: KVM refuses a
    changed KVM_SET_CPUID2 once the vCPU ran, so a VM serves only rigs with
    the same edits) and the memory map (every region's address, size and
    ROM flag)."""
    return (rig.arch, bool(rig.machine.irqchip or rig.machine.pit), bool(rig.machine.pit), _cpuid_key(rig),
            tuple(sorted((r.at, r.size, r.rom) for r in rig.memory)))


def _cpuid(rig: Rig):
    return rig.cpu.cpuid if rig.cpu is not None else None


def _cpuid_key(rig: Rig) -> tuple | None:
    spec = _cpuid(rig)
    return None if spec is None else spec.key()


def fresh_only(rig: Rig) -> bool:
    """Rigs whose VM is built for them (`cpus:` > 1 — APs —, arm64 `gic:`):
    made before or around the vCPU, with state no reset puts back, so never
    kept or reused. A one-vCPU x86 `machine:` (irqchip, PIT) or `cpu.cpuid`
    is kept: its backend's build_machine() makes it, reset() writes the
    chips back as created, and the CPUID table is the shape's."""
    return rig.cpus > 1 or rig.gic is not None


class _Kept:
    __slots__ = ("backend", "memory", "runs")

    def __init__(self, backend: Backend, memory: Memory):
        self.backend, self.memory, self.runs = backend, memory, 0


class VmPool:
    """The VMs one worker keeps, by (backend factory, shape). Not thread-safe:
    one per worker process."""

    def __init__(self, limit: int = 4):
        self.limit = limit   # shapes kept at once; the least recently used goes first
        self._kept: dict[tuple, _Kept] = {}
        self.created = 0
        self.reused = 0
        self.refused = 0   # VMs closed because their backend said a reset could not hide the run

    def execute(self, plan: Plan, make_backend: Callable[[], Backend], options=None,
                inspect: Callable[[Backend, Memory], None] | None = None) -> Outcome:
        """Run a prepared rig on a kept VM (reset first) or on a new one kept for
        later. `inspect(backend, memory)` sees the machine right after the run
        (tests compare it with a fresh VM's)."""
        if fresh_only(plan.rig):
            return _once(plan, make_backend, options, inspect)
        key = (make_backend, shape(plan.rig))
        kept = self._kept.pop(key, None)
        if kept is not None:
            try:
                self._reset(kept)
                self.reused += 1
            except Exception:
                self._close(kept)
                kept = None
        if kept is None:
            kept = self._new(plan.rig, make_backend)
            if kept is None:   # not reusable: once, as before
                return _once(plan, make_backend, options, inspect)
        try:
            outcome = Session(plan, kept.backend, kept.memory, options).run()
            if inspect is not None:
                inspect(kept.backend, kept.memory)
        except BaseException:
            self._close(kept)
            raise
        kept.runs += 1
        kept.backend.park()
        if not kept.backend.reusable():
            self._close(kept)
            self.refused += 1
            return outcome
        self._kept[key] = kept   # most recently used last
        while len(self._kept) > self.limit:
            self._close(self._kept.pop(next(iter(self._kept))))
        return outcome

    def _new(self, rig: Rig, make_backend: Callable[[], Backend]) -> _Kept | None:
        backend = make_backend()
        if not isinstance(backend, Reusable):
            backend.close()
            return None
        machine = rig.machine.irqchip or rig.machine.pit
        cpuid = _cpuid(rig)
        build = getattr(backend, "build_machine", None)
        if (machine or cpuid is not None) and build is None:   # a backend that cannot keep it: once, as before
            backend.close()
            return None
        memory = Memory(rig.memory)
        kept = _Kept(backend, memory)
        try:
            for b in memory.backings:
                backend.map_memory(b.start, b.buf, b.region.rom)
            if cpuid is not None:   # after the memory: KVM's TSS and identity map go in a hole of it
                build(rig.machine.irqchip, rig.machine.pit, cpuid)
            elif machine:
                build(rig.machine.irqchip, rig.machine.pit)
            backend.track_dirty()
            backend.keep_pristine()
            memory.track_writes()
        except BaseException:
            self._close(kept)
            raise
        self.created += 1
        return kept

    @staticmethod
    def _reset(kept: _Kept) -> None:
        backend, memory = kept.backend, kept.memory
        backend.reset()
        ranges = backend.dirty_ranges()
        written = memory.take_written()
        if ranges is None:
            memory.zero_all()
        else:
            if written:   # the loader's pages (a page both wrote is zeroed twice)
                ranges += [(page, page + PAGE) for page in written]
            memory.zero_ranges(ranges)

    @staticmethod
    def _close(kept: _Kept) -> None:
        try:
            kept.backend.close()
        finally:
            kept.memory.close()

    def close(self) -> None:
        """Close every kept VM."""
        while self._kept:
            self._close(self._kept.popitem()[1])


def _once(plan: Plan, make_backend: Callable[[], Backend], options, inspect) -> Outcome:
    """A fresh VM for one rig, closed after it (machine.session.execute, plus `inspect`)."""
    memory = Memory(plan.rig.memory)
    try:
        with make_backend() as backend:
            outcome = Session(plan, backend, memory, options).run()
            if inspect is not None:
                inspect(backend, memory)
            return outcome
    finally:
        memory.close()


def run_fresh(plan: Plan, make_backend: Callable[[], Backend], options=None,
              inspect: Callable[[Backend, Memory], None] | None = None) -> Outcome:
    """What a run with --no-reuse does, with the same `inspect` hook as VmPool.execute."""
    return _once(plan, make_backend, options, inspect)
