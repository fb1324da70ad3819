"""CPUID feature flags by name, and edits to a CPUID table, as pure data.

Names are Linux's /proc/cpuinfo spellings; QEMU's `-cpu` spellings (with `-`,
e.g. `tsc-deadline`, `x2apic`) are accepted too, so a kvm-unit-tests `-cpu
qemu64,+x2apic` line maps one to one. Bit positions are from the SDM vol. 2A
(CPUID) and the AMD APM vol. 3 (CPUID Fn8000_0001).
"""

from __future__ import annotations

from dataclasses import dataclass

# name -> (leaf, subleaf, register, bit)
_LEAF1_ECX = ("sse3 pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 cnxt_id sdbg fma cx16 xtpr pdcm - "
              "pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave osxsave avx f16c "
              "rdrand hypervisor")
_LEAF1_EDX = ("fpu vme de pse tsc msr pae mce cx8 apic - sep mtrr pge mca cmov pat pse36 pn clflush - dts "
              "acpi mmx fxsr sse sse2 ss ht tm ia64 pbe")
_LEAF7_EBX = ("fsgsbase tsc_adjust sgx bmi1 hle avx2 fdp_excptn_only smep bmi2 erms invpcid rtm pqm "
              "zero_fcs_fds mpx rdt_a avx512f avx512dq rdseed adx smap avx512ifma pcommit clflushopt clwb "
              "intel_pt avx512pf avx512er avx512cd sha_ni avx512bw avx512vl")
_LEAF7_ECX = ("prefetchwt1 avx512vbmi umip pku ospke waitpkg avx512_vbmi2 cet_ss gfni vaes vpclmulqdq "
              "avx512_vnni avx512_bitalg tme avx512_vpopcntdq - la57 - - - - - rdpid kl bus_lock_detect "
              "cldemote - movdiri movdir64b enqcmd sgx_lc pks")
_EXT1_ECX = ("lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs xop "
             "skinit wdt - lwp fma4 tce - nodeid_msr - tbm topoext perfctr_core perfctr_nb - bpext ptsc "
             "perfctr_llc mwaitx")
_EXT1_EDX = ("- - - - - - - - - - - syscall - - - - - - - - nx - mmxext - - fxsr_opt pdpe1gb rdtscp - lm "
             "3dnowext 3dnow")

# QEMU's names where they differ from Linux's.
ALIASES = {"tsc_deadline": "tsc_deadline_timer", "pni": "sse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2",
           "i64": "lm", "fxsr_opt": "fxsr_opt", "pdpe1gb": "pdpe1gb", "ds_cpl": "ds_cpl",
           "sha": "sha_ni", "tsc_adjust": "tsc_adjust", "arch_capabilities": "arch_capabilities"}


def _table() -> dict[str, tuple[int, int, str, int]]:
    out: dict[str, tuple[int, int, str, int]] = {}
    for leaf, sub, reg, names in ((1, 0, "ecx", _LEAF1_ECX), (1, 0, "edx", _LEAF1_EDX),
                                  (7, 0, "ebx", _LEAF7_EBX), (7, 0, "ecx", _LEAF7_ECX),
                                  (0x80000001, 0, "ecx", _EXT1_ECX), (0x80000001, 0, "edx", _EXT1_EDX)):
        for bit, name in enumerate(names.split()):
            if name != "-":
                out.setdefault(name, (leaf, sub, reg, bit))
    out["arch_capabilities"] = (7, 0, "edx", 29)
    out["spec_ctrl"] = (7, 0, "edx", 26)
    out["flush_l1d"] = (7, 0, "edx", 28)
    out["md_clear"] = (7, 0, "edx", 10)
    return out


FEATURES = _table()


def feature(name: str) -> tuple[int, int, str, int] | None:
    """(leaf, subleaf, register, bit) of a feature flag, or None if unknown."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    return FEATURES.get(key)


@dataclass
class Entry:
    """One CPUID leaf/subleaf as KVM_SET_CPUID2 takes it."""

    leaf: int
    subleaf: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


VENDORS = {"GenuineIntel": (0x756E6547, 0x49656E69, 0x6C65746E),   # ebx, edx, ecx
           "AuthenticAMD": (0x68747541, 0x69746E65, 0x444D4163)}
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


def apply(entries: list[Entry], add=(), remove=(), vendor: str | None = None,
          leaves=()) -> list[Entry]:
    """`entries` with features set/cleared, the vendor replaced and whole
    leaves overridden (`leaves`: (leaf, subleaf, {reg: value}))."""
    def find(leaf: int, sub: int) -> Entry:
        for e in entries:
            if e.leaf == leaf and (e.subleaf == sub or not e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX):
                return e
        e = Entry(leaf, sub, KVM_CPUID_FLAG_SIGNIFCANT_INDEX if sub else 0, 0, 0, 0, 0)
        entries.append(e)
        return e

    for names, on in ((add, True), (remove, False)):
        for name in names:
            found = feature(name)
            if found is None:
                raise ValueError(f"unknown CPUID feature {name!r}")
            leaf, sub, reg, bit = found
            e = find(leaf, sub)
            value = getattr(e, reg)
            setattr(e, reg, value | (1 << bit) if on else value & ~(1 << bit))
    if vendor is not None:
        e = find(0, 0)
        e.ebx, e.edx, e.ecx = VENDORS[vendor]
        ext = [x for x in entries if x.leaf == 0x80000000]
        for x in ext:
            x.ebx, x.edx, x.ecx = VENDORS[vendor]
    for leaf, sub, regs in leaves:
        e = find(leaf, sub)
        for reg, value in regs.items():
            setattr(e, reg, value & 0xFFFFFFFF)
    return entries
