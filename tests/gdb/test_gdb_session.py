"""Debian's gdb, in batch mode, against `kvmrig debug` and `kvmrig run
--gdb-on-fail` on real rigs: connect, registers, memory, breakpoints (sw and
hw), stepi, watchpoints, Ctrl-C, the end of the run, detach and kill.

KVM tests skip only without /dev/kvm or without gdb; the arm64 test runs on
the emulator backend with gdb-multiarch and skips without either.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import emu_unavailable
from tests.gdb.test_controller import rig_text

GDB = shutil.which("gdb")
GDB_MULTIARCH = shutil.which("gdb-multiarch")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60

needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install -y gdb)")
x86_kvm = [pytest.mark.kvm, needs_gdb,
           pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 guest code")]

LOOP_RIG = rig_text("""\
breakpoints:
  - {at: 0x100a, hits: 5}
expect:
  exit: hlt
  regs: {rax: 32, rbx: 0x1234, rcx: 0}
  memory: [{at: 0x5000, u32: 32}]
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `kvmrig ...` process serving gdb; killed on teardown if still running."""

    def __init__(self, args: list[str], cwd: Path):
        self.port = free_port()
        args = [a.replace("PORT", str(self.port)) for a in args]
        self.proc = subprocess.Popen([sys.executable, "-m", "kvmrig", *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.listening.wait(TIMEOUT) or "listening on" not in self.started():
            self.kill()
            raise AssertionError(f"the server did not start listening:\n{''.join(self.lines)}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on" in line:
                self.listening.set()
        self.listening.set()   # the process ended (the caller sees no "listening" line)

    def started(self) -> str:
        return "".join(self.lines)

    def finish(self) -> tuple[int, str]:
        """Wait for the server to end; (exit status, everything it printed)."""
        self.proc.wait(timeout=TIMEOUT)
        self.reader.join(TIMEOUT)
        return self.proc.returncode, "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def serve(tmp_path):
    servers: list[Server] = []

    def start(*args: str) -> Server:
        server = Server(list(args), tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gdb(port: int, *commands: str, binary: str | None = None, interrupt: Server | None = None) -> str:
    """Run gdb in batch mode: connect to the port, run the commands; its output.
    With `interrupt`, gdb gets SIGINT (Ctrl-C) once that server has spent half
    a second of CPU running the guest."""
    args = [binary or GDB, "-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", "set can-use-hw-watchpoints 1", "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if interrupt is not None:
            begun, deadline = cpu_seconds(interrupt.proc.pid), time.monotonic() + TIMEOUT / 2
            while cpu_seconds(interrupt.proc.pid) - begun < 0.5 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)   # what Ctrl-C does: gdb sends 0x03 to the server
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out


x86_emu = [needs_gdb, pytest.mark.skipif(emu_unavailable() is not None, reason=f"no emulator backend: {emu_unavailable()}")]
BOTH = [pytest.param("kvm", marks=x86_kvm), pytest.param("emu", marks=x86_emu)]


def values(out: str) -> dict[str, str]:
    """The `K=V` words that `printf` commands printed."""
    return dict(re.findall(r"\b(\w+)=(\S+)", out))


@pytest.mark.parametrize("backend", BOTH)
def test_breakpoints_stepi_watchpoint_and_the_end(make_rig, serve, backend):
    rig = make_rig(LOOP_RIG)
    server = serve("debug", str(rig), "--gdb", "127.0.0.1:PORT", "--backend", backend)
    assert f"gdb -ex 'target remote :{server.port}'" in server.started()
    out = gdb(server.port,
              "info registers rip",
              "x/4xb 0x1000",
              "hbreak *0x100c",
              "break *0x1010",
              "continue",
              'printf "hb_pc=%#lx hb_rax=%ld hb_rcx=%ld\\n", $pc, $rax, $rcx',
              "stepi",
              'printf "step_pc=%#lx\\n", $pc',
              "delete 1",
              "continue",
              'printf "bp_pc=%#lx bp_rax=%ld bp_rcx=%ld\\n", $pc, $rax, $rcx',
              "watch *(int*)0x5000",
              "continue",
              'printf "watch_pc=%#lx watch_mem=%d\\n", $pc, *(int*)0x5000',
              "continue",
              'printf "end_pc=%#lx end_rbx=%#lx end_mem=%d\\n", $pc, $rbx, *(int*)0x5000',
              "monitor hits")
    got = values(out)
    assert re.search(r"rip\s+0x1000\s", out), out
    assert "0x1000:\t0xb8\t0x01\t0x00\t0x00" in out
    assert "Hardware assisted breakpoint 1 at 0x100c" in out
    assert (got["hb_pc"], got["hb_rax"], got["hb_rcx"]) == ("0x100c", "2", "5"), out
    assert got["step_pc"] == "0x100e"
    assert (got["bp_pc"], got["bp_rax"], got["bp_rcx"]) == ("0x1010", "32", "0"), out
    assert "Hardware watchpoint 3: *(int*)0x5000" in out
    assert "Old value = 0\nNew value = 32" in out
    assert (got["watch_pc"], got["watch_mem"]) == ("0x1017", "32")
    assert "kvmrig: the rig's run ended: exit hlt" in out and "kvmrig: rig loop passed" in out
    assert (got["end_pc"], got["end_rbx"], got["end_mem"]) == ("0x101d", "0x1234", "32"), out
    assert "breakpoint[0] at 0x100a: 5 hit(s)" in out
    status, printed = server.finish()      # gdb quit: it detached, the rig had already ended
    assert status == 0, printed
    assert "rig loop passed" in printed


@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=x86_kvm)])
def test_stepping_through_the_rigs_breakpoint_then_detach(make_rig, serve, backend):
    rig = make_rig(LOOP_RIG)
    server = serve("debug", str(rig), "--gdb", ":PORT", "--backend", backend)
    out = gdb(server.port, *["stepi"] * 4,
              'printf "pc=%#lx rax=%ld\\n", $pc, $rax',
              "x/2xb 0x100a",
              "detach")
    got = values(out)
    assert (got["pc"], got["rax"]) == ("0x100e", "2"), out
    assert "0x100a:\t0x01\t0xc0" in out         # the code, not the planted breakpoint
    assert "Detaching from program" in out or "detached" in out
    status, printed = server.finish()
    assert status == 0, printed
    assert "gdb detached; running the rig to its end" in printed
    assert "rig loop passed" in printed          # the rig's breakpoint counted all 5 hits


@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=x86_kvm)])
def test_writes_from_gdb_reach_the_verdict_and_continue_past_the_end_exits(make_rig, serve, backend):
    rig = make_rig(LOOP_RIG)
    server = serve("debug", str(rig), "--gdb", ":PORT", "--backend", backend)
    out = gdb(server.port,
              "break *0x101c",
              "continue",
              "set $rbx = 0x77",
              "set {int}0x5000 = 7",
              'printf "rbx=%#lx mem=%d\\n", $rbx, *(int*)0x5000',
              "continue",
              "continue")
    got = values(out)
    assert (got["rbx"], got["mem"]) == ("0x77", "7")
    assert "kvmrig: rig loop FAILED" in out
    assert "register rbx: expected 0x1234 (4660), got 0x77 (119)" in out
    assert "exited with code 01" in out
    status, printed = server.finish()
    assert status == 1, printed


SPIN = rig_text("expect: {exit: timeout}\n", code="48 ff c0  eb fb   # 1000: inc rax; jmp 0x1000",
                timeout="20s")


@pytest.mark.parametrize("backend", BOTH)
def test_ctrl_c_interrupts_a_running_guest_and_kill_ends_it(make_rig, serve, backend):
    rig = make_rig(SPIN)
    server = serve("debug", str(rig), "--gdb", ":PORT", "--backend", backend)
    out = gdb(server.port, "continue", 'printf "pc=%#lx busy=%d\\n", $pc, $rax > 1000', "monitor status",
              "kill", interrupt=server)
    got = values(out)
    assert "Program received signal SIGINT, Interrupt." in out, out
    assert got["pc"] in ("0x1000", "0x1003") and got["busy"] == "1", out
    assert "running, stopped by the debugger" in out
    status, printed = server.finish()
    assert status == 2, printed
    assert "killed by gdb before the rig's run ended" in printed


@pytest.mark.kvm
@pytest.mark.skipif(GDB is None, reason="gdb is not installed (apt-get install -y gdb)")
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 guest code")
def test_gdb_on_fail_serves_the_final_state_of_the_first_failed_rig(make_rig, serve):
    make_rig(LOOP_RIG, name="rigs/a-pass.yaml")
    make_rig(LOOP_RIG.replace("rax: 32", "rax: 33"), name="rigs/b-fail.yaml")
    server = serve("run", "-j", "1", "--junit", "", "--gdb-on-fail", ":PORT", "rigs")
    assert "running rigs/b-fail.yaml again on kvm" in server.started()
    out = gdb(server.port, 'printf "pc=%#lx rax=%ld\\n", $pc, $rax', "monitor status", "continue")
    got = values(out)
    assert (got["pc"], got["rax"]) == ("0x101d", "32"), out
    assert "register rax: expected 0x21 (33), got 0x20 (32)" in out
    assert "exited with code 01" in out
    status, printed = server.finish()
    assert status == 1, printed                 # `kvmrig run`'s own verdict: a rig failed
    assert "1 failed, 1 passed" in printed


@pytest.mark.skipif(GDB_MULTIARCH is None, reason="gdb-multiarch is not installed (apt-get install -y gdb-multiarch)")
@pytest.mark.skipif(emu_unavailable() is not None, reason=f"the emulator backend cannot run here: {emu_unavailable()}")
def test_arm64_rig_on_the_emulator_with_gdb_multiarch(serve):
    rig = ROOT / "rigs" / "arm64" / "sw-breakpoint.yaml"
    if not rig.exists():
        pytest.skip(f"{rig} is missing")
    server = serve("debug", str(rig), "--gdb", ":PORT", "--backend", "emu")
    assert "gdb-multiarch -ex 'target remote" in server.started()
    out = gdb(server.port,
              "info registers pc",
              "x/4xb 0x40000000",
              "break *0x40000010",          # add x20, x20, #1 in the inner loop
              "hbreak *0x40000018",         # b.ne inner
              "continue",
              'printf "a_pc=%#lx a_x21=%ld a_x20=%ld\\n", $pc, $x21, $x20',
              "continue",
              'printf "b_pc=%#lx\\n", $pc',
              "stepi",
              'printf "c_pc=%#lx\\n", $pc',
              "delete",
              "watch *(int*)0x40000100",
              "continue",
              'printf "end_pc=%#lx end_x19=%ld end_x21=%ld\\n", $pc, $x19, $x21',
              "monitor hits",
              binary=GDB_MULTIARCH)
    got = values(out)
    assert re.search(r"pc\s+0x40000000\s", out), out
    assert "0x40000000:\t0x13\t0x00\t0x80\t0xd2" in out     # mov x19, #0
    assert (got["a_pc"], got["a_x21"], got["a_x20"]) == ("0x40000010", "1", "0"), out
    assert got["b_pc"] == "0x40000018"
    assert got["c_pc"] == "0x4000000c"                          # the branch back to `inner`
    assert "exit system-off" in out and "rig sw-breakpoint passed" in out
    assert (got["end_x19"], got["end_x21"]) == ("3", "12"), out
    assert "breakpoint[1] at 0x4000000c: 12 hit(s)" in out
    status, printed = server.finish()
    assert status == 0, printed



# x87 and SSE instructions that this project's kvm_pvm runs (FLD1, PXOR and MOVQ from a
# register stop it with an emulation failure; loads from memory and FNINIT do not).
FPU_RIG = rig_text("expect: {exit: hlt}\n", code="""
    b9 00 01 00 c0                   # mov $0xc0000100,%ecx   (IA32_FS_BASE)
    b8 00 20 00 00                   # mov $0x2000,%eax
    31 d2                            # xor %edx,%edx
    0f 30                            # wrmsr                  fs_base = 0x2000
    66 0f 6f 04 25 00 20 00 00       # movdqa 0x2000,%xmm0
    db e3                            # fninit
    f4                               # hlt
""").replace("at: 0x1000}]", "at: 0x1000}, {hex: '88 77 66 55 44 33 22 11', at: 0x2000}]", 1)   # + the data


@pytest.mark.parametrize("backend", BOTH)
def test_gdb_shows_fs_base_the_x87_and_sse_registers(make_rig, serve, backend):
    rig = make_rig(FPU_RIG)
    server = serve("debug", str(rig), "--gdb", "127.0.0.1:PORT", "--backend", backend)
    server.started()
    out = gdb(server.port, "continue",
              'printf "fs_base=%#lx xmm0=%#lx mxcsr=%#x\\n", $fs_base, $xmm0.v2_int64[0], $mxcsr',
              "info registers st0",
              "info registers fctrl fstat ftag")
    got = values(out)
    assert got["fs_base"] == "0x2000", out
    assert got["xmm0"] == "0x1122334455667788", out
    assert re.search(r"st0\s+0\s", out), out
    assert re.fullmatch(r"0|0x[0-9a-f]+", got["mxcsr"]), out   # readable (this kvm_pvm reports 0, not 0x1f80)
    assert re.search(r"fctrl\s+0x37f\s", out), out
    assert re.search(r"ftag\s+0xffff\s", out), out             # FNINIT: all eight empty
    server.finish()
