"""kvmrig.dataclass_code: dataclasses' compiled methods kept between runs of the
command, giving exactly the code exec() would compile."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kvmrig import dataclass_code

RIG = "kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\nimages: [{hex: f4, at: 0x1000}]\nexpect: {exit: hlt}\n"


@pytest.fixture
def hooked(tmp_path, monkeypatch):
    """The hook installed in this process, with its own cache folder; undone after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("KVMRIG_NO_CACHE", raising=False)
    monkeypatch.setattr(dataclass_code, "_cache", {})
    monkeypatch.setattr(dataclass_code, "_used", set())
    monkeypatch.setattr(dataclass_code, "_new", False)
    monkeypatch.setattr(dataclass_code, "_path", None)
    had = "exec" in vars(dataclasses)
    dataclass_code.install()
    yield Path(dataclass_code._path)
    if not had:
        del dataclasses.exec


def _make():
    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int = 2
        tags: list = dataclasses.field(default_factory=list, compare=False)
    return Point


def test_the_kept_code_is_what_exec_compiles(hooked):
    del dataclasses.exec
    reference = _make()   # compiled by dataclasses itself
    dataclasses.exec = dataclass_code._exec
    first = _make()
    assert dataclass_code._new and len(dataclass_code._cache) >= 5, "compiled once, kept"
    dataclass_code._new = False
    again = _make()
    assert not dataclass_code._new, "the second class of the same source compiled nothing"
    for name in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__"):
        ref, got = getattr(reference, name).__code__, getattr(again, name).__code__
        assert (got.co_code, got.co_flags, got.co_filename, got.co_varnames, got.co_consts) == \
            (ref.co_code, ref.co_flags, ref.co_filename, ref.co_varnames, ref.co_consts), name
    p = first(1)
    assert p == first(1, 2) and p != first(2) and hash(p) == hash(first(1)) and repr(p) == "_make.<locals>.Point(x=1, y=2, tags=[])"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 3
    assert first.__init__.__annotations__ == reference.__init__.__annotations__, \
        "no __future__ flag of this module leaked into the compile"


def test_save_writes_only_what_is_new_and_a_new_process_uses_it(hooked):
    _make()
    dataclass_code.save()
    assert hooked.is_file() and stat.S_IMODE(hooked.stat().st_mode) == 0o666 & ~_umask()
    before = hooked.stat().st_mtime_ns
    dataclass_code._new = False
    dataclass_code.save()
    assert hooked.stat().st_mtime_ns == before, "nothing new: not written again"
    assert set(dataclass_code._read(str(hooked))) == set(dataclass_code._cache)


def test_a_damaged_file_is_ignored_and_a_symlink_never_read_nor_replaced(tmp_path, hooked):
    hooked.parent.mkdir(parents=True, exist_ok=True)
    hooked.write_bytes(b"\x00garbage")
    dataclass_code._path = None
    dataclass_code.install()   # no exception: it compiles as usual
    assert dataclass_code._cache == {}
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not marshal")
    hooked.unlink()
    hooked.symlink_to(target)
    assert dataclass_code._read(str(hooked)) == {}, "never read through a symlink"
    _make()
    dataclass_code.save()
    assert hooked.is_symlink() and target.read_bytes() == b"not marshal"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _run(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    (tmp_path / "r.yaml").write_text(RIG)
    return subprocess.run([sys.executable, "-m", "kvmrig", "validate", "r.yaml"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=120,
                          env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), **env))


def test_the_command_keeps_its_dataclasses_code_and_a_damaged_file_is_written_again(tmp_path):
    env = {"KVMRIG_NO_CACHE": "0"}
    first = _run(tmp_path, **env)
    assert first.returncode == 0, first.stderr
    (kept,) = (tmp_path / "cache" / "kvmrig").glob("dataclasses-*.marshal")
    assert len(dataclass_code._read(str(kept))) > 20
    kept.write_bytes(b"\x00damaged")
    again = _run(tmp_path, **env)
    assert again.returncode == 0, again.stderr
    assert len(dataclass_code._read(str(kept))) > 20, "written whole again"


def test_no_cache_turns_it_off(tmp_path):
    done = _run(tmp_path, KVMRIG_NO_CACHE="1")
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "cache").glob("**/dataclasses-*"))
