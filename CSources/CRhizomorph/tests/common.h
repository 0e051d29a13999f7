/* Shared helpers for the Rhizomorph test tools: deterministic data, keys from names, hashing. */
#ifndef RZ_TEST_COMMON_H
#define RZ_TEST_COMMON_H
#define _GNU_SOURCE
#include "rhizomorph.h"

#include <errno.h>
#include <stdbool.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static inline double tnow(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* splitmix64: fast, deterministic filler. */
static inline uint64_t mix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void fill_pattern(uint8_t *p, size_t n, uint64_t seed) {
    uint64_t x = seed;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = mix64(&x);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) p[i] = (uint8_t)mix64(&x);
}

static inline void hash_hex(const uint8_t *p, size_t n, char out[65]) {
    uint8_t h[32];
    crypto_generichash(h, sizeof h, p, n, NULL, 0);
    sodium_bin2hex(out, 65, h, sizeof h);
}

/* Identity and network from short names so both ends derive the same keys without files. */
static inline void identity_named(rz_identity *id, const char *name) {
    uint8_t seed[32];
    crypto_generichash(seed, sizeof seed, (const uint8_t *)name, strlen(name), (const uint8_t *)"rz-test-identity", 16);
    rz_identity_from_seed(id, seed);
}

static inline void network_named(uint8_t out[16], const char *name) {
    crypto_generichash(out, 16, (const uint8_t *)name, strlen(name), NULL, 0);
}

/* Pages plan: `pages` pages of `page_size`; epoch 0 writes every page, later epochs a pseudo-random
 * ~1/8 subset, each epoch in shuffled order. Page content depends on (seed, page, epoch) and starts
 * with the page number and the epoch so the receiver can check the barrier rule page by page. */
typedef struct pages_plan {
    uint32_t pages, page_size, epochs;
    uint64_t seed;
} pages_plan;

static inline uint32_t plan_epoch(const pages_plan *pl, uint32_t e, uint32_t *list) {
    uint64_t x = pl->seed ^ (0x1234567ull * (e + 1));
    uint32_t n = 0;
    for (uint32_t p = 0; p < pl->pages; p++)
        if (e == 0 || (mix64(&x) & 7) == 0) list[n++] = p;
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = (uint32_t)(mix64(&x) % i);
        uint32_t t = list[i - 1];
        list[i - 1] = list[j];
        list[j] = t;
    }
    return n;
}

static inline void plan_content(const pages_plan *pl, uint32_t page, uint32_t epoch, uint8_t *out) {
    fill_pattern(out, pl->page_size, pl->seed * 1000003ull + page * 7919ull + epoch);
    memcpy(out, &page, 4);
    memcpy(out + 4, &epoch, 4);
}

/* Final region content after all epochs: the last epoch that wrote each page. */
static inline void plan_final(const pages_plan *pl, uint8_t *region) {
    uint32_t *list = malloc(pl->pages * sizeof *list);
    for (uint32_t e = 0; e < pl->epochs; e++) {
        uint32_t n = plan_epoch(pl, e, list);
        for (uint32_t i = 0; i < n; i++) plan_content(pl, list[i], e, region + (size_t)list[i] * pl->page_size);
    }
    free(list);
}

static inline int check(int ok, const char *what, int line) {
    if (!ok) fprintf(stderr, "FAIL line %d: %s\n", line, what);
    return ok ? 0 : 1;
}
#define CHECK(x) (failures += check(!!(x), #x, __LINE__))

#endif
