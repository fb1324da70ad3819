"""Owning wrappers around the three KVM file descriptors: Kvm -> Vm -> Vcpu.

Each object owns exactly one fd (the Vcpu also owns its kvm_run mapping), is
a context manager, and closes deterministically: a parent closes its live
children first, in reverse order of creation, then itself. close() is safe to
call twice. A raw fd is wrapped in an owner the moment the syscall returns it,
so an error in the next step cannot leak it.

Every failing ioctl raises KvmError(call, errno) naming the ioctl (plus what
it was asked to do, where that helps). Nothing here decides anything about a
rig: the backend built on top reads exits and registers and maps them to
events.

Memory is not owned here: Vm.set_memory takes the address of host memory the
caller owns (an mmap), which must stay mapped until the Vm is closed.
"""

from __future__ import annotations

import errno as _errno
import mmap as _mmap
import os
import sys
from typing import Iterable, Sequence

from kvmrig.errors import BackendError, BackendUnavailable, KvmError

from . import abi
from .perprocess import PerProcess

ffi = abi.ffi
_ioctl = abi.libc.ioctl
_GET_DIRTY_LOG = abi.KVM_GET_DIRTY_LOG
_ZERO = abi.ulong(0)
_SYNC_REGS = getattr(abi, "KVM_SYNC_X86_REGS", 0)
_SYNC_SREGS = getattr(abi, "KVM_SYNC_X86_SREGS", 0)
# KVM_SET_GUEST_DEBUG controls that read the registers or queue an event inside
# KVM at the ioctl (not at the next KVM_RUN): staged state goes in first.
_READS_STATE = abi.KVM_GUESTDBG_SINGLESTEP | abi.KVM_GUESTDBG_INJECT_DB \
    | abi.KVM_GUESTDBG_INJECT_BP
_SIZES = {t: ffi.sizeof(t) for t in ("struct kvm_regs", "struct kvm_sregs", "struct kvm_vcpu_events",
                                     "struct kvm_sync_regs")
          if abi.ARCH == "x86_64"}


def _call(fd: int, request: int, arg, call: str, detail: str = "") -> int:
    """ioctl(fd, request, arg), retried on EINTR; KvmError(call, errno) on failure.

    `arg` is cdata (a typed pointer or abi.ulong(n)). Not for KVM_RUN, where
    EINTR is an answer rather than a hiccup.
    """
    while True:
        r = _ioctl(fd, request, arg)
        if r >= 0:
            return r
        err = ffi.errno
        if err != _errno.EINTR:
            raise KvmError(call, err, detail)


class _Fd:
    """Owns one file descriptor; close() is idempotent, GC closes a forgotten one."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _require(request, what: str) -> int:
    if request is None:
        raise BackendError(f"{what} does not exist on {abi.ARCH} hosts")
    return request


# ---------------------------------------------------------------------------

# KVM_GET_SUPPORTED_CPUID walks every leaf the host supports: done once per
# process (keyed by pid so a forked child asks again) and copied out.
_cpuid_cache: PerProcess[bytes] = PerProcess()


class Kvm:
    """/dev/kvm: the system fd. Checks the API version on open."""

    def __init__(self, path: str = "/dev/kvm"):
        self.path = path
        self._fd: _Fd | None = None
        self._vms: list[Vm] = []
        try:
            raw = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BackendUnavailable(
                f"{path} does not exist: this machine offers no KVM. Load the kvm_intel or "
                "kvm_amd module, enable virtualization in the firmware, or (inside a VM) "
                "enable nested virtualization; otherwise use the emulator backend") from None
        except PermissionError:
            raise BackendUnavailable(
                f"no permission to open {path}: add your user to its group "
                f"(usually 'kvm': sudo usermod -aG kvm $USER, then log in again) "
                "or run as root") from None
        except OSError as e:
            raise BackendUnavailable(f"cannot open {path}: {e.strerror}") from None
        self._fd = _Fd(raw)
        try:
            self.api_version = _call(raw, abi.KVM_GET_API_VERSION, _ZERO, "KVM_GET_API_VERSION")
            if self.api_version != abi.KVM_API_VERSION:
                raise BackendUnavailable(
                    f"{path} speaks KVM API version {self.api_version}; kvmrig needs "
                    f"{abi.KVM_API_VERSION}")
            self.vcpu_mmap_size = _call(raw, abi.KVM_GET_VCPU_MMAP_SIZE, _ZERO,
                                        "KVM_GET_VCPU_MMAP_SIZE")
        except BaseException:
            self.close()
            raise

    @property
    def fd(self) -> int:
        """The raw fd (-1 once closed)."""
        return self._fd.fd if self._fd else -1

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm: 0 if absent, else 1 or a cap-specific number."""
        return _call(self.fd, abi.KVM_CHECK_EXTENSION, abi.ulong(cap), "KVM_CHECK_EXTENSION",
                     f"capability {cap}")

    def supported_cpuid(self):
        """A fresh `struct kvm_cpuid2 *` (room for at least 256 entries, nent set)
        holding KVM_GET_SUPPORTED_CPUID. The ioctl runs once per process;
        each call returns its own copy, free to edit before Vcpu.set_cpuid2."""
        data = _cpuid_cache.get(self._query_cpuid)
        entry = ffi.sizeof("struct kvm_cpuid_entry2")
        out = abi.new_cpuid2(max(abi.CPUID_MAX_ENTRIES, (len(data) - 8) // entry))
        ffi.memmove(out, data, len(data))
        return out

    def _query_cpuid(self) -> bytes:
        request = _require(abi.KVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID")
        capacity = abi.CPUID_MAX_ENTRIES
        while True:
            cpuid = abi.new_cpuid2(capacity)
            try:
                _call(self.fd, request, cpuid, "KVM_GET_SUPPORTED_CPUID")
                break
            except KvmError as e:
                if e.errno != _errno.E2BIG or capacity >= 4096:
                    raise
                capacity *= 2  # never seen with 256, but the ABI allows it
        size = ffi.offsetof("struct kvm_cpuid2", "entries") + \
            cpuid.nent * ffi.sizeof("struct kvm_cpuid_entry2")
        return bytes(ffi.buffer(cpuid, size))

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: every MSR index KVM saves and restores for a guest."""
        request = _require(abi.KVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST")
        capacity = 512
        while True:
            lst = ffi.new("struct kvm_msr_list *", {"indices": capacity})
            lst.nmsrs = capacity
            try:
                _call(self.fd, request, lst, "KVM_GET_MSR_INDEX_LIST")
                return [lst.indices[i] for i in range(lst.nmsrs)]
            except KvmError as e:
                if e.errno != _errno.E2BIG or capacity >= 65536:
                    raise
                capacity = max(capacity * 2, lst.nmsrs)

    def create_vm(self, machine_type: int = 0) -> Vm:
        """KVM_CREATE_VM. `machine_type` 0 is the default (arm64: 40-bit IPA)."""
        raw = _call(self.fd, abi.KVM_CREATE_VM, abi.ulong(machine_type), "KVM_CREATE_VM")
        owned = _Fd(raw)
        try:
            vm = Vm(self, owned)
        except BaseException:
            owned.close()
            raise
        self._vms.append(vm)
        return vm

    def close(self) -> None:
        """Close every live Vm (newest first), then /dev/kvm. Safe twice."""
        while self._vms:
            self._vms.pop().close()
        if self._fd is not None:
            self._fd.close()

    def _forget(self, vm: Vm) -> None:
        if vm in self._vms:
            self._vms.remove(vm)

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Vm:
    """A VM fd: memory slots, x86 boot addresses, vcpus.

    Host memory given to set_memory stays owned by the caller, who must keep
    it mapped until this Vm is closed (the kernel keeps using the address).
    """

    def __init__(self, kvm: Kvm, fd: _Fd):
        self._kvm: Kvm | None = kvm
        self._fd = fd
        self._vcpus: list[Vcpu] = []
        self.vcpu_mmap_size = kvm.vcpu_mmap_size
        self._devices: list[Device] = []
        self._region = ffi.new("struct kvm_userspace_memory_region *")
        self._u64 = ffi.new("uint64_t *")
        self._log = ffi.new("struct kvm_dirty_log *")   # get_dirty_log's, reused (the reset's hot path)
        self._irq = ffi.new("struct kvm_irq_level *")

    @property
    def fd(self) -> int:
        return self._fd.fd

    @property
    def vcpus(self) -> tuple[Vcpu, ...]:
        return tuple(self._vcpus)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (KVM_CAP_CHECK_EXTENSION_VM): per-VM answers."""
        return _call(self.fd, abi.KVM_CHECK_EXTENSION, abi.ulong(cap), "KVM_CHECK_EXTENSION",
                     f"capability {cap}")

    def set_memory(self, slot: int, gpa: int, size: int, host_addr: int,
                   readonly: bool = False, log_dirty: bool = False) -> None:
        """KVM_SET_USER_MEMORY_REGION: back [gpa, gpa+size) with host memory at host_addr.

        gpa, size and host_addr must be page aligned. readonly makes guest
        writes exit as KVM_EXIT_MMIO (needs KVM_CAP_READONLY_MEM). size 0
        deletes the slot. log_dirty records the pages the guest writes, for
        get_dirty_log(). The caller keeps the memory mapped until close().
        """
        r = self._region
        r.slot = slot
        r.flags = (abi.KVM_MEM_READONLY if readonly else 0) | (abi.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0)
        r.guest_phys_addr = gpa
        r.memory_size = size
        r.userspace_addr = host_addr
        _call(self.fd, abi.KVM_SET_USER_MEMORY_REGION, r, "KVM_SET_USER_MEMORY_REGION",
              f"slot {slot}, gpa {gpa:#x}, size {size:#x}{', read-only' if readonly else ''}")

    def get_dirty_log(self, slot: int, bitmap) -> None:
        """KVM_GET_DIRTY_LOG: fill `bitmap` (cdata, one bit per page of the slot,
        64-bit words) with the pages written since the last call, and clear them."""
        log = self._log
        log.slot = slot
        log.dirty_bitmap = int(ffi.cast("uintptr_t", bitmap))
        if _ioctl(self._fd.fd, _GET_DIRTY_LOG, log) < 0:   # the reset's hot path: the error's text only when needed
            _call(self.fd, _GET_DIRTY_LOG, log, "KVM_GET_DIRTY_LOG", f"slot {slot}")

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (x86, Intel): 3 pages of guest-physical space KVM
        uses for real-mode emulation; must not overlap memory the guest uses."""
        request = _require(abi.KVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR")
        _call(self.fd, request, abi.ulong(addr), "KVM_SET_TSS_ADDR", f"address {addr:#x}")

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR (x86, Intel): one page for the EPT identity
        map of real mode; call before creating vcpus."""
        request = _require(abi.KVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR")
        self._u64[0] = addr
        _call(self.fd, request, self._u64, "KVM_SET_IDENTITY_MAP_ADDR", f"address {addr:#x}")

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: the in-kernel interrupt controllers (x86: PIC pair,
        IOAPIC and a local APIC per vcpu); before any vcpu is created."""
        _call(self.fd, abi.KVM_CREATE_IRQCHIP, abi.ulong(0), "KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2 (x86): the in-kernel 8254 on ports 0x40-0x43, ticking
        IRQ 0; needs the irqchip first."""
        config = ffi.new("struct kvm_pit_config *")
        config.flags = flags
        _call(self.fd, _require(abi.KVM_CREATE_PIT2, "KVM_CREATE_PIT2"), config, "KVM_CREATE_PIT2")

    def get_blob(self, request_name: str, ctype: str, first: bytes = b"") -> bytes:
        """A VM-level KVM_GET_* ioctl filling one struct (`ctype`), as bytes;
        `first` prefills its start (kvm_irqchip.chip_id says which chip)."""
        buf = ffi.new("char[]", ffi.sizeof(ctype))
        buf[0:len(first)] = first
        _call(self.fd, _require(getattr(abi, request_name), request_name), ffi.cast(ctype + " *", buf), request_name)
        return bytes(ffi.buffer(buf))

    def set_blob(self, request_name: str, ctype: str, data: bytes) -> None:
        """The KVM_SET_* partner of get_blob() (the in-kernel irqchip, PIT)."""
        buf = ffi.from_buffer("char[]", data)
        _call(self.fd, _require(getattr(abi, request_name), request_name), ffi.cast(ctype + " *", buf), request_name)

    def arm_preferred_target(self):
        """KVM_ARM_PREFERRED_TARGET (arm64): a `struct kvm_vcpu_init *` with the
        target (and features zeroed) to pass to Vcpu.arm_vcpu_init."""
        request = _require(abi.KVM_ARM_PREFERRED_TARGET, "KVM_ARM_PREFERRED_TARGET")
        init = ffi.new("struct kvm_vcpu_init *")
        _call(self.fd, request, init, "KVM_ARM_PREFERRED_TARGET")
        return init

    def create_device(self, dev_type: int) -> Device:
        """KVM_CREATE_DEVICE (KVM_CAP_DEVICE_CTRL): an in-kernel device such as
        the arm64 GICv3 (abi.KVM_DEV_TYPE_ARM_VGIC_V3), owned by this Vm."""
        cd = ffi.new("struct kvm_create_device *")
        cd.type = dev_type
        _call(self.fd, abi.KVM_CREATE_DEVICE, cd, "KVM_CREATE_DEVICE", f"type {dev_type}")
        device = Device(_Fd(cd.fd), dev_type)
        self._devices.append(device)
        return device

    def irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: drive an interrupt line of the in-kernel irqchip
        (x86: a PIC/IOAPIC pin; arm64: `irq` from abi.arm_irq_spi for a
        device's SPI)."""
        line = self._irq
        line.irq = irq
        line.level = 1 if level else 0
        _call(self.fd, abi.KVM_IRQ_LINE, line, "KVM_IRQ_LINE", f"irq {irq:#x} level {int(level)}")

    def create_vcpu(self, index: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU and map its kvm_run page."""
        raw = _call(self.fd, abi.KVM_CREATE_VCPU, abi.ulong(index), "KVM_CREATE_VCPU",
                    f"vcpu {index}")
        owned = _Fd(raw)
        try:
            vcpu = Vcpu(self, owned, index, self.vcpu_mmap_size)
        except BaseException:
            owned.close()
            raise
        self._vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        """Close every live Vcpu (newest first), then the VM fd. Frees no memory
        it does not own: guest RAM stays the caller's. Safe twice."""
        while self._vcpus:
            self._vcpus.pop().close()
        while self._devices:
            self._devices.pop().close()
        self._fd.close()
        if self._kvm is not None:
            kvm, self._kvm = self._kvm, None
            kvm._forget(self)

    def _forget(self, vcpu: Vcpu) -> None:
        if vcpu in self._vcpus:
            self._vcpus.remove(vcpu)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Attrs:
    """KVM_{SET,GET,HAS}_DEVICE_ATTR on one fd (a device's, or a vcpu's for per-vCPU attrs)."""

    def _attr(self, request: int, call: str, group: int, attr: int, value: int | None, size: int) -> int:
        buf = ffi.new("uint64_t *" if size == 8 else "uint32_t *", value or 0)
        a = ffi.new("struct kvm_device_attr *")
        a.group, a.attr = group, attr
        a.addr = 0 if value is None and request == abi.KVM_HAS_DEVICE_ATTR else int(ffi.cast("uintptr_t", buf))
        _call(self.fd, request, a, call, f"group {group}, attr {attr}")
        return int(buf[0])

    def set_attr(self, group: int, attr: int, value: int | None = None, size: int = 8) -> None:
        """Set a `size`-byte value (u64 addresses, u32 counts); value None passes no value (CTRL_INIT)."""
        if value is None:
            a = ffi.new("struct kvm_device_attr *")
            a.group, a.attr = group, attr
            _call(self.fd, abi.KVM_SET_DEVICE_ATTR, a, "KVM_SET_DEVICE_ATTR", f"group {group}, attr {attr}")
            return
        self._attr(abi.KVM_SET_DEVICE_ATTR, "KVM_SET_DEVICE_ATTR", group, attr, value, size)

    def get_attr(self, group: int, attr: int, size: int = 8) -> int:
        return self._attr(abi.KVM_GET_DEVICE_ATTR, "KVM_GET_DEVICE_ATTR", group, attr, 0, size)

    def has_attr(self, group: int, attr: int) -> bool:
        try:
            self._attr(abi.KVM_HAS_DEVICE_ATTR, "KVM_HAS_DEVICE_ATTR", group, attr, None, 8)
        except KvmError as e:
            if e.errno == _errno.ENXIO:
                return False
            raise
        return True


class Device(_Attrs):
    """An in-kernel device's fd (KVM_CREATE_DEVICE); closed by its Vm."""

    def __init__(self, fd: _Fd, dev_type: int):
        self._fd = fd
        self.type = dev_type

    @property
    def fd(self) -> int:
        return self._fd.fd

    def close(self) -> None:
        self._fd.close()


def _closed_run() -> int:
    raise BackendError("KVM_RUN on a closed vcpu")


class Vcpu(_Attrs):
    """A vcpu fd and its mmap'd `struct kvm_run`.

    `run_struct` is the shared kvm_run page: read exit details from it after
    run(), write answers (io data, mmio.data, immediate_exit) into it before
    the next run(). It is unmapped by close(): drop every reference first.

    get_regs()/get_sregs() return one buffer per Vcpu, overwritten by the
    next call; copy fields out (or ffi.new + memmove) to keep them.
    """

    def __init__(self, vm: Vm, fd: _Fd, index: int, mmap_size: int):
        self._vm: Vm | None = vm
        self._fd = fd
        self.index = index
        self.cpuid_key: tuple | None = None   # the CPUID edits it was given (x86_64.py), None: KVM's own
        self._map_size = mmap_size
        self._map = ffi.NULL
        addr = abi.libc.mmap(ffi.NULL, mmap_size, _mmap.PROT_READ | _mmap.PROT_WRITE,
                             _mmap.MAP_SHARED, fd.fd, 0)
        if addr == abi.MAP_FAILED:
            raise KvmError("mmap(kvm_run)", ffi.errno, f"vcpu {index}, {mmap_size} bytes")
        self._map = addr
        self.run_struct = ffi.cast("struct kvm_run *", addr)
        # The whole mapping as bytes, for io_data(): created once, sliced per exit.
        self._mem = memoryview(ffi.buffer(ffi.cast("char *", addr), mmap_size))

        # Buffers reused by every call (no allocation per exit).
        self._one = ffi.new("struct kvm_one_reg *")
        self._one_buf = ffi.new("uint64_t[32]")  # 256 bytes: up to KVM_REG_SIZE_U2048
        self._one.addr = int(ffi.cast("uintptr_t", self._one_buf))
        self._debug = ffi.new("struct kvm_guest_debug *")
        if abi.ARCH == "x86_64":
            self._regs = ffi.new("struct kvm_regs *")
            self._sregs = ffi.new("struct kvm_sregs *")
            self._fpu = ffi.new("struct kvm_fpu *")
        # KVM_CAP_SYNC_REGS: after each KVM_RUN the register sets enabled by
        # enable_sync_regs() are in kvm_run itself; `_fresh[0]` says they are
        # current (set by run(), cleared by any set_*regs ioctl).
        self._fresh = [False]
        self._sync_regs = None
        self._sync_sregs = None
        self.run = _make_runner(fd.fd, self.run_struct, self._fresh)

    @property
    def fd(self) -> int:
        return self._fd.fd

    # The hot path. run() is replaced per instance by a closure over locals
    # (ioctl function, fd, request, argument, kvm_run pointer): one C call and
    # one field read per exit, nothing allocated.
    def run(self) -> int:  # pragma: no cover - shadowed in __init__
        """KVM_RUN until the next exit; returns kvm_run.exit_reason.

        If a signal interrupts it (or immediate_exit was set), returns
        abi.KVM_EXIT_INTR without raising. Any other failure raises
        KvmError("KVM_RUN", errno). Races: a signal that lands just before
        the ioctl enters the kernel is missed; a timeout handler should also
        set run_struct.immediate_exit = 1 (KVM_CAP_IMMEDIATE_EXIT) and the
        caller clear it after the INTR exit.
        """
        raise NotImplementedError

    def io_data(self) -> memoryview:
        """The bytes of the current KVM_EXIT_IO: size * count bytes at
        run->io.data_offset inside the mapping (writable: fill it to answer an IN)."""
        io = self.run_struct.io
        start = io.data_offset
        return self._mem[start:start + io.size * io.count]

    # -- x86 register state ---------------------------------------------------

    def enable_sync_regs(self, mask: int) -> None:
        """x86: have KVM store the register sets in `mask` (abi.KVM_SYNC_X86_*) in
        kvm_run at every exit, so get_regs/get_sregs need no ioctl after a run.
        Only where Kvm.check_extension(KVM_CAP_SYNC_REGS) includes them."""
        self.run_struct.kvm_valid_regs = mask
        sync = self.run_struct.s.regs
        self._sync_regs = ffi.addressof(sync, "regs") if mask & abi.KVM_SYNC_X86_REGS else None
        self._sync_sregs = ffi.addressof(sync, "sregs") if mask & abi.KVM_SYNC_X86_SREGS else None
        self._sync_events = ffi.addressof(sync, "events")

    def forget_sync(self) -> None:
        """Registers are about to change behind this object's back (raw ioctls
        of a state restore): the kvm_run copy is no longer current."""
        self._fresh[0] = False

    def stage(self, regs, sregs, events=None) -> bool:
        """x86 with sync regs: write whole register sets into kvm_run for KVM to
        apply at the next KVM_RUN (kvm_dirty_regs), with no ioctl; until then
        get_regs/get_sregs return them and set_regs/set_sregs update them.
        False (nothing done) without sync regs. Used by state restore."""
        if self._sync_regs is None or self._sync_sregs is None:
            return False
        rs = self.run_struct
        ffi.memmove(self._sync_regs, regs, _SIZES["struct kvm_regs"])
        ffi.memmove(self._sync_sregs, sregs, _SIZES["struct kvm_sregs"])
        dirty = _SYNC_REGS | _SYNC_SREGS
        if events is not None:
            ffi.memmove(self._sync_events, events, _SIZES["struct kvm_vcpu_events"])
            dirty |= abi.KVM_SYNC_X86_EVENTS
        rs.kvm_dirty_regs = dirty
        return True

    def stage_all(self, sync) -> bool:
        """stage() of all three sets at once (regs, sregs, events), from one
        struct kvm_sync_regs: one copy into kvm_run, for the reset of a reused VM."""
        if self._sync_regs is None or self._sync_sregs is None:
            return False
        ffi.memmove(self._sync_regs, sync, _SIZES["struct kvm_sync_regs"])   # regs open kvm_sync_regs
        self.run_struct.kvm_dirty_regs = _SYNC_REGS | _SYNC_SREGS | abi.KVM_SYNC_X86_EVENTS
        return True

    def flush_staged(self) -> None:
        """Hand what stage() left in kvm_run to KVM now, by ioctl (KVM_SET_REGS,
        KVM_SET_SREGS, KVM_SET_VCPU_EVENTS), instead of at the next KVM_RUN.

        Needed before any ioctl that reads or changes that state inside KVM:
        KVM_SET_GUEST_DEBUG with SINGLESTEP records the linear RIP (RIP + CS
        base) it must set TF at from KVM's own copy, so with the registers
        still staged it records the last run's RIP, the staged RIP then does
        not match at KVM_RUN and TF is never set (VMX/SVM KVM step nothing);
        an injected #DB/#BP or KVM_SET_VCPU_EVENTS would be overwritten by
        the staged events, and KVM_GET_VCPU_EVENTS would read stale ones."""
        rs = self.run_struct
        dirty = rs.kvm_dirty_regs
        if not dirty:
            return
        rs.kvm_dirty_regs = 0
        self._fresh[0] = False
        if dirty & _SYNC_SREGS:
            _call(self.fd, _require(abi.KVM_SET_SREGS, "KVM_SET_SREGS"), self._sync_sregs, "KVM_SET_SREGS")
        if dirty & _SYNC_REGS:
            _call(self.fd, _require(abi.KVM_SET_REGS, "KVM_SET_REGS"), self._sync_regs, "KVM_SET_REGS")
        if dirty & abi.KVM_SYNC_X86_EVENTS:
            _call(self.fd, _require(abi.KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS"), self._sync_events,
                  "KVM_SET_VCPU_EVENTS")

    def get_regs(self):
        """KVM_GET_REGS into this Vcpu's reused `struct kvm_regs *` (or, with
        sync regs current, the copy KVM left in kvm_run: no ioctl)."""
        if self._sync_regs is not None and (self._fresh[0] or self.run_struct.kvm_dirty_regs & _SYNC_REGS):
            return self._sync_regs
        _call(self.fd, _require(abi.KVM_GET_REGS, "KVM_GET_REGS"), self._regs, "KVM_GET_REGS")
        return self._regs

    def set_regs(self, regs) -> None:
        """KVM_SET_REGS from a `struct kvm_regs *` (e.g. the one get_regs returned);
        while staged registers wait in kvm_run (stage()), they are updated instead."""
        if self.run_struct.kvm_dirty_regs & _SYNC_REGS:
            ffi.memmove(self._sync_regs, regs, ffi.sizeof("struct kvm_regs"))
            return
        self._fresh[0] = False
        _call(self.fd, _require(abi.KVM_SET_REGS, "KVM_SET_REGS"), regs, "KVM_SET_REGS")

    def get_sregs(self):
        """KVM_GET_SREGS into this Vcpu's reused `struct kvm_sregs *` (or the
        kvm_run copy, as get_regs)."""
        if self._sync_sregs is not None and (self._fresh[0] or self.run_struct.kvm_dirty_regs & _SYNC_SREGS):
            return self._sync_sregs
        _call(self.fd, _require(abi.KVM_GET_SREGS, "KVM_GET_SREGS"), self._sregs, "KVM_GET_SREGS")
        return self._sregs

    def set_sregs(self, sregs) -> None:
        """KVM_SET_SREGS from a `struct kvm_sregs *` (or into kvm_run while staged)."""
        if self.run_struct.kvm_dirty_regs & _SYNC_SREGS:
            ffi.memmove(self._sync_sregs, sregs, ffi.sizeof("struct kvm_sregs"))
            return
        self._fresh[0] = False
        _call(self.fd, _require(abi.KVM_SET_SREGS, "KVM_SET_SREGS"), sregs, "KVM_SET_SREGS")

    def get_fpu(self):
        """KVM_GET_FPU into this Vcpu's reused `struct kvm_fpu *`."""
        _call(self.fd, _require(abi.KVM_GET_FPU, "KVM_GET_FPU"), self._fpu, "KVM_GET_FPU")
        return self._fpu

    def set_fpu(self, fpu) -> None:
        """KVM_SET_FPU from a `struct kvm_fpu *`."""
        _call(self.fd, _require(abi.KVM_SET_FPU, "KVM_SET_FPU"), fpu, "KVM_SET_FPU")

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: KVM_MP_STATE_* (e.g. HALTED while the in-kernel
        irqchip holds a vcpu in HLT)."""
        state = ffi.new("struct kvm_mp_state *")
        _call(self.fd, abi.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return state.mp_state

    def set_mp_state(self, mp_state: int) -> None:
        """KVM_SET_MP_STATE (e.g. RUNNABLE to take a vcpu out of HLT)."""
        state = ffi.new("struct kvm_mp_state *")
        state.mp_state = mp_state
        _call(self.fd, abi.KVM_SET_MP_STATE, state, "KVM_SET_MP_STATE", f"state {mp_state}")

    # -- whole-state capture (snapshots, VM reuse) ------------------------------

    def call(self, request_name: str, arg) -> int:
        """One vcpu ioctl by its abi name with a prepared cdata argument (the
        restore path builds its structs once and replays them)."""
        if not request_name.startswith("KVM_GET"):
            self._fresh[0] = False
        return _call(self.fd, _require(getattr(abi, request_name), request_name), arg, request_name)

    def get_blob(self, request_name: str, ctype: str, size: int | None = None) -> bytes:
        """A KVM_GET_* ioctl that fills one struct (`ctype`), as bytes: the
        state is kept opaque, the way KVM hands it out (xsave, xcrs,
        debugregs, vcpu events, mp state). `size` overrides sizeof (XSAVE2)."""
        self.flush_staged()
        n = size or ffi.sizeof(ctype)
        buf = ffi.new("char[]", n)
        _call(self.fd, _require(getattr(abi, request_name), request_name),
              ffi.cast(ctype + " *", buf), request_name)
        return bytes(ffi.buffer(buf, n))

    def set_blob(self, request_name: str, ctype: str, data: bytes) -> None:
        """The KVM_SET_* partner of get_blob()."""
        self.flush_staged()
        self._fresh[0] = False
        buf = ffi.from_buffer("char[]", data)
        _call(self.fd, _require(getattr(abi, request_name), request_name),
              ffi.cast(ctype + " *", buf), request_name)

    def get_msrs(self, indices: Sequence[int]) -> list[int | None]:
        """KVM_GET_MSRS: the value of each MSR, None for those KVM refused
        (it stops at the first; the rest are read again after it)."""
        out: list[int | None] = []
        rest = list(indices)
        while rest:
            msrs = ffi.new("struct kvm_msrs *", {"entries": len(rest)})
            msrs.nmsrs = len(rest)
            for i, index in enumerate(rest):
                msrs.entries[i].index = index
            done = _call(self.fd, _require(abi.KVM_GET_MSRS, "KVM_GET_MSRS"), msrs, "KVM_GET_MSRS")
            out.extend(msrs.entries[i].data for i in range(done))
            if done < len(rest):
                out.append(None)
            rest = rest[done + 1:]
        return out

    def set_msrs(self, values: Sequence[tuple[int, int]]) -> int:
        """KVM_SET_MSRS: (index, value) pairs, in order; returns how many KVM
        accepted (it stops at the first it refuses)."""
        self._fresh[0] = False
        msrs = ffi.new("struct kvm_msrs *", {"entries": len(values)})
        msrs.nmsrs = len(values)
        for i, (index, value) in enumerate(values):
            msrs.entries[i].index = index
            msrs.entries[i].data = value
        return _call(self.fd, _require(abi.KVM_SET_MSRS, "KVM_SET_MSRS"), msrs, "KVM_SET_MSRS")

    def set_cpuid2(self, cpuid) -> None:
        """KVM_SET_CPUID2 from a `struct kvm_cpuid2 *` (nent entries are read)."""
        _call(self.fd, _require(abi.KVM_SET_CPUID2, "KVM_SET_CPUID2"), cpuid, "KVM_SET_CPUID2",
              f"{cpuid.nent} entries")

    def drop_pending_exception(self) -> None:
        """KVM_GET/SET_VCPU_EVENTS: forget the exception KVM has queued for the
        guest (after a failed emulation KVM queues #UD as well as exiting; a
        VMM that recovers from the failure must not deliver it)."""
        self.flush_staged()
        ev = ffi.new("struct kvm_vcpu_events *")
        _call(self.fd, _require(abi.KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS"), ev, "KVM_GET_VCPU_EVENTS")
        if not (ev.exception.injected or ev.exception.pending):
            return
        ev.exception.injected = ev.exception.pending = 0
        ev.exception_has_payload = 0
        ev.flags = 0   # nothing else is set: NMI/SIPI/SMI state stays as it is
        self._fresh[0] = False
        _call(self.fd, _require(abi.KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS"), ev, "KVM_SET_VCPU_EVENTS")

    # -- debugging ------------------------------------------------------------

    def set_guest_debug(self, control: int, debugreg: Sequence[int] | None = None) -> None:
        """KVM_SET_GUEST_DEBUG (x86 shape): control = KVM_GUESTDBG_* bits;
        debugreg = [DR0, DR1, DR2, DR3, 0, 0, 0, DR7] (shorter lists are
        zero-filled; read only with KVM_GUESTDBG_USE_HW_BP). control 0 turns
        guest debugging off. On arm64 only debugreg=None is accepted."""
        dbg = self._debug
        ffi.memmove(dbg, bytes(ffi.sizeof(dbg[0])), ffi.sizeof(dbg[0]))
        dbg.control = control
        if debugreg:
            if abi.ARCH != "x86_64":
                raise BackendError("x86 debug registers given on an arm64 host")
            if len(debugreg) > 8:
                raise ValueError(f"{len(debugreg)} debug registers; x86 has DR0..DR7")
            for i, value in enumerate(debugreg):
                dbg.arch.debugreg[i] = value
        if control & _READS_STATE:
            self.flush_staged()   # KVM takes RIP/CS/RFLAGS or queues an event now
        _call(self.fd, abi.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG",
              f"control {control:#x}")

    def set_guest_debug_arm64(self, control: int, bcr: Sequence[int] = (), bvr: Sequence[int] = (),
                              wcr: Sequence[int] = (), wvr: Sequence[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG (arm64 shape): DBGBCRn/DBGBVRn breakpoint and
        DBGWCRn/DBGWVRn watchpoint pairs, slot n at index n (up to 16 each;
        read only with KVM_GUESTDBG_USE_HW)."""
        if abi.ARCH != "arm64":
            raise BackendError("arm64 debug registers given on an x86_64 host")
        dbg = self._debug
        ffi.memmove(dbg, bytes(ffi.sizeof(dbg[0])), ffi.sizeof(dbg[0]))
        dbg.control = control
        for name, values in (("dbg_bcr", bcr), ("dbg_bvr", bvr), ("dbg_wcr", wcr), ("dbg_wvr", wvr)):
            if len(values) > 16:
                raise ValueError(f"{len(values)} values for {name}; arm64 has at most 16")
            arr = getattr(dbg.arch, name)
            for i, value in enumerate(values):
                arr[i] = value
        _call(self.fd, abi.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG",
              f"control {control:#x}")

    # -- ONE_REG (arm64 registers; some x86 ones) -----------------------------

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: the id of every register KVM_GET/SET_ONE_REG knows
        for this vCPU (arm64 snapshots save them all)."""
        capacity = 512
        while True:
            lst = ffi.new("struct kvm_reg_list *", {"reg": capacity})
            lst.n = capacity
            try:
                _call(self.fd, abi.KVM_GET_REG_LIST, lst, "KVM_GET_REG_LIST")
                return [int(lst.reg[i]) for i in range(lst.n)]
            except KvmError as e:
                if e.errno != _errno.E2BIG or capacity >= 1 << 16:
                    raise
                capacity = max(capacity * 2, int(lst.n))

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG: the register's value as an unsigned int of
        KVM_REG_SIZE(id) bytes (16 for V registers)."""
        one = self._one
        one.id = reg_id
        _call(self.fd, abi.KVM_GET_ONE_REG, one, "KVM_GET_ONE_REG", f"id {reg_id:#x}")
        size = abi.reg_size(reg_id)
        if size == 8:
            return int(self._one_buf[0])
        return int.from_bytes(ffi.buffer(self._one_buf, size), sys.byteorder)

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG with `value` as an unsigned int of KVM_REG_SIZE(id) bytes."""
        size = abi.reg_size(reg_id)
        if size > ffi.sizeof(self._one_buf):
            raise ValueError(f"register id {reg_id:#x} is {size} bytes; kvmrig handles 256 at most")
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"{value:#x} does not fit register {reg_id:#x} ({size} bytes)")
        one = self._one
        one.id = reg_id
        if size == 8:
            self._one_buf[0] = value
        else:
            ffi.memmove(self._one_buf, value.to_bytes(size, sys.byteorder), size)
        _call(self.fd, abi.KVM_SET_ONE_REG, one, "KVM_SET_ONE_REG", f"id {reg_id:#x}")

    def arm_vcpu_init(self, target: int, features: Iterable[int] = ()) -> None:
        """KVM_ARM_VCPU_INIT (arm64, before the first run): `features` are bit
        numbers (abi.KVM_ARM_VCPU_PSCI_0_2, ...)."""
        request = _require(abi.KVM_ARM_VCPU_INIT, "KVM_ARM_VCPU_INIT")
        init = ffi.new("struct kvm_vcpu_init *")
        init.target = target
        for bit in features:
            if not 0 <= bit < 32 * 7:
                raise ValueError(f"vcpu feature bit {bit} out of range")
            init.features[bit // 32] |= 1 << (bit % 32)
        _call(self.fd, request, init, "KVM_ARM_VCPU_INIT", f"target {target}")

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Unmap kvm_run, close the vcpu fd. Safe twice."""
        self.run = _closed_run
        self.run_struct = None
        if self._map != ffi.NULL:
            try:
                self._mem.release()
            except BufferError:  # someone holds a raw export; unmap regardless
                pass
            addr, self._map = self._map, ffi.NULL
            abi.libc.munmap(addr, self._map_size)
        self._fd.close()
        if self._vm is not None:
            vm, self._vm = self._vm, None
            vm._forget(self)

    def __del__(self) -> None:
        # Safety net only: unmapping must not wait for the GC in normal use.
        try:
            if getattr(self, "_map", ffi.NULL) != ffi.NULL:
                self._mem.release()
                abi.libc.munmap(self._map, self._map_size)
                self._map = ffi.NULL
        except Exception:
            pass

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_runner(fd: int, run_struct, fresh: list[bool]):
    """The per-Vcpu KVM_RUN closure (see Vcpu.run for its contract)."""
    ioctl = _ioctl
    request = abi.KVM_RUN
    arg = _ZERO
    intr = abi.KVM_EXIT_INTR
    eintr = _errno.EINTR

    def run() -> int:
        if ioctl(fd, request, arg) < 0:
            err = ffi.errno
            if err == eintr:
                fresh[0] = True  # KVM stores the sync regs on this return too
                return intr
            raise KvmError("KVM_RUN", err)
        fresh[0] = True
        return run_struct.exit_reason

    run.__doc__ = Vcpu.run.__doc__
    return run
