"""Choosing the backend for a rig: which one runs it here, or why none can."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

from kvmrig.backends.base import Backend
from kvmrig.rig.model import Rig

HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), platform.machine())


class NoBackend(Exception):
    """No backend can run this rig here; the message is the skip reason."""


def kvm_usable() -> str | None:
    """None when /dev/kvm can be opened, else why not."""
    path = os.environ.get("KVMRIG_KVM_DEVICE", "/dev/kvm")
    if not os.path.exists(path):
        return f"{path} is absent on this machine"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"no read/write permission on {path} (add yourself to the kvm group)"
    return None


def backend_for(rig: Rig, wanted: str = "auto") -> tuple[str, Callable[[], Backend]]:
    """(backend name, factory) for the rig, or NoBackend with the reason."""
    choice = rig.backend if rig.backend != "any" else wanted
    if choice == "emu":
        raise NoBackend("the emulator backend is not available yet (rig pins `backend: emu`)")
    why = kvm_usable()
    if rig.arch != HOST_ARCH:
        why = f"KVM runs {HOST_ARCH} guests on this {HOST_ARCH} host, not {rig.arch}"
    if why:
        raise NoBackend(f"KVM cannot run this rig: {why}")
    if rig.arch == "x86_64":
        from kvmrig.backends.kvm.x86_64 import KvmX86Backend
        return "kvm", KvmX86Backend
    raise NoBackend(f"no KVM backend for {rig.arch} yet")
