"""A coverage report: executed source lines and functions of a set of rigs.

Counts are rigs, not executions: KVM's one-shot breakpoints learn only
*whether* code ran, so a line's count is the number of runs that executed it
(merging two reports adds them). Images without line tables contribute
executed address ranges and, where an ELF symbol table names them, functions.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from kvmrig.coverage.collect import merge_ranges
from kvmrig.coverage.lines import ImageCode, Range, image_code
from kvmrig.errors import RigError
from kvmrig.machine.images import ELF_MAGIC


@dataclass
class FileCoverage:
    """One source file: line -> count, function -> (line, count)."""

    lines: dict[int, int] = field(default_factory=dict)
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)
    function_lines: dict[str, set[int]] = field(default_factory=dict)   # known from DWARF (not in lcov)

    def add(self, other: "FileCoverage") -> None:
        for line, n in other.lines.items():
            self.lines[line] = self.lines.get(line, 0) + n
        for name, (line, n) in other.functions.items():
            old = self.functions.get(name, (line, 0))
            self.functions[name] = (old[0] or line, old[1] + n)
        for name, lines in other.function_lines.items():
            self.function_lines.setdefault(name, set()).update(lines)

    def function_hits(self, name: str) -> tuple[int, int] | None:
        """(lines executed, lines) of a function, where its lines are known."""
        lines = self.function_lines.get(name)
        if not lines:
            return None
        return sum(1 for line in lines if self.lines.get(line)), len(lines)

    @property
    def lines_hit(self) -> int:
        return sum(1 for n in self.lines.values() if n)

    @property
    def functions_hit(self) -> int:
        return sum(1 for _l, n in self.functions.values() if n)


@dataclass
class ImageRanges:
    """An image without line tables: executed ranges, and its functions' counts."""

    ranges: list[Range] = field(default_factory=list)
    size: int = 0
    functions: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    files: dict[str, FileCoverage] = field(default_factory=dict)
    images: dict[str, ImageRanges] = field(default_factory=dict)
    runs: int = 0

    def file(self, path: str) -> FileCoverage:
        return self.files.setdefault(path, FileCoverage())

    def add(self, other: "Report") -> None:
        for path, cov in other.files.items():
            self.file(path).add(cov)
        for label, img in other.images.items():
            mine = self.images.setdefault(label, ImageRanges(size=img.size))
            mine.ranges = merge_ranges(mine.ranges + img.ranges)
            mine.size = max(mine.size, img.size)
            for name, n in img.functions.items():
                mine.functions[name] = mine.functions.get(name, 0) + n
        self.runs += other.runs

    def add_run(self, codes: list[ImageCode], raw: list[tuple[str, list[Range]]], ranges: list[Range]) -> None:
        """Count one run that executed `ranges`, over the rig's ELF images
        (`codes`) and its other images (`raw`: label and spans)."""
        self.runs += 1
        for code in codes:
            if code.has_lines:
                covered = code.covered_lines(ranges)
                for path, lines in code.all_lines().items():
                    cov = self.file(path)
                    hit = covered.get(path, set())
                    for line in lines:
                        cov.lines[line] = cov.lines.get(line, 0) + (line in hit)
                done = code.covered_functions(ranges)
                for f in code.functions:
                    if f.file:
                        cov = self.file(f.file)
                        old = cov.functions.get(f.name, (f.line, 0))
                        cov.functions[f.name] = (old[0], old[1] + (f.name in done))
                        cov.function_lines.setdefault(f.name, set()).update(
                            r.line for r in code.rows_in(f.lo, f.hi) if r.file == f.file)
            else:
                self._add_ranges(code.label, code.spans, ranges, code)
        for label, spans in raw:
            self._add_ranges(label, spans, ranges, None)

    def _add_ranges(self, label: str, spans: list[Range], ranges: list[Range], code: ImageCode | None) -> None:
        img = self.images.setdefault(label, ImageRanges())
        img.size = max(img.size, sum(hi - lo for lo, hi in spans))
        inside = [(max(lo, s), min(hi, e)) for lo, hi in ranges for s, e in spans if lo < e and s < hi]
        img.ranges = merge_ranges(img.ranges + inside)
        if code is not None:
            done = code.covered_functions(ranges)
            for f in code.functions:
                img.functions[f.name] = img.functions.get(f.name, 0) + (f.name in done)


def remap(path: str, roots: list[str]) -> str:
    """A source path as the compiler recorded it, remapped by --coverage-root:
    `OLD=NEW` replaces a leading OLD; a plain DIR is put before relative paths."""
    for root in roots:
        if "=" in root:
            old, new = root.split("=", 1)
            old = old.rstrip("/")
            if path == old or path.startswith(old + "/"):
                return posixpath.normpath(new + path[len(old):]) if new else path[len(old):].lstrip("/")
        elif not posixpath.isabs(path):
            return posixpath.normpath(posixpath.join(root, path))
    return path


def remapped(report: Report, roots: list[str]) -> Report:
    if not roots:
        return report
    out = Report(images=report.images, runs=report.runs)
    for path, cov in report.files.items():
        out.file(remap(path, roots)).add(cov)
    return out


def from_results(results, rigs) -> Report:
    """The report of a run: every result whose outcome carries coverage."""
    by_path = {str(r.path): r for r in rigs}
    report = Report()
    for result in results:
        if result is None or result.outcome is None or result.outcome.coverage is None:
            continue
        rig = by_path.get(result.path)
        if rig is None:
            continue
        codes, raw = rig_code(rig)
        report.add_run(codes, raw, result.outcome.coverage)
    return report


def rig_code(rig) -> tuple[list[ImageCode], list[tuple[str, list[Range]]]]:
    """A rig's ELF images (ImageCode) and other images (label, spans)."""
    codes, raw = [], []
    for image in rig.images:
        if image.file is None:
            assert image.at is not None and image.data is not None
            raw.append((f"hex bytes at {image.at:#x}", [(image.at, image.at + len(image.data))]))
            continue
        path = Path(image.file)
        try:
            with open(path, "rb") as f:
                head = f.read(4)
            if head == ELF_MAGIC and image.at is None:
                codes.append(image_code(path, str(path)))
            else:
                raw.append((str(path), [(image.at or 0, (image.at or 0) + path.stat().st_size)]))
        except (OSError, RigError):
            continue   # unreadable, or debug information pyelftools cannot read: the run said so
    return codes, raw
