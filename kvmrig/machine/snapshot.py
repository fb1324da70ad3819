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
from kvmrig.machine.memory import PAGE, Memory


def memory_map(memory: Memory) -> list[tuple[int, int, bool]]:
    return [(b.start, b.region.size, b.region.rom) for b in memory.backings]


def take(backend: Backend, memory: Memory, origin: dict[str, str] | None = None,
         devices: list | None = None, ending: dict | None = None) -> snapfile.Snapshot:
    """The machine as it is now (a pending I/O access completed first);
    `devices` is the bus's state (Bus.state()); `ending`: how the run was
    ending as it was taken (snapfile's module doc), if it was."""
    export = getattr(backend, "export_cpu", None)
    if export is None:
        raise SnapshotError(f"the {backend.name} backend for {backend.arch} cannot take snapshots yet")
    cpu = export()
    regions = [(b.start, b.region.size, b.region.rom, snapfile.runs_of(b.buf)) for b in memory.backings]
    shape = getattr(backend, "snapshot_machine", None)   # backends that save more than one bare vCPU
    machine = shape() if shape is not None else dict(snapfile.ONE_CPU)
    return snapfile.Snapshot(backend.arch, backend.name, regions, cpu, dict(origin or {}), list(devices or []),
                             machine, ending)


def save(path: str | Path, backend: Backend, memory: Memory, origin: dict[str, str] | None = None,
         devices: list | None = None, ending: dict | None = None) -> None:
    snapfile.write(path, take(backend, memory, origin, devices, ending))


def put(snap: snapfile.Snapshot, backend: Backend, memory: Memory, zeroed: bool = True) -> None:
    """Load `snap` into a machine with the same memory map (mapped already).
    With `zeroed` (a new or reset machine: all memory zero) only the pages
    the snapshot has data in are written; else each region is cleared first."""
    load = getattr(backend, "import_cpu", None)
    if snap.backend != backend.name:   # taken on the other backend: its registers by name
        if snap.machine != snapfile.ONE_CPU:
            why = snapfile.machine_mismatch(snap.machine, 1, None)
            raise SnapshotError(f"{why}: the {backend.name} backend for {backend.arch} loads only one-vCPU "
                                f"machines without a GIC from another backend's snapshot")
        load = getattr(backend, "import_arch", None)
        if load is None or "arch" not in snap.cpu:
            raise SnapshotError(f"the snapshot holds {snap.backend} CPU state, which the {backend.name} backend "
                                f"for {backend.arch} cannot load")
        cpu = snap.cpu["arch"]
    else:
        cpu = snap.cpu
    if load is None:
        raise SnapshotError(f"the {backend.name} backend for {backend.arch} cannot load snapshots yet")
    if sorted(snap.memory_map()) != sorted(memory_map(memory)):
        raise SnapshotError("the snapshot's memory map is not this machine's")
    for at, size, _rom, runs in snap.memory:
        b = memory.find(at)
        if not zeroed:
            b.buf[:] = bytes(size)
        for off, data in runs:
            b.buf[off:off + len(data)] = data
            if memory.written is not None:   # a reused VM zeroes these again after the run
                memory.written.update(range(at + off, at + off + len(data), PAGE))
    try:
        load(cpu)
    except BackendError as e:
        where = f" (taken on {snap.backend}, loaded on {backend.name})" if snap.backend != backend.name else ""
        raise SnapshotError(f"{e}{where}") from None


def load(path: str | Path, backend: Backend, memory: Memory) -> snapfile.Snapshot:
    """Read `path` (checked against this machine) and put it into the machine."""
    snap = snapfile.read(path, backend.arch, backend.name, memory_map(memory))
    try:
        put(snap, backend, memory, zeroed=False)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {e}") from None
    return snap
