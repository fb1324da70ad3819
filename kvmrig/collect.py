"""Finding and loading the rig files a run names."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from kvmrig.errors import RigError
from kvmrig.result import RigResult, error_result
from kvmrig.rig.rigfile import file_stat, read_rig_bytes

if TYPE_CHECKING:
    from kvmrig.rig.cache import RigCache
    from kvmrig.rig.model import Rig


def expand(paths: Iterable[str]) -> list[Path]:
    """Rig files named on the command line; folders expand to their *.yaml (recursively)."""
    found: list[tuple[Path, str]] = []   # (path, its real path: the same file twice is run once)
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found.extend(_yaml_below(path))
        else:
            found.append((path, str(path.resolve())))
    seen: set[str] = set()
    unique = []
    for path, real in found:
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def _yaml_below(root: Path) -> list[tuple[Path, str]]:
    """What `sorted(root.rglob("*.yaml"))` gives, less *.golden.yaml and what is
    not a file, each with its real path — from one scandir per folder: no
    stat per regular file and one realpath per folder, not per file (this was
    most of a 1000-rig run's expand). Like rglob it does not follow symlinked
    folders and passes over folders it may not read."""
    out: list[tuple[tuple[str, ...], str, str]] = []
    stack = [((), str(root), os.path.realpath(root))]
    while stack:
        rel, folder, real = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except PermissionError:
            continue
        for e in entries:
            name = e.name
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((rel + (name,), e.path, os.path.join(real, name)))
                    continue
                if not name.endswith(".yaml") or name.endswith(".golden.yaml"):
                    continue
                if e.is_symlink():
                    if os.path.isfile(e.path):
                        out.append((rel + (name,), e.path, os.path.realpath(e.path)))
                elif e.is_file(follow_symlinks=False):
                    out.append((rel + (name,), e.path, os.path.join(real, name)))
            except OSError:
                continue   # gone while we looked: as rglob + is_file, not there
    out.sort(key=lambda item: item[0])   # Path order: part by part
    return [(Path(path), real) for _rel, path, real in out]


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


def load_all(paths: list[Path], explicit: set[Path] | None = None,
             cache: RigCache | None = None) -> tuple[list[Rig], list[RigResult]]:
    """Load rig files; return the rigs and an error result per file that failed.
    A file not in `explicit` is loaded only if it is_rig_file (read once for both).
    `cache`: rigs loaded by an earlier run (rig/cache.py), used where nothing changed."""
    rigs, errors = [], []
    for path in paths:
        raw = sig = None
        if cache is not None:
            rig = cache.get_unread(path)
            if rig is not None:   # its stat is the one recorded when its bytes were
                rigs.append(rig)
                continue
            sig = file_stat(path)   # before the read: a change after it shows in the next run's stat
        try:
            raw = read_rig_bytes(path)
        except (OSError, ValueError):
            pass   # the loader reports it
        else:
            rig = cache.get(path, raw, sig) if cache is not None else None
            if rig is not None:   # only rig files are kept: no need to look at the first key
                rigs.append(rig)
                continue
            if explicit is not None and path not in explicit:
                text = io.StringIO(raw.decode("utf-8-sig", errors="replace"), newline=None)
                if not _first_key_is_kvmrig(text):
                    continue
        # Imported here, not above: the pytest plugin asks is_rig_file() in every
        # session where kvmrig is installed, and a cached run never needs the loader.
        from kvmrig.rig.load import load_rig
        seen: list[tuple[str, bytes]] = []
        try:
            rig = load_rig(path, raw, seen)
        except RigError as e:
            errors.append(error_result(str(path), str(e)))
        else:
            rigs.append(rig)
            if cache is not None and raw is not None:
                cache.put(path, raw, rig, seen, sig)
    return rigs, errors

