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
    assert header["machine"] == {"cpus": 1, "gic": None} and header["format"] == 2
    assert header["memory"][1] == {**header["memory"][1], "at": "0xffff0000", "rom": True}
    assert len(raw) < 0x3000  # memory is compressed


ENDING = {"cpu": 0, "exit": "exit-code", "code": 3, "detail": "exit device exit@0xf4 written with 3"}


def test_a_snapshot_with_an_ending_is_version_3_and_round_trips(tmp_path):
    """Only a snapshot saved as its run ended is version 3 (a reader of 2,
    which would run its children on past the end, refuses it by version)."""
    path = tmp_path / "ending.snap"
    snap = _snap()
    snap.ending = dict(ENDING)
    snapfile.write(path, snap)
    assert path.read_bytes().startswith(b"KVMRIG-SNAPSHOT 3\n")
    assert snapfile.read(path, "x86_64", "kvm", MAP) == snap


@pytest.mark.parametrize("ending, message", [
    ([], "ending: needs exactly cpu, exit, code and detail"),
    ({**ENDING, "cpu": 1}, "ending: cpu 1 is not one of the machine's 1 vCPUs"),
    ({**ENDING, "code": "3"}, "ending: code '3' is not a number"),
    ({**ENDING, "exit": 3}, "ending: exit and detail are text"),
    ({k: v for k, v in ENDING.items() if k != "detail"}, "ending: needs exactly cpu, exit, code and detail"),
])
def test_a_bad_ending_is_named(tmp_path, ending, message):
    path = tmp_path / "ending.snap"
    snap = _snap()
    snap.ending = dict(ENDING)
    snapfile.write(path, snap)

    def change(header):
        header["ending"] = ending
    _rewrite_header(path, change)
    with pytest.raises(SnapshotError, match=f"corrupt snapshot header: {message}"):
        snapfile.read(path)


def test_another_version_is_named(saved):
    raw = saved.read_bytes().replace(b"KVMRIG-SNAPSHOT 2\n", b"KVMRIG-SNAPSHOT 4\n", 1)
    saved.write_bytes(raw)
    with pytest.raises(SnapshotError, match="format version 4; this kvmrig .* reads versions 1, 2, 3"):
        snapfile.read(saved)


def _rewrite_header(path, change, first=None) -> None:
    """Apply `change` to the header of the file at `path` (and its first line)."""
    raw = path.read_bytes()
    line, length, rest = raw.split(b"\n", 2)
    header = json.loads(rest[:int(length)])
    change(header)
    text = json.dumps(header).encode() + b"\n"
    path.write_bytes((first or line) + b"\n%d\n" % len(text) + text + rest[int(length):])


def test_the_machine_is_recorded_and_read_back(tmp_path):
    snap = _snap()
    snap.machine = {"cpus": 2, "gic": snapfile.gic_text(3, 0x8000000, 0x80A0000, 288)}
    snap.cpu = {**snap.cpu, "aps": [{"regs": {"rax": "0x1"}}]}
    snapfile.write(tmp_path / "m.snap", snap)
    assert snapfile.read(tmp_path / "m.snap").machine == snap.machine
    assert snapfile.read_header(tmp_path / "m.snap").machine == snap.machine


def test_a_version_1_file_is_a_one_vcpu_machine_without_gic(saved):
    def old(header):
        del header["machine"]
        header["format"] = 1
    _rewrite_header(saved, old, b"KVMRIG-SNAPSHOT 1")
    assert snapfile.read(saved).machine == {"cpus": 1, "gic": None}
    assert snapfile.read_header(saved).machine == {"cpus": 1, "gic": None}


@pytest.mark.parametrize("machine, words", [
    (None, "missing or bad 'machine'"),
    ({"cpus": 0, "gic": None}, "cpus 0 is not a vCPU count"),
    ({"cpus": "2", "gic": None}, "cpus '2' is not a vCPU count"),
    ({"cpus": 1}, "needs exactly cpus and gic"),
    ({"cpus": 1, "gic": {"version": 3}}, "gic needs exactly version, distributor, redistributor and irqs"),
    ({"cpus": 1, "gic": {"version": 3, "distributor": "0x8000000", "redistributor": 0, "irqs": 64}},
     "are numbers"),
])
def test_a_bad_machine_in_the_header_is_named(saved, machine, words):
    def change(header):
        if machine is None:
            del header["machine"]
        else:
            header["machine"] = machine
    _rewrite_header(saved, change)
    with pytest.raises(SnapshotError, match=f"corrupt snapshot header.*{words}"):
        snapfile.read(saved)
    with pytest.raises(SnapshotError, match=f"corrupt snapshot header.*{words}"):
        snapfile.read_header(saved)


def test_machine_mismatches_are_named():
    gic = snapfile.gic_text(3, 0x8000000, 0x80A0000, 288)
    two = {"cpus": 2, "gic": gic}
    assert snapfile.machine_mismatch(two, 2, dict(gic)) is None
    assert snapfile.machine_mismatch(two, 1, gic) == "the snapshot's machine has 2 vCPUs, this one 1"
    assert snapfile.machine_mismatch({"cpus": 1, "gic": None}, 1, gic) == (
        "the snapshot's machine has no GIC, this one a GICv3 (distributor 0x8000000, redistributor 0x80a0000, "
        "288 interrupts)")
    moved = snapfile.gic_text(3, 0x9000000, 0x80A0000, 288)
    assert "distributor 0x8000000" in snapfile.machine_mismatch(two, 2, moved)
    assert "distributor 0x9000000" in snapfile.machine_mismatch(two, 2, moved)
    assert snapfile.machine_mismatch(two, 4, None) == (
        "the snapshot's machine has 2 vCPUs, this one 4; the snapshot's machine has a GICv3 (distributor "
        "0x8000000, redistributor 0x80a0000, 288 interrupts), this one no GIC")


def _smp_snap(cpus: int = 3) -> Snapshot:
    snap = _snap()
    snap.machine = {"cpus": cpus, "gic": None}
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
    (lambda h: h["machine"].update(cpus=2), "the header says 2 vCPUs, its CPU state holds 3"),
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
