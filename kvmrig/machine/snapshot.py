"""Taking a machine's state into a Snapshot and putting one back.

The backend gives and takes its CPU state as text (export_cpu/import_cpu);
the machine's memory is copied region by region. Loading checks arch,
backend and memory map first (snapfile.read), so a mismatch is a
SnapshotError before anything changes.
"""

from __future__ import annotations

from pathlib import Path

from kvmrig.backends.base import Backend
from kvmrig.errors import BackendError, SnapshotError
from kvmrig.machine import snapfile
from kvmrig.machine.memory import Memory


def memory_map(memory: Memory) -> list[tuple[int, int, bool]]:
    return [(b.start, b.region.size, b.region.rom) for b in memory.backings]


def take(backend: Backend, memory: Memory, origin: dict[str, str] | None = None) -> snapfile.Snapshot:
    """The machine as it is now (a pending I/O access completed first)."""
    export = getattr(backend, "export_cpu", None)
    if export is None:
        raise SnapshotError(f"the {backend.name} backend for {backend.arch} cannot take snapshots yet")
    cpu = export()
    regions = [(b.start, b.region.size, b.region.rom, bytes(b.buf[:])) for b in memory.backings]
    return snapfile.Snapshot(backend.arch, backend.name, regions, cpu, dict(origin or {}))


def save(path: str | Path, backend: Backend, memory: Memory, origin: dict[str, str] | None = None) -> None:
    snapfile.write(path, take(backend, memory, origin))


def put(snap: snapfile.Snapshot, backend: Backend, memory: Memory) -> None:
    """Load `snap` into a machine with the same memory map (mapped already)."""
    load = getattr(backend, "import_cpu", None)
    if load is None:
        raise SnapshotError(f"the {backend.name} backend for {backend.arch} cannot load snapshots yet")
    if sorted(snap.memory_map()) != sorted(memory_map(memory)):
        raise SnapshotError("the snapshot's memory map is not this machine's")
    for at, _size, _rom, data in snap.memory:
        b = memory.find(at)
        b.buf[:] = data
    try:
        load(snap.cpu)
    except BackendError as e:
        raise SnapshotError(str(e)) from None


def load(path: str | Path, backend: Backend, memory: Memory) -> snapfile.Snapshot:
    """Read `path` (checked against this machine) and put it into the machine."""
    snap = snapfile.read(path, backend.arch, backend.name, memory_map(memory))
    try:
        put(snap, backend, memory)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {e}") from None
    return snap
