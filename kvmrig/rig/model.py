"""The typed model of one rig file, as the user wrote it (after parsing values).

Every object carries the Mark of the YAML node it came from so that later
stages (image loading, symbol resolution, the runner) can still report
`file:line:col` for what they find wrong. Addresses may name ELF symbols that
are only known once images are read, so they stay `Address` until the machine
layer resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvmrig.errors import Mark

ARCHES = ("x86_64", "arm64")
BACKENDS = ("any", "kvm", "emu")
EXITS = ("hlt", "exit-code", "system-off", "reset", "shutdown", "mmio", "io", "timeout", "idle")
# Exits that count as the guest finishing normally when a rig names no exit.
NORMAL_EXITS = ("hlt", "exit-code", "system-off")
X86_MODES = ("reset", "real", "protected", "long")
ARM64_MODES = ("el1",)
DEFAULT_MODES = {"x86_64": "long", "arm64": "el1"}   # a rig's cpu.mode when it names none
DEVICE_TYPES = ("serial", "pl011", "debugcon", "exit", "constant", "reset",
                "isa-debug-exit", "pc-testdev", "fw-cfg", "cmos")
# Devices at QEMU's fixed places (extension): their default port.
FIXED_PORT = {"pc-testdev": 0xE0, "fw-cfg": 0x510, "cmos": 0x70}
ACCESS = ("read", "write", "access")
DEFAULT_TIMEOUT = 10.0
# What a device claims: a 16550 is 8 ports, other port devices 1; MMIO devices
# as listed, `constant` its `size`.
PORT_SPAN = {"serial": 8, "pc-testdev": 8, "fw-cfg": 12, "cmos": 2, "isa-debug-exit": 4}
MMIO_SPAN = {"pl011": 0x1000, "exit": 8, "reset": 8}


@dataclass(frozen=True)
class Address:
    """A guest address: a number, or `sym:name+off` resolved against ELF symbols."""

    value: int | None
    symbol: str | None
    offset: int
    mark: Mark

    def __str__(self) -> str:
        if self.symbol is None:
            return hex(self.value or 0)
        if self.offset:
            sign = "+" if self.offset > 0 else "-"
            return f"sym:{self.symbol}{sign}{abs(self.offset):#x}"
        return f"sym:{self.symbol}"


@dataclass(frozen=True)
class Count:
    """A hit or step count condition: exact `n`, `>=n`, `<=n` or a range."""

    lo: int | None
    hi: int | None
    text: str
    mark: Mark

    def matches(self, n: int) -> bool:
        return (self.lo is None or n >= self.lo) and (self.hi is None or n <= self.hi)


@dataclass(frozen=True)
class Region:
    at: int
    size: int
    rom: bool
    mark: Mark
    name: str = ""

    @property
    def end(self) -> int:
        return self.at + self.size


@dataclass(frozen=True)
class Module:
    """A multiboot module: a file or inline text, with its command line."""

    file: Path | None
    text: bytes | None
    cmdline: str
    mark: Mark


@dataclass(frozen=True)
class Image:
    """`file` (raw at `at`, or ELF when the file is one) or inline `hex` bytes;
    `format: multiboot` (extension) boots the file as a Multiboot v1 kernel."""

    file: Path | None
    data: bytes | None
    at: int | None
    mark: Mark
    file_mark: Mark | None = None
    format: str = "auto"        # auto | raw | elf | multiboot | linux (x86 kernels)
    cmdline: str | None = None  # multiboot, linux
    modules: tuple[Module, ...] = ()
    initrd: Path | None = None  # linux
    linux: bool = False   # an arm64 Linux Image (header magic): placed by its header, x0 = the DTB


@dataclass(frozen=True)
class Device:
    type: str
    port: int | None
    at: int | None
    size: int | None
    value: int | None
    mark: Mark
    input: bytes | None = None  # serial/pl011 (extension): bytes the guest reads, in order
    irq: int | None = None      # (extension) pl011 with a `gic`: its SPI number (INTID - 32);
                                # serial with machine.irqchip: the ISA IRQ line it raises
    idle: str | None = None     # serial/pl011 (extension): snapshot point saved when the guest waits for
                                # input that is not there (the run then ends with exit `idle`)
    files: tuple[tuple[str, Path], ...] = ()  # fw-cfg (extension): (fw_cfg name, host file)

    @property
    def span(self) -> int:
        """Ports or MMIO bytes the device claims (rig checks and the bus agree on it)."""
        if self.port is not None:
            if self.type == "isa-debug-exit" and self.size:
                return self.size
            return PORT_SPAN.get(self.type, 1)
        return self.size or MMIO_SPAN[self.type]


@dataclass(frozen=True)
class RegCheck:
    """One expected register: exact value, masked value, or inclusive range."""

    name: str
    value: int | None   # an Address (`sym:`) until machine.plan resolves it
    mask: int | None
    lo: int | None
    hi: int | None
    mark: Mark

    def matches(self, actual: int) -> bool:
        if self.lo is not None or self.hi is not None:
            return (self.lo is None or actual >= self.lo) and (self.hi is None or actual <= self.hi)
        if self.mask is not None:
            return (actual & self.mask) == ((self.value or 0) & self.mask)
        return actual == self.value


@dataclass(frozen=True)
class MemCheck:
    """Expected bytes at an address (from `hex:` or a little-endian `u8`..`u64`)."""

    at: Address
    data: bytes
    form: str  # "hex", "u8", "u16", "u32", "u64"
    mark: Mark


@dataclass(frozen=True)
class MemWrite:
    at: Address
    data: bytes
    mark: Mark


@dataclass(frozen=True)
class StateCheck:
    """What a breakpoint/watchpoint hit (or the end) must show."""

    regs: tuple[RegCheck, ...] = ()
    memory: tuple[MemCheck, ...] = ()
    value: int | None = None  # watchpoints: the watched memory after the access
    value_mark: Mark | None = None


@dataclass(frozen=True)
class StateSet:
    """State changed at a hit (fault injection)."""

    regs: tuple[tuple[str, int, Mark], ...] = ()   # a value is an Address (`sym:`) until resolved
    memory: tuple[MemWrite, ...] = ()


@dataclass(frozen=True)
class Breakpoint:
    at: Address
    kind: str  # "sw" | "hw"
    hits: Count | None
    on_hit: int | None
    expect: StateCheck | None
    set: StateSet | None
    mark: Mark
    index: int = 0
    save: str | None = None   # snapshot point saved at the (on_hit) hit


@dataclass(frozen=True)
class Watchpoint:
    at: Address
    len: int
    access: str  # "read" | "write" | "access"
    hits: Count | None
    on_hit: int | None
    expect: StateCheck | None
    set: StateSet | None
    mark: Mark
    index: int = 0
    save: str | None = None   # snapshot point saved at the (on_hit) hit


@dataclass(frozen=True)
class ConsoleCheck:
    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    mark: Mark | None = None


@dataclass(frozen=True)
class Golden:
    file: Path
    ignore: tuple[str, ...]
    mark: Mark


@dataclass(frozen=True)
class Expect:
    exit: str | None = None
    exit_mark: Mark | None = None
    exit_code: int | None = None
    exit_code_mark: Mark | None = None
    regs: tuple[RegCheck, ...] = ()
    memory: tuple[MemCheck, ...] = ()
    console: ConsoleCheck | None = None
    port_writes: tuple[tuple[int, tuple[int, ...], Mark], ...] = ()
    steps: Count | None = None
    golden: Golden | None = None
    executed: tuple[Address, ...] = ()       # code the guest must have run (kvmrig.coverage)
    not_executed: tuple[Address, ...] = ()   # code it must never have run

    @property
    def wanted_exits(self) -> tuple[str, ...]:
        """The exits that pass: the named one, or any normal end."""
        if self.exit:
            return (self.exit,)
        if self.exit_code is not None:
            return ("exit-code",)
        return NORMAL_EXITS


@dataclass(frozen=True)
class CpuidLeaf:
    leaf: int
    subleaf: int
    regs: tuple[tuple[str, int], ...]  # ("eax", value), ... only those given
    mark: Mark


@dataclass(frozen=True)
class Cpuid:
    """`cpu.cpuid` (extension, x86_64): changes to what KVM reports."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    vendor: str | None = None
    leaves: tuple[CpuidLeaf, ...] = ()
    mark: Mark | None = None

    def key(self) -> tuple:
        """The edits without where they were written: on one host, equal keys
        give the same CPUID table (VM reuse, the MSRs a vCPU has)."""
        return (self.add, self.remove, self.vendor, tuple((lf.leaf, lf.subleaf, lf.regs) for lf in self.leaves))


@dataclass(frozen=True)
class Cpu:
    mode: str
    entry: Address | None
    regs: tuple[tuple[str, int, Mark], ...]
    tables_at: int | None  # x86: where the runner puts GDT and page tables
    mark: Mark
    cpuid: Cpuid | None = None


@dataclass(frozen=True)
class Machine:
    """`machine:` (extension, x86_64): in-kernel interrupt controllers and timer."""

    irqchip: bool = False
    pit: bool = False
    mark: Mark | None = None
    cpus: int = 1   # the rig's top-level `cpus` (the loader copies it here for the PC machine)


@dataclass(frozen=True)
class Verdict:
    """`verdict:` (extension): the guest's own report read as results."""

    console: str | None = None     # "kvm-unit-tests" | "tap"
    exit_codes: str | None = None  # "kvm-unit-tests"
    mark: Mark | None = None


@dataclass(frozen=True)
class Gic:
    """arm64 (extension): an in-kernel GICv3 (KVM_DEV_TYPE_ARM_VGIC_V3) and, with
    it, the generic timer's interrupts."""

    distributor: int
    redistributor: int
    irqs: int           # INTIDs the distributor implements, the 32 private ones included
    mark: Mark


@dataclass(frozen=True)
class Call:
    """`call:` a child calls one function of its snapshot's firmware."""

    to: Address
    args: tuple[int, ...]
    return_to: Address
    mark: Mark


@dataclass(frozen=True)
class Dtb:
    """arm64 (extension): the device tree whose address x0 holds at entry:
    the rig's own `file`, or one kvmrig generates from the rig."""

    file: Path | None
    at: int | None
    bootargs: str
    initrd: Path | None
    mark: Mark
    file_mark: Mark | None = None
    initrd_mark: Mark | None = None


@dataclass(frozen=True)
class Start:
    """Where a child rig starts: a point another rig saves (`parent` + `point`)
    or a snapshot file (`file`)."""

    parent: Path | None
    point: str | None
    file: Path | None
    mark: Mark

    def __str__(self) -> str:
        return f"{self.parent}#{self.point}" if self.parent is not None else str(self.file)


@dataclass(frozen=True)
class Rig:
    path: Path
    name: str
    arch: str
    description: str = ""
    tags: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    backend: str = "any"
    trace_max: int = 0
    memory: tuple[Region, ...] = ()
    images: tuple[Image, ...] = ()
    devices: tuple[Device, ...] = ()
    cpu: Cpu | None = None
    breakpoints: tuple[Breakpoint, ...] = ()
    watchpoints: tuple[Watchpoint, ...] = ()
    expect: Expect = field(default_factory=Expect)
    unclaimed_io: str = "record"  # extension: "record" | "stop" (exit `io`)
    mark: Mark | None = None
    cpus: int = 1                 # vCPUs; the first starts at the entry, arm64 secondaries by PSCI CPU_ON,
                                  # x86_64 APs by the guest (INIT/SIPI through the LAPIC, machine.irqchip)
    cpus_mark: Mark | None = None
    gic: Gic | None = None
    dtb: Dtb | None = None
    save: str | None = None          # snapshot point saved at the end of the run
    start: Start | None = None       # `from:` this rig starts from a snapshot
    start_set: StateSet | None = None  # `set:` applied on top of the snapshot
    start_input: bytes | None = None   # `input:` the console UART's input from the snapshot on
    start_call: Call | None = None     # `call:` a function of the snapshot's firmware
    machine: Machine = field(default_factory=Machine)
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def wants_dtb(self) -> bool:
        """arm64: whether the guest gets a device tree (declared, or needed by
        an interrupt controller, a Linux Image or more than one vCPU)."""
        return self.arch == "arm64" and (self.dtb is not None or self.gic is not None or self.cpus > 1
                                         or any(i.linux for i in self.images))

    def save_points(self) -> tuple[str, ...]:
        """Every snapshot point this rig saves."""
        points = [p.save for p in (*self.breakpoints, *self.watchpoints) if p.save]
        points += [d.idle for d in self.devices if d.idle and self.start is None]
        return tuple(points + ([self.save] if self.save else []))

    @property
    def folder(self) -> Path:
        return self.path.parent
