"""From the rig's `cpu:` to the arch's initial CPU state and the memory the
runner must write for it (x86: GDT and identity page tables).

Where those tables go is documented and configurable (`cpu.tables_at`); by
default they take the top of the RAM region that holds address 0 (or else the
first RAM region), and an image that would overlap them is a rig error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmrig.arch.arm64 import boot as arm
from kvmrig.arch.x86_64 import boot as x86
from kvmrig.errors import RigError
from kvmrig.machine.devicetree import plan_dtb

PAGE = 0x1000


@dataclass
class BootPlan:
    state: Any                     # arch-specific initial state (kvmrig.arch.<arch>.boot)
    first_pc: int                  # address of the first instruction
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    reserved: tuple[int, int] | None = None  # [start, end) the runner owns (x86 tables)


def _tables_spot(plan, need: int) -> int:
    rig = plan.rig
    if rig.cpu is not None and rig.cpu.tables_at is not None:
        return rig.cpu.tables_at
    ram = [r for r in sorted(rig.memory, key=lambda r: r.at) if not r.rom and r.size >= need]
    if not ram:
        raise RigError(f"cpu mode {rig.cpu.mode if rig.cpu else 'long'} needs {need:#x} bytes of RAM for the "
                       "GDT and page tables, but no RAM region is that large; add RAM or set cpu.tables_at",
                       rig.cpu.mark if rig.cpu else rig.mark)
    home = next((r for r in ram if r.at == 0), ram[0])
    return home.end - need


def _check_free(plan, start: int, end: int) -> None:
    rig = plan.rig
    mark = rig.cpu.mark if rig.cpu else rig.mark
    if not any(r.at <= start and end <= r.end and not r.rom for r in rig.memory):
        raise RigError(f"the GDT and page tables ({start:#x}..{end:#x}) must lie inside one RAM region; "
                       "set cpu.tables_at to a free, writable spot", mark)
    for img in plan.images:
        for addr, body in img.segments:
            if addr < end and start < addr + len(body):
                raise RigError(
                    f"image {img.label} ({addr:#x}..{addr + len(body):#x}) overlaps the GDT and page tables "
                    f"kvmrig writes at {start:#x}..{end:#x} for cpu mode {rig.cpu.mode if rig.cpu else ''}; "
                    "move the image or set cpu.tables_at", img.image.mark)


def _state(plan, make, *args):
    try:
        return make(*args)
    except ValueError as e:
        cpu = plan.rig.cpu
        raise RigError(str(e), cpu.entry.mark if cpu and cpu.entry else (cpu.mark if cpu else plan.rig.mark)) from None


def _x86(plan) -> BootPlan:
    rig = plan.rig
    mode = rig.cpu.mode if rig.cpu else "long"
    ranges = [(r.at, r.size) for r in rig.memory]  # (start, size), as paging expects
    need = x86.reserve_size(mode, ranges)
    if need == 0:
        state = _state(plan, x86.initial_state, mode, plan.entry, 0, ranges)
        return BootPlan(state, state.first_pc)
    start = _tables_spot(plan, need)
    if start % PAGE:
        raise RigError(f"cpu.tables_at {start:#x} must be 4 KiB aligned", rig.cpu.mark if rig.cpu else rig.mark)
    _check_free(plan, start, start + need)
    state = _state(plan, x86.initial_state, mode, plan.entry, start, ranges)
    return BootPlan(state, state.first_pc, list(state.writes), (start, start + need))


def _arm64(plan) -> BootPlan:
    rig = plan.rig
    gic = arm.GicLayout(rig.gic.distributor, rig.gic.redistributor, rig.gic.irqs) if rig.gic else None
    writes: list[tuple[int, bytes]] = []
    dtb = None
    if rig.wants_dtb:
        writes, dtb = plan_dtb(plan)
    state = arm.initial_state(plan.entry, dtb, gic, rig.cpus)
    return BootPlan(state, plan.entry, writes)


def plan_boot(plan) -> BootPlan:
    return {"x86_64": _x86, "arm64": _arm64}[plan.rig.arch](plan)
