/*
 * tcptool: exact TCP transfers and request/response latency between test namespaces.
 *   tcptool sink PORT                 accept one connection, read to EOF, print the byte count, close
 *   tcptool send IP PORT BYTES        send BYTES, half-close, wait for the sink to close (so every byte arrived)
 *   tcptool rr-server PORT            accept one connection, echo each byte back until EOF
 *   tcptool rr-client IP PORT N       N one-byte round trips; prints "p50_us=.. p99_us=.. min_us=.."
 * Unlike iperf3, a finished `send` means the sink has read every byte, so counters can be compared exactly.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int die(const char *what)
{
    perror(what);
    exit(1);
}

static int listen_accept(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s < 0)
        die("socket");
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (bind(s, (void *)&a, sizeof(a)) < 0)
        die("bind");
    if (listen(s, 1) < 0)
        die("listen");
    int c = accept(s, NULL, NULL);
    if (c < 0)
        die("accept");
    close(s);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return c;
}

static int connect_to(const char *ip, int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (s < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1)
        die("address");
    /* The server may still be starting: retry for about 5 s. */
    for (int i = 0; connect(s, (void *)&a, sizeof(a)) < 0; i++) {
        if (i == 50)
            die("connect");
        close(s);
        s = socket(AF_INET, SOCK_STREAM, 0);
        usleep(100000);
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return s;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    static char buf[1 << 16];
    if (argc == 3 && strcmp(argv[1], "sink") == 0) {
        int c = listen_accept(atoi(argv[2]));
        unsigned long long total = 0;
        ssize_t n;
        while ((n = read(c, buf, sizeof(buf))) > 0)
            total += (unsigned long long)n;
        printf("%llu\n", total);
        fflush(stdout);
        close(c);
        return n < 0;
    }
    if (argc == 5 && strcmp(argv[1], "send") == 0) {
        int s = connect_to(argv[2], atoi(argv[3]));
        unsigned long long left = strtoull(argv[4], NULL, 10);
        memset(buf, 'm', sizeof(buf));
        while (left) {
            ssize_t n = write(s, buf, left < sizeof(buf) ? left : sizeof(buf));
            if (n <= 0)
                die("write");
            left -= (unsigned long long)n;
        }
        shutdown(s, SHUT_WR);
        while (read(s, buf, sizeof(buf)) > 0)
            ;
        close(s);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "rr-server") == 0) {
        int c = listen_accept(atoi(argv[2]));
        char b;
        while (read(c, &b, 1) == 1)
            if (write(c, &b, 1) != 1)
                break;
        close(c);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "rr-client") == 0) {
        int s = connect_to(argv[2], atoi(argv[3]));
        int n = atoi(argv[4]);
        if (n <= 0)
            return 2;
        double *lat = calloc((size_t)n, sizeof(double));
        char b = 'x';
        for (int i = 0; i < n; i++) {
            double t0 = now_us();
            if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1)
                die("round trip");
            lat[i] = now_us() - t0;
        }
        close(s);
        qsort(lat, (size_t)n, sizeof(double), cmp);
        printf("p50_us=%.1f p99_us=%.1f min_us=%.1f\n", lat[n / 2], lat[(n * 99) / 100], lat[0]);
        free(lat);
        return 0;
    }
    fprintf(stderr, "usage: tcptool sink PORT | send IP PORT BYTES | rr-server PORT | rr-client IP PORT N\n");
    return 2;
}
