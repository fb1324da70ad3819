"""Cobertura XML: read by pycobertura (a Cobertura parser), and shaped as
coverage-04.dtd requires (no package ships the DTD: the structure is checked)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from kvmrig.coverage import cobertura
from kvmrig.coverage.report import FileCoverage, Report

# coverage-04.dtd: the required attributes of each element kvmrig writes.
REQUIRED = {
    "coverage": {"line-rate", "branch-rate", "lines-covered", "lines-valid", "branches-covered",
                 "branches-valid", "complexity", "version", "timestamp"},
    "package": {"name", "line-rate", "branch-rate", "complexity"},
    "class": {"name", "filename", "line-rate", "branch-rate", "complexity"},
    "method": {"name", "signature", "line-rate", "branch-rate", "complexity"},
    "line": {"number", "hits"},
}
CHILDREN = {"coverage": ["sources", "packages"], "sources": ["source"], "packages": ["package"],
            "package": ["classes"], "classes": ["class"], "class": ["methods", "lines"],
            "methods": ["method"], "method": ["lines"], "lines": ["line"]}


def _report() -> Report:
    r = Report(runs=2)
    r.files["x86/guests/a.c"] = FileCoverage({3: 2, 4: 0, 5: 1, 9: 0}, {"main": (3, 2), "panic": (9, 0)})
    r.files["lib/b.c"] = FileCoverage({1: 1}, {"f": (1, 1)})
    return r


def _check(element: ET.Element) -> None:
    missing = REQUIRED.get(element.tag, set()) - set(element.attrib)
    assert not missing, f"<{element.tag}> lacks {missing}"
    allowed = CHILDREN.get(element.tag, [])
    order = [c.tag for c in element]
    assert all(t in allowed for t in order), f"<{element.tag}> holds {order}"
    assert order == sorted(order, key=allowed.index), f"<{element.tag}> children out of order: {order}"
    for child in element:
        _check(child)


def test_structure_follows_the_dtd(tmp_path):
    text = cobertura.dumps(_report())
    assert 'coverage-04.dtd' in text.splitlines()[1]
    root = ET.fromstring(text)
    _check(root)
    assert (root.get("lines-covered"), root.get("lines-valid")) == ("3", "5")
    cls = root.find(".//class[@filename='x86/guests/a.c']")
    assert cls is not None and cls.get("name") == "a.c" and cls.get("line-rate") == "0.5000"
    assert [(l.get("number"), l.get("hits")) for l in cls.find("lines")] == [("3", "2"), ("4", "0"),
                                                                             ("5", "1"), ("9", "0")]
    assert root.find(".//package[@name='x86.guests']") is not None


def test_pycobertura_reads_it(tmp_path):
    pycobertura = pytest.importorskip("pycobertura", reason="needs pycobertura (pip install -e '.[test]')")
    (tmp_path / "x86" / "guests").mkdir(parents=True)
    (tmp_path / "lib").mkdir()
    (tmp_path / "x86" / "guests" / "a.c").write_text("x\n" * 10)
    (tmp_path / "lib" / "b.c").write_text("x\n")
    path = tmp_path / "coverage.xml"
    path.write_text(cobertura.dumps(_report(), source=str(tmp_path)))
    cov = pycobertura.Cobertura(str(path))
    assert sorted(cov.files()) == ["lib/b.c", "x86/guests/a.c"]
    assert cov.total_statements() == 5 and cov.total_misses() == 2
    assert cov.missed_statements("x86/guests/a.c") == [4, 9]
    assert cov.line_rate("x86/guests/a.c") == 0.5
