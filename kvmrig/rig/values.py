"""Pure parsers for the value forms a rig file accepts (see rig-format.md).

Each takes the plain value YAML gave (int, str, ...) and returns the typed
value, or raises `ValueProblem` with a message that names the value and shows
accepted forms; the loader prefixes the key path and the file mark. The
string forms match the patterns in schemas/rig.schema.json (a test keeps the
two in step), so a value the schema lets through only fails here for a reason
the schema cannot express (a range, a width).
"""

from __future__ import annotations

import re
from typing import Any

from kvmrig.errors import Mark
from kvmrig.rig.model import Address, Count


class ValueProblem(ValueError):
    """A value that cannot be read as the form its key takes."""


# One number: decimal, 0x hex, 0b binary, 0o octal, "_" between digits.
# A decimal with leading zeros ("0755") is decimal: no C-style octal surprise.
_UNSIGNED = r"(?:0[xX][0-9a-fA-F](?:_?[0-9a-fA-F])*|0[bB][01](?:_?[01])*|0[oO][0-7](?:_?[0-7])*|[0-9](?:_?[0-9])*)"
_INT_RE = re.compile(rf"([+-]?)({_UNSIGNED})")
_SIZE_RE = re.compile(rf"({_UNSIGNED})([KMGkmg]?)")
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m)?")
_SYMBOL_RE = re.compile(rf"sym:([^\s+-]+)(?:\s*([+-])\s*({_UNSIGNED}))?")
_COUNT_RE = re.compile(rf"(>=|<=|==|>|<)?\s*({_UNSIGNED})")
_HEX_TOKEN_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F][0-9a-fA-F_]*)")

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}

INT_EXAMPLES = '4096, "0x7c00", "0xffff_0000"'
SIZE_EXAMPLES = '4096, "0x1000", "64K", "2M"'
DURATION_EXAMPLES = '2, "500ms", "2s", "1.5s", "1m"'
ADDRESS_EXAMPLES = '0x7c00, "0xffff_0000", "sym:main", "sym:table+0x10"'
COUNT_EXAMPLES = '20, ">=1", "<=3", "==2", {range: [1, 5]}'
HEX_EXAMPLES = '"f4", "34120000", "90 90 f4"'


# The widest value any key takes (arm64 v0-v31); bigger numbers are typos, and
# bounding them keeps int/str conversions and shifts cheap.
MAX_BITS = 128
# The longest duration a rig may ask for (documented in docs/limits.md).
MAX_DURATION = 86400.0


def show(value: Any) -> str:
    """A value as the user would recognise it in a message (long ones cut)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        return f"{value:#x}"[:40] + "..."
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unsigned_text(text: str) -> int:
    """Value of text that matched _UNSIGNED (underscores are fine for int())."""
    if len(text) > 2 * MAX_BITS:
        raise ValueProblem(f"{show(text)} has too many digits")
    n = int(text, 0) if text[:2].lower() in ("0x", "0b", "0o") else int(text, 10)
    if n.bit_length() > MAX_BITS:
        raise ValueProblem(f"{show(text)} is too large (over {MAX_BITS} bits)")
    return n


def parse_int(value: Any, examples: str = INT_EXAMPLES) -> int:
    """An integer from a YAML int or a number string; negative allowed."""
    if isinstance(value, bool):
        raise ValueProblem(f"{show(value)} is not a number (examples: {examples})")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # JSON Schema counts 4096.0 as an integer
        return int(value)
    if isinstance(value, str):
        m = _INT_RE.fullmatch(value)
        if m:
            n = _unsigned_text(m.group(2))
            return -n if m.group(1) == "-" else n
    raise ValueProblem(f"{show(value)} is not a number (examples: {examples})")


def parse_uint(value: Any, examples: str = INT_EXAMPLES) -> int:
    """An integer >= 0 (addresses, ports, lengths)."""
    n = parse_int(value, examples)
    if n < 0:
        raise ValueProblem(f"{show(value)} is negative; expected a number >= 0")
    return n


def parse_size(value: Any) -> int:
    """A byte count: number, or number with K/M/G suffix (powers of 1024)."""
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m:
            return _unsigned_text(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    elif not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            return parse_uint(value, SIZE_EXAMPLES)
        except ValueProblem:
            pass
    raise ValueProblem(f"{show(value)} is not a size (examples: {SIZE_EXAMPLES})")


def parse_duration(value: Any) -> float:
    """Seconds, from a number of seconds or "500ms", "2s", "1.5s", "1m"; at most
    MAX_DURATION (a longer one overflows the runner's waits and is a typo anyway)."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value >= 0 and value == value and value != float("inf"):
            seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m and len(m.group(1)) < 20:  # longer reads as float("inf")
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds is None:
        raise ValueProblem(f"{show(value)} is not a duration (examples: {DURATION_EXAMPLES})")
    if seconds > MAX_DURATION:
        raise ValueProblem(f"{show(value)} is longer than the limit of {MAX_DURATION:g} seconds (24 hours)")
    return seconds


def parse_address(value: Any, mark: Mark) -> Address:
    """A guest address: a number, or an ELF symbol "sym:name", "sym:name+0x10"."""
    if isinstance(value, str) and value.startswith("sym:"):
        m = _SYMBOL_RE.fullmatch(value)
        if not m:
            raise ValueProblem(f"{show(value)} is not a symbol address (examples: \"sym:main\", "
                               "\"sym:table+0x10\", \"sym:end-4\")")
        offset = _unsigned_text(m.group(3)) if m.group(3) else 0
        return Address(None, m.group(1), -offset if m.group(2) == "-" else offset, mark)
    try:
        n = parse_uint(value, ADDRESS_EXAMPLES)
    except ValueProblem:
        raise ValueProblem(f"{show(value)} is not an address (examples: {ADDRESS_EXAMPLES})") from None
    if n >= 1 << 64:
        raise ValueProblem(f"address {n:#x} does not fit in 64 bits")
    return Address(n, None, 0, mark)


def parse_count(value: Any, mark: Mark) -> Count:
    """A count condition: exact n, ">=n", "<=n", ">n", "<n", "==n", {range: [lo, hi]}."""
    bad = ValueProblem(f"{show(value)} is not a count (examples: {COUNT_EXAMPLES})")
    if isinstance(value, dict):
        pair = value.get("range")
        if set(value) != {"range"} or not isinstance(pair, list) or len(pair) != 2:
            raise bad
        lo, hi = (parse_uint(v) for v in pair)
        if lo > hi:
            raise ValueProblem(f"range [{lo}, {hi}] is empty: the low end must come first")
        return Count(lo, hi, f"[{lo}, {hi}]", mark)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueProblem(f"count {value} is negative")
        return Count(value, value, str(value), mark)
    if not isinstance(value, str):
        raise bad
    m = _COUNT_RE.fullmatch(value.strip())
    if not m:
        raise bad
    op, n = m.group(1) or "==", _unsigned_text(m.group(2))
    if op == "<" and n == 0:
        raise ValueProblem(f"{show(value)} can never hold: a count is never below 0")
    lo, hi = {"==": (n, n), ">=": (n, None), "<=": (None, n), ">": (n + 1, None), "<": (None, n - 1)}[op]
    return Count(lo, hi, value.strip(), mark)


def parse_hex(value: Any) -> bytes:
    """Bytes in the order written: "34120000", "34 12 00 00", "0x3412_0000"."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueProblem(f"write hex bytes as a quoted string, e.g. \"{value}\" "
                           f"(YAML read {value} as a number, which loses leading zeros)")
    if not isinstance(value, str):
        raise ValueProblem(f"{show(value)} is not hex bytes (examples: {HEX_EXAMPLES})")
    digits = []
    for token in value.split():
        m = _HEX_TOKEN_RE.fullmatch(token)
        if not m:
            raise ValueProblem(f"{show(value)} is not hex bytes: {token!r} is not hex digits "
                               f"(examples: {HEX_EXAMPLES})")
        digits.append(m.group(1).replace("_", ""))
    text = "".join(digits)
    if not text:
        raise ValueProblem("no bytes: give at least one byte as two hex digits")
    if len(text) % 2:
        raise ValueProblem(f"{show(value)} has an odd number of hex digits ({len(text)}): "
                           "each byte takes two")
    return bytes.fromhex(text)


def to_width(value: int, bits: int, what: str = "value") -> int:
    """`value` as an unsigned `bits`-wide field; negatives are two's complement.

    Accepts -2**(bits-1) .. 2**bits - 1, so both -1 and 0xff fit 8 bits.
    """
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise ValueProblem(f"{what} {_hex(value)} does not fit in {bits} bits")
    return value & ((1 << bits) - 1)


def _hex(value: int) -> str:
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"
