"""JUnit XML, valid against the common junit-10.xsd, written atomically.

One <testcase> per rig: named by the rig's name, classname by its folder
(result.classname_for: stable whatever the working directory). A failed rig
is a <failure> whose `message` is one line naming every failed check and
whose text is the whole diagnosis (report.terminal.failure_message and
failure_text, which the pytest plugin uses too, so both producers write the
same); rig file errors are <error>; skipped rigs <skipped>; the console goes
to <system-out>. The schema allows properties only on the suite: there
`backends` lists the backends that ran and `backend:CLASSNAME::NAME` says
which one ran each rig. Times are in seconds to the millisecond.

Written with ElementTree: junit-xml (the package) writes attributes the
schema does not allow (`file`, `disabled`) and times to the microsecond.
"""

from __future__ import annotations

import functools
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from kvmrig.atomic import write_atomic
from kvmrig.report.terminal import failure_message, failure_text
from kvmrig.result import ERROR, FAILED, SKIPPED, RigResult

# Characters XML 1.0 cannot hold (C0 controls but tab, LF, CR; surrogates; U+FFFE/F).
# Compiled when first needed: its wide ranges take the re compiler ~10 ms, and
# most texts (names, folders) are printable ASCII, which XML holds as it is.
_NOT_XML_PATTERN = "[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"


@functools.cache
def _not_xml() -> re.Pattern[str]:
    return re.compile(_NOT_XML_PATTERN)


def xml_text(text: str) -> str:
    """`text` with the characters XML cannot hold written as \\xNN / \\uNNNN."""
    if text.isascii() and text.isprintable():
        return text
    return _not_xml().sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def seconds(value: float) -> str:
    """A time as junit-10.xsd's SUREFIRE_TIME takes it: at most three decimals."""
    return f"{max(0.0, value):.3f}"


def backend_property(result: RigResult) -> str:
    return f"backend:{result.classname}::{result.name}"


def _case(result: RigResult) -> ET.Element:
    case = ET.Element("testcase", name=xml_text(result.name), classname=xml_text(result.classname),
                      time=seconds(result.seconds))
    if result.status == FAILED:
        ET.SubElement(case, "failure", message=xml_text(failure_message(result)),
                      type="kvmrig.RigFailed").text = xml_text(failure_text(result))
    elif result.status == ERROR:
        first = result.message.splitlines()[0] if result.message else "error"
        ET.SubElement(case, "error", message=xml_text(first), type="kvmrig.RigError").text = \
            xml_text(result.message)
    elif result.status == SKIPPED:
        ET.SubElement(case, "skipped", message=xml_text(result.message or "skipped"))
    if result.outcome is not None and result.outcome.console:
        ET.SubElement(case, "system-out").text = xml_text(result.outcome.console.decode("utf-8", errors="replace"))
    return case


def _subtest_cases(result: RigResult) -> list[ET.Element]:
    """The guest's own checks (rig `verdict:`), each a testcase under the rig:
    classname = the rig's classname + its name."""
    out = result.outcome
    if out is None or not out.subtests:
        return []
    cases = []
    for st in out.subtests:
        case = ET.Element("testcase", name=xml_text(st.name), classname=xml_text(f"{result.classname}.{result.name}"),
                          time=seconds(0))
        if st.status == "failed":
            ET.SubElement(case, "failure", message=xml_text(st.line), type="kvmrig.GuestCheck").text = xml_text(st.line)
        elif st.status == "xpass":
            ET.SubElement(case, "failure", message=xml_text(f"{st.line} (a known failure passed: unexpected)"),
                          type="kvmrig.GuestCheck").text = xml_text(st.line)
        elif st.status == "skipped":
            ET.SubElement(case, "skipped", message=xml_text(st.line))
        cases.append(case)
    return cases


def junit_tree(results: list[RigResult], suite_name: str = "kvmrig") -> ET.Element:
    statuses = [r.status for r in results]
    subtests = [st.status for r in results if r.outcome is not None for st in r.outcome.subtests]
    counts = {"tests": len(results) + len(subtests),
              "failures": statuses.count(FAILED) + sum(s in ("failed", "xpass") for s in subtests),
              "errors": statuses.count(ERROR)}
    total = sum(r.seconds for r in results)
    root = ET.Element("testsuites", name=suite_name, time=seconds(total), **{k: str(v) for k, v in counts.items()})
    suite = ET.SubElement(root, "testsuite", name=suite_name, **{k: str(v) for k, v in counts.items()},
                          skipped=str(statuses.count(SKIPPED) + subtests.count("skipped")), time=seconds(total),
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"), hostname=os.uname().nodename)
    backends = sorted({r.backend for r in results if r.backend})
    if backends:
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="backends", value=",".join(backends))
        for r in results:
            if r.backend:
                ET.SubElement(props, "property", name=xml_text(backend_property(r)), value=r.backend)
    for r in results:
        suite.append(_case(r))
        suite.extend(_subtest_cases(r))
    return root


def junit_xml(results: list[RigResult], suite_name: str = "kvmrig") -> str:
    root = junit_tree(results, suite_name)
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, results: list[RigResult]) -> None:
    """Write the report so a reader never sees half a file."""
    write_atomic(path, junit_xml(results), prefix=".junit-")
