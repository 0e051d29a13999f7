/* The kvm engine: the KVM dirty log of one memory slot, with manual protect.
 *
 * With KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_GET_DIRTY_LOG only reads the log; KVM_CLEAR_DIRTY_LOG
 * then clears and re-write-protects exactly the pages we pass back. Re-protecting only what was
 * reported (rather than everything, as the legacy get-and-clear did under the mmu lock) is what
 * QEMU's migration (kvm_log_clear) and Firecracker's dirty-bitmap handling rely on: a page dirtied
 * between the get and the clear stays set in the kernel's log until the next get, because clear only
 * re-protects it, and the write that follows faults and sets it again. (Documentation/virt/kvm/api.rst,
 * 4.8 KVM_GET_DIRTY_LOG, 4.118 KVM_CLEAR_DIRTY_LOG.)
 */
#include "internal.h"
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <stdio.h>
#include <unistd.h>

#ifndef KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
#define KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 168
#endif
#ifndef KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
#define KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE (1 << 0)
#endif

typedef struct kvm_tracker {
    mdp_tracker base;
    int vm_fd;
    uint32_t slot;
    uint64_t *scratch; /* for re-arm; allocated on first use */
} kvm_tracker;

static int kvm_get(kvm_tracker *k, uint64_t *bitmap) {
    struct kvm_dirty_log log;
    memset(&log, 0, sizeof log);
    log.slot = k->slot;
    log.dirty_bitmap = bitmap;
    return mdp_ioctl(k->vm_fd, KVM_GET_DIRTY_LOG, &log);
}

static int kvm_clear(kvm_tracker *k, uint64_t *bitmap) {
    struct kvm_clear_dirty_log c;
    memset(&c, 0, sizeof c);
    c.slot = k->slot;
    c.first_page = 0;
    c.num_pages = (uint32_t)k->base.npages; /* whole slot: need not be a multiple of 64 */
    c.dirty_bitmap = bitmap;
    return mdp_ioctl(k->vm_fd, KVM_CLEAR_DIRTY_LOG, &c);
}

static int kvm_collect(mdp_tracker *t, uint64_t *bitmap, int rearm, uint64_t *ndirty) {
    kvm_tracker *k = (kvm_tracker *)t;
    int rc = kvm_get(k, bitmap);
    if (rc < 0) return rc;
    uint64_t n = 0, words = (t->npages + 63) / 64;
    for (uint64_t w = 0; w < words; w++) n += (uint64_t)__builtin_popcountll(bitmap[w]);
    *ndirty = n;
    if (rearm && n) rc = kvm_clear(k, bitmap);
    return rc;
}

static int kvm_rearm(mdp_tracker *t) {
    kvm_tracker *k = (kvm_tracker *)t;
    uint64_t words = (t->npages + 63) / 64;
    if (!k->scratch) {
        k->scratch = calloc(words, sizeof(uint64_t));
        if (!k->scratch) return -ENOMEM;
        k->base.footprint += words * sizeof(uint64_t);
    }
    uint64_t n;
    memset(k->scratch, 0, words * sizeof(uint64_t));
    return kvm_collect(t, k->scratch, 1, &n);
}

static void kvm_destroy(mdp_tracker *t) {
    kvm_tracker *k = (kvm_tracker *)t;
    free(k->scratch);
    free(k);
}

int mdp_kvm_open(int vm_fd, uint32_t slot, uint64_t npages, mdp_tracker **out) {
    if (!out || npages == 0 || npages > UINT32_MAX) return -EINVAL;
    if (fcntl(vm_fd, F_GETFD) < 0) return -EBADF;
    kvm_tracker *k = calloc(1, sizeof *k);
    if (!k) return -ENOMEM;
    k->base.engine = MDP_ENGINE_KVM;
    k->base.npages = npages;
    k->base.footprint = sizeof *k;
    k->base.collect = kvm_collect;
    k->base.rearm = kvm_rearm;
    k->base.destroy = kvm_destroy;
    k->vm_fd = vm_fd;
    k->slot = slot;
    /* Arm: forget whatever the slot logged before we looked. Also validates fd, slot and size. */
    int rc = kvm_rearm(&k->base);
    if (rc < 0) {
        kvm_destroy(&k->base);
        return rc == -ENOTTY ? -EBADF : rc; /* ENOTTY: an fd that is not a VM */
    }
    *out = &k->base;
    return 0;
}

/* ---- scratch VM ---- */
struct mdp_kvm_vm {
    int kvm, vm, vcpu;
    struct kvm_run *run;
    size_t run_size;
    unsigned char *mem;
    size_t len;
};

#define LIST_OFFSET 0x100u
#define LIST_MAX ((MDP_PAGE_SIZE - LIST_OFFSET) / 2 - 1)

/* 16-bit real-mode program at guest physical 0:
 *     mov cx, REPEAT
 * outer: mov si, 0x100
 * inner: lodsw ; cmp ax, 0xFFFF ; je next
 *        shl ax, 8 ; mov es, ax ; inc byte [es:0] ; jmp inner
 * next:  loop outer
 *        hlt
 * Segment = page << 8 puts es:0 at page * 4096. */
static const unsigned char guest_program[] = {
    0xB9, 0x00, 0x00,             /* 0: mov cx, imm16 (patched)  */
    0xBE, 0x00, 0x01,             /* 3: mov si, 0x0100           */
    0xAD,                         /* 6: lodsw                    */
    0x83, 0xF8, 0xFF,             /* 7: cmp ax, -1               */
    0x74, 0x0C,                   /* 10: je 24                   */
    0xC1, 0xE0, 0x08,             /* 12: shl ax, 8               */
    0x8E, 0xC0,                   /* 15: mov es, ax              */
    0x26, 0xFE, 0x06, 0x00, 0x00, /* 17: inc byte [es:0]         */
    0xEB, 0xEE,                   /* 22: jmp 6                   */
    0xE2, 0xE9,                   /* 24: loop 3                  */
    0xF4,                         /* 26: hlt                     */
};

int mdp_kvm_vm_create(void *addr, size_t len, mdp_kvm_vm **out) {
    if (!out || len == 0) return -EINVAL;
    if (!mdp_aligned((uint64_t)(uintptr_t)addr) || !mdp_aligned(len)) return -EINVAL;
    mdp_kvm_vm *v = calloc(1, sizeof *v);
    if (!v) return -ENOMEM;
    v->kvm = v->vm = v->vcpu = -1;
    v->mem = addr;
    v->len = len;
    int rc;
    v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (v->kvm < 0) {
        rc = -errno;
        goto fail;
    }
    rc = mdp_ioctl(v->kvm, KVM_CREATE_VM, 0);
    if (rc < 0) goto fail;
    v->vm = rc;
    struct kvm_enable_cap cap;
    memset(&cap, 0, sizeof cap);
    cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
    cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
    rc = mdp_ioctl(v->vm, KVM_ENABLE_CAP, &cap);
    if (rc < 0) goto fail;
    /* Intel without unrestricted guest needs a TSS page for real mode; harmless elsewhere. */
    (void)ioctl(v->vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = KVM_MEM_LOG_DIRTY_PAGES, .guest_phys_addr = 0,
        .memory_size = len, .userspace_addr = (uint64_t)(uintptr_t)addr};
    rc = mdp_ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region);
    if (rc < 0) goto fail;
    rc = mdp_ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (rc < 0) goto fail;
    v->vcpu = rc;
    rc = mdp_ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (rc < 0) goto fail;
    v->run_size = (size_t)rc;
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED) {
        v->run = NULL;
        rc = -errno;
        goto fail;
    }
    *out = v;
    return 0;
fail:
    mdp_kvm_vm_destroy(v);
    return rc;
}

int mdp_kvm_vm_fd(const mdp_kvm_vm *vm) { return vm->vm; }

static int run_batch(mdp_kvm_vm *v, const uint16_t *pages, uint32_t n, uint32_t repeat) {
    memcpy(v->mem, guest_program, sizeof guest_program);
    v->mem[1] = (unsigned char)(repeat & 0xFF);
    v->mem[2] = (unsigned char)(repeat >> 8);
    uint16_t *list = (uint16_t *)(v->mem + LIST_OFFSET);
    for (uint32_t i = 0; i < n; i++) list[i] = pages[i];
    list[n] = 0xFFFF;
    struct kvm_sregs sregs;
    int rc = mdp_ioctl(v->vcpu, KVM_GET_SREGS, &sregs);
    if (rc < 0) return rc;
    struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.ss, &sregs.fs, &sregs.gs};
    for (unsigned i = 0; i < 6; i++) segs[i]->base = 0, segs[i]->selector = 0;
    rc = mdp_ioctl(v->vcpu, KVM_SET_SREGS, &sregs);
    if (rc < 0) return rc;
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = 0;
    regs.rflags = 0x2;
    rc = mdp_ioctl(v->vcpu, KVM_SET_REGS, &regs);
    if (rc < 0) return rc;
    for (;;) {
        rc = ioctl(v->vcpu, KVM_RUN, 0);
        if (rc < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return -errno;
        }
        switch (v->run->exit_reason) {
        case KVM_EXIT_HLT:
            return 0;
        case KVM_EXIT_INTR:
            continue;
        default:
            return -EIO;
        }
    }
}

int mdp_kvm_vm_write_pages(mdp_kvm_vm *v, const uint16_t *pages, uint32_t n, uint32_t repeat) {
    if (!v || (n && !pages) || repeat == 0 || repeat > 0xFFFF) return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (pages[i] == 0 || pages[i] > MDP_KVM_GUEST_MAX_PAGE || (uint64_t)pages[i] * MDP_PAGE_SIZE >= v->len)
            return -EINVAL;
    if (n <= LIST_MAX) return run_batch(v, pages, n, repeat);
    for (uint32_t r = 0; r < repeat; r++)
        for (uint32_t off = 0; off < n; off += LIST_MAX) {
            uint32_t m = n - off < LIST_MAX ? n - off : LIST_MAX;
            int rc = run_batch(v, pages + off, m, 1);
            if (rc < 0) return rc;
        }
    return 0;
}

void mdp_kvm_vm_destroy(mdp_kvm_vm *v) {
    if (!v) return;
    if (v->run) munmap(v->run, v->run_size);
    if (v->vcpu >= 0) close(v->vcpu);
    if (v->vm >= 0) close(v->vm);
    if (v->kvm >= 0) close(v->kvm);
    free(v);
}

int mdp_kvm_probe(char *reason, size_t cap);
int mdp_kvm_probe(char *reason, size_t cap) {
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(reason, cap, "cannot open /dev/kvm: %s", strerror(errno));
        return 0;
    }
    int api = ioctl(fd, KVM_GET_API_VERSION, 0);
    int manual = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    close(fd);
    if (api != KVM_API_VERSION) {
        snprintf(reason, cap, "KVM API version %d, expected %d", api, KVM_API_VERSION);
        return 0;
    }
    if (manual <= 0 || !(manual & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
        snprintf(reason, cap, "KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
        return 0;
    }
    snprintf(reason, cap, "KVM API %d with manual dirty-log protect (tracks guest writes to slots we control)", api);
    return 1;
}
