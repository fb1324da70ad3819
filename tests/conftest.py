"""Shared test machinery: the `kvm` marker, rig files in tmp_path, and a count
of the KVM tests that really ran.

- `@pytest.mark.kvm` tests create real VMs. They are skipped only where
  /dev/kvm is absent, with the reason "no /dev/kvm on this machine" (the same
  reason tests/backends/kvm/test_system.py gives with its own skipif).
- At the end of the session one line says `KVM tests: N ran, M skipped`, so a
  CI log shows whether the KVM tests ran at all.
- With KVMRIG_REQUIRE_KVM=1 (CI sets it) on a machine that has /dev/kvm, a
  skipped kvm test fails the session: a KVM lane that silently skips is no
  KVM lane. Guest code for the *other* architecture (`@pytest.mark.arch_only`)
  is not collected at all on this host: it is neither run nor skipped here,
  and its counterpart runs on real arm64 KVM in the nested VM.
- `@pytest.mark.arm64vm` tests (real arm64 KVM inside the nested VM lane) are
  counted too, shown apart on the summary line, and any skip of theirs fails
  the session under KVMRIG_REQUIRE_KVM=1, whatever its reason; so are
  `@pytest.mark.x86vm` tests (the native x86 debug path, on the KVM inside the
  x86_64 VM lane).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from kvmrig.arch import host_arch

# Tests that start `python3 -m kvmrig` must run this checkout's code, not
# whichever kvmrig happens to be installed (an editable install may point at
# another checkout, or at one that is gone).
CHECKOUT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH")) if p)

KVM_DEVICE = "/dev/kvm"
NO_KVM_REASON = "no /dev/kvm on this machine"
REQUIRE_ENV = "KVMRIG_REQUIRE_KVM"

_HOST = host_arch()


def kvm_present() -> bool:
    return os.path.exists(KVM_DEVICE)


# ---------------------------------------------------------------------------
# The kvm marker

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Guest code for the other arch cannot run on this host's KVM: such tests
    # are not collected here (not skipped); their arm64 counterparts run on real
    # arm64 KVM in the nested VM (tests/backends/kvm/test_arm64.py, tests/invm).
    other = [item for item in items
             if (m := item.get_closest_marker("arch_only")) is not None and m.args[0] != _HOST]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item not in other]
    if kvm_present():
        return
    skip = pytest.mark.skip(reason=NO_KVM_REASON)
    for item in items:
        if item.get_closest_marker("kvm") is not None:
            item.add_marker(skip)


class KvmTally:
    """A plugin: the outcome of every kvm-marked test, the summary line, and
    the KVMRIG_REQUIRE_KVM verdict."""

    def __init__(self) -> None:
        self.ran: set[str] = set()
        self.skipped: dict[str, str] = {}   # node id -> skip reason
        self.lane: set[str] = set()          # arm64vm tests: real arm64 KVM in the nested VM
        self.x86_lane: set[str] = set()      # x86vm tests: the x86 KVM in the x86_64 VM lane
        self.require_failure = ""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "kvm" not in report.keywords and "arm64vm" not in report.keywords and "x86vm" not in report.keywords:
            return
        if "arm64vm" in report.keywords:
            self.lane.add(report.nodeid)
        if "x86vm" in report.keywords:
            self.x86_lane.add(report.nodeid)
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped[report.nodeid] = _skip_reason(report)
            self.ran.discard(report.nodeid)
        elif (report.when == "call" or report.failed) and report.nodeid not in self.skipped:
            self.ran.add(report.nodeid)   # passed, failed, errored or xfailed: it was attempted on KVM

    def blocking_skips(self) -> dict[str, str]:
        """Every skipped KVM test: each means KVM did not run where it could."""
        return dict(self.skipped)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if os.environ.get(REQUIRE_ENV) != "1" or not kvm_present():
            return
        blocking = self.blocking_skips()
        if blocking:
            self.require_failure = (
                f"{REQUIRE_ENV}=1 and {KVM_DEVICE} exists, but {len(blocking)} KVM test(s) were skipped, "
                "so the session fails:\n" + "\n".join(f"  {node}: {why}" for node, why in sorted(blocking.items())))
            if session.exitstatus == 0:
                session.exitstatus = 1

    def pytest_terminal_summary(self, terminalreporter) -> None:
        arm_ran = len(self.ran & self.lane)
        terminalreporter.write_line(f"KVM tests: {len(self.ran)} ran, {len(self.skipped)} skipped "
                                    f"(of which real arm64 KVM in the nested VM: {arm_ran} ran, "
                                    f"{len(set(self.skipped) & self.lane)} skipped; "
                                    f"in the x86_64 VM lane: {len(self.ran & self.x86_lane)} ran, "
                                    f"{len(set(self.skipped) & self.x86_lane)} skipped)")
        if self.require_failure:
            terminalreporter.write_line(self.require_failure, red=True, bold=True)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "arch_only(arch): guest code for one host arch; not collected on the other")
    config.pluginmanager.register(KvmTally(), "kvmrig-kvm-tally")


# ---------------------------------------------------------------------------
# Rig files

@pytest.fixture
def make_rig(tmp_path: Path):
    """make_rig(text, name="rig.yaml", guests={"guests/a.bin": "eb fe"}) -> Path

    Writes the rig YAML (dedented) and each guest, given as hex bytes (spaces
    and newlines allowed), under tmp_path; returns the rig's path.
    """

    def make(text: str, name: str = "rig.yaml", guests: dict[str, str | bytes] | None = None) -> Path:
        for rel, data in (guests or {}).items():
            target = tmp_path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data if isinstance(data, bytes) else bytes.fromhex("".join(data.split())))
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return make


# ---------------------------------------------------------------------------
# Helpers several test modules share (import them: from tests.conftest import ...)

def hexof(code: str) -> str:
    """The hex bytes of a commented listing ("b0 2a  # mov al, 42" lines)."""
    return " ".join(line.split("#")[0].strip() for line in code.strip().splitlines()).strip()


def assert_rig_passed(result) -> None:
    """A RigResult passed; else its failures (or its error) are the message."""
    from kvmrig.result import PASSED
    assert result.status == PASSED, "\n".join(map(str, result.outcome.failures)) if result.outcome else result.message


def kvmrig_cli(*args: str, cwd: Path, timeout: float = 180):
    """`kvmrig ARGS` as a user runs it (a subprocess: the terminal writes to a real stdout)."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "kvmrig", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def emu_unavailable() -> str | None:
    """Why the emulator backend cannot run here (unicorn missing), or None."""
    from kvmrig.backends import emu
    return emu.unavailable()
