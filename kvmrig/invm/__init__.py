"""The arm64 VM lane: run commands in an arm64 Debian Linux booted under
qemu-system-aarch64 (TCG, virtualization=on), whose own /dev/kvm runs
kvmrig's arm64 rigs on an x86_64 host.

    from kvmrig.invm import run_in_vm
    r = run_in_vm(["python3", "-m", "kvmrig", "run", "rig.yaml"],
                  files=[("rig.yaml", "rigs/arm64/x.yaml")], fetch=["report.json"],
                  timeout=300, on_output=print)
    r.check(); r.exit_status, r.output, r.files_back["report.json"]

Host setup: scripts/setup-arm64-lane.sh.  The base image (kernel + initramfs)
is built once and cached under ~/.cache/kvmrig/arm64 (kvmrig.invm.image;
``python3 -m kvmrig.invm.image`` builds it and prints its manifest).
"""

from __future__ import annotations

__all__ = ["BaseImage", "VmResult", "ensure_base_image", "qemu_binary", "run_in_vm"]

_WHERE = {
    "BaseImage": "kvmrig.invm.image",
    "ensure_base_image": "kvmrig.invm.image",
    "VmResult": "kvmrig.invm.qemu",
    "qemu_binary": "kvmrig.invm.qemu",
    "run_in_vm": "kvmrig.invm.qemu",
}


def __getattr__(name: str):
    # lazy, so that `python3 -m kvmrig.invm.image` does not import itself twice
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'kvmrig.invm' has no attribute {name!r}")
