"""Finding and loading the rig files a run names."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from typing import TYPE_CHECKING

from kvmrig.errors import RigError
from kvmrig.result import RigResult, error_result

if TYPE_CHECKING:
    from kvmrig.rig.model import Rig


def expand(paths: Iterable[str]) -> list[Path]:
    """Rig files named on the command line; folders expand to their *.yaml (recursively)."""
    found: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found.extend(sorted(q for q in path.rglob("*.yaml")
                                if not q.name.endswith(".golden.yaml") and q.is_file()))
        else:
            found.append(path)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def is_rig_file(path: Path) -> bool:
    """A YAML file whose first key is `kvmrig:` (folders may hold other YAML)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:  # a BOM is not content
            return _first_key_is_kvmrig(f)
    except OSError:
        return True  # let the loader report it


def _first_key_is_kvmrig(lines: Iterable[str]) -> bool:
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        return stripped.startswith("kvmrig:")
    return False


def load_all(paths: list[Path], explicit: set[Path] | None = None) -> tuple[list[Rig], list[RigResult]]:
    """Load rig files; return the rigs and an error result per file that failed.
    A file not in `explicit` is loaded only if it is_rig_file (read once for both)."""
    # Imported here, not above: the pytest plugin asks is_rig_file() in every
    # session where kvmrig is installed, and the loader (YAML, jsonschema) costs.
    from kvmrig.rig.load import load_rig, read_rig_bytes

    rigs, errors = [], []
    for path in paths:
        raw = None
        if explicit is not None and path not in explicit:
            try:
                raw = read_rig_bytes(path)
            except (OSError, ValueError):
                pass   # the loader reports it
            else:
                text = io.StringIO(raw.decode("utf-8-sig", errors="replace"), newline=None)
                if not _first_key_is_kvmrig(text):
                    continue
        try:
            rigs.append(load_rig(path, raw))
        except RigError as e:
            errors.append(error_result(str(path), str(e)))
    return rigs, errors
