"""Writing a file so that no reader ever sees half of it (reports, golden and
state files), without destroying or hiding what the user has there.

- A regular file (or a new name) is replaced atomically: a temporary file
  beside it, renamed over it. The new file gets the mode the old one had, or
  0666 minus the umask for a new one, as `open()` would give (mkstemp's 0600
  would hide reports from the CI user that collects them).
- A symlink is followed: the file it points to is replaced, the link stays.
- A device, FIFO or socket (`--junit /dev/null`, `--json /dev/stdout`) is
  written through, never replaced: renaming a file over /dev/null as root
  turns the system's /dev/null into a regular file.
- A directory is refused with a message (OSError, as `open()` would).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it (so threads never see 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no /proc: the classic way, briefly
    os.umask(old)
    return old


def write_atomic(path: str | Path, text: str, prefix: str = ".kvmrig-") -> None:
    """Write `text` to `path` so that a reader sees the old or the new content, whole."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        st = None
    except NotADirectoryError as e:
        raise OSError(errno.ENOTDIR, "a part of the path is not a folder", str(path)) from e
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_through(path, text, st)
        return
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~current_umask()
    path = Path(os.path.realpath(path))  # a symlink (even dangling): replace its target, keep the link
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_own_cache(path: str, data: bytes) -> None:
    """Replace one of kvmrig's own cache files (~/.cache/kvmrig) atomically,
    with 0666 minus the umask; a symlink, FIFO or device someone put at its
    name is left alone (nothing written): a cache is not worth replacing them."""
    where = os.path.dirname(path)
    os.makedirs(where, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode):
            return
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=where)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_through(path: Path, text: str, st: os.stat_result) -> None:
    """Write into a device, FIFO or socket in place (never create, never truncate)."""
    if stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EINVAL, "is a socket: give a file, a device or a FIFO", str(path))
    flags = os.O_WRONLY | getattr(os, "O_NOCTTY", 0)
    if stat.S_ISFIFO(st.st_mode):
        try:  # a FIFO nobody reads would block the run forever: say so instead
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ENXIO:
                raise OSError(errno.ENXIO, "is a FIFO that no process is reading", str(path)) from None
            raise
        os.set_blocking(fd, True)
    else:
        fd = os.open(path, flags)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
