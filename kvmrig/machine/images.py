"""Images: raw files, inline hex and ELF files, placed into guest memory.

ELF files load their PT_LOAD segments at their physical addresses (bare-metal
convention: p_paddr is where the bytes live) and contribute symbols, which is
what makes `sym:name+off` work in any address field of the rig.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from kvmrig.errors import Mark, RigError
from kvmrig.rig import hostfiles
from kvmrig.rig.model import Address, Image, Rig

ELF_MAGIC = b"\x7fELF"


@dataclass
class LoadedImage:
    image: Image
    label: str
    segments: list[tuple[int, bytes]]
    entry: int | None = None
    symbols: dict[str, int] = field(default_factory=dict)


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


# The largest ELF file read (symbols and debug info make ELF files larger than
# what they load; segments are checked against the rig's memory one by one).
MAX_ELF_FILE = 1 << 30


def load_image(image: Image, limit: int = 1 << 48) -> LoadedImage:
    """Read one image into its segments (no placement checks yet); nothing
    larger than `limit` bytes (the largest memory region) is read or allocated."""
    if image.data is not None:
        assert image.at is not None
        return LoadedImage(image, f"hex bytes at {image.at:#x}", [(image.at, image.data)])
    data = _read_file(image, limit if image.at is not None else max(limit, MAX_ELF_FILE))
    if data[:4] == ELF_MAGIC and image.at is None:
        return _load_elf(image, data, limit)
    if image.at is None:
        raise RigError(f"{image.file} is not an ELF file, so it needs `at:`", image.mark)
    return LoadedImage(image, str(image.file), [(image.at, data)])


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
    limit = max((r.size for r in rig.memory), default=0)
    return [load_image(image, limit) for image in rig.images]


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
