"""Check plain rig data against schemas/rig.schema.json, the published contract.

The same schema editors use (`# yaml-language-server: $schema=...`) checks
every rig before the loader reads it, so the loader can trust the shape and the
two never disagree. jsonschema's own messages are written for schema authors
("'64Q' is not valid under any of the given schemas"); this module turns the
error that comes first in the file into one a firmware engineer can act on,
at the line and column of the offending key or value:

    rig.yaml:7:3: unknown key 'brekpoints' (did you mean 'breakpoints'?)
    rig.yaml:12:24: memory[1].size: '64Q' is not a size (examples: 4096, ...)
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:   # jsonschema (~45 ms to import) only when a text is checked: not for cached rigs
    from jsonschema import Draft202012Validator, ValidationError

from kvmrig.errors import Mark, RigError
from kvmrig.rig import values as v
from kvmrig.rig.yamlmarks import JsonPath, Marks, format_path

# $defs whose failures read best as "X is not a <kind> (examples: ...)".
_KINDS = {
    "uint": f"a number >= 0 (examples: {v.INT_EXAMPLES})",
    "int": 'a number (examples: 20, -1, "0x7c00")',
    "regSet": 'a number or an ELF symbol (examples: 20, -1, "0x7c00", "sym:stack_top")',
    "size": f"a size (examples: {v.SIZE_EXAMPLES})",
    "address": f"an address (examples: {v.ADDRESS_EXAMPLES})",
    "duration": f"a duration (examples: {v.DURATION_EXAMPLES})",
    "count": f"a count (examples: {v.COUNT_EXAMPLES})",
    "hexBytes": f"hex bytes (examples: {v.HEX_EXAMPLES})",
    "strings": "a string or a list of strings",
    "regValue": "a register check (a number, \"sym:NAME\", {mask: M, value: V} or {range: [lo, hi]})",
    "golden": "a golden file (a file name, or {file: ..., ignore: [register, ...]})",
}
_TYPE_NAMES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


@functools.cache
def load_schema() -> dict[str, Any]:
    """The rig JSON Schema shipped in the package (read once)."""
    text = (resources.files("kvmrig") / "schemas" / "rig.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator
    return Draft202012Validator(load_schema())


@functools.cache
def _kind_ids() -> dict[int, str]:
    # jsonschema hands back the very dicts of the loaded schema, so identity
    # says which $def an error came from, without parsing schema paths.
    defs = load_schema()["$defs"]
    return {id(defs[name]): name for name in _KINDS}


def validate(data: Any, marks: Marks) -> None:
    """Raise RigError for the schema violations in the file, if any (every one, in file order)."""
    problems = [p for error in _validator().iter_errors(data) for p in _explain(error, marks)]
    # A misspelt key explains the required key that seems missing beside it.
    misspelt = {p.path for p in problems if p.unknown_key}
    problems = [p for p in problems if not (p.missing_key and p.path in misspelt)]
    if problems:
        seen, errors = set(), []
        for p in problems:
            if (p.mark, p.message) not in seen:
                seen.add((p.mark, p.message))
                errors.append(RigError(p.message, p.mark))
        raise RigError.of(errors) from None


class _Problem(NamedTuple):
    mark: Mark
    message: str
    path: JsonPath
    unknown_key: bool = False
    missing_key: bool = False


def _explain(err: ValidationError, marks: Marks) -> Iterator[_Problem]:
    """Problems for one error; nested anyOf/oneOf choices are unpacked."""
    branch = _likely_branch(err)
    if branch is not None:
        for sub in branch:
            yield from _explain(sub, marks)
        return
    path: JsonPath = tuple(err.absolute_path)
    where = format_path(path)
    at = f"{where}: " if where else ""
    kind = _kind_ids().get(id(err.schema))
    if kind:
        yield _Problem(marks.value(path), f"{at}{_not_a(err.instance, kind)}", path)
    elif "propertyNames" in err.schema_path:
        message = f"{at}{err.schema.get('errorMessage', 'bad key')}, not {v.show(err.instance)}"
        yield _Problem(marks.key(path + (err.instance,)), message, path)
    elif "errorMessage" in err.schema:
        yield _Problem(marks.value(path), f"{at}{err.schema['errorMessage']}", path)
    elif err.validator == "additionalProperties":
        yield _unknown_key(err, path, marks)
    elif err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance][0]
        message = f"{at}missing required key {missing!r}{_hint(err.schema, missing)}"
        yield _Problem(marks.value(path), message, path, missing_key=True)
    else:
        yield _Problem(marks.value(path), _simple(err, path, where, at), path)


def _likely_branch(err: ValidationError) -> list[ValidationError] | None:
    """For anyOf/oneOf on a mapping or list: the errors of the one branch the
    user evidently meant, so `{mask: 1, valeu: 0}` reports the unknown key
    instead of "not a register check". A branch is out when it wants another
    type; among mappings, the one sharing the most keys wins. None when no
    single branch stands out."""
    if err.validator not in ("anyOf", "oneOf") or not err.context or not isinstance(err.instance, (dict, list)):
        return None
    branches: dict[int, list[ValidationError]] = {}
    for sub in err.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    live = {i: subs for i, subs in branches.items() if not any(_type_miss(s) for s in subs)}
    if len(live) > 1 and isinstance(err.instance, dict):
        shared = {i: len(set(err.instance) & set(_properties(err.validator_value[i]))) for i in live}
        best = max(shared.values())
        live = {i: subs for i, subs in live.items() if shared[i] == best}
    return next(iter(live.values())) if len(live) == 1 else None


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        schema = load_schema()["$defs"][ref[len("#/$defs/"):]]
    return schema.get("properties", {})


def _type_miss(err: ValidationError) -> bool:
    """Whether `err` only says the instance itself has the wrong type."""
    if err.relative_path:
        return False
    if err.validator == "type":
        return True
    return err.validator in ("anyOf", "oneOf") and bool(err.context) and all(_type_miss(s) for s in err.context)


def _not_a(instance: Any, kind: str) -> str:
    if kind == "hexBytes" and isinstance(instance, int) and not isinstance(instance, bool):
        return (f"write hex bytes as a quoted string, e.g. \"{instance}\" "
                f"(YAML read {instance} as a number, which loses leading zeros)")
    if kind in ("uint", "size") and isinstance(instance, int) and not isinstance(instance, bool) and instance < 0:
        return f"{instance} is negative; expected {_KINDS[kind]}"
    return f"{v.show(instance)} is not {_KINDS[kind]}"


def _unknown_key(err: ValidationError, path: JsonPath, marks: Marks) -> _Problem:
    known = list(err.schema.get("properties", {}))
    extras = [k for k in err.instance if k not in known]
    key = min(extras, key=lambda k: (marks.key(path + (k,)).line, marks.key(path + (k,)).col))
    message = f"unknown key {key!r}"
    if path:
        message += f" in {format_path(path)}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or [k for k in known if k.lower() == key.lower()]
    if close:
        message += f" (did you mean {close[0]!r}?)"
    else:
        message += f" (known keys here: {', '.join(known)})"
    return _Problem(marks.key(path + (key,)), message, path, unknown_key=True)


def _hint(schema: dict[str, Any], key: str) -> str:
    prop = schema.get("properties", {}).get(key, {})
    if "const" in prop:
        return f" ({key}: {json.dumps(prop['const'])})"
    if "enum" in prop:
        return f" (one of {', '.join(map(str, prop['enum']))})"
    return ""


def _simple(err: ValidationError, path: JsonPath, where: str, at: str) -> str:
    """Messages for single-keyword failures."""
    value, shown = err.validator_value, v.show(err.instance)
    if err.validator == "enum":
        message = f"{where or 'value'} must be one of {', '.join(map(str, value))}, not {shown}"
        close = difflib.get_close_matches(str(err.instance), [str(x) for x in value], n=1, cutoff=0.6)
        return message + (f" (did you mean {close[0]!r}?)" if close else "")
    if err.validator == "const":
        if path == ("kvmrig",):
            return f"unsupported rig format version {shown}: this kvmrig reads kvmrig: {value}"
        return f"{where} must be {json.dumps(value)}, not {shown}"
    if err.validator == "type":
        wanted = [value] if isinstance(value, str) else list(value)
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        if not path:
            return f"a rig file must be a mapping of keys (kvmrig: 1, arch: ...), not {shown}"
        return f"{at}expected {names}, not {shown}"
    if err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[err.validator]
        return f"{where} must be {op} {value}, not {shown}"
    if err.validator == "minItems":
        return f"{at}needs at least {value} item{'s' if value != 1 else ''}, got {len(err.instance)}"
    if err.validator == "maxItems":
        return f"{at}takes at most {value} item{'s' if value != 1 else ''}, got {len(err.instance)}"
    if err.validator == "minLength":
        return f"{at}must not be empty"
    if err.validator is None:  # a `false` schema
        return f"{at}not allowed here"
    return f"{at}{shown} is not valid here ({err.message})"
