"""JSON results (kvmrig/report/json_report.py): the record of each rig, the
published schema (kvmrig/schemas/results.schema.json) checked against real
output, an atomic write, and the reader that --durations-from and merge use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from kvmrig.backends.select import HOST_ARCH
from kvmrig.errors import Mark
from kvmrig.machine.outcome import Failure, Hit, Outcome
from kvmrig.report.json_report import ResultsFileError, read_results, record, results_json, write_json
from kvmrig.rig.model import EXITS
from kvmrig.result import ERROR, FAILED, PASSED, SKIPPED, RigResult

REPO = Path(__file__).resolve().parents[2]
kvm = pytest.mark.kvm
x86_host = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 guest code")


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(resources.files("kvmrig").joinpath("schemas/results.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def valid(validator: Draft202012Validator, doc: dict) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors


def failed_result() -> RigResult:
    mark = Mark("rigs/a.yaml", 12, 5)
    outcome = Outcome(
        exit="exit-code", exit_code=0x11, detail="write of 0x11 to port 0xf4", backend="kvm",
        regs={"rax": 0xefcdab8967452301, "rip": 0x1004}, console=b"boot\n\xff!\n",
        port_writes=[(0x80, 1, 0x10)], device_writes=[("exit", 0xF4, 1, 0x11)],
        hits=[Hit("breakpoint[0] sym:loop (0x1010)", 1, 0x1010, None, {"rcx": 3},
                  [Failure("register rcx at hit 1", "0x2 (2)", "3", mark)]),
              Hit("watchpoint[0] 0x5000+4 write", 1, 0x1020, 0x5000)],
        hit_counts={"breakpoint[0] sym:loop (0x1010)": 1, "watchpoint[0] 0x5000+4 write": 1},
        steps=42, trace=[0x1000, 0x1003],
        failures=[Failure("register rax", "0x2a (42)", "0x2b (43)", mark), Failure("console", "'PASS'", "'boot'")],
        notes=["hw breakpoints fell back to sw"], exits=7)
    return RigResult("rigs/a.yaml", "a", FAILED, "rigs", ("smoke", "math"), outcome, seconds=0.25,
                     backend="kvm", details=["code at 0x1003:"])


def test_record_of_a_failed_rig(validator) -> None:
    rec = record(failed_result())
    assert rec["name"] == "a" and rec["file"] == "rigs/a.yaml" and rec["status"] == FAILED
    assert rec["tags"] == ["smoke", "math"] and rec["backend"] == "kvm" and rec["duration"] == 0.25
    assert rec["exit"] == {"reason": "exit-code", "code": 0x11, "detail": "write of 0x11 to port 0xf4"}
    assert rec["regs"] == {"rax": "0xefcdab8967452301", "rip": "0x1004"}   # 64 bits intact as hex
    assert rec["console"] == "boot\n\ufffd!\n"
    assert rec["failures"] == [
        {"what": "register rax", "expected": "0x2a (42)", "actual": "0x2b (43)",
         "file": "rigs/a.yaml", "line": 12, "col": 5},
        {"what": "console", "expected": "'PASS'", "actual": "'boot'"}]
    assert rec["hits"][0] == {"point": "breakpoint[0] sym:loop (0x1010)", "number": 1, "cpu": 0, "pc": "0x1010",
                              "addr": None, "regs": {"rcx": "0x3"},
                              "failures": [{"what": "register rcx at hit 1", "expected": "0x2 (2)",
                                            "actual": "3", "file": "rigs/a.yaml", "line": 12, "col": 5}]}
    assert rec["hits"][1]["addr"] == "0x5000"
    assert rec["hit_counts"] == {"breakpoint[0] sym:loop (0x1010)": 1, "watchpoint[0] 0x5000+4 write": 1}
    assert rec["steps"] == 42 and rec["trace"] == ["0x1000", "0x1003"] and rec["exits"] == 7
    assert rec["port_writes"] == [{"port": "0x80", "size": 1, "value": "0x10"}]
    assert rec["device_writes"] == [{"device": "exit", "addr": "0xf4", "size": 1, "value": "0x11"}]
    assert rec["notes"] == ["hw breakpoints fell back to sw"] and rec["details"] == ["code at 0x1003:"]
    valid(validator, results_json([failed_result()]))


def test_rigs_that_did_not_run(validator) -> None:
    error = RigResult("rigs/bad.yaml", "bad", ERROR, "rigs", message="rigs/bad.yaml:3:1: unknown key 'memry'")
    skipped = RigResult("rigs/s.yaml", "s", SKIPPED, "rigs", message="KVM cannot run this rig")
    doc = results_json([error, skipped], seconds=1.5)
    for rec in doc["rigs"]:
        assert rec["exit"] is None and rec["regs"] == {} and rec["console"] == "" and rec["steps"] is None
    assert doc["rigs"][0]["message"] == "rigs/bad.yaml:3:1: unknown key 'memry'"
    assert doc["summary"] == {"passed": 0, "failed": 0, "error": 1, "skipped": 1, "total": 2, "seconds": 1.5}
    assert doc["kvmrig_results"] == 1
    valid(validator, doc)


def test_summary_counts(validator) -> None:
    ok = RigResult("rigs/ok.yaml", "ok", PASSED, "rigs", outcome=Outcome(exit="hlt"), seconds=0.5)
    doc = results_json([ok, ok, failed_result()])
    assert doc["summary"] == {"passed": 2, "failed": 1, "error": 0, "skipped": 0, "total": 3, "seconds": 1.25}
    valid(validator, doc)


def test_schema_knows_every_exit(validator) -> None:
    exit_schema = validator.schema["$defs"]["rig"]["properties"]["exit"]["oneOf"][1]
    assert set(EXITS) <= set(exit_schema["properties"]["reason"]["enum"])


def test_a_rig_ending_unhandled_is_valid_and_its_details_are_filled(validator) -> None:
    outcome = Outcome(exit="unhandled", detail="an instruction abort at pc 0x40000000", backend="emu",
                      failures=[Failure("exit", "system-off", "unhandled")],
                      report=["code at 0x40000000:", "=> 0x40000000: 00 00 00 00  udf #0", "registers:"])
    result = RigResult("rigs/u.yaml", "u", FAILED, "rigs", outcome=outcome, backend="emu", details=["cross: x"])
    doc = results_json([result])
    valid(validator, doc)
    assert doc["rigs"][0]["details"] == ["code at 0x40000000:", "=> 0x40000000: 00 00 00 00  udf #0",
                                         "registers:", "cross: x"]


def test_write_is_atomic_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    write_json(path, [failed_result()], seconds=2.0)
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
    doc = read_results(path)
    assert doc["rigs"][0]["name"] == "a" and doc["summary"]["seconds"] == 2.0


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"), ("[]", "not kvmrig JSON results"), ('{"kvmrig_results": 2, "rigs": []}', "format 1"),
    ('{"kvmrig_results": 1, "rigs": [{"name": "a"}]}', "rigs[0] is not a rig record"),
])
def test_read_refuses_what_is_not_results(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(ResultsFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_results(tmp_path / "r.json")


@kvm
@x86_host
def test_real_output_matches_the_schema(tmp_path: Path, validator) -> None:
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "hits.yaml").write_text(textwrap.dedent("""\
        kvmrig: 1
        arch: x86_64
        trace: {max: 8}
        memory: [{at: 0, size: 64K}]
        images: [{hex: "b8 05 00 40 a3 00 50 f4", at: 0x1000}]   # mov ax, 5 ; inc ax ; mov [0x5000], ax ; hlt
        devices: [{type: debugcon, port: 0xe9}]
        cpu: {mode: real}
        breakpoints:
          - {at: 0x1003, hits: 1, expect: {regs: {ax: 5}}}
        watchpoints:
          - {at: 0x5000, len: 2, access: write, hits: 1}
        expect:
          exit: hlt
          regs: {ax: 7}
        """))
    (rigs / "broken.yaml").write_text("kvmrig: 1\narch: x86_64\nmemry: []\n")
    out = tmp_path / "results.json"
    got = subprocess.run([sys.executable, "-m", "kvmrig", "run", str(rigs), str(REPO / "rigs" / "x86"),
                          "--junit", "", "--json", str(out), "-q"], capture_output=True, text=True, timeout=180)
    assert got.returncode == 1, got.stdout + got.stderr
    doc = json.loads(out.read_text())
    valid(validator, doc)
    recs = {r["name"]: r for r in doc["rigs"]}
    assert recs["broken"]["status"] == ERROR and "broken.yaml:3:1" in recs["broken"]["message"]
    hits = recs["hits"]
    assert hits["status"] == FAILED, hits
    assert hits["failures"][0]["what"].startswith("register ax")
    assert (hits["failures"][0]["file"], hits["failures"][0]["line"]) == (str(rigs / "hits.yaml"), 14)
    assert hits["exit"]["reason"] == "hlt" and hits["regs"]["rax"] == "0x6"
    assert sum(hits["hit_counts"].values()) == 2 and len(hits["hits"]) >= 1
    assert hits["trace"][:2] == ["0x1000", "0x1003"]
    assert hits["details"][0].startswith("code at ") and "registers:" in hits["details"], hits["details"]
    assert doc["summary"]["total"] == len(doc["rigs"]) >= 16
