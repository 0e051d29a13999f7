/* flipproxy: a TCP proxy that corrupts the client-to-server direction, for the corruption test.
 *   flipproxy LISTEN_ADDR PORT TARGET_ADDR TARGET_PORT EVERY_BYTES [SKIP_BYTES]
 * After SKIP_BYTES of each connection (default 0), one byte in about every EVERY_BYTES is XORed with
 * a nonzero value. Prints how many bytes it flipped when a connection ends. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in target;
static uint64_t every, skip;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t flipped_total;

typedef struct pair { int c, s; } pair;

static void *relay(void *arg) {
    pair *p = arg;
    uint64_t seen = 0, next = skip + every / 2 + (uint64_t)rand() % (every ? every : 1);
    uint64_t flips = 0;
    static __thread char buf[1 << 16];
    struct pollfd f[2] = {{.fd = p->c, .events = POLLIN}, {.fd = p->s, .events = POLLIN}};
    for (;;) {
        if (poll(f, 2, -1) < 0) break;
        int done = 0;
        for (int i = 0; i < 2; i++) {
            if (!(f[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t r = read(f[i].fd, buf, sizeof buf);
            if (r <= 0) { done = 1; break; }
            if (i == 0 && every) {
                while (next < seen + (uint64_t)r) {
                    buf[next - seen] ^= (char)(1 + rand() % 255);
                    flips++;
                    next += every / 2 + (uint64_t)rand() % every;
                }
                seen += (uint64_t)r;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(f[1 - i].fd, buf + off, (size_t)(r - off));
                if (w <= 0) { done = 1; break; }
                off += w;
            }
            if (done) break;
        }
        if (done) break;
    }
    close(p->c);
    close(p->s);
    pthread_mutex_lock(&mu);
    flipped_total += flips;
    fprintf(stderr, "flipproxy: connection done, %llu bytes forwarded, %llu flipped (total %llu)\n",
            (unsigned long long)seen, (unsigned long long)flips, (unsigned long long)flipped_total);
    pthread_mutex_unlock(&mu);
    free(p);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: flipproxy LISTEN_ADDR PORT TARGET_ADDR TARGET_PORT EVERY_BYTES [SKIP_BYTES]\n");
        return 2;
    }
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &la.sin_addr);
    target = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[4]))};
    inet_pton(AF_INET, argv[3], &target.sin_addr);
    every = strtoull(argv[5], NULL, 0);
    skip = argc > 6 ? strtoull(argv[6], NULL, 0) : 0;
    /* A peer that closes on a corrupted frame must end only that relay, not the whole proxy: a write
     * to the closed socket would otherwise raise SIGPIPE and kill it, and every later join is refused. */
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)getpid());
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* The previous test's proxy may still be closing its socket: retry for up to 5 s. */
    int bound = -1;
    for (int i = 0; i < 50 && (bound = bind(ls, (struct sockaddr *)&la, sizeof la)) != 0; i++) usleep(100000);
    if (bound != 0 || listen(ls, 16)) {
        perror("flipproxy listen");
        return 1;
    }
    fprintf(stderr, "flipproxy: listening\n");
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0) continue;
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&target, sizeof target) != 0) {
            close(c);
            close(s);
            continue;
        }
        pair *p = malloc(sizeof *p);
        p->c = c;
        p->s = s;
        pthread_t t;
        pthread_create(&t, NULL, relay, p);
        pthread_detach(t);
    }
}
