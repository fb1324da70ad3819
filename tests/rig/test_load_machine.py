"""Rig keys of the PC machine (extensions): machine, cpu.cpuid, verdict,
multiboot images and the QEMU-style devices; each mistake at its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmrig.errors import RigError
from kvmrig.rig.load import load_rig_text

HEAD = "kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 2M}]\n"


def error(text: str, folder: Path | None = None) -> str:
    with pytest.raises(RigError) as e:
        load_rig_text(text, (folder or Path("/rigs")) / "m.yaml")
    return str(e.value)


def test_machine_keys():
    rig = load_rig_text(HEAD + "machine: {pit: true}\n", "/rigs/m.yaml")
    assert rig.machine.irqchip and rig.machine.pit and rig.machine.cpus == 1
    assert "2 vCPUs on x86_64 need `machine: {irqchip: true}`" in error(HEAD + "cpus: 2\n")
    assert "machine" in error(HEAD + "cpus: 2\nmachine: {irqchip: true, cpus: 2}\n")  # one key: top-level cpus
    two = load_rig_text(HEAD + "cpus: 2\nmachine: {irqchip: true}\n", "/rigs/m.yaml")
    assert two.cpus == 2 and two.machine.cpus == 2
    arm = "kvmrig: 1\narch: arm64\nmemory: [{at: 0, size: 2M}]\nmachine: {irqchip: true}\n"
    assert "for x86_64 rigs" in error(arm)


def test_cpuid_names_are_checked_with_suggestions():
    msg = error(HEAD + "cpu: {cpuid: {add: [x2apc]}}\n")
    assert "m.yaml:4:" in msg and "unknown CPUID feature 'x2apc'" in msg and "x2apic" in msg
    rig = load_rig_text(HEAD + "cpu: {cpuid: {remove: [tsc-deadline], leaves: [{leaf: 7, subleaf: 1, eax: 5}]}}\n",
                        "/rigs/m.yaml")
    assert rig.cpu.cpuid.remove == ("tsc-deadline",) and rig.cpu.cpuid.leaves[0].regs == (("eax", 5),)


def test_verdict_and_devices():
    rig = load_rig_text(HEAD + "verdict: {console: tap}\ndevices: [{type: pc-testdev}, {type: fw-cfg},"
                        " {type: cmos}, {type: isa-debug-exit, port: 0xf4, size: 2}]\n", "/rigs/m.yaml")
    assert rig.verdict.console == "tap"
    assert [(d.type, d.port, d.span) for d in rig.devices] == [
        ("pc-testdev", 0xE0, 8), ("fw-cfg", 0x510, 12), ("cmos", 0x70, 2), ("isa-debug-exit", 0xF4, 2)]
    assert "port 0xe0" in error(HEAD + "devices: [{type: pc-testdev, port: 0xe8}]\n")
    assert "give no at" in error(HEAD + "devices: [{type: cmos, at: 0x1000}]\n")
    assert "overlaps devices[0]" in error(HEAD + "devices: [{type: cmos}, {type: constant, port: 0x71, value: 0}]\n")
    big = "kvmrig: 1\narch: x86_64\nmemory: [{at: 0xff000000, size: 4K}]\ndevices: [{type: pc-testdev}]\n"
    assert "MMIO window" in error(big)


def test_multiboot_images(tmp_path: Path):
    (tmp_path / "k.flat").write_bytes(b"\0" * 64)
    ok = load_rig_text(HEAD + "images: [{file: k.flat, format: multiboot, cmdline: 'k a', modules: [{text: E}]}]\n",
                       tmp_path / "m.yaml")
    assert ok.cpu.mode == "protected" and ok.images[0].modules[0].text == b"E"
    assert "no at" in error(HEAD + "images: [{file: k.flat, format: multiboot, at: 0x1000}]\n", tmp_path)
    assert "protected mode" in error(HEAD + "images: [{file: k.flat, format: multiboot}]\ncpu: {mode: long}\n",
                                     tmp_path)
    assert "for `format: multiboot`" in error(HEAD + "images: [{file: k.flat, at: 0, cmdline: x}]\n", tmp_path)
    assert "not found" in error(HEAD + "images: [{file: k.flat, format: multiboot, modules: [{file: nope}]}]\n",
                                tmp_path)


def test_linux_images(tmp_path: Path):
    (tmp_path / "bzImage").write_bytes(b"\0" * 64)
    (tmp_path / "initrd").write_bytes(b"x")
    ok = load_rig_text(HEAD + "images: [{file: bzImage, format: linux, cmdline: 'console=ttyS0', initrd: initrd}]\n",
                       tmp_path / "m.yaml")
    assert ok.cpu.mode == "long" and ok.images[0].initrd == tmp_path / "initrd"
    assert "no at" in error(HEAD + "images: [{file: bzImage, format: linux, at: 0x100000}]\n", tmp_path)
    assert "long mode" in error(HEAD + "images: [{file: bzImage, format: linux}]\ncpu: {mode: protected}\n", tmp_path)
    assert "`format: linux`" in error(HEAD + "images: [{file: bzImage, format: multiboot, initrd: initrd}]\n",
                                      tmp_path)
    assert "not found" in error(HEAD + "images: [{file: bzImage, format: linux, initrd: nope}]\n", tmp_path)


def test_machine_rigs_save_points_and_their_children_inherit_the_machine(tmp_path):
    """Snapshots hold the in-kernel irqchip and PIT: a rig with `machine:`
    saves points, its children get its machine and have none of their own."""
    rig = load_rig_text(HEAD + "machine: {irqchip: true}\nsave: here\n", tmp_path / "p.yaml")
    assert rig.machine.irqchip and list(rig.save_points()) == ["here"]
    (tmp_path / "p.yaml").write_text(HEAD + "machine: {pit: true}\nsave: here\n")
    child = load_rig_text("kvmrig: 1\narch: x86_64\nfrom: p.yaml#here\n", tmp_path / "c.yaml")
    assert child.machine.irqchip and child.machine.pit
    own = error("kvmrig: 1\narch: x86_64\nfrom: p.yaml#here\nmachine: {pit: true}\n", tmp_path)
    assert "m.yaml:4:1: machine: a rig that starts from a snapshot has its machine" in own, own


def test_smp_rigs_save_points_and_their_children_have_their_vcpus(tmp_path):
    """x86 snapshots hold every vCPU: a `cpus: 2` rig saves points, its
    children run 2 vCPUs (the SMP backend); a child's own `cpus` must say the
    snapshot's count, else an error at that key naming both."""
    (tmp_path / "p.yaml").write_text(HEAD + "cpus: 2\nmachine: {irqchip: true}\nsave: here\n")
    child = load_rig_text("kvmrig: 1\narch: x86_64\nfrom: p.yaml#here\n", tmp_path / "c.yaml")
    assert child.cpus == 2 and child.machine.cpus == 2 and child.machine.irqchip
    said = load_rig_text("kvmrig: 1\narch: x86_64\nfrom: p.yaml#here\ncpus: 2\n", tmp_path / "c.yaml")
    assert said.cpus == 2
    for n in (1, 3):
        text = error(f"kvmrig: 1\narch: x86_64\nfrom: p.yaml#here\ncpus: {n}\n", tmp_path)
        assert f"m.yaml:4:7: cpus: this rig says {n} vCPU{'s' if n > 1 else ''}, but the snapshot it starts from " \
               "(`from: p.yaml#here`) is of a machine with 2" in text, text
    (tmp_path / "one.yaml").write_text(HEAD + "save: here\n")
    text = error("kvmrig: 1\narch: x86_64\nfrom: one.yaml#here\ncpus: 2\n", tmp_path)
    assert "this rig says 2 vCPUs, but the snapshot it starts from (`from: one.yaml#here`) is of a machine with 1" \
        in text, text
