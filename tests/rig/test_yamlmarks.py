"""YAML to plain data + marks: positions, key conversion, and every YAML
problem as a RigError at `path:line:col:`."""

from __future__ import annotations

import pytest

from kvmrig.errors import Mark, RigError
from kvmrig.rig.yamlmarks import MAX_DEPTH, Marks, format_path, load_yaml

SRC = "r.yaml"


def at(line: int, col: int) -> Mark:
    return Mark(SRC, line, col)


def error(text: str) -> str:
    with pytest.raises(RigError) as info:
        load_yaml(text, SRC)
    e = info.value  # no chained traceback for the user to wade through
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    return str(info.value)


BLOCK = """\
kvmrig: 1
breakpoints:
  - at: "sym:loop"
    hits: 20
  - {at: 0x1010, on_hit: 3}
expect:
  port_writes: {0x80: [1, 2]}
"""


def test_plain_data_is_json_compatible():
    data, _ = load_yaml(BLOCK, SRC)
    assert data == {
        "kvmrig": 1,
        "breakpoints": [{"at": "sym:loop", "hits": 20}, {"at": 0x1010, "on_hit": 3}],
        "expect": {"port_writes": {"128": [1, 2]}},
    }


def test_value_marks_block_and_flow():
    _, marks = load_yaml(BLOCK, SRC)
    assert marks[()] == at(1, 1)
    assert marks[("kvmrig",)] == at(1, 9)
    assert marks[("breakpoints",)] == at(3, 3)
    assert marks[("breakpoints", 0)] == at(3, 5)
    assert marks[("breakpoints", 0, "at")] == at(3, 9)
    assert marks[("breakpoints", 0, "hits")] == at(4, 11)
    assert marks[("breakpoints", 1)] == at(5, 5)
    assert marks[("breakpoints", 1, "on_hit")] == at(5, 26)
    assert marks[("expect", "port_writes", "128", 1)] == at(7, 27)


def test_key_marks():
    _, marks = load_yaml(BLOCK, SRC)
    assert marks.keys[("breakpoints",)] == at(2, 1)
    assert marks.keys[("breakpoints", 0, "hits")] == at(4, 5)
    assert marks.keys[("breakpoints", 1, "on_hit")] == at(5, 18)
    assert marks.keys[("expect", "port_writes", "128")] == at(7, 17)
    assert ("breakpoints", 0) not in marks.keys  # list items have no key


def test_marks_fall_back_to_the_nearest_ancestor():
    _, marks = load_yaml(BLOCK, SRC)
    assert marks.value(("breakpoints", 1, "kind")) == at(5, 5)
    assert marks.key(("breakpoints", 1, "kind")) == at(5, 5)
    assert marks.key(("breakpoints", 0)) == at(3, 5)
    assert ("nothing",) not in marks
    assert Marks("x.yaml").value(("a",)) == Mark("x.yaml", 1, 1)


def test_keys_become_strings():
    data, _ = load_yaml("{0x80: a, 7: b, on: c, null: d, 1.5: e, '9': f}", SRC)
    assert data == {"128": "a", "7": "b", "on": "c", "null": "d", "1.5": "e", "9": "f"}


def test_scalars():
    data, _ = load_yaml("a: 0xffff_0000\nb: '0x10'\nc: true\nd: ~\ne: 1.5\nf: 2024-01-02\ng: 0b101", SRC)
    assert data == {"a": 0xFFFF0000, "b": "0x10", "c": True, "d": None, "e": 1.5, "f": "2024-01-02", "g": 5}


def test_empty_document():
    assert load_yaml("", SRC)[0] is None
    assert load_yaml("# just a comment\n", SRC)[0] is None


def test_anchors_and_merge_keys():
    text = "base: &b {at: 0, size: 4K}\nr: {<<: *b, size: 8K}\ns: *b\n"
    data, marks = load_yaml(text, SRC)
    assert data["r"] == {"at": 0, "size": "8K"} and data["s"] == {"at": 0, "size": "4K"}
    assert marks[("r", "size")] == at(2, 19)
    assert marks[("r", "at")] == at(1, 15)  # merged: where it was written
    data, _ = load_yaml("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc: {<<: [*a, *b]}\n", SRC)
    assert data["c"] == {"x": 1, "y": 2}  # the first merged mapping wins


def test_duplicate_key():
    assert error("a: 1\nb: 2\na: 3\n") == "r.yaml:3:1: duplicate key 'a' (first at line 1, col 1)"
    assert error("m: {0x80: 1, 128: 2}").startswith("r.yaml:1:14: duplicate key '128'")


@pytest.mark.parametrize("text, where, words", [
    ("a: [1, 2\n", "2:1", "did not find expected ',' or ']'"),
    ("a: 1\n\tb: 2\n", "2:1", "tab character"),
    ("a: 'x\n", "2:1", "end of stream"),
    ("a:\n  - b\n   c: d\n", "3:5", "mapping values are not allowed"),
    ("---\na: 1\n---\nb: 2\n", "3:1", "expected a single document"),
    ("a: *nope\n", "1:4", "undefined alias"),
    ("a: \x07\n", "1:4", "character 0x7 is not allowed"),
    ("x: 1\ny: !!python/object/apply:os.system [ls]\n", "2:4", "unsupported YAML tag '!!python/object/apply:os.system'"),
    ("a: !custom 1\n", "1:4", "unsupported YAML tag '!custom'"),
    ("a: !!set {x}\n", "1:4", "unsupported YAML tag '!!set'"),
    ("a: !!binary aGk=\n", "1:4", "unsupported YAML tag '!!binary'"),
    ("a: !!int abc\n", "1:4", "'abc' is not a valid !!int"),
    ("a: &x [*x]\n", "1:4", "refers to itself"),
    ("a: &x {<<: *x}\n", "1:4", "refers to itself"),
    ("? [1, 2]\n: x\n", "1:3", "mapping key must be a plain value"),
    ("a: {<<: 1}\n", "1:9", "merge key"),
])
def test_yaml_problems(text, where, words):
    message = error(text)
    assert message.startswith(f"r.yaml:{where}: ")
    assert words in message


def test_syntax_error_names_yaml():
    assert error("a: [1, 2\n").startswith("r.yaml:2:1: YAML syntax: ")


def test_deep_nesting_is_an_error_not_a_crash():
    # libyaml's composer would overflow the C stack on this.
    message = error("a: " + "[" * 100_000)
    # kvmrig stops at MAX_DEPTH; newer libyaml (PyYAML >= 6.0.4) may refuse first, at its own limit
    ours = message.startswith(f"r.yaml:1:{3 + MAX_DEPTH}: ") and "nested deeper" in message
    libyaml = message.startswith("r.yaml:1:") and "maximum nesting depth" in message
    assert ours or libyaml, message


def test_alias_bomb_is_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    assert "more than" in error("\n".join(lines))


def test_format_path():
    assert format_path(()) == ""
    assert format_path(("memory", 1, "size")) == "memory[1].size"
    assert format_path(("expect", "regs", "rax")) == "expect.regs.rax"
