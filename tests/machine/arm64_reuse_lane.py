"""Host side of the arm64 fresh-vs-reused differential (issue 15): builds
the scribbler rigs shipped into the arm64 lane's boot (tests/backends/kvm/
test_arm64.py) and checks what tests/machine/arm64_reuse_checks.py wrote
there (its docstring says what each part proves)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
SCRIPT = HERE / "arm64_reuse_checks.py"
SOURCES = HERE / "scribblers" / "arm64"
#: guest name -> (how its run ends, expectations)
GUESTS = {
    # the SVC's syndrome; the last register it sets
    "scribble-cpu": ("system-off", "  regs: {esr_el1: 0x56000077, x30: 0x101e}\n"),
    "power-off": ("timeout", ""),
    "read-state": ("system-off", "  regs: {x10: 0, x11: 0, x12: 0, x15: 0, x16: 0, x17: 0, x20: 0, x21: 0}\n"),
}
#: U-Boot children (from the lane's KVM snapshot file) in the differential: quick ones, one writing memory
UBOOT_CHILDREN = ("version", "mw-md", "crc32")

RIG = """kvmrig: 1
name: arm64-{name}
arch: arm64
timeout: {timeout}
memory:
  - {{at: 0x40000000, size: 64K}}
images:
  - {{file: arm64-{name}.bin, at: 0x40000000}}
expect:
  exit: {exit}
{more}"""


def build(folder: Path) -> None:
    """The scribbler rigs and their images (aarch64 binutils: scripts/setup.sh) in `folder`."""
    folder.mkdir()
    prefix = "aarch64-linux-gnu-"
    for tool in ("as", "ld", "objcopy"):
        if shutil.which(prefix + tool) is None:
            raise RuntimeError(f"{prefix}{tool} is missing: run scripts/setup.sh (binutils-aarch64-linux-gnu)")
    for name, (exit_, more) in GUESTS.items():
        obj, elf = folder / f"{name}.o", folder / f"{name}.elf"
        subprocess.run([prefix + "as", "--fatal-warnings", "-o", obj, SOURCES / f"{name}.S"], check=True)
        subprocess.run([prefix + "ld", "--build-id=none", "-nostdlib", "-static", "-N", "-Ttext=0x40000000",
                        "-e", "_start", "-o", elf, obj], check=True, capture_output=True)
        subprocess.run([prefix + "objcopy", "-O", "binary", "-j", ".text", elf, folder / f"arm64-{name}.bin"],
                       check=True)
        obj.unlink()
        elf.unlink()
        timeout = "300ms" if exit_ == "timeout" else "5s"
        (folder / f"arm64-{name}.yaml").write_text(RIG.format(name=name, timeout=timeout, exit=exit_, more=more))


#: The lane's command (tests/backends/kvm/test_arm64.py runs it in its boot, after the U-Boot snapshot):
#: every arm64 example rig, the scribblers and, where the KVM U-Boot snapshot exists, a few of its children.
COMMAND = (
    "python3 arm64_reuse_checks.py reuse.json reuse-arm64 rigs/arm64/*.yaml rigs-kvm/arm64/*.yaml reuse-arm64/*.yaml"
    f" $(ls {' '.join(f'fromkvm/{c}.yaml' for c in UBOOT_CHILDREN)} 2>/dev/null) > reuse.log 2>&1\n"
    "echo $? > reuse.status\n")
FETCH = ["reuse.json", "reuse.status", "reuse.log"]


def check(results: dict, with_uboot: bool) -> None:
    """Every part passed and proved what it says."""
    for part in ("reinit", "differential", "no_reuse"):
        assert results.get(part, {}).get("ok"), f"{part} failed in the arm64 VM: {results.get(part)}"
    re = results["reinit"]
    assert re["ran"] == "SystemEvent" and re["changed"] > 150, re
    # KVM_ARM_VCPU_INIT leaves only what reset() writes back, and reset() leaves nothing
    assert re["init_leaves_outside_keeps"] == [], re
    assert re["init_leaves"], "the init reset every register: INIT_KEEPS would be unneeded"
    assert re["after_reset_differ"] == [] and re["mp_state_after_reset"] == 0, re
    assert re["events_as_created_after_reset"] and re["reusable"], re
    # KVM_ARM_VCPU_INIT leaves a pending SError (Linux 6.12): such a VM is refused, closed by the pool
    assert re["serror_pending"] == 1 and re["reusable_with_serror"] is False, re
    # the counter runs on from a new VM's value (CNTVOFF rewritten), not from the old VM's
    assert re["counter_after_reset"] < re["counter_before_reset"], re
    diff = results["differential"]
    names = diff["rigs"]
    assert {"arm64-scribble-cpu", "arm64-power-off", "arm64-read-state"} <= set(names)
    assert sum(n.startswith("u-boot") or n in UBOOT_CHILDREN for n in names) >= (len(UBOOT_CHILDREN) if with_uboot
                                                                                 else 0), names
    for order, o in diff["orders"].items():
        assert o["diffs"] == [], f"{order} order:\n" + "\n".join(o["diffs"])
        assert not o["failures"], f"{order}: rigs failed on fresh VMs: {o['failures']}"
        pool = o["pool"]
        assert pool["reused"] >= len(o["sequence"]) // 2, (order, pool)
    # Only U-Boot's RAM (timer readings) may differ between two fresh runs, and
    # rigs that are fresh-only anyway (`gic:`: timer-irq ends where its timer
    # interrupts found it); what runs after them on kept VMs is still compared.
    fresh = set(diff["orders"]["fixed"]["fresh_only"])
    assert {"timer-irq", "pl011-irq", "smp-psci", "smp-breakpoint"} <= fresh, fresh
    assert all(v == ["memory"] for n, v in diff["noisy"].items() if n not in fresh), diff["noisy"]
    nr = results["no_reuse"]
    assert nr["reuse"]["status"] == 0 and nr["--no-reuse"]["status"] == 0, nr
    assert nr["--no-reuse"]["vms"] >= nr["rigs"] > nr["reuse"]["vms"] >= 1, nr
