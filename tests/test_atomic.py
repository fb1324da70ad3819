"""kvmrig/atomic.py: reports, golden and state files never destroy or hide what
the user has (issue 11 item 1, and the umask)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from kvmrig.atomic import write_atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def test_a_new_report_gets_the_umask_mode_not_0600(tmp_path, umask):
    umask(0o027)
    write_atomic(tmp_path / "new.xml", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "new.xml").st_mode) == 0o640
    umask(0o002)
    write_atomic(tmp_path / "sub" / "other.xml", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "other.xml").st_mode) == 0o664


def test_a_replaced_report_keeps_its_mode(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    os.chmod(target, 0o604)
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o604


def test_a_symlink_is_followed_and_stays_a_symlink(tmp_path):
    real = tmp_path / "real.xml"
    real.write_text("old")
    link = tmp_path / "link.xml"
    link.symlink_to(real)
    write_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    dangling = tmp_path / "dangling.xml"
    dangling.symlink_to(tmp_path / "made.xml")
    write_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made.xml").read_text() == "made"


def test_a_pipe_is_written_through_not_replaced():
    # /dev/stdout when stdout is a pipe: the same as --json /dev/stdout | jq
    r, w = os.pipe()
    try:
        write_atomic(f"/proc/self/fd/{w}", "through the pipe\n")
        assert os.read(r, 100) == b"through the pipe\n"
    finally:
        os.close(r)
        os.close(w)


def test_a_fifo_with_a_reader_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    got: list[bytes] = []
    opened = threading.Event()

    def reader():
        with open(fifo, "rb") as f:
            opened.set()
            got.append(f.read())

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(500):  # the reader must hold the FIFO open first: ENXIO otherwise
        try:
            write_atomic(fifo, "report")
            break
        except OSError:
            opened.wait(0.01)
    t.join(5)
    assert got == [b"report"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_fifo_nobody_reads_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="FIFO that no process is reading"):
        write_atomic(fifo, "report")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path, "x")
