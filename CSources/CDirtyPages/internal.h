/* Shared between the engine files; not part of the public header. */
#ifndef MDP_INTERNAL_H
#define MDP_INTERNAL_H
#define _GNU_SOURCE
#include "mdp.h"
#include <errno.h>
#include <linux/ioctl.h>
#include <linux/types.h>

/* ---- Constants Debian 12's 6.1 UAPI headers lack (Linux >= 6.7 UAPI, include/uapi/linux/fs.h and
 * userfaultfd.h). Defined here, guarded, so newer headers win. ---- */
#ifndef PAGEMAP_SCAN
struct pm_scan_arg {
    __u64 size;
    __u64 flags;
    __u64 start;
    __u64 end;
    __u64 walk_end;
    __u64 vec;
    __u64 vec_len;
    __u64 max_pages;
    __u64 category_inverted;
    __u64 category_mask;
    __u64 category_anyof_mask;
    __u64 return_mask;
};
struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#endif
_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg is 96 bytes in the kernel UAPI");

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

struct mdp_tracker {
    mdp_engine engine;
    uint64_t npages;
    uint64_t footprint;
    int (*collect)(mdp_tracker *t, uint64_t *bitmap, int rearm, uint64_t *ndirty);
    int (*rearm)(mdp_tracker *t);
    void (*destroy)(mdp_tracker *t);
};

static inline int mdp_aligned(uint64_t v) { return (v & (MDP_PAGE_SIZE - 1)) == 0; }

/* ioctl that retries on EINTR and returns 0 or -errno. */
int mdp_ioctl(int fd, unsigned long req, void *arg);

int mdp_uffd_create(uint64_t want_features, uint64_t *got_features, int *fd_out);
uint64_t mdp_uffd_supported_features(int *err);
#endif
