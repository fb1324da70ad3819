"""The emulator backend: rigs run on unicorn instead of KVM.

Where KVM is missing (no /dev/kvm, or a rig for the other architecture) the
emulator runs the same rig with the same event semantics, and
`kvmrig run --cross-check` runs a rig on both to catch where they differ.
Everything the emulator cannot do as KVM does is listed in README.md beside
this file (CPUID, exception delivery, timing, ...).

    backend_class(arch) -> the Backend class for "x86_64" or "arm64"
    unavailable()       -> None, or why the emulator cannot run here
"""

from __future__ import annotations


def unavailable() -> str | None:
    """None when unicorn (>= 2.1) is importable, else the reason."""
    try:
        import unicorn
    except ImportError as e:
        return f"the emulator backend needs unicorn >= 2.1 (a dependency of kvmrig: pip install kvmrig installs it): {e}"
    major, minor = (int(x) for x in unicorn.__version__.split(".")[:2])
    if (major, minor) < (2, 1):
        return f"the emulator backend needs unicorn >= 2.1, this is {unicorn.__version__}"
    return None


def backend_class(arch: str):
    """The emulator's Backend class for `arch` (its module, and unicorn, load only now)."""
    if arch == "x86_64":
        from kvmrig.backends.emu.x86_64 import EmuX86Backend
        return EmuX86Backend
    if arch == "arm64":
        from kvmrig.backends.emu.arm64 import EmuArm64Backend
        return EmuArm64Backend
    raise ValueError(f"the emulator backend has no {arch!r}")
