"""kvmrig.forked: the runner's worker processes and the messages on their pipes."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from kvmrig.forked import CHUNK, Forked, Frames, frame, write_all


def _gone_within(proc: Forked, seconds: float) -> bool:
    poller = select.poll()
    poller.register(proc.sentinel, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def test_a_child_that_returns_exits_0_and_its_sentinel_says_so():
    proc = Forked(lambda: None)
    assert _gone_within(proc, 10)
    proc.join(5)
    assert proc.exitcode == 0 and not proc.is_alive()
    proc.close()


def test_a_child_that_raises_exits_1_with_the_traceback_on_stderr(capfd):
    def boom():
        raise RuntimeError("kaboom in the child")
    proc = Forked(boom)
    proc.join(10)
    assert proc.exitcode == 1
    assert "RuntimeError: kaboom in the child" in capfd.readouterr().err
    proc.close()


def test_a_child_that_exits_gives_its_status():
    import sys
    proc = Forked(sys.exit, (7,))
    proc.join(10)
    assert proc.exitcode == 7
    proc.close()


def test_a_child_never_runs_the_parents_atexit_handlers(tmp_path):
    # os._exit: a worker must not write the parent's reports or remove its folders.
    import atexit
    marker = tmp_path / "ran"
    handler = lambda: marker.write_text("x")  # noqa: E731
    atexit.register(handler)
    try:
        proc = Forked(lambda: None)
        proc.join(10)
    finally:
        atexit.unregister(handler)
    assert proc.exitcode == 0 and not marker.exists()
    proc.close()


def test_a_killed_child_reports_its_signal_as_a_negative_exit_code():
    proc = Forked(time.sleep, (60,))
    assert proc.is_alive()
    proc.join(0.05)
    assert proc.exitcode is None, "join with a timeout returns while the child runs"
    proc.kill()
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    proc.kill()   # a dead child: nothing to do, no error
    proc.close()


def test_frames_cut_messages_from_reads_of_any_size():
    r, w = os.pipe()
    try:
        big = b"x" * (3 * CHUNK)   # one message over several reads
        data = frame(1) + frame([2, 3]) + frame(big) + frame(None)
        half = len(frame(1) + frame([2, 3])) + 100   # less than a pipe holds
        os.set_blocking(r, False)
        frames = Frames(r)
        os.write(w, data[:half])
        got, eof = frames.waiting()
        assert got == [1, [2, 3]] and not eof, "whole messages only; the partial one waits"
        writer = Forked(write_all, (w, data[half:]))
        os.close(w)
        w = -1
        os.set_blocking(r, True)
        assert frames.next() == big and frames.next() is None
        with pytest.raises(EOFError):
            frames.next()
        writer.join(10)
        assert writer.exitcode == 0
        writer.close()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_waiting_sees_the_end_of_file_after_the_last_messages_are_taken():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, frame("last"))
    os.close(w)
    frames = Frames(r)
    assert frames.waiting() == (["last"], False), "a short read ends the call: the end of file shows next time"
    assert frames.waiting() == ([], True)
    os.close(r)
