"""Images: raw files, inline hex and ELF files, placed into guest memory.

ELF files load their PT_LOAD segments at their physical addresses (bare-metal
convention: p_paddr is where the bytes live) and contribute symbols, which is
what makes `sym:name+off` work in any address field of the rig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmrig.errors import Mark, RigError
from kvmrig.rig import hostfiles
from kvmrig.rig.model import DEFAULT_MODES, Address, Image, Rig

ELF_MAGIC = b"\x7fELF"


@dataclass
class LoadedImage:
    image: Image
    label: str
    segments: list[tuple[int, bytes]]
    entry: int | None = None
    symbols: dict[str, int] = field(default_factory=dict)
    elf_kind: tuple[str, str] | None = None   # ELF: (e_machine, EI_CLASS) as pyelftools names them
    data_spans: list[tuple[int, int]] = field(default_factory=list)   # ELF: [start, end) holding data, not code
    absolute: set[str] = field(default_factory=set)   # ELF: symbols that are numbers, not places (SHN_ABS)
    multiboot: bool = False  # a Multiboot v1 kernel: the boot plan adds its information structure
    x86_linux: object = None  # an x86 Linux kernel (format: linux): arch.x86_64.linux.BzImage, or True for a vmlinux ELF
    linux: Any = None   # an arm64 Linux Image: its header (kvmrig.arch.arm64.linux.ImageHeader)

    @property
    def span(self) -> tuple[int, int]:
        """[start, end) the image occupies, a Linux Image's BSS (image_size) included."""
        start = min(addr for addr, _ in self.segments)
        end = max(addr + len(body) for addr, body in self.segments)
        if self.linux is not None:
            end = max(end, start + self.linux.image_size)
        return start, end


# The ELF machines each arch runs (pyelftools' e_machine names) and, for each,
# the ELF class its code is built for.
ELF_MACHINES = {"x86_64": {"EM_X86_64": "ELFCLASS64", "EM_386": "ELFCLASS32"},
                "arm64": {"EM_AARCH64": "ELFCLASS64"}}


def check_elf_kind(img: LoadedImage, arch: str, mode: str) -> None:
    """An ELF built for another machine, or 32-bit code started in long mode,
    fails here at the image's line (else it fails later, as a confusing MMIO
    exit or a wild jump)."""
    if img.elf_kind is None:
        return
    machine, klass = img.elf_kind
    mark = img.image.file_mark or img.image.mark
    known = ELF_MACHINES[arch]
    if machine not in known:
        wants = " or ".join(known)
        raise RigError(f"{img.label} is an ELF for {machine} ({klass}), but the rig's arch is {arch} "
                       f"(which runs {wants})", mark)
    if arch == "x86_64" and mode == "long" and klass == "ELFCLASS32":
        raise RigError(f"{img.label} is a 32-bit ELF ({machine}), but cpu.mode is long (64-bit code): "
                       "link it as elf64-x86-64, or start in `protected` (or `real`) mode", mark)


def _read_file(image: Image, limit: int) -> bytes:
    """The image file's bytes: a regular file of at most `limit` bytes, checked
    before it is read (a raw image must fit one region; an ELF file's segments
    are checked one by one, so its file may be larger)."""
    assert image.file is not None
    try:
        return hostfiles.read_regular(image.file, limit, "image")
    except hostfiles.HostFileProblem as e:
        raise RigError(f"cannot use image: {e}", image.file_mark or image.mark) from None


def _load_elf(image: Image, data: bytes, limit: int) -> LoadedImage:
    import io

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    label = str(image.file)
    try:
        elf = ELFFile(io.BytesIO(data))
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            if seg["p_memsz"] > limit or seg["p_filesz"] > seg["p_memsz"]:  # checked before allocating it
                raise RigError(f"{label}: a PT_LOAD segment at {seg['p_paddr']:#x} of {seg['p_memsz']:#x} bytes "
                               f"(file part {seg['p_filesz']:#x}) does not fit in any memory region of the rig "
                               f"(largest {limit:#x} bytes)", image.file_mark or image.mark)
            body = seg.data() + bytes(seg["p_memsz"] - seg["p_filesz"])
            segments.append((seg["p_paddr"], body))
        symbols: dict[str, int] = {}
        absolute: set[str] = set()
        mapping: list[tuple[int, bool]] = []   # Arm ELF mapping symbols: ($x | $a | $t: code, $d: data) from here
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection):
                continue
            for name, value, kind, shndx in _raw_symbols(elf, sec):
                if not name or kind in (STT_SECTION, STT_FILE) or shndx == SHN_UNDEF:
                    continue
                if name[:1] == "$" and name[1:2] in ("x", "a", "t", "d") and name[2:3] in ("", "."):
                    mapping.append((value, name[1] != "d"))
                    continue
                symbols.setdefault(name, value)
                if shndx == SHN_ABS:
                    absolute.add(name)
        spans = _data_spans(elf, mapping)
        entry = elf.header["e_entry"]
    except (ELFError, KeyError, ValueError) as e:
        raise RigError(f"{label} is not a valid ELF file: {e}", image.file_mark or image.mark) from None
    if not segments:
        raise RigError(f"{label} has no loadable (PT_LOAD) segment", image.file_mark or image.mark)
    kind = (elf.header["e_machine"], "ELFCLASS64" if elf.elfclass == 64 else "ELFCLASS32")
    return LoadedImage(image, label, segments, entry, symbols, kind, spans, absolute)


STT_SECTION, STT_FILE = 3, 4
SHN_UNDEF, SHN_ABS = 0, 0xFFF1


def _raw_symbols(elf, sec):
    """(name, value, type, section index) of each entry of a symbol table,
    unpacked with struct: pyelftools' per-symbol parsing takes ~90 us a
    symbol, 4 s for a Linux kernel's 46,000 (minutes in an emulated lane)."""
    import struct

    order = "<" if elf.little_endian else ">"
    if elf.elfclass == 64:
        fmt, fields = order + "IBBHQQ", lambda e: (e[0], e[4], e[1] & 0xF, e[3])
    else:
        fmt, fields = order + "IIIBBH", lambda e: (e[0], e[1], e[3] & 0xF, e[5])
    size = struct.calcsize(fmt)
    data = sec.data()
    strtab = elf.get_section(sec["sh_link"]).data()
    for entry in struct.iter_unpack(fmt, data[:len(data) - len(data) % size]):
        name_at, value, kind, shndx = fields(entry)
        end = strtab.find(b"\0", name_at)
        name = strtab[name_at:end if end >= 0 else len(strtab)].decode("utf-8", "replace")
        yield name, value, kind, shndx


def _data_spans(elf, mapping: list[tuple[int, bool]]) -> list[tuple[int, int]]:
    """Where the ELF says data lies: allocated sections that are not executable,
    and, inside executable ones, the stretches a `$d` mapping symbol opens
    (arm64 literal pools; Arm ELF ABI, "Mapping symbols")."""
    SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
    spans = []
    marks = sorted(mapping)
    for sec in elf.iter_sections():
        flags, start, size = sec["sh_flags"], sec["sh_addr"], sec["sh_size"]
        if not flags & SHF_ALLOC or not size:
            continue
        end = start + size
        if not flags & SHF_EXECINSTR:
            spans.append((start, end))
            continue
        inside = [(a, code) for a, code in marks if start <= a < end]
        for i, (a, code) in enumerate(inside):
            if not code:
                spans.append((a, inside[i + 1][0] if i + 1 < len(inside) else end))
    return sorted(spans)


def _load_linux(image: Image, data: bytes, rig: Rig | None) -> LoadedImage:
    """An arm64 Linux Image: at `at`, or text_offset above the first 2 MiB
    boundary of the first RAM region; the entry is its first byte."""
    from kvmrig.arch.arm64 import linux

    header = linux.parse_header(data)
    if header.big_endian:
        raise RigError(f"{image.file} is a big-endian arm64 kernel; kvmrig's vCPUs run little-endian",
                       image.file_mark or image.mark)
    at = image.at
    if at is None:
        ram = sorted((r for r in (rig.memory if rig else ()) if not r.rom), key=lambda r: r.at)
        if not ram:
            raise RigError(f"{image.file} is an arm64 Linux Image, which goes into RAM: the rig has no RAM region",
                           image.file_mark or image.mark)
        at = header.load_address(ram[0].at)
    return LoadedImage(image, str(image.file), [(at, data)], entry=at, linux=header)


# The largest ELF file read (symbols and debug info make ELF files larger than
# what they load; segments are checked against the rig's memory one by one).
MAX_ELF_FILE = 1 << 30


def load_image(image: Image, rig: Rig | None = None) -> LoadedImage:
    """Read one image into its segments (no placement checks yet); nothing
    larger than the rig's largest memory region is read or allocated (an ELF
    file may be up to MAX_ELF_FILE: its segments are checked one by one)."""
    if image.data is not None:
        assert image.at is not None
        return LoadedImage(image, f"hex bytes at {image.at:#x}", [(image.at, image.data)])
    limit = max((r.size for r in rig.memory), default=0) if rig is not None else 1 << 48
    raw = image.at is not None or image.linux
    data = _read_file(image, limit if raw else max(limit, MAX_ELF_FILE))
    if image.format == "multiboot":
        return _load_multiboot(image, data, limit)
    if image.format == "linux":
        return _load_x86_linux(image, data, limit)
    if image.linux:
        return _load_linux(image, data, rig)
    if data[:4] == ELF_MAGIC and image.at is None and image.format != "raw":
        return _load_elf(image, data, limit)
    if image.at is None:
        raise RigError(f"{image.file} is not an ELF file, so it needs `at:`", image.mark)
    return LoadedImage(image, str(image.file), [(image.at, data)])


def _load_multiboot(image: Image, data: bytes, limit: int) -> LoadedImage:
    """A Multiboot v1 kernel: the a.out-kludge addresses of its header, else its ELF."""
    from kvmrig.arch.x86_64 import multiboot   # loaded by the rigs that need it: a run imports less

    mark = image.file_mark or image.mark
    try:
        header = multiboot.find_header(data)
        if header.aout:
            segments, entry = multiboot.aout_segments(data, header)
            return LoadedImage(image, str(image.file), segments, entry, multiboot=True)
    except multiboot.MultibootError as e:
        raise RigError(f"{image.file}: {e}", mark) from None
    if data[:4] != ELF_MAGIC:
        raise RigError(f"{image.file}: the multiboot header has no a.out kludge (flag bit 16) and the file is "
                       "not ELF, so kvmrig cannot tell where it loads", mark)
    loaded = _load_elf(image, data, limit)
    loaded.multiboot = True
    return loaded


def _load_x86_linux(image: Image, data: bytes, limit: int) -> LoadedImage:
    """An x86 Linux kernel: a vmlinux ELF (segments at their physical addresses,
    entered at e_entry) or a bzImage (its protected-mode part at its load address)."""
    from kvmrig.arch.x86_64 import linux

    if data[:4] == ELF_MAGIC:
        loaded = _load_elf(image, data, limit)
        loaded.x86_linux = True
        return loaded
    try:
        bz = linux.parse_bzimage(data)
    except linux.LinuxImageError as e:
        raise RigError(f"{image.file}: {e}", image.file_mark or image.mark) from None
    padded = bz.kernel + bytes(max(0, bz.init_size - len(bz.kernel)))   # it decompresses into init_size
    return LoadedImage(image, str(image.file), [(bz.load_address, padded)], bz.entry, x86_linux=bz)


class Symbols:
    """Every symbol of every ELF image, and `sym:` resolution with good errors."""

    def __init__(self, images: list[LoadedImage]):
        self.table: dict[str, int] = {}
        self.sources: list[str] = []
        self.absolute: set[str] = set()
        self.data_spans: list[tuple[int, int]] = []
        for img in images:
            if img.symbols:
                self.sources.append(img.label)
            for name, value in img.symbols.items():
                self.table.setdefault(name, value)
            self.absolute |= img.absolute
            self.data_spans.extend(img.data_spans)
        self.data_spans.sort()

    def data_end(self, addr: int) -> int | None:
        """The end of the data an ELF image says lies at `addr` (None: code, or nothing known)."""
        for start, end in self.data_spans:
            if start <= addr < end:
                return end
        return None

    def resolve(self, addr: Address) -> int:
        if addr.symbol is None:
            return addr.value or 0
        value = self.table.get(addr.symbol)
        if value is None:
            raise RigError(self._unknown(addr.symbol), addr.mark)
        return value + addr.offset

    def lookup(self, name: str) -> int | None:
        return self.table.get(name)

    def nearest(self, addr: int) -> str | None:
        """`name+0x12` for the closest symbol at or below addr (for reports)."""
        best: tuple[int, str] | None = None
        for name, value in self.table.items():
            if value <= addr and (best is None or value > best[0]) and name not in self.absolute:
                best = (value, name)
        if best is None or addr - best[0] > 0x10000:
            return None
        off = addr - best[0]
        return best[1] + (f"+{off:#x}" if off else "")

    def _unknown(self, name: str) -> str:
        if not self.sources:
            return f"unknown symbol '{name}': no loaded image has symbols (only ELF images do)"
        import difflib

        close = difflib.get_close_matches(name, list(self.table), n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return f"unknown symbol '{name}' in {', '.join(self.sources)}{hint}"


def image_mark(img: LoadedImage) -> Mark:
    return img.image.file_mark or img.image.mark


def load_images(rig: Rig) -> list[LoadedImage]:
    mode = rig.cpu.mode if rig.cpu is not None else DEFAULT_MODES[rig.arch]
    images = [load_image(image, rig) for image in rig.images]
    for img in images:
        check_elf_kind(img, rig.arch, mode)
    return images


def check_placement(rig: Rig, images: list[LoadedImage]) -> None:
    """Every segment must lie inside one declared region."""
    regions = sorted(rig.memory, key=lambda r: r.at)
    for img in images:
        spans = [(addr, len(body)) for addr, body in img.segments]
        if img.linux is not None:  # the kernel's BSS (image_size) must fit too
            spans = [(img.span[0], img.span[1] - img.span[0])]
        for addr, length in spans:
            end = addr + length
            inside = [r for r in regions if r.at <= addr < r.end]
            if not inside:
                raise RigError(
                    f"image {img.label} ({addr:#x}..{end:#x}) lies outside memory; "
                    f"regions are {_describe(regions)}", image_mark(img))
            region = inside[0]
            if end > region.end:
                what = " with its image_size" if img.linux is not None else ""
                raise RigError(
                    f"image {img.label}{what} ({addr:#x}..{end:#x}, {length} bytes) is larger than "
                    f"its region {region.at:#x}..{region.end:#x}", image_mark(img))


def _describe(regions: list) -> str:
    if not regions:
        return "none"
    return ", ".join(f"{r.at:#x}..{r.end:#x}" for r in regions)
