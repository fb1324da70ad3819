"""The VM lanes of kvmrig.invm: what differs between the arm64 and the
x86_64 Linux that kvmrig boots under QEMU to reach a real /dev/kvm.

    arm64   Debian's arm64 cloud kernel under qemu-system-aarch64 (TCG,
            virtualization=on): arm64 KVM on an x86_64 host.
    x86_64  Debian's amd64 cloud kernel under a qemu-system-x86_64 built from
            Debian's source with kvmrig's patch (scripts/setup-x86-lane.sh;
            TCG, -cpu max = nested SVM): an x86 KVM that intercepts INT3 and
            raises DR0-DR3 breakpoints, where the host's KVM may do neither.

Pure data plus the lookups that follow from it (cache dir, qemu binary);
building the image is kvmrig.invm.image's job, booting it kvmrig.invm.qemu's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from kvmrig.errors import BackendUnavailable

ROOT_SCRIPTS = "scripts"


@dataclass(frozen=True)
class Lane:
    """One VM lane: the guest's packages, kernel, and how QEMU boots it."""

    arch: str                       # kvmrig's name for the guest arch
    deb_arch: str                   # Debian's
    triplet: str                    # multiarch library dir
    wheel_platform: str             # pip --platform for binary wheels
    kernel_flavour: str             # linux-image-<ver>-<flavour>
    qemu_default: str               # binary name (PATH) or path
    qemu_env: str                   # env var naming another qemu binary
    machine: tuple[str, ...]        # qemu machine arguments
    cpu: str
    console: str                    # the kernel's console device
    setup_script: str
    #: kernel modules to load at boot, in order (file names in the kernel package)
    modules: tuple[str, ...] = ()
    #: wheels only this lane's image holds (the lane runs tests with them)
    extra_wheels: tuple[str, ...] = ()

    @property
    def env_prefix(self) -> str:
        return "KVMRIG_" + self.arch.upper()

    @property
    def cache_env(self) -> str:
        return f"{self.env_prefix}_CACHE"

    @property
    def kernel_env(self) -> str:
        return f"{self.env_prefix}_KERNEL_PKG"

    @property
    def compression_env(self) -> str:
        return f"{self.env_prefix}_INITRD_COMPRESSION"

    @property
    def kernel_re(self) -> re.Pattern[str]:
        return re.compile(rf"^linux-image-(\d[^ ]*)-{re.escape(self.kernel_flavour)}$")

    @property
    def setup_hint(self) -> str:
        return f"run {ROOT_SCRIPTS}/{self.setup_script} (as root) to set up the {self.arch} VM lane"

    def cache_dir(self) -> Path:
        env = os.environ.get(self.cache_env)
        if env:
            return Path(env).expanduser()
        return kvmrig_cache() / self.arch

    def qemu_binary(self) -> str:
        """The QEMU to boot this lane with; BackendUnavailable when there is none."""
        name = os.environ.get(self.qemu_env) or self.qemu_default
        path = shutil.which(name)
        if not path:
            where = f"${self.qemu_env}={name!r}" if os.environ.get(self.qemu_env) else name
            raise BackendUnavailable(f"the {self.arch} VM lane needs {where}, which is not installed; "
                                     f"{self.setup_hint}")
        if self.arch == "x86_64" and not os.environ.get(self.qemu_env):
            check_patched_qemu(Path(path))
        return path


def kvmrig_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmrig"


# --------------------------------------------------------------------------
# the x86_64 lane's patched QEMU (built by scripts/setup-x86-lane.sh)

QEMU_PATCH = Path(__file__).resolve().parents[2] / ROOT_SCRIPTS / "qemu" / "svm-nested-debug.patch"


def qemu_x86_dir() -> Path:
    return kvmrig_cache() / "qemu-x86_64"


def check_patched_qemu(binary: Path) -> None:
    """Refuse a cached QEMU built without the current patch (the lane's
    native-debug results would then be QEMU's bugs, not kvmrig's)."""
    info_file = binary.parent / "build.json"
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):
        raise BackendUnavailable(f"{binary} has no {info_file.name}: it was not built by "
                                 f"{ROOT_SCRIPTS}/setup-x86-lane.sh; run that") from None
    if QEMU_PATCH.is_file():
        want = hashlib.sha256(QEMU_PATCH.read_bytes()).hexdigest()
        if info.get("patch_sha256") != want:
            raise BackendUnavailable(f"{binary} was built with another version of {QEMU_PATCH.name}; "
                                     f"run {ROOT_SCRIPTS}/setup-x86-lane.sh to rebuild it")


ARM64 = Lane(
    arch="arm64",
    deb_arch="arm64",
    triplet="aarch64-linux-gnu",
    wheel_platform="manylinux2014_aarch64",
    kernel_flavour="cloud-arm64",
    qemu_default="qemu-system-aarch64",
    qemu_env="KVMRIG_QEMU",
    machine=("-M", "virt,virtualization=on,gic-version=3"),
    # pauth-impdef: QEMU's own pointer-auth hash instead of emulated QARMA (3x faster boots)
    cpu="max,pauth-impdef=on",
    console="ttyAMA0",
    setup_script="setup-arm64-lane.sh",
)

X86_64 = Lane(
    arch="x86_64",
    deb_arch="amd64",
    triplet="x86_64-linux-gnu",
    wheel_platform="manylinux2014_x86_64",
    kernel_flavour="cloud-amd64",
    qemu_default=str(qemu_x86_dir() / "qemu-system-x86_64"),
    qemu_env="KVMRIG_QEMU_X86_64",
    # -vga none: a serial console only; -L: SeaBIOS and linuxboot_dma.bin from
    # Debian's packages (the build installs no firmware of its own)
    machine=("-M", "pc", "-accel", "tcg", "-vga", "none",
             "-L", "/usr/share/seabios", "-L", "/usr/share/qemu"),
    # max: SVM under TCG (VMX does not work there), so the guest's KVM is kvm_amd
    cpu="max",
    console="ttyS0",
    setup_script="setup-x86-lane.sh",
    modules=("irqbypass.ko", "kvm.ko", "kvm-amd.ko"),
    # pytest runs kvmrig's x86 debug tests inside this lane (unicorn: those that compare with the emulator)
    extra_wheels=("pytest==8.3.5", "pluggy==1.6.0", "iniconfig==2.1.0", "packaging==25.0", "unicorn==2.1.4"),
)

LANES: dict[str, Lane] = {lane.arch: lane for lane in (ARM64, X86_64)}


def lane_for(arch: str) -> Lane:
    try:
        return LANES[arch]
    except KeyError:
        raise BackendUnavailable(f"no VM lane for {arch!r}; there are: {', '.join(LANES)}") from None
