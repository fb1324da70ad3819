"""Sharding (kvmrig/shard.py and `kvmrig run --shard K/N --durations-from FILE`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from kvmrig import cli
from kvmrig.backends.select import HOST_ARCH
from kvmrig.shard import Durations, Shard, assign, parse_shard, rig_key, select_shard

from tests.conftest import kvmrig_cli as kvmrig

kvm = pytest.mark.kvm
x86_host = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 guest code")

RIG = """\
kvmrig: 1
arch: x86_64
memory: [{{at: 0, size: 64K}}]
images: [{{hex: "b8 {n:02x} 00 f4", at: 0x1000}}]   # mov ax, n ; hlt
cpu: {{mode: real}}
expect: {{regs: {{ax: {n}}}}}
"""
BROKEN = "kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\ncpu: {mode: rea}\n"


# Parsing K/N -------------------------------------------------------------------

@pytest.mark.parametrize("text, shard", [("1/1", Shard(1, 1)), ("2/3", Shard(2, 3)), (" 4/4", Shard(4, 4))])
def test_parse_shard(text: str, shard: Shard) -> None:
    assert parse_shard(text) == shard
    assert str(shard) == text.strip()


@pytest.mark.parametrize("text, why", [
    ("0/2", "K must be between 1 and N"), ("3/2", "K must be between 1 and N"), ("1/0", "N must be at least 1"),
    ("-1/2", "K must be between 1 and N"), ("2", "is not K/N"), ("a/b", "is not K/N"), ("1/2/3", "is not K/N"),
    ("", "is not K/N"),
])
def test_parse_shard_refuses(text: str, why: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        parse_shard(text)


@pytest.mark.parametrize("value", ["0/2", "3/2", "x", "1/0"])
def test_bad_shard_exits_2_with_a_message(value: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.yaml").write_text(RIG.format(n=1))
    with pytest.raises(SystemExit) as e:
        cli.main(["run", str(tmp_path), "--shard", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --shard: {value!r}" in err


def test_durations_need_a_shard_and_a_readable_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.yaml").write_text(RIG.format(n=1))
    assert cli.main(["run", str(tmp_path), "--durations-from", str(tmp_path / "d.json")]) == 2
    assert "--durations-from needs --shard K/N" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path), "--shard", "1/2", "--durations-from", str(tmp_path / "d.json")]) == 2
    assert "d.json: no such file" in capsys.readouterr().err
    (tmp_path / "d.json").write_text("{not json")
    assert cli.main(["run", str(tmp_path), "--shard", "1/2", "--durations-from", str(tmp_path / "d.json")]) == 2
    assert "d.json:1:2: not JSON" in capsys.readouterr().err
    (tmp_path / "d.json").write_text('{"rigs": []}')
    assert cli.main(["run", str(tmp_path), "--shard", "1/2", "--durations-from", str(tmp_path / "d.json")]) == 2
    assert "not kvmrig JSON results" in capsys.readouterr().err


# The split -----------------------------------------------------------------------

KEYS = [(f"rigs/r{i:02}.yaml", f"r{i:02}") for i in range(11)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 11, 15])
def test_every_rig_in_exactly_one_shard(count: int) -> None:
    shard_of = assign(KEYS, count)
    assert all(0 <= s < count for s in shard_of)
    sizes = [shard_of.count(s) for s in range(count)]
    assert max(sizes) - min(sizes) <= 1
    assert assign(list(reversed(KEYS)), count) == list(reversed(shard_of))   # the order given does not matter


def test_without_durations_round_robin_over_sorted_rigs() -> None:
    assert assign(KEYS, 3) == [i % 3 for i in range(11)]


def test_durations_balance_the_shards() -> None:
    records = [{"file": f, "name": n, "duration": 0.1} for f, n in KEYS[1:]]
    records.append({"file": KEYS[0][0], "name": KEYS[0][1], "duration": 1.0})   # one slow rig
    durations = Durations(records)
    shard_of = assign(KEYS, 2, durations)
    slow_shard = shard_of[0]
    assert shard_of.count(slow_shard) == 1   # the slow rig alone balances the other ten
    loads = [sum(durations.weight(k) for k, s in zip(KEYS, shard_of) if s == i) for i in range(2)]
    assert loads == pytest.approx([1.0, 1.0])


def test_unknown_rigs_weigh_the_mean_and_names_match_across_paths() -> None:
    durations = Durations([{"file": "a/x.yaml", "name": "x", "duration": 3.0},
                           {"file": "a/y.yaml", "name": "y", "duration": 1.0},
                           {"file": "a/d1.yaml", "name": "dup", "duration": 9.0},
                           {"file": "a/d2.yaml", "name": "dup", "duration": 9.0},
                           {"file": "a/bad.yaml", "name": "bad", "duration": "slow"}])
    assert durations.weight(("a/./x.yaml", "x")) == 3.0          # normalised paths
    assert durations.weight(("elsewhere/y.yaml", "y")) == 1.0    # a unique name, found by name
    assert durations.get(("elsewhere/dup.yaml", "dup")) is None  # an ambiguous name is not
    assert durations.weight(("new.yaml", "new")) == pytest.approx((3 + 1 + 9 + 9) / 4)
    assert Durations([]).weight(("new.yaml", "new")) == 1.0


class _Rig:
    def __init__(self, path: str, name: str):
        self.path, self.name = Path(path), name


def test_select_shard_keeps_order_and_splits_errors_too() -> None:
    rigs = [_Rig(f, n) for f, n in KEYS[:7]]
    errors = [_Rig(f, n) for f, n in KEYS[7:]]
    parts = [select_shard(rigs, errors, Shard(k, 3)) for k in (1, 2, 3)]
    assert sorted(id(r) for p in parts for r in p[0]) == sorted(id(r) for r in rigs)
    assert sorted(id(e) for p in parts for e in p[1]) == sorted(id(e) for e in errors)
    for p_rigs, _ in parts:
        assert p_rigs == sorted(p_rigs, key=rigs.index)
    assert rig_key(Path("rigs/./a.yaml"), "a") == ("rigs/a.yaml", "a")


# The command line ------------------------------------------------------------------

def _folder(tmp_path: Path, n: int = 7) -> Path:
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    for i in range(1, n + 1):
        (rigs / f"r{i}.yaml").write_text(RIG.format(n=i))
    return rigs


def _ran(path: Path) -> list[tuple[str, str]]:
    return [(r["name"], r["status"]) for r in json.loads(path.read_text())["rigs"]]


@kvm
@x86_host
def test_shards_together_run_each_rig_once(tmp_path: Path) -> None:
    rigs = _folder(tmp_path)
    (rigs / "broken.yaml").write_text(BROKEN)
    for k in (1, 2):
        got = kvmrig("run", "rigs", "--shard", f"{k}/2", "--junit", "", "--json", f"s{k}.json", "-q", cwd=tmp_path)
        assert got.returncode in (0, 2), got.stdout + got.stderr
        assert f"shard {k}/2: 4 of 8 rigs" in got.stdout
    one, two = _ran(tmp_path / "s1.json"), _ran(tmp_path / "s2.json")
    assert len(one) == len(two) == 4
    assert not {n for n, _ in one} & {n for n, _ in two}
    assert sorted(one + two) == sorted([(f"r{i}", "passed") for i in range(1, 8)] + [("broken", "error")])


@kvm
@x86_host
def test_shards_follow_the_durations(tmp_path: Path) -> None:
    _folder(tmp_path, 5)
    slow = {"r3": 5.0}
    records = [{"name": f"r{i}", "file": f"rigs/r{i}.yaml", "status": "passed",
                "duration": slow.get(f"r{i}", 1.0)} for i in range(1, 6)]
    (tmp_path / "d.json").write_text(json.dumps({"kvmrig_results": 1, "summary": {}, "rigs": records}))
    shards = []
    for k in (1, 2):
        got = kvmrig("run", "rigs", "--shard", f"{k}/2", "--durations-from", "d.json",
                     "--junit", "", "--json", f"s{k}.json", "-q", cwd=tmp_path)
        assert got.returncode == 0, got.stdout + got.stderr
        shards.append({n for n, _ in _ran(tmp_path / f"s{k}.json")})
    assert {"r3"} in shards                                   # the slow rig has a shard to itself
    assert {"r1", "r2", "r4", "r5"} in shards


def test_an_empty_shard_passes(tmp_path: Path) -> None:
    _folder(tmp_path, 2)
    got = kvmrig("run", "rigs", "--shard", "3/3", "--junit", "j.xml", "--json", "r.json", cwd=tmp_path)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "shard 3/3: 0 of 2 rigs" in got.stdout
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["total"] == 0
    assert 'tests="0"' in (tmp_path / "j.xml").read_text()
