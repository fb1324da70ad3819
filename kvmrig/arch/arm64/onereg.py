"""KVM_GET/SET_ONE_REG ids for every arm64 register kvmrig names, from ONE table.

Id layout (include/uapi/linux/kvm.h, arch/arm64/include/uapi/asm/kvm.h):

    KVM_REG_ARM64 (0x6000_0000_0000_0000) | size | group | index
    size:  KVM_REG_SIZE_U32/U64/U128 = 2/3/4 << 52
    group: KVM_REG_ARM_CORE     = 0x0010 << 16, index = offsetof(struct
           kvm_regs, field) / sizeof(__u32)
           KVM_REG_ARM64_SYSREG = 0x0013 << 16, index = op0:2 op1:3 CRn:4
           CRm:4 op2:3 (bits 15..0), always U64

struct kvm_regs (64-bit offsets, checked against Documentation/virt/kvm/
api.rst's table of core registers):

    struct user_pt_regs regs   0    regs[31] (0..240), sp 248 (= SP_EL0),
                                    pc 256, pstate 264
    __u64 sp_el1               272
    __u64 elr_el1              280
    __u64 spsr[5]              288  spsr[KVM_SPSR_EL1 = 0] is SPSR_EL1
    struct user_fpsimd_state   336  (__uint128_t makes it 16-byte aligned,
                                    so 328 rounds up to 336)
        vregs[32]              336  16 bytes each
        fpsr, fpcr             848, 852 (__u32)

Which stack pointer is "sp": the name a rig writes means the stack pointer
of the CURRENT exception level, as an assembler programmer sees it. KVM
keeps SP_EL0 in kvm_regs.regs.sp (api.rst calls it "SP") and SP_EL1 in
kvm_regs.sp_el1. At EL1h (PSTATE.M = 0b0101, where a bare-metal guest
boots) the live stack pointer is SP_EL1; at EL0t and EL1t it is SP_EL0. A
backend resolves "sp" with `sp_for_pstate(pstate)` (or `resolve`) after it
has read PSTATE, then reads or writes that register's id. `reg_id("sp")`
on its own returns KVM's "SP" (regs.sp = SP_EL0), the header's meaning,
and is the same id as "sp_el0": it is the only alias in the table.
"""

from __future__ import annotations


KVM_REG_ARM64 = 0x6000_0000_0000_0000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_U32 = 2 << KVM_REG_SIZE_SHIFT
KVM_REG_SIZE_U64 = 3 << KVM_REG_SIZE_SHIFT
KVM_REG_SIZE_U128 = 4 << KVM_REG_SIZE_SHIFT
KVM_REG_ARM_COPROC_SHIFT = 16
KVM_REG_ARM_CORE = 0x0010 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG = 0x0013 << KVM_REG_ARM_COPROC_SHIFT

_SIZE_FIELD = {4: KVM_REG_SIZE_U32, 8: KVM_REG_SIZE_U64, 16: KVM_REG_SIZE_U128}

# struct kvm_regs byte offsets (see the module docstring).
_OFF_REGS = 0
_OFF_SP = 31 * 8
_OFF_PC = _OFF_SP + 8
_OFF_PSTATE = _OFF_PC + 8
_OFF_SP_EL1 = _OFF_PSTATE + 8
_OFF_ELR_EL1 = _OFF_SP_EL1 + 8
_OFF_SPSR = _OFF_ELR_EL1 + 8
_OFF_FP = (_OFF_SPSR + 5 * 8 + 15) & ~15          # 16-byte aligned user_fpsimd_state
_OFF_VREGS = _OFF_FP
_OFF_FPSR = _OFF_VREGS + 32 * 16
_OFF_FPCR = _OFF_FPSR + 4


def core_reg(offset: int, size: int) -> int:
    """KVM_REG_ARM_CORE id of the kvm_regs field at byte `offset`."""
    if offset % 4:
        raise ValueError(f"kvm_regs offset {offset} is not a multiple of 4")
    return KVM_REG_ARM64 | _SIZE_FIELD[size] | KVM_REG_ARM_CORE | offset // 4


def sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """KVM_REG_ARM64_SYSREG id (64-bit) of the system register with this
    MRS/MSR encoding (the __ARM64_SYS_REG macro of asm/kvm.h)."""
    for name, value, width in (("op0", op0, 2), ("op1", op1, 3), ("CRn", crn, 4),
                               ("CRm", crm, 4), ("op2", op2, 3)):
        if not 0 <= value < 1 << width:
            raise ValueError(f"sys_reg {name}={value} does not fit {width} bits")
    return (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG
            | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2)


# The one table: canonical name -> (id, size in bytes).
def _table() -> dict[str, tuple[int, int]]:
    t: dict[str, tuple[int, int]] = {}

    def core(name: str, offset: int, size: int = 8) -> None:
        t[name] = (core_reg(offset, size), size)

    for n in range(31):
        core(f"x{n}", _OFF_REGS + 8 * n)
    core("sp_el0", _OFF_SP)                  # regs.sp: KVM's "SP" is SP_EL0
    core("pc", _OFF_PC)
    core("pstate", _OFF_PSTATE)
    core("sp_el1", _OFF_SP_EL1)
    core("elr_el1", _OFF_ELR_EL1)
    core("spsr_el1", _OFF_SPSR)              # spsr[KVM_SPSR_EL1]
    for n in range(32):
        core(f"v{n}", _OFF_VREGS + 16 * n, 16)
    core("fpsr", _OFF_FPSR, 4)
    core("fpcr", _OFF_FPCR, 4)

    # System registers: (op0, op1, CRn, CRm, op2) from the Arm ARM register
    # descriptions ("Accessing <reg>": MRS <Xt>, <reg> encoding), the same
    # values as Linux's arch/arm64/include/asm/sysreg.h SYS_* defines.
    def sysreg(name: str, op0: int, op1: int, crn: int, crm: int, op2: int) -> None:
        t[name] = (sys_reg(op0, op1, crn, crm, op2), 8)

    sysreg("midr_el1",       3, 0, 0, 0, 0)    # Main ID Register
    sysreg("mpidr_el1",      3, 0, 0, 0, 5)    # Multiprocessor Affinity Register
    sysreg("sctlr_el1",      3, 0, 1, 0, 0)    # System Control Register
    sysreg("cpacr_el1",      3, 0, 1, 0, 2)    # Architectural Feature Access Control
    sysreg("ttbr0_el1",      3, 0, 2, 0, 0)    # Translation Table Base Register 0
    sysreg("ttbr1_el1",      3, 0, 2, 0, 1)    # Translation Table Base Register 1
    sysreg("tcr_el1",        3, 0, 2, 0, 2)    # Translation Control Register
    sysreg("afsr0_el1",      3, 0, 5, 1, 0)    # Auxiliary Fault Status Register 0
    sysreg("afsr1_el1",      3, 0, 5, 1, 1)    # Auxiliary Fault Status Register 1
    sysreg("esr_el1",        3, 0, 5, 2, 0)    # Exception Syndrome Register
    sysreg("far_el1",        3, 0, 6, 0, 0)    # Fault Address Register
    sysreg("par_el1",        3, 0, 7, 4, 0)    # Physical Address Register
    sysreg("mair_el1",       3, 0, 10, 2, 0)   # Memory Attribute Indirection Register
    sysreg("amair_el1",      3, 0, 10, 3, 0)   # Auxiliary Memory Attribute Indirection
    sysreg("vbar_el1",       3, 0, 12, 0, 0)   # Vector Base Address Register
    sysreg("contextidr_el1", 3, 0, 13, 0, 1)   # Context ID Register
    sysreg("tpidr_el1",      3, 0, 13, 0, 4)   # EL1 Software Thread ID Register
    sysreg("cntkctl_el1",    3, 0, 14, 1, 0)   # Counter-timer Kernel Control Register
    sysreg("csselr_el1",     3, 2, 0, 0, 0)    # Cache Size Selection Register
    sysreg("tpidr_el0",      3, 3, 13, 0, 2)   # EL0 Read/Write Software Thread ID
    sysreg("tpidrro_el0",    3, 3, 13, 0, 3)   # EL0 Read-Only Software Thread ID
    sysreg("mdscr_el1",      2, 0, 0, 2, 2)    # Monitor Debug System Control Register
    return t


ONE_REGS: dict[str, tuple[int, int]] = _table()

# Names that are not registers of their own. "sp" is resolved per PSTATE by
# a rig (module docstring); by itself it means KVM's regs.sp, i.e. SP_EL0.
ALIASES = {"sp": "sp_el0"}


def reg_id(name: str) -> int:
    """The KVM_{GET,SET}_ONE_REG id of register `name` (canonical name)."""
    key = name.lower()
    key = ALIASES.get(key, key)
    try:
        return ONE_REGS[key][0]
    except KeyError:
        raise KeyError(f"no ONE_REG id for arm64 register {name!r}") from None


def reg_size(name: str) -> int:
    """Bytes KVM transfers for register `name`: 8, 16 (v0..v31) or 4 (fpsr, fpcr)."""
    key = name.lower()
    key = ALIASES.get(key, key)
    try:
        return ONE_REGS[key][1]
    except KeyError:
        raise KeyError(f"no ONE_REG id for arm64 register {name!r}") from None


def size_of_id(reg: int) -> int:
    """Bytes a ONE_REG id transfers (KVM_REG_SIZE of kvm.h)."""
    return 1 << ((reg >> KVM_REG_SIZE_SHIFT) & 0xF)


def sp_for_pstate(pstate: int) -> str:
    """The canonical name of the stack pointer in use at this PSTATE.

    PSTATE.M[3:0] (SPSR layout, Arm ARM "SPSR_EL1"): 0b0000 EL0t -> sp_el0,
    0b0100 EL1t -> sp_el0, 0b0101 EL1h -> sp_el1. A KVM guest (no nested
    virtualization) never runs at EL2; AArch32 (M[4] = 1) has no SP_ELx.
    """
    if pstate & 0x10:
        raise ValueError(f"PSTATE {pstate:#x} is AArch32: there is no AArch64 stack pointer")
    mode = pstate & 0xF
    if mode in (0b0000, 0b0100):
        return "sp_el0"
    if mode == 0b0101:
        return "sp_el1"
    raise ValueError(f"PSTATE {pstate:#x}: mode {mode:#06b} is not EL0t, EL1t or EL1h")


def resolve(name: str, pstate: int) -> str:
    """Canonical register a rig's `name` reads at this PSTATE ("sp" -> sp_elN)."""
    key = name.lower()
    return sp_for_pstate(pstate) if key == "sp" else key
