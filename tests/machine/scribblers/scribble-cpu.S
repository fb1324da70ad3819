/*
 * scribble-cpu.S - change every piece of vCPU state a later rig could see.
 *
 * Mode: long. Loaded at 0x1000. For the fresh-vs-reused differential test:
 * MSRs (STAR, LSTAR, SYSENTER, PAT, FS/GS/KERNEL_GS base, TSC), EFER bits,
 * CR0/CR4/CR8 bits, DR0-DR3 and DR7, every
 * general register, then HLT. (No x87/SSE: kvm_pvm cannot run them in a
 * guest; the XSAVE reset is tested from the host side instead.)
 */
        .code64
        .text
        .globl  _start
_start:
        mov     $0xc0000081, %ecx               # STAR
        mov     $0x12345678, %eax
        mov     $0x00230010, %edx
        wrmsr
        mov     $0xc0000082, %ecx               # LSTAR
        mov     $0x1000, %eax
        xor     %edx, %edx
        wrmsr
        mov     $0x174, %ecx                    # SYSENTER_CS
        mov     $0x8, %eax
        wrmsr
        mov     $0x175, %ecx                    # SYSENTER_ESP
        mov     $0x7000, %eax
        wrmsr
        mov     $0x277, %ecx                    # PAT: all write-back
        mov     $0x06060606, %eax
        mov     $0x06060606, %edx
        wrmsr
        xor     %edx, %edx
        mov     $0xc0000100, %ecx               # FS base
        mov     $0x11000, %eax
        wrmsr
        mov     $0xc0000101, %ecx               # GS base
        mov     $0x12000, %eax
        wrmsr
        mov     $0xc0000102, %ecx               # KERNEL_GS base
        mov     $0xdead000, %eax
        wrmsr
        mov     $0x10, %ecx                     # TSC = 1 << 60
        xor     %eax, %eax
        mov     $0x10000000, %edx
        wrmsr
        mov     $0xc0000080, %ecx               # EFER |= SCE | NXE
        rdmsr
        or      $0x801, %eax
        wrmsr
        mov     %cr0, %rax                      # CR0 |= NE | WP | AM
        or      $0x50020, %rax
        mov     %rax, %cr0
        mov     %cr4, %rax                      # CR4 |= TSD | DE | PCE | OSFXSR | OSXMMEXCPT
        or      $0x70c, %rax
        mov     %rax, %cr4
        mov     $5, %eax                        # CR8 (TPR): KVM reloads it from kvm_run
        mov     %rax, %cr8
        mov     $0x2000, %rax                   # debug registers
        mov     %rax, %dr0
        mov     $0x3000, %rax
        mov     %rax, %dr3
        mov     $0x401, %rax                    # DR7: L0 (exec at 0x2000, never run)
        mov     %rax, %dr7
        mov     $0x1111, %rax                   # general registers
        mov     $0x2222, %rbx
        mov     $0x3333, %rcx
        mov     $0x4444, %rdx
        mov     $0x5555, %rsi
        mov     $0x6666, %rdi
        mov     $0x7777, %rbp
        mov     $0x8888, %r8
        mov     $0x9999, %r9
        mov     $0xaaaa, %r10
        mov     $0xbbbb, %r11
        mov     $0xcccc, %r12
        mov     $0xdddd, %r13
        mov     $0xeeee, %r14
        mov     $0xffff, %r15
        std                                     # RFLAGS.DF
        hlt
