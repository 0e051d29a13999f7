/*
 * rzpeer: one end of a transfer, for the namespace tests and the benchmark.
 *
 *   rzpeer server --listen A[,B..] --port P [--transport rz|tcp|mptcp] [--mode stream|pages] --size BYTES
 *   rzpeer client --paths LOCAL=REMOTE[,..] --port P [same options] [--conns K]
 * Options: --seed N, --net NAME, --self NAME, --peer NAME (identities derive from names),
 *          --max-auth N, --cipher aes|xchacha, --chunk BYTES, --accept-timeout MS.
 * The receiver checks the content against the deterministic pattern (hash for streams; per page and
 * per barrier for pages) and prints one RESULT line; exit 0 only if everything matched.
 * tcp/mptcp: one plain stream of the same bytes, for comparison (no check beyond the byte count).
 */
#include "common.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

typedef struct opts {
    bool server;
    char listen[256], paths[512], transport[16], mode[16];
    uint16_t port;
    uint64_t size;
    uint64_t seed;
    char net[64], self[64], peer[64];
    uint32_t conns, max_auth, chunk, accept_timeout;
    bool bench; /* throughput only: sender from a memory buffer, receiver into /dev/null, no content check */
    int cipher;
} opts;

/* CPU seconds (user + system, all threads) this process has used: the cost measure that stays
 * meaningful when other work shares the machine. */
static double cpu_used(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static void result(const opts *o, int ok, uint64_t bytes, double secs, const char *hash, const rz_stats *st) {
    printf("RESULT role=%s transport=%s mode=%s ok=%d bytes=%llu secs=%.3f mbps=%.1f cpu=%.3f hash=%s",
           o->server ? "server" : "client", o->transport, o->mode, ok, (unsigned long long)bytes, secs,
           secs > 0 ? bytes * 8 / secs / 1e6 : 0.0, cpu_used(), hash ? hash : "-");
    if (st) {
        printf(" sent=%llu resent=%llu reinjected=%llu dups=%llu auth_failures=%llu conns_failed=%llu joined=%llu cipher=%s",
               (unsigned long long)st->chunks_sent, (unsigned long long)st->chunks_resent,
               (unsigned long long)st->chunks_reinjected, (unsigned long long)st->duplicates_dropped,
               (unsigned long long)st->auth_failures, (unsigned long long)st->conns_failed,
               (unsigned long long)st->conns_joined, st->cipher == RZ_CIPHER_AES256GCM ? "aes256gcm" : "xchacha20");
        printf(" path_bytes=");
        for (int i = 0; i < 4; i++) printf("%s%llu", i ? "," : "", (unsigned long long)st->per_path_bytes[i]);
    }
    printf("\n");
    fflush(stdout);
}

static int die(const char *what, int code, const char *msg) {
    printf("ERROR %s code=%d (%s): %s\n", what, code, rz_strerror(code), msg);
    fflush(stdout);
    return 1;
}

/* ---- plain TCP / MPTCP baseline ---- */

static int sockaddr_of(const char *a, uint16_t port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    return inet_pton(AF_INET, a, &sa->sin_addr) == 1 ? 0 : -1;
}

static int plain(const opts *o) {
    int proto = strcmp(o->transport, "mptcp") == 0 ? IPPROTO_MPTCP : 0;
    if (o->server) {
        int ls = socket(AF_INET, SOCK_STREAM, proto);
        if (ls < 0) return die("socket", -errno, strerror(errno));
        int one = 1;
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa;
        char first[256];
        snprintf(first, sizeof first, "%s", o->listen);
        char *comma = strchr(first, ',');
        if (comma) *comma = 0;
        sockaddr_of(first, o->port, &sa);
        /* MPTCP joins arrive at the other announced addresses: listen on all of them. */
        if (proto == IPPROTO_MPTCP) sa.sin_addr.s_addr = htonl(INADDR_ANY);
        if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4)) return die("listen", -errno, strerror(errno));
        printf("LISTENING\n");
        fflush(stdout);
        int fd = accept(ls, NULL, NULL);
        double t0 = tnow();
        uint8_t *buf = malloc(1 << 20);
        uint64_t total = 0;
        ssize_t r;
        while ((r = read(fd, buf, 1 << 20)) > 0) total += (uint64_t)r;
        double secs = tnow() - t0;
        if (write(fd, "k", 1) < 0) {}
        close(fd);
        close(ls);
        result(o, total == o->size, total, secs, NULL, NULL);
        return total == o->size ? 0 : 3;
    }
    char local[512] = "", remote[512] = "";
    const char *eq = strchr(o->paths, '=');
    if (!eq) return die("paths", -EINVAL, "need LOCAL=REMOTE");
    snprintf(local, sizeof local, "%.*s", (int)(eq - o->paths), o->paths);
    snprintf(remote, sizeof remote, "%s", eq + 1);
    char *comma = strchr(remote, ',');
    if (comma) *comma = 0;
    int fd = socket(AF_INET, SOCK_STREAM, proto);
    if (fd < 0) return die("socket", -errno, strerror(errno));
    struct sockaddr_in la, ra;
    sockaddr_of(local, 0, &la);
    sockaddr_of(remote, o->port, &ra);
    if (bind(fd, (struct sockaddr *)&la, sizeof la) || connect(fd, (struct sockaddr *)&ra, sizeof ra))
        return die("connect", -errno, strerror(errno));
    size_t bs = 4 << 20;
    uint8_t *buf = malloc(bs);
    fill_pattern(buf, bs, o->seed);
    double t0 = tnow();
    uint64_t left = o->size;
    while (left) {
        size_t n = left < bs ? (size_t)left : bs;
        ssize_t w = write(fd, buf, n);
        if (w <= 0) return die("write", -errno, strerror(errno));
        left -= (uint64_t)w;
    }
    shutdown(fd, SHUT_WR);
    char k;
    if (read(fd, &k, 1) < 0) {}
    double secs = tnow() - t0;
    close(fd);
    result(o, 1, o->size, secs, NULL, NULL);
    return 0;
}

/* ---- Rhizomorph ---- */

typedef struct page_rx {
    pages_plan plan;
    uint8_t *region;
    uint32_t open_epoch;
    uint32_t in_epoch;
    uint32_t *planned;
    char err[200];
} page_rx;

static int on_page(void *ctx, uint64_t off, const uint8_t *d, uint32_t len) {
    page_rx *p = ctx;
    uint32_t page, epoch;
    if (len != p->plan.page_size || off % p->plan.page_size || off / p->plan.page_size >= p->plan.pages) {
        snprintf(p->err, sizeof p->err, "page at %llu with length %u outside the plan", (unsigned long long)off, len);
        return -EPROTO;
    }
    memcpy(&page, d, 4);
    memcpy(&epoch, d + 4, 4);
    if (page != off / p->plan.page_size || epoch != p->open_epoch) {
        snprintf(p->err, sizeof p->err, "page %u of epoch %u delivered while epoch %u is open", page, epoch,
                 p->open_epoch);
        return -EPROTO;
    }
    memcpy(p->region + off, d, len);
    p->in_epoch++;
    return 0;
}

static int on_barrier(void *ctx, uint64_t epoch) {
    page_rx *p = ctx;
    if (epoch != p->open_epoch || p->in_epoch != p->planned[epoch]) {
        snprintf(p->err, sizeof p->err, "barrier %llu after %u pages; expected barrier %u after %u pages",
                 (unsigned long long)epoch, p->in_epoch, p->open_epoch,
                 epoch < p->plan.epochs ? p->planned[epoch] : 0);
        return -EPROTO;
    }
    p->open_epoch++;
    p->in_epoch = 0;
    return 0;
}

static int run_rz(const opts *o) {
    rz_identity self;
    uint8_t net[16];
    rz_identity peer;
    identity_named(&self, o->self);
    identity_named(&peer, o->peer);
    network_named(net, o->net);
    rz_config cfg;
    rz_config_init(&cfg, &self, net, peer.public_key);
    if (o->conns) cfg.conns_per_path = o->conns;
    if (o->max_auth) cfg.max_auth_failures = o->max_auth;
    if (o->chunk) cfg.chunk_size = o->chunk;
    cfg.cipher = (rz_cipher)o->cipher;
    rz_error e = {0, ""};
    rz_session *s = NULL;
    bool pages = strcmp(o->mode, "pages") == 0;
    pages_plan plan = {.pages = (uint32_t)(o->size / 65536), .page_size = 65536, .epochs = 6, .seed = o->seed};
    if (o->server) {
        const char *addrs[RZ_MAX_PATHS];
        char buf[256];
        snprintf(buf, sizeof buf, "%s", o->listen);
        uint32_t n = 0;
        for (char *t = strtok(buf, ","); t && n < RZ_MAX_PATHS; t = strtok(NULL, ",")) addrs[n++] = t;
        rz_listener *l;
        int rc = rz_listener_open(&l, addrs, n, o->port, NULL, &e);
        if (rc) return die("listen", rc, e.message);
        printf("LISTENING\n");
        fflush(stdout);
        rc = rz_accept(l, &cfg, (int)o->accept_timeout, &s, &e);
        if (rc) return die("accept", rc, e.message);
        double t0 = tnow();
        rz_stats st;
        if (!pages && o->bench) {
            int fd = open("/dev/null", O_WRONLY);
            uint64_t got = 0;
            rc = rz_recv_fd(s, fd, &got, &e);
            double secs = tnow() - t0;
            rz_session_stats(s, &st);
            if (rc) {
                die("receive", rc, e.message);
                rz_session_close(s); /* tells the peer at once */
                return 1;
            }
            result(o, got == o->size, got, secs, NULL, &st);
            rz_session_close(s);
            rz_listener_close(l);
            return got == o->size ? 0 : 3;
        }
        if (!pages) {
            int fd = memfd_create("rzpeer", 0);
            uint64_t got = 0;
            rc = rz_recv_fd(s, fd, &got, &e);
            double secs = tnow() - t0;
            rz_session_stats(s, &st);
            if (rc) {
                die("receive", rc, e.message);
                rz_session_close(s); /* tells the peer at once */
                return 1;
            }
            uint8_t *m = got ? mmap(NULL, got, PROT_READ, MAP_SHARED, fd, 0) : NULL;
            uint8_t *want = malloc(got ? got : 1);
            fill_pattern(want, got, o->seed);
            char h[65], hw[65];
            hash_hex(m, got, h);
            hash_hex(want, got, hw);
            int ok = got == o->size && strcmp(h, hw) == 0;
            result(o, ok, got, secs, h, &st);
            rz_session_close(s);
            rz_listener_close(l);
            return ok ? 0 : 3;
        }
        page_rx prx = {.plan = plan};
        prx.region = calloc(plan.pages, plan.page_size);
        prx.planned = calloc(plan.epochs, sizeof *prx.planned);
        uint32_t *list = malloc(plan.pages * sizeof *list);
        for (uint32_t ep = 0; ep < plan.epochs; ep++) prx.planned[ep] = plan_epoch(&plan, ep, list);
        do rc = rz_recv_pages(s, on_page, on_barrier, &prx, 60000, &e);
        while (rc == -ETIMEDOUT);
        double secs = tnow() - t0;
        rz_session_stats(s, &st);
        if (rc) {
            die("receive", rc, prx.err[0] ? prx.err : e.message);
            rz_session_close(s);
            return 1;
        }
        uint8_t *want = calloc(plan.pages, plan.page_size);
        plan_final(&plan, want);
        char h[65], hw[65];
        hash_hex(prx.region, (size_t)plan.pages * plan.page_size, h);
        hash_hex(want, (size_t)plan.pages * plan.page_size, hw);
        int ok = strcmp(h, hw) == 0 && prx.open_epoch == plan.epochs;
        result(o, ok, st.bytes_received, secs, h, &st);
        rz_session_close(s);
        rz_listener_close(l);
        return ok ? 0 : 3;
    }
    rz_path paths[RZ_MAX_PATHS];
    uint32_t n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", o->paths);
    for (char *t = strtok(buf, ","); t && n < RZ_MAX_PATHS; t = strtok(NULL, ",")) {
        char *eq = strchr(t, '=');
        if (!eq) return die("paths", -EINVAL, "need LOCAL=REMOTE");
        *eq = 0;
        memset(&paths[n], 0, sizeof paths[n]);
        snprintf(paths[n].local_addr, sizeof paths[n].local_addr, "%s", t);
        snprintf(paths[n].remote_addr, sizeof paths[n].remote_addr, "%s", eq + 1);
        paths[n].remote_port = o->port;
        n++;
    }
    int rc = rz_connect(&cfg, paths, n, &s, &e);
    if (rc) return die("connect", rc, e.message);
    double t0 = tnow();
    rz_stats st;
    if (!pages && o->bench) {
        size_t bs = 4 << 20;
        uint8_t *buf = malloc(bs);
        fill_pattern(buf, bs, o->seed);
        for (uint64_t left = o->size; left && !rc;) {
            size_t n = left < bs ? (size_t)left : bs;
            left -= n;
            rc = rz_send_bytes(s, buf, n, left == 0, &e);
        }
    } else if (!pages) {
        int fd = memfd_create("rzpeer-src", 0);
        if (ftruncate(fd, (off_t)o->size) != 0) return die("memfd", -errno, strerror(errno));
        uint8_t *m = mmap(NULL, o->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        fill_pattern(m, o->size, o->seed);
        munmap(m, o->size);
        t0 = tnow();
        rc = rz_send_fd(s, fd, o->size, &e);
        close(fd);
    } else {
        uint32_t *list = malloc(plan.pages * sizeof *list);
        uint8_t *page = malloc(plan.page_size);
        for (uint32_t ep = 0; ep < plan.epochs && !rc; ep++) {
            uint32_t cnt = plan_epoch(&plan, ep, list);
            for (uint32_t i = 0; i < cnt && !rc; i++) {
                plan_content(&plan, list[i], ep, page);
                rc = rz_send_page(s, (uint64_t)list[i] * plan.page_size, page, plan.page_size, &e);
            }
            if (!rc) rc = rz_send_barrier(s, ep, &e);
        }
        if (!rc) rc = rz_send_end(s, -1, &e);
    }
    double secs = tnow() - t0;
    rz_session_stats(s, &st);
    if (rc) return die("send", rc, e.message);
    result(o, 1, st.bytes_sent, secs, NULL, &st);
    rz_session_close(s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || sodium_init() < 0) {
        fprintf(stderr, "usage: rzpeer server|client [options]\n");
        return 2;
    }
    opts o = {.port = 7400, .size = 64u << 20, .seed = 1, .accept_timeout = 30000};
    o.server = strcmp(argv[1], "server") == 0;
    strcpy(o.transport, "rz");
    strcpy(o.mode, "stream");
    strcpy(o.net, "mycelium-test");
    strcpy(o.self, o.server ? "server" : "client");
    strcpy(o.peer, o.server ? "client" : "server");
    static struct option lo[] = {
        {"listen", 1, 0, 'l'}, {"paths", 1, 0, 'p'}, {"port", 1, 0, 'P'}, {"transport", 1, 0, 't'},
        {"mode", 1, 0, 'm'},   {"size", 1, 0, 's'},  {"seed", 1, 0, 'S'}, {"net", 1, 0, 'n'},
        {"self", 1, 0, 'i'},   {"peer", 1, 0, 'r'},  {"conns", 1, 0, 'c'}, {"max-auth", 1, 0, 'a'},
        {"cipher", 1, 0, 'C'}, {"chunk", 1, 0, 'k'}, {"accept-timeout", 1, 0, 'T'}, {"bench", 0, 0, 'B'},
        {0, 0, 0, 0}};
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'l': snprintf(o.listen, sizeof o.listen, "%s", optarg); break;
        case 'p': snprintf(o.paths, sizeof o.paths, "%s", optarg); break;
        case 'P': o.port = (uint16_t)atoi(optarg); break;
        case 't': snprintf(o.transport, sizeof o.transport, "%s", optarg); break;
        case 'm': snprintf(o.mode, sizeof o.mode, "%s", optarg); break;
        case 's': o.size = strtoull(optarg, NULL, 0); break;
        case 'S': o.seed = strtoull(optarg, NULL, 0); break;
        case 'n': snprintf(o.net, sizeof o.net, "%s", optarg); break;
        case 'i': snprintf(o.self, sizeof o.self, "%s", optarg); break;
        case 'r': snprintf(o.peer, sizeof o.peer, "%s", optarg); break;
        case 'c': o.conns = (uint32_t)atoi(optarg); break;
        case 'a': o.max_auth = (uint32_t)atoi(optarg); break;
        case 'C': o.cipher = strcmp(optarg, "aes") == 0 ? RZ_CIPHER_AES256GCM : RZ_CIPHER_XCHACHA20POLY1305; break;
        case 'k': o.chunk = (uint32_t)atoi(optarg); break;
        case 'T': o.accept_timeout = (uint32_t)atoi(optarg); break;
        case 'B': o.bench = true; break;
        default: return 2;
        }
    }
    if (strcmp(o.transport, "rz") != 0) return plain(&o);
    return run_rz(&o);
}
