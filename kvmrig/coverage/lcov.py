"""lcov tracefiles (.info), as genhtml and the CI coverage tools read them:
write a Report, read one back (for `kvmrig merge`), and merge several.

Format: geninfo(1) "TRACEFILE FORMAT" — per source file SF, FN/FNDA, FNF/FNH,
DA, LF/LH, end_of_record. Branch records (BRDA) are neither written nor kept.
"""

from __future__ import annotations

from pathlib import Path

from kvmrig.coverage.report import FileCoverage, Report
from kvmrig.errors import UsageError


def dumps(report: Report, test_name: str = "kvmrig") -> str:
    out: list[str] = []
    for path in sorted(report.files):
        cov = report.files[path]
        out.append(f"TN:{test_name}")
        out.append(f"SF:{path}")
        functions = sorted(cov.functions.items(), key=lambda kv: (kv[1][0], kv[0]))
        for name, (line, _n) in functions:
            out.append(f"FN:{line},{name}")
        for name, (_line, n) in functions:
            out.append(f"FNDA:{n},{name}")
        out.append(f"FNF:{len(functions)}")
        out.append(f"FNH:{cov.functions_hit}")
        for line in sorted(cov.lines):
            out.append(f"DA:{line},{cov.lines[line]}")
        out.append(f"LF:{len(cov.lines)}")
        out.append(f"LH:{cov.lines_hit}")
        out.append("end_of_record")
    return "\n".join(out) + "\n" if out else ""


def loads(text: str, source: str = "<lcov>") -> Report:
    """Parse a tracefile; UsageError naming source:line for what is not lcov."""
    report = Report()
    cov: FileCoverage | None = None
    fn_lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(":")
        try:
            if key == "SF":
                cov, fn_lines = report.file(value), {}
            elif key == "end_of_record":
                cov = None
            elif key in ("TN", "VER") or cov is None and key in ("LF", "LH", "FNF", "FNH"):
                continue
            elif cov is None:
                raise ValueError(f"{key} outside a source file record (no SF before it)")
            elif key == "DA":
                fields = value.split(",")
                ln, n = int(fields[0]), int(fields[1])
                cov.lines[ln] = cov.lines.get(ln, 0) + n
            elif key == "FN":
                fields = value.split(",")      # FN:line,name (lcov 1) or FN:line,end,name (lcov 2)
                fn_lines[fields[-1]] = int(fields[0])
                old = cov.functions.get(fields[-1], (0, 0))
                cov.functions[fields[-1]] = (int(fields[0]), old[1])
            elif key == "FNDA":
                count, name = value.split(",", 1)
                old = cov.functions.get(name, (fn_lines.get(name, 0), 0))
                cov.functions[name] = (old[0], old[1] + int(count))
            elif key in ("LF", "LH", "FNF", "FNH", "BRF", "BRH", "BRDA", "FNL", "FNA"):
                continue                        # recounted / not kept
            else:
                raise ValueError(f"unknown record {key!r}")
        except (ValueError, IndexError) as e:
            raise UsageError(f"{source}:{number}: not an lcov tracefile line ({e}): {raw[:80]!r}") from None
    return report


def read(path: Path) -> Report:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    return loads(text, str(path))


def merge(paths: list[Path]) -> Report:
    out = Report()
    for p in paths:
        out.add(read(p))
    return out
