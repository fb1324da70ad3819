"""Rigs loaded and checked by an earlier run, kept on disk (as Python keeps .pyc
files), so that a run whose rig files did not change skips YAML, the schema
and the model build — and the import of PyYAML and jsonschema with them.

One cache file per (kvmrig code, Python, working folder, --images-under
folders, the paths the run names) in $XDG_CACHE_HOME/kvmrig/rigs (else
~/.cache/kvmrig/rigs). It maps each rig file's path, as the run names it, to
the digest of the file's bytes, the file's stat when that digest was taken,
what else its model was built from, and the model's place in one pickled list
of all the models (one pickle for the whole run: ~30 % faster to load than
one per rig, which pickle cannot share class lookups and strings between):

- a rig file whose stat (device, inode, size, mtime, ctime) is the recorded
  one has the recorded bytes, and is not read; a stat is recorded only for a
  regular file last changed over rigfile.RACY_NS before it was read (a change in the
  same clock tick as the read would otherwise leave the stat as it was, the
  "racy git" problem), so a file just written is read and digested;

- the code stamp covers every .py and .json file of the installed kvmrig
  package (path, mtime, size): any change to kvmrig is a new cache;
- a rig that reads host files while it loads (images, device tree, fw-cfg
  files: only their first bytes, to tell formats apart) records each file and
  the bytes it read; an entry is used only if each still reads the same (and
  is still a regular file the run allows);
- a rig that starts from another rig or a snapshot file (`from:`) is not
  kept: its model depends on the other file's whole load;
- rig file errors are not kept (they are cheap to find again, and some, such
  as a missing image, come and go).

Anything that goes wrong — no home folder, a read-only or full disk, a
damaged, foreign or truncated file — makes the cache miss or stay unwritten,
silently: the rigs load as without it. The file is written to a temporary
name and renamed into place (a concurrent run sees the old file or the new
one, whole), with 0666 minus the umask; a cache file that is a symlink or
not a regular file is never read nor replaced, nor one another user owns.
`kvmrig run --no-cache` or KVMRIG_NO_CACHE=1 turns it off.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kvmrig.atomic import write_own_cache
from kvmrig.rig.rigfile import Stat, file_stat

if TYPE_CHECKING:
    from kvmrig.rig.model import Rig

FORMAT = b"kvmrig-rig-cache 2\n"
MAX_FILES = 64          # cache files kept (one per distinct command line and folder); the oldest go first
HEAD_SIZE = 64          # what the loader reads of a host file (rig/load.py read_head)
_PACKAGE = Path(__file__).resolve().parent.parent


def folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kvmrig", "rigs")


def disabled_by_env() -> bool:
    return os.environ.get("KVMRIG_NO_CACHE", "") not in ("", "0")


def code_stamp(root: Path = _PACKAGE) -> bytes:
    """A digest of the kvmrig package's files (path, mtime, size): the loader,
    the schema and the model classes the pickles need are all in it."""
    h = hashlib.blake2b(digest_size=16)
    stack = [str(root)]
    while stack:
        here = stack.pop()
        with os.scandir(here) as entries:
            for e in sorted(entries, key=lambda e: e.name):
                if e.is_dir(follow_symlinks=False):
                    if e.name != "__pycache__":
                        stack.append(e.path)
                elif e.name.endswith((".py", ".json")):
                    st = e.stat()
                    h.update(f"{e.path}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.digest()


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


# An entry: (digest of the file's bytes, the host files read and their first
# bytes, the file's stat or None, the model's index in the models list).
Entry = tuple[bytes, tuple[tuple[str, bytes], ...], "Stat | None", int]


class RigCache:
    """The cache file of one run: look rigs up as they load, save once after."""

    def __init__(self, paths: list[str], allowed: tuple[Path, ...] = (), where: str | None = None):
        self.entries: dict[str, Entry] = {}
        self.used: dict[str, tuple[bytes, tuple[tuple[str, bytes], ...], Stat | None, Rig]] = {}
        self.changed = False
        self.path: str | None = None
        self.hits = self.misses = 0
        self.unread = 0   # hits whose file was not read (its stat was the recorded one)
        self._blob = b""
        self._models: list | None = None
        try:
            self.key = hashlib.blake2b(b"\0".join([
                FORMAT, code_stamp(), sys.version.encode(), os.getcwd().encode(),
                *(str(a).encode() for a in allowed), b"--", *(p.encode() for p in paths)]),
                digest_size=20).digest()
            self.path = os.path.join(where or folder(), self.key.hex() + ".pickle")
            self.entries, self._blob = self._read()
        except Exception:   # no cwd, no home, a damaged file: run without it
            self.entries, self._blob = {}, b""

    def _read(self) -> tuple[dict, bytes]:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return {}, b""
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                return {}, b""
            blob = f.read()
        if not blob.startswith(FORMAT):
            return {}, b""
        key, entries, models = pickle.loads(blob[len(FORMAT):])
        if key != self.key or not isinstance(entries, dict) or not isinstance(models, bytes):
            return {}, b""
        return entries, models

    def _model(self, index: int) -> Rig | None:
        """Model `index` of the file's list (None if the list is damaged)."""
        if self._models is None:
            try:
                models = pickle.loads(self._blob)
            except Exception:   # a damaged list: every rig loads from its file
                models = None
            self._models = models if isinstance(models, list) else []
        return self._models[index] if isinstance(index, int) and 0 <= index < len(self._models) else None

    def _hit(self, name: str, entry: Entry, sig: Stat | None) -> Rig | None:
        if not all(_same(file, head) for file, head in entry[1]):
            return None
        rig = self._model(entry[3])
        if rig is not None:
            self.used[name] = (entry[0], entry[1], sig, rig)
            if sig != entry[2]:
                self.changed = True   # the next run will not need to read it
        return rig

    def get_unread(self, path: Path) -> Rig | None:
        """The rig a file loaded to last time, if its stat is the one recorded
        (and nothing else it depends on changed): no need to read it."""
        name = str(path)
        entry = self.entries.get(name)
        if entry is None or entry[2] is None or file_stat(name) != entry[2]:
            return None
        rig = self._hit(name, entry, entry[2])
        if rig is not None:
            self.hits += 1
            self.unread += 1
        return rig

    def get(self, path: Path, raw: bytes, sig: Stat | None = None) -> Rig | None:
        """The rig this file loaded to last time, if nothing it depends on
        changed. `sig`: the file's stat (file_stat) taken before it was read."""
        name = str(path)
        entry = self.entries.get(name)
        rig = self._hit(name, entry, sig) if entry is not None and entry[0] == _digest(raw) else None
        if rig is None:
            self.misses += 1
            return None
        self.hits += 1
        return rig

    def put(self, path: Path, raw: bytes, rig: Rig, seen: list[tuple[str, bytes]], sig: Stat | None = None) -> None:
        """Keep a rig the loader just built (unless it depends on more than the files it read)."""
        if any(not file for file, _ in seen):
            return
        self.used[str(path)] = (_digest(raw), tuple(seen), sig, rig)
        self.changed = True

    def save(self) -> None:
        """Write the entries, if any changed, never raising: those this run
        used, and the others of files still there (a --rerun-failed run loads
        only some of the files)."""
        if self.path is None:
            return
        try:
            kept = {name: entry for name, entry in self.entries.items()
                    if name not in self.used and os.path.exists(name)}
            if not self.changed and kept.keys() | self.used.keys() == self.entries.keys():
                os.utime(self.path)   # still in use: pruned last
                return
            models: list = []
            entries: dict[str, Entry] = {}
            for name, (digest, seen, sig, rig) in [*((n, (*e[:3], self._model(e[3]))) for n, e in kept.items()),
                                                   *self.used.items()]:
                if rig is not None:
                    entries[name] = (digest, seen, sig, len(models))
                    models.append(rig)
            blob = pickle.dumps(models, protocol=pickle.HIGHEST_PROTOCOL)
            write_own_cache(self.path, FORMAT + pickle.dumps((self.key, entries, blob), protocol=pickle.HIGHEST_PROTOCOL))
            _prune(os.path.dirname(self.path))
        except Exception:   # a read-only or full disk, a model that does not pickle: the next run loads again
            pass


def _same(file: str, head: bytes) -> bool:
    """Does `file` still read as `head` (and may the run still read it)?"""
    from kvmrig.rig import hostfiles
    try:
        f, _size = hostfiles.open_regular(Path(file))
        with f:
            return f.read(HEAD_SIZE) == head
    except (hostfiles.HostFileProblem, OSError):
        return False


def _prune(where: str) -> None:
    """Keep the MAX_FILES most recently written cache files (regular files only)."""
    files: list[tuple[int, str]] = []
    with os.scandir(where) as entries:
        for e in entries:
            if e.name.endswith(".pickle") and not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                files.append((e.stat(follow_symlinks=False).st_mtime_ns, e.path))
    for _mtime, path in sorted(files, reverse=True)[MAX_FILES:]:
        try:
            os.unlink(path)
        except OSError:
            pass


def for_run(paths: list[str], enabled: bool = True) -> RigCache | None:
    """The cache of a run naming `paths` (None when turned off)."""
    if not enabled or disabled_by_env():
        return None
    from kvmrig.rig import hostfiles
    return RigCache(paths, hostfiles.allowed_folders())
