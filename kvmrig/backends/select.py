"""Choosing the backend for a rig: which one runs it here, or why none can."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from kvmrig.arch import host_arch
from kvmrig.backends import emu
from kvmrig.backends.base import Backend
from kvmrig.errors import NoBackend  # noqa: F401 - raised here, importable from here
from kvmrig.rig.model import Rig

HOST_ARCH = host_arch()


def kvm_usable() -> str | None:
    """None when /dev/kvm can be opened, else why not."""
    path = os.environ.get("KVMRIG_KVM_DEVICE", "/dev/kvm")
    if os.access(path, os.R_OK | os.W_OK):   # one system call for the usual answer (asked per rig)
        return None
    if not os.path.exists(path):
        return f"{path} is absent on this machine"
    return f"no read/write permission on {path} (add yourself to the kvm group)"


def kvm_factory(rig: Rig) -> Callable[[], Backend]:
    """The KVM backend class for the rig, or NoBackend saying why KVM cannot run it here."""
    why = kvm_usable()
    if rig.arch != HOST_ARCH:
        why = f"KVM runs {HOST_ARCH} guests on this {HOST_ARCH} host, not {rig.arch}"
    if why:
        raise NoBackend(f"KVM cannot run this rig: {why}")
    return _kvm_class(rig.arch, getattr(rig, "cpus", 1) > 1)


@functools.cache   # a class per (arch, SMP): an import statement costs ~1 us even when done, asked per rig
def _kvm_class(arch: str, smp: bool) -> Callable[[], Backend]:
    # Each backend module is imported when a rig needs it: a run loads one arch's code.
    if arch == "x86_64":
        if smp:
            from kvmrig.backends.kvm.x86_smp import KvmX86SmpBackend
            return KvmX86SmpBackend
        from kvmrig.backends.kvm.x86_64 import KvmX86Backend
        return KvmX86Backend
    if arch == "arm64":
        if smp:
            from kvmrig.backends.kvm.arm64_smp import KvmArm64SmpBackend
            return KvmArm64SmpBackend
        from kvmrig.backends.kvm.arm64 import KvmArm64Backend
        return KvmArm64Backend
    raise NoBackend(f"no KVM backend for {arch} yet")


def emu_factory(rig: Rig) -> Callable[[], Backend]:
    """The emulator backend class for the rig, or NoBackend saying why not."""
    why = emu.unavailable() or emu.refuses(rig)
    if why:
        raise NoBackend(why)
    if rig.arch == "arm64" and (getattr(rig, "gic", None) is not None or getattr(rig, "cpus", 1) > 1):
        from kvmrig.backends.emu.arm64 import refusal
        raise NoBackend(refusal(rig.gic is not None, rig.cpus))
    return emu.backend_class(rig.arch)


FACTORIES = {"kvm": kvm_factory, "emu": emu_factory}
WANTED = ("auto", "kvm", "emu")


def backend_for(rig: Rig, wanted: str = "auto") -> tuple[str, Callable[[], Backend]]:
    """(backend name, factory) for the rig, or NoBackend with the reason.

    `wanted` is the run's --backend: "auto" takes KVM where it can run the
    rig (this host's arch, /dev/kvm usable) and the emulator elsewhere;
    "kvm" / "emu" take that backend only. A rig's `backend:` pin wins over
    "auto" and must agree with an explicit choice: a rig pinned to KVM is
    skipped, with the reason, where KVM cannot run it (never passed
    silently on the emulator), and the same for a rig pinned to emu.
    """
    if wanted not in WANTED:
        raise ValueError(f"unknown backend {wanted!r}: one of {', '.join(WANTED)}")
    pin = rig.backend if rig.backend != "any" else None
    if pin is not None and wanted not in ("auto", pin):
        raise NoBackend(f"the rig pins `backend: {pin}` and this run asked for --backend {wanted}")
    choice = pin or wanted
    if choice != "auto":
        try:
            return choice, FACTORIES[choice](rig)
        except NoBackend as e:
            if pin is not None:
                raise NoBackend(f"{e} (the rig pins `backend: {pin}`)") from None
            raise
    try:
        return "kvm", kvm_factory(rig)
    except NoBackend as kvm_why:
        try:
            return "emu", emu_factory(rig)
        except NoBackend as emu_why:
            raise NoBackend(f"{kvm_why}; {emu_why}") from None


def available_backends(rig: Rig) -> dict[str, Callable[[], Backend] | str]:
    """Each backend's factory for the rig, or the reason it cannot run it (for --cross-check)."""
    out: dict[str, Callable[[], Backend] | str] = {}
    for name, factory in FACTORIES.items():
        try:
            out[name] = factory(rig)
        except NoBackend as e:
            out[name] = str(e)
    return out
