"""The failure report: where the guest stopped, what it was executing, and the
whole register state, so a failed rig can be read without re-running it."""

from __future__ import annotations

from collections.abc import Callable

from kvmrig.arch.traits import traits

ReadMem = Callable[[int, int], bytes]
WINDOW = 48     # bytes disassembled from the stop address
LINES = 6       # instructions shown


def _x86_mode(regs: dict[str, int]) -> int:
    from capstone import CS_MODE_16, CS_MODE_32, CS_MODE_64
    if regs.get("efer", 0) & (1 << 10):      # EFER.LMA: long mode (64-bit code assumed)
        return CS_MODE_64
    if regs.get("cr0", 0) & 1:               # CR0.PE
        return CS_MODE_32
    return CS_MODE_16


def _disassembler(arch: str, regs: dict[str, int]):
    import capstone
    if arch == "x86_64":
        return capstone.Cs(capstone.CS_ARCH_X86, _x86_mode(regs))
    return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)


def disassemble(arch: str, regs: dict[str, int], pc: int, read: ReadMem, symbols=None) -> list[str]:
    """A few instructions from `pc` (linear = physical, as in kvmrig's identity maps),
    each with its symbol (`<_start+0xc>`) when the images have symbols; what an
    ELF says is data (arm64 literal pools, .rodata) shown as data, not decoded."""
    data = b""
    for size in (WINDOW, 16, 4):
        try:
            data = read(pc, size)
            break
        except LookupError:
            continue
    note = []
    if not data and arch == "x86_64":   # a kernel's virtual address: through the guest's page tables
        data, note = _through_page_tables(regs, pc, read)
    if not data:
        return [f"   {pc:#x}: <not in guest memory>"]
    try:
        md = _disassembler(arch, regs)
    except Exception as e:  # capstone missing or broken: the rest of the report still helps
        return [f"   {pc:#x}: {data[:16].hex(' ')} (no disassembler: {e})"]
    unit = 4 if arch == "arm64" else 1
    out = []
    off = 0
    while off < len(data) and len(out) < LINES:
        addr = pc + off
        marker = "=>" if addr == pc else "  "
        where = f"{addr:#x}" + (f" <{name}>" if symbols is not None and (name := symbols.nearest(addr)) else "")
        end = symbols.data_end(addr) if symbols is not None else None
        if end is not None:   # data: shown a word (arm64) or up to 8 bytes (x86) a line
            chunk = data[off:min(end - pc, len(data), off + (4 if unit == 4 else 8))]
            if not chunk:
                break
            shown = (f".word {int.from_bytes(chunk, 'little'):#010x}" if len(chunk) == 4 and unit == 4
                     else ".byte " + ", ".join(f"{b:#04x}" for b in chunk))
            out.append(f"{marker} {where}: {chunk.hex(' '):24} {shown}")
            off += len(chunk)
            continue
        insn = next(md.disasm(data[off:], addr, 1), None)
        if insn is None:
            break
        out.append(f"{marker} {where}: {insn.bytes.hex(' '):24} {insn.mnemonic} {insn.op_str}".rstrip())
        off += insn.size
    return note + (out or [f"   {pc:#x}: {data[:16].hex(' ')} (does not decode)"])


def _through_page_tables(regs: dict[str, int], pc: int, read: ReadMem) -> tuple[bytes, list[str]]:
    """(the code at linear `pc` as the guest's paging maps it, a line saying
    where), or (b"", []) without paging or a mapping."""
    from kvmrig.arch.x86_64.paging import translate
    if not regs.get("cr0", 0) & (1 << 31):
        return b"", []
    phys = translate(pc, regs.get("cr3", 0), lambda pa: int.from_bytes(read(pa, 8), "little"),
                     la57=bool(regs.get("cr4", 0) & (1 << 12)))
    if phys is None:
        return b"", []
    for size in (min(WINDOW, 0x1000 - (phys & 0xFFF)), 4):
        try:
            return read(phys, size), [f"   (linear {pc:#x} is physical {phys:#x} in the guest's page tables)"]
        except LookupError:
            continue
    return b"", []


def register_dump(arch: str, regs: dict[str, int]) -> list[str]:
    names = [n for n in regs if not n.startswith("v") or arch != "arm64"]
    cells = [f"{n:>7} {regs[n]:#018x}" for n in names if isinstance(regs[n], int)]
    return ["  " + "  ".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]


def stop_report(arch: str, regs: dict[str, int], stop_pc: int | None, read: ReadMem,
                trace_tail: list[int], symbols=None) -> list[str]:
    """Lines for a failed rig's report: code at the stop, registers, last addresses."""
    lines: list[str] = []
    pc = stop_pc
    if pc is None:
        pc = regs.get(traits(arch).pc)
        if arch == "x86_64" and pc is not None:
            pc += regs.get("cs_base", 0)
    if pc is not None:
        lines.append(f"code at {pc:#x}:")
        lines += disassemble(arch, regs, pc, read, symbols)
    if regs:
        lines.append("registers:")
        lines += register_dump(arch, regs)
    if trace_tail:
        lines.append("last executed: " + " ".join(f"{a:#x}" for a in trace_tail))
    return lines
