"""The pytest plugin (kvmrig/pytest_plugin.py), used as a user uses it: `pytest`
in a subprocess on rig folders, checking its exit status, counts and output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig.backends.select import HOST_ARCH

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "rigs" / "x86"
kvm = pytest.mark.kvm
x86_host = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 guest code")

RIG = """\
kvmrig: 1
name: {name}
arch: x86_64
tags: [{tags}]
memory: [{{at: 0, size: 64K}}]
images: [{{hex: "b8 05 00 f4", at: 0x1000}}]   # mov ax, 5 ; hlt
cpu: {{mode: real}}
expect:
  exit: hlt
  regs: {{ax: {ax}}}
"""
SPIN = """\
kvmrig: 1
name: spins
arch: x86_64
tags: [slow]
timeout: 200ms
memory: [{at: 0, size: 64K}]
images: [{hex: "eb fe", at: 0x1000}]   # jmp .
cpu: {mode: real}
expect: {exit: timeout}
"""
BROKEN = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
cpu:
  mode: rea
"""


# Plugins these runs do not need and that cost a second of start-up each (absent ones are fine).
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")


def pytest_run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pytest ARGS`; the kvmrig plugin comes from its pytest11 entry point."""
    return subprocess.run([sys.executable, "-m", "pytest", *QUIET, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


def counts(output: str) -> dict[str, int]:
    """The closing line's counts: {'passed': 3, 'failed': 1, ...}."""
    last = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line)]
    assert last, output
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last[-1])}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Rigs: two that pass (tagged smoke), one that fails, one that times out as
    expected, and YAML that is not a rig."""
    rigs = tmp_path / "rigs"
    (rigs / "sub").mkdir(parents=True)
    (rigs / "five.yaml").write_text(RIG.format(name="five", tags="smoke, math", ax=5))
    (rigs / "sub" / "also-five.yaml").write_text(RIG.format(name="also-five", tags="smoke", ax=5))
    (rigs / "wrong.yaml").write_text(RIG.format(name="wrong", tags="math", ax=6))
    (rigs / "spin.yaml").write_text(SPIN)
    (rigs / "settings.yaml").write_text("editor: {tabs: 2}\n")
    (rigs / "notes.yml").write_text("- not a rig\n")
    return rigs


@kvm
@x86_host
def test_example_rigs_pass_as_kvmrig_run_says(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "kvmrig", "run", str(EXAMPLES), "--junit", "",
                          "--json", str(tmp_path / "r.json"), "-q"], cwd=REPO, capture_output=True, text=True,
                         timeout=180)
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    got = pytest_run("rigs/x86", "-q", cwd=REPO)
    assert got.returncode == run.returncode, got.stdout + got.stderr
    want = {k: summary[k] for k in ("passed", "failed", "skipped") if summary[k]}
    assert {k: v for k, v in counts(got.stdout).items() if k in want} == want, got.stdout
    assert summary["passed"] >= 14


@kvm
@x86_host
def test_folder_collects_rigs_only(folder: Path) -> None:
    got = pytest_run(str(folder), "-v", cwd=folder.parent)
    assert got.returncode == 1, got.stdout
    assert counts(got.stdout) == {"passed": 3, "failed": 1}
    for node in ("rigs/five.yaml::five PASSED", "rigs/sub/also-five.yaml::also-five PASSED",
                 "rigs/spin.yaml::spins PASSED", "rigs/wrong.yaml::wrong FAILED"):
        assert node in got.stdout, got.stdout
    assert "settings" not in got.stdout and "notes" not in got.stdout


@kvm
@x86_host
def test_xdist_runs_rigs_in_parallel(folder: Path) -> None:
    got = pytest_run(str(folder), "-n", "2", "-v", cwd=folder.parent)
    assert counts(got.stdout) == {"passed": 3, "failed": 1}, got.stdout + got.stderr
    assert "[gw0]" in got.stdout and "[gw1]" in got.stdout   # both workers got rigs
    assert "PASSED rigs/spin.yaml::spins" in got.stdout   # a KVM timeout (SIGALRM) works on a worker
    assert "expected 6, got 5" in got.stdout


@kvm
@x86_host
def test_tags_are_markers(folder: Path) -> None:
    got = pytest_run(str(folder), "-m", "smoke", "--strict-markers", "-v", cwd=folder.parent)
    assert got.returncode == 0, got.stdout + got.stderr
    assert counts(got.stdout) == {"passed": 2, "deselected": 2}
    got = pytest_run(str(folder), "-m", "math and not smoke", "--strict-markers", cwd=folder.parent)
    assert counts(got.stdout) == {"failed": 1, "deselected": 3}
    got = pytest_run(str(folder), "--markers", cwd=folder.parent)
    assert "@pytest.mark.kvmrig" in got.stdout


@kvm
@x86_host
def test_k_matches_rig_names(folder: Path) -> None:
    got = pytest_run(str(folder), "-k", "five and not also", "-v", cwd=folder.parent)
    assert got.returncode == 0, got.stdout
    assert counts(got.stdout) == {"passed": 1, "deselected": 3}
    assert "rigs/five.yaml::five PASSED" in got.stdout


@kvm
@x86_host
def test_failure_shows_checks_not_a_traceback(folder: Path) -> None:
    got = pytest_run(str(folder / "wrong.yaml"), cwd=folder.parent)
    assert got.returncode == 1
    out = got.stdout
    assert "register ax: expected 6, got 5 [rigs/wrong.yaml:10]" in out, out
    assert "exit hlt" in out
    assert "FAILED rigs/wrong.yaml::wrong - 1 failed check: register ax: expected 6" in out
    for internal in ("Traceback", "pytest_plugin.py", "_pytest", "RigFailed", "raise "):
        assert internal not in out, out


@x86_host
def test_broken_rig_is_a_collection_error_at_its_line(folder: Path) -> None:
    (folder / "broken.yaml").write_text(BROKEN)
    got = pytest_run(str(folder), cwd=folder.parent)
    assert got.returncode == 2, got.stdout
    assert "ERROR collecting rigs/broken.yaml" in got.stdout
    assert re.search(r"^rigs/broken\.yaml:5:9: cpu\.mode .*'rea'", got.stdout, re.M), got.stdout
    assert "Interrupted: 1 error during collection" in got.stdout
    assert "Traceback" not in got.stdout


def test_a_kvmrig_bug_at_collection_is_reported_not_swallowed(folder: Path) -> None:
    (folder.parent / "conftest.py").write_text(
        "import kvmrig.machine.plan\n\n"
        "def broken(rig):\n    raise ZeroDivisionError('a bug in prepare')\n\n"
        "kvmrig.machine.plan.prepare = broken\n")
    got = pytest_run(str(folder / "five.yaml"), cwd=folder.parent)
    assert got.returncode == 2, got.stdout
    assert "ERROR collecting rigs/five.yaml" in got.stdout
    assert "internal error in kvmrig" in got.stdout and "ZeroDivisionError: a bug in prepare" in got.stdout


@kvm
@x86_host
def test_continue_on_collection_errors_runs_the_rest(folder: Path) -> None:
    (folder / "broken.yaml").write_text(BROKEN)
    got = pytest_run(str(folder), "--continue-on-collection-errors", cwd=folder.parent)
    assert counts(got.stdout) == {"passed": 3, "failed": 1, "error": 1}, got.stdout


@kvm
@x86_host
def test_skipped_rig_says_why(folder: Path, tmp_path: Path) -> None:
    import os

    env = dict(os.environ, KVMRIG_KVM_DEVICE=str(tmp_path / "no-kvm"))
    got = pytest_run(str(folder / "five.yaml"), "--kvmrig-backend", "kvm", "-rs", cwd=folder.parent, env=env)
    assert got.returncode == 0, got.stdout
    assert counts(got.stdout) == {"skipped": 1}
    assert "no-kvm is absent" in got.stdout


@kvm
@x86_host
def test_junitxml(folder: Path, tmp_path: Path) -> None:
    (folder / "console.yaml").write_text(textwrap.dedent("""\
        kvmrig: 1
        arch: x86_64
        memory: [{at: 0, size: 64K}]
        images: [{hex: "b0 4f e6 e9 b0 4b e6 e9 f4", at: 0x1000}]   # "OK" to port 0xe9 ; hlt
        devices: [{type: debugcon, port: 0xe9}]
        cpu: {mode: real}
        expect: {console: {contains: "OK"}}
        """))
    xml = tmp_path / "out" / "junit.xml"
    got = pytest_run(str(folder), f"--junitxml={xml}", cwd=folder.parent)
    assert got.returncode == 1, got.stdout
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "1", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"five", "also-five", "wrong", "spins", "console"}
    assert cases["wrong"].find("failure") is not None
    assert "expected 6, got 5" in cases["wrong"].find("failure").get("message", "")
    assert cases["console"].findtext("system-out") == "OK", "the console is the testcase's <system-out>"
    assert not list(cases["console"].iter("property")), "junit-10.xsd: no testcase properties"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    classname = cases["console"].get("classname")
    assert props[f"backend:{classname}::console"] == "kvm"
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(REPO / "tests" / "report" / "junit-10.xsd").validate(str(xml))


TWO_CHECKS = """\
kvmrig: 1
name: two-wrong
arch: x86_64
memory: [{at: 0, size: 64K}]
images: [{hex: "b0 4f e6 e9 b8 05 00 f4", at: 0x1000}]   # "O" to port 0xe9 ; mov ax, 5 ; hlt
devices: [{type: debugcon, port: 0xe9}]
cpu: {mode: real}
expect: {regs: {ax: 6, bx: 1}, console: {contains: "PASS"}}
"""


@kvm
@x86_host
def test_junit_failure_is_the_same_from_kvmrig_run_and_from_pytest(tmp_path: Path) -> None:
    """message: one line naming every failed check; text: the whole diagnosis; from both producers."""
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "two-wrong.yaml").write_text(TWO_CHECKS)
    (tmp_path / "pyproject.toml").write_text("")
    got = pytest_run("rigs", "--junitxml=p.xml", cwd=tmp_path)
    assert got.returncode == 1, got.stdout + got.stderr
    run = subprocess.run([sys.executable, "-m", "kvmrig", "run", "rigs", "--junit", "k.xml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    failures = []
    for name in ("p.xml", "k.xml"):
        (case,) = ET.parse(tmp_path / name).getroot().iter("testcase")
        failures.append(case.find("failure"))
        assert case.findtext("system-out") == "O"
    mine, theirs = failures[1], failures[0]
    message = mine.get("message")
    assert message.startswith("3 failed checks: register ax: expected 6, got 5 ")
    assert "register bx: expected 1, got 0" in message and "console: expected to contain 'PASS'" in message
    assert "\n" not in message
    assert theirs.get("message") == message
    assert "registers:" in mine.text and "code at " in mine.text
    # the text differs only where the two runs really differ: the exits handled and timings are not in it
    assert theirs.text == mine.text


@kvm
@x86_host
def test_update_golden_and_cross_check_pass_through(tmp_path: Path) -> None:
    pytest.importorskip("unicorn")
    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "g.yaml").write_text(RIG.format(name="g", tags="", ax=5) + "  golden: true\n")
    got = pytest_run("rigs", cwd=tmp_path)
    assert got.returncode == 1 and "golden" in got.stdout, got.stdout
    got = pytest_run("rigs", "--kvmrig-update-golden", cwd=tmp_path)
    assert got.returncode == 0, got.stdout
    assert (rigs / "g.golden.yaml").exists()
    assert pytest_run("rigs", cwd=tmp_path).returncode == 0
    crossed = pytest_run("rigs", "--kvmrig-cross-check", "--junitxml=x.xml", cwd=tmp_path)
    assert crossed.returncode == 0, crossed.stdout
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "x.xml").getroot().iter("property")}
    assert "kvm+emu" in props.values(), props


def test_collecting_plain_tests_does_not_import_the_rig_loader(tmp_path: Path) -> None:
    """The plugin loads in every pytest session where kvmrig is installed: without rigs, it costs nothing."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "settings.yaml").write_text("editor: {tabs: 2}\n")
    got = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest", *QUIET, "--collect-only", "-q", "."],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in got.stderr.splitlines() if line.startswith("import time")}
    assert "kvmrig.collect" in imported, "the plugin looked at settings.yaml"
    assert not imported & {"jsonschema", "kvmrig.rig.load", "yaml", "capstone", "unicorn", "cffi"}, \
        sorted(imported & {"jsonschema", "kvmrig.rig.load", "yaml", "capstone", "unicorn", "cffi"})


def test_testpaths_do_not_collect_rigs(tmp_path: Path) -> None:
    """A bare `pytest` falling back on testpaths never collects rigs; named paths do."""
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_one.py").write_text("def test_one():\n    pass\n")
    (tests / "rig.yaml").write_text(BROKEN)          # would be a collection error if collected
    (tests / "data.yaml").write_text("kvm: rig\n")  # not a rig at all
    got = pytest_run("-q", cwd=tmp_path)
    assert got.returncode == 0, got.stdout
    assert counts(got.stdout) == {"passed": 1}
    got = pytest_run("-q", "tests/test_one.py", cwd=tmp_path)
    assert counts(got.stdout) == {"passed": 1}
    got = pytest_run("-q", "tests", cwd=tmp_path)      # named: its rigs are collected
    assert got.returncode == 2 and "tests/rig.yaml:5:9:" in got.stdout, got.stdout
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = tests\nkvmrig_collect = never\n")
    assert pytest_run("-q", "tests", cwd=tmp_path).returncode == 0


def test_project_pytest_collects_no_rigs() -> None:
    got = pytest_run("--collect-only", "-q", cwd=REPO)
    assert "tests/test_pytest_plugin.py::test_project_pytest_collects_no_rigs" in got.stdout, got.stdout[-2000:]
    assert not re.search(r"^\S+\.ya?ml::", got.stdout, re.M)   # no rig items


@kvm
@x86_host
def test_off_the_main_thread_rigs_run_in_a_forked_worker(folder: Path) -> None:
    """KVM timeouts need SIGALRM, which only the main thread gets: pytest run
    from another thread still runs rigs, a timeout rig included."""
    script = ("import sys, threading, pytest\n"
              "codes = []\n"
              "args = ['-q', *sys.argv[1:]]\n"
              "t = threading.Thread(target=lambda: codes.append(pytest.main(args)))\n"
              "t.start(); t.join()\n"
              "sys.exit(int(codes[0]))\n")
    got = subprocess.run([sys.executable, "-c", script, *QUIET, "rigs/spin.yaml", "rigs/five.yaml"],
                         cwd=folder.parent, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    assert counts(got.stdout) == {"passed": 2}
