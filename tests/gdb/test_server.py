"""The gdb server's packet handling against a fake controller, and the
connection over a socketpair: what each packet does and answers. No KVM."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from kvmrig.gdb.controller import StopInfo
from kvmrig.gdb.protocol import escape, frame, hex_text
from kvmrig.gdb.server import Connection, GdbServer, parse_address
from kvmrig.gdb.targets import target_for
from kvmrig.machine.debug import ClientPoint, NoDebugSlot
from kvmrig.machine.outcome import Failure

REGS = {**{n: 0 for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")},
        **{f"r{n}": 0 for n in range(8, 16)}, "rip": 0x1000, "rflags": 0x2,
        "cs": 8, "ds": 0x18, "es": 0x18, "fs": 0x18, "gs": 0x18, "ss": 0x18, "cr0": 0x80010033}


@dataclass
class FakeController:
    """What GdbServer uses of a Controller, recording the calls."""

    regs: dict = field(default_factory=lambda: dict(REGS))
    memory: bytearray = field(default_factory=lambda: bytearray(range(256)) * 16)   # 4K at 0x1000
    stops: list = field(default_factory=list)          # what resume() returns, in turn
    calls: list = field(default_factory=list)
    ended: bool = False
    last: StopInfo = field(default_factory=lambda: StopInfo("entry"))
    no_slot: bool = False

    def __post_init__(self):
        self.rig = SimpleNamespace(name="fake", arch="x86_64", path="fake.yaml")
        self.outcome = SimpleNamespace(exit="?", exit_code=None, detail="", failures=[])
        self.session = SimpleNamespace(debug=SimpleNamespace(points=[]), bus=SimpleNamespace(
            console=SimpleNamespace(data=bytearray(b"hello\n"))))
        self.exits, self.seconds, self.budget = 3, 0.5, 1.5
        self.cpus = 1

    def read_regs(self, cpu=0):
        return dict(self.regs)

    def write_regs(self, values, cpu=0):
        self.calls.append(("write_regs", values))
        self.regs.update(values)

    def pc(self):
        return self.regs["rip"]

    def read_memory(self, addr, length):
        if not 0x1000 <= addr < 0x2000:
            return b""
        return bytes(self.memory[addr - 0x1000:min(addr - 0x1000 + length, 0x1000)])

    def write_memory(self, addr, data):
        if not (0x1000 <= addr and addr + len(data) <= 0x2000):
            return False
        self.memory[addr - 0x1000:addr - 0x1000 + len(data)] = data
        self.calls.append(("write_memory", addr, bytes(data)))
        return True

    def insert(self, kind, addr, length=1):
        if self.no_slot:
            raise NoDebugSlot("none left")
        self.calls.append(("insert", kind, addr, length))

    def remove(self, kind, addr, length=1):
        self.calls.append(("remove", kind, addr, length))

    def resume(self, step=False, interrupted=None):
        self.calls.append(("resume", step))
        info = self.stops.pop(0)
        if info.reason == "end":
            self.ended = True
        self.last = info
        return info


class FakeConnection:
    def __init__(self):
        self.sent: list[bytes] = []
        self.ack = True
        self.interrupts = 0

    def send(self, payload):
        self.sent.append(payload if isinstance(payload, bytes) else payload.encode("latin-1"))

    def no_ack(self):
        self.ack = False

    def interrupted(self):
        return False


def server(ctl=None, features=("swbreak", "hwbreak")):
    ctl = ctl or FakeController()
    srv = GdbServer(ctl, FakeConnection())
    srv.handle("qSupported:" + ";".join(f + "+" for f in features))
    return srv, ctl


# -- queries ---------------------------------------------------------------------------

def test_qsupported_advertises_what_the_server_does():
    srv, _ = server()
    reply = srv.handle("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    features = reply.split(";")
    assert "PacketSize=4000" in features
    for f in ("qXfer:features:read+", "QStartNoAckMode+", "swbreak+", "hwbreak+", "vContSupported+"):
        assert f in features
    assert srv.gdb_features == {"multiprocess", "swbreak", "hwbreak"}


def test_no_ack_mode_answers_ok_then_stops_acking():
    srv, _ = server()
    assert srv.handle("QStartNoAckMode") is None
    assert srv.conn.sent == [b"OK"] and srv.conn.ack is False


def test_target_xml_is_served_in_chunks():
    srv, _ = server()
    got, offset = b"", 0
    while True:
        reply = srv.handle(f"qXfer:features:read:target.xml:{offset:x},{64:x}").encode("latin-1")
        got += reply[1:]
        offset += 64
        if reply[:1] == b"l":
            break
        assert reply[:1] == b"m"
    assert got == escape(target_for("x86_64", set(REGS)).xml().encode())
    assert srv.handle("qXfer:features:read:other.xml:0,10") == "E00"


@pytest.mark.parametrize("packet, reply", [
    ("qC", "QC1"), ("qAttached", "1"), ("qAttached:1", "1"), ("qfThreadInfo", "m1"), ("qsThreadInfo", "l"),
    ("Hg0", "OK"), ("Hc-1", "OK"), ("T1", "OK"), ("vMustReplyEmpty", ""), ("qTStatus", ""),
    ("qSymbol::", "OK"), ("vCont?", "vCont;c;C;s;S"), ("?", "T05thread:1;"), ("Z9,1000,1", ""),
])
def test_simple_queries(packet, reply):
    srv, _ = server()
    assert srv.handle(packet) == reply


def test_monitor_commands_answer_in_hex():
    srv, ctl = server()
    ctl.session.debug.points = [SimpleNamespace(label="breakpoint[0] at 0x100a", hits=4)]
    assert srv.handle("qRcmd," + "hits".encode().hex()) == hex_text("breakpoint[0] at 0x100a: 4 hit(s)\n")
    assert srv.handle("qRcmd," + "console".encode().hex()) == hex_text("hello\n")
    assert bytes.fromhex(srv.handle("qRcmd," + "status".encode().hex())).startswith(b"rig fake: running")
    assert b"unknown monitor command" in bytes.fromhex(srv.handle("qRcmd," + "frob".encode().hex()))


# -- registers and memory ------------------------------------------------------------------

def test_g_and_p_read_registers_in_description_order():
    srv, ctl = server()
    t = srv.target
    assert srv.handle("g") == t.encode_all(ctl.regs)
    assert srv.handle(f"p{t.index['rip']:x}") == "0010000000000000"
    assert srv.handle(f"p{t.index['st0']:x}") == "x" * 20
    assert srv.handle("p999") == "E45"


def test_p_writes_one_register_and_refuses_x87():
    srv, ctl = server()
    t = srv.target
    assert srv.handle(f"P{t.index['rbx']:x}=7700000000000000") == "OK"
    assert ctl.regs["rbx"] == 0x77
    assert srv.handle(f"P{t.index['eflags']:x}=02020000") == "OK"
    assert ctl.regs["rflags"] == 0x202
    assert srv.handle(f"P{t.index['st0']:x}=" + "00" * 10) == "E01"
    assert srv.handle("P1=12") == "E01"   # wrong width


def test_G_writes_only_the_registers_that_changed():
    srv, ctl = server()
    t = srv.target
    regs = dict(ctl.regs, rcx=0x1234, rip=0x1005)
    assert srv.handle("G" + t.encode_all(regs)) == "OK"
    assert ctl.calls == [("write_regs", {"rcx": 0x1234, "rip": 0x1005})]


def test_m_M_and_X_go_through_the_controller():
    srv, ctl = server()
    assert srv.handle("m1000,4") == "00010203"
    assert srv.handle("m1ffe,8") == "feff"          # what exists of the range
    assert srv.handle("m5000,4") == "E14"
    assert srv.handle("M1000,2:abcd") == "OK"
    assert srv.handle("m1000,2") == "abcd"
    assert srv.handle("M1000,2:ab") == "E01"
    assert srv.handle("X1000,0:") == "OK"           # gdb's probe for X
    assert srv.handle("X1004,3:" + escape(b"#$}").decode("latin-1")) == "OK"
    assert ctl.memory[4:7] == b"#$}"
    assert srv.handle("M9000,1:00") == "E14"


# -- points -------------------------------------------------------------------------------------

def test_z_packets_map_to_point_kinds():
    srv, ctl = server()
    for packet in ("Z0,1010,1", "Z1,100c,1", "Z2,5000,4", "Z3,5000,4", "Z4,5001,1", "z0,1010,1",
                   "Z0,1020,1;X2,ab"):
        assert srv.handle(packet) == "OK"
    assert ctl.calls == [("insert", "sw", 0x1010, 1), ("insert", "hw", 0x100C, 1),
                         ("insert", "write", 0x5000, 4), ("insert", "read", 0x5000, 4),
                         ("insert", "access", 0x5001, 1), ("remove", "sw", 0x1010, 1),
                         ("insert", "sw", 0x1020, 1)]
    assert srv.handle("Z2,5000,0") == "E01"


def test_a_point_without_a_free_debug_register_is_an_error():
    srv, ctl = server()
    ctl.no_slot = True
    assert srv.handle("Z1,1000,1") == "E28"


# -- running and stop replies ------------------------------------------------------------------

@pytest.mark.parametrize("packet, step", [("c", False), ("s", True), ("C05", False), ("S05", True),
                                          ("vCont;c", False), ("vCont;s:1;c", True), ("vCont;c:1", False),
                                          ("vCont;s:2;c", False)])
def test_resume_packets(packet, step):
    srv, ctl = server()
    ctl.stops = [StopInfo("step")]
    assert srv.handle(packet) == "T05thread:1;"
    assert ctl.calls == [("resume", step)]


def test_continue_at_an_address_moves_the_pc_first():
    srv, ctl = server()
    ctl.stops = [StopInfo("step")]
    srv.handle("c1010")
    assert ctl.calls == [("write_regs", {"rip": 0x1010}), ("resume", False)]


def test_stop_replies_say_why():
    srv, ctl = server()
    watch = ClientPoint("write", 0x5000, 4)
    ctl.stops = [StopInfo("sw"), StopInfo("hw"), StopInfo("watch", watch),
                 StopInfo("watch", ClientPoint("read", 0x6000, 2)), StopInfo("watch", ClientPoint("access", 0x7, 1)),
                 StopInfo("interrupt")]
    assert [srv.handle("c") for _ in range(6)] == [
        "T05swbreak:;thread:1;", "T05hwbreak:;thread:1;", "T05watch:5000;thread:1;",
        "T05rwatch:6000;thread:1;", "T05awatch:7;thread:1;", "T02thread:1;"]


def test_swbreak_is_only_reported_to_a_gdb_that_asked_for_it():
    srv, ctl = server(features=())
    ctl.stops = [StopInfo("sw"), StopInfo("hw")]
    assert srv.handle("c") == "T05thread:1;"
    assert srv.handle("c") == "T05thread:1;"


@pytest.mark.parametrize("exit, signal", [("hlt", "05"), ("system-off", "05"), ("shutdown", "0b"),
                                          ("mmio", "0a"), ("timeout", "0e"), ("unhandled", "04")])
def test_the_end_of_the_run_is_a_stop_then_an_exit(exit, signal):
    srv, ctl = server()
    ctl.stops = [StopInfo("end")]
    ctl.outcome.exit = exit
    reply = srv.handle("c")
    assert reply == f"T{signal}thread:1;"
    console = b"".join(bytes.fromhex(p[1:].decode()) for p in srv.conn.sent if p.startswith(b"O"))
    assert f"exit {exit}".encode() in console and b"rig fake passed" in console
    assert srv.handle("c") == "W00"
    assert srv.action == "exited"


def test_a_failed_rig_exits_with_status_1_and_says_why():
    srv, ctl = server()
    ctl.stops = [StopInfo("end")]
    ctl.outcome.exit = "hlt"
    ctl.outcome.failures = [Failure("register rax", "0x20", "0x21")]
    srv.handle("c")
    console = b"".join(bytes.fromhex(p[1:].decode()) for p in srv.conn.sent if p.startswith(b"O"))
    assert b"FAILED" in console and b"register rax: expected 0x20, got 0x21" in console
    assert srv.handle("s") == "W01"


def test_detach_and_kill_end_the_session():
    srv, _ = server()
    assert srv.handle("D") == "OK" and srv.action == "detach"
    srv, _ = server()
    assert srv.handle("D;1") == "OK" and srv.action == "detach"
    srv, _ = server()
    assert srv.handle("k") is None and srv.action == "kill"
    srv, _ = server()
    assert srv.handle("vKill;1") == "OK" and srv.action == "kill"


def test_a_malformed_packet_is_an_error_reply_not_a_crash():
    srv, _ = server()
    assert srv.handle("mzz,4") == "E01"
    assert srv.handle("Z0,zz,1") == "E01"


# -- several vCPUs: threads, all-stop ------------------------------------------------------------

class SmpController(FakeController):
    """Two vCPUs: registers per vCPU, resume() recording whom it runs."""

    def __post_init__(self):
        super().__post_init__()
        self.cpus = 2
        self.per_cpu = [dict(REGS), {**REGS, "rip": 0x13, "rbx": 0xA1, "cs": 0x800}]

    def read_regs(self, cpu=0):
        return dict(self.per_cpu[cpu])

    def write_regs(self, values, cpu=0):
        self.calls.append(("write_regs", cpu, values))
        self.per_cpu[cpu].update(values)

    def cpu_status(self, cpu):
        return ("running", "waiting for SIPI")[cpu]

    def resume(self, step=False, interrupted=None, cpu=0, alone=False):
        self.calls.append(("resume", step, cpu, alone))
        info = self.stops.pop(0)
        self.last = info
        return info


def test_every_vcpu_is_a_thread_with_its_own_registers():
    srv, ctl = server(SmpController())
    assert srv.handle("qfThreadInfo") == "m1,2" and srv.handle("qsThreadInfo") == "l"
    assert srv.handle("qC") == "QC1"
    assert (srv.handle("T1"), srv.handle("T2"), srv.handle("T3"), srv.handle("T0")) == ("OK", "OK", "E01", "OK")
    assert bytes.fromhex(srv.handle("qThreadExtraInfo,2")).decode() == "vCPU 1 (waiting for SIPI)"
    assert bytes.fromhex(srv.handle("qThreadExtraInfo,1")).decode() == "vCPU 0 (running)"
    assert srv.handle("qThreadExtraInfo,3") == "E01"
    rip = srv.target.index["rip"]
    assert srv.handle(f"p{rip:x}") == (0x1000).to_bytes(8, "little").hex()
    assert srv.handle("Hg2") == "OK"
    assert srv.handle(f"p{rip:x}") == (0x13).to_bytes(8, "little").hex()
    assert srv.handle("g").startswith("00" * 8 + (0xA1).to_bytes(8, "little").hex())   # rax, rbx of vCPU 1
    assert srv.handle(f"P{rip:x}=" + (0x20).to_bytes(8, "little").hex()) == "OK"
    assert ctl.calls[-1] == ("write_regs", 1, {"rip": 0x20}) and ctl.per_cpu[0]["rip"] == 0x1000
    assert srv.handle("Hg3") == "E01" and srv.handle("Hx1") == "E01"
    assert srv.handle("Hgp1.1") == "OK" and srv.handle(f"p{rip:x}") == (0x1000).to_bytes(8, "little").hex()


@pytest.mark.parametrize("packet, call", [
    ("vCont;c", ("resume", False, 0, False)),
    ("vCont;s:2;c", ("resume", True, 1, False)),     # a step runs the stepped vCPU alone
    ("vCont;s:p1.2", ("resume", True, 1, False)),
    ("vCont;c:2", ("resume", False, 1, True)),       # only vCPU 1 continues
    ("vCont;c:1;c:2", ("resume", False, 0, False)),  # both: everything runs
    ("vCont;s:5;c", ("resume", False, 0, False)),    # no thread 5: its step is left out
    ("c", ("resume", False, 0, False)),
    ("s", ("resume", True, 0, False)),
])
def test_resume_packets_with_several_vcpus(packet, call):
    srv, ctl = server(SmpController())
    ctl.stops = [StopInfo("step")]
    srv.handle(packet)
    assert ctl.calls == [call]


def test_a_stop_names_the_vcpu_and_makes_it_the_current_thread():
    srv, ctl = server(SmpController())
    ctl.stops = [StopInfo("sw", cpu=1), StopInfo("step", cpu=1), StopInfo("interrupt", cpu=0),
                 StopInfo("end", cpu=1)]
    assert srv.handle("c") == "T05swbreak:;thread:2;"
    assert srv.handle("qC") == "QC2"
    rip = srv.target.index["rip"]
    assert srv.handle(f"p{rip:x}") == (0x13).to_bytes(8, "little").hex()   # its registers, without an Hg
    assert srv.handle("s") == "T05thread:2;" and ctl.calls[-1] == ("resume", True, 1, False)   # `s`: the current
    assert srv.handle("Hc1") == "OK" and srv.handle("s") == "T02thread:1;"
    assert ctl.calls[-1] == ("resume", True, 0, False)
    assert srv.handle("c") == "T05thread:2;"   # the end was vCPU 1's


# -- the connection --------------------------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield Connection(a), b
    a.close()
    b.close()


def test_connection_acks_packets_and_resends_on_nak(pair):
    conn, gdb = pair
    gdb.sendall(b"$g#67")
    assert conn.recv() == b"g"
    assert gdb.recv(10) == b"+"
    conn.send("OK")
    assert gdb.recv(10) == b"$OK#9a"
    gdb.sendall(b"-")
    gdb.sendall(b"$?#3f")
    assert conn.recv() == b"?"
    assert gdb.recv(20) == b"$OK#9a+"


def test_connection_naks_a_bad_checksum_and_stops_acking_in_no_ack_mode(pair):
    conn, gdb = pair
    gdb.sendall(b"$g#00$?#3f")
    assert conn.recv() == b"?"
    assert gdb.recv(10) == b"-+"
    conn.no_ack()
    gdb.sendall(b"$g#00")
    assert conn.recv() == b"g"
    conn.send(b"OK")
    assert gdb.recv(10) == b"$OK#9a"


def test_connection_sees_an_interrupt_and_a_gdb_that_went_away(pair):
    conn, gdb = pair
    assert conn.interrupted() is False
    gdb.sendall(b"\x03")
    assert conn.interrupted() is True
    assert conn.interrupted() is False
    gdb.close()
    assert conn.interrupted() is True
    assert conn.recv() is None


# -- addresses -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, address", [(":1234", ("127.0.0.1", 1234)), ("1234", ("127.0.0.1", 1234)),
                                           ("0.0.0.0:0", ("0.0.0.0", 0)), ("localhost:99", ("localhost", 99)),
                                           ("[::1]:5", ("::1", 5))])
def test_parse_address(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", ":x", "host:", ":70000"])
def test_parse_address_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_frame_of_a_stop_reply():
    assert frame("T05thread:1;").startswith(b"$T05thread:1;#")


# -- out-of-range packets against a real rig (issue 11 item 17) ---------------------

@pytest.mark.kvm
@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="x86_64 guest code")
def test_out_of_range_packets_get_error_replies_on_a_real_rig():
    """A segment value over 16 bits in `G`, a `Z1` address at 2**64, a `Z2`
    over 256 MiB: each killed the server (internal error) or ate gigabytes;
    now each is an error reply and the session goes on."""
    import resource

    from kvmrig.backends.select import backend_for
    from kvmrig.gdb.controller import Controller
    from kvmrig.machine.plan import prepare
    from kvmrig.rig.load import load_rig_text
    from tests.gdb.test_controller import LOOP_RIG

    rig = load_rig_text(LOOP_RIG, "loop.yaml")
    plan = prepare(rig)
    _, factory = backend_for(rig, "kvm")
    ctl = Controller(plan, factory)
    a, b = socket.socketpair()
    try:
        ctl.start()
        server = GdbServer(ctl, Connection(a), out=__import__("io").StringIO())
        regs = server.handle("g")
        cs = server.target.regs.index(next(r for r in server.target.regs if r.name == "cs"))
        width = [r.bits // 4 for r in server.target.regs]
        at = sum(width[:cs])
        bad_g = regs[:at] + "ffff0100" + regs[at + width[cs]:]   # cs = 0x1ffff, little-endian
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert server.handle("G" + bad_g) == "E01"
        assert server.handle(f"P{cs:x}=ffff0100") == "E01"
        assert server.handle("Z1,10000000000000000,1") == "E01"
        assert server.handle("Z0,ffffffffffffffffff,1") == "E01"
        assert server.handle("Z2,2000,10000000") == "E28"
        assert server.handle("Z3,fffffffffffffff0,20") in ("E01", "E28")
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000
        assert server.handle("g") == regs                            # nothing was half-written
        assert server.handle("Z1,1010,1") in ("OK", "E28")
        assert server.action is None                                  # the session is still served
    finally:
        ctl.close()
        a.close()
        b.close()
