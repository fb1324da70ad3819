"""Triple-fault diagnosis (kvmrig/arch/x86_64/faults.py) on hand-made memory and IDTs,
and on KVM, where the shutdown exit carries no vector."""

from __future__ import annotations

import struct

import pytest

from kvmrig.arch import host_arch
from kvmrig.arch.x86_64.faults import BP, DF, GP, UD, explain_shutdown, gate_present, raised_by

CR0_PE, EFER_LMA = 1, 1 << 10


def memory(blobs: dict[int, bytes]):
    def peek(addr: int, length: int) -> bytes | None:
        for start, data in blobs.items():
            if start <= addr and addr + length <= start + len(data):
                return data[addr - start:addr - start + length]
        return None
    return peek


def gate64(present: bool) -> bytes:
    """A 64-bit interrupt gate (SDM 6.14.1): offset 0x2000, selector 8, type 0xE, P as given."""
    return struct.pack("<HHBBHII", 0x2000, 8, 0, 0x0E | (0x80 if present else 0), 0, 0, 0)


@pytest.mark.parametrize("code, vector", [
    (b"\x0f\x0b", UD), (b"\xcc", BP), (b"\xcd\x21", 0x21), (b"\x66\x0f\x0b", UD), (b"\x48\x0f\x0b", UD),
    (b"\x90", None), (b"\xf4", None),
])
def test_the_instruction_names_the_vector(code, vector):
    assert raised_by(code) == vector


def test_an_empty_idt_delivers_nothing_and_says_so_as_the_emulator_does():
    peek = memory({0x1000: b"\x0f\x0b" + bytes(14)})
    text = explain_shutdown(0x1000, peek, 0, 0, CR0_PE, EFER_LMA)
    assert text == ("triple fault: #UD at pc 0x1000 could not be delivered, nor #GP, nor #DF "
                    "(IDT base 0x0, limit 0x0); the CPU shut down")


def test_gates_present_point_at_a_fault_in_delivery():
    idt = bytearray(16 * 32)
    for v in (UD, GP, DF):
        idt[v * 16:(v + 1) * 16] = gate64(v != UD)
    peek = memory({0x1000: b"\x0f\x0b" + bytes(14), 0x8000: bytes(idt)})
    assert gate_present(peek, 0x8000, len(idt) - 1, UD, True, True) == "absent"
    assert gate_present(peek, 0x8000, len(idt) - 1, GP, True, True) == "present"
    assert gate_present(peek, 0x8000, 16 * 8 - 1, GP, True, True) == "beyond"
    text = explain_shutdown(0x1000, peek, 0x8000, len(idt) - 1, CR0_PE, EFER_LMA)
    assert "has gates for #GP, #DF but not #UD (absent)" in text and "GDT" in text


def test_real_mode_uses_the_ivt():
    peek = memory({0x7c00: b"\xcd\x10" + bytes(13)})
    text = explain_shutdown(0x7c00, peek, 0, 0x3, 0, 0)   # IVT holds vector 0 only
    assert text.startswith("triple fault: #MF at pc 0x7c00 could not be delivered") and "IVT" in text


@pytest.mark.kvm
@pytest.mark.skipif(host_arch() != "x86_64", reason="x86_64 guest code")
def test_kvm_names_the_vector_the_cpu_could_not_deliver():
    """KVM_EXIT_SHUTDOWN has no vector: the backend reads it from the code and the IDT, as the emulator says it."""
    from pathlib import Path

    from kvmrig.rig.load import load_rig
    from kvmrig.runner import run_rig

    rig = load_rig(Path(__file__).resolve().parents[3] / "rigs" / "x86" / "triple-fault.yaml")
    details = {}
    for backend in ("kvm", "emu"):
        result = run_rig(rig, backend)
        assert result.status == "passed" and result.outcome.exit == "shutdown"
        details[backend] = result.outcome.detail
    assert details["kvm"].startswith("triple fault: #UD at pc 0x")
    assert details["kvm"] == details["emu"]
