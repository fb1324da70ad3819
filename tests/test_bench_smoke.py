"""The benchmark harness works: bench/limit.c builds and runs an operation,
kvmrig's side runs the same rigs, and bench/run.py writes the JSON shape
reports/bench.json promises. Tiny repetition counts; no timing assertions
(the figures are the benchmark's business, not the tests')."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
CC = shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) to build bench/limit.c")
kvm = pytest.mark.kvm  # creates real VMs: skipped (by conftest) only where /dev/kvm is absent


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"kvmrig_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_mod():
    return _load("run")


@pytest.fixture(scope="module")
def limit_exe(run_mod, tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler (cc) to build bench/limit.c")
    return run_mod.build_limit(tmp_path_factory.mktemp("limit"))


@kvm
@needs_cc
@pytest.mark.parametrize("op", ["lifecycle", "pio", "mmio", "singlestep", "hwbp", "swbp"])
def test_limit_runs_each_operation(run_mod, limit_exe, op):
    k = 0 if op == "lifecycle" else 3
    got = run_mod.run_limit(limit_exe, op, k, 2)
    assert got["op"] == op and got["k"] == k
    assert len(got["ns"]) == 2 and all(isinstance(x, int) and x > 0 for x in got["ns"])
    # The guest really did K turns: one exit each (two for a breakpoint hit), plus the HLT.
    expected = {"lifecycle": 1, "pio": k + 1, "mmio": k + 1, "singlestep": k + 2, "hwbp": 2 * k + 1,
                "swbp": 2 * k + 1}[op]
    assert got["exits"] == expected
    if k:
        assert len(got["ns_0"]) == 2
    else:
        assert set(got["phases_median_ns"]) >= {"create_vm", "timer_run_to_hlt", "teardown"}


@kvm
@needs_cc
def test_limit_ioctl_costs(run_mod, limit_exe):
    import subprocess

    out = subprocess.run([str(limit_exe), "ioctls", "0", "3"], capture_output=True, text=True, check=True).stdout
    costs = json.loads(out)["median_ns"]
    assert {"KVM_GET_REGS", "KVM_GET_SREGS", "KVM_SET_GUEST_DEBUG_step_on", "KVM_RUN_to_HLT"} <= set(costs)


@kvm
@pytest.mark.parametrize("op", ["lifecycle", "pio", "hwbp", "swbp"])
def test_kvmrig_side_runs_the_same_rigs(op):
    side = _load("kvmrig_side")
    k = 0 if op == "lifecycle" else 3
    got = side.measure(op, k, 2)
    assert len(got["ns"]) == 2 and all(x > 0 for x in got["ns"])
    assert got["exits"] >= (k + 1 if op != "lifecycle" else 1)
    if k:
        assert len(got["ns_0"]) == 2


def test_kvmrig_side_on_the_emulator():
    if importlib.util.find_spec("unicorn") is None:
        pytest.skip("unicorn is not installed: no emulator backend to measure")
    side = _load("kvmrig_side")
    try:
        got = side.measure("pio", 3, 1, backend="emu")
    except SystemExit as e:  # this kvmrig has no emulator backend yet
        pytest.skip(f"the emulator backend cannot run the benchmark rig: {e}")
    assert got["backend"] == "emu" and len(got["ns"]) == 1


@kvm
def test_bench_rigs_check_what_they_claim(tmp_path):
    """A benchmark rig that did less work than asked must fail, not look fast."""
    rigs = _load("rigs")
    from kvmrig.rig.load import load_rig
    from kvmrig.result import FAILED, PASSED
    from kvmrig.runner import run_rig

    good = rigs.write_rig(tmp_path, "hwbp", 4)
    assert run_rig(load_rig(good)).status == PASSED
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("hits: 4", "hits: 5"))
    assert run_rig(load_rig(bad)).status == FAILED


@kvm
@needs_cc
def test_run_writes_the_report_shape(run_mod, tmp_path, capsys):
    out = tmp_path / "bench.json"
    run_mod.bench(run_mod.TINY, {"ops", "cli"}, out)
    report = json.loads(out.read_text())
    machine = report["machine"]
    for key in ("cpu_model", "cores", "kernel", "kvm_module", "python", "kvmrig_version"):
        assert key in machine
    names = [r["name"] for r in report["rows"]]
    for name in ("lifecycle", "pio_exit", "mmio_exit", "singlestep_exit", "hw_bp_hit", "sw_bp_hit",
                 "cli_version", "lifecycle_reuse", "rig_load"):
        assert name in names
    for row in report["rows"]:
        assert {"name", "unit", "limit", "kvmrig", "ratio", "n", "note"} <= set(row)
    ops = {r["name"]: r for r in report["rows"]}
    for name in ("lifecycle", "pio_exit", "hw_bp_hit"):
        assert ops[name]["limit"] is not None and ops[name]["kvmrig"] is not None
        assert ops[name]["unit"] == "us"
    # The table prints every row.
    text = run_mod.table([run_mod.Row(**{k: r[k] for k in ("name", "unit", "limit", "kvmrig", "n", "note")})
                          for r in report["rows"]])
    assert all(name in text for name in names)


@kvm
def test_coverage_rows(run_mod, tmp_path):
    pytest.importorskip("unicorn", reason="the emulator row needs unicorn")
    out = tmp_path / "bench.json"
    run_mod.bench(run_mod.TINY, {"coverage"}, out)
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ("coverage_overhead_emu", "coverage_overhead_kvm"):
        row = rows[name]
        assert row["limit"] and row["kvmrig"] and row["ratio"], row["note"]
        assert row["target"].startswith("<= ")
    assert rows["coverage_overhead_kvm"]["detail"]["exits_coverage"] > \
        rows["coverage_overhead_kvm"]["detail"]["exits_plain"]      # the one-shot breakpoints were hit


def test_suite_folder_is_trivial_rigs(tmp_path):
    rigs = _load("rigs")
    from kvmrig.rig.load import load_rig

    folder = rigs.write_suite(tmp_path / "s", 3)
    files = sorted(folder.glob("*.yaml"))
    assert len(files) == 3
    assert load_rig(files[0]).arch == "x86_64"


@kvm
@needs_cc
def test_the_reuse_rows_are_measured(run_mod, tmp_path):
    """reset_reuse against C, the re-mapping alternative and worker growth (issue 15)."""
    run_mod.ENV = run_mod.bench_env()
    rows = {r.name: r for r in run_mod.reuse_rows(run_mod.TINY, run_mod.build_limit(tmp_path), tmp_path)}
    reset = rows["reset_reuse"]
    assert reset.limit > 0 and reset.kvmrig > 0 and reset.detail["c_dirty_pages"] >= 16
    assert rows["reset_remap"].kvmrig > 0
    assert rows["fork_4"].kvmrig > 0 and rows["fork_4"].detail["boot_s"] > 0
    growth = rows["growth_300"].detail
    assert growth["reused"] == 299 and growth["fds_end"] == growth["fds_start"]
