"""Checking expectations: at every breakpoint/watchpoint hit and at the end.

Each check produces Failure records with expected and actual side by side
(numbers in hex and decimal), never stopping at the first one: a firmware
engineer wants every difference of a run at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kvmrig.arch import registers
from kvmrig.machine.outcome import Failure, Outcome, num
from kvmrig.rig.model import Expect, MemCheck, RegCheck, StateCheck

ReadMem = Callable[[int, int], bytes]   # (addr, length) -> bytes; raises LookupError outside memory
Resolve = Callable[[object], int]       # model.Address -> int


def reg_value(arch: str, regs: dict[str, int], name: str) -> int | None:
    """A user-named register's value from a canonical register dict."""
    field = registers.lookup(arch, name)
    if field is None or field.reg not in regs:
        return None
    return registers.extract(regs[field.reg], field.shift, field.width)


def _expected_reg(check: RegCheck) -> str:
    if check.lo is not None or check.hi is not None:
        lo = num(check.lo) if check.lo is not None else "-inf"
        hi = num(check.hi) if check.hi is not None else "+inf"
        return f"in [{lo}, {hi}]"
    if check.mask is not None:
        return f"{num((check.value or 0) & check.mask)} under mask {check.mask:#x}"
    return num(check.value or 0)


def check_regs(arch: str, where: str, checks: tuple[RegCheck, ...], regs: dict[str, int]) -> list[Failure]:
    failures = []
    for check in checks:
        actual = reg_value(arch, regs, check.name)
        if actual is None:
            failures.append(Failure(f"{where}register {check.name}", _expected_reg(check),
                                    "not available from this backend", check.mark))
        elif not check.matches(actual):
            shown = num(actual)
            if check.mask is not None:
                shown = f"{num(actual & check.mask)} under mask (full value {actual:#x})"
            failures.append(Failure(f"{where}register {check.name}", _expected_reg(check), shown, check.mark))
    return failures


def _hex(data: bytes) -> str:
    return data.hex(" ") if len(data) <= 32 else data[:32].hex(" ") + f" ... ({len(data)} bytes)"


def _mem_value(check: MemCheck, data: bytes) -> str:
    if check.form == "hex":
        return _hex(data)
    return num(int.from_bytes(data, "little"))


def check_memory(where: str, checks: tuple[MemCheck, ...], read: ReadMem, resolve: Resolve) -> list[Failure]:
    failures = []
    for check in checks:
        addr = resolve(check.at)
        label = f"{where}memory at {check.at}" + (f" ({addr:#x})" if check.at.symbol else "")
        try:
            actual = read(addr, len(check.data))
        except LookupError:
            failures.append(Failure(label, _mem_value(check, check.data), "not inside guest memory", check.mark))
            continue
        if actual != check.data:
            failures.append(Failure(label, _mem_value(check, check.data), _mem_value(check, actual), check.mark))
    return failures


def check_state(arch: str, where: str, check: StateCheck, regs: dict[str, int],
                read: ReadMem, resolve: Resolve, watched: tuple[int, int] | None = None) -> list[Failure]:
    """A per-hit `expect`: registers, memory, and for watchpoints the watched value."""
    failures = check_regs(arch, where, check.regs, regs)
    failures += check_memory(where, check.memory, read, resolve)
    if check.value is not None and watched is not None:
        addr, length = watched
        try:
            actual = int.from_bytes(read(addr, length), "little")
        except LookupError:
            failures.append(Failure(f"{where}watched value", num(check.value), "not inside guest memory",
                                    check.value_mark))
        else:
            if actual != check.value:
                failures.append(Failure(f"{where}watched value at {addr:#x}", num(check.value), num(actual),
                                        check.value_mark))
    return failures


def _console_text(outcome: Outcome) -> str:
    return outcome.console.decode("utf-8", errors="replace")


def _excerpt(text: str) -> str:
    text = text if len(text) <= 200 else "..." + text[-200:]
    return repr(text)


def check_end(arch: str, expect: Expect, outcome: Outcome, read: ReadMem, resolve: Resolve) -> list[Failure]:
    """Everything `expect:` asks about the end of the run."""
    failures: list[Failure] = []
    wanted = expect.wanted_exits
    if outcome.exit not in wanted:
        actual = outcome.exit + (f" ({outcome.detail})" if outcome.detail else "")
        failures.append(Failure("exit", " or ".join(wanted), actual, expect.exit_mark))
    # exit_code speaks about exit devices: with `exit: hlt` beside it (as the
    # contract's example has), it is checked only if the guest used one.
    code_wanted = expect.exit_code is not None and (outcome.exit == "exit-code" or "exit-code" in wanted)
    if code_wanted and outcome.exit_code != expect.exit_code:
        actual = num(outcome.exit_code) if outcome.exit_code is not None else f"no exit code (exit {outcome.exit})"
        failures.append(Failure("exit_code", num(expect.exit_code), actual, expect.exit_code_mark))
    failures += check_regs(arch, "", expect.regs, outcome.regs)
    failures += check_memory("", expect.memory, read, resolve)
    if expect.console is not None:
        console_failures = check_console(expect.console, _console_text(outcome))
        failures += console_failures
        hint = unclaimed_console_hint(outcome) if console_failures else None
        if hint:
            outcome.notes.append(hint)
    for port, values, mark in expect.port_writes:
        actual = [v for p, _size, v in outcome.port_writes if p == port]
        if actual != list(values) or outcome.records_cut:
            more = f" and {outcome.records_cut} more write(s) not recorded" if outcome.records_cut else ""
            failures.append(Failure(f"port_writes to {port:#x}", _values(values), _values(actual) + more, mark))
    if expect.steps is not None:
        if outcome.steps is None:
            failures.append(Failure("steps", expect.steps.text, "not counted", expect.steps.mark))
        elif not expect.steps.matches(outcome.steps):
            failures.append(Failure("steps", expect.steps.text, str(outcome.steps), expect.steps.mark))
    return failures


# Ports a guest commonly prints to: the PC's four UARTs and QEMU/Bochs' debug console.
CONSOLE_PORTS = {0x3F8: "serial", 0x2F8: "serial", 0x3E8: "serial", 0x2E8: "serial", 0xE9: "debugcon"}


def unclaimed_console_hint(outcome: Outcome) -> str | None:
    """Why the console may be empty: the guest wrote to ports no device claims."""
    if not outcome.port_writes:
        return None
    by_port: dict[int, bytearray] = {}
    for port, size, value in outcome.port_writes:
        by_port.setdefault(port, bytearray()).extend(value.to_bytes(size, "little"))
    ports = sorted(by_port, key=lambda p: (p not in CONSOLE_PORTS, p))
    parts = []
    for port in ports[:4]:
        text = bytes(by_port[port][:40]).decode("latin-1")
        parts.append(f"{port:#x} ({len(by_port[port])} byte(s): {text!r})")
    first = ports[0]
    fix = (f"; a console there needs a device: devices: [{{type: {CONSOLE_PORTS[first]}, port: {first:#x}}}]"
           if first in CONSOLE_PORTS else "")
    more = f" and {len(ports) - 4} more port(s)" if len(ports) > 4 else ""
    return f"the guest wrote to port(s) no device claims: {', '.join(parts)}{more}{fix}"


def check_console(check, text: str) -> list[Failure]:
    failures = []
    for want in check.contains:
        if want not in text:
            failures.append(Failure("console", f"to contain {want!r}", _excerpt(text), check.mark))
    for bad in check.not_contains:
        if bad in text:
            failures.append(Failure("console", f"not to contain {bad!r}", _excerpt(text), check.mark))
    for pattern in check.regex:
        if not re.search(pattern, text, re.MULTILINE):
            failures.append(Failure("console", f"to match /{pattern}/", _excerpt(text), check.mark))
    return failures


def _values(values) -> str:
    """A list of written values for a message: the first and last few, with a count."""
    shown = [f"{v:#x}" for v in values] if len(values) <= 24 else (
        [f"{v:#x}" for v in values[:16]] + [f"... {len(values) - 20} more ..."] + [f"{v:#x}" for v in values[-4:]])
    return "[" + ", ".join(shown) + "]"
