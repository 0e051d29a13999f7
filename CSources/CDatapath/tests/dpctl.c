/*
 * dpctl: a small command line over libmyc_datapath, for the netns tests and by hand.
 *   dpctl [-d PIN_DIR] load OBJECT | is-loaded | unload
 *   dpctl [-d PIN_DIR] ep-add IP HOST_IFNAME NETWORK_ID POD_MAC HOST_MAC | ep-del IP | ep-get IP | ep-list
 *   dpctl [-d PIN_DIR] route-add CIDR/LEN native|vxlan NODE_IP [VNI] | route-del CIDR/LEN
 *   dpctl [-d PIN_DIR] policy-allow SRC_ID DST_ID | policy-del SRC_ID DST_ID
 *   dpctl [-d PIN_DIR] remote-add IP NETWORK_ID | remote-del IP
 *   dpctl [-d PIN_DIR] underlay NODE_IP UNDERLAY_IFNAME|- VXLAN_IFNAME|-
 *   dpctl [-d PIN_DIR] stats IP [FIELD]      FIELD: tx_packets tx_bytes rx_packets rx_bytes drop_policy
 *                                            drop_no_endpoint drop_spoofed drop_malformed drop_fib
 *   dpctl [-d PIN_DIR] links                 prints each pinned link: name, ifindex, program id
 * Interface names are resolved in the caller's network namespace.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include "myc_datapath.h"

static const char *drop_names[MYC_DP_DROP_REASONS] = { "policy", "no_endpoint", "spoofed", "malformed", "fib" };

static int usage(void)
{
    fprintf(stderr, "usage: dpctl [-d PIN_DIR] load OBJ | is-loaded | unload | ep-add IP IFNAME NETID POD_MAC "
                    "HOST_MAC | ep-del IP | ep-get IP | ep-list | route-list | remote-list | route-add CIDR/LEN native|vxlan NODE_IP [VNI] | "
                    "route-del CIDR/LEN | policy-allow SRC DST | policy-del SRC DST | remote-add IP NETID | "
                    "remote-del IP | underlay NODE_IP IFNAME|- VXLAN|- | stats IP [FIELD] | links\n");
    return 2;
}

static uint32_t ip_arg(const char *s)
{
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1) {
        fprintf(stderr, "dpctl: %s is not an IPv4 address\n", s);
        exit(2);
    }
    return a.s_addr;
}

static uint32_t ifindex_arg(const char *s)
{
    if (strcmp(s, "-") == 0 || strcmp(s, "0") == 0)
        return 0;
    unsigned idx = if_nametoindex(s);
    if (!idx) {
        fprintf(stderr, "dpctl: no interface %s in this network namespace\n", s);
        exit(2);
    }
    return idx;
}

static void mac_arg(const char *s, uint8_t out[6])
{
    unsigned m[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        fprintf(stderr, "dpctl: %s is not a MAC address\n", s);
        exit(2);
    }
    for (int i = 0; i < 6; i++)
        out[i] = (uint8_t)m[i];
}

static void cidr_arg(const char *s, uint32_t *cidr, uint8_t *len)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    *len = 32;
    if (slash) {
        *slash = 0;
        *len = (uint8_t)atoi(slash + 1);
    }
    *cidr = ip_arg(buf);
}

static void print_ep(const struct myc_dp_endpoint *ep)
{
    char ip[16];
    struct in_addr a = { .s_addr = ep->ipv4 };
    inet_ntop(AF_INET, &a, ip, sizeof(ip));
    printf("%s ifindex=%u network=%u pod_mac=%02x:%02x:%02x:%02x:%02x:%02x host_mac=%02x:%02x:%02x:%02x:%02x:%02x\n",
           ip, ep->host_ifindex, ep->network_id, ep->pod_mac[0], ep->pod_mac[1], ep->pod_mac[2], ep->pod_mac[3],
           ep->pod_mac[4], ep->pod_mac[5], ep->host_mac[0], ep->host_mac[1], ep->host_mac[2], ep->host_mac[3],
           ep->host_mac[4], ep->host_mac[5]);
}

static int links(const char *pin)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/links", pin);
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return 1;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[800];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        int fd = bpf_obj_get(path);
        if (fd < 0)
            continue;
        struct bpf_link_info info;
        uint32_t len = sizeof(info);
        memset(&info, 0, sizeof(info));
        if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0)
            printf("%s ifindex=%u prog_id=%u\n", de->d_name, info.xdp.ifindex, info.prog_id);
        close(fd);
    }
    closedir(d);
    return 0;
}

int main(int argc, char **argv)
{
    const char *pin = MYC_DP_PIN_DIR;
    int i = 1;
    if (argc > 2 && strcmp(argv[1], "-d") == 0) {
        pin = argv[2];
        i = 3;
    }
    if (i >= argc)
        return usage();
    const char *cmd = argv[i++];
    int n = argc - i;
    char **a = argv + i;
    char err[512] = "";
    int rc;

    if (strcmp(cmd, "load") == 0 && n == 1) {
        rc = myc_dp_load(pin, a[0], err, sizeof(err));
    } else if (strcmp(cmd, "is-loaded") == 0) {
        int l = myc_dp_is_loaded(pin);
        printf("%d\n", l);
        return l ? 0 : 1;
    } else if (strcmp(cmd, "unload") == 0) {
        rc = myc_dp_unload(pin, err, sizeof(err));
    } else if (strcmp(cmd, "ep-add") == 0 && n == 5) {
        struct myc_dp_endpoint ep = { .ipv4 = ip_arg(a[0]), .host_ifindex = ifindex_arg(a[1]),
                                      .network_id = (uint32_t)strtoul(a[2], NULL, 0) };
        mac_arg(a[3], ep.pod_mac);
        mac_arg(a[4], ep.host_mac);
        rc = myc_dp_endpoint_add(pin, &ep, err, sizeof(err));
    } else if (strcmp(cmd, "ep-del") == 0 && n == 1) {
        rc = myc_dp_endpoint_del(pin, ip_arg(a[0]), err, sizeof(err));
    } else if (strcmp(cmd, "ep-get") == 0 && n == 1) {
        struct myc_dp_endpoint ep;
        rc = myc_dp_endpoint_get(pin, ip_arg(a[0]), &ep, err, sizeof(err));
        if (rc == 0)
            print_ep(&ep);
    } else if (strcmp(cmd, "ep-list") == 0) {
        struct myc_dp_endpoint eps[256];
        rc = myc_dp_endpoint_list(pin, eps, 256, err, sizeof(err));
        for (int k = 0; k < rc && k < 256; k++)
            print_ep(&eps[k]);
        if (rc > 0)
            rc = 0;
    } else if (strcmp(cmd, "route-list") == 0) {
        struct myc_dp_route rs[256];
        rc = myc_dp_route_list(pin, rs, 256, err, sizeof(err));
        for (int k = 0; k < rc && k < 256; k++) {
            char c[16], nh[16];
            struct in_addr ca = { .s_addr = rs[k].cidr }, na = { .s_addr = rs[k].node_ipv4 };
            inet_ntop(AF_INET, &ca, c, sizeof(c));
            inet_ntop(AF_INET, &na, nh, sizeof(nh));
            printf("%s/%u %s %s\n", c, rs[k].prefix_len, rs[k].mode == MYC_DP_ROUTE_VXLAN ? "vxlan" : "native", nh);
        }
        if (rc > 0)
            rc = 0;
    } else if (strcmp(cmd, "remote-list") == 0) {
        uint32_t ips[1024], ids[1024];
        rc = myc_dp_remote_list(pin, ips, ids, 1024, err, sizeof(err));
        for (int k = 0; k < rc && k < 1024; k++) {
            char c[16];
            struct in_addr ca = { .s_addr = ips[k] };
            inet_ntop(AF_INET, &ca, c, sizeof(c));
            printf("%s network=%u\n", c, ids[k]);
        }
        if (rc > 0)
            rc = 0;
    } else if (strcmp(cmd, "route-add") == 0 && (n == 3 || n == 4)) {
        struct myc_dp_route r = { 0 };
        cidr_arg(a[0], &r.cidr, &r.prefix_len);
        r.mode = strcmp(a[1], "vxlan") == 0 ? MYC_DP_ROUTE_VXLAN : MYC_DP_ROUTE_NATIVE;
        r.node_ipv4 = ip_arg(a[2]);
        r.vxlan_vni = n == 4 ? (uint32_t)strtoul(a[3], NULL, 0) : 0;
        rc = myc_dp_route_add(pin, &r, err, sizeof(err));
    } else if (strcmp(cmd, "route-del") == 0 && n == 1) {
        uint32_t cidr;
        uint8_t len;
        cidr_arg(a[0], &cidr, &len);
        rc = myc_dp_route_del(pin, cidr, len, err, sizeof(err));
    } else if (strcmp(cmd, "policy-allow") == 0 && n == 2) {
        rc = myc_dp_policy_allow(pin, (uint32_t)strtoul(a[0], NULL, 0), (uint32_t)strtoul(a[1], NULL, 0), err,
                                 sizeof(err));
    } else if (strcmp(cmd, "policy-del") == 0 && n == 2) {
        rc = myc_dp_policy_del(pin, (uint32_t)strtoul(a[0], NULL, 0), (uint32_t)strtoul(a[1], NULL, 0), err,
                               sizeof(err));
    } else if (strcmp(cmd, "remote-add") == 0 && n == 2) {
        rc = myc_dp_remote_add(pin, ip_arg(a[0]), (uint32_t)strtoul(a[1], NULL, 0), err, sizeof(err));
    } else if (strcmp(cmd, "remote-del") == 0 && n == 1) {
        rc = myc_dp_remote_del(pin, ip_arg(a[0]), err, sizeof(err));
    } else if (strcmp(cmd, "underlay") == 0 && n == 3) {
        rc = myc_dp_set_underlay(pin, ip_arg(a[0]), ifindex_arg(a[1]), ifindex_arg(a[2]), err, sizeof(err));
    } else if (strcmp(cmd, "stats") == 0 && (n == 1 || n == 2)) {
        struct myc_dp_stats s;
        rc = myc_dp_stats_get(pin, ip_arg(a[0]), &s, err, sizeof(err));
        if (rc == 0) {
            const char *names[4] = { "tx_packets", "tx_bytes", "rx_packets", "rx_bytes" };
            uint64_t vals[4] = { s.tx_packets, s.tx_bytes, s.rx_packets, s.rx_bytes };
            for (int k = 0; k < 4; k++)
                if (n == 1)
                    printf("%s=%llu ", names[k], (unsigned long long)vals[k]);
                else if (strcmp(a[1], names[k]) == 0)
                    printf("%llu\n", (unsigned long long)vals[k]);
            for (int r = 0; r < MYC_DP_DROP_REASONS; r++) {
                char name[32];
                snprintf(name, sizeof(name), "drop_%s", drop_names[r]);
                if (n == 1)
                    printf("%s=%llu ", name, (unsigned long long)s.drops[r]);
                else if (strcmp(a[1], name) == 0)
                    printf("%llu\n", (unsigned long long)s.drops[r]);
            }
            if (n == 1)
                printf("\n");
        }
    } else if (strcmp(cmd, "links") == 0) {
        return links(pin);
    } else {
        return usage();
    }
    if (rc < 0) {
        fprintf(stderr, "dpctl %s: %s\n", cmd, err[0] ? err : strerror(-rc));
        return 1;
    }
    return 0;
}
