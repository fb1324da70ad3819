"""The rig fuzzer: rig files generated from the published JSON Schema and
mutated from the example rigs, through load, validate (plan.prepare) and run.

Properties, for every case:
1. no traceback: the only exception is a RigError;
2. a rig error always carries file:line:col;
3. what validate accepts, run does not reject as an error (it passes, fails
   or is skipped, on the backend `auto` picks, with the timeout cut short);
4. one case grows the peak RSS by less than RSS_BOUND_KIB.

CI runs a derandomised few dozen cases; KVMRIG_FUZZ=long or
KVMRIG_FUZZ_EXAMPLES=N runs N random ones (tests/fuzzing.py).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kvmrig.errors import RigError
from kvmrig.machine.plan import prepare
from kvmrig.rig.load import load_rig
from tests.fuzzing import (REPO, RSS_BOUND_KIB, fuzz_settings, mirror, mutated_rig, peak_rss_kib,
                           schema_rigs)

RUN_TIMEOUT = 0.05   # seconds a fuzzed rig may run: the examples end in a few ms; a spinning one shows it runs
_counter = itertools.count()
STATS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def stats():
    """With -s, one line per module: cases by outcome, time, peak RSS (for the long-run numbers)."""
    STATS.clear()
    start = time.monotonic()
    yield STATS
    print(f"\nfuzz: {sum(STATS.values())} cases {dict(STATS)} in {time.monotonic() - start:.1f}s, "
          f"peak RSS {peak_rss_kib() // 1024} MiB")


def check_rig_file(path: Path) -> str:
    """Load, validate and (if valid) run one rig file; assert the properties.
    Returns "invalid", or the run's status."""
    from kvmrig.result import ERROR
    from kvmrig.runner import run_rig

    before = peak_rss_kib()
    try:
        rig = load_rig(path)
        prepare(rig)
    except RigError as e:
        assert e.mark is not None, f"a rig error without file:line:col: {e}"
        assert str(e).startswith(f"{path}:{e.mark.line}:{e.mark.col}: "), str(e)
        assert 1 <= e.mark.line and 1 <= e.mark.col
        status = "invalid"
    else:
        result = run_rig(dataclasses.replace(rig, timeout=min(rig.timeout, RUN_TIMEOUT)), "auto")
        assert result.status != ERROR, f"validate accepted it, run said: {result.message}"
        status = result.status
    grown = peak_rss_kib() - before
    assert grown < RSS_BOUND_KIB, f"one case grew the peak RSS by {grown} KiB"
    STATS[status] += 1
    _progress()
    return status


def _progress() -> None:
    """Every 100 cases, a line to $KVMRIG_FUZZ_STATS (long runs: what is done so far)."""
    path = os.environ.get("KVMRIG_FUZZ_STATS")
    total = sum(STATS.values())
    if path and total % 100 == 0:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.time():.0f} {total} {dict(STATS)} peak_rss_mib={peak_rss_kib() // 1024}\n")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.kvm
@fuzz_settings(ci=40)
@given(rnd=st.randoms(use_true_random=False))
def test_mutated_example_rigs_keep_the_properties(fuzz_dir, rnd):
    source, raw = mutated_rig(rnd)
    folder = mirror(source.parent, fuzz_dir)
    path = folder / f"m{next(_counter)}.yaml"
    path.write_bytes(raw)
    try:
        check_rig_file(path)
    finally:
        path.unlink()


@pytest.mark.kvm
@fuzz_settings(ci=25)
@given(data=st.deferred(lambda: schema_rigs()), text_form=st.sampled_from(["yaml", "json"]))
def test_rigs_generated_from_the_schema_keep_the_properties(fuzz_dir, data, text_form):
    text = json.dumps(data) if text_form == "json" else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    path = fuzz_dir / f"s{next(_counter)}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        check_rig_file(path)
    finally:
        path.unlink()


@pytest.mark.kvm
def test_the_command_line_never_shows_a_traceback_for_fuzzed_rigs(tmp_path):
    """The same mutations through `kvmrig validate` and `kvmrig run`, as a user
    runs them: no traceback, every rig error line with file:line:col, and the
    run's JUnit lists every rig file."""
    import re
    import xml.etree.ElementTree as ET

    rnd = random.Random(11)
    names = []
    for i in range(30):
        source, raw = mutated_rig(rnd)
        folder = mirror(source.parent, tmp_path)
        path = folder / f"fuzz{i:02}.yaml"
        path.write_bytes(b"kvmrig: 1\n" + raw if not raw.startswith(b"kvmrig:") else raw)
        names.append(path)
    for command in (["validate"], ["run", "-j", "2", "--junit", str(tmp_path / "j.xml")]):
        proc = subprocess.run([sys.executable, "-m", "kvmrig", *command, *map(str, names)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out
        assert proc.returncode in (0, 1, 2), out
        for line in proc.stderr.splitlines() if command == ["validate"] else ():
            if line.startswith(str(tmp_path)):
                assert re.match(rf"{re.escape(str(tmp_path))}/\S+\.yaml:\d+:\d+: ", line), line
    cases = list(ET.parse(tmp_path / "j.xml").getroot().iter("testcase"))
    assert len(cases) == len(names)
