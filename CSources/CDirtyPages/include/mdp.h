/*
 * CDirtyPages: find the pages of a memory region that were written since the last look.
 *
 * One interface, several engines:
 *   - MDP_ENGINE_UFFD_ASYNC  userfaultfd write-protect in async mode (UFFD_FEATURE_WP_ASYNC) plus the
 *                            PAGEMAP_SCAN ioctl, on memory this process maps. The kernel resolves a
 *                            write fault itself by clearing the PTE's uffd-wp bit; PAGEMAP_SCAN with
 *                            PM_SCAN_WP_MATCHING reports those pages and write-protects them again in
 *                            the same page-table walk (Documentation/admin-guide/mm/pagemap.rst,
 *                            "PAGEMAP_SCAN IOCTL"), so there is no window in which a write is lost.
 *   - MDP_ENGINE_UFFD_REMOTE the same scan on another process's /proc/PID/pagemap. That process must
 *                            have registered the range itself (mdp_target_register, e.g. from a
 *                            preload shim inside QEMU); the kernel refuses it otherwise (EPERM).
 *   - MDP_ENGINE_KVM         the KVM dirty log (KVM_GET_DIRTY_LOG with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
 *                            and KVM_CLEAR_DIRTY_LOG) for a memory slot whose VM fd we hold. Only guest
 *                            writes are logged; writes by host threads are not.
 *   - MDP_ENGINE_HASH        per-page XXH3-64 compared with the previous epoch, on several threads.
 *                            Needs nothing from the kernel or the writer; costs a full read per epoch.
 *
 * Every function returns 0 or a negative errno. Names are prefixed mdp_ / MDP_. A tracker is not
 * thread-safe: one thread collects at a time (writers to the tracked memory may run concurrently).
 */
#ifndef MDP_H
#define MDP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MDP_PAGE_SIZE 4096u

typedef enum mdp_engine {
    MDP_ENGINE_UFFD_ASYNC = 0,
    MDP_ENGINE_UFFD_REMOTE = 1,
    MDP_ENGINE_KVM = 2,
    MDP_ENGINE_HASH = 3,
    MDP_ENGINE_COUNT = 4
} mdp_engine;

/* Run-time support of one engine on this kernel. `reason` is a NUL-terminated sentence. */
typedef struct mdp_support {
    int available;
    char reason[160];
} mdp_support;

/* Probes the running kernel (creates and closes a userfaultfd, opens /dev/kvm, ...). */
void mdp_probe(mdp_support out[MDP_ENGINE_COUNT]);

typedef struct mdp_tracker mdp_tracker;

/* Tracks writes to [addr, addr+len) of this process. Both must be page-aligned (else -EINVAL) and
 * the range mapped (else -ENOMEM). The tracker starts armed: the first collect reports writes made
 * after this call returns. */
int mdp_uffd_open(void *addr, size_t len, mdp_tracker **out);

/* Tracks writes to [addr, addr+len) in process `pid`, which registered that range with
 * mdp_target_register (or any uffd in WP_ASYNC mode). -EPERM if it did not, -ESRCH if no such
 * process. The current written state is cleared (armed) before this returns. */
int mdp_uffd_open_remote(pid_t pid, uint64_t addr, uint64_t len, mdp_tracker **out);

/* The target side of remote tracking: creates a userfaultfd with WP_ASYNC (+ WP_UNPOPULATED,
 * + WP_HUGETLBFS_SHMEM when the kernel has them), registers [addr, addr+len) in WP mode and
 * write-protects it. Returns the uffd in *uffd_out; it must stay open (or be passed to another
 * process with SCM_RIGHTS) for as long as tracking is wanted. */
int mdp_target_register(void *addr, size_t len, int *uffd_out);

/* Tracks slot `slot` of the VM `vm_fd` (the caller created the slot with KVM_MEM_LOG_DIRTY_PAGES and
 * enabled KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), `npages` pages long. -EBADF for a bad fd. */
int mdp_kvm_open(int vm_fd, uint32_t slot, uint64_t npages, mdp_tracker **out);

/* Hashes [addr, addr+len) with `threads` threads (0 = 1). The baseline is taken now. */
int mdp_hash_open(const void *addr, size_t len, unsigned threads, mdp_tracker **out);

/* Writes the seeded XXH3-64 of each of `npages` pages at `addr` into `out` (the hash engine's page
 * hash, with a seed so that pages cannot be crafted to collide without knowing it). Used to resync
 * a replica image by comparing hashes instead of sending the pages. */
void mdp_hash_pages(const void *addr, uint64_t npages, uint64_t seed, uint64_t *out);

/* Fills `bitmap` (bit i of word i/64 = page i) with the pages written since the last collect or
 * re-arm and returns their count in *ndirty. `words` must be >= (pages+63)/64 (else -ENOSPC).
 * With `rearm` nonzero the reported pages are re-protected atomically with the report (uffd,
 * kvm) or their new hashes become the baseline (hash); with 0 the state is left as it was. */
int mdp_collect(mdp_tracker *t, uint64_t *bitmap, size_t words, int rearm, uint64_t *ndirty);

/* Forgets all writes so far: the next collect reports only later writes. */
int mdp_rearm(mdp_tracker *t);

/* Stops tracking and frees the tracker (unregisters the uffd range). NULL is accepted. */
void mdp_close(mdp_tracker *t);

mdp_engine mdp_tracker_engine(const mdp_tracker *t);
uint64_t mdp_tracker_pages(const mdp_tracker *t);
/* Bytes of memory the tracker itself holds (hash tables, scan vectors, bitmaps). */
uint64_t mdp_tracker_footprint(const mdp_tracker *t);

/* Writes the indexes of set bits into `pages` (at most `cap`), returns how many were set in total. */
uint64_t mdp_bitmap_to_list(const uint64_t *bitmap, uint64_t npages, uint64_t *pages, uint64_t cap);

/* A memfd (anonymous shared-memory file) for guest RAM or a replica image: the form QEMU's
 * memory-backend-memfd uses. Returns the fd or -errno. (Here because Swift cannot see memfd_create.) */
int mdp_memfd_create(const char *name);

/* ---- A scratch KVM VM over a caller's memory, so the kvm engine can be exercised and measured. ----
 * It has one slot (slot 0, guest physical 0) mapping [addr, addr+len) with dirty logging and manual
 * protect, and one vCPU running a 16-bit real-mode program that writes one byte to each listed
 * page. Real mode reaches only the first 1 MiB, so pages >= 256 cannot be written by the guest;
 * page 0 holds the program and the page list. */
typedef struct mdp_kvm_vm mdp_kvm_vm;
int mdp_kvm_vm_create(void *addr, size_t len, mdp_kvm_vm **out);
int mdp_kvm_vm_fd(const mdp_kvm_vm *vm);
/* Runs the guest until it has incremented the first byte of each page in `pages` (1..255), in
 * order, `repeat` times over the list. Blocks the calling thread. */
int mdp_kvm_vm_write_pages(mdp_kvm_vm *vm, const uint16_t *pages, uint32_t n, uint32_t repeat);
void mdp_kvm_vm_destroy(mdp_kvm_vm *vm);
/* Pages the scratch guest can write (256 minus the program page). */
#define MDP_KVM_GUEST_MAX_PAGE 255u

/* ---- Test support: a forked child that owns a registered range and writes it on command. ----
 * `addr`/`len` must be a MAP_SHARED mapping (e.g. of a memfd) made before the call, so the parent
 * sees the child's writes. The child only uses raw system calls (safe after fork in a threaded
 * process). Commands are page indexes; each write increments the page's first 8 bytes. */
typedef struct mdp_child mdp_child;
int mdp_child_spawn(void *addr, size_t len, int register_range, mdp_child **out);
pid_t mdp_child_pid(const mdp_child *c);
/* Asks the child to write each listed page once and waits until it has. */
int mdp_child_write_pages(mdp_child *c, const uint32_t *pages, uint32_t n);
/* Stops the child and reaps it. */
void mdp_child_stop(mdp_child *c);

#ifdef __cplusplus
}
#endif
#endif /* MDP_H */
