"""VM reuse: a rig must not be able to tell whether its VM was fresh or reused.

The differential test runs every example rig plus guests written to scribble
on vCPU state (MSRs, CR0/CR4/CR8, EFER, DR0-DR7, the TSC, general registers)
and on memory the next rig also maps, in a fixed and in a shuffled order,
once with a fresh VM per rig and once through one VmPool, and compares the
complete final state of every rig: the outcome (exit, code, failures,
console, hits, registers) and the machine right after the run — on KVM
every byte of kvm_regs/kvm_sregs, every settable MSR but the running TSC,
XSAVE, XCRs, debug registers, vcpu events and MP state; on the emulator its
registers; on both a digest of every memory region.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmrig.backends.select import emu_factory, kvm_factory, NoBackend
from kvmrig.machine.plan import prepare
from kvmrig.arch import host_arch
from kvmrig.machine import snapfile
from kvmrig.machine.points import PointStore
from kvmrig.machine.reuse import VmPool, fresh_only, run_fresh, shape
from kvmrig.machine.session import RunOptions
from kvmrig.rig.load import load_rig
from kvmrig.collect import expand, is_rig_file

ROOT = Path(__file__).resolve().parents[2]
SCRIBBLERS = Path(__file__).parent / "scribblers"
GUESTS = ("scribble-cpu", "scribble-mem", "read-state")
#: guests on a PC machine (`machine: {pit: true}`): they share one kept VM
CHIP_GUESTS = ("scribble-chips", "read-chips")
LAPIC_TMCCT = 0x390   # the local APIC timer's current count: it runs on its own
MSR_IA32_TSC = 0x10
HOST = host_arch()
MSR_IA32_TSC_ADJUST = 0x3B

RIG = """kvmrig: 1
name: {name}
arch: x86_64
timeout: 5s
memory:
  - {{at: 0x0, size: 2M}}
images:
  - {{file: {name}.bin, at: 0x1000}}
devices:
  - {{type: exit, port: 0xf4}}
cpu: {{mode: long}}
expect: {{exit: {exit}}}
"""
CHIP_RIG = RIG.replace("arch: x86_64\n", "arch: x86_64\nbackend: kvm\nmachine: {{pit: true}}\n")


def _assemble(out: Path, name: str) -> Path:
    """Build a scribbler with binutils (scripts/setup.sh installs them)."""
    for tool in ("as", "ld", "objcopy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} (binutils) is missing: run scripts/setup.sh")
    obj, elf, binary = out / f"{name}.o", out / f"{name}.elf", out / f"{name}.bin"
    subprocess.run(["as", "--64", "--fatal-warnings", "-o", obj, SCRIBBLERS / f"{name}.S"], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "--build-id=none", "-nostdlib", "-static", "-N",
                    "-Ttext=0x1000", "-e", "_start", "-o", elf, obj], check=True, capture_output=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", elf, binary], check=True)
    return binary


@pytest.fixture(scope="module")
def scribbler_rigs(tmp_path_factory):
    out = tmp_path_factory.mktemp("scribblers")
    rigs = []
    for name in GUESTS:
        _assemble(out, name)
        path = out / f"{name}.yaml"
        path.write_text(RIG.format(name=name, exit="exit-code" if name == "read-state" else "hlt"))
        rigs.append(load_rig(path))
    for name in CHIP_GUESTS:
        _assemble(out, name)
        path = out / f"{name}.yaml"
        path.write_text(CHIP_RIG.format(name=name, exit="hlt"))
        rigs.append(load_rig(path))
    return rigs


#: rigs with `cpu.cpuid` (one-vCPU x86 KVM): a VM is kept per CPUID table, so
#: the two tables' rigs never share one. Table A or B: KVM's, plus leaf
#: 0x4fff0000 with eax 0x11 or 0x22, which the reader's CPUID returns (a B rig
#: on an A VM would end with 0x11). name: (guest, table)
CPUID_RIGS = {"cpuid-a-scribble-cpu": ("scribble-cpu", 0x11), "cpuid-a-reader": ("cpuid-reader", 0x11),
              "cpuid-b-reader": ("cpuid-reader", 0x22), "cpuid-a-read-state": ("read-state", 0x11),
              "cpuid-b-read-state": ("read-state", 0x22)}
CPUID_READER = "b8 00 00 ff 4f 31 c9 0f a2 f4"   # mov eax, 0x4fff0000; xor ecx, ecx; cpuid; hlt


@pytest.fixture(scope="module")
def cpuid_rigs(scribbler_rigs):
    out = Path(scribbler_rigs[0].path).parent   # the scribblers' binaries are there
    (out / "cpuid-reader.bin").write_bytes(bytes.fromhex(CPUID_READER))
    rigs = []
    for name, (guest, eax) in CPUID_RIGS.items():
        path = out / f"{name}.yaml"
        text = RIG.format(name=guest, exit="exit-code" if guest == "read-state" else "hlt")
        text = text.replace(f"name: {guest}\n", f"name: {name}\nbackend: kvm\n").replace(
            "cpu: {mode: long}", f"cpu: {{mode: long, cpuid: {{leaves: [{{leaf: 0x4fff0000, eax: {eax:#x}}}]}}}}")
        path.write_text(text)
        rigs.append(load_rig(path))
    return rigs


def _example_rigs(arch: str | None = None):
    paths = [p for p in expand([str(ROOT / "rigs")]) if is_rig_file(p)]
    rigs = [load_rig(p) for p in paths]
    return [r for r in rigs if arch is None or r.arch == arch]


def _observe(record: list):
    def inspect(backend, memory) -> None:
        state: dict = {"regs": backend.get_regs()}
        capture = getattr(backend, "capture_cpu", None)
        if capture is not None and backend.name == "kvm":
            cpu = capture()
            state["kvm_regs"], state["kvm_sregs"] = cpu.regs, cpu.sregs
            # The TSC runs, and a guest's write to it sets TSC_ADJUST to a
            # time-dependent difference: both are checked by read-state instead.
            state["msrs"] = {i: v for i, v in cpu.msrs.items() if i not in (MSR_IA32_TSC, MSR_IA32_TSC_ADJUST)}
            blobs = dict(cpu.blobs)
            if "xsave" in blobs:
                # XSTATE_BV bits 0-1 (x87, SSE "in use") are the CPU's init
                # optimisation: KVM_SET_XSAVE of init-state registers sets the
                # SSE bit, a fresh vCPU has it clear. Same register values; only
                # XGETBV(1), which this KVM does not even emulate, could tell.
                x = bytearray(blobs["xsave"])
                x[512] &= ~3
                blobs["xsave"] = bytes(x)
            if "lapic" in blobs:   # machine: rigs: their local APIC's timer counts on its own
                x = bytearray(blobs["lapic"])
                x[LAPIC_TMCCT:LAPIC_TMCCT + 4] = bytes(4)
                blobs["lapic"] = bytes(x)
            state["blobs"] = blobs
            chips = dict(cpu.vm_blobs)
            if "pit2" in chips:   # when each counter was (re)loaded: host time
                x = bytearray(chips["pit2"])
                for ch in range(3):
                    at = _PIT_LOAD_TIME + ch * _PIT_CHANNEL
                    x[at:at + 8] = bytes(8)
                chips["pit2"] = bytes(x)
            state["chips"] = chips
        state["regs"].pop("tsc", None)
        state["memory"] = {b.start: _digest(b.buf) for b in memory.backings}
        record.append(state)
    return inspect


def _pit_layout() -> tuple[int, int]:
    from kvmrig.backends.kvm import abi
    size = abi.ffi.sizeof("struct kvm_pit_channel_state")
    return abi.ffi.offsetof("struct kvm_pit_channel_state", "count_load_time"), size


_PIT_LOAD_TIME, _PIT_CHANNEL = _pit_layout()


def _digest(buf) -> str:
    """SHA-256 over a region's non-zero pages and where they are (the same
    bytes give the same digest; zero pages cost a fast compare only)."""
    h = hashlib.sha256()
    for off, data in snapfile.runs_of(buf):
        h.update(off.to_bytes(8, "little") + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _summary(outcome) -> dict:
    return {"exit": outcome.exit, "code": outcome.exit_code, "console": outcome.console,
            "failures": [str(f) for f in outcome.failures], "hits": outcome.hit_counts,
            "steps": outcome.steps, "detail": outcome.detail}


class _ReadOnlyPoints(PointStore):
    """Children read the points their parents saved once, before the
    comparison; the parents' own runs during it do not overwrite them (a
    U-Boot snapshot holds timer readings: two boots differ)."""

    def save(self, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    """Every example parent run once, its points saved."""
    folder = tmp_path_factory.mktemp("points")
    store = PointStore(folder)
    for rig in _example_rigs():
        if rig.save_points() and rig.start is None:
            factory = (kvm_factory if rig.arch == HOST else emu_factory)(rig)
            run_fresh(prepare(rig), factory, RunOptions(points=store))
    return _ReadOnlyPoints(folder)


def _run_all(rigs, factory_for, reuse: bool, points=None):
    """[(name, summary, observed state, ran on a reused VM, its VM was refused after)], and the pool."""
    results = []
    pool = VmPool(limit=64) if reuse else None   # every shape kept: each rig after its shape's first is reused
    options = RunOptions(points=points)
    try:
        for rig in rigs:
            plan = prepare(rig)
            seen: list = []
            run = pool.execute if pool else run_fresh
            reused, refused = (pool.reused, pool.refused) if pool else (0, 0)
            outcome = run(plan, factory_for(rig), options, _observe(seen))
            flags = (pool.reused > reused, pool.refused > refused) if pool else (False, False)
            results.append((rig.name, _summary(outcome), seen[0], *flags))
        return results, pool
    finally:
        if pool is not None:
            pool.close()


def _diff(a: dict, b: dict) -> dict:
    """{part: how it differs} between two observed states, short enough to read."""
    out = {}
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            out[key] = _diff(x, y)
        elif isinstance(x, bytes) and isinstance(y, bytes) and len(x) == len(y):
            out[key] = [f"byte {i}: {x[i]:#x} vs {y[i]:#x}" for i in range(len(x)) if x[i] != y[i]][:8]
        else:
            out[key] = (x, y)
    return out


# Guests whose run ends at the rig's timeout in the middle of timer-driven
# waits: their final state (registers, mode, halted or not) is where the clock
# found them, different in any two runs on a loaded machine. They have
# their own memory map, so the pool never reuses their VM in one pass; what
# matters is that the rigs run after them end identically, which is compared.
ENDS_ON_THE_CLOCK = {"seabios-debian"}


def _differential(rigs, factory_for, order: str, points=None) -> None:
    if order == "shuffled":
        rigs = list(rigs)
        random.Random(15).shuffle(rigs)
    fresh, _ = _run_all(rigs, factory_for, reuse=False, points=points)
    again, _ = _run_all(rigs, factory_for, reuse=False, points=points)
    reused, pool = _run_all(rigs, factory_for, reuse=True, points=points)
    assert pool.reused >= len(rigs) // 2, f"the pool reused only {pool.reused} VMs for {len(rigs)} rigs"
    _check_reused(rigs, reused)
    diffs, noisy = [], {}
    for (name, f_out, f_state, *_f), (_, a_out, a_state, *_a), (_, r_out, r_state, *_r) in zip(fresh, again, reused):
        # What differs between two fresh VMs is the guest's own nondeterminism
        # (SeaBIOS and U-Boot keep timer readings in RAM): not comparable.
        noise = _diff({"outcome": f_out, **f_state}, {"outcome": a_out, **a_state})
        if noise:
            noisy[name] = sorted(noise)
        if name in ENDS_ON_THE_CLOCK:
            # Its end state is where the timeout found it; its verdict still
            # may not depend on the VM, and the rigs after it are compared.
            if (f_out["exit"], f_out["failures"]) != (r_out["exit"], r_out["failures"]):
                diffs.append(f"{name}: verdict differs fresh vs reused: {f_out['exit']} {f_out['failures']}"
                             f" vs {r_out['exit']} {r_out['failures']}")
            continue
        delta = _diff({"outcome": f_out, **f_state}, {"outcome": r_out, **r_state})
        for key in set(delta) - set(noise):
            diffs.append(f"{name}: final {key} differs fresh vs reused: {delta[key]}")
    assert not diffs, "\n".join(diffs)
    # Only guests known to depend on time may be noisy: U-Boot only in memory
    # (timer readings); those that end on the clock anywhere.
    assert all(name in ENDS_ON_THE_CLOCK or name.startswith("u-boot") for name in noisy) and \
        all(v == ["memory"] for name, v in noisy.items() if name not in ENDS_ON_THE_CLOCK), noisy


def _check_reused(rigs, results) -> None:
    """Every rig that is not fresh-only ran on a kept VM when one of its shape
    was left by an earlier rig (and not refused): `machine:` rigs too."""
    kept, missed, machines, cpuids = set(), [], 0, 0
    for rig, (name, _out, _state, reused, refused) in zip(rigs, results):
        if fresh_only(rig):
            assert not reused, f"{name} is fresh-only but ran on a reused VM"
            continue
        if shape(rig) in kept and not reused:
            missed.append(name)
        machines += reused and rig.machine.irqchip
        cpuids += reused and rig.cpu is not None and rig.cpu.cpuid is not None
        (kept.discard if refused else kept.add)(shape(rig))
    assert not missed, f"ran on a fresh VM though one of their shape was kept: {missed}"
    if any(r.machine.irqchip and not fresh_only(r) for r in rigs):
        assert machines >= 2, f"only {machines} rigs with `machine:` ran on a reused VM"
    if sum(r.cpu is not None and r.cpu.cpuid is not None for r in rigs) >= 3:
        assert cpuids >= 2, f"only {cpuids} rigs with `cpu.cpuid` ran on a reused VM"


def _kvm_rigs(scribbler_rigs, cpuid_rigs=()):
    return _example_rigs("x86_64") + scribbler_rigs + list(cpuid_rigs)


@pytest.mark.kvm
@pytest.mark.parametrize("order", ["fixed", "shuffled"])
def test_fresh_and_reused_kvm_vms_end_every_rig_identically(scribbler_rigs, cpuid_rigs, points, order):
    rigs = [r for r in _kvm_rigs(scribbler_rigs, cpuid_rigs) if r.backend in ("any", "kvm")]
    _differential(rigs, kvm_factory, order, points)


@pytest.mark.kvm
def test_cpuid_rigs_share_a_kept_vm_only_with_the_same_table(cpuid_rigs):
    """Which cpuid rig ran on a kept VM: the first of each table on a new one,
    every later one of the same table on that table's kept VM; each reader
    sees its own table's leaf, as on a new VM."""
    results, pool = _run_all(cpuid_rigs, kvm_factory, reuse=True)
    reused = {name: flag for name, _out, _state, flag, _refused in results}
    assert reused == {"cpuid-a-scribble-cpu": False, "cpuid-a-reader": True, "cpuid-b-reader": False,
                      "cpuid-a-read-state": True, "cpuid-b-read-state": True}, reused
    assert pool.created == 2 and pool.refused == 0
    eax = {name: state["regs"]["rax"] for name, _out, state, *_f in results if name.endswith("reader")}
    assert eax == {"cpuid-a-reader": 0x11, "cpuid-b-reader": 0x22}
    assert all(out["failures"] == [] for _n, out, *_r in results), [out["failures"] for _n, out, *_r in results]


#: rigs/x86 examples that set up KVM guest debugging, and plain ones that run before them
DEBUG_RIGS = ("single-step", "bp-hw-range", "bp-sw-on-hit", "bp-mixed", "bp-elf-symbols",
              "watch-read", "watch-write")
PLAIN_RIGS = ("serial-hello", "fib", "long-mode", "debugcon", "exit-code", "memory-table", "elf-symbols")


@pytest.mark.kvm
def test_debug_rigs_on_reused_vms_end_as_on_fresh_ones():
    """Single-step, hardware and software breakpoint and watch rigs, each on a
    VM another rig used (a plain one, then the debug rig before it), end
    exactly as on a fresh VM. On VMX/SVM KVM single-step once stepped nothing
    on a reused VM (its registers were still staged in kvm_run when
    KVM_SET_GUEST_DEBUG took the RIP to step from): the x86 lane runs this
    test on the native debug path (tests/invm/test_x86_lane.py)."""
    rigs = {p.stem: load_rig(p) for p in (ROOT / "rigs" / "x86").glob("*.yaml")}
    fresh = {name: _summary(run_fresh(prepare(rigs[name]), kvm_factory(rigs[name]))) for name in DEBUG_RIGS}
    assert all(not f["failures"] for f in fresh.values()), fresh
    before = list(zip(PLAIN_RIGS, DEBUG_RIGS)) + list(zip(DEBUG_RIGS[-1:] + DEBUG_RIGS[:-1], DEBUG_RIGS))
    pool = VmPool()
    diffs = []
    try:
        for first, name in before:
            assert shape(rigs[first]) == shape(rigs[name])
            refused = pool.refused
            pool.execute(prepare(rigs[first]), kvm_factory(rigs[first]))
            reused = pool.reused
            outcome = pool.execute(prepare(rigs[name]), kvm_factory(rigs[name]))
            if pool.refused == refused:   # `first` left its VM to reuse (a rig that stepped does not)
                assert pool.reused == reused + 1, f"{name} after {first} ran on a fresh VM"
            delta = _diff(fresh[name], _summary(outcome))
            if delta:
                diffs.append(f"{name} after {first}: fresh vs reused: {delta}")
        assert pool.reused >= len(PLAIN_RIGS), pool.reused
    finally:
        pool.close()
    assert not diffs, "\n".join(diffs)


@pytest.mark.kvm
def test_a_rig_after_a_scribbler_sees_a_clean_machine(scribbler_rigs):
    """The reader's own verdict: exit code 0 means nothing leaked (TSC, STAR,
    DR7, EFER.SCE, CR8, memory), after every scribbler, on one reused VM."""
    by_name = {r.name: r for r in scribbler_rigs}
    pool = VmPool()
    try:
        codes = []
        for name in ("read-state", "scribble-cpu", "read-state", "scribble-mem", "read-state"):
            outcome = pool.execute(prepare(by_name[name]), kvm_factory(by_name[name]))
            if name == "read-state":
                codes.append(outcome.exit_code)
        assert pool.created == 1 and pool.reused == 4
        assert codes == [0, 0, 0]
    finally:
        pool.close()


@pytest.mark.kvm
def test_a_scribbler_really_scribbles(scribbler_rigs):
    """Without a reset the reader sees the scribbles (so the test above can fail)."""
    by_name = {r.name: r for r in scribbler_rigs}
    pool = VmPool()
    try:
        pool.execute(prepare(by_name["scribble-mem"]), kvm_factory(by_name["scribble-mem"]))
        kept = next(iter(pool._kept.values()))
        kept.backend.reset = lambda: None            # sabotage: no vCPU reset
        kept.backend.dirty_ranges = lambda: []       # and no memory reset
        pool.execute(prepare(by_name["scribble-cpu"]), kvm_factory(by_name["scribble-cpu"]))
        outcome = pool.execute(prepare(by_name["read-state"]), kvm_factory(by_name["read-state"]))
        # STAR, DR7, CR8 and memory leak; EFER is part of every rig's boot state.
        assert outcome.exit_code == 2 | 4 | 16 | 32
    finally:
        pool.close()


def _read_chips_after(by_name, first: str, sabotage=None) -> tuple[dict, int]:
    """read-chips's registers on the VM `first` left (reset between them), and
    how many VMs the pool reused."""
    pool = VmPool()
    try:
        pool.execute(prepare(by_name[first]), kvm_factory(by_name[first]))
        if sabotage is not None:
            sabotage()
        outcome = pool.execute(prepare(by_name["read-chips"]), kvm_factory(by_name["read-chips"]))
        assert not outcome.failures, outcome.failures
        return {r: outcome.regs[r] for r in CHIP_REGS}, pool.reused
    finally:
        pool.close()


CHIP_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9")


@pytest.mark.kvm
def test_a_pc_machine_after_a_chip_scribbler_reads_as_new(scribbler_rigs, monkeypatch):
    """The PICs' masks, the PIT's modes, an IOAPIC entry and the local APIC's
    TPR, SVR and timer a guest changed are back as created for the next rig
    on the reused VM; with reset()'s restore of the chips left out (mutation)
    the reader sees the scribbles, so this and the differential can fail."""
    by_name = {r.name: r for r in scribbler_rigs}
    out = run_fresh(prepare(by_name["read-chips"]), kvm_factory(by_name["read-chips"]))
    fresh_regs = {r: out.regs[r] for r in CHIP_REGS}
    after, reused = _read_chips_after(by_name, "scribble-chips")
    assert reused == 1, "read-chips did not run on the kept PC machine"
    assert after == fresh_regs, {r: (hex(fresh_regs[r]), hex(after[r])) for r in CHIP_REGS if after[r] != fresh_regs[r]}
    from kvmrig.backends.kvm import x86_state
    monkeypatch.setattr(x86_state, "restore_chips", lambda vm, state: None)   # PICs, IOAPIC, PIT kept
    real_restore = x86_state.restore

    def without_lapic(vcpu, state, reuse=False):   # and the LAPIC and MP state
        blobs = {k: v for k, v in state.blobs.items() if k != "lapic"} if reuse else state.blobs
        real_restore(vcpu, x86_state.X86CpuState(state.regs, state.sregs, state.msrs, blobs, state.taken,
                                                 state.tsc_khz, state.vm_blobs), reuse)
    leaked, _ = _read_chips_after(by_name, "scribble-chips")
    changed = {r for r in CHIP_REGS if leaked[r] != fresh_regs[r]}
    assert {"rax", "rbx", "rcx"} <= changed, changed   # PIC masks, PIT modes, IOAPIC entry
    monkeypatch.setattr(x86_state, "restore", without_lapic)
    leaked, _ = _read_chips_after(by_name, "scribble-chips")
    changed = {r for r in CHIP_REGS if leaked[r] != fresh_regs[r]}
    # The local APIC's LVT timer and SVR (its TPR comes back with CR8, the
    # timer's count and divider with the x2APIC MSRs KVM lets the host write).
    assert {"rdx", "rdi"} <= changed, changed


def _emu_rigs(scribbler_rigs):
    return _example_rigs() + scribbler_rigs


@pytest.mark.parametrize("order", ["fixed", "shuffled"])
def test_fresh_and_reused_emulators_end_every_rig_identically(scribbler_rigs, points, order):
    try:
        emu_factory(scribbler_rigs[0])
    except NoBackend as e:
        pytest.fail(f"the emulator backend is part of the project's setup: {e}")
    rigs = [r for r in _emu_rigs(scribbler_rigs) if r.backend in ("any", "emu")]
    # The KVM-saved points of x86 parents do not load on the emulator: those
    # children are compared on KVM above.
    rigs = [r for r in rigs if r.start is None or r.arch != HOST]
    _differential(rigs, emu_factory, order, points)


@pytest.mark.kvm
def test_a_timeout_on_a_kept_vm_after_another_vm_closed(tmp_path):
    """Closing one kept VM must not take the SIGALRM handler from another (a
    timeout there once killed the worker). In a child process: SIGALRM with no
    handler would kill it, not the test run."""
    script = tmp_path / "two.py"
    script.write_text(f"""
import sys
from pathlib import Path
from kvmrig.backends.select import kvm_factory
from kvmrig.machine.plan import prepare
from kvmrig.machine.reuse import VmPool
from kvmrig.rig.load import load_rig, load_rig_text
timeout = load_rig({str(ROOT / "rigs" / "x86" / "timeout.yaml")!r})
other = load_rig_text(Path({str(ROOT / "rigs" / "x86" / "fib.yaml")!r}).read_text().replace("size: 2M", "size: 4M"),
                      {str(ROOT / "rigs" / "x86" / "fib4m.yaml")!r})
pool = VmPool(limit=1)
for rig in (timeout, other, timeout):   # the 2nd closes the 1st VM (limit 1) ...
    out = pool.execute(prepare(rig), kvm_factory(rig))
print(out.exit, pool.created)
""")
    import os
    import sys
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["timeout", "3"]


def test_rigs_with_a_gic_or_several_vcpus_get_a_fresh_vm():
    """arm64 `gic:` (the vGIC's state is not reset) and `cpus:` rigs are never
    kept or reused; plain arm64 rigs are (the arm64 lane's differential runs
    them on kept VMs: tests/machine/arm64_reuse_checks.py)."""
    from kvmrig.machine.reuse import fresh_only
    kvm_rigs = ROOT / "rigs-kvm" / "arm64"
    assert fresh_only(load_rig(kvm_rigs / "timer-irq.yaml"))        # gic: {}
    assert fresh_only(load_rig(kvm_rigs / "smp-psci.yaml"))         # cpus: 2
    assert not fresh_only(load_rig(ROOT / "rigs" / "arm64" / "sysregs.yaml"))


def test_x86_pc_machines_are_kept_apart_from_plain_vms():
    """A one-vCPU x86 `machine:` is kept and reused (reset() writes its chips
    back), but only for rigs with the same machine: a plain VM and one with
    the in-kernel irqchip and PIT have different shapes. `cpus:` > 1 stays
    fresh-only."""
    x86 = ROOT / "rigs" / "x86"
    pit, plain = load_rig(x86 / "pit-ticks.yaml"), load_rig(x86 / "fib.yaml")
    assert not fresh_only(pit)
    assert fresh_only(load_rig(x86 / "smp-counter.yaml"))
    assert [r.memory[0].size for r in (pit, plain)] == [2 << 20] * 2   # the same memory map
    assert shape(pit) != shape(plain)
