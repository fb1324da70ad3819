"""Cross-checking: one rig on KVM and on the emulator, and every difference.

`kvmrig run --cross-check PATHS` runs each rig on both backends where both
can run it here (x86_64 rigs on an x86 host with /dev/kvm). Each run is
judged by the rig as usual, and then the two are compared:

* the exit and the exit code;
* the final general-purpose registers (GPRS below) except VOLATILE;
* the hit count of every breakpoint and watchpoint, and the step count;
* the console output;
* a SHA-256 of every declared RAM region at the end (ROM cannot change).

A rig fails when either run fails or anything above differs; each
difference is one failure line, "cross-check: <what>: kvm <a>, emu <b>".
Where only one backend can run the rig, or the rig pins `backend:`, it runs
on that one as usual and says it was not cross-checked.

VOLATILE: registers whose final value differs between KVM and the
emulator for the same correct guest. x86_64 `rflags` is left out because
the undefined flags (AF after logic ops, OF after multi-bit shifts, ...)
are computed differently by QEMU's TCG and by the silicon; arm64 has none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kvmrig.arch.arm64.regs import XREGS
from kvmrig.arch.x86_64.regs import GPRS as X86_GPRS
from kvmrig.backends.select import available_backends
from kvmrig.errors import BackendError, KvmrigError, RigError
from kvmrig.machine import golden
from kvmrig.machine.memory import Memory
from kvmrig.machine.outcome import Failure, Outcome, num
from kvmrig.machine.plan import Plan, prepare
from kvmrig.machine.session import RunOptions, execute
from kvmrig.machine.points import PointStore
from kvmrig.result import ERROR, RigResult, guarded, judged, result_for
from kvmrig.rig.model import Rig
from kvmrig.runner import run_rig

BACKENDS = ("kvm", "emu")
GPRS = {
    "x86_64": X86_GPRS + ("rip", "rflags"),
    "arm64": XREGS + ("sp", "pc"),
}
VOLATILE = {
    "x86_64": frozenset({"rflags"}),
    "arm64": frozenset(),
}


@dataclass
class Run:
    """One backend's run of the rig, with what a comparison needs."""

    backend: str
    outcome: Outcome
    digests: list[dict] = field(default_factory=list)   # golden.digests(): one per RAM region
    seconds: float = 0.0


def run_on(plan: Plan, backend: str, factory, options: RunOptions | None = None) -> Run:
    """The rig's run on one backend (the one run loop, machine/session.py),
    with the RAM digests taken before the memory goes away."""
    started = time.monotonic()
    digests: list[dict] = []

    def keep_digests(memory: Memory) -> None:
        digests.extend(golden.digests(plan.rig, memory.read))

    outcome = execute(plan, factory, options, after=keep_digests)
    return Run(backend, outcome, digests, time.monotonic() - started)


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return num(value)
    return str(value)


def differences(arch: str, a: Run, b: Run) -> list[Failure]:
    """Every way run `a` and run `b` differ, as failures (see the module doc)."""
    out: list[Failure] = []

    def diff(what: str, x, y) -> None:
        if x != y:
            out.append(Failure(f"cross-check: {what}", f"{a.backend} {_show(x)}", f"{b.backend} {_show(y)}"))

    oa, ob = a.outcome, b.outcome
    diff("exit", oa.exit, ob.exit)
    diff("exit code", oa.exit_code, ob.exit_code)
    for reg in GPRS[arch]:
        if reg not in VOLATILE[arch]:
            diff(f"register {reg}", oa.regs.get(reg), ob.regs.get(reg))
    for label in sorted(set(oa.hit_counts) | set(ob.hit_counts)):
        diff(f"{label} hits", oa.hit_counts.get(label), ob.hit_counts.get(label))
    diff("steps", oa.steps, ob.steps)
    if oa.console != ob.console:
        out.append(Failure("cross-check: console", f"{a.backend} {_tail(oa.console)}",
                           f"{b.backend} {_tail(ob.console)}"))
    ma = {(d["at"], d["size"]): d["sha256"] for d in a.digests}
    mb = {(d["at"], d["size"]): d["sha256"] for d in b.digests}
    for key in sorted(set(ma) | set(mb)):
        if ma.get(key) != mb.get(key):
            out.append(Failure(f"cross-check: RAM {key[0]}+{key[1]} sha256",
                               f"{a.backend} {str(ma.get(key))[:16]}", f"{b.backend} {str(mb.get(key))[:16]}"))
    return out


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return repr(text if len(text) <= 60 else "..." + text[-60:])


class _LoadOnly(PointStore):
    """The run's points for the second backend: children load from them, and
    a parent's points stay the ones the first backend (KVM) saved."""

    def save(self, rig, point, backend, memory, devices, ending=None):
        return None


def _snapshot_options(rig: Rig, update_golden: bool) -> tuple[RunOptions, RunOptions, str | None]:
    """RunOptions of the two runs: a parent saves its points from the first
    (KVM) run only, and a child starts both runs from that one snapshot, so
    the emulator's run loads KVM's state (cross-backend snapshots). A child
    checked alone runs its parent here first (runner.run_rig does the same).
    The third item: why the child cannot run, or None."""
    from kvmrig import runner

    points = runner._points_dir
    blocked = None
    if points is None and rig.start is not None and rig.start.parent is not None:
        points, blocked = runner._parent_in_process(rig, "kvm")
    if points is None:
        return RunOptions(update_golden=update_golden), RunOptions(update_golden=update_golden), blocked
    return (RunOptions(update_golden=update_golden, points=PointStore(points)),
            RunOptions(update_golden=update_golden, points=_LoadOnly(points)), blocked)


def cross_check(rig: Rig, update_golden: bool = False) -> RigResult:
    """Run `rig` on both backends and compare: the executor `kvmrig run
    --cross-check` gives the runner (runner.run_rigs). Never raises."""
    return guarded(rig, lambda: _cross_check(rig, update_golden))


def _cross_check(rig: Rig, update_golden: bool) -> RigResult:
    start = time.monotonic()
    plan = prepare(rig)
    avail = available_backends(rig)
    usable = [name for name in BACKENDS if not isinstance(avail[name], str)]
    if rig.backend != "any" or len(usable) < 2:
        result = run_rig(rig, rig.backend if rig.backend != "any" else "auto", update_golden)
        why = (f"the rig pins `backend: {rig.backend}`" if rig.backend != "any" else
               "; ".join(str(avail[n]) for n in BACKENDS if n not in usable))
        result.details.append(f"not cross-checked: {why}")
        return result
    first_options, second_options, blocked = _snapshot_options(rig, update_golden)
    if blocked:
        return result_for(rig, ERROR, message=blocked)
    runs: list[Run] = []
    for name, options in zip(BACKENDS, (first_options, second_options)):
        try:
            runs.append(run_on(plan, name, avail[name], options))
        except RigError:
            raise
        except KvmrigError as e:  # say which backend
            raise BackendError(f"{name}: {e}") from e
    first, second = runs
    outcome = first.outcome
    outcome.backend = "+".join(r.backend for r in runs)
    # The second run's own failures, where they are not the first's too.
    seen = {str(f) for f in first.outcome.failures}
    outcome.failures.extend(Failure(f"[{second.backend}] {f.what}", f.expected, f.actual, f.mark)
                            for f in second.outcome.failures if str(f) not in seen)
    outcome.failures.extend(differences(rig.arch, first, second))
    details = [f"cross-check: {r.backend} {r.seconds * 1000:.1f} ms, exit {r.outcome.exit}" for r in runs]
    if rig.start is not None:
        details.append(f"cross-check: both runs start from the {first.backend} snapshot {rig.start}"
                       if rig.start.parent is not None else
                       f"cross-check: both runs start from the snapshot file {rig.start}")
    return judged(rig, outcome, time.monotonic() - start, details=details)
