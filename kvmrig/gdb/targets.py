"""What gdb sees of each arch: its registers in order, and the target
description XML that names them (GDB manual, "Target Descriptions" and
"Standard Target Features").

The `g` packet carries every register in the order of the XML, each as its
little-endian bytes in hex; a register kvmrig cannot read is sent as `xx..`
(gdb shows it as <unavailable>). x86's x87 and SSE registers and
fs_base/gs_base come from Backend.get_extra_regs and are read-only (a write
from gdb leaves them unchanged); a backend that does not read them leaves
them unavailable (the x87 ones are part of org.gnu.gdb.i386.core, so they
are always listed).

Registers gdb knows narrower than kvmrig's (eflags and the segment selectors
are 32 bits in gdb, cpsr is PSTATE's low 32 bits) are the low bits of
kvmrig's register, and writing them keeps its other bits.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmrig.gdb.protocol import ProtocolError, fromhex


@dataclass(frozen=True)
class Reg:
    name: str            # gdb's name
    bits: int
    source: str | None   # kvmrig's canonical register; None: unavailable
    type: str = "int"
    group: str | None = None


@dataclass(frozen=True)
class Feature:
    name: str
    regs: tuple[Reg, ...]
    types: str = ""      # XML type definitions the feature's registers use


class Target:
    """One arch's register list and description, as served to gdb."""

    def __init__(self, arch: str, gdb_arch: str, features: list[Feature], pc: str, gdb_names: str):
        self.arch = arch
        self.gdb_arch = gdb_arch
        self.features = features
        self.regs: list[Reg] = [r for f in features for r in f.regs]
        self.index = {r.name: i for i, r in enumerate(self.regs)}
        self.pc = pc              # kvmrig's name of the program counter
        self.gdb_names = gdb_names  # how to start gdb for this arch

    # Description ------------------------------------------------------------
    def xml(self) -> str:
        out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', '<target version="1.0">',
               f"  <architecture>{self.gdb_arch}</architecture>"]
        n = 0
        for f in self.features:
            out.append(f'  <feature name="{f.name}">')
            if f.types:
                out.extend("    " + line for line in f.types.strip().splitlines())
            for r in f.regs:
                group = f' group="{r.group}"' if r.group else ""
                out.append(f'    <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{n}"{group}/>')
                n += 1
            out.append("  </feature>")
        out.append("</target>")
        return "\n".join(out) + "\n"

    # Values -----------------------------------------------------------------
    def encode(self, i: int, regs: dict[str, int]) -> str:
        r = self.regs[i]
        nbytes = r.bits // 8
        if r.source is None or r.source not in regs:
            return "xx" * nbytes
        value = regs[r.source] & ((1 << r.bits) - 1)
        return value.to_bytes(nbytes, "little").hex()

    def encode_all(self, regs: dict[str, int]) -> str:
        return "".join(self.encode(i, regs) for i in range(len(self.regs)))

    def decode(self, i: int, text: str) -> int | None:
        """The value of register i in `text` (its hex); None if it says unavailable."""
        r = self.regs[i]
        if len(text) != r.bits // 4:
            raise ProtocolError(f"register {r.name} takes {r.bits // 4} hex digits, not {len(text)}")
        if "x" in text.lower():
            return None
        return int.from_bytes(fromhex(text), "little")

    def decode_all(self, text: str) -> list[int | None]:
        values, at = [], 0
        for i, r in enumerate(self.regs):
            width = r.bits // 4
            if at + width > len(text):
                break  # gdb may send fewer registers than described
            values.append(self.decode(i, text[at:at + width]))
            at += width
        return values

    def update(self, i: int, value: int, regs: dict[str, int]) -> dict[str, int]:
        """{kvmrig register: new value} for writing `value` into register i
        (the bits gdb's register does not cover keep their value); {} when
        kvmrig cannot write it."""
        r = self.regs[i]
        if r.source is None or r.source not in regs:
            return {}
        mask = (1 << r.bits) - 1
        return {r.source: (regs[r.source] & ~mask) | (value & mask)}


# x86_64 ---------------------------------------------------------------------

_EFLAGS = ("CF", "", "PF", None, "AF", None, "ZF", "SF", "TF", "IF", "DF", "OF", None, None, "NT", None,
           "RF", "VM", "AC", "VIF", "VIP", "ID")
X86_TYPES = '<flags id="i386_eflags" size="4">\n' + "".join(
    f'  <field name="{name}" start="{bit}" end="{bit}"/>\n' for bit, name in enumerate(_EFLAGS)
    if name is not None) + "</flags>"


_MXCSR = ("IE", "DE", "ZE", "OE", "UE", "PE", "DAZ", "IM", "DM", "ZM", "OM", "UM", "PM", None, None, "FZ")
X86_SSE_TYPES = """
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union>
<flags id="i386_mxcsr" size="4">
""" + "".join(f'  <field name="{name}" start="{bit}" end="{bit}"/>\n' for bit, name in enumerate(_MXCSR)
              if name is not None) + "</flags>"


def x86_64_target(available: set[str]) -> Target:
    gprs = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp") + tuple(f"r{n}" for n in range(8, 16))
    core = [Reg(n, 64, n, "data_ptr" if n in ("rbp", "rsp") else "int64") for n in gprs]
    core.append(Reg("rip", 64, "rip", "code_ptr"))
    core.append(Reg("eflags", 32, "rflags", "i386_eflags"))
    core += [Reg(n, 32, n, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    # The x87 registers belong to gdb's core feature (read-only: Backend.get_extra_regs).
    core += [Reg(f"st{n}", 80, f"st{n}" if f"st{n}" in available else None, "i387_ext") for n in range(8)]
    core += [Reg(n, 32, n if n in available else None, "int", "float")
             for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
    features = [Feature("org.gnu.gdb.i386.core", tuple(core), X86_TYPES)]
    if "xmm0" in available:
        sse = [Reg(f"xmm{n}", 128, f"xmm{n}", "vec128", "vector") for n in range(16)]
        sse.append(Reg("mxcsr", 32, "mxcsr", "i386_mxcsr", "vector"))
        features.append(Feature("org.gnu.gdb.i386.sse", tuple(sse), X86_SSE_TYPES))
    if "fs_base" in available:
        features.append(Feature("org.gnu.gdb.i386.segments",
                                (Reg("fs_base", 64, "fs_base", "int"), Reg("gs_base", 64, "gs_base", "int"))))
    control = tuple(Reg(n, 64, n, "int64", "system") for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
                    if n in available)
    if control:
        features.append(Feature("org.kvmrig.x86.control", control))
    return Target("x86_64", "i386:x86-64", features, "rip", "gdb")


# arm64 ----------------------------------------------------------------------

_ARM64_VECTORS = """
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v2u" type="uint64" count="2"/>
<vector id="v2i" type="int64" count="2"/>
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v4u" type="uint32" count="4"/>
<vector id="v4i" type="int32" count="4"/>
<vector id="v8u" type="uint16" count="8"/>
<vector id="v8i" type="int16" count="8"/>
<vector id="v16u" type="uint8" count="16"/>
<vector id="v16i" type="int8" count="16"/>
<vector id="v1u" type="uint128" count="1"/>
<vector id="v1i" type="int128" count="1"/>
<union id="vnd"><field name="f" type="v2d"/><field name="u" type="v2u"/><field name="s" type="v2i"/></union>
<union id="vns"><field name="f" type="v4f"/><field name="u" type="v4u"/><field name="s" type="v4i"/></union>
<union id="vnh"><field name="u" type="v8u"/><field name="s" type="v8i"/></union>
<union id="vnb"><field name="u" type="v16u"/><field name="s" type="v16i"/></union>
<union id="vnq"><field name="u" type="v1u"/><field name="s" type="v1i"/></union>
<union id="aarch64v"><field name="d" type="vnd"/><field name="s" type="vns"/><field name="h" type="vnh"/><field name="b" type="vnb"/><field name="q" type="vnq"/></union>
"""


def arm64_target(available: set[str]) -> Target:
    core = [Reg(f"x{n}", 64, f"x{n}") for n in range(31)]
    core += [Reg("sp", 64, "sp", "data_ptr"), Reg("pc", 64, "pc", "code_ptr"), Reg("cpsr", 32, "pstate")]
    features = [Feature("org.gnu.gdb.aarch64.core", tuple(core))]
    if "v0" in available:
        fpu = [Reg(f"v{n}", 128, f"v{n}", "aarch64v", "vector") for n in range(32)]
        fpu += [Reg("fpsr", 32, "fpsr" if "fpsr" in available else None),
                Reg("fpcr", 32, "fpcr" if "fpcr" in available else None)]
        features.append(Feature("org.gnu.gdb.aarch64.fpu", tuple(fpu), _ARM64_VECTORS))
    return Target("arm64", "aarch64", features, "pc", "gdb-multiarch")


def target_for(arch: str, available: set[str] | frozenset[str]) -> Target:
    """The description for `arch`, given the registers the backend reads."""
    if arch == "x86_64":
        return x86_64_target(set(available))
    if arch == "arm64":
        return arm64_target(set(available))
    raise ValueError(f"no gdb target description for {arch}")
