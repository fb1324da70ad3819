"""pytest plugin: `pytest rigs/` runs every rig file as one test.

Registered through the `pytest11` entry point, so it is active wherever kvmrig
is installed (`-p no:kvmrig` turns it off). Built like pytest's own
non-Python-test example: a File node per rig file that yields one Item named
by the rig's name, an Item whose `runtest` raises a kvmrig exception, and a
`repr_failure` that prints only what `kvmrig run` would print for that rig.

- Which YAML files: those whose first key is `kvmrig:` (collect.is_rig_file),
  plus any YAML file named on the command line. By default (ini
  `kvmrig_collect = args`) only below paths *given on the command line*: a
  bare `pytest` that falls back on `testpaths` never collects rigs, so a
  project's Python tests and its rigs stay apart. `kvmrig_collect = always`
  collects rigs wherever pytest looks (a project whose testpaths name its
  rig folders); `never` turns collection off.
- A rig file error (YAML, schema, images, symbols: everything `kvmrig
  validate` checks) is a collection error reading `path:line:col: message`.
  Like a broken test module it stops the session unless
  `--continue-on-collection-errors` is given.
- A failed rig shows the failed checks (expected vs actual), where the guest
  stopped and the notes, without a traceback. For `--junitxml` the failure's
  `message` is one line naming every failed check and its text the whole
  diagnosis, the same as `kvmrig run --junit` writes; the console is a report
  section and the testcase's <system-out>; the backend that ran each rig is
  a suite property `backend:CLASSNAME::NAME` (junit-10.xsd allows properties
  on the suite only).
- `--kvmrig-update-golden` and `--kvmrig-cross-check` do what `kvmrig run
  --update-golden` and `--cross-check` do.
- A rig that cannot run here (no /dev/kvm, another arch) is skipped with
  the reason. Tags are markers (`-m smoke`), registered as they are seen so
  `--strict-markers` accepts them; every rig also has the `kvmrig` marker.
- Rigs run in-process on the main thread (KVM timeouts use SIGALRM), as
  under plain pytest and pytest-xdist workers (`-n 2`); on any other thread
  a rig runs in a forked worker process instead.
"""

from __future__ import annotations

import functools
import os
import threading
import traceback
from pathlib import Path

from typing import TYPE_CHECKING

import pytest

# kvmrig itself is imported only once a YAML file is seen: the plugin loads in
# every pytest session where kvmrig is installed, and should cost them nothing.
if TYPE_CHECKING:
    from kvmrig.errors import RigError
    from kvmrig.rig.model import Rig
    from kvmrig.result import RigResult

SUFFIXES = (".yaml", ".yml")
COLLECT_MODES = ("args", "always", "never")
_ROOTS_KEY = "kvmrig_roots"   # workerinput key: the controller's decision, for xdist workers
_roots = pytest.StashKey["list[Path] | None"]()   # None: everywhere; []: nowhere


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmrig", "kvmrig rig files")
    group.addoption("--kvmrig-backend", default="auto", choices=("auto", "kvm", "emu"),
                    help="backend for rigs that do not pin one (default: auto)")
    group.addoption("--kvmrig-cross-check", action="store_true",
                    help="run each rig on KVM and on the emulator and fail it where they disagree "
                         "(kvmrig run --cross-check)")
    group.addoption("--kvmrig-update-golden", action="store_true",
                    help="write or refresh the golden snapshots of rigs with expect.golden instead of "
                         "comparing with them (kvmrig run --update-golden)")
    parser.addini("kvmrig_collect", "where rig files are collected: args (below paths given on the "
                  "command line, the default) | always | never", default="args")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvmrig: a kvmrig rig file run as a test")
    config.stash[_roots] = _collect_roots(config)
    if getattr(config.option, "xmlpath", None) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(JunitExtras(config), "kvmrig-junit")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # pytest-xdist: workers see the args, not where they came from
    roots = node.config.stash.get(_roots, None)
    node.workerinput[_ROOTS_KEY] = None if roots is None else [str(p) for p in roots]


def _collect_roots(config: pytest.Config) -> list[Path] | None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and _ROOTS_KEY in workerinput:
        given = workerinput[_ROOTS_KEY]
        return None if given is None else [Path(p) for p in given]
    mode = str(config.getini("kvmrig_collect") or "args").strip()
    if mode not in COLLECT_MODES:
        raise pytest.UsageError(f"kvmrig_collect = {mode!r}: expected one of {', '.join(COLLECT_MODES)}")
    if mode == "always":
        return None
    args_source = getattr(config, "args_source", None)   # pytest >= 7.2
    if mode == "never" or (args_source is not None and args_source != pytest.Config.ArgsSource.ARGS):
        return []
    roots = []
    for arg in config.args:
        path = Path(arg.split("::", 1)[0])
        if not path.is_absolute():
            path = config.invocation_params.dir / path
        roots.append(path.resolve())
    return roots


def _wanted(config: pytest.Config, path: Path) -> bool:
    roots = config.stash.get(_roots, [])
    if roots == []:
        return False
    from kvmrig.collect import is_rig_file

    if roots is None:
        return is_rig_file(path)
    resolved = path.resolve()
    if resolved in roots:
        return True   # named on the command line: a rig, whatever its first key
    return any(root in resolved.parents for root in roots) and is_rig_file(path)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in SUFFIXES or file_path.name.endswith(".golden" + file_path.suffix):
        return None
    if not _wanted(parent.config, file_path):
        return None
    return RigFile.from_parent(parent, path=file_path)


# Nodes ----------------------------------------------------------------------

class RigFile(pytest.File):
    """One rig file: loaded and checked here, so its errors are collection errors."""

    def collect(self):
        from kvmrig.errors import KvmrigError, RigError
        from kvmrig.rig.load import load_rig

        try:
            rig = load_rig(_as_typed(self.path, self.config.invocation_params.dir))
            _check(rig)
        except RigError as e:
            raise self.CollectError(_error_text(e, self.config.invocation_params.dir)) from None
        except KvmrigError as e:
            raise self.CollectError(f"{self.path}: {e}") from None
        except Exception:  # a kvmrig bug: reported against the file, never swallowed
            raise self.CollectError(f"{self.path}: internal error in kvmrig while loading the rig:\n"
                                    f"{traceback.format_exc()}") from None
        item = RigItem.from_parent(self, name=rig.name, rig=rig)
        item.add_marker("kvmrig")
        for tag in rig.tags:
            _register_marker(self.config, tag)
            item.add_marker(tag)
        yield item


def _as_typed(path: Path, base: Path) -> Path:
    """`path` relative to where pytest was started when below it (as a user types
    it, and as `kvmrig run` reports it), else absolute."""
    try:
        return path.relative_to(base)
    except ValueError:
        return path


def _check(rig: Rig) -> None:
    """What `kvmrig validate` checks past the file itself (images, symbols, debug registers)."""
    from kvmrig.machine.plan import prepare

    prepare(rig)


def _error_text(error: RigError, base: Path) -> str:
    """Every error of the file, each as `path:line:col: message`, the path relative to where pytest was started."""
    return "\n".join(_one_error(e, base) for e in (error, *error.more))


def _one_error(error: RigError, base: Path) -> str:
    where = error.mark.path if error.mark else error.path
    if not where:
        return error.message
    try:
        where = os.path.relpath(where, base)
    except ValueError:
        pass
    if error.mark:
        return f"{where}:{error.mark.line}:{error.mark.col}: {error.message}"
    return f"{where}: {error.message}"


def _register_marker(config: pytest.Config, tag: str) -> None:
    known = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    if tag not in known:
        config.addinivalue_line("markers", f"{tag}: kvmrig rig tag")


class RigFailed(Exception):
    """A rig failed its checks or could not be run (carries the RigResult)."""

    def __init__(self, result: RigResult):
        super().__init__(result.name)
        self.result = result


class RigItem(pytest.Item):
    """One rig, run by runner.run_rig as `kvmrig run` runs it."""

    def __init__(self, *, rig: Rig, **kw):
        super().__init__(**kw)
        self.rig = rig
        self.result: RigResult | None = None

    def runtest(self) -> None:
        from kvmrig.crosscheck import cross_check
        from kvmrig.result import ERROR, FAILED, SKIPPED, RigResult
        from kvmrig.runner import run_rig, run_rigs

        backend = self.config.getoption("kvmrig_backend", "auto") or "auto"
        golden = bool(self.config.getoption("kvmrig_update_golden", False))
        if self.config.getoption("kvmrig_cross_check", False):
            if backend != "auto":
                raise pytest.UsageError("--kvmrig-cross-check runs both backends: it cannot be combined "
                                        "with --kvmrig-backend")
            executor = functools.partial(cross_check, update_golden=golden)
        else:
            executor = functools.partial(run_rig, backend=backend, update_golden=golden)
        if threading.current_thread() is threading.main_thread():
            result = executor(self.rig)
        else:  # SIGALRM is main-thread only: a forked worker's only thread is its main thread
            results, _ = run_rigs([self.rig], jobs=1, executor=executor)
            result = results[0] or RigResult(str(self.rig.path), self.rig.name, ERROR,
                                             message=f"{self.rig.path}: the rig was not run")
        self.result = result
        self._record(result)
        if result.status == SKIPPED:
            pytest.skip(result.message or "skipped")
        if result.status in (FAILED, ERROR):
            raise RigFailed(result)

    def _record(self, result: RigResult) -> None:
        out = result.outcome
        if out is not None and out.console:
            self.add_report_section("call", CONSOLE, out.console.decode("utf-8", errors="replace"))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, RigFailed):
            return _failure_repr(excinfo.value.result, str(self.path))
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, 0, f"rig {self.name}"


# Reports ----------------------------------------------------------------------

CONSOLE = "console"   # the report section: "Captured console call"


def _failure_repr(result: RigResult, path: str):
    """The failure as pytest's own exception report: its one-line `reprcrash`
    message becomes the JUnit failure's `message` (and the -r summary line),
    its text the failure's body. Built from pytest's report classes so that
    pytest-xdist carries it from the workers unchanged."""
    from kvmrig.report.terminal import failure_message, failure_text
    from kvmrig.result import FAILED

    if result.status == FAILED:
        message, text = failure_message(result), failure_text(result)
    else:
        text = result.message.strip() or result.status
        message = text.splitlines()[0]
    try:
        from _pytest._code.code import ReprEntryNative, ReprExceptionInfo, ReprFileLocation, ReprTraceback
    except ImportError:   # pytest moved its report classes: the text alone still says everything
        return text
    lines = [line + "\n" for line in text.splitlines()]
    return ReprExceptionInfo(reprtraceback=ReprTraceback([ReprEntryNative(lines)], None, "native"),
                             reprcrash=ReprFileLocation(path, 0, message))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Carry the rig's backend on its report (pytest-xdist sends report
    attributes from the workers to the controller, which writes --junitxml)."""
    outcome = yield
    if call.when == "call" and isinstance(item, RigItem) and item.result is not None and item.result.backend:
        outcome.get_result().kvmrig_backend = item.result.backend


class JunitExtras:
    """Registered where --junitxml is written: the console of a rig into its
    testcase's <system-out> (pytest itself writes only captured stdout there,
    and only with junit_logging set), the backend as a suite property."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        try:
            from _pytest.junitxml import bin_xml_escape, mangle_test_address, xml_key
        except ImportError:   # pytest moved its JUnit writer: the report lacks only these extras
            return
        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        backend = getattr(report, "kvmrig_backend", None)
        if backend:   # named as `kvmrig run` names it, with the classname pytest gives the testcase
            names = mangle_test_address(report.nodeid)
            classname = ".".join(([xml.prefix] if xml.prefix else []) + names[:-1])
            xml.add_global_property(f"backend:{classname}::{names[-1]}", str(backend))
        console = next((text for title, text in report.sections if title == f"Captured {CONSOLE} call"), None)
        if console:
            import xml.etree.ElementTree as ET
            out = ET.Element("system-out")
            out.text = bin_xml_escape(console)
            xml.node_reporter(report).append(out)
