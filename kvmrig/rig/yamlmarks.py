"""YAML text to plain data plus a table of where every key and value was written.

Why not `yaml.safe_load`: it forgets positions, silently keeps the last of two
duplicate keys, and returns int keys, dates and bytes that JSON Schema cannot
validate. Here the document is composed into nodes with the safe (C when
available) loader, and walked into plain JSON-compatible data (dict, list, str,
int, float, bool, None) while recording each node's position.

Mark-table convention (`Marks`), keyed by JSON-path tuples of str keys and int
list indices, exactly as they index the plain data:

- `marks.values[("breakpoints", 0, "at")]` is the Mark of the value node
  (for a mapping or list: where it starts; `()` is the whole document);
- `marks.keys[("breakpoints", 0, "at")]` is the Mark of the key `at` itself
  (only paths that end in a mapping key have one);
- `marks.value(path)` / `marks.key(path)` never fail: they fall back to the
  nearest recorded ancestor, so a missing key is reported at its parent.

Mapping keys become strings: an int key is written in decimal (`0x80:` gives
"128"), a str key stays as is, and any other scalar key (`on:`, `null:`,
`1.5:`) keeps its source text. Merge keys (`<<: *base`) are supported; the
merged keys take their marks from where they were written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from kvmrig.errors import Mark, RigError

# PyYAML (~10 ms to import) is imported by load_yaml, when a text is parsed:
# a run whose rigs all come from the load cache (rig/cache.py) never needs it,
# nor do the workers. Marks and format_path do not need it either.
yaml: Any = None
_Loader: type = object


def _import_yaml() -> None:
    global yaml, _Loader
    import yaml as module
    try:  # libyaml is ~10x faster; the pure-Python loader behaves the same.
        _Loader = module.CSafeLoader
    except AttributeError:  # pragma: no cover - depends on how PyYAML was built
        _Loader = module.SafeLoader
    yaml = module

JsonPath = tuple[Union[str, int], ...]

# The C composer recurses without a guard and crashes the interpreter on deep
# nesting ("[" * 100000): depth is checked on the event stream first.
MAX_DEPTH = 64
# Aliases can expand exponentially ("billion laughs"); rigs are small.
MAX_NODES = 100_000
# No key takes a number wider than an arm64 vector register; bounding numbers
# here keeps jsonschema's and the messages' int-to-str conversions cheap.
MAX_INT_BITS = 128

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_TEXT_TAGS = {_TAG + "timestamp"}  # kept as the text written; no rig key is a date
_MERGE = _TAG + "merge"


@dataclass
class Marks:
    """Where each value and each mapping key of a document was written."""

    source: str
    values: dict[JsonPath, Mark] = field(default_factory=dict)
    keys: dict[JsonPath, Mark] = field(default_factory=dict)

    def __getitem__(self, path: JsonPath) -> Mark:
        return self.values[path]

    def __contains__(self, path: object) -> bool:
        return path in self.values

    def value(self, path: JsonPath) -> Mark:
        """The mark of the value at `path`, else of its nearest ancestor."""
        for n in range(len(path), -1, -1):
            mark = self.values.get(path[:n])
            if mark is not None:
                return mark
        return Mark(self.source, 1, 1)

    def key(self, path: JsonPath) -> Mark:
        """The mark of the key that names `path`, else `value(path)`."""
        return self.keys.get(path) or self.value(path)


def format_path(path: JsonPath) -> str:
    """`("memory", 1, "size")` -> "memory[1].size", as messages name a node."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml(text: str, source: str) -> tuple[Any, Marks]:
    """Parse one YAML document into plain data and its Marks; RigError if bad.

    An empty document gives `None`. `source` is the path used in marks.
    """
    if yaml is None:
        _import_yaml()
    marks = Marks(source)
    try:
        _check_depth(text, source)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, marks
            return _Walker(loader, marks).plain(node, ()), marks
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(e, source) from None
    except yaml.reader.ReaderError as e:
        line, col = _line_col(text, e.position)
        raise RigError(f"YAML syntax: {_reader_problem(e)}", Mark(source, line, col)) from None
    except yaml.YAMLError as e:  # anything else libyaml may raise
        raise RigError(f"YAML: {e}", path=source) from None


def _check_depth(text: str, source: str) -> None:
    """Depth and size, on the event stream: before anything is composed, so a
    huge or deep file costs a scan, not a tree (aliases are counted by _Walker)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.ScalarEvent)):
            nodes += 1
            if nodes > MAX_NODES:
                raise RigError(f"YAML has more than {MAX_NODES} values (rigs are small)",
                               _mark(event.start_mark, source))
            if not isinstance(event, yaml.ScalarEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise RigError(f"YAML nested deeper than {MAX_DEPTH} levels", _mark(event.start_mark, source))
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


class _Walker:
    """Turns composed nodes into plain data, recording marks on the way."""

    def __init__(self, loader: Any, marks: Marks):
        self.loader = loader
        self.marks = marks
        self.count = 0
        self.active: set[int] = set()  # nodes being walked: catches `&a [*a]`

    def fail(self, node: yaml.Node, message: str) -> RigError:
        return RigError(message, _mark(node.start_mark, self.marks.source))

    def plain(self, node: yaml.Node, path: JsonPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"YAML expands to more than {MAX_NODES} values (aliases?)")
        self.marks.values[path] = _mark(node.start_mark, self.marks.source)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if id(node) in self.active:
            raise self.fail(node, "YAML alias refers to itself (recursive data)")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                self.check_tag(node, "seq")
                return [self.plain(item, path + (i,)) for i, item in enumerate(node.value)]
            self.check_tag(node, "map")
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def check_tag(self, node: yaml.Node, kind: str) -> None:
        if node.tag != _TAG + kind:
            raise self.fail(node, f"unsupported YAML tag {_short_tag(node.tag)!r}")

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag in _TEXT_TAGS:
            return node.value
        if node.tag not in _PLAIN_TAGS:
            raise self.fail(node, f"unsupported YAML tag {_short_tag(node.tag)!r}")
        try:
            value = self.loader.construct_object(node)
        except (ValueError, KeyError, yaml.YAMLError):  # e.g. `!!int abc`, `!!bool maybe`
            if node.tag == _TAG + "int" and len(node.value) > 40:  # Python's int-from-str limit
                raise self.fail(node, f"number too large (over {MAX_INT_BITS} bits)") from None
            raise self.fail(node, f"{node.value[:40]!r} is not a valid {_short_tag(node.tag)}") from None
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self.fail(node, f"number too large (over {MAX_INT_BITS} bits)")
        return value

    def key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, "a mapping key must be a plain value, not a list or mapping")
        value = self.scalar(node)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) else node.value

    def mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        # Merged keys (`<<`) come first so that explicit keys override them.
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                for source in self.merge_sources(value_node):
                    for k, v in self.mapping(source, path).items():
                        merged.setdefault(k, v)
        out: dict[str, Any] = dict(merged)
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.key(key_node)
            if key in seen:
                first = _mark(seen[key].start_mark, self.marks.source)
                raise self.fail(key_node, f"duplicate key {key!r} (first at line {first.line}, col {first.col})")
            seen[key] = key_node
            self.marks.keys[path + (key,)] = _mark(key_node.start_mark, self.marks.source)
            out[key] = self.plain(value_node, path + (key,))
        return out

    def merge_sources(self, node: yaml.Node) -> list[yaml.MappingNode]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for n in nodes:
            if not isinstance(n, yaml.MappingNode):
                raise self.fail(n, "a merge key '<<' needs a mapping or a list of mappings")
            if id(n) in self.active:
                raise self.fail(n, "YAML alias refers to itself (recursive data)")
        return nodes


def _mark(m: Any, source: str) -> Mark:
    return Mark(source, m.line + 1, m.column + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


def _syntax_error(e: yaml.MarkedYAMLError, source: str) -> RigError:
    where = e.problem_mark or e.context_mark
    problem = e.problem or e.context or "syntax error"
    if e.context and e.problem:
        if e.problem.startswith("but "):  # "expected X, but found Y"
            problem = f"{e.context}, {e.problem}"
        else:
            problem = f"{e.problem} ({e.context}"
            if e.context_mark and e.problem_mark and e.context_mark.line != e.problem_mark.line:
                problem += f" that starts on line {e.context_mark.line + 1}"
            problem += ")"
    if where is None:
        return RigError(f"YAML syntax: {problem}", path=source)
    return RigError(f"YAML syntax: {problem}", _mark(where, source))


def _reader_problem(e: yaml.reader.ReaderError) -> str:
    if isinstance(e.character, int):
        return f"character {e.character:#x} is not allowed in YAML ({e.reason})"
    return str(e.reason)


def _line_col(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    line = before.count("\n") + 1
    return line, position - (before.rfind("\n") + 1) + 1
