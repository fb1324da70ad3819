"""Why a vCPU ioctl costs more from Python than from C here (reset_reuse).

    python bench/ioctl_cost.py binding [N]   # one KVM_GET_REGS: cffi, fcntl, ctypes (GIL released / held), C
    python bench/ioctl_cost.py cold [N]      # Python work right after a vCPU ioctl, after getpid, and again
    python bench/ioctl_cost.py reset [N]     # the reset of a reused VM step by step (bench/kvmrig_side.py's rig)

Medians of N (default 2000; `reset`: 300 resets). `binding` and `cold` also
run `limit ioctls` / `limit cache` (bench/limit.c) for the C side. The
findings are in bench/README.md ("The reset of a reused VM against C").
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kvmrig.backends.kvm import abi  # noqa: E402

ffi, libc = abi.ffi, abi.libc
clock = time.perf_counter_ns


def _vcpu() -> tuple[int, int]:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = libc.ioctl(kvm, abi.KVM_CREATE_VM, abi.ulong(0))
    return kvm, libc.ioctl(vm, abi.KVM_CREATE_VCPU, abi.ulong(0))


def _each(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return median(samples)


def _limit(op: str, n: int) -> dict:
    import run
    out = run.run_limit(run.build_limit(), op, 0, n)
    return out.get("median_ns") or out.get("chase_32k_ns") or out


def binding(n: int) -> dict:
    """ns per KVM_GET_REGS through each binding, in 5 alternating rounds."""
    _kvm, vcpu = _vcpu()
    request, size = abi.KVM_GET_REGS, ffi.sizeof("struct kvm_regs")
    regs, mutable = ffi.new("struct kvm_regs *"), bytearray(size)
    cbuf = ctypes.create_string_buffer(size)

    def ctypes_ioctl(lib):
        f = lib.ioctl
        f.argtypes, f.restype = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p], ctypes.c_int
        return f
    released, held = ctypes_ioctl(ctypes.CDLL(None)), ctypes_ioctl(ctypes.PyDLL(None))
    address = ctypes.addressof(cbuf)
    ways = {"cffi libc.ioctl (kvmrig's binding)": lambda: libc.ioctl(vcpu, request, regs),
            "fcntl.ioctl (reset's binding)": lambda: fcntl.ioctl(vcpu, request, mutable),
            "ctypes CDLL (GIL released)": lambda: released(vcpu, request, address),
            "ctypes PyDLL (GIL held)": lambda: held(vcpu, request, address),
            "cffi, bad fd (the call alone)": lambda: libc.ioctl(-1, request, regs)}
    got: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(5):
        for name, fn in ways.items():
            got[name].append(_each(fn, n // 5))
    out = {name: median(v) for name, v in got.items()}
    c = _limit("ioctls", n)
    out["C (limit ioctls): KVM_GET_REGS"], out["C (limit ioctls): getpid"] = c["KVM_GET_REGS"], c["getpid_syscall"]
    return out


def cold(n: int) -> dict:
    """ns of a small piece of Python (a 10-turn loop) right after a vCPU
    ioctl, after getpid, and at once again; and the C pointer chase."""
    _kvm, vcpu = _vcpu()
    regs = ffi.new("struct kvm_regs *")

    def work() -> int:
        x = 0
        for i in range(10):
            x += i
        return x
    out = {}
    for name, before in (("vcpu ioctl", lambda: libc.ioctl(vcpu, abi.KVM_GET_REGS, regs)), ("getpid", os.getpid)):
        after, again = [], []
        for _ in range(n):
            before()
            t0 = clock()
            work()
            t1 = clock()
            work()
            after.append(t1 - t0)
            again.append(clock() - t1)
        out[f"python after {name}"], out[f"python again after {name}"] = median(after), median(again)
    out.update({f"C 32 KiB chase {k}": v for k, v in _limit("cache", n).items()})
    return out


def reset(n: int) -> dict:
    """VmPool's reset after the dirty16 rig, timed step by step (the timers
    add ~0.1 us each)."""
    import kvmrig_side
    from kvmrig.backends.kvm import x86_state
    from kvmrig.backends.select import kvm_factory
    from kvmrig.machine.memory import PAGE
    from kvmrig.machine.plan import prepare
    from kvmrig.machine.reuse import VmPool
    from kvmrig.rig.load import load_rig

    steps: list[list[int]] = []
    names: list[str] = []

    def timed(kept) -> None:
        backend, memory = kept.backend, kept.memory
        t = [clock()]
        backend.settle_io()
        backend.forget_run()
        backend._forget_debug()
        t.append(clock())
        state, vcpu = backend.pristine, backend.vcpu
        prep = state._prepared
        if prep is None:
            x86_state.restore(vcpu, state, reuse=True)   # the first reset builds the prepared calls
        else:   # what restore() does, with a timer between its steps
            if prep.tsc_entry is not None:
                tsc = prep.tsc + (int((time.monotonic() - state.taken) * prep.tsc_hz) if prep.tsc_hz else 0)
                prep.tsc_entry.data = tsc & 0xFFFFFFFFFFFFFFFF
            rs = vcpu.run_struct
            rs.cr8, rs.request_interrupt_window = prep.cr8, 0
            staged = vcpu.stage_all(prep.sync) if prep.sync is not None else False
            calls = prep.calls(vcpu, staged, True)
            t.append(clock())
            for _name, request, arg, _expect in calls:
                fcntl.ioctl(vcpu.fd, request, arg)
                t.append(clock())
            if not names:
                names.extend(["settle_io + forget_run + _forget_debug", "TSC, cr8, staging, calls()"]
                             + [name for name, *_rest in calls])
        ranges = backend.dirty_ranges()
        t.append(clock())
        ranges += [(page, page + PAGE) for page in memory.take_written()]
        memory.zero_ranges(ranges)
        t.append(clock())
        if prep is not None:
            steps.append([b - a for a, b in zip(t, t[1:])] + [t[-1] - t[0]])

    with tempfile.TemporaryDirectory(prefix="kvmrig-bench-") as tmp:
        (Path(tmp) / "dirty16.bin").write_bytes(kvmrig_side.DIRTY16)
        (Path(tmp) / "dirty16.yaml").write_text(kvmrig_side.RESET_RIG)
        rig = load_rig(Path(tmp) / "dirty16.yaml")
        plan, factory = prepare(rig), kvm_factory(rig)
        pool = VmPool()
        original = VmPool._reset
        VmPool._reset = staticmethod(timed)
        try:
            for _ in range(n + 2):
                pool.execute(plan, factory)
        finally:
            VmPool._reset = staticmethod(original)
            pool.close()
    names += ["dirty_ranges (KVM_GET_DIRTY_LOG + runs)", "zero_ranges (dirty + loader's pages)", "total"]
    return {name: median(s[i] for s in steps) for i, name in enumerate(names)}


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else ""
    if what not in ("binding", "cold", "reset"):
        print(__doc__)
        return 2
    n = int(argv[2]) if len(argv) > 2 else (300 if what == "reset" else 2000)
    out = {"binding": binding, "cold": cold, "reset": reset}[what](n)
    width = max(map(len, out))
    for name, ns in out.items():
        print(f"{name:{width}}  {ns / 1000:7.2f} us")
    print(json.dumps({"what": what, "n": n, "ns": out, "loadavg": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
