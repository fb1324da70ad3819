"""Snapshot points across a run: parents first and once, children fanned out
over the workers, a failed parent makes its children errors; `kvmrig
snapshot`, `--save-on-fail` and children of a snapshot file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kvmrig.collect import expand
from kvmrig.machine import snapfile
from kvmrig.result import ERROR, FAILED, PASSED
from kvmrig.rig.load import load_rig
from kvmrig.runner import run_rig, run_rigs
from tests.conftest import kvmrig_cli

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "rigs" / "firmware"


@pytest.fixture
def cfw(tmp_path):
    """A copy of the C firmware rigs (parent cfw.yaml and its children)."""
    shutil.copytree(FIRMWARE / "cfw", tmp_path / "cfw")
    for p in FIRMWARE.glob("cfw*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    return tmp_path


def _env_cwd() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.mark.kvm
def test_a_parent_runs_once_before_its_children_on_two_workers(cfw, tmp_path):
    children = [load_rig(p) for p in sorted(cfw.glob("cfw-*.yaml"))]
    log = tmp_path / "ran.log"

    def executor(rig):   # forked into the workers: each appends what it runs
        with open(log, "a") as f:
            f.write(rig.name + "\n")
        return run_rig(rig)

    reported: list[str] = []
    results, interrupted = run_rigs(list(children), jobs=2, executor=executor,
                                    on_result=lambda r: reported.append(r.name))
    assert not interrupted
    ran = log.read_text().split()
    assert ran.count("cfw-boot") == 1 and ran[0] == "cfw-boot"   # once, and nothing before it
    assert sorted(ran[1:]) == sorted(r.name for r in children)
    # The parent was not named: it ran for its children and is not reported (shards never count it twice).
    assert [r.name for r in results] == [r.name for r in children] and "cfw-boot" not in reported
    assert all(r.status == PASSED for r in results), [(r.name, r.status, r.message) for r in results]


@pytest.mark.kvm
def test_a_parent_named_in_the_run_is_reported_once(cfw):
    rigs = [load_rig(p) for p in expand([str(cfw)])]
    results, _ = run_rigs(rigs, jobs=2)
    assert sorted(r.name for r in results) == sorted(r.name for r in rigs)
    assert [r.name for r in results].count("cfw-boot") == 1


@pytest.mark.kvm
def test_a_failed_parent_makes_its_children_errors_that_say_so(cfw):
    parent = cfw / "cfw.yaml"
    parent.write_text(parent.read_text().replace("exit_code: 0 ", "exit_code: 7 "))
    rigs = [load_rig(p) for p in expand([str(cfw)])]
    results, _ = run_rigs(rigs, jobs=2)
    by_name = {r.name: r for r in results}
    assert by_name["cfw-boot"].status == FAILED
    children = [r for r in results if r.name != "cfw-boot"]
    assert len(children) == 8
    for r in children:
        assert r.status == ERROR
        assert "not run: it starts from" in r.message and "cfw.yaml#at-main" in r.message
        assert "failed" in r.message and "exit_code: expected 7" in r.message


@pytest.mark.kvm
def test_a_child_failure_names_its_snapshot(cfw):
    child = cfw / "cfw-add-sat.yaml"
    child.write_text(child.read_text().replace("eax: 42", "eax: 43"))
    results, _ = run_rigs([load_rig(child)], jobs=1)
    failed = next(r for r in results if r.name == "cfw-add-sat")
    assert failed.status == FAILED
    assert any("started from the snapshot" in line and "cfw.yaml#at-main" in line for line in failed.outcome.report)


@pytest.mark.kvm
def test_kvmrig_snapshot_writes_a_file_children_start_from(cfw):
    out = cfw / "at-main.snap"
    proc = kvmrig_cli("snapshot", f"{cfw / 'cfw.yaml'}#at-main", "-o", out, cwd=cfw)
    assert proc.returncode == 0, proc.stderr
    assert snapfile.read_header(out).origin["point"] == "at-main"
    (cfw / "from-file.yaml").write_text(
        "kvmrig: 1\narch: x86_64\nfrom: at-main.snap\n"
        'call: {to: "sym:add_sat", args: [0xffffffff, 1], return_to: "sym:unit_return"}\n'
        "expect: {exit: hlt, regs: {eax: 0xffffffff}}\n")
    proc = kvmrig_cli("run", cfw / "from-file.yaml", "--junit", "", cwd=cfw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A damaged file is the child's error, naming the file and what is wrong.
    raw = bytearray(out.read_bytes())
    raw[-3] ^= 0xFF
    out.write_bytes(bytes(raw))
    proc = kvmrig_cli("run", cfw / "from-file.yaml", "--junit", "", cwd=cfw)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "corrupt snapshot" in proc.stdout and "at-main.snap" in proc.stdout


def test_kvmrig_snapshot_usage_errors(cfw):
    proc = kvmrig_cli("snapshot", f"{cfw / 'cfw.yaml'}#nowhere", "-o", cfw / "x.snap", cwd=cfw)
    assert proc.returncode == 2 and "saves no point 'nowhere' (it saves: at-main)" in proc.stderr
    proc = kvmrig_cli("snapshot", str(cfw / "cfw.yaml"), "-o", cfw / "x.snap", cwd=cfw)
    assert proc.returncode == 2 and "RIG.yaml#POINT" in proc.stderr
    os.mkfifo(cfw / "pipe")
    proc = kvmrig_cli("snapshot", f"{cfw / 'cfw.yaml'}#at-main", "-o", cfw / "pipe", cwd=cfw)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr
    assert (cfw / "pipe").is_fifo()


@pytest.mark.kvm
def test_save_on_fail_keeps_the_final_state(cfw, tmp_path):
    child = cfw / "cfw-strlen.yaml"
    child.write_text(child.read_text().replace("rax: 6", "rax: 5"))
    saved = tmp_path / "failed"
    proc = kvmrig_cli("run", child, "--save-on-fail", saved, "--junit", "", cwd=cfw)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    snap = snapfile.read(saved / "cfw-strlen.snap", "x86_64", "kvm")
    assert snap.origin["point"] == "end"
    assert int(snap.cpu["regs"]["rax"], 16) == 6       # the state it failed in: strlen said 6
    assert not (saved / "cfw-boot.snap").exists()      # only failed rigs


# Snapshots across backends (x86_64: KVM <-> the emulator) -----------------------

def _cross_children(cfw: Path, snap: str) -> list[Path]:
    """Copies of the cfw children that start from the snapshot file `snap`."""
    out = []
    for p in sorted(cfw.glob("cfw-*.yaml")):
        text = p.read_text().replace("from: cfw.yaml#at-main", f"from: {snap}")
        copy = cfw / f"{p.stem}-{Path(snap).stem}.yaml"
        copy.write_text(text.replace(f"name: {p.stem}", f"name: {p.stem}-{Path(snap).stem}"))
        out.append(copy)
    return out


@pytest.mark.kvm
@pytest.mark.parametrize("taken_on", ["kvm", "emu"])
def test_children_of_a_snapshot_run_on_the_other_backend_as_on_its_own(cfw, taken_on):
    """A snapshot taken on one backend, its children run on both: each ends
    as on the backend that took it (exit, registers, hits, console, RAM)."""
    pytest.importorskip("unicorn")
    from kvmrig.backends.select import backend_for
    from kvmrig.crosscheck import GPRS, VOLATILE, differences, run_on
    from kvmrig.machine.plan import prepare
    from kvmrig.machine.session import RunOptions

    snap = cfw / f"{taken_on}.snap"
    proc = kvmrig_cli("snapshot", f"{cfw / 'cfw.yaml'}#at-main", "-o", snap, "--backend", taken_on, cwd=cfw)
    assert proc.returncode == 0, proc.stderr
    assert snapfile.read_header(snap).backend == taken_on
    other = "emu" if taken_on == "kvm" else "kvm"
    children = _cross_children(cfw, snap.name)
    assert len(children) == 8
    for path in children:
        rig = load_rig(path)
        plan = prepare(rig)
        own = run_on(plan, taken_on, backend_for(rig, taken_on)[1], RunOptions())
        cross = run_on(plan, other, backend_for(rig, other)[1], RunOptions())
        for run in (own, cross):
            assert not run.outcome.failures, (path.name, run.backend, [str(f) for f in run.outcome.failures])
        assert differences("x86_64", own, cross) == [], path.name
        regs = [r for r in GPRS["x86_64"] if r not in VOLATILE["x86_64"]]
        assert {r: cross.outcome.regs[r] for r in regs} == {r: own.outcome.regs[r] for r in regs}
        assert cross.digests and cross.digests == own.digests


@pytest.mark.kvm
def test_cross_check_runs_snapshot_children_on_both_backends_from_kvms_snapshot(cfw):
    pytest.importorskip("unicorn")
    from kvmrig.crosscheck import cross_check
    proc = kvmrig_cli("run", "--cross-check", "--junit", "", *sorted(cfw.glob("cfw*.yaml")), cwd=cfw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(kvm+emu") == 9, proc.stdout
    # One child alone: its parent runs here first, on KVM, and both runs load that snapshot.
    result = cross_check(load_rig(cfw / "cfw-strlen.yaml"))
    assert result.status == PASSED and result.backend == "kvm+emu", result.details
    assert any("both runs start from the kvm snapshot" in d and "cfw.yaml#at-main" in d for d in result.details)


UBOOT = FIRMWARE / "u-boot"


@pytest.mark.skipif(not Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin").is_file(), reason="u-boot-qemu not installed")
def test_an_arm64_state_by_name_loads_on_the_emulator_and_u_boot_children_pass(tmp_path):
    """The arm64 emulator loads the neutral form (what a KVM snapshot carries
    for it): U-Boot saved at its prompt, relabelled as another backend's
    snapshot holding only registers by name, then children typing commands
    pass and print what they print from the emulator's own snapshot. (The
    KVM side of arm64 is checked in the nested lane, tests/invm.)"""
    pytest.importorskip("unicorn")
    own = tmp_path / "own.snap"
    proc = kvmrig_cli("snapshot", f"{UBOOT / 'boot.yaml'}#at-prompt", "-o", own, "--backend", "emu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    snap = snapfile.read(own)
    assert set(snap.cpu["arch"]["regs"]) >= {"x0", "v31", "sctlr_el1", "ttbr0_el1", "sp_el1", "pstate"}
    snap.backend, snap.cpu = "kvm", {"one_reg": {}, "mp_state": "00000000", "arch": snap.cpu["arch"]}
    snapfile.write(tmp_path / "named.snap", snap)
    consoles = {}
    for source in ("own", "named"):
        for child in ("version", "md", "crc32", "setexpr"):
            text = (UBOOT / f"{child}.yaml").read_text().replace("from: boot.yaml#at-prompt", f"from: {source}.snap")
            path = tmp_path / f"{child}-{source}.yaml"
            path.write_text(text.replace(f"name: u-boot-{child}", f"name: u-boot-{child}-{source}"))
            result = run_rig(load_rig(path), "emu")
            assert result.status == PASSED, (path.name, result.message, result.outcome and
                                             [str(f) for f in result.outcome.failures])
            consoles[source, child] = (result.outcome.console, result.outcome.regs["pc"])
    for child in ("version", "md", "crc32", "setexpr"):
        assert consoles["named", child] == consoles["own", child]
    # A register only the other backend has, changed by the guest: refused by name.
    snap.cpu["arch"]["only_here"] = {"CNTV_CTL_EL0 (S3_3_C14_C3_1)": "0x1"}
    snapfile.write(tmp_path / "named.snap", snap)
    result = run_rig(load_rig(tmp_path / "version-named.yaml"), "emu")
    assert result.status == ERROR and "CNTV_CTL_EL0" in result.message and "emu backend does not have" in \
        result.message, result.message


# Snapshots of a PC machine (rig `machine:`: in-kernel PIC, IOAPIC, LAPIC, PIT) --

PIT_PARENT = """\
kvmrig: 1
name: pit-parent
arch: x86_64
backend: kvm
machine: {pit: true}
memory: [{at: 0x0, size: 2M}]
images: [{file: GUEST, at: 0x1000}]
cpu: {mode: long, regs: {rsp: 0x8000, rdi: 10}}
save: counted-10
expect: {exit: hlt, regs: {rax: 10}}
"""
# Back into the main loop (STI; HLT; ... at 0x107c, rigs/x86/guests/pit-ticks.S)
# with a higher target: only a PIT and PIC as the parent left them (programmed,
# IRQ 0 unmasked, vector base 0x20) tick it on to 20.
PIT_CHILD = """\
kvmrig: 1
name: pit-child
arch: x86_64
from: FROM
set: {regs: {rip: 0x107c, rdi: 20}}
timeout: 5s
expect: {exit: hlt, regs: {rax: 20, rsi: 20}}
"""


@pytest.mark.kvm
def test_a_pc_machine_snapshot_keeps_its_interrupt_controllers_and_timer(tmp_path):
    guest = ROOT / "rigs" / "x86" / "guests" / "pit-ticks.bin"
    (tmp_path / "parent.yaml").write_text(PIT_PARENT.replace("GUEST", str(guest)))
    (tmp_path / "child.yaml").write_text(PIT_CHILD.replace("FROM", "parent.yaml#counted-10"))
    child = load_rig(tmp_path / "child.yaml")
    assert child.machine.irqchip and child.machine.pit   # the parent's machine
    result = run_rig(child)
    assert result.status == PASSED, (result.message, result.outcome and [str(f) for f in result.outcome.failures])
    # From a file (`kvmrig snapshot`): the machine comes from the file.
    proc = kvmrig_cli("snapshot", f"{tmp_path / 'parent.yaml'}#counted-10", "-o", tmp_path / "pit.snap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    head = snapfile.read_header(tmp_path / "pit.snap")
    assert head.irqchip and head.pit
    (tmp_path / "file-child.yaml").write_text(PIT_CHILD.replace("FROM", "pit.snap"))
    result = run_rig(load_rig(tmp_path / "file-child.yaml"))
    assert result.status == PASSED, (result.message, result.outcome and [str(f) for f in result.outcome.failures])
    # Without the chips' state the PIT never ticks again: the child would time out.
    snap = snapfile.read(tmp_path / "pit.snap")
    assert set(snap.cpu["vm_blobs"]) == {"pic_master", "pic_slave", "ioapic", "pit2"} and "lapic" in snap.cpu["blobs"]
    # The emulator has no interrupt controller: it refuses such a child, saying why.
    result = run_rig(load_rig(tmp_path / "file-child.yaml"), "emu")
    assert result.status in (ERROR, "skipped") and "machine" in (result.message or "")
