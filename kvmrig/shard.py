"""Sharding: `kvmrig run --shard K/N` runs a deterministic 1/N of the rigs.

Every shard of a CI job sees the same rig list (same paths, same -k/--tag
filters), so each computes the same split and runs only its own part; the
N shards together run every rig exactly once (rig file errors included, so
each is reported once).

The split is greedy longest-first: rigs are taken heaviest first, ties by
file and name, and each goes to the shard with the least load so far, ties
to the lowest shard. Weights are the durations of an earlier run's JSON
results (`--durations-from FILE`, as `kvmrig run --json` writes); a rig the
file does not know weighs the mean of those it does. Without a durations
file every rig weighs 1, which is round-robin over the sorted rigs: shard
sizes differ by at most one.
"""

from __future__ import annotations

import argparse
import heapq
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kvmrig.errors import ResultsFileError, UsageError
from kvmrig.report.json_report import read_results


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`K/N` with 1 <= K <= N; an argparse `type` (its errors exit 2 with the message)."""
    k, sep, n = text.partition("/")
    try:
        if not sep:
            raise ValueError
        shard = Shard(int(k), int(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (shard K of N, e.g. 1/4)") from None
    if shard.count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: N must be at least 1")
    if not 1 <= shard.index <= shard.count:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be between 1 and N ({shard.count})")
    return shard


def rig_key(path: str | Path, name: str) -> tuple[str, str]:
    """What a rig is known by across runs: its file as given (normalised) and its name."""
    return os.path.normpath(str(path)).replace(os.sep, "/"), name


class Durations:
    """Seconds per rig from an earlier run's JSON results."""

    def __init__(self, records: Sequence[dict]):
        self.by_key: dict[tuple[str, str], float] = {}
        by_name: dict[str, list[float]] = {}
        for rec in records:
            seconds = rec.get("duration")
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
                continue
            self.by_key[rig_key(rec["file"], rec["name"])] = float(seconds)
            by_name.setdefault(rec["name"], []).append(float(seconds))
        # A rig found by name alone (the earlier run was given other paths) only when the name is unique.
        self.by_name = {name: s[0] for name, s in by_name.items() if len(s) == 1}
        self.mean = sum(self.by_key.values()) / len(self.by_key) if self.by_key else 1.0

    @classmethod
    def load(cls, path: str | Path) -> Durations:
        try:
            return cls(read_results(path)["rigs"])
        except ResultsFileError as e:
            raise UsageError(f"--durations-from: {e}") from None

    def get(self, key: tuple[str, str]) -> float | None:
        if key in self.by_key:
            return self.by_key[key]
        return self.by_name.get(key[1])

    def weight(self, key: tuple[str, str]) -> float:
        found = self.get(key)
        return self.mean if found is None else found


def assign(keys: Sequence[tuple[str, str]], count: int,
           durations: Durations | None = None) -> list[int]:
    """The shard (0-based) of each key: greedy longest-first onto the least-loaded shard."""
    weight = durations.weight if durations else (lambda key: 1.0)
    order = sorted(range(len(keys)), key=lambda i: (-weight(keys[i]), keys[i], i))
    loads = [(0.0, s) for s in range(count)]   # a heap of (load, shard): least load, then lowest shard
    shard_of = [0] * len(keys)
    for i in order:
        load, s = heapq.heappop(loads)
        shard_of[i] = s
        heapq.heappush(loads, (load + weight(keys[i]), s))
    return shard_of


R = TypeVar("R")
E = TypeVar("E")


def select_shard(rigs: list[R], errors: list[E], shard: Shard,
                 durations: Durations | None = None) -> tuple[list[R], list[E]]:
    """The rigs (Rig, with .path and .name) and rig file errors (RigResult) of one shard,
    in their original order."""
    keys = [rig_key(r.path, r.name) for r in rigs] + [rig_key(e.path, e.name) for e in errors]
    shard_of = assign(keys, shard.count, durations)
    mine = shard.index - 1
    return ([r for r, s in zip(rigs, shard_of) if s == mine],
            [e for e, s in zip(errors, shard_of[len(rigs):]) if s == mine])


def shard_rigs(rigs: list[R], errors: list[E], shard: Shard | None,
               durations_from: str | None = None) -> tuple[list[R], list[E]]:
    """`kvmrig run`'s --shard/--durations-from: UsageError for a durations file without
    a shard, or one that cannot be read."""
    if shard is None:
        if durations_from:
            raise UsageError("--durations-from needs --shard K/N")
        return rigs, errors
    durations = Durations.load(durations_from) if durations_from else None
    return select_shard(rigs, errors, shard, durations)
