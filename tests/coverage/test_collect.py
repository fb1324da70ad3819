"""Coverage in real runs, on KVM (one-shot breakpoints) and on the emulator
(block hooks): the rig's `executed` / `not_executed`, the rig's own
breakpoints and watchpoints untouched, and the cost on KVM."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kvmrig.coverage.lines import image_code
from kvmrig.rig.load import load_rig
from kvmrig.result import FAILED, PASSED
from kvmrig.runner import run_rig

pytest.importorskip("unicorn", reason="the emulator backend needs unicorn (pip install -e '.[emu]')")

RIGS = Path(__file__).resolve().parents[2] / "rigs" / "x86"
GUEST = RIGS / "guests" / "cov-dispatch.elf"
BACKENDS = [pytest.param("kvm", marks=pytest.mark.kvm), "emu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["cov-checksum", "bp-elf-symbols", "bp-mixed", "watch-read", "fault-inject"])
def test_the_rigs_own_points_count_the_same_with_coverage(backend, name):
    rig = load_rig(RIGS / f"{name}.yaml")
    plain = run_rig(rig, backend)
    covered = run_rig(rig, backend, coverage=True)
    assert plain.status == covered.status == PASSED, (plain.message, covered.outcome and covered.outcome.failures)
    assert covered.outcome.hit_counts == plain.outcome.hit_counts
    assert [(h.point, h.number, h.pc) for h in covered.outcome.hits] == \
           [(h.point, h.number, h.pc) for h in plain.outcome.hits]
    assert covered.outcome.regs == plain.outcome.regs
    assert covered.outcome.coverage, "nothing recorded"
    if not (rig.expect.executed or rig.expect.not_executed):
        assert plain.outcome.coverage is None     # nothing recorded unless asked for


def _dispatch_rig(make_rig, expect: str) -> Path:
    return make_rig(f"""
        kvmrig: 1
        arch: x86_64
        memory: [{{at: 0x0, size: 2M}}]
        images: [{{file: {GUEST}}}]
        devices: [{{type: serial, port: 0x3f8}}]
        cpu: {{mode: long, regs: {{rsp: 0x8000}}}}
        expect:
          exit: hlt
          {expect}
        """)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expectations_that_do_not_hold_fail_with_their_line(backend, make_rig):
    path = _dispatch_rig(make_rig, 'executed: ["sym:panic", "sym:main"]\n          not_executed: ["sym:handle_add"]')
    result = run_rig(load_rig(path), backend)
    assert result.status == FAILED
    texts = [str(f) for f in result.outcome.failures]
    assert len(texts) == 2, texts
    assert texts[0].startswith("executed sym:panic: expected ") and "it never ran [" in texts[0]
    assert texts[0].endswith("rig.yaml:9]")
    assert texts[1].startswith("not_executed sym:handle_add: expected ") and "got it ran [" in texts[1]
    assert texts[1].endswith("rig.yaml:10]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_expectations_on_an_image_without_debug_info(backend, make_rig):
    # Real mode at 0x1000: jmp +1 (over the first hlt) to the second hlt.
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0x0, size: 64K}]
        images: [{hex: "eb01 f4 f4", at: 0x1000}]
        cpu: {mode: real}
        expect: {exit: hlt, executed: [0x1000, 0x1003], not_executed: [0x1002]}
        """)
    result = run_rig(load_rig(path), backend)
    assert result.status == PASSED, result.outcome and [str(f) for f in result.outcome.failures]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_symbol_is_a_rig_error(backend, make_rig):
    path = _dispatch_rig(make_rig, 'executed: ["sym:handle_err"]')
    result = run_rig(load_rig(path), backend)
    assert result.status == "error"
    assert "rig.yaml:9:" in result.message and "handle_error" in result.message


@pytest.mark.kvm
def test_kvm_pays_one_exit_per_newly_covered_location():
    rig = load_rig(RIGS / "cov-checksum.yaml")
    plain = run_rig(rig, "kvm")
    covered = run_rig(rig, "kvm", coverage=True)
    traced = run_rig(dataclasses.replace(rig, trace_max=1 << 20), "kvm")
    code = image_code(RIGS / "guests" / "cov-checksum.elf")
    executed_leaders = code.leaders & set(traced.outcome.trace)
    extra = covered.outcome.exits - plain.outcome.exits
    assert 0 < extra <= len(executed_leaders)
    assert extra * 5 < len(traced.outcome.trace)      # far fewer than the instructions executed


def test_emulator_stops_calling_python_for_code_it_has_seen(make_rig, monkeypatch):
    from kvmrig.backends.emu import core

    calls = []
    original = core.EmuBackendBase._on_block
    monkeypatch.setattr(core.EmuBackendBase, "_on_block",
                        lambda self, *a: (calls.append(a[1]), original(self, *a))[1])
    # 0x1000: mov ecx, 100000 / 0x1005: dec ecx / jnz 0x1005 / mov eax, 1 / hlt
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0x0, size: 2M}]
        images: [{hex: "b9a0860100 ffc9 75fc b801000000 f4", at: 0x1000}]
        cpu: {mode: long, regs: {rsp: 0x8000}}
        expect: {exit: hlt, regs: {eax: 1, ecx: 0}}
        """)
    result = run_rig(load_rig(path), "emu", coverage=True)
    assert result.status == PASSED
    assert result.outcome.coverage == [(0x1000, 0x100f)]      # all 15 bytes, exactly
    assert 0 < len(calls) <= 3 * core.REHOOK_MIN, len(calls)  # not one call per turn of the loop


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_debug_information_is_a_note_not_an_error(backend, make_rig, tmp_path):
    from elftools.elf.elffile import ELFFile

    data = bytearray(GUEST.read_bytes())
    with open(GUEST, "rb") as f:
        line = ELFFile(f).get_section_by_name(".debug_line")
        start = line["sh_offset"]
    data[start:start + 40] = b"\xff" * 40                  # the line program header, destroyed
    path = make_rig("""
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0x0, size: 2M}]
        images: [{file: guests/bad.elf}]
        devices: [{type: serial, port: 0x3f8}]
        cpu: {mode: long, regs: {rsp: 0x8000}}
        expect: {exit: hlt, regs: {rax: 10}}
        """, guests={"guests/bad.elf": bytes(data)})
    result = run_rig(load_rig(path), backend, coverage=True)
    assert result.status == PASSED, result.message
    if backend == "kvm":
        assert any("cannot read its debug information" in n for n in result.outcome.notes)
    from kvmrig.coverage.report import from_results
    report = from_results([result], [load_rig(path)])   # the report leaves the image out, no traceback
    assert report.files == {}


@pytest.mark.kvm
@pytest.mark.parametrize("name, addrs", [
    # the BSP's entry; the AP's code (copied to 0x8000; a step reports the
    # instruction after it, so the AP's very first one, at 0x8000, is not seen)
    ("smp-counter", [0x1000, 0x8001, 0x8010]),
    ("pit-ticks", [0x1000, 0x107d, 0x1087]),     # entry, the HLT wait loop, the final HLT
])
def test_rigs_on_the_in_kernel_irqchip_get_coverage_from_every_vcpu(name, addrs):
    """Nothing can be planted there on a KVM without INT3 interception, nor
    with cpus > 1: coverage single-steps every vCPU instead (it came out empty)."""
    result = run_rig(load_rig(RIGS / f"{name}.yaml"), "kvm", coverage=True)
    assert result.status == PASSED, (result.message, result.details)
    ranges = result.outcome.coverage
    missing = [hex(a) for a in addrs if not any(lo <= a < hi for lo, hi in ranges)]
    assert not missing, (missing, ranges)
