/*
 * datapath.bpf.c: the Mycelium node datapath. Three tc programs (attached as tcx ingress links by the loader):
 *
 *   myc_from_pod       on every pod's host-side veth: the pod's outgoing packets. Source check, then a local
 *                      destination (bpf_redirect_peer into its pod), a route to another node (native or VXLAN), or
 *                      the host stack for everything else.
 *   myc_from_underlay  on the interface to the other nodes: natively routed packets for a local pod, and VXLAN
 *                      frames for a local pod, decapsulated here.
 *   myc_from_vxlan     on the collect-metadata VXLAN device: what the kernel decapsulated (GSO bursts, and
 *                      anything myc_from_underlay leaves to it), for a local pod.
 *
 * VXLAN is encapsulated by myc_from_pod itself and, for single frames, decapsulated by myc_from_underlay: the
 * kernel's VXLAN device is the fallback, not the path (see myc_forward_vxlan and myc_vxlan_decap). The frames
 * are standard VXLAN either way, so a node with either kind of datapath talks to the other.
 *
 * Identity across nodes. Isolation is enforced where the destination lives (like an ingress policy), so the
 * receiving node must learn the sender's network id:
 *   - VXLAN: the VNI on the wire IS the sender's network id (24 bits). The receiving program reads it from the
 *     tunnel key. No state about remote pods is needed and it cannot go stale; the route's vxlan_vni is ignored.
 *   - native: the packet carries nothing, so the receiving node looks the source address up in remote_ids (an
 *     "ipcache" the control plane fills with myc_dp_remote_add). An unknown source is dropped (POLICY): fail closed.
 * Both trust the underlay: a host that can inject packets on it can claim any identity (as with Cilium's ipcache
 * and VNI identities). Encrypting/authenticating the underlay is a separate layer.
 *
 * Return codes are TC_ACT_* which tcx reads the same way (OK = pass, SHOT = drop, REDIRECT).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "datapath_abi.h"
#include "lib/maps.h"
#include "lib/packet.h"

/* Changes the object without changing behaviour, so tests can load "a different build" (an upgrade). */
#ifndef MYC_BUILD_TAG
#define MYC_BUILD_TAG 1
#endif
const volatile __u32 myc_build_tag = MYC_BUILD_TAG;

#define MYC_VNI_MAX 0xffffffu

static __always_inline struct myc_config *myc_config(void)
{
    __u32 k = 0;
    return bpf_map_lookup_elem(&config, &k);
}

/* To another node, unencapsulated. The FIB gives the next hop toward the node (it may sit behind a router); a
 * node without IP forwarding makes the FIB answer FWD_DISABLED, and then the node is assumed to be on the
 * underlay's link and the kernel resolves its MAC (bpf_redirect_neigh). */
static __always_inline int myc_forward_native(struct __sk_buff *skb, const struct myc_route *rt, __u32 src_ip)
{
    struct myc_config *cfg = myc_config();
    if (!cfg || !cfg->underlay_ifindex)
        return myc_drop(src_ip, MYC_DROP_FIB);

    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.ipv4_src = cfg->node_ipv4;
    fib.ipv4_dst = rt->node_ipv4;
    fib.ifindex = cfg->underlay_ifindex;
    long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
    struct bpf_redir_neigh nh = { .nh_family = AF_INET };

    switch (rc) {
    case BPF_FIB_LKUP_RET_SUCCESS:
        if (bpf_skb_store_bytes(skb, 0, fib.dmac, 6, 0) < 0 || bpf_skb_store_bytes(skb, 6, fib.smac, 6, 0) < 0)
            return myc_drop(src_ip, MYC_DROP_MALFORMED);
        return bpf_redirect(fib.ifindex, 0);
    case BPF_FIB_LKUP_RET_NO_NEIGH:
        nh.ipv4_nh = fib.ipv4_dst; /* the gateway, or the node itself when on-link */
        return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
    case BPF_FIB_LKUP_RET_FWD_DISABLED:
        nh.ipv4_nh = rt->node_ipv4;
        return bpf_redirect_neigh(cfg->underlay_ifindex, &nh, sizeof(nh), 0);
    default:
        return myc_drop(src_ip, MYC_DROP_FIB);
    }
}

/* VXLAN on the wire (RFC 7348): outer IPv4, UDP to 4789, the 8-byte VXLAN header (flags 0x08: VNI valid) and the
 * inner Ethernet frame. 50 bytes in front of the pod's IP packet; pods get an MTU 50 below the underlay's. */
#define MYC_VXLAN_PORT 4789
#define MYC_VXLAN_FLAGS 0x08000000u
struct myc_vxlan_outer {
    struct iphdr ip;
    struct udphdr udp;
    __be32 vx_flags;
    __be32 vx_vni;
    struct ethhdr inner_eth;
} __attribute__((packed));
#define MYC_VXLAN_OVERHEAD ((__u32)sizeof(struct myc_vxlan_outer)) /* 50 */

static __always_inline __u16 myc_ipv4_csum(const struct iphdr *ip)
{
    const __u16 *w = (const __u16 *)ip;
    __u32 sum = 0;
#pragma clang loop unroll(full)
    for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
        sum += w[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

/* The kernel's VXLAN device does the encapsulation: used only when the frame cannot be encapsulated in place. */
static __always_inline int myc_forward_vxlan_device(struct __sk_buff *skb, const struct myc_config *cfg,
                                                    const struct myc_route *rt, const struct myc_ep *src)
{
    struct bpf_tunnel_key key = {};
    key.remote_ipv4 = bpf_ntohl(rt->node_ipv4);
    key.tunnel_id = src->network_id;
    key.tunnel_ttl = 64;
    if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
        return myc_drop(src->ipv4, MYC_DROP_FIB);
    return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/* To another node inside VXLAN; the VNI carries the sender's network id (see the top of this file).
 *
 * The headers are written here, in place (bpf_skb_adjust_room with the tunnel flags, so a GSO burst stays one
 * burst and the underlay's NIC, or the kernel's software GSO, segments it as a UDP tunnel), and the frame goes
 * straight to the underlay through the same FIB step as native routing. Compared with handing it to the VXLAN
 * device (bpf_skb_set_tunnel_key + redirect), this skips a device transmit, the tunnel's route lookup and the
 * IP output path per packet; the frames on the wire are the same. Outer UDP checksum 0 (allowed for IPv4, as
 * the kernel's VXLAN and Cilium send it); source port from the flow hash, for ECMP. */
static __always_inline int myc_forward_vxlan(struct __sk_buff *skb, const struct myc_route *rt,
                                             const struct myc_ep *src)
{
    struct myc_config *cfg = myc_config();
    if (!cfg || !cfg->vxlan_ifindex)
        return myc_drop(src->ipv4, MYC_DROP_FIB);
    if (src->network_id > MYC_VNI_MAX)
        return myc_drop(src->ipv4, MYC_DROP_POLICY); /* its identity cannot travel; fail closed */

    __u32 inner_len = skb->len - ETH_HLEN;
    if (skb->len < ETH_HLEN + sizeof(struct iphdr) || inner_len + MYC_VXLAN_OVERHEAD > 0xffff)
        return myc_forward_vxlan_device(skb, cfg, rt, src);
    struct myc_vxlan_outer h = {};
    if (bpf_skb_load_bytes(skb, 0, &h.inner_eth, ETH_HLEN) < 0)
        return myc_drop(src->ipv4, MYC_DROP_MALFORMED);
    struct iphdr ip = {};
    ip.version = 4;
    ip.ihl = 5;
    ip.ttl = 64;
    /* DF clear, as the kernel's VXLAN sends by default: a router on a narrower path fragments the frame rather
     * than dropping it with an ICMP error the pod never sees. So the ID must vary (RFC 6864); GSO segments
     * count up from it. */
    ip.id = (__u16)bpf_get_prandom_u32();
    ip.protocol = IPPROTO_UDP;
    ip.tot_len = bpf_htons(inner_len + MYC_VXLAN_OVERHEAD);
    ip.saddr = cfg->node_ipv4;
    ip.daddr = rt->node_ipv4;
    ip.check = myc_ipv4_csum(&ip);
    __builtin_memcpy(&h.ip, &ip, sizeof(ip));
    /* The kernel's choice of range (udp_flow_src_port with the default local port range). */
    h.udp.source = bpf_htons(32768 + (__u16)(bpf_get_hash_recalc(skb) % 28232));
    h.udp.dest = bpf_htons(MYC_VXLAN_PORT);
    h.udp.len = bpf_htons(inner_len + MYC_VXLAN_OVERHEAD - sizeof(struct iphdr));
    h.vx_flags = bpf_htonl(MYC_VXLAN_FLAGS);
    h.vx_vni = bpf_htonl(src->network_id << 8);

    /* FIXED_GSO: the pod's MSS already leaves room for these 50 bytes (its MTU); L2(ETH_HLEN): the inner
     * Ethernet header is the tunnel's inner MAC header, as the VXLAN device marks it. */
    __u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
                  BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
    if (bpf_skb_adjust_room(skb, MYC_VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, flags) < 0)
        return myc_forward_vxlan_device(skb, cfg, rt, src);
    if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0) < 0)
        return myc_drop(src->ipv4, MYC_DROP_MALFORMED);
    return myc_forward_native(skb, rt, src->ipv4);
}

/* A VXLAN frame to this node, for a local pod: strips the 50 bytes here and delivers, skipping the outer IP and
 * UDP receive, the VXLAN device and its GRO cell. Returns -1 when the frame is left to the kernel's VXLAN device
 * (which then runs myc_from_vxlan): anything this code does not fully understand, frames for no local pod, and
 * GSO bursts. A decapsulated GSO burst would keep the skb's UDP-tunnel GSO state (this kernel's
 * bpf_skb_adjust_room cannot clear it; BPF_F_ADJ_ROOM_DECAP_L4_UDP comes later), which breaks segmentation if
 * the pod forwards the packet; the device resets it (Cilium's BPF Geneve decap draws the same line). */
static __always_inline int myc_vxlan_decap(struct __sk_buff *skb, const struct myc_config *cfg)
{
    if (skb->gso_segs > 1 || skb->gso_size)
        return -1;
    const __u32 need = ETH_HLEN + MYC_VXLAN_OVERHEAD + sizeof(struct iphdr);
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (data + need > end) {
        if (bpf_skb_pull_data(skb, need) < 0)
            return -1;
        data = (void *)(long)skb->data;
        end = (void *)(long)skb->data_end;
        if (data + need > end)
            return -1;
    }
    struct myc_vxlan_outer *h = data + ETH_HLEN;
    if (h->ip.ihl != 5 || h->ip.daddr != cfg->node_ipv4 || (h->ip.frag_off & bpf_htons(0x3fff)) ||
        bpf_ntohs(h->ip.tot_len) + ETH_HLEN > skb->len || bpf_ntohs(h->ip.tot_len) < MYC_VXLAN_OVERHEAD + sizeof(struct iphdr) ||
        h->udp.dest != bpf_htons(MYC_VXLAN_PORT) || h->vx_flags != bpf_htonl(MYC_VXLAN_FLAGS) ||
        h->inner_eth.h_proto != bpf_htons(ETH_P_IP))
        return -1;
    struct iphdr *inner = (void *)(h + 1);
    if (inner->version != 4 || inner->ihl < 5)
        return -1;
    __u32 dst_ip = inner->daddr;
    __u32 src_id = bpf_ntohl(h->vx_vni) >> 8;
    struct myc_ep *dst = bpf_map_lookup_elem(&endpoints, &dst_ip);
    if (!dst)
        return -1;
    if (!myc_policy_allows(src_id, dst->network_id))
        return myc_drop(dst_ip, MYC_DROP_POLICY);
    if (bpf_skb_adjust_room(skb, -(__s32)MYC_VXLAN_OVERHEAD, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO) < 0)
        return -1;
    return myc_deliver_local(skb, dst);
}

SEC("tc")
int myc_from_pod(struct __sk_buff *skb)
{
    __u32 ifindex = skb->ifindex;
    __u32 *own_ip = bpf_map_lookup_elem(&ep_by_ifindex, &ifindex);
    if (!own_ip)
        return myc_drop(0, MYC_DROP_NO_ENDPOINT);
    __u32 src_ip = *own_ip;

    int malformed;
    struct iphdr *ip = myc_parse_ipv4(skb, &malformed);
    if (malformed)
        return myc_drop(src_ip, MYC_DROP_MALFORMED);
    if (!ip) {
        /* ARP and other non-IPv4 go to the host as if we were not here: the pod's gateway is a static
         * neighbour, but an ARP request must still get the host's answer. */
        myc_count_tx(src_ip, skb->len);
        return TC_ACT_OK;
    }
    if (ip->saddr != src_ip)
        return myc_drop(src_ip, MYC_DROP_SPOOFED);
    __u32 dst_ip = ip->daddr;

    struct myc_ep *src = bpf_map_lookup_elem(&endpoints, &src_ip);
    if (!src)
        return myc_drop(src_ip, MYC_DROP_NO_ENDPOINT);

    struct myc_ep *dst = bpf_map_lookup_elem(&endpoints, &dst_ip);
    if (dst) {
        /* Policy drops count on the destination, the endpoint the policy protects, on every path. */
        if (!myc_policy_allows(src->network_id, dst->network_id))
            return myc_drop(dst_ip, MYC_DROP_POLICY);
        myc_count_tx(src_ip, skb->len);
        return myc_deliver_local(skb, dst);
    }

    __u32 len = skb->len;
    struct myc_route_key rk = { .prefixlen = 32, .addr = dst_ip };
    struct myc_route *rt = bpf_map_lookup_elem(&routes, &rk);
    if (!rt) {
        myc_count_tx(src_ip, len);
        return TC_ACT_OK;
    }
    int verdict = rt->mode == MYC_ROUTE_VXLAN ? myc_forward_vxlan(skb, rt, src) : myc_forward_native(skb, rt, src_ip);
    if (verdict != TC_ACT_SHOT)
        myc_count_tx(src_ip, len);
    return verdict;
}

/* Delivers a packet from another node to a local pod, given the sender's identity; anything not for a local pod
 * goes on to the host stack untouched (this program sits on the node's own uplink). */
static __always_inline int myc_from_remote(struct __sk_buff *skb, int have_src_id, __u32 src_id)
{
    int malformed;
    struct iphdr *ip = myc_parse_ipv4(skb, &malformed);
    if (!ip)
        return TC_ACT_OK;
    __u32 dst_ip = ip->daddr;
    __u32 src_ip = ip->saddr;
    struct myc_ep *dst = bpf_map_lookup_elem(&endpoints, &dst_ip);
    if (!dst)
        return TC_ACT_OK;
    if (!have_src_id) {
        __u32 *id = bpf_map_lookup_elem(&remote_ids, &src_ip);
        if (!id)
            return myc_drop(dst_ip, MYC_DROP_POLICY);
        src_id = *id;
    }
    if (!myc_policy_allows(src_id, dst->network_id))
        return myc_drop(dst_ip, MYC_DROP_POLICY);
    return myc_deliver_local(skb, dst);
}

SEC("tc")
int myc_from_underlay(struct __sk_buff *skb)
{
    int malformed;
    struct iphdr *ip = myc_parse_ipv4(skb, &malformed);
    if (ip && ip->protocol == IPPROTO_UDP) {
        struct myc_config *cfg = myc_config();
        if (cfg && cfg->vxlan_ifindex) {
            int verdict = myc_vxlan_decap(skb, cfg);
            if (verdict >= 0)
                return verdict;
        }
    }
    return myc_from_remote(skb, 0, 0);
}

SEC("tc")
int myc_from_vxlan(struct __sk_buff *skb)
{
    struct bpf_tunnel_key key = {};
    if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
        return TC_ACT_OK;
    return myc_from_remote(skb, 1, key.tunnel_id);
}

char LICENSE[] SEC("license") = "GPL";
