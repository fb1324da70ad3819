"""The GDB remote server for one rig, and the commands that start it.

One gdb connects over TCP; the server answers its packets from a
Controller (kvmrig.gdb.controller). Everything runs on the main thread (the
KVM backend's timeouts use SIGALRM): while the guest runs, the controller
asks between slices whether gdb sent an interrupt (0x03).

When the rig's run ends, gdb gets console lines (`O` packets) with the exit
and the verdict, then a stop (SIGTRAP for an orderly end such as hlt; SEGV
for a triple fault, BUS for an unclaimed MMIO or port access, ALRM for the
timeout), so the final registers and memory can still be read. Continuing
once more ends the session: gdb sees the inferior exit with status 0 if the
rig passed, 1 if it failed. Detaching (or quitting gdb, which detaches: the
server says it attached to an existing target) lets the rig run to its end;
`kill` ends it on the spot.

Threads: every vCPU the controller shows is a thread, id = vCPU index + 1
(x86_64 KVM with `cpus: N`; one thread otherwise), in all-stop mode. A stop
reply names the vCPU that stopped (`thread:N;`) and makes it the current
thread; `Hg` selects whose registers g/G/p/P read and write;
qThreadExtraInfo says "vCPU 1 (halted)". Continuing (`c`, `vCont;c`) runs
every vCPU; a single-step (`s`, `vCont;s:N`, also `vCont;s:N;c`) runs only
the vCPU stepped while the others stay stopped (gdb's `set
scheduler-locking step`), and `vCont;c:N` continues only vCPU N.
"""

from __future__ import annotations

import select
import socket
import sys
import traceback
from collections import deque
from typing import TextIO

from kvmrig.arch import registers
from kvmrig.gdb.controller import Controller, StopInfo
from kvmrig.gdb.protocol import (PacketReader, ProtocolError, addr_len, escape, frame, fromhex, hex_text,
                                 hexnum, unescape)
from kvmrig.gdb.targets import Target, target_for
from kvmrig.backends.select import backend_for
from kvmrig.errors import KvmrigError, NoBackend, NoDebugSlot, OutsideMemory, RigError
from kvmrig.machine.plan import prepare

PACKET_SIZE = 0x4000
MAX_MEMORY = (PACKET_SIZE - 16) // 2
Z_KINDS = {"0": "sw", "1": "hw", "2": "write", "3": "read", "4": "access"}
WATCH_WORD = {"write": "watch", "read": "rwatch", "access": "awatch"}
SIGINT, SIGILL, SIGTRAP, SIGBUS, SIGSEGV, SIGALRM = 2, 4, 5, 10, 11, 14   # gdb's signal numbers
END_SIGNAL = {"shutdown": SIGSEGV, "mmio": SIGBUS, "io": SIGBUS, "timeout": SIGALRM, "unhandled": SIGILL}


class Connection:
    """Packets to and from one gdb over a socket (acks until QStartNoAckMode)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = PacketReader()
        self.ack = True
        self.closed = False
        self.interrupts = 0
        self.pending: deque[bytes] = deque()
        self.last = b""

    def _fill(self, timeout: float | None) -> None:
        if self.closed:
            return
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self.reader.feed(data)
        for kind, payload in self.reader.items():
            if kind == "packet":
                if self.ack:
                    self._raw(b"+")
                self.pending.append(payload)
            elif kind == "bad":
                if self.ack:
                    self._raw(b"-")
            elif kind == "nak":
                if self.last:
                    self._raw(self.last)
            elif kind == "interrupt":
                self.interrupts += 1

    def _raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def recv(self) -> bytes | None:
        """The next packet (blocking); None once gdb has gone."""
        while not self.pending:
            if self.closed:
                return None
            self._fill(None)
        return self.pending.popleft()

    def send(self, payload: str | bytes) -> None:
        self.last = frame(payload)
        self._raw(self.last)

    def no_ack(self) -> None:
        self.ack = False
        self.reader.check = False

    def interrupted(self) -> bool:
        """Whether gdb asked to interrupt (or went away) since the last call."""
        self._fill(0)
        if self.interrupts:
            self.interrupts = 0
            return True
        return self.closed


class GdbServer:
    """Answers one gdb's packets for one Controller."""

    def __init__(self, ctl: Controller, conn: Connection, out: TextIO = sys.stdout):
        self.ctl = ctl
        self.conn = conn
        self.out = out
        self.target: Target = target_for(ctl.rig.arch, set(ctl.read_regs()))
        self.xml = self.target.xml().encode()
        self.gdb_features: set[str] = set()
        self.action: str | None = None   # how the session ended: detach | kill | exited | closed
        self.cpus = ctl.cpus                  # threads: vCPU i is thread i + 1
        self.current = ctl.last.cpu           # the vCPU of the last stop (gdb's current thread)
        self.general = self.current           # Hg: whose registers g/G/p/P address
        self.resumed = self.current           # Hc: whom `s` steps

    # The loop ---------------------------------------------------------------
    def serve(self) -> str:
        while self.action is None:
            packet = self.conn.recv()
            if packet is None:
                self.action = "closed"
                break
            reply = self.handle(packet.decode("latin-1"))
            if reply is not None:
                self.conn.send(reply.encode("latin-1"))
        return self.action

    def handle(self, p: str) -> str | None:
        try:
            return self._handle(p)
        except (ProtocolError, ValueError, IndexError, OverflowError) as e:
            self._say(f"bad packet {p[:40]!r}: {e}")
            return "E01"
        except KvmrigError as e:  # the backend refused what the packet asked (KVM_SET_SREGS: EINVAL)
            self._say(f"packet {p[:40]!r} refused: {e}")
            return "E01"

    def _say(self, text: str) -> None:
        print(f"kvmrig gdb: {text}", file=self.out, flush=True)

    def _handle(self, p: str) -> str | None:
        c = p[:1]
        if p == "?":
            return self.stop_reply(self.ctl.last)
        if c in ("c", "s"):
            return self.resume(c == "s", p[1:])
        if c in ("C", "S"):  # with a signal for the guest, which kvmrig does not deliver
            return self.resume(c == "S", p[1:].partition(";")[2])
        if c == "g":
            return self.target.encode_all(self.ctl.read_regs(self.general))
        if c == "G":
            return self.write_all(p[1:])
        if c == "p":
            i = hexnum(p[1:])
            if i >= len(self.target.regs):
                return "E45"
            return self.target.encode(i, self.ctl.read_regs(self.general))
        if c == "P":
            name, _, value = p[1:].partition("=")
            return self.write_one(hexnum(name), value)
        if c == "m":
            addr, length = addr_len(p[1:])
            data = self.ctl.read_memory(addr, min(length, MAX_MEMORY))
            return data.hex() if data or not length else "E14"
        if c == "M":
            where, _, data = p[1:].partition(":")
            addr, length = addr_len(where)
            body = fromhex(data)
            if len(body) != length:
                return "E01"
            return self._write_memory(addr, body)
        if c == "X":
            where, _, data = p[1:].partition(":")
            addr, length = addr_len(where)
            body = unescape(data.encode("latin-1"))
            if len(body) != length:
                return "E01"
            return self._write_memory(addr, body)
        if c in ("Z", "z"):
            return self.point(c == "Z", p[1:])
        if p.startswith("vCont"):
            return self.vcont(p)
        if p.startswith("qSupported"):
            _, _, theirs = p.partition(":")
            self.gdb_features = {f[:-1] for f in theirs.split(";") if f.endswith("+")}
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;QStartNoAckMode+;"
                    "swbreak+;hwbreak+;vContSupported+")
        if p == "QStartNoAckMode":
            self.conn.send(b"OK")
            self.conn.no_ack()
            return None
        if p.startswith("qXfer:features:read:"):
            annex, _, where = p[len("qXfer:features:read:"):].partition(":")
            if annex != "target.xml":
                return "E00"
            offset, length = addr_len(where)
            chunk = self.xml[offset:offset + length]
            more = offset + length < len(self.xml)
            return ("m" if more else "l") + escape(chunk).decode("latin-1")
        if p == "qC":
            return f"QC{self.current + 1:x}"
        if p.startswith("qAttached"):
            return "1"  # so that quitting gdb detaches: the rig runs to its end and gives its verdict
        if p == "qfThreadInfo":
            return "m" + ",".join(f"{i + 1:x}" for i in range(self.cpus))
        if p == "qsThreadInfo":
            return "l"
        if p.startswith("qThreadExtraInfo,"):
            cpu = self.thread(p[len("qThreadExtraInfo,"):])
            if cpu is None:
                return "E01"
            status = self.ctl.cpu_status(cpu)
            return hex_text(f"vCPU {cpu}" + (f" ({status})" if status else ""))
        if p.startswith("qRcmd,"):
            return hex_text(self.monitor(fromhex(p[6:]).decode("utf-8", "replace").strip()))
        if p == "qSymbol::":
            return "OK"
        if c == "H":
            return self.select(p[1:2], p[2:])
        if c == "T":
            return "OK" if self.thread(p[1:]) is not None else "E01"
        if p.startswith("D"):
            self.action = "detach"
            return "OK"
        if p == "k":
            self.action = "kill"
            return None
        if p.startswith("vKill"):
            self.action = "kill"
            return "OK"
        return ""  # not supported

    # Threads (vCPUs) -------------------------------------------------------------
    def thread(self, text: str) -> int | None:
        """The vCPU of gdb's thread id `text` ("N" or "pP.N", hex); 0 and -1
        ("any", "all") mean the current thread; None if there is no such thread."""
        text = text.rpartition(".")[2] if text.startswith("p") else text
        if text in ("0", "-1"):
            return self.current
        try:
            n = int(text, 16)
        except ValueError:
            return None
        return n - 1 if 1 <= n <= self.cpus else None

    def select(self, op: str, tid: str) -> str:
        """`Hg` / `Hc`: the thread later register packets / `s` and `c` address."""
        cpu = self.thread(tid)
        if cpu is None or op not in ("g", "c"):
            return "E01"
        if op == "g":
            self.general = cpu
        else:
            self.resumed = cpu
        return "OK"

    # Registers and memory ------------------------------------------------------
    def write_all(self, text: str) -> str:
        regs = self.ctl.read_regs(self.general)
        update: dict[str, int] = {}
        for i, value in enumerate(self.target.decode_all(text)):
            if value is None:
                continue
            for name, new in self.target.update(i, value, regs).items():
                if regs.get(name) != new:
                    update[name] = new
        self._check_widths(update)
        self.ctl.write_regs(update, self.general)
        return "OK"

    def _check_widths(self, update: dict[str, int]) -> None:
        """gdb's registers can be wider than the machine's (a segment selector
        is 32 bits in gdb, 16 in the CPU): refuse, before anything is written."""
        for name, value in update.items():
            field = registers.lookup(self.ctl.rig.arch, name)
            if field is not None and value >> field.width:
                raise ProtocolError(f"{value:#x} does not fit {name}, a {field.width}-bit register")

    def write_one(self, i: int, text: str) -> str:
        if i >= len(self.target.regs):
            return "E45"
        value = self.target.decode(i, text)
        if value is None:
            return "E01"
        update = self.target.update(i, value, self.ctl.read_regs(self.general))
        if not update:
            return "E01"  # a register kvmrig cannot write (x87)
        self._check_widths(update)
        self.ctl.write_regs(update, self.general)
        return "OK"

    def _write_memory(self, addr: int, data: bytes) -> str:
        return "OK" if self.ctl.write_memory(addr, data) else "E14"

    # Breakpoints and watchpoints ----------------------------------------------
    def point(self, insert: bool, args: str) -> str:
        fields = args.split(";", 1)[0].split(",")
        if len(fields) < 3 or fields[0] not in Z_KINDS:
            return ""
        kind, addr, length = Z_KINDS[fields[0]], hexnum(fields[1]), hexnum(fields[2])
        if kind in ("sw", "hw"):
            length = 1
        elif length <= 0:
            return "E01"
        if addr + length > 1 << 64:  # no address space is wider
            return "E01"
        try:
            if insert:
                self.ctl.insert(kind, addr, length)
            else:
                self.ctl.remove(kind, addr, length)
        except NoDebugSlot as e:
            self._say(f"cannot insert a {kind} point at {addr:#x}: {e}")
            return "E28"
        except (OutsideMemory, LookupError):
            return "E14"
        return "OK"

    # Running -------------------------------------------------------------------
    def vcont(self, p: str) -> str:
        """vCont: a step of one thread wins (only it runs; its `c` for the others
        is not followed: module doc); else `c` for every thread, or for one.
        Actions for threads that do not exist are left out."""
        if p == "vCont?":
            return "vCont;c;C;s;S"
        steps: list[int] = []
        conts: list[int | None] = []   # None: every thread
        for action in p.split(";")[1:]:
            verb, _, tid = action.partition(":")
            every = not tid or tid in ("-1", "p-1.-1") or tid.endswith(".-1")
            cpu = None if every else self.thread(tid)
            if not every and cpu is None:
                continue
            if verb[:1] in ("s", "S"):
                steps.append(self.resumed if every else cpu)
            elif verb[:1] in ("c", "C"):
                conts.append(cpu)
        if steps:
            return self.resume(True, "", steps[0])
        if conts:
            alone = None not in conts and len(set(conts)) == 1 and self.cpus > 1
            return self.resume(False, "", conts[0] if alone else self.current, alone)
        return "E01"

    def resume(self, step: bool, addr: str, cpu: int | None = None, alone: bool = False) -> str | None:
        ctl = self.ctl
        if ctl.ended:
            # Continuing past the end: the session is over.
            self.action = "exited"
            return f"W{0 if not ctl.outcome.failures else 1:02x}"
        if cpu is None:
            cpu = self.resumed if step else self.current
        if addr:
            self.target_pc(hexnum(addr), cpu)
        self.conn.interrupts = 0
        if self.cpus > 1:
            info = ctl.resume(step, self.conn.interrupted, cpu, alone)
        else:
            info = ctl.resume(step, self.conn.interrupted)
        if info.reason == "end":
            for line in end_lines(ctl):
                self.conn.send("O" + hex_text(line + "\n"))
        return self.stop_reply(info)

    def target_pc(self, addr: int, cpu: int = 0) -> None:
        self.ctl.write_regs({self.target.pc: addr}, cpu)

    def stop_reply(self, info: StopInfo) -> str:
        sig = SIGTRAP
        extra = ""
        if info.reason == "interrupt":
            sig = SIGINT
        elif info.reason == "end":
            sig = END_SIGNAL.get(self.ctl.outcome.exit, SIGTRAP)
        elif info.reason == "sw" and "swbreak" in self.gdb_features:
            extra = "swbreak:;"
        elif info.reason == "hw" and "hwbreak" in self.gdb_features:
            extra = "hwbreak:;"
        elif info.reason == "watch" and info.point is not None:
            extra = f"{WATCH_WORD[info.point.kind]}:{info.point.addr:x};"
        if 0 <= info.cpu < self.cpus:   # the stopped vCPU is gdb's current thread from now on
            self.current = self.general = self.resumed = info.cpu
        return f"T{sig:02x}{extra}thread:{self.current + 1:x};"

    # monitor ------------------------------------------------------------------
    def monitor(self, command: str) -> str:
        ctl = self.ctl
        if command in ("", "help"):
            return ("kvmrig monitor commands:\n"
                    "  monitor status   where the run is, and the verdict once it ended\n"
                    "  monitor hits     hits of the rig's own breakpoints and watchpoints\n"
                    "  monitor console  what the guest printed so far\n")
        if command == "status":
            if ctl.ended:
                return "\n".join(end_lines(ctl)) + "\n"
            cpus = "".join(f"  vCPU {i} (thread {i + 1}): {ctl.cpu_status(i) or '?'}\n" for i in range(self.cpus)
                           if self.cpus > 1)
            return (f"rig {ctl.rig.name}: running, stopped by the debugger; {ctl.exits} exits, "
                    f"{ctl.seconds:.3f}s of guest time, {ctl.budget:.3f}s of its timeout left\n" + cpus)
        if command == "hits":
            points = ctl.session.debug.points
            if not points:
                return "the rig has no breakpoints or watchpoints\n"
            return "".join(f"{p.label}: {p.hits} hit(s)\n" for p in points)
        if command == "console":
            return bytes(ctl.session.bus.console.data).decode("utf-8", "replace")
        return f"unknown monitor command {command!r}; try `monitor help`\n"


def end_lines(ctl: Controller) -> list[str]:
    """The end of the run and the verdict, as gdb's console shows them."""
    out = ctl.outcome
    code = f" (code {out.exit_code})" if out.exit_code is not None else ""
    lines = [f"kvmrig: the rig's run ended: exit {out.exit}{code}" + (f": {out.detail}" if out.detail else "")]
    if out.failures:
        lines.append(f"kvmrig: rig {ctl.rig.name} FAILED:")
        lines.extend(f"kvmrig:   {f}" for f in out.failures)
    else:
        lines.append(f"kvmrig: rig {ctl.rig.name} passed")
    lines.append("kvmrig: the final registers and memory can be read; continue once more to end the session")
    return lines


# Listening and the commands ------------------------------------------------------

def parse_address(text: str) -> tuple[str, int]:
    """`[HOST]:PORT` or `PORT`; the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected [HOST]:PORT, not {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range")
    return host, number


def listen(address: str) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_rig(rig, address: str, backend: str = "auto", at_end: bool = False, out: TextIO = sys.stdout) -> int:
    """Run `rig` under gdb: stopped at its entry (or, with at_end, at the end
    of a run to its end), served on `address` to one gdb. Returns the exit
    status: 0 the rig passed, 1 it failed, 2 it could not run or was killed
    before its end."""
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        plan = prepare(rig)
        name, factory = backend_for(rig, backend)
    except (RigError, NoBackend) as e:
        say(f"kvmrig: cannot debug {rig.path}: {e}")
        return 2
    try:
        sock = listen(address)
    except (OSError, ValueError) as e:
        say(f"kvmrig: cannot listen on {address}: {e}")
        return 2
    options = None
    if rig.start is not None and rig.start.parent is not None:   # run its parent first, for the point
        from kvmrig.machine.points import PointStore
        from kvmrig.machine.session import RunOptions
        from kvmrig.runner import _parent_in_process
        store, blocked = _parent_in_process(rig, backend)
        if blocked:
            say(f"kvmrig: cannot debug {blocked}")
            sock.close()
            return 2
        options = RunOptions(points=PointStore(store))
    ctl = None
    try:
        ctl = Controller(plan, factory, options)
        ctl.start()
        where = f"{ctl.pc():#x}"
        if at_end:
            ctl.run_to_end()
            where = f"its end (exit {ctl.outcome.exit})"
        host, port = sock.getsockname()[:2]
        gdb = target_for(rig.arch, set()).gdb_names
        target = f"{host}:{port}" if host not in ("127.0.0.1", "0.0.0.0", "::") else f":{port}"
        threads = f"; {ctl.cpus} vCPUs: gdb threads 1-{ctl.cpus}" if ctl.cpus > 1 else ""
        say(f"kvmrig: rig {rig.name} ({rig.arch}, {name}{threads}) stopped at {where}")
        say(f"kvmrig: connect with: {gdb} -ex 'target remote {target}'")
        say(f"kvmrig: gdb server listening on {host}:{port}")
        conn_sock, peer = sock.accept()
        sock.close()
        conn_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        say(f"kvmrig: gdb connected from {peer[0]}:{peer[1]}")
        with conn_sock:
            server = GdbServer(ctl, Connection(conn_sock), out)
            action = server.serve()
        if action == "kill" and not ctl.ended:
            say("kvmrig: killed by gdb before the rig's run ended: no verdict")
            return 2
        if not ctl.ended:
            say("kvmrig: gdb " + ("detached" if action == "detach" else "went away") + "; running the rig to its end")
            ctl.run_to_end()
        return report_end(ctl, say)
    except KvmrigError as e:
        say(f"kvmrig: {rig.path}: {e}")
        return 2
    except Exception:
        say(f"kvmrig: internal error in kvmrig while debugging {rig.path}:\n{traceback.format_exc()}")
        return 2
    finally:
        sock.close()
        if ctl is not None:
            ctl.close()


def report_end(ctl: Controller, say) -> int:
    for line in end_lines(ctl)[:-1]:
        say(line)
    return 1 if ctl.outcome.failures else 0
