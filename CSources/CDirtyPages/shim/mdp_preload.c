/* mdp_preload: an LD_PRELOAD shim that lets the uffd-remote engine track an unmodified QEMU's guest RAM.
 *
 * Why it is needed: PAGEMAP_SCAN can report and re-protect written pages of another process, but only
 * for ranges that process registered with its own userfaultfd in WP_ASYNC mode. A tracker's own uffd
 * cannot be registered on another mm (EINVAL), and a scan with PM_SCAN_CHECK_WPASYNC on unregistered
 * memory fails with EPERM. So the registration has to happen inside QEMU: this shim does it when QEMU
 * maps guest RAM.
 *
 * How: it wraps mmap/mmap64. A writable MAP_SHARED mapping of an fd at least MDP_SHIM_MIN_MB MiB long
 * (guest RAM from `-object memory-backend-memfd,share=on` or `memory-backend-file,share=on`; QEMU maps
 * it with MAP_SHARED|MAP_FIXED over a PROT_NONE reservation, see util/mmap-alloc.c) is registered with
 * mdp_target_register right after it is mapped, and a line "pid start length fd" is appended to the file
 * named by MDP_SHIM_REPORT. The uffd is kept open for the life of the process. The tracker then opens
 * /proc/PID/pagemap with mdp_uffd_open_remote (DirtyTracker.uffdRemote).
 *
 * Build: cc -O2 -shared -fPIC -o libmdp_preload.so shim/mdp_preload.c uffd.c common.c -Iinclude -I. -ldl
 * Use:   MDP_SHIM_REPORT=/run/vm1.ram LD_PRELOAD=/path/libmdp_preload.so qemu-system-x86_64 \
 *          -object memory-backend-memfd,id=ram,size=1G,share=on -machine memory-backend=ram ...
 *
 * Limits: writes through *another* mapping of the same memfd (a second process, vhost-user backends)
 * are not seen, since uffd-wp lives in this process's page tables; QEMU's own postcopy also wants a
 * uffd on guest RAM and must not be used together with this shim.
 */
#define _GNU_SOURCE
#include "mdp.h"
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(void *addr, size_t len, int mfd, int rc) {
    const char *path = getenv("MDP_SHIM_REPORT");
    if (!path) return;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return;
    char line[128];
    int n = rc == 0 ? snprintf(line, sizeof line, "%d %llu %llu %d\n", (int)getpid(), (unsigned long long)(uintptr_t)addr, (unsigned long long)len, mfd)
                    : snprintf(line, sizeof line, "%d error %d\n", (int)getpid(), -rc);
    if (n > 0) (void)!write(fd, line, (size_t)n);
    close(fd);
}

static size_t min_bytes(void) {
    const char *s = getenv("MDP_SHIM_MIN_MB");
    long mb = s ? atol(s) : 64;
    return (size_t)(mb > 0 ? mb : 64) << 20;
}

/* The raw system call, not dlsym(RTLD_NEXT): dlsym may allocate, and allocation may mmap. */
static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    void *p = raw_mmap(addr, len, prot, flags, fd, off);
    if ((intptr_t)p < 0 && (intptr_t)p > -4096) {
        errno = -(int)(intptr_t)p;
        return MAP_FAILED;
    }
    if (fd >= 0 && (flags & MAP_SHARED) && (prot & PROT_WRITE) && len >= min_bytes()) {
        int uffd = -1;
        int rc = mdp_target_register(p, len, &uffd);
        report(p, len, fd, rc);
    }
    return p;
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));
