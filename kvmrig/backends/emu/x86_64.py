"""The x86_64 emulator backend: the boot states of arch/x86_64/boot.py on
unicorn, registers by name, port I/O, HLT, and what a CPU exception becomes.

Modes: unicorn always runs in UC_MODE_64 (its register API then reads all
64-bit registers whatever mode the guest is in; a guest may switch modes).
set_initial_state loads the X86State the machine layer planned, with the
GDT and page tables it already wrote to RAM:

* long: CR4 (PAE), CR3, EFER and then CR0.PG, which makes unicorn's CPU enter
  IA-32e mode (EFER.LMA) as hardware does; then GDTR and the selectors,
  which unicorn loads from the GDT in guest memory (CS = 0x08, L = 1).
* protected: as long mode without paging. UC_MODE_64 starts with EFER.LMA
  set; a CR0 write with PG set and then cleared takes the CPU out of IA-32e
  mode (SDM 10.8.5.4), leaving EFER = 0 as on KVM.
* real: the same exit from IA-32e mode, CR0.PE = 0; selectors load as
  real-mode segments (base = selector * 16).
* reset: as real mode, but CS must be selector 0xf000 with base 0xffff0000,
  which no real-mode load gives. The backend maps a scratch page, puts a
  16-bit code descriptor with that base at GDT index 0xf000 / 8, sets CR0.PE
  for one selector load (so unicorn fills CS's hidden part from the
  descriptor), then clears PE, restores GDTR and unmaps the page: the hidden
  CS base stays, as after a hardware reset, until the guest's first far jump.
  The first fetch is then at 0xfffffff0.

Exceptions: unicorn never delivers an x86 exception through the guest's IDT
(it reports it to a hook, or stops). This backend decides what KVM would
have seen:
* real mode (PE = 0): the exception or INT n is delivered through the IVT
  here (FLAGS, CS, IP pushed; IF, TF, AC cleared), as a real-mode CPU does.
* protected / long mode: if the IDT cannot deliver the vector, nor #GP,
  nor #DF (limit too small or gate not present), the CPU would triple
  fault: the event is SHUTDOWN, as on KVM. If the IDT has a usable gate the
  run ends UNHANDLED saying so: protected/long-mode delivery to guest
  handlers is not emulated (pin such rigs to `backend: kvm`).
"""

from __future__ import annotations

import struct

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from kvmrig.arch.x86_64 import cpustate, gdt
from kvmrig.arch.x86_64.boot import CR0_PE, CR0_PG, RFLAGS_AC, RFLAGS_IF, RFLAGS_TF, X86State
from kvmrig.arch.x86_64.regs import CONTROL, GPRS, SEGMENTS
from kvmrig.backends.events import Event, Halt, PortIO, Shutdown, Unhandled
from kvmrig.backends.emu import x86_cross
from kvmrig.backends.emu.core import EmuBackendBase
from kvmrig.errors import BackendError

MSR_EFER = 0xC0000080
EFER_LMA = 1 << 10
HLT = b"\xf4"
TCG_BUFFER = 64 << 20
# Unicorn register ids of every canonical register but EFER (an MSR).
REG_IDS: dict[str, int] = {
    **{name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in GPRS},
    "rip": X.UC_X86_REG_RIP, "rflags": X.UC_X86_REG_RFLAGS,
    **{name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in SEGMENTS},
    **{name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in CONTROL if name != "efer"},
}
_BATCH_NAMES = tuple(REG_IDS)
_BATCH_IDS = tuple(REG_IDS[n] for n in _BATCH_NAMES)

# SDM vol.3 6.3.1: exceptions. Vector -> mnemonic, for messages.
VECTORS = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
           10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
           19: "#XM", 20: "#VE"}
VEC_DF, VEC_GP, VEC_UD = 8, 13, 6


def _vector_name(v: int) -> str:
    return VECTORS.get(v, f"vector {v}")


def descriptor_flags(seg: gdt.Segment) -> int:
    """A Segment's attributes in the layout of descriptor bits 32..63 (SDM
    3.4.5), which unicorn takes as the `flags` of TR/LDTR."""
    return (seg.type << 8 | seg.s << 12 | seg.dpl << 13 | seg.present << 15
            | seg.avl << 20 | seg.l << 21 | seg.db << 22 | seg.g << 23)


def trampoline(long_mode: bool, selectors: dict[str, int], cs: int, rip: int) -> tuple[bytes, int]:
    """Code that loads SS, DS, ES, FS, GS and then CS:RIP by a far transfer,
    so the CPU fills each hidden part from a descriptor, as a real one
    does; and how many instructions it is. 32-bit code, or 64-bit in long
    mode (needs a stack for RETFQ)."""
    code = bytearray()
    n = 0
    for name, modrm in (("ss", 0xD0), ("ds", 0xD8), ("es", 0xC0), ("fs", 0xE0), ("gs", 0xE8)):
        code += b"\x66\xb8" + selectors[name].to_bytes(2, "little")   # mov ax, imm16
        code += bytes((0x8E, modrm))                                 # mov <seg>, ax
        n += 2
    if long_mode:
        code += b"\x48\xb8" + rip.to_bytes(8, "little")              # mov rax, imm64
        code += bytes((0x6A, cs))                                    # push imm8 (selector)
        code += b"\x50\x48\xcb"                                      # push rax; retfq
        n += 4
    else:
        code += b"\xea" + (rip & 0xFFFFFFFF).to_bytes(4, "little") + cs.to_bytes(2, "little")  # ljmp cs:eip
        n += 1
    return bytes(code), n


class EmuX86Backend(EmuBackendBase):
    arch = "x86_64"
    PC_REG = X.UC_X86_REG_RIP

    def _create(self):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
        return uc

    def _install_base_hooks(self) -> None:
        super()._install_base_hooks()
        self._exception: int | None = None
        self._cs_offset = x86_cross.CsBase.find()
        self._ctx = None
        self._created = self.uc.context_save()   # loading another backend's state starts from here
        self.uc.hook_add(U.UC_HOOK_INSN, self._guard(self._on_in, 0xFFFFFFFF), None, 1, 0, X.UC_X86_INS_IN)
        self.uc.hook_add(U.UC_HOOK_INSN, self._guard(self._on_out), None, 1, 0, X.UC_X86_INS_OUT)

    # Boot ----------------------------------------------------------------
    def set_initial_state(self, state: X86State) -> None:
        uc = self.uc
        try:
            uc.reg_write(X.UC_X86_REG_CR4, state.cr4)
            uc.reg_write(X.UC_X86_REG_CR3, state.cr3)
            if not state.efer & EFER_LMA:
                # Leave the IA-32e mode UC_MODE_64 starts in: PG on (without
                # PAE nothing else happens), then off with LMA set clears LMA.
                uc.reg_write(X.UC_X86_REG_CR0, CR0_PE | CR0_PG)
            uc.reg_write(X.UC_X86_REG_CR0, state.cr0 | CR0_PE)
            uc.msr_write(MSR_EFER, state.efer)
            if uc.msr_read(MSR_EFER) != state.efer:
                raise BackendError(f"setting EFER to {state.efer:#x} left it at {uc.msr_read(MSR_EFER):#x}")
            self._load_segments(state)
            uc.reg_write(X.UC_X86_REG_CR0, state.cr0)
            uc.reg_write(X.UC_X86_REG_GDTR, (0, state.gdt[0], state.gdt[1], 0))
            uc.reg_write(X.UC_X86_REG_IDTR, (0, state.idt[0], state.idt[1], 0))
            segs = state.segments
            for name in ("ss", "ds", "es", "cs"):   # UC_MODE_64 writes these selectors only
                uc.reg_write(REG_IDS[name], segs[name].selector)
            if not state.cr0 & CR0_PE:   # FS and GS are loaded in full: right for real mode
                for name in ("fs", "gs"):
                    uc.reg_write(REG_IDS[name], segs[name].selector)
            tr, ldt = segs["tr"], segs["ldt"]
            uc.reg_write(X.UC_X86_REG_TR, (tr.selector, tr.base, tr.limit, descriptor_flags(tr)))
            uc.reg_write(X.UC_X86_REG_LDTR, (ldt.selector, ldt.base, ldt.limit,
                                             0 if ldt.unusable else descriptor_flags(ldt)))
            for name in GPRS:
                uc.reg_write(REG_IDS[name], state.gprs.get(name, 0))
            uc.reg_write(X.UC_X86_REG_RIP, state.rip)
            uc.reg_write(X.UC_X86_REG_RFLAGS, state.rflags)
        except UcError as e:
            raise BackendError(f"loading the {state.mode}-mode CPU state into unicorn: {e}") from None
        if self.cs_base() != segs["cs"].base:
            raise BackendError(f"loading CS left its base at {self.cs_base():#x}, not {segs['cs'].base:#x}")

    def _load_segments(self, state: X86State) -> None:
        """Fill the hidden part of every segment register from the state's
        Segment records. UC_MODE_64's register API writes only the selectors
        of CS, DS, ES and SS, so a trampoline in a scratch page loads them
        from a scratch GDT holding exactly those descriptors, with CR0.PE
        set (real mode clears it afterwards and keeps the caches, as a CPU
        returning to real mode does); the real selectors are written after."""
        uc = self.uc
        long_mode = bool(state.efer & EFER_LMA)
        scratch = self._free_page(0x1000)
        uc.mem_map(scratch, self.page)
        try:
            table = bytearray(8)   # the null descriptor
            selectors = {}
            for i, name in enumerate(("cs", "ss", "ds", "es", "fs", "gs"), start=1):
                seg = state.segments[name]
                access = seg.present << 7 | seg.dpl << 5 | seg.s << 4 | seg.type
                flags = seg.g << 3 | seg.db << 2 | seg.l << 1 | seg.avl
                limit = seg.limit >> 12 if seg.g else seg.limit
                table += gdt.gdt_entry(seg.base & 0xFFFFFFFF, limit & 0xFFFFF, access, flags).to_bytes(8, "little")
                selectors[name] = i * 8
            code, count = trampoline(long_mode, selectors, selectors["cs"], state.rip)
            gdt_at, stack = scratch + 0x800, scratch + self.page - 16
            uc.mem_write(scratch, code)
            uc.mem_write(gdt_at, bytes(table))
            uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_at, len(table) - 1, 0))
            uc.reg_write(X.UC_X86_REG_RSP, stack)
            uc.emu_start(scratch, 0, count=count)
            if self.get_pc() != state.rip:
                raise BackendError(f"the segment-loading trampoline stopped at {self.get_pc():#x}, "
                                   f"not at the entry {state.rip:#x}")
        finally:
            uc.mem_unmap(scratch, self.page)
            uc.ctl_flush_tb()

    def _free_page(self, lowest: int) -> int:
        taken = [(s, e) for s, e, _rom, _v in self._regions]
        page = (lowest + self.page - 1) & ~(self.page - 1)
        while page < 1 << 32:
            if all(page + self.page <= s or page >= e for s, e in taken):
                return page
            page += self.page
        raise BackendError("no free page below 4 GiB for the reset-state descriptor")

    # Registers -------------------------------------------------------------
    def get_regs(self) -> dict[str, int]:
        self._settle()
        values = self.uc.reg_read_batch(_BATCH_IDS)
        out = {name: v & 0xFFFFFFFFFFFFFFFF for name, v in zip(_BATCH_NAMES, values)}
        out["efer"] = self.uc.msr_read(MSR_EFER)
        return out

    def get_pc(self) -> int:
        self._settle()
        return self.uc.reg_read(X.UC_X86_REG_RIP)

    def get_extra_regs(self) -> dict[str, int]:
        self._settle()
        uc = self.uc
        out = {}
        top = (uc.reg_read(X.UC_X86_REG_FPSW) >> 11) & 7   # FPn are physical registers: ST(i) is FP(TOP+i)
        for i in range(8):
            mantissa, exponent = uc.reg_read(X.UC_X86_REG_FP0 + (top + i) % 8)   # (64-bit mantissa, sign+exponent)
            out[f"st{i}"] = (exponent & 0xFFFF) << 64 | mantissa
        fip, fdp = uc.reg_read(X.UC_X86_REG_FIP), uc.reg_read(X.UC_X86_REG_FDP)
        out.update(fctrl=uc.reg_read(X.UC_X86_REG_FPCW), fstat=uc.reg_read(X.UC_X86_REG_FPSW),
                   ftag=uc.reg_read(X.UC_X86_REG_FPTAG), fop=uc.reg_read(X.UC_X86_REG_FOP) & 0x7FF,
                   fioff=fip & 0xFFFFFFFF, fiseg=(fip >> 32) & 0xFFFF, fooff=fdp & 0xFFFFFFFF,
                   foseg=(fdp >> 32) & 0xFFFF, mxcsr=uc.reg_read(X.UC_X86_REG_MXCSR),
                   fs_base=uc.reg_read(X.UC_X86_REG_FS_BASE), gs_base=uc.reg_read(X.UC_X86_REG_GS_BASE))
        out.update({f"xmm{i}": uc.reg_read(X.UC_X86_REG_XMM0 + i) for i in range(16)})
        return out

    def set_regs(self, regs: dict[str, int]) -> None:
        self._settle()
        uc = self.uc
        for name, value in regs.items():
            key = name.lower()
            try:
                if key == "efer":
                    uc.msr_write(MSR_EFER, value)
                elif key in REG_IDS:
                    uc.reg_write(REG_IDS[key], value & 0xFFFFFFFFFFFFFFFF)
                else:
                    raise BackendError(f"x86_64 has no register {name!r} kvmrig can set")
            except UcError as e:
                raise BackendError(f"setting {name} to {value:#x}: {e} (e.g. a selector the GDT has no "
                                   "usable descriptor for)") from None

    def _forget_arch(self) -> None:
        self._exception = None

    # Snapshots that cross backends (x86_cross) ---------------------------------
    def _arch_text(self) -> dict | None:
        return cpustate.to_text(x86_cross.to_arch(self))

    def _load_arch(self, text: dict) -> None:
        self.uc.context_restore(self._created)
        try:
            x86_cross.load_arch(self, cpustate.from_text(text))
        except cpustate.CrossError as e:
            raise BackendError(str(e)) from None
        self._ctx = None

    def cs_base(self) -> int:
        """The hidden base of CS (see x86_cross.CsBase)."""
        uc = self.uc
        if self._cs_offset is not None:
            if self._ctx is None:
                self._ctx = uc.context_save()
            else:
                uc.context_update(self._ctx)
            blob = x86_cross.context_bytes(self._ctx)
            return struct.unpack_from("<Q", blob, self._cs_offset)[0]
        cr0 = uc.reg_read(X.UC_X86_REG_CR0)
        if cr0 & CR0_PE and uc.msr_read(MSR_EFER) & EFER_LMA:
            return 0
        return uc.reg_read(X.UC_X86_REG_CS) << 4 if not cr0 & CR0_PE else 0

    def _linear_pc(self) -> int:
        return (self.cs_base() + self.get_pc()) & 0xFFFFFFFFFFFFFFFF

    # Port I/O (unicorn syncs RIP to the IN/OUT before calling these) ----------
    def _on_in(self, port: int, size: int, _ud=None) -> int:
        data = self._block(PortIO(port, size, False), "port")
        return int.from_bytes(data[:size].ljust(size, b"\xff"), "little")

    def _on_out(self, port: int, size: int, value: int, _ud=None) -> None:
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._block(PortIO(port, size, True, data), "port")

    # Stops ---------------------------------------------------------------
    def _natural_stop(self) -> Event:
        """emu_start returns by itself only after HLT (RIP is past it, as on KVM)."""
        pc = self._linear_pc() - 1
        if self.peek(pc, 1) != HLT:
            return Unhandled(pc + 1, f"the emulator stopped at {pc + 1:#x} for no "
                                     "reason it reported (emulator backend)")
        return Halt(pc)

    def _on_interrupt(self, intno: int, _ud=None) -> None:
        if self._exception is None and self._stop_event is None:
            self._exception = intno
        self.uc.emu_stop()

    def _finished(self, err):
        if err is not None and err.errno == U.UC_ERR_INSN_INVALID and self._exception is None:
            self._exception = VEC_UD
            err = None
        vector, self._exception = self._exception, None
        if vector is not None and self._hook_error is None and self._stop_event is None:
            return self._exception_event(vector)
        return super()._finished(err)

    def _exception_event(self, vector: int) -> Event | None:
        uc = self.uc
        cr0 = uc.reg_read(X.UC_X86_REG_CR0)
        _sel, idt_base, idt_limit, _f = uc.reg_read(X.UC_X86_REG_IDTR)
        pc = self._linear_pc()
        if not cr0 & CR0_PE:
            return self._deliver_real(vector, idt_base, idt_limit, pc)
        long_mode = bool(uc.msr_read(MSR_EFER) & EFER_LMA)
        size = 16 if long_mode else 8
        chain = [vector] + [v for v in (VEC_GP, VEC_DF) if v != vector]
        for v in chain:
            if (v + 1) * size - 1 > idt_limit:
                continue
            gate = self.peek(idt_base + v * size, 8)
            if gate is not None and gate[5] & 0x80:  # P bit of the gate (SDM 6.11, 6.14.1)
                via = "" if v == vector else f" (through {_vector_name(v)}, as the IDT has no gate for it)"
                return Unhandled(pc, code=vector, detail=(
                    f"{_vector_name(vector)} at pc {pc:#x}: the guest's IDT would enter its handler{via}, "
                    "but the emulator backend does not deliver protected/long-mode exceptions; "
                    "run this rig on KVM (`backend: kvm`)"))
        return Shutdown(pc, detail=(
            f"triple fault: {_vector_name(vector)} at pc {pc:#x} could not be delivered, nor #GP, nor #DF "
            f"(IDT base {idt_base:#x}, limit {idt_limit:#x}); the CPU shut down"))

    def _deliver_real(self, vector: int, ivt_base: int, ivt_limit: int, pc: int) -> Event | None:
        """Real-mode delivery (SDM vol.3 20.1.4): push FLAGS, CS, IP; IF, TF, AC
        cleared; CS:IP from the IVT. RIP is already the return address
        (the faulting instruction, or the one after INT n)."""
        uc = self.uc
        if vector * 4 + 3 > ivt_limit:
            return Shutdown(pc, detail=(
                f"{_vector_name(vector)} at pc {pc:#x} is beyond the IVT limit {ivt_limit:#x}: the CPU shut down"))
        vec = self.peek(ivt_base + vector * 4, 4)
        ss = uc.reg_read(X.UC_X86_REG_SS)
        sp = uc.reg_read(X.UC_X86_REG_RSP)
        flags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        frame = struct.pack("<HHH", uc.reg_read(X.UC_X86_REG_RIP) & 0xFFFF, uc.reg_read(X.UC_X86_REG_CS),
                            flags & 0xFFFF)
        new_sp = (sp - 6) & 0xFFFF
        if vec is None or not self.poke((ss << 4) + new_sp, frame):
            return Unhandled(pc, code=vector, detail=(
                f"{_vector_name(vector)} at pc {pc:#x} in real mode: the IVT entry or the stack "
                f"({ss:#x}:{new_sp:#x}) is outside RAM (emulator backend)"))
        ip, cs = struct.unpack("<HH", vec)
        uc.reg_write(X.UC_X86_REG_RSP, (sp & ~0xFFFF) | new_sp)
        uc.reg_write(X.UC_X86_REG_RFLAGS, flags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC))
        uc.reg_write(X.UC_X86_REG_CS, cs)
        uc.reg_write(X.UC_X86_REG_RIP, ip)
        self._flush = True
        return None
