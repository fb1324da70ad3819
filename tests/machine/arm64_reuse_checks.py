"""Fresh vs reused arm64 KVM VMs, run INSIDE the arm64 lane (no pytest there).

tests/backends/kvm/test_arm64.py ships this file into the lane's existing
boot and runs `python3 arm64_reuse_checks.py reuse.json RIGS...`; the host
test (tests/machine/arm64_reuse_lane.py) asserts on the JSON it writes:

* "differential": every rig given (the arm64 example rigs, the scribblers of
  tests/machine/scribblers/arm64, U-Boot children from a snapshot file) in a
  fixed order (scribble-cpu before every other rig) and in a shuffled one,
  once with a fresh VM per rig and once through one VmPool; the complete
  final state of each rig is compared: the outcome (exit, failures, console,
  hits, steps) and the machine right after the run — every ONE_REG register
  of KVM_GET_REG_LIST but the running counters (core, FP/SIMD, system,
  debug, timer CTL/CVAL and firmware registers), the MP state, the vCPU
  events (pending SError/abort) and a digest of every memory region. A
  second fresh pass shows the guests' own nondeterminism (U-Boot keeps
  timer readings in RAM): only what differs fresh vs fresh too is excused.
* "reinit": what KVM_ARM_VCPU_INIT on a vCPU that ran resets: every
  register the host can change is changed, the vCPU reset, and the
  registers that did not come back from the bare init must all be in
  arm64.INIT_KEEPS (which reset() writes back); after reset() every
  register, the events and the MP state are as created, and the counter
  (CNTVOFF) restarts near a new VM's value. A virtual SError left pending
  is not withdrawn by the init: reusable() must refuse such a VM.
* "no_reuse": `kvmrig run` over the scribbler rigs creates one VM with
  reuse and one per rig with --no-reuse (KVM_CREATE_VM counted).

Speed (reset by re-init vs writing every register, a new VM) is measured by
bench/arm64_reset.py (bench/run.py --only arm64), never here.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

from kvmrig.arch.arm64 import cpustate, onereg
from kvmrig.backends.kvm import arm64 as kvm_arm64
from kvmrig.backends.kvm import system
from kvmrig.backends.select import kvm_factory
from kvmrig.errors import KvmError
from kvmrig.machine import snapfile
from kvmrig.machine.plan import prepare
from kvmrig.machine.reuse import VmPool, fresh_only, run_fresh
from kvmrig.machine.session import RunOptions
from kvmrig.rig.load import load_rig

CLOCK_NAMES = ("cntvct_el0", "cntpct_el0")
CTL_ISTATUS = 1 << 2   # CNTx_CTL_EL0.ISTATUS: read-only, CVAL against the counter
TIMER_CTLS = (onereg.sys_reg(3, 3, 14, 3, 1), onereg.sys_reg(3, 3, 14, 2, 1))   # CNTV_CTL, CNTP_CTL


def _digest(buf) -> str:
    h = hashlib.sha256()
    for off, data in snapfile.runs_of(buf):
        h.update(off.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


# OSDTRRX_EL1: the guest reads it as zero (KVM traps it, RAZ/WI); what
# KVM_GET_ONE_REG returns for it is no vCPU state (on Linux 6.12 a host kernel
# address that differs with the ioctl's call path), so it is not compared.
NOT_STATE = (onereg.sys_reg(2, 0, 0, 2, 0),)


def _observe(record: list, fresh: bool):
    """The inspect hook of VmPool.execute / run_fresh: the machine's complete state after the run.

    A fresh VM's memory is then zeroed (after it was observed): under QEMU TCG
    (7.2) a new VM running code at the same guest address as an earlier one
    can fetch the earlier one's translated code (a stale translation found
    by virtual address, not invalidated since the old host page was freed,
    not written); a host write to the old page invalidates it. A reused VM
    needs nothing: the pool zeroes the pages the host wrote (images) and the
    guest dirtied, i.e. the old code pages, before the next rig."""
    def inspect(backend, memory) -> None:
        state: dict = {"regs": {k: hex(v) for k, v in dict(backend.get_regs()).items() if k not in CLOCK_NAMES}}
        backend.settle_io()
        vcpu = backend.vcpu
        one = {}
        for reg in vcpu.get_reg_list():
            if cpustate.is_clock(reg) or reg in NOT_STATE:
                continue
            try:
                one[cpustate.describe_id(reg) + f" {reg:#x}"] = hex(vcpu.get_one_reg(reg))
            except KvmError as e:
                one[f"{reg:#x}"] = f"errno {e.errno}"
        state["one_reg"] = one
        state["mp_state"] = vcpu.get_mp_state()
        state["events"] = vcpu.get_blob("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events").hex()
        state["memory"] = {hex(b.start): _digest(b.buf) for b in memory.backings}
        record.append(state)
        if fresh:
            for b in memory.backings:
                for off, data in list(snapfile.runs_of(b.buf)):
                    b.buf[off:off + len(data)] = bytes(len(data))
    return inspect


def _summary(outcome) -> dict:
    return {"exit": outcome.exit, "code": outcome.exit_code, "console": outcome.console,
            "failures": [str(f) for f in outcome.failures], "hits": {str(k): v for k, v in outcome.hit_counts.items()},
            "steps": outcome.steps, "detail": outcome.detail}


def _run_all(rigs, reuse: bool) -> tuple[list, dict]:
    pool = VmPool() if reuse else None
    results = []
    try:
        for rig in rigs:
            seen: list = []
            run = pool.execute if pool else run_fresh
            outcome = run(prepare(rig), kvm_factory(rig), RunOptions(), _observe(seen, fresh=not reuse))
            results.append((rig.name, {"outcome": _summary(outcome), **seen[0]}))
        stats = {"created": pool.created, "reused": pool.reused, "refused": pool.refused} if pool else {}
        return results, stats
    finally:
        if pool is not None:
            pool.close()


def _diff(a, b) -> dict:
    out = {}
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        out[key] = _diff(x, y) if isinstance(x, dict) and isinstance(y, dict) else [x, y]
    return out


def _orders(rigs: list, scribbler) -> dict[str, list]:
    """fixed: scribble-cpu before every other rig; shuffled: the same list, shuffled."""
    fixed = []
    for rig in rigs:
        fixed += [scribbler, rig]
    shuffled = list(fixed)
    random.Random(15).shuffle(shuffled)
    return {"fixed": fixed, "shuffled": shuffled}


def differential(rig_files: list[str]) -> dict:
    # children of a point of another rig need that run's point store (kvmrig run
    # keeps it); children of snapshot files (the U-Boot ones) run on their own
    rigs = [r for r in map(load_rig, rig_files) if r.start is None or r.start.parent is None]
    scribbler = next(r for r in rigs if r.name == "arm64-scribble-cpu")
    others = [r for r in rigs if r is not scribbler]
    out: dict = {"rigs": [r.name for r in rigs], "orders": {}}
    noise: dict[str, set] = {}
    for order, sequence in _orders(others, scribbler).items():
        t0 = time.perf_counter()
        fresh, _ = _run_all(sequence, reuse=False)
        t1 = time.perf_counter()
        if order == "fixed":   # the guests' own nondeterminism: two fresh passes
            again, _ = _run_all(sequence, reuse=False)
            for (name, f), (_, a) in zip(fresh, again):
                noise.setdefault(name, set()).update(_diff(f, a))
        t2 = time.perf_counter()
        reused, stats = _run_all(sequence, reuse=True)
        t3 = time.perf_counter()
        diffs = []
        for (name, f), (_, r) in zip(fresh, reused):
            delta = _diff(f, r)
            for key in sorted(set(delta) - noise.get(name, set())):
                diffs.append(f"{name}: final {key} differs fresh vs reused: {json.dumps(delta[key])[:600]}")
        out["orders"][order] = {"sequence": [n for n, _ in fresh], "diffs": diffs, "pool": stats,
                                "fresh_only": sorted({r.name for r in sequence if fresh_only(r)}),
                                "verdicts": {n: f["outcome"]["exit"] for n, f in fresh},
                                "failures": {n: f["outcome"]["failures"] for n, f in fresh
                                             if f["outcome"]["failures"]},
                                "seconds": {"fresh": round(t1 - t0, 2), "reused": round(t3 - t2, 2)}}
    out["noisy"] = {n: sorted(v) for n, v in noise.items() if v}
    return out


def _changed_value(vcpu, reg: int, value: int) -> int | None:
    """Set `reg` to something else KVM accepts; the value it then holds, or None."""
    width = 8 * max(1, (1 << ((reg >> 52) & 0xF)))
    mask = (1 << width) - 1
    for pattern in (mask, 1, 0x5a5a5a5a5a5a5a5a & mask, 0xF0, 1 << 12, 0x3c0):
        try:
            vcpu.set_one_reg(reg, (value ^ pattern) & mask)
        except (KvmError, ValueError):
            continue
        now = vcpu.get_one_reg(reg)
        if now != value:
            return now
    return None


def _istatus_only(vcpu, reg: int, pristine: dict[int, int]) -> bool:
    """A timer's CTL that differs only in ISTATUS (its CVAL differs: reset() writes CVAL back)."""
    return reg in TIMER_CTLS and vcpu.get_one_reg(reg) ^ pristine[reg] == CTL_ISTATUS


def reinit(scribble_bin: bytes) -> dict:
    """Which registers KVM_ARM_VCPU_INIT leaves as they were, on a vCPU that ran."""
    backend = kvm_arm64.KvmArm64Backend()
    mem = mmap.mmap(-1, 0x10000)
    try:
        backend.map_memory(0x40000000, mem, False)
        backend.keep_pristine()
        vcpu = backend.vcpu
        regs = [r for r in vcpu.get_reg_list() if cpustate.guest_writable(r)]
        pristine = {r: vcpu.get_one_reg(r) for r in regs}
        events = vcpu.get_blob("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events")
        mem[0:len(scribble_bin)] = scribble_bin
        backend.set_regs({"pstate": 0x3C5, "pc": 0x40000000})
        ran = backend.run(time.monotonic() + 10)
        backend.park()
        backend.settle_io()
        unchangeable = []
        for r in regs:
            if _changed_value(vcpu, r, vcpu.get_one_reg(r)) is None and vcpu.get_one_reg(r) == pristine[r]:
                unchangeable.append(cpustate.describe_id(r))
        changed = [r for r in regs if vcpu.get_one_reg(r) != pristine[r]]
        count_before = vcpu.get_one_reg(kvm_arm64.TIMER_CNT)
        reusable = backend.reusable()
        backend.reset()
        kept = [r for r in regs if vcpu.get_one_reg(r) != pristine[r]]
        count_after = vcpu.get_one_reg(kvm_arm64.TIMER_CNT)
        events_after = vcpu.get_blob("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events")
        # A virtual SError left pending (as KVM_SET_VCPU_EVENTS makes one;
        # PSTATE.A masks it): does the init withdraw it, and is such a VM refused?
        vcpu.set_blob("KVM_SET_VCPU_EVENTS", "struct kvm_vcpu_events", bytes([1]) + bytes(63))
        serror_pending = vcpu.get_blob("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events")[0]
        reusable_with_serror = backend.reusable()
        backend.reset()
        serror_after_init = vcpu.get_blob("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events")[0]
        # The same again with the bare ioctl: what the init itself leaves.
        for r in regs:
            _changed_value(vcpu, r, vcpu.get_one_reg(r))
        target, features = backend._vcpu_init
        vcpu.arm_vcpu_init(target, features)
        init_leaves = [r for r in regs if vcpu.get_one_reg(r) != pristine[r]]
        return {"ran": type(ran).__name__, "registers": len(regs), "changed": len(changed),
                "unchangeable_from_host": unchangeable,
                "init_leaves": [cpustate.describe_id(r) for r in init_leaves],
                # a timer's CTL differs only in ISTATUS while its CVAL does (reset() writes CVAL)
                "init_leaves_outside_keeps": [cpustate.describe_id(r) for r in init_leaves
                                              if r not in kvm_arm64.INIT_KEEPS and not _istatus_only(vcpu, r, pristine)],
                "after_reset_differ": [cpustate.describe_id(r) for r in kept],
                "mp_state_after_reset": vcpu.get_mp_state(),
                "events_as_created_after_reset": events_after == events, "reusable": reusable,
                "serror_pending": serror_pending, "reusable_with_serror": reusable_with_serror,
                "serror_pending_after_init": serror_after_init,
                "counter_before_reset": count_before, "counter_after_reset": count_after,
                "counter_pristine": backend._pristine.get(kvm_arm64.TIMER_CNT)}
    finally:
        backend.close()
        mem.close()


def no_reuse(folder: str) -> dict:
    """VMs created by `kvmrig run FOLDER` with and without --no-reuse."""
    from kvmrig import cli
    counts = {}
    original = system.Kvm.create_vm
    for flag in ("", "--no-reuse"):
        log = tempfile.NamedTemporaryFile(delete=False)
        log.close()

        def counted(self, *args, _log=log.name, **kwargs):
            with open(_log, "a") as f:
                f.write(f"{os.getpid()}\n")
            return original(self, *args, **kwargs)
        system.Kvm.create_vm = counted
        try:
            rc = cli.main(["run", folder, "--backend", "kvm", "-j", "1", "--junit", ""] + ([flag] if flag else []))
        finally:
            system.Kvm.create_vm = original
        counts[flag or "reuse"] = {"status": rc, "vms": len(Path(log.name).read_text().split())}
        os.unlink(log.name)
    counts["rigs"] = len([p for p in os.listdir(folder) if p.endswith(".yaml")])
    return counts


def main(argv: list[str]) -> int:
    out_path, scribblers, rig_files = argv[1], argv[2], argv[3:]
    scribble_bin = Path(scribblers, "arm64-scribble-cpu.bin").read_bytes()
    parts = {"reinit": lambda: reinit(scribble_bin), "differential": lambda: differential(rig_files),
             "no_reuse": lambda: no_reuse(scribblers)}
    results = {}
    for name, part in parts.items():
        t0 = time.perf_counter()
        try:
            results[name] = {"ok": True, **part()}
        except Exception as e:   # record and go on: the host test reports each part
            results[name] = {"ok": False, "detail": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {json.dumps(results[name])[:3000]}", flush=True)
    Path(out_path).write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
