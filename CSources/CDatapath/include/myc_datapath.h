/*
 * myc_datapath.h: the eBPF datapath of a Mycelium node, as seen from userspace.
 *
 * The BPF programs (CSources/bpf/datapath.bpf.c, compiled with clang -target bpf) move packets between pods
 * on one node (bpf_redirect_peer), to other nodes (natively with a FIB lookup / bpf_redirect_neigh, or over
 * VXLAN), enforce network isolation (an endpoint's network identity; other identities are dropped unless the
 * policy map allows the pair) and count packets, bytes and drops by reason per endpoint.
 *
 * Everything lives pinned under a pin directory (default MYC_DP_PIN_DIR), so it outlives the process that
 * loaded it: the CNI plugin runs for milliseconds, the datapath runs for the life of the node, and it keeps
 * working while the node agent is down.
 *
 * Every function returns 0 or a negative errno, and on failure writes one readable sentence to err (which may
 * be NULL) that says what failed and, where it can, what to do. Addresses are IPv4 in network byte order.
 * Names are prefixed myc_dp_ / MYC_DP_.
 */
#ifndef MYC_DATAPATH_H
#define MYC_DATAPATH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Callers must run in the host's mount namespace (e.g. nsenter --net, not `ip netns exec`, which gives the command
 * a private /sys: the host's bpffs is hidden there and a bpffs mounted there disappears with the command). Links
 * attach to interfaces of the caller's network namespace. */
#define MYC_DP_PIN_DIR "/sys/fs/bpf/mycelium"

/* Why a packet was dropped. Counters are kept per reason; keep in sync with datapath.bpf.c. */
enum myc_dp_drop_reason {
    MYC_DP_DROP_POLICY = 0,       /* source and destination have different network identities, no policy */
    MYC_DP_DROP_NO_ENDPOINT = 1,  /* the packet came from an interface that is not a registered endpoint */
    MYC_DP_DROP_SPOOFED = 2,      /* the source address is not the endpoint's own address */
    MYC_DP_DROP_MALFORMED = 3,    /* too short, bad header length */
    MYC_DP_DROP_FIB = 4,          /* a remote destination with no route on the underlay */
    MYC_DP_DROP_REASONS = 5,
};

/* One pod's network endpoint on this node. */
struct myc_dp_endpoint {
    uint32_t ipv4;          /* the pod's address (a /32), network order */
    uint32_t host_ifindex;  /* the host-side veth */
    uint32_t network_id;    /* isolation identity: only equal identities talk, unless policy allows */
    uint8_t pod_mac[6];     /* MAC of the pod-side veth (destination MAC when delivering to the pod) */
    uint8_t host_mac[6];    /* MAC of the host-side veth (source MAC when delivering to the pod) */
};

/* A route to another node's pod CIDR. */
enum myc_dp_route_mode { MYC_DP_ROUTE_NATIVE = 0, MYC_DP_ROUTE_VXLAN = 1 };
struct myc_dp_route {
    uint32_t cidr;          /* network order */
    uint8_t prefix_len;     /* 0..32 */
    uint8_t mode;           /* enum myc_dp_route_mode */
    uint32_t node_ipv4;     /* the other node's underlay address, network order */
    uint32_t vxlan_vni;     /* VXLAN only */
};

/* Per-endpoint counters, summed over CPUs. "tx" is from the pod, "rx" is to the pod. */
struct myc_dp_stats {
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes;
    uint64_t drops[MYC_DP_DROP_REASONS];
};

/* Loads the programs from the compiled object and pins maps and programs under pin_dir. Idempotent: when a
 * datapath of the same object is already pinned this does nothing. When a different object is pinned (an
 * upgrade), the new programs replace the old ones atomically on every attached interface and the maps, with
 * their endpoints, are kept. Mounts bpffs on /sys/fs/bpf when it is not mounted. */
int myc_dp_load(const char *pin_dir, const char *bpf_object_path, char *err, size_t errlen);

/* 1 when a datapath is pinned under pin_dir, 0 when not. */
int myc_dp_is_loaded(const char *pin_dir);

/* Registers an endpoint and attaches the datapath to its host-side veth (tc ingress, pinned so it outlives the
 * caller). Replaces an existing registration for the same address. */
int myc_dp_endpoint_add(const char *pin_dir, const struct myc_dp_endpoint *ep, char *err, size_t errlen);

/* Removes the endpoint for ipv4 and its counters. Idempotent: an unknown address returns 0. */
int myc_dp_endpoint_del(const char *pin_dir, uint32_t ipv4, char *err, size_t errlen);

/* Looks up an endpoint. Returns -ENOENT when the address is not registered. */
int myc_dp_endpoint_get(const char *pin_dir, uint32_t ipv4, struct myc_dp_endpoint *out, char *err, size_t errlen);

/* Lists registered endpoints: fills up to max, returns the number found (which may exceed max) or -errno. */
int myc_dp_endpoint_list(const char *pin_dir, struct myc_dp_endpoint *out, size_t max, char *err, size_t errlen);

/* Counters of one endpoint. ipv4 = 0 gives the node's own counters: drops that belong to no endpoint. */
int myc_dp_stats_get(const char *pin_dir, uint32_t ipv4, struct myc_dp_stats *out, char *err, size_t errlen);

/* Routes to other nodes' pod CIDRs (longest prefix match). del is idempotent. */
int myc_dp_route_add(const char *pin_dir, const struct myc_dp_route *route, char *err, size_t errlen);
int myc_dp_route_del(const char *pin_dir, uint32_t cidr, uint8_t prefix_len, char *err, size_t errlen);
/* Lists the routes (up to max into out; out may be NULL); returns how many there are, or -errno. */
int myc_dp_route_list(const char *pin_dir, struct myc_dp_route *out, size_t max, char *err, size_t errlen);

/* Allows traffic from network src_id to network dst_id (one direction). del is idempotent. */
int myc_dp_policy_allow(const char *pin_dir, uint32_t src_id, uint32_t dst_id, char *err, size_t errlen);
int myc_dp_policy_del(const char *pin_dir, uint32_t src_id, uint32_t dst_id, char *err, size_t errlen);

/* Identity of a pod on another node, for natively routed traffic (added with the implementation). A native
 * packet carries no identity, so the receiving node looks the sender's address up here: traffic from a remote pod
 * that is not recorded is dropped (MYC_DP_DROP_POLICY). VXLAN traffic does not need this: the VNI on the wire is
 * the sender's network_id (so VXLAN needs network_id < 2^24, and route.vxlan_vni is not used). del is idempotent. */
int myc_dp_remote_add(const char *pin_dir, uint32_t ipv4, uint32_t network_id, char *err, size_t errlen);
int myc_dp_remote_del(const char *pin_dir, uint32_t ipv4, char *err, size_t errlen);
/* Lists the remote identities (up to max; either array may be NULL); returns how many there are, or -errno. */
int myc_dp_remote_list(const char *pin_dir, uint32_t *ipv4_out, uint32_t *network_id_out, size_t max, char *err,
                       size_t errlen);

/* Tells the datapath this node's underlay: its own address and the interface that leads to other nodes (for
 * native routing) and, optionally, the ifindex of a VXLAN device in external/collect-metadata mode (0 = none). */
int myc_dp_set_underlay(const char *pin_dir, uint32_t node_ipv4, uint32_t underlay_ifindex, uint32_t vxlan_ifindex,
                        char *err, size_t errlen);

/* Detaches from every interface and removes everything under pin_dir. */
int myc_dp_unload(const char *pin_dir, char *err, size_t errlen);

/* Whether this kernel has tcx links (for `mycelium doctor`): loads a two-instruction sched_cls program and
 * asks for a tcx ingress link on an interface index that does not exist, so nothing is ever attached.
 * Returns 1 (tcx known: the kernel looked for the device, ENODEV), 0 (the attach type was refused; *link_errno
 * says how), or -errno when the probe program could not be loaded (not root, no BPF; err says why). */
int myc_dp_probe_tcx(int *link_errno, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
