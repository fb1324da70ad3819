/* limit.c - the raw-ioctl floor that kvmrig is measured against.
 *
 * Built by bench/run.py with the system's cc into a cache folder (never
 * committed), then run as
 *
 *     limit OP K N        OP = lifecycle | pio | mmio | singlestep | hwbp | swbp
 *     limit ioctls 0 N    median cost of single ioctls (for reading profiles)
 *     limit reuse 0 N     the lifecycle rig on a kept VM + vCPU (what a VM pool would cost)
 *     limit reset 0 N     kvmrig's reset of a reused VM after a rig that dirtied 16 pages
 *     limit cache 0 N     what a vCPU ioctl leaves in the CPU caches (a 32 KiB pointer chase after it)
 *
 * LIMIT_SYNC_REGS=1 (not used by bench/run.py, which measures kvmrig's
 * strategy): KVM_CAP_SYNC_REGS, i.e. kvm_run.kvm_valid_regs = REGS | SREGS;
 * the hw/sw breakpoint turns then read registers from kvm_run.s.regs and
 * write rip back through kvm_dirty_regs instead of GET_REGS / SET_REGS.
 *
 * It prints one JSON line: {"op": OP, "k": K, "exits": E, "ns": [N samples],
 * "ns_0": [N samples]}: wall-clock ns of the K-turn rig and, interleaved with
 * it (K > 0 only), of the same rig with 0 turns; per operation is
 * (median(ns) - median(ns_0)) / K.
 * Each sample is ONE COMPLETE RIG, timed from the KVM_CREATE_VM to the last
 * close()/munmap(), doing exactly the work kvmrig does for the same rig
 * (see bench/rigs.py, which writes the matching YAML, and bench/README.md):
 *
 *   process start (untimed, once; kvmrig also does these once per worker):
 *     open /dev/kvm, KVM_GET_VCPU_MMAP_SIZE, KVM_GET_SUPPORTED_CPUID
 *   per rig (timed):
 *     mmap 32 KiB anonymous guest RAM (MAP_PRIVATE|MAP_NORESERVE), copy the
 *     guest to 0x1000;  KVM_CREATE_VM;  KVM_SET_USER_MEMORY_REGION (slot 0,
 *     gpa 0, 32 KiB);  KVM_SET_IDENTITY_MAP_ADDR + KVM_SET_TSS_ADDR
 *     (0xfeffc000 / 0xfeffd000);  KVM_CREATE_VCPU + mmap(kvm_run);
 *     KVM_SET_CPUID2 (the supported set);  GET/SET_SREGS (real mode,
 *     CS = 0);  GET/SET_REGS (rip 0x1000, rflags 2, rcx = K);  arm a
 *     SIGALRM timeout with setitimer (kvmrig's timeout guard);  KVM_RUN until
 *     the guest's HLT, handling each exit the op causes;  disarm the timer;
 *     KVM_GET_REGS + KVM_GET_SREGS (the final state a rig checks);
 *     munmap(kvm_run), close(vcpu), close(vm), munmap(RAM).
 *
 * The guests run in real mode at 0x1000 with CX = K turns (16-bit code, no
 * page tables on either side):
 *   lifecycle:  f4                     hlt
 *   pio:        e3 04 e6 80 e2 fc f4   jcxz end; 1: out %al,$0x80; loop 1b; end: hlt
 *   mmio:       e3 05 a2 00 f0 e2 fb f4  ... mov %al,0xf000 (no RAM there) ...
 *   singlestep: e3 02 e2 fe f4         jcxz end; 1: loop 1b; end: hlt  (TF on)
 *   hwbp/swbp:  e3 03 90 e2 fd f4      jcxz end; 1: nop; loop 1b; end: hlt
 *                                      breakpoint on the nop at 0x1002
 * Per exit:
 *   pio/mmio:   KVM_RUN -> KVM_EXIT_IO / KVM_EXIT_MMIO, record the value
 *   singlestep: KVM_RUN -> KVM_EXIT_DEBUG; stop once the instruction just
 *               stepped was a HLT (the same check kvmrig makes)
 *   hwbp:       DR0 = 0x1002 exec. KVM_RUN -> KVM_EXIT_DEBUG (DR6.B0);
 *               KVM_GET_REGS and check rdx (the per-hit register check);
 *               KVM_SET_GUEST_DEBUG (DR0 off, single-step); KVM_RUN ->
 *               KVM_EXIT_DEBUG (DR6.BS); KVM_SET_GUEST_DEBUG (DR0 on).
 *               This is kvmrig's strategy: an instruction breakpoint is a
 *               fault, and RFLAGS.RF is not honoured by every KVM.
 *   swbp:       this KVM (kvm_pvm) cannot intercept INT3, so kvmrig plants
 *               HLT (f4) and so does this: KVM_RUN -> KVM_EXIT_HLT at
 *               0x1003; KVM_GET_REGS, rip -= 1, KVM_SET_REGS; put the nop
 *               back; KVM_SET_GUEST_DEBUG (single-step); KVM_RUN ->
 *               KVM_EXIT_DEBUG; re-plant the HLT; KVM_SET_GUEST_DEBUG (off).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE 0x8000
#define ENTRY 0x1000
#define BP_ADDR 0x1002
#define MMIO_ADDR 0xf000
#define AREA 0xfeffc000ULL
#define DX_MAGIC 0x55aa
#define CPUID_MAX 256

static int kvm_fd;
static int sync_regs; /* LIMIT_SYNC_REGS=1: registers through kvm_run (KVM_CAP_SYNC_REGS) */
static int run_size;
static struct kvm_cpuid2 *cpuid;
static volatile struct kvm_run *alarmed;

static void die(const char *what) {
    fprintf(stderr, "limit: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what) {
    int r;
    do {
        r = ioctl(fd, req, arg);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        die(what);
    return r;
}

static void on_alarm(int sig) {
    (void)sig;
    if (alarmed)
        alarmed->immediate_exit = 1;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

enum op { LIFECYCLE, PIO, MMIO, SINGLESTEP, HWBP, SWBP };

/* Where one rig's time goes (printed for the lifecycle op). */
#define PHASES 8
static const char *phase_names[PHASES] = {
    "mmap_ram_copy_guest", "create_vm", "set_memory_tss_identity", "create_vcpu_mmap_cpuid",
    "set_sregs_regs", "timer_run_to_hlt", "get_regs_sregs", "teardown"};
static uint64_t phase_ns[PHASES];

static const unsigned char G_HLT[] = {0xf4};
static const unsigned char G_PIO[] = {0xe3, 0x04, 0xe6, 0x80, 0xe2, 0xfc, 0xf4};
static const unsigned char G_MMIO[] = {0xe3, 0x05, 0xa2, 0x00, 0xf0, 0xe2, 0xfb, 0xf4};
static const unsigned char G_STEP[] = {0xe3, 0x02, 0xe2, 0xfe, 0xf4};
static const unsigned char G_BP[] = {0xe3, 0x03, 0x90, 0xe2, 0xfd, 0xf4};

static void guest_debug(int vcpu, uint32_t control, int dr0_armed) {
    struct kvm_guest_debug dbg;
    memset(&dbg, 0, sizeof dbg);
    dbg.control = control;
    if (dr0_armed) {
        dbg.arch.debugreg[0] = BP_ADDR;
        dbg.arch.debugreg[7] = 0x2; /* G0, R/W0 = exec, LEN0 = 1 */
    }
    xioctl(vcpu, KVM_SET_GUEST_DEBUG, &dbg, "KVM_SET_GUEST_DEBUG");
}

/* One complete rig; returns the number of exits handled (for a sanity check). */
static long one_rig(enum op op, unsigned k) {
    const unsigned char *guest;
    size_t glen;
    switch (op) {
    case PIO: guest = G_PIO; glen = sizeof G_PIO; break;
    case MMIO: guest = G_MMIO; glen = sizeof G_MMIO; break;
    case SINGLESTEP: guest = G_STEP; glen = sizeof G_STEP; break;
    case HWBP: case SWBP: guest = G_BP; glen = sizeof G_BP; break;
    default: guest = G_HLT; glen = sizeof G_HLT; break;
    }
    uint64_t t = now_ns(), t1;
#define PHASE(i) (t1 = now_ns(), phase_ns[i] = t1 - t, t = t1)
    unsigned char *mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap(RAM)");
    memcpy(mem + ENTRY, guest, glen);
    unsigned char saved = 0;
    if (op == SWBP) {
        saved = mem[BP_ADDR];
        mem[BP_ADDR] = 0xf4;
    }
    PHASE(0);

    int vm = xioctl(kvm_fd, KVM_CREATE_VM, (void *)0, "KVM_CREATE_VM");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    PHASE(1);
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
    uint64_t idmap = AREA;
    xioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap, "KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)(AREA + 0x1000)) < 0)
        die("KVM_SET_TSS_ADDR");
    PHASE(2);
    int vcpu = xioctl(vm, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap(kvm_run)");
    xioctl(vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
    if (sync_regs)
        run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    PHASE(3);

    struct kvm_sregs sregs;
    xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    sregs.cs.selector = 0;
    sregs.cs.base = 0;
    sregs.cr0 = 0x10; /* ET */
    xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
    struct kvm_regs regs;
    xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
    memset(&regs, 0, sizeof regs);
    regs.rip = ENTRY;
    regs.rflags = 2;
    regs.rcx = k;
    regs.rdx = DX_MAGIC;
    xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

    if (op == SINGLESTEP)
        guest_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, 0);
    else if (op == HWBP)
        guest_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, 1);

    PHASE(4);
    /* The timeout guard: 10 s, then every 10 ms (handler installed and
     * restored per rig, as kvmrig does). */
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, &old_sa);
    alarmed = run;
    struct itimerval it = {{0, 10000}, {10, 0}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &it, NULL);

    long exits = 0, failures = 0;
    uint64_t last_pc = ENTRY, sum = 0;
    int done = 0;
    while (!done) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) {
                run->immediate_exit = 0;
                fprintf(stderr, "limit: timeout\n");
                exit(3);
            }
            die("KVM_RUN");
        }
        exits++;
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (run->io.direction != KVM_EXIT_IO_OUT) {
                fprintf(stderr, "limit: unexpected IN\n");
                exit(3);
            }
            sum += *((uint8_t *)run + run->io.data_offset); /* "record" the value */
            break;
        case KVM_EXIT_MMIO:
            if (!run->mmio.is_write) {
                fprintf(stderr, "limit: unexpected MMIO read\n");
                exit(3);
            }
            sum += run->mmio.data[0] + run->mmio.phys_addr;
            break;
        case KVM_EXIT_DEBUG: {
            struct kvm_debug_exit_arch *d = &run->debug.arch;
            if (op == SINGLESTEP) {
                if (mem[last_pc] == 0xf4) /* the step was over a HLT: the run ends */
                    done = 1;
                last_pc = d->pc;
            } else if (op == HWBP && (d->dr6 & 1)) {
                if (sync_regs)
                    regs = run->s.regs.regs;
                else
                    xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
                if ((regs.rdx & 0xffff) != DX_MAGIC)
                    failures++;
                guest_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, 0);
            } else if (op == HWBP && (d->dr6 & (1 << 14))) {
                guest_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, 1);
            } else if (op == SWBP && (d->dr6 & (1 << 14))) {
                mem[BP_ADDR] = 0xf4;
                guest_debug(vcpu, 0, 0);
            } else {
                fprintf(stderr, "limit: unexpected debug exit dr6=%#llx\n", (unsigned long long)d->dr6);
                exit(3);
            }
            break;
        }
        case KVM_EXIT_HLT:
            if (op == SWBP) {
                if (sync_regs)
                    regs = run->s.regs.regs;
                else
                    xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
                if (regs.rip - 1 == BP_ADDR) {
                    regs.rip -= 1;
                    if (sync_regs) {
                        run->s.regs.regs.rip = regs.rip;
                        run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
                    } else {
                        xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
                    }
                    mem[BP_ADDR] = saved;
                    guest_debug(vcpu, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, 0);
                    break;
                }
            }
            done = 1;
            break;
        default:
            fprintf(stderr, "limit: unexpected exit %u\n", run->exit_reason);
            exit(3);
        }
    }
    setitimer(ITIMER_REAL, &off, NULL);
    sigaction(SIGALRM, &old_sa, NULL);
    alarmed = NULL;
    PHASE(5);
    xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
    xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    PHASE(6);
    if (failures || (op != SINGLESTEP && op != LIFECYCLE && (regs.rcx & 0xffff) != 0)) {
        fprintf(stderr, "limit: wrong final state (failures %ld, cx %#llx)\n", failures,
                (unsigned long long)regs.rcx);
        exit(3);
    }
    if (sum == 0xdeadbeefcafeULL) /* keep `sum` alive */
        putchar(' ');
    munmap(run, run_size);
    close(vcpu);
    close(vm);
    munmap(mem, RAM_SIZE);
    PHASE(7);
#undef PHASE
    return exits;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median_u64(uint64_t *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* `limit ioctls 0 N`: the median cost of single ioctls on one live vCPU
 * (real mode, parked on a HLT), for reading profiles against. */
static void ioctl_costs(int n) {
    unsigned char *mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap(RAM)");
    mem[ENTRY] = 0xf4;
    int vm = xioctl(kvm_fd, KVM_CREATE_VM, (void *)0, "KVM_CREATE_VM");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .memory_size = RAM_SIZE, .userspace_addr = (uint64_t)(uintptr_t)mem};
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
    uint64_t idmap = AREA;
    xioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap, "KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)(AREA + 0x1000)) < 0)
        die("KVM_SET_TSS_ADDR");
    int vcpu = xioctl(vm, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap(kvm_run)");
    xioctl(vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    sregs.cs.selector = 0;
    sregs.cs.base = 0;
    xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
    memset(&regs, 0, sizeof regs);
    regs.rip = ENTRY;
    regs.rflags = 2;
    xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
    if (ioctl(vcpu, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_HLT)
        die("first KVM_RUN");

    enum { GETPID, GET_REGS, GET_SREGS, SET_REGS, SET_SREGS, DEBUG_ON, DEBUG_OFF, RUN_HLT, VM_CYCLE, NCOST };
    static const char *cost_names[NCOST] = {
        "getpid_syscall", "KVM_GET_REGS", "KVM_GET_SREGS", "KVM_SET_REGS", "KVM_SET_SREGS",
        "KVM_SET_GUEST_DEBUG_step_on", "KVM_SET_GUEST_DEBUG_off", "KVM_RUN_to_HLT", "KVM_CREATE_VM_close"};
    uint64_t *v = calloc((size_t)n, sizeof *v);
    struct kvm_guest_debug dbg;
    printf("{\"op\": \"ioctls\", \"median_ns\": {");
    for (int c = 0; c < NCOST; c++) {
        for (int i = 0; i < n; i++) {
            uint64_t t0 = now_ns();
            switch (c) {
            case GETPID: (void)syscall(39 /* getpid, uncached */); break;
            case GET_REGS: xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS"); break;
            case GET_SREGS: xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS"); break;
            case SET_REGS: xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS"); break;
            case SET_SREGS: xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS"); break;
            case DEBUG_ON:
            case DEBUG_OFF:
                memset(&dbg, 0, sizeof dbg);
                dbg.control = c == DEBUG_ON ? KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP : 0;
                xioctl(vcpu, KVM_SET_GUEST_DEBUG, &dbg, "KVM_SET_GUEST_DEBUG");
                break;
            case RUN_HLT:
                regs.rip = ENTRY;
                t0 = now_ns(); /* time the RUN alone: rewind rip first, untimed */
                xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
                t0 = now_ns();
                if (ioctl(vcpu, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_HLT)
                    die("KVM_RUN");
                break;
            case VM_CYCLE: {
                int fd = xioctl(kvm_fd, KVM_CREATE_VM, (void *)0, "KVM_CREATE_VM");
                close(fd);
                break;
            }
            }
            v[i] = now_ns() - t0;
        }
        printf("%s\"%s\": %llu", c ? ", " : "", cost_names[c], (unsigned long long)median_u64(v, n));
    }
    printf("}}\n");
    munmap(run, run_size);
    close(vcpu);
    close(vm);
    munmap(mem, RAM_SIZE);
}

/* `limit reuse 0 N`: what one trivial rig would cost if a worker kept its VM
 * and vCPU between rigs with the same memory map (a VM pool; kvmrig does not
 * do this). Created once, untimed: VM, slot, TSS/identity map, vCPU, CPUID,
 * and the initial sregs/FPU/vcpu-events saved. Per rig, timed: zero the RAM,
 * copy the guest, KVM_SET_SREGS + KVM_SET_REGS + KVM_SET_FPU +
 * KVM_SET_VCPU_EVENTS + KVM_SET_GUEST_DEBUG(0) (back to the initial state),
 * timer, KVM_RUN to HLT, KVM_GET_REGS + KVM_GET_SREGS. */
/* A kept VM for the reuse/reset ops: `size` bytes of RAM at 0 in slot 0 (with
 * `flags`), TSS and identity map, one vCPU with its kvm_run and the CPUID. */
struct kept {
    unsigned char *mem;
    int vm, vcpu;
    struct kvm_run *run;
};

static struct kept keep_vm(size_t size, uint32_t flags) {
    struct kept k;
    k.mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (k.mem == MAP_FAILED)
        die("mmap(RAM)");
    k.vm = xioctl(kvm_fd, KVM_CREATE_VM, (void *)0, "KVM_CREATE_VM");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = flags, .memory_size = size, .userspace_addr = (uint64_t)(uintptr_t)k.mem};
    xioctl(k.vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
    uint64_t idmap = AREA;
    xioctl(k.vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap, "KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(k.vm, KVM_SET_TSS_ADDR, (unsigned long)(AREA + 0x1000)) < 0)
        die("KVM_SET_TSS_ADDR");
    k.vcpu = xioctl(k.vm, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
    k.run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, k.vcpu, 0);
    if (k.run == MAP_FAILED)
        die("mmap(kvm_run)");
    xioctl(k.vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
    return k;
}

static void reuse(int n) {
    struct kept k = keep_vm(RAM_SIZE, 0);
    unsigned char *mem = k.mem;
    int vm = k.vm, vcpu = k.vcpu;
    struct kvm_run *run = k.run;
    struct kvm_sregs sregs0, sregs;
    struct kvm_fpu fpu0;
    struct kvm_vcpu_events events0;
    struct kvm_regs regs;
    struct kvm_guest_debug dbg;
    memset(&dbg, 0, sizeof dbg);
    xioctl(vcpu, KVM_GET_SREGS, &sregs0, "KVM_GET_SREGS");
    sregs0.cs.selector = 0;
    sregs0.cs.base = 0;
    sregs0.cr0 = 0x10;
    xioctl(vcpu, KVM_GET_FPU, &fpu0, "KVM_GET_FPU");
    xioctl(vcpu, KVM_GET_VCPU_EVENTS, &events0, "KVM_GET_VCPU_EVENTS");
    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    struct itimerval it = {{0, 10000}, {10, 0}}, off = {{0, 0}, {0, 0}};
    uint64_t *ns = calloc((size_t)n + 1, sizeof *ns);
    for (int i = 0; i <= n; i++) { /* sample 0 is the warm-up */
        uint64_t t0 = now_ns();
        memset(mem, 0, RAM_SIZE);
        memcpy(mem + ENTRY, G_HLT, sizeof G_HLT);
        xioctl(vcpu, KVM_SET_SREGS, &sregs0, "KVM_SET_SREGS");
        memset(&regs, 0, sizeof regs);
        regs.rip = ENTRY;
        regs.rflags = 2;
        xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
        xioctl(vcpu, KVM_SET_FPU, &fpu0, "KVM_SET_FPU");
        xioctl(vcpu, KVM_SET_VCPU_EVENTS, &events0, "KVM_SET_VCPU_EVENTS");
        xioctl(vcpu, KVM_SET_GUEST_DEBUG, &dbg, "KVM_SET_GUEST_DEBUG");
        sigaction(SIGALRM, &sa, &old_sa);
        alarmed = run;
        setitimer(ITIMER_REAL, &it, NULL);
        if (ioctl(vcpu, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_HLT)
            die("KVM_RUN (reuse)");
        setitimer(ITIMER_REAL, &off, NULL);
        sigaction(SIGALRM, &old_sa, NULL);
        alarmed = NULL;
        xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
        xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
        if (regs.rip != ENTRY + 1) {
            fprintf(stderr, "limit: reuse: wrong final rip %#llx\n", (unsigned long long)regs.rip);
            exit(3);
        }
        ns[i] = now_ns() - t0;
    }
    printf("{\"op\": \"reuse\", \"k\": 0, \"exits\": 1, \"ns\": [");
    for (int i = 1; i <= n; i++)
        printf("%s%llu", i > 1 ? ", " : "", (unsigned long long)ns[i]);
    printf("]}\n");
    munmap(run, run_size);
    close(vcpu);
    close(vm);
    munmap(mem, RAM_SIZE);
}

/* reset: what kvmrig's VM reuse does between two rigs (machine/reuse.py,
 * backends/kvm/x86_state.py), timed alone. One VM with 128 KiB RAM in a slot
 * with KVM_MEM_LOG_DIRTY_PAGES; the vCPU's created state is kept (XCRS, XSAVE,
 * every MSR of KVM_GET_MSR_INDEX_LIST that reads and writes back, DEBUGREGS,
 * and regs/sregs/events). Per sample (untimed): boot real mode, run the guest,
 * which writes one byte into each of 16 pages (0x10000..0x1f000), to its HLT.
 * Timed, in kvmrig's order (machine/reuse.py _reset): stage regs/sregs/events
 * in kvm_run (kvm_dirty_regs) with kvm_run.cr8, KVM_SET_XCRS, KVM_SET_XSAVE,
 * KVM_SET_MSRS, KVM_SET_DEBUGREGS, then KVM_GET_DIRTY_LOG and zero every
 * dirty page and the page the loader wrote (the guest image): exactly
 * kvmrig's reset list. (The C cost does not depend on the order: 29.6-31.5
 * us with the dirty log first or last, measured alternately.) */
static const unsigned char G_DIRTY16[] = {0xb8, 0x00, 0x10, 0x8e, 0xc0, 0x31, 0xff, 0xb9, 0x10, 0x00, 0x26,
                                          0xc6, 0x05, 0x01, 0x81, 0xc7, 0x00, 0x10, 0xe2, 0xf6, 0xf4};
#define RESET_RAM 0x20000

static void reset_bench(int n) {
    struct kept k = keep_vm(RESET_RAM, KVM_MEM_LOG_DIRTY_PAGES);
    unsigned char *mem = k.mem;
    int vm = k.vm, vcpu = k.vcpu;
    struct kvm_run *run = k.run;
    run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
    /* The created state. */
    static struct kvm_xcrs xcrs0;
    static struct kvm_xsave xsave0;
    static struct kvm_debugregs dbg0;
    struct kvm_regs regs0, regs;
    struct kvm_sregs sregs0, sregs;
    struct kvm_vcpu_events events0;
    xioctl(vcpu, KVM_GET_XCRS, &xcrs0, "KVM_GET_XCRS");
    xioctl(vcpu, KVM_GET_XSAVE, &xsave0, "KVM_GET_XSAVE");
    xioctl(vcpu, KVM_GET_DEBUGREGS, &dbg0, "KVM_GET_DEBUGREGS");
    xioctl(vcpu, KVM_GET_REGS, &regs0, "KVM_GET_REGS");
    xioctl(vcpu, KVM_GET_SREGS, &sregs0, "KVM_GET_SREGS");
    xioctl(vcpu, KVM_GET_VCPU_EVENTS, &events0, "KVM_GET_VCPU_EVENTS");
    events0.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    struct kvm_msr_list *list = calloc(1, sizeof *list + 1024 * sizeof(uint32_t));
    list->nmsrs = 1024;
    xioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list, "KVM_GET_MSR_INDEX_LIST");
    struct kvm_msrs *msrs0 = calloc(1, sizeof *msrs0 + list->nmsrs * sizeof(struct kvm_msr_entry));
    struct { struct kvm_msrs h; struct kvm_msr_entry e; } one;
    for (unsigned i = 0; i < list->nmsrs; i++) {
        one.h.nmsrs = 1;
        one.e.index = list->indices[i];
        if (ioctl(vcpu, KVM_GET_MSRS, &one) != 1 || ioctl(vcpu, KVM_SET_MSRS, &one) != 1)
            continue;
        msrs0->entries[msrs0->nmsrs++] = one.e;
    }
    uint64_t bitmap[(RESET_RAM / 4096 + 63) / 64];
    struct kvm_dirty_log log = {.slot = 0, .dirty_bitmap = bitmap};
    xioctl(vm, KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG"); /* start clean */
    uint64_t *ns = calloc((size_t)n + 1, sizeof *ns);
    long dirty = 0;
    for (int i = 0; i <= n; i++) { /* sample 0 is the warm-up */
        memcpy(mem + ENTRY, G_DIRTY16, sizeof G_DIRTY16);
        xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
        sregs.cs.selector = 0;
        sregs.cs.base = 0;
        sregs.es.selector = 0;
        sregs.es.base = 0;
        sregs.cr0 = 0x10;
        xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
        memset(&regs, 0, sizeof regs);
        regs.rip = ENTRY;
        regs.rflags = 2;
        xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
        if (ioctl(vcpu, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_HLT)
            die("KVM_RUN (reset)");
        uint64_t t0 = now_ns();
        memcpy(&run->s.regs.regs, &regs0, sizeof regs0);
        memcpy(&run->s.regs.sregs, &sregs0, sizeof sregs0);
        memcpy(&run->s.regs.events, &events0, sizeof events0);
        run->cr8 = sregs0.cr8;
        run->kvm_dirty_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
        xioctl(vcpu, KVM_SET_XCRS, &xcrs0, "KVM_SET_XCRS");
        xioctl(vcpu, KVM_SET_XSAVE, &xsave0, "KVM_SET_XSAVE");
        if (ioctl(vcpu, KVM_SET_MSRS, msrs0) != (int)msrs0->nmsrs)
            die("KVM_SET_MSRS");
        xioctl(vcpu, KVM_SET_DEBUGREGS, &dbg0, "KVM_SET_DEBUGREGS");
        xioctl(vm, KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG");
        dirty = 0;
        for (unsigned w = 0; w < sizeof bitmap / 8; w++)
            for (uint64_t bits = bitmap[w]; bits; bits &= bits - 1) {
                memset(mem + ((size_t)w * 64 + __builtin_ctzll(bits)) * 4096, 0, 4096);
                dirty++;
            }
        memset(mem + ENTRY, 0, 4096); /* the page the loader wrote */
        ns[i] = now_ns() - t0;
        run->kvm_dirty_regs = 0; /* the next sample boots with its own SET_SREGS/REGS */
        if (dirty < 16) {
            fprintf(stderr, "limit: reset: only %ld dirty pages\n", dirty);
            exit(3);
        }
    }
    printf("{\"op\": \"reset\", \"k\": 0, \"exits\": 1, \"dirty_pages\": %ld, \"msrs\": %u, \"ns\": [", dirty,
           msrs0->nmsrs);
    for (int i = 1; i <= n; i++)
        printf("%s%llu", i > 1 ? ", " : "", (unsigned long long)ns[i]);
    printf("]}\n");
    munmap(run, run_size);
    close(vcpu);
    close(vm);
    munmap(mem, RESET_RAM);
}

/* `limit cache 0 N`: what a vCPU ioctl leaves in the CPU caches (the reason
 * Python pays more per ioctl than C, bench/README.md). A pointer chase through
 * 32 KiB (one line per step, random order: it fits the L1 data cache when
 * warm) is timed right after KVM_GET_REGS, right after getpid, and once more
 * at once (warm). Medians of N. */
static void cache_bench(int n) {
    enum { WS = 32 << 10, LINES = WS / 64 };
    char *buf = aligned_alloc(64, WS);
    static unsigned perm[LINES];
    for (unsigned i = 0; i < LINES; i++)
        perm[i] = i;
    srand(1);
    for (unsigned i = LINES - 1; i > 0; i--) {
        unsigned j = (unsigned)rand() % (i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (unsigned i = 0; i < LINES; i++)
        *(void **)(buf + perm[i] * 64) = buf + perm[(i + 1) % LINES] * 64;
    int vm = xioctl(kvm_fd, KVM_CREATE_VM, (void *)0, "KVM_CREATE_VM");
    int vcpu = xioctl(vm, KVM_CREATE_VCPU, (void *)0, "KVM_CREATE_VCPU");
    struct kvm_regs regs;
    uint64_t *after = calloc((size_t)n, sizeof *after), *again = calloc((size_t)n, sizeof *again);
    printf("{\"op\": \"cache\", \"chase_32k_ns\": {");
    for (int m = 0; m < 2; m++) {
        for (int i = 0; i < n; i++) {
            if (m == 0)
                xioctl(vcpu, KVM_GET_REGS, &regs, "KVM_GET_REGS");
            else
                (void)syscall(39 /* getpid */);
            void *p = buf + perm[0] * 64;
            uint64_t t0 = now_ns();
            for (unsigned k = 0; k < LINES; k++)
                p = *(void *volatile *)p;
            uint64_t t1 = now_ns();
            for (unsigned k = 0; k < LINES; k++)
                p = *(void *volatile *)p;
            uint64_t t2 = now_ns();
            after[i] = t1 - t0;
            again[i] = t2 - t1;
        }
        printf("%s\"after_%s\": %llu, \"again_%s\": %llu", m ? ", " : "", m ? "getpid" : "vcpu_ioctl",
               (unsigned long long)median_u64(after, n), m ? "getpid" : "vcpu_ioctl",
               (unsigned long long)median_u64(again, n));
    }
    printf("}}\n");
    close(vcpu);
    close(vm);
    free(buf);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: limit lifecycle|pio|mmio|singlestep|hwbp|swbp|ioctls|reuse|reset|cache K N\n");
        return 2;
    }
    static const char *names[] = {"lifecycle", "pio", "mmio", "singlestep", "hwbp", "swbp"};
    int op = -1;
    int want_ioctls = !strcmp(argv[1], "ioctls"), want_reuse = !strcmp(argv[1], "reuse");
    int want_reset = !strcmp(argv[1], "reset"), want_cache = !strcmp(argv[1], "cache");
    for (int i = 0; i < 6; i++)
        if (!strcmp(argv[1], names[i]))
            op = i;
    if (op < 0 && !want_ioctls && !want_reuse && !want_reset && !want_cache) {
        fprintf(stderr, "limit: unknown op %s\n", argv[1]);
        return 2;
    }
    unsigned k = (unsigned)strtoul(argv[2], NULL, 0);
    int n = atoi(argv[3]);
    if (k > 0xffff || n < 1) {
        fprintf(stderr, "limit: K must be 0..65535 (CX), N >= 1\n");
        return 2;
    }

    sync_regs = getenv("LIMIT_SYNC_REGS") && !strcmp(getenv("LIMIT_SYNC_REGS"), "1");
    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0)
        die("open /dev/kvm");
    if (ioctl(kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        die("KVM_GET_API_VERSION");
    run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size <= 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    cpuid = calloc(1, sizeof *cpuid + CPUID_MAX * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = CPUID_MAX;
    xioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID");
    if (want_ioctls) {
        ioctl_costs(n);
        return 0;
    }
    if (want_reuse) {
        reuse(n);
        return 0;
    }
    if (want_reset) {
        reset_bench(n);
        return 0;
    }
    if (want_cache) {
        cache_bench(n);
        return 0;
    }

    /* Warm-up, untimed (kvmrig's first rig per worker also pays extra). Then
     * N samples of the K-turn rig, each followed (when K > 0) by one of the
     * 0-turn rig, so that both see the same machine load. */
    one_rig((enum op)op, k);
    uint64_t *ns = calloc((size_t)n, sizeof *ns), *ns0 = calloc((size_t)n, sizeof *ns0);
    uint64_t *phases = calloc((size_t)n * PHASES, sizeof *phases);
    long exits = 0;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        exits = one_rig((enum op)op, k);
        ns[i] = now_ns() - t0;
        for (int j = 0; j < PHASES; j++)
            phases[j * n + i] = phase_ns[j];
        if (k) {
            t0 = now_ns();
            one_rig((enum op)op, 0);
            ns0[i] = now_ns() - t0;
        }
    }
    printf("{\"op\": \"%s\", \"k\": %u, \"exits\": %ld, \"ns\": [", names[op], k, exits);
    for (int i = 0; i < n; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)ns[i]);
    printf("]");
    if (k) {
        printf(", \"ns_0\": [");
        for (int i = 0; i < n; i++)
            printf("%s%llu", i ? ", " : "", (unsigned long long)ns0[i]);
        printf("]");
    }
    if (op == LIFECYCLE) {
        printf(", \"phases_median_ns\": {");
        for (int j = 0; j < PHASES; j++)
            printf("%s\"%s\": %llu", j ? ", " : "", phase_names[j],
                   (unsigned long long)median_u64(phases + (size_t)j * n, n));
        printf("}");
    }
    printf("}\n");
    return 0;
}
