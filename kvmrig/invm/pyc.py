"""Byte-compile Python sources on the host for the guest of a VM lane.

Both lanes' guests run Debian bookworm's CPython 3.11. When the host runs
CPython 3.11 too, the host compiles every .py the guest will import into
"unchecked hash" .pyc files: the guest never stats a source to validate them
and never recompiles, which saves seconds of emulated CPU per boot. (.pyc
files are portable across platforms, not across minor versions.)
"""

from __future__ import annotations

import os
import py_compile
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from kvmrig.invm.cpio import trim_matchers

GUEST_PYTHON = (3, 11)


def host_matches_guest() -> bool:
    return sys.implementation.name == "cpython" and sys.version_info[:2] == GUEST_PYTHON


def _compile(src: str, cfile: str, dfile: str) -> bytes | None:
    try:
        py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except (py_compile.PyCompileError, SyntaxError, ValueError):
        return None  # e.g. Python-2-only files in a package; the guest reports its own errors
    return Path(cfile).read_bytes()


def compile_tree(root: Path, prefix: str = "", trim: Iterable[str] = ()) -> dict[str, bytes]:
    """{archive path of the .pyc: bytes} for every .py under ``root`` (archived
    at ``prefix``); empty when the host's Python is not the guest's."""
    if not host_matches_guest():
        return {}
    is_trimmed_dir, is_trimmed_file = trim_matchers(trim)
    out: dict[str, bytes] = {}
    tag = sys.implementation.cache_tag  # cpython-311
    with tempfile.TemporaryDirectory(prefix="kvmrig-pyc-") as tmp:
        cfile = os.path.join(tmp, "x.pyc")
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            dirnames[:] = [d for d in sorted(dirnames)
                           if not is_trimmed_dir(f"{rel_dir}/{d}" if rel_dir else d)
                           and not os.path.islink(os.path.join(dirpath, d))]
            for fn in filenames:
                if not fn.endswith(".py"):
                    continue
                rel = f"{rel_dir}/{fn}" if rel_dir else fn
                full = os.path.join(dirpath, fn)
                if is_trimmed_file(rel) or os.path.islink(full):
                    continue
                data = _compile(full, cfile, "/" + prefix + rel)
                if data is None:
                    continue
                pyc_dir = f"{rel_dir}/__pycache__" if rel_dir else "__pycache__"
                out[f"{prefix}{pyc_dir}/{fn[:-3]}.{tag}.pyc"] = data
    return out


_memo: dict[tuple[str, int, int], bytes | None] = {}


def host_pyc(path: Path, dfile: str) -> bytes | None:
    """An unchecked-hash .pyc for one file (remembered per path, mtime and size);
    None when the host's Python is not the guest's or the file does not compile."""
    if not host_matches_guest():
        return None
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _memo:
        with tempfile.TemporaryDirectory(prefix="kvmrig-pyc-") as tmp:
            _memo[key] = _compile(str(path), os.path.join(tmp, "x.pyc"), dfile)
    return _memo[key]
