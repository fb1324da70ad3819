"""Snapshot files: the format round-trips, and every kind of bad file is a
SnapshotError that names the mismatch (never a crash or a wrong run)."""

from __future__ import annotations

import json
import os

import pytest

from kvmrig.errors import SnapshotError
from kvmrig.machine import snapfile
from kvmrig.machine.snapfile import Snapshot

MAP = [(0x0, 0x2000, False), (0xFFFF0000, 0x1000, True)]


def _snap() -> Snapshot:
    ram = bytes(range(256)) * 32
    rom = b"\xf4" * 0x1000
    return Snapshot("x86_64", "kvm", [(0x0, 0x2000, False, snapfile.runs_of(ram)),
                                      (0xFFFF0000, 0x1000, True, snapfile.runs_of(rom))],
                    {"regs": {"rax": "0x2a"}}, {"rig": "boot.yaml", "point": "at-prompt"})


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "boot.snap"
    snapfile.write(path, _snap())
    return path


def test_a_snapshot_round_trips(saved):
    back = snapfile.read(saved, "x86_64", "kvm", MAP)
    assert back == _snap()


def test_the_header_is_text_with_registers_by_name(saved):
    raw = saved.read_bytes()
    assert raw.startswith(b"KVMRIG-SNAPSHOT 2\n")
    _, length, rest = raw.split(b"\n", 2)
    header = json.loads(rest[:int(length)])
    assert header["cpu"]["regs"]["rax"] == "0x2a"
    assert header["cpus"] == 1 and header["format"] == 2
    assert header["memory"][1] == {**header["memory"][1], "at": "0xffff0000", "rom": True}
    assert len(raw) < 0x3000  # memory is compressed


def test_another_version_is_named(saved):
    raw = saved.read_bytes().replace(b"KVMRIG-SNAPSHOT 2\n", b"KVMRIG-SNAPSHOT 3\n", 1)
    saved.write_bytes(raw)
    with pytest.raises(SnapshotError, match="format version 3; this kvmrig .* reads versions 1, 2"):
        snapfile.read(saved)


def _rewrite_header(path, change) -> None:
    """Edit a snapshot's JSON header in place (its memory section kept)."""
    first, length, rest = path.read_bytes().split(b"\n", 2)
    header = json.loads(rest[:int(length)])
    change(header)
    text = json.dumps(header).encode()
    version = str(header.get("format", 2)).encode()
    path.write_bytes(b"KVMRIG-SNAPSHOT " + version + b"\n%d\n" % len(text) + text + rest[int(length):])


def test_a_version_1_file_is_read_as_one_vcpu(saved):
    def as_v1(header):
        header["format"] = 1
        del header["cpus"]
    _rewrite_header(saved, as_v1)
    back = snapfile.read(saved, "x86_64", "kvm", MAP)
    assert back.cpus == 1 and back.memory == _snap().memory
    assert snapfile.read_header(saved).cpus == 1


def _smp_snap(cpus: int = 3) -> Snapshot:
    snap = _snap()
    snap.cpus = cpus
    snap.cpu = {**snap.cpu, "cpus": cpus, "aps": [{"regs": {"rax": hex(i)}} for i in range(1, cpus)]}
    return snap


def test_the_vcpu_count_round_trips(tmp_path):
    path = tmp_path / "smp.snap"
    snapfile.write(path, _smp_snap(3))
    back = snapfile.read(path)
    assert back.cpus == 3 and back.cpu["aps"][1] == {"regs": {"rax": "0x2"}}
    assert snapfile.read_header(path).cpus == 3


@pytest.mark.parametrize("change, message", [
    (lambda h: h["cpu"]["aps"].pop(), "the header says 3 vCPUs, its CPU state holds 2"),
    (lambda h: h.update(cpus=2), "the header says 2 vCPUs, its CPU state holds 3"),
    (lambda h: h.pop("cpus"), "missing the vCPU count"),
    (lambda h: h.update(cpus=0), "bad vCPU count 0"),
    (lambda h: h.update(cpus="3"), "bad vCPU count '3'"),
    (lambda h: h["cpu"].update(aps={"1": {}}), "cpu.aps is not a list"),
])
def test_a_vcpu_count_that_does_not_match_the_states_is_named(tmp_path, change, message):
    path = tmp_path / "smp.snap"
    snapfile.write(path, _smp_snap(3))
    _rewrite_header(path, change)
    with pytest.raises(SnapshotError, match=message):
        snapfile.read(path)
    with pytest.raises(SnapshotError, match=message):
        snapfile.read_header(path)


def test_another_arch_is_named(saved):
    with pytest.raises(SnapshotError, match="of an x86_64 machine; this rig is arm64"):
        snapfile.read(saved, arch="arm64")


def test_another_backend_is_named(saved):
    with pytest.raises(SnapshotError, match="holds kvm CPU state; this run uses the emu backend"):
        snapfile.read(saved, backend="emu")


def test_another_memory_map_is_named(saved):
    with pytest.raises(SnapshotError, match=r"memory map \[0x0\+0x2000, 0xffff0000\+0x1000 rom\] is not the "
                                            r"rig's \[0x0\+0x200000\]"):
        snapfile.read(saved, memory_map=[(0, 0x200000, False)])


@pytest.mark.parametrize("cut", [10, 30, 200, -5])
def test_a_truncated_file_is_named(saved, cut):
    raw = saved.read_bytes()
    saved.write_bytes(raw[:cut])
    with pytest.raises(SnapshotError, match="truncated|corrupt|not a kvmrig snapshot"):
        snapfile.read(saved)


def test_a_truncated_memory_section_says_truncated(saved):
    saved.write_bytes(saved.read_bytes()[:-5])
    with pytest.raises(SnapshotError, match="truncated snapshot: region 0xffff0000"):
        snapfile.read(saved)


def test_flipped_memory_bytes_are_corrupt(saved):
    raw = bytearray(saved.read_bytes())
    raw[-20] ^= 0xFF
    saved.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="corrupt snapshot: region 0xffff0000"):
        snapfile.read(saved)


def test_a_damaged_header_is_corrupt(saved):
    raw = saved.read_bytes()
    saved.write_bytes(raw.replace(b'"arch"', b'"arhc"', 1))
    with pytest.raises(SnapshotError, match="corrupt snapshot header"):
        snapfile.read(saved)
    saved.write_bytes(raw.replace(b"{", b"[", 1))
    with pytest.raises(SnapshotError, match="corrupt snapshot header"):
        snapfile.read(saved)


def test_not_a_snapshot(tmp_path):
    path = tmp_path / "rig.yaml"
    path.write_text("kvmrig: 1\n")
    with pytest.raises(SnapshotError, match="not a kvmrig snapshot"):
        snapfile.read(path)
    with pytest.raises(SnapshotError, match="cannot read"):
        snapfile.read(tmp_path / "missing.snap")


def test_writing_never_replaces_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SnapshotError, match="not a regular file"):
        snapfile.write(fifo, _snap())
    assert fifo.is_fifo()


def test_only_pages_with_data_are_stored():
    data = bytes(0x1000) + b"\x01" + bytes(0x1fff) + bytes(0x40000) + b"\x02" * 0x1000
    runs = snapfile.runs_of(data)
    assert [(off, len(d)) for off, d in runs] == [(0x1000, 0x1000), (0x43000, 0x1000)]
    rebuilt = bytearray(len(data))
    for off, d in runs:
        rebuilt[off:off + len(d)] = d
    assert bytes(rebuilt) == data
