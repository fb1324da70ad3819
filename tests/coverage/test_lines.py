"""DWARF line tables, functions and leaders of the C example guests, and the
rule that maps executed address ranges to source lines."""

from __future__ import annotations

from pathlib import Path

from kvmrig.coverage.lines import ImageCode, Row, image_code

GUESTS = Path(__file__).resolve().parents[2] / "rigs" / "x86" / "guests"
DISPATCH = GUESTS / "cov-dispatch.elf"
SOURCE = "x86/guests/cov-dispatch.c"


def _line_of(text: str) -> int:
    """The 1-based line of the C source that contains `text` (once)."""
    lines = (GUESTS / "cov-dispatch.c").read_text().splitlines()
    found = [i + 1 for i, line in enumerate(lines) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


def test_paths_are_as_the_compiler_recorded_them():
    code = image_code(DISPATCH)
    assert set(code.all_lines()) == {SOURCE}   # comp_dir "." joined with the relative name


def test_functions_come_from_dwarf_with_their_lines():
    code = image_code(DISPATCH)
    functions = {f.name: f for f in code.functions}
    assert set(functions) == {"print", "panic", "handle_add", "handle_sub", "handle_error", "main"}
    assert functions["handle_error"].line == _line_of("void handle_error(char op)")
    assert functions["handle_error"].file == SOURCE
    assert all(f.lo < f.hi for f in functions.values())


def test_every_row_start_is_a_leader():
    code = image_code(DISPATCH)
    assert code.has_lines
    assert {r.addr for r in code.rows} <= code.leaders
    lo, hi = code.spans[0]
    assert all(lo <= a < hi for a in code.leaders)


def test_statement_lines_are_in_the_table():
    lines = image_code(DISPATCH).all_lines()[SOURCE]
    assert _line_of("errors++;") in lines
    assert _line_of('panic("underflow\\n");') in lines
    assert _line_of("#define COM1") not in lines


def test_an_image_without_debug_info_has_symbol_functions_only():
    code = image_code(GUESTS / "bp-elf-symbols.elf")
    assert not code.has_lines
    assert [f.name for f in code.functions] == ["_start"]


def _code() -> ImageCode:
    rows = [Row(0x100, 0x104, "a.c", 1), Row(0x104, 0x104, "a.c", 2),   # line 2: zero length at 0x104
            Row(0x104, 0x10a, "a.c", 3), Row(0x10a, 0x110, "b.c", 7)]
    return ImageCode("t", rows, [], frozenset(r.addr for r in rows), [(0x100, 0x110)])


def test_a_hit_in_the_middle_of_a_row_covers_it():
    assert _code().covered_lines([(0x106, 0x107)]) == {"a.c": {3}}


def test_a_zero_length_row_counts_when_its_address_runs():
    assert _code().covered_lines([(0x104, 0x105)]) == {"a.c": {2, 3}}


def test_a_block_covers_every_row_it_touches():
    assert _code().covered_lines([(0x102, 0x10b)]) == {"a.c": {1, 2, 3}, "b.c": {7}}
    assert _code().covered_lines([(0x110, 0x120)]) == {}
