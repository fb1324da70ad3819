"""`kvmrig run --rerun-failed`: which rigs failed last time, kept under reports/.

After every run the record becomes: the rigs that failed or errored in this
run, plus those recorded before that this run did not run (so a `-k` run does
not forget the others). `--rerun-failed` keeps only the recorded rigs; with
nothing recorded it runs everything, as pytest's --lf does.
"""

from __future__ import annotations

import json
from pathlib import Path

from kvmrig.atomic import write_atomic

RECORD = Path("reports") / "last-failed.json"


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def load(record: Path = RECORD) -> set[str]:
    """The recorded rig paths; an unreadable or malformed record counts as none
    (it is rewritten whole after the run)."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return set()
    failed = data.get("failed") if isinstance(data, dict) else None
    if not isinstance(failed, list):
        return set()
    return {p for p in failed if isinstance(p, str)}


def update(results, record: Path = RECORD) -> None:
    """Record this run's failures and errors; keep earlier ones this run did not touch."""
    ran = {_key(r.path) for r in results if r.status != "skipped"}
    failed = {_key(r.path) for r in results if r.status in ("failed", "error")}
    keep = {p for p in load(record) if p not in ran}
    write_atomic(record, json.dumps({"failed": sorted(failed | keep)}, indent=1) + "\n", prefix=".last-failed-")


def select(paths: list[Path], record: Path = RECORD) -> tuple[list[Path], bool]:
    """(the rig files to run, whether a record narrowed them)."""
    wanted = load(record)
    chosen = [p for p in paths if _key(p) in wanted]
    return (chosen, True) if chosen else (paths, False)
