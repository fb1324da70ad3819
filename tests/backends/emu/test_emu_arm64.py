"""The arm64 emulator backend: EL1 boot, PL011 and the exit device over
MMIO, PSCI through HVC, exceptions to the guest's vectors, breakpoints,
watchpoints, single-step, `set` and WFI's timeout; each a small rig with
`backend: emu`. Guests are inline hex words (little-endian), disassembly beside.
"""

from __future__ import annotations

import pytest

pytest.importorskip("unicorn")

from kvmrig.arch.arm64 import regs as arm64regs  # noqa: E402
from kvmrig.backends.emu.arm64 import REGS, EmuArm64Backend  # noqa: E402
from kvmrig.rig.load import load_rig  # noqa: E402
from kvmrig.runner import run_rig  # noqa: E402
from tests.conftest import assert_rig_passed as passed  # noqa: E402

HEAD = """\
kvmrig: 1
arch: arm64
backend: emu
timeout: 5s
memory:
  - {at: 0x40000000, size: 64K}
"""


def words(*insns: int) -> str:
    return " ".join(i.to_bytes(4, "little").hex() for i in insns)


# Building blocks (aarch64-linux-gnu-as; objdump beside each word).
MOV_X1_EXIT = 0xD2A14001        # mov x1, #0x0a000000
MOV_X1_PL011 = 0xD2A12001       # mov x1, #0x09000000
MOV_W2_42 = 0x52800542          # mov w2, #42
STR_W2_X1 = 0xB9000022          # str w2, [x1]
STRB_W2_X1 = 0x39000022         # strb w2, [x1]
LDR_W4_X1_18 = 0xB9401824       # ldr w4, [x1, #24]
MOV_W2_A = 0x52800822           # mov w2, #0x41
B_SELF = 0x14000000             # b .
PSCI_OFF = (0x52800100, 0x72B08000, 0xD4000002)   # mov w0, #8; movk w0, #0x8400, lsl 16; hvc #0
PSCI_RESET = (0x52800120, 0x72B08000, 0xD4000002)  # mov w0, #9; movk ...; hvc #0
PSCI_VERSION = (0x52800000, 0x72B08000, 0xD4000002)  # mov w0, #0; movk ...; hvc #0
MOV_X19_X0 = 0xAA0003F3         # mov x19, x0
MOV_X20_X0 = 0xAA0003F4         # mov x20, x0
MOV_W0_1234 = 0x52824680        # mov w0, #0x1234
HVC = 0xD4000002                # hvc #0
ADD_X0_1 = 0x91000400           # add x0, x0, #1
SUB_X1_1 = 0xD1000421           # sub x1, x1, #1
CBNZ_X1_BACK2 = 0xB5FFFFC1      # cbnz x1, .-8
WFI = 0xD503207F                # wfi


def run(make_rig, text: str):
    result = run_rig(load_rig(make_rig(text)))
    assert result.backend == "emu", result.message
    return result


def test_register_table_covers_every_canonical_register():
    assert set(REGS) | {"sp"} == set(arm64regs.CANONICAL)


def test_boots_at_el1h_with_daif_masked_and_the_mmu_off():
    import mmap
    from kvmrig.arch.arm64.boot import initial_state
    ram = mmap.mmap(-1, 0x10000)
    with EmuArm64Backend() as b:
        b.map_memory(0x40000000, ram, False)
        b.set_initial_state(initial_state(0x40000000))
        r = b.get_regs()
        assert r["pc"] == 0x40000000 and r["pstate"] == 0x3C5
        assert r["sctlr_el1"] & 1 == 0 and r["cpacr_el1"] == 0
        assert b.hw_debug_slots() == (6, 4, False)


def test_psci_system_off_as_kvm_leaves_it(make_rig):
    r = run(make_rig, HEAD + f"""\
images: [{{hex: "{words(*PSCI_OFF, B_SELF)}", at: 0x40000000}}]
expect: {{exit: system-off, regs: {{x0: 0xfffffffffffffffa, x1: 0, pc: 0x4000000c}}}}
""")
    passed(r)


def test_psci_system_reset(make_rig):
    r = run(make_rig, HEAD + f"""\
images: [{{hex: "{words(*PSCI_RESET, B_SELF)}", at: 0x40000000}}]
expect: {{exit: reset}}
""")
    passed(r)


def test_psci_version_and_unknown_calls_return_to_the_guest(make_rig):
    r = run(make_rig, HEAD + f"""\
images: [{{hex: "{words(*PSCI_VERSION, MOV_X19_X0, MOV_W0_1234, HVC, MOV_X20_X0, *PSCI_OFF)}", at: 0x40000000}}]
expect: {{exit: system-off, regs: {{x19: 0x10001, x20: 0xffffffffffffffff}}}}
""")
    passed(r)


def test_pl011_output_and_flag_register(make_rig):
    r = run(make_rig, HEAD + f"""\
images: [{{hex: "{words(MOV_X1_PL011, LDR_W4_X1_18, MOV_W2_A, STRB_W2_X1, *PSCI_OFF)}", at: 0x40000000}}]
devices: [{{type: pl011, at: 0x09000000}}]
expect: {{exit: system-off, regs: {{x4: 0x90}}, console: {{contains: "A"}}}}
""")
    passed(r)


def test_exit_device_store_leaves_the_pc_on_the_store_as_arm64_kvm_does(make_rig):
    # Real arm64 KVM (nested lane, rigs/arm64/exit-code.yaml): an MMIO store exits
    # with the pc on it; KVM steps past it only when the vCPU runs again.
    r = run(make_rig, HEAD + f"""\
images: [{{hex: "{words(MOV_X1_EXIT, MOV_W2_42, STR_W2_X1, B_SELF)}", at: 0x40000000}}]
devices: [{{type: exit, at: 0x0a000000}}]
expect: {{exit: exit-code, exit_code: 42, regs: {{pc: 0x40000008}}}}
""")
    passed(r)


def test_unclaimed_mmio_ends_the_run(make_rig):
    r = run(make_rig, HEAD + f"""\
images: [{{hex: "{words(MOV_X1_EXIT, STR_W2_X1, B_SELF)}", at: 0x40000000}}]
expect: {{exit: mmio}}
""")
    passed(r)


def test_pl011_input_is_read_from_dr(make_rig):
    LDR_W5_X1 = 0xB9400025      # ldr w5, [x1]
    LDR_W6_X1_18 = 0xB9401826   # ldr w6, [x1, #24]
    r = run(make_rig, HEAD + f"""\
images: [{{hex: "{words(MOV_X1_PL011, LDR_W4_X1_18, LDR_W5_X1, LDR_W6_X1_18, *PSCI_OFF)}", at: 0x40000000}}]
devices: [{{type: pl011, at: 0x09000000, input: "k"}}]
expect: {{exit: system-off, regs: {{x4: 0x80, x5: 0x6b, x6: 0x90}}}}
""")
    passed(r)


# Exceptions to the guest's vectors: VBAR_EL1 = 0x40000800, the handler at
# +0x200 (current EL, SPx) saves ESR and ELR in x21/x22 and powers off.
VECTORS = f"""\
  - {{hex: "{words(0xD5385215, 0xD5384036, *PSCI_OFF)}", at: 0x40000a00}}   # mrs x21, esr_el1; mrs x22, elr_el1; PSCI off
cpu: {{regs: {{vbar_el1: 0x40000800}}}}
"""


@pytest.mark.parametrize("insn, esr, elr", [
    (0xD4000EE1, 0x56000077, 0x40000004),   # svc #0x77: EC 0x15, ELR after it
    (0x00000000, 0x02000000, 0x40000000),   # udf #0: EC 0 (unknown), ELR on it
    (0xD4200840, 0xF2000042, 0x40000000),   # brk #0x42: EC 0x3c
])
def test_synchronous_exceptions_are_taken_by_the_guest(make_rig, insn, esr, elr):
    r = run(make_rig, HEAD + f"""\
images:
  - {{hex: "{words(insn, B_SELF)}", at: 0x40000000}}
{VECTORS}expect: {{exit: system-off, regs: {{x21: {esr:#x}, x22: {elr:#x}, spsr_el1: 0x3c5}}}}
""")
    passed(r)


# Debugging ------------------------------------------------------------------------

LOOP = HEAD + f"""\
images:
  # 0: mov x1, #3 (0xd2800061) / 4: add x0, x0, #1 / 8: sub x1, x1, #1 / c: cbnz x1, 4 / 10..: PSCI off
  - {{hex: "{words(0xD2800061, ADD_X0_1, SUB_X1_1, CBNZ_X1_BACK2, *PSCI_OFF)}", at: 0x40000000}}
"""


def test_sw_and_hw_breakpoints_and_set(make_rig):
    r = run(make_rig, LOOP + """\
breakpoints:
  - {at: 0x40000004, kind: sw, hits: 3, expect: {regs: {pc: 0x40000004, x1: {range: [1, 3]}}}}
  - {at: 0x40000008, kind: hw, hits: 3}
  - {at: 0x40000010, kind: hw, hits: 1, set: {regs: {x19: 7}}}
expect: {exit: system-off, regs: {x19: 7}, memory: [{at: 0x40000004, hex: "00040091"}]}
""")
    passed(r)


def test_single_step_counts(make_rig):
    r = run(make_rig, LOOP + """\
trace: {max: 3}
expect: {exit: system-off, steps: 13}     # mov, 3 x (add, sub, cbnz), mov, movk, hvc
""")
    passed(r)
    assert r.outcome.trace == [0x40000000, 0x40000004, 0x40000008]


WATCH = HEAD + f"""\
images:
  # 00: movz x4, #0x4000, lsl 16 / 04: movk x4, #0x8000            x4 = 0x40008000
  # 08: ldr x3, [x4] / 0c: str x3, [x4, #8] / 10: strh w3, [x4, #6] / 14: ldr w3, [x4, #4]
  - {{hex: "{words(0xD2A80004, 0xF2900004, 0xF9400083, 0xF9000483, 0x79000C83, 0xB9400483, *PSCI_OFF)}", at: 0x40000000}}
  - {{hex: "0102030405060708", at: 0x40008000}}
"""


def test_write_and_access_watchpoints(make_rig):
    r = run(make_rig, WATCH + """\
watchpoints:
  - {at: 0x4000800c, len: 4, access: write, hits: 1, expect: {value: 0x08070605, regs: {pc: 0x40000010}}}
  - {at: 0x40008005, len: 2, access: access, hits: 3}    # ldr x3, strh, ldr w3
expect: {exit: system-off}
""")
    passed(r)


def test_read_watchpoint_ignores_writes(make_rig):
    r = run(make_rig, WATCH + """\
watchpoints:
  - {at: 0x40008006, len: 2, access: read, hits: 2, on_hit: 1, expect: {regs: {pc: 0x4000000c}}}
expect: {exit: system-off}
""")
    passed(r)


def test_wfi_sleeps_until_the_timeout(make_rig):
    r = run(make_rig, HEAD.replace("timeout: 5s", "timeout: 200ms") + f"""\
images: [{{hex: "{words(WFI, 0x17FFFFFF)}", at: 0x40000000}}]   # wfi; b .-4
expect: {{exit: timeout, regs: {{pc: {{range: [0x40000000, 0x40000004]}}}}}}
""")
    passed(r)
