"""What-if prototype for bench/README.md's suggestions 1-5 (NOT a fix, NOT part
of the benchmark): monkeypatches KvmX86Backend / Session on the current tree
and measures hw and sw breakpoint hits with and without each change, in 3
interleaved rounds:

    python bench/whatif_bp.py

A: _before_run peeks at the pc of the breakpoint exit (no GET_REGS+GET_SREGS)
B: a per-hit check naming only GPRs reads only KVM_GET_REGS
C: KVM_SET_GUEST_DEBUG from cached structs
D: no get_pc() after a planted-HLT hit (the backend just wrote rip)
E: set_debug with unchanged points only flips single-step
S: KVM_CAP_SYNC_REGS: registers read from / written to kvm_run after the first exit

It reaches into private attributes of kvmrig's x86 KVM backend as of the
commit bench/README.md names; when they change, this script breaks, and the
real fix should be measured with bench/run.py instead.
"""
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kvmrig_side
from kvmrig.backends.kvm import abi, system
from kvmrig.backends.kvm.x86_64 import KvmX86Backend
from kvmrig.backends.events import HwBreak, SwBreak
from kvmrig.machine import session as session_mod

ffi = abi.ffi
orig = {name: getattr(KvmX86Backend, name) for name in ("_debug_event", "_before_run", "get_regs", "_apply", "set_debug", "_halt_event", "get_pc")}
orig_hit = session_mod.Session._hit

def patch(which):
    if "S" in which:
        patch_sync()
    # A: _before_run uses the pc of the breakpoint exit instead of GET_REGS+GET_SREGS
    if "A" in which:
        def _debug_event(self, info):
            ev = orig["_debug_event"](self, info)
            if isinstance(ev, HwBreak):
                self._bp_pc = ev.pc
            return ev
        def _before_run(self):
            self._fixup = False  # read through KvmX86Backend._needs_fixup()
            if self._resume is None:
                return
            if self.peek(self._bp_pc, 1) == b"\xf4":
                self._apply(skip=self._resume); self._fixup = True
            else:
                self._apply(skip=self._resume, step=True)
        KvmX86Backend._debug_event = _debug_event
        KvmX86Backend._before_run = _before_run
    # B: a per-hit check naming only GPRs reads only KVM_GET_REGS
    if "B" in which:
        def _hit(self, point, *where):
            self.backend._gpr_only = True
            try:
                return orig_hit(self, point, *where)
            finally:
                self.backend._gpr_only = False
        def get_regs(self):
            if getattr(self, "_gpr_only", False):
                r = self.vcpu.get_regs()
                return {n: getattr(r, n) for n in ("rax","rbx","rcx","rdx","rsi","rdi","rsp","rbp","r8","r9","r10","r11","r12","r13","r14","r15","rip","rflags")}
            return orig["get_regs"](self)
        session_mod.Session._hit = _hit
        KvmX86Backend.get_regs = get_regs
    # C: KVM_SET_GUEST_DEBUG from prebuilt structs (no re-encoding per call)
    if "C" in which:
        def _apply(self, skip=None, step=False):
            key = (skip, step, tuple(self._dr), tuple(self._dr_kind), tuple(self._dr_len), self._user_step, self._sw_int3)
            cache = self.__dict__.setdefault("_dbg_cache", {})
            hit = cache.get(key)
            if hit is None:
                orig["_apply"](self, skip, step)
                dbg = ffi.new("struct kvm_guest_debug *")
                ffi.memmove(dbg, self.vcpu._debug, ffi.sizeof("struct kvm_guest_debug"))
                cache[key] = (dbg, self._control)
                return
            dbg, self._control = hit
            system._call(self.vcpu.fd, abi.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG")
        KvmX86Backend._apply = _apply
    # D: the session's get_pc() right after a planted-HLT hit is answered from the hit
    if "D" in which:
        def _halt_event(self):
            ev = orig["_halt_event"](self)
            self._known_pc = ev.pc if isinstance(ev, SwBreak) else None
            return ev
        def get_pc(self):
            pc = getattr(self, "_known_pc", None)
            if pc is not None:
                self._known_pc = None
                return pc
            return orig["get_pc"](self)
        KvmX86Backend._halt_event = _halt_event
        KvmX86Backend.get_pc = get_pc
    # E: set_debug with the same slots and sw points only flips single-step
    if "E" in which:
        def set_debug(self, slots, single_step, sw):
            key = (tuple(slots), frozenset(sw or ()))
            if getattr(self, "_dbg_key", None) == key:
                self._user_step = single_step
                self._apply()
                return
            orig["set_debug"](self, slots, single_step, sw)
            self._dbg_key = key
        KvmX86Backend.set_debug = set_debug

orig_vcpu = {name: getattr(system.Vcpu, name) for name in ("get_regs", "get_sregs", "set_regs", "set_sregs")}
orig_init_state = KvmX86Backend.set_initial_state
REGS_SIZE = ffi.sizeof("struct kvm_regs")
SREGS_SIZE = ffi.sizeof("struct kvm_sregs")


def patch_sync():
    def set_initial_state(self, state):
        orig_init_state(self, state)
        vcpu = self.vcpu
        rs = vcpu.run_struct
        rs.kvm_valid_regs = 1 | 2  # KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS
        base_ptr = ffi.cast("char *", ffi.addressof(rs, "s"))
        vcpu._s_regs, vcpu._s_sregs = base_ptr, base_ptr + REGS_SIZE
        vcpu._fresh = False
        inner = vcpu.run

        def run():
            reason = inner()
            vcpu._fresh = True
            return reason
        vcpu.run = run
    def get_regs(self):
        if getattr(self, "_fresh", False):
            ffi.memmove(self._regs, self._s_regs, REGS_SIZE)
            return self._regs
        return orig_vcpu["get_regs"](self)
    def get_sregs(self):
        if getattr(self, "_fresh", False):
            ffi.memmove(self._sregs, self._s_sregs, SREGS_SIZE)
            return self._sregs
        return orig_vcpu["get_sregs"](self)
    def set_regs(self, regs):
        if getattr(self, "_fresh", False):
            ffi.memmove(self._s_regs, regs, REGS_SIZE)
            self.run_struct.kvm_dirty_regs |= 1
            return
        orig_vcpu["set_regs"](self, regs)
    def set_sregs(self, sregs):
        if getattr(self, "_fresh", False):
            ffi.memmove(self._s_sregs, sregs, SREGS_SIZE)
            self.run_struct.kvm_dirty_regs |= 2
            return
        orig_vcpu["set_sregs"](self, sregs)
    KvmX86Backend.set_initial_state = set_initial_state
    system.Vcpu.get_regs, system.Vcpu.get_sregs = get_regs, get_sregs
    system.Vcpu.set_regs, system.Vcpu.set_sregs = set_regs, set_sregs


def unpatch():
    for name, fn in orig_vcpu.items():
        setattr(system.Vcpu, name, fn)
    KvmX86Backend.set_initial_state = orig_init_state
    for name, fn in orig.items():
        setattr(KvmX86Backend, name, fn)
    session_mod.Session._hit = orig_hit

if __name__ != "__main__":
    raise ImportError("bench/whatif_bp.py is a script")
K, N = 1000, 7
variants = {"hwbp": ["", "A", "AB", "ABC", "S", "ACS"], "swbp": ["", "E", "CE", "S", "CES"],
            "lifecycle": ["", "S"]}
res = {}
for rnd in range(3):
    for op, vs in variants.items():
        for v in vs:
            unpatch(); patch(v)
            d = kvmrig_side.measure(op, 0 if op == "lifecycle" else K, N)
            res.setdefault((op, v), ([], []))
            res[(op, v)][0].extend(d["ns"]); res[(op, v)][1].extend(d.get("ns_0", []))
unpatch()
for (op, v), (k, z) in res.items():
    if op == "lifecycle":
        print(f"{op:9} {v or 'as is':6} {statistics.median(k) / 1000:7.1f} us per rig")
    else:
        print(f"{op:9} {v or 'as is':6} {(statistics.median(k) - statistics.median(z)) / K / 1000:7.1f} us per hit")
