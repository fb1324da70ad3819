"""Snapshots on real machines: a state taken mid-run, written to a file and
loaded into a new VM runs on to exactly the end the original reaches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvmrig.arch.x86_64.regs import CANONICAL
from kvmrig.backends.events import Halt, Mmio, PortIO, Step
from kvmrig.backends.select import emu_factory, kvm_factory
from kvmrig.errors import SnapshotError
from kvmrig.machine import snapfile, snapshot
from kvmrig.machine.memory import Memory
from kvmrig.machine.plan import prepare
from kvmrig.machine.session import Session
from kvmrig.rig.load import load_rig

CANONICAL_X86 = frozenset(CANONICAL)
FIB = Path(__file__).resolve().parents[2] / "rigs" / "x86" / "fib.yaml"


def _run_on(backend, until_debug: int | None):
    """Drive the backend to the end (HALT), answering port reads with zeros;
    returns the registers. With `until_debug`, stop after that many steps."""
    deadline = time.monotonic() + 5
    seen = 0
    while True:
        ev = backend.run(deadline)
        if isinstance(ev, PortIO) and not ev.write:
            backend.complete_read(bytes(ev.size * ev.count))
        elif isinstance(ev, Step):
            seen += 1
            if until_debug is not None and seen == until_debug:
                return None
        elif isinstance(ev, Halt):
            return backend.get_regs()
        elif not isinstance(ev, (PortIO, Mmio)):
            pytest.fail(f"unexpected event {ev}")


def _snapshot_continues(factory_for, tmp_path, load_on=None):
    """Take a snapshot 40 steps into fib on `factory_for`'s backend, run on
    there, then load it on `load_on`'s (default: the same) and run on: the
    same end, registers and RAM."""
    rig = load_rig(FIB)
    plan = prepare(rig)
    factory = factory_for(rig)
    memory = Memory(rig.memory)
    with factory() as backend:
        Session(plan, backend, memory).start()   # images and boot state
        backend.set_debug([], True, ())          # single-step 40 instructions into fib(20)
        assert _run_on(backend, until_debug=40) is None
        path = tmp_path / "fib-step40.snap"
        snapshot.save(path, backend, memory, {"rig": str(FIB), "point": "step-40"})
        backend.set_debug([], False, ())
        original = _run_on(backend, None)
        original_ram = memory.read(0, 0x100000)
    memory.close()
    assert original["rax"] == 6765

    fresh = Memory(rig.memory)
    with (load_on or factory_for)(rig)() as backend:
        for b in fresh.backings:
            backend.map_memory(b.start, b.buf, b.region.rom)
        snap = snapshot.load(path, backend, fresh)
        assert snap.origin["point"] == "step-40"
        resumed = _run_on(backend, None)
        assert fresh.read(0, 0x100000) == original_ram
    fresh.close()
    if load_on is None:
        assert {k: v for k, v in resumed.items()} == original
    else:   # another backend: every register both have (rflags' undefined bits differ, crosscheck.VOLATILE)
        same = CANONICAL_X86.difference({"rflags"})
        assert {k: resumed[k] for k in same} == {k: original[k] for k in same}
        assert resumed["rflags"] & 0x8C5 == original["rflags"] & 0x8C5   # CF, PF, ZF, SF, OF... DF


@pytest.mark.kvm
def test_a_kvm_snapshot_runs_on_to_the_same_end(tmp_path):
    _snapshot_continues(kvm_factory, tmp_path)


def test_an_emulator_snapshot_runs_on_to_the_same_end(tmp_path):
    _snapshot_continues(emu_factory, tmp_path)


@pytest.mark.kvm
def test_a_kvm_snapshot_runs_on_to_the_same_end_on_the_emulator(tmp_path):
    _snapshot_continues(kvm_factory, tmp_path, load_on=emu_factory)


@pytest.mark.kvm
def test_an_emulator_snapshot_runs_on_to_the_same_end_on_kvm(tmp_path):
    _snapshot_continues(emu_factory, tmp_path, load_on=kvm_factory)


@pytest.mark.kvm
def test_a_snapshot_without_registers_by_name_does_not_load_on_the_other_backend(tmp_path):
    rig = load_rig(FIB)
    memory = Memory(rig.memory)
    with kvm_factory(rig)() as backend:
        for b in memory.backings:
            backend.map_memory(b.start, b.buf, b.region.rom)
        snap = snapshot.take(backend, memory)
    del snap.cpu["arch"]   # as an older kvmrig wrote it
    snapfile.write(tmp_path / "k.snap", snap)
    with emu_factory(rig)() as emu:
        with pytest.raises(SnapshotError, match="holds kvm CPU state; this run uses the emu backend.*take it again"):
            snapshot.load(tmp_path / "k.snap", emu, memory)
    memory.close()
