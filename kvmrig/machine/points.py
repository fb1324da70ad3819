"""Snapshot points of a run: where parents save them, how children start.

A parent rig saves its points (`save:` on a breakpoint or watchpoint, at the
end, or a UART's `idle:`) as snapshot files in the run's PointStore folder; a
child (`from: parent.yaml#point` or `from: file.snap`) loads one into a
machine with the same memory map instead of booting. Files let the points
cross from the worker that ran the parent to the workers running children;
each worker reads a file once and keeps it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kvmrig.backends.base import Backend
from kvmrig.errors import SnapshotError
from kvmrig.machine import snapfile, snapshot
from kvmrig.machine.memory import Memory
from kvmrig.rig.model import Rig, Start

_read_cache: dict[tuple[str, int, int], snapfile.Snapshot] = {}


class PointStore:
    """The snapshot files of one run's points, in `folder`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def file(self, rig_path: Path, point: str) -> Path:
        """Where the point `point` of the rig at `rig_path` is (or will be) saved."""
        key = hashlib.sha1(str(Path(rig_path).resolve()).encode()).hexdigest()[:12]
        return self.folder / f"{Path(rig_path).stem}-{key}-{point}.snap"

    def save(self, rig: Rig, point: str, backend: Backend, memory: Memory, devices: list,
             ending: dict | None = None) -> Path:
        return save_snapshot(self.file(rig.path, point), rig, point, backend, memory, devices, ending)

    def source(self, start: Start) -> Path:
        """The snapshot file a child starts from."""
        if start.file is not None:
            return start.file
        assert start.parent is not None and start.point is not None
        return self.file(start.parent, start.point)


def read_cached(path: Path, backend: Backend, memory: Memory) -> snapfile.Snapshot:
    """A snapshot file, checked against this machine, read once per process
    (while the file is unchanged)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read the snapshot: {e.strerror}") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    snap = _read_cache.get(key)
    if snap is None:
        snap = snapfile.read(path, backend.arch, backend.name, snapshot.memory_map(memory))
        _read_cache.clear()   # one at a time: a worker mostly runs one parent's children
        _read_cache[key] = snap
    elif snap.arch != backend.arch or (snap.backend != backend.name and "arch" not in snap.cpu) or \
            sorted(snap.memory_map()) != sorted(snapshot.memory_map(memory)):
        snapfile.read(path, backend.arch, backend.name, snapshot.memory_map(memory))  # raises, naming it
    return snap


def start_child(rig: Rig, store: PointStore | None, backend: Backend, memory: Memory, bus) -> snapfile.Snapshot:
    """Put the snapshot a child starts from into a machine whose memory is
    mapped and zero, then the child's `input`; the caller applies `set`."""
    assert rig.start is not None
    if store is None and rig.start.file is None:
        raise SnapshotError(f"{rig.start}: this run keeps no snapshot points (run the rig with kvmrig run, "
                            "which runs its parent first)")
    path = store.source(rig.start) if store is not None else rig.start.file
    if not path.exists() and rig.start.parent is not None:
        raise SnapshotError(f"{rig.start}: the point was not saved (the parent rig did not reach it)")
    snap = read_cached(path, backend, memory)
    why = snapfile.machine_mismatch(snap.machine, rig.cpus, rig_gic(rig))
    if why is not None:
        raise SnapshotError(f"{path}: {why}")
    try:
        snapshot.put(snap, backend, memory, zeroed=True)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {e}") from None
    bus.load_state(snap.devices, rig.start_input)
    return snap


def rig_gic(rig: Rig) -> dict[str, int] | None:
    """The rig's GIC as a snapshot header records it (snapfile.gic_text), or None."""
    g = rig.gic
    return None if g is None else snapfile.gic_text(3, g.distributor, g.redistributor, g.irqs)


# What the Session calls ----------------------------------------------------------

def enter_call(backend: Backend, memory: Memory, arch: str, to: int, args: tuple[int, ...], back: int) -> None:
    """Enter the function at `to` as the platform ABI does (x86_64 System V:
    arguments in rdi..r9, the return address `back` pushed with the stack
    aligned; AAPCS64: x0-x5, x30)."""
    regs = backend.get_regs()
    if arch == "x86_64":
        names = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
        sp = (regs["rsp"] & ~0xF) - 8          # at entry (rsp + 8) is 16-byte aligned
        memory.write(sp, back.to_bytes(8, "little"))
        update = {"rip": to, "rsp": sp}
    else:
        names = ("x0", "x1", "x2", "x3", "x4", "x5")
        update = {"pc": to, "x30": back}
    update.update(zip(names, args))
    backend.set_regs(update)


def save_snapshot(path: Path, rig: Rig, point: str, backend: Backend, memory: Memory, devices: list,
                  ending: dict | None = None) -> Path:
    """Write the machine to `path` (its folder made if needed), naming the rig
    and point, and the rig's ELF images for `sym:` addresses of children;
    `ending`: how the run was ending as it was saved (snapfile), if it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    elves = [str(img.file.resolve()) for img in rig.images if img.file is not None and img.at is None]
    snapshot.save(path, backend, memory, {"rig": str(rig.path), "point": point, "symbols": elves}, devices,
                  ending)
    return path
