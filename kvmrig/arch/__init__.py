"""Pure architecture knowledge shared by the backends (no KVM, no I/O)."""

import os as _os


def host_arch(machine: str | None = None) -> str:
    """kvmrig's name for the architecture of `machine` (default: this host)."""
    m = (machine if machine is not None else _os.uname().machine).lower()
    if m in ("x86_64", "amd64"):
        return "x86_64"
    if m in ("aarch64", "arm64"):
        return "arm64"
    return m  # unsupported: backends refuse it
