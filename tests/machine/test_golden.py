"""Golden snapshots on real KVM: missing file, --update-golden, a changed guest,
ignore lists, and the file's content."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.kvm

RIG = """\
kvmrig: 1
arch: x86_64
memory: [{at: 0, size: 2M}]
# mov eax, VALUE; inc rax; hlt
images: [{hex: "b8 %02x 00 00 00 48 ff c0 f4", at: 0x1000}]
expect:
  golden: %s
"""


def kvmrig(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmrig", "run", "--junit", "", "-j", "1", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, value: int, golden: str = "true") -> Path:
    rig = tmp_path / "snap.yaml"
    rig.write_text(RIG % (value, golden))
    return rig


def test_missing_golden_fails_with_a_hint(tmp_path):
    write(tmp_path, 5)
    r = kvmrig("snap.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert "no such file; create it with `kvmrig run --update-golden`" in r.stdout


def test_update_then_pass_then_guest_change_fails_then_update_passes(tmp_path):
    write(tmp_path, 5)
    r = kvmrig("--update-golden", "snap.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "golden snap.golden.yaml: created" in r.stdout
    data = yaml.safe_load((tmp_path / "snap.golden.yaml").read_text())
    assert data["exit"] == "hlt" and int(data["regs"]["rax"], 16) == 6
    assert "cr8" not in data["regs"] and "cs_base" not in data["regs"]   # volatile
    assert data["memory"][0]["size"] == "0x200000" and len(data["memory"][0]["sha256"]) == 64
    assert kvmrig("snap.yaml", cwd=tmp_path).returncode == 0

    write(tmp_path, 7)  # the guest changes
    r = kvmrig("snap.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert "golden register rax: expected 6, got 8" in r.stdout
    assert "golden RAM digest 0x0+0x200000" in r.stdout

    r = kvmrig("--update-golden", "snap.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "register rax 6 -> 8" in r.stdout
    assert kvmrig("snap.yaml", cwd=tmp_path).returncode == 0


def test_ignore_leaves_registers_out(tmp_path):
    write(tmp_path, 5, "{file: other.golden.yaml, ignore: [rax, rflags]}")
    assert kvmrig("--update-golden", "snap.yaml", cwd=tmp_path).returncode == 0
    data = yaml.safe_load((tmp_path / "other.golden.yaml").read_text())
    assert "rax" not in data["regs"] and "rflags" not in data["regs"] and "rbx" in data["regs"]
    # rax changes, but it is ignored; the RAM digest still catches the changed image.
    write(tmp_path, 7, "{file: other.golden.yaml, ignore: [rax, rflags]}")
    r = kvmrig("snap.yaml", cwd=tmp_path)
    assert "register rax" not in r.stdout and "golden RAM digest" in r.stdout


@pytest.mark.parametrize("content, why", [
    (b"regs: {rax: \xff}\n", "not UTF-8"),
    (b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested deeper"),
    (b"a: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n"
                                                 % ((98 + i,) * 2 + (97 + i,) * 10) for i in range(9)),
     "more than 100000 values"),
])
def test_a_hostile_golden_file_is_a_failure_not_a_crash(tmp_path, content, why):
    # issue 11 item 11: UnicodeDecodeError, RecursionError, an alias bomb killed the worker
    import resource

    from kvmrig.machine import golden
    path = tmp_path / "x.golden.yaml"
    path.write_bytes(content)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = golden._load(path)
    assert got is not None and why in got["_error"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
