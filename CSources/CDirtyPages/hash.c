/* The hash engine: per-page XXH3-64 compared with the previous epoch's value.
 *
 * It needs no cooperation from the writer and no kernel feature, which makes it the portable way to
 * track guest RAM that an unmodified QEMU writes into a shared memory file. It reads every page each
 * epoch (about 11 GB/s per core here), so its cost grows with the region, not with the dirty set.
 * A write that races the hashing of its page is never lost: either the new bytes were hashed (and
 * reported now) or the stored hash is of older bytes (and differs next epoch). Writing back identical
 * bytes is not reported, which is harmless for replication: the replica already holds them.
 * Memory: 8 bytes per 4 KiB page (0.2% of the region).
 */
#include "internal.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#define MDP_HASH_MAX_THREADS 64

typedef struct hash_tracker {
    mdp_tracker base;
    const unsigned char *addr;
    uint64_t *hashes;
    unsigned threads;
} hash_tracker;

typedef struct hash_job {
    hash_tracker *h;
    uint64_t first, last; /* page range, multiples of 64 except the last job's end */
    uint64_t *bitmap;     /* NULL: only (re)take the baseline */
    int rearm;
    uint64_t dirty;
} hash_job;

static void *hash_worker(void *arg) {
    hash_job *j = arg;
    hash_tracker *h = j->h;
    for (uint64_t i = j->first; i < j->last; i++) {
        uint64_t v = XXH3_64bits(h->addr + i * MDP_PAGE_SIZE, MDP_PAGE_SIZE);
        if (j->bitmap) {
            if (v != h->hashes[i]) {
                /* Jobs own whole 64-page words, so no two threads write the same bitmap word. */
                j->bitmap[i / 64] |= 1ull << (i & 63);
                j->dirty++;
                if (j->rearm) h->hashes[i] = v;
            }
        } else {
            h->hashes[i] = v;
        }
    }
    return NULL;
}

static int hash_run(hash_tracker *h, uint64_t *bitmap, int rearm, uint64_t *ndirty) {
    hash_job jobs[MDP_HASH_MAX_THREADS];
    pthread_t tids[MDP_HASH_MAX_THREADS];
    unsigned n = h->threads;
    uint64_t words = (h->base.npages + 63) / 64;
    if (n > words) n = (unsigned)(words ? words : 1);
    uint64_t per = (words + n - 1) / n;
    unsigned started = 0;
    int rc = 0;
    for (unsigned k = 0; k < n; k++) {
        uint64_t fw = k * per, lw = fw + per < words ? fw + per : words;
        jobs[k] = (hash_job){.h = h, .first = fw * 64, .last = lw * 64, .bitmap = bitmap, .rearm = rearm};
        if (jobs[k].last > h->base.npages) jobs[k].last = h->base.npages;
        if (jobs[k].first >= jobs[k].last) continue;
        if (k == n - 1 || n == 1) {
            hash_worker(&jobs[k]); /* the calling thread takes the last share */
            continue;
        }
        int e = pthread_create(&tids[started], NULL, hash_worker, &jobs[k]);
        if (e) {
            hash_worker(&jobs[k]); /* no thread available: do it here, slower but correct */
            jobs[k].first = jobs[k].last;
            rc = 0;
        } else {
            started++;
        }
    }
    for (unsigned k = 0; k < started; k++) pthread_join(tids[k], NULL);
    uint64_t total = 0;
    for (unsigned k = 0; k < n; k++) total += jobs[k].dirty;
    if (ndirty) *ndirty = total;
    return rc;
}

static int hash_collect(mdp_tracker *t, uint64_t *bitmap, int rearm, uint64_t *ndirty) {
    return hash_run((hash_tracker *)t, bitmap, rearm, ndirty);
}

static int hash_rearm(mdp_tracker *t) { return hash_run((hash_tracker *)t, NULL, 1, NULL); }

static void hash_destroy(mdp_tracker *t) {
    hash_tracker *h = (hash_tracker *)t;
    free(h->hashes);
    free(h);
}

int mdp_hash_open(const void *addr, size_t len, unsigned threads, mdp_tracker **out) {
    if (!out || len == 0) return -EINVAL;
    if (!mdp_aligned((uint64_t)(uintptr_t)addr) || !mdp_aligned(len)) return -EINVAL;
    if (msync((void *)addr, len, 0) != 0 && errno == ENOMEM) return -ENOMEM;
    hash_tracker *h = calloc(1, sizeof *h);
    if (!h) return -ENOMEM;
    h->base.engine = MDP_ENGINE_HASH;
    h->base.npages = len / MDP_PAGE_SIZE;
    h->base.collect = hash_collect;
    h->base.rearm = hash_rearm;
    h->base.destroy = hash_destroy;
    h->addr = addr;
    h->threads = threads == 0 ? 1 : threads > MDP_HASH_MAX_THREADS ? MDP_HASH_MAX_THREADS : threads;
    h->hashes = malloc(h->base.npages * sizeof(uint64_t));
    if (!h->hashes) {
        free(h);
        return -ENOMEM;
    }
    h->base.footprint = sizeof *h + h->base.npages * sizeof(uint64_t);
    hash_rearm(&h->base);
    *out = &h->base;
    return 0;
}

void mdp_hash_pages(const void *addr, uint64_t npages, uint64_t seed, uint64_t *out) {
    const unsigned char *p = addr;
    for (uint64_t i = 0; i < npages; i++) out[i] = XXH3_64bits_withSeed(p + i * MDP_PAGE_SIZE, MDP_PAGE_SIZE, seed);
}
