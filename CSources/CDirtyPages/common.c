#include "internal.h"
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

int mdp_ioctl(int fd, unsigned long req, void *arg) {
    for (;;) {
        int rc = ioctl(fd, req, arg);
        if (rc >= 0) return rc;
        if (errno != EINTR) return -errno;
    }
}

int mdp_collect(mdp_tracker *t, uint64_t *bitmap, size_t words, int rearm, uint64_t *ndirty) {
    if (!t || !bitmap || !ndirty) return -EINVAL;
    if (words < (t->npages + 63) / 64) return -ENOSPC;
    memset(bitmap, 0, ((t->npages + 63) / 64) * sizeof(uint64_t));
    *ndirty = 0;
    return t->collect(t, bitmap, rearm, ndirty);
}

int mdp_rearm(mdp_tracker *t) { return t ? t->rearm(t) : -EINVAL; }

void mdp_close(mdp_tracker *t) {
    if (t) t->destroy(t);
}

mdp_engine mdp_tracker_engine(const mdp_tracker *t) { return t->engine; }
uint64_t mdp_tracker_pages(const mdp_tracker *t) { return t->npages; }
uint64_t mdp_tracker_footprint(const mdp_tracker *t) { return t->footprint; }

uint64_t mdp_bitmap_to_list(const uint64_t *bitmap, uint64_t npages, uint64_t *pages, uint64_t cap) {
    uint64_t n = 0;
    for (uint64_t w = 0; w < (npages + 63) / 64; w++) {
        uint64_t word = bitmap[w];
        while (word) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(word);
            word &= word - 1;
            if (i >= npages) break;
            if (n < cap) pages[n] = i;
            n++;
        }
    }
    return n;
}

#include <sys/mman.h>
int mdp_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd >= 0 ? fd : -errno;
}
