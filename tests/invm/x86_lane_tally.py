"""A pytest plugin for runs inside the x86_64 lane (tests/invm/test_x86_lane.py
loads it with `-p tests.invm.x86_lane_tally`): for every test, how many debug
exits the x86 KVM backend took natively (INT3, DR instruction breakpoints,
DR watchpoints), written as JSON to $KVMRIG_NATIVE_TALLY at the end. The host
side reads it to say how many tests really ran the native path."""

from __future__ import annotations

import json
import os

from kvmrig.backends.kvm.x86_64 import NATIVE_HITS

_before: dict[str, int] = {}
_tally: dict[str, dict] = {}


def pytest_runtest_setup(item) -> None:
    _before.clear()
    _before.update(NATIVE_HITS)


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        hits = {k: NATIVE_HITS[k] - _before.get(k, 0) for k in NATIVE_HITS}
        _tally[report.nodeid] = {"outcome": report.outcome, **{k: v for k, v in hits.items() if v}}


def pytest_sessionfinish(session) -> None:
    path = os.environ.get("KVMRIG_NATIVE_TALLY")
    if path:
        with open(path, "w") as f:
            json.dump(_tally, f, indent=1, sort_keys=True)
