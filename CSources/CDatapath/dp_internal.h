/* dp_internal.h: shared by the CDatapath sources; not part of the public contract (myc_datapath.h). */
#ifndef MYC_DP_INTERNAL_H
#define MYC_DP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "include/myc_datapath.h"
#include "../bpf/datapath_abi.h"

/* Newer than Debian's 6.1 uapi headers. */
#define MYC_BPF_TCX_INGRESS 46
#define MYC_BPF_LINK_TYPE_TCX 11

/* Roles of the programs: the pinned program is prog_<role>, a link is links/<role>_<ifindex>. */
#define MYC_ROLE_POD "pod"
#define MYC_ROLE_UNDERLAY "underlay"
#define MYC_ROLE_VXLAN "vxlan"

/* Formats one sentence into err (which may be NULL) and returns rc (a negative errno). */
int dp_fail(char *err, size_t errlen, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* pin_dir, or the default when NULL or empty. */
const char *dp_dir(const char *pin_dir);

/* path = pin_dir/name; returns -ENAMETOOLONG when it does not fit. */
int dp_path(char *out, size_t outlen, const char *pin_dir, const char *name);

/* An fd of the pinned map `name`, or a negative errno with err explaining that the datapath is not loaded. */
int dp_map(const char *pin_dir, const char *name, char *err, size_t errlen);

/* Exclusive flock on pin_dir, serialising the CNI plugins that run in parallel; returns the fd to pass to
 * dp_unlock, or a negative errno. */
int dp_lock(const char *pin_dir, char *err, size_t errlen);
void dp_unlock(int fd);

/* Attaches the pinned program of `role` to ifindex's tcx ingress as a pinned link (idempotent), or detaches it. */
int dp_attach(const char *pin_dir, const char *role, uint32_t ifindex, char *err, size_t errlen);
int dp_detach(const char *pin_dir, const char *role, uint32_t ifindex);

/* The first warning libbpf printed since dp_libbpf_quiet (libbpf's messages are kept out of the caller's stderr
 * unless MYC_DP_DEBUG is set). */
const char *dp_libbpf_last(void);
void dp_libbpf_quiet(void);

/* "a.b.c.d" of a network-order address, in a caller buffer of 16 bytes. */
const char *dp_ip(uint32_t ipv4, char buf[16]);

#endif
