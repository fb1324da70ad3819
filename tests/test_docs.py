"""The documentation checked against the code: links stay inside the project,
the flags the README lists exist, and the figures the docs quote are the
ones the code computes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmrig.arch.x86_64 import boot
from kvmrig.cli import _parser

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "rigs").rglob("README.md")),
        *sorted((REPO / "kvmrig").rglob("README.md")), REPO / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_project(doc: Path):
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue   # http:, https:, mailto:
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(REPO.resolve()), f"{doc.name}: {target} leaves the project"
        assert path.exists(), f"{doc.name}: {target} does not exist"
    assert "../shared/" not in doc.read_text(encoding="utf-8"), f"{doc.name} names a path outside the project"


def test_the_readme_lists_only_flags_kvmrig_run_has():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index("kvmrig run PATHS..."):text.index("kvmrig debug RIG")]
    run = next(a for a in _parser()._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    known = {opt for action in run._actions for opt in action.option_strings}
    listed = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", block))
    assert listed and listed <= known, listed - known
    assert {"--strict", "--rerun-failed", "--in-vm"} <= listed


def test_psci_minus_6_is_named_internal_failure():
    for doc in (REPO / "docs" / "rig-format.md", REPO / "rigs" / "arm64" / "README.md"):
        text = doc.read_text(encoding="utf-8")
        assert "-6 (NOT_SUPPORTED)" not in text
        assert "INTERNAL_FAILURE" in text, doc


def test_the_page_table_figures_are_what_the_runner_reserves():
    long_2m = boot.reserve_size("long", [(0, 2 << 20)])
    assert boot.reserve_size("protected", [(0, 2 << 20)]) == 4096
    assert f"{long_2m // 1024} KiB for\na map below 4 GiB" in (REPO / "docs" / "rig-format.md").read_text()
    rigs = (REPO / "rigs" / "README.md").read_text()
    assert f"{long_2m // 1024} KiB in long" in rigs and f"{(2 << 20) - long_2m:#x}..0x200000" in rigs


def test_the_arm64_rigs_readme_says_they_run_on_the_emulator_here():
    text = (REPO / "rigs" / "arm64" / "README.md").read_text(encoding="utf-8")
    assert "They run anywhere" in text and "emulator" in text
