"""The GDB protocol fuzzer: random and malformed packets against the server
of a real rig (KVM). Properties, for every packet: the server answers (a
reply or, for `k`, none) and never raises; the reply is a packet gdb can
read; the session still answers `g` afterwards unless it ended; memory stays
bounded. A session that ended (detach, kill, the rig's end) is replaced.
CI runs a derandomised 150 packet lists; KVMRIG_FUZZ=long or
KVMRIG_FUZZ_EXAMPLES=N runs more (tests/fuzzing.py)."""

from __future__ import annotations

import io
import platform
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmrig.gdb.server import Connection, GdbServer
from tests.fuzzing import RSS_BOUND_KIB, fuzz_settings, peak_rss_kib

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 guest code")]

HEX = st.text("0123456789abcdefABCDEF", max_size=40)
NUM = st.one_of(st.integers(0, 0x3000), st.integers(0, 1 << 70), st.just((1 << 64) - 1), st.just(1 << 64))


def _hex(n: int) -> str:
    return f"{n:x}"


PACKETS = st.one_of(
    st.sampled_from(["?", "g", "c", "s", "vCont?", "vCont;c", "vCont;s:1", "vCont;x", "qC", "qAttached",
                     "qfThreadInfo", "qsThreadInfo", "qSymbol::", "Hg0", "Hc-1", "T1", "qSupported:swbreak+",
                     "QStartNoAckMode", "qXfer:features:read:target.xml:0,fff", "qXfer:features:read:x:0,1",
                     "D", "k", "vKill;1", "", "Z", "z0,", "m", "M", "X", "P", "p", "G", "qRcmd,", "C05", "S0b;1000"]),
    st.builds(lambda r: "p" + _hex(r), st.integers(0, 200)),
    st.builds(lambda r, v: f"P{_hex(r)}={v}", st.integers(0, 200), HEX),
    st.builds(lambda body: "G" + body, st.text("0123456789abcdefx", max_size=1200)),
    st.builds(lambda a, n: f"m{_hex(a)},{_hex(n)}", NUM, NUM),
    st.builds(lambda a, n, d: f"M{_hex(a)},{_hex(n)}:{d}", NUM, st.integers(0, 40), HEX),
    st.builds(lambda a, n, d: f"X{_hex(a)},{_hex(n)}:{d}", NUM, st.integers(0, 40),
              st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
    st.builds(lambda z, k, a, n: f"{z}{k},{_hex(a)},{_hex(n)}", st.sampled_from("Zz"), st.integers(0, 5), NUM, NUM),
    st.builds(lambda a: f"c{_hex(a)}", NUM),
    st.builds(lambda a: f"s{_hex(a)}", NUM),
    st.builds(lambda t: "qRcmd," + t.encode("utf-8", "replace").hex(),
              st.sampled_from(["help", "regs", "console", "hits", "", "x" * 300, "\x1b[2J"])),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)

RIG = "timeout: 300ms\n"   # a guest sent astray by G stops at its timeout, quickly


class Session:
    """A real rig stopped at its entry and a GdbServer for it; renewed when it ends."""

    def __init__(self) -> None:
        from kvmrig.backends.select import backend_for
        from kvmrig.gdb.controller import Controller
        from kvmrig.machine.plan import prepare
        from kvmrig.rig.load import load_rig_text
        from tests.gdb.test_controller import LOOP_RIG

        rig = load_rig_text(LOOP_RIG.replace("timeout: 5s\n", RIG), "loop.yaml")
        _, factory = backend_for(rig, "kvm")
        self.ctl = Controller(prepare(rig), factory)
        self.ctl.start()
        self.a, self.b = socket.socketpair()
        self.b.setblocking(False)
        self.server = GdbServer(self.ctl, Connection(self.a), out=io.StringIO())

    @property
    def over(self) -> bool:
        return self.server.action is not None or self.ctl.ended

    def close(self) -> None:
        self.ctl.close()
        self.a.close()
        self.b.close()


@pytest.fixture(scope="module")
def session():
    holder = [Session()]
    yield holder
    holder[0].close()


@fuzz_settings(ci=150)
@given(packets=st.lists(PACKETS, min_size=1, max_size=8))
def test_random_packets_get_answers_never_a_crash(session, packets):
    before = peak_rss_kib()
    for packet in packets:
        if session[0].over:
            session[0].close()
            session[0] = Session()
        s = session[0]
        reply = s.server.handle(packet)            # property 1: no exception escapes
        if reply is not None:
            assert isinstance(reply, str)
            reply.encode("latin-1")                # property 2: a packet gdb can read
        try:
            s.b.recv(1 << 16)                      # drain what the server sent itself (QStartNoAckMode)
        except BlockingIOError:
            pass
        if not s.over:
            assert s.server.handle("g")[:1] in "0123456789abcdefx"   # property 3: the session answers
    assert peak_rss_kib() - before < RSS_BOUND_KIB   # property 4
