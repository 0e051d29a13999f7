/*
 * rzbench: the measurements behind two design choices.
 *
 *   rzbench crypto                         seal throughput of 64 KiB chunks, AES-256-GCM vs XChaCha20
 *   rzbench zc-server ADDR PORT            sink: read until EOF, answer one byte
 *   rzbench zc-client LOCAL REMOTE PORT BYTES MODE
 *        MODE: copy | zerocopy | seal-copy | seal-zerocopy
 *        Sends BYTES in 64 KiB chunks from a ring of 256 buffers (16 MiB). The seal modes encrypt each
 *        chunk into its ring slot first, as Rhizomorph does. zerocopy uses SO_ZEROCOPY + MSG_ZEROCOPY
 *        and reaps completions from the error queue before a slot is reused.
 *        Prints throughput and the client's CPU seconds (user+sys) per GiB sent.
 */
#define _GNU_SOURCE
#include "common.h"
#include "internal.h"

#include <arpa/inet.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

#define CHUNK 65536u
#define RING 256u

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static int crypto_bench(void) {
    uint8_t key[32] = {1};
    uint8_t *buf = malloc(CHUNK + RZ_FRAME_HDR + RZ_TAG);
    fill_pattern(buf, CHUNK + RZ_FRAME_HDR, 3);
    for (int cipher = RZ_CIPHER_AES256GCM; cipher <= RZ_CIPHER_XCHACHA20POLY1305; cipher++) {
        rz_aead a;
        if (rz_aead_init(&a, cipher, key) != 0) {
            printf("CRYPTO cipher=%s unavailable\n", cipher == RZ_CIPHER_AES256GCM ? "aes256gcm" : "xchacha20");
            continue;
        }
        uint64_t n = 0;
        double t0 = tnow();
        while (tnow() - t0 < 1.0) {
            for (int i = 0; i < 64; i++, n++)
                rz_aead_seal(&a, buf + RZ_FRAME_HDR, buf + RZ_FRAME_HDR, CHUNK, buf, RZ_FRAME_HDR, n, 0);
        }
        double secs = tnow() - t0;
        printf("CRYPTO cipher=%s chunk=%u gbps=%.2f\n", cipher == RZ_CIPHER_AES256GCM ? "aes256gcm" : "xchacha20", CHUNK,
               n * CHUNK * 8 / secs / 1e9);
        rz_aead_free(&a);
    }
    return 0;
}

static int sink(const char *addr, int port) {
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, addr, &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4)) {
        perror("listen");
        return 1;
    }
    printf("LISTENING\n");
    fflush(stdout);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        static uint8_t buf[1 << 20];
        while (read(fd, buf, sizeof buf) > 0) {}
        if (write(fd, "k", 1) < 0) {}
        close(fd);
    }
}

/* Reap zerocopy completions; returns the highest completed send index + 1 seen so far. */
static uint32_t reap(int fd, uint32_t done, bool block, uint64_t *copied) {
    for (;;) {
        if (block) {
            struct pollfd p = {.fd = fd, .events = 0};
            poll(&p, 1, 100);
        }
        char control[128];
        struct msghdr m = {.msg_control = control, .msg_controllen = sizeof control};
        if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) return done;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            struct sock_extended_err *e = (struct sock_extended_err *)CMSG_DATA(c);
            if (e->ee_origin != SO_EE_ORIGIN_ZEROCOPY) continue;
            if (e->ee_code & SO_EE_CODE_ZEROCOPY_COPIED) (*copied) += e->ee_data - e->ee_info + 1;
            if (e->ee_data + 1 > done) done = e->ee_data + 1;
        }
        block = false;
    }
}

static int zc_client(const char *local, const char *remote, int port, uint64_t bytes, const char *mode) {
    bool zc = strstr(mode, "zerocopy") != NULL, seal = strncmp(mode, "seal", 4) == 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (zc && setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one) != 0) {
        perror("SO_ZEROCOPY");
        return 1;
    }
    struct sockaddr_in la = {.sin_family = AF_INET}, ra = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, local, &la.sin_addr);
    inet_pton(AF_INET, remote, &ra.sin_addr);
    if (bind(fd, (struct sockaddr *)&la, sizeof la) || connect(fd, (struct sockaddr *)&ra, sizeof ra)) {
        perror("connect");
        return 1;
    }
    size_t slot = CHUNK + RZ_FRAME_HDR + RZ_TAG;
    uint8_t *ring = aligned_alloc(4096, (RING * slot + 4095) & ~(size_t)4095);
    uint8_t *plain = malloc(CHUNK);
    fill_pattern(ring, RING * slot, 9);
    fill_pattern(plain, CHUNK, 10);
    uint8_t key[32] = {2};
    rz_aead a;
    rz_aead_init(&a, rz_aes_available() ? RZ_CIPHER_AES256GCM : RZ_CIPHER_XCHACHA20POLY1305, key);
    double c0 = cpu_seconds(), t0 = tnow();
    uint64_t sent = 0, copied = 0;
    uint32_t sends = 0, done = 0;
    while (sent < bytes) {
        if (zc && sends - done >= RING) {
            done = reap(fd, done, true, &copied);
            continue;
        }
        uint8_t *b = ring + (size_t)(sends % RING) * slot;
        if (seal) rz_aead_seal(&a, b + RZ_FRAME_HDR, plain, CHUNK, b, RZ_FRAME_HDR, sends, 0);
        size_t off = 0;
        while (off < slot) {
            ssize_t w = send(fd, b + off, slot - off, zc ? MSG_ZEROCOPY : 0);
            if (w < 0 && errno == ENOBUFS) { /* optmem exhausted: wait for completions */
                done = reap(fd, done, true, &copied);
                continue;
            }
            if (w < 0) {
                perror("send");
                return 1;
            }
            off += (size_t)w;
            if (zc) sends++, done = reap(fd, done, false, &copied);
        }
        if (!zc) sends++;
        sent += slot;
    }
    shutdown(fd, SHUT_WR);
    char k;
    if (read(fd, &k, 1) < 0) {}
    double secs = tnow() - t0, cpu = cpu_seconds() - c0;
    if (zc)
        while (done < sends) {
            uint32_t before = done;
            done = reap(fd, done, true, &copied);
            if (done == before) break;
        }
    printf("ZC mode=%s bytes=%llu mbps=%.0f cpu_s_per_gib=%.3f zc_sends=%u zc_fell_back_to_copy=%llu\n", mode,
           (unsigned long long)sent, sent * 8 / secs / 1e6, cpu / ((double)sent / (1 << 30)), zc ? sends : 0,
           (unsigned long long)copied);
    return 0;
}

int main(int argc, char **argv) {
    if (sodium_init() < 0) return 2;
    if (argc >= 2 && strcmp(argv[1], "crypto") == 0) return crypto_bench();
    if (argc >= 4 && strcmp(argv[1], "zc-server") == 0) return sink(argv[2], atoi(argv[3]));
    if (argc >= 7 && strcmp(argv[1], "zc-client") == 0)
        return zc_client(argv[2], argv[3], atoi(argv[4]), strtoull(argv[5], NULL, 0), argv[6]);
    fprintf(stderr, "usage: rzbench crypto | zc-server ADDR PORT | zc-client LOCAL REMOTE PORT BYTES MODE\n");
    return 2;
}
