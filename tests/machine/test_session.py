"""Session: whole rigs run on a real /dev/kvm, one small guest each.

Every guest is inline hex in its rig, with the disassembly written beside the
bytes (GNU as syntax is Intel here, for readability). Guests start at 0x1000
in 2 MiB of RAM unless a test says otherwise.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import pytest

from kvmrig.errors import RigError
from kvmrig.machine.plan import prepare
from kvmrig.machine.session import execute
from kvmrig.rig.load import load_rig_text
from kvmrig.result import ERROR, FAILED, PASSED
from kvmrig.runner import run_rig

from tests.conftest import hexof

x86_host = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86_64 guest code")


def kvm(test):
    """A test that runs an x86 guest on /dev/kvm."""
    return pytest.mark.kvm(x86_host(test))


CR0_PE, CR0_PG = 1 << 0, 1 << 31
EFER_LMA = 1 << 10


def rig_text(mode: str, code: str, *, memory: str = "[{at: 0, size: 2M}]", at: int = 0x1000,
             cpu: str = "", timeout: str = "2s", extra: str = "") -> str:
    """A rig running `code` (hex bytes, `# comments` allowed) in `mode`; `cpu`
    adds keys to cpu:, `extra` adds top-level YAML."""
    return (f"kvmrig: 1\narch: x86_64\ntimeout: {timeout}\nmemory: {memory}\n"
            f"images: [{{hex: '{hexof(code)}', at: {at:#x}}}]\n"
            f"cpu: {{mode: {mode}{', ' + cpu if cpu else ''}}}\n" + extra)


def run(text: str, path: str = "/rigs/session.yaml"):
    """Prepare and execute on KVM; the Outcome."""
    from kvmrig.backends.kvm.x86_64 import KvmX86Backend

    return execute(prepare(load_rig_text(text, path)), KvmX86Backend)


def assert_passed(outcome):
    assert outcome.failures == [], [str(f) for f in outcome.failures]


# -- CPU modes ------------------------------------------------------------------

@kvm
def test_reset_mode_starts_at_the_reset_vector_in_rom():
    code = """
        b8 34 12      # fffffff0: mov ax, 0x1234
        f4            # fffffff3: hlt
    """
    out = run(rig_text("reset", code, at=0xFFFF_FFF0,
                       memory="[{at: 0, size: 64K}, {at: 0xffff0000, size: 64K, rom: true}]"))
    assert_passed(out)
    assert out.exit == "hlt"
    assert out.regs["rax"] & 0xFFFF == 0x1234
    assert out.regs["cs"] == 0xF000, "power-on CS selector"
    assert out.regs["rip"] == 0xFFF4, "IP 0xfff0 + 4: it ran the 4 bytes at the reset vector"
    assert not out.regs["cr0"] & CR0_PE


# The same bytes are `mov ax, 0x5678; xor al, 0x12; hlt` in 16-bit code and
# `mov eax, 0x12345678; hlt` in 32-bit code: the result says which mode ran them.
MODE_PROBE = """
    b8 78 56 34 12   # 16-bit: mov ax, 0x5678 ; xor al, 0x12    32-bit: mov eax, 0x12345678
    f4               # hlt
"""


@kvm
def test_real_mode_runs_16_bit_code():
    out = run(rig_text("real", MODE_PROBE, memory="[{at: 0, size: 64K}]", at=0x7C00))
    assert_passed(out)
    assert out.regs["rax"] == 0x566A
    assert out.regs["cs"] == 0 and out.regs["rip"] == 0x7C06
    assert not out.regs["cr0"] & CR0_PE


@kvm
def test_real_mode_entry_above_64k_uses_a_segment():
    out = run(rig_text("real", MODE_PROBE, memory="[{at: 0, size: 128K}]", at=0x12340))
    assert_passed(out)
    assert out.regs["rax"] == 0x566A
    assert (out.regs["cs"] << 4) + out.regs["rip"] == 0x12346


@kvm
def test_protected_mode_runs_32_bit_code_without_paging():
    out = run(rig_text("protected", MODE_PROBE))
    assert_passed(out)
    assert out.regs["rax"] == 0x1234_5678
    assert out.regs["cr0"] & (CR0_PE | CR0_PG) == CR0_PE


@kvm
def test_long_mode_runs_64_bit_code():
    code = """
        48 b8 88 77 66 55 44 33 22 11   # movabs rax, 0x1122334455667788
        f4                              # hlt
    """
    out = run(rig_text("long", code))
    assert_passed(out)
    assert out.regs["rax"] == 0x1122_3344_5566_7788
    assert out.regs["efer"] & EFER_LMA
    assert out.regs["cr0"] & (CR0_PE | CR0_PG) == CR0_PE | CR0_PG


# -- consoles ---------------------------------------------------------------------

SAY_HI = """
    66 ba f8 03   # mov dx, 0x3f8
    b0 68         # mov al, 'h'
    ee            # out dx, al
    b0 69         # mov al, 'i'
    ee            # out dx, al
    f4            # hlt
"""


@kvm
def test_serial_console():
    code = SAY_HI
    out = run(rig_text("long", code, extra="devices: [{type: serial, port: 0x3f8}]\n"
                                           "expect: {console: {contains: hi}}\n"))
    assert_passed(out)
    assert out.console == b"hi"
    assert out.port_writes == []


@kvm
def test_a_failed_console_check_names_the_unclaimed_port_the_guest_wrote_to():
    code = SAY_HI
    out = run(rig_text("long", code, extra="expect: {console: {contains: hi}}\n"))   # no serial device
    assert [f.what for f in out.failures] == ["console"]
    (note,) = [n for n in out.notes if "no device claims" in n]
    assert "0x3f8 (2 byte(s): 'hi')" in note and "devices: [{type: serial, port: 0x3f8}]" in note


@kvm
def test_debugcon_console_and_probe():
    code = """
        e4 e9         # in al, 0xe9        (the probe: reads 0xe9)
        88 c3         # mov bl, al
        b0 4f         # mov al, 'O'
        e6 e9         # out 0xe9, al
        b0 4b         # mov al, 'K'
        e6 e9         # out 0xe9, al
        f4            # hlt
    """
    out = run(rig_text("protected", code, extra="devices: [{type: debugcon, port: 0xe9}]\n"
                                                "expect: {regs: {bl: 0xe9}, console: {contains: OK}}\n"))
    assert_passed(out)
    assert out.console == b"OK"


# -- exit and constant devices --------------------------------------------------------

@kvm
def test_exit_device_on_a_port():
    code = """
        b0 2a         # mov al, 42
        e6 f4         # out 0xf4, al
        f4            # hlt            (never reached)
    """
    out = run(rig_text("real", code, memory="[{at: 0, size: 64K}]",
                       extra="devices: [{type: exit, port: 0xf4}]\nexpect: {exit_code: 42}\n"))
    assert_passed(out)
    assert (out.exit, out.exit_code) == ("exit-code", 42)


@kvm
def test_exit_device_on_mmio():
    code = """
        b8 07 00 00 00          # mov eax, 7
        89 04 25 00 00 00 0a    # mov [0x0a000000], eax
        f4                      # hlt            (never reached)
    """
    out = run(rig_text("long", code, extra="devices: [{type: exit, at: 0x0a000000}]\n"
                                           "expect: {exit: exit-code, exit_code: 7}\n"))
    assert_passed(out)
    assert (out.exit, out.exit_code) == ("exit-code", 7)
    assert out.regs["rip"] == 0x100C, "stopped right after the store"


@kvm
def test_exit_code_mismatch_fails_the_rig():
    code = """
        b0 11         # mov al, 0x11
        e6 f4         # out 0xf4, al
    """
    out = run(rig_text("real", code, memory="[{at: 0, size: 64K}]",
                       extra="devices: [{type: exit, port: 0xf4}]\nexpect: {exit_code: 0}\n"))
    assert [str(f).split(" [")[0] for f in out.failures] == ["exit_code: expected 0, got 0x11 (17)"]


@kvm
def test_constant_device_on_a_port():
    code = """
        e4 71         # in al, 0x71
        88 c3         # mov bl, al
        66 e5 71      # in ax, 0x71
        e6 71         # out 0x71, al      (recorded, not an unclaimed write)
        f4            # hlt
    """
    out = run(rig_text("long", code, extra="devices: [{type: constant, port: 0x71, value: 0x1234}]\n"
                                           "expect: {regs: {bl: 0x34, ax: 0x1234}}\n"))
    assert_passed(out)
    assert out.device_writes == [("constant@0x71", 0x71, 1, 0x34)]
    assert out.port_writes == []


@kvm
def test_constant_device_on_mmio():
    code = """
        8b 04 25 04 00 00 10    # mov eax, [0x10000004]
        bb 99 00 00 00          # mov ebx, 0x99
        89 1c 25 08 00 00 10    # mov [0x10000008], ebx
        f4                      # hlt
    """
    out = run(rig_text("long", code, extra="devices: [{type: constant, at: 0x10000000, size: 4K, "
                                           "value: 0xdeadbeef}]\nexpect: {regs: {rax: 0xdeadbeef}}\n"))
    assert_passed(out)
    assert out.device_writes == [("constant@0x10000000", 0x1000_0008, 4, 0x99)]


# -- what the guest must not do ------------------------------------------------------

@kvm
def test_unclaimed_mmio_read_ends_the_run_with_the_address():
    code = """
        8b 04 25 30 00 e0 0f    # mov eax, [0x0fe00030]
        f4                      # hlt
    """
    out = run(rig_text("long", code, extra="expect: {exit: mmio}\n"))
    assert_passed(out)
    assert out.exit == "mmio"
    assert "read" in out.detail and "0xfe00030" in out.detail


@kvm
def test_unclaimed_mmio_write_ends_the_run_and_fails_unless_expected():
    code = """
        b8 07 00 00 00          # mov eax, 7
        89 04 25 00 00 00 0a    # mov [0x0a000000], eax
        f4                      # hlt
    """
    out = run(rig_text("long", code))
    assert out.exit == "mmio"
    assert "write" in out.detail and "0xa000000" in out.detail
    (failure,) = out.failures
    assert failure.what == "exit" and failure.actual.startswith("mmio (")


@kvm
def test_rom_write_is_an_mmio_exit_and_the_rom_is_unchanged():
    code = """
        c6 05 00 00 ff ff 55    # mov byte [0xffff0000], 0x55
        f4                      # hlt
    """
    text = ("kvmrig: 1\narch: x86_64\n"
            "memory: [{at: 0, size: 2M}, {at: 0xffff0000, size: 64K, rom: true}]\n"
            "images:\n"
            f"  - {{hex: '{hexof(code)}', at: 0x1000}}\n"
            "  - {hex: 'aa', at: 0xffff0000}\n"
            "cpu: {mode: protected}\n"
            "expect: {exit: mmio, memory: [{at: 0xffff0000, hex: aa}]}\n")
    out = run(text)
    assert_passed(out)
    assert "0xffff0000" in out.detail and "ROM" in out.detail


@kvm
def test_triple_fault_is_shutdown():
    code = """
        0f 0b         # ud2     (no IDT: #UD -> #GP -> #DF -> shutdown)
    """
    out = run(rig_text("long", code, extra="expect: {exit: shutdown}\n"))
    assert_passed(out)
    assert out.exit == "shutdown" and "triple fault" in out.detail


@kvm
def test_wild_jump_into_unbacked_memory_fails_the_rig_with_a_diagnosis():
    code = """
        bb 00 00 00 40    # mov ebx, 0x40000000     (mapped by the page tables, no memory there)
        ff e3             # jmp rbx
    """
    result = run_rig(load_rig_text(rig_text("long", code), "/rigs/wild.yaml"))
    assert result.status == FAILED, result.message
    out = result.outcome
    assert out.exit not in ("hlt", "exit-code", "system-off", "timeout")
    assert "0x40000000" in out.detail
    assert "Traceback" not in result.message
    assert out.regs["rip"] == 0x4000_0000


@kvm
def test_unclaimed_io_stop_ends_the_run_with_exit_io():
    code = """
        b0 01         # mov al, 1
        e6 80         # out 0x80, al
        f4            # hlt
    """
    out = run(rig_text("real", code, memory="[{at: 0, size: 64K}]",
                       extra="io: {unclaimed: stop}\nexpect: {exit: io}\n"))
    assert_passed(out)
    assert out.exit == "io" and "0x80" in out.detail
    recorded = run(rig_text("real", code, memory="[{at: 0, size: 64K}]",
                            extra="expect: {port_writes: {0x80: [1]}}\n"))
    assert_passed(recorded)
    assert recorded.exit == "hlt"


@kvm
def test_unclaimed_port_read_is_all_ones():
    code = """
        e4 60         # in al, 0x60
        88 c3         # mov bl, al
        66 e5 64      # in ax, 0x64
        f4            # hlt
    """
    out = run(rig_text("long", code, extra="expect: {regs: {bl: 0xff, ax: 0xffff}}\n"))
    assert_passed(out)


@kvm
def test_string_io_moves_every_element():
    code = """
        be 00 11      # mov si, 0x1100
        b9 03 00      # mov cx, 3
        ba e9 00      # mov dx, 0xe9
        f3 6e         # rep outsb           (debugcon prints "abc")
        bf 00 20      # mov di, 0x2000
        b9 04 00      # mov cx, 4
        ba 71 00      # mov dx, 0x71
        f3 6c         # rep insb            (4 reads of the constant 0x5a)
        bf 00 30      # mov di, 0x3000
        b9 02 00      # mov cx, 2
        ba 80 00      # mov dx, 0x80
        f3 6d         # rep insw            (2 reads of an empty bus: 0xffff)
        f4            # hlt
    """
    text = rig_text("real", code, memory="[{at: 0, size: 64K}]",
                    extra="devices: [{type: debugcon, port: 0xe9}, {type: constant, port: 0x71, value: 0x5a}]\n"
                          "expect:\n  console: {contains: abc}\n  memory:\n"
                          "    - {at: 0x2000, hex: 5a5a5a5a00}\n    - {at: 0x3000, hex: ffffffff00}\n")
    text = text.replace("}]\ncpu:", "}, {hex: '61 62 63', at: 0x1100}]\ncpu:")  # "abc" at 0x1100
    out = run(text)
    assert_passed(out)
    assert out.console == b"abc"


@pytest.mark.parametrize("mode, memory, entry, message", [
    ("reset", "[{at: 0, size: 64K}]", "", "0xfffffff0, which is not inside any memory region"),
    ("real", "[{at: 0, size: 2M}]", ", entry: 0x100000", "real mode cannot start at 0x100000"),
])
def test_a_start_the_mode_cannot_reach_is_a_rig_error(mode, memory, entry, message):
    text = rig_text(mode, "f4", memory=memory).replace(f"cpu: {{mode: {mode}}}", f"cpu: {{mode: {mode}{entry}}}")
    with pytest.raises(RigError) as info:
        prepare(load_rig_text(text, "/rigs/start.yaml"))
    assert str(info.value).startswith("/rigs/start.yaml:6:")
    assert message in str(info.value)


@kvm
def test_failure_report_of_a_reset_mode_guest_shows_the_code_it_ran():
    text = rig_text("reset", "eb fe  # jmp $", at=0xFFFF_FFF0, timeout="50ms",
                    memory="[{at: 0, size: 64K}, {at: 0xffff0000, size: 64K, rom: true}]")
    result = run_rig(load_rig_text(text, "/rigs/reset-spin.yaml"))
    assert result.status == FAILED
    assert "pc 0xfffffff0" in result.outcome.detail
    report = result.outcome.report
    assert "code at 0xfffffff0:" in report
    assert any("jmp" in line for line in report), report


# -- registers -------------------------------------------------------------------

@kvm
def test_cpu_regs_sub_registers_change_only_their_bits():
    regs = "{rax: 0x1111222233334444, ax: 0xbeef, rbx: 0x5555, bh: 0x12, r9d: 0xffffffff}"
    out = run(rig_text("long", "f4  # hlt", cpu=f"regs: {regs}"))
    assert_passed(out)
    assert out.regs["rax"] == 0x1111_2222_3333_BEEF
    assert out.regs["rbx"] == 0x1255
    assert out.regs["r9"] == 0xFFFF_FFFF


@kvm
def test_cpu_regs_reach_the_guest():
    code = """
        48 01 d8      # add rax, rbx
        f4            # hlt
    """
    out = run(rig_text("long", code, cpu="regs: {rax: 40, ebx: 2}", extra="expect: {regs: {rax: 42}}\n"))
    assert_passed(out)


# -- the runner's tables ------------------------------------------------------------

@kvm
def test_tables_at_is_where_the_gdt_and_page_tables_go():
    text = rig_text("long", "f4  # hlt", cpu="tables_at: 0x100000",
                    # PML4[0] -> the PDPT on the next page, present | writable | accessed
                    extra="expect: {memory: [{at: 0x101000, u64: 0x102023}]}\n")
    out = run(text)
    assert_passed(out)
    assert out.regs["cr3"] == 0x10_1000, "one page of GDT at 0x100000, then the PML4"
    default = run(rig_text("long", "f4  # hlt"))
    assert default.regs["cr3"] != out.regs["cr3"]


def test_image_overlapping_the_tables_is_a_rig_error_at_the_image():
    text = ("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 2M}]\n"
            "images:\n"
            "  - {hex: f4, at: 0x1000}\n"
            "  - {hex: '00 00', at: 0x100ffe}\n"
            "cpu: {mode: long, tables_at: 0x100000}\n")
    with pytest.raises(RigError) as info:
        prepare(load_rig_text(text, "/rigs/overlap.yaml"))
    message = str(info.value)
    assert message.startswith("/rigs/overlap.yaml:6:")
    assert "overlaps the GDT and page tables" in message and "0x100000" in message


def test_tables_outside_ram_are_a_rig_error():
    text = ("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 2M}]\n"
            "images: [{hex: f4, at: 0x1000}]\n"
            "cpu: {mode: long, tables_at: 0x400000}\n")
    with pytest.raises(RigError) as info:
        prepare(load_rig_text(text, "/rigs/tables.yaml"))
    assert str(info.value).startswith("/rigs/tables.yaml:5:")
    assert "inside one RAM region" in str(info.value)


def test_long_mode_with_a_high_region_needs_few_tables():
    # RAM at 0 and 4 KiB at 1 TiB: PML4 + 2 PDPTs (0 and 512 GiB-1 TiB) + 5 PDs
    # (4 for the low 4 GiB, 1 for 1 TiB) = 8 pages, plus a page of GDT.
    # (Regression: regions were once passed to the paging code as (start, end).)
    text = ("kvmrig: 1\narch: x86_64\n"
            "memory: [{at: 0, size: 2M}, {at: 0x100_0000_0000, size: 4K}]\n"
            "images: [{hex: f4, at: 0x1000}]\n")
    plan = prepare(load_rig_text(text, "/rigs/high.yaml"))
    start, end = plan.boot.reserved
    assert end - start == 0x1000 + 8 * 0x1000


@kvm
def test_long_mode_reads_a_region_at_1_tib():
    code = """
        48 a1 00 00 00 00 00 01 00 00   # movabs eax, [0x10000000000]
        f4                              # hlt
    """
    text = rig_text("long", code, memory="[{at: 0, size: 2M}, {at: 0x100_0000_0000, size: 4K}]",
                    extra="expect: {regs: {rax: 0x44332211}}\n")
    text = text.replace("}]\ncpu:", "}, {hex: '11 22 33 44', at: 0x100_0000_0000}]\ncpu:")  # a second image
    assert_passed(run(text))


@kvm
def test_long_mode_with_a_region_above_2_47_runs():
    # (Regression: this was an internal error, a ValueError from the paging code.)
    text = rig_text("long", "f4  # hlt", memory="[{at: 0, size: 2M}, {at: 0x8000_0000_0000, size: 4K}]")
    result = run_rig(load_rig_text(text, "/rigs/high.yaml"))
    assert result.status == PASSED, result.message


# -- timeout ----------------------------------------------------------------------

SPIN = """
    eb fe         # 1000: jmp $          (never leaves the guest)
"""
SPIN_ON_IO = """
    e6 80         # 1000: out 0x80, al   (a VM exit every turn)
    eb fc         # 1002: jmp 0x1000
"""


@kvm
@pytest.mark.parametrize("code", [SPIN, SPIN_ON_IO], ids=["jmp", "out-loop"])
def test_timeout_stops_a_spinning_guest_on_time(code):
    text = rig_text("real", code, memory="[{at: 0, size: 64K}]", timeout="200ms", extra="expect: {exit: timeout}\n")
    rig = load_rig_text(text, "/rigs/spin.yaml")
    assert rig.timeout == 0.2
    # Warm up once (opening /dev/kvm, CPUID, imports), so that only the run is measured.
    assert run_rig(load_rig_text(rig_text("real", "f4", memory="[{at: 0, size: 64K}]"), "/rigs/w.yaml")).ok
    started = time.monotonic()
    result = run_rig(rig)
    wall = time.monotonic() - started
    assert result.status == PASSED, [str(f) for f in result.outcome.failures]
    assert result.outcome.exit == "timeout"
    assert re.search(r"pc 0x100[02]\b", result.outcome.detail), "the detail says where the guest was"
    # Never before its timeout; the upper bound only proves the spinning guest
    # was stopped (how close to 200 ms is a benchmark's business, not a
    # test's: a loaded CI machine may take longer to schedule the watchdog).
    assert 0.2 <= wall < 10, wall


@kvm
def test_timeout_fails_a_rig_that_expects_a_normal_end():
    text = rig_text("real", "eb fe  # jmp $", memory="[{at: 0, size: 64K}]", timeout="50ms")
    result = run_rig(load_rig_text(text, "/rigs/spin.yaml"))
    assert result.status == FAILED
    assert result.outcome.exit == "timeout"
    assert result.outcome.failures[0].what == "exit"


@kvm
def test_a_rig_error_found_at_run_time_is_an_error_result():
    # cpu.regs is checked at load time; a tables overlap is found by prepare:
    # run_rig turns it into an error result, never an exception.
    text = ("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 2M}]\n"
            "images: [{hex: f4, at: 0x1000}, {hex: '00', at: 0x1ff000}]\n")
    result = run_rig(load_rig_text(text, "/rigs/err.yaml"))
    assert result.status == ERROR
    assert result.message.startswith("/rigs/err.yaml:4:")


# -- sym: in register values -----------------------------------------------------

SYM_REGS = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 2M}]
images: [{file: guests/elf-symbols.elf}]
cpu: {mode: long, entry: "sym:_start", regs: {rdi: "sym:result", rbx: "sym:table+4"}}
breakpoints: [{at: "sym:sum_max", hits: 1, expect: {regs: {rsi: "%s"}}}]
expect: {exit: hlt, regs: {rdi: "sym:result", rbx: "sym:table+4", rax: 77}}
"""
EXAMPLES_X86 = Path(__file__).resolve().parents[2] / "rigs" / "x86"


@kvm
def test_register_values_can_be_elf_symbols():
    out = run(SYM_REGS % "sym:table", str(EXAMPLES_X86 / "sym-regs.yaml"))
    assert_passed(out)
    wrong = run(SYM_REGS % "sym:result", str(EXAMPLES_X86 / "sym-regs.yaml"))
    assert [str(f).split(" [")[0] for f in wrong.failures] == \
        ["breakpoint[0] at sym:sum_max (0x10000), hit 1: register rsi: expected 0x11000 (69632), got 0x1004c (65612)"]


def test_a_symbol_too_wide_for_its_register_is_a_rig_error():
    text = SYM_REGS.replace('rdi: "sym:result"', 'al: "sym:result"', 1) % "sym:table"
    with pytest.raises(RigError, match=r"sym:result is 0x11000, which does not fit in al \(8 bits\)"):
        prepare(load_rig_text(text, str(EXAMPLES_X86 / "sym-regs.yaml")))


# -- the failure report at a failing per-hit check ---------------------------------

@kvm
def test_a_failing_per_hit_check_shows_code_and_registers_at_that_hit():
    code = """
        b9 05 00 00 00   # 1000: mov $5,%ecx
        ff c9            # 1005: dec %ecx      <- breakpoint: rcx 5, 4, 3, 2, 1
        75 fc            # 1007: jne 0x1005
        f4               # 1009: hlt
    """
    out = run(rig_text("long", code, extra="breakpoints: [{at: 0x1005, hits: 5, on_hit: 2, "
                                          "expect: {regs: {rcx: 9}}}]\nexpect: {exit: hlt}\n"))
    assert [f.what for f in out.failures] == ["breakpoint[0] at 0x1005, hit 2: register rcx"]
    report = "\n".join(out.report)
    assert out.report[0] == "at breakpoint[0] at 0x1005, hit 2:"
    assert "=> 0x1005: ff c9" in report, "the code at the hit, without the planted breakpoint"
    assert re.search(r"rcx 0x0+4\b", report), "the registers at the hit (rcx = 4), not at the end (0)"
    assert "where the run ended" not in report, "no end check failed"
    both = run(rig_text("long", code, extra="breakpoints: [{at: 0x1005, on_hit: 2, expect: {regs: {rcx: 9}}}]\n"
                                           "expect: {exit: hlt, regs: {rcx: 7}}\n"))
    text = "\n".join(both.report)
    assert "at breakpoint[0] at 0x1005, hit 2:" in text and "where the run ended:" in text
    assert re.search(r"rcx 0x0+4\b", text) and re.search(r"rcx 0x0+\b", text.split("where the run ended:")[1])
