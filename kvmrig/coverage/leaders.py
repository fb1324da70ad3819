"""Basic-block leaders of code without line tables (raw images, ELF images
without DWARF), found by recursive descent with capstone, for KVM's one-shot
coverage breakpoints.

A wrong leader would plant a trap in the middle of an instruction or in data,
so the descent is conservative: it starts only where code certainly begins
(the CPU's first instruction, ELF function symbols, the rig's own addresses),
decodes in the mode the CPU starts in, and stops at anything after which it
cannot know what follows: indirect jumps, returns, halts, traps, far jumps
and instructions that change the CPU mode. The code after a call is decoded
(the call is assumed to return) but is not made a leader, since a call that
never returns may be followed by data. Each leader's block runs to its first
jump, return or stop, or to the next leader: a hit on the leader covers it.
"""

from __future__ import annotations

from collections.abc import Iterable

Blocks = dict[int, int]   # leader -> end of its block (exclusive)

X86_STOP = {"ret", "retf", "retfq", "iret", "iretd", "iretq", "hlt", "int", "int1", "int3", "into", "ud2",
            "ljmp", "lcall", "sysenter", "sysexit", "syscall", "sysret", "wrmsr", "lmsw", "rsm", "invalid"}
ARM64_STOP = {"ret", "eret", "br", "brk", "hlt", "udf", "svc", "hvc", "smc", "retaa", "retab", "braa",
              "brab", "braaz", "brabz", "eretaa", "eretab"}
X86_BITS = {"real": 16, "reset": 16, "protected": 32, "long": 64}
MAX_INSNS = 200_000   # a bound on the descent of one image


def _disassembler(arch: str, mode: str):
    import capstone
    if arch == "arm64":
        return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM), 0
    bits = X86_BITS.get(mode)
    if bits is None:
        return None, 0
    cs_mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    return capstone.Cs(capstone.CS_ARCH_X86, cs_mode), bits


def find_blocks(arch: str, mode: str, segments: list[tuple[int, bytes]], entries: Iterable[int],
                cs_base: int = 0) -> Blocks:
    """Leaders and their block ends in `segments` (address, bytes), descending
    from `entries` (linear addresses). 16-bit code addresses are offsets in a
    64 KiB segment at `cs_base` (where the CPU's CS points)."""
    import capstone
    md, bits = _disassembler(arch, mode)
    if md is None:
        return {}
    md.detail = True
    wrap = 0xFFFF if bits == 16 else None

    def window(linear: int) -> bytes:
        for start, body in segments:
            if start <= linear < start + len(body):
                return body[linear - start:linear - start + 16]
        return b""

    decoded: dict[int, tuple[int, bool]] = {}   # linear address -> (size, ends a block)
    leaders: set[int] = set()
    work = [e for e in entries if window(e)]
    leaders.update(work)
    budget = MAX_INSNS

    def target(insn) -> int | None:
        for op in insn.operands:
            if op.type == capstone.CS_OP_IMM:
                return (op.imm & wrap) + cs_base if wrap is not None else op.imm
        return None

    while work and budget > 0:
        linear = work.pop()
        while linear not in decoded and budget > 0:
            budget -= 1
            data = window(linear)
            ip = linear - cs_base if wrap is not None else linear
            insn = next(md.disasm(data, ip, count=1), None) if data else None
            if insn is None or (arch == "arm64" and linear % 4):
                break
            name = insn.mnemonic
            groups = set(insn.groups)
            stop = (name in (ARM64_STOP if arch == "arm64" else X86_STOP)
                    or capstone.CS_GRP_RET in groups or capstone.CS_GRP_IRET in groups
                    or capstone.CS_GRP_INT in groups
                    or (arch != "arm64" and name == "mov" and insn.op_str.startswith("cr")))
            jump = capstone.CS_GRP_JUMP in groups
            call = capstone.CS_GRP_CALL in groups
            ends = stop or jump
            decoded[linear] = (insn.size, ends)
            nxt = linear + insn.size
            if jump or call:
                t = target(insn)
                if t is not None and window(t):
                    if t not in leaders:
                        leaders.add(t)
                        work.append(t)
                if jump and t is not None and name not in ("jmp", "b"):   # conditional: both ways
                    if nxt not in leaders and window(nxt):
                        leaders.add(nxt)
                        work.append(nxt)
            if ends:
                break
            linear = nxt
    blocks: Blocks = {}
    for lead in leaders:
        at = lead
        while at in decoded:
            size, ends = decoded[at]
            at += size
            if ends or at in leaders:
                break
        if at > lead:
            blocks[lead] = at
    return blocks
