"""Reading a rig file's bytes, and the stat that tells the load cache it is
unchanged (kept apart from the loader: a run whose rigs come from the load
cache never imports the loader)."""

from __future__ import annotations

import os
import select
import stat
import time
from pathlib import Path

# The largest rig file read (rigs are small; this bounds parse time and memory
# before the YAML limits in yamlmarks apply). Documented in docs/limits.md.
MAX_RIG_BYTES = 4 << 20
RACY_NS = 2_000_000_000   # a file changed this recently (ns) is read and digested: its stat is not trusted

Stat = tuple[int, int, int, int, int]


def file_stat(path: str | Path) -> Stat | None:
    """What says a rig file is unchanged without reading it: taken before the
    file is read, and only for a regular file not changed in the last
    RACY_NS (None otherwise: such a file is always read and digested)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns > time.time_ns() - RACY_NS:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_rig_bytes(path: str | Path) -> bytes:
    """The first MAX_RIG_BYTES + 1 bytes of a rig file (enough to tell it is too large).

    With os-level calls on one descriptor: open() + read() of Python's file
    objects cost ~5x as much, and a run reads every rig file (the load cache
    checks their bytes). O_NONBLOCK: opening a FIFO must not wait for a writer
    (see _read_fifo); it changes nothing for a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISFIFO(st.st_mode):
            return _read_fifo(fd, MAX_RIG_BYTES + 1)
        if not stat.S_ISREG(st.st_mode):
            os.set_blocking(fd, True)   # a device reads as it would through open()
        return _read_up_to(fd, MAX_RIG_BYTES + 1, st.st_size)
    finally:
        os.close(fd)


def _read_up_to(fd: int, limit: int, size_hint: int) -> bytes:
    """Read to the end or `limit` bytes, whichever comes first."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(limit - size, max(size_hint + 1 - size, 1 << 16)))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_fifo(fd: int, limit: int) -> bytes:
    """A FIFO (`kvmrig run <(gen)`), opened without blocking, read without ever
    blocking in a system call: a Ctrl-C that lands just before a blocking
    open() or read() would only set Python's flag and leave the syscall
    waiting for a writer that may never come (a lost interrupt). Polling in
    short slices lets the signal handler run between them. No POLLHUP comes
    before a writer has connected once."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    parts: list[bytes] = []
    size = 0
    while size < limit:
        events = poller.poll(100)
        if not events:
            continue
        try:
            chunk = os.read(fd, min(1 << 16, limit - size))
        except BlockingIOError:
            continue
        if not chunk:
            if events[0][1] & select.POLLHUP:
                break
            continue
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)
