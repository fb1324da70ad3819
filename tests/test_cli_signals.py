"""`kvmrig run` under signals and closed pipes: Ctrl-C and SIGTERM (what CI
sends on cancel) at any moment — while rig files load, before, during and
after the worker pool — and a reader that goes away (`| head -1`) all leave a
complete JUnit report: what ran, and what did not as skipped (issue 10 item 6,
issue 11 items 5 and 20). Each test waits for a readiness signal it can see,
never for a fixed time.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig.backends.select import HOST_ARCH
from tests.test_cli import CONSOLE, ENV, REPO, SPIN, good, junit, kvmrig

kvm = pytest.mark.kvm
x86_host = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 guest code")
LONG_SPIN = SPIN.replace("timeout: 5s", "timeout: 60s")


def start(*args: str, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kvmrig", "run", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in out + err, out + err
    return out, err


def wait_for_line(proc: subprocess.Popen, text: str) -> str:
    """Read stdout until a line holds `text` (the readiness signal)."""
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came; stdout was:\n{seen}")


def open_fifo_writer(fifo: Path, proc: subprocess.Popen) -> int:
    """Open the FIFO for writing once kvmrig has it open for reading: that is
    the moment kvmrig is inside the loading of this rig file."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        assert proc.poll() is None, "kvmrig ended before it read the FIFO"
        time.sleep(0.01)
    raise AssertionError("kvmrig never opened the FIFO")


def skipped(case: ET.Element) -> str:
    element = case.find("skipped")
    assert element is not None, ET.tostring(case)
    return element.get("message") or ""


@kvm
@x86_host
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_pool_reports_what_ran_and_what_did_not(tmp_path, sig):
    (tmp_path / "a-fast.yaml").write_text(good())
    (tmp_path / "b-spin.yaml").write_text(LONG_SPIN)
    (tmp_path / "c-spin.yaml").write_text(LONG_SPIN)
    report = tmp_path / "j.xml"
    proc = start("-j", "1", "--junit", report, tmp_path)
    wait_for_line(proc, "a-fast.yaml")  # the pool runs: the first rig is done, the next one spins
    proc.send_signal(sig)
    out, err = finish(proc)
    assert proc.returncode == 2, out + err
    assert "(interrupted)" in out and "interrupted" in err
    cases = junit(report)
    assert set(cases) == {"a-fast", "b-spin", "c-spin"}
    assert cases["a-fast"].find("skipped") is None and cases["a-fast"].find("failure") is None
    for name in ("b-spin", "c-spin"):   # skipped, not failed at their 60 s timeout: not waited for
        assert "interrupted" in skipped(cases[name])


@kvm
@x86_host
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_rig_files_load_reports_every_rig_as_not_run(tmp_path, sig):
    (tmp_path / "a.yaml").write_text(good())
    fifo = tmp_path / "b.yaml"
    os.mkfifo(fifo)       # loading blocks here until the test writes: a slow disk or NFS, made exact
    (tmp_path / "c.yaml").write_text(good())
    report = tmp_path / "j.xml"
    proc = start("-j", "1", "--junit", report, tmp_path / "a.yaml", fifo, tmp_path / "c.yaml")
    writer = open_fifo_writer(fifo, proc)
    try:
        proc.send_signal(sig)
        out, err = finish(proc)
    finally:
        os.close(writer)
    assert proc.returncode == 2, out + err
    cases = junit(report)
    assert set(cases) == {"a", "b", "c"}
    assert "not run (interrupted)" in skipped(cases["a"])
    for name in ("b", "c"):
        assert "interrupted while the rig files were loading" in skipped(cases[name])


@kvm
@x86_host
@pytest.mark.parametrize("moment", ["pool-start", "after-pool"])
def test_a_signal_before_or_after_the_pool_still_writes_the_whole_report(tmp_path, monkeypatch, moment):
    """In-process: the signal is sent by the code at that moment, so it lands exactly there."""
    from kvmrig import cli, lastfailed, runner

    (tmp_path / "a.yaml").write_text(good())
    (tmp_path / "b.yaml").write_text(good(ax=1))  # fails
    report = tmp_path / "j.xml"
    if moment == "pool-start":
        def run_rigs(*args, **kw):
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("the signal must have stopped the run")  # pragma: no cover
        monkeypatch.setattr(runner, "run_rigs", run_rigs)
    else:
        real_update = lastfailed.update

        def update(results, *args):
            os.kill(os.getpid(), signal.SIGTERM)   # after every rig ran, before the reports
            os.kill(os.getpid(), signal.SIGINT)    # and a second one, impatiently
            return real_update(results, tmp_path / "lf.json")
        monkeypatch.setattr(lastfailed, "update", update)
    status = cli.main(["run", "-j", "1", "--junit", str(report), str(tmp_path)])
    cases = junit(report)
    assert set(cases) == {"a", "b"}
    if moment == "pool-start":
        assert status == 2
        assert all("interrupted" in skipped(c) for c in cases.values())
    else:
        assert status == 1                     # the failure still decides the status
        assert cases["b"].find("failure") is not None and cases["a"].find("skipped") is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@kvm
@x86_host
def test_a_closed_stdout_changes_neither_the_verdict_nor_the_reports(tmp_path):
    # `kvmrig run rigs/ | head -1` exited 0 with failing rigs and wrote no reports
    for i in range(6):
        (tmp_path / f"a{i}.yaml").write_text(good())
    (tmp_path / "z-fails.yaml").write_text(good(ax=7))
    report = tmp_path / "j.xml"
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "kvmrig", "run", "-j", "1", "--junit", str(report),
                             str(tmp_path)], cwd=REPO, env=ENV, stdout=w, stderr=subprocess.PIPE, text=True)
    os.close(w)
    with os.fdopen(r) as head:
        head.readline()             # `head -1`: one line, then the reader is gone
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode == 1, err
    cases = junit(report)
    assert len(cases) == 7 and cases["z-fails"].find("failure") is not None


@kvm
@x86_host
def test_verbose_console_shows_escape_sequences_escaped(make_rig):
    # issue 11 item 18: -v printed the guest's raw escapes (colours, window title)
    escape = '"b0 1b e6 e9 b0 5d e6 e9 b0 68 e6 e9 b0 69 e6 e9 f4"'   # ESC ] h i: the start of a window title
    rig = make_rig(CONSOLE.replace('"b0 68 e6 e9 b0 69 e6 e9 f4"', escape))
    proc = kvmrig("run", "-v", rig, "--junit", "")
    assert proc.returncode == 0, proc.stdout
    assert "| \\x1b]hi" in proc.stdout
    assert "\x1b" not in proc.stdout


@kvm
@x86_host
def test_a_nul_byte_image_path_in_a_folder_costs_only_that_rig(tmp_path):
    # issue 11 item 4: the ValueError ended the whole run before any rig ran, with no JUnit
    (tmp_path / "a.yaml").write_text(good())
    (tmp_path / "b.yaml").write_text('kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\n'
                                     'images: [{file: "x\\0y", at: 0x1000}]\n')
    report = tmp_path / "j.xml"
    proc = kvmrig("run", "-j", "1", "--junit", report, tmp_path)
    assert proc.returncode == 2
    assert "b.yaml:4:17: images[0].file: image" in proc.stdout and "NUL byte" in proc.stdout
    cases = junit(report)
    assert cases["a"].find("error") is None and cases["b"].find("error") is not None


@kvm
@x86_host
def test_reports_to_pipes_and_fifos_are_written_through(tmp_path):
    # issue 11 item 1: --json /dev/stdout wrote nothing to stdout, and --junit /dev/null replaced the
    # device with a regular file. A FIFO stands in for the device here: a regression must not be
    # able to break the machine the tests run on.
    import threading
    (tmp_path / "a.yaml").write_text(good())
    stdout = tmp_path / "stdout.json"
    stdout.symlink_to("/proc/self/fd/1")  # what /dev/stdout is, in a place a regression cannot break
    fifo = tmp_path / "junit.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = kvmrig("run", "-j", "1", "-q", "--junit", fifo, "--json", stdout, tmp_path / "a.yaml")
    if not got:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the reader if kvmrig never wrote
    reader.join(10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"status": "passed"' in proc.stdout
    assert got and b'<testcase name="a"' in got[0]
    assert fifo.is_fifo() and stdout.is_symlink()


@kvm
@x86_host
def test_images_under_refuses_a_rig_reaching_outside(tmp_path):
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (tmp_path / "secret").write_bytes(b"\xf4")
    (rigs / "a.yaml").write_text(good())
    (rigs / "b.yaml").write_text("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\n"
                                 "images: [{file: ../secret, at: 0x1000}]\ncpu: {mode: real}\n")
    proc = kvmrig("run", "-j", "1", "--junit", "", "--images-under", rigs, rigs)
    assert proc.returncode == 2
    assert "is outside the folders this run allows (--images-under" in proc.stdout
    assert "1 passed" in proc.stdout
    assert kvmrig("run", "-j", "1", "--junit", "", rigs).returncode == 0
