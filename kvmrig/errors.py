"""The one exception hierarchy of kvmrig.

Every error a user can see is a subclass of KvmrigError and its str() is a
message they can act on. Guest misbehaviour (wild jumps, triple faults, runaway
loops) is *not* an exception: it is an outcome of the run, judged by the rig.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    """A place in a rig file: 1-based line and column, as editors count."""

    path: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class KvmrigError(Exception):
    """Root of every error kvmrig raises on purpose."""


class RigError(KvmrigError):
    """Something is wrong in a rig file; the message names file:line:col.

    `more` holds the file's other errors, found in the same pass (str() puts
    each on a line of its own after the first), so one run shows them all."""

    def __init__(self, message: str, mark: Mark | None = None, path: str | None = None,
                 more: tuple[RigError, ...] = ()):
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.path = mark.path if mark else path
        self.more = more

    def first_line(self) -> str:
        if self.mark:
            return f"{self.mark}: {self.message}"
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message

    def __str__(self) -> str:
        return "\n".join([self.first_line(), *(e.first_line() for e in self.more)])

    @classmethod
    def of(cls, errors: list[RigError]) -> RigError:
        """One error for several, in file order: the first, with the others in `more`."""
        ordered = sorted(errors, key=lambda e: (e.mark.line, e.mark.col) if e.mark else (0, 0))
        first = ordered[0]
        return cls(first.message, first.mark, first.path, tuple(ordered[1:]))


class BackendError(KvmrigError):
    """A backend could not do what the rig needs (not the guest's fault)."""


class BackendUnavailable(BackendError):
    """The backend cannot run here at all (no /dev/kvm, wrong host arch, ...)."""


class KvmError(BackendError):
    """An ioctl on /dev/kvm failed: names the call and the errno."""

    def __init__(self, call: str, err: int, detail: str = ""):
        self.call = call
        self.errno = err
        name = _errno.errorcode.get(err, str(err))
        msg = f"{call} failed: {name} ({os.strerror(err)})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class UsageError(KvmrigError):
    """Bad command-line use (exit status 2)."""


class NoBackend(KvmrigError):
    """No backend can run this rig here; the message is the skip reason."""


class NoDebugSlot(KvmrigError):
    """A debugger's point needs more hardware debug registers than the rig left free."""


class OutsideMemory(KvmrigError, LookupError):
    """An address range that no memory region of the rig backs."""


class ResultsFileError(KvmrigError, ValueError):
    """A JSON results file (kvmrig merge, --shard) cannot be read; names the file."""


class SnapshotError(KvmrigError):
    """A snapshot file that cannot be used here: another format version, arch,
    backend or memory map, or a truncated or corrupt file. The message names
    the file and the mismatch."""
