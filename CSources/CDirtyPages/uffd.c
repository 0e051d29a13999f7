/* The uffd-async engine, for this process's memory and for another process's memory.
 *
 * Why async write-protect rather than classic uffd-wp: with UFFD_FEATURE_WP_ASYNC the kernel resolves
 * a write to a protected page itself, by clearing the PTE's uffd-wp bit, instead of queueing a fault
 * for a handler thread. A first write then costs about 0.8 us here instead of 6-7 us, and no thread has
 * to be alive to keep the writer running. PAGEMAP_SCAN with PM_SCAN_WP_MATCHING reports the pages whose
 * bit is clear ("PAGE_IS_WRITTEN") and sets it again in the same walk under the page-table lock, so a
 * write either lands before the walk reaches its page (reported now) or after (reported next time).
 * Source: Documentation/admin-guide/mm/pagemap.rst, "PAGEMAP_SCAN IOCTL", and
 * Documentation/admin-guide/mm/userfaultfd.rst, "Write Protect Notifications".
 */
#include "internal.h"
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Scan vector length. The kernel fills at most 512 entries per internal batch; 1024 regions keep the
 * number of ioctls per collect at one for all but the most fragmented dirty sets. */
#define MDP_SCAN_VEC 1024

static int uffd_raw(int flags) {
    int fd = (int)syscall(SYS_userfaultfd, flags | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) return fd;
    int e = errno;
    if (e == EPERM) {
        /* vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE: user-mode-only faults are still allowed. */
        fd = (int)syscall(SYS_userfaultfd, flags | O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
        if (fd >= 0) return fd;
        /* /dev/userfaultfd is the other door (Linux 6.1+), governed by its file mode. */
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev >= 0) {
            fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            e = errno;
            close(dev);
            if (fd >= 0) return fd;
        }
    }
    return -e;
}

uint64_t mdp_uffd_supported_features(int *err) {
    int fd = uffd_raw(0);
    if (fd < 0) {
        *err = fd;
        return 0;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    int rc = mdp_ioctl(fd, UFFDIO_API, &api);
    close(fd);
    if (rc < 0) {
        *err = rc;
        return 0;
    }
    *err = 0;
    return api.features;
}

int mdp_uffd_create(uint64_t want, uint64_t *got, int *fd_out) {
    int err = 0;
    uint64_t supported = mdp_uffd_supported_features(&err);
    if (err) return err;
    if (!(supported & UFFD_FEATURE_WP_ASYNC)) return -EOPNOTSUPP;
    uint64_t features = want & supported;
    int fd = uffd_raw(0);
    if (fd < 0) return fd;
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    int rc = mdp_ioctl(fd, UFFDIO_API, &api);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *got = features;
    *fd_out = fd;
    return 0;
}

int mdp_target_register(void *addr, size_t len, int *uffd_out) {
    if (!uffd_out || len == 0) return -EINVAL;
    if (!mdp_aligned((uint64_t)(uintptr_t)addr) || !mdp_aligned(len)) return -EINVAL;
    /* msync(..., 0) fails with ENOMEM exactly when part of the range is not mapped: a clearer error
     * than UFFDIO_REGISTER's EINVAL, which also covers incompatible mappings. */
    if (msync(addr, len, 0) != 0 && errno == ENOMEM) return -ENOMEM;
    uint64_t got = 0;
    int fd = -1;
    /* WP_UNPOPULATED: pages never touched have no PTE to carry the wp bit; without this feature a
     * first write to them would go unreported. WP_HUGETLBFS_SHMEM: needed for memfd/shmem guest RAM. */
    int rc = mdp_uffd_create(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
                             &got, &fd);
    if (rc < 0) return rc;
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)addr, .len = len},
                                  .mode = UFFDIO_REGISTER_MODE_WP};
    rc = mdp_ioctl(fd, UFFDIO_REGISTER, &reg);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)(uintptr_t)addr, .len = len},
                                     .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    rc = mdp_ioctl(fd, UFFDIO_WRITEPROTECT, &wp);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *uffd_out = fd;
    return 0;
}

typedef struct uffd_tracker {
    mdp_tracker base;
    int uffd;       /* -1 for the remote engine: the target owns its uffd */
    int pidfd;      /* remote engine: the target, to tell "exited" from "nothing written" */
    int pagemap;    /* /proc/self/pagemap or /proc/PID/pagemap */
    uint64_t start, len;
    struct page_region vec[MDP_SCAN_VEC];
} uffd_tracker;

static void set_range(uint64_t *bitmap, uint64_t first, uint64_t last_excl) {
    uint64_t i = first;
    while (i < last_excl && (i & 63)) bitmap[i / 64] |= 1ull << (i & 63), i++;
    while (i + 64 <= last_excl) bitmap[i / 64] = ~0ull, i += 64;
    while (i < last_excl) bitmap[i / 64] |= 1ull << (i & 63), i++;
}

/* One PAGEMAP_SCAN pass over the whole range. Kernel quirk (measured on 6.18): walk_end is only
 * updated when the kernel's internal 512-entry buffer fills, so a short return means the walk is
 * complete and only a full vector means "resume from walk_end". */
static int scan(uffd_tracker *u, uint64_t *bitmap, int wp, uint64_t *ndirty) {
    uint64_t cur = u->start, end = u->start + u->len;
    while (cur < end) {
        struct pm_scan_arg a;
        memset(&a, 0, sizeof a);
        a.size = sizeof a;
        a.flags = PM_SCAN_CHECK_WPASYNC | (wp ? PM_SCAN_WP_MATCHING : 0);
        a.start = cur;
        a.end = end;
        a.vec = (uint64_t)(uintptr_t)u->vec;
        a.vec_len = MDP_SCAN_VEC;
        a.category_mask = PAGE_IS_WRITTEN;
        a.return_mask = PAGE_IS_WRITTEN;
        int n = mdp_ioctl(u->pagemap, PAGEMAP_SCAN, &a);
        if (n < 0) return n;
        for (int i = 0; i < n; i++) {
            uint64_t s = u->vec[i].start, e = u->vec[i].end;
            if (s < u->start || e > end || s >= e) return -EIO; /* the kernel answered outside the range */
            uint64_t first = (s - u->start) / MDP_PAGE_SIZE, last = (e - u->start) / MDP_PAGE_SIZE;
            set_range(bitmap, first, last);
            *ndirty += last - first;
        }
        if ((uint64_t)n < MDP_SCAN_VEC) break;
        uint64_t next = a.walk_end;
        if (next <= cur) next = u->vec[n - 1].end; /* defensive: never loop in place */
        cur = next;
    }
    return 0;
}

static int target_alive(uffd_tracker *u) {
    if (u->pidfd < 0) return 0;
    /* An exited target's pagemap still scans, as an empty address space: that must not read as
     * "no page written". Signal 0 through a pidfd cannot hit a recycled PID. */
    if (syscall(SYS_pidfd_send_signal, u->pidfd, 0, NULL, 0) != 0) return errno == EPERM ? 0 : -ESRCH;
    return 0;
}

static int uffd_collect(mdp_tracker *t, uint64_t *bitmap, int rearm, uint64_t *ndirty) {
    uffd_tracker *u = (uffd_tracker *)t;
    int rc = scan(u, bitmap, rearm, ndirty);
    if (rc == 0) rc = target_alive(u);
    return rc;
}

static int uffd_rearm_self(mdp_tracker *t) {
    uffd_tracker *u = (uffd_tracker *)t;
    struct uffdio_writeprotect wp = {.range = {.start = u->start, .len = u->len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    return mdp_ioctl(u->uffd, UFFDIO_WRITEPROTECT, &wp);
}

/* The remote tracker holds no uffd of its own: re-arming is a write-protecting scan whose result is
 * thrown away. */
static int uffd_rearm_remote(mdp_tracker *t) {
    uffd_tracker *u = (uffd_tracker *)t;
    uint64_t words = (u->base.npages + 63) / 64;
    uint64_t *scratch = calloc(words, sizeof(uint64_t));
    if (!scratch) return -ENOMEM;
    uint64_t n = 0;
    int rc = scan(u, scratch, 1, &n);
    free(scratch);
    if (rc == 0) rc = target_alive(u);
    return rc;
}

static void uffd_destroy(mdp_tracker *t) {
    uffd_tracker *u = (uffd_tracker *)t;
    if (u->uffd >= 0) {
        struct uffdio_range r = {.start = u->start, .len = u->len};
        (void)mdp_ioctl(u->uffd, UFFDIO_UNREGISTER, &r); /* fails harmlessly if the range is already unmapped */
        close(u->uffd);
    }
    if (u->pagemap >= 0) close(u->pagemap);
    if (u->pidfd >= 0) close(u->pidfd);
    free(u);
}

static uffd_tracker *uffd_alloc(uint64_t start, uint64_t len, mdp_engine engine) {
    uffd_tracker *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->base.engine = engine;
    u->base.npages = len / MDP_PAGE_SIZE;
    u->base.footprint = sizeof *u;
    u->base.collect = uffd_collect;
    u->base.destroy = uffd_destroy;
    u->uffd = -1;
    u->pagemap = -1;
    u->pidfd = -1;
    u->start = start;
    u->len = len;
    return u;
}

int mdp_uffd_open(void *addr, size_t len, mdp_tracker **out) {
    if (!out) return -EINVAL;
    int fd = -1;
    int rc = mdp_target_register(addr, len, &fd);
    if (rc < 0) return rc;
    uffd_tracker *u = uffd_alloc((uint64_t)(uintptr_t)addr, len, MDP_ENGINE_UFFD_ASYNC);
    if (!u) {
        close(fd);
        return -ENOMEM;
    }
    u->uffd = fd;
    u->base.rearm = uffd_rearm_self;
    u->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (u->pagemap < 0) {
        rc = -errno;
        uffd_destroy(&u->base);
        return rc;
    }
    *out = &u->base;
    return 0;
}

int mdp_uffd_open_remote(pid_t pid, uint64_t addr, uint64_t len, mdp_tracker **out) {
    if (!out || len == 0 || pid <= 0) return -EINVAL;
    if (!mdp_aligned(addr) || !mdp_aligned(len)) return -EINVAL;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
    uffd_tracker *u = uffd_alloc(addr, len, MDP_ENGINE_UFFD_REMOTE);
    if (!u) return -ENOMEM;
    u->base.rearm = uffd_rearm_remote;
    u->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (u->pidfd < 0) {
        int e = errno;
        uffd_destroy(&u->base);
        return -e;
    }
    u->pagemap = open(path, O_RDONLY | O_CLOEXEC);
    if (u->pagemap < 0) {
        int e = errno;
        uffd_destroy(&u->base);
        return e == ENOENT ? -ESRCH : -e;
    }
    /* Arming is also the check that the target registered the range: CHECK_WPASYNC makes the
     * kernel answer EPERM for memory without an async-wp uffd instead of reporting nonsense. */
    int rc = uffd_rearm_remote(&u->base);
    if (rc < 0) {
        uffd_destroy(&u->base);
        return rc;
    }
    *out = &u->base;
    return 0;
}

/* ---- test support: a forked writer process ---- */
struct mdp_child {
    pid_t pid;
    int cmd;  /* parent -> child: u32 page indexes */
    int resp; /* child -> parent: status and acks */
};

#define CHILD_ACK 0xFFFFFFFEu
#define CHILD_EXIT 0xFFFFFFFFu

static ssize_t write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    size_t done = 0;
    while (done < n) {
        /* MSG_NOSIGNAL: a dead child must give EPIPE, not kill the test runner with SIGPIPE. */
        ssize_t w = send(fd, p + done, n - done, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        done += (size_t)w;
    }
    return (ssize_t)done;
}

static ssize_t read_all(int fd, void *buf, size_t n) {
    char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, p + done, n - done);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) return (ssize_t)done;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

/* Only raw system calls below fork(): the parent may be a multi-threaded test runner. */
static void child_main(char *addr, size_t len, int reg, int cmd, int resp) {
    int uffd = -1;
    int32_t status = reg ? mdp_target_register(addr, len, &uffd) : 0;
    if (write_all(resp, &status, sizeof status) < 0 || status != 0) _exit(1);
    uint32_t buf[1024];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(cmd, (char *)buf + have, sizeof buf - have);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) _exit(0);
        have += (size_t)r;
        size_t n = have / 4;
        for (size_t i = 0; i < n; i++) {
            uint32_t p = buf[i];
            if (p == CHILD_EXIT) _exit(0);
            if (p == CHILD_ACK) {
                char a = 1;
                if (write_all(resp, &a, 1) < 0) _exit(1);
                continue;
            }
            if ((uint64_t)p * MDP_PAGE_SIZE < len) (*(volatile uint64_t *)(addr + (size_t)p * MDP_PAGE_SIZE))++;
        }
        size_t rest = have - n * 4;
        memmove(buf, (char *)buf + n * 4, rest);
        have = rest;
    }
}

int mdp_child_spawn(void *addr, size_t len, int register_range, mdp_child **out) {
    int cmd[2], resp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cmd) != 0) return -errno;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, resp) != 0) {
        int e = errno;
        close(cmd[0]), close(cmd[1]);
        return -e;
    }
    mdp_child *c = calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(cmd[0]), close(cmd[1]), close(resp[0]), close(resp[1]);
        free(c);
        return -e;
    }
    if (pid == 0) {
        close(cmd[1]);
        close(resp[0]);
        child_main(addr, len, register_range, cmd[0], resp[1]);
        _exit(0);
    }
    close(cmd[0]);
    close(resp[1]);
    c->pid = pid;
    c->cmd = cmd[1];
    c->resp = resp[0];
    int32_t status = -EIO;
    if (read_all(c->resp, &status, sizeof status) != sizeof status) status = -EIO;
    if (status != 0) {
        mdp_child_stop(c);
        return status;
    }
    *out = c;
    return 0;
}

pid_t mdp_child_pid(const mdp_child *c) { return c->pid; }

int mdp_child_write_pages(mdp_child *c, const uint32_t *pages, uint32_t n) {
    if (n && write_all(c->cmd, pages, (size_t)n * 4) < 0) return -errno;
    uint32_t ack = CHILD_ACK;
    if (write_all(c->cmd, &ack, 4) < 0) return -errno;
    char a = 0;
    if (read_all(c->resp, &a, 1) != 1) return -EIO;
    return 0;
}

void mdp_child_stop(mdp_child *c) {
    if (!c) return;
    uint32_t bye = CHILD_EXIT;
    (void)write_all(c->cmd, &bye, 4);
    close(c->cmd);
    close(c->resp);
    int st;
    while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR) {}
    free(c);
}
