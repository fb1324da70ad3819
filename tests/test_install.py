"""kvmrig as a pip user gets it: a wheel, installed into a fresh venv.

The wheel is built once per session from a copy of the package (so the
checkout gets no build/ or egg-info), with the setuptools already installed
when it can (`--no-build-isolation`: no download; else pip fetches setuptools). The venv sees the
system's site-packages, so the dependencies come from what is installed —
and `pip install --no-index` fails if the wheel asks for one that is not
(unicorn included: it is a default dependency). Every command then runs from
a directory outside the checkout with no PYTHONPATH, so only the wheel's
files can be imported or opened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kvmrig.arch import host_arch

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "kvmrig"
NOT_DATA = {".py", ".pyc", ".md"}   # documentation beside the code is not opened by kvmrig


def _run(cmd: list, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "FORCE_COLOR", "NO_COLOR", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _local_backend() -> bool:
    """Whether the installed setuptools can build the wheel (pyproject's >= 68, and
    bdist_wheel: built in from 70.1, else the `wheel` package). If not, pip builds
    in isolation and fetches the backend from PyPI (cached by pip afterwards)."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        parts = tuple(int(x) for x in version("setuptools").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return parts >= (70, 1) or (parts >= (68, 0) and find_spec("wheel") is not None)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(PACKAGE, src / "kvmrig", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
           "-w", work / "dist", src]
    if _local_backend():
        cmd.insert(4, "--no-build-isolation")   # offline, with the installed setuptools
    proc = _run(cmd, work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list((work / "dist").glob("kvmrig-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "venv"
    proc = _run([sys.executable, "-m", "venv", "--system-site-packages", root], root.parent)
    assert proc.returncode == 0, proc.stderr
    proc = _run([root / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check",
                 wheel], root.parent, env=_clean_env(root))
    assert proc.returncode == 0, "the wheel's dependencies must all be installed: " + proc.stdout + proc.stderr
    return root


@pytest.fixture
def user(venv: Path, tmp_path: Path):
    """Run a command as the user of the venv: from an empty directory, no PYTHONPATH."""
    def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = _run(list(args), tmp_path, timeout, _clean_env(venv))
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return proc
    return run


def test_every_data_file_of_the_package_is_in_the_wheel(wheel: Path):
    inside = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in NOT_DATA and "__pycache__" not in p.parts]
    assert "kvmrig/invm/init.sh" in data and "kvmrig/schemas/rig.schema.json" in data
    missing = [f for f in data if f not in inside]
    assert not missing, f"left out of the wheel: {missing} (pyproject.toml [tool.setuptools.package-data])"


def test_the_installed_package_is_the_wheel_and_opens_its_data_files(venv: Path, user):
    proc = user("python", "-c", "import kvmrig, pathlib; print(pathlib.Path(kvmrig.__file__).resolve())")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(venv.resolve()), proc.stdout
    # every file kvmrig opens at run time, through the module that opens it
    proc = user("python", "-c", "from kvmrig.invm.image import INIT_SH; print(INIT_SH.read_text()[:2])\n"
                "from kvmrig.rig.schema import load_schema; print(load_schema()['title'])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!"), proc.stdout
    schema = user("kvmrig", "schema")
    assert schema.returncode == 0 and json.loads(schema.stdout)["properties"]["arch"]
    results = user("kvmrig", "schema", "--results")
    assert results.returncode == 0 and json.loads(results.stdout)["title"] == "kvmrig JSON results"
    emu = user("python", "-c", "from kvmrig.backends.emu import unavailable; print(unavailable())")
    assert emu.stdout.strip() == "None", "the emulator is part of the default install: " + emu.stdout


@pytest.mark.kvm
@pytest.mark.skipif(host_arch() != "x86_64", reason="x86_64 rigs on this host's KVM")
def test_x86_rigs_run_on_kvm_from_the_wheel(user, tmp_path: Path):
    report = tmp_path / "junit.xml"
    proc = user("kvmrig", "run", "--strict", "--backend", "kvm", REPO / "rigs" / "x86" / "fib.yaml",
                REPO / "rigs" / "x86" / "serial-hello.yaml", "--junit", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout and "(kvm," in proc.stdout
    assert report.exists()


def test_arm64_rigs_run_on_the_emulator_from_the_wheel(user):
    proc = user("kvmrig", "run", "--strict", "--backend", "emu", REPO / "rigs" / "arm64", "--junit", "")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout


def test_pytest_plugin_is_registered_from_the_wheel(user):
    proc = user("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--kvmrig-backend=emu", REPO / "rigs" / "arm64" / "exit-code.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


@pytest.mark.arm64vm
@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None,
                    reason="qemu-system-aarch64 is absent (scripts/setup-arm64-lane.sh installs it)")
def test_in_vm_arm64_from_the_wheel(user):
    """The lane boots with the wheel's own files (init.sh among them), not the checkout's."""
    proc = user("kvmrig", "run", "--in-vm", "arm64", REPO / "rigs" / "arm64" / "exit-code.yaml", "--junit", "",
                timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout and "(kvm," in proc.stdout, proc.stdout
