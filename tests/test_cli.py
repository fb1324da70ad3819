"""The `kvmrig` command, run as a user runs it: a subprocess, exit status and output.

Every call also checks that no Python traceback reaches the user: bad input
is reported as a message, never as a crash.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig.backends.select import HOST_ARCH

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "rigs" / "x86"
kvm = pytest.mark.kvm
x86_host = pytest.mark.skipif(HOST_ARCH != "x86_64", reason="x86_64 guest code")

GOOD = """\
kvmrig: 1
arch: x86_64
tags: [{tags}]
memory: [{{at: 0, size: 64K}}]
images: [{{hex: "b8 2a 00 f4", at: 0x1000}}]   # mov ax, 42 ; hlt
cpu: {{mode: real}}
expect:
  regs: {{ax: {ax}}}
"""
CONSOLE = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 64K}]
images: [{hex: "b0 68 e6 e9 b0 69 e6 e9 f4", at: 0x1000}]   # mov al,'h'; out 0xe9,al; mov al,'i'; out 0xe9,al; hlt
devices: [{type: debugcon, port: 0xe9}]
cpu: {mode: real}
expect: {console: {contains: hi}}
"""
SPIN = """\
kvmrig: 1
arch: x86_64
timeout: 5s
memory: [{at: 0, size: 64K}]
images: [{hex: "eb fe", at: 0x1000}]   # jmp $
cpu: {mode: real}
"""


def good(ax: int = 42, tags: str = "") -> str:
    return GOOD.format(ax=ax, tags=tags)


# Plain output whatever the caller's environment says about colour.
ENV = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}


def kvmrig(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kvmrig", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def junit(path: Path) -> dict[str, ET.Element]:
    cases = ET.parse(path).getroot().iter("testcase")
    return {case.get("name"): case for case in cases}


# -- help and the small commands ----------------------------------------------------

@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help_exits_0_and_explains_the_exit_statuses(args):
    proc = kvmrig(*args)
    assert proc.returncode == 0
    text = proc.stdout
    assert "exit status" in text
    assert re.search(r"\b0 all rigs passed", text)
    assert re.search(r"\b1 some rig failed", text)
    assert re.search(r"\b2 usage or rig", text)


def test_no_command_is_a_usage_error():
    proc = kvmrig()
    assert proc.returncode == 2
    assert "COMMAND" in proc.stdout + proc.stderr


def test_schema_prints_the_json_schema():
    proc = kvmrig("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    for key in ("kvmrig", "arch", "memory", "images", "devices", "cpu", "expect"):
        assert key in schema["properties"], key
    assert set(schema["required"]) >= {"kvmrig", "arch"}


def test_schema_writes_a_file_for_editors(tmp_path):
    """pip users have no schemas/ folder beside their rigs: `kvmrig schema -o` puts one there."""
    out = tmp_path / "sub" / "rig.schema.json"
    proc = kvmrig("schema", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == json.loads((REPO / "kvmrig/schemas/rig.schema.json").read_text())
    results = kvmrig("schema", "--results")
    assert json.loads(results.stdout)["title"] == "kvmrig JSON results"


def test_list_shows_name_arch_tags_and_file():
    proc = kvmrig("list", "rigs/x86")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert len(lines) == len(list(EXAMPLES.glob("*.yaml")))
    assert re.match(r"fib\s+x86_64\s+smoke,math,io\s+rigs/x86/fib.yaml$", lines["fib"])


def test_validate_good_rigs():
    proc = kvmrig("validate", "rigs/x86")
    assert proc.returncode == 0, proc.stderr
    n = len(list(EXAMPLES.glob("*.yaml")))
    assert f"{n} valid, 0 invalid" in proc.stdout
    assert "ok    rigs/x86/fib.yaml::fib" in proc.stdout


def test_validate_reports_each_bad_rig_at_its_line(make_rig):
    make_rig(good(), "a-good.yaml")
    bad = make_rig(good() + "  memory: [{at: 'sym:nowhere', u8: 0}]\n", "b-bad.yaml")
    proc = kvmrig("validate", bad.parent)
    assert proc.returncode == 2
    assert "a-good.yaml::a-good" in proc.stdout
    assert f"{bad}:9:" in proc.stderr and "unknown symbol 'nowhere'" in proc.stderr
    assert "1 valid, 1 invalid" in proc.stdout


# -- usage errors ----------------------------------------------------------------

def test_no_rigs_found_is_exit_2(tmp_path):
    proc = kvmrig("run", tmp_path, "--junit", "")
    assert proc.returncode == 2
    assert "no rigs found" in proc.stderr


def test_no_rigs_matching_the_filters_is_exit_2(make_rig):
    rig = make_rig(good())
    proc = kvmrig("run", "-k", "nothing-has-this-name", rig, "--junit", "")
    assert proc.returncode == 2
    assert "no rigs found matching the filters" in proc.stderr


def test_missing_path_is_exit_2(tmp_path):
    proc = kvmrig("run", tmp_path / "nope.yaml")
    assert proc.returncode == 2
    assert "no such file or folder" in proc.stderr and "nope.yaml" in proc.stderr


@pytest.mark.parametrize("args", [["run", "-j", "lots", "x.yaml"], ["frobnicate"], ["run"]])
def test_bad_command_lines_are_exit_2(args):
    proc = kvmrig(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


# -- rig file errors ----------------------------------------------------------------

def assert_rig_error(proc, path: Path, line: int, text: str):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert re.search(rf"{re.escape(str(path))}:{line}:\d+: ", out), out
    assert text in out


def test_yaml_syntax_error_is_exit_2_with_file_line_col(make_rig):
    rig = make_rig("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}\n")
    assert_rig_error(kvmrig("run", rig, "--junit", ""), rig, 4, "YAML")


def test_unknown_key_is_exit_2_with_file_line_col(make_rig):
    rig = make_rig("kvmrig: 1\narch: x86_64\nmemry: []\n")
    assert_rig_error(kvmrig("run", rig, "--junit", ""), rig, 3, "unknown key 'memry'")


def test_missing_image_is_an_error_naming_the_line(make_rig):
    rig = make_rig("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}]\n"
                   "images:\n  - {file: guests/missing.bin, at: 0x1000}\n")
    assert_rig_error(kvmrig("run", rig, "--junit", ""), rig, 5, "missing.bin")


BAD_FILES = {
    "not-utf8.yaml": b"kvmrig: 1\n\xff\xfe\x00garbage\n",
    "deep.yaml": b"kvmrig: 1\narch: " + b"[" * 5000 + b"\n",
    "unclosed.yaml": b"kvmrig: [1\n",
    "shape.yaml": b"kvmrig: 1\narch: x86_64\nmemory: {at: 0}\n",
    "register.yaml": b"kvmrig: 1\narch: x86_64\ncpu: {regs: {rqx: 1}}\n",
    "empty.yaml": b"",
    "binary.yaml": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("command", [["run", "--junit", ""], ["validate"], ["list"]])
def test_bad_rig_files_are_reported_never_crash(tmp_path, command):
    paths = []
    for name, content in BAD_FILES.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(content)
    proc = kvmrig(*command, *paths)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    out = proc.stdout + proc.stderr
    for path in paths:
        assert str(path) in out, path.name


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_unwritable_junit_path_is_a_message_not_a_traceback(make_rig, tmp_path, where):
    rig = make_rig("kvmrig: 1\narch: x86_64\nmemry: []\n")    # a rig error: no KVM needed
    target = tmp_path / "out"
    if where == "folder":
        target.mkdir()
    else:
        target.write_text("a file")
        target = target / "junit.xml"
    proc = kvmrig("run", rig, "--junit", target)
    assert proc.returncode == 2
    assert str(target) in proc.stderr


# -- running -------------------------------------------------------------------

@kvm
@x86_host
def test_run_examples_writes_junit(tmp_path):
    report = tmp_path / "reports" / "junit.xml"
    proc = kvmrig("run", "rigs/x86", "--junit", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(list(EXAMPLES.glob("*.yaml")))
    assert n >= 14, "the 14 example rigs of rigs/README.md, and any added since"
    assert f"== {n} passed in" in proc.stdout
    root = ET.parse(report).getroot()
    cases = list(root.iter("testcase"))
    assert len(cases) == n
    assert {c.get("classname") for c in cases} == {"rigs.x86"}
    assert not any(c.find("failure") is not None or c.find("error") is not None for c in cases)
    assert "Hello from long mode" in junit(report)["serial-hello"].findtext("system-out")
    assert "Hello from debugcon" in junit(report)["debugcon"].findtext("system-out")
    assert [p.name for p in report.parent.iterdir()] == ["junit.xml"], "no temporary files left"


@kvm
@x86_host
def test_failing_rig_exits_1_with_expected_actual_and_final_pc(make_rig, tmp_path):
    rig = make_rig(good(ax=43))
    report = tmp_path / "j.xml"
    proc = kvmrig("run", rig, "--junit", report)
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout
    assert "register ax: expected 0x2b (43), got 0x2a (42)" in proc.stdout
    assert re.search(r"final pc 0x1004\b", proc.stdout), proc.stdout
    assert "1 failed" in proc.stdout
    failure = junit(report)["rig"].find("failure")
    assert failure is not None
    assert "expected 0x2b (43), got 0x2a (42)" in (failure.get("message", "") + (failure.text or ""))


@kvm
@x86_host
def test_folder_with_a_good_and_a_bad_rig_still_runs_the_good_one(make_rig, tmp_path):
    make_rig(good(), "rigs/a-good.yaml")
    make_rig("kvmrig: 1\narch: x86_64\nmemory: [{at: 0, size: 64K}\n", "rigs/b-broken.yaml")
    make_rig("name: not a rig\n", "rigs/c-other.yaml")
    report = tmp_path / "j.xml"
    proc = kvmrig("run", tmp_path / "rigs", "--junit", report)
    assert proc.returncode == 2, "errors only: 2"
    assert re.search(r"PASS\s+\S*a-good.yaml::a-good", proc.stdout), proc.stdout
    assert re.search(r"ERROR\s+\S*b-broken.yaml::b-broken", proc.stdout)
    assert "1 passed" in proc.stdout and "1 error" in proc.stdout
    cases = junit(report)
    assert set(cases) == {"a-good", "b-broken"}, "c-other.yaml does not start with kvmrig: and is no rig"
    assert cases["b-broken"].find("error") is not None
    assert cases["a-good"].find("error") is None


@kvm
@x86_host
def test_failure_and_error_together_exit_1(make_rig):
    folder = make_rig(good(ax=1), "rigs/fails.yaml").parent
    make_rig("kvmrig: 1\narch: x86_64\nmemry: []\n", "rigs/broken.yaml")
    make_rig(good(), "rigs/passes.yaml")
    proc = kvmrig("run", folder, "--junit", "")
    assert proc.returncode == 1, "a failure outranks an error"
    assert re.search(r"1 failed, 1 passed, 1 errors?", proc.stdout), proc.stdout


@kvm
@x86_host
def test_keyword_and_tag_filters(make_rig):
    folder = make_rig(good(tags="smoke"), "rigs/alpha.yaml").parent
    make_rig(good(tags="slow"), "rigs/beta.yaml")
    make_rig(good(tags="smoke, slow"), "rigs/gamma.yaml")
    ran = lambda proc: sorted(re.findall(r"PASS\s+\S+::(\w+)", proc.stdout))  # noqa: E731
    assert ran(kvmrig("run", "-k", "alp", folder, "--junit", "")) == ["alpha"]
    assert ran(kvmrig("run", "-k", "rigs/gam", folder, "--junit", "")) == ["gamma"], "-k matches the path too"
    assert ran(kvmrig("run", "--tag", "smoke", "--tag", "nothing", folder, "--junit", "")) == ["alpha", "gamma"]
    assert ran(kvmrig("run", "--tag", "slow", "-k", "bet", folder, "--junit", "")) == ["beta"]


@kvm
@x86_host
def test_exitfirst_stops_after_the_first_failure(make_rig, tmp_path):
    folder = make_rig(good(ax=0), "rigs/a-fails.yaml").parent
    make_rig(good(), "rigs/b.yaml")
    make_rig(good(), "rigs/c.yaml")
    report = tmp_path / "j.xml"
    proc = kvmrig("run", "-x", "-j", "1", folder, "--junit", report)
    assert proc.returncode == 1
    assert "1 failed, 2 not run (--exitfirst)" in proc.stdout
    cases = junit(report)
    assert cases["a-fails"].find("failure") is not None
    assert set(cases) == {"a-fails"}, "as pytest -x: rigs not run are left out, not reported as skipped"


@kvm
@x86_host
def test_exitfirst_stops_after_a_rig_file_error(make_rig, tmp_path):
    folder = make_rig("kvmrig: 1\narch: x86_64\nmemry: []\n", "rigs/a-broken.yaml").parent
    make_rig(good(), "rigs/b.yaml")
    report = tmp_path / "j.xml"
    proc = kvmrig("run", "-x", "-j", "1", folder, "--junit", report)
    assert proc.returncode == 2
    assert "PASS" not in proc.stdout
    assert "1 not run (--exitfirst)" in proc.stdout
    assert "b" not in junit(report)


@kvm
@x86_host
def test_quiet_prints_a_character_per_rig(make_rig):
    folder = make_rig(good(), "rigs/a.yaml").parent
    make_rig(good(ax=7), "rigs/b.yaml")
    make_rig(good(), "rigs/c.yaml")
    proc = kvmrig("run", "-q", "-j", "1", folder, "--junit", "")
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first == ".F. [3/3]"
    assert "PASS" not in proc.stdout, "passing rigs get no line of their own"
    assert "register ax: expected 7, got 0x2a (42)" in proc.stdout, "failures are still detailed"


@kvm
@x86_host
def test_verbose_shows_the_console(make_rig):
    rig = make_rig(CONSOLE)
    quiet = kvmrig("run", rig, "--junit", "")
    loud = kvmrig("run", "-v", rig, "--junit", "")
    assert quiet.returncode == loud.returncode == 0
    assert "| hi" in loud.stdout
    assert "| hi" not in quiet.stdout


@kvm
@x86_host
def test_skipped_rig_exits_0(make_rig):
    rig = make_rig("kvmrig: 1\narch: arm64\nbackend: kvm\nmemory: [{at: 0x40000000, size: 64K}]\n"
                   "images: [{hex: '00000014', at: 0x40000000}]\n")   # an arm64 rig pinned to KVM
    proc = kvmrig("run", rig, "--junit", "")
    assert proc.returncode == 0
    assert "SKIP" in proc.stdout and "arm64" in proc.stdout
    assert "1 skipped" in proc.stdout
    strict = kvmrig("run", "--strict", rig, "--junit", "")
    assert strict.returncode == 1, "--strict: a skipped rig fails the run"
    assert "--strict: 1 skipped rig(s) count as failures" in strict.stderr
