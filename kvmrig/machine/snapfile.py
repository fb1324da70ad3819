"""Snapshot files: a machine's state written down, to start rigs from later.

Format (version 2), one file:

    KVMRIG-SNAPSHOT 2\\n
    <header length in bytes, decimal>\\n
    <header: JSON text, indented; registers as text>
    <memory: per region, its non-zero pages zlib-compressed, one region after the other>

The header records the format version, the kvmrig version that wrote it, the
arch, the backend whose CPU state it holds (that state's own shape: for KVM
x86_64 every kvm_regs/kvm_sregs field by name, MSRs by index, and the opaque
XSAVE/XCR/debug/event blobs in hex), where it came from (rig and point), the
machine (`machine`: the vCPU count and the GIC's version and layout, or null;
the CPU state holds vCPU 0's and each other vCPU's, in `cpu.aps` on x86_64
and `cpu.secondaries` on arm64), and the memory map: per region its address,
size, ROM flag, the runs of pages that are not all zero (offset, length; the
rest of the region is zero), and where their compressed bytes are, with a
SHA-256 of those bytes uncompressed.

Loading checks everything before it is used: a file from another format
version, arch, backend or memory map, a truncated file or a corrupt one is a
SnapshotError naming the file and the mismatch, never a wrong run.

Version 2 added `machine`, so a child whose machine differs is refused
before it runs. Version 1 files (one vCPU, no GIC: all kvmrig could save
then) are still read, as such. Version 3 is version 2 with what a version
2 reader would drop silently: `ending`, the run was ending as the point was
saved (another vCPU's exit, triple fault, ... handled while the machine was
being stopped for it): `{cpu, exit, code, detail}`, which a child ends with
before running (Session); and an x86 AP's `pending` write (its run ended
before the machine handled it; a child's device sees it first). Only such
files are written as version 3, so a kvmrig that cannot honour them refuses
them instead of running on past them.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmrig import __version__
from kvmrig.errors import SnapshotError

MAGIC = b"KVMRIG-SNAPSHOT"
VERSION = 2
ENDING_VERSION = 3   # version 2 plus `ending` (written only when there is one)
READS = (1, 2, 3)   # version 1 is version 2 without `machine` (one vCPU, no GIC)
ONE_CPU: dict[str, Any] = {"cpus": 1, "gic": None}
LEVEL = 1   # zlib level: guest RAM is mostly zeros, fast beats small


@dataclass
class Snapshot:
    """What a snapshot file holds. `memory` is [(at, size, rom, runs)], runs
    being [(offset, bytes)] of the region's non-zero pages (all else zero);
    `cpu` is the backend's state as text (export_cpu/import_cpu)."""

    arch: str
    backend: str
    memory: list[tuple[int, int, bool, list[tuple[int, bytes]]]]
    cpu: dict[str, Any]
    origin: dict[str, str] = field(default_factory=dict)   # rig, point, ...
    devices: list[dict[str, Any]] = field(default_factory=list)   # each device's spec and state
    machine: dict[str, Any] = field(default_factory=lambda: dict(ONE_CPU))   # vCPUs and GIC (check_machine)
    ending: dict[str, Any] | None = None   # how the run was ending as it was saved (module doc), or None

    @property
    def cpus(self) -> int:
        return self.machine["cpus"]

    def memory_map(self) -> list[tuple[int, int, bool]]:
        return [(at, size, rom) for at, size, rom, _ in self.memory]


def write(path: str | Path, snap: Snapshot) -> None:
    """Write `snap` to `path` (a temporary file renamed over it: a reader never
    sees half a snapshot, and an existing non-regular file is refused)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise SnapshotError(f"{path}: exists and is not a regular file; not replacing it")
    blobs, regions, offset = [], [], 0
    for at, size, rom, runs in snap.memory:
        if any(off < 0 or off + len(data) > size for off, data in runs):
            raise SnapshotError(f"region {at:#x}: a run of bytes lies outside its size {size:#x}")
        data = b"".join(data for _off, data in runs)
        packed = zlib.compress(data, LEVEL)
        regions.append({"at": hex(at), "size": hex(size), "rom": rom,
                        "runs": [f"{off:#x}+{len(d):#x}" for off, d in runs], "offset": offset,
                        "length": len(packed), "sha256": hashlib.sha256(data).hexdigest()})
        blobs.append(packed)
        offset += len(packed)
    version = ENDING_VERSION if snap.ending is not None or _has_pending(snap.cpu) else VERSION
    header = {"format": version, "kvmrig": __version__, "arch": snap.arch, "backend": snap.backend,
              "origin": snap.origin, "machine": snap.machine, "memory": regions, "devices": snap.devices,
              "cpu": snap.cpu}
    if snap.ending is not None:
        header["ending"] = snap.ending
    text = json.dumps(header, indent=1).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + b" %d\n%d\n" % (version, len(text)))
            f.write(text)
            for blob in blobs:
                f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Header:
    """What a snapshot says about itself, without its memory (rig loading)."""

    arch: str
    backend: str
    memory_map: list[tuple[int, int, bool]]
    devices: list[dict[str, Any]]
    origin: dict[str, str]
    irqchip: bool = False   # taken with the in-kernel irqchip (rig `machine:`)
    pit: bool = False
    machine: dict[str, Any] = field(default_factory=lambda: dict(ONE_CPU))   # vCPUs and GIC

    @property
    def cpus(self) -> int:
        return self.machine["cpus"]


def read_header(path: str | Path) -> Header:
    """The checked header of a snapshot file (its memory is not read)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            first, _, rest = head.partition(b"\n")
            size_line = rest.partition(b"\n")[0]
            raw = head
            if size_line.isdigit():
                raw += f.read(int(size_line) + len(first) + len(size_line) + 2 - len(head))
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read the snapshot: {e.strerror}") from None
    header, regions, _body = _parse(path, raw, memory=False)
    chips = header["cpu"].get("vm_blobs")
    chips = chips if isinstance(chips, dict) else {}
    return Header(header["arch"], header["backend"], [(at, size, rom) for at, size, rom, *_r in regions],
                  header.get("devices", []), header.get("origin", {}), "pic_master" in chips, "pit2" in chips,
                  header["machine"])


def read(path: str | Path, arch: str | None = None, backend: str | None = None,
         memory_map: list[tuple[int, int, bool]] | None = None) -> Snapshot:
    """Read and check a snapshot; `arch`, `backend` and `memory_map` (if given)
    must match what it records."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SnapshotError(f"{path}: cannot read the snapshot: {e.strerror}") from None
    header, regions, body = _parse(path, raw, memory=True)
    snap_arch, snap_backend = header["arch"], header["backend"]
    if arch is not None and snap_arch != arch:
        raise SnapshotError(f"{path}: the snapshot is of an {snap_arch} machine; this rig is {arch}")
    if backend is not None and snap_backend != backend and "arch" not in header["cpu"]:
        raise SnapshotError(f"{path}: the snapshot holds {snap_backend} CPU state; this run uses the {backend} "
                            "backend, which cannot load it (the snapshot has no registers by name for another "
                            "backend: take it again with this kvmrig)")
    found = [(at, size, rom) for at, size, rom, *_r in regions]
    if memory_map is not None and sorted(found) != sorted(memory_map):
        raise SnapshotError(f"{path}: the snapshot's memory map {_describe(found)} is not the rig's "
                            f"{_describe(memory_map)}")
    memory = []
    for at, size, rom, offset, n, digest, spans in regions:
        if offset + n > len(body):
            raise SnapshotError(f"{path}: truncated snapshot: region {at:#x} needs bytes up to "
                                f"{offset + n} of the memory section, which has {len(body)}")
        try:
            data = zlib.decompress(body[offset:offset + n])
        except zlib.error as e:
            raise SnapshotError(f"{path}: corrupt snapshot: region {at:#x} does not decompress ({e})") from None
        if len(data) != sum(k for _o, k in spans) or hashlib.sha256(data).hexdigest() != digest \
                or any(o < 0 or o + k > size for o, k in spans):
            raise SnapshotError(f"{path}: corrupt snapshot: region {at:#x} does not match its SHA-256")
        runs, pos = [], 0
        for o, k in spans:
            runs.append((o, data[pos:pos + k]))
            pos += k
        memory.append((at, size, rom, runs))
    return Snapshot(snap_arch, snap_backend, memory, header["cpu"], header.get("origin", {}),
                    header.get("devices", []), header["machine"], header.get("ending"))


def _parse(path: Path, raw: bytes, memory: bool) -> tuple[dict, list, bytes]:
    """(header, regions, memory section) of a snapshot's bytes, checked."""
    first, _, rest = raw.partition(b"\n")
    words = first.split(b" ")
    if len(words) != 2 or words[0] != MAGIC:
        raise SnapshotError(f"{path}: not a kvmrig snapshot (it does not start with {MAGIC.decode()})")
    if words[1] not in [str(v).encode() for v in READS]:
        raise SnapshotError(f"{path}: snapshot format version {words[1].decode(errors='replace')}; this "
                            f"kvmrig ({__version__}) reads versions {', '.join(map(str, READS))}: take the "
                            "snapshot again")
    version = int(words[1])
    size_line, _, rest = rest.partition(b"\n")
    if not size_line.isdigit():
        raise SnapshotError(f"{path}: corrupt snapshot: the header length is missing")
    length = int(size_line)
    if len(rest) < length:
        raise SnapshotError(f"{path}: truncated snapshot: the header needs {length} bytes, "
                            f"the file has {len(rest)} after the first lines")
    try:
        header = json.loads(rest[:length])
    except (ValueError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path}: corrupt snapshot header: {e}") from None
    body = rest[length:]
    try:
        for key in ("arch", "backend"):   # required: the caller checks them against the rig
            if not isinstance(header[key], str):
                raise TypeError(key)
        regions = [(int(r["at"], 16), int(r["size"], 16), bool(r["rom"]), int(r["offset"]), int(r["length"]),
                    r["sha256"], [_run(x) for x in r["runs"]]) for r in header["memory"]]
        cpu, origin = header["cpu"], header.get("origin", {})
        devices = header.get("devices", [])
        if not isinstance(cpu, dict) or not isinstance(origin, dict) or not all(
                isinstance(d, dict) and isinstance(d.get("type"), str) for d in devices):
            raise TypeError("cpu, origin or devices")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SnapshotError(f"{path}: corrupt snapshot header: missing or bad {e}") from None
    if version == 1:
        header["machine"] = dict(ONE_CPU)
    elif "machine" not in header:
        raise SnapshotError(f"{path}: corrupt snapshot header: missing or bad 'machine'")
    why = _bad_machine(header["machine"])
    if why:
        raise SnapshotError(f"{path}: corrupt snapshot header: machine: {why}")
    if header.get("format") != version:
        raise SnapshotError(f"{path}: corrupt snapshot: the header says format {header.get('format')!r}")
    _other_vcpus(path, header)
    if version < ENDING_VERSION:
        header.pop("ending", None)
    elif "ending" in header:
        why = _bad_ending(header["ending"], header["machine"]["cpus"])
        if why:
            raise SnapshotError(f"{path}: corrupt snapshot header: ending: {why}")
    if memory and len(body) == 0 and regions:
        raise SnapshotError(f"{path}: truncated snapshot: the memory section is missing")
    return header, regions, body


def _bad_machine(machine) -> str | None:
    """What is wrong with a header's `machine`, or None."""
    if not isinstance(machine, dict) or set(machine) != {"cpus", "gic"}:
        return "needs exactly cpus and gic"
    cpus, gic = machine["cpus"], machine["gic"]
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        return f"cpus {cpus!r} is not a vCPU count"
    if gic is None:
        return None
    if not isinstance(gic, dict) or set(gic) != {"version", "distributor", "redistributor", "irqs"}:
        return "gic needs exactly version, distributor, redistributor and irqs"
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in gic.values()):
        return "gic: version, distributor, redistributor and irqs are numbers"
    return None


def _has_pending(cpu: dict) -> bool:
    """Whether an AP's state holds a write its run left pending (x86: `pending`)."""
    others = cpu.get("aps")
    return isinstance(others, list) and any(isinstance(a, dict) and "pending" in a for a in others)


def _bad_ending(ending, cpus: int) -> str | None:
    """What is wrong with a version 3 header's `ending`, or None."""
    if not isinstance(ending, dict) or set(ending) != {"cpu", "exit", "code", "detail"}:
        return "needs exactly cpu, exit, code and detail"
    cpu, code = ending["cpu"], ending["code"]
    if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < cpus:
        return f"cpu {cpu!r} is not one of the machine's {cpus} vCPUs"
    if not isinstance(ending["exit"], str) or not isinstance(ending["detail"], str):
        return "exit and detail are text"
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        return f"code {code!r} is not a number"
    return None


def gic_text(version: int, distributor: int, redistributor: int, irqs: int) -> dict[str, int]:
    """A header's `machine.gic` for a GIC of this version and layout."""
    return {"version": version, "distributor": distributor, "redistributor": redistributor, "irqs": irqs}


def machine_mismatch(saved: dict[str, Any], cpus: int, gic: dict[str, int] | None) -> str | None:
    """How the snapshot's machine (`saved`, a header's `machine`) differs from
    one with `cpus` vCPUs and the GIC `gic` (gic_text or None), or None."""
    def gic_words(g):
        if g is None:
            return "no GIC"
        return (f"a GICv{g['version']} (distributor {g['distributor']:#x}, redistributor "
                f"{g['redistributor']:#x}, {g['irqs']} interrupts)")
    diffs = []
    if saved["cpus"] != cpus:
        diffs.append(f"the snapshot's machine has {saved['cpus']} vCPU{'s' if saved['cpus'] != 1 else ''}, "
                     f"this one {cpus}")
    if saved["gic"] != gic:
        diffs.append(f"the snapshot's machine has {gic_words(saved['gic'])}, this one {gic_words(gic)}")
    return "; ".join(diffs) or None


# where a backend's CPU state keeps the vCPUs after vCPU 0, per arch
OTHER_VCPUS = {"x86_64": "aps", "arm64": "secondaries"}


def _other_vcpus(path: Path, header: dict) -> None:
    """The header's vCPU count, checked against the per-vCPU states it holds."""
    count = header["machine"]["cpus"]
    key = OTHER_VCPUS.get(header["arch"], "aps")
    others = header["cpu"].get(key, [])
    if not isinstance(others, list) or not all(isinstance(a, dict) for a in others):
        raise SnapshotError(f"{path}: corrupt snapshot header: cpu.{key} is not a list of vCPU states")
    if len(others) != count - 1:
        raise SnapshotError(f"{path}: truncated or corrupt snapshot: the header says {count} vCPU"
                            f"{'s' if count > 1 else ''}, its CPU state holds {1 + len(others)} (vCPU 0 and "
                            f"{len(others)} in cpu.{key})")


def _run(text: str) -> tuple[int, int]:
    """ "0x10000+0x1000" -> (offset, length)."""
    off, _, length = text.partition("+")
    return int(off, 16), int(length, 16)


def _describe(regions) -> str:
    return "[" + ", ".join(f"{at:#x}+{size:#x}{' rom' if rom else ''}" for at, size, rom in sorted(regions)) + "]"


def runs_of(data, page: int = 0x1000) -> list[tuple[int, bytes]]:
    """The runs of `data`'s pages that are not all zero: [(offset, bytes)].
    `data` is bytes, a bytearray or an mmap (slices are bytes: memcmp-fast)."""
    runs: list[tuple[int, bytes]] = []
    big = 64 * page
    zero_big, zero = bytes(big), bytes(page)
    off, end, start = 0, len(data), -1
    while off < end:
        if start < 0 and off % big == 0 and end - off >= big and data[off:off + big] == zero_big:
            off += big
            continue
        chunk = data[off:off + page]
        if chunk == zero[:len(chunk)]:
            if start >= 0:
                runs.append((start, bytes(data[start:off])))
                start = -1
        elif start < 0:
            start = off
        off += page
    if start >= 0:
        runs.append((start, bytes(data[start:end])))
    return runs
