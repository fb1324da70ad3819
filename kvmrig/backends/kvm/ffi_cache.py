"""C declarations as a cached cffi out-of-line ABI module, so that a process
does not parse them at every start.

Parsing abi.py's declarations with cffi's pycparser costs 30-100 ms per
process (most of `kvmrig run`'s start-up for one rig); the same declarations
serialized by cffi itself (`set_source(name, None)` + `emit_python_code`:
plain Python, no C compiler) import in about a millisecond and need only
`_cffi_backend`, not cffi's parser. The module is written once per
declarations text, cffi and Python version into the user's cache
($XDG_CACHE_HOME or ~/.cache, under kvmrig/cffi) and renamed into place, so
concurrent processes never see half a file. Anything that goes wrong (no
home, a read-only cache, a damaged file) gives None: the caller parses the
declarations as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any


def cache_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kvmrig", "cffi")


def load(name: str, cdefs: tuple[str, ...], build: Callable[[], Any]) -> Any | None:
    """The FFI of `cdefs` from the cache (written first if missing, from the
    cffi.FFI that `build()` returns); None if the cache cannot be used."""
    try:
        import _cffi_backend
        key = hashlib.sha256("\0".join((_cffi_backend.__version__, sys.version, *cdefs)).encode()).hexdigest()
        module = f"_kvmrig_{name}_{key[:24]}"
        path = os.path.join(cache_folder(), module + ".py")
        if not os.path.exists(path):
            _write(build(), module, path)
        spec = importlib.util.spec_from_file_location(module, path)
        if spec is None or spec.loader is None:
            return None
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception:
            os.unlink(path)   # damaged: the next process writes it again
            raise
        return mod.ffi
    except Exception:   # any damage or refusal: parse the declarations instead
        return None


def _write(ffi: Any, module: str, path: str) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    ffi.set_source(module, None)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".py", dir=folder)
    os.close(fd)
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # cffi says "generating <file>"
            ffi.emit_python_code(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
