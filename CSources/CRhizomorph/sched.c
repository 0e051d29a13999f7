/* Scheduler arithmetic (pure). The shell in session.c fills rz_sched_conn from TCP_INFO, SIOCOUTQ and
 * its own queues; these functions only decide. The rule is "earliest expected arrival", the idea of
 * the BLEST and ECF schedulers for MPTCP: a chunk goes where it lands first, so a fast path with a
 * short queue wins over an idle slow path, and a slow path gets a chunk only when the fast ones are
 * busy enough that the slow one still finishes sooner. */
#include "internal.h"

double rz_sched_eta(const rz_sched_conn *c, uint32_t len) {
    double rate = c->rate > 1.0 ? c->rate : 1.0;
    return c->rtt / 2.0 + (double)(c->queued + len) / rate;
}

int rz_sched_pick(const rz_sched_conn *conns, uint32_t n, uint32_t len, uint64_t exclude_mask, double *eta) {
    int best = -1;
    double best_eta = 0;
    for (uint32_t i = 0; i < n && i < 64; i++) {
        if (!conns[i].usable || (exclude_mask >> i) & 1u) continue;
        double e = rz_sched_eta(&conns[i], len);
        if (best < 0 || e < best_eta) {
            best = (int)i;
            best_eta = e;
        }
    }
    if (eta) *eta = best_eta;
    return best;
}

bool rz_sched_should_reinject(double age, double promised, double best_other) {
    const double margin = 0.010; /* 10 ms: below this, the cost of duplicate bytes is not worth it */
    if (age < 2.0 * promised + margin) return false;
    return best_other + margin < age; /* the other path would have it there before the original is this late again */
}

void rz_rate_init(rz_rate *r, double initial) {
    r->rate = initial;
    r->ceiling = 2 * initial;
    r->last_time = 0;
    r->last_acked = 0;
    r->primed = false;
}

void rz_rate_sample(rz_rate *r, double now, uint64_t acked_total, bool backlogged) {
    if (!r->primed) {
        r->primed = true;
        r->last_time = now;
        r->last_acked = acked_total;
        return;
    }
    double dt = now - r->last_time;
    if (dt < 0.010) return;
    uint64_t d = acked_total >= r->last_acked ? acked_total - r->last_acked : 0;
    if (backlogged) {
        double s = (double)d / dt;
        r->rate = 0.75 * r->rate + 0.25 * s;
        r->ceiling = 2 * r->rate;
    } else if (r->rate < r->ceiling) {
        r->rate *= 1.02; /* idle: probe upwards, up to twice what was last measured */
    }
    if (r->rate < 64 * 1024.0) r->rate = 64 * 1024.0;
    if (r->rate > 100e9 / 8) r->rate = 100e9 / 8;
    r->last_time = now;
    r->last_acked = acked_total;
}
