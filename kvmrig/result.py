"""The verdict on one rig as reported, and the one place where an exception
raised while preparing or running a rig becomes a result.

Results cross the process boundary (workers pickle them to the parent), so
they hold plain data only.
"""

from __future__ import annotations

import functools
import operator
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from kvmrig.errors import KvmrigError, NoBackend, RigError
from kvmrig.machine.outcome import Outcome
from kvmrig.rig.model import Rig

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


@dataclass
class RigResult:
    """The verdict on one rig, as reported (pickled from workers)."""

    path: str
    name: str
    status: str
    classname: str = ""
    tags: tuple[str, ...] = ()
    outcome: Outcome | None = None
    message: str = ""          # error or skip reason
    seconds: float = 0.0
    backend: str = ""
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, SKIPPED)

    def __reduce__(self):
        # Pickled as its field values in order (one per rig, worker to parent):
        # no field names in each message, and a plain call to load.
        return RigResult, _result_fields(self)


_result_fields = operator.attrgetter(*(f.name for f in fields(RigResult)))


# What marks a project's root folder, as pytest finds its rootdir (plus .git).
ROOT_MARKERS = ("pyproject.toml", "pytest.ini", "tox.ini", "setup.cfg", "setup.py", ".git")


@functools.lru_cache(maxsize=512)
def project_root(folder: Path) -> Path | None:
    """The nearest folder at or above `folder` that holds a project marker."""
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in ROOT_MARKERS):
            return candidate
    return None


def classname_for(path: Path) -> str:
    """JUnit classname: the rig's folder, dotted, relative to its project's root
    (ROOT_MARKERS), so it does not change with the working directory or with how
    the path was typed and CI test history survives. Outside any project:
    relative to the working directory when below it, else the folder's name."""
    return _classname(os.path.dirname(os.path.abspath(path)), os.getcwd())


@functools.lru_cache(maxsize=512)
def _classname(folder_text: str, cwd_text: str) -> str:
    """classname_for, once per folder and working directory (every rig of a
    folder has the same one, and a worker asks for each result)."""
    folder = Path(folder_text)
    root = project_root(folder)
    if root is None:
        cwd = Path(cwd_text)
        root = cwd if cwd == folder or cwd in folder.parents else folder.parent
    text = ".".join(folder.relative_to(root).parts)
    return text or folder.name or "rigs"


def error_result(path: str, message: str, name: str | None = None) -> RigResult:
    """An error against a file that did not load as a rig."""
    p = Path(path)
    return RigResult(path, name or p.stem, ERROR, classname_for(p), message=message)


def result_for(rig: Rig, status: str, **kw) -> RigResult:
    return RigResult(str(rig.path), rig.name, status, classname_for(rig.path), rig.tags, **kw)


def judged(rig: Rig, outcome: Outcome, seconds: float, **kw) -> RigResult:
    """The result of a run that finished: failed if any check failed; skipped
    (with the guest's reason) if the guest skipped itself (rig `verdict:`)."""
    status = FAILED if outcome.failures else SKIPPED if outcome.skipped else PASSED
    if status == SKIPPED:
        kw.setdefault("message", outcome.skipped)
    return result_for(rig, status, outcome=outcome, seconds=seconds, backend=outcome.backend, **kw)


def guarded(rig: Rig, body: Callable[[], RigResult]) -> RigResult:
    """body()'s result, or the one its exception means; never raises for a bad
    rig, a missing backend or a kvmrig bug, so the rest of the run goes on.

    NoBackend skips the rig (its message is the reason); a RigError names
    file:line:col itself; any other KvmrigError is prefixed with the rig's
    path; anything else is an internal error, reported with its traceback."""
    start = time.monotonic()
    try:
        return body()
    except NoBackend as e:
        return result_for(rig, SKIPPED, message=str(e), seconds=time.monotonic() - start)
    except RigError as e:
        return result_for(rig, ERROR, message=str(e), seconds=time.monotonic() - start)
    except KvmrigError as e:
        return result_for(rig, ERROR, message=f"{rig.path}: {e}", seconds=time.monotonic() - start)
    except Exception:  # a kvmrig bug: report it against the rig, keep the run going
        import traceback
        return result_for(rig, ERROR, message=f"{rig.path}: internal error in kvmrig:\n{traceback.format_exc()}",
                          seconds=time.monotonic() - start)
