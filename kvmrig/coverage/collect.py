"""Recording which guest code ran, during one run (the session's hook).

Three ways, chosen per run, all giving executed address ranges:

* the emulator reports every executed block (`Backend.record_blocks`): exact,
  and the code is left alone;
* a single-stepping run (`trace`, `expect.steps`) sees every instruction;
  so does a KVM run where no breakpoint instruction can be planted (x86
  under machine.irqchip on a KVM without INT3 interception, or cpus > 1:
  the session then single-steps every vCPU);
* KVM: a one-shot software breakpoint (the runner's `kind: sw` instruction:
  INT3, or HLT on a KVM that cannot intercept INT3, or BRK) is planted at
  every leader of the loaded images (ELF images with DWARF: line-table rows
  and jump targets, kvmrig.coverage.lines; other images: the basic blocks
  kvmrig.coverage.leaders finds) and at every address the rig's `executed` /
  `not_executed` name; each is lifted at its first hit, so a run costs one
  exit per newly covered location, however often the code runs. A hit on a
  block's leader covers the block.

The rig's own breakpoints and watchpoints keep their exact semantics: nothing
is planted where the rig (or a debugger) has a breakpoint — its hits mark the
address instead — and a coverage hit never counts as one of the rig's.
Limits: the guest sees the planted bytes if it reads or copies its own code
(checksums, relocation); use the emulator backend for such code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kvmrig.errors import RigError
from kvmrig.machine.outcome import Failure
from kvmrig.rig.model import Rig

if TYPE_CHECKING:   # the readers of debug information load with the first rig that wants coverage
    from kvmrig.coverage.leaders import Blocks
    from kvmrig.coverage.lines import ImageCode, Range


def merge_ranges(ranges) -> list[Range]:
    """Sorted, with overlapping and touching ranges joined."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def wanted(rig: Rig, coverage: bool) -> bool:
    return coverage or bool(rig.expect.executed or rig.expect.not_executed)


def elf_code(plan, notes: list[str] | None = None) -> list[ImageCode]:
    """The ImageCode of each ELF image of a prepared rig whose debug information
    can be read (raw images have none; an unreadable one is noted and left out)."""
    from kvmrig.coverage.lines import image_code

    out = []
    for img in plan.images:
        if img.entry is not None and img.image.file is not None:   # ELF images carry an entry
            try:
                out.append(image_code(Path(img.image.file), img.label))
            except RigError as e:
                if notes is not None:
                    notes.append(f"coverage: {e}; its code counts as code without line tables")
    return out


def raw_blocks(plan) -> Blocks:
    """Basic blocks of the images without line tables, from the addresses where
    code certainly starts in them (kvmrig.coverage.leaders)."""
    from kvmrig.coverage.leaders import find_blocks
    from kvmrig.coverage.lines import image_code

    rig = plan.rig
    mode = rig.cpu.mode if rig.cpu is not None else ""
    state = plan.boot.state
    cs_base = getattr(state, "linear", 0) - getattr(state, "ip", 0)
    known = {plan.boot.first_pc, plan.entry}
    known |= {plan.resolve(bp.at) for bp in rig.breakpoints}
    known |= {plan.resolve(a) for a in (*rig.expect.executed, *rig.expect.not_executed)}
    blocks: Blocks = {}
    for img in plan.images:
        entries = set(known)
        if img.entry is not None and img.image.file is not None:
            try:
                code = image_code(Path(img.image.file), img.label)
            except RigError:
                code = None   # elf_code noted it
            if code is not None and code.has_lines:
                continue
            entries |= {f.lo for f in code.functions} if code is not None else set()
        blocks.update(find_blocks(rig.arch, mode, img.segments, entries, cs_base))
    return blocks


class Collector:
    """One run's record of executed code; see the module doc."""

    def __init__(self, plan, full: bool):
        rig = plan.rig
        self.rig = rig
        self.expected = [(a, plan.resolve(a)) for a in rig.expect.executed]
        self.unexpected = [(a, plan.resolve(a)) for a in rig.expect.not_executed]
        self.plan, self.full = plan, full
        self.block_end: Blocks = {}            # KVM: leader -> end of its block (images without lines)
        self.points: set[int] = set()          # addresses seen to execute (hits, steps)
        self.blocks: dict[int, int] = {}       # emulator: block start -> size
        self.planted: frozenset[int] = frozenset()
        self._union: tuple[frozenset[int] | None, frozenset[int]] = (None, frozenset())
        self.pending: set[int] = set()          # planted and not hit yet
        self.mode = "off"
        self.backend = None          # the backend reporting blocks, told when the run is over

    # Session hooks ---------------------------------------------------------
    def start(self, session) -> None:
        """Choose how to record, before the first run (after the rig's own points are planted)."""
        blocks = self.blocks

        def on_block(addr: int, size: int) -> None:
            if blocks.get(addr, 0) < size:
                blocks[addr] = size

        if session.user_step:   # every instruction is seen anyway
            self.mode = "steps"
            self.points.add(session.plan.boot.first_pc)
            return
        if session.backend.record_blocks(on_block):
            self.mode = "blocks"
            self.backend = session.backend
            return
        self.mode = "plant"
        targets = {addr for _a, addr in self.expected + self.unexpected}
        if self.full:
            for code in elf_code(self.plan, session.outcome.notes):
                targets |= code.leaders
            self.block_end = raw_blocks(self.plan)
            targets |= set(self.block_end)
        debug, patches, memory = session.debug, session.patches, session.memory
        taken = set(debug.sw_all) | {s.addr for s in debug.slots if s.kind == "exec"}
        insn = patches.insn
        planted = []
        for addr in sorted(targets - taken):
            try:
                if memory.read(addr, len(insn)) == insn:
                    continue   # the instruction is the trap itself (HLT): the run's end marks it
            except LookupError:
                continue
            patches.plant(addr)
            planted.append(addr)
        self.planted = frozenset(planted)
        self.pending = set(planted)

    def with_planted(self, sw: frozenset[int]) -> frozenset[int]:
        """`sw` (the rig's and a debugger's planted addresses) and coverage's, as one
        set: the same object while `sw` is, so backends see an unchanged setup cheaply."""
        if self._union[0] is not sw:
            self._union = (sw, sw | self.planted)
        return self._union[1]

    def on_sw(self, session, pc: int) -> bool:
        """A software-breakpoint exit at `pc`: True when it was coverage's alone
        (then handled: lifted, the vCPU re-runs the original instruction)."""
        self.points.add(pc)
        if pc not in self.planted:
            return False
        if pc in session.debug.sw_all:
            return False     # the rig's or a debugger's too: theirs to handle
        if pc in self.pending:
            self.pending.discard(pc)
            session.patches.lift(pc)
            return True
        # Lifted already, yet trapped again: a CPU still running its stale copy of
        # the planted code (QEMU TCG under the arm64 lane). Step over it once more.
        session.step_over(pc)
        return True

    def saw(self, pc: int) -> None:
        """The instruction at pc runs (a single-step, or a hardware breakpoint of the rig)."""
        self.points.add(pc)

    # Results -----------------------------------------------------------------
    def ranges(self, outcome) -> list[Range]:
        """Executed code as address ranges (a hit or step: one byte at the instruction)."""
        if self.backend is not None:
            try:
                self.backend.blocks_done(self._final_pc(outcome))
            except Exception as e:  # a dead emulator must not hide the verdict
                outcome.notes.append(f"coverage: the last block of the run is not recorded: {e}")
            self.backend = None
        points = set(self.points)
        if outcome.exit == "hlt" and outcome.stop_pc is not None:
            points.add(outcome.stop_pc)   # the halting instruction ran
        found = [(a, a + s) for a, s in self.blocks.items()]
        ends = self.block_end if self.mode == "plant" else {}
        stop = self._final_pc(outcome) if ends else None
        for a in points:
            end = ends.get(a, a + 1)
            if stop is not None and a < stop < end:
                end = stop   # the run ended in this block: count it up to there only
            found.append((a, end))
        return merge_ranges(found)

    def _final_pc(self, outcome) -> int | None:
        """Where the vCPU would go on (linear): the run's last instruction is before it."""
        regs = outcome.regs
        pc = regs.get("rip", regs.get("pc"))
        if pc is None:
            return None
        if self.rig.arch == "arm64" and outcome.exit in ("exit-code", "mmio"):
            pc += 4   # arm64 (KVM, and the emulator as KVM) leaves the pc on an MMIO store that ran
        return regs.get("cs_base", 0) + pc

    def check(self, ranges: list[Range]) -> list[Failure]:
        """The rig's `executed` / `not_executed` expectations."""
        def ran(addr: int) -> bool:
            return any(lo <= addr < hi for lo, hi in ranges)

        failures = []
        for a, addr in self.expected:
            if not ran(addr):
                failures.append(Failure(f"executed {a}", f"{addr:#x} to run", "it never ran", a.mark))
        for a, addr in self.unexpected:
            if ran(addr):
                failures.append(Failure(f"not_executed {a}", f"{addr:#x} never to run", "it ran", a.mark))
        return failures
