"""The arm64 device tree of a rig: the rig's own DTB (checked with libfdt) or
one generated from the rig (kvmrig.arch.arm64.devicetree), its initrd, and
where both go in guest memory.

Placement: the DTB goes to `dtb.at`, else to the top of the RAM region that
holds the entry point (4 KiB aligned, so the rig's images at the bottom of
RAM stay clear); an initrd goes just below it, 4 KiB aligned. Both must lie
in RAM and clear of every image (a Linux Image's whole image_size counts);
anything else is a rig error at the `dtb` key.
"""

from __future__ import annotations

from kvmrig.arch.arm64 import devicetree as fdt
from kvmrig.arch.arm64 import linux
from kvmrig.errors import RigError
from kvmrig.rig.model import Rig

PAGE = 0x1000


def _read(path, mark, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise RigError(f"cannot read the {what} {path}: {e.strerror}", mark) from None


def tree_spec(rig: Rig, initrd: tuple[int, int] | None) -> fdt.TreeSpec:
    """What the generated tree describes, from the rig."""
    gic = None
    if rig.gic is not None:
        gic = fdt.Gic(rig.gic.distributor, rig.gic.redistributor, rig.cpus)
    uarts = [fdt.Uart(d.at, d.irq) for d in rig.devices if d.type == "pl011" and d.at is not None]
    memory = [(r.at, r.size) for r in sorted(rig.memory, key=lambda r: r.at) if not r.rom]
    bootargs = rig.dtb.bootargs if rig.dtb is not None else ""
    if not bootargs:   # a Linux Image's `cmdline` says the same (one spelling on both arches)
        bootargs = next((img.cmdline for img in rig.images if img.linux and img.cmdline), "")
    return fdt.TreeSpec(memory, rig.cpus, gic, uarts, bootargs, initrd)


def _home(rig: Rig, entry: int):
    ram = [r for r in sorted(rig.memory, key=lambda r: r.at) if not r.rom]
    return next((r for r in ram if r.at <= entry < r.end), ram[0] if ram else None)


def plan_dtb(plan) -> tuple[list[tuple[int, bytes]], int]:
    """(memory writes, DTB address) for the rig's device tree and initrd."""
    rig: Rig = plan.rig
    spec = rig.dtb
    mark = spec.mark if spec is not None else (rig.cpus_mark or (rig.gic.mark if rig.gic else rig.mark))
    home = _home(rig, plan.entry)
    if home is None:
        raise RigError("a device tree goes into RAM, and the rig has no RAM region", mark)
    initrd_data = _read(spec.initrd, spec.initrd_mark, "initrd") if spec is not None and spec.initrd else None
    if spec is not None and spec.file is not None:
        blob = _read(spec.file, spec.file_mark, "device tree")
        problem = fdt.check_blob(blob)
        if problem:
            raise RigError(f"{spec.file.name} is not a valid device tree blob: {problem}", spec.file_mark)
    else:
        # The size does not depend on the initrd's address: generate once to size it.
        blob = fdt.generate(tree_spec(rig, (0, 0) if initrd_data is not None else None))
    at = spec.at if spec is not None and spec.at is not None else (home.end - len(blob)) // PAGE * PAGE
    writes: list[tuple[int, bytes]] = []
    if initrd_data is not None:
        initrd_at = (at - len(initrd_data)) // PAGE * PAGE
        _check_span(plan, initrd_at, len(initrd_data), "the initrd", spec.initrd_mark)
        if spec.file is None:
            blob = fdt.generate(tree_spec(rig, (initrd_at, initrd_at + len(initrd_data))))
        writes.append((initrd_at, initrd_data))
    if len(blob) > linux.DTB_MAX:
        raise RigError(f"the device tree is {len(blob)} bytes; arm64 allows 2 MiB at most", mark)
    _check_span(plan, at, len(blob), "the device tree", spec.mark if spec is not None and spec.at is not None
                else mark)
    writes.append((at, blob))
    return writes, at


def _check_span(plan, at: int, size: int, what: str, mark) -> None:
    rig: Rig = plan.rig
    end = at + size
    if not any(r.at <= at and end <= r.end and not r.rom for r in rig.memory):
        raise RigError(f"{what} ({at:#x}..{end:#x}, {size} bytes) does not fit in one RAM region: give more RAM "
                       "or set dtb.at", mark)
    for img in plan.images:
        start, stop = img.span
        if at < stop and start < end:
            raise RigError(f"{what} ({at:#x}..{end:#x}) overlaps image {img.label} ({start:#x}..{stop:#x}): "
                           "move the image, or set dtb.at", mark)
