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

import functools

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
RFLAGS_TF, RFLAGS_IF, RFLAGS_AC = 1 << 8, 1 << 9, 1 << 18   # SDM vol.1 3.4.3
# EFER bits a CPU may define (SDM vol.3 2.2.1, AMD APM vol.2 3.1.7): SCE, LME, LMA,
# NXE, SVME, LMSLE, FFXSR, TCE, AutoIBRS; KVM refuses the others (EINVAL).
EFER_DEFINED = sum(1 << b for b in (0, 8, 10, 11, 12, 13, 14, 15, 21))

# KVM on x86 needs 16 KiB of guest-physical space below 4 GiB that no memory
# slot covers, for the TSS (3 pages) and the EPT identity-map page; the first
# hole among these candidates is used (the top one is where QEMU puts them).
SYSTEM_PAGES = 4 * 0x1000
SYSTEM_CANDIDATES = (0xFEFFC000, 0xFEFFC000 - 0x1000000, 0xD0000000, 0xB0000000, 0x90000000)


def system_area(regions: list[tuple[int, int]]) -> int | None:
    """The start of KVM's 16 KiB system area for these [start, end) regions, or None."""
    for start in SYSTEM_CANDIDATES:
        end = start + SYSTEM_PAGES
        if all(end <= lo or start >= hi for lo, hi in regions):
            return start
    return None


def control_problem(cr0: int, cr4: int, efer: int, long_cs: bool | None = None) -> str | None:
    """Why KVM_SET_SREGS would refuse these control registers (EINVAL), or None.
    The CPU-independent rules of KVM's kvm_is_valid_sregs/kvm_is_valid_cr0; with
    `long_cs` (CS.L of the state) also the rules that tie CR0, CR4 and EFER."""
    if cr0 >> 32:
        return f"cr0 {cr0:#x} sets bits 63:32, which are reserved"
    if cr4 >> 32:
        return f"cr4 {cr4:#x} sets bits 63:32, which are reserved"
    if efer & ~EFER_DEFINED:
        return f"efer {efer:#x} sets reserved bits {efer & ~EFER_DEFINED:#x}"
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        return f"cr0 {cr0:#x} sets NW (bit 29) without CD (bit 30)"
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        return f"cr0 {cr0:#x} sets PG (paging) without PE (protection)"
    if long_cs is None:
        return None
    if efer & EFER_LME and cr0 & CR0_PG:
        if not cr4 & CR4_PAE:
            return f"long mode (efer.LME and cr0.PG) needs cr4.PAE, and cr4 is {cr4:#x}"
        if not efer & EFER_LMA:
            return f"long mode (efer.LME and cr0.PG) needs efer.LMA, and efer is {efer:#x}"
    elif efer & EFER_LMA or long_cs:
        return (f"cr0 {cr0:#x} and efer {efer:#x} are not long mode (it needs efer.LME and cr0.PG), "
                "but " + ("efer.LMA is set" if efer & EFER_LMA else "the 64-bit code segment of cpu.mode long is"))
    return None


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
    even when unused (SDM vol.3 26.3.1.2). A new dict per call; the Segments
    in it are shared between calls (every rig in real mode boots with the
    same few: building them cost ~17 us a rig), and nobody changes one."""
    return dict(_shared_real_segments(cs_selector, cs_base))


@functools.lru_cache(maxsize=64)
def _shared_real_segments(cs_selector: int, cs_base: int) -> dict[str, gdt.Segment]:
    cs = gdt.real_mode_segment(cs_selector, code=True)
    segs = {"cs": gdt.Segment(**{**cs.__dict__, "base": cs_base})}
    for name in ("ds", "es", "fs", "gs", "ss"):
        segs[name] = gdt.real_mode_segment(0)
    segs["tr"] = gdt.Segment(base=0, limit=0xFFFF, selector=0, type=gdt.TYPE_TSS_BUSY, present=1,
                             dpl=0, db=0, s=0, l=0, g=0, avl=0)
    segs["ldt"] = gdt.ldt_none()
    return segs


def _flat_segments(code_selector: int, tss_base: int) -> dict[str, gdt.Segment]:
    """Flat protected/long-mode segments: a new dict of shared Segments, as
    _real_segments."""
    return dict(_shared_flat_segments(code_selector, tss_base))


@functools.lru_cache(maxsize=64)
def _shared_flat_segments(code_selector: int, tss_base: int) -> dict[str, gdt.Segment]:
    segs = {"cs": gdt.segment(code_selector)}
    for name in ("ds", "es", "fs", "gs", "ss"):
        segs[name] = gdt.segment(gdt.DATA)
    segs["tr"] = gdt.tss_segment(tss_base)
    segs["ldt"] = gdt.ldt_none()
    return segs


# Pure functions of their arguments, asked with the same ones rig after rig
# (bytes: safe to share).
_flat_gdt = functools.lru_cache(maxsize=64)(gdt.flat_gdt)


@functools.lru_cache(maxsize=64)
def _identity_tables(at: int, ranges: tuple[tuple[int, int], ...]) -> tuple[bytes, int]:
    return paging.identity_tables(at, list(ranges))


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
    table = _flat_gdt(tss_base)
    gdtr = (tables_at, len(table) - 1)
    writes = [(tables_at, table)]
    if mode == "protected":
        if entry >= 1 << 32:
            raise ValueError(f"protected mode cannot start at {entry:#x}: the entry must be below 4 GiB")
        return X86State("protected", entry, entry, _flat_segments(gdt.CODE32, tss_base),
                        cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE, cr4=CR4_OSFXSR | CR4_OSXMMEXCPT,
                        gdt=gdtr, idt=(0, 0), writes=writes)
    if mode == "long":
        tables, cr3 = _identity_tables(tables_at + GDT_SIZE, tuple(identity_ranges(ranges)))
        writes.append((tables_at + GDT_SIZE, tables))
        return X86State("long", entry, entry, _flat_segments(gdt.CODE64, tss_base),
                        cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG, cr3=cr3,
                        cr4=CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT, efer=EFER_LME | EFER_LMA,
                        gdt=gdtr, idt=(0, 0), writes=writes)
    raise ValueError(f"unknown x86 mode {mode!r}")
