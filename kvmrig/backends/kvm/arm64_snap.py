"""Snapshots of arm64 KVM machines with several vCPUs (`cpus:`) or a GICv3 (`gic:`).

vCPU 0's state stays where a one-vCPU snapshot has it (`one_reg`,
`mp_state`, `arch` at the top of the CPU text); a machine adds
`secondaries` (each further vCPU's `one_reg` and `mp_state`, in vCPU order),
`gic` (arm64_gic_state.save) and `pmu` (the vCPUs were made with a PMUv3,
which a GIC brings where KVM has one: its registers exist only then).

Loading builds the machine the way the one that saved it was built - every
vCPU created in the same order (secondaries powered off, as at boot), with
the same features, then the GIC placed, sized and initialised - and then
puts back, in this order: each vCPU's registers (the virtual counter is one
per VM: every vCPU is given vCPU 0's saved count, so KVM's offset is set
once, consistently; CNTV_CTL/CVAL are each vCPU's own), the GIC
(distributor, redistributors, line levels, CPU interfaces), and each vCPU's
MP state last (a vCPU powered off by PSCI stays off, CPU_ON starts it).
Everything in the text is checked before the first write.
"""

from __future__ import annotations

import errno

from kvmrig.arch.arm64 import cpustate, onereg
from kvmrig.arch.arm64.boot import GicLayout
from kvmrig.backends.kvm import abi, arm64_gic_state
from kvmrig.errors import BackendError, KvmError

MPIDR = onereg.reg_id("mpidr_el1")


def views(backend) -> list:
    """Every vCPU's backend view, vCPU 0 (the backend itself) first."""
    return list(getattr(backend, "_cpus", None) or [backend])


def is_machine(text) -> bool:
    """The CPU text of a machine with more than one vCPU or a GIC."""
    return isinstance(text, dict) and ("secondaries" in text or "gic" in text)


def machine_shape(backend) -> dict:
    """The snapshot header's `machine` of this backend's VM."""
    gic = backend._gic
    shape = None if gic is None else {"version": arm64_gic_state.VERSION, "distributor": gic.distributor,
                                      "redistributor": gic.redistributor, "irqs": gic.irqs}
    return {"cpus": len(views(backend)), "gic": shape}


def check_pmu(backend, pmu: bool) -> None:
    """The vCPUs a snapshot loads into get a PMUv3 as the saved ones had (their
    features: backend.init_features); an error if this KVM has none."""
    if pmu and backend.vm.check_extension(abi.KVM_CAP_ARM_PMU_V3) <= 0:
        raise BackendError("the snapshot's vCPUs have a PMUv3; this KVM offers none (KVM_CAP_ARM_PMU_V3)")


def vcpu_text(view) -> dict:
    """One vCPU's registers (KVM_GET_REG_LIST, by id) and MP state, as text."""
    view.settle_io()
    vcpu, regs = view.vcpu, {}
    for reg in vcpu.get_reg_list():
        try:
            regs[f"{reg:#x}"] = f"{vcpu.get_one_reg(reg):#x}"
        except KvmError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL):
                raise
    mp = vcpu.get_blob("KVM_GET_MP_STATE", "struct kvm_mp_state")
    return {"one_reg": regs, "mp_state": mp.hex()}


def export_machine(backend, text: dict) -> None:
    """Add the other vCPUs and the GIC (if any) to vCPU 0's text."""
    cpus = views(backend)
    if len(cpus) > 1:
        text["secondaries"] = [vcpu_text(c) for c in cpus[1:]]
    if backend._gic is not None:
        mpidrs = [c.vcpu.get_one_reg(MPIDR) for c in cpus]
        text["gic"] = arm64_gic_state.save(backend._gic_dev, backend._gic, mpidrs)
        text["pmu"] = bool(backend._pmu)


def _vcpu(raw, where: str) -> tuple[dict[int, int], bytes]:
    try:
        regs = {int(k, 16): int(v, 16) for k, v in raw["one_reg"].items()}
        mp = bytes.fromhex(raw["mp_state"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BackendError(f"the saved state of {where} is malformed ({type(e).__name__}: {e})") from None
    if len(mp) != 4:
        raise BackendError(f"the saved MP state of {where} is {len(mp)} bytes, not 4")
    return regs, mp


def parse(text: dict) -> tuple[list[tuple[dict[int, int], bytes]], arm64_gic_state.GicState | None, bool]:
    """(per vCPU (registers, MP state), GIC state or None, pmu) of a machine's text, checked."""
    secondaries = text.get("secondaries", [])
    if not isinstance(secondaries, list):
        raise BackendError("the saved secondaries are not a list of vCPUs")
    vcpus = [_vcpu(text, "vCPU 0")] + [_vcpu(raw, f"vCPU {i}") for i, raw in enumerate(secondaries, 1)]
    gic = None
    if "gic" in text:
        try:
            gic = arm64_gic_state.parse(text["gic"])
        except arm64_gic_state.GicStateError as e:
            raise BackendError(f"the saved GIC state is malformed: {e}") from None
        if len(gic.cpus) != len(vcpus):
            raise BackendError(f"the saved GIC state has {len(gic.cpus)} CPU interfaces for {len(vcpus)} vCPUs")
    pmu = text.get("pmu", False)
    if not isinstance(pmu, bool):
        raise BackendError(f"the saved pmu flag {pmu!r} is not true or false")
    return vcpus, gic, pmu


def import_machine(backend, text: dict) -> None:
    """Build the saved machine in `backend`'s VM and load it (module docstring)."""
    vcpus, gic, pmu = parse(text)
    layout = None if gic is None else GicLayout(gic.distributor, gic.redistributor, gic.irqs)
    backend._build_for_snapshot(len(vcpus), layout, pmu)
    cpus = views(backend)
    if len(cpus) != len(vcpus):
        raise BackendError(f"the snapshot has {len(vcpus)} vCPUs; this machine {len(cpus)}")
    clocks = {r: v for r, v in vcpus[0][0].items() if cpustate.is_clock(r)}
    for i, (view, (regs, _mp)) in enumerate(zip(cpus, vcpus)):
        vcpu = view.vcpu
        known = set(vcpu.get_reg_list())
        for reg, value in regs.items():
            if reg not in known:
                raise BackendError(f"the saved state of vCPU {i} has register {reg:#x}, which this KVM does not "
                                   "know")
            value = clocks.get(reg, value)
            if vcpu.get_one_reg(reg) != value:
                vcpu.set_one_reg(reg, value)
    if gic is not None:
        mpidrs = [view.vcpu.get_one_reg(MPIDR) for view in cpus]
        try:
            arm64_gic_state.restore(backend._gic_dev, gic, mpidrs)
        except arm64_gic_state.GicStateError as e:
            raise BackendError(f"the saved GIC state does not fit this machine: {e}") from None
        except KvmError as e:
            raise BackendError(f"KVM refused the saved GIC state: {e}") from None
    for view, (_regs, mp) in zip(cpus, vcpus):
        view.vcpu.set_blob("KVM_SET_MP_STATE", "struct kvm_mp_state", mp)
        view._forget_regs(complete=True)
