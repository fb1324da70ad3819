"""Why an x86 CPU shut down: which exception it could not deliver, read from
the faulting instruction and the IDT (pure: memory comes in as a function).

KVM reports a triple fault as a bare KVM_EXIT_SHUTDOWN, without the vector
(the emulator backend sees the vector itself). The instruction at the
stopping pc usually names it (UD2, INT3, INT n, ...); the IDT then says
whether #GP and #DF had a gate to fall back on (SDM vol.3 6.14, 6.15).
"""

from __future__ import annotations

from collections.abc import Callable

VECTORS = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
           10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
           19: "#XM", 20: "#VE"}
DE, BP, OF, UD, DF, GP = 0, 3, 4, 6, 8, 13

Peek = Callable[[int, int], "bytes | None"]


def vector_name(vector: int) -> str:
    return VECTORS.get(vector, f"vector {vector}")


def raised_by(code: bytes) -> int | None:
    """The vector the instruction at the start of `code` raises unconditionally
    (None when it raises none, or only depending on data)."""
    i = 0
    while i < len(code) and code[i] in (0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
        i += 1   # legacy prefixes
    if i < len(code) and 0x40 <= code[i] <= 0x4F and i + 1 < len(code) and code[i + 1] == 0x0F:
        i += 1   # REX before a two-byte opcode (64-bit code only; harmless elsewhere)
    op = code[i:i + 2]
    if op[:1] == b"\xcc":
        return BP
    if op[:1] == b"\xcd" and len(op) == 2:
        return op[1]
    if op[:1] == b"\xce":
        return OF
    if op in (b"\x0f\x0b", b"\x0f\xb9", b"\x0f\xff"):   # UD2, UD1, UD0
        return UD
    return None


def gate_present(peek: Peek, idt_base: int, idt_limit: int, vector: int, long_mode: bool, protected: bool) -> str:
    """'present', 'absent' (P = 0) or 'beyond' (past the IDT/IVT limit) for a vector's entry."""
    size = 16 if long_mode else 8 if protected else 4
    if (vector + 1) * size - 1 > idt_limit:
        return "beyond"
    if not protected:
        return "present"   # an IVT entry is a far pointer: always usable
    gate = peek(idt_base + vector * size, 8)
    if gate is None:
        return "outside guest memory"
    return "present" if gate[5] & 0x80 else "absent"   # P bit of the gate descriptor (SDM 6.11, 6.14.1)


def explain_shutdown(pc: int, peek: Peek, idt_base: int, idt_limit: int, cr0: int, efer: int) -> str:
    """A one-line diagnosis of a triple fault at linear `pc`."""
    protected = bool(cr0 & 1)
    long_mode = bool(efer & (1 << 10))   # EFER.LMA
    code = peek(pc, 15) or peek(pc, 2) or peek(pc, 1) or b""
    vector = raised_by(code)
    table = "IDT" if protected else "IVT"
    where = f"({table} base {idt_base:#x}, limit {idt_limit:#x})"
    first = "an exception" if vector is None else vector_name(vector)
    chain = [GP, DF] if vector is None else list(dict.fromkeys((vector, GP, DF)))
    states = {v: gate_present(peek, idt_base, idt_limit, v, long_mode, protected) for v in chain}
    missing = [v for v in chain if states[v] != "present"]
    if vector is not None and len(missing) == len(chain):
        nors = ", ".join(f"nor {vector_name(v)}" for v in chain[1:])
        return (f"triple fault: {first} at pc {pc:#x} could not be delivered, {nors} {where}; "
                "the CPU shut down")
    if vector is None and len(missing) == len(chain):
        return (f"triple fault: {first} at pc {pc:#x} could not be delivered: the {table} has no gate for "
                f"#GP or #DF {where}; the CPU shut down")
    usable = ", ".join(vector_name(v) for v in chain if states[v] == "present")
    absent = ", ".join(f"{vector_name(v)} ({states[v]})" for v in missing)
    return (f"triple fault at pc {pc:#x} ({first}): the {table} {where} has gates for {usable}"
            + (f" but not {absent}" if absent else "")
            + "; delivering through them faulted again (check each handler's code segment selector "
              "against the GDT, the handler address and the stack); the CPU shut down")
