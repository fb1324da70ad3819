"""`kvmrig run --coverage`: the summary, lcov that genhtml renders and
Cobertura that a parser reads; `kvmrig merge` of two runs' lcov."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmrig.coverage import lcov

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("unicorn", reason="the emulator backend needs unicorn (pip install -e '.[emu]')")


def _kvmrig(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmrig", *args], cwd=cwd, capture_output=True, text=True)


def _run(tmp_path: Path, backend: str) -> Path:
    out = tmp_path / backend
    done = _kvmrig("run", "-j", "1", "--backend", backend, "--junit", "", "--coverage", str(out),
                   "--coverage-root", "rigs", "rigs/x86/cov-dispatch.yaml", "rigs/x86/cov-checksum.yaml",
                   "rigs/x86/fib.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "never ran: panic (line 42): lines 0/5" in done.stdout
    assert "ran: handle_sub (line 56): lines 5/6 in 1 run(s)" in done.stdout   # the underflow branch did not
    assert "rigs/x86/guests/cov-dispatch.c" in done.stdout
    assert "rigs/x86/guests/fib.bin:" in done.stdout         # a raw image: bytes executed
    return out


@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=pytest.mark.kvm), "emu"])
def test_run_writes_lcov_and_cobertura(tmp_path, backend):
    out = _run(tmp_path, backend)
    report = lcov.read(out / "coverage.info")
    dispatch = report.files["rigs/x86/guests/cov-dispatch.c"]
    assert dispatch.functions["panic"][1] == 0 and dispatch.functions["handle_error"][1] == 1
    assert 0 < dispatch.lines_hit < len(dispatch.lines)
    genhtml = shutil.which("genhtml")
    if genhtml is not None:   # the README's second command, from the repository root
        html = tmp_path / "html"
        done = subprocess.run([genhtml, "-q", "-o", str(html), str(out / "coverage.info")], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "cov-dispatch.c" in (html / "index.html").read_text() or \
            "guests" in (html / "index.html").read_text()
    pycobertura = pytest.importorskip("pycobertura")
    cov = pycobertura.Cobertura(str(out / "coverage.xml"))
    assert "rigs/x86/guests/cov-dispatch.c" in cov.files()
    assert cov.total_misses() > 0 and cov.total_statements() > cov.total_misses()


@pytest.mark.kvm
def test_merge_both_backends(tmp_path):
    kvm, emu = _run(tmp_path, "kvm"), _run(tmp_path, "emu")
    merged = tmp_path / "all.info"
    done = _kvmrig("merge", str(merged), str(kvm / "coverage.info"), str(emu / "coverage.info"))
    assert done.returncode == 0, done.stderr
    one = lcov.read(kvm / "coverage.info").files["rigs/x86/guests/cov-dispatch.c"]
    both = lcov.read(merged).files["rigs/x86/guests/cov-dispatch.c"]
    assert both.lines == {line: 2 * n for line, n in one.lines.items()}   # the backends agree: counts double


def test_coverage_and_cross_check_do_not_mix(tmp_path):
    done = _kvmrig("run", "--cross-check", "--coverage", str(tmp_path), "rigs/x86/fib.yaml")
    assert done.returncode == 2 and "kvmrig merge" in done.stderr
