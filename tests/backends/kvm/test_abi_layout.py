"""The ABI guard: abi.py's layouts and numbers against the host's C headers.

The struct and field list is derived from abi.ffi itself (ffi.list_types()
and ctype.fields), so a struct added to the cdef is checked without touching
this file. A C program including <linux/kvm.h> prints sizeof/offsetof of each
and the value of every constant in abi.CONSTANTS; it is compiled and run in
tmp_path. A second group of tests needs no compiler: golden numbers for the
arm64 layouts (from api.rst), checkable on any host.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings

import pytest

from kvmrig.backends.kvm import abi

CC = shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

# Names abi defines for convenience that the host's headers lack by design:
# the other arch's constants (abi defines plain numbers on both arches).
FOREIGN = {
    "x86_64": {
        "KVM_GUESTDBG_USE_HW",            # arm64 spelling of bit 17
        "KVM_REG_ARM_COPROC_MASK", "KVM_REG_ARM_COPROC_SHIFT", "KVM_REG_ARM_CORE",
        "KVM_REG_ARM_DEMUX", "KVM_REG_ARM64_SYSREG", "KVM_REG_ARM_FW",
        "KVM_REG_ARM64_SYSREG_OP0_SHIFT", "KVM_REG_ARM64_SYSREG_OP1_SHIFT",
        "KVM_REG_ARM64_SYSREG_CRN_SHIFT", "KVM_REG_ARM64_SYSREG_CRM_SHIFT",
        "KVM_REG_ARM64_SYSREG_OP2_SHIFT", "KVM_NR_SPSR",
        "KVM_ARM_VCPU_POWER_OFF", "KVM_ARM_VCPU_EL1_32BIT", "KVM_ARM_VCPU_PSCI_0_2",
        "KVM_ARM_VCPU_PMU_V3", "KVM_ARM_TARGET_GENERIC_V8",
        "KVM_DEV_ARM_VGIC_GRP_ADDR", "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", "KVM_DEV_ARM_VGIC_GRP_CTRL",
        "KVM_DEV_ARM_VGIC_CTRL_INIT", "KVM_VGIC_V3_ADDR_TYPE_DIST", "KVM_VGIC_V3_ADDR_TYPE_REDIST",
        "KVM_VGIC_V3_DIST_SIZE", "KVM_VGIC_V3_REDIST_SIZE", "KVM_ARM_IRQ_TYPE_SHIFT",
        "KVM_ARM_IRQ_VCPU_SHIFT", "KVM_ARM_IRQ_NUM_SHIFT", "KVM_ARM_IRQ_TYPE_CPU", "KVM_ARM_IRQ_TYPE_SPI",
        "KVM_ARM_IRQ_TYPE_PPI", "KVM_ARM_VCPU_TIMER_CTRL", "KVM_ARM_VCPU_TIMER_IRQ_VTIMER",
        "KVM_ARM_VCPU_TIMER_IRQ_PTIMER", "KVM_ARM_VCPU_PMU_V3_CTRL", "KVM_ARM_VCPU_PMU_V3_IRQ",
        "KVM_ARM_VCPU_PMU_V3_INIT", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS", "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS",
        "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", "KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", "KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT",
        "KVM_DEV_ARM_VGIC_V3_MPIDR_MASK", "KVM_DEV_ARM_VGIC_OFFSET_MASK", "KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK",
        "KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT", "KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_MASK",
        "KVM_DEV_ARM_VGIC_LINE_LEVEL_INTID_MASK",
    },
    "arm64": {
        "KVM_GUESTDBG_USE_HW_BP",         # x86 spelling of bit 17
        "KVM_GUESTDBG_INJECT_DB", "KVM_GUESTDBG_INJECT_BP", "KVM_GUESTDBG_BLOCKIRQ",
        "KVM_IRQCHIP_PIC_MASTER", "KVM_IRQCHIP_PIC_SLAVE", "KVM_IRQCHIP_IOAPIC",   # x86 asm/kvm.h
    },
}

# Constants younger than some distributions' headers: absent is a warning.
MAYBE_NEWER = {
    "KVM_EXIT_LOONGARCH_IOCSR", "KVM_EXIT_MEMORY_FAULT", "KVM_EXIT_TDX",
    "KVM_EXIT_NOTIFY", "KVM_EXIT_RISCV_CSR", "KVM_EXIT_RISCV_SBI", "KVM_EXIT_XEN",
    "KVM_SYSTEM_EVENT_WAKEUP", "KVM_SYSTEM_EVENT_SUSPEND", "KVM_SYSTEM_EVENT_SEV_TERM",
    "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON", "KVM_CAP_SET_GUEST_DEBUG2",
    "KVM_GUESTDBG_BLOCKIRQ",
    # linux/kvm.h only defines it where the arch has __KVM_HAVE_GUEST_DEBUG
    # (older arm64 headers); newer ones define it unconditionally.
    "KVM_CAP_SET_GUEST_DEBUG",
}


def _walk(ctype, prefix=()):
    """(field path, field ctype) for every field, into nested structs/unions.

    Anonymous unions are flattened by cffi, which matches C11 member access
    (kvm_run.io, kvm_run.system_event.flags). Fields named _pad* are
    padding abi adds where C relies on alignment; they do not exist in C.
    """
    for name, field in ctype.fields:
        if name.startswith("_pad"):
            continue
        path = prefix + (name,)
        yield path, field.type
        if field.type.kind in ("struct", "union"):
            yield from _walk(field.type, path)


def layout_checks(ffi):
    """[(key, C expression, abi's value)] for every struct in `ffi`."""
    checks = []
    for sname in ffi.list_types()[1]:
        ctype = f"struct {sname}"
        checks.append((f"sizeof {ctype}", f"sizeof({ctype})", ffi.sizeof(ctype)))
        for path, ftype in _walk(ffi.typeof(ctype)):
            member = ".".join(path)
            checks.append((f"offsetof {ctype} {member}", f"offsetof({ctype}, {member})",
                           ffi.offsetof(ctype, *path)))
            if ftype.kind == "array" and ftype.length is None:
                continue  # flexible array member: no size
            checks.append((f"sizeof {ctype}.{member}", f"sizeof((({ctype} *)0)->{member})",
                           ffi.sizeof(ftype)))
    return checks


def _c_program(layout, constants) -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/kvm.h>",
        "int main(void) {",
    ]
    for key, expr, _ in layout:
        lines.append(f'  printf("%s=%llu\\n", "{key}", (unsigned long long)({expr}));')
    for name in constants:
        lines += [
            f"#ifdef {name}",
            f'  printf("%s=%llu\\n", "const {name}", (unsigned long long)({name}));',
            "#else",
            f'  printf("%s=absent\\n", "const {name}");',
            "#endif",
        ]
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_answers(tmp_path_factory):
    layout = layout_checks(abi.ffi)
    src_dir = tmp_path_factory.mktemp("abi")
    src = src_dir / "kvm_abi.c"
    exe = src_dir / "kvm_abi"
    src.write_text(_c_program(layout, abi.CONSTANTS))
    build = subprocess.run([CC, "-std=gnu11", "-Wall", "-o", str(exe), str(src)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"compiling the ABI probe failed:\n{build.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    answers = dict(line.split("=", 1) for line in out.splitlines())
    return layout, answers


@needs_cc
def test_every_struct_and_field_matches_c(c_answers):
    layout, answers = c_answers
    wrong = [f"{key}: abi says {ours}, <linux/kvm.h> says {answers[key]}"
             for key, _, ours in layout if int(answers[key]) != ours]
    assert not wrong, "\n".join(wrong)


@needs_cc
def test_the_probe_covers_the_structs_kvmrig_uses(c_answers):
    layout, _ = c_answers
    structs = {key.split(" ", 1)[1] for key, _, _ in layout if key.startswith("sizeof struct ")}
    expected = {"struct kvm_run", "struct kvm_userspace_memory_region", "struct kvm_one_reg",
                "struct kvm_guest_debug", "struct kvm_guest_debug_arch",
                "struct kvm_debug_exit_arch", "struct kvm_regs"}
    expected |= {"struct kvm_sregs", "struct kvm_segment", "struct kvm_dtable",
                 "struct kvm_cpuid2", "struct kvm_cpuid_entry2", "struct kvm_fpu"} \
        if abi.ARCH == "x86_64" else {"struct kvm_vcpu_init", "struct user_pt_regs"}
    assert expected <= structs
    assert sum(1 for key, _, _ in layout if key.startswith("offsetof struct kvm_run ")) > 40


@needs_cc
def test_every_constant_and_ioctl_number_matches_c(c_answers):
    _, answers = c_answers
    wrong, absent = [], []
    for name, ours in abi.CONSTANTS.items():
        theirs = answers[f"const {name}"]
        if theirs == "absent":
            absent.append(name)
        elif int(theirs) != ours:
            wrong.append(f"{name}: abi says {ours:#x}, <linux/kvm.h> says {int(theirs):#x}")
    assert not wrong, "\n".join(wrong)
    unexplained = set(absent) - FOREIGN.get(abi.ARCH, set()) - MAYBE_NEWER
    assert not unexplained, f"not in <linux/kvm.h> (misspelt?): {sorted(unexplained)}"
    newer = sorted(set(absent) & MAYBE_NEWER)
    if newer:
        warnings.warn(f"host headers predate {newer}; those values went unchecked")
    for name in abi.IOCTLS:
        assert answers[f"const {name}"] != "absent", name


# ---------------------------------------------------------------------------
# Without a compiler: numbers the kernel documents.

def test_host_ioctls_are_all_constants():
    for name, number in abi.IOCTLS.items():
        assert abi.CONSTANTS[name] == number
        assert getattr(abi, name) == number


def test_ioctl_numbers_known_values():
    # _IOC(dir, 0xAE, nr, size); x86_64 sizes: regs 144, sregs 312, guest_debug 72.
    x86 = abi.ioctl_table("x86_64")
    assert x86["KVM_RUN"] == 0xAE80
    assert x86["KVM_GET_REGS"] == 0x8090AE81
    assert x86["KVM_SET_SREGS"] == 0x4138AE84
    assert x86["KVM_SET_USER_MEMORY_REGION"] == 0x4020AE46
    assert x86["KVM_GET_SUPPORTED_CPUID"] == 0xC008AE05
    assert x86["KVM_SET_GUEST_DEBUG"] == 0x4048AE9B
    assert x86["KVM_GET_ONE_REG"] == 0x4010AEAB      # _IOW, not _IOWR
    arm = abi.ioctl_table("arm64")
    assert arm["KVM_SET_GUEST_DEBUG"] == 0x4208AE9B   # 520-byte struct
    assert arm["KVM_ARM_VCPU_INIT"] == 0x4020AEAE
    assert arm["KVM_ARM_PREFERRED_TARGET"] == 0x8020AEAF
    assert arm["KVM_GET_VCPU_EVENTS"] == 0x8040AE9F    # the 64-byte arm64 struct: same number as x86's
    assert "KVM_GET_REGS" not in arm and "KVM_ARM_VCPU_INIT" not in x86


def test_kvm_run_union_sits_at_32_on_both_arches():
    for arch in abi.ARCHES:
        f = abi.ffi_for(arch)
        assert f.offsetof("struct kvm_run", "exit_reason") == 8
        assert f.offsetof("struct kvm_run", "io") == 32
        assert f.offsetof("struct kvm_run", "kvm_valid_regs") == 32 + 256
        assert f.sizeof("struct kvm_run") == 32 + 256 + 16 + 2048
        assert f.offsetof("struct kvm_run", "io", "data_offset") == 40
        assert f.offsetof("struct kvm_run", "mmio", "is_write") == 32 + 20
        assert f.offsetof("struct kvm_run", "system_event", "flags") == 40


def test_arm64_layouts_match_api_rst():
    f = abi.ffi_for("arm64")
    assert f.sizeof("struct kvm_regs") == 864
    assert f.offsetof("struct kvm_regs", "fp_regs") == 336   # 16-byte aligned
    assert f.sizeof("struct kvm_guest_debug") == 8 + 4 * 16 * 8
    assert f.sizeof("struct kvm_debug_exit_arch") == 16
    assert f.offsetof("struct kvm_debug_exit_arch", "far") == 8
    assert f.sizeof("struct kvm_vcpu_init") == 32
    assert f.sizeof("struct kvm_vcpu_events") == 64
    assert f.offsetof("struct kvm_vcpu_events", "exception", "serror_esr") == 8
    # Documentation/virt/kvm/api.rst, "ARM64 core/FP-SIMD registers"
    golden = {
        ("regs", "regs", 0): 0x6030000000100000,
        ("regs", "regs", 30): 0x603000000010003C,
        ("regs", "sp"): 0x603000000010003E,
        ("regs", "pc"): 0x6030000000100040,
        ("regs", "pstate"): 0x6030000000100042,
        ("sp_el1",): 0x6030000000100044,
        ("elr_el1",): 0x6030000000100046,
        ("spsr", 0): 0x6030000000100048,
        ("spsr", 4): 0x6030000000100050,
        ("fp_regs", "vregs", 0): 0x6040000000100054,
        ("fp_regs", "vregs", 31): 0x60400000001000D0,
        ("fp_regs", "fpsr"): 0x60200000001000D4,
        ("fp_regs", "fpcr"): 0x60200000001000D5,
    }
    for path, reg_id in golden.items():
        assert abi.arm64_core_reg(*path) == reg_id, path


def test_reg_size():
    assert abi.reg_size(0x6030000000100040) == 8
    assert abi.reg_size(0x6040000000100054) == 16
    assert abi.reg_size(0x60200000001000D4) == 4


def test_exit_reason_table_covers_every_exit_once():
    names = {n for n in dir(abi) if n.startswith("KVM_EXIT_") and n not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")}
    assert sorted(abi.EXIT_REASONS.values()) == sorted(names)
    assert list(abi.EXIT_REASONS) == list(range(len(abi.EXIT_REASONS)))
    assert abi.EXIT_REASONS[abi.KVM_EXIT_SYSTEM_EVENT] == "KVM_EXIT_SYSTEM_EVENT" == abi.exit_name(24)
    assert abi.exit_name(1000) == "KVM_EXIT_? (raw 1000)"


def test_guestdbg_bits():
    assert abi.KVM_GUESTDBG_ENABLE == 1 and abi.KVM_GUESTDBG_SINGLESTEP == 2
    assert abi.KVM_GUESTDBG_USE_SW_BP == 1 << 16
    assert abi.KVM_GUESTDBG_USE_HW_BP == abi.KVM_GUESTDBG_USE_HW == 1 << 17
    assert abi.KVM_GUESTDBG_INJECT_DB == 1 << 18 and abi.KVM_GUESTDBG_INJECT_BP == 1 << 19


def test_new_cpuid2_has_room():
    p = abi.new_cpuid2()
    assert p.nent == abi.CPUID_MAX_ENTRIES == 256
    size = abi.ffi.sizeof(p[0]) if abi.ARCH == "x86_64" else None
    if size is not None:
        assert size == 8 + 256 * 40


def test_arm64_vgic_and_irq_line_numbers_match_the_headers():
    # arch/arm64/include/uapi/asm/kvm.h and Documentation/virt/kvm/devices/arm-vgic-v3.rst;
    # checked here without a compiler (an x86 host has no arm64 asm/kvm.h).
    assert (abi.KVM_VGIC_V3_ADDR_TYPE_DIST, abi.KVM_VGIC_V3_ADDR_TYPE_REDIST) == (2, 3)
    assert (abi.KVM_VGIC_V3_DIST_SIZE, abi.KVM_VGIC_V3_REDIST_SIZE) == (0x10000, 0x20000)
    assert (abi.KVM_DEV_ARM_VGIC_GRP_ADDR, abi.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, abi.KVM_DEV_ARM_VGIC_GRP_CTRL,
            abi.KVM_DEV_ARM_VGIC_CTRL_INIT) == (0, 3, 4, 0)
    assert abi.KVM_DEV_TYPE_ARM_VGIC_V3 == 7
    assert (abi.KVM_DEV_ARM_VGIC_GRP_DIST_REGS, abi.KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
            abi.KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, abi.KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO) == (1, 5, 6, 7)
    assert (abi.KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT, abi.KVM_DEV_ARM_VGIC_V3_MPIDR_MASK) == (32, 0xFFFFFFFF00000000)
    assert (abi.KVM_DEV_ARM_VGIC_OFFSET_MASK, abi.KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK) == (0xFFFFFFFF, 0xFFFF)
    assert (abi.KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, abi.KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_MASK,
            abi.KVM_DEV_ARM_VGIC_LINE_LEVEL_INTID_MASK, abi.VGIC_LEVEL_INFO_LINE_LEVEL) == \
        (10, 0x3FFFFF << 10, 0x3FF, 0)
    assert (abi.KVM_ARM_VCPU_PMU_V3_CTRL, abi.KVM_ARM_VCPU_PMU_V3_IRQ, abi.KVM_ARM_VCPU_PMU_V3_INIT) == (0, 0, 1)
    assert abi.arm_irq_spi(33) == 0x01000021          # type SPI (1) << 24 | INTID 33 (the PL011 of QEMU virt)
    with pytest.raises(ValueError):
        abi.arm_irq_spi(27)                            # a PPI is no SPI
    arm = abi.ioctl_table("arm64")
    assert arm["KVM_CREATE_DEVICE"] == 0xC00CAEE0     # _IOWR, 12-byte struct
    assert arm["KVM_SET_DEVICE_ATTR"] == 0x4018AEE1   # _IOW, 24-byte struct
    assert arm["KVM_IRQ_LINE"] == 0x4008AE61
