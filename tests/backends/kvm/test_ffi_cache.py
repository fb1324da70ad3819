"""ffi_cache.py: the KVM declarations from a cached out-of-line cffi module,
with the parsed declarations as the fallback whenever the cache fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmrig.backends.kvm import abi, ffi_cache

CDEFS = {arch: (abi._CDEF_ARCH[arch], abi._CDEF_COMMON, abi._CDEF_LIBC) for arch in abi.ARCHES}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "kvmrig" / "cffi"


def layout(f, arch: str) -> dict[str, int]:
    """Size of every struct and union the declarations name."""
    kinds = f.list_types()
    names = [f"struct {n}" for n in kinds[1]] + [f"union {n}" for n in kinds[2]] + list(kinds[0])
    return {n: f.sizeof(n) for n in names if "kvm" in n or arch in n}


@pytest.mark.parametrize("arch", abi.ARCHES)
def test_the_cached_module_has_the_parsed_layouts(cache, arch):
    cached = ffi_cache.load(f"t_{arch}", CDEFS[arch], lambda: abi.build_ffi(arch))
    assert cached is not None and len(list(cache.glob("*.py"))) == 1
    parsed = abi.build_ffi(arch)
    assert layout(cached, arch) == layout(parsed, arch) and len(layout(parsed, arch)) > 10
    assert cached.offsetof("struct kvm_run", "io") == parsed.offsetof("struct kvm_run", "io")
    again = ffi_cache.load(f"t_{arch}", CDEFS[arch], lambda: pytest.fail("written twice"))
    assert again is not None and again.sizeof("struct kvm_run") == parsed.sizeof("struct kvm_run")


def test_other_declarations_get_their_own_module(cache):
    ffi_cache.load("t", CDEFS["x86_64"], lambda: abi.build_ffi("x86_64"))
    ffi_cache.load("t", CDEFS["arm64"], lambda: abi.build_ffi("arm64"))
    assert len(list(cache.glob("*.py"))) == 2


def test_a_damaged_module_is_refused_and_written_again(cache):
    assert ffi_cache.load("t", CDEFS["x86_64"], lambda: abi.build_ffi("x86_64")) is not None
    (path,) = cache.glob("*.py")
    path.write_text("this is not python(")
    assert ffi_cache.load("t", CDEFS["x86_64"], lambda: abi.build_ffi("x86_64")) is None
    assert not path.exists(), "removed, so the next process writes it again"
    assert ffi_cache.load("t", CDEFS["x86_64"], lambda: abi.build_ffi("x86_64")) is not None


def test_a_cache_that_is_a_file_gives_none(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("not a folder")
    assert ffi_cache.load("t", CDEFS["x86_64"], lambda: abi.build_ffi("x86_64")) is None


@pytest.mark.skipif(abi.ARCH not in abi.ARCHES, reason="no KVM layouts for this host")
def test_abi_reads_the_host_layouts_from_the_cache_when_it_can():
    usable = ffi_cache.load(f"kvm_abi_{abi.ARCH}", CDEFS[abi.ARCH], lambda: abi.build_ffi(abi.ARCH)) is not None
    assert abi.ffi_for(abi.ARCH) is abi.ffi
    assert hasattr(abi.ffi, "cdef") is not usable, "out-of-line FFIs have no cdef(); parsed ones do"
    assert layout(abi.ffi, abi.ARCH) == layout(abi.build_ffi(abi.ARCH), abi.ARCH)
