"""Cobertura XML, the coverage format GitLab's merge-request coverage view
and Jenkins' Cobertura/Coverage plugins read.

Layout (coverage-04.dtd): <coverage> with totals and <sources>; one
<package> per source folder, one <class> per source file (filename relative
to the source), with its <methods> (the file's functions, each with the line
it starts on) and its <lines>. kvmrig knows no branches: branch rates are 0
of 0 (written as 1.0, as coverage.py does for code without branches).
"""

from __future__ import annotations

import posixpath
import time
import xml.etree.ElementTree as ET

from kvmrig import __version__
from kvmrig.coverage.report import FileCoverage, Report

DOCTYPE = '<!DOCTYPE coverage SYSTEM "http://cobertura.sourceforge.net/xml/coverage-04.dtd">'


def _rate(hit: int, total: int) -> str:
    return f"{hit / total:.4f}" if total else "1"


def _totals(files: list[FileCoverage]) -> tuple[int, int]:
    return sum(f.lines_hit for f in files), sum(len(f.lines) for f in files)


def dumps(report: Report, source: str = ".") -> str:
    """The XML text; `source` is the folder relative file names start from."""
    hit, total = _totals(list(report.files.values()))
    root = ET.Element("coverage", {
        "line-rate": _rate(hit, total), "branch-rate": "1",
        "lines-covered": str(hit), "lines-valid": str(total),
        "branches-covered": "0", "branches-valid": "0",
        "complexity": "0", "version": f"kvmrig {__version__}",
        "timestamp": str(int(time.time() * 1000)),
    })
    ET.SubElement(ET.SubElement(root, "sources"), "source").text = source
    packages = ET.SubElement(root, "packages")
    by_folder: dict[str, list[str]] = {}
    for path in sorted(report.files):
        by_folder.setdefault(posixpath.dirname(path), []).append(path)
    for folder, paths in by_folder.items():
        covs = [report.files[p] for p in paths]
        p_hit, p_total = _totals(covs)
        package = ET.SubElement(packages, "package", {
            "name": folder.strip("/").replace("/", ".") or ".", "line-rate": _rate(p_hit, p_total),
            "branch-rate": "1", "complexity": "0"})
        classes = ET.SubElement(package, "classes")
        for path, cov in zip(paths, covs):
            cls = ET.SubElement(classes, "class", {
                "name": posixpath.basename(path), "filename": path,
                "line-rate": _rate(cov.lines_hit, len(cov.lines)), "branch-rate": "1", "complexity": "0"})
            methods = ET.SubElement(cls, "methods")
            for name, (line, n) in sorted(cov.functions.items(), key=lambda kv: (kv[1][0], kv[0])):
                method = ET.SubElement(methods, "method", {
                    "name": name, "signature": "", "line-rate": "1" if n else "0",
                    "branch-rate": "1", "complexity": "0"})
                ET.SubElement(ET.SubElement(method, "lines"), "line",
                              {"number": str(line), "hits": str(n), "branch": "false"})
            lines = ET.SubElement(cls, "lines")
            for line in sorted(cov.lines):
                ET.SubElement(lines, "line", {"number": str(line), "hits": str(cov.lines[line]), "branch": "false"})
    ET.indent(root)
    return '<?xml version="1.0" ?>\n' + DOCTYPE + "\n" + ET.tostring(root, encoding="unicode") + "\n"
