"""GDB Remote Serial Protocol framing: packets, checksums, acks, escapes, hex.

A packet is `$payload#cc` where cc is the modulo-256 sum of the payload bytes
in two lower-case hex digits. Each side acknowledges a packet with `+` (or asks
for it again with `-`) until QStartNoAckMode turns acknowledgements off. A bare
0x03 byte from gdb interrupts a running target. In binary data (X packets,
qXfer replies) the bytes `#`, `$`, `}` and `*` travel as `}` followed by the
byte XOR 0x20. (GDB manual, "Overview" and "Binary data" of the Remote Protocol
appendix.) Everything here is pure: no sockets.
"""

from __future__ import annotations

INTERRUPT = 0x03
ESCAPE = 0x7D
_SPECIAL = frozenset(b"#$}*")


class ProtocolError(ValueError):
    """A malformed packet or argument from gdb."""


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def frame(payload: bytes | str) -> bytes:
    """`$payload#cc` for one packet."""
    if isinstance(payload, str):
        payload = payload.encode("latin-1")
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape(data: bytes) -> bytes:
    """Binary data as it travels in a packet."""
    out = bytearray()
    for b in data:
        if b in _SPECIAL:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            try:
                out.append(next(it) ^ 0x20)
            except StopIteration:
                raise ProtocolError("binary data ends inside an escape") from None
        else:
            out.append(b)
    return bytes(out)


def tohex(data: bytes) -> str:
    return data.hex()


def fromhex(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ProtocolError(f"not hex: {text[:40]!r}") from None


def hexnum(text: str | bytes) -> int:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    try:
        return int(text, 16)
    except ValueError:
        raise ProtocolError(f"not a hex number: {text[:40]!r}") from None


def addr_len(text: str) -> tuple[int, int]:
    """`addr,length` (both hex) as in m, M, X and qXfer packets."""
    addr, sep, length = text.partition(",")
    if not sep:
        raise ProtocolError(f"expected ADDR,LENGTH, got {text[:40]!r}")
    return hexnum(addr), hexnum(length)


def hex_text(text: str) -> str:
    """Text for an `O` console packet or a qRcmd reply: hex of its bytes."""
    return text.encode("utf-8", "replace").hex()


class PacketReader:
    """Splits the byte stream from gdb into items, in order:

    ("packet", payload) for a packet whose checksum matched (or any packet
    once acks are off, as gdb no longer promises a checksum there), ("bad",
    payload) for a checksum mismatch, ("ack", b"") for `+`, ("nak", b"") for
    `-`, and ("interrupt", b"") for 0x03. Stray bytes between packets are
    dropped.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.check = True

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> tuple[str, bytes] | None:
        """The next complete item, or None until more bytes arrive."""
        buf = self.buf
        while buf:
            c = buf[0]
            if c == 0x24:  # '$'
                end = buf.find(b"#", 1)
                if end < 0 or len(buf) < end + 3:
                    return None
                payload = bytes(buf[1:end])
                sent = bytes(buf[end + 1:end + 3])
                del buf[:end + 3]
                try:
                    ok = int(sent, 16) == checksum(payload)
                except ValueError:
                    ok = False
                return ("packet" if ok or not self.check else "bad"), payload
            del buf[0]
            if c == 0x2B:
                return "ack", b""
            if c == 0x2D:
                return "nak", b""
            if c == INTERRUPT:
                return "interrupt", b""
        return None

    def items(self):
        while (item := self.next()) is not None:
            yield item
