"""The rigs the benchmark runs through kvmrig: the same guests bench/limit.c runs.

Every guest is 16-bit real-mode code at 0x1000 in 32 KiB of RAM at 0 (no GDT,
no page tables on either side), looping CX = K times:

    lifecycle   f4                       hlt
    pio         e3 04 e6 80 e2 fc f4     jcxz end; 1: out %al,$0x80; loop 1b; end: hlt
    mmio        e3 05 a2 00 f0 e2 fb f4  jcxz end; 1: mov %al,0xf000; loop 1b; end: hlt
    singlestep  e3 02 e2 fe f4           jcxz end; 1: loop 1b; end: hlt        (trace on)
    hwbp, swbp  e3 03 90 e2 fd f4        jcxz end; 1: nop; loop 1b; end: hlt   (bp on the nop)

Port 0x80 is claimed by no device (kvmrig records the writes, as POST codes);
0xf000 is a `constant` MMIO device (writes recorded). Each rig checks what
the run did, so a benchmark that silently did less work fails instead.
"""

from __future__ import annotations

from pathlib import Path

OPS = ("lifecycle", "pio", "mmio", "singlestep", "hwbp", "swbp")
GUESTS = {
    "lifecycle": "f4",
    "pio": "e304e680e2fcf4",
    "mmio": "e305a200f0e2fbf4",
    "singlestep": "e302e2fef4",
    "hwbp": "e30390e2fdf4",
    "swbp": "e30390e2fdf4",
}
BP_ADDR = 0x1002
DX_MAGIC = 0x55AA


def rig_text(op: str, k: int = 0, name: str | None = None) -> str:
    """The YAML of the benchmark rig for `op` with K turns."""
    if op not in GUESTS:
        raise ValueError(f"unknown op {op!r} (one of {', '.join(OPS)})")
    if not 0 <= k <= 0xFFFF:
        raise ValueError("K must fit CX (0..65535)")
    lines = ["kvmrig: 1"]
    if name:
        lines.append(f"name: {name}")
    lines += [
        f"description: kvmrig benchmark rig ({op}, K={k})",
        "arch: x86_64",
        "memory:",
        "  - {at: 0x0, size: 32K}",
        "images:",
        f"  - {{hex: \"{GUESTS[op]}\", at: 0x1000}}",
    ]
    if op == "mmio":
        lines += ["devices:", "  - {type: constant, at: 0xf000, size: 4, value: 0}"]
    if op == "lifecycle":
        lines += ["cpu:", "  mode: real"]
    else:
        lines += ["cpu:", "  mode: real", f"  regs: {{cx: {k}, dx: {DX_MAGIC:#x}}}"]
    if op == "hwbp":
        lines += ["breakpoints:",
                  f"  - {{at: {BP_ADDR:#x}, kind: hw, hits: {k}, expect: {{regs: {{dx: {DX_MAGIC:#x}}}}}}}"]
    if op == "swbp":
        lines += ["breakpoints:", f"  - {{at: {BP_ADDR:#x}, kind: sw, hits: {k}}}"]
    lines += ["expect:", "  exit: hlt"]
    if op != "lifecycle":
        lines.append("  regs: {cx: 0}")
    if op == "singlestep":
        lines.append(f"  steps: {k + 2}")  # jcxz, K loops, hlt
    return "\n".join(lines) + "\n"


def write_rig(folder: Path, op: str, k: int = 0, stem: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem or f'{op}-{k}'}.yaml"
    path.write_text(rig_text(op, k), encoding="utf-8")
    return path


def write_suite(folder: Path, count: int) -> Path:
    """`count` trivial rigs (the lifecycle rig) in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    text = rig_text("lifecycle")
    width = len(str(count))
    for i in range(count):
        (folder / f"trivial-{i:0{width}d}.yaml").write_text(text, encoding="utf-8")
    return folder
