// CMallocCounter: counts heap allocations made by this process, for benchmarks (allocations per operation).
// Linking this target into an executable interposes malloc, calloc, realloc, posix_memalign and aligned_alloc;
// each forwards to glibc's implementation and bumps a relaxed atomic counter. Link it into benchmarks only.
#ifndef CMALLOCCOUNTER_H
#define CMALLOCCOUNTER_H

#include <stdint.h>

/// Number of allocation calls (malloc, calloc, realloc, posix_memalign, aligned_alloc) since process start.
uint64_t mmc_allocations(void);

/// Whether the interposer is active (false if another allocator took precedence).
int mmc_is_active(void);

#endif
