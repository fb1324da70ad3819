"""Initial x86 CPU states for the rig's `cpu.mode`, as pure data.

Memory ranges are (start, size) pairs throughout, as kvmrig.arch.x86_64.paging takes them.

reset:     the power-on state (SDM vol.3 9.1.4): CS selector 0xf000 with base
           0xffff0000, IP 0xfff0, so the first fetch is at 0xfffffff0.
real:      16-bit real mode; CS derived from the entry (entry < 1 MiB).
protected: 32-bit flat segments from kvmrig's GDT, paging off.
long:      64-bit mode; GDT plus identity page tables (2 MiB pages) over every
           declared region and at least the low 4 GiB.
Backends (KVM and the emulator) both load this state, so the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmrig.arch.x86_64 import gdt, paging

GDT_SIZE = 0x1000            # one page holds kvmrig's GDT and its TSS
LOW_4G = (0, 1 << 32)        # (start, size)

# SDM vol.3 2.5 control register bits.
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_NW, CR0_CD, CR0_PG = (
    1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 29, 1 << 30, 1 << 31)
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
RFLAGS_RESERVED = 0x2        # bit 1 is always 1


@dataclass
class X86State:
    mode: str
    rip: int
    first_pc: int
    segments: dict[str, gdt.Segment]
    cr0: int
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    rflags: int = RFLAGS_RESERVED
    gdt: tuple[int, int] = (0, 0xFFFF)   # (base, limit)
    idt: tuple[int, int] = (0, 0xFFFF)
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    gprs: dict[str, int] = field(default_factory=dict)  # general registers at entry (e.g. multiboot EAX/EBX)
    irqchip: bool = False        # in-kernel PIC/IOAPIC/LAPIC (rig `machine:`)
    pit: bool = False            # in-kernel 8254
    cpuid: object = None         # rig.model.Cpuid: edits to the CPUID KVM reports
    cpus: int = 1                # vCPUs; the others wait for the guest's INIT/SIPI


def _real_segments(cs_selector: int, cs_base: int) -> dict[str, gdt.Segment]:
    """Real-mode segments (64 KiB limits); TR and LDTR valid for VM entry
    even when unused (SDM vol.3 26.3.1.2)."""
    cs = gdt.real_mode_segment(cs_selector, code=True)
    segs = {"cs": gdt.Segment(**{**cs.__dict__, "base": cs_base})}
    for name in ("ds", "es", "fs", "gs", "ss"):
        segs[name] = gdt.real_mode_segment(0)
    segs["tr"] = gdt.Segment(base=0, limit=0xFFFF, selector=0, type=gdt.TYPE_TSS_BUSY, present=1,
                             dpl=0, db=0, s=0, l=0, g=0, avl=0)
    segs["ldt"] = gdt.ldt_none()
    return segs


def _flat_segments(code_selector: int, tss_base: int) -> dict[str, gdt.Segment]:
    segs = {"cs": gdt.segment(code_selector)}
    for name in ("ds", "es", "fs", "gs", "ss"):
        segs[name] = gdt.segment(gdt.DATA)
    segs["tr"] = gdt.tss_segment(tss_base)
    segs["ldt"] = gdt.ldt_none()
    return segs


def identity_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [LOW_4G, *ranges]


def reserve_size(mode: str, ranges: list[tuple[int, int]]) -> int:
    """Bytes of guest RAM the runner needs for this mode's tables (0: none)."""
    if mode == "long":
        return GDT_SIZE + paging.tables_size(identity_ranges(ranges))
    if mode == "protected":
        return GDT_SIZE
    return 0


def initial_state(mode: str, entry: int, tables_at: int, ranges: list[tuple[int, int]]) -> X86State:
    """The state for `mode`; `tables_at` is where reserve_size() bytes are free."""
    if mode == "reset":
        segs = _real_segments(0xF000, 0xFFFF0000)
        return X86State("reset", 0xFFF0, 0xFFFFFFF0, segs, cr0=CR0_CD | CR0_NW | CR0_ET)
    if mode == "real":
        if entry >= 0x100000:
            raise ValueError(f"real mode cannot start at {entry:#x}: the entry must be below 1 MiB")
        cs = (entry >> 4) & 0xF000
        return X86State("real", entry - (cs << 4), entry, _real_segments(cs, cs << 4), cr0=CR0_ET)
    tss_base = tables_at + gdt.FLAT_GDT_SIZE  # a zeroed TSS right after the GDT, same page
    table = gdt.flat_gdt(tss_base)
    gdtr = (tables_at, len(table) - 1)
    writes = [(tables_at, table)]
    if mode == "protected":
        if entry >= 1 << 32:
            raise ValueError(f"protected mode cannot start at {entry:#x}: the entry must be below 4 GiB")
        return X86State("protected", entry, entry, _flat_segments(gdt.CODE32, tss_base),
                        cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE, cr4=CR4_OSFXSR | CR4_OSXMMEXCPT,
                        gdt=gdtr, idt=(0, 0), writes=writes)
    if mode == "long":
        tables, cr3 = paging.identity_tables(tables_at + GDT_SIZE, identity_ranges(ranges))
        writes.append((tables_at + GDT_SIZE, tables))
        return X86State("long", entry, entry, _flat_segments(gdt.CODE64, tss_base),
                        cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG, cr3=cr3,
                        cr4=CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT, efer=EFER_LME | EFER_LMA,
                        gdt=gdtr, idt=(0, 0), writes=writes)
    raise ValueError(f"unknown x86 mode {mode!r}")
