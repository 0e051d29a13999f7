/* Drives selftest.sh: starts python3 under the shim, finds its registered range in the report file,
 * tracks it with mdp_uffd_open_remote, and checks exact write patterns. */
#define _GNU_SOURCE
#include "mdp.h"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>

static const char *py =
    "import mmap, os, sys\n"
    "fd = os.memfd_create('guest-ram')\n"
    "n = 128 << 20\n"
    "os.ftruncate(fd, n)\n"
    "m = mmap.mmap(fd, n, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n"
    "print('ready', flush=True)\n"
    "for line in sys.stdin:\n"
    "    for p in line.split():\n"
    "        i = int(p) * 4096\n"
    "        m[i] = (m[i] + 1) & 255\n"
    "    print('done', flush=True)\n";

/* --attach REPORT SECONDS: track a process started elsewhere under the shim (QEMU), with the remote
 * uffd engine and, for comparison, the hash engine on the same memfd (opened through /proc/PID/fd).
 * Every page whose bytes changed must have been reported as written. */
static int attach(const char *report_path, double seconds) {
    FILE *rep = fopen(report_path, "r");
    int pid = 0, mfd = -1;
    unsigned long long start = 0, len = 0;
    if (!rep || fscanf(rep, "%d %llu %llu %d", &pid, &start, &len, &mfd) != 4) {
        fprintf(stderr, "FAIL: no registered range in %s\n", report_path);
        return 1;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, mfd);
    int fd = open(path, O_RDONLY);
    void *view = fd >= 0 ? mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (view == MAP_FAILED) { fprintf(stderr, "FAIL: cannot map %s\n", path); return 1; }
    mdp_tracker *u, *h;
    int rc = mdp_uffd_open_remote(pid, start, len, &u);
    if (rc) { fprintf(stderr, "FAIL: mdp_uffd_open_remote(pid %d): %s\n", pid, strerror(-rc)); return 1; }
    rc = mdp_hash_open(view, len, 1, &h);
    if (rc) { fprintf(stderr, "FAIL: mdp_hash_open: %s\n", strerror(-rc)); return 1; }
    uint64_t pages = len / 4096, words = (pages + 63) / 64;
    uint64_t *ub = calloc(words, 8), *hb = calloc(words, 8), *prev = calloc(words, 8);
    int rounds = (int)(seconds / 0.1), missed_total = 0;
    uint64_t utotal = 0, htotal = 0;
    for (int i = 0; i < rounds; i++) {
        usleep(100000);
        uint64_t nu = 0, nh = 0;
        /* Hash first, then scan. A page whose bytes changed before the hash pass read it was written
         * before this scan, so it is in this round's uffd set or, if the write fell between the
         * previous round's hash pass and its scan, in the previous round's. The uffd set may hold
         * more: rewrites of identical bytes, and writes after the hash pass. */
        if ((rc = mdp_collect(h, hb, words, 1, &nh)) || (rc = mdp_collect(u, ub, words, 1, &nu))) {
            fprintf(stderr, "FAIL: collect: %s\n", strerror(-rc));
            return 1;
        }
        int missed = 0;
        for (uint64_t w = 0; w < words; w++) {
            missed += __builtin_popcountll(hb[w] & ~(ub[w] | prev[w]));
            prev[w] = ub[w];
        }
        missed_total += missed;
        utotal += nu, htotal += nh;
        printf("  100 ms round %2d: uffd-remote %6llu written, hash %6llu changed, changed-but-unreported %d\n", i,
               (unsigned long long)nu, (unsigned long long)nh, missed);
    }
    printf("%s: %d rounds, uffd-remote reported %llu, hash saw %llu changed, %d changed pages unreported\n",
           missed_total ? "FAIL" : "PASS", rounds, (unsigned long long)utotal, (unsigned long long)htotal, missed_total);
    return missed_total ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--attach") == 0) return attach(argv[2], atof(argv[3]));
    if (argc != 3) return 2;
    unlink(argv[2]);
    int in[2], out[2];
    if (pipe(in) || pipe(out)) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0), dup2(out[1], 1);
        close(in[1]), close(out[0]);
        setenv("LD_PRELOAD", argv[1], 1);
        setenv("MDP_SHIM_REPORT", argv[2], 1);
        execlp("python3", "python3", "-c", py, (char *)NULL);
        _exit(127);
    }
    close(in[0]), close(out[1]);
    FILE *w = fdopen(in[1], "w"), *r = fdopen(out[0], "r");
    char line[256];
    if (!fgets(line, sizeof line, r)) { fprintf(stderr, "python did not start\n"); return 1; }
    FILE *rep = fopen(argv[2], "r");
    int rpid = 0;
    unsigned long long start = 0, len = 0;
    if (!rep || fscanf(rep, "%d %llu %llu", &rpid, &start, &len) != 3 || rpid != pid) {
        fprintf(stderr, "FAIL: the shim reported no registered range for pid %d\n", pid);
        return 1;
    }
    mdp_tracker *t;
    int rc = mdp_uffd_open_remote(pid, start, len, &t);
    if (rc) { fprintf(stderr, "FAIL: mdp_uffd_open_remote: %s\n", strerror(-rc)); return 1; }
    uint64_t pages = len / 4096, words = (pages + 63) / 64;
    uint64_t *bm = calloc(words, 8);
    int failures = 0;
    unsigned strides[] = {0, 7, 10, 1};  /* one page, stride 7, every 10th, all */
    for (unsigned k = 0; k < 4; k++) {
        uint64_t expect = 0;
        for (uint64_t p = 0; p < pages; p++) {
            int hit = strides[k] == 0 ? p == 1234 : (p % strides[k]) == 0;
            if (hit) { fprintf(w, "%llu ", (unsigned long long)p); expect++; }
        }
        fprintf(w, "\n");
        fflush(w);
        if (!fgets(line, sizeof line, r)) return 1;
        uint64_t n = 0;
        rc = mdp_collect(t, bm, words, 1, &n);
        printf("pattern %u: python wrote %llu pages, tracker reported %llu (rc %d)\n", k, (unsigned long long)expect, (unsigned long long)n, rc);
        if (rc || n != expect) failures++;
    }
    mdp_close(t);
    fclose(w);
    waitpid(pid, NULL, 0);
    printf(failures ? "FAIL\n" : "PASS: an unmodified process's memfd mapping is tracked through the shim\n");
    return failures ? 1 : 0;
}
