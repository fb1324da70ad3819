"""Basic blocks of code without line tables: the recursive descent finds
leaders only where code certainly starts, in the mode the CPU starts in."""

from __future__ import annotations

from kvmrig.coverage.leaders import find_blocks


def test_x86_64_loop():
    # 0x1000: mov ecx, 3 / 0x1005: dec ecx / jnz 0x1005 / hlt / (data) ff ff
    code = bytes.fromhex("b903000000" "ffc9" "75fc" "f4" "ffff")
    blocks = find_blocks("x86_64", "long", [(0x1000, code)], [0x1000])
    assert blocks == {0x1000: 0x1005, 0x1005: 0x1009, 0x1009: 0x100a}   # entry, jump target, fall-through


def test_no_leader_after_a_call_or_past_an_unconditional_jump():
    # 0x1000: call 0x100a / jmp 0x100b / (data) cc cc cc / 0x100a: ret / 0x100b: hlt
    code = bytes.fromhex("e805000000" "eb04" "cccccc" "c3" "f4")
    blocks = find_blocks("x86_64", "long", [(0x1000, code)], [0x1000])
    assert blocks == {0x1000: 0x1007, 0x100a: 0x100b, 0x100b: 0x100c}
    assert 0x1005 not in blocks and 0x1007 not in blocks


def test_real_mode_addresses_are_segment_relative():
    # CS base 0xffff0000, IP 0xfff0: jmp short +2 (to IP 0xfff4), 2 bytes skipped, hlt
    code = bytes.fromhex("eb02" "9090" "f4")
    blocks = find_blocks("x86_64", "reset", [(0xfffffff0, code)], [0xfffffff0], cs_base=0xffff0000)
    assert blocks == {0xfffffff0: 0xfffffff2, 0xfffffff4: 0xfffffff5}


def test_a_mode_switch_stops_the_descent():
    # mov cr0, eax / jmp 0x10 (what follows may be other-mode code)
    code = bytes.fromhex("0f22c0" "eb00")
    assert find_blocks("x86_64", "protected", [(0x1000, code)], [0x1000]) == {0x1000: 0x1003}


def test_arm64():
    # 0x0: mov x0, #2 / 0x4: subs x0, x0, #1 / b.ne 0x4 / hvc #0 / (data)
    code = bytes.fromhex("400080d2" "000400f1" "e1ffff54" "020000d4" "ffffffff")
    blocks = find_blocks("arm64", "el1", [(0x0, code)], [0x0])
    assert blocks == {0x0: 0x4, 0x4: 0xc, 0xc: 0x10}


def test_entries_outside_the_image_are_ignored():
    assert find_blocks("x86_64", "long", [(0x1000, b"\xf4")], [0x2000]) == {}
