/*
 * myc_netlink.h: the few rtnetlink operations the Mycelium CNI plugin needs, over raw NETLINK_ROUTE sockets.
 *
 * A handle is bound to one network namespace for its whole life: myc_nl_open(-1) talks to the caller's
 * namespace, myc_nl_open(fd) to the namespace behind fd. The socket for another namespace is created on a
 * short-lived pthread that setns()es and exits; a netlink socket stays in the namespace it was created in, so
 * no thread of the caller (in particular not the Swift main thread) ever changes namespace.
 *
 * Every function returns 0 (or, for queries, 1/0) or a negative errno, and on failure writes one readable
 * sentence to err (may be NULL), including the kernel's extended ack message when it sends one.
 * IPv4 addresses are in network byte order. Names are prefixed myc_nl_ / MYC_NL_.
 */
#ifndef MYC_NETLINK_H
#define MYC_NETLINK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct myc_nl myc_nl;

/* Route scopes (values of enum rt_scope_t). */
#define MYC_NL_SCOPE_UNIVERSE 0
#define MYC_NL_SCOPE_LINK 253

/* Neighbour state NUD_PERMANENT. */
#define MYC_NL_NUD_PERMANENT 0x80

struct myc_nl_link {
    uint32_t ifindex;
    uint32_t mtu;
    uint32_t flags;      /* IFF_* */
    uint8_t mac[6];
    uint8_t has_mac;
    char name[16];
};

/* Opens a network namespace file (e.g. /run/netns/x or /proc/PID/ns/net) and checks that it is one.
 * -ENOENT when the path does not exist, -EINVAL when it is not a network namespace. */
int myc_nl_netns_open(const char *path, int *fd_out, char *err, size_t errlen);

/* Opens an rtnetlink handle in the namespace netns_fd (-1: the caller's). */
int myc_nl_open(int netns_fd, myc_nl **out, char *err, size_t errlen);
void myc_nl_close(myc_nl *nl);

/* Looks a link up by name. -ENODEV when there is none. */
int myc_nl_link_get(myc_nl *nl, const char *name, struct myc_nl_link *out, char *err, size_t errlen);

/* Creates a veth pair: `name` in the handle's namespace and `peer_name` directly inside the namespace
 * peer_netns_fd (-1: same namespace). mtu 0 keeps the kernel default. -EEXIST when a name is taken. */
int myc_nl_veth_create(myc_nl *nl, const char *name, const char *peer_name, int peer_netns_fd, uint32_t mtu,
                       char *err, size_t errlen);

int myc_nl_link_rename(myc_nl *nl, uint32_t ifindex, const char *new_name, char *err, size_t errlen);
int myc_nl_link_set_up(myc_nl *nl, uint32_t ifindex, char *err, size_t errlen);
int myc_nl_link_set_mac(myc_nl *nl, uint32_t ifindex, const uint8_t mac[6], char *err, size_t errlen);
/* Deletes a link (a veth's peer goes with it). -ENODEV when it does not exist. */
int myc_nl_link_del(myc_nl *nl, uint32_t ifindex, char *err, size_t errlen);

/* Adds addr/prefix to the link (scope universe). -EEXIST when already present. */
int myc_nl_addr_add_v4(myc_nl *nl, uint32_t ifindex, uint32_t addr, uint8_t prefix, char *err, size_t errlen);
/* Adds a route in the main table: dst/prefix via gw (0: none) out of ifindex with the given scope. With replace
 * set, an existing route to dst/prefix is taken over instead of failing with -EEXIST. */
int myc_nl_route_add_v4(myc_nl *nl, uint32_t ifindex, uint32_t dst, uint8_t prefix, uint32_t gw, uint8_t scope,
                        int replace, char *err, size_t errlen);
/* Adds (or replaces) a permanent neighbour entry ip -> mac on ifindex. */
int myc_nl_neigh_add_v4(myc_nl *nl, uint32_t ifindex, uint32_t ip, const uint8_t mac[6], char *err, size_t errlen);

/* Queries (for CNI CHECK): 1 when present, 0 when not, -errno on failure. */
int myc_nl_addr_has_v4(myc_nl *nl, uint32_t ifindex, uint32_t addr, uint8_t prefix, char *err, size_t errlen);
/* A main-table route dst/prefix out of ifindex via gw (0: no gateway). */
int myc_nl_route_has_v4(myc_nl *nl, uint32_t ifindex, uint32_t dst, uint8_t prefix, uint32_t gw,
                        char *err, size_t errlen);
/* The neighbour entry for ip on ifindex: -ENOENT when there is none. */
int myc_nl_neigh_get_v4(myc_nl *nl, uint32_t ifindex, uint32_t ip, uint8_t mac_out[6], uint16_t *state_out,
                        char *err, size_t errlen);

/* The decoder the queries use, exposed for tests and fuzzing: decodes one RTM_NEWLINK message (netlink header
 * included) of len bytes. -EBADMSG when a length field lies about the buffer, -EINVAL when it is not RTM_NEWLINK. */
int myc_nl_decode_link(const void *msg, size_t len, struct myc_nl_link *out);

#ifdef __cplusplus
}
#endif
#endif
