"""load_rig: the contract's example loads into the model, defaults apply, and
every semantic problem is a RigError at `path:line:col:` (never a traceback)."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import yaml

from kvmrig.errors import Mark, RigError
from kvmrig.rig.load import load_rig, load_rig_text
from kvmrig.rig.model import Rig

# The contract's example (rig-format.md), verbatim except:
# - the images exist as tiny files written by the fixture (fib.bin raw, fw.elf
#   an ELF header), since missing files are errors.
# Everything else, pl011 included (MMIO UARTs are arch-neutral), loads as x86_64.
CONTRACT = """\
kvmrig: 1                      # format version (required)
name: fib-long-mode            # default: the file's stem
description: fib(20) in 64-bit mode, checked at every loop turn
arch: x86_64                   # x86_64 | arm64 (required)
tags: [smoke, math]
timeout: 2s                    # wall clock for the whole rig; default 10s
backend: any                   # any (default) | kvm | emu: pin a rig to one backend
trace: {max: 64}               # record the first N executed addresses (single-step)

memory:                        # guest-physical map; regions must not overlap
  - {at: 0x0, size: 2M}                        # RAM (zeroed)
  - {at: "0xffff0000", size: 64K, rom: true}   # read-only: guest writes are MMIO exits

images:                        # loaded in order, after memory is zeroed
  - {file: guests/fib.bin, at: 0x1000}   # raw binary at an address
  - {file: guests/fw.elf}                # ELF: PT_LOAD segments, entry point, symbols
  - {hex: "f4", at: 0x2000}              # inline bytes

devices:                       # what answers the guest's port I/O and MMIO
  - {type: serial, port: 0x3f8}          # x86 16550-style UART: output is the console
  - {type: pl011, at: 0x09000000}        # arm64 PL011 UART: output is the console
  - {type: debugcon, port: 0xe9}         # byte written = byte printed; reads
                                         # return 0xe9, as firmware probes for it
  - {type: exit, port: 0xf4}             # a write of V ends the run: exit code V
  - {type: exit, at: 0x0a000000}         # the same on MMIO
  - {type: constant, port: 0x71, value: 0}          # reads return value, writes recorded
  - {type: constant, at: 0x10000000, size: 4K, value: 0xffffffff}   # the same on MMIO

cpu:
  mode: long        # x86_64: reset | real | protected | long.
  entry: "sym:_start"   # default: ELF entry, else the first image's address
  regs: {rsp: 0x8000, rdi: 20}           # any architectural register by its usual name

breakpoints:
  - at: "sym:loop"
    kind: hw                   # hw (debug registers) | sw (int3 / BRK); default sw
    hits: 20                   # exact count, or ">=1", "<=3"; checked at the end
    expect: {regs: {rcx: {range: [0, 20]}}}   # checked at every hit
  - at: 0x1010
    on_hit: 3                  # only on the 3rd hit
    set: {regs: {rax: 5}}      # change state at the hit (fault injection)

watchpoints:
  - at: 0x5000
    len: 4                     # bytes, any length
    access: write              # read | write | access
    hits: ">=1"
    expect: {value: 0x1234}    # the watched memory after the access

expect:                        # checked when the run ends
  exit: hlt         # hlt | exit-code | system-off | reset | shutdown | mmio | io | timeout
  regs:
    rax: 6765
    rflags: {mask: 0x1, value: 0}      # only the masked bits are compared
  memory:
    - {at: 0x5000, hex: "34120000"}
    - {at: 0x6000, u32: "0xdeadbeef"}  # u8 | u16 | u32 | u64, little-endian
  console: {contains: "PASS", not_contains: "FAIL"}   # or regex: "..."
  port_writes: {0x80: [0x01, 0x02, 0x10]}   # the values written, in order, to a
                                            # port no device claims (POST codes)
  steps: {range: [100, 200]}   # instructions executed to the exit (exact or range)
  golden: fib.golden.yaml      # or {file: ..., ignore: [rflags]}
"""

HEAD = "kvmrig: 1\narch: x86_64\n"
ARM = "kvmrig: 1\narch: arm64\n"


@pytest.fixture
def rig_dir(tmp_path: Path) -> Path:
    (tmp_path / "guests").mkdir()
    (tmp_path / "guests" / "fib.bin").write_bytes(b"\xf4")
    (tmp_path / "guests" / "fw.elf").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    return tmp_path


def write(folder: Path, text: str, name: str = "r.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def error(text: str, folder: Path | None = None) -> str:
    """The message of the RigError loading `text` raises, checked for form."""
    with pytest.raises(RigError) as info:
        if folder is None:
            load_rig_text(text, "r.yaml")
        else:
            load_rig(write(folder, text))
    e = info.value
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    message = str(e)
    assert re.match(r"^\S*r\.yaml:\d+:\d+: \S", message), message
    return message


# -- the contract example ----------------------------------------------------

def test_contract_example_loads(rig_dir: Path):
    rig = load_rig(write(rig_dir, CONTRACT, "fib.yaml"))
    src = str(rig_dir / "fib.yaml")
    assert isinstance(rig, Rig)
    assert (rig.name, rig.arch, rig.tags, rig.timeout, rig.backend, rig.trace_max) == \
        ("fib-long-mode", "x86_64", ("smoke", "math"), 2.0, "any", 64)
    assert rig.description.startswith("fib(20)")
    assert rig.mark == Mark(src, 1, 1)
    assert [(r.at, r.size, r.rom) for r in rig.memory] == [(0, 2 << 20, False), (0xFFFF0000, 64 << 10, True)]
    assert rig.memory[1].mark == Mark(src, 12, 5)

    raw, elf, inline = rig.images
    assert (raw.file, raw.at, raw.file_mark) == (rig_dir / "guests" / "fib.bin", 0x1000, Mark(src, 15, 12))
    assert (elf.file, elf.at) == (rig_dir / "guests" / "fw.elf", None)
    assert (inline.file, inline.data, inline.at) == (None, b"\xf4", 0x2000)

    assert [(d.type, d.port, d.at, d.size, d.value) for d in rig.devices] == [
        ("serial", 0x3F8, None, None, None), ("pl011", None, 0x09000000, None, None),
        ("debugcon", 0xE9, None, None, None), ("exit", 0xF4, None, None, None),
        ("exit", None, 0x0A000000, None, None), ("constant", 0x71, None, None, 0),
        ("constant", None, 0x10000000, 4096, 0xFFFFFFFF)]

    cpu = rig.cpu
    assert cpu.mode == "long" and cpu.tables_at is None
    assert (cpu.entry.symbol, cpu.entry.mark) == ("_start", Mark(src, 31, 10))
    assert [(n, v) for n, v, _ in cpu.regs] == [("rsp", 0x8000), ("rdi", 20)]

    loop, fault = rig.breakpoints
    assert (loop.at.symbol, loop.kind, loop.hits.lo, loop.hits.hi, loop.index) == ("loop", "hw", 20, 20, 0)
    assert [(c.name, c.lo, c.hi) for c in loop.expect.regs] == [("rcx", 0, 20)]
    assert (fault.at.value, fault.kind, fault.on_hit, fault.index) == (0x1010, "sw", 3, 1)
    assert [(n, v) for n, v, _ in fault.set.regs] == [("rax", 5)]

    (watch,) = rig.watchpoints
    assert (watch.at.value, watch.len, watch.access, watch.hits.lo, watch.hits.hi) == (0x5000, 4, "write", 1, None)
    assert watch.expect.value == 0x1234 and watch.expect.value_mark == Mark(src, 48, 21)

    expect = rig.expect
    assert expect.exit == "hlt" and expect.wanted_exits == ("hlt",)
    assert [(c.name, c.value, c.mask) for c in expect.regs] == [("rax", 6765, None), ("rflags", 0, 1)]
    assert [(c.at.value, c.data, c.form) for c in expect.memory] == [
        (0x5000, b"\x34\x12\x00\x00", "hex"), (0x6000, b"\xef\xbe\xad\xde", "u32")]
    assert (expect.console.contains, expect.console.not_contains) == (("PASS",), ("FAIL",))
    assert [(p, v) for p, v, _ in expect.port_writes] == [(0x80, (1, 2, 0x10))]
    assert (expect.steps.lo, expect.steps.hi) == (100, 200)
    assert expect.golden.file == rig_dir / "fib.golden.yaml" and expect.golden.ignore == ()
    assert rig.unclaimed_io == "record"


def test_contract_example_pairs_exit_code_with_hlt(rig_dir: Path):
    text = CONTRACT.replace("  exit: hlt ", "  exit_code: 0\n  exit: hlt ")
    rig = load_rig_text(text, rig_dir / "contract.yaml")
    assert rig.expect.exit == "hlt" and rig.expect.exit_code == 0
    assert rig.expect.wanted_exits == ("hlt",)


def test_arm64_rig_loads():
    text = ARM + """\
memory: [{at: 0x40000000, size: 1M}]
images: [{hex: "00 00 80 d2  c0 03 5f d6", at: 0x40000000}]
devices: [{type: pl011, at: 0x09000000}, {type: exit, at: 0x0a000000}, {type: reset, at: 0x0a001000}]
cpu: {regs: {x0: 1, sp: 0x40080000, vbar_el1: 0x40001000, w1: -1, v0: 0xffffffffffffffffffffffffffffffff}}
expect: {exit_code: 0, regs: {x0: {range: [0, 1]}}}
"""
    rig = load_rig_text(text, "r.yaml")
    assert rig.cpu.mode == "el1"
    assert dict((n, v) for n, v, _ in rig.cpu.regs)["w1"] == 0xFFFFFFFF
    assert rig.expect.wanted_exits == ("exit-code",)


# -- defaults ------------------------------------------------------------------

def test_defaults(tmp_path: Path):
    rig = load_rig(write(tmp_path, HEAD, "my-test.yaml"))
    assert rig.name == "my-test" and rig.path == tmp_path / "my-test.yaml" and rig.folder == tmp_path
    assert (rig.timeout, rig.backend, rig.trace_max, rig.unclaimed_io) == (10.0, "any", 0, "record")
    assert rig.cpu.mode == "long" and rig.cpu.entry is None and rig.cpu.regs == ()
    assert rig.memory == rig.images == rig.devices == rig.breakpoints == rig.watchpoints == ()
    assert rig.expect.wanted_exits == ("hlt", "exit-code", "system-off")
    assert load_rig_text(ARM, "a.yaml").cpu.mode == "el1"


def test_extensions():
    text = HEAD + """\
io: {unclaimed: stop}
memory: [{at: 0, size: 64K, name: ram}]
cpu: {mode: protected, tables_at: 0x9000}
devices: [{type: reset, port: 0xcf9}, {type: reset, at: 0x100000}]
"""
    rig = load_rig_text(text, "r.yaml")
    assert rig.unclaimed_io == "stop" and rig.memory[0].name == "ram" and rig.cpu.tables_at == 0x9000
    assert [(d.type, d.port, d.at) for d in rig.devices] == [("reset", 0xCF9, None), ("reset", None, 0x100000)]


def test_console_input_on_the_uarts():
    text = HEAD + """\
devices:
  - {type: serial, port: 0x3f8, input: "boot\\n"}
  - {type: pl011, at: 0x09000000, input: "\\e\\x01h\u00e9"}
  - {type: serial, port: 0x2f8, input: ""}
"""
    rig = load_rig_text(text, "r.yaml")
    assert [d.input for d in rig.devices] == [b"boot\n", b"\x1b\x01h\xc3\xa9", b""]
    rig = load_rig_text(ARM + "devices: [{type: pl011, at: 0x09000000, input: 'poweroff\\n'}]\n", "a.yaml")
    assert rig.devices[0].input == b"poweroff\\n"  # single-quoted YAML has no escapes
    assert load_rig_text(HEAD + "devices: [{type: serial, port: 0x3f8}]\n", "r.yaml").devices[0].input is None


@pytest.mark.parametrize("body, expected", [
    ("devices: [{type: debugcon, port: 0xe9, input: x}]\n",
     "r.yaml:3:40: devices[0].input: input is only for the UARTs (serial, pl011), not debugcon"),
    ("devices:\n  - {type: serial, port: 0x3f8}\n  - {type: exit, at: 0x1000, input: 'x'}\n",
     "r.yaml:5:30: devices[1].input: input is only for the UARTs (serial, pl011), not exit"),
    ("devices: [{type: constant, port: 0x71, value: 0, input: x}]\n",
     "r.yaml:3:50: devices[0].input: input is only for the UARTs (serial, pl011), not constant"),
])
def test_console_input_elsewhere_is_refused_at_its_key(body: str, expected: str):
    assert error(HEAD + body).startswith(expected)


def test_console_input_must_be_text():
    assert error(HEAD + "devices: [{type: serial, port: 0x3f8, input: 12}]\n").startswith("r.yaml:3:46: devices[0].input: expected a string, not 12")


def test_values_in_many_forms():
    text = HEAD + """\
timeout: 500ms
trace: {max: "0x10"}
memory: [{at: "0x10_0000", size: "0x1000"}]
cpu: {entry: "sym:start+0x10", regs: {eax: -1, al: 0xff, RBX: "0b1"}}
breakpoints: [{at: "sym:x-4", hits: "<=3"}]
watchpoints: [{at: 0x100, len: "2", access: read, on_hit: 1, set: {memory: [{at: 0x200, u16: -2}]}}]
expect:
  exit: exit-code
  exit_code: "0x31"
  memory: [{at: "sym:buf", u8: 255}, {at: 0, u64: 1}]
  console: {regex: ["PA+SS", "^ok$"], contains: [a, b]}
  steps: 1000
  golden: {file: g/fib.golden, ignore: [rflags, RIP]}
"""
    rig = load_rig_text(text, "dir/r.yaml")
    assert rig.timeout == 0.5 and rig.trace_max == 16
    assert rig.cpu.entry.symbol == "start" and rig.cpu.entry.offset == 16
    assert [(n, v) for n, v, _ in rig.cpu.regs] == [("eax", 0xFFFFFFFF), ("al", 0xFF), ("rbx", 1)]
    assert rig.breakpoints[0].at.offset == -4 and rig.breakpoints[0].hits.hi == 3
    assert rig.watchpoints[0].set.memory[0].data == b"\xfe\xff"
    assert rig.expect.exit_code == 0x31
    assert rig.expect.memory[0].at.symbol == "buf" and rig.expect.memory[1].data == bytes([1]) + bytes(7)
    assert rig.expect.console.regex == ("PA+SS", "^ok$") and rig.expect.console.contains == ("a", "b")
    assert rig.expect.steps.lo == rig.expect.steps.hi == 1000
    assert rig.expect.golden.file == Path("dir/g/fib.golden") and rig.expect.golden.ignore == ("rflags", "rip")


# -- semantic errors -------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    # cpu
    ("cpu: {mode: el1}\n", "r.yaml:3:13: cpu.mode: 'el1' is not a mode of x86_64 (one of reset, real, protected, long)"),
    ("cpu: {tables_at: 0x9010}\n", "r.yaml:3:18: cpu.tables_at: 0x9010 must be 4 KiB aligned"),
    # memory
    ("memory: [{at: 0, size: 0}]\n", "r.yaml:3:24: memory[0].size: a region needs a size > 0"),
    ("memory: [{at: 0x800, size: 4K}]\n", "r.yaml:3:15: memory[0].at: 0x800 is not a multiple of 4 KiB (0x1000): KVM maps whole pages"),
    ("memory: [{at: 0, size: 1000}]\n", "r.yaml:3:24: memory[0].size: 0x3e8 is not a multiple of 4 KiB"),
    ("memory:\n  - {at: 0, size: 2M, name: ram}\n  - {at: 0x100000, size: 64K}\n",
     "r.yaml:5:5: memory[1]: region 0x100000..0x10ffff overlaps memory[0] 'ram' (0x0..0x1fffff)"),
    ("memory: [{at: 0xffff_ffff_f000, size: 8K}]\n", "r.yaml:3:10: memory[0]: 0xfffffffff000..0x1000000000fff goes beyond the 48-bit"),
    # images
    ("images: [{hex: 'f4 1', at: 0}]\n", "r.yaml:3:16: images[0].hex: 'f4 1' has an odd number of hex digits"),
    # devices
    ("devices: [{type: exit, port: 0x10000}]\n", "r.yaml:3:30: devices[0].port: port 0x10000 is beyond 0xffff"),
    ("devices: [{type: pl011, port: 0x3f8}]\n", "r.yaml:3:25: devices[0].port: pl011 is an MMIO UART: give `at:`"),
    ("devices: [{type: serial, at: 0x1000}]\n", "r.yaml:3:26: devices[0].at: serial is x86 port I/O: give `port:`"),
    ("devices: [{type: debugcon, at: 0x1000}]\n", "r.yaml:3:28: devices[0].at: debugcon is x86 port I/O"),
    ("devices: [{type: exit, port: 0xf4, size: 4}]\n", "r.yaml:3:36: devices[0].size: size is only for constant devices on MMIO"),
    ("devices: [{type: exit, port: 0xf4, value: 4}]\n", "r.yaml:3:36: devices[0].value: value is only for constant devices, not exit"),
    ("devices: [{type: constant, port: 0x71, value: 0x1_0000_0000}]\n", "r.yaml:3:47: devices[0].value: value 0x100000000 does not fit in 32 bits"),
    ("devices: [{type: constant, at: 0x1000, size: 0, value: 0}]\n", "r.yaml:3:46: devices[0].size: size must be > 0"),
    ("devices:\n  - {type: exit, port: 0xf4}\n  - {type: constant, port: 0xf4, value: 0}\n",
     "r.yaml:5:28: devices[1].port: constant ports 0xf4..0xf4 overlaps devices[0] (exit, ports 0xf4..0xf4)"),
    ("devices:\n  - {type: serial, port: 0x3f8}\n  - {type: constant, port: 0x3fd, value: 0}\n",
     "r.yaml:5:28: devices[1].port: constant ports 0x3fd..0x3fd overlaps devices[0] (serial, ports 0x3f8..0x3ff)"),
    ("devices:\n  - {type: pl011, at: 0x9000000}\n  - {type: exit, at: 0x9000ff8}\n",
     "r.yaml:5:22: devices[1].at: exit MMIO 0x9000ff8..0x9000fff overlaps devices[0] (pl011, MMIO 0x9000000..0x9000fff)"),
    ("memory: [{at: 0, size: 1M}]\ndevices: [{type: exit, at: 0xffffc}]\n",
     "r.yaml:4:28: devices[0].at: exit MMIO 0xffffc..0x100003 overlaps memory[0] (0x0..0xfffff)"),
    ("devices: [{type: constant, at: 0xffff_ffff_f000, size: 8K, value: 0}]\n", "r.yaml:3:32: devices[0].at: 0xfffffffff000..0x1000000000fff goes beyond"),
    # registers
    ("cpu: {regs: {raxx: 1}}\n", "r.yaml:3:14: cpu.regs.raxx: unknown x86_64 register 'raxx' (did you mean 'rax'"),
    ("cpu: {regs: {x0: 1}}\n", "r.yaml:3:14: cpu.regs.x0: unknown x86_64 register 'x0'"),
    ("cpu: {regs: {al: 0x100}}\n", "r.yaml:3:18: cpu.regs.al: al 0x100 does not fit in 8 bits"),
    ("cpu: {regs: {cs: 0x10000}}\n", "r.yaml:3:18: cpu.regs.cs: cs 0x10000 does not fit in 16 bits"),
    ("expect: {regs: {eflag: 0}}\n", "r.yaml:3:17: expect.regs.eflag: unknown x86_64 register 'eflag' (did you mean 'eflags'"),
    ("expect: {regs: {ax: {mask: 0x10000, value: 0}}}\n", "r.yaml:3:28: expect.regs.ax.mask: mask 0x10000 does not fit in 16 bits"),
    ("expect: {regs: {ax: {range: [5, 1]}}}\n", "r.yaml:3:29: expect.regs.ax.range: range [0x5, 0x1] is empty"),
    ("expect: {regs: {al: {range: [0, 256]}}}\n", "r.yaml:3:33: expect.regs.al.range[1]: al 0x100 does not fit in 8 bits"),
    ("breakpoints: [{at: 0, expect: {regs: {rzx: 0}}}]\n", "r.yaml:3:39: breakpoints[0].expect.regs.rzx: unknown x86_64 register"),
    ("breakpoints: [{at: 0, set: {regs: {rip: 0x1_0000_0000_0000_0000}}}]\n", "r.yaml:3:41: breakpoints[0].set.regs.rip: rip 0x10000000000000000 does not fit in 64 bits"),
    ("watchpoints: [{at: 0, len: 1, expect: {regs: {foo: 0}}}]\n", "r.yaml:3:47: watchpoints[0].expect.regs.foo: unknown x86_64 register"),
    ("watchpoints: [{at: 0, len: 1, set: {regs: {bar: 0}}}]\n", "r.yaml:3:44: watchpoints[0].set.regs.bar: unknown x86_64 register"),
    ("expect: {golden: {file: g, ignore: [rflag]}}\n", "r.yaml:3:37: expect.golden.ignore[0]: unknown x86_64 register 'rflag'"),
    # expect
    ("expect: {memory: [{at: 0, u8: 256}]}\n", "r.yaml:3:31: expect.memory[0].u8: u8 0x100 does not fit in 8 bits"),
    ("expect: {memory: [{at: 0, u16: 0x1_0000}]}\n", "r.yaml:3:32: expect.memory[0].u16: u16 0x10000 does not fit in 16 bits"),
    ("expect: {memory: [{at: 0, hex: 'xyz'}]}\n", "r.yaml:3:32: expect.memory[0].hex: 'xyz' is not hex bytes"),
    ("expect: {console: {regex: 'a('}}\n", "r.yaml:3:27: expect.console.regex: 'a(' is not a valid regular expression"),
    ("expect: {console: {regex: [ok, '[z']}}\n", "r.yaml:3:32: expect.console.regex[1]: '[z' is not a valid regular expression"),
    ("expect: {port_writes: {0x10000: [1]}}\n", "r.yaml:3:24: expect.port_writes.65536: port 0x10000 is beyond 0xffff"),
    ("expect: {port_writes: {0x80: [0x1_0000_0000]}}\n", "r.yaml:3:31: expect.port_writes.128[0]: value 0x100000000 does not fit in 32 bits"),
    ("expect: {port_writes: {'0x80': [1], 128: [2]}}\n", "r.yaml:3:37: expect.port_writes.128: port 0x80 is listed twice"),
    ("expect: {steps: '<0'}\n", "r.yaml:3:17: expect.steps: '<0' can never hold"),
    ("expect: {steps: {range: [9, 1]}}\n", "r.yaml:3:17: expect.steps: range [9, 1] is empty"),
    # breakpoints, watchpoints, misc
    ("breakpoints: [{at: 0, on_hit: 0}]\n", "r.yaml:3:31: breakpoints[0].on_hit: on_hit counts from 1"),
    ("breakpoints: [{at: 'sym:a+0x', hits: 1}]\n", "r.yaml:3:20: breakpoints[0].at: 'sym:a+0x' is not an address"),
    ("watchpoints: [{at: 0, len: 0}]\n", "r.yaml:3:28: watchpoints[0].len: len must be at least 1 byte"),
    ("watchpoints: [{at: 0, len: 1, expect: {value: 0x100}}]\n", "r.yaml:3:47: watchpoints[0].expect.value: value 0x100 does not fit in 8 bits"),
    ("watchpoints: [{at: 0, len: 2, hits: -1}]\n", "r.yaml:3:37: watchpoints[0].hits: -1 is not a count"),
    ("timeout: 0\n", "r.yaml:3:10: timeout: must be more than 0 seconds"),
    ("timeout: 2h\n", "r.yaml:3:10: timeout: '2h' is not a duration"),
    ("tags: [1]\n", "r.yaml:3:8: tags[0]: expected a string, not 1"),
    ("trace: {max: -1}\n", "r.yaml:3:14: trace.max: -1 is negative"),
])
def test_semantic_errors(body: str, expected: str):
    assert error(HEAD + body).startswith(expected)


@pytest.mark.parametrize("body, expected", [
    ("cpu: {mode: long}\n", "r.yaml:3:13: cpu.mode: 'long' is not a mode of arm64 (one of el1)"),
    ("cpu: {tables_at: 0x1000}\n", "r.yaml:3:7: cpu.tables_at: tables_at is for x86_64 only"),
    ("devices: [{type: exit, port: 0xf4}]\n", "r.yaml:3:24: devices[0].port: arm64 has no port I/O"),
    ("cpu: {regs: {rax: 1}}\n", "r.yaml:3:14: cpu.regs.rax: unknown arm64 register 'rax'"),
    ("cpu: {regs: {w0: 0x1_0000_0000}}\n", "r.yaml:3:18: cpu.regs.w0: w0 0x100000000 does not fit in 32 bits"),
])
def test_arm64_semantic_errors(body: str, expected: str):
    assert error(ARM + body).startswith(expected)


def test_version_must_be_1():
    assert error("kvmrig: 2\narch: x86_64\n").startswith("r.yaml:1:9: unsupported rig format version 2")


def test_exit_must_be_in_the_contract_list():
    assert error(HEAD + "expect: {exit: triple-fault}\n").startswith(
        "r.yaml:3:16: expect.exit must be one of hlt, exit-code, system-off, reset, shutdown, mmio, io, timeout")


# -- image files -------------------------------------------------------------------

def test_image_file_missing_points_at_the_file_value(tmp_path: Path):
    message = error(HEAD + "images:\n  - {file: guests/nope.bin, at: 0}\n", tmp_path)
    assert message.startswith(f"{tmp_path / 'r.yaml'}:4:12: images[0].file: image file not found: ")
    assert str(tmp_path / "guests" / "nope.bin") in message


def test_image_file_is_relative_to_the_rig_folder(rig_dir: Path, monkeypatch):
    monkeypatch.chdir("/")
    rig = load_rig(write(rig_dir, HEAD + "images: [{file: guests/fib.bin, at: 0x1000}]\n"))
    assert rig.images[0].file == rig_dir / "guests" / "fib.bin"


def test_raw_image_needs_at(rig_dir: Path):
    message = error(HEAD + "images:\n  - {file: guests/fib.bin}\n", rig_dir)
    assert message.startswith(f"{rig_dir / 'r.yaml'}:4:12: images[0].file: guests/fib.bin is not an ELF file, "
                              "so the image needs `at:`")


def test_image_directory_is_an_error(rig_dir: Path):
    assert "is a directory" in error(HEAD + "images: [{file: guests, at: 0}]\n", rig_dir)


def test_image_needs_exactly_one_source(rig_dir: Path):
    assert "exactly one of file (a path) or hex" in error(HEAD + "images: [{file: guests/fw.elf, hex: f4}]\n", rig_dir)
    assert "inline hex bytes need at" in error(HEAD + "images: [{hex: f4}]\n")


def test_image_placement_is_not_checked_here(rig_dir: Path):
    rig = load_rig(write(rig_dir, HEAD + "images: [{hex: f4, at: 0x7000_0000}]\n"))
    assert rig.images[0].at == 0x70000000  # outside memory: the machine layer reports it


# -- the rig file itself -----------------------------------------------------------

def test_missing_rig_file(tmp_path: Path):
    with pytest.raises(RigError, match=r"nope\.yaml: rig file not found"):
        load_rig(tmp_path / "nope.yaml")


def test_not_utf8_names_line_and_column(tmp_path: Path):
    # issue 11 item 15: the bad byte's line:col, counted in characters ("é" is one)
    (tmp_path / "r.yaml").write_bytes(b"kvmrig: 1\nname: \xc3\xa9\narch: x\xff\n")
    with pytest.raises(RigError, match=r"r\.yaml:3:8: not UTF-8 text \(bad byte 0xff at offset 26\)"):
        load_rig(tmp_path / "r.yaml")


def test_a_huge_rig_file_is_refused_before_it_is_parsed(tmp_path: Path):
    # issue 11 item 19: 200k keys took 4.3 s and 257 MB; now refused on size or node count
    big = "kvmrig: 1\narch: x86_64\nx:\n" + "".join(f"  k{i}: 1\n" for i in range(200_000))
    (tmp_path / "r.yaml").write_text(big)
    with pytest.raises(RigError, match=r"r\.yaml:\d+:\d+: YAML has more than 100000 values"):
        load_rig(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("kvmrig: 1\narch: x86_64\n#" + "x" * (5 << 20) + "\n")
    with pytest.raises(RigError, match=r"r\.yaml:1:1: the rig file is larger than 4 MiB"):
        load_rig(tmp_path / "r.yaml")


def test_empty_rig():
    assert error("# nothing\n").startswith("r.yaml:1:1: the rig file is empty")


def test_yaml_errors_come_through():
    assert error("kvmrig: 1\narch: [x86_64\n").startswith("r.yaml:3:1: YAML syntax: ")
    assert error("kvmrig: 1\narch: x86_64\narch: arm64\n").startswith("r.yaml:3:1: duplicate key 'arch'")


# -- no traceback ever escapes ---------------------------------------------------------

WEIRD = [None, True, -1, 0, 1.5, 2**70, "", "x", "sym:", "0x10", [], [1], {}, {"a": 1}, {"range": [1, 2]}]


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def test_any_value_anywhere_is_a_rig_or_a_rig_error(rig_dir: Path):
    base = yaml.safe_load(CONTRACT)
    seen = 0
    # Three weird values per node, rotating, so each value visits every kind
    # of node while the test stays around a second.
    for n, path in enumerate(_paths(base)):
        if not path:
            continue
        for weird in (WEIRD * 2)[n % len(WEIRD):][:3]:
            data = copy.deepcopy(base)
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = weird
            text = yaml.safe_dump(data)
            try:
                load_rig_text(text, rig_dir / "r.yaml")
            except RigError as e:
                assert re.match(r"^\S+:\d+:\d+: ", str(e)), str(e)
            seen += 1
    assert seen > 300


@pytest.mark.parametrize("timeout", ["99999999", "1.0e+30", '"99999999999999999s"'])
def test_a_huge_timeout_is_a_rig_error_at_its_line(timeout):
    # issue 11 item 2: validate passed it, then the run died (OverflowError, no JUnit)
    assert error(f"kvmrig: 1\narch: x86_64\ntimeout: {timeout}\n").startswith("r.yaml:3:10: timeout: ")


# -- every error of a file at once ------------------------------------------------

def test_every_schema_error_of_a_file_is_reported_in_file_order():
    text = ("kvmrig: 1\narch: x86_64\nmemry: []\n"
            "memory: [{at: 0, size: 64K}]\n"
            "cpu: {mode: rea}\n"
            "expect: {exitt: hlt}\n")
    with pytest.raises(RigError) as caught:
        load_rig_text(text, "rigs/x86/exit-code.yaml")
    e = caught.value
    lines = str(e).splitlines()
    assert len(lines) == 3, lines
    assert [line.split(": ", 1)[0] for line in lines] == [
        "rigs/x86/exit-code.yaml:3:1", "rigs/x86/exit-code.yaml:5:13", "rigs/x86/exit-code.yaml:6:10"]
    assert "memry" in lines[0] and "rea" in lines[1] and "exitt" in lines[2]
    assert e.mark.line == 3 and len(e.more) == 2


def test_every_value_error_of_a_schema_valid_file_is_reported():
    text = ("kvmrig: 1\narch: x86_64\n"
            "memory: [{at: 0x800, size: 64K}]\n"           # not page aligned
            "cpu: {mode: long, regs: {rxx: 1}}\n"          # no such register
            "expect: {regs: {ryy: 2}}\n")                  # nor this one
    with pytest.raises(RigError) as caught:
        load_rig_text(text, "a/r.yaml")
    lines = str(caught.value).splitlines()
    assert [line.split(":")[1] for line in lines] == ["3", "4", "5"], lines
    assert "multiple of 4 KiB" in lines[0] and "rxx" in lines[1] and "ryy" in lines[2]


# -- expect.executed / not_executed (kvmrig.coverage) -------------------------

COVERAGE_RIG = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
images: [{hex: "f4", at: 0x1000}]
expect:
  executed: ["sym:handler", 0x1000]
  not_executed: ["sym:panic+4"]
"""


def test_executed_and_not_executed_are_addresses():
    rig = load_rig_text(COVERAGE_RIG, "r.yaml")
    assert [str(a) for a in rig.expect.executed] == ["sym:handler", "0x1000"]
    assert [str(a) for a in rig.expect.not_executed] == ["sym:panic+0x4"]
    assert (rig.expect.executed[0].mark.line, rig.expect.not_executed[0].mark.line) == (6, 7)


def test_executed_takes_addresses_only():
    message = error(COVERAGE_RIG.replace('"sym:handler"', '"handler"'))
    assert "r.yaml:6:" in message and "executed" in message


# -- the same text in many files (checked once per process) -------------------

SAME = """kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
images: [{hex: "f4", at: 0x1000}]
breakpoints: [{at: 0x1000, expect: {regs: {ax: 1}}}]
"""


def test_the_same_text_in_two_files_gives_each_its_own_names_and_marks():
    from kvmrig.rig import load as load_mod
    a = load_rig_text(SAME, "/one/a.yaml")
    assert SAME in load_mod._checked, "checked once, kept for the next file"
    b = load_rig_text(SAME, "/two/b.yaml")
    assert (a.name, b.name) == ("a", "b")
    assert a.breakpoints[0].mark == Mark("/one/a.yaml", 5, 15) and b.breakpoints[0].mark == Mark("/two/b.yaml", 5, 15)
    assert a.memory[0].mark.path == "/one/a.yaml" and b.memory[0].mark.path == "/two/b.yaml"
    assert b == load_rig_text(SAME, "/two/b.yaml"), "a cached load builds the same model"


def test_a_cached_text_gives_fresh_data_to_each_file(monkeypatch):
    from kvmrig.rig import load as load_mod
    load_rig_text(SAME, "/one/a.yaml")
    seen = []
    real = load_mod._Builder.__init__

    def spy(self, path, data, marks):
        seen.append(data)
        real(self, path, data, marks)

    monkeypatch.setattr(load_mod._Builder, "__init__", spy)
    load_rig_text(SAME, "/one/b.yaml")
    load_rig_text(SAME, "/one/c.yaml")
    assert seen[0] == seen[1] and seen[0] is not seen[1] and seen[0]["memory"] is not seen[1]["memory"]


def test_a_bad_text_fails_every_time_it_is_loaded():
    bad = SAME.replace("x86_64", "z80")
    for path in ("/one/a.yaml", "/two/b.yaml"):
        with pytest.raises(RigError) as e:
            load_rig_text(bad, path)
        assert str(e.value).startswith(f"{path}:2:")
    broken = SAME.replace("size: 64K", "size: 64Q")
    for path in ("/one/a.yaml", "/two/b.yaml"):
        with pytest.raises(RigError, match="is not a size"):
            load_rig_text(broken, path)


def test_a_fifo_rig_file_is_read_whole_in_pieces_and_to_an_empty_end(tmp_path):
    # `kvmrig run <(gen)`: FIFOs are read by polling (a Ctrl-C must never be
    # lost in a blocking read; tests/test_cli_signals.py sends it there).
    import threading
    import time

    from kvmrig.rig.load import read_rig_bytes

    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)

    def write(pieces):
        with open(fifo, "wb", buffering=0) as f:
            for piece in pieces:
                f.write(piece)
                time.sleep(0.05)

    for pieces in ([b"kvmrig: 1\n", b"name: x\n"], []):
        t = threading.Thread(target=write, args=(pieces,))
        t.start()
        assert read_rig_bytes(fifo) == b"".join(pieces)
        t.join()
