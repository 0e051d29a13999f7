/* The receive window (pure): deduplication by sequence number, ordered delivery for streams, and the
 * epoch rule for pages. A page tagged with epoch index k is delivered only once barriers 0..k-1 are;
 * barrier k is delivered only once every chunk before it in sequence is (Remus §3: a checkpoint is
 * committed only when all of its state has arrived). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int rz_rxwin_init(rz_rxwin *w, uint32_t slot_count) {
    memset(w, 0, sizeof *w);
    if (slot_count == 0 || (slot_count & (slot_count - 1))) return -EINVAL;
    w->slot_count = slot_count;
    w->slots = calloc(slot_count, sizeof *w->slots);
    w->ready = calloc(slot_count, sizeof *w->ready);
    if (!w->slots || !w->ready) {
        rz_rxwin_free(w);
        return -ENOMEM;
    }
    return 0;
}

void rz_rxwin_free(rz_rxwin *w) {
    if (w->slots)
        for (uint32_t i = 0; i < w->slot_count; i++) free(w->slots[i].data);
    free(w->slots);
    free(w->ready);
    memset(w, 0, sizeof *w);
}

static rz_rx_slot *slot(const rz_rxwin *w, uint64_t seq) { return &w->slots[seq & (w->slot_count - 1)]; }

bool rz_rxwin_has(const rz_rxwin *w, uint64_t seq) {
    if (seq < w->cumulative) return true;
    if (seq - w->cumulative >= w->slot_count) return false;
    return slot(w, seq)->state != RZ_SLOT_EMPTY;
}

static void push_ready(rz_rxwin *w, uint64_t seq) {
    /* At most slot_count chunks can be in the window, each pushed once per state change into HELD;
     * a full FIFO only happens if the same seq is pushed repeatedly, which we avoid. */
    if (w->ready_len == w->slot_count) return;
    w->ready[(w->ready_head + w->ready_len) & (w->slot_count - 1)] = seq;
    w->ready_len++;
}

int rz_rxwin_insert(rz_rxwin *w, uint64_t seq, uint8_t type, uint64_t arg0, uint64_t arg1, uint8_t *data,
                    uint32_t len) {
    if (seq < w->cumulative) return 0;
    if (seq - w->cumulative >= w->slot_count) return -EPROTO;
    if (w->ended) return -EPROTO;
    rz_rx_slot *s = slot(w, seq);
    if (s->state != RZ_SLOT_EMPTY) return 0;
    if (type == RZ_FRAME_PAGE && arg1 < w->open_epoch) return -EPROTO; /* its barrier is already delivered */
    s->state = RZ_SLOT_HELD;
    s->type = type;
    s->arg0 = arg0;
    s->arg1 = arg1;
    s->len = len;
    s->data = data;
    if (type == RZ_FRAME_PAGE) push_ready(w, seq);
    return 1;
}

rz_rx_slot *rz_rxwin_next_ordered(rz_rxwin *w, uint64_t *seq) {
    rz_rx_slot *s = slot(w, w->cumulative);
    if (s->state != RZ_SLOT_HELD) return NULL;
    s->state = RZ_SLOT_BUSY;
    *seq = w->cumulative;
    return s;
}

rz_rx_slot *rz_rxwin_next_page(rz_rxwin *w, uint64_t *seq, int *err) {
    *err = 0;
    /* A barrier or END at the cumulative point: everything before it is delivered. */
    rz_rx_slot *c = slot(w, w->cumulative);
    if (c->state == RZ_SLOT_HELD && c->type != RZ_FRAME_PAGE) {
        if (c->type == RZ_FRAME_BARRIER && c->arg1 != w->open_epoch) {
            *err = -EPROTO;
            return NULL;
        }
        if (c->type == RZ_FRAME_DATA) {
            *err = -EPROTO; /* stream bytes in a pages session */
            return NULL;
        }
        c->state = RZ_SLOT_BUSY;
        *seq = w->cumulative;
        return c;
    }
    uint32_t n = w->ready_len;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t q = w->ready[w->ready_head];
        w->ready_head = (w->ready_head + 1) & (w->slot_count - 1);
        w->ready_len--;
        if (q < w->cumulative) continue;
        rz_rx_slot *s = slot(w, q);
        if (s->state != RZ_SLOT_HELD || s->type != RZ_FRAME_PAGE) continue;
        if (s->arg1 == w->open_epoch) {
            s->state = RZ_SLOT_BUSY;
            *seq = q;
            return s;
        }
        /* A later epoch: stays HELD; rescanned when its barrier opens the epoch. */
    }
    return NULL;
}

void rz_rxwin_done(rz_rxwin *w, uint64_t seq) {
    if (seq < w->cumulative || seq - w->cumulative >= w->slot_count) return;
    rz_rx_slot *s = slot(w, seq);
    if (s->state != RZ_SLOT_BUSY) return;
    free(s->data);
    s->data = NULL;
    s->state = RZ_SLOT_DONE;
    bool opened = false;
    if (s->type == RZ_FRAME_BARRIER) {
        w->open_epoch = s->arg1 + 1;
        opened = true;
    } else if (s->type == RZ_FRAME_END) {
        w->ended = true;
        w->end_bytes = s->arg0;
    }
    while (slot(w, w->cumulative)->state == RZ_SLOT_DONE) {
        slot(w, w->cumulative)->state = RZ_SLOT_EMPTY;
        w->cumulative++;
    }
    if (opened) {
        for (uint64_t q = w->cumulative; q < w->cumulative + w->slot_count; q++) {
            rz_rx_slot *h = slot(w, q);
            if (h->state == RZ_SLOT_HELD && h->type == RZ_FRAME_PAGE && h->arg1 == w->open_epoch) push_ready(w, q);
        }
    }
}
