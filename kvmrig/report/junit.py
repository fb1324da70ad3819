"""JUnit XML (via the junit-xml package), written atomically.

One <testcase> per rig: named by the rig's name, classname by its folder;
<failure> lists every failed check as expected vs actual; the console goes to
<system-out>; rig file errors are <error>; rigs not run are <skipped>.
"""

from __future__ import annotations

from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from kvmrig.atomic import write_atomic
from kvmrig.report.terminal import failure_lines
from kvmrig.result import ERROR, FAILED, SKIPPED, RigResult


def _case(result: RigResult) -> TestCase:
    out = result.outcome
    stdout = out.console.decode("utf-8", errors="replace") if out else None
    case = TestCase(result.name, classname=result.classname, elapsed_sec=result.seconds,
                    stdout=stdout, file=result.path)
    if result.status == FAILED:
        lines = failure_lines(result)
        first = lines[0] if lines else "failed"
        case.add_failure_info(message=first, output="\n".join(lines))
    elif result.status == ERROR:
        case.add_error_info(message=result.message.splitlines()[0] if result.message else "error",
                            output=result.message)
    elif result.status == SKIPPED:
        case.add_skipped_info(message=result.message or "skipped")
    return case


def junit_xml(results: list[RigResult], suite_name: str = "kvmrig") -> str:
    cases = [_case(r) for r in results]
    backends = sorted({r.backend for r in results if r.backend})
    props = {"backends": ",".join(backends)} if backends else None
    text = to_xml_report_string([TestSuite(suite_name, cases, properties=props)])
    return _with_backends(text, results)


def _with_backends(text: str, results: list[RigResult]) -> str:
    """Give each <testcase> a <properties><property name="backend" .../>
    saying which backend ran it ("kvm", "emu", or "kvm+emu" for a
    cross-check). junit-xml 1.9's TestCase has no properties, so they are
    added to its XML here, in the order the cases were written."""
    import xml.etree.ElementTree as ET

    if not any(r.backend for r in results):
        return text
    root = ET.fromstring(text)
    for element, result in zip(root.iter("testcase"), results):
        if result.backend:
            props = ET.Element("properties")
            ET.SubElement(props, "property", name="backend", value=result.backend)
            element.insert(0, props)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: str | Path, results: list[RigResult]) -> None:
    """Write the report so a reader never sees half a file."""
    write_atomic(path, junit_xml(results), prefix=".junit-")
