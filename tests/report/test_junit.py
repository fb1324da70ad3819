"""The JUnit writer on hand-made results: one <testcase> per rig, <failure>
with every failed check, <error>, <skipped>, the console in <system-out>, and
an atomic write."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig import atomic
from kvmrig.errors import Mark
from kvmrig.machine.outcome import Failure, Outcome
from kvmrig.report.junit import junit_xml, write_junit
from kvmrig.result import ERROR, FAILED, PASSED, SKIPPED, RigResult


def failed_result() -> RigResult:
    outcome = Outcome(
        exit="hlt", detail="hlt at 0x1003", backend="kvm", regs={"rip": 0x1004},
        console=b"booting\nFAIL: table\n",
        failures=[
            Failure("register rax", "0x2a (42)", "0x2b (43)", Mark("/rigs/x86/a.yaml", 12, 5)),
            Failure("memory at 0x5000", "34 12 00 00", "00 00 00 00", Mark("/rigs/x86/a.yaml", 14, 7)),
            Failure("console", "to contain 'PASS'", "'booting\\nFAIL: table\\n'"),
        ])
    return RigResult("/rigs/x86/a.yaml", "a", FAILED, "rigs.x86", ("smoke",), outcome, seconds=0.25, backend="kvm")


def passed_result(name: str = "ok", console: bytes = b"Hello\n") -> RigResult:
    return RigResult(f"/rigs/x86/{name}.yaml", name, PASSED, "rigs.x86",
                     outcome=Outcome(exit="hlt", console=console, regs={"rip": 0x1001}), seconds=0.01, backend="kvm")


def error_result() -> RigResult:
    return RigResult("/rigs/x86/bad.yaml", "bad", ERROR, "rigs.x86",
                     message="/rigs/x86/bad.yaml:3:1: unknown key 'memry' (did you mean 'memory'?)\nmore detail")


def skipped_result() -> RigResult:
    return RigResult("/rigs/arm/s.yaml", "s", SKIPPED, "rigs.arm",
                     message="KVM cannot run this rig: KVM runs x86_64 guests on this x86_64 host, not arm64")


def parse(results) -> ET.Element:
    return ET.fromstring(junit_xml(results))


def cases(root: ET.Element) -> dict[str, ET.Element]:
    return {c.get("name"): c for c in root.iter("testcase")}


def test_one_testcase_per_rig_named_and_classed():
    root = parse([failed_result(), passed_result(), error_result(), skipped_result()])
    found = cases(root)
    assert list(found) == ["a", "ok", "bad", "s"]
    assert [c.get("classname") for c in found.values()] == ["rigs.x86", "rigs.x86", "rigs.x86", "rigs.arm"]
    (suite,) = root.iter("testsuite")
    counts = [suite.get(k) for k in ("tests", "failures", "errors", "skipped")]
    assert counts == ["4", "1", "1", "1"]


def test_failure_carries_every_failed_check_and_where_it_stopped():
    case = cases(parse([failed_result()]))["a"]
    failure = case.find("failure")
    assert failure is not None and case.find("error") is None
    text = failure.text
    assert "register rax: expected 0x2a (42), got 0x2b (43) [/rigs/x86/a.yaml:12]" in text
    assert "memory at 0x5000: expected 34 12 00 00, got 00 00 00 00 [/rigs/x86/a.yaml:14]" in text
    assert "console: expected to contain 'PASS'" in text
    assert "final pc 0x1004" in text
    message = failure.get("message")
    assert "\n" not in message, "one line"
    assert message.startswith("3 failed checks: register rax: expected 0x2a (42), got 0x2b (43) [/rigs/x86/a.yaml:12]; "
                              "memory at 0x5000: ")
    assert "; console: expected to contain 'PASS'" in message


def test_console_goes_to_system_out():
    case = cases(parse([failed_result()]))["a"]
    assert case.findtext("system-out") == "booting\nFAIL: table\n"
    assert cases(parse([passed_result()]))["ok"].findtext("system-out") == "Hello\n"


def test_passed_has_no_failure_error_or_skipped():
    case = cases(parse([passed_result()]))["ok"]
    assert [child.tag for child in case if child.tag in ("failure", "error", "skipped")] == []
    assert case.findtext("system-out") == "Hello\n"


def test_error_is_an_error_element_with_the_whole_message():
    case = cases(parse([error_result()]))["bad"]
    error = case.find("error")
    assert error is not None and case.find("failure") is None
    assert error.get("message") == "/rigs/x86/bad.yaml:3:1: unknown key 'memry' (did you mean 'memory'?)"
    assert "more detail" in error.text


def test_skipped_is_a_skipped_element_with_the_reason():
    case = cases(parse([skipped_result()]))["s"]
    skipped = case.find("skipped")
    assert skipped is not None
    assert "not arm64" in skipped.get("message")
    assert case.find("failure") is None and case.find("error") is None


def test_console_bytes_that_xml_cannot_hold_do_not_break_the_report():
    result = passed_result("noisy", b"ok\x00\x1b[31mred\x07 \xff <&> ]]> end\n")
    out = cases(parse([result]))["noisy"].findtext("system-out")   # parses: the XML is well formed
    assert out.startswith("ok") and "<&> ]]> end" in out and "red" in out


def test_suite_names_the_backends_that_ran():
    root = parse([passed_result(), skipped_result()])
    props = {p.get("name"): p.get("value") for p in root.findall("testsuite/properties/property")}
    assert props["backends"] == "kvm"
    assert props["backend:rigs.x86::ok"] == "kvm", "which backend ran each rig: on the suite, where the schema allows"
    assert "backend:rigs.arm::s" not in props, "a skipped rig ran nowhere"


def test_a_long_check_is_shortened_in_the_message_but_whole_in_the_text():
    result = failed_result()
    result.outcome.failures[2] = Failure("console", "to contain 'PASS'", repr("x" * 500))
    failure = cases(parse([result]))["a"].find("failure")
    assert len(failure.get("message")) < 400 and failure.get("message").endswith("...")
    assert "x" * 500 in failure.text


# -- the schema --------------------------------------------------------------------

SCHEMA = Path(__file__).with_name("junit-10.xsd")


def test_every_kind_of_result_validates_against_junit_10_xsd():
    xmlschema = pytest.importorskip("xmlschema")
    text = junit_xml([failed_result(), passed_result(), error_result(), skipped_result(),
                      passed_result("noisy", b"\x00\x1b[1m\xff")])
    xmlschema.XMLSchema(SCHEMA).validate(text)
    root = ET.fromstring(text)
    assert root.find("testsuite").get("disabled") is None
    times = [e.get("time") for e in root.iter() if e.get("time") is not None]
    assert times and all(re.fullmatch(r"\d+\.\d{3}", t) for t in times), times
    assert [c.get("time") for c in root.iter("testcase")][:2] == ["0.250", "0.010"]


def test_the_schema_rejects_what_it_should():
    """The check is real: testcase properties and a `file` attribute are refused."""
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(SCHEMA)
    root = ET.fromstring(junit_xml([passed_result()]))
    case = root.find(".//testcase")
    case.set("file", "/rigs/x86/ok.yaml")
    assert not schema.is_valid(ET.tostring(root, encoding="unicode"))
    del case.attrib["file"]
    ET.SubElement(ET.SubElement(case, "properties"), "property", name="backend", value="kvm")
    assert not schema.is_valid(ET.tostring(root, encoding="unicode"))


# -- writing --------------------------------------------------------------------

def test_write_creates_folders_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "reports" / "deep" / "junit.xml"
    write_junit(target, [passed_result(), error_result()])
    assert sorted(p.name for p in target.parent.iterdir()) == ["junit.xml"]
    assert len(list(ET.parse(target).getroot().iter("testcase"))) == 2


def test_write_replaces_an_existing_report(tmp_path):
    target = tmp_path / "junit.xml"
    target.write_text("old")
    write_junit(target, [passed_result()])
    assert ET.parse(target).getroot().find(".//testcase").get("name") == "ok"


def test_a_failed_write_keeps_the_old_report_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "junit.xml"
    target.write_text("previous report")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError):
        write_junit(target, [passed_result()])
    assert target.read_text() == "previous report"
    assert sorted(os.listdir(tmp_path)) == ["junit.xml"]
