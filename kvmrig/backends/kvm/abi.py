"""The KVM userspace ABI: struct layouts, ioctl numbers and constants.

This is the only module in kvmrig that knows how KVM lays out a structure or
numbers an ioctl. Everything here restates facts from the kernel's UAPI
headers (include/uapi/linux/kvm.h plus arch/{x86,arm64}/include/uapi/asm/kvm.h)
and Documentation/virt/kvm/api.rst; tests/backends/kvm/test_abi_layout.py
compiles a C program against the host's <linux/kvm.h> and checks every struct,
field and constant below against it.

cffi runs in ABI mode: no C compiler is needed at install time. `ffi` holds the
layouts of the host's architecture (picked by platform.machine()), `libc` the
few libc functions the backend calls. `ffi_for("arm64")` builds the other
arch's layouts on any host, so arm64 register ids can be computed and tested
on an x86_64 machine too.

Calling ioctl: it is variadic, so cffi wants every argument after the request
as cdata: a typed pointer (`ffi.new("struct kvm_regs *")`) or an integer cast
with `ulong(n)`. It returns -1 and leaves the error in `ffi.errno`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from kvmrig.arch import host_arch
from kvmrig.backends.kvm import ffi_cache

if TYPE_CHECKING:
    import cffi

# --------------------------------------------------------------------------
# Which layouts: the host's architecture.

ARCHES = ("x86_64", "arm64")


ARCH = host_arch()

# --------------------------------------------------------------------------
# Struct layouts. Only the members kvmrig reads are named; everything else is
# covered by explicit padding so that sizeof and every offset match the kernel.

_CDEF_X86_64 = """
/* asm/kvm.h, KVM_GET_REGS / KVM_SET_REGS: 18 x u64, no padding. */
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx;
    uint64_t rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11;
    uint64_t r12, r13, r14, r15;
    uint64_t rip, rflags;
};

/* asm/kvm.h: one segment register as VMX/SVM hold it. `limit` is the byte
   limit already expanded by the granularity bit (0xffffffff for a flat 4 GiB
   segment with g=1), not the raw 20-bit descriptor field. */
struct kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t  type;
    uint8_t  present, dpl, db, s, l, g, avl;
    uint8_t  unusable;
    uint8_t  padding;
};

struct kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};

/* asm/kvm.h, KVM_GET_SREGS / KVM_SET_SREGS. interrupt_bitmap has
   (KVM_NR_INTERRUPTS + 63) / 64 = 4 words; leave it zero when setting. */
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};

/* asm/kvm.h, KVM_GET_FPU / KVM_SET_FPU (fxsave-like). */
struct kvm_fpu {
    uint8_t  fpr[8][16];
    uint16_t fcw;
    uint16_t fsw;
    uint8_t  ftwx;
    uint8_t  pad1;
    uint16_t last_opcode;
    uint64_t last_ip;
    uint64_t last_dp;
    uint8_t  xmm[16][16];
    uint32_t mxcsr;
    uint32_t pad2;
};

struct kvm_cpuid_entry2 {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax;
    uint32_t ebx;
    uint32_t ecx;
    uint32_t edx;
    uint32_t padding[3];
};

/* asm/kvm.h, KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2: a flexible array.
   Allocate with room for the entries (new_cpuid2()); nent is the capacity
   going in to GET_SUPPORTED_CPUID (E2BIG if too small) and the count out. */
struct kvm_cpuid2 {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[];
};

/* asm/kvm.h, KVM_SET_GUEST_DEBUG: DR0-DR3 in debugreg[0..3], DR7 in
   debugreg[7]; 4..6 unused. Only read with KVM_GUESTDBG_USE_HW_BP. */
struct kvm_guest_debug_arch {
    uint64_t debugreg[8];
};

/* asm/kvm.h, KVM_GET/SET_VCPU_EVENTS; part of kvm_sync_regs. */
struct kvm_vcpu_events {
    struct { uint8_t injected, nr, has_error_code, pending; uint32_t error_code; } exception;
    struct { uint8_t injected, nr, soft, shadow; } interrupt;
    struct { uint8_t injected, pending, masked, pad; } nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct { uint8_t smm, pending, smm_inside_nmi, latched_init; } smi;
    struct { uint8_t pending; } triple_fault;
    uint8_t reserved[26];
    uint8_t exception_has_payload;
    uint64_t exception_payload;
};

/* asm/kvm.h: kvm_run.s.regs; KVM fills the sets named in kvm_valid_regs
   (KVM_SYNC_X86_REGS, _SREGS, _EVENTS) whenever KVM_RUN returns. */
struct kvm_sync_regs {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_vcpu_events events;
};

/* asm/kvm.h, KVM_CREATE_PIT2: flags = KVM_PIT_SPEAKER_DUMMY makes port 0x61
   (speaker/gate) answer in the kernel too. */
struct kvm_pit_config {
    uint32_t flags;
    uint32_t pad[15];
};

/* asm/kvm.h, KVM_GET/SET_IRQCHIP (VM, with KVM_CREATE_IRQCHIP): one of the
   in-kernel chips by chip_id (KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE, _IOAPIC).
   Snapshots keep the chips as opaque bytes; only the layout matters here. */
struct kvm_pic_state {
    uint8_t last_irr, irr, imr, isr, priority_add, irq_base, read_reg_select, poll,
            special_mask, init_state, auto_eoi, rotate_on_auto_eoi, special_fully_nested_mode,
            init4, elcr, elcr_mask;
};

struct kvm_ioapic_state {
    uint64_t base_address;
    uint32_t ioregsel;
    uint32_t id;
    uint32_t irr;
    uint32_t pad;
    uint64_t redirtbl[24];
};

struct kvm_irqchip {
    uint32_t chip_id;
    uint32_t pad;
    union {
        char dummy[512];
        struct kvm_pic_state pic;
        struct kvm_ioapic_state ioapic;
    } chip;
};

/* asm/kvm.h, KVM_GET/SET_LAPIC (vcpu, with the in-kernel irqchip): the local
   APIC's register page. */
struct kvm_lapic_state {
    char regs[1024];
};

/* asm/kvm.h, KVM_GET/SET_PIT2 (VM, with KVM_CREATE_PIT2): the 8254's three
   channels and its flags. */
struct kvm_pit_channel_state {
    uint32_t count;
    uint16_t latched_count;
    uint8_t count_latched, status_latched, status, read_state, write_state, write_latch, rw_mode, mode, bcd,
            gate;
    int64_t count_load_time;
};

struct kvm_pit_state2 {
    struct kvm_pit_channel_state channels[3];
    uint32_t flags;
    uint32_t reserved[9];
};

/* asm/kvm.h, KVM_GET_MSR_INDEX_LIST (system fd): nmsrs is the capacity in
   (E2BIG, with nmsrs set, when too small), the count out. */
struct kvm_msr_list {
    uint32_t nmsrs;
    uint32_t indices[];
};

/* asm/kvm.h, KVM_GET_MSRS / KVM_SET_MSRS: both return how many entries, from
   the first, they processed (fewer means entry [n] failed). */
struct kvm_msr_entry {
    uint32_t index;
    uint32_t reserved;
    uint64_t data;
};

struct kvm_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[];
};

/* asm/kvm.h, KVM_GET/SET_XSAVE (KVM_CAP_XSAVE): the XSAVE image, laid out as
   the host's CPUID leaf 0xD says; 4096 bytes unless KVM_CAP_XSAVE2 says more. */
struct kvm_xsave {
    uint32_t region[1024];
    uint32_t extra[];
};

/* asm/kvm.h, KVM_GET/SET_XCRS (KVM_CAP_XCRS): XCR0 and friends; 16 = KVM_MAX_XCRS. */
struct kvm_xcr {
    uint32_t xcr;
    uint32_t reserved;
    uint64_t value;
};

struct kvm_xcrs {
    uint32_t nr_xcrs;
    uint32_t flags;
    struct kvm_xcr xcrs[16];
    uint64_t padding[16];
};

/* asm/kvm.h, KVM_GET/SET_DEBUGREGS (KVM_CAP_DEBUGREGS): the guest's own
   DR0-3, DR6 and DR7 (not the ones KVM_SET_GUEST_DEBUG arms for kvmrig). */
struct kvm_debugregs {
    uint64_t db[4];
    uint64_t dr6;
    uint64_t dr7;
    uint64_t flags;
    uint64_t reserved[9];
};

/* asm/kvm.h, kvm_run.debug.arch on KVM_EXIT_DEBUG: exception is the vector
   (1 = #DB, 3 = #BP), pc the linear address (cs.base + rip). */
struct kvm_debug_exit_arch {
    uint32_t exception;
    uint32_t pad;
    uint64_t pc;
    uint64_t dr6;
    uint64_t dr7;
};
"""

_CDEF_ARM64 = """
/* asm/ptrace.h: user_pt_regs, the first member of arm64 kvm_regs. */
struct user_pt_regs {
    uint64_t regs[31];
    uint64_t sp;
    uint64_t pc;
    uint64_t pstate;
};

/* asm/ptrace.h: `__uint128_t vregs[32]` in C. cffi has no 128-bit integer,
   so each V register is two u64 (low, high on a little-endian host). The C
   struct is 16-byte aligned; kvm_regs pads explicitly before it. */
struct user_fpsimd_state {
    uint64_t vregs[32][2];
    uint32_t fpsr;
    uint32_t fpcr;
    uint32_t __reserved[2];
};

/* asm/kvm.h: arm64 kvm_regs. arm64 KVM does not implement KVM_GET_REGS;
   this layout exists because KVM_REG_ARM_CORE register ids are offsets into
   it, in 32-bit words (api.rst: X0 0x0000 .. PC 0x0040, V0 0x0054). */
struct kvm_regs {
    struct user_pt_regs regs;
    uint64_t sp_el1;
    uint64_t elr_el1;
    uint64_t spsr[5];
    uint64_t _pad_align16;  /* not in C: alignment of __uint128_t vregs */
    struct user_fpsimd_state fp_regs;
};

/* asm/kvm.h, KVM_ARM_VCPU_INIT / KVM_ARM_PREFERRED_TARGET: features is a
   bitmap indexed by KVM_ARM_VCPU_* bit numbers. */
struct kvm_vcpu_init {
    uint32_t target;
    uint32_t features[7];
};

/* asm/kvm.h, KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_HW: the first
   ID_AA64DFR0_EL1.{BRPs,WRPs}+1 slots are used (KVM_CAP_GUEST_DEBUG_HW_BPS /
   _WPS say how many); 64-bit fields although the control regs are 32. */
struct kvm_guest_debug_arch {
    uint64_t dbg_bcr[16];
    uint64_t dbg_bvr[16];
    uint64_t dbg_wcr[16];
    uint64_t dbg_wvr[16];
};

/* asm/kvm.h: kvm_run.s.regs on arm64 (no register sets to sync). */
struct kvm_sync_regs {
    uint64_t device_irq_level;
};

/* asm/kvm.h, kvm_run.debug.arch: hsr = ESR_EL2 (EC in bits 31:26), far the
   faulting data address for watchpoints. */
struct kvm_debug_exit_arch {
    uint32_t hsr;
    uint32_t hsr_high;
    uint64_t far;
};

/* asm/kvm.h, KVM_GET/SET_VCPU_EVENTS on arm64: a pending virtual SError
   (with its ESR) or external data abort (VM reuse compares them). */
struct kvm_vcpu_events {
    struct {
        uint8_t serror_pending;
        uint8_t serror_has_esr;
        uint8_t ext_dabt_pending;
        uint8_t pad[5];
        uint64_t serror_esr;
    } exception;
    uint32_t reserved[12];
};
"""

_CDEF_COMMON = """
/* linux/kvm.h, KVM_SET_USER_MEMORY_REGION: guest_phys_addr, memory_size and
   userspace_addr must be page aligned; the host memory must stay mapped for
   as long as the slot exists. memory_size 0 deletes the slot. */
struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};

/* linux/kvm.h, KVM_GET_REG_LIST (arm64 snapshots): n is the capacity in, the
   count out (E2BIG, with n set, when the array is too small). */
struct kvm_reg_list {
    uint64_t n;
    uint64_t reg[];
};

/* linux/kvm.h, KVM_GET_DIRTY_LOG: one bit per page of the slot, set for each
   page the guest wrote since the last call (which clears them). The slot
   needs KVM_MEM_LOG_DIRTY_PAGES. */
struct kvm_dirty_log {
    uint32_t slot;
    uint32_t padding1;
    uint64_t dirty_bitmap;   /* void * in C (a union with u64 padding2) */
};

/* linux/kvm.h, KVM_GET/SET_MP_STATE: KVM_MP_STATE_* (runnable, halted, stopped...). */
struct kvm_mp_state {
    uint32_t mp_state;
};

/* linux/kvm.h, KVM_GET_ONE_REG / KVM_SET_ONE_REG: addr points at a buffer of
   KVM_REG_SIZE(id) bytes (1 << bits 55:52 of the id). */
struct kvm_one_reg {
    uint64_t id;
    uint64_t addr;
};

/* linux/kvm.h, KVM_CREATE_DEVICE (VM fd; KVM_CAP_DEVICE_CTRL): type is a
   KVM_DEV_TYPE_*, fd comes back (the device's own fd for the attr ioctls);
   flags KVM_CREATE_DEVICE_TEST only asks whether the type exists. */
struct kvm_create_device {
    uint32_t type;
    uint32_t fd;
    uint32_t flags;
};

/* linux/kvm.h, KVM_{SET,GET,HAS}_DEVICE_ATTR on a device fd (or a vcpu fd
   for per-vCPU attrs such as the timer PPIs): addr points at the value
   (u64 for VGIC addresses, u32 for NR_IRQS); CTRL_INIT takes none. */
struct kvm_device_attr {
    uint32_t flags;
    uint32_t group;
    uint64_t attr;
    uint64_t addr;
};

/* linux/kvm.h, KVM_IRQ_LINE (VM fd): drive input `irq` of the in-kernel irqchip
   to `level`. On x86 irq is a PIC and IOAPIC pin; on arm64 irq packs type, vcpu and
   number (api.rst "KVM_IRQ_LINE": bits 27:24 type, 23:16 vcpu, 15:0 num;
   for an SPI num is the GIC INTID, 32..1019). level 1 asserts, 0 clears. */
struct kvm_irq_level {
    union { uint32_t irq; int32_t status; };
    uint32_t level;
};

/* linux/kvm.h, KVM_SET_GUEST_DEBUG. */
struct kvm_guest_debug {
    uint32_t control;
    uint32_t pad;
    struct kvm_guest_debug_arch arch;
};

/* linux/kvm.h: the page shared with the kernel, mmap'd from the vcpu fd
   (KVM_GET_VCPU_MMAP_SIZE bytes; the io data and more pages follow it).
   The exit union is 256 bytes at offset 32 on every arch (s390 alone adds
   psw fields before it). Only the exits kvmrig handles are spelled out. */
struct kvm_run {
    uint8_t  request_interrupt_window;
    uint8_t  immediate_exit;          /* set to 1 to make KVM_RUN return EINTR */
    uint8_t  padding1[6];
    uint32_t exit_reason;
    uint8_t  ready_for_interrupt_injection;
    uint8_t  if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct { uint64_t hardware_exit_reason; } hw;                 /* UNKNOWN */
        struct { uint64_t hardware_entry_failure_reason;
                 uint32_t cpu; } fail_entry;                          /* FAIL_ENTRY */
        struct { uint32_t exception; uint32_t error_code; } ex;      /* EXCEPTION */
        struct { uint8_t  direction;      /* KVM_EXIT_IO_IN / _OUT */
                 uint8_t  size;           /* bytes per access: 1, 2, 4 */
                 uint16_t port;
                 uint32_t count;          /* > 1 for rep ins/outs */
                 uint64_t data_offset;    /* from the start of kvm_run */
               } io;                                                  /* IO */
        struct { struct kvm_debug_exit_arch arch; } debug;           /* DEBUG */
        struct { uint64_t phys_addr;
                 uint8_t  data[8];        /* written bytes / answer for reads */
                 uint32_t len;
                 uint8_t  is_write; } mmio;                           /* MMIO */
        struct { uint32_t suberror;
                 uint32_t ndata;
                 uint64_t data[16]; } internal;                       /* INTERNAL_ERROR */
        struct { uint32_t type;           /* KVM_SYSTEM_EVENT_* */
                 uint32_t ndata;
                 union { uint64_t flags; uint64_t data[16]; };
               } system_event;                                        /* SYSTEM_EVENT */
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    /* SYNC_REGS_SIZE_BYTES: with kvm_valid_regs set (KVM_CAP_SYNC_REGS), KVM
       stores the chosen register sets here on every return from KVM_RUN. */
    union { struct kvm_sync_regs regs; char padding[2048]; } s;
};
"""

_CDEF_LIBC = """
int ioctl(int fd, unsigned long request, ...);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
"""

_CDEF_ARCH = {"x86_64": _CDEF_X86_64, "arm64": _CDEF_ARM64}


def build_ffi(arch: str) -> cffi.FFI:
    """A fresh FFI holding the KVM layouts of `arch` ("x86_64" or "arm64").

    Both are LP64 little-endian targets with natural alignment, so the layout
    cffi computes on either host is the target's.
    """
    if arch not in _CDEF_ARCH:
        raise ValueError(f"no KVM ABI for architecture {arch!r} (kvmrig knows {', '.join(ARCHES)})")
    import cffi   # the parser: only when the cached module (ffi_cache) cannot be used

    f = cffi.FFI()
    f.cdef(_CDEF_ARCH[arch])
    f.cdef(_CDEF_COMMON)
    f.cdef(_CDEF_LIBC)
    return f


@functools.cache
def ffi_for(arch: str) -> cffi.FFI:
    """The (cached) FFI of `arch`; `ffi_for(ARCH) is ffi`. Read from the
    declarations cffi serialized once (ffi_cache), else parsed here."""
    if arch in _CDEF_ARCH:
        cached = ffi_cache.load(f"kvm_abi_{arch}", (_CDEF_ARCH[arch], _CDEF_COMMON, _CDEF_LIBC),
                                lambda: build_ffi(arch))
        if cached is not None:
            return cached
    return build_ffi(arch)


# The host's layouts. On an unsupported host we still import (so tooling can
# list backends) but expose the x86_64 layouts; the backend refuses to start.
ffi = ffi_for(ARCH if ARCH in _CDEF_ARCH else "x86_64")
libc = ffi.dlopen(None)

MAP_FAILED = ffi.cast("void *", -1)


def ulong(value: int):
    """An integer ioctl argument, typed for the variadic part of ioctl()."""
    return ffi.cast("unsigned long", value)


# --------------------------------------------------------------------------
# ioctl numbers: asm-generic/ioctl.h encoding (x86_64 and arm64 alike):
# dir in bits 31:30 (1 = write to kernel, 2 = read from it), size in 29:16,
# type ('KVMIO' = 0xAE) in 15:8, number in 7:0.

KVMIO = 0xAE
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << 14), size
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _IO(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


KVM_API_VERSION = 12


def ioctl_table(arch: str) -> dict[str, int]:
    """Every ioctl kvmrig uses on `arch`, by name; sizes come from that arch's layouts."""
    f = ffi_for(arch)

    def IOR(nr: int, ctype: str) -> int:
        return _ioc(_IOC_READ, nr, f.sizeof(ctype))

    def IOW(nr: int, ctype: str) -> int:
        return _ioc(_IOC_WRITE, nr, f.sizeof(ctype))

    def IOWR(nr: int, ctype: str) -> int:
        return _ioc(_IOC_READ | _IOC_WRITE, nr, f.sizeof(ctype))

    table = {
        # name                          number                                     fd: argument; capability
        "KVM_GET_API_VERSION":          _IO(0x00),                               # system
        "KVM_CREATE_VM":                _IO(0x01),                               # system: machine type
        "KVM_CHECK_EXTENSION":          _IO(0x03),                               # system or VM: KVM_CAP_*
        "KVM_GET_VCPU_MMAP_SIZE":       _IO(0x04),                               # system
        "KVM_CREATE_VCPU":              _IO(0x41),                               # VM: vcpu index
        "KVM_SET_USER_MEMORY_REGION":   IOW(0x46, "struct kvm_userspace_memory_region"),  # VM; KVM_CAP_USER_MEMORY
        "KVM_RUN":                      _IO(0x80),                               # vcpu
        "KVM_SET_GUEST_DEBUG":          IOW(0x9B, "struct kvm_guest_debug"),     # vcpu; KVM_CAP_SET_GUEST_DEBUG
        # Both ONE_REG ioctls are _IOW, GET included: the struct carries only
        # the id and a pointer; the value travels through the pointer.
        "KVM_GET_ONE_REG":              IOW(0xAB, "struct kvm_one_reg"),         # vcpu; KVM_CAP_ONE_REG
        "KVM_SET_ONE_REG":              IOW(0xAC, "struct kvm_one_reg"),         # vcpu; KVM_CAP_ONE_REG
        "KVM_CREATE_IRQCHIP":           _IO(0x60),                               # VM, before vcpus; KVM_CAP_IRQCHIP
        "KVM_IRQ_LINE":                 IOW(0x61, "struct kvm_irq_level"),       # VM; KVM_CAP_IRQCHIP (x86 irqchip, arm64 GIC)
        "KVM_GET_REG_LIST":             IOWR(0xB0, "struct kvm_reg_list"),       # vcpu (arm64 snapshots)
        "KVM_GET_DIRTY_LOG":            IOW(0x42, "struct kvm_dirty_log"),       # VM: slot, bitmap
        "KVM_GET_MP_STATE":             IOR(0x98, "struct kvm_mp_state"),        # vcpu; KVM_CAP_MP_STATE
        "KVM_SET_MP_STATE":             IOW(0x99, "struct kvm_mp_state"),        # vcpu; KVM_CAP_MP_STATE
        "KVM_CREATE_DEVICE":            IOWR(0xE0, "struct kvm_create_device"),  # VM; KVM_CAP_DEVICE_CTRL
        "KVM_SET_DEVICE_ATTR":          IOW(0xE1, "struct kvm_device_attr"),     # device or vcpu
        "KVM_GET_DEVICE_ATTR":          IOW(0xE2, "struct kvm_device_attr"),     # device or vcpu
        "KVM_HAS_DEVICE_ATTR":          IOW(0xE3, "struct kvm_device_attr"),     # device or vcpu
    }
    if arch == "x86_64":
        table.update({
            "KVM_GET_SUPPORTED_CPUID":  IOWR(0x05, "struct kvm_cpuid2"),         # system; KVM_CAP_EXT_CPUID
            "KVM_SET_TSS_ADDR":         _IO(0x47),                               # VM: gpa; KVM_CAP_SET_TSS_ADDR
            "KVM_SET_IDENTITY_MAP_ADDR": IOW(0x48, "uint64_t"),                  # VM: u64*; KVM_CAP_SET_IDENTITY_MAP_ADDR
            "KVM_GET_REGS":             IOR(0x81, "struct kvm_regs"),            # vcpu
            "KVM_SET_REGS":             IOW(0x82, "struct kvm_regs"),            # vcpu
            "KVM_GET_SREGS":            IOR(0x83, "struct kvm_sregs"),           # vcpu
            "KVM_SET_SREGS":            IOW(0x84, "struct kvm_sregs"),           # vcpu
            "KVM_GET_FPU":              IOR(0x8C, "struct kvm_fpu"),             # vcpu
            "KVM_SET_FPU":              IOW(0x8D, "struct kvm_fpu"),             # vcpu
            "KVM_SET_CPUID2":           IOW(0x90, "struct kvm_cpuid2"),          # vcpu; KVM_CAP_EXT_CPUID
            "KVM_CREATE_PIT2":          IOW(0x77, "struct kvm_pit_config"),      # VM, after the irqchip; KVM_CAP_PIT2
            "KVM_GET_IRQCHIP":          IOWR(0x62, "struct kvm_irqchip"),        # VM, with the irqchip
            "KVM_SET_IRQCHIP":          IOR(0x63, "struct kvm_irqchip"),         # VM (sic: _IOR in kvm.h)
            "KVM_GET_LAPIC":            IOR(0x8E, "struct kvm_lapic_state"),     # vcpu, with the irqchip
            "KVM_SET_LAPIC":            IOW(0x8F, "struct kvm_lapic_state"),     # vcpu, with the irqchip
            "KVM_GET_PIT2":             IOR(0x9F, "struct kvm_pit_state2"),      # VM; KVM_CAP_PIT_STATE2
            "KVM_SET_PIT2":             IOW(0xA0, "struct kvm_pit_state2"),      # VM; KVM_CAP_PIT_STATE2
            "KVM_GET_MSR_INDEX_LIST":   IOWR(0x02, "struct kvm_msr_list"),       # system
            "KVM_GET_MSRS":             IOWR(0x88, "struct kvm_msrs"),           # vcpu
            "KVM_SET_MSRS":             IOW(0x89, "struct kvm_msrs"),            # vcpu
            "KVM_GET_VCPU_EVENTS":      IOR(0x9F, "struct kvm_vcpu_events"),     # vcpu; KVM_CAP_VCPU_EVENTS
            "KVM_SET_VCPU_EVENTS":      IOW(0xA0, "struct kvm_vcpu_events"),     # vcpu; KVM_CAP_VCPU_EVENTS
            "KVM_GET_DEBUGREGS":        IOR(0xA1, "struct kvm_debugregs"),       # vcpu; KVM_CAP_DEBUGREGS
            "KVM_SET_DEBUGREGS":        IOW(0xA2, "struct kvm_debugregs"),       # vcpu; KVM_CAP_DEBUGREGS
            "KVM_GET_XSAVE":            IOR(0xA4, "struct kvm_xsave"),           # vcpu; KVM_CAP_XSAVE
            "KVM_SET_XSAVE":            IOW(0xA5, "struct kvm_xsave"),           # vcpu; KVM_CAP_XSAVE
            "KVM_GET_XCRS":             IOR(0xA6, "struct kvm_xcrs"),            # vcpu; KVM_CAP_XCRS
            "KVM_SET_XCRS":             IOW(0xA7, "struct kvm_xcrs"),            # vcpu; KVM_CAP_XCRS
            "KVM_GET_XSAVE2":           IOR(0xCF, "struct kvm_xsave"),           # vcpu; KVM_CAP_XSAVE2
            "KVM_GET_TSC_KHZ":          _IO(0xA3),                               # vcpu; KVM_CAP_GET_TSC_KHZ
        })
    elif arch == "arm64":
        table.update({
            "KVM_ARM_VCPU_INIT":        IOW(0xAE, "struct kvm_vcpu_init"),       # vcpu, before the first run
            "KVM_ARM_PREFERRED_TARGET": IOR(0xAF, "struct kvm_vcpu_init"),       # VM
            "KVM_GET_VCPU_EVENTS":      IOR(0x9F, "struct kvm_vcpu_events"),     # vcpu; KVM_CAP_VCPU_EVENTS
            "KVM_SET_VCPU_EVENTS":      IOW(0xA0, "struct kvm_vcpu_events"),     # vcpu; KVM_CAP_VCPU_EVENTS
        })
    return table


#: The host's ioctl numbers by name (arch-foreign ones absent).
IOCTLS: dict[str, int] = ioctl_table(ARCH if ARCH in _CDEF_ARCH else "x86_64")

# The same numbers as module names; an ioctl of the other arch is None here.
KVM_GET_API_VERSION = IOCTLS["KVM_GET_API_VERSION"]
KVM_CREATE_VM = IOCTLS["KVM_CREATE_VM"]
KVM_CHECK_EXTENSION = IOCTLS["KVM_CHECK_EXTENSION"]
KVM_GET_VCPU_MMAP_SIZE = IOCTLS["KVM_GET_VCPU_MMAP_SIZE"]
KVM_CREATE_VCPU = IOCTLS["KVM_CREATE_VCPU"]
KVM_SET_USER_MEMORY_REGION = IOCTLS["KVM_SET_USER_MEMORY_REGION"]
KVM_RUN = IOCTLS["KVM_RUN"]
KVM_SET_GUEST_DEBUG = IOCTLS["KVM_SET_GUEST_DEBUG"]
KVM_GET_ONE_REG = IOCTLS["KVM_GET_ONE_REG"]
KVM_SET_ONE_REG = IOCTLS["KVM_SET_ONE_REG"]
KVM_IRQ_LINE = IOCTLS["KVM_IRQ_LINE"]
KVM_CREATE_DEVICE = IOCTLS["KVM_CREATE_DEVICE"]
KVM_SET_DEVICE_ATTR = IOCTLS["KVM_SET_DEVICE_ATTR"]
KVM_GET_DEVICE_ATTR = IOCTLS["KVM_GET_DEVICE_ATTR"]
KVM_HAS_DEVICE_ATTR = IOCTLS["KVM_HAS_DEVICE_ATTR"]
KVM_GET_SUPPORTED_CPUID = IOCTLS.get("KVM_GET_SUPPORTED_CPUID")
KVM_SET_TSS_ADDR = IOCTLS.get("KVM_SET_TSS_ADDR")
KVM_SET_IDENTITY_MAP_ADDR = IOCTLS.get("KVM_SET_IDENTITY_MAP_ADDR")
KVM_GET_REGS = IOCTLS.get("KVM_GET_REGS")       # arm64 registers go through ONE_REG
KVM_SET_REGS = IOCTLS.get("KVM_SET_REGS")
KVM_GET_SREGS = IOCTLS.get("KVM_GET_SREGS")
KVM_SET_SREGS = IOCTLS.get("KVM_SET_SREGS")
KVM_GET_FPU = IOCTLS.get("KVM_GET_FPU")
KVM_SET_FPU = IOCTLS.get("KVM_SET_FPU")
KVM_GET_MSR_INDEX_LIST = IOCTLS.get("KVM_GET_MSR_INDEX_LIST")
KVM_GET_MSRS = IOCTLS.get("KVM_GET_MSRS")
KVM_SET_MSRS = IOCTLS.get("KVM_SET_MSRS")
KVM_GET_VCPU_EVENTS = IOCTLS.get("KVM_GET_VCPU_EVENTS")
KVM_SET_VCPU_EVENTS = IOCTLS.get("KVM_SET_VCPU_EVENTS")
KVM_GET_DEBUGREGS = IOCTLS.get("KVM_GET_DEBUGREGS")
KVM_SET_DEBUGREGS = IOCTLS.get("KVM_SET_DEBUGREGS")
KVM_GET_XSAVE = IOCTLS.get("KVM_GET_XSAVE")
KVM_SET_XSAVE = IOCTLS.get("KVM_SET_XSAVE")
KVM_GET_XCRS = IOCTLS.get("KVM_GET_XCRS")
KVM_SET_XCRS = IOCTLS.get("KVM_SET_XCRS")
KVM_GET_XSAVE2 = IOCTLS.get("KVM_GET_XSAVE2")
KVM_GET_TSC_KHZ = IOCTLS.get("KVM_GET_TSC_KHZ")
KVM_GET_REG_LIST = IOCTLS["KVM_GET_REG_LIST"]
KVM_GET_DIRTY_LOG = IOCTLS["KVM_GET_DIRTY_LOG"]
KVM_GET_MP_STATE = IOCTLS["KVM_GET_MP_STATE"]
KVM_SET_MP_STATE = IOCTLS["KVM_SET_MP_STATE"]
KVM_SET_CPUID2 = IOCTLS.get("KVM_SET_CPUID2")
KVM_CREATE_PIT2 = IOCTLS.get("KVM_CREATE_PIT2")
KVM_GET_IRQCHIP = IOCTLS.get("KVM_GET_IRQCHIP")
KVM_SET_IRQCHIP = IOCTLS.get("KVM_SET_IRQCHIP")
KVM_GET_LAPIC = IOCTLS.get("KVM_GET_LAPIC")
KVM_SET_LAPIC = IOCTLS.get("KVM_SET_LAPIC")
KVM_GET_PIT2 = IOCTLS.get("KVM_GET_PIT2")
KVM_SET_PIT2 = IOCTLS.get("KVM_SET_PIT2")
KVM_CREATE_IRQCHIP = IOCTLS["KVM_CREATE_IRQCHIP"]
KVM_ARM_VCPU_INIT = IOCTLS.get("KVM_ARM_VCPU_INIT")
KVM_ARM_PREFERRED_TARGET = IOCTLS.get("KVM_ARM_PREFERRED_TARGET")

# --------------------------------------------------------------------------
# Exit reasons (kvm_run.exit_reason), linux/kvm.h.

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_S390_SIEIC = 13
KVM_EXIT_S390_RESET = 14
KVM_EXIT_DCR = 15
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_OSI = 18
KVM_EXIT_PAPR_HCALL = 19
KVM_EXIT_S390_UCONTROL = 20
KVM_EXIT_WATCHDOG = 21
KVM_EXIT_S390_TSCH = 22
KVM_EXIT_EPR = 23
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_S390_STSI = 25
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_ARM_NISV = 28
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_AP_RESET_HOLD = 32
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_XEN = 34
KVM_EXIT_RISCV_SBI = 35
KVM_EXIT_RISCV_CSR = 36
KVM_EXIT_NOTIFY = 37
KVM_EXIT_LOONGARCH_IOCSR = 38   # Linux 6.x headers; absent from older ones
KVM_EXIT_MEMORY_FAULT = 39
KVM_EXIT_TDX = 40

#: exit_reason -> "KVM_EXIT_..." for every reason above (built from the names,
#: so a reason cannot be listed twice or forgotten).
def _exit_reasons() -> dict[int, str]:
    pairs = sorted((value, name) for name, value in globals().items()
                   if name.startswith("KVM_EXIT_"))
    table = dict(pairs)
    assert len(table) == len(pairs), "two KVM_EXIT_* names share a number"
    return table


EXIT_REASONS: dict[int, str] = _exit_reasons()


def exit_name(reason: int) -> str:
    """"KVM_EXIT_HLT" for 5; "KVM_EXIT_? (raw 99)" for a reason kvmrig does not know."""
    return EXIT_REASONS.get(reason, f"KVM_EXIT_? (raw {reason})")


# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

# kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1       # KVM_CAP_READONLY_MEM; writes exit as KVM_EXIT_MMIO

# --------------------------------------------------------------------------
# kvm_guest_debug.control. The low 16 bits are generic (linux/kvm.h), the
# high 16 per arch (asm/kvm.h). Bit 17 is "use hardware debug registers" on
# both: x86 names it USE_HW_BP (DR0-3/DR7 from debugreg[]), arm64 USE_HW
# (DBGBCR/BVR/WCR/WVR from dbg_*[]); both names are defined on both arches.

KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000      # int3 / brk exit as KVM_EXIT_DEBUG
KVM_GUESTDBG_USE_HW_BP = 0x00020000      # x86 name
KVM_GUESTDBG_USE_HW = 0x00020000         # arm64 name
KVM_GUESTDBG_INJECT_DB = 0x00040000      # x86 only: inject #DB into the guest
KVM_GUESTDBG_INJECT_BP = 0x00080000      # x86 only: inject #BP into the guest
KVM_GUESTDBG_BLOCKIRQ = 0x00100000       # x86 only: no interrupts while stepping

# --------------------------------------------------------------------------
# Capabilities (KVM_CHECK_EXTENSION), linux/kvm.h.

KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_SYNC_MMU = 16
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_X86_ROBUST_SINGLESTEP = 51
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_ONE_REG = 70
KVM_CAP_READONLY_MEM = 81
KVM_CAP_ARM_PSCI = 87
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_ARM_PSCI_0_2 = 102
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_GUEST_DEBUG_HW_BPS = 119
KVM_CAP_GUEST_DEBUG_HW_WPS = 120
KVM_CAP_ARM_PMU_V3 = 126
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SYNC_REGS = 74
KVM_CAP_ARM_VM_IPA_SIZE = 165
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_MP_STATE = 14
KVM_CAP_XSAVE2 = 208

# KVM_SET_VCPU_EVENTS: which optional parts of struct kvm_vcpu_events to apply.
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
KVM_VCPUEVENT_VALID_SMM = 0x00000008

KVM_MP_STATE_STOPPED = 5
KVM_CAP_SET_GUEST_DEBUG2 = 195

# --------------------------------------------------------------------------
# ONE_REG ids, linux/kvm.h: arch in bits 63:56, size in 55:52.

KVM_REG_ARCH_MASK = 0xFF00000000000000
KVM_REG_GENERIC = 0x0000000000000000
KVM_REG_X86 = 0x2000000000000000
KVM_REG_ARM64 = 0x6000000000000000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_MASK = 0x00F0000000000000
KVM_REG_SIZE_U8 = 0x0000000000000000
KVM_REG_SIZE_U16 = 0x0010000000000000
KVM_REG_SIZE_U32 = 0x0020000000000000
KVM_REG_SIZE_U64 = 0x0030000000000000
KVM_REG_SIZE_U128 = 0x0040000000000000
KVM_REG_SIZE_U256 = 0x0050000000000000
KVM_REG_SIZE_U512 = 0x0060000000000000
KVM_REG_SIZE_U1024 = 0x0070000000000000
KVM_REG_SIZE_U2048 = 0x0080000000000000


def reg_size(reg_id: int) -> int:
    """Bytes of a ONE_REG value (KVM_REG_SIZE in asm/kvm.h): 1 << size field."""
    return 1 << ((reg_id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)


# linux/kvm.h: kvm_mp_state.mp_state values
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

# linux/kvm.h: kvm_pit_config.flags
KVM_PIT_SPEAKER_DUMMY = 1

# asm/kvm.h: kvm_irqchip.chip_id (x86)
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2

# x86 kvm_run.kvm_valid_regs bits (asm/kvm.h)
KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

# arm64 (asm/kvm.h): register group ("coprocessor") in bits 27:16.
KVM_REG_ARM_COPROC_MASK = 0x000000000FFF0000
KVM_REG_ARM_COPROC_SHIFT = 16
KVM_REG_ARM_CORE = 0x0010 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM_DEMUX = 0x0011 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG = 0x0013 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM_FW = 0x0014 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG_OP0_SHIFT = 14
KVM_REG_ARM64_SYSREG_OP1_SHIFT = 11
KVM_REG_ARM64_SYSREG_CRN_SHIFT = 7
KVM_REG_ARM64_SYSREG_CRM_SHIFT = 3
KVM_REG_ARM64_SYSREG_OP2_SHIFT = 0
KVM_NR_SPSR = 5

# arm64 kvm_vcpu_init.features bit numbers and targets (asm/kvm.h)
KVM_ARM_VCPU_POWER_OFF = 0
KVM_ARM_VCPU_EL1_32BIT = 1
KVM_ARM_VCPU_PSCI_0_2 = 2
KVM_ARM_VCPU_PMU_V3 = 3
KVM_ARM_TARGET_GENERIC_V8 = 5

# --------------------------------------------------------------------------
# In-kernel devices (linux/kvm.h enum kvm_device_type) and the arm64 GICv3
# (asm/kvm.h; Documentation/virt/kvm/devices/arm-vgic-v3.rst).

KVM_CREATE_DEVICE_TEST = 1
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_ARM_VGIC_V3 = 7

# kvm_device_attr.group / .attr of the VGIC device
KVM_DEV_ARM_VGIC_GRP_ADDR = 0          # attr: which region; addr -> u64 guest-physical base
KVM_DEV_ARM_VGIC_GRP_NR_IRQS = 3       # addr -> u32: all INTIDs incl. the 32 private; 64..1024, multiple of 32
KVM_DEV_ARM_VGIC_GRP_CTRL = 4
KVM_DEV_ARM_VGIC_CTRL_INIT = 0         # after every vCPU exists; no value
KVM_VGIC_V3_ADDR_TYPE_DIST = 2         # 64 KiB, 64 KiB aligned
KVM_VGIC_V3_ADDR_TYPE_REDIST = 3       # 128 KiB per vCPU (RD + SGI frames), contiguous
KVM_VGIC_V3_DIST_SIZE = 0x10000
KVM_VGIC_V3_REDIST_SIZE = 2 * 0x10000

# The vGICv3's state (snapshots: backends/kvm/arm64_gic_state.py). Register
# groups take attr = MPIDR affinity (Aff3.Aff2.Aff1.Aff0, bits 63:32) | offset
# (u32 values) / ICC sysreg instr (op0:op1:CRn:CRm:op2, u64 values) / line
# level info (bits 31:10) | vINTID (a multiple of 32, u32 bitmap).
KVM_DEV_ARM_VGIC_GRP_DIST_REGS = 1
KVM_DEV_ARM_VGIC_GRP_REDIST_REGS = 5
KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS = 6
KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO = 7
KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT = 32
KVM_DEV_ARM_VGIC_V3_MPIDR_MASK = 0xFFFFFFFF << 32
KVM_DEV_ARM_VGIC_OFFSET_MASK = 0xFFFFFFFF
KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK = 0xFFFF
KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT = 10
KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_MASK = 0x3FFFFF << 10
KVM_DEV_ARM_VGIC_LINE_LEVEL_INTID_MASK = 0x3FF
VGIC_LEVEL_INFO_LINE_LEVEL = 0          # asm/kvm.h; not KVM_-prefixed

# KVM_IRQ_LINE's irq field on arm64 (asm/kvm.h)
KVM_ARM_IRQ_TYPE_SHIFT = 24
KVM_ARM_IRQ_VCPU_SHIFT = 16
KVM_ARM_IRQ_NUM_SHIFT = 0
KVM_ARM_IRQ_TYPE_CPU = 0
KVM_ARM_IRQ_TYPE_SPI = 1
KVM_ARM_IRQ_TYPE_PPI = 2

# Per-vCPU device attrs (arm-vcpu.rst): the PMU's overflow PPI (an int INTID,
# before INIT) and its INIT (after the vGIC exists); the generic timer's PPIs.
KVM_ARM_VCPU_PMU_V3_CTRL = 0
KVM_ARM_VCPU_PMU_V3_IRQ = 0
KVM_ARM_VCPU_PMU_V3_INIT = 1
KVM_ARM_VCPU_TIMER_CTRL = 1
KVM_ARM_VCPU_TIMER_IRQ_VTIMER = 0
KVM_ARM_VCPU_TIMER_IRQ_PTIMER = 1


def arm_irq_spi(intid: int) -> int:
    """KVM_IRQ_LINE's irq for a shared peripheral interrupt: type SPI, the INTID (32..1019)."""
    if not 32 <= intid <= 1019:
        raise ValueError(f"INTID {intid} is not an SPI (32..1019)")
    return KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT | intid << KVM_ARM_IRQ_NUM_SHIFT


def arm64_core_reg(*path: str | int, size: int | None = None) -> int:
    """The ONE_REG id of an arm64 core register, by its path in kvm_regs.

    `arm64_core_reg("regs", "pc")`, `arm64_core_reg("regs", "regs", 3)` (x3),
    `arm64_core_reg("fp_regs", "vregs", 0)` (v0, 128-bit),
    `arm64_core_reg("fp_regs", "fpsr")` (32-bit). The index is the byte offset
    in kvm_regs divided by 4 (KVM_REG_ARM_CORE_REG); the size is the field's
    unless given. Works on any host (uses the arm64 layouts).
    """
    f = ffi_for("arm64")
    offset = f.offsetof("struct kvm_regs", *path)
    if size is None:
        t = f.typeof("struct kvm_regs")
        for p in path:
            t = t.item if isinstance(p, int) else dict(t.fields)[p].type
        size = f.sizeof(t)
    size_bits = {4: KVM_REG_SIZE_U32, 8: KVM_REG_SIZE_U64, 16: KVM_REG_SIZE_U128}[size]
    return KVM_REG_ARM64 | size_bits | KVM_REG_ARM_CORE | (offset // 4)


# --------------------------------------------------------------------------
# Allocation helpers for the flexible-array structs.

CPUID_MAX_ENTRIES = 256


def new_cpuid2(capacity: int = CPUID_MAX_ENTRIES):
    """A zeroed `struct kvm_cpuid2 *` with room for `capacity` entries, nent = capacity."""
    p = ffi.new("struct kvm_cpuid2 *", {"entries": capacity})
    p.nent = capacity
    return p


def _constants() -> dict[str, int]:
    out = {}
    for name, value in globals().items():
        if name.startswith("KVM") and isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    return out


#: Every integer constant above that applies to this host (arch-foreign
#: ioctls are None and left out), by its <linux/kvm.h> name. The ABI test
#: checks each against the C headers.
CONSTANTS: dict[str, int] = _constants()
