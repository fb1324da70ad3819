"""Build (once, cached) the base image of the arm64 lane: kernel + initramfs.

The arm64 lane boots Debian's arm64 cloud kernel under qemu-system-aarch64
(TCG, ``virtualization=on``) so the guest has its own ``/dev/kvm``.  Its root
file system is an initramfs that this module assembles on the host from
Debian arm64 packages (fetched with ``apt-get download``, unpacked with
``dpkg -x``; no arm64 code runs on the host) and arm64 / pure-Python wheels
from PyPI (``pip download --platform manylinux2014_aarch64``):

* busybox-static as ``/bin/sh`` and the usual tools,
* Debian's python3.11 (minimal + stdlib) with the shared libraries it loads,
* python3-cffi(-backend), python3-yaml, and the wheels kvmrig depends on,
* ``/init`` (``init.sh`` beside this file).

The result is cached under ``~/.cache/kvmrig/arm64/base-<key>/``
(``$KVMRIG_ARM64_CACHE`` overrides); the key is a hash of the exact package
versions (as apt resolves them now, kernel included), the wheel pins, the trim
list and the builder's own format version, so a change to any of them builds a
new image (and removes the old one).
A build happens in a temporary directory that is renamed into place at the
end, under a file lock, so a killed build never leaves a half image behind
and two processes never build at once.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

from kvmrig.errors import BackendError, BackendUnavailable

SETUP_HINT = "run scripts/setup-arm64-lane.sh (as root) to install qemu-system-arm and the arm64 package lists"

#: Bump when the layout of the image changes in a way the key cannot see.
FORMAT_VERSION = 3

#: Debian packages in the image, as ``name:arch`` (``all`` packages have no arch).
DEB_PACKAGES: tuple[str, ...] = (
    "busybox-static:arm64",
    "libc6:arm64",
    "python3.11-minimal:arm64",
    "libpython3.11-minimal:arm64",
    "libpython3.11-stdlib:arm64",
    # shared libraries python3.11 and its extension modules load
    "zlib1g:arm64",
    "libexpat1:arm64",
    "libgcc-s1:arm64",  # the rpds-py wheel (Rust) links libgcc_s
    "libffi8:arm64",  # _ctypes, _cffi_backend
    "libbz2-1.0:arm64",  # _bz2
    "liblzma5:arm64",  # _lzma
    "libuuid1:arm64",  # _uuid
    "libyaml-0-2:arm64",  # yaml's C loader
    # Python packages kvmrig depends on that Debian builds for arm64
    "python3-cffi-backend:arm64",
    "python3-cffi",
    "python3-pycparser",
    "python3-ply",
    "python3-yaml:arm64",
    "python3-libfdt:arm64",  # pylibfdt: the arm64 device trees kvmrig generates
)

#: Wheels from PyPI, pinned (the pins are part of the cache key).  pip fetches
#: them for manylinux2014_aarch64 / cp311; pure-Python ones match any platform.
WHEELS: tuple[str, ...] = (
    "rpds-py==0.30.0",
    "capstone==5.0.9",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "attrs==26.1.0",
    "typing-extensions==4.15.0",
    "pyelftools==0.33",
    "junit-xml==1.9",
    "six==1.17.0",
)

KERNEL_PACKAGE_RE = re.compile(r"^linux-image-(\d[^ ]*)-cloud-arm64$")
KERNEL_ENV = "KVMRIG_ARM64_KERNEL_PKG"  # e.g. linux-image-6.1.0-56-cloud-arm64
CACHE_ENV = "KVMRIG_ARM64_CACHE"
COMPRESSION_ENV = "KVMRIG_ARM64_INITRD_COMPRESSION"  # "none" (default) or "gzip"

SITE_DIR = "usr/lib/python3/dist-packages"

#: Paths (relative to the image root) left out of the image.  A pattern ending
#: in "/" drops a whole directory; "*" matches within one path component.
TRIM: tuple[str, ...] = (
    "usr/share/",  # docs, man pages, lintian, pycparser's fake libc headers
    "usr/lib/aarch64-linux-gnu/gconv/",
    "usr/lib/aarch64-linux-gnu/engines-3/",
    "usr/lib/aarch64-linux-gnu/ossl-modules/",
    "usr/lib/aarch64-linux-gnu/audit/",
    "lib/aarch64-linux-gnu/libmemusage.so",
    "lib/aarch64-linux-gnu/libpcprofile.so",
    "lib/aarch64-linux-gnu/libc_malloc_debug.so.0",
    "lib/aarch64-linux-gnu/libBrokenLocale.so.1",
    "lib/aarch64-linux-gnu/libthread_db.so.1",
    "lib/aarch64-linux-gnu/libnss_hesiod.so.2",
    "usr/bin/dh_python3-ply",
    "usr/bin/pydoc*",
    "usr/lib/python3.11/test/",
    "usr/lib/python3.11/idlelib/",
    "usr/lib/python3.11/tkinter/",
    "usr/lib/python3.11/turtledemo/",
    "usr/lib/python3.11/turtle.py",
    "usr/lib/python3.11/lib2to3/",
    "usr/lib/python3.11/ensurepip/",
    "usr/lib/python3.11/pydoc_data/",
    "usr/lib/python3.11/config-3.11-aarch64-linux-gnu/",
    # extension modules that are tests or whose libraries are not in the image
    "usr/lib/python3.11/lib-dynload/_test*",
    "usr/lib/python3.11/lib-dynload/_ctypes_test*",
    "usr/lib/python3.11/lib-dynload/xxlimited*",
    "usr/lib/python3.11/lib-dynload/_xxtestfuzz*",
    "usr/lib/python3.11/lib-dynload/_curses*",
    "usr/lib/python3.11/lib-dynload/readline*",
    "usr/lib/python3.11/lib-dynload/_dbm*",
    "usr/lib/python3.11/lib-dynload/_sqlite3*",
    "usr/lib/python3.11/lib-dynload/_crypt*",
    "usr/lib/python3.11/lib-dynload/nis*",
    "usr/lib/python3.11/lib-dynload/ossaudiodev*",
    # no libssl3 in the image (5 MB; hashlib falls back to its builtin hashes)
    "usr/lib/python3.11/lib-dynload/_ssl*",
    "usr/lib/python3.11/lib-dynload/_hashlib*",
    # Debian's sitecustomize only looks for apport (60 ms of every start-up)
    "etc/python3.11/sitecustomize.py",
    "usr/lib/python3.11/sitecustomize.py",
    f"{SITE_DIR}/capstone/include/",
    "*/__pycache__/",
)

#: busybox applets linked into /bin (the rest: ``busybox --install -s``).
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ash", "awk", "base64", "basename", "cat", "chmod", "cmp", "cp", "cut",
    "date", "dd", "df", "dirname", "dmesg", "du", "echo", "env", "expr", "false",
    "find", "free", "grep", "gunzip", "gzip", "head", "hexdump", "id", "kill",
    "ln", "ls", "md5sum", "mkdir", "mknod", "mount", "mv", "od", "poweroff",
    "printf", "ps", "pwd", "readlink", "reboot", "rm", "rmdir", "sed", "seq",
    "sha256sum", "sleep", "sort", "stat", "stty", "sync", "tail", "tar", "tee",
    "test", "[", "time", "timeout", "touch", "tr", "true", "umount", "uname",
    "uniq", "wc", "xargs", "xxd", "yes",
)

INIT_SH = Path(__file__).with_name("init.sh")


@dataclass(frozen=True)
class BaseImage:
    """A bootable kernel + initramfs pair (the initramfs has no per-run files)."""

    kernel: Path
    initramfs: Path
    key: str = ""
    compression: str = "none"
    kernel_package: str = ""

    def manifest(self) -> dict:
        try:
            return json.loads((self.initramfs.parent / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmrig" / "arm64"


# --------------------------------------------------------------------------
# newc cpio writer
# --------------------------------------------------------------------------


class CpioWriter:
    """Write a newc ("070701") cpio archive, as the Linux initramfs unpacker reads it.

    Parent directories are emitted automatically (the kernel does not create
    them).  Later entries with the same name replace earlier ones when the
    kernel unpacks, which is how a per-run overlay overrides the base image.
    """

    def __init__(self, fileobj: BinaryIO, ino_start: int = 1, known_dirs: Iterable[str] = ()):
        self.f = fileobj
        self.ino = ino_start
        self.dirs: set[str] = set(known_dirs)
        self.dirs.add("")
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.offset += len(data)

    def _pad(self) -> None:
        if self.offset % 4:
            self._write(b"\0" * (4 - self.offset % 4))

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               mtime: int = 0, rdev: tuple[int, int] = (0, 0)) -> None:
        raw = name.encode() + b"\0"
        self.ino += 1
        fields = (self.ino, mode, 0, 0, nlink, max(0, int(mtime)), len(data), 0, 0,
                  rdev[0], rdev[1], len(raw), 0)
        self._write(b"070701" + b"".join(b"%08X" % v for v in fields))
        self._write(raw)
        self._pad()
        if data:
            self._write(data)
            self._pad()

    @staticmethod
    def _norm(name: str) -> str:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise ValueError(f"bad path in image: {name!r}")
        return name

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755, nlink=2)

    def mkdir(self, name: str, perm: int = 0o755, mtime: int = 0) -> None:
        name = self._norm(name)
        if name in self.dirs:
            return
        self._parents(name)
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | (perm & 0o7777), nlink=2, mtime=mtime)

    def file(self, name: str, data: bytes, perm: int = 0o644, mtime: int = 0) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFREG | (perm & 0o7777), data, mtime=mtime)

    def symlink(self, name: str, target: str, mtime: int = 0) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
        self._pad()


def _trim_matchers(patterns: Iterable[str]):
    import fnmatch

    dir_pats = [p[:-1] for p in patterns if p.endswith("/")]
    file_pats = [p for p in patterns if not p.endswith("/")]

    def is_trimmed_dir(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) for p in dir_pats)

    def is_trimmed_file(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) for p in file_pats)

    return is_trimmed_dir, is_trimmed_file


def add_tree(w: CpioWriter, root: Path, prefix: str = "", trim: Iterable[str] = (),
             precompiled: dict[str, bytes] | None = None) -> tuple[int, int]:
    """Add the tree under ``root`` to the archive (at ``prefix``); returns (files, bytes).

    ``precompiled`` maps archive paths of .pyc files to add alongside.
    """
    is_trimmed_dir, is_trimmed_file = _trim_matchers(trim)
    n_files = n_bytes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            full = os.path.join(dirpath, d)
            if is_trimmed_dir(rel):
                continue
            if os.path.islink(full):  # os.walk lists symlinks to dirs as dirs
                w.symlink(f"{prefix}{rel}", os.readlink(full))
                continue
            st = os.lstat(full)
            w.mkdir(f"{prefix}{rel}", stat.S_IMODE(st.st_mode), int(st.st_mtime))
            keep.append(d)
        dirnames[:] = keep
        for fn in sorted(filenames):
            rel = f"{rel_dir}/{fn}" if rel_dir else fn
            if is_trimmed_file(rel):
                continue
            full = os.path.join(dirpath, fn)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                w.symlink(f"{prefix}{rel}", os.readlink(full), int(st.st_mtime))
            elif stat.S_ISREG(st.st_mode):
                data = Path(full).read_bytes()
                w.file(f"{prefix}{rel}", data, stat.S_IMODE(st.st_mode), int(st.st_mtime))
                n_files += 1
                n_bytes += len(data)
    for name, data in (precompiled or {}).items():
        w.file(name, data)
        n_files += 1
        n_bytes += len(data)
    return n_files, n_bytes


def compile_tree(root: Path, prefix: str = "", trim: Iterable[str] = ()) -> dict[str, bytes]:
    """Byte-compile every .py under ``root`` with this (host) interpreter.

    Only when the host runs CPython 3.11 (the guest's version: .pyc files are
    portable across platforms but not across minor versions).  The .pyc files
    are "unchecked hash" ones, so the guest never stats the source to validate
    them and never recompiles: this saves seconds of emulated CPU per boot.
    Returns {archive path of the .pyc: bytes}; empty when the host is not 3.11.
    """
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return {}
    is_trimmed_dir, is_trimmed_file = _trim_matchers(trim)
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
                try:
                    py_compile.compile(full, cfile=cfile, dfile="/" + prefix + rel, doraise=True,
                                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                except (py_compile.PyCompileError, SyntaxError, ValueError):
                    continue  # e.g. Python-2-only files in a package; the guest copes
                stem = fn[:-3]
                pyc_rel = f"{rel_dir}/__pycache__/{stem}.{tag}.pyc" if rel_dir else f"__pycache__/{stem}.{tag}.pyc"
                out[prefix + pyc_rel] = Path(cfile).read_bytes()
    return out


def unresolved_libraries(root: Path, trim: Iterable[str] = ()) -> dict[str, list[str]]:
    """{ELF file: [DT_NEEDED libraries not in the image]} for the tree at ``root``.

    A build-time check (with pyelftools on the host) that every shared object
    and program in the image finds its libraries, e.g. that a wheel's Rust
    extension finds libgcc_s.  Empty when pyelftools is not installed.
    """
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.dynamic import DynamicSection
        from elftools.elf.elffile import ELFFile
    except ImportError:
        return {}
    is_trimmed_dir, is_trimmed_file = _trim_matchers(trim)
    present: set[str] = set()
    elves: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = [d for d in dirnames if not is_trimmed_dir(f"{rel_dir}/{d}" if rel_dir else d)]
        for fn in filenames:
            rel = f"{rel_dir}/{fn}" if rel_dir else fn
            if is_trimmed_file(rel):
                continue
            present.add(rel)
            if not os.path.islink(os.path.join(dirpath, fn)) and (".so" in fn or rel.startswith(("bin/", "usr/bin/"))):
                elves.append(rel)
    libdirs = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")
    out: dict[str, list[str]] = {}
    for rel in elves:
        needed: list[str] = []
        runpaths: list[str] = []
        try:
            with open(root / rel, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
                f.seek(0)
                for sec in ELFFile(f).iter_sections():
                    if isinstance(sec, DynamicSection):
                        for tag in sec.iter_tags():
                            if tag.entry.d_tag == "DT_NEEDED":
                                needed.append(tag.needed)
                            elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                                rp = tag.runpath if tag.entry.d_tag == "DT_RUNPATH" else tag.rpath
                                runpaths += rp.split(":")
        except (OSError, ELFError, ValueError):
            continue
        origin = os.path.dirname(rel)
        dirs = list(libdirs)
        for rp in runpaths:
            rp = rp.replace("$ORIGIN", "/" + origin).replace("${ORIGIN}", "/" + origin)
            dirs.append(os.path.normpath(rp).lstrip("/"))
        missing = [n for n in needed
                   if not any(f"{d}/{n}" in present for d in dirs)]
        if missing:
            out[rel] = missing
    return out


# --------------------------------------------------------------------------
# Debian package resolution
# --------------------------------------------------------------------------


def _ver_order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _ver_part_cmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _ver_order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _ver_order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


def debian_version_compare(a: str, b: str) -> int:
    """dpkg's version comparison: <0, 0, >0."""

    def split(v: str) -> tuple[int, str, str]:
        epoch = 0
        if ":" in v:
            e, v = v.split(":", 1)
            epoch = int(e)
        rev = "0"
        if "-" in v:
            v, rev = v.rsplit("-", 1)
        return epoch, v, rev

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _ver_part_cmp(ua, ub) or _ver_part_cmp(ra, rb)


def _run(cmd: list[str], what: str, cwd: str | None = None, timeout: float = 900) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise BackendUnavailable(f"{what}: {cmd[0]} not found; {SETUP_HINT}") from e
    except subprocess.TimeoutExpired as e:
        raise BackendError(f"{what}: {' '.join(cmd[:3])}... timed out after {timeout:.0f}s") from e
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip()[-1500:]
        raise BackendError(f"{what} failed (exit {p.returncode}): {' '.join(cmd[:4])} ...\n{tail}")
    return p.stdout


def _parse_stanzas(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        d: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, v = line.split(":", 1)
                d[k] = v.strip()
        if d.get("Package"):
            out.append(d)
    return out


def _apt_lists_signature() -> str:
    h = hashlib.sha256()
    lists = Path("/var/lib/apt/lists")
    try:
        for p in sorted(lists.iterdir()):
            if "_Packages" in p.name:
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    except OSError:
        pass
    for f in ("/var/lib/dpkg/arch",):
        try:
            h.update(Path(f).read_bytes())
        except OSError:
            pass
    h.update(os.environ.get(KERNEL_ENV, "").encode())
    h.update(repr(DEB_PACKAGES).encode())
    return h.hexdigest()


def _apt_show(specs: list[str]) -> list[dict[str, str]]:
    # apt-cache show exits non-zero if any name is unknown: ask one call for all,
    # and fall back to one per name only to say which is missing.
    try:
        return _parse_stanzas(_run(["apt-cache", "show", "--no-all-versions", *specs], "apt-cache show"))
    except BackendError:
        for s in specs:
            p = subprocess.run(["apt-cache", "show", "--no-all-versions", s], capture_output=True, text=True)
            if p.returncode != 0 or not p.stdout.strip():
                raise BackendUnavailable(
                    f"apt does not know the package {s!r}; {SETUP_HINT}") from None
        raise


def pick_kernel_package() -> str:
    """The newest ``linux-image-<ver>-cloud-arm64`` apt knows (or $KVMRIG_ARM64_KERNEL_PKG)."""
    env = os.environ.get(KERNEL_ENV)
    if env:
        return env
    names = [n for n in _run(["apt-cache", "pkgnames", "linux-image-"], "apt-cache pkgnames").split()
             if KERNEL_PACKAGE_RE.match(n)]
    if not names:
        raise BackendUnavailable(f"apt knows no linux-image-*-cloud-arm64 package; {SETUP_HINT}")
    stanzas = _apt_show([f"{n}:arm64" for n in names])
    best: dict[str, str] | None = None
    for s in stanzas:
        if s.get("Architecture") != "arm64" or not KERNEL_PACKAGE_RE.match(s["Package"]):
            continue
        if best is None or debian_version_compare(s["Version"], best["Version"]) > 0:
            best = s
    if best is None:
        raise BackendUnavailable(f"no installable linux-image-*-cloud-arm64 package; {SETUP_HINT}")
    return best["Package"]


def resolve_packages(cache_dir: Path) -> list[dict[str, str]]:
    """[{Package, Architecture, Version, Filename, SHA256}] for the image, kernel included.

    apt-cache is slow here (~1 s a call), so the answer is remembered until the
    apt lists (or the package list) change.
    """
    sig = _apt_lists_signature()
    memo = cache_dir / "resolved.json"
    try:
        data = json.loads(memo.read_text())
        if data.get("signature") == sig:
            return data["packages"]
    except (OSError, ValueError, KeyError):
        pass
    kernel = pick_kernel_package()
    specs = list(DEB_PACKAGES) + [f"{kernel}:arm64" if ":" not in kernel else kernel]
    stanzas = _apt_show(specs)
    pkgs = []
    seen = set()
    for s in stanzas:
        key = (s["Package"], s.get("Architecture"))
        if key in seen:
            continue
        seen.add(key)
        pkgs.append({k: s.get(k, "") for k in ("Package", "Architecture", "Version", "Filename", "SHA256")})
    want = {s.split(":")[0] for s in specs}
    missing = want - {p["Package"] for p in pkgs}
    if missing:
        raise BackendUnavailable(f"apt does not know {sorted(missing)}; {SETUP_HINT}")
    pkgs.sort(key=lambda p: p["Package"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(memo, json.dumps({"signature": sig, "kernel": kernel, "packages": pkgs}, indent=1).encode())
    return pkgs


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _deb_filename(p: dict[str, str]) -> str:
    # apt-get download's naming: name_version_arch.deb with ':' in the version as %3a
    return f"{p['Package']}_{p['Version'].replace(':', '%3a')}_{p['Architecture']}.deb"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_debs(pkgs: list[dict[str, str]], deb_dir: Path) -> dict[str, Path]:
    deb_dir.mkdir(parents=True, exist_ok=True)
    paths = {p["Package"]: deb_dir / _deb_filename(p) for p in pkgs}
    missing = [p for p in pkgs if not paths[p["Package"]].is_file()]
    if missing:
        specs = [f"{p['Package']}:{p['Architecture']}={p['Version']}" if p["Architecture"] != "all"
                 else f"{p['Package']}={p['Version']}" for p in missing]
        cmd = ["apt-get", "download", "-q=2"]
        if os.geteuid() == 0:
            # the cache lives under root's home, which the _apt sandbox user cannot write
            cmd += ["-o", "APT::Sandbox::User=root"]
        try:
            _run(cmd + specs, "apt-get download (arm64 packages)", cwd=str(deb_dir))
        except BackendError as e:
            raise BackendError(f"{e}\n(if the archive dropped these versions, run `apt-get update` "
                               "to refresh the package lists: the image is then rebuilt from the new ones)") from e
    for p in pkgs:
        path = paths[p["Package"]]
        if not path.is_file():
            raise BackendError(f"apt-get download did not produce {path.name}")
        if p.get("SHA256") and _sha256_file(path) != p["SHA256"]:
            path.unlink()
            raise BackendError(f"{path.name}: checksum mismatch (deleted; try again)")
    return paths


def _wheel_filename_matches(fn: str, pin: str) -> bool:
    name, ver = pin.split("==")
    norm = re.sub(r"[-_.]+", "_", name).lower()
    parts = fn.split("-")
    return len(parts) >= 3 and re.sub(r"[-_.]+", "_", parts[0]).lower() == norm and parts[1] == ver


def download_wheels(wheel_dir: Path) -> list[Path]:
    wheel_dir.mkdir(parents=True, exist_ok=True)

    def have(pin: str) -> Path | None:
        for f in wheel_dir.glob("*.whl"):
            if _wheel_filename_matches(f.name, pin):
                return f
        return None

    missing = [w for w in WHEELS if have(w) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--platform", "manylinux2014_aarch64",
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--abi", "abi3", "--abi", "none", "-d", str(wheel_dir), *missing]
        _run(cmd, "pip download (arm64 wheels)")
    out = []
    for w in WHEELS:
        f = have(w)
        if f is None:
            raise BackendError(f"pip download did not produce a wheel for {w}")
        out.append(f)
    return out


def unpack_wheel(whl: Path, site: Path) -> None:
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if ".." in parts or name.startswith("/"):
                raise BackendError(f"{whl.name}: unsafe path {name!r}")
            if parts[0].endswith(".data"):
                if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
                    parts = parts[2:]
                else:
                    continue  # scripts, headers, data: not needed
            dest = site.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(info))
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(dest, mode or 0o644)


# --------------------------------------------------------------------------
# the image
# --------------------------------------------------------------------------


def image_key(pkgs: list[dict[str, str]], compression: str) -> str:
    h = hashlib.sha256()
    h.update(f"format={FORMAT_VERSION}\ncompression={compression}\n".encode())
    for p in pkgs:
        h.update(f"{p['Package']}:{p['Architecture']}={p['Version']}\n".encode())
    for w in WHEELS:
        h.update(f"wheel {w}\n".encode())
    h.update(repr(TRIM).encode())
    h.update(repr(BUSYBOX_APPLETS).encode())
    # init.sh is not in the key: every run's overlay carries the current /init
    # (the base's copy only serves a boot without an overlay)
    # .pyc files are only added when the host is 3.11: make that part of the key
    h.update(f"pyc={sys.version_info[:2] == (3, 11)}\n".encode())
    return h.hexdigest()[:16]


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[kvmrig arm64 image] {msg}", file=sys.stderr, flush=True)


def write_base_initramfs(root: Path, out: BinaryIO, compression: str) -> dict:
    """Write the base initramfs for the unpacked tree ``root`` to ``out``."""
    if compression == "gzip":
        stream: BinaryIO = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0)  # type: ignore[assignment]
    elif compression == "none":
        stream = out
    else:
        raise ValueError(f"unknown initramfs compression {compression!r}")
    t0 = time.monotonic()
    pycs = compile_tree(root / "usr/lib/python3.11", "usr/lib/python3.11/", TRIM_RELATIVE["usr/lib/python3.11/"])
    pycs.update(compile_tree(root / SITE_DIR, SITE_DIR + "/", TRIM_RELATIVE[SITE_DIR + "/"]))
    t_pyc = time.monotonic() - t0
    w = CpioWriter(stream)
    n_files, n_bytes = add_tree(w, root, "", TRIM, pycs)
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "work", "opt", "etc", "sbin", "usr/sbin", "usr/bin"):
        w.mkdir(d, 0o1777 if d == "tmp" else 0o755)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    for applet in BUSYBOX_APPLETS:
        w.symlink(f"bin/{applet}", "busybox")
    w.symlink("sbin/poweroff", "../bin/busybox")
    w.symlink("usr/bin/python3", "python3.11")
    w.symlink("usr/bin/python", "python3.11")
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    w.file("etc/hostname", b"kvmrig-arm64\n")
    w.file("init", INIT_SH.read_bytes(), 0o755)
    w.close()
    if stream is not out:
        stream.close()
    return {"files": n_files, "bytes": n_bytes, "pyc_files": len(pycs), "pyc_seconds": round(t_pyc, 2)}


def _relative_trim(prefix: str) -> tuple[str, ...]:
    out = []
    for p in TRIM:
        if p.startswith("*/"):
            out.append(p)
        elif p.startswith(prefix):
            out.append(p[len(prefix):])
    return tuple(out)


TRIM_RELATIVE = {
    "usr/lib/python3.11/": _relative_trim("usr/lib/python3.11/"),
    SITE_DIR + "/": _relative_trim(SITE_DIR + "/"),
}


def ensure_base_image(cache_dir: Path | str | None = None, *, compression: str | None = None,
                      verbose: bool = False) -> BaseImage:
    """Return the cached base image, building it first if needed.

    Needs ``apt-get``/``apt-cache``/``dpkg`` with the arm64 architecture added
    and its lists fetched (scripts/setup-arm64-lane.sh) for the first build;
    network only to download the packages and wheels not yet in the cache.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    compression = compression or os.environ.get(COMPRESSION_ENV) or "none"
    if compression not in ("none", "gzip"):
        raise BackendError(f"{COMPRESSION_ENV}={compression!r}: use 'none' or 'gzip'")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not shutil.which("apt-cache") or not shutil.which("dpkg"):
        raise BackendUnavailable(f"the arm64 lane builds its image with apt and dpkg (Debian/Ubuntu host); {SETUP_HINT}")
    pkgs = resolve_packages(cache_dir)
    key = image_key(pkgs, compression)
    final = cache_dir / f"base-{key}"
    kernel_pkg = next(p["Package"] for p in pkgs if KERNEL_PACKAGE_RE.match(p["Package"]))
    initrd_name = "initramfs.cpio.gz" if compression == "gzip" else "initramfs.cpio"

    def result() -> BaseImage:
        return BaseImage(kernel=final / "vmlinuz", initramfs=final / initrd_name, key=key,
                         compression=compression, kernel_package=kernel_pkg)

    if (final / "manifest.json").is_file():
        return result()

    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "manifest.json").is_file():  # another process built it meanwhile
            return result()
        t0 = time.monotonic()
        _log(verbose, f"building base image {key} in {cache_dir}")
        debs = download_debs(pkgs, cache_dir / "debs")
        wheels = download_wheels(cache_dir / "wheels")
        t_dl = time.monotonic() - t0
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache_dir))
        try:
            root = tmp / "root"
            kroot = tmp / "kernel"
            root.mkdir()
            kroot.mkdir()
            for name, deb in debs.items():
                dest = kroot if name == kernel_pkg else root
                _run(["dpkg", "-x", str(deb), str(dest)], f"dpkg -x {deb.name}")
            site = root / SITE_DIR
            for whl in wheels:
                unpack_wheel(whl, site)
            kernels = sorted((kroot / "boot").glob("vmlinuz-*"))
            if not kernels:
                raise BackendError(f"{kernel_pkg} holds no /boot/vmlinuz-*")
            unresolved = unresolved_libraries(root, TRIM)
            if unresolved:
                _log(True, f"warning: libraries missing from the image: {unresolved}")
            out_dir = tmp / "out"
            out_dir.mkdir()
            shutil.copyfile(kernels[-1], out_dir / "vmlinuz")
            t1 = time.monotonic()
            with open(out_dir / initrd_name, "wb") as f:
                stats = write_base_initramfs(root, f, compression)
            stats["write_seconds"] = round(time.monotonic() - t1, 2)
            manifest = {
                "key": key,
                "format": FORMAT_VERSION,
                "compression": compression,
                "kernel_package": kernel_pkg,
                "kernel_file": kernels[-1].name,
                "packages": [f"{p['Package']}:{p['Architecture']}={p['Version']}" for p in pkgs],
                "wheels": [w.name for w in wheels],
                "initramfs_size": (out_dir / initrd_name).stat().st_size,
                "unresolved_libraries": unresolved,
                "host_python": sys.version.split()[0],
                "download_seconds": round(t_dl, 2),
                "build_seconds": round(time.monotonic() - t0, 2),
                **stats,
            }
            (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            os.rename(out_dir, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune_old(cache_dir, keep=final.name,
                   keep_files={d.name for d in debs.values()} | {w.name for w in wheels})
        _log(verbose, f"built {final} in {time.monotonic() - t0:.1f}s")
    return result()


def _prune_old(cache_dir: Path, keep: str, keep_files: set[str]) -> None:
    """Remove other base images, stale half builds and downloads no longer used
    (we hold the lock)."""
    for p in cache_dir.iterdir():
        if p.name == keep:
            continue
        if p.name.startswith("base-") or p.name.startswith(".build-"):
            shutil.rmtree(p, ignore_errors=True)
    for sub in ("debs", "wheels"):
        for p in (cache_dir / sub).glob("*"):
            if p.name not in keep_files and p.suffix in (".deb", ".whl"):
                p.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build (or find) the cached arm64 lane base image.")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--compression", choices=("none", "gzip"), default=None)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    img = ensure_base_image(args.cache_dir, compression=args.compression, verbose=True)
    print(json.dumps({"kernel": str(img.kernel), "initramfs": str(img.initramfs),
                      "seconds": round(time.monotonic() - t0, 3), **img.manifest()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
