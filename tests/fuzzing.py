"""What the fuzz tests share: how many cases, the memory bound, rig files
generated from the published JSON Schema (hypothesis-jsonschema for every
value form, the schema's own structure for the mappings and lists around
them), and mutations of the example rigs.

Sizes: a CI run is a few seconds. KVMRIG_FUZZ=long (or
KVMRIG_FUZZ_EXAMPLES=N) runs N cases per test, random instead of the
derandomised CI sequence — e.g. `KVMRIG_FUZZ_EXAMPLES=20000 nice -n 10
python3 -m pytest tests/rig/test_fuzz.py -q` (docs/limits.md).
"""

from __future__ import annotations

import functools
import os
import random
import resource
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kvmrig.rig.schema import load_schema

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_RIGS = sorted(p for p in (REPO / "rigs").rglob("*.yaml") if not p.name.endswith(".golden.yaml"))
RSS_BOUND_KIB = 256 * 1024     # growth of the peak RSS one case may cause
LONG = os.environ.get("KVMRIG_FUZZ") == "long"


def examples(ci: int) -> int:
    """Cases per fuzz test: `ci` in CI, KVMRIG_FUZZ_EXAMPLES (or 20,000 with KVMRIG_FUZZ=long) otherwise."""
    return int(os.environ.get("KVMRIG_FUZZ_EXAMPLES") or (20_000 if LONG else ci))


def fuzz_settings(ci: int) -> settings:
    n = examples(ci)
    long = n > ci
    return settings(max_examples=n, deadline=None, derandomize=not long, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- from the schema ---------------------------------------------------------------

def _inline(node: Any, defs: dict) -> Any:
    """Draft-07 shape for hypothesis-jsonschema: $refs inlined, prefixItems as items."""
    if isinstance(node, list):
        return [_inline(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inline(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    out = {}
    for key, value in node.items():
        if key in ("description", "errorMessage", "$defs", "$schema", "$id", "title"):
            continue
        out["items" if key == "prefixItems" else key] = _inline(value, defs)
    return out


def _from(node: Any, defs: dict, depth: int = 0) -> st.SearchStrategy:
    """A strategy for one schema node, built once: scalars (patterns, ranges,
    enums) by hypothesis-jsonschema, the mappings, lists and choices around
    them composed here (hypothesis-jsonschema would rebuild those per draw)."""
    if depth > 12:
        return st.nothing()
    if "$ref" in node:
        return _from(defs[node["$ref"].rsplit("/", 1)[1]], defs, depth + 1)
    if "allOf" in node:  # merged into the node (if/then are left to the checks)
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for sub in node["allOf"]:
            for k, v in sub.items():
                if k == "required":
                    merged["required"] = [*merged.get("required", ()), *v]
                elif k not in ("if", "then", "else", "errorMessage"):
                    merged.setdefault(k, v)
        return _from(merged, defs, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in node:
            rest = {k: v for k, v in node.items() if k not in (key, "description")}
            return st.one_of([_from({**rest, **sub}, defs, depth + 1) for sub in node[key]])
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        required = set(node.get("required", ()))
        strategies = {k: _from(v, defs, depth + 1) for k, v in props.items()}
        fixed = st.fixed_dictionaries({k: s for k, s in strategies.items() if k in required},
                                      optional={k: s for k, s in strategies.items() if k not in required})
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:   # register maps: names from propertyNames
            names = _from({"type": "string", **node.get("propertyNames", {})}, defs, depth + 1)
            return st.builds(lambda a, b: {**b, **a}, fixed,
                             st.dictionaries(names, _from(extra, defs, depth + 1), max_size=3))
        return fixed
    if kind == "array":
        items = node.get("prefixItems") or node.get("items")
        if isinstance(items, list):
            return st.tuples(*[_from(i, defs, depth + 1) for i in items]).map(list)
        inner = _from(items, defs, depth + 1) if isinstance(items, dict) else st.integers()
        return st.lists(inner, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", 3), 3))
    from hypothesis_jsonschema import from_schema
    return from_schema(_inline(node, defs))


@functools.cache
def schema_rigs() -> st.SearchStrategy:
    """Rig data drawn from schemas/rig.schema.json (mostly schema-valid)."""
    schema = load_schema()
    return _from(schema, schema["$defs"])


# -- mutations of the example rigs --------------------------------------------------

HOSTILE_VALUES: list[Any] = [
    None, True, [], {}, "", -1, -(1 << 63), 1 << 64, 1 << 200, 1.0e30, 1.0e308, float("inf"), float("nan"),
    0.5, "0x", "sym:", "sym:nope+0x10", "99999999999999999s", "1024G", "0xffff_ffff_ffff_ffff", "\u202e\u0000",
    "é" * 3, "\x1b[31m", "x" * 5000, "a:b", "&anchor", "*alias", "- item", "{", "'",
]


def _slots(node: Any, out: list) -> list:
    """Every (container, key) in the data, for picking what to mutate."""
    if isinstance(node, dict):
        for k in list(node):
            out.append((node, k))
            _slots(node[k], out)
    elif isinstance(node, list):
        for i in range(len(node)):
            out.append((node, i))
            _slots(node[i], out)
    return out


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def mutate_data(data: Any, rnd: random.Random, rounds: int) -> Any:
    for _ in range(rounds):
        slots = _slots(data, [])
        if not slots:
            break
        parent, key = rnd.choice(slots)
        op = rnd.randrange(9)
        if op == 0:
            del parent[key]
        elif op == 1:
            parent[key] = rnd.choice(HOSTILE_VALUES)
        elif op == 2:
            parent[key] = rnd.randint(-(1 << 70), 1 << 70) if rnd.random() < 0.5 else rnd.randint(-5, 0x20000)
        elif op == 3:
            parent[key] = _nested(rnd.choice((3, 20, 63, 70)))
        elif op == 4 and isinstance(parent, dict):
            parent[rnd.choice(["extra", "Memory", "at", "len", "expect", "<<", "1", "on"])] = rnd.choice(HOSTILE_VALUES)
        elif op == 5 and isinstance(parent, list):
            parent.extend([parent[key]] * rnd.choice((1, 5, 40)))
        elif op == 6:
            parent[key] = "".join(chr(rnd.choice((rnd.randrange(32, 0x7F), rnd.randrange(0x80, 0x3000),
                                                   rnd.randrange(0x1F000, 0x1FAFF))))
                                  for _ in range(rnd.randrange(1, 30)))
        elif op == 7:
            parent[key] = [parent[key], parent[key]] if rnd.random() < 0.5 else {"range": [parent[key], 1]}
        else:
            value = parent[key]
            if isinstance(value, int) and not isinstance(value, bool):
                parent[key] = rnd.choice((hex(value), str(value) + rnd.choice(("K", "M", "G", "ms", "s")),
                                          value ^ (1 << rnd.randrange(64)), -value))
    return data


TEXT_SNIPPETS = [
    b"\xff", b"\xc3", b"\x00", b"\x1b", b"\t", b"\r", b"\xef\xbb\xbf", b"\n---\n", b": ", b"- ", b"[", b"{",
    b"&a ", b"*a", b"!!binary ", b"!!python/object:os.system ", b"? ", b"|\n", b"'", b'"', b"#",
    b"\nx: &b [*b]\n", b"<<: ", b"\n  \t  \n",
]
ALIAS_BOMB = (b"\nbomb: &a [1,1,1,1,1,1,1,1,1,1]\n"
              + b"".join(b"b%d: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((i, 98 + i) + (97 + i,) * 10)
                         for i in range(9)))


def mutate_text(text: bytes, rnd: random.Random) -> bytes:
    op = rnd.randrange(6)
    at = rnd.randrange(len(text) + 1)
    if op == 0:
        return text[:at] + rnd.choice(TEXT_SNIPPETS) + text[at:]
    if op == 1:
        return text[:at]
    if op == 2:
        return text + ALIAS_BOMB
    if op == 3:
        end = min(len(text), at + rnd.randrange(1, 40))
        return text[:at] + text[end:]
    if op == 4:
        return text[:at] + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8))) + text[at:]
    line_start = text.rfind(b"\n", 0, at) + 1
    line_end = text.find(b"\n", at)
    line = text[line_start:line_end if line_end >= 0 else len(text)]
    return text[:line_start] + line + b"\n" + line + text[line_start + len(line):]   # a duplicate key


def mutated_rig(rnd: random.Random) -> tuple[Path, bytes]:
    """(the example rig it came from, mutated bytes)."""
    source = rnd.choice(EXAMPLE_RIGS)
    raw = source.read_bytes()
    if rnd.random() < 0.75:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError:  # pragma: no cover - the examples are valid YAML
            data = None
        if isinstance(data, dict):
            data = mutate_data(data, rnd, rnd.choice((0, 1, 1, 2, 3)))
            try:
                raw = yaml.safe_dump(data, sort_keys=False, allow_unicode=rnd.random() < 0.5).encode("utf-8")
            except (yaml.YAMLError, UnicodeEncodeError):
                pass
    for _ in range(rnd.choice((0, 0, 1, 2))):
        raw = mutate_text(raw, rnd)
    return source, raw


def mirror(folder: Path, tmp: Path) -> Path:
    """A folder beside which a mutated rig finds its example's guests: every
    entry of `folder` symlinked into tmp/<folder name>."""
    target = tmp / folder.relative_to(REPO / "rigs")
    if not target.exists():
        target.mkdir(parents=True)
        for entry in folder.iterdir():
            if entry.suffix != ".yaml" or entry.name.endswith(".golden.yaml"):
                (target / entry.name).symlink_to(entry)
    return target
