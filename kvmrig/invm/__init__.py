"""The VM lanes: run commands in a Linux booted under QEMU (TCG) whose own
/dev/kvm runs kvmrig's rigs where the host's KVM cannot:

    arm64   real arm64 KVM on an x86_64 host (qemu-system-aarch64,
            virtualization=on; scripts/setup-arm64-lane.sh);
    x86_64  an x86 KVM that intercepts INT3 and raises DR0-DR3 breakpoints
            (nested SVM under a QEMU built with kvmrig's patch;
            scripts/setup-x86-lane.sh), for hosts whose KVM does neither.

    from kvmrig.invm import run_in_vm, X86_64
    r = run_in_vm(["python3", "-m", "kvmrig", "run", "rig.yaml"],
                  files=[("rig.yaml", "rigs/x86/fib.yaml")], fetch=["report.json"],
                  timeout=300, on_output=print, lane=X86_64)
    r.check(); r.exit_status, r.output, r.files_back["report.json"]

Modules: lanes (what differs per arch), debian / wheels / cpio / pyc (the
image's parts), image (build + cache, ``python3 -m kvmrig.invm.image --arch
x86_64`` builds one and prints its manifest), qemu (boot and the console
protocol), remote (``kvmrig run --in-vm ARCH``).
"""

from __future__ import annotations

__all__ = ["ARM64", "X86_64", "BaseImage", "Lane", "VmResult", "ensure_base_image", "lane_for",
           "qemu_binary", "run_in_vm"]

_WHERE = {
    "ARM64": "kvmrig.invm.lanes",
    "X86_64": "kvmrig.invm.lanes",
    "Lane": "kvmrig.invm.lanes",
    "lane_for": "kvmrig.invm.lanes",
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
