"""Which guest memory one x86 instruction reads and writes, from its encoding
and the registers before it runs (pure; capstone decodes).

The KVM backend needs this where a page is trapped for read watchpoints but
also holds code it must run: there it steps the page's instructions one at a
time with the page mapped, and learns from here what each one reads (writes
still exit, the page staying read-only). Explicit memory operands carry their
access kind in capstone's details; the stack accesses of PUSH/POP/CALL/RET
are implicit and added here (SDM vol.1 6.2, 6.3).
"""

from __future__ import annotations

from typing import NamedTuple

from kvmrig.arch import registers

READ, WRITE = 1, 2   # capstone's CS_AC_READ, CS_AC_WRITE
NO_ACCESS = ("lea", "nop", "prefetch", "prefetchw", "prefetcht0", "prefetcht1", "prefetcht2", "prefetchnta",
             "clflush", "clflushopt", "clwb", "invlpg")
PUSHES = ("push", "pushf", "pushfq", "pushfd", "call")
POPS = ("pop", "popf", "popfq", "popfd", "ret", "retf", "leave")


class Access(NamedTuple):
    addr: int
    size: int
    kind: int   # READ | WRITE bits


def mode_of(cr0: int, efer: int, cs_l: int, cs_db: int) -> int:
    """16, 32 or 64: the code size the CPU runs at (SDM vol.3 5.2.1)."""
    if efer & (1 << 10) and cs_l:      # EFER.LMA and CS.L: 64-bit mode
        return 64
    if cr0 & 1 and cs_db:              # CR0.PE and CS.D
        return 32
    return 16


def _disassembler(bits: int):
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32,
                                            64: capstone.CS_MODE_64}[bits])
    md.detail = True
    return md


_CACHE: dict[int, object] = {}


def _value(md, reg_id: int, regs: dict[str, int], next_pc: int) -> int:
    name = md.reg_name(reg_id)
    if name in ("rip", "eip", "ip"):
        return next_pc
    field = registers.lookup("x86_64", name)
    if field is None:
        return 0
    return registers.extract(regs.get(field.reg, 0), field.shift, field.width)


def accesses(code: bytes, pc: int, regs: dict[str, int], bits: int) -> tuple[int, list[Access]]:
    """(the instruction's length, the memory it accesses) for the instruction at
    linear `pc`; (0, []) if it does not decode. `regs` holds the canonical
    registers, plus fs_base/gs_base (64-bit mode segment bases)."""
    import capstone.x86 as cx

    md = _CACHE.get(bits) or _CACHE.setdefault(bits, _disassembler(bits))
    insn = next(md.disasm(code, pc, 1), None)
    if insn is None:
        return 0, []
    mask = (1 << bits) - 1 if bits < 64 else (1 << 64) - 1
    next_pc = pc + insn.size
    found: list[Access] = []
    if insn.mnemonic not in NO_ACCESS:
        for op in insn.operands:
            if op.type != cx.X86_OP_MEM:
                continue
            mem = op.mem
            addr = mem.disp
            if mem.base:
                addr += _value(md, mem.base, regs, next_pc)
            if mem.index:
                addr += _value(md, mem.index, regs, next_pc) * mem.scale
            seg = md.reg_name(mem.segment) if mem.segment else ""
            if bits == 64 and seg in ("fs", "gs"):
                addr += regs.get(f"{seg}_base", 0)
            found.append(Access(addr & mask, op.size, op.access or READ))
    width = {16: 2, 32: 4, 64: 8}[bits]
    sp = regs.get("rsp", 0) & mask
    if insn.mnemonic in PUSHES:
        found.append(Access((sp - width) & mask, width, WRITE))
    elif insn.mnemonic in POPS and insn.mnemonic != "leave":
        found.append(Access(sp, width, READ))
    elif insn.mnemonic == "leave":
        found.append(Access(regs.get("rbp", 0) & mask, width, READ))
    return insn.size, found
