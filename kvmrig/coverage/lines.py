"""What an image's code is made of: source lines (DWARF line tables),
functions (DWARF subprograms, else ELF function symbols) and the addresses
where KVM plants its one-shot coverage breakpoints.

Everything here is read once per image file and process (cached by path,
size and mtime): a worker runs many rigs that load the same firmware.

A source line counts as executed when an executed instruction lies in one of
its line-table rows, [row address, next row address); a zero-length row (two
lines at one address) counts when its address runs. The same rule maps every
backend's raw record (KVM's hit addresses, the emulator's blocks, a
single-step trace) to lines, so their line sets are comparable.
"""

from __future__ import annotations

import bisect
import io
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from kvmrig.errors import RigError

Range = tuple[int, int]   # [start, end) of guest-physical addresses


@dataclass(frozen=True, slots=True)
class Row:
    """One line-table row: the code in [addr, end) belongs to file:line."""

    addr: int
    end: int
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    lo: int
    hi: int
    file: str = ""      # "" when only the ELF symbol table knows it
    line: int = 0


@dataclass
class ImageCode:
    """The code of one loaded image, as coverage sees it (addresses are physical)."""

    label: str
    rows: list[Row] = field(default_factory=list)        # sorted by addr
    functions: list[Function] = field(default_factory=list)
    leaders: frozenset[int] = frozenset()                # where KVM plants: row starts and branch targets
    spans: list[Range] = field(default_factory=list)     # the image's bytes in guest memory

    def __post_init__(self) -> None:
        self._starts = [r.addr for r in self.rows]

    @property
    def has_lines(self) -> bool:
        return bool(self.rows)

    def contains(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self.spans)

    def all_lines(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for r in self.rows:
            out.setdefault(r.file, set()).add(r.line)
        return out

    def covered_rows(self, ranges: list[Range]) -> set[Row]:
        """The rows an executed range touches (module doc)."""
        rows, starts, hit = self.rows, self._starts, set()
        for lo, hi in ranges:
            i = max(bisect.bisect_left(starts, lo) - 1, 0)   # the row before lo may reach into it
            while i < len(rows) and rows[i].addr < hi:
                r = rows[i]
                if max(r.end, r.addr + 1) > lo:
                    hit.add(r)
                i += 1
        return hit

    def covered_lines(self, ranges: list[Range]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for r in self.covered_rows(ranges):
            out.setdefault(r.file, set()).add(r.line)
        return out

    def rows_in(self, lo: int, hi: int) -> list[Row]:
        """The rows that start in [lo, hi)."""
        i = bisect.bisect_left(self._starts, lo)
        j = bisect.bisect_left(self._starts, hi)
        return self.rows[i:j]

    def covered_functions(self, ranges: list[Range]) -> set[str]:
        return {f.name for f in self.functions if any(lo < f.hi and f.lo < hi for lo, hi in ranges)}


# Reading an ELF ---------------------------------------------------------------

_CACHE: dict[tuple[str, int, int], ImageCode] = {}


def image_code(path: Path, label: str | None = None) -> ImageCode:
    """The ImageCode of an ELF file (cached); RigError if it cannot be read."""
    try:
        st = path.stat()
    except OSError as e:
        raise RigError(f"cannot read image {path}: {e.strerror}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    code = _CACHE.get(key)
    if code is None:
        code = _CACHE[key] = read_elf(path.read_bytes(), label or str(path))
    return code


def read_elf(data: bytes, label: str) -> ImageCode:
    from elftools.common.exceptions import DWARFError, ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        loads = [(s["p_vaddr"], s["p_paddr"], s["p_memsz"], bool(s["p_flags"] & 1))
                 for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_memsz"]]

        def phys(vaddr: int) -> int | None:
            for v, p, size, _x in loads:
                if v <= vaddr < v + size:
                    return vaddr - v + p
            return None

        rows, functions = _dwarf(elf, phys) if elf.has_dwarf_info() else ([], [])
        if not functions:
            functions = _symbols(elf, phys)
        leaders = {r.addr for r in rows}
        if rows:
            leaders |= _branch_targets(elf, rows, phys)
        spans = [(p, p + size) for _v, p, size, _x in loads]
    except (ELFError, DWARFError, KeyError, ValueError, IndexError, AttributeError, TypeError,
            AssertionError, UnicodeError, OverflowError, EOFError) as e:   # pyelftools on a damaged file
        raise RigError(f"{label}: cannot read its debug information: {e}") from None
    return ImageCode(label, rows, functions, frozenset(leaders), spans)


def _file_table(lineprog, cu_die) -> list[str]:
    """File names of a line program, indexed as its rows index them, joined
    with their directory and the compile directory, as the compiler recorded them."""
    version = lineprog.header["version"]
    dirs = [d.decode(errors="replace") if isinstance(d, bytes) else d
            for d in lineprog.header["include_directory"]]
    comp = cu_die.attributes.get("DW_AT_comp_dir")
    comp_dir = comp.value.decode(errors="replace") if comp is not None else ""
    if version < 5:
        dirs = [comp_dir] + dirs      # DWARF 2-4: directory 0 is the compile directory
    names = []
    for entry in lineprog.header["file_entry"]:
        name = entry.name.decode(errors="replace") if isinstance(entry.name, bytes) else entry.name
        d = dirs[entry.dir_index] if entry.dir_index < len(dirs) else ""
        if not posixpath.isabs(d):
            d = posixpath.join(comp_dir, d)
        names.append(posixpath.normpath(posixpath.join(d, name)))
    return ([""] + names) if version < 5 else names   # DWARF 2-4 count files from 1


def _dwarf(elf, phys) -> tuple[list[Row], list[Function]]:
    dwarf = elf.get_dwarf_info()
    rows: list[Row] = []
    functions: list[Function] = []
    for cu in dwarf.iter_CUs():
        top = cu.get_top_DIE()
        lineprog = dwarf.line_program_for_CU(cu)
        if lineprog is None:
            continue
        files = _file_table(lineprog, top)
        seq: list = []
        for entry in lineprog.get_entries():
            state = entry.state
            if state is None:
                continue
            if state.end_sequence:
                seq.append((state.address, None, 0))
                rows.extend(_rows_of(seq, phys))
                seq = []
            else:
                file = files[state.file] if 0 <= state.file < len(files) else "?"
                seq.append((state.address, file, state.line))
        for die in top.iter_children():
            if die.tag != "DW_TAG_subprogram" or "DW_AT_low_pc" not in die.attributes:
                continue
            lo = die.attributes["DW_AT_low_pc"].value
            high = die.attributes.get("DW_AT_high_pc")
            if high is None:
                continue
            hi = high.value if high.form == "DW_FORM_addr" else lo + high.value
            name_attr = die.attributes.get("DW_AT_name")
            p = phys(lo)
            if name_attr is None or p is None:
                continue
            name = name_attr.value.decode(errors="replace")
            line = die.attributes["DW_AT_decl_line"].value if "DW_AT_decl_line" in die.attributes else 0
            functions.append(Function(name, p, p + (hi - lo), "", line))
    rows.sort(key=lambda r: (r.addr, r.end))
    # A function's file is the one its first row names (DW_AT_decl_file indexes per CU).
    starts = [r.addr for r in rows]
    named = []
    for f in functions:
        i = bisect.bisect_right(starts, f.lo) - 1
        row = rows[i] if i >= 0 and rows[i].addr <= f.lo < max(rows[i].end, rows[i].addr + 1) else None
        named.append(Function(f.name, f.lo, f.hi, row.file if row else "", f.line or (row.line if row else 0)))
    return rows, named


def _rows_of(seq: list, phys) -> list[Row]:
    out = []
    for (addr, file, line), (nxt, _f, _l) in zip(seq, seq[1:]):
        p = phys(addr)
        if p is None or file is None or line == 0:
            continue   # line 0: code the compiler made that belongs to no source line
        out.append(Row(p, p + (nxt - addr), file, line))
    return out


def _symbols(elf, phys) -> list[Function]:
    from elftools.elf.sections import SymbolTableSection
    out: dict[int, Function] = {}
    for sec in elf.iter_sections():
        if not isinstance(sec, SymbolTableSection):
            continue
        for sym in sec.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
                continue
            p = phys(sym["st_value"])
            if p is not None and p not in out:
                out[p] = Function(sym.name, p, p + max(sym["st_size"], 1))
    return sorted(out.values(), key=lambda f: f.lo)


def _branch_targets(elf, rows: list[Row], phys) -> set[int]:
    """Direct jump targets inside the line-covered code: control can enter a
    row in its middle there, so KVM plants there too (basic-block leaders)."""
    import capstone
    machine = elf.header["e_machine"]
    if machine == "EM_X86_64":
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    elif machine == "EM_386":
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    elif machine == "EM_AARCH64":
        md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    else:
        return set()
    md.detail = True
    row_addrs = {r.addr for r in rows}
    lo_all, hi_all = rows[0].addr, max(r.end for r in rows)
    targets: set[int] = set()
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_PROGBITS" or not sec["sh_flags"] & 0x4:   # SHF_EXECINSTR
            continue
        base = phys(sec["sh_addr"])
        if base is None:
            continue
        for insn in md.disasm(sec.data(), base):
            if not insn.group(capstone.CS_GRP_JUMP):
                continue
            for op in insn.operands:
                if op.type == 2 and lo_all <= op.imm < hi_all and op.imm not in row_addrs:  # 2: CS_OP_IMM
                    targets.add(op.imm)
    return targets
