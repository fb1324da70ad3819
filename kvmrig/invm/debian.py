"""Debian packages for a VM lane's image: which versions (apt-cache), in what
order (dpkg's own version comparison), fetched (apt-get download, checked
against the archive's SHA256) and unpacked (dpkg -x). No package is
installed on the host and none of its code runs there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

from kvmrig.atomic import write_atomic
from kvmrig.errors import BackendError, BackendUnavailable
from kvmrig.invm.lanes import Lane

Package = dict[str, str]  # a stanza's Package, Architecture, Version, Filename, SHA256
FIELDS = ("Package", "Architecture", "Version", "Filename", "SHA256")


def run_tool(cmd: list[str], what: str, hint: str, cwd: str | None = None, timeout: float = 900) -> str:
    """Run a host tool; its stdout, or BackendError/BackendUnavailable that say what failed."""
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise BackendUnavailable(f"{what}: {cmd[0]} not found; {hint}") from e
    except subprocess.TimeoutExpired as e:
        raise BackendError(f"{what}: {' '.join(cmd[:3])}... timed out after {timeout:.0f}s") from e
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip()[-1500:]
        raise BackendError(f"{what} failed (exit {p.returncode}): {' '.join(cmd[:4])} ...\n{tail}")
    return p.stdout


def version_compare(a: str, b: str) -> int:
    """Debian version order (<0, 0, >0), as dpkg itself decides it."""
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], capture_output=True)
    if lt.returncode == 0:
        return -1
    eq = subprocess.run(["dpkg", "--compare-versions", a, "eq", b], capture_output=True)
    return 0 if eq.returncode == 0 else 1


def parse_stanzas(text: str) -> list[Package]:
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


def apt_show(specs: list[str], hint: str) -> list[Package]:
    # apt-cache show exits non-zero if any name is unknown: ask one call for all,
    # and fall back to one per name only to say which is missing.
    try:
        return parse_stanzas(run_tool(["apt-cache", "show", "--no-all-versions", *specs], "apt-cache show", hint))
    except BackendError:
        for s in specs:
            p = subprocess.run(["apt-cache", "show", "--no-all-versions", s], capture_output=True, text=True)
            if p.returncode != 0 or not p.stdout.strip():
                raise BackendUnavailable(f"apt does not know the package {s!r}; {hint}") from None
        raise


def apt_lists_signature(extra: str) -> str:
    """Changes whenever apt's package lists (or the dpkg architectures) do."""
    h = hashlib.sha256()
    try:
        for p in sorted(Path("/var/lib/apt/lists").iterdir()):
            if "_Packages" in p.name:
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    except OSError:
        pass
    try:
        h.update(Path("/var/lib/dpkg/arch").read_bytes())
    except OSError:
        pass
    h.update(extra.encode())
    return h.hexdigest()


def pick_kernel_package(lane: Lane) -> str:
    """The newest ``linux-image-<ver>-<flavour>`` apt knows (or the lane's
    ``KVMRIG_<ARCH>_KERNEL_PKG``)."""
    env = os.environ.get(lane.kernel_env)
    if env:
        return env
    pattern = lane.kernel_re
    names = [n for n in run_tool(["apt-cache", "pkgnames", "linux-image-"], "apt-cache pkgnames",
                                 lane.setup_hint).split() if pattern.match(n)]
    if not names:
        raise BackendUnavailable(f"apt knows no linux-image-*-{lane.kernel_flavour} package; {lane.setup_hint}")
    stanzas = [s for s in apt_show([f"{n}:{lane.deb_arch}" for n in names], lane.setup_hint)
               if s.get("Architecture") == lane.deb_arch and pattern.match(s["Package"])]
    if not stanzas:
        raise BackendUnavailable(f"no installable linux-image-*-{lane.kernel_flavour} package; {lane.setup_hint}")
    key = functools.cmp_to_key(version_compare)
    return max(stanzas, key=lambda s: key(s["Version"]))["Package"]


def resolve_packages(lane: Lane, specs: list[str], memo: Path) -> tuple[str, list[Package]]:
    """(kernel package, [package stanzas] for ``specs`` plus the kernel), sorted by name.

    apt-cache is slow here (~1 s a call), so the answer is remembered in
    ``memo`` until the apt lists (or the package list) change.
    """
    sig = apt_lists_signature(os.environ.get(lane.kernel_env, "") + repr(specs))
    try:
        data = json.loads(memo.read_text())
        if data.get("signature") == sig:
            return data["kernel"], data["packages"]
    except (OSError, ValueError, KeyError):
        pass
    kernel = pick_kernel_package(lane)
    specs = specs + [kernel if ":" in kernel else f"{kernel}:{lane.deb_arch}"]
    pkgs: list[Package] = []
    seen = set()
    for s in apt_show(specs, lane.setup_hint):
        key = (s["Package"], s.get("Architecture"))
        if key not in seen:
            seen.add(key)
            pkgs.append({k: s.get(k, "") for k in FIELDS})
    missing = {s.split(":")[0] for s in specs} - {p["Package"] for p in pkgs}
    if missing:
        raise BackendUnavailable(f"apt does not know {sorted(missing)}; {lane.setup_hint}")
    pkgs.sort(key=lambda p: p["Package"])
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(memo, json.dumps({"signature": sig, "kernel": kernel, "packages": pkgs}, indent=1))
    return kernel, pkgs


def deb_filename(p: Package) -> str:
    """apt-get download's naming: name_version_arch.deb with ':' in the version as %3a."""
    return f"{p['Package']}_{p['Version'].replace(':', '%3a')}_{p['Architecture']}.deb"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_debs(pkgs: list[Package], deb_dir: Path, hint: str) -> dict[str, Path]:
    """{package: .deb path}, downloading those not yet in ``deb_dir``; checksums checked."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    paths = {p["Package"]: deb_dir / deb_filename(p) for p in pkgs}
    missing = [p for p in pkgs if not paths[p["Package"]].is_file()]
    if missing:
        specs = [f"{p['Package']}:{p['Architecture']}={p['Version']}" if p["Architecture"] != "all"
                 else f"{p['Package']}={p['Version']}" for p in missing]
        cmd = ["apt-get", "download", "-q=2"]
        if os.geteuid() == 0:
            # the cache lives under root's home, which the _apt sandbox user cannot write
            cmd += ["-o", "APT::Sandbox::User=root"]
        try:
            run_tool(cmd + specs, "apt-get download", hint, cwd=str(deb_dir))
        except BackendError as e:
            raise BackendError(f"{e}\n(if the archive dropped these versions, run `apt-get update` "
                               "to refresh the package lists: the image is then rebuilt from the new ones)") from e
    for p in pkgs:
        path = paths[p["Package"]]
        if not path.is_file():
            raise BackendError(f"apt-get download did not produce {path.name}")
        if p.get("SHA256") and sha256_file(path) != p["SHA256"]:
            path.unlink()
            raise BackendError(f"{path.name}: checksum mismatch (deleted; try again)")
    return paths


def unpack_deb(deb: Path, dest: Path, hint: str) -> None:
    run_tool(["dpkg", "-x", str(deb), str(dest)], f"dpkg -x {deb.name}", hint)
