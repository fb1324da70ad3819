"""From the rig's `cpu:` to the arch's initial CPU state and the memory the
runner must write for it (x86: GDT and identity page tables).

Where those tables go is documented and configurable (`cpu.tables_at`); by
default they take the top of the RAM region that holds address 0 (or else the
first RAM region), and an image that would overlap them is a rig error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmrig.arch.x86_64 import boot as x86
from kvmrig.errors import RigError
from kvmrig.machine.images import image_mark

PAGE = 0x1000
MULTIBOOT_TABLES = 0x9F000  # kvmrig's GDT for a multiboot kernel: below 640 KiB, where a BIOS keeps its EBDA


@dataclass
class BootPlan:
    state: Any                     # arch-specific initial state (kvmrig.arch.<arch>.boot)
    first_pc: int                  # address of the first instruction
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    reserved: tuple[int, int] | None = None  # [start, end) the runner owns (x86 tables)
    # arm64: the generated device tree without its PMU node, (address, bytes padded to the
    # tree's size), written over it when the backend gives the vCPUs no PMU (Session.start)
    dtb_without_pmu: tuple[int, bytes] | None = None


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
    boot = _x86_cpu(plan)
    rig = plan.rig
    boot.state.irqchip, boot.state.pit = rig.machine.irqchip, rig.machine.pit
    boot.state.cpuid = rig.cpu.cpuid if rig.cpu else None
    boot.state.cpus = rig.machine.cpus
    return boot


def _x86_cpu(plan) -> BootPlan:
    rig = plan.rig
    mode = rig.cpu.mode if rig.cpu else "long"
    ranges = [(r.at, r.size) for r in rig.memory]  # (start, size), as paging expects
    need = x86.reserve_size(mode, ranges)
    if need == 0:
        state = _state(plan, x86.initial_state, mode, plan.entry, 0, ranges)
        return BootPlan(state, state.first_pc)
    boot_mb = next((img for img in plan.images if img.multiboot), None)
    if boot_mb is not None and (rig.cpu is None or rig.cpu.tables_at is None) and \
            any(r.at <= MULTIBOOT_TABLES and MULTIBOOT_TABLES + need <= r.end and not r.rom for r in rig.memory):
        start = MULTIBOOT_TABLES
    else:
        start = _tables_spot(plan, need)
    if start % PAGE:
        raise RigError(f"cpu.tables_at {start:#x} must be 4 KiB aligned", rig.cpu.mark if rig.cpu else rig.mark)
    _check_free(plan, start, start + need)
    state = _state(plan, x86.initial_state, mode, plan.entry, start, ranges)
    writes = list(state.writes)
    if boot_mb is not None:
        writes += _multiboot_info(plan, boot_mb, state, start)
    kernel = next((img for img in plan.images if img.x86_linux is not None), None)
    if kernel is not None:
        writes += _linux_boot(plan, kernel, state, start)
    return BootPlan(state, state.first_pc, writes, (start, start + need))


LINUX_ZERO_PAGE = 0x7000   # where Firecracker-style loaders put boot_params
LINUX_CMDLINE = 0x20000


def _linux_boot(plan, kernel, state, tables_at: int) -> list[tuple[int, bytes]]:
    """The zero page, command line and initrd of a Linux 64-bit boot; RSI set."""
    from kvmrig.arch.x86_64 import linux   # each boot protocol is loaded by the rigs that use it

    rig, spec = plan.rig, kernel.image
    mark = image_mark(kernel)
    low = [r for r in rig.memory if r.at == 0 and not r.rom]
    if not low or low[0].end < LINUX_CMDLINE + 0x1000:
        raise RigError("a Linux boot needs RAM from address 0 (zero page at 0x7000, command line at 0x20000)", mark)
    bz = kernel.x86_linux if isinstance(kernel.x86_linux, linux.BzImage) else None
    cmdline = (spec.cmdline or "").encode() + b"\0"
    if bz is not None and len(cmdline) > bz.cmdline_size + 1:
        raise RigError(f"the command line is {len(cmdline) - 1} bytes; this kernel takes {bz.cmdline_size}", mark)
    writes = [(LINUX_CMDLINE, cmdline)]
    initrd = None
    if spec.initrd is not None:
        try:
            data = spec.initrd.read_bytes()
        except OSError as e:
            raise RigError(f"cannot read initrd {spec.initrd}: {e.strerror}", mark) from None
        top = min(tables_at, low[0].end, (bz.initrd_max + 1) if bz else 1 << 32)
        at = (top - len(data)) & ~(PAGE - 1)
        kernel_end = max(a + len(b) for a, b in kernel.segments)
        if at < max(kernel_end, LINUX_CMDLINE + PAGE):
            raise RigError(f"the initrd ({len(data)} bytes) does not fit between the kernel's end "
                           f"({kernel_end:#x}) and {top:#x}: add RAM", mark)
        writes.append((at, data))
        initrd = (at, len(data))
    regions = [(r.at, r.size, not r.rom) for r in rig.memory]
    writes.append((LINUX_ZERO_PAGE, linux.zero_page(bz.header if bz else None, regions, LINUX_CMDLINE, initrd)))
    state.gprs.update(rsi=LINUX_ZERO_PAGE)
    return writes


def _multiboot_info(plan, kernel, state, tables_at: int) -> list[tuple[int, bytes]]:
    """The multiboot information after the kernel's end; EAX/EBX set to find it."""
    from kvmrig.arch.x86_64 import multiboot

    rig, spec = plan.rig, kernel.image
    mark = image_mark(kernel)
    modules = []
    for mod in spec.modules:
        if mod.file is not None:
            try:
                data = mod.file.read_bytes()
            except OSError as e:
                raise RigError(f"cannot read multiboot module {mod.file}: {e.strerror}", mod.mark) from None
        else:
            data = mod.text or b""
        modules.append(multiboot.Module(data, mod.cmdline))
    end = max(addr + len(body) for img in plan.images for addr, body in img.segments)
    at = (end + PAGE - 1) & ~(PAGE - 1)
    regions = [(r.at, r.size, not r.rom) for r in rig.memory]
    cmdline = spec.cmdline if spec.cmdline is not None else str(spec.file.name if spec.file else "")
    info = multiboot.build_info(at, regions, cmdline, modules, lower_limit=tables_at)
    if not any(r.at <= at and info.end <= r.end and not r.rom for r in rig.memory):
        raise RigError(f"the multiboot information and modules ({at:#x}..{info.end:#x}) go after the kernel's end "
                       "and must fit in the same RAM region: add RAM", mark)
    state.gprs.update(rax=multiboot.BOOT_MAGIC, rbx=at)
    return info.writes


def _arm64(plan) -> BootPlan:
    from kvmrig.arch.arm64 import boot as arm
    from kvmrig.machine.devicetree import plan_dtb

    rig = plan.rig
    gic = arm.GicLayout(rig.gic.distributor, rig.gic.redistributor, rig.gic.irqs) if rig.gic else None
    writes: list[tuple[int, bytes]] = []
    dtb = without_pmu = None
    if rig.wants_dtb:
        writes, dtb, without_pmu = plan_dtb(plan)
    state = arm.initial_state(plan.entry, dtb, gic, rig.cpus)
    return BootPlan(state, plan.entry, writes, dtb_without_pmu=without_pmu)


def plan_boot(plan) -> BootPlan:
    return {"x86_64": _x86, "arm64": _arm64}[plan.rig.arch](plan)
