"""arm64 guests that turn the MMU on, on the emulator backend.

Every guest (tests/backends/emu/arm64_mmu_guests.py: sources, words and
disassembly) builds its own translation tables, sets MAIR/TCR/TTBR and
SCTLR_EL1.M, and runs through the mapping; each test runs it as a rig
(`backend: emu`) through kvmrig's machine layer and checks registers, memory
and the console after the run, or the abort that ended it.

Also here: the translation walk (kvmrig.arch.arm64.mmu) against QEMU's own
walk, through AT S1E1R/W and S1E0R/W on random tables; the boot fix that makes
QEMU's walk AArch64 at all; and the guests' words against their sources.
"""

from __future__ import annotations

import mmap
import random
from pathlib import Path

import pytest

pytest.importorskip("unicorn")

from unicorn import arm64_const as A  # noqa: E402

from kvmrig.arch.arm64 import mmu  # noqa: E402
from kvmrig.backends.emu import arm64 as emu_arm64  # noqa: E402
from kvmrig.backends.emu.arm64 import EmuArm64Backend  # noqa: E402
from kvmrig.machine.plan import prepare  # noqa: E402
from kvmrig.machine.session import execute  # noqa: E402
from kvmrig.rig.load import load_rig  # noqa: E402
from tests.conftest import assert_rig_passed as passed  # noqa: E402
from kvmrig.runner import run_rig  # noqa: E402
from tests.backends.emu.arm64_mmu_guests import (  # noqa: E402
    SOURCES,
    WORDS,
    build,
    image,
    missing_tools,
)

HI = 0xFFFFFF2967807000      # the high guest's TTBR1 page (indices 0x1fe, 0xa5, 0x13c, 7)


def rig_text(guest: str, expect: str, *, size: str = "256K", images: str = "", extra: str = "") -> str:
    """A rig running `guest`; `images` adds lines to `images:`, `extra` top-level keys."""
    return f"""\
kvmrig: 1
arch: arm64
backend: emu
timeout: 5s
memory:
  - {{at: 0x40000000, size: {size}}}
images:
  - {{hex: "{image(guest)}", at: {SOURCES[guest][0]:#x}}}
{images}{extra}expect:
{expect}"""


def run(make_rig, text: str):
    result = run_rig(load_rig(make_rig(text)))
    assert result.backend == "emu", result.message
    return result


def aborted(result, *phrases: str) -> str:
    """The run ended `unhandled` with every phrase in its detail, and the rig's
    other checks (registers, memory) held."""
    outcome = result.outcome
    assert outcome is not None, result.message
    assert outcome.exit == "unhandled", (outcome.exit, outcome.detail)
    for phrase in phrases:
        assert phrase in outcome.detail, f"{phrase!r} not in {outcome.detail!r}"
    assert [f.what for f in outcome.failures] == ["exit"], "\n".join(map(str, outcome.failures))
    return outcome.detail


def le(value: int, size: int = 8) -> str:
    return value.to_bytes(size, "little").hex()


def image_line(hex_bytes: str, at: int) -> str:
    """One more entry for a rig's `images:`."""
    return f'  - {{hex: "{hex_bytes}", at: {at:#x}}}\n'


# (a)-(i): guests through their own tables --------------------------------------------

def test_identity_map_runs_code_and_data_with_the_mmu_on(make_rig):
    r = run(make_rig, rig_text("identity", f"""\
  exit: system-off
  regs: {{x19: 5050, sctlr_el1: {{mask: 1, value: 1}}, pc: 0x400000a4}}   # after the hvc at 0xa0
  memory: [{{at: 0x40008000, hex: "{le(5050)}"}}]
"""))
    passed(r)


def test_alias_block_reads_and_writes_the_same_physical_memory(make_rig):
    # VA 0x80000000 -> PA 0x40000000 (1 GiB block): stores through the alias land
    # at the PA, the code runs on at its alias (`there`, offset 0xdc) and powers
    # off from there (the PSCI call found through the MMU).
    r = run(make_rig, rig_text("alias", f"""\
  exit: system-off
  regs: {{x20: 0x1122334455667788, x21: 0xcafe, x22: 0x800000dc, pc: 0x800000ec}}
  memory:
    - {{at: 0x40008008, hex: "{le(0x1122334455667788)}"}}
    - {{at: 0x40008010, hex: "{le(0xCAFE)}"}}
"""))
    passed(r)


def test_ttbr1_pages_at_a_high_address_for_data_a_device_and_code(make_rig):
    # 4 KiB pages under TTBR1_EL1 (T1SZ 16, TG1 4K): data at PA 0x40009000, the
    # PL011 (its MMIO reaches the device at its PA), and the code (`there`, 0x158).
    r = run(make_rig, rig_text("high", f"""\
  exit: system-off
  regs: {{x19: 0x5eed, x20: 0x5eed, x21: 0x90, x22: {HI + 0x2158:#x}, pc: {HI + 0x2168:#x}}}
  memory: [{{at: 0x40009010, hex: "{le(0x5EED)}"}}]
  console: {{contains: "hi"}}
""", extra="devices: [{type: pl011, at: 0x09000000}]\n"))
    passed(r)


def test_a_write_to_a_read_only_page_is_a_permission_fault_with_its_address(make_rig):
    # `store` (0xd0) writes VA 0x80008008 through a page with AP 10.
    r = run(make_rig, rig_text("readonly", """\
  exit: system-off
  regs: {x19: 0xbeef, x21: 0, pc: 0x400000d0}
  memory: [{at: 0x40008008, hex: "efbe000000000000"}]
"""))
    detail = aborted(r, "a data abort (write) at pc 0x400000d0",
                     "permission fault at VA 0x80008008, level 3",
                     "the level 3 descriptor at PA 0x40013040 (0x40008783)",
                     "AP[2:1] = 0b10: read-only at EL1",
                     "ESR_EL1 0x9600004f", "FAR_EL1 0x80008008")
    assert "backend: kvm" in detail


def test_an_address_outside_the_ttbr0_range_is_a_translation_fault_at_level_0(make_rig):
    # T0SZ 25 (39 bits, the walk starts at level 1): 0x40008000 translates,
    # 0x8040008000 (bit 39 set) cannot resolve anywhere. `load` is at 0x78.
    r = run(make_rig, rig_text("outside", """\
  exit: system-off
  regs: {x19: 0x7777, x20: 0, pc: 0x40000078}
""", images='  - {hex: "7777000000000000", at: 0x40008000}\n'))
    aborted(r, "a data abort (read) at pc 0x40000078",
            "translation fault at VA 0x8040008000, level 0",
            "outside the 39-bit TTBR0_EL1 range (T0SZ 25)",
            "ESR_EL1 0x96000004", "FAR_EL1 0x8040008000")


def test_64k_granule_from_level_2_with_blocks_and_pages(make_rig):
    # T0SZ 22, TG0 64K: a 512 MiB identity block, and 64 KiB pages at VA
    # 0x80000000; the second page maps the level-2 table itself (x21 = K2[2]).
    r = run(make_rig, rig_text("granule64k", f"""\
  exit: system-off
  regs: {{x19: 0x6464, x20: 0x6464, x21: 0x40000701}}
  memory: [{{at: 0x40008000, hex: "{le(0x6464)}"}}]
"""))
    passed(r)


EL0 = image_line(image("el0-vectors"), 0x40000C00)


def test_el0_code_through_the_mmu_makes_an_svc_taken_at_el1(make_rig):
    # ERET to EL0 at VA 0x80000000 + 0xf8 (a page EL0 may execute); its SVC #1
    # (at 0x108) reaches VBAR_EL1 + 0x400 with ELR the alias after it.
    r = run(make_rig, rig_text("el0", """\
  exit: system-off
  regs: {x19: 0x56000001, x20: 0x8000010c, x21: 0, x22: 0}
""", images=EL0))
    passed(r)


def test_el0_reading_an_el1_only_page_is_a_permission_fault_at_el0(make_rig):
    # x9 = 1: `load` (0x104, at EL0 through the alias) reads VA 0x80008000 (AP 00).
    r = run(make_rig, rig_text("el0", """\
  exit: system-off
  regs: {x22: 0, pc: 0x80000104}
""", images=EL0, extra="cpu: {regs: {x9: 1}}\n"))
    aborted(r, "a data abort (read) at pc 0x80000104",
            "permission fault at VA 0x80008000, level 3 (read at EL0",
            "AP[2:1] = 0b00: no access at EL0",
            "ESR_EL1 0x9200000f", "lower EL")


TLBI = image_line(le(0x1111), 0x40008000) + image_line(le(0x2222), 0x40208000)


def test_tlbi_by_va_on_a_block_drops_every_page_of_it(make_rig):
    # Break-before-make on a 2 MiB block with one TLBI VAE1 (for its first page):
    # the read of another 4 KiB piece after it sees the new block, as on hardware.
    r = run(make_rig, rig_text("tlbi", """\
  exit: system-off
  regs: {x20: 0x1111, x21: 0x2222, x22: 0x2222, sctlr_el1: {mask: 1, value: 0}}
""", size="4M", images=TLBI))
    passed(r)


def test_without_the_full_flush_a_tlbi_would_leave_pieces_of_the_block(make_rig, monkeypatch):
    # Why _on_sys flushes everything: the entries are 4 KiB pieces, and QEMU's
    # TLBI by VA drops only the piece holding that VA.
    monkeypatch.setattr(EmuArm64Backend, "_on_sys", lambda self, _reg, _cp, _ud=None: False)
    r = run(make_rig, rig_text("tlbi", """\
  exit: system-off
  regs: {x21: 0x1111}
""", size="4M", images=TLBI))
    passed(r)


PRESET_TABLES = (
    image_line(le(0x40011003), 0x40010000)                                            # L0[0] -> L1
    + image_line(le(0x0060000000000405) + le(0x40000701) + le(0x40000701), 0x40011000)  # L1[0..2]
    + image_line(le(0xABCD), 0x40008000)
)


PRESET_REGS = f"""\
cpu:
  regs: {{mair_el1: 0xff, tcr_el1: {0x200803510:#x}, ttbr0_el1: 0x40010000, sctlr_el1: 0xc50839}}
"""


def test_mmu_on_from_the_rigs_registers(make_rig):
    # No MSR SCTLR_EL1 in the guest: the backend walks from the first instruction.
    r = run(make_rig, rig_text("preset", """\
  exit: system-off
  regs: {x19: 0xabcd}
""", images=PRESET_TABLES, extra=PRESET_REGS))
    passed(r)


def test_fetching_from_execute_never_memory_is_an_instruction_abort(make_rig):
    # The preset tables with PXN on the identity block: the first fetch faults.
    pxn = PRESET_TABLES.replace(le(0x40000701) + le(0x40000701), le(0x40000701 | 1 << 53) + le(0x40000701))
    r = run(make_rig, rig_text("preset", """\
  exit: system-off
  regs: {pc: 0x40000000, x19: 0}
""", images=pxn, extra=PRESET_REGS))
    aborted(r, "an instruction abort at pc 0x40000000",
            "permission fault at VA 0x40000000, level 1 (fetch at EL1",
            "PXN: not executable at EL1", "ESR_EL1 0x8600000d", "FAR_EL1 0x40000000")


# Cost: the walk runs only with the MMU on, once per TLB miss ----------------------------

def _backend_of(make_rig, text: str) -> EmuArm64Backend:
    made: list[EmuArm64Backend] = []

    def factory() -> EmuArm64Backend:
        made.append(EmuArm64Backend())
        return made[-1]
    outcome = execute(prepare(load_rig(make_rig(text))), factory)
    assert outcome.exit == "system-off", outcome.detail
    return made[0]


def test_the_walk_runs_on_tlb_misses_only_and_never_with_the_mmu_off(make_rig):
    # The preset guest from its ldr on (x5 given), with the MMU off: unicorn's flat map.
    flat = " ".join(w.to_bytes(4, "little").hex() for w in WORDS["preset"][2:])
    mmu_off = _backend_of(make_rig, rig_text("preset", "  exit: system-off\n", images=PRESET_TABLES,
                                             extra="cpu: {regs: {x5: 0x40008000}}\n").replace(image("preset"), flat))
    assert mmu_off.tlb_fills == 0
    identity = _backend_of(make_rig, rig_text("identity", "  exit: system-off\n"))
    assert 0 < identity.tlb_fills <= 4   # the code page and the data page, once each (100 loop turns)


UBOOT_RIG = Path(__file__).resolve().parents[3] / "rigs" / "firmware" / "u-boot-arm64.yaml"
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")


@pytest.mark.skipif(not UBOOT.exists(), reason=f"{UBOOT} is not installed (Debian's u-boot-qemu)")
def test_debians_u_boot_turns_the_mmu_on_and_reaches_its_prompt():
    # The firmware of the original report: it relocates, turns the MMU on with an
    # identity map (a prefetch abort on the next instruction before the boot fix
    # and this walk), and powers off at its prompt.
    result = run_rig(load_rig(UBOOT_RIG), "emu")
    passed(result)


# The boot fix and QEMU's own walk --------------------------------------------------------

def test_el1_is_non_secure_aarch64_for_qemus_mmu_code():
    # unicorn resets SCR_EL3.RW and HCR_EL2.RW to 0: QEMU's walk (and AT) would take
    # EL1 for AArch32 and read the tables with the short-descriptor rules.
    with EmuArm64Backend() as b:
        scr = b.uc.reg_read(A.UC_ARM64_REG_CP_REG, emu_arm64.SCR_EL3)
        hcr = b.uc.reg_read(A.UC_ARM64_REG_CP_REG, emu_arm64.HCR_EL2)
        assert scr & emu_arm64.SCR_RW and scr & emu_arm64.SCR_NS and hcr & emu_arm64.HCR_RW
        assert b.pa_bits == 44     # Cortex-A72: ID_AA64MMFR0_EL1.PARange = 4


def test_the_hooks_register_read_matches_the_public_api():
    with EmuArm64Backend() as b:
        b.set_regs({"sctlr_el1": 0x30D00801, "tcr_el1": 0x5B5103510, "ttbr0_el1": 0x40010000,
                    "ttbr1_el1": 0xABCD_0000_4002_0000, "pstate": 0x4003C5})
        assert b._regime_regs() == (0x30D00801, 0x5B5103510, 0x40010000, 0xABCD_0000_4002_0000, 0x4003C5)
        assert b.regime() == mmu.Regime(0x30D00801, 0x5B5103510, 0x40010000, 0xABCD_0000_4002_0000,
                                        1, True, 44)


RAM, RAM_SIZE, CODE_VA = 0x40000000, 0x400000, 0x10000
# at s1e1r, x1 / mrs x2, par_el1 / at s1e1w, x1 / mrs x3, par_el1 /
# at s1e0r, x1 / mrs x4, par_el1 / at s1e0w, x1 / mrs x5, par_el1
AT_CODE = (0xD5087801, 0xD5387402, 0xD5087821, 0xD5387403, 0xD5087841, 0xD5387404, 0xD5087861, 0xD5387405)
AT_KINDS = ((1, mmu.READ), (1, mmu.WRITE), (0, mmu.READ), (0, mmu.WRITE))


def _random_tables(rng: random.Random, shift: int, inputsize: int, mem: dict[int, int], alloc,
                   code_va: int | None = None) -> int:
    """A random tree of tables (invalid, table, block and page descriptors with
    random AP, AF, XN, APTable/XNTable/PXNTable); returns the first table's PA.
    With `code_va`, that page is mapped to RAM (EL1 only) for the AT code."""
    stride = shift - 3
    first = mmu.start_level(inputsize, shift)
    budget = [12]

    def table(level: int, entries: int) -> int:
        pa = alloc(max(entries * 8, 64) if level == first else 1 << shift)
        for i in sorted(set(rng.sample(range(entries), min(entries, 6))) | {0, entries - 1}):
            r = rng.random()
            if r < 0.3:
                continue                                          # invalid
            lsb = shift + stride * (3 - level)
            blockable = level == 3 or level in mmu.BLOCK_LEVELS[shift]
            if level < 3 and budget[0] > 0 and (r < 0.65 or not blockable):
                budget[0] -= 1
                attrs = rng.choice([0, 0, 0, 1 << 59, 1 << 60, 1 << 61, 2 << 61, 3 << 61])
                mem[pa + 8 * i] = table(level + 1, 1 << stride) | 3 | attrs
                continue
            if not blockable:
                continue
            desc = (rng.randrange(1 << 40) & ~((1 << lsb) - 1)) | (3 if level == 3 else 1)
            desc |= rng.randrange(8) << 2 | rng.randrange(4) << 6 | 3 << 8
            desc |= (0 if rng.random() < 0.1 else 1 << 10) | rng.choice([0, 0, 1 << 53, 1 << 54])
            if level == 3 and rng.random() < 0.05:
                desc &= ~2                                        # the reserved level-3 encoding
            mem[pa + 8 * i] = desc
        return pa

    root = table(first, 1 << (inputsize - (shift + stride * (3 - first))))
    if code_va is not None:
        base, level = root, first
        while True:
            lsb = shift + stride * (3 - level)
            at = base + 8 * ((code_va >> lsb) & ((1 << min(stride, inputsize - lsb)) - 1))
            if level == 3:
                mem[at] = RAM | 0x403
                break
            desc = mem.get(at, 0)
            if desc & 3 != 3:
                desc = alloc(1 << shift) | 3
            mem[at] = desc & mmu.OA_MASK                          # no table attributes on the way
            base, level = desc & mmu.OA_MASK & ~((1 << shift) - 1), level + 1
    return root


@pytest.mark.parametrize("seed", range(16))
def test_the_walk_agrees_with_qemus_walk_through_at_instructions(seed):
    """Random tables (4K/16K/64K, both TTBRs, TBI, every descriptor kind) and
    random addresses: PAR_EL1 after AT S1E1R/S1E1W/S1E0R/S1E0W (QEMU's walk,
    AArch64 since the boot fix) against mmu.translate: the same PA, or the
    same fault status code."""
    rng = random.Random(seed)
    mem: dict[int, int] = {}
    free = [RAM + 0x10000]

    def alloc(n: int) -> int:
        at = (free[0] + n - 1) & ~(n - 1)
        free[0] = at + n
        assert free[0] <= RAM + RAM_SIZE
        return at

    tg0, tg1 = rng.choice([0b00, 0b01, 0b10]), rng.choice([0b01, 0b10, 0b11])
    t0sz = rng.choice([22, 25, 33, 39] if tg0 == 0b01 else [16, 20, 25, 28, 33, 39])
    t1sz = rng.choice([16, 25, 33, 39])
    ttbr0 = _random_tables(rng, mmu.TG0_SHIFT[tg0], 64 - t0sz, mem, alloc, CODE_VA)
    ttbr1 = _random_tables(rng, mmu.TG1_SHIFT[tg1], 64 - t1sz, mem, alloc)
    tcr = t0sz | tg0 << 14 | t1sz << 16 | tg1 << 30 | 0b101 << 32 | rng.choice([0, 1 << 37, 1 << 38])
    ram = mmap.mmap(-1, RAM_SIZE)
    with EmuArm64Backend() as b:
        b.map_memory(RAM, ram, False)
        for pa, desc in mem.items():
            b.poke(pa, desc.to_bytes(8, "little"))
        b.poke(RAM, b"".join(w.to_bytes(4, "little") for w in AT_CODE))
        b.set_regs({"pstate": 0x3C5, "tcr_el1": tcr, "ttbr0_el1": ttbr0, "ttbr1_el1": ttbr1})
        b.set_regs({"sctlr_el1": b.get_regs()["sctlr_el1"] | 1})
        b._walk(True)                     # the AT code runs at EL1 from the page mapped at CODE_VA
        regime = b.regime()
        checked = 0
        for _ in range(120):
            high = rng.random() < 0.5
            bits = 64 - (t1sz if high else t0sz)
            va = rng.randrange(1 << bits) | (((1 << 64) - 1) & ~((1 << bits) - 1) if high else 0)
            if rng.random() < 0.1:
                va ^= 1 << rng.randrange(bits, 64)                 # outside the range, or a tag
            b.uc.reg_write(A.UC_ARM64_REG_X1, va)
            b.uc.emu_start(CODE_VA, 0, count=len(AT_CODE))
            for (el, access), reg in zip(AT_KINDS, (A.UC_ARM64_REG_X2, A.UC_ARM64_REG_X3,
                                                    A.UC_ARM64_REG_X4, A.UC_ARM64_REG_X5)):
                par = b.uc.reg_read(reg)
                qemu = ("fault", (par >> 1) & 0x3F) if par & 1 else ("pa", par & mmu.OA_MASK & ~0xFFF)
                ours = mmu.translate(regime._replace(el=el), va, access, b._read64)
                mine = ("fault", ours.fsc) if isinstance(ours, mmu.Fault) else ("pa", ours.pa & ~0xFFF)
                assert mine == qemu, (f"VA {va:#x} {access} at EL{el}: QEMU {qemu[0]} {qemu[1]:#x}, "
                                      f"ours {ours}")
                checked += 1
        assert checked == 480


@pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_guests_rebuild_from_their_sources(name):
    text, _listing = build(name)
    assert [int.from_bytes(text[i:i + 4], "little") for i in range(0, len(text), 4)] == WORDS[name]


# The same guests on real arm64 KVM -------------------------------------------------------

# The handler at VBAR_EL1 + 0x200 and + 0x400 for the aborting guests on KVM, where the
# abort is taken: mrs x23, esr_el1 / mrs x24, far_el1 / mov w0, #8 / movk w0, #0x8400, lsl #16 / hvc #0
ABORT_HANDLER = " ".join(w.to_bytes(4, "little").hex()
                         for w in (0xD5385217, 0xD5386018, 0x52800100, 0x72B08000, 0xD4000002))
HANDLERS = image_line(ABORT_HANDLER, 0x40000A00) + image_line(ABORT_HANDLER, 0x40000C00)
VBAR = "cpu: {regs: {vbar_el1: 0x40000800}}\n"

# name -> a rig for KVM: what the tests above check, and for the aborts the ESR_EL1
# and FAR_EL1 the emulator's message gives, as the guest's own handler sees them.
ON_KVM = {
    "identity": rig_text("identity", f"  exit: system-off\n  regs: {{x19: 5050, pc: 0x400000a4}}\n"
                         f"  memory: [{{at: 0x40008000, hex: \"{le(5050)}\"}}]\n"),
    "alias": rig_text("alias", "  exit: system-off\n  regs: {x20: 0x1122334455667788, x21: 0xcafe, "
                      "x22: 0x800000dc, pc: 0x800000ec}\n"),
    "high": rig_text("high", f"  exit: system-off\n  regs: {{x19: 0x5eed, x21: 0x90, x22: {HI + 0x2158:#x}}}\n"
                     "  console: {contains: \"hi\"}\n", extra="devices: [{type: pl011, at: 0x09000000}]\n"),
    "granule64k": rig_text("granule64k", "  exit: system-off\n  regs: {x20: 0x6464, x21: 0x40000701}\n"),
    "el0": rig_text("el0", "  exit: system-off\n  regs: {x19: 0x56000001, x20: 0x8000010c}\n", images=EL0),
    "el0-load": rig_text("el0", "  exit: system-off\n  regs: {x19: 0x9200000f, x20: 0x80000104, "
                         "far_el1: 0x80008000}\n", images=EL0, extra="cpu: {regs: {x9: 1}}\n"),
    "tlbi": rig_text("tlbi", "  exit: system-off\n  regs: {x20: 0x1111, x21: 0x2222, x22: 0x2222}\n",
                     size="4M", images=TLBI),
    "preset": rig_text("preset", "  exit: system-off\n  regs: {x19: 0xabcd}\n", images=PRESET_TABLES,
                       extra=PRESET_REGS),
    "readonly": rig_text("readonly", "  exit: system-off\n  regs: {x19: 0xbeef, x23: 0x9600004f, "
                         "x24: 0x80008008, elr_el1: 0x400000d0}\n", images=HANDLERS, extra=VBAR),
    "outside": rig_text("outside", "  exit: system-off\n  regs: {x23: 0x96000004, x24: 0x8040008000, "
                        "elr_el1: 0x40000078}\n", images=HANDLERS, extra=VBAR),
}


@pytest.mark.arm64vm
def test_the_same_guests_on_real_arm64_kvm(tmp_path):
    """Every guest above on the arm64 KVM of kvmrig.invm's VM: the same
    registers and memory, and the aborts the emulator describes are the ones
    KVM delivers (ESR_EL1, FAR_EL1, ELR_EL1 in the guest's handler)."""
    import os
    import shutil
    import subprocess
    import sys

    from kvmrig.invm import qemu as invm_qemu

    qemu = os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} is not installed (run scripts/setup-arm64-lane.sh)")
    for name, text in ON_KVM.items():
        (tmp_path / f"{name}.yaml").write_text(text.replace("backend: emu\n", "backend: kvm\n"))
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "arm64", str(tmp_path)],
                          cwd=root, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS ") == len(ON_KVM), done.stdout
