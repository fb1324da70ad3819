"""Writing a run's coverage (lcov, Cobertura, executed ranges) and the
summary printed at the end of `kvmrig run --coverage`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from kvmrig.atomic import write_atomic
from kvmrig.coverage import cobertura, lcov
from kvmrig.coverage.report import Report

LCOV, COBERTURA, RANGES = "coverage.info", "coverage.xml", "coverage-ranges.json"
FUNCTIONS_SHOWN = 12   # per file, without -v: the functions that did not run, or not all of them


def write(report: Report, folder: str | Path) -> list[Path]:
    """coverage.info (lcov), coverage.xml (Cobertura) and, for images without
    line tables, coverage-ranges.json; returns the files written."""
    folder = Path(folder)
    written = []
    for name, text in ((LCOV, lcov.dumps(report)), (COBERTURA, cobertura.dumps(report))):
        write_atomic(folder / name, text)
        written.append(folder / name)
    if report.images:
        doc = {label: {"bytes": img.size,
                       "executed_bytes": sum(hi - lo for lo, hi in img.ranges),
                       "executed": [[f"{lo:#x}", f"{hi:#x}"] for lo, hi in img.ranges],
                       "functions": dict(sorted(img.functions.items()))}
               for label, img in sorted(report.images.items())}
        write_atomic(folder / RANGES, json.dumps(doc, indent=1) + "\n")
        written.append(folder / RANGES)
    return written


def _pct(hit: int, total: int) -> str:
    return f"{100.0 * hit / total:5.1f}%" if total else "    -"


def summary(report: Report, out: TextIO, verbose: bool = False) -> None:
    """Per file: lines and functions executed, and the functions that never ran or
    ran only in part, with their lines (every function with -v); per image without
    line tables: bytes executed."""
    files = report.files
    lines_hit = sum(f.lines_hit for f in files.values())
    lines = sum(len(f.lines) for f in files.values())
    fn_hit = sum(f.functions_hit for f in files.values())
    fns = sum(len(f.functions) for f in files.values())
    out.write(f"coverage of {report.runs} run(s): lines {lines_hit}/{lines} ({_pct(lines_hit, lines).strip()}), "
              f"functions {fn_hit}/{fns} in {len(files)} source file(s)\n")
    width = max((len(p) for p in files), default=0)
    for path in sorted(files):
        f = files[path]
        out.write(f"  {path:<{width}}  lines {f.lines_hit:>4}/{len(f.lines):<4} {_pct(f.lines_hit, len(f.lines))}"
                  f"  functions {f.functions_hit}/{len(f.functions)}\n")
        shown = 0
        for name, (line, n) in sorted(f.functions.items(), key=lambda kv: kv[1][0]):
            hits = f.function_hits(name)
            partly = hits is not None and hits[0] < hits[1]
            if not (verbose or not n or partly):
                continue
            shown += 1
            if shown > FUNCTIONS_SHOWN and not verbose:
                continue
            what = f"{name} (line {line})" + (f": lines {hits[0]}/{hits[1]}" if hits else "")
            out.write(f"      {'ran' if n else 'never ran'}: {what}" + (f" in {n} run(s)\n" if n else "\n"))
        if shown > FUNCTIONS_SHOWN and not verbose:
            out.write(f"      ... and {shown - FUNCTIONS_SHOWN} more function(s) not fully run (-v lists all)\n")
    for label in sorted(report.images):
        img = report.images[label]
        done = sum(hi - lo for lo, hi in img.ranges)
        out.write(f"  {label}: {done} of {img.size} bytes executed in {len(img.ranges)} range(s)"
                  + (f", functions {sum(1 for n in img.functions.values() if n)}/{len(img.functions)}"
                     if img.functions else "") + "\n")
