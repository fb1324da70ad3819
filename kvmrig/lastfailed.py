"""`kvmrig run --rerun-failed`: which rigs failed last time, kept in kvmrig's cache folder.

The cache folder is `.kvmrig_cache/` in the project's root (the nearest folder
above the run's paths holding pyproject.toml, .git, ... as for the JUnit
classname), else in the working directory; KVMRIG_CACHE_DIR names another.
Like pytest's .pytest_cache it holds a .gitignore of `*`, so it is never
committed, and a run that writes no report creates nothing else.

After every run the record becomes: the rigs that failed or errored in this
run, plus those recorded before that this run did not run (so a `-k` run does
not forget the others). `--rerun-failed` keeps only the recorded rigs; with
nothing recorded it runs everything, as pytest's --lf does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kvmrig.atomic import write_atomic
from kvmrig.result import project_root

CACHE_DIR = ".kvmrig_cache"
CACHE_ENV = "KVMRIG_CACHE_DIR"
NAME = "last-failed.json"


def cache_dir(paths: list[str] | None = None) -> Path:
    """Where kvmrig keeps state between runs (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    folders = [Path(os.path.abspath(p)) for p in paths or []]
    folders = [p if p.is_dir() else p.parent for p in folders]
    common = Path(os.path.commonpath([str(p) for p in folders])) if folders else Path.cwd()
    return (project_root(common) or Path.cwd()) / CACHE_DIR


def record_for(paths: list[str] | None = None) -> Path:
    """The last-failed record of a run given these paths."""
    return cache_dir(paths) / NAME


def _ensure_cache(folder: Path) -> None:
    if not (folder / ".gitignore").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitignore").write_text("# created by kvmrig\n*\n", encoding="utf-8")


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def load(record: Path) -> set[str]:
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


def update(results, record: Path) -> None:
    """Record this run's failures and errors; keep earlier ones this run did not touch."""
    failed = {_key(r.path) for r in results if r.status in ("failed", "error")}
    keep = load(record)
    if keep:   # only then is it worth resolving every path that ran (a large passing suite has none)
        ran = {_key(r.path) for r in results if r.status != "skipped"}
        keep = {p for p in keep if p not in ran}
    _ensure_cache(record.parent)
    write_atomic(record, json.dumps({"failed": sorted(failed | keep)}, indent=1) + "\n", prefix=".last-failed-")


def select(paths: list[Path], record: Path) -> tuple[list[Path], bool]:
    """(the rig files to run, whether a record narrowed them)."""
    wanted = load(record)
    chosen = [p for p in paths if _key(p) in wanted]
    return (chosen, True) if chosen else (paths, False)
