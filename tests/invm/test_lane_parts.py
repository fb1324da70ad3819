"""The parts of kvmrig.invm that need no VM: the lane table, Debian version
order, the image's module extraction, the patched-QEMU check, and the host
view `--in-vm` rebuilds in the guest (symbolic links included)."""

from __future__ import annotations

import io
import json
import lzma
import os
import stat
from pathlib import Path

import pytest

from kvmrig.errors import BackendUnavailable
from kvmrig.invm import image, lanes
from kvmrig.invm.cpio import CpioWriter
from kvmrig.invm.debian import version_compare
from kvmrig.cli import _parser, main
from kvmrig.invm.remote import COVERAGE_DIR, host_line, host_view, inner_argv


def test_lane_table():
    x86 = lanes.lane_for("x86_64")
    assert x86.deb_arch == "amd64" and x86.console == "ttyS0"
    assert x86.kernel_re.match("linux-image-6.1.0-50-cloud-amd64")
    assert not x86.kernel_re.match("linux-image-6.1.0-50-cloud-amd64-unsigned")
    assert not x86.kernel_re.match("linux-image-6.1.0-53-cloud-amd64-dbg")
    assert x86.modules == ("irqbypass.ko", "kvm.ko", "kvm-amd.ko")  # load order: dependencies first
    assert lanes.lane_for("arm64").cache_env == "KVMRIG_ARM64_CACHE"  # the name the arm64 lane always had
    with pytest.raises(BackendUnavailable, match="x86_64"):
        lanes.lane_for("riscv64")
    pkgs = image.deb_packages(x86)
    assert "busybox-static:amd64" in pkgs and "python3-cffi" in pkgs
    assert all(not p.endswith(":arm64") for p in pkgs)
    assert "usr/lib/x86_64-linux-gnu/gconv/" in image.trim(x86)
    assert "pytest==8.3.5" in image.wheels(x86) and "pytest==8.3.5" not in image.wheels(lanes.ARM64)


def test_version_order_is_dpkgs():
    assert version_compare("6.12.117-1~deb12u1", "6.1.192-2") > 0
    assert version_compare("1.0~rc1", "1.0") < 0
    assert version_compare("1:0.9", "2.0") > 0
    assert version_compare("2.36-9+deb12u14", "2.36-9+deb12u9") > 0
    assert version_compare("1.0", "1.0") == 0
    assert version_compare("1.0", "1.0-0") == 0   # equal to dpkg, not as strings


def test_modules_are_taken_from_the_kernel_package_and_decompressed(tmp_path):
    kroot = tmp_path / "kernel"
    base = kroot / "lib/modules/6.12.0-cloud-amd64/kernel"
    (base / "arch/x86/kvm").mkdir(parents=True)
    (base / "virt/lib").mkdir(parents=True)
    (base / "virt/lib/irqbypass.ko").write_bytes(b"\x7fELF irqbypass")
    (base / "arch/x86/kvm/kvm.ko.xz").write_bytes(lzma.compress(b"\x7fELF kvm"))
    (base / "arch/x86/kvm/kvm-amd.ko").write_bytes(b"\x7fELF kvm-amd")
    root = tmp_path / "root"
    assert image.extract_modules(kroot, lanes.X86_64, root) == [
        "/lib/modules/kvmrig/irqbypass.ko", "/lib/modules/kvmrig/kvm.ko", "/lib/modules/kvmrig/kvm-amd.ko"]
    assert (root / "lib/modules/kvmrig/kvm.ko").read_bytes() == b"\x7fELF kvm"
    (base / "arch/x86/kvm/kvm-amd.ko").unlink()
    with pytest.raises(Exception, match="kvm-amd.ko"):
        image.extract_modules(kroot, lanes.X86_64, tmp_path / "root2")


def test_a_qemu_built_with_another_patch_is_refused(tmp_path, monkeypatch):
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\n")
    with pytest.raises(BackendUnavailable, match="setup-x86-lane.sh"):
        lanes.check_patched_qemu(qemu)      # no build.json: not built by the script
    (tmp_path / "build.json").write_text(json.dumps({"patch_sha256": "0" * 64}))
    with pytest.raises(BackendUnavailable, match="another version"):
        lanes.check_patched_qemu(qemu)
    import hashlib
    (tmp_path / "build.json").write_text(json.dumps(
        {"patch_sha256": hashlib.sha256(lanes.QEMU_PATCH.read_bytes()).hexdigest()}))
    lanes.check_patched_qemu(qemu)


def test_host_view_rebuilds_linked_folders_and_files(tmp_path):
    real = tmp_path / "real" / "rigs"
    real.mkdir(parents=True)
    (real / "r.yaml").write_text("rig")
    (real / "img.bin").write_bytes(b"\x90")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.bin").write_bytes(b"d")
    (tmp_path / "linked").symlink_to("real/rigs")                  # a relative folder link
    (tmp_path / "chain").symlink_to(tmp_path / "linked")            # a link to a link
    (real / "data.bin").symlink_to("../../other/data.bin")          # a file link going up
    files, links = host_view([tmp_path / "chain" / "r.yaml", tmp_path / "linked" / "img.bin",
                              tmp_path / "linked" / "data.bin", tmp_path / "linked" / ".." / "rigs" / "r.yaml"])
    assert files == sorted(str(p) for p in (real / "r.yaml", real / "img.bin", tmp_path / "other" / "data.bin"))
    assert links == {str(tmp_path / "chain"): str(tmp_path / "linked"),
                     str(tmp_path / "linked"): "real/rigs",
                     str(real / "data.bin"): "../../other/data.bin"}


def _cpio_entries(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, i = {}, 0
    while True:
        fields = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[i + 110:i + 110 + namesize - 1].decode()
        i = (i + 110 + namesize + 3) & ~3
        out[name] = (mode, data[i:i + size])
        i = (i + size + 3) & ~3
        if name == "TRAILER!!!":
            return out


def test_overlay_carries_the_links(tmp_path):
    from kvmrig.invm.qemu import write_overlay

    base = image.BaseImage(kernel=tmp_path / "k", initramfs=tmp_path / "base.cpio")
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.close()
    base.initramfs.write_bytes(buf.getvalue())
    (tmp_path / "f.yaml").write_text("x")
    out = tmp_path / "initrd"
    write_overlay(out, base, token="T", command=["true"], files=[(str(tmp_path / "f.yaml"), str(tmp_path / "f.yaml"))],
                  fetch=[], env=None, workdir="/work", include_kvmrig=False,
                  symlinks={"/a/link": "../b"})
    data = out.read_bytes()
    entries = _cpio_entries(data[len(buf.getvalue()):])
    mode, target = entries["a/link"]
    assert stat.S_ISLNK(mode) and target == b"../b"
    assert stat.S_ISREG(entries[str(tmp_path / "f.yaml").lstrip("/")][0])


def _inner(*flags: str) -> list[str]:
    args = _parser().parse_args(["run", "rigs/x86", "--in-vm", "x86_64", *flags])
    return inner_argv(args, args.paths, None, None)


@pytest.mark.parametrize("lane", ["arm64", "x86_64"])
def test_in_vm_forwards_strict_no_reuse_and_coverage(lane):
    """Options that change what the run inside does go into its command line
    (the same for both lanes); the host's coverage DIR becomes the guest's
    report folder, whose files come back."""
    args = _parser().parse_args(["run", "rigs/x86", "--in-vm", lane, "--strict", "--no-reuse", "--coverage", "cov",
                                 "--coverage-root", "src", "--coverage-root", "a=b"])
    argv = inner_argv(args, args.paths, None, None)
    assert argv[:5] == ["python3", "-m", "kvmrig", "run", "rigs/x86"]
    assert "--strict" in argv and "--no-reuse" in argv
    i = argv.index("--coverage")
    assert argv[i + 1] == COVERAGE_DIR and "cov" not in argv
    assert argv[i + 2:i + 6] == ["--coverage-root", "src", "--coverage-root", "a=b"]
    plain = _inner()
    assert not {"--strict", "--no-reuse", "--coverage", "--coverage-root"} & set(plain)
    bare = _inner("--coverage")   # its default DIR
    assert bare[bare.index("--coverage") + 1] == COVERAGE_DIR


@pytest.mark.parametrize("flag", [["--save-on-fail", "snaps"], ["--rerun-failed"], ["--cross-check"]])
def test_in_vm_refuses_what_it_cannot_bring_back(flag, capsys):
    """Options whose effect would stay inside the VM (or need two backends) are
    a usage error naming the option, not silently dropped."""
    assert main(["run", "--in-vm", "x86_64", *flag, "rigs/x86"]) == 2
    assert f"--in-vm cannot be combined with {flag[0]}" in capsys.readouterr().err


def test_in_vm_coverage_line_names_the_host_folder():
    inner = f"coverage: {COVERAGE_DIR}/coverage.info, {COVERAGE_DIR}/coverage.xml"
    assert host_line(inner, "reports/cov") == "coverage: reports/cov/coverage.info, reports/cov/coverage.xml"
    assert host_line(inner, None) == inner
    assert host_line(f"PASS  x.yaml::x {COVERAGE_DIR}", "c") == f"PASS  x.yaml::x {COVERAGE_DIR}"
