"""A RigResult crosses from a worker to the parent pickled as its field values
(result.py and machine/outcome.py `__reduce__`): every field of it and of its
Outcome comes back equal, whatever it holds."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from kvmrig.errors import Mark
from kvmrig.machine.outcome import Failure, Hit, Outcome, Subtest
from kvmrig.result import FAILED, PASSED, RigResult


def _full_outcome() -> Outcome:
    """An Outcome with every field away from its default."""
    mark = Mark("/rigs/a.yaml", 3, 5)
    failure = Failure("register rax", "0x1", "0x2", mark)
    values = {
        "exit": "hlt", "exit_code": 3, "detail": "hlt at 0x1000", "backend": "kvm",
        "regs": {"rax": 1, "rip": 0x1001, "cs_base": 0}, "console": b"hi\n",
        "port_writes": [(0x3F8, 1, 0x41)], "device_writes": [("uart", 0x9000000, 4, 7)], "records_cut": 2,
        "hits": [Hit("breakpoint[0] at 0x1000", 1, 0x1000, 0x2000, {"rax": 1}, [failure], ["code"], 1)],
        "hit_counts": {"breakpoint[0] at 0x1000": 1}, "steps": 9, "trace": [0x1000, 0x1001],
        "failures": [failure], "notes": ["a note"], "report": ["where it ended"], "stop_pc": 0x1000,
        "exits": 4, "coverage": [(0x1000, 0x1002)], "seconds": 0.25,
        "subtests": [Subtest("t1", "passed", "ok 1 t1")], "skipped": "why",
    }
    assert set(values) == {f.name for f in dataclasses.fields(Outcome)}, "a new Outcome field: give it a value here"
    return Outcome(**values)


def _full_result() -> RigResult:
    values = {"path": "/rigs/a.yaml", "name": "a", "status": FAILED, "classname": "rigs", "tags": ("smoke",),
              "outcome": _full_outcome(), "message": "m", "seconds": 0.5, "backend": "kvm", "details": ["d"]}
    assert set(values) == {f.name for f in dataclasses.fields(RigResult)}, "a new RigResult field: give it a value"
    return RigResult(**values)


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_every_field_survives_pickling(protocol):
    for result in (_full_result(), RigResult("/rigs/b.yaml", "b", PASSED, outcome=Outcome(exit="hlt"))):
        back = pickle.loads(pickle.dumps((7, result), protocol=protocol))
        assert back == (7, result)
        for f in dataclasses.fields(Outcome):   # each field by itself, so a miss names it
            assert getattr(back[1].outcome, f.name) == getattr(result.outcome, f.name), f.name


def test_field_values_keep_their_types():
    back = pickle.loads(pickle.dumps(_full_result()))
    assert type(back) is RigResult and type(back.outcome) is Outcome
    assert type(back.outcome.hits[0]) is Hit and type(back.outcome.failures[0].mark) is Mark


def test_copies_are_equal_and_separate():
    result = _full_result()
    deep = copy.deepcopy(result)
    assert deep == result and deep.outcome is not result.outcome
    deep.outcome.notes.append("more")
    assert result.outcome.notes == ["a note"]
    assert copy.copy(result) == result
