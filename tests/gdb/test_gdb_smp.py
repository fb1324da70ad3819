"""gdb against an x86_64 KVM machine with two vCPUs (`cpus: 2`): every vCPU
is a thread, all-stop (kvmrig.gdb.server, Backend.debug_stop/debug_go).

The guest (two vCPUs, handshakes in guest memory, nothing timed): the BSP
(protected mode at 0x1000) sets EBX, starts the AP by INIT/SIPI and counts
in ECX until the AP says it is ready (0x5004) and the gate 0x500c is open,
then acknowledges (0x5008) and spins. The AP (real mode, moved to CS 0 so
that its IP is the linear address) sets its own EBX, passes `ap_bp`, says
it is ready, counts in EDX until the gate is open and then until the
acknowledgement, and ends the run by writing 0x2a to the exit port: so the
end is vCPU 1's. Opening the gate sends both vCPUs on at once."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from kvmrig.backends.select import kvm_factory
from kvmrig.gdb.controller import Controller
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig_text
from tests.conftest import hexof
from tests.gdb.test_gdb_session import ROOT, gdb, serve, values, x86_kvm  # noqa: F401 - serve: a fixture

BSP = hexof("""
    bb b5 b5 b5 b5                  # 1000: mov ebx, 0xb5b5b5b5
    c7 05 f0 00 e0 fe ff 01 00 00   # 1005: mov dword [0xfee000f0], 0x1ff   (SVR: APIC on)
    c7 05 10 03 e0 fe 00 00 00 01   # 100f: mov dword [0xfee00310], 1 << 24 (to APIC 1)
    c7 05 00 03 e0 fe 00 45 00 00   # 1019: mov dword [0xfee00300], 0x4500  (INIT)
    c7 05 00 03 e0 fe 08 46 00 00   # 1023: mov dword [0xfee00300], 0x4608  (SIPI 0x08)
    31 c9                           # 102d: xor ecx, ecx
    41                              # 102f: w1: inc ecx
    80 3d 04 50 00 00 01            # 1030: cmp byte [0x5004], 1   (the AP is ready)
    75 f6                           # 1037: jne w1
    80 3d 0c 50 00 00 01            # 1039: cmp byte [0x500c], 1   (the gate is open)
    75 ed                           # 1040: jne w1
    c6 05 08 50 00 00 01            # 1042: mov byte [0x5008], 1   (acknowledge)
    eb fe                           # 1049: jmp 0x1049
""")
AP = hexof("""
    ea 05 80 00 00                  # 8000: jmp 0:0x8005
    31 c0                           # 8005: xor ax, ax
    8e d8                           # 8007: mov ds, ax
    66 bb a1 a1 a1 a1               # 8009: mov ebx, 0xa1a1a1a1
    66 31 d2                        # 800f: xor edx, edx
    90                              # 8012: ap_bp: nop
    c6 06 04 50 01                  # 8013: mov byte [0x5004], 1   (ready)
    66 42                           # 8018: w2: inc edx
    80 3e 0c 50 01                  # 801a: cmp byte [0x500c], 1   (the gate is open)
    75 f7                           # 801f: jne w2
    90                              # 8021: ap_go: nop
    66 42                           # 8022: w3: inc edx
    80 3e 08 50 01                  # 8024: cmp byte [0x5008], 1   (acknowledged)
    75 f7                           # 8029: jne w3
    b0 2a                           # 802b: mov al, 0x2a
    e6 f4                           # 802d: out 0xf4, al            (the end, on vCPU 1)
    eb fe                           # 802f: jmp 0x802f
""")
AP_BP = 0x8012
AP_GO, BSP_GO = 0x8021, 0x1042   # the first instruction of each vCPU past the open gate


def with_gdb(test):
    """Real KVM on x86_64, with gdb installed (tests.gdb.test_gdb_session.x86_kvm)."""
    for mark in x86_kvm:
        test = mark(test)
    return test


def smp_rig(gate_open: bool = True, exit_code: int = 0x2A, timeout: str = "10s") -> str:
    gate = ", {hex: '01', at: 0x500c}" if gate_open else ""
    return (f"kvmrig: 1\nname: two\narch: x86_64\ntimeout: {timeout}\nmemory: [{{at: 0, size: 2M}}]\n"
            "cpus: 2\nmachine: {irqchip: true}\n"
            f"images: [{{hex: '{BSP}', at: 0x1000}}, {{hex: '{AP}', at: 0x8000}}{gate}]\n"
            "devices: [{type: exit, port: 0xf4}]\n"
            "cpu: {mode: protected, entry: 0x1000}\n"
            f"expect: {{exit: exit-code, exit_code: {exit_code}, memory: [{{at: 0x5008, u8: 1}}]}}\n")


def threads(out: str) -> list[str]:
    """The lines of `info threads` (one per thread)."""
    return re.findall(r"^\*?\s+\d+\s+Thread [\d.]+ .*$", out, re.M)


@with_gdb
def test_every_vcpu_is_a_thread_and_all_stop_together(make_rig, serve):
    rig = make_rig(smp_rig())
    server = serve("debug", str(rig), "--gdb", ":PORT")
    assert "2 vCPUs" in server.started()
    out = gdb(server.port,
              "info threads",
              f"break *{AP_BP:#x}",
              "continue",
              'printf "ap_pc=%#lx ap_ebx=%#lx ap_cs=%#x\\n", $pc, $ebx & 0xffffffff, $cs',
              "info threads",
              "thread 1",
              'printf "bsp_ebx=%#x bsp_ecx=%ld bsp_pc=%#lx\\n", $ebx, $ecx, $pc',
              "thread 2",
              "stepi",
              'printf "ap_step_pc=%#lx\\n", $pc',
              "thread 1",
              'printf "bsp_ecx_after_ap_step=%ld bsp_pc_after_ap_step=%#lx\\n", $ecx, $pc',
              "stepi",
              'printf "bsp_step_pc=%#lx bsp_step_ecx=%ld\\n", $pc, $ecx',
              "thread 2",
              'printf "ap_pc_after_bsp_step=%#lx\\n", $pc',
              "set scheduler-locking on",   # continue = vCont;c:2: the AP alone
              "break *0x8018",
              "continue",
              'printf "ap_alone_pc=%#lx\\n", $pc',
              "thread 1",
              'printf "bsp_pc_after_ap_alone=%#lx bsp_ecx_after_ap_alone=%ld\\n", $pc, $ecx',
              "set scheduler-locking off",
              "thread 2",
              "set $edx = 0x1000",
              "delete",
              "continue",
              'printf "end_ap_pc=%#lx end_ap_edx_big=%d\\n", $pc, $edx >= 0x1000',
              "thread 1",
              'printf "end_bsp_pc=%#lx end_bsp_ebx=%#x\\n", $pc, $ebx',
              "continue")
    got = values(out)
    first = threads(out.split("Breakpoint 1 at")[0])
    assert len(first) == 2, out
    assert "(vCPU 0 (running))" in first[0] and "(vCPU 1 (waiting for INIT))" in first[1], first
    # the AP's breakpoint: thread 2 stopped, with its own registers
    assert re.search(r"Thread 2 .*hit Breakpoint 1", out), out
    assert (got["ap_pc"], got["ap_ebx"], got["ap_cs"]) == ("0x8012", "0xa1a1a1a1", "0"), out
    assert (got["bsp_ebx"]) == "0xb5b5b5b5", out
    assert 0x102d <= int(got["bsp_pc"], 16) <= 0x1040, out   # from after its SIPI to its wait loop
    # a step runs the stepped vCPU only: the other's counter and pc stay
    assert got["ap_step_pc"] == "0x8013", out
    assert got["bsp_ecx_after_ap_step"] == got["bsp_ecx"], out
    assert got["bsp_pc_after_ap_step"] == got["bsp_pc"], out
    assert got["bsp_step_pc"] != got["bsp_pc"] and 0x102f <= int(got["bsp_step_pc"], 16) <= 0x1040, out
    assert got["ap_pc_after_bsp_step"] == "0x8013", out
    assert got["ap_alone_pc"] == "0x8018", out   # continued alone: the BSP did not move
    assert (got["bsp_pc_after_ap_alone"], got["bsp_ecx_after_ap_alone"]) == (got["bsp_step_pc"], got["bsp_step_ecx"])
    # the end is vCPU 1's (its OUT), with the rig's verdict; every vCPU's final state stays readable
    assert "kvmrig: the rig's run ended: exit exit-code (code 42)" in out and "kvmrig: rig two passed" in out
    assert (got["end_ap_pc"], got["end_ap_edx_big"]) == ("0x802f", "1"), out
    assert (got["end_bsp_pc"], got["end_bsp_ebx"]) == ("0x1049", "0xb5b5b5b5"), out
    assert "exited normally" in out, out
    status, printed = server.finish()
    assert status == 0, printed


@with_gdb
def test_ctrl_c_stops_every_vcpu_until_continue(make_rig, serve):
    rig = make_rig(smp_rig(gate_open=False, timeout="30s"))   # both count until gdb opens the gate
    server = serve("debug", str(rig), "--gdb", ":PORT")
    out = gdb(server.port, "continue",
              "thread 1", 'printf "a_ecx=%ld\\n", $ecx', "thread 2", 'printf "a_edx=%ld\\n", $edx',
              "info threads", "monitor status", "x/2xw 0x5000",
              "thread 1", 'printf "b_ecx=%ld\\n", $ecx', "thread 2", 'printf "b_edx=%ld\\n", $edx',
              "set {char}0x500c = 1", "continue", "continue", interrupt=server)
    got = values(out)
    assert "received signal SIGINT" in out, out
    assert "vCPU 0 (thread 1): running" in out and "vCPU 1 (thread 2): running" in out, out   # monitor status
    assert int(got["a_ecx"]) > 0 and int(got["a_edx"]) > 0, out   # both were running
    assert (got["b_ecx"], got["b_edx"]) == (got["a_ecx"], got["a_edx"]), out   # and neither ran while stopped
    assert "rig two passed" in out and "exited normally" in out, out
    assert server.finish()[0] == 0


@with_gdb
def test_a_snapshot_file_of_an_smp_machine_shows_each_vcpu_where_it_was_saved(tmp_path, serve):
    """`kvmrig snapshot rigs/x86/smp-snap.yaml#ap-round-2 -o F`, then `kvmrig debug F`: the AP was
    saved at its second round (a hit on vCPU 1), the BSP wherever it was."""
    snap = tmp_path / "ap-round-2.snap"
    made = subprocess.run([sys.executable, "-m", "kvmrig", "snapshot",
                           str(ROOT / "rigs" / "x86" / "smp-snap.yaml") + "#ap-round-2", "-o", str(snap)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    server = serve("debug", str(snap), "--gdb", ":PORT")
    assert "2 vCPUs: gdb threads 1-2" in server.started()
    out = gdb(server.port,
              "info threads",
              "thread 2",
              'printf "a_pc=%#lx a_cs=%#x a_si=%d a_edx=%d\\n", $pc, $cs, $si & 0xffff, $edx',
              "thread 1",
              'printf "b_pc=%#lx b_cs=%#x\\n", $pc, $cs',
              "break *0x1060",             # the BSP once the AP is done (where the BSP was saved
              "continue",                  # depends on how the parent's vCPUs interleaved)
              'printf "c_pc=%#lx c_eax=%d\\n", $pc, $eax',
              "thread 2",
              'printf "c_ap_si=%d c_ap_edx=%d\\n", $si & 0xffff, $edx',
              "delete",
              "continue",
              "continue")
    got = values(out)
    assert len(threads(out)) == 2 and "(vCPU 1 (running))" in out, out
    # vCPU 1: real mode, CS 0x800 (SIPI vector 8), IP 0x13 = ap_round, one round done (SI 4 -> 3)
    assert (got["a_pc"], got["a_cs"], got["a_si"], got["a_edx"]) == ("0x13", "0x800", "3", "500500"), out
    assert got["b_cs"] != "0x800" and 0x1000 <= int(got["b_pc"], 16) < 0x1100, out   # the BSP, protected mode
    assert re.search(r"Thread 1 .*hit Breakpoint 1", out) and got["c_pc"] == "0x1060", out
    assert (got["c_ap_si"], got["c_ap_edx"]) == ("0", "2002000"), out   # the AP's rounds all done
    assert "exit exit-code (code 8000)" in out and "exited normally" in out, out
    assert server.finish()[0] == 0


@with_gdb
def test_gdb_on_fail_serves_every_vcpu_of_a_failed_smp_rig(make_rig, serve):
    make_rig(smp_rig(exit_code=0x2B), name="rigs/two.yaml")
    server = serve("run", "-j", "1", "--junit", "", "--gdb-on-fail", ":PORT", "rigs")
    out = gdb(server.port, "info threads",
              'printf "end_ap_pc=%#lx end_ap_ebx=%#x\\n", $pc, $ebx',     # the end was vCPU 1's
              "thread 1", 'printf "end_bsp_pc=%#lx end_bsp_ebx=%#x\\n", $pc, $ebx', "continue")
    got = values(out)
    assert len(threads(out)) == 2, out
    assert (got["end_ap_pc"], got["end_ap_ebx"]) == ("0x802f", "0xa1a1a1a1"), out
    assert (got["end_bsp_pc"], got["end_bsp_ebx"]) == ("0x1049", "0xb5b5b5b5"), out
    assert "exit code: expected 43, got 42" in out or "exited with code 01" in out, out
    status, printed = server.finish()
    assert status == 1, printed


@x86_kvm[0]
@x86_kvm[2]
def test_the_controller_runs_one_vcpu_alone_and_stops_every_vcpu_together():
    """Without gdb: `alone` continues one vCPU, a step runs only its vCPU,
    each stop names its vCPU, and the end is the AP's."""
    rig = load_rig_text(smp_rig(gate_open=False), "/rigs/two.yaml")
    ctl = Controller(prepare(rig), kvm_factory(rig))
    try:
        ctl.start()
        assert ctl.cpus == 2 and ctl.cpu_status(1) == "waiting for INIT" and ctl.pc(0) == 0x1000
        ctl.insert("hw", 0x1023)                 # the BSP has sent INIT, not SIPI yet
        info = ctl.resume()
        assert (info.reason, info.cpu, ctl.cpu_status(1)) == ("hw", 0, "waiting for SIPI")
        ctl.remove("hw", 0x1023)
        ctl.insert("hw", AP_BP)
        info = ctl.resume()                      # the BSP starts the AP, which stops at ap_bp
        assert (info.reason, info.cpu) == ("hw", 1) and ctl.pc(1) == AP_BP
        assert ctl.read_regs(1)["rbx"] == 0xA1A1A1A1 and ctl.read_regs(0)["rbx"] == 0xB5B5B5B5
        counted = ctl.read_regs(0)["rcx"]
        ctl.remove("hw", AP_BP)
        # Only the AP continues, until it says it is ready (the guest's own handshake);
        # the BSP, which counts while it waits for that, has not run meanwhile.
        ready = lambda: ctl.read_memory(0x5004, 1) == b"\x01"   # noqa: E731
        info = ctl.resume(interrupted=ready, cpu=1, alone=True)
        assert (info.reason, info.cpu) == ("interrupt", 1)
        assert ctl.read_regs(0)["rcx"] == counted and 0x8018 <= ctl.pc(1) <= 0x801F
        edx = ctl.read_regs(1)["rdx"]
        info = ctl.resume(step=True, cpu=0)     # a step of the BSP: the AP stays where it is
        assert (info.reason, info.cpu) == ("step", 0)
        assert ctl.read_regs(0)["rcx"] in (counted, counted + 1) and ctl.read_regs(1)["rdx"] == edx
        ctl.write_regs({"rdx": 0x1000}, cpu=1)
        assert ctl.read_regs(1)["rdx"] == 0x1000 and ctl.read_regs(0)["rdx"] != 0x1000
        assert ctl.write_memory(0x500C, b"\x01")   # open the gate: both go on, the AP ends the run
        info = ctl.resume()
        assert (info.reason, info.cpu) == ("end", 1) and ctl.outcome.exit_code == 0x2A, ctl.outcome
        assert ctl.outcome.failures == [] and ctl.read_regs(1)["rdx"] > 0x1000
    finally:
        ctl.close()


@x86_kvm[0]
@x86_kvm[2]
def test_two_vcpus_stopping_at_once_are_both_reported_one_after_the_other():
    """Both vCPUs wait for the gate, each with a debugger breakpoint just past
    it: opening it stops one, and the next resume() reports the other, whether
    it had hit its breakpoint while the machine was being stopped (reported
    without running: pending) or gets there once it runs again. Repeated, so
    that both orders and both ways occur under load; none may lose a stop."""
    for _ in range(4):
        rig = load_rig_text(smp_rig(gate_open=False), "/rigs/two.yaml")
        ctl = Controller(prepare(rig), kvm_factory(rig))
        try:
            ctl.start()
            ready = lambda: ctl.read_memory(0x5004, 1) == b"\x01"   # noqa: E731
            assert ctl.resume(interrupted=ready).reason == "interrupt"   # both wait at the gate now
            ctl.insert("hw", BSP_GO)
            ctl.insert("hw", AP_GO)
            assert ctl.write_memory(0x500C, b"\x01")
            stops = []
            for _ in range(2):
                info = ctl.resume()
                stops.append((info.reason, info.cpu, ctl.pc(info.cpu)))
            assert sorted(stops) == [("hw", 0, BSP_GO), ("hw", 1, AP_GO)], stops
            ctl.remove("hw", BSP_GO)
            ctl.remove("hw", AP_GO)
            end = ctl.resume()
            assert (end.reason, end.cpu, ctl.outcome.failures) == ("end", 1, [])
        finally:
            ctl.close()


@x86_kvm[0]
@x86_kvm[2]
def test_a_stop_another_vcpu_had_meanwhile_is_reported_next_without_running(monkeypatch):
    """The BSP acknowledges, then stops at its breakpoint (0x1049); the AP,
    released by that acknowledgement, stops at its own (0x802b) while the
    BSP's stop is being handled (the handler waits for the AP's debug exit:
    a handshake, not a delay). The BSP's stop is reported; the AP's is
    pending and reported by the next resume() without running anything."""
    from kvmrig.backends.kvm import abi
    from kvmrig.machine.session import Session

    bsp_bp, ap_bp = 0x1049, 0x802B
    hw = Session._hw

    def bsp_hit_waits_for_the_ap(self, ev):
        if ev.pc == bsp_bp and self.backend.current_cpu() == 0:
            ap = self.backend._cpus[1].vcpu.run_struct
            deadline = time.monotonic() + 30
            while ap.exit_reason != abi.KVM_EXIT_DEBUG:   # the AP is out at its breakpoint, waiting for the lock
                assert time.monotonic() < deadline, "the AP never reached its breakpoint"
                time.sleep(0.001)
        hw(self, ev)

    monkeypatch.setattr(Session, "_hw", bsp_hit_waits_for_the_ap)
    rig = load_rig_text(smp_rig(), "/rigs/two.yaml")
    ctl = Controller(prepare(rig), kvm_factory(rig))
    try:
        ctl.start()
        ctl.insert("hw", bsp_bp)
        ctl.insert("hw", ap_bp)
        first = ctl.resume()
        assert (first.reason, first.cpu, ctl.pc(0)) == ("hw", 0, bsp_bp)
        assert [(p.reason, p.cpu) for p in ctl.session.ap_stops] == [("hw", 1)]   # pending
        edx = ctl.read_regs(1)["rdx"]
        second = ctl.resume()
        assert (second.reason, second.cpu, ctl.pc(1), ctl.pc(0)) == ("hw", 1, ap_bp, bsp_bp)
        assert ctl.read_regs(1)["rdx"] == edx and not ctl.session.ap_stops
        ctl.remove("hw", bsp_bp)
        ctl.remove("hw", ap_bp)
        end = ctl.resume()
        assert (end.reason, end.cpu, ctl.outcome.failures) == ("end", 1, [])
    finally:
        ctl.close()


@x86_kvm[0]
@x86_kvm[2]
def test_an_ap_saves_its_point_while_the_debugger_holds_the_bsp(tmp_path):
    """The rig's point on the AP's `ready` store is saved while only the AP
    runs (a continue of vCPU 1 alone): the snapshot holds the BSP where the
    debugger stopped it, and a child of it ends as the rig does."""
    from kvmrig.machine import snapfile
    from kvmrig.machine.points import PointStore
    from kvmrig.machine.session import RunOptions
    from kvmrig.backends.kvm import x86_state

    text = smp_rig(gate_open=False).replace("expect:", "breakpoints: [{at: 0x8013, save: ready}]\nexpect:")
    path = tmp_path / "two.yaml"
    path.write_text(text)
    rig = load_rig_text(text, str(path))
    ctl = Controller(prepare(rig), kvm_factory(rig), RunOptions(points=PointStore(tmp_path)))
    try:
        ctl.start()
        ctl.insert("hw", AP_BP)
        assert (ctl.resume().cpu, ctl.pc(1)) == (1, AP_BP)
        ctl.remove("hw", AP_BP)
        bsp = ctl.read_regs(0)
        ready = lambda: ctl.read_memory(0x5004, 1) == b"\x01"   # noqa: E731
        info = ctl.resume(interrupted=ready, cpu=1, alone=True)
        assert (info.reason, info.cpu) == ("interrupt", 1)
        saved = snapfile.read(PointStore(tmp_path).file(path, "ready"))
        regs = x86_state._struct("struct kvm_regs", x86_state.from_text(saved.cpu).regs)
        assert (regs.rip, regs.rcx) == (bsp["rip"], bsp["rcx"])   # the BSP as the debugger holds it
        ap = x86_state._struct("struct kvm_regs", x86_state.from_text(saved.cpu["aps"][0]).regs)
        assert ap.rip == 0x8013
        assert ctl.write_memory(0x500C, b"\x01")
        end = ctl.resume()
        assert (end.reason, end.cpu, ctl.outcome.failures) == ("end", 1, [])
    finally:
        ctl.close()
    (tmp_path / "ready.snap").write_bytes(PointStore(tmp_path).file(path, "ready").read_bytes())
    child = tmp_path / "child.yaml"   # from the file (by `two.yaml#ready` it would run its parent, whose gate is shut)
    child.write_text("kvmrig: 1\narch: x86_64\nfrom: ready.snap\nset: {memory: [{at: 0x500c, u8: 1}]}\n"
                     "expect: {exit: exit-code, exit_code: 42, memory: [{at: 0x5008, u8: 1}]}\n")
    from kvmrig.rig.load import load_rig
    from kvmrig.runner import run_rig
    result = run_rig(load_rig(child), "kvm")
    assert result.status == "passed", (result.message, result.details)
