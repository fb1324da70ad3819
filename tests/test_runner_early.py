"""Workers started before the rigs load (runner.start_workers, what `kvmrig
run` does): they are sent each rig pickled — the load cache's pickle where it
has one — and the run's snapshot folder, and behave as inheriting workers do
(order, deaths, stopping). Fake rigs through the real worker machinery, as in
test_runner.py."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmrig import runner
from kvmrig.errors import Mark
from kvmrig.result import ERROR, PASSED, RigResult
from kvmrig.rig.model import Rig, Start
from kvmrig.runner import run_rigs, start_workers

ROOT = Path(__file__).resolve().parent.parent


def fake_rig(name: str, start: Start | None = None) -> Rig:
    return Rig(path=Path(f"/rigs/{name}.yaml"), name=name, arch="x86_64", timeout=5.0, start=start)


def fake_run_rig(rig: Rig, *args, **kwargs) -> RigResult:
    """In the worker: `die` kills it; the message says which process ran the
    rig and what snapshot folder it had."""
    if rig.name == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return RigResult(str(rig.path), rig.name, PASSED, message=f"pid {os.getpid()} points {runner._points_dir}")


@pytest.fixture
def fake_workers(monkeypatch):
    monkeypatch.setattr(runner, "run_rig", fake_run_rig)
    yield
    assert multiprocessing.active_children() == [], "worker processes were left behind"


def test_early_workers_run_the_rigs_they_are_sent(fake_workers):
    started = start_workers(2)
    assert all(w.early for w in started.workers)
    rigs = [fake_rig(n) for n in "abcdef"]
    results, interrupted = run_rigs(rigs, jobs=2, started=started)
    assert not interrupted and started.workers == [], "run_rigs took the workers"
    assert [r.name for r in results] == list("abcdef") and all(r.status == PASSED for r in results)
    pids = {r.message.split()[1] for r in results}
    assert len(pids) == 2 and str(os.getpid()) not in pids


def test_the_pickle_the_caller_has_is_what_the_worker_runs(fake_workers):
    # The load cache hands over its own pickle of each rig: the worker runs
    # what that pickle holds (here, on purpose, another rig's).
    rigs = [fake_rig("a"), fake_rig("b")]
    from_cache = {id(rigs[0]): pickle.dumps(fake_rig("a-from-the-cache"))}
    results, _ = run_rigs(rigs, jobs=1, started=start_workers(1), pickled=lambda r: from_cache.get(id(r)))
    assert [r.name for r in results] == ["a-from-the-cache", "b"]


def test_an_early_worker_that_dies_is_replaced_and_the_rest_run(fake_workers):
    rigs = [fake_rig("a"), fake_rig("die"), fake_rig("b"), fake_rig("c")]
    results, _ = run_rigs(rigs, jobs=1, started=start_workers(1))
    assert [r.status for r in results] == [PASSED, ERROR, PASSED, PASSED]
    assert "died from signal SIGKILL" in results[1].message
    assert results[0].message.split()[1] != results[2].message.split()[1], "a new worker took over"


def test_early_workers_get_the_runs_snapshot_folder(fake_workers):
    mark = Mark("/rigs/child.yaml", 1, 1)
    parent = fake_rig("parent")
    child = fake_rig("child", Start(parent.path, "end", None, mark))
    results, _ = run_rigs([child, parent], jobs=2, started=start_workers(2))
    folders = {r.message.split("points ")[1] for r in results}
    assert len(folders) == 1 and "kvmrig-points-" in folders.pop(), "both ran with the run's points folder"
    assert runner._points_dir is None, "and it is gone after the run"


def test_stopping_unused_workers_leaves_none_behind(fake_workers):
    started = start_workers(2)
    started.stop()
    assert started.workers == []
    started = start_workers(2)
    assert run_rigs([], jobs=2, started=started) == ([], False)
    assert started.workers == []


def test_a_signal_while_loading_stops_the_early_workers(tmp_path):
    """`kvmrig run` on a FIFO nobody writes: Ctrl-C while it loads. The run
    reports and ends, and its early workers are gone with it at once."""
    fifos = [tmp_path / "never-1.yaml", tmp_path / "never-2.yaml"]
    for fifo in fifos:
        os.mkfifo(fifo)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.Popen([sys.executable, "-m", "kvmrig", "run", "-j", "2", "--junit", "", *map(str, fifos)],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:   # its workers exist before it loads
        workers = _children(run.pid)
        time.sleep(0.05)
    assert len(workers) == 2, "two workers started before the rig file was read"
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 2 and "interrupted" in err
    assert not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in workers)


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
