"""Which x86 debug features this KVM really delivers, found by trying them.

Not every /dev/kvm implements KVM_SET_GUEST_DEBUG fully: software KVMs such as
kvm_pvm (KVM without VMX/SVM, inside a VM) run single-step and instruction
breakpoints but never raise data breakpoints, and fail on an intercepted INT3
with an internal error. kvmrig asks once per process with a 3-instruction
guest and picks its strategies from the answer (see KvmX86Backend):
    int3 works      -> `kind: sw` plants INT3;  else it plants HLT (also 1 byte)
    DR data bps work -> watchpoints use DR0-DR3; else write-protected / unmapped
                       pages that turn the guest's accesses into MMIO exits.
KVMRIG_KVM_DEBUG=native|trap skips the probe and forces one side (for tests).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from kvmrig.backends.kvm import abi
from kvmrig.backends.kvm.perprocess import PerProcess
from kvmrig.backends.kvm.system import Kvm
from kvmrig.errors import KvmError

ffi = abi.ffi


@dataclass(frozen=True)
class X86DebugSupport:
    int3: bool              # KVM_GUESTDBG_USE_SW_BP reports INT3 as KVM_EXIT_DEBUG
    data_breakpoints: bool  # DR0-DR3 write/access breakpoints raise #DB exits

    @property
    def describe(self) -> str:
        sw = "INT3" if self.int3 else "HLT (this KVM cannot intercept INT3)"
        wp = "debug registers" if self.data_breakpoints else "page traps (this KVM raises no data breakpoints)"
        return f"software breakpoints by {sw}; watchpoints by {wp}"


_cache: PerProcess[X86DebugSupport] = PerProcess()

# Real mode at 0: mov [0x1000], al; int3; hlt
_GUEST = bytes([0xA2, 0x00, 0x10, 0xCC, 0xF4])


def _probe(kvm: Kvm) -> X86DebugSupport:
    mem = mmap.mmap(-1, 0x2000)
    mem[:len(_GUEST)] = _GUEST
    ptr = ffi.from_buffer(mem)
    int3 = data = False
    try:
        with kvm.create_vm() as vm:
            vm.set_tss_addr(0xFEFFD000)
            vm.set_memory(0, 0, 0x2000, int(ffi.cast("uintptr_t", ptr)))
            vcpu = vm.create_vcpu(0)
            s = vcpu.get_sregs()
            s.cs.base, s.cs.selector = 0, 0
            vcpu.set_sregs(s)
            r = vcpu.get_regs()
            r.rip, r.rflags = 0, 2
            vcpu.set_regs(r)
            dr7 = (1 << 1) | (0b01 << 16)  # G0, R/W0 = write, LEN0 = 1 byte
            vcpu.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_SW_BP | abi.KVM_GUESTDBG_USE_HW_BP,
                                 [0x1000, 0, 0, 0, 0, 0, 0, dr7])
            for _ in range(3):
                reason = vcpu.run()
                if reason != abi.KVM_EXIT_DEBUG:
                    break
                info = vcpu.run_struct.debug.arch
                if info.exception == 1 and info.dr6 & 1:
                    data = True
                elif info.exception == 3:
                    int3 = True
                    break
    except KvmError:
        pass
    finally:
        ffi.release(ptr)
        mem.close()
    return X86DebugSupport(int3, data)


def debug_support(kvm: Kvm) -> X86DebugSupport:
    """The answer for this process (probed once, re-probed after fork)."""
    forced = os.environ.get("KVMRIG_KVM_DEBUG", "")
    if forced == "native":
        return X86DebugSupport(True, True)
    if forced == "trap":
        return X86DebugSupport(False, False)
    return _cache.get(lambda: _probe(kvm))
