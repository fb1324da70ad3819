"""The host files a rig names (images, golden files): what it may open, and how.

A rig can name any file the user running kvmrig can read: its bytes go into
guest memory and can come back in reports (console, memory checks). For CI
that runs rigs it did not write, `kvmrig run --images-under DIR` (repeatable)
confines those files to folders: a path outside all of them, after symlinks
are resolved, is a rig error. See docs/limits.md.

Only regular files are opened: a FIFO would hang the run, /dev/zero would
fill memory. The file is opened without blocking and checked with fstat on
the same descriptor, so nothing can swap it for another between the check
and the read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

_ALLOWED: tuple[Path, ...] = ()   # empty: no restriction (the default)


class HostFileProblem(Exception):
    """Why a file a rig names cannot be used; the caller adds file:line:col."""


def restrict_to(folders: Iterable[str | Path]) -> None:
    """Allow rig-named files only below these folders (empty: lift the restriction).
    Process-wide: forked workers inherit it."""
    global _ALLOWED
    _ALLOWED = tuple(Path(os.path.realpath(f)) for f in folders)


def allowed_folders() -> tuple[Path, ...]:
    return _ALLOWED


def check_allowed(path: Path) -> None:
    """Raise HostFileProblem if `path` lies outside every --images-under folder."""
    if not _ALLOWED:
        return
    try:
        real = Path(os.path.realpath(path))
    except ValueError:
        raise HostFileProblem(f"{_show(path)}: the path contains a NUL byte") from None
    if not any(real == root or root in real.parents for root in _ALLOWED):
        where = ", ".join(str(r) for r in _ALLOWED)
        raise HostFileProblem(f"{_show(path)} is outside the folders this run allows (--images-under {where})")


def open_regular(path: Path) -> tuple[BinaryIO, int]:
    """(an open binary file, its size) for a regular file; HostFileProblem otherwise."""
    check_allowed(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except ValueError:
        raise HostFileProblem(f"{_show(path)}: the path contains a NUL byte") from None
    except FileNotFoundError:
        raise HostFileProblem(f"file not found: {_show(path)}") from None
    except OSError as e:
        raise HostFileProblem(f"cannot read {_show(path)}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HostFileProblem(f"{_show(path)} is {_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (checked before reading)."""
    f, size = open_regular(path)
    with f:
        if size > limit:
            raise HostFileProblem(f"{what} {_show(path)} is {size:#x} bytes, more than the {limit:#x} "
                                  "it can use")
        try:
            data = f.read(size + 1)  # one more: a file that grew since fstat shows it
        except OSError as e:
            raise HostFileProblem(f"cannot read {_show(path)}: {e.strerror}") from None
        if len(data) > limit:
            raise HostFileProblem(f"{what} {_show(path)} grew past the {limit:#x} bytes it can use while read")
        return data


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _show(path: Path) -> str:
    return repr(str(path)).strip("'") if "\0" in str(path) or not str(path).isprintable() else str(path)
