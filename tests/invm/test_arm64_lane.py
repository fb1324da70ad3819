"""The arm64 KVM lane: an arm64 Debian Linux under qemu-system-aarch64 (TCG,
virtualization=on) whose own /dev/kvm runs kvmrig.

The VM tests are skipped only where qemu-system-aarch64 is absent
(scripts/setup-arm64-lane.sh installs it).  The first run builds the base
image (~10-20 s, cached under ~/.cache/kvmrig/arm64); then each boot takes
about 2-3 s.  Timings are printed (and recorded as junit properties), never
asserted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time

import pytest

from kvmrig.errors import BackendError, BackendUnavailable
from kvmrig.invm import qemu as invm_qemu
from kvmrig.invm.cpio import CpioWriter
from tests.invm.reporting import report_line

QEMU = os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU
NO_QEMU_REASON = f"{QEMU} is not installed (run scripts/setup-arm64-lane.sh)"

needs_qemu = [
    pytest.mark.arm64vm,
    pytest.mark.skipif(shutil.which(QEMU) is None, reason=NO_QEMU_REASON),
]

KVM_CAP_GUEST_DEBUG_HW_BPS = 119
KVM_CAP_GUEST_DEBUG_HW_WPS = 120

# Runs inside the guest: open /dev/kvm, create a VM, ask for the debug caps.
KVMCHECK = r'''
import json, os, platform, sys
res = {"machine": platform.machine(), "dev_kvm": os.path.exists("/dev/kvm")}
try:
    from kvmrig.backends.kvm.system import Kvm
except ImportError as e:
    Kvm = None
    res["import_error"] = repr(e)
if Kvm is not None:
    res["via"] = "kvmrig.backends.kvm.system"
    with Kvm() as kvm:
        res["hw_bps"] = kvm.check_extension(119)
        res["hw_wps"] = kvm.check_extension(120)
        with kvm.create_vm() as vm:
            res["vm_fd"] = vm.fd
else:
    # TODO: drop this fallback once kvmrig.backends.kvm.system is always there.
    import fcntl
    KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CHECK_EXTENSION = 0xAE00, 0xAE01, 0xAE03
    res["via"] = "raw ioctl"
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    res["api"] = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
    res["hw_bps"] = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, 119)
    res["hw_wps"] = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, 120)
    res["vm_fd"] = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
    os.close(res["vm_fd"])
    os.close(fd)
print("KVMCHECK " + json.dumps(res))
'''

SCRIPT = r'''
python3 -c "print(6*7)"
python3 kvmcheck.py
mkdir -p out
python3 - <<'EOF'
import hashlib, os
open("out/copy.bin", "wb").write(open("in.bin", "rb").read())
data = os.urandom(1024)
open("out/rand.bin", "wb").write(data)
print("RAND-SHA256", hashlib.sha256(data).hexdigest())
EOF
'''


@pytest.fixture(scope="module")
def lane(request):
    """One VM boot, shared: runs SCRIPT and returns (result, details)."""
    t0 = time.monotonic()
    base = invm_qemu.ensure_base_image()
    t_image = time.monotonic() - t0
    payload = os.urandom(1024)
    lines: list[tuple[float, str]] = []
    t1 = time.monotonic()
    r = invm_qemu.run_in_vm(
        SCRIPT,
        files={"in.bin": payload, "kvmcheck.py": KVMCHECK},
        fetch=["out"],
        timeout=240,
        base=base,
        on_output=lambda line: lines.append((time.monotonic(), line)),
    )
    t_call = time.monotonic() - t1
    first = next((t for t, line in lines if line == "42"), None)
    python_ready = (first - r.started_at) if first is not None else None
    timing = {
        "image_seconds": round(t_image, 2),
        "boot_seconds": round(r.boot_seconds, 2) if r.boot_seconds is not None else None,
        "boot_to_python_output_seconds": round(python_ready, 2) if python_ready is not None else None,
        "vm_total_seconds": round(r.total_seconds, 2),
        "call_seconds": round(t_call, 2),
    }
    kvm = next((line.split(" ", 1)[1] for _, line in lines if line.startswith("KVMCHECK ")), "none")
    report_line(request, "\narm64 VM lane timings: " + json.dumps(timing)
            + f"\n  kernel {base.kernel_package}, initramfs {base.initramfs.stat().st_size >> 20} MiB;"
            + f" in-guest KVM check: {kvm}")
    return r, {"payload": payload, "lines": lines, "timing": timing}


class TestArm64Lane:
    pytestmark = needs_qemu

    def test_command_output_and_status(self, lane, record_property):
        r, d = lane
        for k, v in d["timing"].items():
            record_property(k, v)
        assert r.error is None, r.error
        assert r.exit_status == 0, r.output
        assert r.output.splitlines()[0] == "42"
        # streamed live, line by line, before the run ended
        assert [line for _, line in d["lines"]][0] == "42"
        assert all(t <= r.started_at + r.total_seconds for t, _ in d["lines"])

    def test_kvm_inside(self, lane):
        r, _ = lane
        found = [line for line in r.output.splitlines() if line.startswith("KVMCHECK ")]
        assert found, r.output
        res = json.loads(found[0].split(" ", 1)[1])
        print("in-guest KVM check:", res)
        assert res["machine"] == "aarch64"
        assert res["dev_kvm"] is True
        assert res["vm_fd"] >= 0
        assert res["hw_bps"] >= 1
        assert res["hw_wps"] >= 1

    def test_files_back_byte_identical(self, lane):
        r, d = lane
        assert set(r.files_back) == {"out/copy.bin", "out/rand.bin"}, r.files_back.keys()
        assert r.files_back["out/copy.bin"] == d["payload"]
        sums = [line.split()[1] for line in r.output.splitlines() if line.startswith("RAND-SHA256 ")]
        assert sums == [hashlib.sha256(r.files_back["out/rand.bin"]).hexdigest()]
        assert len(r.files_back["out/rand.bin"]) == 1024

    def test_failing_command_status(self):
        r = invm_qemu.run_in_vm(
            ["python3", "-c", "import sys; print('bye'); sys.exit(3)"],
            fetch=["missing.txt"], timeout=180)
        assert r.error is None, r.error
        assert r.exit_status == 3
        assert r.output == "bye\n"
        assert r.missing_files == ["missing.txt"]
        with pytest.raises(BackendError, match="status 3"):
            r.check()

    def test_timeout_kills_qemu(self):
        t0 = time.monotonic()
        r = invm_qemu.run_in_vm(["sleep", "600"], timeout=6)
        # Not a speed check: the guest's `sleep 600` must not have been waited
        # for; half of it leaves room for any load on a shared CI machine.
        assert time.monotonic() - t0 < 300
        assert r.timed_out
        assert r.exit_status == invm_qemu.EXIT_TIMEOUT
        assert "timed out after 6s" in (r.error or "")
        with pytest.raises(BackendError, match="timed out"):
            r.check()


# --- no VM needed ------------------------------------------------------------


def test_missing_qemu_is_backend_unavailable(monkeypatch):
    monkeypatch.setenv(invm_qemu.QEMU_ENV, "/nonexistent/qemu-system-aarch64")
    with pytest.raises(BackendUnavailable, match="setup-arm64-lane.sh"):
        invm_qemu.run_in_vm(["true"], timeout=5)


def _console(tok: str, body: bytes) -> bytes:
    return b"[    0.1] boot noise\r\n" + tok.encode() + b":BEGIN 1.50\n" + body


def test_console_parsing():
    tok = "KVMRIGtest"
    data = b"hello\n\nno newline at end"
    payload = bytes(range(256))
    b64 = base64.encodebytes(payload)
    raw = _console(tok, data + (
        f"\n{tok}:END 7 2.00\n{tok}:FILE {len(payload)} out/x.bin\n".encode() + b64
        + f"{tok}:ENDFILE\n{tok}:NOFILE gone\n{tok}:EXIT 7\n".encode()))
    lines: list[str] = []
    c = invm_qemu._Console(tok, lines.append)
    for i in range(0, len(raw), 5):  # arbitrary chunking
        c.feed(raw[i:i + 5], 0.0)
    assert c.output() == data.decode()
    assert lines == ["hello", "", "no newline at end"]
    assert c.exit_seen
    status, uptime, files, missing, problem = c.parse_after_end()
    assert (status, uptime, files, missing, problem) == (7, 2.0, {"out/x.bin": payload}, ["gone"], None)


def test_console_cut_off_file_is_reported():
    tok = "KVMRIGtest"
    raw = _console(tok, f"\n{tok}:END 0 2.00\n{tok}:FILE 10 a\nAAAA\n".encode())
    c = invm_qemu._Console(tok, None)
    c.feed(raw, 0.0)
    status, _, files, _, problem = c.parse_after_end()
    assert status == 0 and files == {} and "cut off" in problem


def test_cpio_newc_layout():
    import io

    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("a/b/c.txt", b"xyz", 0o644)
    w.symlink("a/l", "b")
    w.close()
    data = buf.getvalue()
    assert len(data) % 4 == 0
    names = []
    i = 0
    while True:
        assert data[i:i + 6] == b"070701"
        fields = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[i + 110:i + 110 + namesize - 1].decode()
        names.append(name)
        i = (i + 110 + namesize + 3) & ~3
        i = (i + filesize + 3) & ~3
        if name == "TRAILER!!!":
            break
    assert names == ["a", "a/b", "a/b/c.txt", "a/l", "TRAILER!!!"]  # parents first
