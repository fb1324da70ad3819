"""`kvmrig merge OUT IN...`: one report from the reports of several runs (CI shards).

- JUnit XML (OUT ends in .xml): test suites of the same name become one
  suite holding all their test cases; suites of other names stay beside it.
  Every count (tests, failures, errors, skipped) is recounted from the test
  cases, times are summed, and suite properties are kept (a property that
  differs between inputs, like `backends`, gets the distinct values joined
  by commas). Reads what `kvmrig run --junit` and pytest's `--junitxml` write.
- JSON results (OUT ends in .json): the rig records of every input in order,
  under a summary recounted from them (seconds: the sum of the inputs').

- lcov tracefiles (OUT ends in .info, from `kvmrig run --coverage`): the
  counts of every line and function are added up (kvmrig.coverage.lcov).

All are written atomically. A JUnit or JSON test case (classname and name)
that appears in more than one input, or a file given twice, is refused (exit
2, naming both places): counting it twice would hide a mistake in the sharding.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from kvmrig.atomic import write_atomic
from kvmrig.coverage import lcov
from kvmrig.errors import ResultsFileError, UsageError
from kvmrig.report.json_report import document, read_results, write_document

COUNTS = ("tests", "failures", "errors", "skipped")


# JUnit ---------------------------------------------------------------------------

def _suites(path: str | Path) -> list[ET.Element]:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    except ET.ParseError as e:
        raise UsageError(f"{path}: not XML: {e}") from None
    if root.tag == "testsuite":
        return [root]
    if root.tag == "testsuites":
        return root.findall("testsuite")
    raise UsageError(f"{path}: not a JUnit report (its root is <{root.tag}>, not <testsuites> or <testsuite>)")


def _float(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def _case_counts(suite: ET.Element) -> Counter:
    counts: Counter = Counter()
    for case in suite.findall("testcase"):
        counts["tests"] += 1
        if case.find("failure") is not None:
            counts["failures"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
    return counts


def _merge_properties(into: ET.Element, other: ET.Element | None) -> None:
    if other is None:
        return
    props = into.find("properties")
    if props is None:
        props = ET.Element("properties")
        into.insert(0, props)
    known = {p.get("name"): p for p in props.findall("property")}
    for prop in other.findall("property"):
        name, value = prop.get("name"), prop.get("value", "")
        mine = known.get(name)
        if mine is None:
            known[name] = ET.SubElement(props, "property", {"name": name or "", "value": value})
            continue
        values = [v for v in mine.get("value", "").split(",") if v]
        for v in value.split(","):
            if v and v not in values:
                values.append(v)
        mine.set("value", ",".join(values))


class _Seen:
    """Where each test case was first seen, to refuse a second one."""

    def __init__(self) -> None:
        self.where: dict[tuple[str, str], str] = {}

    def add(self, classname: str, name: str, path: str | Path) -> None:
        key = (classname, name)
        first = self.where.setdefault(key, str(path))
        if first != str(path) or key in self._here:
            again = "twice in " + first if first == str(path) else f"in {first} and in {path}"
            raise UsageError(f"test case {classname}::{name} is {again}: refusing to count it twice "
                             "(a file given twice, or shards that overlap)")
        self._here.add(key)

    def next_file(self) -> None:
        self._here: set[tuple[str, str]] = set()


def _same_files(inputs: list[str | Path]) -> None:
    seen: dict[Path, str] = {}
    for path in inputs:
        key = Path(path).resolve()
        if key in seen:
            raise UsageError(f"{path} is given twice (as {seen[key]} and {path}): its tests would count twice")
        seen[key] = str(path)


def merge_junit(inputs: list[str | Path]) -> ET.Element:
    """One <testsuites> with the inputs' suites merged by name, counts recounted."""
    _same_files(inputs)
    merged: dict[str, ET.Element] = {}
    seen = _Seen()
    for path in inputs:
        seen.next_file()
        suites = _suites(path)
        for suite in suites:
            for case in suite.iter("testcase"):
                seen.add(case.get("classname", ""), case.get("name", ""), path)
        for suite in suites:
            name = suite.get("name", "")
            target = merged.get(name)
            if target is None:
                target = merged[name] = ET.Element("testsuite", {"name": name})
                for key, value in suite.attrib.items():
                    if key not in COUNTS and key not in ("name", "time", "disabled"):
                        target.set(key, value)   # timestamp, hostname: those of the first input
                target.set("time", "0")
            _merge_properties(target, suite.find("properties"))
            target.set("time", f"{_float(target.get('time')) + _float(suite.get('time')):.3f}")
            for child in suite:
                if child.tag != "properties":
                    target.append(child)
    root = ET.Element("testsuites")
    totals: Counter = Counter()
    seconds = 0.0
    for suite in merged.values():
        counts = _case_counts(suite)
        for key in COUNTS:
            suite.set(key, str(counts[key]))
        totals.update(counts)
        seconds += _float(suite.get("time"))
        root.append(suite)
    for key in COUNTS:
        if key != "skipped":   # junit-10.xsd has no `skipped` on <testsuites> (the suites carry it)
            root.set(key, str(totals[key]))
    root.set("time", f"{seconds:.3f}")
    return root


def write_junit_tree(path: str | Path, root: ET.Element) -> None:
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    _write_atomic(path, '<?xml version="1.0" encoding="utf-8"?>\n' + text + "\n", ".xml")


# JSON ----------------------------------------------------------------------------

def merge_json(inputs: list[str | Path]) -> dict:

    _same_files(inputs)
    records: list[dict] = []
    seconds = 0.0
    seen = _Seen()
    for path in inputs:
        try:
            doc = read_results(path)
        except ResultsFileError as e:
            raise UsageError(str(e)) from None
        seen.next_file()
        for rec in doc["rigs"]:
            seen.add(str(rec.get("classname", "")), rec["name"], path)
        records.extend(doc["rigs"])
        summary = doc.get("summary") or {}
        seconds += _float(str(summary.get("seconds", 0)))
    return document(records, seconds)


# Both ----------------------------------------------------------------------------

KINDS = {".xml": "junit", ".json": "json", ".info": "lcov"}
SUFFIX = {"junit": ".xml", "json": ".json", "lcov": ".info"}


def merge_files(out: str | Path, inputs: list[str | Path]) -> str:
    """Merge `inputs` into `out` (the kind by the suffix, the same for all); returns a summary line."""
    kind = KINDS.get(Path(out).suffix.lower())
    if kind is None:
        raise UsageError(f"{out}: the output must end in .xml (JUnit) or .json (JSON results), or .info (lcov coverage)")
    wrong = [str(p) for p in inputs if KINDS.get(Path(p).suffix.lower()) != kind]
    if wrong:
        raise UsageError(f"cannot merge {', '.join(wrong)} into {kind} output {out}: "
                         f"inputs must all be {SUFFIX[kind]} files")
    if kind == "lcov":   # coverage of several runs (shards, rigs, both backends): counts add up
        _same_files(inputs)
        report = lcov.merge([Path(p) for p in inputs])
        write_atomic(out, lcov.dumps(report), prefix=".merge-")
        hit = sum(f.lines_hit for f in report.files.values())
        total = sum(len(f.lines) for f in report.files.values())
        return (f"merged {len(inputs)} file(s) into {out}: {len(report.files)} source files, "
                f"{hit} of {total} lines executed")
    if kind == "junit":
        root = merge_junit(inputs)
        write_junit_tree(out, root)
        counts = {k: sum(int(suite.get(k, 0)) for suite in root) for k in COUNTS}
    else:

        doc = merge_json(inputs)
        write_document(out, doc)
        s = doc["summary"]
        counts = {"tests": s["total"], "failures": s["failed"], "errors": s["error"], "skipped": s["skipped"]}
    return (f"merged {len(inputs)} file(s) into {out}: {counts['tests']} tests, {counts['failures']} failures, "
            f"{counts['errors']} errors, {counts['skipped']} skipped")


def _write_atomic(path: str | Path, text: str, suffix: str) -> None:
    write_atomic(path, text, prefix=".merge-")
