"""Cross-checking KVM against the emulator (kvmrig/crosscheck.py), choosing
a backend (kvmrig/backends/select.py) and the backend in JUnit reports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmrig.backends.select import NoBackend, backend_for
from kvmrig.collect import expand
from kvmrig.crosscheck import GPRS, VOLATILE, Run, cross_check, differences
from kvmrig.machine.outcome import Outcome
from kvmrig.result import FAILED, PASSED, SKIPPED
from kvmrig.rig.load import load_rig
from kvmrig.runner import run_rig

ROOT = Path(__file__).resolve().parent.parent
X86_RIGS = [p for p in expand([str(ROOT / "rigs" / "x86")])]

CPUID = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0x0, size: 2M}]
images:
  - {hex: "b8 01 00 00 00  0f a2  f4", at: 0x1000}   # mov eax, 1; cpuid; hlt
cpu: {mode: long}
expect: {exit: hlt}
"""


def _run(backend: str, **outcome) -> Run:
    base = dict(exit="hlt", regs={"rax": 1, "rip": 0x1001, "rflags": 2}, hit_counts={"bp": 3}, console=b"hi")
    base.update(outcome)
    return Run(backend, Outcome(**base), [{"at": "0x0", "size": "0x1000", "sha256": "ab" * 32}])


def test_identical_runs_have_no_differences():
    assert differences("x86_64", _run("kvm"), _run("emu")) == []


def test_every_difference_is_one_failure_naming_both_backends():
    emu = _run("emu", exit="shutdown", regs={"rax": 2, "rip": 0x1001, "rflags": 0x46},
               hit_counts={"bp": 4}, console=b"ho")
    emu.digests = [{"at": "0x0", "size": "0x1000", "sha256": "cd" * 32}]
    whats = [f.what for f in differences("x86_64", _run("kvm"), emu)]
    assert whats == ["cross-check: exit", "cross-check: register rax", "cross-check: bp hits",
                     "cross-check: console", "cross-check: RAM 0x0+0x1000 sha256"]
    assert "rflags" in VOLATILE["x86_64"]              # differs above, documented as volatile
    assert {"x0", "x30", "sp", "pc"} <= set(GPRS["arm64"])


def test_backend_choice_follows_the_run_and_the_pin(make_rig):
    pytest.importorskip("unicorn")
    rig = load_rig(make_rig(CPUID))
    assert backend_for(rig, "emu")[0] == "emu"
    arm = load_rig(make_rig(CPUID.replace("x86_64", "arm64").replace("cpu: {mode: long}\n", ""), "arm.yaml"))
    assert backend_for(arm, "auto")[0] == "emu"         # no arm64 KVM on an x86 host
    with pytest.raises(NoBackend, match="KVM cannot run"):
        backend_for(arm, "kvm")
    pinned = load_rig(make_rig(CPUID + "backend: kvm\n", "pinned.yaml"))
    with pytest.raises(NoBackend, match="pins `backend: kvm`"):
        backend_for(pinned, "emu")
    emu_pinned = load_rig(make_rig(CPUID + "backend: emu\n", "emu.yaml"))
    assert backend_for(emu_pinned, "auto")[0] == "emu"


def test_a_rig_pinned_to_kvm_is_skipped_with_the_reason_where_kvm_is_missing(make_rig, monkeypatch):
    monkeypatch.setenv("KVMRIG_KVM_DEVICE", "/nonexistent/kvm")
    result = run_rig(load_rig(make_rig(CPUID + "backend: kvm\n")))
    assert result.status == SKIPPED and "/nonexistent/kvm" in result.message and "pins" in result.message


def test_junit_names_the_backend_of_each_testcase(make_rig):
    import xml.etree.ElementTree as ET

    from kvmrig.report.junit import junit_xml
    pytest.importorskip("unicorn")
    result = run_rig(load_rig(make_rig(CPUID)), "emu")
    root = ET.fromstring(junit_xml([result]))
    case = root.find("./testsuite/testcase")
    key = f"backend:{case.get('classname')}::{case.get('name')}"   # junit-10.xsd: properties on the suite only
    assert root.find(f"./testsuite/properties/property[@name='{key}']").get("value") == "emu"


def test_cross_check_and_backend_do_not_combine(make_rig, capsys):
    from kvmrig.cli import main
    assert main(["run", "--cross-check", "--backend", "emu", "--junit", "", str(make_rig(CPUID))]) == 2


@pytest.mark.kvm
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine")
def test_cross_check_catches_a_rig_whose_result_depends_on_the_backend(make_rig):
    pytest.importorskip("unicorn")
    result = cross_check(load_rig(make_rig(CPUID)))
    assert result.backend == "kvm+emu"
    assert result.status == FAILED
    whats = {f.what for f in result.outcome.failures}
    assert "cross-check: register rax" in whats          # CPUID.1:EAX: family/model/stepping


@pytest.mark.kvm
@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine")
@pytest.mark.parametrize("path", X86_RIGS, ids=[p.stem for p in X86_RIGS])
def test_every_x86_example_rig_passes_the_cross_check(path):
    pytest.importorskip("unicorn")
    result = cross_check(load_rig(path))
    assert result.status == PASSED, "\n".join(str(f) for f in result.outcome.failures) if result.outcome else result.message
    assert result.backend == "kvm+emu"
