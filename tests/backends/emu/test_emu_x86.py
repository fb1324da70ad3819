"""The x86_64 emulator backend: every CPU mode, devices, port I/O and MMIO,
ROM writes, breakpoints, watchpoints, single-step, `set`, timeouts, and
exceptions; each as a small rig run with `backend: emu` (no /dev/kvm
needed). Guests are inline hex, disassembly beside each instruction.
"""

from __future__ import annotations

import pytest

pytest.importorskip("unicorn")

from kvmrig.arch.x86_64 import boot, regs as x86regs  # noqa: E402
from kvmrig.backends.events import Halt, PortIO  # noqa: E402
from kvmrig.backends.emu import core  # noqa: E402
from kvmrig.backends.emu.x86_64 import REG_IDS, EmuX86Backend  # noqa: E402
from kvmrig.backends.emu.x86_cross import CsBase  # noqa: E402
from kvmrig.rig.load import load_rig  # noqa: E402
from kvmrig.result import FAILED  # noqa: E402
from kvmrig.runner import run_rig  # noqa: E402
from tests.conftest import assert_rig_passed as passed  # noqa: E402

LONG = """\
kvmrig: 1
arch: x86_64
backend: emu
timeout: 5s
memory:
  - {at: 0x0, size: 2M}
"""


def run(make_rig, text: str):
    result = run_rig(load_rig(make_rig(text)))
    assert result.backend == "emu", result.message
    return result


# Modes ------------------------------------------------------------------------

def test_register_table_covers_every_canonical_register():
    assert set(REG_IDS) | {"efer"} == set(x86regs.CANONICAL)
    assert len(set(REG_IDS.values())) == len(REG_IDS)  # no unicorn id twice


def test_cs_base_is_found_in_unicorns_context():
    assert CsBase.find() is not None


@pytest.mark.parametrize("mode, entry, cs, cs_base, cr0_pe, efer", [
    ("real", 0x1000, 0x0, 0x0, 0, 0),
    ("reset", 0x1000, 0xF000, 0xFFFF0000, 0, 0),
    ("protected", 0x1000, 0x10, 0x0, 1, 0),
    ("long", 0x1000, 0x08, 0x0, 1, 0x500),
])
def test_initial_state_of_every_mode(mode, entry, cs, cs_base, cr0_pe, efer):
    import mmap
    state = boot.initial_state(mode, entry, 0x1F0000, [(0, 0x200000)])
    ram = mmap.mmap(-1, 0x200000)
    for addr, data in state.writes:
        ram[addr:addr + len(data)] = data
    with EmuX86Backend() as b:
        b.map_memory(0, ram, False)
        if mode == "reset":
            rom = mmap.mmap(-1, 0x10000)
            b.map_memory(0xFFFF0000, rom, True)
        b.set_initial_state(state)
        r = b.get_regs()
        assert r["cs"] == cs and b.cs_base() == cs_base
        assert r["cr0"] & 1 == cr0_pe and r["efer"] == efer
        assert r["rip"] == state.rip and r["rflags"] == 2
        assert b._linear_pc() == state.first_pc


def test_real_mode_int_goes_through_the_ivt(make_rig):
    r = run(make_rig, """\
        kvmrig: 1
        arch: x86_64
        backend: emu
        memory: [{at: 0x0, size: 64K}]
        images:
          - {hex: "bc 00 80  cd 20  f4", at: 0x1000}   # mov sp, 0x8000; int 0x20; hlt
          - {hex: "b8 34 12  cf", at: 0x1100}          # handler: mov ax, 0x1234; iret
          - {hex: "00 11 00 00", at: 0x80}             # IVT[0x20] = 0000:1100
        cpu: {mode: real, entry: 0x1000}
        expect: {exit: hlt, regs: {ax: 0x1234, sp: 0x8000, ip: 0x1006}}
        """)
    passed(r)


def test_protected_mode_fault_with_a_gate_is_unhandled_not_silently_dropped(make_rig):
    # IDT at 0x3000 with a present gate for #UD; the emulator does not deliver it.
    r = run(make_rig, LONG + """\
images:
  - {hex: "0f 01 1c 25 00 20 00 00  0f 0b", at: 0x1000}   # lidt [0x2000]; ud2
  - {hex: "ff 00 00 30 00 00", at: 0x2000}                # IDTR: limit 0xff, base 0x3000
  - {hex: "00 00 10 00 00 8e 00 00", at: 0x3030}          # gate 6: present interrupt gate
cpu: {mode: protected}
""")
    assert r.outcome.exit == "unhandled"
    assert "#UD" in r.outcome.detail and "backend: kvm" in r.outcome.detail


# Port I/O and MMIO ------------------------------------------------------------

def test_in_gets_the_device_answer_and_out_is_recorded(make_rig):
    r = run(make_rig, LONG + """\
images:
  - {hex: "e4 71  88 c3  b0 0a  e6 70  f4", at: 0x1000}   # in al,0x71; mov bl,al; mov al,0xa; out 0x70,al; hlt
devices: [{type: constant, port: 0x71, value: 0x26}]
cpu: {mode: long}
expect: {exit: hlt, regs: {bl: 0x26}, port_writes: {0x70: [0x0a]}}
""")
    passed(r)


def test_mmio_read_returns_the_device_value_and_writes_reach_it(make_rig):
    r = run(make_rig, LONG + """\
images:
  # mov eax, [0x10000000]; mov [0x10000004], eax; hlt
  - {hex: "8b 04 25 00 00 00 10  89 04 25 04 00 00 10  f4", at: 0x1000}
devices: [{type: constant, at: 0x10000000, size: 4K, value: 0x11223344}]
cpu: {mode: long}
expect: {exit: hlt, regs: {eax: 0x11223344}}
""")
    passed(r)
    assert r.outcome.device_writes == [("constant@0x10000000", 0x10000004, 4, 0x11223344)]


def test_unclaimed_mmio_read_ends_the_run_on_the_instruction(make_rig):
    r = run(make_rig, LONG + """\
images:
  - {hex: "90  8b 04 25 00 00 00 20  f4", at: 0x1000}   # nop; mov eax, [0x20000000]; hlt
cpu: {mode: long}
expect: {exit: mmio, regs: {rip: 0x1001}}
""")
    passed(r)


def test_a_write_that_ends_the_run_shows_the_instruction_completed_as_kvm_does(make_rig):
    # KVM reports OUT and MMIO stores with RIP already past the instruction.
    r = run(make_rig, LONG + """\
images:
  # mov eax, 42; mov [0x10000000], eax; hlt
  - {hex: "b8 2a 00 00 00  89 04 25 00 00 00 10  f4", at: 0x1000}
devices: [{type: exit, at: 0x10000000}]
cpu: {mode: long}
expect: {exit: exit-code, exit_code: 42, regs: {rip: 0x100c}}
""")
    passed(r)
    r = run(make_rig, LONG + """\
images:
  - {hex: "b0 07  e6 f4  f4", at: 0x1000}   # mov al, 7; out 0xf4, al; hlt
devices: [{type: exit, port: 0xf4}]
cpu: {mode: long}
expect: {exit: exit-code, exit_code: 7, regs: {rip: 0x1004}}
""")
    passed(r)


def test_rom_write_is_an_mmio_exit_and_is_not_applied(make_rig):
    r = run(make_rig, """\
        kvmrig: 1
        arch: x86_64
        backend: emu
        memory:
          - {at: 0x0, size: 2M}
          - {at: 0xffff0000, size: 64K, rom: true}
        images:
          # mov eax, "ROM!"; mov [0x1000], eax; inc dword [0xffff0020]; hlt
          - {hex: "b8 52 4f 4d 21  a3 00 10 00 00  ff 05 20 00 ff ff  f4", at: 0xffff0000}
        cpu: {mode: protected}
        expect:
          exit: mmio
          regs: {rip: 0xffff0010}                       # past the INC, as KVM shows it
          memory:
            - {at: 0x1000, hex: "524f4d21"}
            - {at: 0xffff0020, u32: 0}                   # the ROM is unchanged
        """)
    passed(r)
    assert "ROM" in r.outcome.detail


# Debugging -----------------------------------------------------------------------

LOOP = LONG + """\
images:
  # 1000: mov ecx, 5 / 1005: xor eax, eax / 1007: add eax, ecx / 1009: dec ecx
  # 100b: jnz 1007 / 100d: hlt
  - {hex: "b9 05 00 00 00  31 c0  01 c8  ff c9  75 fa  f4", at: 0x1000}
cpu: {mode: long}
"""


def test_sw_and_hw_breakpoints_count_every_turn(make_rig):
    r = run(make_rig, LOOP + """\
breakpoints:
  - {at: 0x1007, kind: sw, hits: 5, expect: {regs: {rip: 0x1007, ecx: {range: [1, 5]}}}}
  - {at: 0x1009, kind: hw, hits: 5}
  - {at: 0x1007, kind: hw, hits: 5}
expect: {exit: hlt, regs: {eax: 15}, memory: [{at: 0x1007, hex: "01c8"}]}
""")
    passed(r)


def test_set_at_a_breakpoint_changes_the_run(make_rig):
    r = run(make_rig, LOOP + """\
breakpoints:
  - {at: 0x1009, kind: hw, on_hit: 2, set: {regs: {ecx: 1}}}   # cut the loop short
expect: {exit: hlt, regs: {eax: 9}}                              # 5 + 4
""")
    passed(r)


def test_single_step_counts_and_traces_every_instruction(make_rig):
    r = run(make_rig, LOOP + """\
trace: {max: 5}
expect: {exit: hlt, steps: 18}      # mov, xor, 5 x (add, dec, jnz), hlt
""")
    passed(r)
    assert r.outcome.trace == [0x1000, 0x1005, 0x1007, 0x1009, 0x100B]


WATCH = LONG + """\
images:
  # 1000: mov dword [0x5000], 0x11223344
  # 100b: mov eax, [0x5002]
  # 1012: mov [0x5006], ax
  # 101a: hlt
  - {hex: "c7 04 25 00 50 00 00 44 33 22 11  8b 04 25 02 50 00 00  66 89 04 25 06 50 00 00  f4", at: 0x1000}
cpu: {mode: long}
"""


def test_watchpoints_of_any_length_see_the_access_after_it_completes(make_rig):
    r = run(make_rig, WATCH + """\
watchpoints:
  - {at: 0x5003, len: 3, access: write, hits: 1, expect: {value: 0x11, regs: {rip: 0x100b}}}
  - {at: 0x5005, len: 1, access: read, hits: 1, expect: {regs: {eax: 0x1122, rip: 0x1012}}}
  - {at: 0x5007, len: 1, access: access, hits: 1, expect: {value: 0x11}}
expect: {exit: hlt}
""")
    passed(r)


def test_too_many_watch_registers_is_a_rig_error(make_rig):
    # The emulator has as many as x86 (4, shared), so a rig means the same on both backends.
    assert EmuX86Backend.hw_debug_slots(EmuX86Backend.__new__(EmuX86Backend)) == (4, 4, True)
    r = run_rig(load_rig(make_rig(WATCH + """\
watchpoints:
  - {at: 0x5001, len: 16, access: write}   # 1 + 2 + 4 + 8 + 1 bytes: five registers
""")))
    assert r.status == "error" and "debug register" in r.message


def test_timeout_stops_a_spinning_guest(make_rig):
    r = run(make_rig, LONG.replace("timeout: 5s", "timeout: 200ms") + """\
images: [{hex: "eb fe", at: 0x1000}]   # jmp .
cpu: {mode: long}
expect: {exit: timeout, regs: {rip: 0x1000}}
""")
    passed(r)
    assert r.outcome.seconds < 2


def test_a_failing_check_fails_the_rig(make_rig):
    r = run(make_rig, LOOP + "expect: {exit: hlt, regs: {eax: 16}}\n")
    assert r.status == FAILED


# Backend-level semantics ------------------------------------------------------------

def test_error_table_has_each_unicorn_error_once():
    from unicorn import unicorn_const as U
    codes = {v for k, v in vars(U).items() if k.startswith("UC_ERR_")}
    assert set(core.ERROR_TEXT) <= codes
    assert all("{addr}" in t or "exception" in t or "instruction" in t for t in core.ERROR_TEXT.values())


def test_io_events_carry_port_size_and_data():
    import mmap
    state = boot.initial_state("long", 0x1000, 0x1F0000, [(0, 0x200000)])
    ram = mmap.mmap(-1, 0x200000)
    for addr, data in state.writes:
        ram[addr:addr + len(data)] = data
    ram[0x1000:0x1008] = bytes.fromhex("66 ba f8 03  66 ed  ee  f4".replace(" ", ""))  # mov dx,0x3f8; in ax,dx; out dx,al; hlt
    with EmuX86Backend() as b:
        b.map_memory(0, ram, False)
        b.set_initial_state(state)
        import time
        deadline = time.monotonic() + 5
        ev = b.run(deadline)
        assert ev == PortIO(0x3F8, 2, False)
        assert b.get_pc() == 0x1004      # a read waits on the instruction
        b.complete_read(b"\x34\x12")
        ev = b.run(deadline)
        assert ev == PortIO(0x3F8, 1, True, b"\x34")
        ev = b.run(deadline)
        assert ev == Halt(0x1007)
        assert b.get_regs()["rax"] == 0x1234
