/*
 * RDMA backend (ibverbs): device probing, the credit bookkeeping, and the verbs resources of one
 * reliable-connected queue pair that carries the same sealed chunks as the TCP connections.
 *
 * Status: this machine has no RDMA device, so only the device-free parts (probing reporting "none",
 * credits, work-request sizing) are exercised by tests. rz_rdma_endpoint_* compiles against
 * libibverbs and follows the standard RC setup (PD, CQ, QP, MR, INIT->RTR->RTS), but has never run.
 */
#include "internal.h"

#include <infiniband/verbs.h>
#include <stdlib.h>
#include <string.h>

int rz_rdma_probe(rz_rdma_device_info *out, uint32_t capacity, rz_error *error) {
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list) {
        /* ENOSYS: no uverbs support in the kernel at all, which also means "none". */
        if (errno == ENOSYS || errno == ENOENT || errno == 0) return 0;
        return rz_fail(error, -errno, "ibv_get_device_list: %s", strerror(errno));
    }
    for (int i = 0; i < n && (uint32_t)i < capacity && out; i++) {
        memset(&out[i], 0, sizeof out[i]);
        const char *name = ibv_get_device_name(list[i]);
        if (name) strncpy(out[i].name, name, sizeof out[i].name - 1);
        out[i].guid = ibv_get_device_guid(list[i]);
        struct ibv_context *ctx = ibv_open_device(list[i]);
        if (ctx) {
            struct ibv_device_attr attr;
            if (ibv_query_device(ctx, &attr) == 0) out[i].port_count = attr.phys_port_cnt;
            ibv_close_device(ctx);
        }
    }
    ibv_free_device_list(list);
    return n;
}

void rz_rdma_credits_init(rz_rdma_credits *c, uint32_t initial_credits, uint32_t send_queue_depth) {
    memset(c, 0, sizeof *c);
    c->available = initial_credits;
    c->max_outstanding = send_queue_depth;
    c->granted_total = initial_credits;
}

bool rz_rdma_credit_take(rz_rdma_credits *c) {
    if (c->available == 0 || c->outstanding >= c->max_outstanding) return false;
    c->available--;
    c->outstanding++;
    return true;
}

int rz_rdma_send_completed(rz_rdma_credits *c) {
    if (c->outstanding == 0) return -EPROTO; /* a completion we never posted */
    c->outstanding--;
    return 0;
}

int rz_rdma_credit_grant(rz_rdma_credits *c, uint32_t peer_granted_total, uint32_t *last_seen_total) {
    /* Grants are cumulative so a lost or repeated grant message cannot mint credits. uint32 arithmetic
     * wraps; a difference of more than 2^31 is "backwards". */
    uint32_t delta = peer_granted_total - *last_seen_total;
    if (delta > (1u << 31)) return -EPROTO;
    if ((uint64_t)c->available + delta > (1u << 20)) return -EPROTO;
    c->available += delta;
    *last_seen_total = peer_granted_total;
    return 0;
}

uint32_t rz_rdma_recv_consumed(rz_rdma_credits *c, uint32_t reposted) {
    c->consumed_total++;
    c->granted_total += reposted;
    return reposted;
}

uint32_t rz_rdma_wr_count(uint32_t len, uint32_t max_msg) {
    if (max_msg == 0) return 0;
    return len == 0 ? 1 : (len + max_msg - 1) / max_msg;
}

/* ---- verbs resources of one RC endpoint (never run here: no device) ---- */

typedef struct rz_rdma_endpoint {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    struct ibv_mr *mr;
    uint8_t *buffers;
    uint32_t buffer_count, buffer_size;
    rz_rdma_credits credits;
} rz_rdma_endpoint;

/* What the peers exchange over the authenticated TCP session to connect the QPs. */
typedef struct rz_rdma_conn_info {
    uint32_t qp_num;
    uint16_t lid;
    uint8_t gid[16];
    uint32_t psn;
} rz_rdma_conn_info;

int rz_rdma_endpoint_open(rz_rdma_endpoint **out, const char *device, uint32_t buffers, uint32_t buffer_size,
                          rz_rdma_conn_info *local, rz_error *error);
int rz_rdma_endpoint_connect(rz_rdma_endpoint *ep, const rz_rdma_conn_info *remote, uint8_t port, rz_error *error);
int rz_rdma_endpoint_post_send(rz_rdma_endpoint *ep, uint32_t buffer, uint32_t len);
void rz_rdma_endpoint_close(rz_rdma_endpoint *ep);

void rz_rdma_endpoint_close(rz_rdma_endpoint *ep) {
    if (!ep) return;
    if (ep->qp) ibv_destroy_qp(ep->qp);
    if (ep->mr) ibv_dereg_mr(ep->mr);
    if (ep->cq) ibv_destroy_cq(ep->cq);
    if (ep->pd) ibv_dealloc_pd(ep->pd);
    if (ep->ctx) ibv_close_device(ep->ctx);
    free(ep->buffers);
    free(ep);
}

int rz_rdma_endpoint_open(rz_rdma_endpoint **out, const char *device, uint32_t buffers, uint32_t buffer_size,
                          rz_rdma_conn_info *local, rz_error *error) {
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n == 0) {
        if (list) ibv_free_device_list(list);
        return rz_fail(error, -ENODEV, "no RDMA device");
    }
    struct ibv_device *dev = NULL;
    for (int i = 0; i < n; i++)
        if (!device || strcmp(ibv_get_device_name(list[i]), device) == 0) dev = list[i];
    rz_rdma_endpoint *ep = calloc(1, sizeof *ep);
    if (!ep) {
        ibv_free_device_list(list);
        return -ENOMEM;
    }
    int rc = 0;
    if (!dev || !(ep->ctx = ibv_open_device(dev))) {
        rc = rz_fail(error, -ENODEV, "RDMA device %s not found or not openable", device ? device : "(any)");
        goto fail;
    }
    ep->buffer_count = buffers;
    ep->buffer_size = buffer_size;
    ep->buffers = aligned_alloc(4096, ((size_t)buffers * buffer_size + 4095) & ~(size_t)4095);
    if (!ep->buffers) { rc = -ENOMEM; goto fail; }
    if (!(ep->pd = ibv_alloc_pd(ep->ctx))) { rc = rz_fail(error, -EIO, "ibv_alloc_pd failed"); goto fail; }
    if (!(ep->cq = ibv_create_cq(ep->ctx, (int)(2 * buffers), NULL, NULL, 0))) {
        rc = rz_fail(error, -EIO, "ibv_create_cq failed");
        goto fail;
    }
    ep->mr = ibv_reg_mr(ep->pd, ep->buffers, (size_t)buffers * buffer_size, IBV_ACCESS_LOCAL_WRITE);
    if (!ep->mr) { rc = rz_fail(error, -EIO, "ibv_reg_mr failed"); goto fail; }
    struct ibv_qp_init_attr qa = {
        .send_cq = ep->cq, .recv_cq = ep->cq, .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = buffers, .max_recv_wr = buffers, .max_send_sge = 1, .max_recv_sge = 1},
    };
    if (!(ep->qp = ibv_create_qp(ep->pd, &qa))) { rc = rz_fail(error, -EIO, "ibv_create_qp failed"); goto fail; }
    struct ibv_port_attr pa;
    if (ibv_query_port(ep->ctx, 1, &pa) != 0) { rc = rz_fail(error, -EIO, "ibv_query_port failed"); goto fail; }
    union ibv_gid gid;
    memset(&gid, 0, sizeof gid);
    ibv_query_gid(ep->ctx, 1, 0, &gid);
    local->qp_num = ep->qp->qp_num;
    local->lid = pa.lid;
    memcpy(local->gid, gid.raw, 16);
    local->psn = 0;
    rz_rdma_credits_init(&ep->credits, 0, buffers);
    ibv_free_device_list(list);
    *out = ep;
    return 0;
fail:
    ibv_free_device_list(list);
    rz_rdma_endpoint_close(ep);
    return rc;
}

int rz_rdma_endpoint_connect(rz_rdma_endpoint *ep, const rz_rdma_conn_info *remote, uint8_t port, rz_error *error) {
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_INIT;
    a.port_num = port;
    a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE;
    if (ibv_modify_qp(ep->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
        return rz_fail(error, -EIO, "QP to INIT failed");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = IBV_MTU_4096;
    a.dest_qp_num = remote->qp_num;
    a.rq_psn = remote->psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = 1;
    memcpy(a.ah_attr.grh.dgid.raw, remote->gid, 16);
    a.ah_attr.grh.hop_limit = 1;
    a.ah_attr.dlid = remote->lid;
    a.ah_attr.port_num = port;
    if (ibv_modify_qp(ep->qp, &a,
                      IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
        return rz_fail(error, -EIO, "QP to RTR failed");
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.sq_psn = 0;
    a.max_rd_atomic = 1;
    if (ibv_modify_qp(ep->qp, &a,
                      IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                          IBV_QP_MAX_QP_RD_ATOMIC))
        return rz_fail(error, -EIO, "QP to RTS failed");
    return 0;
}

int rz_rdma_endpoint_post_send(rz_rdma_endpoint *ep, uint32_t buffer, uint32_t len) {
    if (buffer >= ep->buffer_count || len > ep->buffer_size) return -EINVAL;
    if (!rz_rdma_credit_take(&ep->credits)) return -EAGAIN;
    struct ibv_sge sge = {.addr = (uintptr_t)(ep->buffers + (size_t)buffer * ep->buffer_size), .length = len,
                          .lkey = ep->mr->lkey};
    struct ibv_send_wr wr = {.wr_id = buffer, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
                             .send_flags = IBV_SEND_SIGNALED};
    struct ibv_send_wr *bad = NULL;
    int rc = ibv_post_send(ep->qp, &wr, &bad);
    return rc ? -rc : 0;
}
