"""JSON results (`kvmrig run --json FILE`): one record per rig, written atomically.

The format is published as kvmrig/schemas/results.schema.json (draft 2020-12)
and read back by `kvmrig run --durations-from` and `kvmrig merge`:

    {"kvmrig_results": 1, "summary": {...}, "rigs": [{record}, ...]}

A record has the rig's name, file, classname, tags, backend, status
(passed | failed | error | skipped), duration in seconds, the message of an
error or skip, the failure diagnostics, and what the run produced: the exit
(reason, code, detail; null for a rig that did not run), the final
registers, breakpoint and watchpoint hits and hit counts, the console, port
and device writes, the trace, the steps, every failed check (what, expected,
actual and the file:line:col of the check) and the notes.

Registers, addresses and written values are hex strings ("0x1f"): 64-bit
values do not survive a JSON reader that parses numbers as doubles.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from kvmrig.atomic import write_atomic
from kvmrig.errors import ResultsFileError
from kvmrig.machine.outcome import Failure, Hit, Outcome
from kvmrig.result import ERROR, FAILED, PASSED, SKIPPED, RigResult

FORMAT_VERSION = 1
STATUSES = (PASSED, FAILED, ERROR, SKIPPED)


def _hex(value: int) -> str:
    return f"{value:#x}" if value >= 0 else f"-{-value:#x}"


def _failure(f: Failure) -> dict[str, Any]:
    record: dict[str, Any] = {"what": f.what, "expected": f.expected, "actual": f.actual}
    if f.mark:
        record.update(file=f.mark.path, line=f.mark.line, col=f.mark.col)
    return record


def _hit(h: Hit) -> dict[str, Any]:
    return {"point": h.point, "number": h.number, "cpu": h.cpu, "pc": _hex(h.pc),
            "addr": None if h.addr is None else _hex(h.addr),
            "regs": {k: _hex(v) for k, v in h.regs.items()},
            "failures": [_failure(f) for f in h.failures]}


def _run(out: Outcome) -> dict[str, Any]:
    return {
        "exit": {"reason": out.exit, "code": out.exit_code, "detail": out.detail},
        "regs": {k: _hex(v) for k, v in out.regs.items()},
        "console": out.console.decode("utf-8", errors="replace"),
        "port_writes": [{"port": _hex(p), "size": s, "value": _hex(v)} for p, s, v in out.port_writes],
        "device_writes": [{"device": d, "addr": _hex(a), "size": s, "value": _hex(v)}
                          for d, a, s, v in out.device_writes],
        "hits": [_hit(h) for h in out.hits],
        "hit_counts": dict(out.hit_counts),
        "steps": out.steps,
        "trace": [_hex(a) for a in out.trace],
        "failures": [_failure(f) for f in out.failures],
        "notes": list(out.notes),
        "exits": out.exits,
        "subtests": [{"name": st.name, "status": st.status} for st in out.subtests],
    }


def details(result: RigResult) -> list[str]:
    """The diagnosis of a failed rig past its failed checks: the report the
    session made (code at the stop, registers, last addresses), then the runner's."""
    report = result.outcome.report if result.outcome is not None else []
    return [*report, *result.details]


_NOT_RUN = Outcome(exit="")   # a rig that did not run: empty run fields, exit null


def record(result: RigResult) -> dict[str, Any]:
    """The JSON record of one rig's result."""
    rec: dict[str, Any] = {
        "name": result.name,
        "file": result.path,
        "classname": result.classname,
        "tags": list(result.tags),
        "backend": result.backend,
        "status": result.status,
        "duration": round(result.seconds, 6),
        "message": result.message,
        "details": details(result),
    }
    rec.update(_run(result.outcome if result.outcome is not None else _NOT_RUN))
    if result.outcome is None:
        rec["exit"] = None
    return rec


def summary(records: list[dict[str, Any]], seconds: float | None = None) -> dict[str, Any]:
    counts = Counter(r["status"] for r in records)
    total: dict[str, Any] = {s: counts[s] for s in STATUSES}
    total["total"] = len(records)
    total["seconds"] = round(seconds if seconds is not None else sum(r["duration"] for r in records), 6)
    return total


def document(records: list[dict[str, Any]], seconds: float | None = None) -> dict[str, Any]:
    return {"kvmrig_results": FORMAT_VERSION, "summary": summary(records, seconds), "rigs": records}


def results_json(results: list[RigResult], seconds: float | None = None) -> dict[str, Any]:
    """The whole results document for a run (`seconds`: wall clock; default the rigs' sum)."""
    return document([record(r) for r in results], seconds)


def write_json(path: str | Path, results: list[RigResult], seconds: float | None = None) -> None:
    write_document(path, results_json(results, seconds))


def write_document(path: str | Path, doc: dict[str, Any]) -> None:
    """Write a results document so a reader never sees half a file."""
    write_atomic(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n", prefix=".results-")


def read_results(path: str | Path) -> dict[str, Any]:
    """A results document, checked enough to use: version and a list of rig records."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsFileError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ResultsFileError(f"{path}:{e.lineno}:{e.colno}: not JSON: {e.msg}") from None
    if not isinstance(doc, dict) or doc.get("kvmrig_results") != FORMAT_VERSION \
            or not isinstance(doc.get("rigs"), list):
        raise ResultsFileError(f"{path}: not kvmrig JSON results (format {FORMAT_VERSION}), "
                               "as `kvmrig run --json FILE` writes")
    for i, rec in enumerate(doc["rigs"]):
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str) \
                or not isinstance(rec.get("file"), str) or rec.get("status") not in STATUSES:
            raise ResultsFileError(f"{path}: rigs[{i}] is not a rig record (name, file, status)")
    return doc
