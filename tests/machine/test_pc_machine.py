"""The x86 PC machine on real KVM: the in-kernel irqchip and PIT, `exit: hlt`
under the irqchip, software breakpoints there, CPUID edits, multiboot, SMP.
Guests are inline hex (listings beside the bytes, Intel syntax)."""

from __future__ import annotations

import struct

import pytest

from kvmrig.backends.kvm.x86_probe import debug_support
from kvmrig.backends.kvm.common import shared_kvm
from tests.machine.test_session import assert_passed, hexof, kvm, rig_text, run

IRQCHIP = "machine: {irqchip: true}\n"


@kvm
def test_hlt_with_interrupts_masked_ends_the_run_under_the_irqchip():
    out = run(rig_text("long", """
        b8 07 00 00 00   # mov eax, 7
        fa               # cli
        f4               # hlt       (0x1006)
    """, extra=IRQCHIP))
    assert out.exit == "hlt" and out.stop_pc == 0x1006
    assert out.regs["rax"] == 7
    assert out.seconds < 1.5   # noticed by a kick, not at the 2 s timeout


@kvm
def test_hlt_with_interrupts_enabled_waits_for_an_interrupt_that_never_comes():
    out = run(rig_text("long", """
        fb               # sti
        f4               # hlt
    """, timeout="300ms", extra=IRQCHIP))
    assert out.exit == "timeout"


@kvm
def test_software_breakpoints_work_under_the_irqchip():
    out = run(rig_text("long", """
        31 c0            # xor eax, eax
        ff c0            # inc eax      (0x1002, breakpoint)
        83 f8 05         # cmp eax, 5
        75 f9            # jne 0x1002
        fa               # cli
        f4               # hlt
    """, extra=IRQCHIP + "breakpoints: [{at: 0x1002, hits: 5, on_hit: 3, expect: {regs: {eax: 2}}}]\n"))
    assert_passed(out)
    assert out.exit == "hlt" and out.regs["rax"] == 5
    assert out.hit_counts and list(out.hit_counts.values()) == [5]


@kvm
def test_software_breakpoints_beyond_the_debug_registers_are_refused_without_int3():
    if debug_support(shared_kvm()).int3:
        pytest.skip("this KVM intercepts INT3: software breakpoints are planted, not held in debug registers")
    points = ", ".join(f"{{at: {0x1000 + i:#x}}}" for i in range(5))
    from kvmrig.errors import BackendError
    with pytest.raises(BackendError, match="debug registers"):
        run(rig_text("long", "90 90 90 90 90 fa f4", extra=IRQCHIP + f"breakpoints: [{points}]\n"))


def _interrupt_rig(main: str, handler: str, vector: int, extra: str) -> str:
    """Long-mode code at 0x1000 with an IDT at 0x3000 (limit in the IDTR at
    0x2000) whose gate `vector` goes to `handler` at 0x1100."""
    gate = struct.pack("<HHHHII", 0x1100, 8, 0x8E00, 0, 0, 0).hex(" ")
    idtr = struct.pack("<HQ", 0x0FFF, 0x3000).hex(" ")
    return (f"kvmrig: 1\narch: x86_64\ntimeout: 3s\nmemory: [{{at: 0, size: 2M}}]\n{extra}"
            f"images: [{{hex: '{main}', at: 0x1000}}, {{hex: '{handler}', at: 0x1100}},"
            f" {{hex: '{idtr}', at: 0x2000}}, {{hex: '{gate}', at: {0x3000 + 16 * vector:#x}}}]\n"
            "cpu: {mode: long, regs: {rsp: 0x8000}}\n")


@kvm
def test_pit_interrupts_are_delivered_through_the_pic():
    # IDT at 0x3000 (vector 0x20 -> 0x1100: inc esi; EOI; iretq), PIC base 0x20,
    # only IRQ 0 unmasked, PIT channel 0 mode 2, divisor 0x400; wait for 3 ticks.
    handler = hexof("""
        ff c6            # inc esi
        b0 20            # mov al, 0x20
        e6 20            # out 0x20, al  (EOI)
        48 cf            # iretq
    """)
    main = hexof("""
        0f 01 1c 25 00 20 00 00   # lidt [0x2000]
        b0 11 e6 20      # ICW1
        b0 20 e6 21      # ICW2: vectors 0x20..
        b0 04 e6 21      # ICW3
        b0 01 e6 21      # ICW4
        b0 fe e6 21      # mask all but IRQ 0
        b0 34 e6 43      # PIT ch0 mode 2, lo/hi
        b0 00 e6 40      # divisor low
        b0 04 e6 40      # divisor high
        31 f6            # xor esi, esi
        fb               # sti
        f4               # hlt          (wait)
        83 fe 03         # cmp esi, 3
        72 fa            # jb wait
        fa               # cli
        f4               # hlt
    """)
    out = run(_interrupt_rig(main, handler, 0x20, "machine: {pit: true}\n"))
    assert out.exit == "hlt", out.detail
    assert out.regs["rsi"] == 3


@kvm
def test_cpuid_features_are_added_and_removed():
    code = """
        b8 01 00 00 00   # mov eax, 1
        0f a2            # cpuid
        fa f4            # cli; hlt
    """
    removed = run(rig_text("long", code, cpu="cpuid: {remove: [x2apic, pcid]}"))
    added = run(rig_text("long", code, cpu="cpuid: {add: [x2apic, pcid]}"))
    assert removed.regs["rcx"] & (1 << 21 | 1 << 17) == 0
    assert added.regs["rcx"] & (1 << 21 | 1 << 17) == 1 << 21 | 1 << 17


@kvm
def test_cpuid_whole_leaf_and_vendor():
    code = """
        31 c0            # xor eax, eax
        0f a2            # cpuid
        89 d8            # mov eax, ebx
        f4               # hlt
    """
    out = run(rig_text("long", code, cpu="cpuid: {vendor: AuthenticAMD}"))
    assert out.regs["rax"] == 0x68747541   # "Auth"
    out = run(rig_text("long", """
        b8 00 00 00 40   # mov eax, 0x40000000
        0f a2            # cpuid
        f4               # hlt
    """, cpu="cpuid: {leaves: [{leaf: 0x40000000, ebx: 0x12345678}]}"))
    assert out.regs["rbx"] == 0x12345678


# COM1's IRQ 4 handler (vector 0x24 with the PIC at 0x20): count in esi, read IIR (ack), EOI
THRE_HANDLER = hexof("""
    ff c6                    # inc esi
    66 ba fa 03              # mov dx, 0x3fa
    ec                       # in al, dx     (IIR: acknowledges THRE)
    b0 20 e6 20              # EOI
    48 cf                    # iretq
""")
SERIAL_IRQ = "machine: {irqchip: true}\ndevices: [{type: serial, port: 0x3f8}]\n"


@kvm
def test_serial_thre_interrupt_reaches_the_guest():
    # IRQ 4 (COM1) -> vector 0x24 with the PIC at 0x20; enabling THRE interrupts
    # with an empty transmitter interrupts at once; the handler reads IIR (ack).
    main = hexof("""
        0f 01 1c 25 00 20 00 00  # lidt [0x2000]
        b0 11 e6 20 b0 20 e6 21 b0 04 e6 21 b0 01 e6 21 b0 ef e6 21   # PIC: base 0x20, IRQ 4 only
        31 f6 fb                 # xor esi, esi; sti
        66 ba f9 03 b0 02 ee     # IER = THRE (0x3f9): interrupts at once
        90 90 90                 # nop (the interrupt lands)
        fa f4                    # cli; hlt
    """)
    out = run(_interrupt_rig(main, THRE_HANDLER, 0x24, SERIAL_IRQ))
    assert out.exit == "hlt", out.detail
    assert out.regs["rsi"] == 1


@kvm
def test_a_pic_interrupt_raised_while_lvt0_was_masked_arrives_once_it_is_unmasked():
    # Linux without ACPI tables (Debian's kernel on a rig) masks LVT0 while it
    # sets up its local APIC. An IRQ raised then makes the PIC's output rise
    # with no vCPU taking ExtINT, and KVM does not look again when LVT0 is
    # unmasked: kvmrig's kick must make it (else this spins until the timeout).
    main = hexof("""
        0f 01 1c 25 00 20 00 00  # lidt [0x2000]
        b9 1b 00 00 00 0f 32     # mov ecx, IA32_APIC_BASE; rdmsr
        0d 00 0c 00 00 0f 30     # or eax, EN | EXTD (x2APIC); wrmsr
        31 d2                    # xor edx, edx
        b9 0f 08 00 00 b8 ff 01 00 00 0f 30   # SVR (0x80f) = 0x1ff: APIC software-enabled
        b9 35 08 00 00 b8 00 07 01 00 0f 30   # LVT0 (0x835) = ExtINT, masked
        b0 11 e6 20 b0 20 e6 21 b0 04 e6 21 b0 01 e6 21   # PIC: base 0x20
        b0 ef e6 21              # unmask IRQ 4 only
        31 f6                    # xor esi, esi
        fb                       # sti
        66 ba f9 03 b0 02 ee     # IER = THRE: IRQ 4 rises now, LVT0 refuses it
        90 90 90                 # nop (nothing lands)
        31 d2                    # xor edx, edx
        b9 35 08 00 00 b8 00 07 00 00 0f 30   # LVT0 = ExtINT, unmasked
        85 f6                    # wait: test esi, esi
        74 fc                    # jz wait
        fa f4                    # cli; hlt
    """)
    out = run(_interrupt_rig(main, THRE_HANDLER, 0x24, SERIAL_IRQ))
    assert out.exit == "hlt", out.detail
    assert out.regs["rsi"] == 1


@kvm
def test_multiboot_kernel_gets_its_information_structure():
    # An a.out-kludge kernel at 0x100000: header, then mov [0x5000], ebx; mov [0x5004], eax; hlt
    flags = 1 << 16
    header = struct.pack("<IIIIIIII", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF,
                         0x100000, 0x100000, 0, 0, 0x100020)
    code = bytes.fromhex(hexof("""
        89 1d 00 50 00 00   # mov [0x5000], ebx
        a3 04 50 00 00      # mov [0x5004], eax
        f4                  # hlt
    """))
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        kernel = Path(d) / "k.bin"
        kernel.write_bytes(header + code)
        text = (f"kvmrig: 1\narch: x86_64\ntimeout: 2s\nmemory: [{{at: 0, size: 4M}}]\n"
                f"images: [{{file: k.bin, format: multiboot, cmdline: 'k.bin x=1', modules: [{{text: 'ENV=1'}}]}}]\n"
                "expect: {exit: hlt, memory: [{at: 0x5004, u32: 0x2badb002}]}\n")
        out = run(text, str(Path(d) / "mb.yaml"))
    assert_passed(out)
    assert out.regs["rbx"] == 0x101000   # the page after the kernel


@kvm
def test_two_vcpus_the_ap_started_by_init_sipi_writes_memory():
    # BSP (protected mode): SVR enable, INIT + SIPI vector 0x08 to APIC 1, wait for [0x5000] == 0x42.
    # AP (real mode at 0x8000): mov byte [0x5000], 0x42; cli; hlt
    bsp = hexof("""
        c7 05 f0 00 e0 fe ff 01 00 00   # mov dword [0xfee000f0], 0x1ff
        c7 05 10 03 e0 fe 00 00 00 01   # mov dword [0xfee00310], 1 << 24
        c7 05 00 03 e0 fe 00 45 00 00   # mov dword [0xfee00300], 0x4500  (INIT)
        c7 05 00 03 e0 fe 08 46 00 00   # mov dword [0xfee00300], 0x4608  (SIPI 0x08)
        80 3d 00 50 00 00 42            # cmp byte [0x5000], 0x42   (wait)
        75 f7                           # jne wait
        fa f4                           # cli; hlt
    """)
    ap = hexof("""
        c6 06 00 50 42                  # mov byte [0x5000], 0x42
        fa f4                           # cli; hlt
    """)
    text = (f"kvmrig: 1\narch: x86_64\ntimeout: 3s\nmemory: [{{at: 0, size: 2M}}]\n"
            f"cpus: 2\nmachine: {{irqchip: true}}\n"
            f"images: [{{hex: '{bsp}', at: 0x1000}}, {{hex: '{ap}', at: 0x8000}}]\n"
            "cpu: {mode: protected, entry: 0x1000}\nexpect: {exit: hlt, memory: [{at: 0x5000, u8: 0x42}]}\n")
    out = run(text)
    assert_passed(out)


@kvm
def test_an_ap_ending_the_run_is_named():
    bsp = hexof("""
        c7 05 f0 00 e0 fe ff 01 00 00   # SVR enable
        c7 05 10 03 e0 fe 00 00 00 01   # destination APIC 1
        c7 05 00 03 e0 fe 00 45 00 00   # INIT
        c7 05 00 03 e0 fe 08 46 00 00   # SIPI 0x08
        eb fe                           # jmp $
    """)
    ap = hexof("""
        b0 07                           # mov al, 7
        e6 f4                           # out 0xf4, al
    """)
    text = (f"kvmrig: 1\narch: x86_64\ntimeout: 3s\nmemory: [{{at: 0, size: 2M}}]\n"
            f"cpus: 2\nmachine: {{irqchip: true}}\ndevices: [{{type: exit, port: 0xf4}}]\n"
            f"images: [{{hex: '{bsp}', at: 0x1000}}, {{hex: '{ap}', at: 0x8000}}]\n"
            "cpu: {mode: protected, entry: 0x1000}\nexpect: {exit_code: 7}\n")
    out = run(text)
    assert_passed(out)
    assert out.detail.startswith("vCPU 1:")


@kvm
def test_linux_bzimage_is_entered_at_its_64_bit_entry_with_the_zero_page(tmp_path):
    from tests.arch.x86_64.test_linux import bzimage
    # The protected-mode "kernel": 0x200 bytes of padding, then the 64-bit entry.
    entry = bytes.fromhex(hexof("""
        48 89 f0         # mov rax, rsi               (the zero page)
        8b 8e 28 02 00 00   # mov ecx, [rsi + 0x228]  (cmd_line_ptr)
        8a 11            # mov dl, [rcx]
        8b 9e 18 02 00 00   # mov ebx, [rsi + 0x218]  (ramdisk_image)
        8a 3b            # mov bh, [rbx]   (initrd's first byte, in bh)
        f4               # hlt
    """))
    (tmp_path / "bzImage").write_bytes(bzimage(pref=0x1000000, init_size=0x10000, kernel=bytes(0x200) + entry))
    (tmp_path / "initrd").write_bytes(b"Z" * 100)
    text = ("kvmrig: 1\narch: x86_64\ntimeout: 2s\nmemory: [{at: 0, size: 64M}]\n"
            "images: [{file: bzImage, format: linux, cmdline: 'console=ttyS0', initrd: initrd}]\n")
    out = run(text, str(tmp_path / "l.yaml"))
    assert out.exit == "hlt", out.detail
    assert out.regs["rax"] == 0x7000 and out.regs["rcx"] == 0x20000
    assert out.regs["rdx"] & 0xFF == ord("c") and (out.regs["rbx"] >> 8) & 0xFF == ord("Z")


@kvm
def test_more_vcpus_than_kvm_offers_is_a_rig_error_at_cpus(monkeypatch):
    """KVM_CAP_MAX_VCPUS is read from the real VM (kvm_pvm offers 1024, more than
    a rig may ask): a smaller limit stands in for a KVM that offers fewer, so
    the check and its file:line are what runs."""
    from kvmrig.backends.kvm.common import KvmBackendBase
    from kvmrig.backends.kvm.x86_64 import KvmX86Backend
    from kvmrig.backends.kvm import abi
    from kvmrig.result import ERROR
    from kvmrig.rig.load import load_rig_text
    from kvmrig.runner import run_rig

    backend = KvmX86Backend()
    try:
        real = backend.max_cpus()
        assert real == backend.vm.check_extension(abi.KVM_CAP_MAX_VCPUS) and real >= 64
    finally:
        backend.close()
    text = ("kvmrig: 1\narch: x86_64\ntimeout: 3s\nmemory: [{at: 0, size: 2M}]\nmachine: {irqchip: true}\n"
            "cpus: 3\nimages: [{hex: 'f4', at: 0x1000}]\ncpu: {mode: protected, entry: 0x1000}\n"
            "expect: {exit: hlt}\n")
    monkeypatch.setattr(KvmBackendBase, "max_cpus", lambda self: 2)
    result = run_rig(load_rig_text(text, "/rigs/many.yaml"), backend="kvm")
    assert result.status == ERROR
    assert result.message == ("/rigs/many.yaml:6:7: 3 vCPUs asked, this kvm offers at most 2 per VM "
                              "(KVM_CAP_MAX_VCPUS)"), result.message
    monkeypatch.setattr(KvmBackendBase, "max_cpus", lambda self: 3)   # exactly what KVM offers: runs
    assert run_rig(load_rig_text(text, "/rigs/many.yaml"), backend="kvm").status != ERROR
