/*
 * The I/O shell: sockets, threads, and the state that the pure parts decide on.
 *
 * Threads per session:
 *   - the caller's thread seals chunks (reads the fd, encrypts) and delivers received ones (writes the fd
 *     or calls the page callbacks), so crypto runs beside the I/O instead of inside it;
 *   - one I/O thread with epoll reads and verifies frames, acknowledges, schedules chunks onto
 *     connections, writes, and runs the timers (rates, pings, stall detection, reinjection);
 *   - on the connecting side, a dialer thread (re)connects connections with backoff and joins them.
 * One mutex guards the session; the I/O thread drops it around syscalls and decryption. Sealed frames
 * are reference counted because one may be in the middle of a write on two connections (original and
 * reinjection) when its acknowledgement frees the window slot.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WINDOW_SLOTS 4096u              /* protocol constant: the receiver refuses seq >= cumulative + this */
#define CTRL_CAP 65536u
#define RX_CAP (RZ_FRAME_HDR + RZ_MAX_CHUNK + RZ_TAG + 262144u)
#define USERQ_CAP 64u
#define TICK 0.010
#define PING_INTERVAL 0.200

typedef struct frame {
    uint32_t refs;
    uint32_t len;
    uint8_t data[];
} frame;

enum tx_state { TX_EMPTY = 0, TX_SEALING, TX_QUEUED, TX_ACKED };

typedef struct tx_slot {
    frame *f;
    uint32_t payload;
    uint8_t state;
    bool in_rtx;
    bool reinjected;
    uint64_t conn_mask; /* connections holding it (queued or written, not failed) */
    double assigned_at;
    double promised;
} tx_slot;

enum conn_state { CONN_DOWN = 0, CONN_UP };

typedef struct conn {
    int fd;
    int state;
    uint32_t id, path;
    int pending_fd;
    uint32_t pending_path;
    bool dialing;
    double next_retry, backoff;
    /* rx */
    uint8_t *rx;
    size_t rx_len;
    bool readable, writable;
    double last_rx, last_ping;
    rz_ack_range ack[RZ_ACK_MAX_RANGES];
    uint32_t ack_n;
    /* tx */
    uint8_t ctrl[CTRL_CAP];
    size_t ctrl_len, ctrl_off;
    frame *cur;
    uint64_t cur_seq;
    size_t cur_off;
    uint64_t q[USERQ_CAP];
    uint32_t q_bytes[USERQ_CAP]; /* frame length when queued: the slot may be gone when popped */
    uint32_t q_head, q_len;
    uint64_t user_bytes;
    uint64_t written;
    uint64_t outq;
    double rtt;
    rz_rate rate;
} conn;

struct rz_session {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rz_config cfg;
    rz_keys keys;
    rz_aead tx_aead, rx_aead;
    bool client;
    rz_path paths[RZ_MAX_PATHS];
    uint32_t path_count;
    uint32_t conn_count;
    conn *conns[RZ_MAX_CONNS];
    int epfd, evfd;
    bool io_sleeping;
    bool debug;
    double last_debug;
    int waiters; /* caller threads blocked on cv: the I/O thread skips futex wakeups when zero */
    bool need_sched; /* chunks were queued or requeued since the last scheduling round */
    pthread_t io_thread, dial_thread;
    bool has_dialer;
    bool stop;
    int failed;
    char fail_msg[256];
    /* tx */
    tx_slot *tx;
    uint64_t next_seq, next_unassigned, peer_cum;
    uint64_t window_used;
    uint64_t *rtx;
    uint32_t rtx_head, rtx_len;
    uint64_t ctrl_seq;
    uint64_t tx_epoch;
    uint64_t stream_offset;
    /* rx */
    rz_rxwin rxw;
    uint64_t cum_sent;
    bool cum_dirty;
    bool peer_closed;
    bool closing;
    bool abort_sent; /* CLOSE sent to the peer after a local failure */
    bool close_sent; /* final acknowledgements and CLOSE queued by rz_session_close */
    double all_down_since;
    uint8_t join_nonces[64][16];
    uint32_t join_nonce_n;
    rz_stats st;
    struct rz_listener *listener;
};

struct rz_listener {
    int fds[RZ_MAX_PATHS];
    uint32_t nfds;
    int evfd;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    struct pending {
        int fd;
        uint8_t msg[RZ_HS_MAX_MSG];
        size_t len;
        int err;
        char why[128];
    } pending[16];
    uint32_t pending_n;
    rz_session *sessions[64];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void abstime(struct timespec *ts, int timeout_ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void cond_init(pthread_cond_t *cv) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* Wait on the session condition; returns -ETIMEDOUT when the deadline passed. */
static int wait_until(rz_session *s, const struct timespec *deadline) {
    s->waiters++;
    int rc = 0;
    if (!deadline) pthread_cond_wait(&s->cv, &s->mu);
    else rc = pthread_cond_timedwait(&s->cv, &s->mu, deadline) == ETIMEDOUT ? -ETIMEDOUT : 0;
    s->waiters--;
    return rc;
}

static void frame_put(frame *f) {
    if (f && --f->refs == 0) free(f);
}

static void wake_io(rz_session *s) {
    if (s->io_sleeping) {
        uint64_t one = 1;
        ssize_t r = write(s->evfd, &one, sizeof one);
        (void)r;
    }
}

/* Record the first failure; every API call returns it from then on. */
static void session_fail(rz_session *s, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void session_fail(rz_session *s, int code, const char *fmt, ...) {
    if (s->failed) return;
    s->failed = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->fail_msg, sizeof s->fail_msg, fmt, ap);
    va_end(ap);
    pthread_cond_broadcast(&s->cv);
}

static int report(rz_session *s, rz_error *error) {
    return rz_fail(error, s->failed, "%s", s->fail_msg);
}

void rz_config_init(rz_config *c, const rz_identity *identity, const uint8_t network_id[16],
                    const uint8_t peer_public_key[32]) {
    memset(c, 0, sizeof *c);
    if (identity) c->identity = *identity;
    if (network_id) memcpy(c->network_id, network_id, 16);
    if (peer_public_key) memcpy(c->peer_public_key, peer_public_key, 32);
    c->conns_per_path = 2;
    c->chunk_size = 65536;
    c->window_bytes = 64u << 20;
    c->stall_timeout_ms = 1500;
    c->user_timeout_ms = 3000;
    c->connect_timeout_ms = 2000;
    c->handshake_timeout_ms = 3000;
    c->max_auth_failures = 8;
    c->notsent_lowat = 262144;
}

static void fill_defaults(rz_config *c) {
    if (!c->conns_per_path) c->conns_per_path = 2;
    if (!c->chunk_size) c->chunk_size = 65536;
    if (c->chunk_size > RZ_MAX_CHUNK) c->chunk_size = RZ_MAX_CHUNK;
    if (!c->window_bytes) c->window_bytes = 64u << 20;
    if (!c->stall_timeout_ms) c->stall_timeout_ms = 1500;
    if (!c->user_timeout_ms) c->user_timeout_ms = 2 * c->stall_timeout_ms;
    if (!c->connect_timeout_ms) c->connect_timeout_ms = 2000;
    if (!c->handshake_timeout_ms) c->handshake_timeout_ms = 3000;
    if (!c->max_auth_failures) c->max_auth_failures = 8;
    if (!c->notsent_lowat) c->notsent_lowat = 262144;
}

/* ------------------------------------------------------------------ sockets */

static int parse_addr(const char *text, uint16_t port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (!text || !*text) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, text, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof *a6;
        return 0;
    }
    return -EINVAL;
}

static void set_timeouts(int fd, uint32_t ms) {
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_exact(int fd, uint8_t *p, size_t n, size_t *got) {
    size_t have = 0;
    while (have < n) {
        ssize_t r = recv(fd, p + have, n - have, 0);
        if (r == 0) break;
        if (r < 0) {
            if (errno == EINTR) continue;
            if (got) *got = have;
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        }
        have += (size_t)r;
    }
    if (got) *got = have;
    return have == n ? 0 : -ECONNRESET;
}

/* Read one handshake message (preamble + body) into buf. */
static int read_hs_msg(int fd, uint8_t *buf, size_t *len, char *why, size_t why_len) {
    size_t got = 0;
    int rc = read_exact(fd, buf, RZ_PREAMBLE_LEN, &got);
    *len = got;
    if (rc) {
        snprintf(why, why_len, "connection %s after %zu bytes of handshake",
                 rc == -ETIMEDOUT ? "went silent" : "closed", got);
        return rc == -ETIMEDOUT ? -ETIMEDOUT : -EPROTO;
    }
    rz_preamble p;
    if (rz_preamble_decode(buf, RZ_PREAMBLE_LEN, &p) != 0) {
        snprintf(why, why_len, "handshake does not start with RHIZ or announces an impossible length");
        return -EPROTO;
    }
    rc = read_exact(fd, buf + RZ_PREAMBLE_LEN, p.body_len, &got);
    *len = RZ_PREAMBLE_LEN + got;
    if (rc) {
        snprintf(why, why_len, "handshake body cut short: %zu of %u bytes", got, p.body_len);
        return rc == -ETIMEDOUT ? -ETIMEDOUT : -EPROTO;
    }
    return 0;
}

static int dial(const rz_path *path, uint32_t timeout_ms, rz_error *error) {
    struct sockaddr_storage la, ra;
    socklen_t ll, rl;
    if (parse_addr(path->remote_addr, path->remote_port, &ra, &rl) != 0)
        return rz_fail(error, -EINVAL, "bad remote address '%s'", path->remote_addr);
    if (parse_addr(path->local_addr, 0, &la, &ll) != 0)
        return rz_fail(error, -EINVAL, "bad local address '%s'", path->local_addr);
    if (path->local_addr[0] && la.ss_family != ra.ss_family)
        return rz_fail(error, -EINVAL, "path %s -> %s mixes address families", path->local_addr, path->remote_addr);
    int fd = socket(ra.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return rz_fail(error, -errno, "socket: %s", strerror(errno));
    if (path->local_addr[0] && bind(fd, (struct sockaddr *)&la, ll) != 0) {
        int e = errno;
        close(fd);
        return rz_fail(error, -e, "bind %s: %s", path->local_addr, strerror(e));
    }
    if (connect(fd, (struct sockaddr *)&ra, rl) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return rz_fail(error, -e, "connect %s:%u: %s", path->remote_addr, path->remote_port, strerror(e));
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int pr;
    do pr = poll(&pfd, 1, (int)timeout_ms);
    while (pr < 0 && errno == EINTR);
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (pr == 0) {
        close(fd);
        return rz_fail(error, -ETIMEDOUT, "connect %s:%u from %s: timed out", path->remote_addr, path->remote_port,
                       path->local_addr);
    }
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) {
        close(fd);
        return rz_fail(error, -soerr, "connect %s:%u from %s: %s", path->remote_addr, path->remote_port,
                       path->local_addr, strerror(soerr));
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

static void tune_data_socket(int fd, const rz_config *c) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    unsigned ut = c->user_timeout_ms;
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut);
    int lowat = (int)c->notsent_lowat;
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
    struct timeval tv = {0, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* ------------------------------------------------------------------ connections */

static void rtx_push(rz_session *s, uint64_t seq) {
    tx_slot *t = &s->tx[seq & (WINDOW_SLOTS - 1)];
    if (t->in_rtx) return;
    t->in_rtx = true;
    s->rtx[(s->rtx_head + s->rtx_len) & (WINDOW_SLOTS - 1)] = seq;
    s->rtx_len++;
}

static tx_slot *tx_slot_of(rz_session *s, uint64_t seq) {
    if (seq < s->peer_cum || seq >= s->next_seq) return NULL;
    return &s->tx[seq & (WINDOW_SLOTS - 1)];
}

/* The connection is gone: give back every chunk it held that no other connection holds. */
static void conn_kill(rz_session *s, conn *c, const char *why) {
    if (c->state != CONN_UP) return;
    if (s->debug)
        fprintf(stderr, "rz %s conn %u path %u down: %s (auth failures %llu)\n", s->client ? "client" : "server", c->id,
                c->path, why, (unsigned long long)s->st.auth_failures);
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = CONN_DOWN;
    bool quiet = s->closing || s->peer_closed;
    if (!quiet) s->st.conns_failed++;
    /* Scan the whole window rather than trust a per-connection list: a chunk forgotten here would
     * never be delivered. At most WINDOW_SLOTS slots, once per connection failure. */
    uint64_t bit = 1ull << c->id;
    for (uint64_t seq = s->peer_cum; seq < s->next_seq; seq++) {
        tx_slot *t = &s->tx[seq & (WINDOW_SLOTS - 1)];
        if (t->state != TX_QUEUED || !(t->conn_mask & bit)) continue;
        t->conn_mask &= ~bit;
        if (t->conn_mask == 0) {
            rtx_push(s, seq);
            s->st.chunks_resent++;
            s->need_sched = true;
        }
    }
    c->q_len = c->q_head = 0;
    c->user_bytes = 0;
    frame_put(c->cur);
    c->cur = NULL;
    c->rx_len = 0;
    c->ctrl_len = c->ctrl_off = 0;
    c->ack_n = 0;
    c->outq = 0;
    c->readable = c->writable = false;
    s->st.conns_live--;
    double t = now_s();
    c->next_retry = t + c->backoff;
    c->backoff = c->backoff * 2 > 4.0 ? 4.0 : c->backoff * 2;
    pthread_cond_broadcast(&s->cv);
}

static void conn_install(rz_session *s, conn *c, int fd, uint32_t path) {
    if (c->state == CONN_UP) conn_kill(s, c, "replaced by a new connection");
    tune_data_socket(fd, &s->cfg);
    c->fd = fd;
    c->path = path < RZ_MAX_PATHS ? path : 0;
    c->state = CONN_UP;
    c->rx_len = 0;
    c->readable = true;
    c->writable = true;
    double t = now_s();
    c->last_rx = t;
    c->last_ping = t;
    c->written = 0;
    c->outq = 0;
    c->rtt = 0.001;
    rz_rate_init(&c->rate, 50e6);
    c->backoff = 0.2;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev);
    s->st.conns_live++;
    s->st.conns_joined++;
    s->all_down_since = 0;
    pthread_cond_broadcast(&s->cv);
}

/* Append a sealed control frame to the connection's control queue. */
static bool ctrl_frame(rz_session *s, conn *c, uint8_t type, const uint8_t *body, uint32_t len) {
    size_t need = RZ_FRAME_HDR + len + RZ_TAG;
    if (c->state != CONN_UP) return false;
    if (c->ctrl_off > 0 && c->ctrl_off == c->ctrl_len) c->ctrl_off = c->ctrl_len = 0;
    if (c->ctrl_len + need > CTRL_CAP) {
        if (c->ctrl_off == 0) return false;
        memmove(c->ctrl, c->ctrl + c->ctrl_off, c->ctrl_len - c->ctrl_off);
        c->ctrl_len -= c->ctrl_off;
        c->ctrl_off = 0;
        if (c->ctrl_len + need > CTRL_CAP) return false;
    }
    rz_frame_hdr h = {.type = type, .body_len = len + RZ_TAG, .seq = s->ctrl_seq++};
    uint8_t *p = c->ctrl + c->ctrl_len;
    rz_frame_hdr_encode(p, &h);
    rz_aead_seal(&s->tx_aead, p + RZ_FRAME_HDR, body, len, p, RZ_FRAME_HDR, h.seq, RZ_NONCE_CONTROL);
    c->ctrl_len += need;
    return true;
}

static void flush_acks(rz_session *s, conn *c, bool with_cum) {
    if (c->ack_n == 0 && !with_cum) return;
    rz_ack a;
    a.cumulative = s->rxw.cumulative;
    a.range_count = c->ack_n;
    memcpy(a.ranges, c->ack, c->ack_n * sizeof c->ack[0]);
    uint8_t body[RZ_ACK_FIXED + RZ_ACK_MAX_RANGES * RZ_ACK_RANGE];
    size_t n = rz_ack_encode(body, &a);
    if (ctrl_frame(s, c, RZ_FRAME_ACK, body, (uint32_t)n)) {
        c->ack_n = 0;
        if (a.cumulative > s->cum_sent) s->cum_sent = a.cumulative;
    }
}

static void note_received(rz_session *s, conn *c, uint64_t seq) {
    if (c->ack_n > 0) {
        rz_ack_range *r = &c->ack[c->ack_n - 1];
        if (r->start + r->count == seq && r->count < (1u << 20)) {
            r->count++;
            return;
        }
    }
    if (c->ack_n == RZ_ACK_MAX_RANGES) flush_acks(s, c, false);
    if (c->ack_n == RZ_ACK_MAX_RANGES) return; /* control queue full: the cumulative ack will cover it */
    c->ack[c->ack_n].start = seq;
    c->ack[c->ack_n].count = 1;
    c->ack_n++;
}

static void tx_acked(rz_session *s, uint64_t seq) {
    tx_slot *t = tx_slot_of(s, seq);
    if (!t || t->state != TX_QUEUED) return;
    t->state = TX_ACKED;
    frame_put(t->f);
    t->f = NULL;
}

static void handle_ack(rz_session *s, const rz_ack *a) {
    for (uint32_t i = 0; i < a->range_count; i++) {
        uint64_t lo = a->ranges[i].start, hi = lo + a->ranges[i].count;
        if (lo < s->peer_cum) lo = s->peer_cum;
        if (hi > s->next_seq) hi = s->next_seq;
        for (uint64_t q = lo; q < hi; q++) tx_acked(s, q);
    }
    if (a->cumulative > s->next_seq) {
        session_fail(s, -EPROTO, "peer acknowledged chunk %llu that was never sent",
                     (unsigned long long)a->cumulative);
        return;
    }
    if (a->cumulative > s->peer_cum) {
        for (uint64_t q = s->peer_cum; q < a->cumulative; q++) {
            tx_slot *t = &s->tx[q & (WINDOW_SLOTS - 1)];
            if (t->state == TX_QUEUED) {
                frame_put(t->f);
                t->f = NULL;
            }
            s->window_used -= t->payload;
            t->state = TX_EMPTY;
            t->in_rtx = false;
        }
        s->peer_cum = a->cumulative;
        if (s->next_unassigned < s->peer_cum) s->next_unassigned = s->peer_cum;
        if (s->waiters) pthread_cond_broadcast(&s->cv);
    }
}

static void auth_failure(rz_session *s, conn *c, const char *what) {
    s->st.auth_failures++;
    if (s->st.auth_failures >= s->cfg.max_auth_failures)
        session_fail(s, -EBADMSG,
                     "integrity failure: %llu frames failed authentication (last: %s on path %u); data is being "
                     "tampered with on the wire, refusing to continue",
                     (unsigned long long)s->st.auth_failures, what, c->path);
    conn_kill(s, c, what);
}

/* Process complete frames in c->rx. Called with the lock held; drops it to decrypt. */
static void conn_parse(rz_session *s, conn *c) {
    size_t off = 0;
    while (c->state == CONN_UP && !s->failed) {
        rz_frame_hdr h;
        int rc = rz_frame_hdr_decode(c->rx + off, c->rx_len - off, RZ_MAX_CHUNK + RZ_TAG, &h);
        if (rc == -EAGAIN) break;
        if (rc) {
            auth_failure(s, c, "malformed frame header");
            return;
        }
        if (c->rx_len - off < RZ_FRAME_HDR + (size_t)h.body_len) break;
        const uint8_t *hdr = c->rx + off;
        const uint8_t *body = hdr + RZ_FRAME_HDR;
        uint32_t plain_len = h.body_len - RZ_TAG;
        if (rz_frame_is_chunk(h.type)) {
            if (rz_rxwin_has(&s->rxw, h.seq)) {
                /* Already have it (reinjection, resend after a path failure, or a replay): no
                 * need to decrypt, but acknowledge so the sender stops resending. */
                s->st.duplicates_dropped++;
                note_received(s, c, h.seq);
            } else {
                uint8_t *plain = malloc(plain_len ? plain_len : 1);
                if (!plain) {
                    session_fail(s, -ENOMEM, "out of memory for a %u-byte chunk", plain_len);
                    return;
                }
                pthread_mutex_unlock(&s->mu);
                rc = rz_aead_open(&s->rx_aead, plain, body, h.body_len, hdr, RZ_FRAME_HDR, h.seq, RZ_NONCE_DATA);
                pthread_mutex_lock(&s->mu);
                if (rc) {
                    free(plain);
                    auth_failure(s, c, "chunk failed authentication");
                    return;
                }
                rc = rz_rxwin_insert(&s->rxw, h.seq, h.type, h.arg0, h.arg1, plain, plain_len);
                if (rc < 0) {
                    free(plain);
                    session_fail(s, -EPROTO, "protocol violation: chunk %llu (type %u) outside the window, for a committed epoch, or after END",
                                 (unsigned long long)h.seq, h.type);
                    return;
                }
                if (rc == 0) {
                    free(plain);
                    s->st.duplicates_dropped++;
                } else {
                    s->st.chunks_received++;
                    /* A stream reader only waits for the chunk at the cumulative point. */
                    if (s->waiters && (h.seq == s->rxw.cumulative || h.type != RZ_FRAME_DATA))
                        pthread_cond_broadcast(&s->cv);
                }
                note_received(s, c, h.seq);
            }
        } else {
            uint8_t plain[RZ_ACK_FIXED + RZ_ACK_MAX_RANGES * RZ_ACK_RANGE + 16];
            if (plain_len > sizeof plain ||
                rz_aead_open(&s->rx_aead, plain, body, h.body_len, hdr, RZ_FRAME_HDR, h.seq, RZ_NONCE_CONTROL)) {
                auth_failure(s, c, "control frame failed authentication");
                return;
            }
            if (h.type == RZ_FRAME_ACK) {
                rz_ack a;
                if (rz_ack_decode(plain, plain_len, &a) != 0) {
                    session_fail(s, -EPROTO, "protocol violation: malformed acknowledgement");
                    return;
                }
                handle_ack(s, &a);
            } else if (h.type == RZ_FRAME_PING) {
                ctrl_frame(s, c, RZ_FRAME_PONG, plain, 8);
            } else if (h.type == RZ_FRAME_CLOSE) {
                s->peer_closed = true;
                /* Closing with our data undelivered means the peer gave up (its session failed). */
                if (!s->closing && s->peer_cum < s->next_seq)
                    session_fail(s, -ECONNABORTED, "peer closed the session with %llu chunks undelivered",
                                 (unsigned long long)(s->next_seq - s->peer_cum));
                pthread_cond_broadcast(&s->cv);
            }
        }
        off += RZ_FRAME_HDR + h.body_len;
    }
    if (c->state != CONN_UP) return;
    if (off) {
        memmove(c->rx, c->rx + off, c->rx_len - off);
        c->rx_len -= off;
    }
}

static void conn_read(rz_session *s, conn *c) {
    for (int rounds = 0; rounds < 8 && c->state == CONN_UP && c->readable; rounds++) {
        int fd = c->fd;
        /* A failed session parses nothing more (conn_parse stops), so its input is dropped instead of
         * filling the buffer: a full buffer would make recv() return 0, read as "closed by peer",
         * and the connection would die (with a reset) before it carried our CLOSE. */
        if (s->failed) c->rx_len = 0;
        size_t room = RX_CAP - c->rx_len;
        pthread_mutex_unlock(&s->mu);
        ssize_t r = recv(fd, c->rx + c->rx_len, room, 0);
        int e = errno;
        pthread_mutex_lock(&s->mu);
        if (c->state != CONN_UP || c->fd != fd) return;
        if (r > 0) {
            c->rx_len += (size_t)r;
            c->last_rx = now_s();
            conn_parse(s, c);
        } else if (r == 0) {
            conn_kill(s, c, "closed by peer");
            return;
        } else if (e == EAGAIN || e == EWOULDBLOCK) {
            c->readable = false;
        } else if (e != EINTR) {
            conn_kill(s, c, strerror(e));
            return;
        }
    }
}

static void conn_write(rz_session *s, conn *c) {
    while (c->state == CONN_UP && c->writable) {
        const uint8_t *p;
        size_t n;
        bool data = false;
        if (c->cur) {
            p = c->cur->data + c->cur_off;
            n = c->cur->len - c->cur_off;
            data = true;
        } else if (c->ctrl_off < c->ctrl_len) {
            p = c->ctrl + c->ctrl_off;
            n = c->ctrl_len - c->ctrl_off;
        } else if (c->q_len && !s->closing && !s->failed) {
            /* A closing or failed session starts no new data frame: its CLOSE must not wait behind a
             * backlog that will not be delivered anyway (callers flush first when it matters). */
            uint64_t seq = c->q[c->q_head];
            c->user_bytes -= c->q_bytes[c->q_head];
            c->q_head = (c->q_head + 1) % USERQ_CAP;
            c->q_len--;
            tx_slot *t = tx_slot_of(s, seq);
            if (!t || t->state != TX_QUEUED || !t->f) continue;
            c->cur = t->f;
            c->cur->refs++;
            c->cur_seq = seq;
            c->cur_off = 0;
            continue;
        } else {
            break;
        }
        int fd = c->fd;
        frame *hold = data ? c->cur : NULL;
        if (hold) hold->refs++;
        /* Control bytes are copied out so the buffer can grow while we write without the lock. */
        uint8_t tmp[4096];
        if (!data) {
            if (n > sizeof tmp) n = sizeof tmp;
            memcpy(tmp, p, n);
            p = tmp;
        }
        pthread_mutex_unlock(&s->mu);
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        int e = errno;
        pthread_mutex_lock(&s->mu);
        frame_put(hold);
        if (c->state != CONN_UP || c->fd != fd) return;
        if (w < 0) {
            if (e == EAGAIN || e == EWOULDBLOCK) c->writable = false;
            else if (e != EINTR) conn_kill(s, c, strerror(e));
            continue;
        }
        c->written += (size_t)w;
        s->st.per_path_bytes[c->path] += (size_t)w;
        if (data) {
            c->cur_off += (size_t)w;
            if (c->cur_off == c->cur->len) {
                frame_put(c->cur);
                c->cur = NULL;
            }
        } else {
            c->ctrl_off += (size_t)w;
        }
    }
}

/* ------------------------------------------------------------------ scheduling */

static uint32_t sched_view(rz_session *s, rz_sched_conn *v) {
    for (uint32_t i = 0; i < s->conn_count; i++) {
        conn *c = s->conns[i];
        v[i].usable = c->state == CONN_UP;
        v[i].rate = c->rate.rate;
        v[i].rtt = c->rtt;
        v[i].queued = c->outq + c->user_bytes + (c->cur ? c->cur->len - c->cur_off : 0);
    }
    return s->conn_count;
}

static void assign(conn *c, rz_sched_conn *v, uint64_t seq, tx_slot *t, double eta, bool front) {
    uint32_t at;
    if (front) {
        c->q_head = (c->q_head + USERQ_CAP - 1) % USERQ_CAP;
        at = c->q_head;
    } else {
        at = (c->q_head + c->q_len) % USERQ_CAP;
    }
    c->q[at] = seq;
    c->q_bytes[at] = t->f->len;
    c->q_len++;
    c->user_bytes += t->f->len;
    v[c->id].queued += t->f->len;
    t->conn_mask |= 1ull << c->id;
    t->assigned_at = now_s();
    t->promised = eta;
}

/* Earliest-arrival assignment; stops when the best connection already has enough queued in user
 * space (its kernel buffer is full), because any other connection would deliver later. */
static void schedule(rz_session *s) {
    rz_sched_conn v[RZ_MAX_CONNS];
    uint32_t n = sched_view(s, v);
    const uint64_t user_limit = 2ull * (RZ_FRAME_HDR + s->cfg.chunk_size + RZ_TAG);
    s->need_sched = false;
    for (;;) {
        uint64_t seq;
        bool from_rtx = s->rtx_len > 0;
        if (from_rtx) seq = s->rtx[s->rtx_head];
        else if (s->next_unassigned < s->next_seq && s->tx[s->next_unassigned & (WINDOW_SLOTS - 1)].state != TX_SEALING)
            seq = s->next_unassigned;
        else break;
        tx_slot *t = tx_slot_of(s, seq);
        if (!t || t->state != TX_QUEUED || !t->f) {
            if (from_rtx) {
                if (t) t->in_rtx = false;
                s->rtx_head = (s->rtx_head + 1) & (WINDOW_SLOTS - 1);
                s->rtx_len--;
            } else {
                s->next_unassigned++;
            }
            continue;
        }
        double eta;
        int pick = rz_sched_pick(v, n, t->f->len, t->conn_mask, &eta);
        if (pick < 0) break;
        conn *c = s->conns[pick];
        if (c->user_bytes >= user_limit || c->q_len >= USERQ_CAP - 1) break;
        if (from_rtx) {
            t->in_rtx = false;
            s->rtx_head = (s->rtx_head + 1) & (WINDOW_SLOTS - 1);
            s->rtx_len--;
        } else {
            s->next_unassigned++;
            s->st.chunks_sent++;
            s->st.bytes_sent += t->payload;
        }
        assign(c, v, seq, t, eta, from_rtx);
    }
}

/* A chunk near the head of the line that is late on its connection goes again on a faster one; the
 * receiver drops whichever copy arrives second. Only the oldest few chunks are considered: they are
 * the ones holding back ordered delivery and the window. */
static void reinject(rz_session *s, double t_now) {
    rz_sched_conn v[RZ_MAX_CONNS];
    uint32_t n = sched_view(s, v);
    uint32_t looked = 0;
    for (uint64_t q = s->peer_cum; q < s->next_unassigned && looked < 16; q++) {
        tx_slot *t = &s->tx[q & (WINDOW_SLOTS - 1)];
        if (t->state != TX_QUEUED || !t->f || t->conn_mask == 0) continue;
        looked++;
        if (t->reinjected) continue;
        double other;
        int pick = rz_sched_pick(v, n, t->f->len, t->conn_mask, &other);
        if (pick < 0) continue;
        if (!rz_sched_should_reinject(t_now - t->assigned_at, t->promised, other)) continue;
        conn *c = s->conns[pick];
        if (c->q_len >= USERQ_CAP - 1) continue;
        t->reinjected = true;
        s->st.chunks_reinjected++;
        double keep_at = t->assigned_at, keep_promise = t->promised;
        assign(c, v, q, t, other, true);
        t->assigned_at = keep_at;
        t->promised = keep_promise;
    }
}

static void sample(rz_session *s, conn *c, double t_now) {
    int outq = 0;
    if (ioctl(c->fd, SIOCOUTQ, &outq) == 0 && outq >= 0) c->outq = (uint64_t)outq;
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 && ti.tcpi_rtt > 0) c->rtt = ti.tcpi_rtt * 1e-6;
    uint64_t acked = c->written > c->outq ? c->written - c->outq : 0;
    bool backlogged = c->outq >= (uint64_t)s->cfg.chunk_size;
    rz_rate_sample(&c->rate, t_now, acked, backlogged);
}

static void refresh_outq(rz_session *s) {
    for (uint32_t i = 0; i < s->conn_count; i++) {
        conn *c = s->conns[i];
        if (c->state != CONN_UP) continue;
        int outq = 0;
        if (ioctl(c->fd, SIOCOUTQ, &outq) == 0 && outq >= 0) c->outq = (uint64_t)outq;
    }
}

static void tick(rz_session *s, double t_now) {
    uint32_t live = 0;
    for (uint32_t i = 0; i < s->conn_count; i++) {
        conn *c = s->conns[i];
        if (c->pending_fd >= 0) {
            int fd = c->pending_fd;
            c->pending_fd = -1;
            conn_install(s, c, fd, c->pending_path);
        }
        if (c->state != CONN_UP) continue;
        if (t_now - c->last_rx > s->cfg.stall_timeout_ms / 1000.0) {
            conn_kill(s, c, "stalled");
            continue;
        }
        live++;
        sample(s, c, t_now);
        if (t_now - c->last_ping >= PING_INTERVAL) {
            uint8_t ts[8];
            rz_put64(ts, (uint64_t)(t_now * 1e6));
            if (ctrl_frame(s, c, RZ_FRAME_PING, ts, 8)) c->last_ping = t_now;
        }
    }
    if (live == 0 && !s->closing) {
        if (s->all_down_since == 0) s->all_down_since = t_now;
        double limit = 4.0 * s->cfg.stall_timeout_ms / 1000.0;
        if (limit < 10.0) limit = 10.0;
        if (t_now - s->all_down_since > limit)
            session_fail(s, -ENETDOWN, "every path is down: no connection for %.0f s", limit);
    }
    reinject(s, t_now);
    if (s->debug && t_now - s->last_debug > 0.5) {
        s->last_debug = t_now;
        for (uint32_t i = 0; i < s->conn_count; i++) {
            conn *c = s->conns[i];
            if (c->state != CONN_UP) continue;
            fprintf(stderr, "rz %.2f conn %u path %u rate %.1f Mbit/s rtt %.2f ms outq %llu userq %llu written %llu\n",
                    t_now, c->id, c->path, c->rate.rate * 8 / 1e6, c->rtt * 1e3, (unsigned long long)c->outq,
                    (unsigned long long)c->user_bytes, (unsigned long long)c->written);
        }
    }
}

static void *io_main(void *arg) {
    rz_session *s = arg;
    struct epoll_event evs[64];
    double next_tick = 0;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        bool busy = s->need_sched || s->cum_dirty || (s->closing && !s->close_sent);
        for (uint32_t i = 0; i < s->conn_count; i++) {
            conn *c = s->conns[i];
            if (c->state == CONN_UP && (c->readable || (c->writable && (c->cur || c->q_len || c->ctrl_off < c->ctrl_len))))
                busy = true;
            if (c->pending_fd >= 0) busy = true;
        }
        s->io_sleeping = !busy;
        pthread_mutex_unlock(&s->mu);
        int timeout = busy ? 0 : (int)(TICK * 1000);
        int n = epoll_wait(s->epfd, evs, 64, timeout);
        pthread_mutex_lock(&s->mu);
        s->io_sleeping = false;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t v;
                ssize_t r = read(s->evfd, &v, sizeof v);
                (void)r;
                continue;
            }
            conn *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) c->readable = true;
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) c->writable = true;
        }
        double t_now = now_s();
        bool ticked = false;
        if (t_now >= next_tick) {
            tick(s, t_now);
            next_tick = t_now + TICK;
            ticked = true;
        }
        if (s->closing && !s->close_sent) {
            for (uint32_t i = 0; i < s->conn_count; i++) {
                conn *c = s->conns[i];
                if (c->state != CONN_UP) continue;
                flush_acks(s, c, true); /* before CLOSE on the same connection: the peer sees delivery first */
                ctrl_frame(s, c, RZ_FRAME_CLOSE, NULL, 0);
            }
            s->close_sent = true;
            s->abort_sent = true;
            pthread_cond_broadcast(&s->cv);
        }
        if (s->failed && !s->abort_sent) {
            /* Tell the peer at once rather than let it retry until every path times out. */
            s->abort_sent = true;
            for (uint32_t i = 0; i < s->conn_count; i++) ctrl_frame(s, s->conns[i], RZ_FRAME_CLOSE, NULL, 0);
        }
        for (uint32_t i = 0; i < s->conn_count; i++)
            if (s->conns[i]->state == CONN_UP) conn_read(s, s->conns[i]);
        /* Acknowledge what this round verified; send the cumulative point when delivery moved. */
        bool cum = s->rxw.cumulative != s->cum_sent && (s->cum_dirty || ticked);
        conn *cum_conn = NULL;
        for (uint32_t i = 0; i < s->conn_count; i++) {
            conn *c = s->conns[i];
            if (c->state != CONN_UP) continue;
            if (!cum_conn || c->ctrl_len - c->ctrl_off < cum_conn->ctrl_len - cum_conn->ctrl_off) cum_conn = c;
            flush_acks(s, c, false);
        }
        if (cum && cum_conn) flush_acks(s, cum_conn, true);
        if (s->rxw.cumulative == s->cum_sent || !cum_conn) s->cum_dirty = false;
        refresh_outq(s);
        schedule(s);
        for (uint32_t i = 0; i < s->conn_count; i++)
            if (s->conns[i]->state == CONN_UP) conn_write(s, s->conns[i]);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------------ dialer (connecting side) */

static int join_over(rz_session *s, conn *c, uint32_t path, rz_error *error) {
    int fd = dial(&s->paths[path], s->cfg.connect_timeout_ms, error);
    if (fd < 0) return fd;
    set_timeouts(fd, s->cfg.handshake_timeout_ms);
    uint8_t join[RZ_PREAMBLE_LEN + RZ_JOIN_BODY], reply[RZ_HS_MAX_MSG];
    size_t jl = rz_join_make(&s->keys, c->id, path, join), rl = 0;
    char why[128];
    int rc = write_all(fd, join, jl);
    if (!rc) rc = read_hs_msg(fd, reply, &rl, why, sizeof why);
    if (rc) {
        close(fd);
        return rz_fail(error, rc, "join over path %u failed: %s", path, rc == -ETIMEDOUT ? "timed out" : "closed");
    }
    rc = rz_join_ok_check(&s->keys, join, reply, rl, c->id, error);
    if (rc) {
        close(fd);
        return rc;
    }
    return fd;
}

static void *dial_main(void *arg) {
    rz_session *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop && !s->closing) {
        double t_now = now_s();
        conn *todo = NULL;
        for (uint32_t i = 0; i < s->conn_count; i++) {
            conn *c = s->conns[i];
            if (c->state == CONN_DOWN && c->pending_fd < 0 && t_now >= c->next_retry) {
                todo = c;
                break;
            }
        }
        if (!todo || s->failed) {
            struct timespec ts;
            abstime(&ts, 50);
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            continue;
        }
        uint32_t path = todo->path;
        pthread_mutex_unlock(&s->mu);
        rz_error err;
        int fd = join_over(s, todo, path, &err);
        pthread_mutex_lock(&s->mu);
        if (fd >= 0) {
            if (s->stop || s->closing) {
                close(fd);
                break;
            }
            todo->pending_fd = fd;
            todo->pending_path = path;
            wake_io(s);
        } else {
            if (s->debug) fprintf(stderr, "rz client conn %u path %u join failed: %s\n", todo->id, path, err.message);
            if (fd == -ECONNABORTED) {
                session_fail(s, fd, "%s", err.message); /* the peer says the session is over */
            } else {
                todo->next_retry = now_s() + todo->backoff;
                todo->backoff = todo->backoff * 2 > 4.0 ? 4.0 : todo->backoff * 2;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ------------------------------------------------------------------ session lifecycle */

static void session_free(rz_session *s) {
    if (!s) return;
    for (uint32_t i = 0; i < RZ_MAX_CONNS; i++) {
        conn *c = s->conns[i];
        if (!c) continue;
        if (c->fd >= 0) close(c->fd);
        if (c->pending_fd >= 0) close(c->pending_fd);
        frame_put(c->cur);
        free(c->rx);
        free(c);
    }
    if (s->tx) {
        for (uint32_t i = 0; i < WINDOW_SLOTS; i++) frame_put(s->tx[i].f);
        free(s->tx);
    }
    free(s->rtx);
    rz_rxwin_free(&s->rxw);
    rz_aead_free(&s->tx_aead);
    rz_aead_free(&s->rx_aead);
    if (s->epfd >= 0) close(s->epfd);
    if (s->evfd >= 0) close(s->evfd);
    sodium_memzero(&s->keys, sizeof s->keys);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static int session_new(const rz_config *cfg, const rz_keys *keys, bool client, uint32_t conn_count,
                       rz_session **out, rz_error *error) {
    rz_session *s = calloc(1, sizeof *s);
    if (!s) return rz_fail(error, -ENOMEM, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    cond_init(&s->cv);
    s->epfd = s->evfd = -1;
    s->cfg = *cfg;
    fill_defaults(&s->cfg);
    s->keys = *keys;
    s->client = client;
    s->conn_count = conn_count;
    s->debug = getenv("RZ_DEBUG") != NULL;
    s->st.cipher = (uint32_t)keys->cipher;
    int rc = rz_aead_init(&s->tx_aead, keys->cipher, keys->tx);
    if (!rc) rc = rz_aead_init(&s->rx_aead, keys->cipher, keys->rx);
    if (!rc) rc = rz_rxwin_init(&s->rxw, WINDOW_SLOTS);
    s->tx = calloc(WINDOW_SLOTS, sizeof *s->tx);
    s->rtx = calloc(WINDOW_SLOTS, sizeof *s->rtx);
    if (!rc && (!s->tx || !s->rtx)) rc = -ENOMEM;
    for (uint32_t i = 0; !rc && i < RZ_MAX_CONNS; i++) {
        conn *c = calloc(1, sizeof *c);
        if (!c) { rc = -ENOMEM; break; }
        s->conns[i] = c;
        c->fd = c->pending_fd = -1;
        c->id = i;
        c->backoff = 0.2;
        c->rx = malloc(RX_CAP);
        if (!c->rx) rc = -ENOMEM;
    }
    if (!rc) {
        s->epfd = epoll_create1(EPOLL_CLOEXEC);
        s->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->epfd < 0 || s->evfd < 0) rc = -errno;
    }
    if (!rc) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->evfd, &ev);
    }
    if (rc) {
        session_free(s);
        return rz_fail(error, rc, "cannot create session: %s", strerror(-rc));
    }
    *out = s;
    return 0;
}

static int session_start(rz_session *s, rz_error *error) {
    if (pthread_create(&s->io_thread, NULL, io_main, s) != 0) return rz_fail(error, -EAGAIN, "cannot start I/O thread");
    if (s->client) {
        if (pthread_create(&s->dial_thread, NULL, dial_main, s) != 0) {
            pthread_mutex_lock(&s->mu);
            s->stop = true;
            pthread_mutex_unlock(&s->mu);
            pthread_join(s->io_thread, NULL);
            return rz_fail(error, -EAGAIN, "cannot start dialer thread");
        }
        s->has_dialer = true;
    }
    return 0;
}

int rz_connect(const rz_config *config, const rz_path *paths, uint32_t path_count, rz_session **out,
               rz_error *error) {
    if (!config || !paths || !out || path_count == 0 || path_count > RZ_MAX_PATHS)
        return rz_fail(error, -EINVAL, "rz_connect: need 1..%u paths", RZ_MAX_PATHS);
    rz_config cfg = *config;
    fill_defaults(&cfg);
    uint32_t total = path_count * cfg.conns_per_path;
    if (total > RZ_MAX_CONNS || total > 64)
        return rz_fail(error, -EINVAL, "%u paths x %u connections exceeds %u", path_count, cfg.conns_per_path,
                       RZ_MAX_CONNS);
    rz_error last = {0, ""};
    int fd = -1;
    uint32_t hello_path = 0;
    rz_hs_client hs;
    rz_keys keys;
    for (uint32_t p = 0; p < path_count && fd < 0; p++) {
        fd = dial(&paths[p], cfg.connect_timeout_ms, &last);
        if (fd < 0) continue;
        hello_path = p;
        set_timeouts(fd, cfg.handshake_timeout_ms);
        uint8_t hello[RZ_PREAMBLE_LEN + RZ_HELLO_BODY], reply[RZ_HS_MAX_MSG], proof[RZ_HS_MAX_MSG];
        size_t hl, rl = 0, pl = 0;
        char why[128];
        rz_hs_client_hello(&hs, &cfg, hello, &hl);
        int rc = write_all(fd, hello, hl);
        if (!rc) rc = read_hs_msg(fd, reply, &rl, why, sizeof why);
        if (rc) {
            close(fd);
            if (rc == -EPROTO)
                return rz_fail(error, -EPROTO, "malformed handshake from %s:%u: %s", paths[p].remote_addr,
                               paths[p].remote_port, why);
            rz_fail(&last, rc, "handshake with %s:%u: %s", paths[p].remote_addr, paths[p].remote_port, why);
            fd = -1;
            continue;
        }
        rc = rz_hs_client_finish(&hs, &cfg, reply, rl, &keys, proof, &pl, error);
        if (pl) {
            int wrc = write_all(fd, proof, pl);
            if (!rc && wrc) rc = rz_fail(error, wrc, "sending the handshake proof: %s", strerror(-wrc));
        }
        if (!rc) {
            /* The server's verdict on our proof: ACCEPT, or a REJECT that says why. */
            rc = read_hs_msg(fd, reply, &rl, why, sizeof why);
            if (rc) rz_fail(error, rc, "handshake with %s:%u: %s", paths[p].remote_addr, paths[p].remote_port, why);
            else rc = rz_hs_client_verdict(reply, rl, error);
        }
        if (rc) {
            close(fd);
            return rc; /* the peer answered: no other path will change its mind */
        }
    }
    if (fd < 0) return rz_fail(error, last.code ? last.code : -ENETUNREACH, "no path reached the peer: %s", last.message);
    rz_session *s;
    int rc = session_new(&cfg, &keys, true, total, &s, error);
    if (rc) {
        close(fd);
        return rc;
    }
    s->path_count = path_count;
    memcpy(s->paths, paths, path_count * sizeof *paths);
    /* Connection 0 is the handshake connection; the rest are spread over the paths in order. */
    s->conns[0]->path = hello_path;
    uint32_t id = 1;
    for (uint32_t p = 0; p < path_count; p++)
        for (uint32_t k = 0; k < cfg.conns_per_path; k++) {
            if (p == hello_path && k == 0) continue;
            s->conns[id++]->path = p;
        }
    conn_install(s, s->conns[0], fd, hello_path);
    rc = session_start(s, error);
    if (rc) {
        session_free(s);
        return rc;
    }
    rz_session_wait_conns(s, total, (int)cfg.connect_timeout_ms);
    *out = s;
    return 0;
}

void rz_session_shutdown(rz_session *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    session_fail(s, -ESHUTDOWN, "the session was closed locally");
    wake_io(s);
    pthread_mutex_unlock(&s->mu);
}

void rz_session_close(rz_session *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    /* The I/O thread queues the last acknowledgements and CLOSE itself: control buffers belong to it
     * (it writes from them with the lock dropped). */
    s->closing = true;
    uint64_t wake = 1;
    ssize_t wr = write(s->evfd, &wake, sizeof wake);
    (void)wr;
    pthread_cond_broadcast(&s->cv);
    /* Linger until our control frames are out and the peer said CLOSE (or every connection is gone).
     * A failed session (rz_session_shutdown included) waits for nothing from the peer, but still
     * until its CLOSE is written: otherwise the peer learns of the end only when its connections
     * die, which for the accepting side (no dialer to be refused) is the all-paths-down timeout. */
    struct timespec dl;
    abstime(&dl, 2000);
    for (;;) {
        bool pending = !s->close_sent;
        for (uint32_t i = 0; i < s->conn_count; i++) {
            conn *c = s->conns[i];
            if (c->state != CONN_UP) continue;
            if (c->ctrl_off < c->ctrl_len || c->cur) pending = true;
            /* Written is not enough: closing a socket that holds unread input sends a reset, and
             * the reset drops whatever the kernel had not sent yet, our CLOSE included. Wait until
             * the peer's TCP has it all. */
            int outq = 0;
            if (ioctl(c->fd, SIOCOUTQ, &outq) == 0 && outq > 0) pending = true;
        }
        if ((!pending && (s->peer_closed || s->failed)) || s->st.conns_live == 0) break;
        struct timespec step;
        abstime(&step, 10);
        pthread_cond_timedwait(&s->cv, &s->mu, &step);
        struct timespec nowts;
        clock_gettime(CLOCK_MONOTONIC, &nowts);
        if (nowts.tv_sec > dl.tv_sec || (nowts.tv_sec == dl.tv_sec && nowts.tv_nsec >= dl.tv_nsec)) break;
    }
    pthread_mutex_unlock(&s->mu);
    /* Registered until here so that a late JOIN hears "closed" instead of "unknown". The listener
     * holds its lock while it touches a session, so after this no JOIN can reach us. */
    if (s->listener) {
        rz_listener *l = s->listener;
        pthread_mutex_lock(&l->mu);
        for (uint32_t i = 0; i < 64; i++)
            if (l->sessions[i] == s) l->sessions[i] = NULL;
        pthread_mutex_unlock(&l->mu);
    }
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    uint64_t one = 1;
    ssize_t r = write(s->evfd, &one, sizeof one);
    (void)r;
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->io_thread, NULL);
    if (s->has_dialer) pthread_join(s->dial_thread, NULL);
    session_free(s);
}

int rz_session_wait_conns(rz_session *s, uint32_t count, int timeout_ms) {
    struct timespec dl;
    if (timeout_ms >= 0) abstime(&dl, timeout_ms);
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    while (s->st.conns_live < count && !s->failed && rc == 0) rc = wait_until(s, timeout_ms >= 0 ? &dl : NULL);
    if (s->failed) rc = s->failed;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int rz_session_stats(rz_session *s, rz_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int rz_session_id(rz_session *s, uint8_t out[16]) {
    memcpy(out, s->keys.session_id, 16);
    return 0;
}

/* ------------------------------------------------------------------ sending */

/* Reserve the next sequence number once the window has room. Lock held. */
static int reserve(rz_session *s, uint32_t payload, uint64_t *seq) {
    for (;;) {
        /* Nothing queued after the peer's CLOSE can be delivered: fail now rather than fill the
         * window and wait for the connections to time out. */
        if (s->peer_closed && !s->failed) session_fail(s, -ECONNRESET, "the peer closed the session");
        if (s->failed) return s->failed;
        if (s->next_seq - s->peer_cum < WINDOW_SLOTS && (s->window_used + payload <= s->cfg.window_bytes || s->window_used == 0))
            break;
        wait_until(s, NULL);
    }
    *seq = s->next_seq++;
    tx_slot *t = &s->tx[*seq & (WINDOW_SLOTS - 1)];
    memset(t, 0, sizeof *t);
    t->state = TX_SEALING;
    t->payload = payload;
    s->window_used += payload;
    return 0;
}

static frame *frame_new(uint32_t payload) {
    frame *f = malloc(sizeof *f + RZ_FRAME_HDR + payload + RZ_TAG);
    if (!f) return NULL;
    f->refs = 1;
    f->len = RZ_FRAME_HDR + payload + RZ_TAG;
    return f;
}

/* Seal in place (the payload is already at f->data + RZ_FRAME_HDR) and hand to the scheduler. */
static int submit(rz_session *s, frame *f, uint8_t type, uint64_t arg0, uint64_t arg1, uint32_t payload, uint64_t *seq_out) {
    uint64_t seq;
    pthread_mutex_lock(&s->mu);
    int rc = reserve(s, payload, &seq);
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        free(f);
        return rc;
    }
    rz_frame_hdr h = {.type = type, .body_len = payload + RZ_TAG, .seq = seq, .arg0 = arg0, .arg1 = arg1};
    rz_frame_hdr_encode(f->data, &h);
    rz_aead_seal(&s->tx_aead, f->data + RZ_FRAME_HDR, f->data + RZ_FRAME_HDR, payload, f->data, RZ_FRAME_HDR, seq,
                 RZ_NONCE_DATA);
    pthread_mutex_lock(&s->mu);
    tx_slot *t = &s->tx[seq & (WINDOW_SLOTS - 1)];
    t->f = f;
    t->state = TX_QUEUED;
    s->need_sched = true;
    wake_io(s);
    pthread_mutex_unlock(&s->mu);
    if (seq_out) *seq_out = seq;
    return 0;
}

static int wait_delivered(rz_session *s, uint64_t upto, int timeout_ms) {
    struct timespec dl;
    if (timeout_ms >= 0) abstime(&dl, timeout_ms);
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    while (s->peer_cum < upto && !s->failed && rc == 0) rc = wait_until(s, timeout_ms >= 0 ? &dl : NULL);
    if (s->failed) rc = s->failed;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int send_end(rz_session *s, int timeout_ms, rz_error *error) {
    frame *f = frame_new(0);
    if (!f) return rz_fail(error, -ENOMEM, "out of memory");
    uint64_t seq;
    int rc = submit(s, f, RZ_FRAME_END, s->stream_offset, 0, 0, &seq);
    if (!rc) rc = wait_delivered(s, seq + 1, timeout_ms);
    if (rc == -ETIMEDOUT) return rz_fail(error, rc, "peer did not confirm delivery in %d ms", timeout_ms);
    if (rc) return s->failed ? report(s, error) : rz_fail(error, rc, "%s", rz_strerror(rc));
    return 0;
}

int rz_send_fd(rz_session *s, int fd, uint64_t length, rz_error *error) {
    uint32_t cs = s->cfg.chunk_size;
    uint64_t left = length;
    bool eof = false;
    while (left > 0 && !eof) {
        uint32_t want = left < cs ? (uint32_t)left : cs;
        frame *f = frame_new(want);
        if (!f) return rz_fail(error, -ENOMEM, "out of memory");
        uint32_t have = 0;
        while (have < want) {
            ssize_t r = read(fd, f->data + RZ_FRAME_HDR + have, want - have);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                int e = errno;
                free(f);
                return rz_fail(error, -e, "reading the source fd: %s", strerror(e));
            }
            if (r == 0) {
                eof = true;
                break;
            }
            have += (uint32_t)r;
            /* A pipe or socket (a QEMU migration stream) may pause with a partial chunk while its
             * writer waits for something: send what we have instead of waiting for a full chunk. */
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (have < want && poll(&p, 1, 0) == 0) break;
        }
        if (have == 0) {
            free(f);
            break;
        }
        f->len = RZ_FRAME_HDR + have + RZ_TAG;
        int rc = submit(s, f, RZ_FRAME_DATA, s->stream_offset, 0, have, NULL);
        if (rc) return report(s, error);
        s->stream_offset += have;
        if (length != UINT64_MAX) left -= have;
    }
    if (eof && length != UINT64_MAX && left > 0)
        return rz_fail(error, -EIO, "source fd ended %llu bytes early", (unsigned long long)left);
    return send_end(s, -1, error);
}

int rz_send_bytes(rz_session *s, const uint8_t *data, uint64_t length, int end, rz_error *error) {
    uint32_t cs = s->cfg.chunk_size;
    for (uint64_t off = 0; off < length;) {
        uint32_t n = length - off < cs ? (uint32_t)(length - off) : cs;
        frame *f = frame_new(n);
        if (!f) return rz_fail(error, -ENOMEM, "out of memory");
        memcpy(f->data + RZ_FRAME_HDR, data + off, n);
        if (submit(s, f, RZ_FRAME_DATA, s->stream_offset, 0, n, NULL)) return report(s, error);
        s->stream_offset += n;
        off += n;
    }
    return end ? send_end(s, -1, error) : 0;
}

int rz_send_page(rz_session *s, uint64_t offset, const uint8_t *data, uint32_t length, rz_error *error) {
    uint32_t cs = s->cfg.chunk_size;
    for (uint32_t off = 0; off < length || (length == 0 && off == 0);) {
        uint32_t n = length - off < cs ? length - off : cs;
        frame *f = frame_new(n);
        if (!f) return rz_fail(error, -ENOMEM, "out of memory");
        if (n) memcpy(f->data + RZ_FRAME_HDR, data + off, n);
        if (submit(s, f, RZ_FRAME_PAGE, offset + off, s->tx_epoch, n, NULL)) return report(s, error);
        off += n;
        if (length == 0) break;
    }
    return 0;
}

int rz_send_barrier(rz_session *s, uint64_t epoch, rz_error *error) {
    frame *f = frame_new(0);
    if (!f) return rz_fail(error, -ENOMEM, "out of memory");
    if (submit(s, f, RZ_FRAME_BARRIER, epoch, s->tx_epoch, 0, NULL)) return report(s, error);
    s->tx_epoch++;
    return 0;
}

int rz_flush(rz_session *s, int timeout_ms, rz_error *error) {
    pthread_mutex_lock(&s->mu);
    uint64_t upto = s->next_seq;
    pthread_mutex_unlock(&s->mu);
    int rc = wait_delivered(s, upto, timeout_ms);
    if (rc == -ETIMEDOUT) return rz_fail(error, rc, "peer did not confirm delivery in %d ms", timeout_ms);
    if (rc) return report(s, error);
    return 0;
}

int rz_send_end(rz_session *s, int timeout_ms, rz_error *error) { return send_end(s, timeout_ms, error); }

/* ------------------------------------------------------------------ receiving */

/* After a delivery: the cumulative point moved; tell the I/O thread when it is worth an ACK now
 * (an eighth of the window, or a barrier/end the sender is waiting for). Lock held. */
static void delivered(rz_session *s, uint64_t seq, uint8_t type, uint32_t len) {
    rz_rxwin_done(&s->rxw, seq);
    s->st.bytes_received += len;
    if (type != RZ_FRAME_DATA && type != RZ_FRAME_PAGE) s->cum_dirty = true;
    if (s->rxw.cumulative - s->cum_sent >= WINDOW_SLOTS / 8) s->cum_dirty = true;
    if (s->cum_dirty) {
        uint64_t one = 1;
        ssize_t r = write(s->evfd, &one, sizeof one);
        (void)r;
    }
}

int rz_recv_fd(rz_session *s, int fd, uint64_t *received, rz_error *error) {
    uint64_t total = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        uint64_t seq;
        rz_rx_slot *sl = NULL;
        while (!s->failed && !(sl = rz_rxwin_next_ordered(&s->rxw, &seq))) {
            if (s->peer_closed) {
                session_fail(s, -ECONNRESET, "peer closed the session before ending the stream");
                break;
            }
            wait_until(s, NULL);
        }
        if (!sl) break;
        uint8_t type = sl->type;
        if (type == RZ_FRAME_PAGE || type == RZ_FRAME_BARRIER) {
            session_fail(s, -EPROTO, "protocol violation: page or barrier in an ordered stream");
            break;
        }
        if (type == RZ_FRAME_DATA && sl->arg0 != total) {
            session_fail(s, -EPROTO, "protocol violation: stream offset %llu, expected %llu",
                         (unsigned long long)sl->arg0, (unsigned long long)total);
            break;
        }
        uint8_t *data = sl->data;
        uint32_t len = sl->len;
        uint64_t end_bytes = sl->arg0;
        pthread_mutex_unlock(&s->mu);
        int rc = 0;
        for (uint32_t off = 0; off < len && !rc;) {
            ssize_t w = write(fd, data + off, len - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) rc = w < 0 ? -errno : -EIO;
            else off += (uint32_t)w;
        }
        pthread_mutex_lock(&s->mu);
        if (rc) {
            session_fail(s, rc, "writing the destination fd: %s", strerror(-rc));
            break;
        }
        total += type == RZ_FRAME_DATA ? len : 0;
        if (type == RZ_FRAME_END && end_bytes != total) {
            session_fail(s, -EPROTO, "stream ended at %llu bytes but %llu arrived", (unsigned long long)end_bytes,
                         (unsigned long long)total);
            break;
        }
        delivered(s, seq, type, len);
        if (type == RZ_FRAME_END) {
            pthread_mutex_unlock(&s->mu);
            if (received) *received = total;
            return 0;
        }
    }
    int rc = report(s, error);
    pthread_mutex_unlock(&s->mu);
    if (received) *received = total;
    return rc;
}

int rz_recv_pages(rz_session *s, rz_page_fn on_page, rz_barrier_fn on_barrier, void *context, int timeout_ms,
                  rz_error *error) {
    struct timespec dl;
    if (timeout_ms >= 0) abstime(&dl, timeout_ms);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->failed) break;
        if (s->rxw.ended) {
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
        uint64_t seq;
        int perr = 0;
        rz_rx_slot *sl = rz_rxwin_next_page(&s->rxw, &seq, &perr);
        if (perr) {
            session_fail(s, perr, "protocol violation: barrier out of order or stream bytes in a pages session");
            break;
        }
        if (!sl) {
            if (s->peer_closed) {
                session_fail(s, -ECONNRESET, "peer closed the session before ending it");
                break;
            }
            if (wait_until(s, timeout_ms >= 0 ? &dl : NULL) == -ETIMEDOUT) {
                pthread_mutex_unlock(&s->mu);
                return rz_fail(error, -ETIMEDOUT, "no page arrived within %d ms", timeout_ms);
            }
            continue;
        }
        uint8_t type = sl->type;
        uint8_t *data = sl->data;
        uint32_t len = sl->len;
        uint64_t arg0 = sl->arg0;
        pthread_mutex_unlock(&s->mu);
        int rc = 0;
        if (type == RZ_FRAME_PAGE && on_page) rc = on_page(context, arg0, data, len);
        else if (type == RZ_FRAME_BARRIER && on_barrier) rc = on_barrier(context, arg0);
        pthread_mutex_lock(&s->mu);
        if (rc) {
            session_fail(s, rc < 0 ? rc : -EIO, "receiver callback failed: %s", strerror(rc < 0 ? -rc : EIO));
            break;
        }
        delivered(s, seq, type, len);
    }
    int rc = report(s, error);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ------------------------------------------------------------------ listener */

static void *listen_main(void *arg) {
    rz_listener *l = arg;
    struct pollfd pfds[RZ_MAX_PATHS + 1];
    for (;;) {
        pthread_mutex_lock(&l->mu);
        bool stop = l->stop;
        pthread_mutex_unlock(&l->mu);
        if (stop) break;
        for (uint32_t i = 0; i < l->nfds; i++) pfds[i] = (struct pollfd){.fd = l->fds[i], .events = POLLIN};
        pfds[l->nfds] = (struct pollfd){.fd = l->evfd, .events = POLLIN};
        if (poll(pfds, l->nfds + 1, 200) <= 0) continue;
        for (uint32_t i = 0; i < l->nfds; i++) {
            if (!(pfds[i].revents & POLLIN)) continue;
            int fd = accept4(l->fds[i], NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) continue;
            set_timeouts(fd, 3000);
            struct pending p = {.fd = fd};
            p.err = read_hs_msg(fd, p.msg, &p.len, p.why, sizeof p.why);
            rz_preamble pre;
            if (!p.err && rz_preamble_decode(p.msg, p.len, &pre) == 0 && pre.type == RZ_MSG_JOIN) {
                rz_join j;
                uint8_t ok[RZ_HS_MAX_MSG];
                size_t ok_len = 0;
                int jrc = rz_join_decode(p.msg, p.len, &j);
                rz_session *target = NULL;
                pthread_mutex_lock(&l->mu);
                for (uint32_t k = 0; !jrc && k < 64; k++) {
                    rz_session *s = l->sessions[k];
                    if (s && memcmp(s->keys.session_id, j.session_id, 16) == 0) target = s;
                }
                char failed_msg[200] = "";
                if (target) {
                    pthread_mutex_lock(&target->mu);
                    if (target->failed) snprintf(failed_msg, sizeof failed_msg, "session failed: %.180s", target->fail_msg);
                    else if (target->closing) snprintf(failed_msg, sizeof failed_msg, "session closed by the peer");
                    pthread_mutex_unlock(&target->mu);
                }
                if (target && failed_msg[0] && rz_join_check(&target->keys, &j, p.msg, p.len, ok, &ok_len, NULL) == 0) {
                    uint8_t rj[RZ_HS_MAX_MSG];
                    size_t n = rz_reject_encode(rj, RZ_REJECT_SESSION_FAILED, failed_msg);
                    write_all(fd, rj, n);
                } else if (target && rz_join_check(&target->keys, &j, p.msg, p.len, ok, &ok_len, NULL) == 0) {
                    /* A JOIN seen before is a replay: refuse it (the last 64 nonces are kept). */
                    pthread_mutex_lock(&target->mu);
                    bool replay = false;
                    for (uint32_t k = 0; k < 64 && k < target->join_nonce_n; k++)
                        if (memcmp(target->join_nonces[k], j.nonce, 16) == 0) replay = true;
                    if (!replay) {
                        memcpy(target->join_nonces[target->join_nonce_n % 64], j.nonce, 16);
                        target->join_nonce_n++;
                    }
                    pthread_mutex_unlock(&target->mu);
                    bool sent = !replay && write_all(fd, ok, ok_len) == 0;
                    pthread_mutex_lock(&target->mu);
                    if (sent && !target->closing) {
                        conn *c = target->conns[j.conn_id];
                        if (j.conn_id >= target->conn_count) target->conn_count = j.conn_id + 1;
                        if (c->pending_fd >= 0) close(c->pending_fd);
                        c->pending_fd = fd;
                        c->pending_path = j.path_id;
                        fd = -1;
                        uint64_t one = 1;
                        ssize_t r = write(target->evfd, &one, sizeof one);
                        (void)r;
                    }
                    pthread_mutex_unlock(&target->mu);
                } else {
                    /* An unknown session cannot come back: say so, so the peer stops retrying. */
                    uint8_t rj[RZ_HS_MAX_MSG];
                    size_t n = target ? rz_reject_encode(rj, RZ_REJECT_BAD_JOIN, "join refused: bad token")
                                      : rz_reject_encode(rj, RZ_REJECT_SESSION_FAILED,
                                                         "join refused: unknown session (closed by the peer, or it restarted)");
                    write_all(fd, rj, n);
                }
                pthread_mutex_unlock(&l->mu);
                if (fd >= 0) close(fd);
                continue;
            }
            pthread_mutex_lock(&l->mu);
            if (l->pending_n < 16) {
                l->pending[l->pending_n++] = p;
                pthread_cond_broadcast(&l->cv);
            } else {
                close(fd);
            }
            pthread_mutex_unlock(&l->mu);
        }
        if (pfds[l->nfds].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(l->evfd, &v, sizeof v);
            (void)r;
        }
    }
    return NULL;
}

int rz_listener_open(rz_listener **out, const char *const *addresses, uint32_t count, uint16_t port,
                     uint16_t *bound_port, rz_error *error) {
    if (!out || count == 0 || count > RZ_MAX_PATHS) return rz_fail(error, -EINVAL, "need 1..%u addresses", RZ_MAX_PATHS);
    if (sodium_init() < 0) return rz_fail(error, -EIO, "libsodium failed to initialise");
    rz_listener *l = calloc(1, sizeof *l);
    if (!l) return rz_fail(error, -ENOMEM, "out of memory");
    pthread_mutex_init(&l->mu, NULL);
    cond_init(&l->cv);
    int rc = 0;
    /* With port 0 the port is picked on the first address; a later address may already use it
     * (say, as the local port of an outgoing connection): then start over with another pick. */
    const uint16_t asked = port;
    for (int attempt = 0; attempt < 16; attempt++) {
        rc = 0;
        port = asked;
        for (uint32_t i = 0; i < count; i++) {
            struct sockaddr_storage ss;
            socklen_t sl;
            if (parse_addr(addresses[i], port, &ss, &sl) != 0) {
                rc = rz_fail(error, -EINVAL, "bad listen address '%s'", addresses[i]);
                break;
            }
            int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (fd < 0 || bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 64) != 0) {
                rc = rz_fail(error, -errno, "listen on %s:%u: %s", addresses[i], port, strerror(errno));
                if (fd >= 0) close(fd);
                break;
            }
            l->fds[l->nfds++] = fd;
            if (port == 0) {
                getsockname(fd, (struct sockaddr *)&ss, &sl);
                port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                     : ((struct sockaddr_in6 *)&ss)->sin6_port);
            }
        }
        if (!(rc == -EADDRINUSE && asked == 0 && count > 1)) break;
        for (uint32_t i = 0; i < l->nfds; i++) close(l->fds[i]);
        l->nfds = 0;
    }
    l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!rc && pthread_create(&l->thread, NULL, listen_main, l) != 0) rc = rz_fail(error, -EAGAIN, "cannot start listener");
    if (rc) {
        for (uint32_t i = 0; i < l->nfds; i++) close(l->fds[i]);
        if (l->evfd >= 0) close(l->evfd);
        free(l);
        return rc;
    }
    if (bound_port) *bound_port = port;
    *out = l;
    return 0;
}

static int accept_from(rz_listener *l, const rz_config *config, const uint8_t *allowed, uint32_t count, int timeout_ms,
                       rz_session **out, uint32_t *index, rz_error *error) {
    struct timespec dl;
    if (timeout_ms >= 0) abstime(&dl, timeout_ms);
    pthread_mutex_lock(&l->mu);
    while (l->pending_n == 0 && !l->stop) {
        if (timeout_ms < 0) pthread_cond_wait(&l->cv, &l->mu);
        else if (pthread_cond_timedwait(&l->cv, &l->mu, &dl) == ETIMEDOUT) break;
    }
    if (l->pending_n == 0) {
        pthread_mutex_unlock(&l->mu);
        return rz_fail(error, -ETIMEDOUT, "no peer connected within %d ms", timeout_ms);
    }
    struct pending p = l->pending[0];
    memmove(&l->pending[0], &l->pending[1], (--l->pending_n) * sizeof p);
    pthread_mutex_unlock(&l->mu);

    rz_config cfg = *config;
    fill_defaults(&cfg);
    uint8_t reply[RZ_HS_MAX_MSG], proof[RZ_HS_MAX_MSG];
    size_t reply_len = 0, proof_len = 0;
    rz_keys keys;
    rz_hs_server_state hs;
    uint32_t which = 0;
    int rc;
    if (p.err) {
        rc = rz_fail(error, -EPROTO, "malformed handshake: %s", p.why);
        reply_len = rz_reject_encode(reply, RZ_REJECT_MALFORMED, p.why);
    } else {
        rc = rz_hs_server_any(&cfg, allowed, count, p.msg, p.len, reply, &reply_len, &keys, &hs, &which, error);
        /* The session knows its peer as the key that matched (the PROOF is checked against it). */
        if (!rc) memmove(cfg.peer_public_key, allowed + (size_t)which * 32, 32);
    }
    if (!rc) {
        /* REPLY out, the client's PROOF in; the verdict (ACCEPT or REJECT) goes back in `reply`. */
        char why[128];
        set_timeouts(p.fd, cfg.handshake_timeout_ms);
        rc = write_all(p.fd, reply, reply_len);
        reply_len = 0;
        if (rc) {
            rz_fail(error, rc, "sending the handshake reply: %s", strerror(-rc));
        } else if ((rc = read_hs_msg(p.fd, proof, &proof_len, why, sizeof why)) != 0) {
            rz_fail(error, rc, "waiting for the handshake proof: %s", why);
        } else {
            rc = rz_hs_server_finish(&hs, proof, proof_len, reply, &reply_len, error);
        }
    }
    if (rc) {
        if (reply_len) write_all(p.fd, reply, reply_len);
        close(p.fd);
        return rc;
    }
    rz_session *s;
    rc = session_new(&cfg, &keys, false, cfg.conns_per_path, &s, error);
    if (rc) {
        close(p.fd);
        return rc;
    }
    s->listener = l;
    /* Register before the ACCEPT leaves: the client sends its JOINs as soon as it has it. */
    pthread_mutex_lock(&l->mu);
    bool placed = false;
    for (uint32_t i = 0; i < 64 && !placed; i++)
        if (!l->sessions[i]) {
            l->sessions[i] = s;
            placed = true;
        }
    pthread_mutex_unlock(&l->mu);
    if (!placed) {
        close(p.fd);
        session_free(s);
        return rz_fail(error, -EMFILE, "listener has 64 sessions already");
    }
    rc = write_all(p.fd, reply, reply_len);
    if (rc) {
        pthread_mutex_lock(&l->mu);
        for (uint32_t i = 0; i < 64; i++)
            if (l->sessions[i] == s) l->sessions[i] = NULL;
        pthread_mutex_unlock(&l->mu);
        close(p.fd);
        session_free(s);
        return rz_fail(error, rc, "sending the handshake verdict: %s", strerror(-rc));
    }
    pthread_mutex_lock(&s->mu);
    conn_install(s, s->conns[0], p.fd, 0);
    pthread_mutex_unlock(&s->mu);
    rc = session_start(s, error);
    if (rc) {
        rz_session_close(s);
        return rc;
    }
    *out = s;
    if (index) *index = which;
    return 0;
}

int rz_accept(rz_listener *l, const rz_config *config, int timeout_ms, rz_session **out, rz_error *error) {
    return accept_from(l, config, config->peer_public_key, 1, timeout_ms, out, NULL, error);
}

int rz_accept_any(rz_listener *l, const rz_config *config, const uint8_t *allowed_keys, uint32_t count, int timeout_ms,
                  rz_session **out, uint32_t *index, rz_error *error) {
    if (!allowed_keys || count == 0 || count > RZ_MAX_ALLOWED_PEERS)
        return rz_fail(error, -EINVAL, "rz_accept_any needs 1..%u allowed peer keys, got %u", RZ_MAX_ALLOWED_PEERS, count);
    return accept_from(l, config, allowed_keys, count, timeout_ms, out, index, error);
}

void rz_listener_close(rz_listener *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    uint64_t one = 1;
    ssize_t r = write(l->evfd, &one, sizeof one);
    (void)r;
    pthread_join(l->thread, NULL);
    for (uint32_t i = 0; i < l->nfds; i++) close(l->fds[i]);
    for (uint32_t i = 0; i < l->pending_n; i++) close(l->pending[i].fd);
    close(l->evfd);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
}
