"""Reading a rig file's bytes (kept apart from the loader: a run whose rigs come
from the load cache reads the files but never imports the loader)."""

from __future__ import annotations

import os
import select
import stat
from pathlib import Path

# The largest rig file read (rigs are small; this bounds parse time and memory
# before the YAML limits in yamlmarks apply). Documented in docs/limits.md.
MAX_RIG_BYTES = 4 << 20


def read_rig_bytes(path: str | Path) -> bytes:
    """The first MAX_RIG_BYTES + 1 bytes of a rig file (enough to tell it is too large)."""
    if stat.S_ISFIFO(os.stat(path).st_mode):
        return _read_fifo(path, MAX_RIG_BYTES + 1)
    with open(path, "rb") as f:
        return f.read(MAX_RIG_BYTES + 1)


def _read_fifo(path: str | Path, limit: int) -> bytes:
    """A FIFO (`kvmrig run <(gen)`) read without ever blocking in a system call:
    a Ctrl-C that lands just before a blocking open() or read() would only set
    Python's flag and leave the syscall waiting for a writer that may never
    come (a lost interrupt). Polling in short slices lets the signal handler
    run between them. No POLLHUP comes before a writer has connected once."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
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
    finally:
        os.close(fd)
