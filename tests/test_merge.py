"""`kvmrig merge` (kvmrig/merge.py): JUnit XML and JSON results of several runs as one."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig import cli
from kvmrig.backends.select import HOST_ARCH
from kvmrig.merge import merge_junit

from tests.conftest import kvmrig_cli as kvmrig

kvm = pytest.mark.kvm
x86_host = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 guest code")

RIG = """\
kvmrig: 1
arch: x86_64
memory: [{{at: 0, size: 64K}}]
images: [{{hex: "b8 05 00 f4", at: 0x1000}}]   # mov ax, 5 ; hlt
cpu: {{mode: real}}
expect: {{regs: {{ax: {ax}}}}}
"""
BROKEN = "kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\ncpu: {mode: rea}\n"


def totals(path: Path) -> dict[str, str]:
    return root_totals(ET.parse(path).getroot())


def root_totals(root: ET.Element) -> dict[str, str]:
    """The run's counts: <testsuites> has no `skipped` in junit-10.xsd, so that one is its suites' sum."""
    counts = {k: root.get(k) for k in ("tests", "failures", "errors")}
    counts["skipped"] = str(sum(int(s.get("skipped", 0)) for s in root.iter("testsuite")))
    return counts


def suite_totals(suite: ET.Element) -> dict[str, str]:
    return {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}


@kvm
@x86_host
def test_merged_shards_equal_one_full_run(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    for i in range(5):
        (rigs / f"pass{i}.yaml").write_text(RIG.format(ax=5))
    (rigs / "fail.yaml").write_text(RIG.format(ax=6))
    (rigs / "broken.yaml").write_text(BROKEN)
    assert kvmrig("run", "rigs", "--junit", "full.xml", "--json", "full.json", "-q", cwd=tmp_path).returncode == 1
    for k in (1, 2):
        kvmrig("run", "rigs", "--shard", f"{k}/2", "--junit", f"s{k}.xml", "--json", f"s{k}.json", "-q",
               cwd=tmp_path)
    assert cli.main(["merge", "merged.xml", "s1.xml", "s2.xml"]) == 0
    assert "merged 2 file(s) into merged.xml: 7 tests, 1 failures, 1 errors, 0 skipped" in capsys.readouterr().out
    full = ET.parse(tmp_path / "full.xml").getroot()
    (full_suite,) = full.findall("testsuite")
    assert totals(tmp_path / "merged.xml") == suite_totals(full_suite) == \
        {"tests": "7", "failures": "1", "errors": "1", "skipped": "0"}
    merged = ET.parse(tmp_path / "merged.xml").getroot()
    suites = merged.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("name") == "kvmrig"   # same-named suites become one
    assert suite_totals(suites[0]) == suite_totals(full_suite)
    names = sorted(c.get("name") for c in merged.iter("testcase"))
    assert names == sorted(c.get("name") for c in full.iter("testcase"))
    props = {p.get("name"): p.get("value") for p in suites[0].findall("properties/property")}
    full_props = {p.get("name"): p.get("value") for p in full_suite.findall("properties/property")}
    assert props == full_props and props["backends"] == "kvm" and props["backend:rigs::pass0"] == "kvm"
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(Path(__file__).parent / "report" / "junit-10.xsd")
    for name in ("full.xml", "merged.xml"):
        schema.validate(str(tmp_path / name))

    assert cli.main(["merge", "merged.json", "s1.json", "s2.json"]) == 0
    doc = json.loads((tmp_path / "merged.json").read_text())
    full_doc = json.loads((tmp_path / "full.json").read_text())
    for key in ("passed", "failed", "error", "skipped", "total"):
        assert doc["summary"][key] == full_doc["summary"][key]
    assert sorted(r["name"] for r in doc["rigs"]) == sorted(r["name"] for r in full_doc["rigs"])


SUITE_A = """<?xml version="1.0" ?>
<testsuites tests="2" failures="1">
  <testsuite name="kvmrig" tests="2" failures="1" errors="0" skipped="0" time="1.5" hostname="a">
    <properties><property name="backends" value="kvm"/></properties>
    <testcase name="one" classname="rigs" time="0.5"/>
    <testcase name="two" classname="rigs" time="1.0"><failure message="no">x</failure></testcase>
  </testsuite>
</testsuites>
"""
SUITE_B = """<?xml version="1.0" ?>
<testsuites>
  <testsuite name="kvmrig" tests="99" time="2">
    <properties><property name="backends" value="emu"/><property name="host" value="b"/></properties>
    <testcase name="three" classname="rigs" time="1"><error message="bad"/></testcase>
    <testcase name="four" classname="rigs" time="1"><skipped/></testcase>
  </testsuite>
  <testsuite name="other" time="0.25">
    <testcase name="five" classname="more" time="0.25"/>
  </testsuite>
</testsuites>
"""
PYTEST_STYLE = """<?xml version="1.0" encoding="utf-8"?><testsuite name="pytest" errors="0" failures="0"
 skipped="0" tests="1" time="0.1"><testcase classname="rigs.a.yaml" name="a" time="0.1"/></testsuite>"""


def test_counts_are_recounted_and_suites_kept_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(SUITE_A)
    (tmp_path / "b.xml").write_text(SUITE_B)
    (tmp_path / "c.xml").write_text(PYTEST_STYLE)
    root = merge_junit([tmp_path / "a.xml", tmp_path / "b.xml", tmp_path / "c.xml"])
    assert root_totals(root) == {"tests": "6", "failures": "1", "errors": "1", "skipped": "1"}
    assert root.get("skipped") is None
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["kvmrig", "other", "pytest"]
    assert suite_totals(suites["kvmrig"]) == {"tests": "4", "failures": "1", "errors": "1", "skipped": "1"}
    assert float(suites["kvmrig"].get("time")) == pytest.approx(3.5)
    assert float(root.get("time")) == pytest.approx(3.85)
    assert suites["kvmrig"].get("hostname") == "a"
    props = {p.get("name"): p.get("value") for p in suites["kvmrig"].findall("properties/property")}
    assert props == {"backends": "kvm,emu", "host": "b"}
    assert [c.get("name") for c in suites["kvmrig"].iter("testcase")] == ["one", "two", "three", "four"]


def test_merge_command_writes_parseable_xml(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(SUITE_A)
    (tmp_path / "b.xml").write_text(SUITE_B)
    out = tmp_path / "out" / "all.xml"
    got = subprocess.run([sys.executable, "-m", "kvmrig", "merge", str(out), str(tmp_path / "a.xml"),
                          str(tmp_path / "b.xml")], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert "5 tests, 1 failures, 1 errors, 1 skipped" in got.stdout
    assert totals(out) == {"tests": "5", "failures": "1", "errors": "1", "skipped": "1"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".merge-")]


def _results(*records: tuple[str, str, float]) -> str:
    rigs = [{"name": n, "file": f"rigs/{n}.yaml", "status": s, "duration": d} for n, s, d in records]
    return json.dumps({"kvmrig_results": 1, "summary": {"seconds": sum(d for *_, d in records)}, "rigs": rigs})


def test_json_merge(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.json").write_text(_results(("a", "passed", 1.0), ("b", "failed", 2.0)))
    (tmp_path / "b.json").write_text(_results(("c", "error", 0.0), ("d", "skipped", 0.5)))
    assert cli.main(["merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert "4 tests, 1 failures, 1 errors, 1 skipped" in capsys.readouterr().out
    doc = json.loads((tmp_path / "m.json").read_text())
    assert [r["name"] for r in doc["rigs"]] == ["a", "b", "c", "d"]
    assert doc["summary"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1, "total": 4, "seconds": 3.5}


def test_a_file_given_twice_or_overlapping_shards_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.xml").write_text(SUITE_A)
    (tmp_path / "a.json").write_text(_results(("a", "passed", 1.0)))
    (tmp_path / "b.json").write_text(_results(("a", "failed", 1.0)))
    assert cli.main(["merge", str(tmp_path / "m.xml"), str(tmp_path / "a.xml"), str(tmp_path / "a.xml")]) == 2
    assert "a.xml is given twice" in capsys.readouterr().err
    (tmp_path / "copy.xml").write_text(SUITE_A)
    assert cli.main(["merge", str(tmp_path / "m.xml"), str(tmp_path / "a.xml"), str(tmp_path / "copy.xml")]) == 2
    err = capsys.readouterr().err
    assert "test case rigs::one is in " in err and "a.xml and in " in err and "copy.xml" in err
    assert cli.main(["merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "refusing to count it twice" in capsys.readouterr().err
    assert not (tmp_path / "m.xml").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("out, inputs, message", [
    ("m.txt", ["a.xml"], "must end in .xml (JUnit) or .json"),
    ("m.xml", ["a.xml", "a.json"], "inputs must all be .xml files"),
    ("m.xml", ["missing.xml"], "missing.xml: no such file"),
    ("m.xml", ["bad.xml"], "bad.xml: not XML"),
    ("m.xml", ["html.xml"], "not a JUnit report (its root is <html>"),
    ("m.json", ["bad.json"], "bad.json:1:1: not JSON"),
    ("m.json", ["other.json"], "not kvmrig JSON results"),
])
def test_bad_inputs_exit_2(out: str, inputs: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.xml").write_text(SUITE_A)
    (tmp_path / "a.json").write_text(_results(("a", "passed", 1.0)))
    (tmp_path / "bad.xml").write_text("<testsuites>")
    (tmp_path / "html.xml").write_text("<html/>")
    (tmp_path / "bad.json").write_text("]")
    (tmp_path / "other.json").write_text('{"rigs": [1]}')
    assert cli.main(["merge", str(tmp_path / out), *(str(tmp_path / i) for i in inputs)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / out).exists()
