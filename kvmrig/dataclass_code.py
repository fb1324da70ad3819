"""The compiled methods of dataclasses, kept between runs of the command.

@dataclass writes the source of each class's __init__, __repr__, __eq__ and
(frozen) __hash__, __setattr__, __delattr__ and compiles it with exec(): for
kvmrig's ~60 classes a run loads, ~45% of its import time, which every
`kvmrig run` pays before its first rig (measured in the bench's suite rows;
compiling is most of it). Python caches modules' bytecode in __pycache__, but
not these. Here they are kept as Python keeps a module's: the code objects
compiled from each source text, in a marshal file per Python version, so the
next run executes them instead of compiling again. The result is the code
exec() would have compiled from the same text (same file name, no inherited
__future__ flags): only the compiling is skipped.

Installed by the command line only (kvmrig.cli.main), for its own process:
a library or a pytest session importing kvmrig keeps the standard behaviour.
The file is $XDG_CACHE_HOME/kvmrig/dataclasses-<python>.marshal (else under
~/.cache; one per interpreter version, as .pyc files), read only if it is a regular file this user owns (never through a
symlink), written atomically with 0666 minus the umask when a run compiled
something new, never raising; KVMRIG_NO_CACHE=1 turns it off.
"""

from __future__ import annotations

import builtins
import marshal
import os
import stat
import sys
import types

MAX_ENTRIES = 4096   # sources kept; a file past this is written again with this run's only
_cache: dict[str, types.CodeType] = {}
_used: set[str] = set()
_new = False
_path: str | None = None


def _file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    # marshal's format and the bytecode change with the interpreter, as .pyc files' do
    return os.path.join(base, "kvmrig", f"dataclasses-{sys.implementation.cache_tag}-{sys.hexversion:x}.marshal")


def _exec(source, globals=None, locals=None, /):
    """exec() as dataclasses calls it, with the compiled source kept."""
    global _new
    if type(source) is str:
        code = _cache.get(source)
        if code is None:
            code = _cache[source] = compile(source, "<string>", "exec", dont_inherit=True)
            _new = True
        _used.add(source)
        source = code
    return builtins.exec(source, globals, locals)


def install() -> None:
    """Load the kept code and hook it into dataclasses (once; no-op when turned off)."""
    global _path
    if _path is not None or os.environ.get("KVMRIG_NO_CACHE", "") not in ("", "0"):
        return
    import dataclasses
    try:
        _path = _file()
        _cache.update(_read(_path))
    except Exception:   # no home folder, a damaged file: compile as usual
        _cache.clear()
    dataclasses.exec = _exec   # the module's `exec` name, looked up at each class: the builtin otherwise


def _read(path: str) -> dict[str, types.CodeType]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return {}
        data = marshal.loads(f.read())
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if type(k) is str and type(v) is types.CodeType}


def save() -> None:
    """Write the kept code if this run compiled something new; never raises."""
    if _path is None or not _new:
        return
    keep = _cache if len(_cache) <= MAX_ENTRIES else {k: _cache[k] for k in _used}
    try:
        from kvmrig.atomic import write_own_cache
        write_own_cache(_path, marshal.dumps(keep))
    except Exception:
        pass
