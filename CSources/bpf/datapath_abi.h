/*
 * datapath_abi.h: the layout of the pinned maps, shared by the BPF programs (datapath.bpf.c) and the userspace
 * loader (CSources/CDatapath). Changing a key or value layout, or a max_entries, makes an upgrade unable to reuse
 * the pinned map (myc_dp_load then fails and says so); add new maps instead of changing these.
 *
 * Fixed-width types only, no pointers, explicit padding: the same bytes are read by the kernel and by userspace.
 */
#ifndef MYC_DATAPATH_ABI_H
#define MYC_DATAPATH_ABI_H

#include <linux/types.h>

#define MYC_MAX_ENDPOINTS 16384
#define MYC_MAX_ROUTES 4096
#define MYC_MAX_POLICIES 16384
#define MYC_MAX_REMOTE 65536

/* Must equal MYC_DP_DROP_* in myc_datapath.h. */
enum myc_drop_reason {
    MYC_DROP_POLICY = 0,
    MYC_DROP_NO_ENDPOINT = 1,
    MYC_DROP_SPOOFED = 2,
    MYC_DROP_MALFORMED = 3,
    MYC_DROP_FIB = 4,
    MYC_DROP_REASONS = 5,
};

/* endpoints: key = pod IPv4 (network order). Same layout as struct myc_dp_endpoint. */
struct myc_ep {
    __u32 ipv4;
    __u32 host_ifindex;
    __u32 network_id;
    __u8 pod_mac[6];
    __u8 host_mac[6];
};

/* ep_by_ifindex: key = host-side veth ifindex, value = the pod IPv4 registered on it (the source check). */

/* routes: LPM trie. */
struct myc_route_key {
    __u32 prefixlen;
    __u32 addr;         /* network order */
};
#define MYC_ROUTE_NATIVE 0
#define MYC_ROUTE_VXLAN 1
struct myc_route {
    __u32 node_ipv4;    /* network order */
    __u32 vxlan_vni;    /* informational; on the wire the VNI is the source network id (see datapath.bpf.c) */
    __u8 mode;
    __u8 pad[3];
};

/* policy: key = (src network id, dst network id), value = 1 when allowed. */
struct myc_policy_key {
    __u32 src_id;
    __u32 dst_id;
};

/* remote_ids: key = IPv4 of a pod on another node, value = its network id. Used for natively routed packets,
 * which carry no identity of their own. */

/* config: one entry (key 0), written by myc_dp_set_underlay. */
struct myc_config {
    __u32 node_ipv4;        /* network order */
    __u32 underlay_ifindex;
    __u32 vxlan_ifindex;
    __u32 pad;
};

/* stats: per-CPU hash, key = endpoint IPv4; key 0 holds drops that belong to no endpoint. */
struct myc_stats {
    __u64 tx_packets, tx_bytes, rx_packets, rx_bytes;
    __u64 drops[MYC_DROP_REASONS];
};

/* meta: one entry (key 0), written by the loader: which object is loaded. */
struct myc_meta {
    __u64 object_hash;      /* FNV-1a 64 of the object file */
    __u32 abi_version;
    __u32 pad;
};
#define MYC_ABI_VERSION 1

#endif
