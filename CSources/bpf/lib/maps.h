/* lib/maps.h: the pinned maps of the datapath. Layouts in ../datapath_abi.h; LIBBPF_PIN_BY_NAME makes the loader
 * reuse an existing pin under the pin directory, which is how endpoints survive an upgrade. */
#ifndef MYC_LIB_MAPS_H
#define MYC_LIB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "../datapath_abi.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MYC_MAX_ENDPOINTS);
    __type(key, __u32);
    __type(value, struct myc_ep);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MYC_MAX_ENDPOINTS);
    __type(key, __u32);   /* host-side veth ifindex */
    __type(value, __u32); /* the pod IPv4 registered on it */
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} ep_by_ifindex SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, MYC_MAX_ROUTES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct myc_route_key);
    __type(value, struct myc_route);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} routes SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MYC_MAX_POLICIES);
    __type(key, struct myc_policy_key);
    __type(value, __u8);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MYC_MAX_REMOTE);
    __type(key, __u32);   /* remote pod IPv4 */
    __type(value, __u32); /* its network id */
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} remote_ids SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct myc_config);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, MYC_MAX_ENDPOINTS + 1);
    __type(key, __u32);
    __type(value, struct myc_stats);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct myc_meta);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} meta SEC(".maps");

#endif
