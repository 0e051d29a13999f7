/*
 * loader.c: loading, upgrading and unloading the pinned datapath, and attaching its programs to interfaces.
 *
 * Layout under pin_dir (bpffs):
 *   <map>                    every map of datapath.bpf.c, pinned by name (libbpf reuses them on the next load)
 *   prog_<role>              the programs, pod / underlay / vxlan
 *   links/<role>_<ifindex>   one tcx ingress link per interface; a pinned link stays attached after we exit
 *   meta                     which object is loaded (hash of the file), so a load of the same file is a no-op
 *
 * An upgrade loads the new object against the pinned maps, then swaps the program inside every pinned link with
 * bpf_link_update: each interface goes from the old program to the new one in one step, with no moment
 * without a program, and the maps (endpoints, routes, counters) are the same maps throughout.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "dp_internal.h"

#define BPF_FS_MAGIC_NUMBER 0xcafe4a11
#define BPFFS_ROOT "/sys/fs/bpf"

static const struct {
    const char *role;
    const char *program;
} dp_programs[] = {
    { MYC_ROLE_POD, "myc_from_pod" },
    { MYC_ROLE_UNDERLAY, "myc_from_underlay" },
    { MYC_ROLE_VXLAN, "myc_from_vxlan" },
};
#define DP_NPROGRAMS (sizeof(dp_programs) / sizeof(dp_programs[0]))

int dp_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

const char *dp_dir(const char *pin_dir)
{
    return (pin_dir && *pin_dir) ? pin_dir : MYC_DP_PIN_DIR;
}

int dp_path(char *out, size_t outlen, const char *pin_dir, const char *name)
{
    int n = snprintf(out, outlen, "%s/%s", dp_dir(pin_dir), name);
    return (n < 0 || (size_t)n >= outlen) ? -ENAMETOOLONG : 0;
}

const char *dp_ip(uint32_t ipv4, char buf[16])
{
    struct in_addr a = { .s_addr = ipv4 };
    return inet_ntop(AF_INET, &a, buf, 16) ? buf : "?";
}

static __thread char dp_last_msg[256]; /* the first libbpf warning since dp_libbpf_quiet */

static int dp_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (getenv("MYC_DP_DEBUG"))
        return vfprintf(stderr, fmt, ap);
    /* Keep the first warning: libbpf says what went wrong first (a verifier rejection, a pinned map whose
     * layout differs) and then only that loading failed. */
    if (level == LIBBPF_DEBUG || dp_last_msg[0])
        return 0;
    char line[256];
    vsnprintf(line, sizeof(line), fmt, ap);
    snprintf(dp_last_msg, sizeof(dp_last_msg), "%s", strncmp(line, "libbpf: ", 8) == 0 ? line + 8 : line);
    size_t n = strlen(dp_last_msg);
    while (n && (dp_last_msg[n - 1] == '\n' || dp_last_msg[n - 1] == '.' || dp_last_msg[n - 1] == ':'))
        dp_last_msg[--n] = 0;
    return 0;
}

void dp_libbpf_quiet(void)
{
    dp_last_msg[0] = 0;
    libbpf_set_print(dp_libbpf_print);
}

const char *dp_libbpf_last(void)
{
    return dp_last_msg[0] ? dp_last_msg : "no message from libbpf";
}

int dp_map(const char *pin_dir, const char *name, char *err, size_t errlen)
{
    char path[512];
    if (dp_path(path, sizeof(path), pin_dir, name) < 0)
        return dp_fail(err, errlen, -ENAMETOOLONG, "The pin directory %s is too long.", dp_dir(pin_dir));
    int fd = bpf_obj_get(path);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return dp_fail(err, errlen, -ENOENT, "No datapath is loaded under %s (map %s is not pinned); call "
                           "myc_dp_load first.", dp_dir(pin_dir), name);
        return dp_fail(err, errlen, -e, "Cannot open the pinned map %s: %s.", path, strerror(e));
    }
    return fd;
}

int dp_lock(const char *pin_dir, char *err, size_t errlen)
{
    int fd = open(dp_dir(pin_dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return dp_fail(err, errlen, -ENOENT, "No datapath is loaded under %s; call myc_dp_load first.",
                           dp_dir(pin_dir));
        return dp_fail(err, errlen, -e, "Cannot open %s: %s.", dp_dir(pin_dir), strerror(e));
    }
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            int e = errno;
            close(fd);
            return dp_fail(err, errlen, -e, "Cannot lock %s: %s.", dp_dir(pin_dir), strerror(e));
        }
    }
    return fd;
}

void dp_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

static int dp_link_path(char *out, size_t outlen, const char *pin_dir, const char *role, uint32_t ifindex)
{
    int n = snprintf(out, outlen, "%s/links/%s_%u", dp_dir(pin_dir), role, ifindex);
    return (n < 0 || (size_t)n >= outlen) ? -ENAMETOOLONG : 0;
}

/* Detaches a pinned link now, then removes the pin. Removing the pin alone would also detach it, but only once
 * bpffs frees the inode after an RCU grace period and a deferred put: packets would still be handled by the
 * program for a moment after we return. */
static void dp_detach_path(const char *path)
{
    int fd = bpf_obj_get(path);
    if (fd >= 0) {
        bpf_link_detach(fd);
        close(fd);
    }
    unlink(path);
}

/* True when the pinned link is a tcx link still attached to ifindex. A link outlives its interface: after the
 * interface is deleted it reports ifindex 0, and the number may have been given to a new interface since. */
static int dp_link_attached_to(int link_fd, uint32_t ifindex)
{
    struct bpf_link_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (bpf_obj_get_info_by_fd(link_fd, &info, &len) < 0)
        return 0;
    /* The tcx member of the union (ifindex, attach_type) is newer than these headers; its ifindex is the first
     * word of the union, like xdp.ifindex. */
    return info.type == MYC_BPF_LINK_TYPE_TCX && info.xdp.ifindex == ifindex;
}

static int dp_prog_fd(const char *pin_dir, const char *role, char *err, size_t errlen)
{
    char name[64], path[512];
    snprintf(name, sizeof(name), "prog_%s", role);
    if (dp_path(path, sizeof(path), pin_dir, name) < 0)
        return dp_fail(err, errlen, -ENAMETOOLONG, "The pin directory %s is too long.", dp_dir(pin_dir));
    int fd = bpf_obj_get(path);
    if (fd < 0) {
        int e = errno;
        return dp_fail(err, errlen, -e, "No datapath program is pinned at %s (%s); call myc_dp_load first.", path,
                       strerror(e));
    }
    return fd;
}

int dp_attach(const char *pin_dir, const char *role, uint32_t ifindex, char *err, size_t errlen)
{
    char path[512];
    if (dp_link_path(path, sizeof(path), pin_dir, role, ifindex) < 0)
        return dp_fail(err, errlen, -ENAMETOOLONG, "The pin directory %s is too long.", dp_dir(pin_dir));
    int prog_fd = dp_prog_fd(pin_dir, role, err, errlen);
    if (prog_fd < 0)
        return prog_fd;

    int link_fd = bpf_obj_get(path);
    if (link_fd >= 0) {
        if (dp_link_attached_to(link_fd, ifindex)) {
            /* Already attached; make sure it runs the current program (a no-op when it does). */
            int rc = bpf_link_update(link_fd, prog_fd, NULL);
            int e = errno;
            close(link_fd);
            close(prog_fd);
            if (rc < 0)
                return dp_fail(err, errlen, -e, "Cannot update the datapath on interface %u: %s.", ifindex,
                               strerror(e));
            return 0;
        }
        close(link_fd);
        dp_detach_path(path); /* a stale link of a deleted interface (or of another one with that number) */
    }

    link_fd = bpf_link_create(prog_fd, ifindex, MYC_BPF_TCX_INGRESS, NULL);
    int e = errno;
    close(prog_fd);
    if (link_fd < 0) {
        if (e == ENODEV)
            return dp_fail(err, errlen, -e, "Interface %u does not exist in this network namespace.", ifindex);
        return dp_fail(err, errlen, -e, "Cannot attach the datapath to interface %u with tcx (%s); tcx needs "
                       "Linux 6.6 or later.", ifindex, strerror(e));
    }
    if (bpf_obj_pin(link_fd, path) < 0) {
        e = errno;
        close(link_fd); /* the last reference: the link detaches again */
        return dp_fail(err, errlen, -e, "Cannot pin the link of interface %u at %s: %s.", ifindex, path,
                       strerror(e));
    }
    close(link_fd);
    return 0;
}

int dp_detach(const char *pin_dir, const char *role, uint32_t ifindex)
{
    char path[512];
    if (dp_link_path(path, sizeof(path), pin_dir, role, ifindex) < 0)
        return -ENAMETOOLONG;
    dp_detach_path(path);
    return 0;
}

/* FNV-1a over the object file: tells "the same build" from "a different build", nothing more. */
static int dp_hash_file(const char *path, uint64_t *out)
{
    FILE *f = fopen(path, "rbe");
    if (!f)
        return -errno;
    uint64_t h = 0xcbf29ce484222325ull;
    unsigned char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        for (size_t i = 0; i < n; i++)
            h = (h ^ buf[i]) * 0x100000001b3ull;
    int rc = ferror(f) ? -EIO : 0;
    fclose(f);
    *out = h;
    return rc;
}

static int dp_ensure_bpffs(const char *pin_dir, char *err, size_t errlen)
{
    struct statfs st;
    if (statfs(BPFFS_ROOT, &st) == 0 && st.f_type != BPF_FS_MAGIC_NUMBER) {
        if (mount("bpf", BPFFS_ROOT, "bpf", 0, "mode=0700") < 0) {
            int e = errno;
            return dp_fail(err, errlen, -e, "Cannot mount bpffs on %s (%s); run as root or mount it first.",
                           BPFFS_ROOT, strerror(e));
        }
    }
    char links[512];
    if (dp_path(links, sizeof(links), pin_dir, "links") < 0)
        return dp_fail(err, errlen, -ENAMETOOLONG, "The pin directory %s is too long.", dp_dir(pin_dir));
    if (mkdir(dp_dir(pin_dir), 0700) < 0 && errno != EEXIST) {
        int e = errno;
        return dp_fail(err, errlen, -e, "Cannot create the pin directory %s: %s.", dp_dir(pin_dir), strerror(e));
    }
    if (statfs(dp_dir(pin_dir), &st) < 0 || st.f_type != BPF_FS_MAGIC_NUMBER)
        return dp_fail(err, errlen, -EINVAL, "The pin directory %s is not on a bpf filesystem.", dp_dir(pin_dir));
    if (mkdir(links, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        return dp_fail(err, errlen, -e, "Cannot create %s: %s.", links, strerror(e));
    }
    return 0;
}

static int dp_loaded_hash(const char *pin_dir, uint64_t *hash)
{
    char path[512];
    if (dp_path(path, sizeof(path), pin_dir, "meta") < 0)
        return -ENAMETOOLONG;
    int fd = bpf_obj_get(path);
    if (fd < 0)
        return -errno;
    uint32_t k = 0;
    struct myc_meta m;
    int rc = bpf_map_lookup_elem(fd, &k, &m) < 0 ? -errno : 0;
    close(fd);
    if (rc == 0)
        *hash = m.object_hash;
    return rc;
}

int myc_dp_is_loaded(const char *pin_dir)
{
    char path[512];
    if (dp_path(path, sizeof(path), pin_dir, "meta") < 0 || access(path, F_OK) < 0)
        return 0;
    for (size_t i = 0; i < DP_NPROGRAMS; i++) {
        char name[64];
        snprintf(name, sizeof(name), "prog_%s", dp_programs[i].role);
        if (dp_path(path, sizeof(path), pin_dir, name) < 0 || access(path, F_OK) < 0)
            return 0;
    }
    return 1;
}

/* Moves every pinned link to the program of its role. Links whose interface is gone are removed. */
static int dp_update_links(const char *pin_dir, const int prog_fds[DP_NPROGRAMS], char *err, size_t errlen)
{
    char dir[512];
    if (dp_path(dir, sizeof(dir), pin_dir, "links") < 0)
        return dp_fail(err, errlen, -ENAMETOOLONG, "The pin directory %s is too long.", dp_dir(pin_dir));
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : dp_fail(err, errlen, -errno, "Cannot list %s: %s.", dir, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[800];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        int which = -1;
        for (size_t i = 0; i < DP_NPROGRAMS; i++) {
            size_t n = strlen(dp_programs[i].role);
            if (strncmp(de->d_name, dp_programs[i].role, n) == 0 && de->d_name[n] == '_')
                which = (int)i;
        }
        if (which < 0)
            continue;
        int link_fd = bpf_obj_get(path);
        if (link_fd < 0)
            continue;
        uint32_t ifindex = (uint32_t)strtoul(strchr(de->d_name, '_') + 1, NULL, 10);
        if (!dp_link_attached_to(link_fd, ifindex)) {
            close(link_fd);
            unlink(path);
            continue;
        }
        if (bpf_link_update(link_fd, prog_fds[which], NULL) < 0 && rc == 0)
            rc = dp_fail(err, errlen, -errno, "Cannot switch interface %u to the new datapath program: %s.",
                         ifindex, strerror(errno));
        close(link_fd);
    }
    closedir(d);
    return rc;
}

int myc_dp_load(const char *pin_dir, const char *bpf_object_path, char *err, size_t errlen)
{
    dp_libbpf_quiet();
    if (!bpf_object_path || !*bpf_object_path)
        return dp_fail(err, errlen, -EINVAL, "No BPF object path given; build it with make -C CSources/bpf.");
    uint64_t hash;
    int rc = dp_hash_file(bpf_object_path, &hash);
    if (rc < 0)
        return dp_fail(err, errlen, rc, "Cannot read the BPF object %s: %s.", bpf_object_path, strerror(-rc));
    rc = dp_ensure_bpffs(pin_dir, err, errlen);
    if (rc < 0)
        return rc;
    int lock = dp_lock(pin_dir, err, errlen);
    if (lock < 0)
        return lock;

    uint64_t loaded = 0;
    if (myc_dp_is_loaded(pin_dir) && dp_loaded_hash(pin_dir, &loaded) == 0 && loaded == hash) {
        dp_unlock(lock);
        return 0;
    }

    LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = dp_dir(pin_dir));
    char why[128];
    struct bpf_object *obj = bpf_object__open_file(bpf_object_path, &opts);
    if (!obj) {
        rc = -errno;
        dp_unlock(lock);
        libbpf_strerror(rc, why, sizeof(why));
        return dp_fail(err, errlen, rc, "Cannot open the BPF object %s (%s): %s.", bpf_object_path, why,
                       dp_libbpf_last());
    }
    rc = bpf_object__load(obj);
    if (rc < 0) {
        libbpf_strerror(rc, why, sizeof(why));
        dp_fail(err, errlen, rc, "Cannot load %s into the kernel (%s): %s; a pinned map whose layout changed can "
                "only be replaced by myc_dp_unload %s, which forgets every endpoint.", bpf_object_path, why,
                dp_libbpf_last(), dp_dir(pin_dir));
        goto out;
    }

    int prog_fds[DP_NPROGRAMS];
    for (size_t i = 0; i < DP_NPROGRAMS; i++) {
        struct bpf_program *p = bpf_object__find_program_by_name(obj, dp_programs[i].program);
        if (!p) {
            rc = dp_fail(err, errlen, -ENOENT, "The BPF object %s has no program %s; is it a Mycelium datapath?",
                         bpf_object_path, dp_programs[i].program);
            goto out;
        }
        prog_fds[i] = bpf_program__fd(p);
    }

    /* Pin each program beside the old one, then rename over it: a concurrent endpoint_add sees either. */
    for (size_t i = 0; i < DP_NPROGRAMS; i++) {
        char name[64], path[512], tmp[512];
        snprintf(name, sizeof(name), "prog_%s", dp_programs[i].role);
        dp_path(path, sizeof(path), pin_dir, name);
        snprintf(name, sizeof(name), "new_prog_%s", dp_programs[i].role); /* bpffs names cannot contain '.' */
        dp_path(tmp, sizeof(tmp), pin_dir, name);
        unlink(tmp);
        if (bpf_obj_pin(prog_fds[i], tmp) < 0) {
            rc = dp_fail(err, errlen, -errno, "Cannot pin program %s at %s: %s.", dp_programs[i].program, tmp,
                         strerror(errno));
            goto out;
        }
        if (rename(tmp, path) < 0) {
            unlink(path);
            if (rename(tmp, path) < 0) {
                rc = dp_fail(err, errlen, -errno, "Cannot pin program %s at %s: %s.", dp_programs[i].program, path,
                             strerror(errno));
                unlink(tmp);
                goto out;
            }
        }
    }

    rc = dp_update_links(pin_dir, prog_fds, err, errlen);
    if (rc < 0)
        goto out;

    /* Node-level counters (drops that belong to no endpoint) live under key 0. */
    int stats_fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "stats"));
    int ncpu = libbpf_num_possible_cpus();
    struct myc_stats *zero = ncpu > 0 ? calloc((size_t)ncpu, sizeof(*zero)) : NULL;
    uint32_t node_key = 0;
    if (zero && stats_fd >= 0)
        bpf_map_update_elem(stats_fd, &node_key, zero, BPF_NOEXIST);
    free(zero);

    /* Written last: a crash before this point leaves the old hash, so the next load retries the upgrade. */
    int meta_fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "meta"));
    struct myc_meta m = { .object_hash = hash, .abi_version = MYC_ABI_VERSION };
    uint32_t k = 0;
    if (meta_fd < 0 || bpf_map_update_elem(meta_fd, &k, &m, BPF_ANY) < 0) {
        rc = dp_fail(err, errlen, -EIO, "Cannot record the loaded object in %s/meta.", dp_dir(pin_dir));
        goto out;
    }
    rc = 0;
out:
    bpf_object__close(obj); /* programs live on in their pins and links, maps in their pins */
    dp_unlock(lock);
    return rc;
}

static void dp_remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char path[800];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (de->d_type == DT_DIR)
            dp_remove_dir(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

int myc_dp_unload(const char *pin_dir, char *err, size_t errlen)
{
    const char *dir = dp_dir(pin_dir);
    struct statfs st;
    if (statfs(dir, &st) < 0)
        return errno == ENOENT ? 0 : dp_fail(err, errlen, -errno, "Cannot read %s: %s.", dir, strerror(errno));
    if (st.f_type != BPF_FS_MAGIC_NUMBER)
        return dp_fail(err, errlen, -EINVAL, "Refusing to unload %s: it is not on a bpf filesystem.", dir);
    int lock = dp_lock(pin_dir, err, errlen);
    if (lock < 0)
        return lock == -ENOENT ? 0 : lock;
    /* Links first, so every interface is detached before the programs' pins go. */
    char links[512];
    dp_path(links, sizeof(links), pin_dir, "links");
    DIR *d = opendir(links);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char path[800];
            snprintf(path, sizeof(path), "%s/%s", links, de->d_name);
            dp_detach_path(path);
        }
        closedir(d);
    }
    dp_remove_dir(links);
    dp_remove_dir(dir);
    dp_unlock(lock);
    if (access(dir, F_OK) == 0)
        return dp_fail(err, errlen, -EBUSY, "Could not remove everything under %s.", dir);
    return 0;
}

int myc_dp_probe_tcx(int *link_errno, char *err, size_t errlen) {
    /* r0 = 0; exit */
    const struct bpf_insn insns[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
        {.code = BPF_JMP | BPF_EXIT},
    };
    int prog_fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "myc_tcx_probe", "GPL", insns, 2, NULL);
    if (prog_fd < 0) {
        int le = errno;
        return dp_fail(err, errlen, -le, "Cannot load a BPF program to probe tcx (%s)", strerror(le));
    }
    int link_fd = bpf_link_create(prog_fd, 0x7ffffff0, MYC_BPF_TCX_INGRESS, NULL);
    int e = link_fd < 0 ? errno : 0;
    if (link_fd >= 0) close(link_fd);
    close(prog_fd);
    if (link_errno) *link_errno = e;
    return (link_fd >= 0 || e == ENODEV) ? 1 : 0;
}
