/* Run-time detection: every engine is tried for real on a scratch page, because a header constant
 * or a feature bit says what the kernel was built with, not that the path works here. */
#include "internal.h"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

int mdp_kvm_probe(char *reason, size_t cap);

static int probe_uffd(char *reason, size_t cap) {
    int err = 0;
    uint64_t f = mdp_uffd_supported_features(&err);
    if (err) {
        snprintf(reason, cap, "userfaultfd unavailable: %s", strerror(-err));
        return 0;
    }
    if (!(f & UFFD_FEATURE_WP_ASYNC)) {
        snprintf(reason, cap, "kernel lacks UFFD_FEATURE_WP_ASYNC (Linux >= 6.7 needed)");
        return 0;
    }
    size_t len = 4 * MDP_PAGE_SIZE;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        snprintf(reason, cap, "mmap failed: %s", strerror(errno));
        return 0;
    }
    mdp_tracker *t = NULL;
    int rc = mdp_uffd_open(m, len, &t);
    int ok = 0;
    if (rc < 0) {
        snprintf(reason, cap, "cannot register async write-protect: %s", strerror(-rc));
    } else {
        m[2 * MDP_PAGE_SIZE] = 1;
        uint64_t bm = 0, n = 0;
        rc = mdp_collect(t, &bm, 1, 1, &n);
        if (rc < 0) snprintf(reason, cap, "PAGEMAP_SCAN failed: %s", strerror(-rc));
        else if (n != 1 || bm != 4) snprintf(reason, cap, "PAGEMAP_SCAN self-test reported %llu pages", (unsigned long long)n);
        else {
            ok = 1;
            snprintf(reason, cap, "userfaultfd WP_ASYNC%s + PAGEMAP_SCAN self-test passed",
                     (f & UFFD_FEATURE_WP_UNPOPULATED) ? " + WP_UNPOPULATED" : "");
        }
        mdp_close(t);
    }
    munmap(m, len);
    return ok;
}

void mdp_probe(mdp_support out[MDP_ENGINE_COUNT]) {
    memset(out, 0, sizeof(mdp_support) * MDP_ENGINE_COUNT);
    out[MDP_ENGINE_UFFD_ASYNC].available = probe_uffd(out[MDP_ENGINE_UFFD_ASYNC].reason, sizeof out[0].reason);
    if (out[MDP_ENGINE_UFFD_ASYNC].available) {
        out[MDP_ENGINE_UFFD_REMOTE].available = 1;
        snprintf(out[MDP_ENGINE_UFFD_REMOTE].reason, sizeof out[0].reason,
                 "PAGEMAP_SCAN on /proc/PID/pagemap; the target must register its range (mdp_target_register)");
    } else {
        snprintf(out[MDP_ENGINE_UFFD_REMOTE].reason, sizeof out[0].reason, "needs the uffd-async engine: %.120s",
                 out[MDP_ENGINE_UFFD_ASYNC].reason);
    }
    out[MDP_ENGINE_KVM].available = mdp_kvm_probe(out[MDP_ENGINE_KVM].reason, sizeof out[0].reason);
    out[MDP_ENGINE_HASH].available = 1;
    snprintf(out[MDP_ENGINE_HASH].reason, sizeof out[0].reason, "XXH3-64 per page (libxxhash %u), no kernel support needed",
             (unsigned)XXH_versionNumber());
}
