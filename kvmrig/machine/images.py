"""Images: raw files, inline hex and ELF files, placed into guest memory.

ELF files load their PT_LOAD segments at their physical addresses (bare-metal
convention: p_paddr is where the bytes live) and contribute symbols, which is
what makes `sym:name+off` work in any address field of the rig.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from kvmrig.errors import Mark, RigError
from kvmrig.rig.model import Address, Image, Rig

ELF_MAGIC = b"\x7fELF"


@dataclass
class LoadedImage:
    image: Image
    label: str
    segments: list[tuple[int, bytes]]
    entry: int | None = None
    symbols: dict[str, int] = field(default_factory=dict)
    multiboot: bool = False  # a Multiboot v1 kernel: the boot plan adds its information structure
    linux: object = None     # a Linux kernel: arch.x86_64.linux.BzImage, or True for a vmlinux ELF


def _read_file(image: Image) -> bytes:
    assert image.file is not None
    try:
        return image.file.read_bytes()
    except OSError as e:
        raise RigError(f"cannot read image {image.file}: {e.strerror}", image.file_mark or image.mark) from None


def _load_elf(image: Image, data: bytes) -> LoadedImage:
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
            body = seg.data() + bytes(seg["p_memsz"] - seg["p_filesz"])
            segments.append((seg["p_paddr"], body))
        symbols: dict[str, int] = {}
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection):
                continue
            for sym in sec.iter_symbols():
                kind = sym["st_info"]["type"]
                if sym.name and kind not in ("STT_SECTION", "STT_FILE") and sym["st_shndx"] != "SHN_UNDEF":
                    symbols.setdefault(sym.name, sym["st_value"])
        entry = elf.header["e_entry"]
    except (ELFError, KeyError, ValueError) as e:
        raise RigError(f"{label} is not a valid ELF file: {e}", image.file_mark or image.mark) from None
    if not segments:
        raise RigError(f"{label} has no loadable (PT_LOAD) segment", image.file_mark or image.mark)
    return LoadedImage(image, label, segments, entry, symbols)


def load_image(image: Image) -> LoadedImage:
    """Read one image into its segments (no placement checks yet)."""
    if image.data is not None:
        assert image.at is not None
        return LoadedImage(image, f"hex bytes at {image.at:#x}", [(image.at, image.data)])
    data = _read_file(image)
    if image.format == "multiboot":
        return _load_multiboot(image, data)
    if image.format == "linux":
        return _load_linux(image, data)
    if data[:4] == ELF_MAGIC and image.at is None and image.format != "raw":
        return _load_elf(image, data)
    if image.at is None:
        raise RigError(f"{image.file} is not an ELF file, so it needs `at:`", image.mark)
    return LoadedImage(image, str(image.file), [(image.at, data)])


def _load_multiboot(image: Image, data: bytes) -> LoadedImage:
    """A Multiboot v1 kernel: the a.out-kludge addresses of its header, else its ELF."""
    from kvmrig.arch.x86_64 import multiboot

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
    loaded = _load_elf(image, data)
    loaded.multiboot = True
    return loaded


def _load_linux(image: Image, data: bytes) -> LoadedImage:
    """A Linux kernel: a vmlinux ELF (segments at their physical addresses,
    entered at e_entry) or a bzImage (its protected-mode part at its load address)."""
    from kvmrig.arch.x86_64 import linux

    if data[:4] == ELF_MAGIC:
        loaded = _load_elf(image, data)
        loaded.linux = True
        return loaded
    try:
        bz = linux.parse_bzimage(data)
    except linux.LinuxImageError as e:
        raise RigError(f"{image.file}: {e}", image.file_mark or image.mark) from None
    return LoadedImage(image, str(image.file), [(bz.load_address, bz.kernel + bytes(max(0, bz.init_size - len(bz.kernel))))],
                       bz.entry, linux=bz)


class Symbols:
    """Every symbol of every ELF image, and `sym:` resolution with good errors."""

    def __init__(self, images: list[LoadedImage]):
        self.table: dict[str, int] = {}
        self.sources: list[str] = []
        for img in images:
            if img.symbols:
                self.sources.append(img.label)
            for name, value in img.symbols.items():
                self.table.setdefault(name, value)

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
            if value <= addr and (best is None or value > best[0]):
                best = (value, name)
        if best is None or addr - best[0] > 0x10000:
            return None
        off = addr - best[0]
        return best[1] + (f"+{off:#x}" if off else "")

    def _unknown(self, name: str) -> str:
        if not self.sources:
            return f"unknown symbol '{name}': no loaded image has symbols (only ELF images do)"
        close = difflib.get_close_matches(name, list(self.table), n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return f"unknown symbol '{name}' in {', '.join(self.sources)}{hint}"


def image_mark(img: LoadedImage) -> Mark:
    return img.image.file_mark or img.image.mark


def load_images(rig: Rig) -> list[LoadedImage]:
    return [load_image(image) for image in rig.images]


def check_placement(rig: Rig, images: list[LoadedImage]) -> None:
    """Every segment must lie inside one declared region."""
    regions = sorted(rig.memory, key=lambda r: r.at)
    for img in images:
        for addr, body in img.segments:
            end = addr + len(body)
            inside = [r for r in regions if r.at <= addr < r.end]
            if not inside:
                raise RigError(
                    f"image {img.label} ({addr:#x}..{end:#x}) lies outside memory; "
                    f"regions are {_describe(regions)}", image_mark(img))
            region = inside[0]
            if end > region.end:
                raise RigError(
                    f"image {img.label} ({addr:#x}..{end:#x}, {len(body)} bytes) is larger than "
                    f"its region {region.at:#x}..{region.end:#x}", image_mark(img))


def _describe(regions: list) -> str:
    if not regions:
        return "none"
    return ", ".join(f"{r.at:#x}..{r.end:#x}" for r in regions)
