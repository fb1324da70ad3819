"""The load cache (rig/cache.py): a rig comes from it only when the file's
bytes, the host files it read and kvmrig itself are unchanged; it then equals
a fresh load. A damaged, foreign or unwritable cache never changes a run."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kvmrig.collect import expand, is_rig_file, load_all
from kvmrig.rig import cache as rig_cache
from kvmrig.rig import hostfiles
from kvmrig.rig.load import load_rig

ROOT = Path(__file__).resolve().parents[2]

TRIVIAL = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
images: [{hex: "f4", at: 0x1000}]
cpu: {mode: real}
expect: {exit: hlt}
"""

WITH_IMAGE = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
images: [{file: guest.bin, format: auto, at: 0x1000}]
cpu: {mode: real}
expect: {exit: hlt}
"""


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Each test its own cache folder, working folder and no --images-under."""
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("KVMRIG_NO_CACHE", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    hostfiles.restrict_to(())
    yield home / "kvmrig" / "rigs"
    hostfiles.restrict_to(())


def run_load(paths: list[str]):
    """One run's loading, as run_command does it: (rigs, errors, the cache)."""
    cache = rig_cache.for_run(paths)
    assert cache is not None
    files = expand(paths)
    rigs, errors = load_all(files, {Path(p) for p in paths if not Path(p).is_dir()}, cache)
    cache.save()
    return rigs, errors, cache


def test_a_second_run_takes_every_rig_from_the_cache_and_gets_the_same_model(cache_home):
    folder = Path("suite")
    folder.mkdir()
    for i in range(3):
        (folder / f"r{i}.yaml").write_text(TRIVIAL)
    first, errors, cache = run_load(["suite"])
    assert not errors and cache.hits == 0 and cache.misses == 3
    assert len(list(cache_home.glob("*.pickle"))) == 1
    again, errors, cache = run_load(["suite"])
    assert not errors and cache.hits == 3 and cache.misses == 0
    assert again == first == [load_rig(p) for p in expand(["suite"])]


def test_every_example_rig_loads_from_the_cache_as_it_loads_without(cache_home, monkeypatch):
    monkeypatch.chdir(ROOT)
    paths = [p for p in expand(["rigs"]) if is_rig_file(p)]
    fresh, fresh_errors = load_all(paths)
    first, errors, _ = run_load(["rigs"])
    cached, cached_errors, cache = run_load(["rigs"])
    assert cached == first == fresh and cached_errors == errors == fresh_errors
    assert cache.hits >= len(fresh) // 2, "most example rigs are kept"
    children = [r for r in fresh if r.start is not None]
    assert children and cache.misses >= len(children), "rigs that start from a point are never kept"


def test_an_edited_rig_is_loaded_again(cache_home):
    rig = Path("r.yaml")
    rig.write_text(TRIVIAL)
    (before,), _, _ = run_load(["r.yaml"])
    assert before.expect.exit == "hlt"
    rig.write_text(TRIVIAL.replace("exit: hlt", "exit: timeout"))   # same size class, other bytes
    (after,), _, cache = run_load(["r.yaml"])
    assert cache.hits == 0 and after.expect.exit == "timeout"
    rig.write_text(TRIVIAL.replace("size: 64K", "size: 64Q"))
    rigs, errors, _ = run_load(["r.yaml"])
    assert not rigs and "r.yaml:3" in errors[0].message, "an error is found again, not hidden by the cache"


def test_a_changed_image_head_is_seen_again(cache_home):
    Path("guest.bin").write_bytes(b"\xf4" * 16)
    Path("r.yaml").write_text(WITH_IMAGE)
    run_load(["r.yaml"])
    (rig,), _, cache = run_load(["r.yaml"])
    assert cache.hits == 1 and rig.images[0].file == Path("guest.bin")
    Path("guest.bin").write_bytes(b"\x7fELF" + b"\0" * 60)   # now an ELF: `at:` is no longer needed
    rigs, errors, cache = run_load(["r.yaml"])
    assert cache.hits == 0 and rigs and rigs[0].images[0].file == Path("guest.bin")


@pytest.mark.parametrize("swap", ["removed", "folder", "fifo"])
def test_an_image_that_is_gone_or_no_longer_a_file_is_an_error_again(cache_home, swap):
    Path("guest.bin").write_bytes(b"\xf4" * 16)
    Path("r.yaml").write_text(WITH_IMAGE)
    run_load(["r.yaml"])
    os.unlink("guest.bin")
    if swap == "folder":
        os.mkdir("guest.bin")
    elif swap == "fifo":
        os.mkfifo("guest.bin")
    rigs, errors, cache = run_load(["r.yaml"])
    assert not rigs and cache.hits == 0 and "guest.bin" in errors[0].message


def test_images_under_is_part_of_the_key(cache_home, tmp_path):
    Path("guest.bin").write_bytes(b"\xf4" * 16)
    Path("r.yaml").write_text(WITH_IMAGE)
    run_load(["r.yaml"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hostfiles.restrict_to([elsewhere])
    rigs, errors, cache = run_load(["r.yaml"])
    assert not rigs and cache.hits == 0 and "outside the folders" in errors[0].message


def test_a_rig_that_starts_from_another_sees_the_parent_change(cache_home):
    parent = TRIVIAL + "save: end\n"
    Path("parent.yaml").write_text(parent)
    Path("child.yaml").write_text("kvmrig: 1\narch: x86_64\nfrom: parent.yaml#end\nexpect: {exit: hlt}\n")
    run_load(["child.yaml"])
    Path("parent.yaml").write_text(parent.replace("size: 64K", "size: 128K"))
    (child,), _, cache = run_load(["child.yaml"])
    assert cache.hits == 0 and child.memory[0].size == 128 << 10
    assert "child.yaml" not in cache.used, "its model is the parent's load too: never kept"


def test_another_working_folder_or_other_paths_is_another_cache_file(cache_home, tmp_path, monkeypatch):
    Path("r.yaml").write_text(TRIVIAL)
    run_load(["r.yaml"])
    run_load(["./r.yaml", "r.yaml"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "r.yaml").write_text(TRIVIAL.replace("hlt", "timeout"))
    monkeypatch.chdir(other)
    (rig,), _, cache = run_load(["r.yaml"])
    assert cache.hits == 0 and rig.expect.exit == "timeout"
    assert len(list(cache_home.glob("*.pickle"))) == 3


def test_a_change_to_kvmrig_is_a_new_stamp(tmp_path):
    package = tmp_path / "pkg"
    (package / "rig").mkdir(parents=True)
    (package / "rig" / "load.py").write_text("x = 1\n")
    (package / "__pycache__").mkdir()
    before = rig_cache.code_stamp(package)
    (package / "__pycache__" / "load.cpython-311.pyc").write_bytes(b"ignored")
    assert rig_cache.code_stamp(package) == before
    (package / "rig" / "load.py").write_text("x = 22\n")
    assert rig_cache.code_stamp(package) != before
    (package / "schema.json").write_text("{}")
    assert len({before, rig_cache.code_stamp(package)}) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other-key"])
def test_a_damaged_cache_file_is_a_silent_miss_and_is_written_again(cache_home, damage):
    Path("r.yaml").write_text(TRIVIAL)
    (fresh,), _, _ = run_load(["r.yaml"])
    (path,) = cache_home.glob("*.pickle")
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(rig_cache.FORMAT + b"\x80\x05not a pickle at all")
    elif damage == "empty":
        path.write_bytes(b"")
    else:   # a well-formed file of another key (a hash collision, a copied file)
        import pickle
        path.write_bytes(rig_cache.FORMAT + pickle.dumps((b"other", {"r.yaml": (b"", (), None, 0)}, b"")))
    (rig,), errors, cache = run_load(["r.yaml"])
    assert not errors and cache.hits == 0 and rig == fresh
    (_,), _, cache = run_load(["r.yaml"])
    assert cache.hits == 1, "the next run wrote it whole again"


def test_a_damaged_entry_is_a_miss(cache_home):
    Path("r.yaml").write_text(TRIVIAL)
    (fresh,), _, cache = run_load(["r.yaml"])
    digest, seen, _sig, _rig = cache.used["r.yaml"]
    cache.entries = {"r.yaml": (digest, seen, None, 0)}
    cache._blob, cache._models = b"\x80\x05garbage", None   # the models' list damaged
    assert cache.get(Path("r.yaml"), Path("r.yaml").read_bytes()) is None
    cache._blob, cache._models = pickle.dumps([fresh]), None
    cache.entries = {"r.yaml": (digest, seen, None, 1)}      # an index past its end
    assert cache.get(Path("r.yaml"), Path("r.yaml").read_bytes()) is None
    cache.entries = {"r.yaml": (digest, seen, None, 0)}
    assert cache.get(Path("r.yaml"), Path("r.yaml").read_bytes()) == fresh


def test_an_unwritable_cache_changes_nothing(cache_home, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    Path("r.yaml").write_text(TRIVIAL)
    (first,), errors, _ = run_load(["r.yaml"])
    (again,), errors, cache = run_load(["r.yaml"])
    assert not errors and cache.hits == 0 and first == again
    assert blocker.read_text().startswith("a file")


def test_the_cache_file_honours_the_umask(cache_home):
    Path("r.yaml").write_text(TRIVIAL)
    old = os.umask(0o027)
    try:
        run_load(["r.yaml"])
    finally:
        os.umask(old)
    (path,) = cache_home.glob("*.pickle")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_cache_file_that_is_not_a_regular_file_is_never_read_nor_replaced(cache_home, tmp_path, kind):
    Path("r.yaml").write_text(TRIVIAL)
    run_load(["r.yaml"])
    (path,) = cache_home.glob("*.pickle")
    target = tmp_path / "target"
    target.write_bytes(path.read_bytes())   # a valid cache, behind a link
    path.unlink()
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    Path("r.yaml").write_text(TRIVIAL.replace("hlt", "timeout"))   # a miss: the run wants to write
    (rig,), _, cache = run_load(["r.yaml"])
    assert cache.hits == 0 and rig.expect.exit == "timeout"
    if kind == "symlink":
        assert path.is_symlink() and os.readlink(path) == str(target)
    else:
        assert stat.S_ISFIFO(os.lstat(path).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cache_file_another_user_owns_is_not_read(cache_home):
    Path("r.yaml").write_text(TRIVIAL)
    run_load(["r.yaml"])
    (path,) = cache_home.glob("*.pickle")
    os.chown(path, 65534, 65534)
    _, _, cache = run_load(["r.yaml"])
    assert cache.hits == 0


def test_old_cache_files_are_pruned(cache_home):
    Path("r.yaml").write_text(TRIVIAL)
    run_load(["r.yaml"])
    (kept,) = cache_home.glob("*.pickle")
    for i in range(rig_cache.MAX_FILES + 5):
        old = cache_home / f"{i:040x}.pickle"
        old.write_bytes(b"old")
        os.utime(old, ns=(i, i))
    Path("s.yaml").write_text(TRIVIAL)
    run_load(["s.yaml"])
    left = set(cache_home.glob("*.pickle"))
    assert len(left) == rig_cache.MAX_FILES and kept in left
    assert cache_home / f"{0:040x}.pickle" not in left


def _kvmrig(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmrig", "run", "--junit", "", "--backend", "emu", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("off", ["--no-cache", "KVMRIG_NO_CACHE=1"])
def test_the_cache_can_be_turned_off(cache_home, tmp_path, off):
    pytest.importorskip("unicorn")
    Path("r.yaml").write_text(TRIVIAL)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home.parent.parent))
    flags = ["--no-cache"] if off.startswith("--") else []
    if not flags:
        env["KVMRIG_NO_CACHE"] = "1"
    done = _kvmrig([*flags, "r.yaml"], env, Path.cwd())
    assert done.returncode == 0, done.stdout + done.stderr
    assert not cache_home.exists()
    done = _kvmrig(["r.yaml"], dict(env, KVMRIG_NO_CACHE="0"), Path.cwd())
    assert done.returncode == 0 and len(list(cache_home.glob("*.pickle"))) == 1


def test_kvmrig_run_sees_an_edit_between_two_runs(cache_home):
    pytest.importorskip("unicorn")
    Path("r.yaml").write_text(TRIVIAL)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home.parent.parent))
    assert _kvmrig(["r.yaml"], env, Path.cwd()).returncode == 0
    assert _kvmrig(["r.yaml"], env, Path.cwd()).returncode == 0
    Path("r.yaml").write_text(TRIVIAL.replace("exit: hlt", "exit: timeout"))
    done = _kvmrig(["r.yaml"], env, Path.cwd())
    assert done.returncode == 1 and "timeout" in done.stdout


def test_a_parent_and_its_child_run_from_the_cache(cache_home):
    """Second run: the parent comes from the cache (the child never does), and
    the child starts from the parent's point."""
    pytest.importorskip("unicorn")
    Path("suite").mkdir()
    parent = TRIVIAL.replace('hex: "f4"', 'hex: "f4 f4"').replace("expect:", "save: end\nexpect:")  # child: 2nd hlt
    Path("suite/parent.yaml").write_text(parent)
    Path("suite/child.yaml").write_text("kvmrig: 1\narch: x86_64\nfrom: parent.yaml#end\nset: {regs: {ax: 7}}\n"
                                        "expect: {exit: hlt, regs: {ax: 7}}\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home.parent.parent))
    for _ in range(2):
        done = _kvmrig(["-j", "2", "suite"], env, Path.cwd())
        assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr
    _, _, cache = run_load(["suite"])
    assert cache.hits == 1 and "suite/parent.yaml" in cache.used and "suite/child.yaml" not in cache.used


def test_a_run_that_loads_some_of_the_files_keeps_the_others(cache_home):
    """--rerun-failed loads only the rigs that failed; the rest stay cached,
    except for files that are gone."""
    for name in ("a", "b", "c"):
        Path(f"{name}.yaml").write_text(TRIVIAL)
    paths = ["a.yaml", "b.yaml", "c.yaml"]
    run_load(paths)
    cache = rig_cache.for_run(paths)
    load_all([Path("a.yaml")], set(map(Path, paths)), cache)   # only a loads this time
    os.unlink("c.yaml")
    cache.save()
    assert set(rig_cache.for_run(paths).entries) == {"a.yaml", "b.yaml"}


def test_a_file_unchanged_since_its_stat_was_recorded_is_not_read_again(cache_home, monkeypatch):
    from kvmrig import collect
    from kvmrig.rig import rigfile
    monkeypatch.setattr(rigfile, "RACY_NS", 0)   # trust the stat of files written a moment ago
    folder = Path("suite")
    folder.mkdir()
    for i in range(3):
        (folder / f"r{i}.yaml").write_text(TRIVIAL)
    first, _, cache = run_load(["suite"])
    assert cache.misses == 3 and all(entry[2] is not None for entry in cache.used.values())

    def no_reading(path):
        raise AssertionError(f"{path} was read")
    reader = collect.read_rig_bytes
    monkeypatch.setattr(collect, "read_rig_bytes", no_reading)
    again, errors, cache = run_load(["suite"])
    assert not errors and again == first and cache.hits == cache.unread == 3
    monkeypatch.setattr(collect, "read_rig_bytes", reader)

    edited = folder / "r1.yaml"
    edited.write_text(TRIVIAL.replace("f4", "90 f4"))   # a different size
    before = (folder / "r2.yaml").stat()
    (folder / "r2.yaml").write_text(TRIVIAL.replace("0x1000", "0x2000"))   # the same size...
    os.utime(folder / "r2.yaml", ns=(before.st_atime_ns, before.st_mtime_ns + 1))   # ...another mtime
    rigs, _, cache = run_load(["suite"])
    assert cache.unread == 1 and cache.misses == 2
    assert rigs[1].images[0].data == b"\x90\xf4" and rigs[2].images[0].at == 0x2000


def test_the_stat_of_a_file_changed_moments_ago_is_never_trusted(cache_home):
    # Two writes in one clock tick leave mtime and ctime as they were: a file
    # changed within RACY_NS of its read is digested every time until it ages.
    Path("r.yaml").write_text(TRIVIAL)
    _, _, cache = run_load(["r.yaml"])
    assert cache.used["r.yaml"][2] is None
    before = Path("r.yaml").stat()
    Path("r.yaml").write_text(TRIVIAL.replace("0x1000", "0x3000"))   # same size
    os.utime("r.yaml", ns=(before.st_atime_ns, before.st_mtime_ns))   # and the same mtime
    (rig,), _, cache = run_load(["r.yaml"])
    assert rig.images[0].at == 0x3000 and cache.unread == 0


def test_only_regular_files_have_a_trusted_stat(tmp_path):
    from kvmrig.rig import rigfile
    old = tmp_path / "old.yaml"
    old.write_text(TRIVIAL)
    os.utime(old, ns=(0, 0))   # mtime long ago; ctime is now, so not yet trusted either
    assert rigfile.file_stat(old) is None
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert rigfile.file_stat(fifo) is None and rigfile.file_stat(tmp_path / "absent.yaml") is None
