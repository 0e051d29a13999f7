// Interposes the allocation entry points and counts them. glibc exports __libc_* aliases of its allocator,
// so no dlsym (which itself allocates) is needed.
#include "CMallocCounter.h"
#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static uint64_t mmc_count;
static int mmc_seen;

static inline void mmc_bump(void) {
    __atomic_fetch_add(&mmc_count, 1, __ATOMIC_RELAXED);
    mmc_seen = 1;
}

void *malloc(size_t n) { mmc_bump(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { mmc_bump(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { mmc_bump(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

int posix_memalign(void **out, size_t alignment, size_t n) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    mmc_bump();
    void *p = __libc_memalign(alignment, n);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t n) { mmc_bump(); return __libc_memalign(alignment, n); }

uint64_t mmc_allocations(void) { return __atomic_load_n(&mmc_count, __ATOMIC_RELAXED); }

int mmc_is_active(void) { return mmc_seen; }
