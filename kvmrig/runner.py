"""Running rigs: one in-process (run_rig), many across worker processes (run_rigs).

Workers are forked once and fed rigs through pipes, so the per-rig cost is a
VM's, not a process's. Each worker runs a rig with the executor it was given
(run_rig on one backend, or crosscheck.cross_check). A worker that dies
(segfault, kill -9) or overruns its rig's timeout by a wide margin becomes an
error for that rig and is replaced; the rest of the run goes on. Ctrl-C stops
the run and still reports it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from kvmrig.backends.select import backend_for
from kvmrig.machine.plan import prepare
from kvmrig.machine.session import RunOptions, execute
from kvmrig.result import ERROR, RigResult, guarded, judged, result_for
from kvmrig.rig.model import Rig

WATCHDOG_GRACE = 10.0  # seconds a worker may overrun a rig's own timeout before it is killed

Executor = Callable[[Rig], RigResult]  # runs one rig here, never raises (see result.guarded)


def run_rig(rig: Rig, backend: str = "auto", update_golden: bool = False) -> RigResult:
    """Prepare and run one rig here, in this process; never raises for bad rigs or guests."""
    def body() -> RigResult:
        start = time.monotonic()
        plan = prepare(rig)
        _name, factory = backend_for(rig, backend)
        outcome = execute(plan, factory, RunOptions(update_golden=update_golden))
        return judged(rig, outcome, time.monotonic() - start)
    return guarded(rig, body)


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


def _worker(conn: Connection, executor: Executor | None, parent: int = 0,
            parent_end: Connection | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for everyone
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
        conn.send((index, (executor or run_rig)(rig)))


class _Worker:
    def __init__(self, ctx, executor: Executor | None):
        self.conn, child = ctx.Pipe()
        # Forked: the executor is inherited, never pickled (a partial or a lambda will do).
        self.proc = ctx.Process(target=_worker, args=(child, executor, os.getpid(), self.conn), daemon=True)
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
    return result_for(rig, ERROR, message=f"{rig.path}: the worker running this rig {how}; "
                                           "the rest of the run went on")


def run_rigs(rigs: list[Rig], jobs: int = 0, executor: Executor | None = None,
             on_result: Callable[[RigResult], None] | None = None,
             exitfirst: bool = False) -> tuple[list[RigResult | None], bool]:
    """Run rigs over `jobs` workers (0: one per core), each with `executor`
    (default: run_rig on the rig's own backend choice). Returns (results in
    input order — None for rigs not run — and whether the run was interrupted)."""
    results: list[RigResult | None] = [None] * len(rigs)
    if not rigs:
        return results, False
    jobs = jobs or os.cpu_count() or 1
    jobs = max(1, min(jobs, len(rigs)))
    ctx = multiprocessing.get_context("fork")
    pending = list(enumerate(rigs))
    pending.reverse()
    workers: list[_Worker] = []
    stop = False

    def record(index: int, result: RigResult) -> None:
        nonlocal stop
        results[index] = result
        if on_result:
            on_result(result)
        if exitfirst and not result.ok:
            stop = True

    try:
        workers = [_Worker(ctx, executor) for _ in range(jobs)]
        for w in workers:
            if pending:
                w.give(*pending.pop())
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
                    workers[workers.index(w)] = w = _Worker(ctx, executor)
                if pending and not stop:
                    w.give(*pending.pop())
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
