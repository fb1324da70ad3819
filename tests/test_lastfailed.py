"""`kvmrig run --rerun-failed`: only what failed last time, recorded in .kvmrig_cache/."""

import json
import subprocess
import sys

import pytest

RIG = 'kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 2M}]\nimages: [{hex: "f4", at: 0x1000}]\n'


def run(cwd, *args):
    return subprocess.run([sys.executable, "-m", "kvmrig", "run", "--junit", "", "-j", "1", *args, "."],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.kvm
def test_rerun_failed_runs_the_failures_then_everything_once_they_pass(tmp_path):
    (tmp_path / "good.yaml").write_text(RIG)
    (tmp_path / "bad.yaml").write_text(RIG + "expect: {regs: {rax: 1}}\n")
    (tmp_path / "broken.yaml").write_text(RIG + "expekt: {}\n")
    first = run(tmp_path)
    assert first.returncode == 1 and "1 failed, 1 passed" in first.stdout
    record = json.loads((tmp_path / ".kvmrig_cache" / "last-failed.json").read_text())
    assert sorted(p.rsplit("/", 1)[1] for p in record["failed"]) == ["bad.yaml", "broken.yaml"]

    again = run(tmp_path, "--rerun-failed")
    assert "2 rig(s) that failed last time" in again.stdout
    assert "good.yaml" not in again.stdout and "bad.yaml" in again.stdout

    (tmp_path / "bad.yaml").write_text(RIG + "expect: {regs: {rax: 0}}\n")
    (tmp_path / "broken.yaml").write_text(RIG)
    fixed = run(tmp_path, "--rerun-failed")
    assert fixed.returncode == 0 and "2 passed" in fixed.stdout
    assert json.loads((tmp_path / ".kvmrig_cache" / "last-failed.json").read_text())["failed"] == []
    everything = run(tmp_path, "--rerun-failed")
    assert "running all" in everything.stdout and "3 passed" in everything.stdout


@pytest.mark.kvm
def test_a_filtered_run_keeps_the_other_recorded_failures(tmp_path):
    (tmp_path / "a.yaml").write_text(RIG + "expect: {regs: {rax: 1}}\n")
    (tmp_path / "b.yaml").write_text(RIG + "expect: {regs: {rax: 1}}\n")
    run(tmp_path)
    (tmp_path / "a.yaml").write_text(RIG)
    run(tmp_path, "-k", "a")           # a now passes; b was not run
    record = json.loads((tmp_path / ".kvmrig_cache" / "last-failed.json").read_text())
    assert [p.rsplit("/", 1)[1] for p in record["failed"]] == ["b.yaml"]


@pytest.mark.parametrize("text", ['{"failed": 5}', '{"failed": [1, null, "x"]}', "[1]", '"x"', "{", "\xff"])
def test_a_corrupt_record_counts_as_none_and_is_rewritten(tmp_path, text):
    # issue 11 item 6: {"failed": 5} made every later run crash after all rigs ran
    from kvmrig import lastfailed
    from kvmrig.result import RigResult
    record = tmp_path / "last-failed.json"
    record.write_text(text, encoding="latin-1")
    assert lastfailed.load(record) <= {"x"}
    lastfailed.update([RigResult(str(tmp_path / "a.yaml"), "a", "failed")], record)
    assert any(p.endswith("a.yaml") for p in json.loads(record.read_text())["failed"])


@pytest.mark.kvm
def test_state_goes_to_the_project_cache_not_the_working_directory(tmp_path):
    project = tmp_path / "proj"
    (project / "rigs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (project / "rigs" / "bad.yaml").write_text(RIG + "expect: {regs: {rax: 1}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    got = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--junit", "", str(project / "rigs")],
                         cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert got.returncode == 1, got.stdout + got.stderr
    assert list(elsewhere.iterdir()) == [], "nothing appears where kvmrig was run from"
    cache = project / ".kvmrig_cache"
    assert (cache / ".gitignore").read_text().splitlines()[-1] == "*"
    assert json.loads((cache / "last-failed.json").read_text())["failed"][0].endswith("bad.yaml")
    assert not (project / "reports").exists()
