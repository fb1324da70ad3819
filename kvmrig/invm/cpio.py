"""A newc ("070701") cpio writer, as the Linux initramfs unpacker reads it,
and the tree walk that fills one with an unpacked root file system (minus a
trim list)."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Iterable


class CpioWriter:
    """Write a newc ("070701") cpio archive, as the Linux initramfs unpacker reads it.

    Parent directories are emitted automatically (the kernel does not create
    them).  Later entries with the same name replace earlier ones when the
    kernel unpacks, which is how a per-run overlay overrides the base image.
    """

    def __init__(self, fileobj: BinaryIO, ino_start: int = 1, known_dirs: Iterable[str] = ()):
        self.f = fileobj
        self.ino = ino_start
        self.dirs: set[str] = set(known_dirs)
        self.dirs.add("")
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.offset += len(data)

    def _pad(self) -> None:
        if self.offset % 4:
            self._write(b"\0" * (4 - self.offset % 4))

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               mtime: int = 0, rdev: tuple[int, int] = (0, 0)) -> None:
        raw = name.encode() + b"\0"
        self.ino += 1
        fields = (self.ino, mode, 0, 0, nlink, max(0, int(mtime)), len(data), 0, 0,
                  rdev[0], rdev[1], len(raw), 0)
        self._write(b"070701" + b"".join(b"%08X" % v for v in fields))
        self._write(raw)
        self._pad()
        if data:
            self._write(data)
            self._pad()

    @staticmethod
    def _norm(name: str) -> str:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise ValueError(f"bad path in image: {name!r}")
        return name

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755, nlink=2)

    def mkdir(self, name: str, perm: int = 0o755, mtime: int = 0) -> None:
        name = self._norm(name)
        if name in self.dirs:
            return
        self._parents(name)
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | (perm & 0o7777), nlink=2, mtime=mtime)

    def file(self, name: str, data: bytes, perm: int = 0o644, mtime: int = 0) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFREG | (perm & 0o7777), data, mtime=mtime)

    def symlink(self, name: str, target: str, mtime: int = 0) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
        self._pad()


def trim_matchers(patterns: Iterable[str]) -> tuple[Callable[[str], bool], Callable[[str], bool]]:
    """(is_trimmed_dir, is_trimmed_file) for patterns relative to a tree's root:
    one ending in "/" drops a whole directory; "*" matches within one component."""
    dir_pats = [p[:-1] for p in patterns if p.endswith("/")]
    file_pats = [p for p in patterns if not p.endswith("/")]

    def is_trimmed_dir(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) for p in dir_pats)

    def is_trimmed_file(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) for p in file_pats)

    return is_trimmed_dir, is_trimmed_file


def add_tree(w: CpioWriter, root: Path, prefix: str = "", trim: Iterable[str] = (),
             precompiled: dict[str, bytes] | None = None) -> tuple[int, int]:
    """Add the tree under ``root`` to the archive (at ``prefix``); returns (files, bytes).

    ``precompiled`` maps archive paths of .pyc files to add alongside.
    """
    is_trimmed_dir, is_trimmed_file = trim_matchers(trim)
    n_files = n_bytes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            full = os.path.join(dirpath, d)
            if is_trimmed_dir(rel):
                continue
            if os.path.islink(full):  # os.walk lists symlinks to dirs as dirs
                w.symlink(f"{prefix}{rel}", os.readlink(full))
                continue
            st = os.lstat(full)
            w.mkdir(f"{prefix}{rel}", stat.S_IMODE(st.st_mode), int(st.st_mtime))
            keep.append(d)
        dirnames[:] = keep
        for fn in sorted(filenames):
            rel = f"{rel_dir}/{fn}" if rel_dir else fn
            if is_trimmed_file(rel):
                continue
            full = os.path.join(dirpath, fn)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                w.symlink(f"{prefix}{rel}", os.readlink(full), int(st.st_mtime))
            elif stat.S_ISREG(st.st_mode):
                data = Path(full).read_bytes()
                w.file(f"{prefix}{rel}", data, stat.S_IMODE(st.st_mode), int(st.st_mtime))
                n_files += 1
                n_bytes += len(data)
    for name, data in (precompiled or {}).items():
        w.file(name, data)
        n_files += 1
        n_bytes += len(data)
    return n_files, n_bytes
