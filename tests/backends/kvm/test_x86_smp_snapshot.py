"""Snapshots of x86 machines with several vCPUs on real KVM
(kvmrig.backends.kvm.x86_smp: world_stopped, export_cpu, import_cpu).
Snapshot files with several vCPUs: tests/machine/test_snapfile.py.

The guest is rigs/x86/smp-snap.yaml's: two vCPUs each count in their own
memory, so the end state does not depend on how they interleave. Its points
are taken before the AP is started (it waits for INIT), between INIT and
SIPI, mid-run on the BSP and at a hit on the AP; a child from each ends in
exactly the state the uninterrupted run ends in: every vCPU's registers,
MP state and the memory."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from kvmrig.backends.events import PortIO
from kvmrig.backends.kvm import abi, x86_state
from kvmrig.backends.select import emu_factory, kvm_factory
from kvmrig.errors import BackendError, NoBackend, RigError, SnapshotError
from kvmrig.machine import snapfile, snapshot
from kvmrig.machine.memory import Memory
from kvmrig.machine.plan import prepare
from kvmrig.machine.points import PointStore
from kvmrig.machine.session import RunOptions, Session
from kvmrig.result import ERROR, PASSED
from kvmrig.rig.load import load_rig, load_rig_text
from kvmrig.runner import run_rig
from tests.conftest import kvmrig_cli
from tests.machine.test_session import hexof

X86 = Path(__file__).resolve().parents[3] / "rigs" / "x86"
PARENT = X86 / "smp-snap.yaml"
POINTS = ("ap-waits-for-init", "ap-waits-for-sipi", "bsp-round-3", "ap-round-2")
MP_UNINITIALIZED, MP_INIT_RECEIVED = 1, 2   # KVM_MP_STATE_*: waiting for INIT, for SIPI


def _run(rig_path: Path, points: Path, rig_text: str | None = None):
    """Run a rig (written to `rig_path` first if `rig_text` is given, saving
    its points into `points`); its outcome and the whole machine as it ended
    (every vCPU, the memory)."""
    if rig_text is not None:
        rig_path.write_text(rig_text)
    rig = load_rig(rig_path)
    memory = Memory(rig.memory)
    try:
        with kvm_factory(rig)() as backend:
            outcome = Session(prepare(rig), backend, memory, RunOptions(points=PointStore(points))).run()
            with backend.world_stopped():
                end = snapshot.take(backend, memory)
    finally:
        memory.close()
    return outcome, end


def _vcpus(snap: snapfile.Snapshot) -> list[x86_state.X86CpuState]:
    return [x86_state.from_text(snap.cpu)] + [x86_state.from_text(t) for t in snap.cpu.get("aps", [])]


def _mp_state(state: x86_state.X86CpuState) -> int:
    return int.from_bytes(state.blobs["mp_state"][:4], "little")


def _same_end(child: snapfile.Snapshot, parent: snapfile.Snapshot) -> None:
    """Every vCPU's registers, segment/control state and MP state, and all memory, equal."""
    assert child.cpus == parent.cpus == 2
    for n, (mine, theirs) in enumerate(zip(_vcpus(child), _vcpus(parent))):
        assert mine.regs == theirs.regs, f"vCPU {n}'s registers differ"
        assert mine.sregs == theirs.sregs, f"vCPU {n}'s sregs differ"
        assert _mp_state(mine) == _mp_state(theirs), f"vCPU {n}'s MP state differs"
    assert child.memory == parent.memory


@pytest.mark.kvm
def test_a_child_from_every_smp_point_ends_as_the_uninterrupted_run(tmp_path):
    outcome, parent_end = _run(PARENT, tmp_path)
    assert (outcome.exit, outcome.exit_code, outcome.failures) == ("exit-code", 8000, [])
    ap = _vcpus(parent_end)[1]
    assert _mp_state(ap) == abi.KVM_MP_STATE_HALTED   # the AP ended in its HLT
    store = PointStore(tmp_path)
    saved = {p: snapfile.read(store.file(PARENT, p)) for p in POINTS}
    # What each point holds: the AP before its INIT, before its SIPI, counting.
    assert _mp_state(_vcpus(saved["ap-waits-for-init"])[1]) == MP_UNINITIALIZED
    assert _mp_state(_vcpus(saved["ap-waits-for-sipi"])[1]) == MP_INIT_RECEIVED
    ap_at_hit = x86_state._struct("struct kvm_regs", _vcpus(saved["ap-round-2"])[1].regs)
    assert ap_at_hit.rip == 0x13 and ap_at_hit.rcx == 0   # 0800:0013 (ap_round), its first round done
    for point in POINTS:
        child_outcome, child_end = _run(X86 / f"smp-snap-from-{point}.yaml", tmp_path)
        assert (child_outcome.exit, child_outcome.exit_code, child_outcome.failures) == ("exit-code", 8000, []), point
        assert child_outcome.regs == outcome.regs, point
        _same_end(child_end, parent_end)


@pytest.mark.kvm
def test_without_the_aps_state_the_child_after_init_never_finishes(tmp_path, monkeypatch):
    """What the children above prove: with the AP left as created (its
    restore patched out) the child after the INIT times out, its AP never
    started (a new AP waits for INIT, and ignores the SIPI)."""
    from kvmrig.backends.kvm import x86_smp
    restore = x86_smp.x86_state.restore
    _run(PARENT, tmp_path)
    monkeypatch.setattr(x86_smp.x86_state, "restore",
                        lambda vcpu, state, reuse=False: None if vcpu.index else restore(vcpu, state, reuse))
    child = (X86 / "smp-snap-from-ap-waits-for-sipi.yaml").read_text().replace("timeout: 10s", "timeout: 1s")
    outcome, _ = _run(tmp_path / "child.yaml", tmp_path, child.replace("smp-snap.yaml#", f"{PARENT}#"))
    assert outcome.exit == "timeout" and outcome.regs["rip"] in range(0x1053, 0x1060)   # the BSP waits for AP_DONE


# One vCPU prints to the debug console while the other saves: its pending
# port writes are handled before the machine stops, none is lost or repeated.
# Either way round: the BSP saves while the AP prints, the AP (a hit on
# vCPU 1) while the BSP prints.
START_AP = """
    c7 05 f0 00 e0 fe ff 01 00 00   # 1000: mov dword [0xfee000f0], 0x1ff   (SVR: APIC on)
    c7 05 10 03 e0 fe 00 00 00 01   # 100a: mov dword [0xfee00310], 1 << 24 (to APIC 1)
    c7 05 00 03 e0 fe 00 45 00 00   # 1014: mov dword [0xfee00300], 0x4500  (INIT)
    c7 05 00 03 e0 fe 08 46 00 00   # 101e: mov dword [0xfee00300], 0x4608  (SIPI 0x08)
"""
AP_PRINTS = (hexof(START_AP + """
    81 3d 04 50 00 00 64 00 00 00   # 1028: cmp dword [0x5004], 100   (the AP has printed ~100)
    72 f4                           # 1032: jb 0x1028
    90                              # 1034: nop                       (save: printing)
    80 3d 10 50 00 00 01            # 1035: cmp byte [0x5010], 1      (the AP is done)
    75 f7                           # 103c: jne 0x1035
    fa f4                           # 103e: cli; hlt
"""), hexof("""
    fa                              # 8000: cli
    31 c0                           # 8001: xor ax, ax
    8e d8                           # 8003: mov ds, ax
    b9 e8 03                        # 8005: mov cx, 1000
    66 ff 06 04 50                  # 8008: inc dword [0x5004]
    b0 61                           # 800d: mov al, 'a'
    e6 e9                           # 800f: out 0xe9, al
    e2 f5                           # 8011: loop 0x8008
    c6 06 10 50 01                  # 8013: mov byte [0x5010], 1
    f4                              # 8018: hlt
    eb fd                           # 8019: jmp 0x8018
"""), 0x1034, 0x5004, 0x800D)
BSP_PRINTS = (hexof(START_AP + """
    b9 e8 03 00 00                  # 1028: mov ecx, 1000
    ff 05 00 50 00 00               # 102d: inc dword [0x5000]
    b0 61                           # 1033: mov al, 'a'
    e6 e9                           # 1035: out 0xe9, al
    e2 f4                           # 1037: loop 0x102d
    80 3d 10 50 00 00 01            # 1039: cmp byte [0x5010], 1      (the AP is done)
    75 f7                           # 1040: jne 0x1039
    fa f4                           # 1042: cli; hlt
"""), hexof("""
    fa                              # 8000: cli
    31 c0                           # 8001: xor ax, ax
    8e d8                           # 8003: mov ds, ax
    66 81 3e 00 50 64 00 00 00      # 8005: cmp dword [0x5000], 100   (the BSP has printed ~100)
    72 f5                           # 800e: jb 0x8005
    90                              # 8010: nop                       (save: printing, on vCPU 1)
    c6 06 10 50 01                  # 8011: mov byte [0x5010], 1
    f4                              # 8016: hlt
    eb fd                           # 8017: jmp 0x8016
"""), 0x8010, 0x5000, 0x1033)


def _printer(bsp: str, ap: str, save_at: int) -> str:
    return (f"kvmrig: 1\narch: x86_64\ntimeout: 10s\nmemory: [{{at: 0, size: 2M}}]\ncpus: 2\n"
            "machine: {irqchip: true}\ndevices: [{type: debugcon, port: 0xe9}]\n"
            f"images: [{{hex: '{bsp}', at: 0x1000}}, {{hex: '{ap}', at: 0x8000}}]\n"
            f"cpu: {{mode: protected, entry: 0x1000}}\nbreakpoints: [{{at: {save_at:#x}, hits: 1, save: printing}}]\n"
            "expect: {exit: hlt}\n")


@pytest.mark.kvm
@pytest.mark.parametrize("printer", [AP_PRINTS, BSP_PRINTS], ids=["ap-prints-bsp-saves", "bsp-prints-ap-saves"])
def test_port_writes_of_the_vcpu_not_saving_are_each_seen_once_across_the_snapshot(tmp_path, printer):
    bsp, ap, save_at, count_at, inc_done = printer
    outcome, _end = _run(tmp_path / "printer.yaml", tmp_path, _printer(bsp, ap, save_at))
    assert outcome.failures == [] and outcome.console == b"a" * 1000
    assert outcome.hits[0].cpu == (0 if save_at < 0x8000 else 1)
    snap = snapfile.read(PointStore(tmp_path).file(tmp_path / "printer.yaml", "printing"))
    printing = _vcpus(snap)[1 if save_at < 0x8000 else 0]
    regs = x86_state._struct("struct kvm_regs", printing.regs)
    sregs = x86_state._struct("struct kvm_sregs", printing.sregs)
    counted = _u32(snap, count_at)
    assert 100 <= counted < 1000   # it was printing when the other saved
    # Between its INC and its OUT a vCPU has counted a byte it has not printed yet.
    pc = sregs.cs.base + regs.rip
    printed = counted - 1 if inc_done <= pc <= inc_done + 2 else counted
    child = "kvmrig: 1\narch: x86_64\nfrom: printer.yaml#printing\ntimeout: 10s\nexpect: {exit: hlt}\n"
    child_outcome, _ = _run(tmp_path / "child.yaml", tmp_path, child)
    assert child_outcome.failures == []
    assert child_outcome.console == b"a" * (1000 - printed)


def _u32(snap: snapfile.Snapshot, addr: int) -> int:
    for at, _size, _rom, runs in snap.memory:
        for off, data in runs:
            if at + off <= addr and addr + 4 <= at + off + len(data):
                return int.from_bytes(data[addr - at - off:addr - at - off + 4], "little")
    return 0


END_PARENT = PARENT.read_text().replace("breakpoints:", "save: at-end\nbreakpoints:", 1)
END_CHILD = """\
kvmrig: 1
arch: x86_64
from: FROM
timeout: 5s
expect:
  exit: hlt       # the BSP goes on from its exit port write to its HLT; the AP stays halted
  regs: {eax: 8000, ebx: 2002000}
  memory: [{at: 0x5008, u32: 2002000}, {at: 0x5010, u8: 1}]
"""


@pytest.mark.kvm
def test_an_smp_machine_saved_at_its_end_and_from_a_file(tmp_path):
    """`save:` at the end (the AP halted) and `kvmrig snapshot` files: the
    header records the vCPUs, a child of the file runs them."""
    parent = tmp_path / "parent.yaml"
    parent.write_text(END_PARENT.replace("guests/", str(X86 / "guests") + "/"))
    (tmp_path / "child.yaml").write_text(END_CHILD.replace("FROM", "parent.yaml#at-end"))
    result = run_rig(load_rig(tmp_path / "child.yaml"))
    assert result.status == PASSED, (result.message, result.outcome and [str(f) for f in result.outcome.failures])
    proc = kvmrig_cli("snapshot", f"{parent}#ap-waits-for-sipi", "-o", tmp_path / "sipi.snap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    head = snapfile.read_header(tmp_path / "sipi.snap")
    assert head.cpus == 2 and head.irqchip
    (tmp_path / "file-child.yaml").write_text((X86 / "smp-snap-from-ap-waits-for-sipi.yaml").read_text()
                                              .replace("smp-snap.yaml#ap-waits-for-sipi", "sipi.snap"))
    child = load_rig(tmp_path / "file-child.yaml")
    assert child.cpus == 2 and child.machine.irqchip
    result = run_rig(child)
    assert result.status == PASSED, (result.message, result.outcome and [str(f) for f in result.outcome.failures])


@pytest.mark.kvm
def test_a_childs_breakpoint_where_an_ap_resumes_is_hit_there_every_time(tmp_path):
    """The APs of a child run only once the child's breakpoints are armed on
    them: an AP saved at its hit on ap_round (0x8013) resumes on it, and a
    child's breakpoint there counts that first instruction and both later
    rounds, every run (before the fix the AP thread started unarmed and
    passed it in most runs). 8 children in one process, 8 fresh VMs."""
    _run(PARENT, tmp_path)
    child = ("kvmrig: 1\narch: x86_64\nfrom: smp-snap.yaml#ap-round-2\ntimeout: 10s\n"
             "breakpoints: [{at: 0x8013, hits: 3}]\nexpect: {exit: exit-code, exit_code: 8000}\n")
    for n in range(8):
        outcome, _ = _run(tmp_path / "child.yaml", tmp_path, child.replace("smp-snap.yaml#", f"{PARENT}#"))
        assert outcome.failures == [], (n, [str(f) for f in outcome.failures])
        assert [h.cpu for h in outcome.hits] == [1, 1, 1]


def _rewrite(path: Path, change) -> None:
    """Edit a snapshot file's JSON header (its memory section kept)."""
    _magic, length, rest = path.read_bytes().split(b"\n", 2)
    header = json.loads(rest[:int(length)])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(b"KVMRIG-SNAPSHOT 2\n%d\n" % len(text) + text + rest[int(length):])


@pytest.fixture
def smp_file(tmp_path):
    proc = kvmrig_cli("snapshot", f"{PARENT}#bsp-round-3", "-o", tmp_path / "smp.snap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "smp.snap"


CHILD = "kvmrig: 1\narch: x86_64\nfrom: smp.snap\ntimeout: 5s\nexpect: {exit: exit-code, exit_code: 8000}\n"


@pytest.mark.kvm
def test_a_vcpu_count_other_than_the_childs_is_an_error_naming_both(smp_file):
    folder = smp_file.parent
    with pytest.raises(RigError, match=r"child.yaml:6:7: cpus: this rig says 3 vCPUs, but the snapshot it starts "
                                       r"from \(`from: smp.snap`\) is of a machine with 2"):
        load_rig_text(CHILD + "cpus: 3\n", folder / "child.yaml")
    # The file changed after the child was loaded: the run says so, naming both.
    child = load_rig_text(CHILD, folder / "child.yaml")
    assert run_rig(child).status == PASSED

    def one_vcpu(h):
        h["machine"]["cpus"] = 1
        del h["cpu"]["aps"]
    _rewrite(smp_file, one_vcpu)
    result = run_rig(child)
    assert result.status == ERROR and "the snapshot's machine has 1 vCPU, this one 2" in result.message, \
        result.message


@pytest.mark.kvm
@pytest.mark.parametrize("change, message", [
    (lambda h: h["cpu"]["aps"].clear(), "the header says 2 vCPUs, its CPU state holds 1"),
    (lambda h: h["cpu"]["aps"][0]["blobs"].update(lapic=h["cpu"]["aps"][0]["blobs"]["lapic"][:-8]),
     r"vCPU 1's saved state is malformed \(ValueError: lapic holds 1020 bytes, not 1024\)"),
    (lambda h: h["cpu"]["aps"][0]["blobs"].pop("lapic"), r"vCPU 1's saved state is incomplete \(no lapic\)"),
    (lambda h: h["cpu"]["aps"][0].pop("sregs"), r"vCPU 1's saved state is malformed \(KeyError: 'sregs'\)"),
])
def test_a_truncated_or_corrupt_vcpu_part_is_an_error_naming_it(smp_file, change, message):
    _rewrite(smp_file, change)
    try:
        result = run_rig(load_rig_text(CHILD, smp_file.parent / "child.yaml"))
    except RigError as e:   # the header's count is checked when the rig loads
        assert re.search(message, str(e)), str(e)
        return
    assert result.status == ERROR and re.search(message, result.message), result.message


@pytest.mark.kvm
def test_an_smp_snapshot_does_not_load_on_the_emulator(smp_file):
    child = load_rig_text(CHILD, smp_file.parent / "child.yaml")
    with pytest.raises(NoBackend, match="the emulator backend runs one vCPU; the rig has 2, as the snapshot it "
                                        "starts from"):
        emu_factory(child)
    result = run_rig(child, "emu")
    assert result.status != PASSED and "runs one vCPU" in (result.message or ""), result.message
    # Loaded into an emulator machine directly (kvmrig debug): refused before anything changes.
    snap = snapfile.read(smp_file)
    memory = Memory(child.memory)
    try:
        with emu_factory(load_rig(X86 / "protected-mode.yaml"))() as backend, \
                pytest.raises(SnapshotError, match="the snapshot's machine has 2 vCPUs, this one 1: the emu backend for x86_64 loads only one-vCPU machines"):
            snapshot.put(snap, backend, memory)
    finally:
        memory.close()


@pytest.mark.kvm
def test_an_ap_stopped_amid_a_read_is_not_saved_at_the_end():
    """The run ended while an AP's port read was not answered (its thread
    stopped first): KVM holds that instruction half done until it has the
    answer, and saving says so (a write is saved: below)."""
    rig = load_rig(PARENT)
    with kvm_factory(rig)() as backend:
        backend._create_vcpu(prepare(rig).boot.state)
        backend._cpus[1].unhandled = PortIO(0x3F8, 1, False, b"", 1)
        with pytest.raises(BackendError, match=r"vCPU 1 was stopped at the end of the run in the middle of a "
                                               r"read \(port 0x3f8, 1 byte\(s\)\) the machine did not answer \(the "
                                               r"run ended first\): KVM completes that instruction only with the "
                                               r"answer"):
            backend.export_cpu()


# vCPU 0 ends the run (an exit device write) while the AP has left KVM_RUN
# with a port write the machine never handles (its thread stops with the run).
# Forced, not timed: the AP writes only after GO, which vCPU 0 sets just
# before its end; test hooks hold vCPU 0's end until the AP's write is out of
# KVM_RUN, and that write until the run has ended.
AP_WRITES_AT_END = (hexof(START_AP + """
    80 3d 00 50 00 00 01            # 1028: cmp byte [0x5000], 1   (the AP is ready)
    75 f7                           # 102f: jne 0x1028
    c6 05 04 50 00 00 01            # 1031: mov byte [0x5004], 1   (GO)
    b0 07 e6 f4                     # 1038: mov al, 7; out 0xf4, al (the end)
    80 3d 08 50 00 00 01            # 103c: cmp byte [0x5008], 1   (a child goes on here: the AP
    75 f7                           # 1043: jne 0x103c              went on after its write)
    fa f4                           # 1045: cli; hlt
"""), hexof("""
    fa 31 c0 8e d8                  # 8000: cli; ds = 0
    c6 06 00 50 01                  # 8005: mov byte [0x5000], 1   (ready)
    80 3e 04 50 01                  # 800a: cmp byte [0x5004], 1
    75 f9                           # 800f: jne 0x800a
    b0 78 e6 e9                     # 8011: mov al, 'x'; out 0xe9, al (pending as the run ends)
    c6 06 08 50 01                  # 8015: mov byte [0x5008], 1   (done)
    f4 eb fd                        # 801a: hlt; jmp 0x801a
"""))


@pytest.mark.kvm
def test_an_ap_write_pending_at_the_end_is_saved_and_seen_first_by_the_childs_device(tmp_path, monkeypatch):
    """`save:` at the end with an AP amid an unhandled port write: the write is
    completed in KVM (the AP past its OUT) and recorded, never seen by the
    parent's devices; the child's debugcon prints it before the AP goes on."""
    from kvmrig.backends.kvm import x86_smp
    out, seen = __import__("threading").Event(), []
    next_event, quiesce = x86_smp.ApView.next_event, x86_smp.KvmX86SmpBackend.quiesce

    def write_held(self):
        ev = next_event(self)
        if type(ev) is PortIO and ev.port == 0xE9:   # out of KVM_RUN: held until the run has ended
            out.set()
            deadline = time.monotonic() + 10
            while not self.primary._aps.stopping and time.monotonic() < deadline:
                time.sleep(0.001)
            seen.append(self.primary._aps.stopping)
        return ev

    def end_held(self):   # vCPU 0's end waits until the AP's write is out
        if self._aps is not None and not self._aps.stopping:
            seen.append(out.wait(10))
        return quiesce(self)
    monkeypatch.setattr(x86_smp.ApView, "next_event", write_held)
    monkeypatch.setattr(x86_smp.KvmX86SmpBackend, "quiesce", end_held)
    bsp, ap = AP_WRITES_AT_END
    parent = (f"kvmrig: 1\narch: x86_64\ntimeout: 10s\nmemory: [{{at: 0, size: 2M}}]\ncpus: 2\n"
              "machine: {irqchip: true}\ndevices: [{type: exit, port: 0xf4}, {type: debugcon, port: 0xe9}]\n"
              f"images: [{{hex: '{bsp}', at: 0x1000}}, {{hex: '{ap}', at: 0x8000}}]\n"
              "cpu: {mode: protected, entry: 0x1000}\nsave: at-end\nexpect: {exit: exit-code, exit_code: 7}\n")
    outcome, _ = _run(tmp_path / "parent.yaml", tmp_path, parent)
    assert seen == [True, True]   # the forced interleaving happened
    assert outcome.failures == [] and outcome.console == b""   # the parent's device never saw it
    path = PointStore(tmp_path).file(tmp_path / "parent.yaml", "at-end")
    assert path.read_bytes().startswith(b"KVMRIG-SNAPSHOT 3\n")
    snap = snapfile.read(path)
    assert snap.ending is None   # saved after the run ended: its final state, children go on
    assert snap.cpu["aps"][0]["pending"] == {"port": "0xe9", "size": 1, "count": 1, "data": "78"}
    ap_regs = x86_state._struct("struct kvm_regs", _vcpus(snap)[1].regs)
    assert ap_regs.rip == 0x15   # 0800:0015, past its OUT (completed in KVM)
    monkeypatch.undo()
    child = ("kvmrig: 1\narch: x86_64\nfrom: parent.yaml#at-end\ntimeout: 5s\n"
             "expect: {exit: hlt, console: {contains: x}}\n")
    child_outcome, child_end = _run(tmp_path / "child.yaml", tmp_path, child)
    assert child_outcome.failures == [] and child_outcome.console == b"x"
    assert "pending" not in child_end.cpu["aps"][0]   # delivered: nothing pending at the child's end


@pytest.mark.kvm
def test_a_one_vcpu_vm_refuses_an_smp_state(smp_file):
    """snapshot.load into a VM of one vCPU (no rig to compare counts with):
    refused by the backend, not run with the APs dropped."""
    from kvmrig.backends.kvm.x86_64 import KvmX86Backend
    rig = load_rig(PARENT)
    memory = Memory(rig.memory)
    try:
        with KvmX86Backend() as backend:
            for b in memory.backings:
                backend.map_memory(b.start, b.buf, b.region.rom)
            with pytest.raises(SnapshotError, match="the state is of a machine with 2 vCPUs; this VM has one"):
                snapshot.load(smp_file, backend, memory)
    finally:
        memory.close()


@pytest.mark.kvm
def test_a_plain_vm_still_resets_after_a_snapshot_of_a_vm_with_local_apics(tmp_path, monkeypatch):
    """The restorable MSRs are probed per kind of vCPU: probed first on a vCPU
    with an in-kernel local APIC (which takes MSR_KVM_PV_EOI_EN too), they
    made every later reset of a plain reused VM fail (found in the x86 lane:
    test_reuse's debug rigs ran on fresh VMs after the smp-snap examples)."""
    from kvmrig.machine.reuse import VmPool
    monkeypatch.setattr(x86_state, "_msr_cache", {})
    _run(PARENT, tmp_path)   # the first capture of this process: vCPUs with local APICs
    pool = VmPool()
    try:
        for name in ("fib", "fib"):
            rig = load_rig(X86 / f"{name}.yaml")
            outcome = pool.execute(prepare(rig), kvm_factory(rig))
            assert outcome.failures == []
        assert pool.reused == 1 and pool.refused == 0
    finally:
        pool.close()


@pytest.mark.kvm
def test_an_ap_that_took_its_sipi_while_out_of_kvm_run_is_saved_as_started(tmp_path):
    """KVM takes a pending INIT and SIPI when asked for the MP state: the
    registers the AP's last exit left in kvm_run are stale then. Saved from
    that copy, the AP was 'runnable at the reset vector' (a child's AP then
    ran into unbacked memory at 0xfffffff0: seen once under load)."""
    from kvmrig.backends.kvm import x86_smp
    bsp = hexof(START_AP + "fa f4")   # INIT, SIPI 0x08; cli; hlt
    rig_path = tmp_path / "sipi.yaml"
    rig_path.write_text(f"kvmrig: 1\narch: x86_64\nmemory: [{{at: 0, size: 2M}}]\ncpus: 2\n"
                        f"machine: {{irqchip: true}}\nimages: [{{hex: '{bsp}', at: 0x1000}}]\n"
                        "cpu: {mode: protected, entry: 0x1000}\n")
    rig = load_rig(rig_path)
    memory = Memory(rig.memory)
    try:
        with kvm_factory(rig)() as backend:
            for b in memory.backings:
                backend.map_memory(b.start, b.buf, b.region.rom)
            for addr, data in prepare(rig).images[0].segments:   # no session: no AP threads
                memory.write(addr, data)
            backend.set_initial_state(prepare(rig).boot.state)
            ap = backend._cpus[1]
            ap.vcpu.run_struct.immediate_exit = 1
            ap.vcpu.run()                 # an exit: kvm_run holds the AP as created (waiting for INIT)
            ap.vcpu.run_struct.immediate_exit = 0
            ev = backend.run(time.monotonic() + 5)   # the BSP sends INIT and SIPI, then halts
            assert type(ev).__name__ == "Halt", ev
            state = x86_smp._capture_ap(ap)
    finally:
        memory.close()
    regs = x86_state._struct("struct kvm_regs", state.regs)
    sregs = x86_state._struct("struct kvm_sregs", state.sregs)
    assert _mp_state(state) == abi.KVM_MP_STATE_RUNNABLE
    assert (sregs.cs.selector, sregs.cs.base, regs.rip) == (0x800, 0x8000, 0)   # SIPI vector 0x08


# The run ends on one vCPU while the machine is being stopped for another's
# save (an exit device write or a fault, on an AP while vCPU 0 saves or on
# vCPU 0 while an AP saves; the AP's fault, a UD2 in real mode with an empty
# IVT, is a triple fault where the CPU runs real mode and an instruction KVM
# cannot emulate on this kvm_pvm, which emulates it: either ends the run). The interleaving is forced, not timed: the
# ender waits in memory for GO, which only the saving hit's `set` writes, and
# the saver's stop waits (a test hook) until the ender has left KVM_RUN with
# its end before it kicks anyone.
ENDS_32 = {"exit": "b0 03 e6 f4 f4 eb fd",          # mov al, 3; out 0xf4, al; hlt; jmp hlt
           "triple": "0f 01 1d 00 51 00 00 0f 0b"}  # lidt [0x5100] (limit 0); ud2
ENDS_16 = {"exit": "b0 03 e6 f4 f4 eb fd",
           "triple": "0f 01 1e 00 51 0f 0b"}        # lidt [0x5100]; ud2
SAVER_32 = "80 3d 00 50 00 00 01 75 f7 90 eb fe"    # 1028: wait READY; 1031: nop (save); jmp $
ENDER_32 = "c6 05 00 50 00 00 01 80 3d 04 50 00 00 01 75 f7 "   # READY = 1; wait GO; 1038: the end
REAL = "fa 31 c0 8e d8 "                             # 8000: cli; ds = 0
SAVER_16 = "80 3e 00 50 01 75 f9 90 eb fe"           # 8005: wait READY; 800c: nop (save); jmp $
ENDER_16 = "c6 06 00 50 01 80 3e 04 50 01 75 f9 "     # READY = 1; wait GO; 8011: the end
EXPECT_END = {"exit": "expect: {exit: exit-code, exit_code: 3}\n", "triple": ""}   # a fault: no normal end


def _racer(saver: int, how: str) -> str:
    bsp = hexof(START_AP) + hexof(SAVER_32 if saver == 0 else ENDER_32 + ENDS_32[how])
    ap = hexof(REAL + (SAVER_16 if saver == 1 else ENDER_16 + ENDS_16[how]))
    save_at = 0x1031 if saver == 0 else 0x800C
    return (f"kvmrig: 1\narch: x86_64\ntimeout: 10s\nmemory: [{{at: 0, size: 2M}}]\ncpus: 2\n"
            "machine: {irqchip: true}\ndevices: [{type: exit, port: 0xf4}]\n"
            f"images: [{{hex: '{bsp}', at: 0x1000}}, {{hex: '{ap}', at: 0x8000}}]\n"
            "cpu: {mode: protected, entry: 0x1000}\n"
            f"breakpoints: [{{at: {save_at:#x}, hits: 1, save: here, set: {{memory: [{{at: 0x5004, u8: 1}}]}}}}]\n"
            + EXPECT_END[how])


@pytest.fixture
def end_during_stop(monkeypatch):
    """Hold the saver (before it starts stopping the machine: a vCPU kicked
    meanwhile, e.g. by the 10 ms alarm, would park instead of ending the run)
    until the vCPU that ends the run has left KVM_RUN with its end (an exit
    device write, a fault), which then waits for the machine lock the saver
    holds; yields a list that records, per save, whether it had."""
    from kvmrig.backends.kvm import x86_smp
    from kvmrig.backends.events import Shutdown, Unhandled
    ended, seen = __import__("threading").Event(), []
    next_event, world_stopped = x86_smp.KvmX86Backend._next_event, x86_smp.KvmX86SmpBackend.world_stopped

    def spy(self, deadline):
        ev = next_event(self, deadline)
        if type(ev) is Shutdown or (type(ev) is PortIO and ev.port == 0xF4) or \
                (type(ev) is Unhandled and not ev.detail.startswith("another vCPU")):
            ended.set()
        return ev

    def held(self):
        if self._aps is not None and not self._aps.stopping:   # a save mid-run (not the test's at the end)
            seen.append(ended.wait(10))
        return world_stopped(self)
    monkeypatch.setattr(x86_smp._PerVcpu, "_next_event", spy, raising=False)
    monkeypatch.setattr(x86_smp.KvmX86SmpBackend, "world_stopped", held)
    return seen


@pytest.mark.kvm
@pytest.mark.parametrize("saver, how", [(0, "exit"), (0, "triple"), (1, "exit"), (1, "triple")],
                         ids=["vcpu0-saves-ap-exits", "vcpu0-saves-ap-faults",
                              "ap-saves-vcpu0-exits", "ap-saves-vcpu0-triple-faults"])
def test_a_point_saved_as_another_vcpu_ends_the_run_records_the_end_and_its_child_ends_so(
        tmp_path, end_during_stop, saver, how):
    """The point is saved (the machine as it stopped, the ender's last event
    handled and completed) with `ending`: the run's end, which vCPU, why. Its
    child ends the same way before any instruction, in the same state."""
    outcome, parent_end = _run(tmp_path / "racer.yaml", tmp_path, _racer(saver, how))
    assert end_during_stop[0] is True   # the forced interleaving happened
    ender = 1 - saver
    failed = [] if how == "exit" else ["exit"]   # a fault is not a normal end: the exit check fails
    assert [f.what for f in outcome.failures] == failed and outcome.hits[0].cpu == saver
    assert outcome.exit in (("exit-code",) if how == "exit" else ("shutdown", "unhandled"))
    path = PointStore(tmp_path).file(tmp_path / "racer.yaml", "here")
    assert path.read_bytes().startswith(b"KVMRIG-SNAPSHOT 3\n")
    snap = snapfile.read(path)
    assert snap.ending["cpu"] == ender and snap.ending["exit"] == outcome.exit
    assert snap.ending["code"] == outcome.exit_code and snap.ending["detail"] == outcome.detail
    if ender:
        assert outcome.detail.startswith("vCPU 1: ")
    # The saver is at its breakpoint; the ender past its exit write (completed).
    regs = [x86_state._struct("struct kvm_regs", v.regs) for v in _vcpus(snap)]
    sregs = [x86_state._struct("struct kvm_sregs", v.sregs) for v in _vcpus(snap)]
    assert sregs[saver].cs.base + regs[saver].rip == (0x1031 if saver == 0 else 0x800C)
    if how == "exit":
        assert sregs[ender].cs.base + regs[ender].rip == (0x103C if ender == 0 else 0x8015)
    child = "kvmrig: 1\narch: x86_64\nfrom: racer.yaml#here\ntimeout: 5s\n" + EXPECT_END[how]
    child_outcome, child_end = _run(tmp_path / "child.yaml", tmp_path, child)
    assert [f.what for f in child_outcome.failures] == failed
    assert (child_outcome.exit, child_outcome.exit_code, child_outcome.detail) == \
        (outcome.exit, outcome.exit_code, outcome.detail)
    assert any("was ending as it saved it" in n for n in child_outcome.notes), child_outcome.notes
    assert child_outcome.regs == outcome.regs
    _same_end(child_end, parent_end)


@pytest.mark.kvm
def test_a_point_that_cannot_be_saved_mid_run_is_a_failure_and_the_run_goes_on(tmp_path):
    """A save at a hit that fails (here: the points folder is a file) is a
    `snapshot` failure naming the point and why, on either vCPU; the run ends
    as it would have."""
    blocker = tmp_path / "points"
    blocker.write_text("not a folder")
    outcome, _ = _run(PARENT, blocker)
    assert (outcome.exit, outcome.exit_code) == ("exit-code", 8000)
    unsaved = [f for f in outcome.failures if f.what == "snapshot"]
    assert sorted(f.expected for f in unsaved) == sorted(f"point {p!r} saved" for p in POINTS)
    assert all(f.actual.startswith("not saved: ") and f.mark is not None for f in unsaved), unsaved
    assert len(unsaved) == len(outcome.failures)
