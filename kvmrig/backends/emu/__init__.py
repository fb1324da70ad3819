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


def refuses(rig) -> str | None:
    """Why the emulator cannot model what this rig asks for (None: it can).
    Never a silently different machine: the rig is skipped with this reason."""
    if rig.arch == "x86_64" and rig.cpus > 1:
        where = f", as the snapshot it starts from ({rig.start})" if rig.start is not None else ""
        return f"the emulator backend runs one vCPU; the rig has {rig.cpus}{where}"
    if rig.machine.irqchip:
        return ("the emulator backend has no interrupt controller or timer (the rig sets machine.irqchip/pit; "
                "unicorn delivers no external interrupts)")
    if rig.cpu is not None and rig.cpu.cpuid is not None:
        return "the emulator backend cannot change CPUID (the rig sets cpu.cpuid; unicorn's CPUID is fixed)"
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
