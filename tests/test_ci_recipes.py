"""The CI recipes of docs/ci.md, run: every GitLab `script:` line and every
GitHub `run:` step, taken from the document itself, with bash, in a fresh copy
of the repository, shard 1 and 2 of 2 and then the merge job, as each service
would run them (its CI variables and expressions filled in).

Left out, as docs/ci.md says: the container's own `apt-get` line (this
machine has those packages; scripts/setup.sh's own apt step still runs and
finds its packages in place), the GitHub `uses:` actions (checkout and
artifacts: the jobs share one folder here) and the services themselves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ci.md"
SHARDS = 2

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine")]


def _block(title: str) -> dict:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(title):]
    return yaml.safe_load(section[section.index("```yaml") + len("```yaml"):section.index("```\n", 10)])


def _workspace(tmp_path: Path) -> Path:
    """A fresh copy of the repository: what `git clone` (or actions/checkout) gives a job."""
    work = tmp_path / "work"
    try:
        files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
                               ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the recipes are run from a git checkout (git ls-files)")
    for name in filter(None, files):
        src = REPO / name
        if src.is_symlink() or src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                os.symlink(os.readlink(src), work / name)
            else:
                shutil.copy2(src, work / name)
    return work


def _bash(lines: list[str], cwd: Path, env: dict[str, str]) -> None:
    script = "set -e\n" + "\n".join(line for line in lines if not line.lstrip().startswith("apt-get"))
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"$ {script}\n{proc.stdout}\n{proc.stderr}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FORCE_COLOR")}
    env["CI"] = "true"
    return env


def _check_reports(work: Path) -> None:
    rigs = subprocess.run([str(work / ".venv" / "bin" / "kvmrig"), "list", "rigs/"], cwd=work,
                          capture_output=True, text=True, check=True).stdout.splitlines()
    cases = list(ET.parse(work / "reports" / "junit.xml").getroot().iter("testcase"))
    names = sorted((c.get("classname"), c.get("name")) for c in cases)
    assert len(names) == len(rigs) == len(set(names)), "every rig exactly once"
    assert all(c.find("failure") is None and c.find("error") is None and c.find("skipped") is None for c in cases)
    summary = json.loads((work / "reports" / "results.json").read_text())["summary"]
    assert summary["passed"] == summary["total"] == len(rigs)


def test_gitlab_recipe(tmp_path: Path) -> None:
    doc = _block("## GitLab CI")
    work = _workspace(tmp_path)
    before = doc["default"]["before_script"]
    for k in range(1, SHARDS + 1):
        assert doc["rigs"]["parallel"] == SHARDS
        _bash(before + doc["rigs"]["script"], work, {**_env(), "CI_NODE_INDEX": str(k), "CI_NODE_TOTAL": str(SHARDS)})
    _bash(before + doc["rigs-report"]["script"], work, _env())
    _check_reports(work)


def _steps(job: dict, shard: int | None = None) -> list[str]:
    out = []
    for step in job["steps"]:
        if "run" not in step:
            continue   # `uses:` actions: checkout and artifacts (one shared folder here)
        run = step["run"].replace("${{ matrix.shard }}", str(shard)).replace("${{ env.SHARDS }}", str(SHARDS))
        assert "${{" not in run, run
        out.append(run)
    return out


def test_github_recipe(tmp_path: Path) -> None:
    doc = _block("## GitHub Actions")
    jobs = doc["jobs"]
    assert jobs["rigs"]["strategy"]["matrix"]["shard"] == list(range(1, SHARDS + 1))
    assert re.search(r"--device /dev/kvm", jobs["rigs"]["container"]["options"])
    work = _workspace(tmp_path)
    for k in range(1, SHARDS + 1):
        _bash(_steps(jobs["rigs"], k), work, {**_env(), **{n: str(v) for n, v in jobs["rigs"]["env"].items()}})
    _bash(_steps(jobs["report"]), work, _env())
    _check_reports(work)
