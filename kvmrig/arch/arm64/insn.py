"""arm64 instruction words kvmrig plants or recognizes, and PSCI function ids.

Encodings from the Arm ARM A64 "Exception generation" class (C6.2 BRK, HVC,
SMC, SVC): 1101 0100 opc:3 imm16 op2:3 LL:2. A64 instructions are 32-bit
little-endian words (data endianness aside, instruction fetches are always
little-endian in AArch64).
"""

from __future__ import annotations

# --- Exception-generating instructions ---
BRK_BASE = 0xD4200000        # BRK #imm16: opc=001, LL=00
SVC_BASE = 0xD4000001        # SVC #imm16: opc=000, LL=01
HVC_BASE = 0xD4000002        # HVC #imm16: opc=000, LL=10
SMC_BASE = 0xD4000003        # SMC #imm16: opc=000, LL=11
_EXC_MASK = 0xFFE0001F       # everything but imm16 (bits [20:5])
NOP = 0xD503201F


def _imm16(imm: int) -> int:
    if not isinstance(imm, int) or not 0 <= imm <= 0xFFFF:
        raise ValueError(f"immediate {imm!r} does not fit imm16")
    return imm << 5


def brk_word(imm: int = 0) -> int:
    """BRK #imm as a 32-bit word: 0xd4200000 | imm16 << 5."""
    return BRK_BASE | _imm16(imm)


def brk(imm: int = 0) -> bytes:
    """BRK #imm as the 4 bytes a software breakpoint writes into guest memory."""
    return brk_word(imm).to_bytes(4, "little")


def hvc(imm: int = 0) -> bytes:
    """HVC #imm as 4 bytes (the PSCI conduit KVM implements)."""
    return (HVC_BASE | _imm16(imm)).to_bytes(4, "little")


def word(data: bytes, offset: int = 0) -> int:
    """The little-endian instruction word at `offset` of `data`."""
    return int.from_bytes(data[offset:offset + 4], "little")


def is_brk(insn: int | bytes) -> bool:
    """True for any BRK #imm (a word, or its 4 little-endian bytes)."""
    if isinstance(insn, (bytes, bytearray, memoryview)):
        insn = word(bytes(insn))
    return insn & _EXC_MASK == BRK_BASE


def brk_imm_of(insn: int | bytes) -> int:
    """The #imm16 of a BRK word."""
    if isinstance(insn, (bytes, bytearray, memoryview)):
        insn = word(bytes(insn))
    if not is_brk(insn):
        raise ValueError(f"{insn:#010x} is not a BRK instruction")
    return (insn >> 5) & 0xFFFF


# --- PSCI function ids (Arm DEN0022, "Power State Coordination Interface",
# function ID table; also Linux include/uapi/linux/psci.h). The SMC32
# calling convention ids are 0x8400_00nn, the SMC64 ones 0xC400_00nn
# (SMC Calling Convention, DEN0028: bit 31 fast call, bit 30 SMC64, owner
# 4 = standard secure service). The guest passes the id in w0/x0 to HVC #0
# (KVM's conduit); KVM handles CPU_ON etc. itself and exits to userspace
# with KVM_EXIT_SYSTEM_EVENT for SYSTEM_OFF / SYSTEM_RESET. ---
PSCI_FN_BASE = 0x84000000
PSCI_FN64_BASE = 0xC4000000

PSCI_VERSION = 0x84000000
PSCI_CPU_SUSPEND = 0x84000001
PSCI_CPU_SUSPEND64 = 0xC4000001
PSCI_CPU_OFF = 0x84000002
PSCI_CPU_ON = 0x84000003
PSCI_CPU_ON64 = 0xC4000003
PSCI_AFFINITY_INFO = 0x84000004
PSCI_AFFINITY_INFO64 = 0xC4000004
PSCI_MIGRATE = 0x84000005
PSCI_MIGRATE64 = 0xC4000005
PSCI_MIGRATE_INFO_TYPE = 0x84000006
PSCI_MIGRATE_INFO_UP_CPU = 0x84000007
PSCI_MIGRATE_INFO_UP_CPU64 = 0xC4000007
PSCI_SYSTEM_OFF = 0x84000008
PSCI_SYSTEM_RESET = 0x84000009
PSCI_FEATURES = 0x8400000A        # PSCI 1.0
PSCI_SYSTEM_SUSPEND = 0x8400000E  # PSCI 1.0
PSCI_SYSTEM_SUSPEND64 = 0xC400000E
PSCI_SYSTEM_RESET2 = 0x84000012   # PSCI 1.1
PSCI_SYSTEM_RESET2_64 = 0xC4000012

# Return codes (DEN0022, "Return error codes"), as signed 32-bit values.
PSCI_RET_SUCCESS = 0
PSCI_RET_NOT_SUPPORTED = -1
PSCI_RET_INVALID_PARAMS = -2
PSCI_RET_DENIED = -3
PSCI_RET_ALREADY_ON = -4
PSCI_RET_ON_PENDING = -5
PSCI_RET_INTERNAL_FAILURE = -6
PSCI_RET_NOT_PRESENT = -7
PSCI_RET_DISABLED = -8
PSCI_RET_INVALID_ADDRESS = -9

PSCI_NAMES = {
    PSCI_VERSION: "PSCI_VERSION",
    PSCI_CPU_SUSPEND: "CPU_SUSPEND", PSCI_CPU_SUSPEND64: "CPU_SUSPEND",
    PSCI_CPU_OFF: "CPU_OFF",
    PSCI_CPU_ON: "CPU_ON", PSCI_CPU_ON64: "CPU_ON",
    PSCI_AFFINITY_INFO: "AFFINITY_INFO", PSCI_AFFINITY_INFO64: "AFFINITY_INFO",
    PSCI_MIGRATE: "MIGRATE", PSCI_MIGRATE64: "MIGRATE",
    PSCI_MIGRATE_INFO_TYPE: "MIGRATE_INFO_TYPE",
    PSCI_MIGRATE_INFO_UP_CPU: "MIGRATE_INFO_UP_CPU", PSCI_MIGRATE_INFO_UP_CPU64: "MIGRATE_INFO_UP_CPU",
    PSCI_SYSTEM_OFF: "SYSTEM_OFF",
    PSCI_SYSTEM_RESET: "SYSTEM_RESET",
    PSCI_FEATURES: "PSCI_FEATURES",
    PSCI_SYSTEM_SUSPEND: "SYSTEM_SUSPEND", PSCI_SYSTEM_SUSPEND64: "SYSTEM_SUSPEND",
    PSCI_SYSTEM_RESET2: "SYSTEM_RESET2", PSCI_SYSTEM_RESET2_64: "SYSTEM_RESET2",
}
