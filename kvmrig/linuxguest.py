"""Debian's own x86_64 kernel and a busybox initramfs, as a rig's guest
(`python3 -m kvmrig.linuxguest [CACHE_DIR]`, run by scripts/setup-linux-guest.sh).

The packages are fetched with `apt-get download` and unpacked with `dpkg -x`
into a cache (~/.cache/kvmrig/linux-x86, or $KVMRIG_LINUX_CACHE), never
installed on the host, as the arm64 lane does:
- linux-image-cloud-amd64's kernel: its bzImage, and the vmlinux inside it
  (the compressed payload the boot header points at, decompressed here: the
  rig boots the vmlinux ELF directly, skipping the kernel's own decompressor,
  which runs for minutes on a KVM that executes guest code slowly);
- busybox-static: the initramfs is /bin/busybox and an /init that prints
  MARKER and reboots, which with `reboot=t` is a triple fault (exit shutdown).
- the kernel's own symbol table: Debian's vmlinux is stripped, but its
  kallsyms table is not; vmlinux-to-elf's kallsyms-finder (PyPI, GPL-3,
  pip-installed into the cache and run as a tool, not imported by kvmrig)
  reads it, and objcopy adds the function symbols to the vmlinux, so rigs
  can say `sym:start_kernel`.
The rig that boots them, debian-cloud.yaml, is written beside them:
`kvmrig run ~/.cache/kvmrig/linux-x86/debian-cloud.yaml`.
"""

from __future__ import annotations

import gzip
from io import BytesIO
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from kvmrig.invm.image import CpioWriter

MARKER = "KVMRIG-LINUX-BOOTED"
INIT = f"""#!/bin/busybox sh
/bin/busybox echo {MARKER}
/bin/busybox reboot -f
"""
RIG_NAME = "debian-cloud.yaml"
SYMBOLS = "kallsyms.txt"          # what kallsyms-finder read (present: vmlinux has its symbols)
KALLSYMS_TOOL = "vmlinux-to-elf==1.4.0"
FILES = ("vmlinux", "vmlinuz", "initramfs.cpio", RIG_NAME)
RIG = """# Debian's own cloud kernel boots to a busybox initramfs that prints a marker
# and reboots; `reboot=t` makes that a triple fault (exit shutdown).
# Written by scripts/setup-linux-guest.sh (python3 -m kvmrig.linuxguest) beside
# the kernel and initramfs it fetched and built.
kvmrig: 1
name: linux-debian-cloud
description: >
  linux-image-cloud-amd64 as a vmlinux ELF entered at its 64-bit entry
  (boot_params in RSI, e820 from the memory map, cmdline, initrd), on KVM's
  PIC/IOAPIC/LAPIC/PIT with a 16550 console; the initramfs prints
  KVMRIG-LINUX-BOOTED and reboots.
arch: x86_64
tags: [linux, slow]
backend: kvm
timeout: 300s
machine: {pit: true}
memory:
  - {at: 0, size: 512M}
images:
  - file: vmlinux
    format: linux
    initrd: initramfs.cpio
    cmdline: "console=ttyS0 earlyprintk=serial,ttyS0 reboot=t panic=-1 tsc=reliable lpj=1000000 noxsave i8042.noaux i8042.nokbd"
devices:
  - {type: serial, port: 0x3f8}
  - {type: cmos}
cpu:
  # hypervisor: the kernel finds KVM's leaves and uses kvm-clock instead of
  # calibrating the TSC against the PIT.
  # kvm_pvm cannot emulate the kernel's CMPXCHG16B on write-tracked pages:
  # CPUID without cx16 and the kernel takes its fallback (harmless elsewhere).
  # It also keeps XSAVE in CPUID whatever KVM_SET_CPUID2 says, hence noxsave.
  cpuid: {add: [hypervisor], remove: [cx16]}
expect:
  exit: shutdown
  console: {contains: KVMRIG-LINUX-BOOTED, not_contains: "Kernel panic"}
"""


def cache_dir() -> Path:
    env = os.environ.get("KVMRIG_LINUX_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmrig" / "linux-x86"


def ready(cache: Path) -> bool:
    return all((cache / f).is_file() for f in FILES)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def kernel_package() -> str:
    """The versioned package linux-image-cloud-amd64 depends on."""
    out = _run(["apt-cache", "depends", "linux-image-cloud-amd64"])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    raise RuntimeError("apt-cache knows no linux-image-cloud-amd64 (run apt-get update)")


def decompress_payload(bzimage: bytes) -> bytes:
    """The vmlinux ELF inside a bzImage (payload_offset/payload_length, boot protocol 2.08)."""
    setup = ((bzimage[0x1F1] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    payload = bzimage[setup + offset:setup + offset + length]
    if payload[:2] == b"\x1f\x8b":
        return gzip.decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(payload)
    tools = {b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}
    tool = tools.get(payload[:4])
    if tool is None:
        raise RuntimeError(f"unknown kernel compression (payload starts {payload[:6].hex()})")
    if shutil.which(tool) is None:
        raise RuntimeError(f"the kernel payload is {tool}-compressed: install {tool} (Debian package {tool})")
    with tempfile.NamedTemporaryFile() as f:
        f.write(payload)
        f.flush()
        # The kernel appends the uncompressed size to the payload, which the
        # tools call trailing garbage (exit status 1) after decompressing it all.
        done = subprocess.run([tool, "-dc", f.name], capture_output=True)
    if not done.stdout.startswith(b"\x7fELF"):
        raise RuntimeError(f"{tool} -dc gave no ELF kernel: {done.stderr.decode(errors='replace')[-300:]}")
    return done.stdout


def initramfs(busybox: bytes) -> bytes:
    out = BytesIO()
    w = CpioWriter(out)
    w.mkdir("dev")
    w.chardev("dev/console", 5, 1)
    w.file("bin/busybox", busybox, 0o755)
    w.file("init", INIT.encode(), 0o755)
    w.close()
    return out.getvalue()


def symbol_options(kallsyms: str, sections: list[tuple[str, int, int]]) -> list[str]:
    """objcopy options adding kallsyms' function symbols ("ADDR TYPE NAME"
    lines) to an ELF whose code sections are `sections` (name, address,
    size), each relative to its section. The first of several static
    functions with one name wins."""
    out: list[str] = []
    seen: set[str] = set()
    for line in kallsyms.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in ("T", "t", "W", "w") or parts[2] in seen:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        name = parts[2]
        if any(c in name for c in "=,@ ") or not name:
            continue
        sec = next((sec for sec in sections if sec[1] <= addr < sec[1] + sec[2]), None)
        if sec is None:
            continue
        seen.add(name)
        bind = "global" if parts[1] in ("T", "W") else "local"
        out.append(f"--add-symbol {name}={sec[0]}:{addr - sec[1]:#x},{bind},function")
    return out


def add_symbols(cache: Path) -> None:
    """Give the stripped vmlinux its kernel's function symbols (see the module
    docstring); done once (SYMBOLS marks it)."""
    if (cache / SYMBOLS).is_file():
        return
    from elftools.elf.elffile import ELFFile

    tool = cache / "vmlinux-to-elf"
    if not (tool / "vmlinux_to_elf").is_dir():
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "--root-user-action=ignore", "--target", str(tool), KALLSYMS_TOOL])
    vmlinux = cache / "vmlinux"
    found = subprocess.run([sys.executable, "-m", "vmlinux_to_elf.scripts.kallsyms_finder", str(vmlinux)],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(tool)))
    if found.returncode or " T " not in found.stdout:
        raise RuntimeError(f"kallsyms-finder found no symbol table in {vmlinux}: {found.stderr.strip()[-500:]}")
    with open(vmlinux, "rb") as f:
        sections = [(sec.name, sec["sh_addr"], sec["sh_size"]) for sec in ELFFile(f).iter_sections()
                    if sec["sh_flags"] & 0x4 and sec["sh_size"]]   # SHF_EXECINSTR
    options = symbol_options(found.stdout, sections)
    with tempfile.TemporaryDirectory(prefix="kvmrig-linux-") as tmp:
        rsp, out = Path(tmp, "symbols.rsp"), cache / "vmlinux.new"
        rsp.write_text("\n".join(options) + "\n", encoding="utf-8")
        _run(["objcopy", f"@{rsp}", str(vmlinux), str(out)])
        os.replace(out, vmlinux)   # a run reading the old one meanwhile reads it whole
    (cache / SYMBOLS).write_text(found.stdout, encoding="utf-8")   # last: the symbols are in


def build(cache: Path) -> Path:
    """Fetch, unpack and build into `cache` (nothing is done when it is there)."""
    if ready(cache):
        rig = cache / RIG_NAME
        if rig.read_text(encoding="utf-8") != RIG:   # written by an older kvmrig
            rig.write_text(RIG, encoding="utf-8")
        add_symbols(cache)
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvmrig-linux-") as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", "-q=2", kernel_package(), "busybox-static"], cwd=work)
        root = work / "root"
        for deb in work.glob("*.deb"):
            _run(["dpkg", "-x", str(deb), str(root)])
        vmlinuz = next(root.glob("boot/vmlinuz-*"))
        data = vmlinuz.read_bytes()
        (cache / "vmlinux").write_bytes(decompress_payload(data))
        (cache / "initramfs.cpio").write_bytes(initramfs((root / "bin" / "busybox").read_bytes()))
        (cache / RIG_NAME).write_text(RIG, encoding="utf-8")
        (cache / "vmlinuz").write_bytes(data)   # last: ready() means complete
    add_symbols(cache)
    return cache


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cache = Path(args[0]) if args else cache_dir()
    try:
        build(cache)
    except (RuntimeError, OSError, StopIteration, subprocess.CalledProcessError) as e:
        print(f"linuxguest: {e}", file=sys.stderr)
        return 1
    print(cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
