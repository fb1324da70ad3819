"""kvmrig's arm64 machine layout: QEMU's `virt` board where a rig says
nothing (hw/arm/virt.c memmap), so software built for that board finds its
devices where it expects them.

GICv3: distributor at 0x08000000 (64 KiB), redistributors from 0x080A0000,
128 KiB per vCPU (RD_base + SGI_base frames). PL011 at 0x09000000 on SPI 1
(INTID 33). The generic timer's PPIs, as KVM wires them by default and QEMU
lists them: secure physical 13, non-secure physical 14, virtual 11,
hypervisor 10 (PPI n is INTID 16 + n).
"""

from __future__ import annotations

GIC_DIST = 0x08000000
GIC_REDIST = 0x080A0000
GIC_DIST_SIZE = 0x10000
GIC_REDIST_PER_CPU = 0x20000
GIC_NR_IRQS = 288          # INTIDs 0..287: 32 private + 256 SPIs (a multiple of 32, 64..1024)
GIC_MAX_IRQS = 1024        # KVM's vgic: nr_irqs <= 1024 (INTIDs above 1019 are special)
GIC_MIN_IRQS = 64
GIC_MAX_CPUS = 512         # KVM_MAX_VCPUS of a GICv3 VM (VGIC_V3_MAX_CPUS)
PL011_SPI = 1
SPI_BASE = 32              # INTID of SPI 0
PPI_BASE = 16              # INTID of PPI 0

# Device tree interrupt specifiers (bindings/interrupt-controller/arm,gic-v3.yaml)
GIC_SPI, GIC_PPI = 0, 1
IRQ_TYPE_LEVEL_HIGH = 4

# The PMU's overflow interrupt (QEMU virt's VIRTUAL_PMU_IRQ): PPI 7 = INTID 23.
PMU_PPI = 7

# Timer PPIs, in the order the arm,armv8-timer binding lists them.
TIMER_PPIS = (13, 14, 11, 10)


def redist_size(cpus: int) -> int:
    """The redistributor region for `cpus` vCPUs."""
    return GIC_REDIST_PER_CPU * cpus


def mpidr(index: int) -> int:
    """The MPIDR_EL1 affinity KVM gives vCPU `index` (Aff0 = index % 16,
    Aff1 = index / 16: KVM's reset value), which is the cpu node's `reg`."""
    return (index // 16) << 8 | (index % 16)
