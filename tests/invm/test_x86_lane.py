"""The native x86 debug path (INT3 intercepted by KVM, DR0-DR3 breakpoints and
watchpoints), for real, in the x86_64 VM lane of kvmrig.invm.

This machine's KVM (kvm_pvm, say) may intercept neither INT3 nor data
breakpoints, so `auto` takes the HLT and page-trap fallbacks here and the
native path would never run. The lane boots Debian's amd64 cloud kernel under
the QEMU that scripts/setup-x86-lane.sh builds with kvmrig's patch (TCG,
-cpu max: nested SVM); its kvm_amd does both. One boot runs, with
KVMRIG_KVM_DEBUG=native for the whole run:

* tests/machine/test_debug_kvm.py (every test, `auto` = native and `trap`),
* tests/backends/kvm/test_system.py (the ABI-level debug tests that are
  strict xfails on kvm_pvm must pass here),
* tests/backends/kvm/test_x86_smp.py (breakpoints and DR watchpoints on every vCPU),
* tests/test_examples.py for every rigs/x86 example,

and a plugin (tests/invm/x86_lane_tally.py) counts per test the debug exits
the backend took natively, so the run says how many tests hit INT3 and the
debug registers for real. The same boot then runs the Debian kernel rig
(rigs-kvm/linux-x86_64: Debian's amd64 cloud kernel to its initramfs marker;
scripts/setup-linux-guest.sh fetched it), which on kvm_pvm cannot get past the
kernel's FPU setup. A second boot runs `kvmrig run --in-vm x86_64` on
rigs/x86 reached through a symlinked folder, as a user would.

Skipped only where the lane's QEMU is absent (KVMRIG_REQUIRE_KVM=1 makes that
a failure). Timings are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmrig import linuxguest
from kvmrig.errors import BackendUnavailable
from kvmrig.invm import qemu as invm_qemu
from kvmrig.invm.lanes import X86_64
from tests.invm.reporting import report_line

ROOT = Path(__file__).resolve().parents[2]
VM_TIMEOUT = 900.0


def _lane_missing() -> str | None:
    try:
        X86_64.qemu_binary()
    except BackendUnavailable as e:
        return str(e)
    return None


MISSING = _lane_missing()
pytestmark = [pytest.mark.x86vm, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

SELECT = "not firmware and not both_arches and not arm64"
#: debug rigs on reused VMs (single-step there once stepped nothing on SVM KVM)
REUSE_TEST = "tests/machine/test_reuse.py::test_debug_rigs_on_reused_vms_end_as_on_fresh_ones"
#: `bounded SECONDS LOG COMMAND...`: run COMMAND (output to LOG) in the background;
#: if it is still running after SECONDS, append every Python process's stacks
#: (faulthandler, on SIGABRT) to LOG and end it, so that a hang in the VM comes
#: back as a diagnosis in LOG instead of the whole VM timing out blind.
BOUNDED = """
bounded() {
  limit=$1; log=$2; shift 2
  : > "$log"
  "$@" >> "$log" 2>&1 &   # appending: the note below is not overwritten by the stacks
  pid=$!; waited=0
  while kill -0 $pid 2>/dev/null && [ $waited -lt $limit ]; do sleep 1; waited=$((waited + 1)); done
  if kill -0 $pid 2>/dev/null; then
    echo "still running after ${limit}s: the Python stacks of every process follow" >> "$log"
    for d in /proc/[0-9]*; do grep -q python3 "$d/cmdline" 2>/dev/null && kill -ABRT "${d#/proc/}"; done
    sleep 5
  fi
  wait $pid
}
"""
COMMAND = BOUNDED + f"""
set +e
bounded 360 pytest.log env KVMRIG_KVM_DEBUG=native KVMRIG_NATIVE_TALLY=tally.json python3 -X faulthandler -m pytest \
  -p no:cacheprovider -p tests.invm.x86_lane_tally -q -rfE --junitxml=pytest.xml \
  tests/machine/test_debug_kvm.py tests/backends/kvm/test_system.py tests/backends/kvm/test_x86_smp.py \
  tests/test_examples.py \
  {REUSE_TEST} -k "{SELECT}"
echo $? > pytest.status
tail -5 pytest.log
"""
LINUX_RIGS = "rigs-kvm/linux-x86_64"
LINUX_COMMAND = f"""
bounded 420 linux.log python3 -X faulthandler -m kvmrig run -j 1 --junit "" --json linux.json {LINUX_RIGS}
echo $? > linux.status
tail -3 linux.log
"""
LINUX_FETCH = ["linux.json", "linux.log", "linux.status"]
LINUX_MARKER = "KVMRIG-LINUX-BOOTED"
FETCH = ["pytest.xml", "pytest.log", "pytest.status", "tally.json"]
#: tests/backends/kvm/test_system.py: strict xfails on kvm_pvm, passes on a KVM with the native path
PVM_XFAILS = ("test_sw_breakpoint", "test_hw_watchpoint")


@pytest.fixture(scope="module")
def lane(request):
    t0 = time.monotonic()
    files = [(str(ROOT / p), str(ROOT / p)) for p in ("tests", "pyproject.toml", "rigs/x86")]
    # the Debian kernel and initramfs (in kvmrig's cache; scripts/setup.sh ran this already)
    setup = subprocess.run([str(ROOT / "scripts" / "setup-linux-guest.sh")], capture_output=True, text=True,
                           timeout=1800)
    linux_error = None if setup.returncode == 0 else f"scripts/setup-linux-guest.sh failed:\n{setup.stderr}"
    command, fetch = COMMAND, FETCH
    if linux_error is None:
        files.append((str(ROOT / LINUX_RIGS), str(ROOT / LINUX_RIGS)))
        command, fetch = COMMAND + LINUX_COMMAND, FETCH + LINUX_FETCH
    result = invm_qemu.run_in_vm(command, files=files, fetch=fetch, timeout=VM_TIMEOUT,
                                 workdir=str(ROOT), lane=X86_64)
    seconds = time.monotonic() - t0
    boot = f"{result.boot_seconds:.1f}s" if result.boot_seconds is not None else "?"
    cmd = f"{result.command_seconds:.1f}s" if result.command_seconds is not None else "?"
    report_line(request, f"\nx86_64 VM lane: boot {boot}, tests {cmd}, total {seconds:.1f}s")
    if result.error:
        pytest.fail(f"the x86_64 VM run did not complete:\n{result.error}")
    for name in FETCH:
        assert name in result.files_back, f"{name} did not come back:\n{result.output[-3000:]}"
    tally = json.loads(result.files_back["tally.json"])
    cases = list(ET.fromstring(result.files_back["pytest.xml"]).iter("testcase"))
    int3 = sorted(t for t, v in tally.items() if v.get("int3"))
    dr_exec = sorted(t for t, v in tally.items() if v.get("dr-exec"))
    dr_watch = sorted(t for t, v in tally.items() if v.get("dr-watch"))
    rigs = [t for t in tally if "test_example_rig_passes[x86/" in t]
    native_rigs = [t for t in rigs if any(tally[t].get(k) for k in ("int3", "dr-exec", "dr-watch"))]
    report_line(request, f"x86_64 VM lane, native debug path: {len(cases)} tests ran "
                     f"({len(rigs)} of them rigs/x86 examples); {len(int3)} hit INT3 natively, "
                     f"{len(dr_exec)} DR instruction breakpoints, {len(dr_watch)} DR watchpoints; "
                     f"{len(native_rigs)} example rigs used the native path")
    if "linux.json" in result.files_back:
        linux = json.loads(result.files_back["linux.json"])["rigs"]
        report_line(request, "x86_64 VM lane, Debian kernel rig: " + ", ".join(
            f"{r['name']} {r['status']} (exit {r['exit']['reason']}) in {r['duration']:.1f}s" for r in linux))
    return {"result": result, "tally": tally, "cases": cases, "int3": int3, "dr_exec": dr_exec,
            "dr_watch": dr_watch, "rigs": rigs, "linux_error": linux_error}


def _failures(cases) -> list[str]:
    out = []
    for c in cases:
        for tag in ("failure", "error"):
            el = c.find(tag)
            if el is not None:
                out.append(f"{c.get('classname')}::{c.get('name')}: {(el.get('message') or '')[:300]}")
    return out


def test_every_x86_debug_test_passes_on_the_native_path(lane):
    r = lane["result"]
    log = r.files_back["pytest.log"].decode(errors="replace")
    assert _failures(lane["cases"]) == [], log[-4000:]
    assert int(r.files_back["pytest.status"]) == 0, log[-4000:]
    skips = [(c.get("name"), c.find("skipped")) for c in lane["cases"] if c.find("skipped") is not None]
    skipped = [name for name, el in skips if el.get("type") != "pytest.xfail"]
    assert skipped == [], f"skipped in the lane: {skipped}"
    # xfails left are kvmrig's own known bugs (the emulator's, say), none pinned on kvm_pvm
    pvm = [name for name, el in skips if "kvm_pvm" in (el.get("message") or "")]
    assert pvm == [], f"kvm_pvm xfails still expected to fail in the lane: {pvm}"
    names = {c.get("name") for c in lane["cases"]}
    # both paths of the debug tests ran
    assert any("[auto" in n for n in names) and any("[trap" in n for n in names)


def test_the_native_path_really_ran(lane):
    # INT3 planted and intercepted, DR0-DR3 as breakpoints and as watchpoints:
    # each in many tests, not one lucky one
    assert len(lane["int3"]) >= 10, lane["int3"]
    assert len(lane["dr_exec"]) >= 10, lane["dr_exec"]
    assert len(lane["dr_watch"]) >= 10, lane["dr_watch"]
    # the trap half plants HLT and traps pages instead (`kind: hw` uses DR0-DR3 in both)
    trap = [t for t in lane["int3"] + lane["dr_watch"] if "[trap" in t]
    assert trap == []


def test_pvm_strict_xfails_pass_here(lane):
    by_name = {c.get("name"): c for c in lane["cases"]}
    for name in PVM_XFAILS:
        case = by_name.get(name)
        assert case is not None, f"{name} did not run in the lane"
        assert case.find("failure") is None and case.find("skipped") is None


def test_every_x86_example_rig_ran(lane):
    examples = sorted(p.name for p in (ROOT / "rigs" / "x86").glob("*.yaml"))
    ran = sorted(t.split("[x86/")[1].rstrip("]") for t in lane["rigs"])
    assert ran == examples
    assert all(lane["tally"][t]["outcome"] == "passed" for t in lane["rigs"])


def test_debug_rigs_on_reused_vms_pass_natively(lane):
    """Single-step, INT3, DR breakpoint and DR watch rigs on VMs other rigs used
    end as on fresh VMs on SVM KVM (kvm_pvm hides this: it steps differently)."""
    node = [t for t in lane["tally"] if t.endswith(REUSE_TEST.split("/")[-1])]
    assert len(node) == 1, sorted(lane["tally"])
    hits = lane["tally"][node[0]]
    assert hits["outcome"] == "passed", lane["result"].files_back["pytest.log"].decode(errors="replace")[-4000:]
    assert all(hits.get(k) for k in ("int3", "dr-exec", "dr-watch")), hits


def test_debian_kernel_boots_to_its_initramfs_marker(lane):
    """Debian's amd64 cloud kernel as a rig (rigs-kvm/linux-x86_64: vmlinux at
    its 64-bit entry, zero page, initrd, KVM's irqchip and PIT) on the lane's
    SVM KVM: its /init prints the marker and reboots, a triple fault."""
    if lane["linux_error"]:
        pytest.fail(lane["linux_error"])
    back = lane["result"].files_back
    for name in LINUX_FETCH:
        assert name in back, f"{name} did not come back:\n{lane['result'].output[-3000:]}"
    log = back["linux.log"].decode(errors="replace")
    assert int(back["linux.status"]) == 0, log[-4000:]
    rig, = json.loads(back["linux.json"])["rigs"]
    assert (rig["name"], rig["status"]) == ("debian-x86_64-linux", "passed"), log[-4000:]
    assert rig["exit"]["reason"] == "shutdown", rig["exit"]
    console = rig["console"]
    # the machine the kernel found: KVM's leaves (kvm-clock), the 16550 on IRQ 4, kvmrig's e820 map
    for words in ("Hypervisor detected: KVM", "clocksource: Switched to clocksource kvm-clock",
                  "serial8250: ttyS0 at I/O 0x3f8 (irq = 4", "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
                  "Run /init as init process"):
        assert words in console, words
    # a breakpoint on an ELF symbol of the vmlinux (kallsyms, added by setup): hit once, in DR0
    start = next(int(line.split()[0], 16) for line in
                 (linuxguest.cache_dir() / linuxguest.SYMBOLS).read_text().splitlines()
                 if line.endswith(" T start_kernel"))
    assert rig["hit_counts"] == {f"breakpoint[0] at sym:start_kernel ({start:#x})": 1}, rig["hit_counts"]
    # user space wrote the marker through the tty (the UART's interrupts), then the reboot
    assert console.index("Run /init as init process") < console.index(LINUX_MARKER) < \
        console.index("reboot: Restarting system")


def test_in_vm_cli_through_a_symlinked_folder(tmp_path):
    """`kvmrig run --in-vm x86_64` on rigs/x86 reached through a symlink to the
    folder (the rigs find their images through it, as they do locally)."""
    link = tmp_path / "linked"
    link.symlink_to(ROOT / "rigs" / "x86", target_is_directory=True)
    junit = tmp_path / "junit.xml"
    env = dict(os.environ, KVMRIG_KVM_DEBUG="native")
    r = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "x86_64", "--junit", str(junit),
                        str(link)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    examples = sorted(p.stem for p in (ROOT / "rigs" / "x86").glob("*.yaml"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in examples:
        assert f"PASS  {link}/{name}.yaml::" in r.stdout, r.stdout
    assert f"{len(examples)} passed" in r.stdout
    assert "wall time" in r.stderr                     # the honest host-side time, always
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert len(cases) == len(examples)


def test_in_vm_forwards_coverage_strict_and_no_reuse(tmp_path):
    """--coverage, --strict and --no-reuse reach the run inside the x86_64 VM:
    the coverage of a DWARF guest comes back to the host's DIR (and the run's
    line names it), and an arm64 rig the x86 KVM cannot run fails the run."""
    out = tmp_path / "cov"
    r = subprocess.run([sys.executable, "-m", "kvmrig", "run", "--in-vm", "x86_64", "--junit", "", "-j", "1",
                        "--coverage", str(out), "--strict", "--no-reuse",
                        "rigs/x86/cov-checksum.yaml", "rigs/x86/cov-dispatch.yaml", "rigs/arm64/exit-code.yaml"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "PASS  rigs/x86/cov-checksum.yaml::" in r.stdout and "PASS  rigs/x86/cov-dispatch.yaml::" in r.stdout
    assert "SKIP  rigs/arm64/exit-code.yaml::" in r.stdout, r.stdout
    assert "--strict: 1 skipped rig(s) count as failures" in r.stdout + r.stderr
    assert f"coverage: {out}/coverage.info" in r.stdout, r.stdout
    info = (out / "coverage.info").read_text()
    assert "x86/guests/cov-checksum.c" in info and "x86/guests/cov-dispatch.c" in info
    assert "FNDA:1,crc_byte" in info and "FNDA:0,empty" in info   # ran, and never ran
