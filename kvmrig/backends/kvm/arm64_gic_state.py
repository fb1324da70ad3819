"""The in-kernel GICv3's state, as text, for snapshots of arm64 rigs with `gic:`.

What is saved (Documentation/virt/kvm/devices/arm-vgic-v3.rst): the
distributor's registers for the shared interrupts (KVM_DEV_ARM_VGIC_GRP_DIST_REGS;
KVM's distributor always has affinity routing on, so its banks for the 32
private INTIDs are RAZ/WI and are left out), each vCPU's redistributor
(KVM_DEV_ARM_VGIC_GRP_REDIST_REGS: the RD frame's CTLR/STATUSR/WAKER and the
SGI frame's group, config, enable, pending, active and priority registers),
each vCPU's CPU interface (KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS: ICC_SRE, CTLR,
IGRPEN0/1, PMR, BPR0/1 and as many AP0R/AP1R as ICC_CTLR_EL1.PRIbits
implies) and the input line levels (KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO: SPIs once,
PPIs per vCPU). Not saved: LPI state (GICR_PROPBASER/PENDBASER, pending
tables) - kvmrig creates no ITS, so no LPI can exist.

Pending registers read and write the *latch* through this interface (not
the guest's view, which ORs in the line level), and a write sets the latch
to exactly the value written, so pending restores by one write; enable and
active are written as "clear all but" then "set" (ICENABLER/ICACTIVER, then
ISENABLER/ISACTIVER), so a restore is exact whatever the GIC held before.

Order of the restore (after the vCPUs' own registers; QEMU's
hw/intc/arm_gicv3_kvm.c restores in the same order): GICD_IIDR first (the
doc asks for it: it fixes KVM's behaviour revision), GICD_STATUSR and
GICD_CTLR; then each redistributor, its edge/level configuration before its
line levels and pending bits; then the rest of the distributor likewise;
the CPU interface registers last, ICC_SRE_EL1 and ICC_CTLR_EL1 first.

Registers are named in the file ("GICD_ISENABLER1", "GICR_IPRIORITYR3",
"ICC_PMR_EL1"); `parse` checks every name and value before anything is
written, so a damaged GIC part is a GicStateError naming what is wrong.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from kvmrig.backends.kvm import abi
from kvmrig.errors import KvmError

VERSION = 3   # GICv3: the only GIC kvmrig creates

SGI_FRAME = 0x10000   # a redistributor's second 64 KiB frame


class GicStateError(ValueError):
    """The saved GIC state is malformed or does not fit this machine."""


# -- encodings (pure) ------------------------------------------------------------

def mpidr_field(mpidr: int) -> int:
    """MPIDR_EL1 -> the mpidr field of a vGIC attr (Aff3.Aff2.Aff1.Aff0 in bits 63:32):
    Aff0-2 are MPIDR bits 23:0, Aff3 bits 39:32."""
    aff = (mpidr & 0xFFFFFF) | ((mpidr >> 32) & 0xFF) << 24
    return aff << abi.KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT


def reg_attr(mpidr: int, offset: int) -> int:
    """attr of a (re)distributor register: the vCPU (ignored by the distributor) and the offset."""
    return mpidr_field(mpidr) | (offset & abi.KVM_DEV_ARM_VGIC_OFFSET_MASK)


def sysreg_instr(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The instr field of a CPU interface register: op0:op1:CRn:CRm:op2 as in MRS/MSR."""
    return op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


def sysreg_attr(mpidr: int, instr: int) -> int:
    return mpidr_field(mpidr) | (instr & abi.KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK)


def level_attr(mpidr: int, intid: int) -> int:
    """attr of the line levels of INTIDs intid..intid+31 (a multiple of 32)."""
    if intid % 32 or not 0 <= intid <= abi.KVM_DEV_ARM_VGIC_LINE_LEVEL_INTID_MASK:
        raise ValueError(f"line levels come in banks of 32 INTIDs: {intid} is not a bank's first")
    info = abi.VGIC_LEVEL_INFO_LINE_LEVEL << abi.KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT
    return mpidr_field(mpidr) | (info & abi.KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_MASK) | intid


# -- which registers (pure) --------------------------------------------------------

@dataclass(frozen=True)
class Reg:
    """One saved 32-bit register: `clear` is its write-1-to-clear twin (written
    with the complement first); `words` 2 for the 64-bit GICD_IROUTER (two accesses)."""

    name: str
    offset: int
    clear: int | None = None
    words: int = 1


def dist_head() -> list[Reg]:
    """Restored before the redistributors: IIDR first, then STATUSR and CTLR (ARE, group enables)."""
    return [Reg("GICD_IIDR", 0x0008), Reg("GICD_STATUSR", 0x0010), Reg("GICD_CTLR", 0x0000)]


def dist_config(irqs: int) -> list[Reg]:
    """Group, group modifier and edge/level configuration of the SPIs (before their levels)."""
    banks = range(1, irqs // 32)
    return ([Reg(f"GICD_IGROUPR{n}", 0x0080 + 4 * n) for n in banks]
            + [Reg(f"GICD_IGRPMODR{n}", 0x0D00 + 4 * n) for n in banks]
            + [Reg(f"GICD_ICFGR{n}", 0x0C00 + 4 * n) for n in range(2, irqs // 16)])


def dist_state(irqs: int) -> list[Reg]:
    """Enable, pending, active, priority and routing of the SPIs (after their levels)."""
    banks = range(1, irqs // 32)
    return ([Reg(f"GICD_ISENABLER{n}", 0x0100 + 4 * n, clear=0x0180 + 4 * n) for n in banks]
            + [Reg(f"GICD_ISPENDR{n}", 0x0200 + 4 * n) for n in banks]
            + [Reg(f"GICD_ISACTIVER{n}", 0x0300 + 4 * n, clear=0x0380 + 4 * n) for n in banks]
            + [Reg(f"GICD_IPRIORITYR{n}", 0x0400 + 4 * n) for n in range(8, irqs // 4)]
            + [Reg(f"GICD_IROUTER{i}", 0x6000 + 8 * i, words=2) for i in range(32, irqs)])


def redist_config() -> list[Reg]:
    return [Reg("GICR_CTLR", 0x0000), Reg("GICR_STATUSR", 0x0010), Reg("GICR_WAKER", 0x0014),
            Reg("GICR_IGROUPR0", SGI_FRAME + 0x0080), Reg("GICR_IGRPMODR0", SGI_FRAME + 0x0D00),
            Reg("GICR_ICFGR0", SGI_FRAME + 0x0C00), Reg("GICR_ICFGR1", SGI_FRAME + 0x0C04)]


def redist_state() -> list[Reg]:
    return ([Reg("GICR_ISENABLER0", SGI_FRAME + 0x0100, clear=SGI_FRAME + 0x0180),
             Reg("GICR_ISPENDR0", SGI_FRAME + 0x0200),
             Reg("GICR_ISACTIVER0", SGI_FRAME + 0x0300, clear=SGI_FRAME + 0x0380)]
            + [Reg(f"GICR_IPRIORITYR{n}", SGI_FRAME + 0x0400 + 4 * n) for n in range(8)])


# CPU interface registers in restore order: (name, op0, op1, CRn, CRm, op2).
ICC_REGS = (
    ("ICC_SRE_EL1", 3, 0, 12, 12, 5),
    ("ICC_CTLR_EL1", 3, 0, 12, 12, 4),
    ("ICC_IGRPEN0_EL1", 3, 0, 12, 12, 6),
    ("ICC_IGRPEN1_EL1", 3, 0, 12, 12, 7),
    ("ICC_PMR_EL1", 3, 0, 4, 6, 0),
    ("ICC_BPR0_EL1", 3, 0, 12, 8, 3),
    ("ICC_BPR1_EL1", 3, 0, 12, 12, 3),
)


def apr_count(icc_ctlr: int) -> int:
    """How many AP0R<n>/AP1R<n> exist: 1, 2 or 4 for 5, 6 or 7 priority bits
    (ICC_CTLR_EL1.PRIbits, bits 10:8, is the number of bits minus one)."""
    bits = ((icc_ctlr >> 8) & 7) + 1
    return 1 << max(0, min(bits, 7) - 5)


def icc_regs(icc_ctlr: int) -> list[tuple[str, int]]:
    """(name, instr) of every CPU interface register saved, in restore order."""
    out = [(name, sysreg_instr(*enc)) for name, *enc in ICC_REGS]
    n = apr_count(icc_ctlr)
    out += [(f"ICC_AP0R{i}_EL1", sysreg_instr(3, 0, 12, 8, 4 + i)) for i in range(n)]
    out += [(f"ICC_AP1R{i}_EL1", sysreg_instr(3, 0, 12, 9, i)) for i in range(n)]
    return out


def spi_banks(irqs: int) -> list[int]:
    """First INTID of each bank of 32 SPIs (line levels)."""
    return list(range(32, irqs, 32))


# -- save and restore (KVM) --------------------------------------------------------

def _get_regs(dev, regs: list[Reg], mpidr: int, group: int) -> dict[str, str]:
    out = {}
    for r in regs:
        try:
            value = 0
            for w in range(r.words):
                value |= dev.get_attr(group, reg_attr(mpidr, r.offset + 4 * w), 4) << (32 * w)
        except KvmError as e:
            if e.errno == errno.ENXIO:   # this KVM has no such register: nothing to carry
                continue
            raise
        out[r.name] = f"{value:#x}"
    return out


def save(dev, layout, mpidrs: list[int]) -> dict:
    """The GIC's state as text: `dev` the vGICv3 device, `layout` its GicLayout,
    `mpidrs` each vCPU's MPIDR_EL1 in vCPU order (the vCPUs stopped)."""
    dist_group, redist_group = abi.KVM_DEV_ARM_VGIC_GRP_DIST_REGS, abi.KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
    level_group, sys_group = abi.KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, abi.KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS
    irqs = layout.irqs
    dist = _get_regs(dev, dist_head() + dist_config(irqs) + dist_state(irqs), 0, dist_group)
    levels = {str(i): f"{dev.get_attr(level_group, level_attr(0, i), 4):#x}" for i in spi_banks(irqs)}
    cpus = []
    for mpidr in mpidrs:
        redist = _get_regs(dev, redist_config() + redist_state(), mpidr, redist_group)
        ppi = dev.get_attr(level_group, level_attr(mpidr, 0), 4)
        ctlr = dev.get_attr(sys_group, sysreg_attr(mpidr, sysreg_instr(3, 0, 12, 12, 4)), 8)
        icc = {name: f"{dev.get_attr(sys_group, sysreg_attr(mpidr, instr), 8):#x}"
               for name, instr in icc_regs(ctlr)}
        cpus.append({"mpidr": f"{mpidr:#x}", "redist": redist, "ppi_levels": f"{ppi:#x}", "icc": icc})
    return {"version": VERSION, "distributor": f"{layout.distributor:#x}",
            "redistributor": f"{layout.redistributor:#x}", "irqs": irqs,
            "dist": dist, "spi_levels": levels, "cpus": cpus}


@dataclass
class GicState:
    """Parsed, checked text of save(): values as ints."""

    distributor: int
    redistributor: int
    irqs: int
    dist: dict[str, int]
    spi_levels: dict[int, int]
    cpus: list[dict]   # each: mpidr, redist {name: int}, ppi_levels, icc {name: int}


def _num(value, what: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise GicStateError(f"{what}: {value!r} is not a number")
    try:
        n = int(value, 0) if isinstance(value, str) else value
    except ValueError:
        raise GicStateError(f"{what}: {value!r} is not a number") from None
    if not 0 <= n < 1 << bits:
        raise GicStateError(f"{what}: {value!r} does not fit {bits} bits")
    return n


def _regs(raw, known: dict[str, int], what: str) -> dict[str, int]:
    """{name: value} checked against `known` (name -> width in bits)."""
    if not isinstance(raw, dict):
        raise GicStateError(f"{what}: not a table of registers")
    out = {}
    for name, value in raw.items():
        if name not in known:
            raise GicStateError(f"{what}: unknown register {name!r}")
        out[name] = _num(value, f"{what} {name}", known[name])
    return out


def parse(text) -> GicState:
    """Check the text of save() entirely (GicStateError naming the first fault)."""
    if not isinstance(text, dict):
        raise GicStateError("the GIC part is not a table")
    try:
        version, irqs = text["version"], text["irqs"]
        dist_at, redist_at = text["distributor"], text["redistributor"]
        dist_raw, levels_raw, cpus_raw = text["dist"], text["spi_levels"], text["cpus"]
    except KeyError as e:
        raise GicStateError(f"the GIC part lacks {e}") from None
    if version != VERSION:
        raise GicStateError(f"GIC version {version!r}; kvmrig saves and loads GICv3 (3) only")
    if isinstance(irqs, bool) or not isinstance(irqs, int) or irqs % 32 or not 64 <= irqs <= 1024:
        raise GicStateError(f"irqs {irqs!r}: not a GICv3 interrupt count (64..1024, a multiple of 32)")
    distributor, redistributor = _num(dist_at, "distributor", 64), _num(redist_at, "redistributor", 64)
    dist_known = {r.name: 32 * r.words for r in dist_head() + dist_config(irqs) + dist_state(irqs)}
    dist = _regs(dist_raw, dist_known, "distributor")
    if not isinstance(levels_raw, dict):
        raise GicStateError("spi_levels: not a table")
    banks = set(spi_banks(irqs))
    levels = {}
    for k, v in levels_raw.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) in banks):
            raise GicStateError(f"spi_levels: {k!r} is not the first INTID of a bank of SPIs")
        levels[int(k)] = _num(v, f"spi_levels {k}", 32)
    if not isinstance(cpus_raw, list) or not cpus_raw:
        raise GicStateError("cpus: not a list of vCPUs")
    redist_known = {r.name: 32 for r in redist_config() + redist_state()}
    cpus = []
    for i, c in enumerate(cpus_raw):
        where = f"vCPU {i}"
        if not isinstance(c, dict) or not {"mpidr", "redist", "ppi_levels", "icc"} <= set(c):
            raise GicStateError(f"{where}: needs mpidr, redist, ppi_levels and icc")
        icc_raw = c["icc"]
        if not isinstance(icc_raw, dict) or "ICC_CTLR_EL1" not in icc_raw:
            raise GicStateError(f"{where}: its CPU interface registers lack ICC_CTLR_EL1")
        ctlr = _num(icc_raw["ICC_CTLR_EL1"], f"{where} ICC_CTLR_EL1", 64)
        icc = _regs(icc_raw, {name: 64 for name, _ in icc_regs(ctlr)}, f"{where} CPU interface")
        cpus.append({"mpidr": _num(c["mpidr"], f"{where} mpidr", 64),
                     "redist": _regs(c["redist"], redist_known, f"{where} redistributor"),
                     "ppi_levels": _num(c["ppi_levels"], f"{where} ppi_levels", 32), "icc": icc})
    return GicState(distributor, redistributor, irqs, dist, levels, cpus)


def _put_regs(dev, regs: list[Reg], values: dict[str, int], mpidr: int, group: int) -> None:
    for r in regs:
        if r.name not in values:
            continue
        value = values[r.name]
        if r.clear is not None:
            dev.set_attr(group, reg_attr(mpidr, r.clear), ~value & 0xFFFFFFFF, 4)
        for w in range(r.words):
            dev.set_attr(group, reg_attr(mpidr, r.offset + 4 * w), (value >> (32 * w)) & 0xFFFFFFFF, 4)


def restore(dev, state: GicState, mpidrs: list[int]) -> None:
    """Write `state` into the vGICv3 `dev` (created, placed and initialised as
    saved; vCPUs in the same order, stopped). The vCPU ids must match: each
    saved vCPU's MPIDR is this machine's vCPU's."""
    if [c["mpidr"] for c in state.cpus] != list(mpidrs):
        raise GicStateError("the GIC state names vCPUs " + ", ".join(f"{c['mpidr']:#x}" for c in state.cpus)
                            + "; this machine's are " + ", ".join(f"{m:#x}" for m in mpidrs))
    dist_group, redist_group = abi.KVM_DEV_ARM_VGIC_GRP_DIST_REGS, abi.KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
    level_group, sys_group = abi.KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, abi.KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS
    _put_regs(dev, dist_head(), state.dist, 0, dist_group)
    for c in state.cpus:
        mpidr = c["mpidr"]
        _put_regs(dev, redist_config(), c["redist"], mpidr, redist_group)
        dev.set_attr(level_group, level_attr(mpidr, 0), c["ppi_levels"], 4)
        _put_regs(dev, redist_state(), c["redist"], mpidr, redist_group)
    _put_regs(dev, dist_config(state.irqs), state.dist, 0, dist_group)
    for intid, bits in sorted(state.spi_levels.items()):
        dev.set_attr(level_group, level_attr(0, intid), bits, 4)
    _put_regs(dev, dist_state(state.irqs), state.dist, 0, dist_group)
    for c in state.cpus:
        for name, instr in icc_regs(c["icc"]["ICC_CTLR_EL1"]):
            if name in c["icc"]:
                dev.set_attr(sys_group, sysreg_attr(c["mpidr"], instr), c["icc"][name], 8)
