"""What the arch-neutral machine layer needs to know about each arch.

One small record per arch, looked up by name, so the run loop has no
if-chains on the arch: the software breakpoint instruction, the name of the
program counter, and how a watched range splits over debug registers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvmrig.arch.x86_64.dr7 import split_watch


@dataclass(frozen=True)
class Traits:
    arch: str
    pc: str                       # canonical name of the program counter
    sw_break: bytes               # the instruction planted for `kind: sw`
    split_watch: Callable[..., list[tuple[int, int]]]  # (addr, len, max piece) -> pieces, one register each
    hw_slots: tuple[int, int, bool]  # architectural (breakpoints, watchpoints, shared) when no backend says
    halt: bytes | None = None     # an instruction that stops the CPU, which a single-step can swallow
    wide_modes: tuple[str, ...] = ()  # CPU modes whose data breakpoints may cover 8 bytes (x86: long only)

    def watch_max(self, mode: str) -> int:
        """The longest piece one debug register watches in `mode`."""
        return 8 if not self.wide_modes or mode in self.wide_modes else 4


# More pieces than any register file holds: refused before the pieces are built
# (a 256 MiB range would be 32M pieces, built in seconds and gigabytes).
MAX_WATCH_PIECES = 64


def _x86_split(addr: int, length: int, max_len: int = 8) -> list[tuple[int, int]]:
    """Pieces of one DR each; ValueError for a range no x86 CPU's 4 DRs can cover."""
    if length > MAX_WATCH_PIECES * max_len:
        raise ValueError(f"a watch of {length:#x} bytes needs at least {-(-length // max_len)} debug registers "
                         f"(one per {max_len} bytes); x86 has 4: watch a shorter range, or check the memory "
                         "with expect.memory at a breakpoint")
    return list(split_watch(addr, length, max_len))


def _arm64_split(addr: int, length: int, max_len: int = 8) -> list[tuple[int, int]]:
    from kvmrig.arch.arm64.debugregs import plan_watch   # arm64's only: an x86 run never loads it
    return [(p.start, p.length) for p in plan_watch(addr, length, "access")]


TRAITS = {
    # SDM vol.2: INT3 is the one-byte 0xCC; 4 debug address registers DR0-DR3 shared.
    "x86_64": Traits("x86_64", "rip", b"\xcc", _x86_split, (4, 4, True), b"\xf4", ("long",)),
    # Arm ARM C6.2.38: BRK #0 = 0xd4200000, little-endian; at least 2+2 debug registers.
    "arm64": Traits("arm64", "pc", (0xD4200000).to_bytes(4, "little"), _arm64_split, (6, 4, False)),
}


def traits(arch: str) -> Traits:
    return TRAITS[arch]
