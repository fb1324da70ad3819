"""Build (once, cached) the base image of a VM lane: kernel + initramfs.

A lane (kvmrig.invm.lanes) boots Debian's cloud kernel for its arch under
QEMU so the guest has its own ``/dev/kvm``. Its root file system is an
initramfs assembled on the host from Debian packages of the guest's arch
(kvmrig.invm.debian: apt-get download + dpkg -x; no guest code runs on the
host) and PyPI wheels for the guest's platform (kvmrig.invm.wheels):

* busybox-static as ``/bin/sh`` and the usual tools,
* Debian's python3.11 (minimal + stdlib) with the shared libraries it loads,
* python3-cffi(-backend), python3-yaml, and the wheels kvmrig depends on
  (the x86_64 lane adds pytest, to run kvmrig's own tests inside),
* the kernel modules the lane loads at boot (x86_64: irqbypass, kvm, kvm-amd),
* ``/init`` (``init.sh`` beside this file).

The result is cached under ``~/.cache/kvmrig/<arch>/base-<key>/``
(``$KVMRIG_<ARCH>_CACHE`` overrides); the key is a hash of the exact package
versions (as apt resolves them now, kernel included), the wheel pins, the trim
list and the builder's own format version, so a change to any of them builds a
new image (and removes the old one). A build happens in a temporary directory
that is renamed into place at the end, under a file lock, so a killed build
never leaves a half image behind and two processes never build at once.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from kvmrig.errors import BackendError, BackendUnavailable
from kvmrig.invm.cpio import CpioWriter, add_tree, trim_matchers
from kvmrig.invm.debian import download_debs, resolve_packages, unpack_deb
from kvmrig.invm.lanes import ARM64, LANES, Lane
from kvmrig.invm.pyc import compile_tree, host_matches_guest
from kvmrig.invm.wheels import download_wheels, unpack_wheel

#: Bump when the layout of the image changes in a way the key cannot see.
FORMAT_VERSION = 4

Progress = Callable[[str], None]

#: Debian packages in every image; "{a}" is the lane's Debian arch
#: (``all`` packages have none).
DEB_PACKAGES: tuple[str, ...] = (
    "busybox-static:{a}",
    "libc6:{a}",
    "python3.11-minimal:{a}",
    "libpython3.11-minimal:{a}",
    "libpython3.11-stdlib:{a}",
    # shared libraries python3.11 and its extension modules load
    "zlib1g:{a}",
    "libexpat1:{a}",
    "libgcc-s1:{a}",  # the rpds-py wheel (Rust) links libgcc_s
    "libffi8:{a}",  # _ctypes, _cffi_backend
    "libbz2-1.0:{a}",  # _bz2
    "liblzma5:{a}",  # _lzma
    "libuuid1:{a}",  # _uuid
    "libyaml-0-2:{a}",  # yaml's C loader
    # Python packages kvmrig depends on that Debian builds for the arch
    "python3-cffi-backend:{a}",
    "python3-cffi",
    "python3-pycparser",
    "python3-ply",
    "python3-yaml:{a}",
    "python3-libfdt:{a}",  # pylibfdt: the arm64 device trees kvmrig generates
)

#: Wheels from PyPI, pinned (the pins are part of the cache key).
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

SITE_DIR = "usr/lib/python3/dist-packages"
MODULE_DIR = "lib/modules/kvmrig"
MODULE_LIST = "etc/kvmrig-modules"

#: busybox applets linked into /bin (the rest: ``busybox --install -s``).
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ash", "awk", "base64", "basename", "cat", "chmod", "cmp", "cp", "cut",
    "date", "dd", "df", "dirname", "dmesg", "du", "echo", "env", "expr", "false",
    "find", "free", "grep", "gunzip", "gzip", "head", "hexdump", "id", "insmod", "kill",
    "ln", "ls", "md5sum", "mkdir", "mknod", "mount", "mv", "od", "poweroff",
    "printf", "ps", "pwd", "readlink", "reboot", "rm", "rmdir", "sed", "seq",
    "sha256sum", "sleep", "sort", "stat", "stty", "sync", "tail", "tar", "tee",
    "test", "[", "time", "timeout", "touch", "tr", "true", "umount", "uname",
    "uniq", "wc", "xargs", "xxd", "yes",
)

INIT_SH = Path(__file__).with_name("init.sh")


def deb_packages(lane: Lane) -> list[str]:
    return [p.format(a=lane.deb_arch) for p in DEB_PACKAGES]


def wheels(lane: Lane) -> tuple[str, ...]:
    return WHEELS + lane.extra_wheels


def trim(lane: Lane) -> tuple[str, ...]:
    """Paths (relative to the image root) left out of the image.  A pattern
    ending in "/" drops a whole directory; "*" matches within one component."""
    t = lane.triplet
    return (
        "usr/share/",  # docs, man pages, lintian, pycparser's fake libc headers
        f"usr/lib/{t}/gconv/",
        f"usr/lib/{t}/engines-3/",
        f"usr/lib/{t}/ossl-modules/",
        f"usr/lib/{t}/audit/",
        f"lib/{t}/libmemusage.so",
        f"lib/{t}/libpcprofile.so",
        f"lib/{t}/libc_malloc_debug.so.0",
        f"lib/{t}/libBrokenLocale.so.1",
        f"lib/{t}/libthread_db.so.1",
        f"lib/{t}/libnss_hesiod.so.2",
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
        f"usr/lib/python3.11/config-3.11-{t}/",
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
        f"{SITE_DIR}/unicorn/include/",
        f"{SITE_DIR}/unicorn/lib/*.a",  # 31 MB static library; Python loads the .so
        "*/__pycache__/",
    )


def relative_trim(patterns: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """The patterns that apply under ``prefix``, relative to it."""
    return tuple(p if p.startswith("*/") else p[len(prefix):]
                 for p in patterns if p.startswith("*/") or p.startswith(prefix))


@dataclass(frozen=True)
class BaseImage:
    """A bootable kernel + initramfs pair (the initramfs has no per-run files)."""

    kernel: Path
    initramfs: Path
    key: str = ""
    compression: str = "none"
    kernel_package: str = ""
    arch: str = "arm64"

    def manifest(self) -> dict:
        try:
            return json.loads((self.initramfs.parent / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}


def default_cache_dir(lane: Lane = ARM64) -> Path:
    return lane.cache_dir()


def unresolved_libraries(root: Path, lane: Lane, trim_patterns: tuple[str, ...] = ()) -> dict[str, list[str]]:
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
    is_trimmed_dir, is_trimmed_file = trim_matchers(trim_patterns)
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
    libdirs = (f"lib/{lane.triplet}", f"usr/lib/{lane.triplet}", "lib", "usr/lib", "lib64")
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
        missing = [n for n in needed if not any(f"{d}/{n}" in present for d in dirs)]
        if missing:
            out[rel] = missing
    return out


def image_key(lane: Lane, pkgs: list[dict[str, str]], compression: str) -> str:
    h = hashlib.sha256()
    h.update(f"format={FORMAT_VERSION}\narch={lane.arch}\ncompression={compression}\n".encode())
    for p in pkgs:
        h.update(f"{p['Package']}:{p['Architecture']}={p['Version']}\n".encode())
    for w in wheels(lane):
        h.update(f"wheel {w}\n".encode())
    h.update(repr((trim(lane), BUSYBOX_APPLETS, lane.modules)).encode())
    # init.sh is not in the key: every run's overlay carries the current /init
    # (the base's copy only serves a boot without an overlay)
    # .pyc files are only added when the host is 3.11: make that part of the key
    h.update(f"pyc={host_matches_guest()}\n".encode())
    return h.hexdigest()[:16]


def extract_modules(kroot: Path, lane: Lane, root: Path) -> list[str]:
    """Copy the lane's kernel modules from the unpacked kernel package into the
    image (decompressed: busybox insmod reads plain ELF); their guest paths in order."""
    out = []
    for name in lane.modules:
        found = sorted(p for pat in (name, name + ".xz") for p in kroot.glob(f"lib/modules/*/**/{pat}"))
        if not found:
            raise BackendError(f"the kernel package holds no {name} (needed to load KVM in the {lane.arch} VM)")
        data = found[0].read_bytes()
        if found[0].suffix == ".xz":
            data = lzma.decompress(data)
        dest = root / MODULE_DIR / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        out.append("/" + f"{MODULE_DIR}/{name}")
    return out


def write_base_initramfs(root: Path, lane: Lane, out: BinaryIO, compression: str) -> dict:
    """Write the base initramfs for the unpacked tree ``root`` to ``out``."""
    if compression == "gzip":
        stream: BinaryIO = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0)  # type: ignore[assignment]
    elif compression == "none":
        stream = out
    else:
        raise ValueError(f"unknown initramfs compression {compression!r}")
    patterns = trim(lane)
    t0 = time.monotonic()
    pycs = compile_tree(root / "usr/lib/python3.11", "usr/lib/python3.11/",
                        relative_trim(patterns, "usr/lib/python3.11/"))
    pycs.update(compile_tree(root / SITE_DIR, SITE_DIR + "/", relative_trim(patterns, SITE_DIR + "/")))
    t_pyc = time.monotonic() - t0
    w = CpioWriter(stream)
    n_files, n_bytes = add_tree(w, root, "", patterns, pycs)
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
    w.file("etc/hostname", f"kvmrig-{lane.arch}\n".encode())
    w.file("init", INIT_SH.read_bytes(), 0o755)
    w.close()
    if stream is not out:
        stream.close()
    return {"files": n_files, "bytes": n_bytes, "pyc_files": len(pycs), "pyc_seconds": round(t_pyc, 2)}


def ensure_base_image(cache_dir: Path | str | None = None, *, lane: Lane = ARM64,
                      compression: str | None = None, verbose: bool = False,
                      progress: Progress | None = None) -> BaseImage:
    """Return the lane's cached base image, building it first if needed.

    Needs ``apt-get``/``apt-cache``/``dpkg`` with the lane's package lists
    (scripts/setup-<arch>-lane.sh) for the first build; network only to
    download the packages and wheels not yet in the cache. ``progress`` (or
    stderr with ``verbose``) hears about the steps of a build.
    """
    if progress is None and verbose:
        def progress(msg: str) -> None:
            print(f"[kvmrig {lane.arch} image] {msg}", file=sys.stderr, flush=True)
    say: Progress = progress or (lambda _msg: None)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else lane.cache_dir()
    compression = compression or os.environ.get(lane.compression_env) or "none"
    if compression not in ("none", "gzip"):
        raise BackendError(f"{lane.compression_env}={compression!r}: use 'none' or 'gzip'")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not shutil.which("apt-cache") or not shutil.which("dpkg"):
        raise BackendUnavailable(f"the {lane.arch} lane builds its image with apt and dpkg "
                                 f"(Debian/Ubuntu host); {lane.setup_hint}")
    kernel_pkg, pkgs = resolve_packages(lane, deb_packages(lane), cache_dir / "resolved.json")
    key = image_key(lane, pkgs, compression)
    final = cache_dir / f"base-{key}"
    initrd_name = "initramfs.cpio.gz" if compression == "gzip" else "initramfs.cpio"

    def result() -> BaseImage:
        return BaseImage(kernel=final / "vmlinuz", initramfs=final / initrd_name, key=key,
                         compression=compression, kernel_package=kernel_pkg, arch=lane.arch)

    if (final / "manifest.json").is_file():
        return result()

    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "manifest.json").is_file():  # another process built it meanwhile
            return result()
        t0 = time.monotonic()
        say(f"building the {lane.arch} VM image {key} in {cache_dir} (once; about a minute)")
        say(f"downloading {len(pkgs)} Debian packages and {len(wheels(lane))} wheels (those not cached)")
        debs = download_debs(pkgs, cache_dir / "debs", lane.setup_hint)
        wheel_files = download_wheels(lane, wheels(lane), cache_dir / "wheels")
        t_dl = time.monotonic() - t0
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache_dir))
        try:
            root = tmp / "root"
            kroot = tmp / "kernel"
            root.mkdir()
            kroot.mkdir()
            say("unpacking")
            for name, deb in debs.items():
                unpack_deb(deb, kroot if name == kernel_pkg else root, lane.setup_hint)
            site = root / SITE_DIR
            for whl in wheel_files:
                unpack_wheel(whl, site)
            kernels = sorted((kroot / "boot").glob("vmlinuz-*"))
            if not kernels:
                raise BackendError(f"{kernel_pkg} holds no /boot/vmlinuz-*")
            modules = extract_modules(kroot, lane, root)
            if modules:
                (root / MODULE_LIST).parent.mkdir(parents=True, exist_ok=True)
                (root / MODULE_LIST).write_text("".join(m + "\n" for m in modules))
            unresolved = unresolved_libraries(root, lane, trim(lane))
            if unresolved:
                say(f"warning: libraries missing from the image: {unresolved}")
            out_dir = tmp / "out"
            out_dir.mkdir()
            shutil.copyfile(kernels[-1], out_dir / "vmlinuz")
            say("writing the initramfs")
            t1 = time.monotonic()
            with open(out_dir / initrd_name, "wb") as f:
                stats = write_base_initramfs(root, lane, f, compression)
            stats["write_seconds"] = round(time.monotonic() - t1, 2)
            manifest = {
                "key": key,
                "arch": lane.arch,
                "format": FORMAT_VERSION,
                "compression": compression,
                "kernel_package": kernel_pkg,
                "kernel_file": kernels[-1].name,
                "modules": modules,
                "packages": [f"{p['Package']}:{p['Architecture']}={p['Version']}" for p in pkgs],
                "wheels": [w.name for w in wheel_files],
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
                   keep_files={d.name for d in debs.values()} | {w.name for w in wheel_files})
        say(f"built {final} in {time.monotonic() - t0:.1f}s")
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

    ap = argparse.ArgumentParser(description="Build (or find) the cached base image of a VM lane.")
    ap.add_argument("--arch", choices=sorted(LANES), default="arm64")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--compression", choices=("none", "gzip"), default=None)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    img = ensure_base_image(args.cache_dir, lane=LANES[args.arch], compression=args.compression, verbose=True)
    print(json.dumps({"kernel": str(img.kernel), "initramfs": str(img.initramfs),
                      "seconds": round(time.monotonic() - t0, 3), **img.manifest()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
