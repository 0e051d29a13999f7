/*
 * tables.c: the control plane's view of the pinned maps: endpoints, routes, policy, remote identities, the
 * underlay configuration and counters. Writers take the pin directory's flock so that parallel CNI calls on
 * one node do not interleave the several map updates one endpoint needs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "dp_internal.h"

_Static_assert(sizeof(struct myc_dp_endpoint) == sizeof(struct myc_ep), "endpoint layouts differ");
_Static_assert((int)MYC_DP_DROP_REASONS == (int)MYC_DROP_REASONS, "drop reasons differ");
_Static_assert(sizeof(struct myc_dp_stats) == sizeof(struct myc_stats), "stats layouts differ");

static void close_fds(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static int zero_counters(int stats_fd, uint32_t ipv4, __u64 flags)
{
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu <= 0)
        return -EINVAL;
    struct myc_stats *zero = calloc((size_t)ncpu, sizeof(*zero));
    if (!zero)
        return -ENOMEM;
    int rc = bpf_map_update_elem(stats_fd, &ipv4, zero, flags) < 0 ? -errno : 0;
    free(zero);
    return rc == -EEXIST ? 0 : rc;
}

/* Forgets the endpoint at ipv4 (maps and link); the caller holds the lock and the map fds. */
static void forget_endpoint(const char *pin_dir, int eps, int byif, int st, uint32_t ipv4)
{
    struct myc_ep old;
    if (bpf_map_lookup_elem(eps, &ipv4, &old) < 0)
        return;
    uint32_t owner;
    if (bpf_map_lookup_elem(byif, &old.host_ifindex, &owner) == 0 && owner == ipv4) {
        bpf_map_delete_elem(byif, &old.host_ifindex);
        dp_detach(pin_dir, MYC_ROLE_POD, old.host_ifindex);
    }
    bpf_map_delete_elem(eps, &ipv4);
    bpf_map_delete_elem(st, &ipv4);
}

int myc_dp_endpoint_add(const char *pin_dir, const struct myc_dp_endpoint *ep, char *err, size_t errlen)
{
    char ip[16];
    if (!ep || ep->ipv4 == 0 || ep->host_ifindex == 0)
        return dp_fail(err, errlen, -EINVAL, "An endpoint needs a non-zero address and host interface index.");
    int lock = dp_lock(pin_dir, err, errlen);
    if (lock < 0)
        return lock;
    int fds[3] = { -1, -1, -1 };
    int rc = 0;
    if ((fds[0] = dp_map(pin_dir, "endpoints", err, errlen)) < 0 ||
        (fds[1] = dp_map(pin_dir, "ep_by_ifindex", err, errlen)) < 0 ||
        (fds[2] = dp_map(pin_dir, "stats", err, errlen)) < 0) {
        rc = fds[0] < 0 ? fds[0] : fds[1] < 0 ? fds[1] : fds[2];
        goto out;
    }
    int eps = fds[0], byif = fds[1], st = fds[2];

    /* Re-registration on another interface: drop the old interface's side. */
    struct myc_ep old;
    if (bpf_map_lookup_elem(eps, &ep->ipv4, &old) == 0 && old.host_ifindex != ep->host_ifindex) {
        uint32_t owner;
        if (bpf_map_lookup_elem(byif, &old.host_ifindex, &owner) == 0 && owner == ep->ipv4) {
            bpf_map_delete_elem(byif, &old.host_ifindex);
            dp_detach(pin_dir, MYC_ROLE_POD, old.host_ifindex);
        }
    }
    /* An interface carries one endpoint: another address still registered on this ifindex belongs to a deleted
     * pod whose interface number was reused. */
    uint32_t prev;
    if (bpf_map_lookup_elem(byif, &ep->host_ifindex, &prev) == 0 && prev != ep->ipv4)
        forget_endpoint(pin_dir, eps, byif, st, prev);

    /* Counters and the endpoint before the ifindex entry: the program starts accepting the pod's packets only
     * when everything it looks up is there. */
    if ((rc = zero_counters(st, ep->ipv4, BPF_NOEXIST)) < 0) {
        rc = dp_fail(err, errlen, rc, "Cannot create counters for %s: %s.", dp_ip(ep->ipv4, ip), strerror(-rc));
        goto out;
    }
    struct myc_ep v;
    memcpy(&v, ep, sizeof(v));
    if (bpf_map_update_elem(eps, &ep->ipv4, &v, BPF_ANY) < 0 ||
        bpf_map_update_elem(byif, &ep->host_ifindex, &ep->ipv4, BPF_ANY) < 0) {
        rc = dp_fail(err, errlen, -errno, "Cannot register endpoint %s: %s (at most %d endpoints).",
                     dp_ip(ep->ipv4, ip), strerror(errno), MYC_MAX_ENDPOINTS);
        goto out;
    }
    rc = dp_attach(pin_dir, MYC_ROLE_POD, ep->host_ifindex, err, errlen);
out:
    close_fds(fds, 3);
    dp_unlock(lock);
    return rc;
}

int myc_dp_endpoint_del(const char *pin_dir, uint32_t ipv4, char *err, size_t errlen)
{
    int lock = dp_lock(pin_dir, err, errlen);
    if (lock < 0)
        return lock == -ENOENT ? 0 : lock;
    int fds[3] = { -1, -1, -1 };
    int rc = 0;
    if ((fds[0] = dp_map(pin_dir, "endpoints", err, errlen)) < 0 ||
        (fds[1] = dp_map(pin_dir, "ep_by_ifindex", err, errlen)) < 0 ||
        (fds[2] = dp_map(pin_dir, "stats", err, errlen)) < 0) {
        rc = fds[0] < 0 ? fds[0] : fds[1] < 0 ? fds[1] : fds[2];
        goto out;
    }
    forget_endpoint(pin_dir, fds[0], fds[1], fds[2], ipv4);
out:
    close_fds(fds, 3);
    dp_unlock(lock);
    return rc;
}

int myc_dp_endpoint_get(const char *pin_dir, uint32_t ipv4, struct myc_dp_endpoint *out, char *err, size_t errlen)
{
    char ip[16];
    int fd = dp_map(pin_dir, "endpoints", err, errlen);
    if (fd < 0)
        return fd;
    struct myc_ep v;
    int rc = bpf_map_lookup_elem(fd, &ipv4, &v) < 0 ? -errno : 0;
    close(fd);
    if (rc == -ENOENT)
        return dp_fail(err, errlen, rc, "No endpoint is registered for %s.", dp_ip(ipv4, ip));
    if (rc < 0)
        return dp_fail(err, errlen, rc, "Cannot read endpoint %s: %s.", dp_ip(ipv4, ip), strerror(-rc));
    if (out)
        memcpy(out, &v, sizeof(*out));
    return 0;
}

int myc_dp_endpoint_list(const char *pin_dir, struct myc_dp_endpoint *out, size_t max, char *err, size_t errlen)
{
    int fd = dp_map(pin_dir, "endpoints", err, errlen);
    if (fd < 0)
        return fd;
    size_t n = 0;
    uint32_t key, next;
    void *prev = NULL;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
        struct myc_ep v;
        if (bpf_map_lookup_elem(fd, &next, &v) == 0) {
            if (out && n < max)
                memcpy(&out[n], &v, sizeof(v));
            n++;
        }
        key = next;
        prev = &key;
    }
    close(fd);
    return (int)n;
}

int myc_dp_stats_get(const char *pin_dir, uint32_t ipv4, struct myc_dp_stats *out, char *err, size_t errlen)
{
    char ip[16];
    int fd = dp_map(pin_dir, "stats", err, errlen);
    if (fd < 0)
        return fd;
    int ncpu = libbpf_num_possible_cpus();
    struct myc_stats *per_cpu = ncpu > 0 ? calloc((size_t)ncpu, sizeof(*per_cpu)) : NULL;
    if (!per_cpu) {
        close(fd);
        return dp_fail(err, errlen, -ENOMEM, "Out of memory reading counters.");
    }
    int rc = bpf_map_lookup_elem(fd, &ipv4, per_cpu) < 0 ? -errno : 0;
    close(fd);
    if (rc == 0 && out) {
        memset(out, 0, sizeof(*out));
        for (int c = 0; c < ncpu; c++) {
            out->tx_packets += per_cpu[c].tx_packets;
            out->tx_bytes += per_cpu[c].tx_bytes;
            out->rx_packets += per_cpu[c].rx_packets;
            out->rx_bytes += per_cpu[c].rx_bytes;
            for (int r = 0; r < MYC_DROP_REASONS; r++)
                out->drops[r] += per_cpu[c].drops[r];
        }
    }
    free(per_cpu);
    if (rc == -ENOENT)
        return dp_fail(err, errlen, rc, "No counters for %s: it is not a registered endpoint.", dp_ip(ipv4, ip));
    if (rc < 0)
        return dp_fail(err, errlen, rc, "Cannot read the counters of %s: %s.", dp_ip(ipv4, ip), strerror(-rc));
    return 0;
}

static struct myc_route_key route_key(uint32_t cidr, uint8_t prefix_len)
{
    uint32_t mask = prefix_len == 0 ? 0 : htonl(~0u << (32 - prefix_len));
    struct myc_route_key k = { .prefixlen = prefix_len, .addr = cidr & mask };
    return k;
}

int myc_dp_route_add(const char *pin_dir, const struct myc_dp_route *route, char *err, size_t errlen)
{
    char ip[16];
    if (!route || route->prefix_len > 32)
        return dp_fail(err, errlen, -EINVAL, "A route needs a prefix length between 0 and 32.");
    if (route->mode != MYC_DP_ROUTE_NATIVE && route->mode != MYC_DP_ROUTE_VXLAN)
        return dp_fail(err, errlen, -EINVAL, "Route mode %u is neither native (0) nor VXLAN (1).", route->mode);
    if (route->node_ipv4 == 0)
        return dp_fail(err, errlen, -EINVAL, "The route to %s/%u has no node address.", dp_ip(route->cidr, ip),
                       route->prefix_len);
    int fd = dp_map(pin_dir, "routes", err, errlen);
    if (fd < 0)
        return fd;
    struct myc_route_key k = route_key(route->cidr, route->prefix_len);
    struct myc_route v = { .node_ipv4 = route->node_ipv4, .vxlan_vni = route->vxlan_vni, .mode = route->mode };
    int rc = bpf_map_update_elem(fd, &k, &v, BPF_ANY) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0)
        return dp_fail(err, errlen, rc, "Cannot add the route to %s/%u: %s (at most %d routes).",
                       dp_ip(route->cidr, ip), route->prefix_len, strerror(-rc), MYC_MAX_ROUTES);
    return 0;
}

int myc_dp_route_del(const char *pin_dir, uint32_t cidr, uint8_t prefix_len, char *err, size_t errlen)
{
    char ip[16];
    if (prefix_len > 32)
        return dp_fail(err, errlen, -EINVAL, "A route needs a prefix length between 0 and 32.");
    int fd = dp_map(pin_dir, "routes", err, errlen);
    if (fd < 0)
        return fd;
    struct myc_route_key k = route_key(cidr, prefix_len);
    int rc = bpf_map_delete_elem(fd, &k) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0 && rc != -ENOENT)
        return dp_fail(err, errlen, rc, "Cannot delete the route to %s/%u: %s.", dp_ip(cidr, ip), prefix_len,
                       strerror(-rc));
    return 0;
}

int myc_dp_policy_allow(const char *pin_dir, uint32_t src_id, uint32_t dst_id, char *err, size_t errlen)
{
    int fd = dp_map(pin_dir, "policy", err, errlen);
    if (fd < 0)
        return fd;
    struct myc_policy_key k = { .src_id = src_id, .dst_id = dst_id };
    uint8_t one = 1;
    int rc = bpf_map_update_elem(fd, &k, &one, BPF_ANY) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0)
        return dp_fail(err, errlen, rc, "Cannot allow network %u to network %u: %s (at most %d pairs).", src_id,
                       dst_id, strerror(-rc), MYC_MAX_POLICIES);
    return 0;
}

int myc_dp_policy_del(const char *pin_dir, uint32_t src_id, uint32_t dst_id, char *err, size_t errlen)
{
    int fd = dp_map(pin_dir, "policy", err, errlen);
    if (fd < 0)
        return fd;
    struct myc_policy_key k = { .src_id = src_id, .dst_id = dst_id };
    int rc = bpf_map_delete_elem(fd, &k) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0 && rc != -ENOENT)
        return dp_fail(err, errlen, rc, "Cannot remove the policy %u to %u: %s.", src_id, dst_id, strerror(-rc));
    return 0;
}

int myc_dp_remote_add(const char *pin_dir, uint32_t ipv4, uint32_t network_id, char *err, size_t errlen)
{
    char ip[16];
    int fd = dp_map(pin_dir, "remote_ids", err, errlen);
    if (fd < 0)
        return fd;
    int rc = bpf_map_update_elem(fd, &ipv4, &network_id, BPF_ANY) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0)
        return dp_fail(err, errlen, rc, "Cannot record remote pod %s: %s (at most %d remote pods).",
                       dp_ip(ipv4, ip), strerror(-rc), MYC_MAX_REMOTE);
    return 0;
}

int myc_dp_remote_del(const char *pin_dir, uint32_t ipv4, char *err, size_t errlen)
{
    char ip[16];
    int fd = dp_map(pin_dir, "remote_ids", err, errlen);
    if (fd < 0)
        return fd;
    int rc = bpf_map_delete_elem(fd, &ipv4) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0 && rc != -ENOENT)
        return dp_fail(err, errlen, rc, "Cannot forget remote pod %s: %s.", dp_ip(ipv4, ip), strerror(-rc));
    return 0;
}

/* Detaches `role` from every interface except keep (0 = all). */
static void detach_role_except(const char *pin_dir, const char *role, uint32_t keep)
{
    char links[512];
    if (dp_path(links, sizeof(links), pin_dir, "links") < 0)
        return;
    {
        size_t n = strlen(role);
        struct dirent **names = NULL;
        int count = scandir(links, &names, NULL, NULL);
        for (int i = 0; i < count; i++) {
            const char *d = names[i]->d_name;
            if (strncmp(d, role, n) == 0 && d[n] == '_') {
                uint32_t ifindex = (uint32_t)strtoul(d + n + 1, NULL, 10);
                if (ifindex != keep)
                    dp_detach(pin_dir, role, ifindex);
            }
            free(names[i]);
        }
        free(names);
    }
}

int myc_dp_set_underlay(const char *pin_dir, uint32_t node_ipv4, uint32_t underlay_ifindex, uint32_t vxlan_ifindex,
                        char *err, size_t errlen)
{
    int lock = dp_lock(pin_dir, err, errlen);
    if (lock < 0)
        return lock;
    int rc;
    int fd = dp_map(pin_dir, "config", err, errlen);
    if (fd < 0) {
        rc = fd;
        goto out;
    }
    uint32_t k = 0;
    struct myc_config c = { .node_ipv4 = node_ipv4, .underlay_ifindex = underlay_ifindex,
                            .vxlan_ifindex = vxlan_ifindex };
    rc = bpf_map_update_elem(fd, &k, &c, BPF_ANY) < 0 ? -errno : 0;
    close(fd);
    if (rc < 0) {
        rc = dp_fail(err, errlen, rc, "Cannot write the underlay configuration: %s.", strerror(-rc));
        goto out;
    }
    detach_role_except(pin_dir, MYC_ROLE_UNDERLAY, underlay_ifindex);
    detach_role_except(pin_dir, MYC_ROLE_VXLAN, vxlan_ifindex);
    if (underlay_ifindex && (rc = dp_attach(pin_dir, MYC_ROLE_UNDERLAY, underlay_ifindex, err, errlen)) < 0)
        goto out;
    if (vxlan_ifindex && (rc = dp_attach(pin_dir, MYC_ROLE_VXLAN, vxlan_ifindex, err, errlen)) < 0)
        goto out;
    rc = 0;
out:
    dp_unlock(lock);
    return rc;
}

int myc_dp_route_list(const char *pin_dir, struct myc_dp_route *out, size_t max, char *err, size_t errlen)
{
    int fd = dp_map(pin_dir, "routes", err, errlen);
    if (fd < 0)
        return fd;
    size_t n = 0;
    struct myc_route_key key, next;
    void *prev = NULL;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
        struct myc_route v;
        if (bpf_map_lookup_elem(fd, &next, &v) == 0) {
            if (out && n < max)
                out[n] = (struct myc_dp_route){ .cidr = next.addr, .prefix_len = (uint8_t)next.prefixlen,
                                                .mode = v.mode, .node_ipv4 = v.node_ipv4, .vxlan_vni = v.vxlan_vni };
            n++;
        }
        key = next;
        prev = &key;
    }
    close(fd);
    return (int)n;
}

int myc_dp_remote_list(const char *pin_dir, uint32_t *ipv4_out, uint32_t *network_id_out, size_t max, char *err,
                       size_t errlen)
{
    int fd = dp_map(pin_dir, "remote_ids", err, errlen);
    if (fd < 0)
        return fd;
    size_t n = 0;
    uint32_t key, next;
    void *prev = NULL;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
        uint32_t id;
        if (bpf_map_lookup_elem(fd, &next, &id) == 0) {
            if (n < max) {
                if (ipv4_out) ipv4_out[n] = next;
                if (network_id_out) network_id_out[n] = id;
            }
            n++;
        }
        key = next;
        prev = &key;
    }
    close(fd);
    return (int)n;
}
