/*
 * myc_netlink.c: raw rtnetlink for the CNI plugin (see include/myc_netlink.h).
 *
 * Requests are built into a fixed buffer with bounds checks (req_attr fails instead of overflowing). Replies are
 * decoded with explicit length checks on every netlink header and every attribute before it is read: a short or
 * lying length ends the walk with -EBADMSG, never reads past what recv() returned.
 */
#define _GNU_SOURCE
#include "myc_netlink.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef NSFS_MAGIC
#define NSFS_MAGIC 0x6e736673
#endif
#ifndef NS_GET_NSTYPE
#define NS_GET_NSTYPE _IO(0xb7, 0x3)
#endif
#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NLM_F_ACK_TLVS
#define NLM_F_ACK_TLVS 0x200
#endif
#ifndef NLM_F_CAPPED
#define NLM_F_CAPPED 0x100
#endif
#ifndef NLMSGERR_ATTR_MSG
#define NLMSGERR_ATTR_MSG 1
#endif

#define REQ_SIZE 1024
#define RECV_SIZE 65536

struct myc_nl {
    int fd;
    uint32_t seq;
    uint32_t port;  /* our netlink port id, to reject replies meant for someone else */
    uint8_t buf[RECV_SIZE];
};

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* ---- namespace handling ---- */

int myc_nl_netns_open(const char *path, int *fd_out, char *err, size_t errlen) {
    if (!path || !*path) return fail(err, errlen, -EINVAL, "no network namespace path given");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return fail(err, errlen, -e, "cannot open network namespace %s: %s", path, strerror(e));
    }
    struct statfs sfs;
    if (fstatfs(fd, &sfs) != 0 || (unsigned long)sfs.f_type != (unsigned long)NSFS_MAGIC) {
        close(fd);
        return fail(err, errlen, -EINVAL, "%s is not a namespace file (expected an nsfs file such as /run/netns/NAME)",
                    path);
    }
    int type = ioctl(fd, NS_GET_NSTYPE);
    if (type != CLONE_NEWNET) {
        close(fd);
        return fail(err, errlen, -EINVAL, "%s is a namespace but not a network namespace", path);
    }
    *fd_out = fd;
    return 0;
}

struct opener {
    int netns_fd;
    int sock;
    int error;
};

static int make_socket(void) { return socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE); }

/* Runs on its own pthread: joins the namespace, creates the socket there, exits. The namespace change dies with
 * the thread; the socket keeps the namespace it was created in. */
static void *open_in_netns(void *arg) {
    struct opener *o = arg;
    if (setns(o->netns_fd, CLONE_NEWNET) != 0) {
        o->error = errno;
        return NULL;
    }
    o->sock = make_socket();
    if (o->sock < 0) o->error = errno;
    return NULL;
}

int myc_nl_open(int netns_fd, myc_nl **out, char *err, size_t errlen) {
    int sock = -1;
    if (netns_fd < 0) {
        sock = make_socket();
        if (sock < 0) return fail(err, errlen, -errno, "cannot create a netlink socket: %s", strerror(errno));
    } else {
        struct opener o = {.netns_fd = netns_fd, .sock = -1, .error = 0};
        pthread_t t;
        int rc = pthread_create(&t, NULL, open_in_netns, &o);
        if (rc != 0) return fail(err, errlen, -rc, "cannot start the namespace thread: %s", strerror(rc));
        pthread_join(t, NULL);
        if (o.sock < 0) {
            return fail(err, errlen, -o.error, "cannot open a netlink socket inside the network namespace: %s",
                        strerror(o.error));
        }
        sock = o.sock;
    }
    int one = 1;
    (void)setsockopt(sock, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(sock, (struct sockaddr *)&local, sizeof local) != 0) {
        int e = errno;
        close(sock);
        return fail(err, errlen, -e, "cannot bind the netlink socket: %s", strerror(e));
    }
    socklen_t len = sizeof local;
    if (getsockname(sock, (struct sockaddr *)&local, &len) != 0) {
        int e = errno;
        close(sock);
        return fail(err, errlen, -e, "getsockname on the netlink socket: %s", strerror(e));
    }
    myc_nl *nl = calloc(1, sizeof *nl);
    if (!nl) {
        close(sock);
        return fail(err, errlen, -ENOMEM, "out of memory");
    }
    nl->fd = sock;
    nl->port = local.nl_pid;
    nl->seq = (uint32_t)getpid() << 8;
    *out = nl;
    return 0;
}

void myc_nl_close(myc_nl *nl) {
    if (!nl) return;
    close(nl->fd);
    free(nl);
}

/* ---- request building ---- */

struct req {
    uint8_t data[REQ_SIZE] __attribute__((aligned(NLMSG_ALIGNTO)));
    size_t len;
    int overflow;
};

static struct nlmsghdr *req_hdr(struct req *r) { return (struct nlmsghdr *)r->data; }

static void req_init(struct req *r, uint16_t type, uint16_t flags, const void *body, size_t body_len) {
    memset(r->data, 0, sizeof r->data);
    r->overflow = 0;
    struct nlmsghdr *h = req_hdr(r);
    h->nlmsg_type = type;
    h->nlmsg_flags = NLM_F_REQUEST | flags;
    memcpy(r->data + NLMSG_HDRLEN, body, body_len);
    r->len = NLMSG_HDRLEN + NLMSG_ALIGN(body_len);
}

static struct rtattr *req_attr(struct req *r, uint16_t type, const void *payload, size_t plen) {
    size_t need = RTA_ALIGN(RTA_LENGTH(plen));
    if (r->overflow || r->len + need > sizeof r->data) {
        r->overflow = 1;
        return NULL;
    }
    struct rtattr *a = (struct rtattr *)(r->data + r->len);
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(plen);
    if (plen) memcpy(RTA_DATA(a), payload, plen);
    r->len += need;
    return a;
}

static struct rtattr *req_nest_begin(struct req *r, uint16_t type) { return req_attr(r, type, NULL, 0); }

static void req_nest_end(struct req *r, struct rtattr *nest) {
    if (nest && !r->overflow) nest->rta_len = (unsigned short)(r->data + r->len - (uint8_t *)nest);
}

static int req_str(struct req *r, uint16_t type, const char *s) { return req_attr(r, type, s, strlen(s) + 1) ? 0 : -1; }

/* ---- transport ---- */

typedef int (*msg_cb)(const struct nlmsghdr *h, void *ctx);

/* Reads the kernel's extended-ack message after an nlmsgerr, bounds-checked. */
static void ext_ack_msg(const struct nlmsghdr *h, char *out, size_t outlen) {
    out[0] = 0;
    if (!(h->nlmsg_flags & NLM_F_ACK_TLVS)) return;
    size_t total = h->nlmsg_len;
    const struct nlmsgerr *e = NLMSG_DATA(h);
    size_t off = NLMSG_HDRLEN + sizeof(struct nlmsgerr);
    /* Unless capped, the error echoes the whole request after the header. */
    if (!(h->nlmsg_flags & NLM_F_CAPPED)) off += NLMSG_ALIGN(e->msg.nlmsg_len) - NLMSG_HDRLEN;
    const uint8_t *base = (const uint8_t *)h;
    while (off + sizeof(struct rtattr) <= total) {
        const struct rtattr *a = (const struct rtattr *)(base + off);
        if (a->rta_len < sizeof(struct rtattr) || off + a->rta_len > total) return;
        if (a->rta_type == NLMSGERR_ATTR_MSG) {
            size_t n = a->rta_len - RTA_LENGTH(0);
            if (n >= outlen) n = outlen - 1;
            memcpy(out, RTA_DATA(a), n);
            out[n] = 0;
            /* The kernel includes the NUL; drop a trailing one if it is inside n. */
            out[strnlen(out, n)] = 0;
            return;
        }
        off += RTA_ALIGN(a->rta_len);
    }
}

/* Sends the request and walks the replies until the ack (or NLMSG_DONE for dumps). cb sees each data message.
 * Returns 0, or the negative errno from the kernel (with the ext-ack text in what). */
static int transact(myc_nl *nl, struct req *r, msg_cb cb, void *ctx, char *what, size_t whatlen) {
    if (what && whatlen) what[0] = 0;
    if (r->overflow) return -EMSGSIZE;
    struct nlmsghdr *h = req_hdr(r);
    h->nlmsg_len = (uint32_t)r->len;
    h->nlmsg_seq = ++nl->seq;
    int dump = (h->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
    if (!dump) h->nlmsg_flags |= NLM_F_ACK;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    ssize_t sent;
    do {
        sent = sendto(nl->fd, r->data, r->len, 0, (struct sockaddr *)&kernel, sizeof kernel);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) return -errno;
    if ((size_t)sent != r->len) return -EIO;

    for (;;) {
        struct sockaddr_nl from;
        struct iovec iov = {.iov_base = nl->buf, .iov_len = sizeof nl->buf};
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n = recvmsg(nl->fd, &m, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (m.msg_flags & MSG_TRUNC) return -EMSGSIZE;
        if (from.nl_pid != 0) continue; /* not from the kernel */
        size_t left = (size_t)n;
        const uint8_t *p = nl->buf;
        while (left >= NLMSG_HDRLEN) {
            const struct nlmsghdr *rh = (const struct nlmsghdr *)p;
            if (rh->nlmsg_len < NLMSG_HDRLEN || rh->nlmsg_len > left) return -EBADMSG;
            size_t step = NLMSG_ALIGN(rh->nlmsg_len);
            if (step > left) step = left;
            if (rh->nlmsg_seq != nl->seq || (rh->nlmsg_pid != nl->port && rh->nlmsg_pid != 0)) {
                p += step;
                left -= step;
                continue; /* a stale reply to an earlier request */
            }
            if (rh->nlmsg_type == NLMSG_ERROR) {
                if (rh->nlmsg_len < NLMSG_HDRLEN + sizeof(struct nlmsgerr)) return -EBADMSG;
                const struct nlmsgerr *e = NLMSG_DATA(rh);
                if (e->error != 0 && what && whatlen) ext_ack_msg(rh, what, whatlen);
                return e->error; /* 0 is the ack */
            }
            if (rh->nlmsg_type == NLMSG_DONE) return 0;
            if (cb) {
                int rc = cb(rh, ctx);
                if (rc < 0) return rc;
            }
            p += step;
            left -= step;
        }
    }
}

static int nl_fail(char *err, size_t errlen, int rc, const char *kernel_msg, const char *fmt, ...) {
    if (err && errlen) {
        char head[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(head, sizeof head, fmt, ap);
        va_end(ap);
        if (kernel_msg && *kernel_msg) {
            snprintf(err, errlen, "%s: %s (%s)", head, strerror(-rc), kernel_msg);
        } else {
            snprintf(err, errlen, "%s: %s", head, strerror(-rc));
        }
    }
    return rc;
}

/* ---- attribute walking (bounds-checked) ---- */

/* Fills tb[type] with each attribute in [start, start+len). Returns -EBADMSG on a malformed attribute. */
static int parse_attrs(const uint8_t *start, size_t len, const struct rtattr **tb, int max) {
    memset(tb, 0, sizeof(*tb) * (size_t)(max + 1));
    size_t off = 0;
    while (off + sizeof(struct rtattr) <= len) {
        const struct rtattr *a = (const struct rtattr *)(start + off);
        if (a->rta_len < sizeof(struct rtattr) || off + a->rta_len > len) return -EBADMSG;
        int type = a->rta_type & ~NLA_F_NESTED;
        if (type <= max) tb[type] = a;
        off += RTA_ALIGN(a->rta_len);
    }
    return 0;
}

static size_t attr_len(const struct rtattr *a) { return a->rta_len - RTA_LENGTH(0); }

static int attr_u32(const struct rtattr *a, uint32_t *out) {
    if (!a || attr_len(a) < 4) return 0;
    memcpy(out, RTA_DATA(a), 4);
    return 1;
}

/* The body of a message of fixed header size hdr, and its attributes. */
static int msg_attrs(const struct nlmsghdr *h, size_t hdr, const struct rtattr **tb, int max) {
    if (h->nlmsg_len < NLMSG_HDRLEN + NLMSG_ALIGN(hdr)) return -EBADMSG;
    const uint8_t *body = (const uint8_t *)NLMSG_DATA(h) + NLMSG_ALIGN(hdr);
    size_t len = h->nlmsg_len - NLMSG_HDRLEN - NLMSG_ALIGN(hdr);
    return parse_attrs(body, len, tb, max);
}

static int check_name(const char *name, char *err, size_t errlen) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= IFNAMSIZ) {
        return fail(err, errlen, -EINVAL, "interface name \"%s\" must be 1 to %d characters", name ? name : "",
                    IFNAMSIZ - 1);
    }
    return 0;
}

/* ---- links ---- */

static int link_cb(const struct nlmsghdr *h, void *ctx) {
    struct myc_nl_link *out = ctx;
    if (h->nlmsg_type != RTM_NEWLINK) return 0;
    const struct rtattr *tb[IFLA_MAX + 1];
    int rc = msg_attrs(h, sizeof(struct ifinfomsg), tb, IFLA_MAX);
    if (rc < 0) return rc;
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    memset(out, 0, sizeof *out);
    out->ifindex = (uint32_t)ifi->ifi_index;
    out->flags = ifi->ifi_flags;
    if (tb[IFLA_IFNAME]) {
        size_t n = attr_len(tb[IFLA_IFNAME]);
        if (n >= sizeof out->name) n = sizeof out->name - 1;
        memcpy(out->name, RTA_DATA(tb[IFLA_IFNAME]), n);
        out->name[n] = 0;
        out->name[strnlen(out->name, n)] = 0;
    }
    if (tb[IFLA_ADDRESS] && attr_len(tb[IFLA_ADDRESS]) == 6) {
        memcpy(out->mac, RTA_DATA(tb[IFLA_ADDRESS]), 6);
        out->has_mac = 1;
    }
    attr_u32(tb[IFLA_MTU], &out->mtu);
    return 0;
}

int myc_nl_decode_link(const void *msg, size_t len, struct myc_nl_link *out) {
    memset(out, 0, sizeof *out);
    if (!msg || len < NLMSG_HDRLEN) return -EBADMSG;
    /* Work on an aligned copy: the caller's buffer may be at any address. */
    void *copy = malloc(len);
    if (!copy) return -ENOMEM;
    memcpy(copy, msg, len);
    const struct nlmsghdr *h = copy;
    int rc;
    if (h->nlmsg_len < NLMSG_HDRLEN || h->nlmsg_len > len) {
        rc = -EBADMSG;
    } else if (h->nlmsg_type != RTM_NEWLINK) {
        rc = -EINVAL;
    } else {
        rc = link_cb(h, out);
    }
    free(copy);
    return rc;
}

int myc_nl_link_get(myc_nl *nl, const char *name, struct myc_nl_link *out, char *err, size_t errlen) {
    int rc = check_name(name, err, errlen);
    if (rc) return rc;
    struct req r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    req_init(&r, RTM_GETLINK, 0, &ifi, sizeof ifi);
    uint32_t mask = RTEXT_FILTER_SKIP_STATS;
    req_attr(&r, IFLA_EXT_MASK, &mask, sizeof mask);
    req_str(&r, IFLA_IFNAME, name);
    char kmsg[160];
    memset(out, 0, sizeof *out);
    rc = transact(nl, &r, link_cb, out, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "looking up interface %s", name);
    if (out->ifindex == 0) return fail(err, errlen, -ENODEV, "looking up interface %s: no reply", name);
    return 0;
}

int myc_nl_veth_create(myc_nl *nl, const char *name, const char *peer_name, int peer_netns_fd, uint32_t mtu,
                       char *err, size_t errlen) {
    int rc = check_name(name, err, errlen);
    if (rc) return rc;
    if ((rc = check_name(peer_name, err, errlen))) return rc;
    struct req r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    req_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof ifi);
    req_str(&r, IFLA_IFNAME, name);
    if (mtu) req_attr(&r, IFLA_MTU, &mtu, sizeof mtu);
    struct rtattr *linkinfo = req_nest_begin(&r, IFLA_LINKINFO);
    req_str(&r, IFLA_INFO_KIND, "veth");
    struct rtattr *data = req_nest_begin(&r, IFLA_INFO_DATA);
    struct rtattr *peer = req_nest_begin(&r, VETH_INFO_PEER);
    /* The peer's attributes follow its own ifinfomsg inside VETH_INFO_PEER. */
    struct ifinfomsg pifi = {.ifi_family = AF_UNSPEC};
    if (r.len + NLMSG_ALIGN(sizeof pifi) <= sizeof r.data) {
        memcpy(r.data + r.len, &pifi, sizeof pifi);
        r.len += NLMSG_ALIGN(sizeof pifi);
    } else {
        r.overflow = 1;
    }
    req_str(&r, IFLA_IFNAME, peer_name);
    if (mtu) req_attr(&r, IFLA_MTU, &mtu, sizeof mtu);
    if (peer_netns_fd >= 0) {
        uint32_t fd = (uint32_t)peer_netns_fd;
        req_attr(&r, IFLA_NET_NS_FD, &fd, sizeof fd);
    }
    req_nest_end(&r, peer);
    req_nest_end(&r, data);
    req_nest_end(&r, linkinfo);
    char kmsg[160];
    rc = transact(nl, &r, NULL, NULL, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "creating veth %s with peer %s", name, peer_name);
    return 0;
}

static int link_change(myc_nl *nl, uint32_t ifindex, unsigned flags, unsigned change, uint16_t attr,
                       const void *payload, size_t plen, char *kmsg, size_t kmsglen) {
    struct req r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = (int)ifindex, .ifi_flags = flags,
                            .ifi_change = change};
    req_init(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
    if (attr) req_attr(&r, attr, payload, plen);
    return transact(nl, &r, NULL, NULL, kmsg, kmsglen);
}

int myc_nl_link_rename(myc_nl *nl, uint32_t ifindex, const char *new_name, char *err, size_t errlen) {
    int rc = check_name(new_name, err, errlen);
    if (rc) return rc;
    char kmsg[160];
    rc = link_change(nl, ifindex, 0, 0, IFLA_IFNAME, new_name, strlen(new_name) + 1, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "renaming interface %u to %s", ifindex, new_name);
    return 0;
}

int myc_nl_link_set_up(myc_nl *nl, uint32_t ifindex, char *err, size_t errlen) {
    char kmsg[160];
    int rc = link_change(nl, ifindex, IFF_UP, IFF_UP, 0, NULL, 0, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "setting interface %u up", ifindex);
    return 0;
}

int myc_nl_link_set_mac(myc_nl *nl, uint32_t ifindex, const uint8_t mac[6], char *err, size_t errlen) {
    char kmsg[160];
    int rc = link_change(nl, ifindex, 0, 0, IFLA_ADDRESS, mac, 6, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "setting the MAC address of interface %u", ifindex);
    return 0;
}

int myc_nl_link_del(myc_nl *nl, uint32_t ifindex, char *err, size_t errlen) {
    struct req r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = (int)ifindex};
    req_init(&r, RTM_DELLINK, 0, &ifi, sizeof ifi);
    char kmsg[160];
    int rc = transact(nl, &r, NULL, NULL, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "deleting interface %u", ifindex);
    return 0;
}

/* ---- addresses, routes, neighbours ---- */

static void fmt_ip(uint32_t ip, char out[16]) {
    const uint8_t *b = (const uint8_t *)&ip;
    snprintf(out, 16, "%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
}

int myc_nl_addr_add_v4(myc_nl *nl, uint32_t ifindex, uint32_t addr, uint8_t prefix, char *err, size_t errlen) {
    if (prefix > 32) return fail(err, errlen, -EINVAL, "prefix length %u is not 0..32", prefix);
    struct req r;
    struct ifaddrmsg ifa = {.ifa_family = AF_INET, .ifa_prefixlen = prefix, .ifa_scope = RT_SCOPE_UNIVERSE,
                            .ifa_index = ifindex};
    req_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof ifa);
    req_attr(&r, IFA_LOCAL, &addr, 4);
    req_attr(&r, IFA_ADDRESS, &addr, 4);
    char kmsg[160], ip[16];
    int rc = transact(nl, &r, NULL, NULL, kmsg, sizeof kmsg);
    if (rc < 0) {
        fmt_ip(addr, ip);
        return nl_fail(err, errlen, rc, kmsg, "adding address %s/%u to interface %u", ip, prefix, ifindex);
    }
    return 0;
}

int myc_nl_route_add_v4(myc_nl *nl, uint32_t ifindex, uint32_t dst, uint8_t prefix, uint32_t gw, uint8_t scope,
                        int replace, char *err, size_t errlen) {
    if (prefix > 32) return fail(err, errlen, -EINVAL, "prefix length %u is not 0..32", prefix);
    struct req r;
    struct rtmsg rtm = {.rtm_family = AF_INET, .rtm_dst_len = prefix, .rtm_table = RT_TABLE_MAIN,
                        .rtm_protocol = RTPROT_BOOT, .rtm_scope = scope, .rtm_type = RTN_UNICAST};
    req_init(&r, RTM_NEWROUTE, NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL), &rtm, sizeof rtm);
    if (prefix) req_attr(&r, RTA_DST, &dst, 4);
    if (gw) req_attr(&r, RTA_GATEWAY, &gw, 4);
    req_attr(&r, RTA_OIF, &ifindex, 4);
    char kmsg[160], d[16], g[16];
    int rc = transact(nl, &r, NULL, NULL, kmsg, sizeof kmsg);
    if (rc < 0) {
        fmt_ip(dst, d);
        fmt_ip(gw, g);
        return nl_fail(err, errlen, rc, kmsg, "adding route %s/%u%s%s on interface %u", d, prefix,
                       gw ? " via " : "", gw ? g : "", ifindex);
    }
    return 0;
}

int myc_nl_neigh_add_v4(myc_nl *nl, uint32_t ifindex, uint32_t ip, const uint8_t mac[6], char *err, size_t errlen) {
    struct req r;
    struct ndmsg nd = {.ndm_family = AF_INET, .ndm_ifindex = (int)ifindex, .ndm_state = NUD_PERMANENT};
    req_init(&r, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, &nd, sizeof nd);
    req_attr(&r, NDA_DST, &ip, 4);
    req_attr(&r, NDA_LLADDR, mac, 6);
    char kmsg[160], s[16];
    int rc = transact(nl, &r, NULL, NULL, kmsg, sizeof kmsg);
    if (rc < 0) {
        fmt_ip(ip, s);
        return nl_fail(err, errlen, rc, kmsg, "adding neighbour %s on interface %u", s, ifindex);
    }
    return 0;
}

struct addr_query {
    uint32_t ifindex, addr;
    uint8_t prefix;
    int found;
};

static int addr_cb(const struct nlmsghdr *h, void *ctx) {
    struct addr_query *q = ctx;
    if (h->nlmsg_type != RTM_NEWADDR) return 0;
    const struct rtattr *tb[IFA_MAX + 1];
    int rc = msg_attrs(h, sizeof(struct ifaddrmsg), tb, IFA_MAX);
    if (rc < 0) return rc;
    const struct ifaddrmsg *ifa = NLMSG_DATA(h);
    if (ifa->ifa_family != AF_INET || ifa->ifa_index != q->ifindex || ifa->ifa_prefixlen != q->prefix) return 0;
    uint32_t local = 0;
    if (attr_u32(tb[IFA_LOCAL], &local) || attr_u32(tb[IFA_ADDRESS], &local)) {
        if (local == q->addr) q->found = 1;
    }
    return 0;
}

int myc_nl_addr_has_v4(myc_nl *nl, uint32_t ifindex, uint32_t addr, uint8_t prefix, char *err, size_t errlen) {
    struct req r;
    struct ifaddrmsg ifa = {.ifa_family = AF_INET};
    req_init(&r, RTM_GETADDR, NLM_F_DUMP, &ifa, sizeof ifa);
    struct addr_query q = {.ifindex = ifindex, .addr = addr, .prefix = prefix};
    char kmsg[160];
    int rc = transact(nl, &r, addr_cb, &q, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "listing addresses");
    return q.found;
}

struct route_query {
    uint32_t ifindex, dst, gw;
    uint8_t prefix;
    int found;
};

static int route_cb(const struct nlmsghdr *h, void *ctx) {
    struct route_query *q = ctx;
    if (h->nlmsg_type != RTM_NEWROUTE) return 0;
    const struct rtattr *tb[RTA_MAX + 1];
    int rc = msg_attrs(h, sizeof(struct rtmsg), tb, RTA_MAX);
    if (rc < 0) return rc;
    const struct rtmsg *rtm = NLMSG_DATA(h);
    uint32_t table = rtm->rtm_table;
    attr_u32(tb[RTA_TABLE], &table);
    if (rtm->rtm_family != AF_INET || table != RT_TABLE_MAIN || rtm->rtm_dst_len != q->prefix) return 0;
    uint32_t dst = 0, gw = 0, oif = 0;
    attr_u32(tb[RTA_DST], &dst);
    attr_u32(tb[RTA_GATEWAY], &gw);
    attr_u32(tb[RTA_OIF], &oif);
    if (dst == q->dst && gw == q->gw && oif == q->ifindex) q->found = 1;
    return 0;
}

int myc_nl_route_has_v4(myc_nl *nl, uint32_t ifindex, uint32_t dst, uint8_t prefix, uint32_t gw,
                        char *err, size_t errlen) {
    struct req r;
    struct rtmsg rtm = {.rtm_family = AF_INET};
    req_init(&r, RTM_GETROUTE, NLM_F_DUMP, &rtm, sizeof rtm);
    struct route_query q = {.ifindex = ifindex, .dst = prefix ? dst : 0, .gw = gw, .prefix = prefix};
    char kmsg[160];
    int rc = transact(nl, &r, route_cb, &q, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "listing routes");
    return q.found;
}

struct neigh_query {
    uint32_t ifindex, ip;
    uint8_t mac[6];
    uint16_t state;
    int found;
};

static int neigh_cb(const struct nlmsghdr *h, void *ctx) {
    struct neigh_query *q = ctx;
    if (h->nlmsg_type != RTM_NEWNEIGH) return 0;
    const struct rtattr *tb[NDA_MAX + 1];
    int rc = msg_attrs(h, sizeof(struct ndmsg), tb, NDA_MAX);
    if (rc < 0) return rc;
    const struct ndmsg *nd = NLMSG_DATA(h);
    if (nd->ndm_family != AF_INET || (uint32_t)nd->ndm_ifindex != q->ifindex) return 0;
    uint32_t dst = 0;
    if (!attr_u32(tb[NDA_DST], &dst) || dst != q->ip) return 0;
    if (tb[NDA_LLADDR] && attr_len(tb[NDA_LLADDR]) == 6) memcpy(q->mac, RTA_DATA(tb[NDA_LLADDR]), 6);
    q->state = nd->ndm_state;
    q->found = 1;
    return 0;
}

int myc_nl_neigh_get_v4(myc_nl *nl, uint32_t ifindex, uint32_t ip, uint8_t mac_out[6], uint16_t *state_out,
                        char *err, size_t errlen) {
    struct req r;
    struct ndmsg nd = {.ndm_family = AF_INET};
    req_init(&r, RTM_GETNEIGH, NLM_F_DUMP, &nd, sizeof nd);
    struct neigh_query q = {.ifindex = ifindex, .ip = ip};
    char kmsg[160], s[16];
    int rc = transact(nl, &r, neigh_cb, &q, kmsg, sizeof kmsg);
    if (rc < 0) return nl_fail(err, errlen, rc, kmsg, "listing neighbours");
    if (!q.found) {
        fmt_ip(ip, s);
        return fail(err, errlen, -ENOENT, "no neighbour entry for %s on interface %u", s, ifindex);
    }
    memcpy(mac_out, q.mac, 6);
    *state_out = q.state;
    return 0;
}
