"""Running rigs: one in-process (run_rig), many across worker processes (run_rigs).

Workers are forked once (kvmrig.forked) and fed rigs through pipes, so the
per-rig cost is a VM's, not a process's. A worker inherits the run's rigs when
it is forked and is sent only their indices; one whose rigs are short gets the
next ones queued before it answers (PIPELINE_BELOW), so it does not wait for
the parent. A worker writes each answer as its rig ends; the parent takes all
of a worker's waiting answers with one read and tops its queue up with one
write. Each worker runs a rig with the executor it was given
(run_rig on one backend, or crosscheck.cross_check). A worker that dies
(segfault, kill -9) or overruns its rig's timeout by a wide margin becomes an
error for that rig and is replaced; the rest of the run goes on. Ctrl-C stops
the run and still reports it.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import os
import select
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable

from kvmrig.backends.select import backend_for
from kvmrig.forked import Forked, Frames, frame, write_all
from kvmrig.machine.plan import prepare
from kvmrig.machine.reuse import VmPool
from kvmrig.machine.session import RunOptions, execute
from kvmrig.result import ERROR, PASSED, RigResult, guarded, judged, result_for
from kvmrig.rig.model import Rig
from kvmrig.schedule import Schedule

WATCHDOG_GRACE = 10.0  # seconds a worker may overrun a rig's own timeout before it is killed
# A worker whose last rig took less than this gets its next rig queued before
# it answers, so that it never waits for the parent between short rigs (the
# pipe round trip costs more than a trivial rig on a reused VM); one whose last
# rig took under a tenth of it holds up to 4 rigs (running + queued), under a
# hundredth up to PIPELINE_DEPTH, so a busy parent delays it less. At the end
# of a run the others wait at most for those few short rigs.
PIPELINE_BELOW = 0.05
PIPELINE_DEPTH = 8
# While every busy worker has a rig queued behind its running one, the parent
# sleeps this long before it waits for answers: it then takes several at once,
# and a worker's answer costs it a plain write instead of waking the parent
# (on two cores, that wake-up was a sixth of a trivial rig's time).
NAP = 0.0005

Executor = Callable[[Rig], RigResult]  # runs one rig here, never raises (see result.guarded)

_pool: VmPool | None = None        # this worker's kept VMs (machine/reuse.py); None: a fresh VM per rig
_points_dir: str | None = None     # the run's snapshot points (set by run_rigs before it forks)
_run_list: list[Rig] = []          # the run's rigs (set by run_rigs before it forks): jobs are their indices
_own_points: str | None = None     # this process's points for children run on their own
_live: set[_Worker] = set()        # workers not yet closed (run_rigs closes every one before it returns)


def run_rig(rig: Rig, backend: str = "auto", update_golden: bool = False, points: str | None = None,
            save_on_fail: str | None = None, coverage: bool = False) -> RigResult:
    """Prepare and run one rig here, in this process; never raises for bad rigs or guests.
    `coverage`: record the executed code (kvmrig.coverage) into the outcome.
    `points`: the folder of the run's snapshot points (default: run_rigs'); a
    child run without one runs its parent here first. `save_on_fail`: a folder
    for the final state of a failed rig."""
    points = points or _points_dir
    if rig.start is not None and rig.start.parent is not None and points is None:
        points, blocked = _parent_in_process(rig, backend)
        if blocked:
            return result_for(rig, ERROR, message=blocked)

    def body() -> RigResult:
        start = time.monotonic()
        plan = prepare(rig)
        _name, factory = backend_for(rig, backend)
        options = RunOptions(update_golden=update_golden, points=_store(points),
                             save_on_fail=save_on_fail, coverage=coverage)
        outcome = _pool.execute(plan, factory, options) if _pool is not None else execute(plan, factory, options)
        return judged(rig, outcome, time.monotonic() - start)
    return guarded(rig, body)


def _store(points: str | None):
    """The run's point store, if it has one (the snapshot code loads only then)."""
    if not points:
        return None
    from kvmrig.machine.points import PointStore
    return PointStore(points)


def _parent_in_process(rig: Rig, backend: str) -> tuple[str, str | None]:
    """A child run on its own (kvmrig debug, tests): run its parent here first,
    once per process, into a private point store. (store folder, why the
    child cannot run or None)."""
    global _own_points
    if _own_points is None:
        _own_points = tempfile.mkdtemp(prefix="kvmrig-points-")
        atexit.register(shutil.rmtree, _own_points, True)
    from kvmrig.machine.points import PointStore

    assert rig.start is not None and rig.start.parent is not None
    if not PointStore(_own_points).file(rig.start.parent, rig.start.point or "").exists():
        from kvmrig.rig.load import load_rig
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
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _worker(jobs_fd: int, answers_fd: int, executor: Executor | None, parent: int = 0,
            theirs: tuple[int, ...] = (), reuse: bool = True) -> None:
    """A worker's life: read lists of rig indices, run each, write each answer
    (index, RigResult) as soon as it is known; stop at None or end of file."""
    global _pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for everyone
    # What the worker inherited (modules, the run's rigs) lives as long as it
    # does: out of the collector's way, so a collection walks only what the
    # rigs since made, and never writes to the pages shared with the parent.
    gc.freeze()
    gc.enable()   # kvmrig run's parent turns it off while it loads and runs
    if reuse:
        _pool = VmPool()
    for fd in theirs:   # the parent's ends of every worker's pipes: else no end of file is ever seen
        try:
            os.close(fd)
        except OSError:
            pass
    if parent:
        _die_with_parent(parent)
    frames = Frames(jobs_fd)
    run = executor or run_rig
    while True:
        try:
            jobs = frames.next()
        except EOFError:
            return
        if jobs is None:
            return
        for job in jobs:
            write_all(answers_fd, frame((job, run(_run_list[job]))))


def _import_backend() -> None:
    """This host's KVM backend module, which a worker's first rig would import
    (~10 ms in each worker otherwise)."""
    from kvmrig.backends import select as backends
    if backends.kvm_usable() is None and backends.HOST_ARCH in ("x86_64", "arm64"):
        try:
            importlib.import_module(f"kvmrig.backends.kvm.{backends.HOST_ARCH}")
        except Exception:   # pragma: no cover - the first rig that needs it says why
            pass


class _Worker:
    """One worker process and the rigs it was given, oldest (running) first.
    Rigs reach it as indices into _run_list, which it inherited when forked."""

    def __init__(self, executor: Executor | None, reuse: bool = True, others: tuple[int, ...] = ()):
        jobs_r, self.jobs_fd = os.pipe()
        self.answers_fd, answers_w = os.pipe()
        os.set_blocking(self.answers_fd, False)
        # Forked: the executor is inherited, never pickled (a partial or a lambda will do).
        try:
            self.proc = Forked(_worker, (jobs_r, answers_w, executor, os.getpid(),
                                         (self.jobs_fd, self.answers_fd, *others), reuse))
        except BaseException:   # no fork (out of memory or processes): no pipes left behind either
            os.close(self.jobs_fd)
            os.close(self.answers_fd)
            raise
        finally:
            os.close(jobs_r)
            os.close(answers_w)
        _live.add(self)
        self.answers = Frames(self.answers_fd)
        self.jobs: deque[int] = deque()
        self.deadline = 0.0
        self.since = 0.0       # when the running rig started (as far as the parent knows)
        self.depth = 1         # rigs it may hold: more while its rigs are short
        self.closed = False

    def fds(self) -> tuple[int, int]:
        return (self.jobs_fd, self.answers_fd)

    def room(self) -> int:
        """How many more rigs it may be given now (one at least when idle)."""
        return max(self.depth - len(self.jobs), 0 if self.jobs else 1)

    def give(self, indices: list[int]) -> None:
        if not indices:
            return
        if not self.jobs:
            self._started(indices[0], time.monotonic())
        self.jobs.extend(indices)
        try:
            os.write(self.jobs_fd, frame(indices))   # a few bytes: one atomic write, never blocks
        except OSError:
            # The worker died since the last wait (a broken pipe): its
            # sentinel is ready, so the loop records its running rig and
            # puts these back with the rest of its queue.
            pass

    def finished(self, took: float) -> int:
        """The running rig answered (after `took` seconds of its own): the next queued one starts now."""
        index = self.jobs.popleft()
        self.depth = (1 if took >= PIPELINE_BELOW else 2 if took >= PIPELINE_BELOW / 10
                      else 4 if took >= PIPELINE_BELOW / 100 else PIPELINE_DEPTH)
        if self.jobs:
            self._started(self.jobs[0], time.monotonic())
        return index

    def _started(self, index: int, now: float) -> None:
        self.since = now
        self.deadline = now + _run_list[index].timeout + WATCHDOG_GRACE

    def stop(self) -> None:
        """No more rigs: the worker ends when it reads this."""
        try:
            os.write(self.jobs_fd, frame(None))
        except OSError:
            pass

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(1)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.jobs_fd)
            os.close(self.answers_fd)
            self.proc.close()
            _live.discard(self)


def _died(rig: Rig, how: str) -> RigResult:
    return result_for(rig, ERROR, message=f"{rig.path}: the worker running this rig {how}; "
                                           "the rest of the run went on")


def run_rigs(rigs: list[Rig], jobs: int = 0, executor: Executor | None = None,
             on_result: Callable[[RigResult], None] | None = None,
             exitfirst: bool = False, reuse: bool = True,
             on_wait: Callable[[], None] | None = None) -> tuple[list[RigResult | None], bool]:
    """Run rigs over `jobs` workers (0: one per core), each with `executor`
    (default: run_rig on the rig's own backend choice). Returns (results in
    input order — None for rigs not run — and whether the run was interrupted).
    `reuse`: each worker keeps its VMs between rigs (machine/reuse.py).
    `on_wait`: called whenever the loop is about to wait for workers (a
    terminal flushes there what on_result wrote since).
    Rigs that start from a snapshot point (`from: parent.yaml#point`) run
    after their parent, which runs once; a parent the list does not name is
    run too but not reported (so shards of one suite never report it twice),
    and one that did not pass makes its children errors that say so."""
    global _points_dir, _run_list
    listed = len(rigs)
    order = Schedule(rigs)
    rigs = order.rigs
    results: list[RigResult | None] = [None] * len(rigs)
    if not rigs:
        return results, False
    jobs = jobs or os.cpu_count() or 1
    jobs = max(1, min(jobs, len(rigs)))
    workers: list[_Worker] = []
    stop = False
    own_points = tempfile.mkdtemp(prefix="kvmrig-points-") if order.has_points else None
    before, _points_dir = _points_dir, own_points or _points_dir   # inherited by the forked workers
    before_list, _run_list = _run_list, rigs

    def record(index: int, result: RigResult) -> None:
        nonlocal stop
        results[index] = result
        order.done(index, result.status == PASSED, result)
        if index >= listed:
            return   # a parent only run for its children: they report what became of it
        if on_result:
            on_result(result)
        if exitfirst and not result.ok:
            stop = True

    def give(w: _Worker) -> None:
        # More than one rig goes only to a worker whose rigs are short, only
        # while there is more to do than idle workers would take, and never
        # with -x (which must not start a rig after the first failure).
        batch: list[int] = []
        while not stop:
            room = w.room() - len(batch)
            if room <= 0 or ((w.jobs or batch) and (exitfirst or order.waiting() <= jobs)):
                break
            index, blocked = order.next_ready()
            if index is None:
                break
            if blocked is None:
                batch.append(index)
            else:
                record(index, result_for(rigs[index], ERROR, message=blocked))
        w.give(batch)

    def replace(w: _Worker) -> _Worker:
        """A dead or killed worker (its running rig recorded): the rigs queued
        behind that one go back to the schedule, a new worker takes its place."""
        order.put_back(list(w.jobs))
        w.kill()
        fresh = _spawn()
        workers[workers.index(w)] = fresh
        return fresh

    def _spawn() -> _Worker:
        # The new worker closes the parent's ends of the others' pipes too.
        return _Worker(executor, reuse, others=tuple(fd for w in workers if not w.closed for fd in w.fds()))

    try:
        _import_backend()   # here, once: the workers forked below (and any replacement) inherit it
        for _ in range(jobs):
            workers.append(_spawn())
        for w in workers:
            give(w)
        while any(w.jobs for w in workers):
            busy = [w for w in workers if w.jobs]
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            if on_wait is not None:
                on_wait()
            if all(len(w.jobs) > 1 for w in busy):   # each has its next rig: no hurry
                time.sleep(min(NAP, timeout))
            ready = _ready([w.answers_fd for w in busy] + [w.proc.sentinel for w in busy], timeout)
            for w in busy:
                gone = w.proc.sentinel in ready
                answers, eof = w.answers.waiting() if gone or w.answers_fd in ready else ([], False)
                for index, result in answers:
                    w.finished(result.seconds)
                    record(index, result)
                if w.jobs and (eof or gone or time.monotonic() > w.deadline):
                    index = w.jobs[0]
                    rig = rigs[index]
                    if eof or gone:
                        result = _died(rig, _exit_text(w.proc))
                    else:
                        result = _died(rig, f"did not answer {rig.timeout + WATCHDOG_GRACE:g}s after "
                                            "starting it and was killed")
                    w.finished(0.0)
                    record(index, result)
                    replace(w)
                for idle in workers:   # a parent's end may have made several children ready
                    give(idle)
        return results[:listed], False
    except KeyboardInterrupt:
        return results[:listed], True
    finally:
        for w in workers:
            if not w.jobs and w.proc.is_alive():
                w.stop()
        for w in workers:
            if w.jobs:
                w.kill()
            else:
                w.proc.join(2)
                if w.proc.is_alive():
                    w.kill()
                w.close()
        _points_dir, _run_list = before, before_list
        if own_points is not None:
            shutil.rmtree(own_points, ignore_errors=True)


def _ready(fds: list[int], timeout: float) -> set[int]:
    """Those of `fds` readable (data or end of file) within `timeout` seconds:
    one poll(2). multiprocessing's wait() and Connection.poll() build and tear
    down a selector at every call (~15 µs), and the loop asks up to twice per
    answer: for 1000 trivial rigs, a tenth of the parent's time in the run."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _events in poller.poll(timeout * 1000)}


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
