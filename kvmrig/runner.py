"""Running rigs: one in-process, many across worker processes.

Workers are forked once and fed rigs through pipes, so the per-rig cost is a
VM's, not a process's. A worker that dies (segfault, kill -9) or overruns its
rig's timeout by a wide margin becomes an error for that rig and is replaced;
the rest of the run goes on. Ctrl-C stops the run and still reports it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from kvmrig.errors import KvmrigError, RigError
from kvmrig.machine.outcome import Outcome
from kvmrig.rig.load import load_rig
from kvmrig.rig.model import Rig

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
WATCHDOG_GRACE = 10.0  # seconds a worker may overrun a rig's own timeout before it is killed
CROSS = "cross"        # run_rig's backend for `kvmrig run --cross-check`
_pool = None           # this worker's kept VMs (machine/reuse.py); None: a fresh VM per rig


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


def classname_for(path: Path) -> str:
    """JUnit classname: the rig's folder, dotted, relative to the working dir when possible."""
    folder = path.parent
    try:
        folder = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    text = str(folder).replace(os.sep, ".").strip(".")
    return text or "rigs"


def error_result(path: str, message: str, name: str | None = None) -> RigResult:
    p = Path(path)
    return RigResult(path, name or p.stem, ERROR, classname_for(p), message=message)


def _result_for(rig: Rig, status: str, **kw) -> RigResult:
    return RigResult(str(rig.path), rig.name, status, classname_for(rig.path), rig.tags, **kw)


def run_rig(rig: Rig, backend: str = "auto", update_golden: bool = False, points: str | None = None,
            save_on_fail: str | None = None) -> RigResult:
    """Prepare and run one rig here, in this process; never raises for bad rigs or guests."""
    from kvmrig.backends.select import NoBackend, backend_for
    from kvmrig.machine.plan import prepare
    from kvmrig.machine.session import RunOptions, execute

    if backend == CROSS:  # --cross-check: both backends, compared (kvmrig/crosscheck.py)
        from kvmrig.crosscheck import cross_check
        return cross_check(rig, update_golden)
    start = time.monotonic()
    if rig.start is not None and rig.start.parent is not None and points is None:
        points, blocked = _parent_in_process(rig, backend)
        if blocked:
            return _result_for(rig, ERROR, message=blocked, seconds=time.monotonic() - start)
    try:
        plan = prepare(rig)
        try:
            name, factory = backend_for(rig, backend)
        except NoBackend as e:
            return _result_for(rig, SKIPPED, message=str(e), seconds=time.monotonic() - start)
        from kvmrig.machine.points import PointStore
        options = RunOptions(update_golden=update_golden, points=PointStore(points) if points else None,
                             save_on_fail=save_on_fail)
        outcome = _pool.execute(plan, factory, options) if _pool is not None else execute(plan, factory, options)
    except RigError as e:
        return _result_for(rig, ERROR, message=str(e), seconds=time.monotonic() - start)
    except KvmrigError as e:
        return _result_for(rig, ERROR, message=f"{rig.path}: {e}", seconds=time.monotonic() - start)
    except Exception:  # a kvmrig bug: report it against the rig, keep the run going
        return _result_for(rig, ERROR, message=f"{rig.path}: internal error in kvmrig:\n{traceback.format_exc()}",
                           seconds=time.monotonic() - start)
    status = FAILED if outcome.failures else PASSED
    return _result_for(rig, status, outcome=outcome, seconds=time.monotonic() - start, backend=outcome.backend)


_own_points: str | None = None   # this process's point store for rigs run one by one (run_rig alone)


def _parent_in_process(rig: Rig, backend: str) -> tuple[str, str | None]:
    """A child run on its own (kvmrig debug, tests): run its parent here first,
    once per process, into a private point store. (store folder, why the
    child cannot run or None)."""
    global _own_points
    import atexit
    import shutil
    import tempfile

    from kvmrig.machine.points import PointStore
    from kvmrig.rig.load import load_rig

    if _own_points is None:
        _own_points = tempfile.mkdtemp(prefix="kvmrig-points-")
        atexit.register(shutil.rmtree, _own_points, True)
    assert rig.start is not None and rig.start.parent is not None
    if not PointStore(_own_points).file(rig.start.parent, rig.start.point or "").exists():
        parent = run_rig(load_rig(rig.start.parent), backend, points=_own_points)
        if parent.status != PASSED:
            why = parent.message or "; ".join(str(f) for f in (parent.outcome.failures if parent.outcome else [])[:3])
            return _own_points, (f"{rig.path}: not run: it starts from {rig.start}, and that rig ({parent.name}) "
                                 f"{parent.status}" + (f": {why}" if why else ""))
    return _own_points, None


# Workers -------------------------------------------------------------------

def _die_with_parent(parent: int) -> None:
    """A worker must not outlive the run: ask Linux to kill it when the parent
    dies (prctl PR_SET_PDEATHSIG), and check the parent did not die already."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _worker(conn: Connection, backend: str, update_golden: bool, parent: int = 0,
            parent_end: Connection | None = None, reuse: bool = True, points: str | None = None,
            save_on_fail: str | None = None) -> None:
    global _pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for everyone
    if reuse:
        from kvmrig.machine.reuse import VmPool
        _pool = VmPool()
    if parent_end is not None:
        parent_end.close()  # else this process holds its own pipe open and never sees EOF
    if parent:
        _die_with_parent(parent)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        index, rig = job
        conn.send((index, run_rig(rig, backend, update_golden, points, save_on_fail)))


class _Worker:
    def __init__(self, ctx, backend: str, update_golden: bool, reuse: bool = True, points: str | None = None,
                 save_on_fail: str | None = None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, backend, update_golden, os.getpid(), self.conn, reuse,
                                                      points, save_on_fail),
                                daemon=True)
        self.proc.start()
        child.close()
        self.job: tuple[int, Rig] | None = None
        self.deadline = 0.0

    def give(self, index: int, rig: Rig) -> None:
        self.job = (index, rig)
        self.deadline = time.monotonic() + rig.timeout + WATCHDOG_GRACE
        self.conn.send(self.job)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(1)
        self.conn.close()


def _died(rig: Rig, how: str) -> RigResult:
    return _result_for(rig, ERROR, message=f"{rig.path}: the worker running this rig {how}; "
                                           "the rest of the run went on")


def run_rigs(rigs: list[Rig], jobs: int = 0, backend: str = "auto",
             on_result: Callable[[RigResult], None] | None = None,
             exitfirst: bool = False, update_golden: bool = False,
             reuse: bool = True, save_on_fail: str | None = None) -> tuple[list[RigResult | None], bool]:
    """Run rigs over `jobs` workers (0: one per core). Returns (results in input
    order — None for rigs not run — and whether the run was interrupted).
    `reuse`: each worker keeps its VMs between rigs (machine/reuse.py).
    Rigs that start from a snapshot point (`from: parent.yaml#point`) run
    after their parent, which runs once (added to the run if not listed);
    a parent that fails makes its children errors that say so."""
    import shutil
    import tempfile

    from kvmrig.schedule import Schedule

    order = Schedule(rigs)
    rigs = order.rigs   # parents not listed were added at the end
    results: list[RigResult | None] = [None] * len(rigs)
    if not rigs:
        return results, False
    jobs = jobs or os.cpu_count() or 1
    jobs = max(1, min(jobs, len(rigs)))
    ctx = multiprocessing.get_context("fork")
    workers: list[_Worker] = []
    stop = False
    points = tempfile.mkdtemp(prefix="kvmrig-points-") if order.has_points else None

    def record(index: int, result: RigResult) -> None:
        nonlocal stop
        results[index] = result
        order.done(index, result.ok and result.status != SKIPPED, result)
        if on_result:
            on_result(result)
        if exitfirst and not result.ok:
            stop = True

    def next_job():
        while True:
            index, blocked = order.next_ready()
            if blocked is None:
                return index
            record(index, _result_for(rigs[index], ERROR, message=blocked))

    def give(w: _Worker) -> None:
        index = next_job() if not stop else None
        if index is not None:
            w.give(index, rigs[index])

    try:
        workers = [_Worker(ctx, backend, update_golden, reuse, points, save_on_fail) for _ in range(jobs)]
        for w in workers:
            give(w)
        while any(w.job for w in workers):
            busy = [w for w in workers if w.job]
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout)
            for w in list(busy):
                job = w.job
                assert job is not None
                index, rig = job
                replace = False
                if w.conn in ready:
                    try:
                        _, result = w.conn.recv()
                    except (EOFError, OSError):
                        result, replace = _died(rig, _exit_text(w.proc)), True
                elif w.proc.sentinel in ready:
                    result, replace = _died(rig, _exit_text(w.proc)), True
                elif time.monotonic() > w.deadline:
                    result, replace = _died(rig, f"did not answer {rig.timeout + WATCHDOG_GRACE:g}s after "
                                                 "starting it and was killed"), True
                else:
                    continue
                w.job = None
                record(index, result)
                if replace:
                    w.kill()
                    workers[workers.index(w)] = w = _Worker(ctx, backend, update_golden, reuse, points,
                                                            save_on_fail)
                if not stop:
                    give(w)
                    for idle in workers:   # a parent's end may have made several children ready
                        if idle.job is None and not stop:
                            give(idle)
        return results, False
    except KeyboardInterrupt:
        return results, True
    finally:
        for w in workers:
            if w.job is None and w.proc.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in workers:
            if w.job is not None:
                w.kill()
            else:
                w.proc.join(2)
                if w.proc.is_alive():
                    w.kill()
        if points is not None:
            shutil.rmtree(points, ignore_errors=True)


def _exit_text(proc) -> str:
    proc.join(1)
    code = proc.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"died from signal {signal.Signals(-code).name}"
        except ValueError:
            return f"died from signal {-code}"
    return f"exited with status {code}"


# Collecting ---------------------------------------------------------------------

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
            for line in f:
                stripped = line.strip()
                if not stripped or stripped.startswith("#") or stripped == "---":
                    continue
                return stripped.startswith("kvmrig:")
    except OSError:
        return True  # let the loader report it
    return False


def load_all(paths: list[Path], explicit: set[Path] | None = None) -> tuple[list[Rig], list[RigResult]]:
    """Load rig files; return the rigs and an error result per file that failed."""
    rigs, errors = [], []
    for path in paths:
        if explicit is not None and path not in explicit and not is_rig_file(path):
            continue
        try:
            rigs.append(load_rig(path))
        except RigError as e:
            errors.append(error_result(str(path), str(e)))
    return rigs, errors
