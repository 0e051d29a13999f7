/* lib/packet.h: parsing, counters and the decisions shared by the entry programs. */
#ifndef MYC_LIB_PACKET_H
#define MYC_LIB_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* The IPv4 header of an Ethernet frame, or NULL when the frame is not IPv4. *malformed is set when it claims to
 * be IPv4 but cannot be parsed: shorter than its headers, a version other than 4 or a header length below 20. */
static __always_inline struct iphdr *myc_parse_ipv4(struct __sk_buff *skb, int *malformed)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;

    *malformed = 0;
    if ((void *)(eth + 1) > end) {
        *malformed = 1;
        return NULL;
    }
    if (eth->h_proto != bpf_htons(ETH_P_IP))
        return NULL;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5 || (void *)ip + ip->ihl * 4 > end) {
        *malformed = 1;
        return NULL;
    }
    return ip;
}

/* Counters of an endpoint; key 0 collects what belongs to no endpoint. Per-CPU, so plain increments. */
static __always_inline struct myc_stats *myc_stats_of(__u32 ipv4)
{
    struct myc_stats *s = bpf_map_lookup_elem(&stats, &ipv4);
    if (!s) {
        __u32 node = 0;
        s = bpf_map_lookup_elem(&stats, &node);
    }
    return s;
}

static __always_inline int myc_drop(__u32 ipv4, __u32 reason)
{
    struct myc_stats *s = myc_stats_of(ipv4);
    if (s && reason < MYC_DROP_REASONS)
        s->drops[reason]++;
    return TC_ACT_SHOT;
}

static __always_inline void myc_count_tx(__u32 ipv4, __u32 len)
{
    struct myc_stats *s = bpf_map_lookup_elem(&stats, &ipv4);
    if (s) {
        s->tx_packets++;
        s->tx_bytes += len;
    }
}

/* Equal identities always talk; different ones only when the policy map holds (src, dst). */
static __always_inline int myc_policy_allows(__u32 src_id, __u32 dst_id)
{
    if (src_id == dst_id)
        return 1;
    struct myc_policy_key k = { .src_id = src_id, .dst_id = dst_id };
    return bpf_map_lookup_elem(&policy, &k) != NULL;
}

/* Hands the frame to the pod behind dst: the MACs the pod expects from its gateway, then straight into the pod's
 * namespace with bpf_redirect_peer, skipping the host stack and the backlog queue. */
static __always_inline int myc_deliver_local(struct __sk_buff *skb, const struct myc_ep *dst)
{
    __u8 macs[12];
    __builtin_memcpy(macs, dst->pod_mac, 6);
    __builtin_memcpy(macs + 6, dst->host_mac, 6);
    if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
        return myc_drop(dst->ipv4, MYC_DROP_MALFORMED);
    struct myc_stats *s = bpf_map_lookup_elem(&stats, &dst->ipv4);
    if (s) {
        s->rx_packets++;
        s->rx_bytes += skb->len;
    }
    return bpf_redirect_peer(dst->host_ifindex, 0);
}

#endif
