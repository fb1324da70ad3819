"""The GDB remote protocol, pure: framing, checksums, escapes, and the register
layout and target description per arch. No sockets, no KVM.

Packet bytes below were captured from Debian's gdb 13 (`set debug remote 1`)
talking to kvmrig, so the checksums are gdb's own.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from kvmrig.gdb.protocol import (PacketReader, ProtocolError, addr_len, checksum, escape, frame, fromhex,
                                 hex_text, hexnum, unescape)
from kvmrig.gdb.targets import target_for

# -- framing ---------------------------------------------------------------------


@pytest.mark.parametrize("payload, wire", [
    (b"g", b"$g#67"),
    (b"?", b"$?#3f"),
    (b"vMustReplyEmpty", b"$vMustReplyEmpty#3a"),
    (b"QStartNoAckMode", b"$QStartNoAckMode#b0"),
    (b"Hg0", b"$Hg0#df"),
    (b"vCont;s:1;c", b"$vCont;s:1;c#c1"),
    (b"z3,5000,4", b"$z3,5000,4#fe"),
    (b"", b"$#00"),
])
def test_frame_matches_what_gdb_sends(payload, wire):
    assert frame(payload) == wire
    assert frame(payload.decode()) == wire


def test_checksum_is_the_byte_sum_modulo_256():
    assert checksum(b"") == 0
    assert checksum(b"\xff\x02") == 0x01
    assert frame(b"OK") == b"$OK#9a"


def test_reader_splits_acks_packets_and_interrupts_in_order():
    r = PacketReader()
    r.feed(b"+$g#67-\x03$?#3f")
    assert list(r.items()) == [("ack", b""), ("packet", b"g"), ("nak", b""), ("interrupt", b""),
                               ("packet", b"?")]
    assert r.next() is None


def test_reader_waits_for_a_packet_split_over_reads():
    r = PacketReader()
    for piece in (b"$qSupp", b"orted:swbreak+", b"#", b"8"):
        r.feed(piece)
        assert r.next() is None
    r.feed(b"b")
    assert r.next() == ("packet", b"qSupported:swbreak+")


def test_reader_reports_a_bad_checksum_until_acks_are_off():
    r = PacketReader()
    r.feed(b"$g#00")
    assert r.next() == ("bad", b"g")
    r.check = False   # QStartNoAckMode: gdb no longer promises a checksum
    r.feed(b"$g#00")
    assert r.next() == ("packet", b"g")


def test_reader_drops_stray_bytes_between_packets():
    r = PacketReader()
    r.feed(b"junk\n$m1000,4#8e")
    assert list(r.items()) == [("packet", b"m1000,4")]


def test_reader_keeps_binary_payloads_intact():
    body = b"X5000,4:" + escape(b"\x07#$}")
    r = PacketReader()
    r.feed(frame(body))
    kind, payload = r.next()
    assert kind == "packet"
    assert unescape(payload[len(b"X5000,4:"):]) == b"\x07#$}"


# -- escapes and numbers ---------------------------------------------------------

def test_escape_covers_the_four_special_bytes():
    assert escape(b"a#b$c}d*e") == b"a}\x03b}\x04c}]d}\x0ae"
    assert unescape(escape(bytes(range(256)))) == bytes(range(256))


def test_unescape_refuses_a_dangling_escape():
    with pytest.raises(ProtocolError):
        unescape(b"abc}")


def test_numbers_and_ranges():
    assert hexnum("1f") == 31
    assert hexnum(b"0") == 0
    assert addr_len("40000000,ffb") == (0x40000000, 0xFFB)
    assert fromhex("0a0b") == b"\n\x0b"
    assert hex_text("OK\n") == "4f4b0a"
    for bad in (lambda: hexnum("zz"), lambda: addr_len("1000"), lambda: fromhex("abc")):
        with pytest.raises(ProtocolError):
            bad()


# -- x86_64 registers --------------------------------------------------------------

X86_REGS = {**{n: 0 for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp")},
            **{f"r{n}": n for n in range(8, 16)},
            "rax": 0x1122334455667788, "rsp": 0x8000, "rbp": 0x7FF0, "rip": 0x1000, "rflags": 0x1_0000_0246,
            "cs": 0x8, "ds": 0x18, "es": 0x18, "fs": 0x18, "gs": 0x18, "ss": 0x18,
            "cr0": 0x80010033, "cr2": 0, "cr3": 0x1FA000, "cr4": 0x620, "cr8": 0, "efer": 0x500}


def x86():
    return target_for("x86_64", set(X86_REGS))


def test_x86_register_order_is_gdbs_amd64_order():
    names = [r.name for r in x86().regs]
    assert names[:24] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                          "rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs"]
    assert names[24:32] == [f"st{n}" for n in range(8)]
    assert names[32:40] == ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
    assert names[40:] == ["cr0", "cr2", "cr3", "cr4", "cr8", "efer"]


def test_x86_g_packet_layout_and_little_endian_values():
    t = x86()
    g = t.encode_all(X86_REGS)
    sizes = [r.bits // 8 for r in t.regs]
    assert len(g) == 2 * sum(sizes) == 2 * (16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 6 * 8)
    assert g[:16] == "8877665544332211"                       # rax, little-endian
    at = 2 * sum(sizes[:16])
    assert g[at:at + 16] == "0010000000000000"                # rip 0x1000
    assert g[at + 16:at + 24] == "46020000"                   # eflags: rflags' low 32 bits
    assert g[at + 24:at + 32] == "08000000"                   # cs, 32 bits in gdb
    st0 = 2 * sum(sizes[:24])
    assert g[st0:st0 + 20] == "x" * 20                        # x87: unavailable


def test_x86_unknown_register_names_stay_out_of_the_description():
    t = target_for("x86_64", {"rax", "rip"})   # a backend without control registers
    assert "cr0" not in t.index
    assert not any(f.name == "org.kvmrig.x86.control" for f in t.features)


def test_x86_writes_keep_the_bits_gdb_does_not_see():
    t = x86()
    assert t.update(t.index["eflags"], 0x202, X86_REGS) == {"rflags": 0x1_0000_0202}
    assert t.update(t.index["rax"], 5, X86_REGS) == {"rax": 5}
    assert t.update(t.index["st0"], 0, X86_REGS) == {}           # kvmrig cannot write x87
    assert t.decode(t.index["rip"], "3412000000000000") == 0x1234
    assert t.decode(t.index["st0"], "x" * 20) is None
    with pytest.raises(ProtocolError):
        t.decode(t.index["rip"], "3412")


def test_x86_decode_all_round_trips_and_accepts_a_short_g():
    t = x86()
    g = t.encode_all(X86_REGS)
    values = t.decode_all(g)
    assert values[t.index["rax"]] == X86_REGS["rax"]
    assert values[t.index["st3"]] is None
    assert values[t.index["efer"]] == 0x500
    assert len(t.decode_all(g[:32])) == 2


def _parse(xml: str) -> ET.Element:
    return ET.fromstring(xml.split("\n", 2)[2])   # past the XML declaration and DOCTYPE


def test_x86_description_names_gdbs_features_in_register_order():
    t = x86()
    root = _parse(t.xml())
    assert root.findtext("architecture") == "i386:x86-64"
    features = [f.get("name") for f in root.findall("feature")]
    assert features == ["org.gnu.gdb.i386.core", "org.kvmrig.x86.control"]
    regs = root.findall("feature/reg")
    assert [r.get("name") for r in regs] == [r.name for r in t.regs]
    assert [int(r.get("regnum")) for r in regs] == list(range(len(t.regs)))
    assert root.find("feature/reg[@name='eflags']").get("type") == "i386_eflags"
    assert root.find("feature/flags[@id='i386_eflags']") is not None


# -- arm64 registers ------------------------------------------------------------------

ARM_REGS = {**{f"x{n}": n for n in range(31)}, "sp": 0x40010000, "pc": 0x40000000, "pstate": 0x3C5,
            **{f"v{n}": 0 for n in range(32)}, "v1": (1 << 127) | 0xAB, "fpsr": 0x10, "fpcr": 0}


def test_arm64_core_order_and_cpsr():
    t = target_for("arm64", set(ARM_REGS))
    names = [r.name for r in t.regs]
    assert names[:34] == [f"x{n}" for n in range(31)] + ["sp", "pc", "cpsr"]
    assert names[34:] == [f"v{n}" for n in range(32)] + ["fpsr", "fpcr"]
    g = t.encode_all(ARM_REGS)
    assert g[:16] == "0000000000000000" and g[16:32] == "0100000000000000"
    cpsr = t.index["cpsr"]
    assert t.encode(cpsr, ARM_REGS) == "c5030000"
    assert t.encode(t.index["v1"], ARM_REGS) == "ab" + "00" * 14 + "80"
    assert t.update(cpsr, 0x3C4, {"pstate": 0x1_0000_03C5}) == {"pstate": 0x1_0000_03C4}
    assert t.gdb_names == "gdb-multiarch" and t.pc == "pc"


def test_arm64_description_core_then_fpu_only_with_vector_registers():
    full = _parse(target_for("arm64", set(ARM_REGS)).xml())
    assert full.findtext("architecture") == "aarch64"
    assert [f.get("name") for f in full.findall("feature")] == ["org.gnu.gdb.aarch64.core",
                                                                 "org.gnu.gdb.aarch64.fpu"]
    assert full.find("feature/union[@id='aarch64v']") is not None
    core = _parse(target_for("arm64", {"x0", "pc", "sp", "pstate"}).xml())
    assert [f.get("name") for f in core.findall("feature")] == ["org.gnu.gdb.aarch64.core"]


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError):
        target_for("riscv64", set())
