"""The value parsers: every accepted form, and rejections with usable messages."""

from __future__ import annotations

import pytest

from kvmrig.errors import Mark
from kvmrig.rig import values
from kvmrig.rig.values import (ValueProblem, parse_address, parse_count, parse_duration, parse_hex, parse_int,
                               parse_size, parse_uint, show, to_width)

MARK = Mark("r.yaml", 3, 5)


@pytest.mark.parametrize("text, expected", [
    (0, 0), (4096, 4096), (-1, -1), (4096.0, 4096), ("1234", 1234), ("0x7c00", 0x7C00), ("0X7C00", 0x7C00),
    ("0xffff_0000", 0xFFFF0000), ("0b101", 5), ("0o17", 15), ("1_000", 1000), ("-0x10", -16), ("+5", 5),
    ("0755", 755), (2**100, 2**100),
])
def test_parse_int_accepts(text, expected):
    assert parse_int(text) == expected


@pytest.mark.parametrize("bad", [
    "", "0x", "x10", "12a", "0x_ff", "1__0", "1_", " 12", "12 ", "0b2", "1.5", 1.5, True, None, [], {}, "٣",
])
def test_parse_int_rejects(bad):
    with pytest.raises(ValueProblem, match="is not a number"):
        parse_int(bad)


def test_parse_uint_rejects_negative():
    with pytest.raises(ValueProblem, match="negative"):
        parse_uint("-0x10")


@pytest.mark.parametrize("text, expected", [
    (4096, 4096), ("4096", 4096), ("0x1000", 0x1000), ("64K", 64 << 10), ("64k", 64 << 10), ("2M", 2 << 20),
    ("1G", 1 << 30), ("0x10K", 16 << 10), ("1_024", 1024), (0, 0),
])
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["64Q", "2 M", "2MB", "1.5M", "-4K", -4096, "K", True, None, [4096]])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueProblem, match=r"is not a size \(examples: 4096, \"0x1000\", \"64K\", \"2M\"\)"):
        parse_size(bad)


@pytest.mark.parametrize("text, expected", [
    (2, 2.0), (0.5, 0.5), ("500ms", 0.5), ("2s", 2.0), ("1.5s", 1.5), ("2", 2.0), ("1m", 60.0), (" 3 s ", 3.0),
    (".5s", 0.5),
])
def test_parse_duration_accepts(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["2h", "fast", "-1s", -1, "", "1e3s", True, None, float("nan"), float("inf")])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueProblem, match="is not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("text, value, symbol, offset", [
    (0x7C00, 0x7C00, None, 0), ("0xffff_0000", 0xFFFF0000, None, 0), ("sym:main", None, "main", 0),
    ("sym:table+0x10", None, "table", 16), ("sym:end-4", None, "end", -4), ("sym:_start", None, "_start", 0),
    ("sym:a.b$c", None, "a.b$c", 0), ("sym:x + 8", None, "x", 8),
])
def test_parse_address_accepts(text, value, symbol, offset):
    address = parse_address(text, MARK)
    assert (address.value, address.symbol, address.offset, address.mark) == (value, symbol, offset, MARK)


@pytest.mark.parametrize("bad, message", [
    ("sym:", "not a symbol address"), ("sym:a+", "not a symbol address"), ("sym:a+b", "not a symbol address"),
    ("main", "not an address"), (-1, "not an address"), (None, "not an address"), (2**64, "does not fit in 64 bits"),
])
def test_parse_address_rejects(bad, message):
    with pytest.raises(ValueProblem, match=message):
        parse_address(bad, MARK)


def test_address_str_round_trips_the_symbol_form():
    assert str(parse_address("sym:t+0x10", MARK)) == "sym:t+0x10"
    assert str(parse_address("sym:t-4", MARK)) == "sym:t-0x4"
    assert str(parse_address(0x1000, MARK)) == "0x1000"


@pytest.mark.parametrize("text, lo, hi", [
    (20, 20, 20), ("20", 20, 20), (">=1", 1, None), ("<=3", None, 3), ("==2", 2, 2), (">0", 1, None),
    ("<5", None, 4), (">= 0x10", 16, None), ({"range": [100, 200]}, 100, 200), ({"range": ["0x10", 16]}, 16, 16),
])
def test_parse_count_accepts(text, lo, hi):
    count = parse_count(text, MARK)
    assert (count.lo, count.hi) == (lo, hi)
    assert count.mark == MARK


def test_count_matches():
    assert parse_count(">=1", MARK).matches(5) and not parse_count(">=1", MARK).matches(0)
    assert parse_count({"range": [1, 3]}, MARK).matches(3) and not parse_count({"range": [1, 3]}, MARK).matches(4)


@pytest.mark.parametrize("bad, message", [
    (-1, "negative"), ("=>1", "not a count"), ("many", "not a count"), ("<0", "never"),
    ({"range": [5, 1]}, "empty"), ({"range": [1]}, "not a count"), ({"rang": [1, 2]}, "not a count"), (1.5, "not a count"),
    (None, "not a count"),
])
def test_parse_count_rejects(bad, message):
    with pytest.raises(ValueProblem, match=message):
        parse_count(bad, MARK)


@pytest.mark.parametrize("text, expected", [
    ("f4", b"\xf4"), ("34120000", b"\x34\x12\x00\x00"), ("34 12 00 00", b"\x34\x12\x00\x00"),
    ("0x3412", b"\x34\x12"), ("0x34 0x12", b"\x34\x12"), ("dead_beef", b"\xde\xad\xbe\xef"), ("AB\ncd", b"\xab\xcd"),
])
def test_parse_hex_accepts(text, expected):
    assert parse_hex(text) == expected


@pytest.mark.parametrize("bad, message", [
    ("f", "odd number"), ("zz", "not hex digits"), ("12 0x", "not hex digits"), ("", "no bytes"),
    ("3x12", "not hex digits"), ("_1", "not hex digits"),
    (34120000, "quoted string"), (None, "not hex bytes"), ([1], "not hex bytes"),
])
def test_parse_hex_rejects(bad, message):
    with pytest.raises(ValueProblem, match=message):
        parse_hex(bad)


def test_to_width():
    assert to_width(0xFF, 8) == 0xFF
    assert to_width(-1, 8) == 0xFF
    assert to_width(-1, 64) == 2**64 - 1
    assert to_width(-128, 8) == 0x80
    for bad in (0x100, -129):
        with pytest.raises(ValueProblem, match="does not fit in 8 bits"):
            to_width(bad, 8, "al")


def test_show():
    assert show("x") == "'x'" and show(True) == "true" and show(None) == "null"
    assert show({}) == "a mapping" and show([]) == "a list" and show(5) == "5"


@pytest.mark.parametrize("text", [99999999, 1.0e30, "99999999999999999s", "1441m", 86400.5])
def test_durations_are_bounded(text):
    # issue 11 item 2: these passed validate, then the runner died with OverflowError
    with pytest.raises(values.ValueProblem):
        values.parse_duration(text)
    assert values.parse_duration("1440m") == values.MAX_DURATION == 86400.0
