"""expect.py: the end-of-run checks, on hand-made outcomes (no VM).

Checks come from real rig text (load_rig_text), so the register names, masks,
ranges and marks are the ones a user writes.
"""

from __future__ import annotations

import pytest

from kvmrig.machine.expect import check_console, check_end, check_memory, check_regs, reg_value
from kvmrig.machine.memory import OutsideMemory
from kvmrig.machine.outcome import Outcome
from kvmrig.rig.load import load_rig_text
from kvmrig.rig.model import ConsoleCheck

HEAD = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
"""


def expect_of(body: str):
    """The Expect of a rig whose `expect:` is `body` (indented YAML)."""
    return load_rig_text(HEAD + "expect:\n" + body, "/rigs/r.yaml").expect


class FakeMemory:
    """Guest memory as a dict of bytes at 0x5000; LookupError elsewhere."""

    def __init__(self, at: int, data: bytes):
        self.at, self.data = at, data

    def read(self, addr: int, length: int) -> bytes:
        if not (self.at <= addr and addr + length <= self.at + len(self.data)):
            raise OutsideMemory(f"{addr:#x}")
        off = addr - self.at
        return self.data[off:off + length]


def plain(addr) -> int:
    return addr.value


def run_end(body: str, outcome: Outcome, memory: FakeMemory | None = None):
    mem = memory or FakeMemory(0, bytes(0x10000))
    return check_end("x86_64", expect_of(body), outcome, mem.read, plain)


def hlt(**kw) -> Outcome:
    return Outcome(exit="hlt", detail="hlt at 0x1000", **kw)


# -- registers -----------------------------------------------------------------

def test_sub_registers_read_their_bits_of_the_full_register():
    regs = {"rax": 0x1122_3344_5566_7788}
    assert reg_value("x86_64", regs, "rax") == 0x1122_3344_5566_7788
    assert reg_value("x86_64", regs, "eax") == 0x5566_7788
    assert reg_value("x86_64", regs, "ax") == 0x7788
    assert reg_value("x86_64", regs, "al") == 0x88
    assert reg_value("x86_64", regs, "ah") == 0x77
    assert reg_value("x86_64", regs, "EAX") == 0x5566_7788
    assert reg_value("x86_64", {"r9": 0xAABB_CCDD_EEFF_0011}, "r9d") == 0xEEFF_0011
    assert reg_value("x86_64", {}, "rax") is None


def test_exact_register_match_passes_and_mismatch_shows_hex_and_decimal():
    outcome = hlt(regs={"rax": 43})
    assert run_end("  regs: {rax: 43}\n", outcome) == []
    (failure,) = run_end("  regs: {rax: 42}\n", outcome)
    assert failure.what == "register rax"
    assert failure.expected == "0x2a (42)"
    assert failure.actual == "0x2b (43)"
    assert "expected 0x2a (42), got 0x2b (43)" in str(failure)
    assert "[/rigs/r.yaml:5]" in str(failure), "the failure points at the rig line that asked, by the path as given"


def test_sub_register_check_ignores_the_other_bits():
    outcome = hlt(regs={"rax": 0xFFFF_FFFF_0000_1234})
    assert run_end("  regs: {ax: 0x1234, eax: 0x1234, al: 0x34, ah: 0x12}\n", outcome) == []
    failures = run_end("  regs: {ah: 0x34}\n", outcome)
    assert [(f.what, f.expected, f.actual) for f in failures] == [("register ah", "0x34 (52)", "0x12 (18)")]


def test_masked_register_check_compares_only_the_masked_bits():
    outcome = hlt(regs={"rflags": 0x246, "cr0": 0x8000_0011})
    assert run_end("  regs:\n    rflags: {mask: 0x40, value: 0x40}\n"
                   "    cr0: {mask: 0x80000001, value: 0x80000001}\n", outcome) == []
    (failure,) = run_end("  regs:\n    rflags: {mask: 0x1, value: 1}\n", outcome)
    assert failure.what == "register rflags"
    assert "mask 0x1" in failure.expected
    assert "0x246" in failure.actual, "the full value is shown next to the masked one"


def test_range_register_check_is_inclusive_and_shows_both_ends():
    body = "  regs: {ecx: {range: [16, 0x20]}}\n"
    assert run_end(body, hlt(regs={"rcx": 16})) == []
    assert run_end(body, hlt(regs={"rcx": 0x20})) == []
    assert run_end(body, hlt(regs={"rcx": 0x1_0000_0018})) == [], "ecx is the low 32 bits"
    (failure,) = run_end(body, hlt(regs={"rcx": 0x21}))
    assert failure.expected == "in [0x10 (16), 0x20 (32)]"
    assert failure.actual == "0x21 (33)"


def test_negative_expected_value_is_twos_complement_of_the_width():
    assert run_end("  regs: {eax: -1}\n", hlt(regs={"rax": 0xFFFF_FFFF})) == []
    assert run_end("  regs: {rax: -2}\n", hlt(regs={"rax": (1 << 64) - 2})) == []


def test_every_register_failure_is_reported_not_just_the_first():
    failures = run_end("  regs: {rax: 1, rbx: 2, rcx: 3}\n", hlt(regs={"rax": 0, "rbx": 2, "rcx": 0}))
    assert [f.what for f in failures] == ["register rax", "register rcx"]


def test_register_the_backend_did_not_report_is_a_failure():
    failures = check_regs("x86_64", "", expect_of("  regs: {cr8: 0}\n").regs, {"rax": 0})
    assert len(failures) == 1 and "not available" in failures[0].actual


# -- memory --------------------------------------------------------------------

def test_memory_hex_and_u32_match():
    mem = FakeMemory(0x5000, bytes.fromhex("34120000 efbeadde"))
    body = "  memory:\n    - {at: 0x5000, hex: '34120000'}\n    - {at: 0x5004, u32: 0xdeadbeef}\n"
    assert run_end(body, hlt(), mem) == []


def test_memory_hex_mismatch_shows_both_byte_strings():
    mem = FakeMemory(0x5000, bytes.fromhex("34129999"))
    (failure,) = run_end("  memory:\n    - {at: 0x5000, hex: '34120000'}\n", hlt(), mem)
    assert failure.what == "memory at 0x5000"
    assert failure.expected == "34 12 00 00"
    assert failure.actual == "34 12 99 99"


def test_memory_u32_mismatch_is_little_endian_in_hex_and_decimal():
    mem = FakeMemory(0x6000, bytes.fromhex("01000000"))
    (failure,) = run_end("  memory:\n    - {at: 0x6000, u32: 0x100}\n", hlt(), mem)
    assert failure.expected == "0x100 (256)"
    assert failure.actual == "1"


def test_memory_outside_guest_memory_is_a_failure_not_an_exception():
    (failure,) = run_end("  memory:\n    - {at: 0x9000, u8: 1}\n", hlt(), FakeMemory(0x5000, bytes(16)))
    assert failure.actual == "not inside guest memory"


def test_memory_named_by_symbol_shows_the_resolved_address():
    checks = expect_of("  memory:\n    - {at: 'sym:result+8', u32: 9}\n").memory
    (failure,) = check_memory("", checks, FakeMemory(0x2000, bytes(16)).read, lambda a: 0x2000 + a.offset)
    assert failure.what == "memory at sym:result+0x8 (0x2008)"


# -- console -------------------------------------------------------------------

def test_console_contains_and_not_contains():
    out = hlt(console=b"boot ok\nPASS\n")
    assert run_end("  console: {contains: PASS, not_contains: FAIL}\n", out) == []
    failures = run_end("  console: {contains: [PASS, DONE], not_contains: [boot, FAIL]}\n", out)
    assert [f.expected for f in failures] == ["to contain 'DONE'", "not to contain 'boot'"]
    assert all("PASS" in f.actual for f in failures), "the console text is shown"


def test_console_regex_searches_with_multiline():
    out = hlt(console=b"cpu0 up\nmem 512M\n")
    assert run_end("  console: {regex: '^mem [0-9]+M$'}\n", out) == []
    (failure,) = run_end("  console: {regex: '^mem [0-9]+G$'}\n", out)
    assert failure.expected == "to match /^mem [0-9]+G$/"


def test_console_excerpt_keeps_the_end_of_long_output():
    text = "x" * 500 + "TAIL"
    (failure,) = check_console(ConsoleCheck(contains=("nope",)), text)
    assert failure.actual.startswith("'...") and failure.actual.endswith("TAIL'")
    assert len(failure.actual) < 220


def test_console_with_invalid_utf8_is_still_checked():
    assert run_end("  console: {contains: PASS}\n", hlt(console=b"\xffPASS\xfe")) == []


# -- port writes ----------------------------------------------------------------

def test_port_writes_must_match_in_order():
    out = hlt(port_writes=[(0x80, 1, 1), (0x70, 1, 0x0A), (0x80, 1, 2), (0x80, 1, 0x10)])
    assert run_end("  port_writes: {0x80: [1, 2, 0x10], 0x70: [0x0a]}\n", out) == []
    (failure,) = run_end("  port_writes: {0x80: [2, 1, 0x10]}\n", out)
    assert failure.what == "port_writes to 0x80"
    assert failure.expected == "[0x2, 0x1, 0x10]"
    assert failure.actual == "[0x1, 0x2, 0x10]"


def test_port_writes_missing_or_extra_values_fail():
    out = hlt(port_writes=[(0x80, 1, 1)])
    assert len(run_end("  port_writes: {0x80: [1, 2]}\n", out)) == 1
    assert len(run_end("  port_writes: {0x80: []}\n", out)) == 1
    assert run_end("  port_writes: {0x81: []}\n", out) == []


# -- exit and exit_code ----------------------------------------------------------

@pytest.mark.parametrize("exit", ["hlt", "exit-code", "system-off"])
def test_no_exit_key_accepts_a_normal_end(exit):
    assert run_end("  regs: {}\n", Outcome(exit=exit, exit_code=0 if exit == "exit-code" else None)) == []


@pytest.mark.parametrize("exit", ["shutdown", "mmio", "io", "timeout", "reset", "unhandled"])
def test_no_exit_key_fails_an_abnormal_end_with_its_detail(exit):
    (failure,) = run_end("  regs: {}\n", Outcome(exit=exit, detail="why it stopped"))
    assert failure.what == "exit"
    assert failure.expected == "hlt or exit-code or system-off"
    assert failure.actual == f"{exit} (why it stopped)"


def test_named_exit_must_be_that_exit():
    assert run_end("  exit: timeout\n", Outcome(exit="timeout")) == []
    assert run_end("  exit: shutdown\n", Outcome(exit="shutdown")) == []
    (failure,) = run_end("  exit: timeout\n", hlt())
    assert (failure.expected, failure.actual) == ("timeout", "hlt (hlt at 0x1000)")


def test_exit_code_implies_exit_code_exit():
    assert run_end("  exit_code: 42\n", Outcome(exit="exit-code", exit_code=42)) == []
    failures = run_end("  exit_code: 0\n", hlt())
    assert [f.what for f in failures] == ["exit", "exit_code"]
    assert failures[0].expected == "exit-code"
    assert failures[1].actual == "no exit code (exit hlt)"


def test_exit_code_beside_exit_hlt_is_checked_only_when_an_exit_device_was_used():
    # The contract's own example pairs `exit: hlt` with `exit_code: 0`.
    body = "  exit: hlt\n  exit_code: 0\n"
    assert run_end(body, hlt()) == []
    failures = run_end(body, Outcome(exit="exit-code", exit_code=3))
    assert [(f.what, f.actual) for f in failures] == [("exit", "exit-code"), ("exit_code", "3")]


def test_wrong_exit_code_shows_hex_and_decimal():
    (failure,) = run_end("  exit: exit-code\n  exit_code: 42\n", Outcome(exit="exit-code", exit_code=0x11))
    assert (failure.what, failure.expected, failure.actual) == ("exit_code", "0x2a (42)", "0x11 (17)")


def test_every_kind_of_failure_is_collected_in_one_pass():
    body = ("  exit: hlt\n  regs: {rax: 1}\n  memory:\n    - {at: 0, u8: 1}\n"
            "  console: {contains: X}\n  port_writes: {0x80: [1]}\n")
    failures = run_end(body, Outcome(exit="timeout", regs={"rax": 0}))
    assert [f.what for f in failures] == ["exit", "register rax", "memory at 0x0", "console", "port_writes to 0x80"]
