"""The arm64 KVM backend on REAL arm64 KVM, inside the arm64 VM of kvmrig.invm.

An x86_64 host has no arm64 KVM, so this module boots the arm64 Debian VM
of kvmrig.invm (qemu-system-aarch64, TCG, virtualization=on: the VM has its
own /dev/kvm) ONCE and runs three things in it:

1. `python3 -m kvmrig run rigs/arm64 rigs-kvm/arm64 --backend kvm --junit out.xml -j 1`:
   every example rig must pass, on KVM (JUnit counts, names and the backend
   property checked here);
2. the same command on "mutants", copies of some rigs with one expectation
   made wrong on purpose: each must FAIL with the expected-vs-actual line
   that names the wrong check, so a passing rig means the check really ran;
3. tests/backends/kvm/arm64_vm_checks.py, which drives the backend directly
   (registers round trip incl. sp at EL1h vs sp_el0 and v0's 128 bits, watch
   hits in the middle of ranges, breakpoints on MMIO instructions and in
   loops, a foreign BRK handed back to the guest's VBAR_EL1 handler) and
   writes one JSON record per check.

Skipped only where qemu-system-aarch64 is absent (scripts/setup-arm64-lane.sh
installs it). The first run builds the VM's base image (cached under
~/.cache/kvmrig/arm64). Timings (boot, per rig) are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig.backends.kvm import abi
from kvmrig.invm import qemu as invm_qemu
from tests.invm.reporting import report_line
from tests.machine import arm64_reuse_lane as reuse_lane

QEMU = os.environ.get(invm_qemu.QEMU_ENV) or invm_qemu.DEFAULT_QEMU
ROOT = Path(__file__).resolve().parents[3]
ARM64_RIGS = ROOT / "rigs" / "arm64"
KVM_RIGS = ROOT / "rigs-kvm" / "arm64"   # rigs only real arm64 KVM runs (GICv3, timer, several vCPUs)
CHECKS = Path(__file__).with_name("arm64_vm_checks.py")
VM_TIMEOUT = 900.0

pytestmark = [
    pytest.mark.arm64vm,
    pytest.mark.skipif(shutil.which(QEMU) is None,
                       reason=f"{QEMU} is not installed (run scripts/setup-arm64-lane.sh)"),
]

# Rigs with one expectation made wrong, and the failure text each must produce.
# (rig, text to replace, replacement, words the JUnit <failure> must contain)
MUTANTS = [
    ("hw-breakpoint", "hits: 10 ", "hits: 11 ", "hits: expected 11, got 10"),
    ("sw-breakpoint", "x21: {range: [0, 11]}", "x21: {range: [1, 11]}", "x21: expected in [1, 0xb"),
    ("watchpoint", 'value: "0x0000333300000000"', 'value: "0x0000444400000000"', "watched value"),
    ("single-step", "steps: 5", "steps: 6", "steps: expected 6, got 5"),
    ("guest-brk", "x21: 1 ", "x21: 2 ", "register x21: expected 2, got 1"),
    ("psci-off", "\n  exit: system-off ", "\n  exit: exit-code ", "exit: expected exit-code, got system-off"),
    # the second vCPU really ran: it wrote the context id CPU_ON gave it
    ("smp-psci", "u64: 0x5eed}", "u64: 0x5eee}", "memory at 0x40008008"),
    # ten timer interrupts, each one hit of the handler's breakpoint
    ("timer-irq", "hits: 10 ", "hits: 9 ", "hits: expected 9, got 10"),
    # two vCPUs, one breakpoint: every turn of both counted, exactly
    ("smp-breakpoint", "hits: 200}", "hits: 201}", "hits: expected 201, got 200"),
]

COMMAND = r"""
set +e
python3 -m kvmrig run rigs/arm64 rigs-kvm/arm64 --backend kvm --junit out.xml -j 1 > rigs.log 2>&1
echo $? > rigs.status
python3 -m kvmrig run mutants --backend kvm --junit mutants.xml -j 1 > mutants.log 2>&1
echo $? > mutants.status
python3 arm64_vm_checks.py checks.json > checks.log 2>&1
echo $? > checks.status
python3 -m kvmrig snapshot uboot/boot.yaml#at-prompt -o kvm.snap --backend kvm > snap.log 2>&1
echo $? > snap.status
python3 -m kvmrig run fromkvm --backend kvm --json fromkvm.json --junit '' -j 1 > fromkvm.log 2>&1
echo $? > fromkvm.status
python3 -m kvmrig run fromemu --backend kvm --json fromemu.json --junit '' -j 1 > fromemu.log 2>&1
echo $? > fromemu.status
python3 - > snapfiles.log 2>&1 <<'PY'
# kvmrig snapshot twice and kvmrig run, in one interpreter (each start costs seconds under TCG)
from kvmrig.cli import main
for name, argv in (("gicsnap", ["snapshot", "rigs-kvm/arm64/gic-snap.yaml#ticking", "-o", "gic.snap"]),
                   ("smpsnap", ["snapshot", "rigs-kvm/arm64/smp-snap.yaml#secondary-on", "-o", "smp.snap"]),
                   ("fromfiles", ["run", "fromfiles", "--json", "fromfiles.json", "--junit", "", "-j", "1"])):
    code = main(argv + ["--backend", "kvm"])
    open(f"{name}.status", "w").write(f"{code}\n")
PY
cat rigs.log checks.log snap.log fromkvm.log fromemu.log snapfiles.log
""" + reuse_lane.COMMAND
FETCH = ["out.xml", "rigs.status", "rigs.log", "mutants.xml", "mutants.status", "mutants.log",
         "checks.json", "checks.status", "checks.log", "kvm.snap", "snap.status", "snap.log",
         "fromkvm.json", "fromkvm.status", "fromkvm.log", "fromemu.json", "fromemu.status", "fromemu.log",
         "gic.snap", "gicsnap.status", "smp.snap", "smpsnap.status", "fromfiles.json", "fromfiles.status",
         "snapfiles.log", *reuse_lane.FETCH]

# Cross-backend snapshots on arm64: Debian's U-Boot saved at its prompt on the
# VM's KVM runs these children on the host's emulator, and saved on the host's
# emulator runs them on the VM's KVM; each must end as on the backend that
# took the snapshot (exit, console, general registers).
UBOOT = ROOT / "rigs" / "firmware" / "u-boot"
UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
CROSS_CHILDREN = ("version", "md", "mw-md", "crc32", "setexpr", "itest-true")


def _children_from(folder: Path, snap: str) -> None:
    """CROSS_CHILDREN copied into `folder`, starting from the file `snap` (beside the folder)."""
    folder.mkdir()
    for child in CROSS_CHILDREN:
        text = (UBOOT / f"{child}.yaml").read_text()
        assert text.count("from: boot.yaml#at-prompt") == 1
        (folder / f"{child}.yaml").write_text(text.replace("from: boot.yaml#at-prompt", f"from: ../{snap}"))


def _uboot_parent(folder: Path) -> None:
    """boot.yaml with its images beside it (shipped into the VM)."""
    folder.mkdir()
    text = (UBOOT / "boot.yaml").read_text()
    text = text.replace(f"file: {UBOOT_BIN}", "file: u-boot.bin").replace("file: ../u-boot-arm64.dtb",
                                                                          "file: u-boot-arm64.dtb")
    assert "file: u-boot.bin" in text and "file: u-boot-arm64.dtb" in text
    (folder / "boot.yaml").write_text(text)
    shutil.copy(UBOOT_BIN, folder / "u-boot.bin")
    shutil.copy(ROOT / "rigs" / "firmware" / "u-boot-arm64.dtb", folder / "u-boot-arm64.dtb")


# Snapshot files of a `gic:` machine and of two vCPUs (kvmrig snapshot in the
# VM), and children that start from those files instead of the parent rigs.
FILE_CHILDREN = {"gic-snap-ticking": ("gic-snap.yaml#ticking", "gic.snap"),
                 "smp-snap-secondary-on": ("smp-snap.yaml#secondary-on", "smp.snap")}


def _file_children(folder: Path) -> None:
    folder.mkdir()
    for child, (point, snap) in FILE_CHILDREN.items():
        text = (KVM_RIGS / f"{child}.yaml").read_text()
        assert text.count(f"from: {point}") == 1
        (folder / f"{child}.yaml").write_text(text.replace(f"from: {point}", f"from: ../{snap}"))


def _mutants(folder: Path) -> None:
    """Write the MUTANTS rigs into `folder`, their images taken from ../rigs/arm64/guests."""
    folder.mkdir()
    for rig, old, new, _why in MUTANTS:
        source = ARM64_RIGS / f"{rig}.yaml"
        text = (source if source.exists() else KVM_RIGS / f"{rig}.yaml").read_text()
        assert text.count(old) == 1, f"{rig}.yaml: {old!r} must occur exactly once to mutate it"
        text = text.replace(old, new).replace("file: guests/", "file: ../rigs/arm64/guests/") \
            .replace("file: ../../rigs/arm64/guests/", "file: ../rigs/arm64/guests/")
        text = text.replace("kvmrig: 1\n", f"kvmrig: 1\nname: mutant-{rig}\n", 1)
        (folder / f"{rig}.yaml").write_text(text)


class Lane:
    """What one VM boot brought back."""

    def __init__(self, result, seconds: float):
        self.result = result
        self.seconds = seconds
        self.files = result.files_back
        self.work = Path()   # the host folder of the files shipped in

    def text(self, name: str) -> str:
        assert name in self.files, (f"{name} did not come back from the VM: {self.result.error or ''}\n"
                                    f"{self.result.output[-3000:]}")
        return self.files[name].decode("utf-8", "replace")

    def status(self, name: str) -> int:
        return int(self.text(f"{name}.status").strip())

    def junit(self, name: str) -> ET.Element:
        return ET.fromstring(self.files[name])


@pytest.fixture(scope="module")
def lane(request, tmp_path_factory) -> Lane:
    work = tmp_path_factory.mktemp("arm64vm")
    mutants = work / "mutants"
    _mutants(mutants)
    files = [("rigs/arm64", str(ARM64_RIGS)), ("rigs-kvm/arm64", str(KVM_RIGS)), ("mutants", str(mutants)),
             ("arm64_vm_checks.py", str(CHECKS))]
    _file_children(work / "fromfiles")
    files.append(("fromfiles", str(work / "fromfiles")))
    if UBOOT_BIN.is_file():   # the cross-backend U-Boot part (u-boot-qemu is in scripts/setup.sh)
        _uboot_parent(work / "uboot")
        _children_from(work / "fromkvm", "kvm.snap")
        _children_from(work / "fromemu", "emu.snap")
        subprocess.run([sys.executable, "-m", "kvmrig", "snapshot", f"{work / 'uboot' / 'boot.yaml'}#at-prompt",
                        "-o", str(work / "emu.snap"), "--backend", "emu"], check=True, capture_output=True,
                       timeout=120)
        files += [("uboot", str(work / "uboot")), ("fromkvm", str(work / "fromkvm")),
                  ("fromemu", str(work / "fromemu")), ("emu.snap", str(work / "emu.snap"))]
    try:   # the fresh-vs-reused differential (its own test fails if this could not be built)
        reuse_lane.build(work / "reuse-arm64")
        files += [("reuse-arm64", str(work / "reuse-arm64")), ("arm64_reuse_checks.py", str(reuse_lane.SCRIPT))]
    except (RuntimeError, subprocess.CalledProcessError) as e:
        report_line(request, f"arm64 reuse differential not shipped: {e}")
    t0 = time.monotonic()
    result = invm_qemu.run_in_vm(COMMAND, files=files, fetch=FETCH, timeout=VM_TIMEOUT)
    lane = Lane(result, time.monotonic() - t0)
    lane.work = work
    boot = f"{result.boot_seconds:.1f}s" if result.boot_seconds is not None else "?"
    cmd = f"{result.command_seconds:.1f}s" if result.command_seconds is not None else "?"
    report_line(request, f"arm64 VM: boot {boot}, commands {cmd}, total {lane.seconds:.1f}s")
    if "out.xml" in lane.files:
        cases = lane.junit("out.xml").iter("testcase")
        report_line(request, "arm64 rigs in the VM: " + ", ".join(
            f"{c.get('name')} {float(c.get('time', 0)) * 1000:.0f}ms" for c in cases))
    if result.error:
        pytest.fail(f"the arm64 VM run did not complete:\n{result.error}")
    return lane


# --- 1. the example rigs ------------------------------------------------------

def test_every_arm64_rig_passes(lane):
    log = lane.text("rigs.log")
    assert lane.status("rigs") == 0, f"kvmrig run rigs/arm64 failed in the VM:\n{log}"
    root = lane.junit("out.xml")
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    rigs = sorted(p.stem for p in (*ARM64_RIGS.glob("*.yaml"), *KVM_RIGS.glob("*.yaml")))
    assert int(suite.get("tests")) == len(rigs) >= 11
    for counter in ("failures", "errors", "skipped"):
        assert int(suite.get(counter, 0)) == 0, f"{counter} in out.xml:\n{log}"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert sorted(cases) == rigs
    for name, case in cases.items():
        assert case.get("classname") in ("rigs.arm64", "rigs-kvm.arm64")
        assert case.find("failure") is None and case.find("error") is None and case.find("skipped") is None, name
        backend = {p.get("name"): p.get("value") for p in case.iter("property")}.get("backend")
        assert backend in (None, "kvm"), f"{name} ran on {backend}, not on the VM's KVM"
    assert "Hello from arm64 EL1 over PL011" in (cases["pl011-hello"].findtext("system-out") or "")


# --- 2. wrong expectations fail -------------------------------------------------

def test_wrong_expectations_fail_with_the_check_named(lane):
    log = lane.text("mutants.log")
    assert lane.status("mutants") == 1, f"the mutant rigs must fail (exit status 1):\n{log}"
    suite = lane.junit("mutants.xml")
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert int(suite.get("failures")) == len(MUTANTS) and int(suite.get("errors", 0)) == 0, log
    for rig, _old, _new, why in MUTANTS:
        failure = cases[f"mutant-{rig}"].find("failure")
        assert failure is not None, f"mutant-{rig} passed although its rig was made wrong"
        text = (failure.get("message") or "") + (failure.text or "")
        assert why in text, f"mutant-{rig}: expected the failure to say {why!r}, it says:\n{text}"


# --- 3. the backend, driven directly --------------------------------------------

def _check_names() -> list[str]:
    names = []
    for line in CHECKS.read_text().splitlines():
        if line.startswith("def check_"):
            names.append(line[len("def check_"):line.index("(")])
    return names


def test_backend_checks_all_reported(lane):
    results = json.loads(lane.text("checks.json"))
    assert sorted(results) == sorted(_check_names())
    assert lane.status("checks") == (0 if all(r["ok"] for r in results.values()) else 1)


@pytest.mark.parametrize("check", _check_names())
def test_backend_check(lane, check, record_property):
    results = json.loads(lane.text("checks.json"))
    res = results.get(check)
    assert res is not None, f"{check} did not run:\n{lane.text('checks.log')}"
    record_property("seconds", res.get("seconds"))
    facts = {k: v for k, v in res.items() if k not in ("ok", "detail")}
    assert res["ok"], f"{check} failed in the arm64 VM: {res.get('detail')}\nfacts: {facts}"


def test_watch_hit_in_the_middle_of_a_range_is_attributed(lane):
    res = json.loads(lane.text("checks.json"))["watch_middle"]
    assert res["ok"], res.get("detail")
    assert res["value_at_report"] == "0xdeadbeef", "the hit is reported after the store completed"


def test_foreign_brk_reaches_the_guest_handler(lane):
    res = json.loads(lane.text("checks.json"))["foreign_brk"]
    assert res["ok"], res.get("detail")
    assert res["esr_el1"] == "0xf2000007"


# --- 4. snapshots across backends (U-Boot at its prompt) -------------------------

def _records(path: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(path.read_text())["rigs"]}


def _same_end(got: dict, want: dict) -> None:
    """Two runs of a child end alike: exit, console and general registers."""
    assert got["status"] == "passed", (got["name"], got.get("failures"), got.get("message"))
    assert got["exit"] == want["exit"], got["name"]
    assert got["console"] == want["console"], got["name"]
    regs = [f"x{n}" for n in range(31)] + ["pc", "sp"]
    assert {r: got["regs"][r] for r in regs} == {r: want["regs"][r] for r in regs}, got["name"]


def _run_on_host_emu(folder: Path, out: Path) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-m", "kvmrig", "run", str(folder), "--backend", "emu", "--json",
                           str(out), "--junit", "", "-j", "1"], capture_output=True, text=True, timeout=300,
                          cwd=folder.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _records(out)


@pytest.mark.skipif(not UBOOT_BIN.is_file(), reason="u-boot-qemu is not installed (scripts/setup.sh)")
def test_a_kvm_u_boot_snapshot_runs_its_children_on_the_emulator_as_on_kvm(lane):
    assert lane.status("snap") == 0, lane.text("snap.log")
    assert lane.status("fromkvm") == 0, lane.text("fromkvm.log")
    (lane.work / "kvm.snap").write_bytes(lane.files["kvm.snap"])
    on_kvm = {r["name"]: r for r in json.loads(lane.text("fromkvm.json"))["rigs"]}
    on_emu = _run_on_host_emu(lane.work / "fromkvm", lane.work / "fromkvm-emu.json")
    assert sorted(on_emu) == sorted(on_kvm) and len(on_emu) == len(CROSS_CHILDREN)
    for name, record in on_emu.items():
        assert record["backend"] == "emu" and on_kvm[name]["backend"] == "kvm"
        _same_end(record, on_kvm[name])


@pytest.mark.skipif(not UBOOT_BIN.is_file(), reason="u-boot-qemu is not installed (scripts/setup.sh)")
def test_an_emulator_u_boot_snapshot_runs_its_children_on_kvm_as_on_the_emulator(lane):
    assert lane.status("fromemu") == 0, lane.text("fromemu.log")
    on_kvm = {r["name"]: r for r in json.loads(lane.text("fromemu.json"))["rigs"]}
    on_emu = _run_on_host_emu(lane.work / "fromemu", lane.work / "fromemu-emu.json")
    assert sorted(on_emu) == sorted(on_kvm) and len(on_kvm) == len(CROSS_CHILDREN)
    for name, record in on_kvm.items():
        assert record["backend"] == "kvm"
        _same_end(record, on_emu[name])


# --- 5. snapshot files of machines with a GICv3 or two vCPUs ---------------------

def test_a_gic_snapshot_file_records_the_machine_and_the_gics_state(lane, tmp_path):
    """gic-snap saved in its timer handler: the header names the GIC, the GIC
    part holds what the guest programmed (KVM's own readouts)."""
    from kvmrig.errors import SnapshotError
    from kvmrig.machine import snapfile
    assert lane.status("gicsnap") == 0, lane.text("snapfiles.log")
    path = tmp_path / "gic.snap"
    path.write_bytes(lane.files["gic.snap"])
    head = snapfile.read_header(path)
    assert head.machine == {"cpus": 1, "gic": {"version": 3, "distributor": 0x08000000,
                                               "redistributor": 0x080A0000, "irqs": 288}}
    snap = snapfile.read(path)
    gic = snap.cpu["gic"]
    cpu = gic["cpus"][0]
    assert int(gic["dist"]["GICD_CTLR"], 16) & 0x12 == 0x12                     # ARE, group 1 on
    enabled = int(cpu["redist"]["GICR_ISENABLER0"], 16)
    assert enabled & 0xFFFF0000 == 1 << 27 and enabled & 1 << 1                  # timer and SGI 1 (KVM: SGIs always)
    assert int(cpu["redist"]["GICR_ISACTIVER0"], 16) == 1 << 27                  # saved in the timer's handler
    assert int(cpu["redist"]["GICR_IPRIORITYR0"], 16) == 0x4000                  # SGI 1 at 0x40
    assert int(cpu["redist"]["GICR_IPRIORITYR6"], 16) >> 24 == 0x80              # INTID 27 at 0x80
    assert int(cpu["icc"]["ICC_PMR_EL1"], 16) == 0xF0 and int(cpu["icc"]["ICC_IGRPEN1_EL1"], 16) == 1
    assert any(int(v, 16) for k, v in cpu["icc"].items() if k.startswith("ICC_AP1R")), \
        "the active interrupt's priority is in an active priority register"
    # The emulator has neither a GIC nor it state: loading it there is refused, not run on vCPU 0 alone.
    from kvmrig.backends import emu
    if emu.unavailable() is None:
        from kvmrig.machine import snapshot
        from kvmrig.machine.memory import Memory
        from kvmrig.rig.load import load_rig_text
        memory = Memory(load_rig_text("kvmrig: 1\narch: arm64\nmemory: [{at: 0x40000000, size: 64K}]\n").memory)
        with emu.backend_class("arm64")() as backend:
            for b in memory.backings:
                backend.map_memory(b.start, b.buf, b.region.rom)
            with pytest.raises(SnapshotError, match="has a GICv3 .*loads only one-vCPU machines without a GIC"):
                snapshot.put(snap, backend, memory)


def test_a_two_vcpu_snapshot_file_records_both(lane, tmp_path):
    from kvmrig.machine import snapfile
    assert lane.status("smpsnap") == 0, lane.text("snapfiles.log")
    path = tmp_path / "smp.snap"
    path.write_bytes(lane.files["smp.snap"])
    snap = snapfile.read(path)
    assert snap.machine == {"cpus": 2, "gic": None}
    vcpu1 = snap.cpu["secondaries"][0]
    assert int(vcpu1["mp_state"][:8], 16) == 0                                   # running (not PSCI-off)
    x0 = hex(abi.arm64_core_reg("regs", "regs", 0))
    assert int(vcpu1["one_reg"][x0], 16) == 0x5EED                               # CPU_ON's context id


def test_children_of_those_files_end_as_the_uninterrupted_runs(lane):
    assert lane.status("fromfiles") == 0, lane.text("snapfiles.log")
    records = {r["name"]: r for r in json.loads(lane.text("fromfiles.json"))["rigs"]}
    assert sorted(records) == sorted(FILE_CHILDREN)
    for name, record in records.items():
        assert record["status"] == "passed" and record["backend"] == "kvm", (name, record.get("failures"))


# --- 6. VM reuse: fresh and reused arm64 VMs end every rig identically ---------------

def test_fresh_and_reused_arm64_vms_end_every_rig_identically(lane, request):
    """tests/machine/arm64_reuse_checks.py: the differential, what KVM_ARM_VCPU_INIT resets, --no-reuse."""
    results = json.loads(lane.text("reuse.json"))
    report_line(request, "arm64 fresh-vs-reused differential in the VM (s): " + json.dumps(
        {o: v.get("seconds") for o, v in results.get("differential", {}).get("orders", {}).items()}))
    reuse_lane.check(results, with_uboot=UBOOT_BIN.is_file())
    assert lane.status("reuse") == 0, lane.text("reuse.log")[-3000:]
