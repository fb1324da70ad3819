"""arm64 KVM VM reuse, measured INSIDE the nested arm64 lane (bench/run.py
group "arm64" ships this file into the lane's VM and runs it there; no
kvmrig test helpers, one JSON line on stdout).

A guest dirties 16 pages and two system registers, then PSCI SYSTEM_OFF;
between two of its runs the VM is put back either by kvmrig's reset (the
vCPU re-initialised by KVM_ARM_VCPU_INIT plus what that leaves, then the
dirty pages zeroed: what VmPool does) or by writing every register a guest
can change back with KVM_SET_ONE_REG (the alternative); a new VM with its
vCPU is the limit reuse avoids. Medians in microseconds. Informational: the
lane is QEMU TCG, so every ioctl is far slower than on arm64 hardware.
"""

from __future__ import annotations

import errno
import json
import mmap
import sys
import time
from statistics import median

from kvmrig.arch.arm64 import cpustate
from kvmrig.backends.kvm.arm64 import KvmArm64Backend
from kvmrig.errors import KvmError

BASE, SIZE, PAGES = 0x40000000, 0x20000, 16
GUEST = [
    0xD2A80001,   # movz x1, #0x4000, lsl #16      x1 = 0x40000000
    0x91401021,   # add  x1, x1, #0x4, lsl #12     x1 = 0x40004000
    0xD2800203,   # mov  x3, #16
    0xF9000021,   # str  x1, [x1]                  one word per page
    0x91400421,   # add  x1, x1, #0x1, lsl #12
    0xF1000463,   # subs x3, x3, #1
    0x54FFFFA1,   # b.ne .-12
    0xD518D081,   # msr  tpidr_el1, x1
    0xD518C001,   # msr  vbar_el1, x1
    0x52800100,   # mov  w0, #0x8
    0x72B08000,   # movk w0, #0x8400, lsl #16      PSCI SYSTEM_OFF
    0xD4000002,   # hvc  #0
]
CODE = b"".join(w.to_bytes(4, "little") for w in GUEST)


def measure(n: int) -> dict:
    backend = KvmArm64Backend()
    mem = mmap.mmap(-1, SIZE)
    try:
        backend.map_memory(BASE, mem, False)
        backend.track_dirty()
        backend.keep_pristine()
        vcpu = backend.vcpu
        regs = [r for r in vcpu.get_reg_list() if cpustate.guest_writable(r)]
        pristine = {r: vcpu.get_one_reg(r) for r in regs}

        def run() -> None:
            mem[0:len(CODE)] = CODE
            backend.set_regs({"pstate": 0x3C5, "pc": BASE})
            event = backend.run(time.monotonic() + 10)
            backend.park()
            if type(event).__name__ != "SystemEvent":
                raise RuntimeError(f"the guest ended with {event}, not SYSTEM_OFF")

        def zero_dirty() -> int:
            pages = 0
            for start, end in backend.dirty_ranges():
                mem[start - BASE:end - BASE] = bytes(end - start)
                pages += (end - start) // 0x1000
            return pages

        reset_s, writes_s, pages = [], [], []
        run()
        backend.reset()
        zero_dirty()
        for _ in range(n):
            run()
            t = time.perf_counter()
            backend.reset()
            pages.append(zero_dirty())
            reset_s.append(time.perf_counter() - t)
            run()
            t = time.perf_counter()
            backend.settle_io()
            for r in regs:
                try:
                    vcpu.set_one_reg(r, pristine[r])
                except KvmError as e:
                    if e.errno not in (errno.EINVAL, errno.EBUSY, errno.EPERM):
                        raise
            vcpu.set_mp_state(0)   # runnable again after SYSTEM_OFF
            zero_dirty()
            writes_s.append(time.perf_counter() - t)
            backend.reset()
            zero_dirty()
    finally:
        backend.close()
        mem.close()
    news = []
    for _ in range(max(5, n // 4)):
        t = time.perf_counter()
        with KvmArm64Backend() as fresh:
            m = mmap.mmap(-1, SIZE)
            fresh.map_memory(BASE, m, False)
            fresh.track_dirty()
            fresh.keep_pristine()
            news.append(time.perf_counter() - t)
        m.close()
    return {"reset_us": median(reset_s) * 1e6, "write_all_us": median(writes_s) * 1e6,
            "new_vm_us": median(news) * 1e6, "dirty_pages": int(median(pages)), "registers": len(regs), "n": n}


if __name__ == "__main__":
    print("ARM64RESET " + json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 50)))
