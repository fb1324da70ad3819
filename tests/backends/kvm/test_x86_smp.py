"""x86 SMP on real KVM: breakpoints and watchpoints apply to every vCPU, and
every hit names the vCPU it happened on (kvmrig.backends.kvm.x86_smp).

Two vCPUs: the BSP (protected mode at 0x1000) starts the AP (real mode at
0x8000) by INIT/SIPI; both call the routine at 0x9000 (`nop; ret`, the same
bytes in 16- and 32-bit code) with esi = 0x100 + their index; the AP then
writes the watched byte 0x5000 and, after it, the flag 0x5004 the BSP waits
for (so every AP hit is handled before the BSP can halt)."""

from __future__ import annotations

import json

import pytest

from kvmrig.errors import BackendError
from tests.machine.test_session import assert_passed, hexof, kvm, run

BSP = hexof("""
    c7 05 f0 00 e0 fe ff 01 00 00   # 1000: mov dword [0xfee000f0], 0x1ff   (SVR: APIC on)
    c7 05 10 03 e0 fe 00 00 00 01   # 100a: mov dword [0xfee00310], 1 << 24 (to APIC 1)
    c7 05 00 03 e0 fe 00 45 00 00   # 1014: mov dword [0xfee00300], 0x4500  (INIT)
    c7 05 00 03 e0 fe 08 46 00 00   # 101e: mov dword [0xfee00300], 0x4608  (SIPI 0x08)
    be 00 01 00 00                  # 1028: mov esi, 0x100
    bc 00 60 00 00                  # 102d: mov esp, 0x6000
    e8 c9 7f 00 00                  # 1032: call 0x9000
    80 3d 04 50 00 00 01            # 1037: cmp byte [0x5004], 1   (the AP is done)
    75 f7                           # 103e: jne 0x1037
    fa f4                           # 1040: cli; hlt
""")
AP = hexof("""
    31 c0                           # 8000: xor ax, ax
    8e d8                           # 8002: mov ds, ax
    8e d0                           # 8004: mov ss, ax
    bc 00 70                        # 8006: mov sp, 0x7000
    be 01 01                        # 8009: mov si, 0x101
    e8 f1 0f                        # 800c: call 0x9000 (cs 0x800: ip 0x1000)
    c6 06 00 50 42                  # 800f: mov byte [0x5000], 0x42   (watched)
    c6 06 04 50 01                  # 8014: mov byte [0x5004], 1
    fa f4                           # 8019: cli; hlt
""")
ROUTINE = "90 c3"                   # 9000: nop; ret


def smp_rig(points: str, timeout: str = "5s") -> str:
    return (f"kvmrig: 1\narch: x86_64\ntimeout: {timeout}\nmemory: [{{at: 0, size: 2M}}]\n"
            "cpus: 2\nmachine: {irqchip: true}\n"
            f"images: [{{hex: '{BSP}', at: 0x1000}}, {{hex: '{AP}', at: 0x8000}}, {{hex: '{ROUTINE}', at: 0x9000}}]\n"
            "cpu: {mode: protected, entry: 0x1000}\n" + points +
            "expect: {exit: hlt, memory: [{at: 0x5000, u8: 0x42}]}\n")


POINTS = """\
breakpoints:
  - {at: 0x9000, hits: 2, expect: {regs: {esi: {range: [0x100, 0x101]}}}}
  - {at: 0x9001, kind: hw, hits: 2}
watchpoints:
  - {at: 0x5000, len: 1, access: write, hits: 1, expect: {value: 0x42}}
"""


@kvm
def test_breakpoints_and_watchpoints_hit_on_every_vcpu_and_name_it():
    out = run(smp_rig(POINTS))
    assert_passed(out)
    counts = list(out.hit_counts.values())
    assert counts == [2, 2, 1], out.hit_counts
    sw = [h for h in out.hits if h.point.startswith("breakpoint[0]")]
    assert sorted(h.cpu for h in sw) == [0, 1]
    for h in sw:   # the registers of a hit are the hitting vCPU's
        assert h.pc == 0x9000 and h.regs["esi"] == 0x100 + h.cpu, h
    hw = [h for h in out.hits if h.point.startswith("breakpoint[1]")]
    assert sorted(h.cpu for h in hw) == [0, 1] and {h.pc for h in hw} == {0x9001}
    (watch,) = [h for h in out.hits if h.point.startswith("watchpoint")]
    assert watch.cpu == 1 and watch.addr == 0x5000


@kvm
def test_a_failed_check_at_a_hit_names_the_vcpu():
    out = run(smp_rig("breakpoints: [{at: 0x9000, hits: 2, expect: {regs: {esi: 0x100}}}]\n"))
    failed = [str(f) for f in out.failures]
    assert len(failed) == 1 and "on vCPU 1" in failed[0] and "esi" in failed[0], failed
    (bad,) = [h for h in out.hits if h.failures]
    assert bad.cpu == 1 and bad.regs["esi"] == 0x101
    assert out.report[0].endswith("hit 2 on vCPU 1:") or out.report[0].endswith("hit 1 on vCPU 1:"), out.report[0]
    assert any("rsi 0x0000000000000101" in line for line in out.report)   # the state shown is vCPU 1's


@kvm
def test_more_software_breakpoints_than_debug_registers_are_refused_with_the_reason():
    points = "breakpoints: [" + ", ".join(f"{{at: {0x1028 + i:#x}}}" for i in range(5)) + "]\n"
    with pytest.raises(BackendError, match="cpus > 1|neither INT3"):
        run(smp_rig(points))


@kvm
def test_hit_records_in_the_json_report_name_the_vcpu(tmp_path):
    from kvmrig.report.json_report import record
    from kvmrig.rig.load import load_rig
    from kvmrig.runner import run_rig
    path = tmp_path / "smp.yaml"
    path.write_text(smp_rig(POINTS))
    result = run_rig(load_rig(path), "kvm")
    rec = json.loads(json.dumps(record(result)))
    assert rec["status"] == "passed", rec["failures"]
    assert sorted(h["cpu"] for h in rec["hits"] if h["point"].startswith("breakpoint[0]")) == [0, 1]



@kvm
def test_the_smp_example_rigs_breakpoint_is_hit_on_the_ap():
    from pathlib import Path

    from kvmrig.rig.load import load_rig
    from kvmrig.runner import run_rig
    result = run_rig(load_rig(Path(__file__).resolve().parents[3] / "rigs" / "x86" / "smp-counter.yaml"), "kvm")
    assert result.status == "passed", (result.message, result.details)
    (hit,) = result.outcome.hits
    assert hit.cpu == 1 and hit.pc == 0x8022 and hit.regs == {"ecx": 0}
