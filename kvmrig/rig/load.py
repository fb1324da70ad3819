"""A rig file to a checked `Rig` model, or a RigError at `path:line:col`.

Three passes, each stopping at the first problem it finds:
1. yamlmarks: YAML syntax, duplicate keys -> plain data + marks;
2. schema: shape, types, unknown keys, enums (the published JSON Schema);
3. here: values parsed into the model, and the checks a schema cannot make
   (alignment, overlaps, register names for the arch, value widths, files).
Image placement against memory and symbol resolution need ELF parsing and
are left to the machine layer, which still has every Mark.

Device spans (what a device claims, for overlap checks): port devices claim
one port except `serial`, which claims 8 (a 16550's register block);
MMIO devices claim `pl011` 0x1000, `exit` 8, `reset` 8, `constant` `size`.
Only the UARTs (`serial`, `pl011`) take `input:` (extension), sent as UTF-8.
"""

from __future__ import annotations

import difflib
import marshal
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from kvmrig.arch import registers
from kvmrig.arch.arm64 import linux as linux_image
from kvmrig.arch.arm64 import virt
from kvmrig.arch.x86_64 import cpuid as features
from kvmrig.errors import Mark, RigError
from kvmrig.rig import hostfiles
from kvmrig.rig import model as m
from kvmrig.rig.model import Rig
from kvmrig.rig.rigfile import MAX_RIG_BYTES, read_rig_bytes
from kvmrig.rig.schema import validate
from kvmrig.rig.values import (ValueProblem, parse_address, parse_count, parse_duration, parse_hex,
                               parse_int, parse_size, parse_uint, to_width)
from kvmrig.rig.yamlmarks import JsonPath, Marks, format_path, load_yaml

PAGE = 0x1000
ADDRESS_LIMIT = 1 << 48  # guest-physical addresses kvmrig maps (4-level paging, KVM)
MODES = {"x86_64": m.X86_MODES, "arm64": m.ARM64_MODES}
MEM_WIDTHS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}
PC_TESTDEV_MMIO = 0xFF000000  # QEMU's pc-testdev iomem window (64 KiB)

T = TypeVar("T")


def load_rig(path: str | Path, raw: bytes | None = None, seen: list[tuple[str, bytes]] | None = None) -> Rig:
    """Read and check the rig file at `path` (`raw`: what read_rig_bytes read, if it did).
    `seen` gets what else the result depends on (rig/cache.py): (file, its first
    bytes) per host file read, or ("", b"") when the rig depends on more
    (another rig, a snapshot file)."""
    p = Path(path)
    try:
        if raw is None:
            raw = read_rig_bytes(p)
    except FileNotFoundError:
        raise RigError("rig file not found", path=str(p)) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise RigError(f"cannot read the rig file: {getattr(e, 'strerror', None) or e}", path=str(p)) from None
    if len(raw) > MAX_RIG_BYTES:
        raise RigError(f"the rig file is larger than {MAX_RIG_BYTES >> 20} MiB (a rig names its images by "
                       "`file:`, it does not hold them)", Mark(str(p), 1, 1))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[:e.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
        raise RigError(f"not UTF-8 text (bad byte {raw[e.start]:#04x} at offset {e.start})",
                       Mark(str(p), line, col)) from None
    return load_rig_text(text, p, seen)


def load_rig_text(text: str, path: str | Path = "rig.yaml", seen: list[tuple[str, bytes]] | None = None) -> Rig:
    """Check rig `text` as if read from `path` (marks, name and relative paths use it)."""
    p = Path(path)
    data, marks = _checked_data(text, str(p))
    builder = _Builder(p, data, marks)
    if seen is not None:
        builder.seen = seen
    return builder.build()


# Texts that parsed and passed the schema in this process, as (data, value
# marks, key marks) with the marks as (json path, line, col): suites often
# hold many rigs with the same text (generated ones, copies per folder), and
# YAML plus jsonschema are ~90 % of loading one. The model is still built per
# file (names, relative paths and marks depend on where the file is), from a
# fresh copy of the data.
_CHECKED_MAX = 256
_CHECKED_TEXT_MAX = 64 << 10   # larger texts are rare and not kept (memory stays bounded)
_checked: dict[str, tuple[bytes, tuple, tuple]] = {}


def _checked_data(text: str, source: str) -> tuple[dict[str, Any], Marks]:
    """Plain data and marks of schema-valid rig text; RigError where it is not."""
    seen = _checked.get(text)
    if seen is not None:
        blob, values, keys = seen
        return marshal.loads(blob), Marks(source, {q: Mark(source, line, col) for q, line, col in values},
                                          {q: Mark(source, line, col) for q, line, col in keys})
    data, marks = load_yaml(text, source)
    if data is None:
        raise RigError("the rig file is empty: it needs at least `kvmrig: 1` and `arch:`", Mark(source, 1, 1))
    validate(data, marks)
    if len(text) > _CHECKED_TEXT_MAX:
        return data, marks
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()
    _checked[text] = (marshal.dumps(data), tuple((q, k.line, k.col) for q, k in marks.values.items()),
                      tuple((q, k.line, k.col) for q, k in marks.keys.items()))
    return data, marks


_loading: list[Path] = []   # parents being loaded (a `from:` cycle check)


class _Builder:
    """Builds the model from schema-valid data; every check fails at a mark."""

    def __init__(self, path: Path, data: dict[str, Any], marks: Marks):
        self.path = path
        self.seen: list[tuple[str, bytes]] = []   # what the model depends on besides the text (load_rig)
        self.data = data
        self.marks = marks
        self.arch: str = data["arch"]
        self.folder = path.parent

    # -- helpers --------------------------------------------------------

    def mark(self, path: JsonPath) -> Mark:
        return self.marks.value(path)

    def fail(self, path: JsonPath, message: str, *, key: bool = False) -> NoReturn:
        mark = self.marks.key(path) if key else self.marks.value(path)
        raise RigError(f"{format_path(path)}: {message}", mark) from None

    def parse(self, fn: Callable[..., T], path: JsonPath, value: Any, *args: Any, key: bool = False) -> T:
        """fn(value, *args), with a ValueProblem reported at `path` (its key if `key`)."""
        try:
            return fn(value, *args)
        except ValueProblem as e:
            self.fail(path, str(e), key=key)

    def fit(self, value: int, bits: int, path: JsonPath, what: str = "value") -> int:
        """`value` as an unsigned `bits`-wide field (negatives: two's complement)."""
        return self.parse(to_width, path, value, bits, what)

    def uint(self, path: JsonPath, value: Any) -> int:
        return self.parse(parse_uint, path, value)

    def address(self, path: JsonPath, value: Any) -> m.Address:
        return self.parse(parse_address, path, value, self.mark(path))

    def count(self, path: JsonPath, value: Any) -> m.Count:
        return self.parse(parse_count, path, value, self.mark(path))

    def register(self, path: JsonPath, name: str) -> Any:
        """The (reg, shift, width) field a register name means on this arch;
        an unknown name fails at its key, with close names suggested."""
        found = registers.lookup(self.arch, name)
        if found is None:
            close = difflib.get_close_matches(name.lower(), registers.names(self.arch), n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            self.fail(path, f"unknown {self.arch} register {name!r}{hint}", key=True)
        return found

    # -- the rig --------------------------------------------------------

    def build(self) -> m.Rig:
        d = self.data
        if d["kvmrig"] != 1:  # the schema says so too; kept for callers that skip it
            self.fail(("kvmrig",), f"unsupported rig format version {d['kvmrig']!r}: this kvmrig reads 1")
        # Each part is checked even when one before it failed, so that one run
        # shows every error of the file (RigError.more), not only the first.
        errors: list[RigError] = []

        def part(check: Callable[[], T], default: T) -> T:
            try:
                return check()
            except RigError as e:
                errors.append(e)
                return default

        def timeout() -> float:
            value = self.parse(parse_duration, ("timeout",), d["timeout"])
            if value <= 0:
                self.fail(("timeout",), "must be more than 0 seconds")
            return value

        start = part(self.start, None) if "from" in d else None
        if "from" not in d:
            for key in ("set", "input", "call"):
                if key in d:
                    part(lambda key=key: self.fail(
                        (key,), f"`{key}` is for rigs that start from a snapshot (`from:`); a rig that boots "
                        "sets its registers in cpu.regs and its console input on the device", key=True), None)
            memory = part(self.memory, ())
            cpus = part(self.cpus, 1)
            gic = part(lambda: self.gic(memory, cpus), None)
            machine = dict(images=part(self.images, ()), devices=part(lambda: self.devices(memory, gic), ()),
                           cpu=part(self.cpu, None))
        else:   # a child: the machine of the point it starts from
            inherited = part(lambda: self.inherited(start), None) if start is not None else None
            nothing = ((), (), (), None, m.Machine(), 1, None)
            memory, images, devices, cpu, pc_machine, saved_cpus, gic = inherited or nothing
            cpus = saved_cpus
            if self.arch == "arm64" and inherited:   # a child may restate its snapshot's machine
                part(lambda: self.same_machine(memory, cpus, gic), None)
            elif self.arch == "x86_64":   # the snapshot's vCPUs (`cpus:` may say how many)
                cpus = part(lambda: self.child_cpus(saved_cpus), 1)
            machine = dict(images=images, devices=devices, cpu=cpu)
        fields = dict(
            timeout=part(timeout, m.DEFAULT_TIMEOUT) if "timeout" in d else m.DEFAULT_TIMEOUT,
            trace_max=part(lambda: self.uint(("trace", "max"), d["trace"]["max"]), 0) if "trace" in d else 0,
            **machine,
            breakpoints=tuple(part(lambda i=i, b=b: self.breakpoint(i, b), None)
                              for i, b in enumerate(d.get("breakpoints", []))),
            watchpoints=tuple(part(lambda i=i, w=w: self.watchpoint(i, w), None)
                              for i, w in enumerate(d.get("watchpoints", []))),
            expect=part(lambda: self.expect(d.get("expect", {})), None),
            save=d.get("save"),
            start=start,
            start_set=part(self.start_set, None) if "set" in d else None,
            start_input=part(lambda: self.parse(_console_bytes, ("input",), d["input"]), None) if "input" in d else None,
            start_call=part(lambda: self.call(d["call"]), None) if "call" in d else None,
            machine=part(lambda: self.machine(cpus), m.Machine()) if "from" not in d else pc_machine,
            verdict=m.Verdict(d["verdict"].get("console"), d["verdict"].get("exit_codes"),
                              self.mark(("verdict",))) if "verdict" in d else m.Verdict(),
            dtb=part(self.dtb, None),
        )
        if errors:
            raise RigError.of(errors) from None
        rig = m.Rig(
            path=self.path,
            name=d.get("name") or self.path.stem,
            arch=self.arch,
            description=d.get("description", ""),
            tags=tuple(d.get("tags", ())),
            backend=d.get("backend", "any"),
            memory=memory,
            unclaimed_io=d.get("io", {}).get("unclaimed", "record"),
            mark=self.mark(()),
            cpus=cpus,
            cpus_mark=self.mark(("cpus",)) if "cpus" in d else None,
            gic=gic,
            **fields,
        )
        self.check_points(rig)
        self.check_cmdline(rig)
        if "machine" in d and rig.start is not None:
            self.fail(("machine",), "a rig that starts from a snapshot has its machine (irqchip, PIT) from the "
                      "snapshot, not one of its own", key=True)
        for key, what in (("cpus", "other vCPUs"), ("gic", "the GIC's state")):
            held = self.arch == "arm64" or key == "cpus"   # arm64 snapshots hold the GIC, both every vCPU
            if key in d and not held and (rig.save_points() or rig.start is not None):
                self.fail((key,), f"snapshots (save:, from:) do not capture {what}: a rig with {key}: cannot "
                          "save or start from one", key=True)
        return rig

    def check_cmdline(self, rig: m.Rig) -> None:
        """arm64: a Linux Image's `cmdline` is the generated tree's /chosen/bootargs
        (one spelling for the kernel command line on both arches): said once."""
        for i, img in enumerate(rig.images):
            if not img.linux or img.cmdline is None:
                continue
            p: JsonPath = ("images", i, "cmdline")
            raw = self.data.get("dtb") or {}
            if "file" in raw:
                self.fail(p, "cmdline goes into a generated device tree (/chosen/bootargs); with dtb.file "
                          "put it into your own .dts", key=True)
            elif "bootargs" in raw and raw["bootargs"] != img.cmdline:
                self.fail(p, f"cmdline {img.cmdline!r} and dtb.bootargs {raw['bootargs']!r} are both the "
                          "kernel command line: give it once", key=True)

    # -- snapshots --------------------------------------------------------

    def start(self) -> m.Start:
        """`from:` as a Start: "RIG.yaml#POINT" or a snapshot file."""
        p: JsonPath = ("from",)
        text = self.data["from"]
        self.seen.append(("", b""))   # another rig or a snapshot file: not a pure function of known bytes
        for key in ("memory", "images", "devices", "cpu", "trace"):
            if key in self.data:
                self.fail((key,), f"a rig that starts from a snapshot (`from: {text}`) takes its memory, images, "
                          f"devices and CPU from there: remove `{key}`", key=True)
        if "#" in text:
            file, _, point = text.rpartition("#")
            parent = (self.folder / file).resolve() if file else self.path.resolve()
            if parent == self.path.resolve():
                self.fail(p, "a rig cannot start from a point it saves itself")
            if not parent.is_file():
                self.fail(p, f"{file}: no such rig file (from {self.folder})")
            return m.Start(parent, point, None, self.mark(p))
        file = self.folder / text
        if not file.is_file():
            self.fail(p, f"{text}: no such snapshot file; name a rig's point as RIG.yaml#POINT, or a file "
                      "written by `kvmrig snapshot`")
        return m.Start(None, None, file, self.mark(p))

    def inherited(self, start: m.Start) -> tuple:
        """(memory, images, devices, cpu, machine, cpus, gic) of where the rig starts from."""
        p: JsonPath = ("from",)
        if start.parent is None:
            from kvmrig.errors import SnapshotError
            from kvmrig.machine import snapfile
            try:
                head = snapfile.read_header(start.file)
            except SnapshotError as e:
                self.fail(p, str(e))
            if head.arch != self.arch:
                self.fail(p, f"the snapshot is of an {head.arch} machine; this rig says arch: {self.arch}")
            mark = self.mark(p)
            memory = tuple(m.Region(at, size, rom, mark) for at, size, rom in head.memory_map)
            devices = tuple(m.Device(d["type"], d.get("port"), d.get("at"), d.get("size"), d.get("value"), mark,
                                     irq=d["irq"] if isinstance(d.get("irq"), int) else None,
                                     idle=d["idle"] if isinstance(d.get("idle"), str) else None)
                            for d in head.devices)   # a UART's `idle` still ends a child's run
            # The ELF images of the rig that saved it, for `sym:` addresses (not loaded again).
            symbols = head.origin.get("symbols", []) if isinstance(head.origin.get("symbols"), list) else []
            images = tuple(m.Image(Path(f), None, None, mark) for f in symbols
                           if isinstance(f, str) and Path(f).is_file())
            cpus = head.machine["cpus"]
            if self.arch == "x86_64" and cpus > 1 and not head.irqchip:
                self.fail(p, f"corrupt snapshot: {cpus} vCPUs without the in-kernel irqchip that starts them")
            machine = m.Machine(head.irqchip, head.pit, mark, cpus) if head.irqchip else m.Machine()
            g = head.machine["gic"]
            gic = m.Gic(g["distributor"], g["redistributor"], g["irqs"], mark) if g else None
            return memory, images, devices, None, machine, cpus, gic
        if start.parent in _loading:
            self.fail(p, "snapshot points form a cycle: " + " -> ".join(str(x.name) for x in _loading + [start.parent]))
        _loading.append(start.parent)
        try:
            parent = load_rig(start.parent)
        except RigError as e:
            self.fail(p, f"the rig it starts from has an error: {e}")
        finally:
            _loading.pop()
        if start.point not in parent.save_points():
            saved = ", ".join(parent.save_points()) or "none"
            self.fail(p, f"{start.parent.name} saves no point {start.point!r} (it saves: {saved})")
        if parent.arch != self.arch:
            self.fail(p, f"{start.parent.name} is an {parent.arch} rig; this rig says arch: {self.arch}")
        return parent.memory, parent.images, parent.devices, parent.cpu, parent.machine, parent.cpus, parent.gic

    def same_machine(self, memory: tuple[m.Region, ...], cpus: int, gic: m.Gic | None) -> None:
        """arm64: a child's own `cpus` / `gic` must be its snapshot's (they only restate it)."""
        if "cpus" in self.data and self.cpus() != cpus:
            self.fail(("cpus",), f"cpus: {self.data['cpus']}, but the snapshot's machine has {cpus} "
                      f"vCPU{'s' if cpus != 1 else ''}")
        if "gic" not in self.data:
            return
        own = self.gic(memory, cpus)
        if gic is None:
            self.fail(("gic",), "the snapshot's machine has no GIC", key=True)
        elif own is not None and (own.distributor, own.redistributor, own.irqs) != \
                (gic.distributor, gic.redistributor, gic.irqs):
            self.fail(("gic",), f"distributor {own.distributor:#x}, redistributor {own.redistributor:#x}, "
                      f"{own.irqs} interrupts; the snapshot's GIC has distributor {gic.distributor:#x}, "
                      f"redistributor {gic.redistributor:#x}, {gic.irqs} interrupts")

    def child_cpus(self, saved: int) -> int:
        """The vCPUs of an x86 child: its snapshot's; `cpus:`, if given, must say the same."""
        if "cpus" in self.data:
            n = self.uint(("cpus",), self.data["cpus"])
            if n != saved:
                self.fail(("cpus",), f"this rig says {n} vCPU{'s' if n > 1 else ''}, but the snapshot it starts "
                          f"from (`from: {self.data['from']}`) is of a machine with {saved}")
        return saved

    def call(self, raw: dict[str, Any]) -> m.Call:
        p: JsonPath = ("call",)
        args = tuple(self.fit(self.uint(p + ("args", i), v), 64, p + ("args", i), "argument")
                     for i, v in enumerate(raw.get("args", [])))
        return m.Call(self.address(p + ("to",), raw["to"]), args,
                      self.address(p + ("return_to",), raw["return_to"]), self.mark(p))

    def start_set(self) -> m.StateSet:
        raw = self.data["set"]
        return m.StateSet(self.reg_sets(("set", "regs"), raw.get("regs", {})),
                          self.mem_writes(("set", "memory"), raw.get("memory", [])))

    def check_points(self, rig: m.Rig) -> None:
        """Snapshot point names are unique within a rig."""
        seen: dict[str, str] = {}
        for kind, points in (("breakpoints", rig.breakpoints), ("watchpoints", rig.watchpoints)):
            for point in points:
                if point.save is None:
                    continue
                here = f"{kind}[{point.index}]"
                if point.save in seen:
                    self.fail((kind, point.index, "save"), f"snapshot point {point.save!r} is also saved by "
                              f"{seen[point.save]}")
                seen[point.save] = here
        if rig.save is not None and rig.save in seen:
            self.fail(("save",), f"snapshot point {rig.save!r} is also saved by {seen[rig.save]}")

    def machine(self, cpus: int) -> m.Machine:
        raw = self.data.get("machine")
        if raw is None:
            return m.Machine(cpus=cpus)
        if self.arch != "x86_64":
            self.fail(("machine",), "machine (irqchip, pit) is for x86_64 rigs", key=True)
        pit = bool(raw.get("pit", False))
        return m.Machine(bool(raw.get("irqchip", False)) or pit, pit, self.mark(("machine",)), cpus)

    def cpus(self) -> int:
        if "cpus" not in self.data:
            return 1
        n = self.uint(("cpus",), self.data["cpus"])
        if n < 1:
            self.fail(("cpus",), "a machine needs at least 1 vCPU")
        irqchip = bool((self.data.get("machine") or {}).get("irqchip", False))
        if self.arch == "x86_64" and n > 1 and not irqchip:
            self.fail(("cpus",), f"{n} vCPUs on x86_64 need `machine: {{irqchip: true}}` (the guest starts its "
                      "APs through its local APIC)")
        if self.arch == "x86_64" and n > 64:
            self.fail(("cpus",), f"{n} vCPUs: an x86_64 rig has at most 64")
        if self.arch not in ("arm64", "x86_64") and n > 1:
            self.fail(("cpus",), f"more than one vCPU is for arm64 and x86_64 rigs ({self.arch} rigs run one)")
        if self.arch == "arm64" and n > virt.GIC_MAX_CPUS:
            self.fail(("cpus",), f"{n} vCPUs: an arm64 KVM VM with a GICv3 has at most {virt.GIC_MAX_CPUS}")
        return n

    def gic(self, memory: tuple[m.Region, ...], cpus: int) -> m.Gic | None:
        raw = self.data.get("gic")
        if raw is None:
            return None
        p: JsonPath = ("gic",)
        if self.arch != "arm64":
            self.fail(p, f"gic is an arm64 interrupt controller; {self.arch} rigs cannot have one", key=True)
        dist = self.uint(p + ("distributor",), raw["distributor"]) if "distributor" in raw else virt.GIC_DIST
        redist = self.uint(p + ("redistributor",), raw["redistributor"]) if "redistributor" in raw \
            else virt.GIC_REDIST
        irqs = self.uint(p + ("irqs",), raw["irqs"]) if "irqs" in raw else virt.GIC_NR_IRQS
        if irqs % 32 or not virt.GIC_MIN_IRQS <= irqs <= virt.GIC_MAX_IRQS:
            self.fail(p + ("irqs",), f"{irqs} interrupts: KVM's GICv3 takes a multiple of 32 from "
                      f"{virt.GIC_MIN_IRQS} to {virt.GIC_MAX_IRQS} (the 32 private INTIDs included)")
        spans = {"distributor": (dist, virt.GIC_DIST_SIZE), "redistributor": (redist, virt.redist_size(cpus))}
        for key, (at, size) in spans.items():
            q = p + (key,) if key in raw else p
            if at % 0x10000:
                self.fail(q, f"the GICv3 {key} at {at:#x} must be 64 KiB aligned")
            if at + size > ADDRESS_LIMIT:
                self.fail(q, f"{_span(at, size)} goes beyond the 48-bit guest-physical address space")
            for j, region in enumerate(memory):
                if _overlap(at, size, region.at, region.size):
                    self.fail(q, f"the GICv3 {key} {_span(at, size)} overlaps {_region_text(j, region)}"
                              + (f" ({cpus} vCPUs x 128 KiB)" if key == "redistributor" else ""))
        if _overlap(dist, virt.GIC_DIST_SIZE, redist, virt.redist_size(cpus)):
            self.fail(p, f"the GICv3 distributor {_span(dist, virt.GIC_DIST_SIZE)} overlaps its redistributors "
                      f"{_span(redist, virt.redist_size(cpus))}")
        return m.Gic(dist, redist, irqs, self.mark(p))

    def dtb(self) -> m.Dtb | None:
        raw = self.data.get("dtb")
        if raw is None:
            return None
        p: JsonPath = ("dtb",)
        if self.arch != "arm64":
            self.fail(p, "dtb (a device tree in x0) is for arm64 rigs", key=True)
        file = initrd = None
        if "file" in raw:
            file = self.folder / raw["file"]
            self.read_head(p + ("file",), file)
            for key in ("bootargs", "initrd"):
                if key in raw:
                    self.fail(p + (key,), f"{key} goes into a generated device tree; with `file:` put it "
                              "into your own .dts", key=True)
        if "initrd" in raw:
            initrd = self.folder / raw["initrd"]
            self.read_head(p + ("initrd",), initrd)
        at = None
        if "at" in raw:
            at = self.uint(p + ("at",), raw["at"])
            if at % 8:
                self.fail(p + ("at",), f"{at:#x}: the device tree must be 8-byte aligned (arm64 booting.rst)")
        return m.Dtb(file, at, raw.get("bootargs", ""), initrd, self.mark(p),
                     self.mark(p + ("file",)) if file else None, self.mark(p + ("initrd",)) if initrd else None)

    def memory(self) -> tuple[m.Region, ...]:
        regions: list[m.Region] = []
        for i, raw in enumerate(self.data.get("memory", [])):
            p: JsonPath = ("memory", i)
            at = self.uint(p + ("at",), raw["at"])
            size = self.parse(parse_size, p + ("size",), raw["size"])
            if size == 0:
                self.fail(p + ("size",), "a region needs a size > 0")
            for key, n in (("at", at), ("size", size)):
                if n % PAGE:
                    self.fail(p + (key,), f"{n:#x} is not a multiple of 4 KiB (0x1000): KVM maps whole pages")
            if at + size > ADDRESS_LIMIT:
                self.fail(p, f"{_span(at, size)} goes beyond the 48-bit guest-physical address space")
            region = m.Region(at, size, bool(raw.get("rom", False)), self.mark(p), raw.get("name", ""))
            for j, other in enumerate(regions):
                if _overlap(at, size, other.at, other.size):
                    self.fail(p, f"region {_span(at, size)} overlaps {_region_text(j, other)}")
            regions.append(region)
        return tuple(regions)

    def images(self) -> tuple[m.Image, ...]:
        images = []
        for i, raw in enumerate(self.data.get("images", [])):
            p: JsonPath = ("images", i)
            at = self.uint(p + ("at",), raw["at"]) if "at" in raw else None
            if "hex" in raw:
                data = self.parse(parse_hex, p + ("hex",), raw["hex"])
                images.append(m.Image(None, data, at, self.mark(p)))
                continue
            file = self.folder / raw["file"]
            head = self.read_head(p + ("file",), file)
            fmt = raw.get("format", "auto")
            linux = self.arch == "arm64" and fmt == "auto" and linux_image.is_image(head)
            if linux and at is not None:
                header = linux_image.parse_header(head)
                if (at - header.text_offset) % linux_image.ALIGN:
                    self.fail(p + ("at",), f"{raw['file']} is an arm64 Linux Image with text_offset "
                              f"{header.text_offset:#x}: it must load text_offset above a 2 MiB boundary, "
                              f"not at {at:#x} (leave `at:` out to let kvmrig place it)")
            allowed = {"multiboot": ("cmdline", "modules"), "linux": ("cmdline", "initrd")}.get(fmt, ())
            if linux:
                allowed = ("cmdline",)   # /chosen/bootargs of the generated device tree
            for key in ("cmdline", "modules", "initrd"):
                if key in raw and key not in allowed:
                    which = " or ".join(f"`format: {f}`" for f in ("multiboot", "linux")
                                        if key in {"multiboot": ("cmdline", "modules"),
                                                   "linux": ("cmdline", "initrd")}[f])
                    if key == "cmdline" and self.arch == "arm64":
                        which = "arm64 Linux Image"
                    self.fail(p + (key,), f"{key} is for {which} images", key=True)
            if fmt in ("multiboot", "linux") and self.arch != "x86_64":
                self.fail(p + ("format",), f"{fmt} kernels are x86 kernels here")
            if fmt == "linux" and at is not None:
                self.fail(p + ("at",), "a Linux kernel says where it loads (its boot header or ELF): no at",
                          key=True)
            initrd = None
            if "initrd" in raw:
                initrd = self.folder / raw["initrd"]
                self.read_head(p + ("initrd",), initrd)
            if fmt == "elf" and head != b"\x7fELF":
                self.fail(p + ("file",), f"{raw['file']} is not an ELF file (format: elf)")
            if fmt in ("auto", "raw") and (fmt == "raw" or head[:4] != b"\x7fELF") and at is None and not linux:
                self.fail(p + ("file",), f"{raw['file']} is not an ELF file, so the image needs `at:` "
                          "(the address to load its raw bytes)"
                          + ("; an arm64 Linux Image (magic ARM\\x64 at offset 56) would be placed by its header"
                             if self.arch == "arm64" else ""))
            if fmt == "multiboot" and at is not None:
                self.fail(p + ("at",), "a multiboot kernel says where it loads (ELF or its header): no at",
                          key=True)
            modules = []
            for k, mod in enumerate(raw.get("modules", [])):
                q = p + ("modules", k)
                mfile = None
                if "file" in mod:
                    mfile = self.folder / mod["file"]
                    self.read_head(q + ("file",), mfile)
                text = mod["text"].encode("utf-8") if "text" in mod else None
                modules.append(m.Module(mfile, text, mod.get("cmdline", ""), self.mark(q)))
            images.append(m.Image(file, None, at, self.mark(p), self.mark(p + ("file",)), fmt,
                                  raw.get("cmdline"), tuple(modules), initrd, linux))
        return tuple(images)

    def read_head(self, path: JsonPath, file: Path) -> bytes:
        """The first 64 bytes of an image file (to tell ELF, arm64 Image and raw
        apart); only regular files, inside the --images-under folders if any
        (rig/hostfiles.py)."""
        try:
            f, _size = hostfiles.open_regular(file)
            with f:
                head = f.read(linux_image.HEADER_SIZE)
            self.seen.append((str(file), head))
            return head
        except hostfiles.HostFileProblem as e:
            self.fail(path, f"image {e}".replace("a folder, not", "a directory, not"))
        except OSError as e:
            self.fail(path, f"cannot read image file {file}: {e.strerror}")

    def devices(self, memory: tuple[m.Region, ...], gic: m.Gic | None = None) -> tuple[m.Device, ...]:
        devices: list[m.Device] = []
        spis: dict[int, int] = {}  # SPI -> device index
        claims: list[tuple[str, int, int, int]] = []  # (space, start, size, index)
        for i, raw in enumerate(self.data.get("devices", [])):
            p: JsonPath = ("devices", i)
            kind = raw["type"]
            port = self.uint(p + ("port",), raw["port"]) if "port" in raw else None
            at = self.uint(p + ("at",), raw["at"]) if "at" in raw else None
            if kind in m.FIXED_PORT:
                if self.arch != "x86_64":
                    self.fail(p + ("type",), f"{kind} is an x86 PC device")
                if port is not None and port != m.FIXED_PORT[kind]:
                    self.fail(p + ("port",), f"{kind} sits at port {m.FIXED_PORT[kind]:#x} (QEMU's place)")
                port = m.FIXED_PORT[kind]
            if port is not None:
                if self.arch != "x86_64":
                    self.fail(p + ("port",), f"{self.arch} has no port I/O: give the device an MMIO address "
                              "with `at:`", key=True)
                if port > 0xFFFF:
                    self.fail(p + ("port",), f"port {port:#x} is beyond 0xffff")
                if kind == "pl011":
                    self.fail(p + ("port",), "pl011 is an MMIO UART: give `at:`, not `port:`", key=True)
            if at is not None and kind in ("serial", "debugcon", "isa-debug-exit"):
                self.fail(p + ("at",), f"{kind} is x86 port I/O: give `port:`, not `at:`", key=True)
            size = None
            if "size" in raw:
                if kind == "isa-debug-exit":
                    size = self.uint(p + ("size",), raw["size"])
                    if size not in (1, 2, 4):
                        self.fail(p + ("size",), "isa-debug-exit claims 1, 2 or 4 ports")
                elif kind != "constant" or at is None:
                    self.fail(p + ("size",), "size is only for constant devices on MMIO (at:) and "
                              "isa-debug-exit", key=True)
                else:
                    size = self.parse(parse_size, p + ("size",), raw["size"])
                    if size == 0:
                        self.fail(p + ("size",), "size must be > 0")
            files: list[tuple[str, Path]] = []
            for name, rel in raw.get("files", {}).items():
                if kind != "fw-cfg":
                    self.fail(p + ("files",), "files is only for fw-cfg devices", key=True)
                if len(name.encode()) > 55:
                    self.fail(p + ("files", name), "fw_cfg file names are at most 55 bytes", key=True)
                path = self.folder / rel
                self.read_head(p + ("files", name), path)
                files.append((name, path))
            value = None
            if "value" in raw:
                if kind != "constant":
                    self.fail(p + ("value",), f"value is only for constant devices, not {kind}", key=True)
                value = self.fit(self.uint(p + ("value",), raw["value"]),
                                 32 if port is not None else 64, p + ("value",))
            data = None
            if "input" in raw:
                if kind not in ("serial", "pl011"):
                    self.fail(p + ("input",), f"input is only for the UARTs (serial, pl011), not {kind}", key=True)
                data = self.parse(_console_bytes, p + ("input",), raw["input"])
            if "idle" in raw and kind not in ("serial", "pl011"):
                self.fail(p + ("idle",), f"idle is only for the UARTs (serial, pl011), not {kind}", key=True)
            irq = self.device_irq(p, raw, kind, gic, i, spis)
            device = m.Device(kind, port, at, size, value, self.mark(p), data, irq=irq, idle=raw.get("idle"),
                              files=tuple(files))
            if kind == "pc-testdev":
                for j, region in enumerate(memory):
                    if _overlap(PC_TESTDEV_MMIO, 0x10000, region.at, region.size):
                        self.fail(p + ("type",), f"pc-testdev's MMIO window {_span(PC_TESTDEV_MMIO, 0x10000)} "
                                  f"overlaps {_region_text(j, region)}")
            span = device.span
            if port is not None:
                space, start = "port", port
            else:
                space, start = "mmio", at
                assert start is not None
                if start + span > ADDRESS_LIMIT:
                    self.fail(p + ("at",), f"{_span(start, span)} goes beyond the 48-bit guest-physical "
                              "address space")
                for j, region in enumerate(memory):
                    if _overlap(start, span, region.at, region.size):
                        self.fail(p + ("at",), f"{kind} MMIO {_span(start, span)} overlaps "
                                  f"{_region_text(j, region)}")
                if gic is not None:
                    for name, (g_at, g_size) in (("distributor", (gic.distributor, virt.GIC_DIST_SIZE)),
                                                 ("redistributors", (gic.redistributor,
                                                                     virt.redist_size(self.cpus())))):
                        if _overlap(start, span, g_at, g_size):
                            self.fail(p + ("at",), f"{kind} MMIO {_span(start, span)} overlaps the GICv3 "
                                      f"{name} ({_span(g_at, g_size)})")
            for other_space, other_start, other_span, j in claims:
                if other_space == space and _overlap(start, span, other_start, other_span):
                    what = "ports" if space == "port" else "MMIO"
                    self.fail(p + (space if space == "port" else "at",),
                              f"{kind} {what} {_span(start, span)} overlaps devices[{j}] "
                              f"({devices[j].type}, {what} {_span(other_start, other_span)})")
            claims.append((space, start, span, i))
            devices.append(device)
        return tuple(devices)

    def device_irq(self, p: JsonPath, raw: dict[str, Any], kind: str, gic: m.Gic | None, index: int,
                   spis: dict[int, int]) -> int | None:
        """The interrupt a device raises: a serial's ISA IRQ line (x86_64, `irq`,
        used with machine.irqchip), or the SPI a pl011 raises on the rig's GIC
        (`irq`, else SPI 1, QEMU virt's, for the first)."""
        if "irq" in raw and kind == "serial":
            irq = self.uint(p + ("irq",), raw["irq"])
            if irq > 23:
                self.fail(p + ("irq",), "the IOAPIC has pins 0..23")
            return irq
        if "irq" in raw:
            if kind != "pl011":
                self.fail(p + ("irq",), f"irq is for devices that raise interrupts (serial, pl011), not {kind}",
                          key=True)
            if gic is None:
                self.fail(p + ("irq",), "irq needs an interrupt controller: add `gic:` (arm64)", key=True)
        if gic is None or kind != "pl011":
            return None
        spi = self.uint(p + ("irq",), raw["irq"]) if "irq" in raw else virt.PL011_SPI
        q = p + ("irq",) if "irq" in raw else p
        if virt.SPI_BASE + spi >= min(gic.irqs, 1020):
            self.fail(q, f"SPI {spi} is INTID {virt.SPI_BASE + spi}, beyond the {gic.irqs} interrupts of the "
                      "rig's GIC (gic.irqs)")
        if spi in spis:
            self.fail(q, f"SPI {spi} is already raised by devices[{spis[spi]}]: give this device its own `irq`")
        spis[spi] = index
        return spi

    def cpu(self) -> m.Cpu:
        raw = self.data.get("cpu", {})
        p: JsonPath = ("cpu",)
        mode = raw.get("mode", m.DEFAULT_MODES[self.arch])
        if any(img.get("format") == "multiboot" for img in self.data.get("images", [])):
            if "mode" in raw and mode != "protected":
                self.fail(p + ("mode",), "a multiboot kernel starts in protected mode (leave mode out)")
            mode = "protected"
        if any(img.get("format") == "linux" for img in self.data.get("images", [])):
            if "mode" in raw and mode != "long":
                self.fail(p + ("mode",), "a Linux kernel starts at its 64-bit entry in long mode (leave mode out)")
            mode = "long"
        if mode not in MODES[self.arch]:
            self.fail(p + ("mode",), f"{mode!r} is not a mode of {self.arch} (one of {', '.join(MODES[self.arch])})")
        entry = self.address(p + ("entry",), raw["entry"]) if "entry" in raw else None
        tables_at = None
        if "tables_at" in raw:
            if self.arch != "x86_64":
                self.fail(p + ("tables_at",), "tables_at is for x86_64 only (GDT and page tables)", key=True)
            tables_at = self.uint(p + ("tables_at",), raw["tables_at"])
            if tables_at % PAGE or tables_at >= ADDRESS_LIMIT:
                self.fail(p + ("tables_at",), f"{tables_at:#x} must be 4 KiB aligned and below 2**48 "
                          "(page tables live on page boundaries)")
        return m.Cpu(mode, entry, self.reg_sets(p + ("regs",), raw.get("regs", {})), tables_at,
                     self.mark(p), self.cpuid(p + ("cpuid",), raw["cpuid"]) if "cpuid" in raw else None)

    def cpuid(self, p: JsonPath, raw: dict[str, Any]) -> m.Cpuid:
        if self.arch != "x86_64":
            self.fail(p, "cpuid is for x86_64 rigs", key=True)
        for key in ("add", "remove"):
            for k, name in enumerate(raw.get(key, [])):
                if features.feature(name) is None:
                    known = sorted(features.FEATURES)
                    close = difflib.get_close_matches(name.lower().replace("-", "_"), known, n=3)
                    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
                    self.fail(p + (key, k), f"unknown CPUID feature {name!r}{hint}")
        leaves = []
        for k, leaf in enumerate(raw.get("leaves", [])):
            q = p + ("leaves", k)
            regs = tuple((r, self.fit(self.uint(q + (r,), leaf[r]), 32, q + (r,), r))
                         for r in ("eax", "ebx", "ecx", "edx") if r in leaf)
            leaves.append(m.CpuidLeaf(self.fit(self.uint(q + ("leaf",), leaf["leaf"]), 32, q + ("leaf",)),
                                      self.fit(self.uint(q + ("subleaf",), leaf.get("subleaf", 0)), 32,
                                               q + ("subleaf",)), regs, self.mark(q)))
        return m.Cpuid(tuple(raw.get("add", ())), tuple(raw.get("remove", ())), raw.get("vendor"),
                       tuple(leaves), self.mark(p))

    # -- registers and memory -------------------------------------------

    def reg_value(self, p: JsonPath, value: Any, width: int, name: str) -> int | m.Address:
        """A register's value: a number that fits it, or `sym:` (resolved by the machine layer)."""
        if isinstance(value, str) and value.startswith("sym:"):
            return self.address(p, value)
        return self.fit(self.parse(parse_int, p, value), width, p, name)

    def reg_sets(self, p: JsonPath, raw: dict[str, Any]) -> tuple[tuple[str, int | m.Address, Mark], ...]:
        out = []
        for name, value in raw.items():
            field = self.register(p + (name,), name)
            out.append((name.lower(), self.reg_value(p + (name,), value, field.width, name), self.mark(p + (name,))))
        return tuple(out)

    def reg_checks(self, p: JsonPath, raw: dict[str, Any]) -> tuple[m.RegCheck, ...]:
        out = []
        for name, spec in raw.items():
            q = p + (name,)
            width = self.register(q, name).width
            value = mask = lo = hi = None
            if isinstance(spec, dict) and "range" in spec:
                lo, hi = (self.fit(self.uint(q + ("range", k), x), width, q + ("range", k), name)
                          for k, x in enumerate(spec["range"]))
                if lo > hi:
                    self.fail(q + ("range",), f"range [{lo:#x}, {hi:#x}] is empty: the low end comes first")
            elif isinstance(spec, dict):
                mask = self.fit(self.uint(q + ("mask",), spec["mask"]), width, q + ("mask",), "mask")
                value = self.fit(self.parse(parse_int, q + ("value",), spec["value"]), width, q + ("value",), name)
            else:
                value = self.reg_value(q, spec, width, name)
            out.append(m.RegCheck(name.lower(), value, mask, lo, hi, self.mark(q)))
        return tuple(out)

    def mem_bytes(self, p: JsonPath, raw: dict[str, Any]) -> tuple[m.Address, bytes, str]:
        at = self.address(p + ("at",), raw["at"])
        form = next(k for k in ("hex", *MEM_WIDTHS) if k in raw)
        q = p + (form,)
        if form == "hex":
            return at, self.parse(parse_hex, q, raw[form]), form
        bits = MEM_WIDTHS[form]
        n = self.fit(self.parse(parse_int, q, raw[form]), bits, q, form)
        return at, n.to_bytes(bits // 8, "little"), form

    def mem_checks(self, p: JsonPath, raw: list[dict[str, Any]]) -> tuple[m.MemCheck, ...]:
        return tuple(m.MemCheck(*self.mem_bytes(p + (i,), item), self.mark(p + (i,)))
                     for i, item in enumerate(raw))

    def mem_writes(self, p: JsonPath, raw: list[dict[str, Any]]) -> tuple[m.MemWrite, ...]:
        return tuple(m.MemWrite(*self.mem_bytes(p + (i,), item)[:2], self.mark(p + (i,)))
                     for i, item in enumerate(raw))

    # -- breakpoints and watchpoints ------------------------------------

    def hit_common(self, p: JsonPath, raw: dict[str, Any]) -> dict[str, Any]:
        """at, hits, on_hit and set: the keys breakpoints and watchpoints share."""
        at = self.address(p + ("at",), raw["at"])
        on_hit = None
        if "on_hit" in raw:
            on_hit = self.uint(p + ("on_hit",), raw["on_hit"])
            if on_hit < 1:
                self.fail(p + ("on_hit",), "on_hit counts from 1 (the first hit)")
        state_set = None
        if "set" in raw:
            s = raw["set"]
            state_set = m.StateSet(self.reg_sets(p + ("set", "regs"), s.get("regs", {})),
                                   self.mem_writes(p + ("set", "memory"), s.get("memory", [])))
        return dict(
            at=at,
            hits=self.count(p + ("hits",), raw["hits"]) if "hits" in raw else None,
            on_hit=on_hit,
            set=state_set,
            mark=self.mark(p),
            save=raw.get("save"),
        )

    def state_check(self, p: JsonPath, raw: dict[str, Any], value_bits: int = 0) -> m.StateCheck:
        value = None
        if "value" in raw:
            q = p + ("value",)
            value = self.fit(self.uint(q, raw["value"]), value_bits, q, "value")
        return m.StateCheck(self.reg_checks(p + ("regs",), raw.get("regs", {})),
                            self.mem_checks(p + ("memory",), raw.get("memory", [])),
                            value, self.mark(p + ("value",)) if value is not None else None)

    def breakpoint(self, i: int, raw: dict[str, Any]) -> m.Breakpoint:
        p: JsonPath = ("breakpoints", i)
        expect = self.state_check(p + ("expect",), raw["expect"]) if "expect" in raw else None
        return m.Breakpoint(kind=raw.get("kind", "sw"), expect=expect, index=i, **self.hit_common(p, raw))

    def watchpoint(self, i: int, raw: dict[str, Any]) -> m.Watchpoint:
        p: JsonPath = ("watchpoints", i)
        length = self.uint(p + ("len",), raw["len"])
        if length < 1:
            self.fail(p + ("len",), "len must be at least 1 byte")
        if length > ADDRESS_LIMIT:
            self.fail(p + ("len",), f"len {length:#x} is larger than the 48-bit address space")
        expect = None
        if "expect" in raw:
            if "value" in raw["expect"] and length > 8:
                self.fail(p + ("expect", "value"), f"value compares at most 8 bytes, but len is {length}: "
                          "check a longer range with expect.memory and hex", key=True)
            expect = self.state_check(p + ("expect",), raw["expect"], 8 * length)
        return m.Watchpoint(len=length, access=raw.get("access", "write"), expect=expect, index=i,
                            **self.hit_common(p, raw))

    # -- expect ---------------------------------------------------------

    def expect(self, raw: dict[str, Any]) -> m.Expect:
        p: JsonPath = ("expect",)
        exit_code = None
        if "exit_code" in raw:
            # The contract pairs `exit: hlt` with `exit_code: 0`: exit_code is then
            # checked only if the guest does end through an exit device.
            exit_code = self.fit(self.uint(p + ("exit_code",), raw["exit_code"]), 64,
                                 p + ("exit_code",), "exit_code")
        return m.Expect(
            exit=raw.get("exit"),
            exit_mark=self.mark(p + ("exit",)) if "exit" in raw else None,
            exit_code=exit_code,
            exit_code_mark=self.mark(p + ("exit_code",)) if exit_code is not None else None,
            regs=self.reg_checks(p + ("regs",), raw.get("regs", {})),
            memory=self.mem_checks(p + ("memory",), raw.get("memory", [])),
            console=self.console(p + ("console",), raw["console"]) if "console" in raw else None,
            port_writes=self.port_writes(p + ("port_writes",), raw.get("port_writes", {})),
            steps=self.count(p + ("steps",), raw["steps"]) if "steps" in raw else None,
            golden=self.golden(p + ("golden",), raw["golden"]) if "golden" in raw else None,
            executed=tuple(self.address(p + ("executed", k), a) for k, a in enumerate(raw.get("executed", []))),
            not_executed=tuple(self.address(p + ("not_executed", k), a)
                               for k, a in enumerate(raw.get("not_executed", []))),
        )

    def console(self, p: JsonPath, raw: dict[str, Any]) -> m.ConsoleCheck:
        def strings(key: str) -> tuple[str, ...]:
            value = raw.get(key, ())
            return (value,) if isinstance(value, str) else tuple(value)

        for k, pattern in enumerate(strings("regex")):
            try:
                re.compile(pattern)
            except re.error as e:
                q = p + ("regex",) + ((k,) if isinstance(raw["regex"], list) else ())
                self.fail(q, f"{pattern!r} is not a valid regular expression: {e}")
        return m.ConsoleCheck(strings("contains"), strings("not_contains"), strings("regex"), self.mark(p))

    def port_writes(self, p: JsonPath, raw: dict[str, list[Any]]) -> tuple[tuple[int, tuple[int, ...], Mark], ...]:
        out = []
        seen: dict[int, str] = {}
        for key, values in raw.items():
            q = p + (key,)
            port = self.parse(parse_uint, q, key, key=True)
            if port > 0xFFFF:
                self.fail(q, f"port {port:#x} is beyond 0xffff", key=True)
            if port in seen:
                self.fail(q, f"port {port:#x} is listed twice (also as {seen[port]!r})", key=True)
            seen[port] = key
            written = tuple(self.fit(self.uint(q + (k,), x), 32, q + (k,))
                            for k, x in enumerate(values))
            out.append((port, written, self.marks.key(q)))
        return tuple(out)

    def golden(self, p: JsonPath, raw: str | bool | dict[str, Any]) -> m.Golden:
        default = self.folder / f"{self.path.stem}.golden.yaml"
        if raw is True:
            return m.Golden(default, (), self.mark(p))
        if isinstance(raw, str):
            return m.Golden(self.folder / raw, (), self.mark(p))
        ignore = raw.get("ignore", [])
        for k, name in enumerate(ignore):
            self.register(p + ("ignore", k), name)
        file = self.folder / raw["file"] if "file" in raw else default
        return m.Golden(file, tuple(n.lower() for n in ignore), self.mark(p))


def _console_bytes(text: str) -> bytes:
    """A device's `input:` text as the bytes a terminal would send: UTF-8."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueProblem(f"cannot be sent as UTF-8 (character {e.start}: {e.reason})") from None


def _overlap(a: int, a_size: int, b: int, b_size: int) -> bool:
    return a < b + b_size and b < a + a_size


def _span(at: int, size: int) -> str:
    """An inclusive range, as firmware people write memory maps."""
    return f"{at:#x}..{at + size - 1:#x}"


def _region_text(i: int, region: m.Region) -> str:
    name = f" {region.name!r}" if region.name else ""
    return f"memory[{i}]{name} ({_span(region.at, region.size)})"
