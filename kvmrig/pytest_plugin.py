"""pytest plugin: `pytest rigs/` runs every rig file as one test.

Registered through the `pytest11` entry point, so it is active wherever kvmrig
is installed (`-p no:kvmrig` turns it off). Built like pytest's own
non-Python-test example: a File node per rig file that yields one Item named
by the rig's name, an Item whose `runtest` raises a kvmrig exception, and a
`repr_failure` that prints only what `kvmrig run` would print for that rig.

- Which YAML files: those whose first key is `kvmrig:` (runner.is_rig_file),
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
  stopped and the notes, without a traceback; the console is a report
  section and, for `--junitxml`, the `console` property of the testcase.
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
    parser.addini("kvmrig_collect", "where rig files are collected: args (below paths given on the "
                  "command line, the default) | always | never", default="args")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvmrig: a kvmrig rig file run as a test")
    config.stash[_roots] = _collect_roots(config)


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
            rig = load_rig(self.path)
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


def _check(rig: Rig) -> None:
    """What `kvmrig validate` checks past the file itself (images, symbols, debug registers)."""
    from kvmrig.machine.plan import prepare

    prepare(rig)


def _error_text(error: RigError, base: Path) -> str:
    """The error as `path:line:col: message`, the path relative to where pytest was started."""
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
        from kvmrig.result import ERROR, FAILED, SKIPPED, RigResult
        from kvmrig.runner import run_rig, run_rigs

        backend = self.config.getoption("kvmrig_backend", "auto") or "auto"
        if threading.current_thread() is threading.main_thread():
            result = run_rig(self.rig, backend)
        else:  # SIGALRM is main-thread only: a forked worker's only thread is its main thread
            results, _ = run_rigs([self.rig], jobs=1, executor=functools.partial(run_rig, backend=backend))
            result = results[0] or RigResult(str(self.rig.path), self.rig.name, ERROR,
                                             message=f"{self.rig.path}: the rig was not run")
        self.result = result
        self._record(result)
        if result.status == SKIPPED:
            pytest.skip(result.message or "skipped")
        if result.status in (FAILED, ERROR):
            raise RigFailed(result)

    def _record(self, result: RigResult) -> None:
        if result.backend:
            self.user_properties.append(("backend", result.backend))
        out = result.outcome
        if out is None:
            return
        self.user_properties.append(("exit", out.exit if out.exit_code is None else f"{out.exit} {out.exit_code}"))
        if out.console:
            console = out.console.decode("utf-8", errors="replace")
            self.user_properties.append(("console", console))
            self.add_report_section("call", "console", console)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, RigFailed):
            from kvmrig.report.terminal import failure_lines
            from kvmrig.result import FAILED

            result = excinfo.value.result
            lines = failure_lines(result) if result.status == FAILED else result.message.splitlines()
            return "\n".join(lines) or f"{result.status}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, 0, f"rig {self.name}"
