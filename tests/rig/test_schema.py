"""The published JSON Schema: well-formed, documented, in step with the value
parsers, and its failures turned into messages at the right line:col."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from jsonschema import Draft202012Validator

from kvmrig.errors import RigError
from kvmrig.rig import values
from kvmrig.rig.schema import load_schema, validate
from kvmrig.rig.yamlmarks import load_yaml

REPO = Path(__file__).resolve().parents[2]
HEAD = "kvmrig: 1\narch: x86_64\n"


def check(text: str) -> None:
    data, marks = load_yaml(text, "r.yaml")
    validate(data, marks)


def error(text: str) -> str:
    with pytest.raises(RigError) as info:
        check(text)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    return str(info.value)


# -- the schema document ---------------------------------------------------

def test_schema_is_valid_draft_2020_12():
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]


def test_repo_schemas_folder_is_the_package_copy():
    assert json.loads((REPO / "schemas" / "rig.schema.json").read_text()) == load_schema()


def _objects(node: Any, where: str = "#") -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if "properties" in node and "/if" not in where:  # `if` conditions are not documentation
            yield where, node
        for key, sub in node.items():
            yield from _objects(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _objects(sub, f"{where}/{i}")


def test_every_property_has_a_description_and_objects_are_closed():
    for where, obj in _objects(load_schema()):
        for name, prop in obj["properties"].items():
            assert prop.get("description"), f"{where}/properties/{name} has no description"
        assert obj.get("additionalProperties") is False, f"{where} accepts unknown keys"


CONTRACT_KEYS = {
    (): {"kvmrig", "name", "description", "arch", "tags", "timeout", "backend", "trace", "memory", "images",
         "devices", "cpu", "breakpoints", "watchpoints", "expect", "io", "save", "from", "set", "input", "call", "cpus", "gic", "dtb",
         "machine", "verdict"},
    ("trace",): {"max"},
    ("memory", "items"): {"at", "size", "rom", "name"},
    ("images", "items"): {"file", "at", "hex", "format", "cmdline", "modules", "initrd"},
    ("devices", "items"): {"type", "port", "at", "value", "size", "input", "idle", "irq", "files"},
    ("gic",): {"distributor", "redistributor", "irqs"},
    ("dtb",): {"file", "at", "bootargs", "initrd"},
    ("cpu",): {"mode", "entry", "regs", "tables_at", "cpuid"},
    ("breakpoints", "items"): {"at", "kind", "hits", "expect", "on_hit", "set", "save"},
    ("watchpoints", "items"): {"at", "len", "access", "hits", "expect", "on_hit", "set", "save"},
    ("expect",): {"exit", "exit_code", "regs", "memory", "console", "port_writes", "steps", "golden",
                  "executed", "not_executed"},   # extension: coverage (kvmrig.coverage)
    ("expect", "console"): {"contains", "not_contains", "regex"},
    ("io",): {"unclaimed"},
}


@pytest.mark.parametrize("path, keys", CONTRACT_KEYS.items())
def test_contract_keys_are_all_there(path, keys):
    node = load_schema()
    for part in path:
        node = node[part] if part == "items" else node["properties"][part]
    assert set(node["properties"]) == keys


def test_enums_match_the_contract():
    props = load_schema()["properties"]
    assert props["arch"]["enum"] == ["x86_64", "arm64"]
    assert props["backend"]["enum"] == ["any", "kvm", "emu"]
    assert props["expect"]["properties"]["exit"]["enum"] == [
        "hlt", "exit-code", "system-off", "reset", "shutdown", "mmio", "io", "timeout", "idle"]
    assert props["devices"]["items"]["properties"]["type"]["enum"] == [
        "serial", "pl011", "debugcon", "exit", "constant", "reset",
        "isa-debug-exit", "pc-testdev", "fw-cfg", "cmos"]
    assert props["io"]["properties"]["unclaimed"]["enum"] == ["record", "stop"]
    for extension in (props["io"], props["cpu"]["properties"]["tables_at"],
                      props["memory"]["items"]["properties"]["name"], props["save"], props["from"], props["set"],
                      props["input"], props["call"], props["breakpoints"]["items"]["properties"]["save"],
                      props["machine"], props["verdict"], props["cpu"]["properties"]["cpuid"],
                      props["images"]["items"]["properties"]["format"]):
        assert "kvmrig extension" in extension["description"]


# -- the schema's string patterns agree with the value parsers --------------

def _pattern_ok(def_name: str, text: str) -> bool:
    return Draft202012Validator(load_schema()).evolve(
        schema={"$ref": f"#/$defs/{def_name}", "$defs": load_schema()["$defs"]}).is_valid(text)


def _parser_ok(parse, text: str) -> bool:
    try:
        parse(text)
        return True
    except values.ValueProblem as e:
        return "longer than the limit" in str(e)  # a range the parser bounds, not a form (MAX_DURATION)


SAMPLES = ["0", "4096", "0x7c00", "0X7C", "0xffff_0000", "0b101", "0o17", "1_000", "-1", "+2", "0x", "x1", "1__0",
           "1_", "0x_1", " 1", "1.5", "64K", "2M", "1G", "64k", "64Q", "2MB", "500ms", "2s", "1.5s", "1m", "2h",
           ">=1", "<=3", "==2", ">0", "<5", "=>1", "sym:main", "sym:t+0x10", "sym:t-4", "sym:", "sym:a+", "f4",
           "34120000", "90 90 f4", "zz", ""]


@pytest.mark.parametrize("def_name, parse", [
    ("uint", values.parse_uint), ("int", values.parse_int), ("size", values.parse_size),
    ("duration", values.parse_duration), ("count", lambda t: values.parse_count(t, None)),
    ("address", lambda t: values.parse_address(t, None)),
])
def test_string_forms_agree(def_name, parse):
    for text in SAMPLES:
        if def_name == "count" and text == "<0":
            continue
        assert _pattern_ok(def_name, text) == _parser_ok(parse, text), (def_name, text)


def test_hex_pattern_accepts_all_the_parser_does():
    for text in SAMPLES:
        if _parser_ok(values.parse_hex, text):
            assert _pattern_ok("hexBytes", text), text


# -- messages and marks -------------------------------------------------------

def test_valid_minimal_rig():
    check(HEAD)


def test_misspelt_key_points_at_the_key():
    text = HEAD + "name: x\n" + "memory:\n  - {at: 0, size: 4K}\nexpect:\n  exti: hlt\n"
    assert error(text) == "r.yaml:7:3: unknown key 'exti' in expect (did you mean 'exit'?)"


def test_misspelt_top_level_key():
    assert error(HEAD + "brekpoints: []\n") == "r.yaml:3:1: unknown key 'brekpoints' (did you mean 'breakpoints'?)"


def test_unknown_key_without_a_close_match_lists_the_known_ones():
    assert "known keys here: max" in error(HEAD + "trace: {max: 1, zzz: 2}\n")


def test_misspelt_key_wins_over_the_required_key_it_hides():
    assert error("kvmrig: 1\narc: x86_64\n") == "r.yaml:2:1: unknown key 'arc' (did you mean 'arch'?)"


def test_enum_message():
    assert error(HEAD.replace("x86_64", "x86")) == \
        "r.yaml:2:7: arch must be one of x86_64, arm64, not 'x86' (did you mean 'x86_64'?)"


def test_size_message():
    text = HEAD + "memory:\n  - {at: 0, size: 2M}\n  - {at: 0x200000, size: 64Q}\n"
    assert error(text) == 'r.yaml:5:26: memory[1].size: \'64Q\' is not a size (examples: 4096, "0x1000", "64K", "2M")'


def test_version_message():
    assert error("kvmrig: 2\narch: x86_64\n") == \
        "r.yaml:1:9: unsupported rig format version 2: this kvmrig reads kvmrig: 1"


def test_first_error_in_the_file_wins():
    text = "kvmrig: 1\narch: x86_64\ntimeout: forever\nbackend: qemu\n"
    assert error(text).startswith("r.yaml:3:10: timeout: 'forever' is not a duration")
    text = "kvmrig: 1\narch: x86_64\nbackend: qemu\ntimeout: forever\n"
    assert error(text).startswith("r.yaml:3:10: backend must be one of any, kvm, emu, not 'qemu'")


@pytest.mark.parametrize("body, expected", [
    ("", "r.yaml:1:1: missing required key 'arch' (one of x86_64, arm64)"),
    ("memory: {at: 0}\n", "r.yaml:3:9: memory: expected a list, not a mapping"),
    ("tags: smoke\n", "r.yaml:3:7: tags: expected a list, not 'smoke'"),
    ("memory: [{at: -4096, size: 4K}]\n", "r.yaml:3:15: memory[0].at: -4096 is negative"),
    ("devices:\n  - {type: serial}\n", "r.yaml:4:5: devices[0]: a device needs exactly one of port"),
    ("devices:\n  - {type: serial, port: 1, at: 2}\n", "r.yaml:4:5: devices[0]: a device needs exactly one of port"),
    ("devices:\n  - {type: uart, port: 1}\n", "r.yaml:4:12: devices[0].type must be one of serial, pl011"),
    ("devices:\n  - {type: constant, at: 0x1000, value: 1}\n",
     "r.yaml:4:5: devices[0]: a constant device on MMIO needs size"),
    ("devices:\n  - {type: constant, port: 2}\n", "r.yaml:4:5: devices[0]: a constant device needs value"),
    ("images:\n  - {hex: 'f4'}\n", "r.yaml:4:5: images[0]: inline hex bytes need at"),
    ("images:\n  - {at: 0}\n", "r.yaml:4:5: images[0]: an image needs exactly one of file (a path) or hex"),
    ("images:\n  - {hex: 34120000, at: 0}\n", 'r.yaml:4:11: images[0].hex: write hex bytes as a quoted string'),
    ("expect:\n  regs:\n    rflags: {mask: 1, valeu: 0}\n",
     "r.yaml:5:23: unknown key 'valeu' in expect.regs.rflags (did you mean 'value'?)"),
    ("expect:\n  regs:\n    rax: abc\n", "r.yaml:5:10: expect.regs.rax: 'abc' is not a register check"),
    ("expect:\n  regs:\n    rax: {range: [1]}\n", "r.yaml:5:18: expect.regs.rax.range: needs at least 2 items, got 1"),
    ("expect: {steps: {rang: [1, 2]}}\n", "r.yaml:3:18: unknown key 'rang' in expect.steps (did you mean 'range'?)"),
    ("expect: {steps: '>=x'}\n", "r.yaml:3:17: expect.steps: '>=x' is not a count"),
    ("expect: {exit: halt}\n", "r.yaml:3:16: expect.exit must be one of hlt, exit-code"),
    ("expect: {port_writes: {0x80: [1], abc: [2]}}\n",
     "r.yaml:3:35: expect.port_writes: a port_writes key must be a port number, e.g. 0x80, not 'abc'"),
    ("expect: {memory: [{at: 0, u8: 1, u16: 2}]}\n", "r.yaml:3:19: expect.memory[0]: give exactly one of hex, u8"),
    ("expect: {golden: 5}\n", "r.yaml:3:18: expect.golden: 5 is not a golden file"),
    ("expect: {console: {contains: [1]}}\n", "r.yaml:3:31: expect.console.contains[0]: expected a string, not 1"),
    ("breakpoints: [{at: 'sym:'}]\n", "r.yaml:3:20: breakpoints[0].at: 'sym:' is not an address"),
    ("breakpoints: [{at: 5, kind: hardware}]\n", "r.yaml:3:29: breakpoints[0].kind must be one of sw, hw"),
    ("watchpoints: [{at: 1}]\n", "r.yaml:3:15: watchpoints[0]: missing required key 'len'"),
    ("watchpoints: [{at: 1, len: 4, access: modify}]\n", "r.yaml:3:39: watchpoints[0].access must be one of read"),
    ("io: {unclaimed: crash}\n", "r.yaml:3:17: io.unclaimed must be one of record, stop"),
    ("cpu: {mode: long, regs: {rax: [1]}}\n", "r.yaml:3:31: cpu.regs.rax: a list is not a number"),
    ("trace: {max: -1}\n", "r.yaml:3:14: trace.max: -1 is negative"),
])
def test_messages(body, expected):
    text = HEAD + body if body else "kvmrig: 1\n"
    assert error(text).startswith(expected)


def test_root_must_be_a_mapping():
    assert error("- a\n") == "r.yaml:1:1: a rig file must be a mapping of keys (kvmrig: 1, arch: ...), not a list"


def test_every_message_is_one_line_with_a_mark():
    for text in ("kvmrig: 1\narch: 5\n", HEAD + "memory: 5\n", HEAD + "cpu: {entry: []}\n"):
        assert re.match(r"^r\.yaml:\d+:\d+: \S.*$", error(text))
