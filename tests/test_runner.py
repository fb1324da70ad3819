"""runner.py: verdicts of one rig, worker processes for many, collecting files.

Workers are forked, so a module attribute patched here before run_rigs() is
what the workers see too: that is how these tests make a worker hang or die
without a real guest doing it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kvmrig import collect, runner
from kvmrig import result as result_mod
from kvmrig.backends.select import HOST_ARCH
from kvmrig.collect import expand, is_rig_file, load_all
from kvmrig.result import ERROR, FAILED, PASSED, SKIPPED, RigResult, classname_for
from kvmrig.rig.load import load_rig_text
from kvmrig.rig.model import Rig
from kvmrig.runner import run_rig, run_rigs

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "rigs" / "x86"
x86_host = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 guest code")


def x86_rig(name: str, code: str = "f4", expect: str = "", extra: str = "") -> Rig:
    text = ("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\n"
            f"images: [{{hex: '{code}', at: 0x1000}}]\ncpu: {{mode: real}}\n" + extra)
    if expect:
        text += f"expect: {expect}\n"
    return load_rig_text(text, f"/rigs/{name}.yaml")


# -- run_rig -------------------------------------------------------------------

@pytest.mark.kvm
@x86_host
def test_run_rig_passed():
    result = run_rig(x86_rig("good", "b8 2a 00 f4", "{regs: {ax: 42}}"))   # mov ax, 42 ; hlt
    assert result.status == PASSED and result.ok
    assert result.name == "good" and result.path == "/rigs/good.yaml"
    assert result.backend == "kvm"
    assert result.outcome.exit == "hlt"
    assert result.message == ""


@pytest.mark.kvm
@x86_host
def test_run_rig_failed_keeps_the_outcome_and_every_failure():
    result = run_rig(x86_rig("bad", "b8 2b 00 f4", "{regs: {ax: 42, bx: 1}}"))  # mov ax, 43 ; hlt
    assert result.status == FAILED and not result.ok
    assert [f.what for f in result.outcome.failures] == ["register ax", "register bx"]


def test_run_rig_error_for_a_problem_found_by_prepare():
    rig = x86_rig("nosym", expect="{memory: [{at: 'sym:missing', u8: 0}]}")
    result = run_rig(rig)
    assert result.status == ERROR and not result.ok
    assert result.message.startswith("/rigs/nosym.yaml:6:")
    assert "unknown symbol 'missing'" in result.message
    assert result.outcome is None


def foreign_rig(pin: str = "") -> tuple[Rig, str]:
    """A rig for the arch this host's KVM cannot run, and that arch."""
    if HOST_ARCH == "x86_64":
        text = ("kvmrig: 1\narch: arm64\nmemory: [{at: 0x40000000, size: 64K}]\n"
                "images: [{hex: '00000014', at: 0x40000000}]\n")   # b .
        foreign = "arm64"
    else:
        text = ("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\n"
                "images: [{hex: 'f4', at: 0x1000}]\ncpu: {mode: real}\n")
        foreign = "x86_64"
    return load_rig_text(text + pin, "/rigs/foreign.yaml"), foreign


@pytest.mark.parametrize("pin, wanted", [("backend: kvm\n", "auto"), ("", "kvm")])
def test_run_rig_skips_a_kvm_rig_for_another_arch_with_a_reason(pin, wanted):
    rig, foreign = foreign_rig(pin)
    result = run_rig(rig, wanted)
    assert result.status == SKIPPED and result.ok
    assert result.outcome is None
    assert "KVM cannot run this rig" in result.message
    assert foreign in result.message and HOST_ARCH in result.message


def test_run_rig_skips_when_kvm_is_unusable(monkeypatch):
    monkeypatch.setenv("KVMRIG_KVM_DEVICE", "/nonexistent/kvm")
    result = run_rig(x86_rig("nokvm"), "kvm")
    assert result.status == SKIPPED
    assert "/nonexistent/kvm" in result.message


def test_run_rig_turns_a_kvmrig_bug_into_an_error_with_the_traceback(monkeypatch):
    def broken(rig):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(runner, "prepare", broken)
    result = run_rig(x86_rig("buggy"))
    assert result.status == ERROR
    assert "internal error in kvmrig" in result.message and "ZeroDivisionError" in result.message


def test_classname_is_the_folder_dotted(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert classname_for(tmp_path / "rigs" / "x86" / "a.yaml") == "rigs.x86"
    assert classname_for(Path("a.yaml")) == tmp_path.name, "outside a project, at the cwd: its name"


@pytest.mark.parametrize("marker", result_mod.ROOT_MARKERS)
def test_classname_is_relative_to_the_project_root_wherever_the_run_starts(monkeypatch, tmp_path, marker):
    """CI history survives: the same rig gets the same classname from any cwd, however typed."""
    project = tmp_path / "nu"
    (project / "rigs" / "x86").mkdir(parents=True)
    (project / marker).mkdir() if marker == ".git" else (project / marker).write_text("")
    result_mod.project_root.cache_clear()
    seen = set()
    for cwd, typed in ((tmp_path, "nu/rigs/x86/crc.yaml"), (project, "rigs/x86/crc.yaml"),
                       (project / "rigs", "x86/crc.yaml"), (project / "rigs" / "x86", "crc.yaml"),
                       (project / "rigs", "./x86/../x86/crc.yaml"), (tmp_path, str(project / "rigs/x86/crc.yaml"))):
        monkeypatch.chdir(cwd)
        seen.add(classname_for(Path(typed)))
    assert seen == {"rigs.x86"}


# -- run_rigs: fake rigs through the real worker machinery ------------------------

def fake_rig(name: str, timeout: float = 5.0) -> Rig:
    return Rig(path=Path(f"/rigs/{name}.yaml"), name=name, arch="x86_64", timeout=timeout)


def fake_run_rig(rig: Rig, *args, **kwargs) -> RigResult:
    """In the worker: names say what to do (sleepN, fail, die, hang)."""
    if rig.name.startswith("sleep"):
        time.sleep(int(rig.name[5:]) / 100)
    if rig.name == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if rig.name == "hang":
        time.sleep(60)
    status = FAILED if rig.name == "fail" else PASSED
    return RigResult(str(rig.path), rig.name, status, message=f"pid {os.getpid()}")


@pytest.fixture
def fake_workers(monkeypatch):
    monkeypatch.setattr(runner, "run_rig", fake_run_rig)
    yield
    assert runner._live == set(), "run_rigs left worker processes (or their pipes) behind"


def names(results) -> list[str | None]:
    return [r.name if r else None for r in results]


def test_run_rigs_returns_results_in_input_order(fake_workers):
    rigs = [fake_rig(n) for n in ("sleep30", "sleep0", "sleep10", "sleep1", "fail")]
    seen: list[str] = []
    results, interrupted = run_rigs(rigs, jobs=2, on_result=lambda r: seen.append(r.name))
    assert not interrupted
    assert names(results) == ["sleep30", "sleep0", "sleep10", "sleep1", "fail"]
    assert [r.status for r in results] == [PASSED] * 4 + [FAILED]
    assert sorted(seen) == sorted(names(results))
    assert seen != names(results), "on_result reports in completion order (sleep30 finishes last)"
    assert len({r.message for r in results}) == 2, "two worker processes did the work"
    assert all(r.message != f"pid {os.getpid()}" for r in results), "not run in this process"


def test_run_rigs_with_no_rigs():
    assert run_rigs([], jobs=2) == ([], False)


def test_a_worker_that_dies_is_an_error_for_its_rig_and_the_rest_still_run(fake_workers):
    rigs = [fake_rig("a"), fake_rig("die"), fake_rig("b"), fake_rig("c")]
    results, interrupted = run_rigs(rigs, jobs=1)
    assert not interrupted
    assert [r.status for r in results] == [PASSED, ERROR, PASSED, PASSED]
    died = results[1]
    assert died.name == "die"
    assert "died from signal SIGKILL" in died.message and "/rigs/die.yaml" in died.message
    assert results[0].message != results[2].message, "the dead worker was replaced"


def test_giving_a_rig_to_a_worker_that_just_died_leaves_it_to_the_loop(monkeypatch):
    # The parent may hand a worker its next rig between the worker's death and
    # the wait that notices it: the broken pipe must not end the whole run.
    monkeypatch.setattr(runner, "_run_list", [fake_rig("a"), fake_rig("b")])
    w = runner._Worker(None, reuse=False)
    w.proc.kill()
    w.proc.join(5)
    w.give([0])
    w.give([1])
    assert list(w.jobs) == [0, 1], "queued, for the loop to record the first as died and put back the rest"
    w.kill()


def test_a_worker_that_hangs_is_killed_by_the_watchdog(fake_workers, monkeypatch):
    monkeypatch.setattr(runner, "WATCHDOG_GRACE", 0.3)
    rigs = [fake_rig("hang", timeout=0.1), fake_rig("after")]
    started = time.monotonic()
    results, _ = run_rigs(rigs, jobs=1)
    assert time.monotonic() - started < 10, "the watchdog, not the 60 s sleep, ended it"
    assert [r.status for r in results] == [ERROR, PASSED]
    assert "did not answer" in results[0].message and "killed" in results[0].message


def test_exitfirst_stops_giving_out_rigs_after_a_failure(fake_workers):
    rigs = [fake_rig("a"), fake_rig("fail"), fake_rig("b"), fake_rig("c")]
    results, interrupted = run_rigs(rigs, jobs=1, exitfirst=True)
    assert not interrupted
    assert names(results) == ["a", "fail", None, None]


def test_interrupt_returns_what_finished_and_stops_the_workers(fake_workers):
    def on_result(result):
        if result.name == "b":
            raise KeyboardInterrupt

    rigs = [fake_rig("a"), fake_rig("b"), fake_rig("c"), fake_rig("d")]
    results, interrupted = run_rigs(rigs, jobs=1, on_result=on_result)
    assert interrupted
    assert names(results) == ["a", "b", None, None]


@pytest.mark.kvm
@x86_host
def test_run_rigs_on_kvm_with_two_workers():
    rigs, errors = load_all(expand([str(EXAMPLES)]))
    assert errors == [] and len(rigs) >= 3
    rigs.append(x86_rig("wrong", "b8 2b 00 f4", "{regs: {ax: 42}}"))
    results, interrupted = run_rigs(rigs, jobs=2)
    assert not interrupted
    assert [r.name for r in results] == [r.name for r in rigs]
    assert [r.status for r in results] == [PASSED] * (len(rigs) - 1) + [FAILED]


# -- collecting ---------------------------------------------------------------------

def touch(path: Path, text: str = "kvmrig: 1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_expand_folders_recursively_sorted_without_golden_files(tmp_path):
    a = touch(tmp_path / "a.yaml")
    b = touch(tmp_path / "sub" / "deeper" / "b.yaml")
    touch(tmp_path / "a.golden.yaml")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "other.yml")
    (tmp_path / "dir.yaml").mkdir()
    assert expand([str(tmp_path)]) == [a, b]


def test_expand_keeps_named_files_and_drops_duplicates(tmp_path):
    a = touch(tmp_path / "a.yaml")
    g = touch(tmp_path / "x.golden.yaml")
    assert expand([str(g)]) == [g], "a file named on the command line is taken as is"
    assert expand([str(a), str(tmp_path), str(a)]) == [a]


def test_is_rig_file(tmp_path):
    assert is_rig_file(touch(tmp_path / "a.yaml", "kvmrig: 1\narch: x86_64\n"))
    assert is_rig_file(touch(tmp_path / "b.yaml", "# a rig\n\n---\n  kvmrig: 1\n"))
    assert not is_rig_file(touch(tmp_path / "c.yaml", "name: ci config\nkvmrig: 1\n"))
    assert not is_rig_file(touch(tmp_path / "d.yaml", ""))
    assert not is_rig_file(touch(tmp_path / "e.yaml", "# only a comment\n"))
    assert is_rig_file(tmp_path / "missing.yaml"), "unreadable: let the loader say why"


def test_is_rig_file_accepts_a_utf8_bom(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfkvmrig: 1\narch: x86_64\n")
    rigs, errors = load_all([path])
    assert [r.name for r in rigs] == ["bom"] and not errors, "the loader reads it"
    assert is_rig_file(path)


def test_load_all_skips_other_yaml_in_folders_but_not_named_files(tmp_path):
    good = touch(tmp_path / "good.yaml", "kvmrig: 1\narch: x86_64\n")
    other = touch(tmp_path / "ci.yaml", "jobs: [build]\n")
    bad = touch(tmp_path / "bad.yaml", "kvmrig: 1\narch: z80\n")
    rigs, errors = load_all([bad, other, good], explicit=set())
    assert [r.name for r in rigs] == ["good"]
    assert [(e.name, e.status) for e in errors] == [("bad", ERROR)]
    assert errors[0].message.startswith(f"{bad}:2:")
    rigs, errors = load_all([other], explicit={other})
    assert rigs == [] and len(errors) == 1, "a named non-rig file is an error, not silently skipped"


def test_rigs_queued_behind_one_whose_worker_died_run_on_its_replacement(fake_workers):
    rigs = [fake_rig(f"q{i}") for i in range(6)] + [fake_rig("die")] + [fake_rig(f"r{i}") for i in range(6)]
    results, interrupted = run_rigs(rigs, jobs=1)
    assert not interrupted
    assert [r.status for r in results] == [PASSED] * 6 + [ERROR] + [PASSED] * 6
    assert "died from signal SIGKILL" in results[6].message
    assert {r.message for r in results[:6]}.isdisjoint({r.message for r in results[7:]}), "a new worker"


@pytest.mark.kvm
def test_workers_die_with_a_killed_run(make_rig, tmp_path):
    """kill -9 of `kvmrig run` must not leave workers behind (they would hold
    the terminal and CI's pipes open forever)."""
    import os
    import signal as _signal
    import subprocess
    import sys
    import time

    loop = "kvmrig: 1\narch: x86_64\ntimeout: 30s\nmemory: [{at: 0, size: 2M}]\nimages: [{hex: 'eb fe', at: 0x1000}]\n"
    folder = make_rig(loop, "rigs/a.yaml").parent
    make_rig(loop, "rigs/b.yaml")
    run = subprocess.Popen([sys.executable, "-m", "kvmrig", "run", "-j", "2", "--junit", "", str(folder)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(children) < 2:
        time.sleep(0.1)
        try:
            text = open(f"/proc/{run.pid}/task/{run.pid}/children").read()
        except OSError:
            text = ""
        children = [int(c) for c in text.split()]
    assert len(children) == 2, "the run did not start its two workers"
    os.kill(run.pid, _signal.SIGKILL)
    run.wait(10)
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [c for c in children if os.path.exists(f"/proc/{c}") and
                 open(f"/proc/{c}/stat").read().split(")")[1].split()[0] != "Z"]
    assert not alive, f"workers {alive} outlived the killed run"


# Modules a plain x86 run has no use for: each is imported by the rigs that need it.
NOT_FOR_PLAIN_RIGS = ("yaml", "jsonschema", "kvmrig.rig.load", "kvmrig.rig.schema", "kvmrig.arch.arm64.debugregs",
                      "kvmrig.arch.arm64.devicetree", "kvmrig.arch.arm64.boot", "kvmrig.arch.x86_64.multiboot",
                      "kvmrig.arch.x86_64.linux", "kvmrig.coverage.lines", "kvmrig.machine.snapfile",
                      "kvmrig.machine.golden", "kvmrig.crosscheck", "platform", "multiprocessing", "socket", "traceback")


@pytest.mark.kvm
@x86_host
def test_a_cached_run_of_plain_rigs_imports_only_what_they_use(tmp_path):
    """Every module a run imports is paid for by every run, on the parent's
    clock: a cached run of plain x86 rigs (parent and workers alike, as
    -X importtime lists them) loads no YAML, schema, other arch or snapshot code."""
    import subprocess
    import sys
    for i in range(3):
        (tmp_path / f"r{i}.yaml").write_text("kvmrig: 1\narch: x86_64\nmemory:\n  - {at: 0, size: 64K}\n"
                                             "images:\n  - {hex: f4, at: 0x1000}\ncpu: {mode: real}\n"
                                             "expect: {exit: hlt}\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("KVMRIG_NO_CACHE", None)
    cmd = [sys.executable, "-X", "importtime", "-m", "kvmrig", "run", "-j", "2", "."]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "kvmrig.rig.load" in first.stderr, "the first run loads the rig files (and -X importtime shows it)"
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in second.stderr.splitlines() if line.startswith("import time:")}
    assert "kvmrig.backends.kvm.x86_state" in imported and "kvmrig.machine.session" in imported
    assert sorted(imported & set(NOT_FOR_PLAIN_RIGS)) == []
