"""PyPI wheels for a VM lane's image: picked for the guest's platform and
Python (pip download --platform), found again in the cache by name and
version, and unpacked straight into the guest's site-packages."""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

from kvmrig.errors import BackendError
from kvmrig.invm.debian import run_tool
from kvmrig.invm.lanes import Lane


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_matches(filename: str, pin: str) -> bool:
    """Whether a wheel file name is the pinned ``name==version``."""
    name, ver = pin.split("==")
    parts = filename.split("-")
    return len(parts) >= 3 and _norm(parts[0]) == _norm(name) and parts[1] == ver


def download_wheels(lane: Lane, pins: tuple[str, ...], wheel_dir: Path) -> list[Path]:
    """The wheel file for each pin, downloading those not yet in ``wheel_dir``
    (binary ones for the lane's platform and cp311; pure-Python ones match any)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)

    def have(pin: str) -> Path | None:
        return next((f for f in wheel_dir.glob("*.whl") if wheel_matches(f.name, pin)), None)

    missing = [w for w in pins if have(w) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--platform", lane.wheel_platform,
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--abi", "abi3", "--abi", "none", "-d", str(wheel_dir), *missing]
        run_tool(cmd, f"pip download ({lane.arch} wheels)", lane.setup_hint)
    out = []
    for w in pins:
        f = have(w)
        if f is None:
            raise BackendError(f"pip download did not produce a wheel for {w}")
        out.append(f)
    return out


def unpack_wheel(whl: Path, site: Path) -> None:
    """Unpack a wheel's importable files into ``site`` (scripts and headers left out)."""
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
