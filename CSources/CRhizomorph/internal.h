/*
 * Rhizomorph internals. The pure parts (wire codec, handshake crypto, scheduler arithmetic, receive
 * window) are separate from the I/O shell (session.c) so the unit tests and the fuzzer drive them
 * without sockets.
 */
#ifndef RZ_INTERNAL_H
#define RZ_INTERNAL_H

#include "include/rhizomorph.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef EKEYREJECTED
#define EKEYREJECTED 129
#endif

/* ---------------------------------------------------------------- errors */

int rz_fail(rz_error *error, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------- wire */

#define RZ_MAGIC0 'R'
#define RZ_MAGIC1 'H'
#define RZ_MAGIC2 'I'
#define RZ_MAGIC3 'Z'
#define RZ_PREAMBLE_LEN 8u

enum rz_msg_type {
    RZ_MSG_HELLO = 1,
    RZ_MSG_REPLY = 2,
    RZ_MSG_REJECT = 3,
    RZ_MSG_JOIN = 4,
    RZ_MSG_JOIN_OK = 5,
    RZ_MSG_PROOF = 6,
    RZ_MSG_ACCEPT = 7,
};

#define RZ_HELLO_BODY 116u
#define RZ_REPLY_BODY 196u
#define RZ_REPLY_SIGNED 132u /* the REPLY up to its signature: what the binding covers */
#define RZ_PROOF_BODY 64u
#define RZ_JOIN_BODY 72u
#define RZ_JOIN_MACED 40u
#define RZ_JOIN_OK_BODY 52u
#define RZ_JOIN_OK_MACED 20u
#define RZ_REJECT_MAX_TEXT 200u
#define RZ_HS_MAX_MSG (RZ_PREAMBLE_LEN + 2u + RZ_REJECT_MAX_TEXT)

enum rz_reject_reason {
    RZ_REJECT_WRONG_NETWORK = 1,
    RZ_REJECT_WRONG_IDENTITY = 2,
    RZ_REJECT_BAD_SIGNATURE = 3,
    RZ_REJECT_MALFORMED = 4,
    RZ_REJECT_VERSION = 5,
    RZ_REJECT_BAD_JOIN = 6,
    RZ_REJECT_INTERNAL = 7,
    RZ_REJECT_SESSION_FAILED = 8, /* a JOIN for a session that has failed: the text says why */
};

#define RZ_CAP_AES 1u
#define RZ_CAP_FORCE_XCHACHA 2u

typedef struct rz_preamble {
    uint8_t version;
    uint8_t type;
    uint16_t body_len;
} rz_preamble;

typedef struct rz_hello {
    uint8_t network_id[16];
    uint8_t identity[32];
    uint8_t ephemeral[32];
    uint8_t nonce[32];
    uint32_t caps;
} rz_hello;

typedef struct rz_reply {
    uint8_t network_id[16];
    uint8_t identity[32];
    uint8_t ephemeral[32];
    uint8_t nonce[32];
    uint8_t session_id[16];
    uint32_t cipher;
    uint8_t signature[64];
} rz_reply;

typedef struct rz_join {
    uint8_t session_id[16];
    uint32_t conn_id;
    uint32_t path_id;
    uint8_t nonce[16];
    uint8_t mac[32];
} rz_join;

typedef struct rz_join_ok {
    uint8_t session_id[16];
    uint32_t conn_id;
    uint8_t mac[32];
} rz_join_ok;

typedef struct rz_reject {
    uint8_t reason;
    uint8_t text_len;
    char text[RZ_REJECT_MAX_TEXT + 1];
} rz_reject;

void rz_put16(uint8_t *p, uint16_t v);
void rz_put32(uint8_t *p, uint32_t v);
void rz_put64(uint8_t *p, uint64_t v);
uint16_t rz_get16(const uint8_t *p);
uint32_t rz_get32(const uint8_t *p);
uint64_t rz_get64(const uint8_t *p);

/* Handshake messages are a preamble ("RHIZ", version, type, body length) and a fixed body. The
 * decoders take the whole message and check every length; -EAGAIN means "need more bytes". */
void rz_preamble_encode(uint8_t out[RZ_PREAMBLE_LEN], uint8_t type, uint16_t body_len);
int rz_preamble_decode(const uint8_t *in, size_t len, rz_preamble *out);
size_t rz_hello_encode(uint8_t *out, const rz_hello *h);   /* writes RZ_PREAMBLE_LEN + RZ_HELLO_BODY */
int rz_hello_decode(const uint8_t *in, size_t len, rz_hello *out);
size_t rz_reply_encode(uint8_t *out, const rz_reply *r);
int rz_reply_decode(const uint8_t *in, size_t len, rz_reply *out);
size_t rz_join_encode(uint8_t *out, const rz_join *j);
int rz_join_decode(const uint8_t *in, size_t len, rz_join *out);
size_t rz_join_ok_encode(uint8_t *out, const rz_join_ok *j);
int rz_join_ok_decode(const uint8_t *in, size_t len, rz_join_ok *out);
size_t rz_proof_encode(uint8_t *out, const uint8_t signature[64]);
int rz_proof_decode(const uint8_t *in, size_t len, uint8_t signature[64]);
size_t rz_accept_encode(uint8_t *out);
int rz_accept_decode(const uint8_t *in, size_t len);
size_t rz_reject_encode(uint8_t *out, uint8_t reason, const char *text);
int rz_reject_decode(const uint8_t *in, size_t len, rz_reject *out);

/* After the handshake every frame is a 32-byte header and an AEAD body (ciphertext + 16-byte tag).
 * The header is the AEAD's associated data, so every field in it is authenticated. */
#define RZ_FRAME_HDR 32u
#define RZ_TAG 16u

enum rz_frame_type {
    RZ_FRAME_DATA = 16,    /* stream bytes; arg0 = stream offset */
    RZ_FRAME_PAGE = 17,    /* page write; arg0 = offset, arg1 = epoch index */
    RZ_FRAME_BARRIER = 18, /* arg0 = caller's epoch label, arg1 = epoch index it closes */
    RZ_FRAME_END = 19,     /* end of this direction; arg0 = total stream bytes */
    RZ_FRAME_ACK = 32,     /* control: acknowledgement */
    RZ_FRAME_PING = 33,    /* control: liveness, echoed as PONG on the same connection */
    RZ_FRAME_PONG = 34,
    RZ_FRAME_CLOSE = 35,   /* control: the peer is closing the session */
};

static inline bool rz_frame_is_chunk(uint8_t type) { return type >= RZ_FRAME_DATA && type <= RZ_FRAME_END; }

typedef struct rz_frame_hdr {
    uint8_t type;
    uint8_t flags;
    uint32_t body_len; /* plaintext length + RZ_TAG */
    uint64_t seq;      /* chunk sequence number, or control counter for control frames */
    uint64_t arg0;
    uint64_t arg1;
} rz_frame_hdr;

void rz_frame_hdr_encode(uint8_t out[RZ_FRAME_HDR], const rz_frame_hdr *h);
/* -EAGAIN: fewer than RZ_FRAME_HDR bytes; -EPROTO: unknown type, reserved bits set, or a body
 * longer than max_body or shorter than a tag. */
int rz_frame_hdr_decode(const uint8_t *in, size_t len, uint32_t max_body, rz_frame_hdr *out);

/* An acknowledgement: everything below `cumulative` is delivered to the application (this opens the
 * sender's window); the ranges list chunks received and verified (the sender may free them). */
#define RZ_ACK_MAX_RANGES 64u
#define RZ_ACK_FIXED 12u
#define RZ_ACK_RANGE 12u
typedef struct rz_ack_range {
    uint64_t start;
    uint32_t count;
} rz_ack_range;
typedef struct rz_ack {
    uint64_t cumulative;
    uint32_t range_count;
    rz_ack_range ranges[RZ_ACK_MAX_RANGES];
} rz_ack;
size_t rz_ack_encode(uint8_t *out, const rz_ack *a);
int rz_ack_decode(const uint8_t *in, size_t len, rz_ack *out);

/* ---------------------------------------------------------------- crypto */

typedef struct rz_aead {
    int cipher; /* rz_cipher, never AUTO */
    void *aes_state; /* crypto_aead_aes256gcm_state, 16-byte aligned */
    uint8_t key[32];
} rz_aead;

#define RZ_NONCE_DATA 0u
#define RZ_NONCE_CONTROL 1u

int rz_aead_init(rz_aead *aead, int cipher, const uint8_t key[32]);
void rz_aead_free(rz_aead *aead);
/* Nonce = (sequence, domain). Keys are per session and direction, so a nonce never repeats under a
 * key: a chunk is sealed once and resent byte for byte. */
void rz_aead_seal(const rz_aead *aead, uint8_t *out, const uint8_t *plain, size_t len, const uint8_t *ad,
                  size_t ad_len, uint64_t seq, uint8_t domain);
int rz_aead_open(const rz_aead *aead, uint8_t *out, const uint8_t *cipher, size_t len, const uint8_t *ad,
                 size_t ad_len, uint64_t seq, uint8_t domain);
bool rz_aes_available(void);

typedef struct rz_keys {
    uint8_t session_id[16];
    uint8_t tx[32];
    uint8_t rx[32];
    uint8_t join[32];
    int cipher;
} rz_keys;

/* The stream handshake (docs/HANDSHAKE.md): HELLO, REPLY (server's proof), PROOF (client's proof),
 * ACCEPT. MyceliumIdentity's StreamHandshake.swift implements the same messages in Swift. */
typedef struct rz_hs_client {
    uint8_t eph_sk[32];
    uint8_t eph_pk[32];
    uint8_t nonce[32];
    uint8_t hello[RZ_PREAMBLE_LEN + RZ_HELLO_BODY];
} rz_hs_client;

/* What the server keeps between its REPLY and the client's PROOF. */
typedef struct rz_hs_server_state {
    uint8_t binding[32];
    uint8_t peer[32];
    uint8_t nonce[32];
    uint8_t network_id[16];
} rz_hs_server_state;

int rz_hs_client_hello(rz_hs_client *st, const rz_config *cfg, uint8_t *out, size_t *out_len);
/* Judge a HELLO and write the REPLY into *reply. On failure, *reply holds a REJECT to send back
 * (when *reply_len > 0). */
int rz_hs_server(const rz_config *cfg, const uint8_t *hello, size_t hello_len, uint8_t *reply, size_t *reply_len,
                 rz_keys *keys, rz_hs_server_state *st, rz_error *error);
/* The same, accepting a HELLO from any of `count` identity keys (32 bytes each, `allowed`); *index
 * (may be NULL) gets the position of the peer's key. The PROOF is then checked against that key. */
int rz_hs_server_any(const rz_config *cfg, const uint8_t *allowed, uint32_t count, const uint8_t *hello,
                     size_t hello_len, uint8_t *reply, size_t *reply_len, rz_keys *keys, rz_hs_server_state *st,
                     uint32_t *index, rz_error *error);
/* Judge the client's PROOF; *out gets the ACCEPT, or a REJECT on failure (when *out_len > 0). */
int rz_hs_server_finish(const rz_hs_server_state *st, const uint8_t *proof, size_t proof_len, uint8_t *out,
                        size_t *out_len, rz_error *error);
/* Judge the REPLY; *out gets our PROOF, or a REJECT on failure (when *out_len > 0). */
int rz_hs_client_finish(rz_hs_client *st, const rz_config *cfg, const uint8_t *reply, size_t reply_len,
                        rz_keys *keys, uint8_t *out, size_t *out_len, rz_error *error);
/* The server's last word: 0 for ACCEPT, the reason of a REJECT otherwise. */
int rz_hs_client_verdict(const uint8_t *msg, size_t len, rz_error *error);
size_t rz_join_make(const rz_keys *keys, uint32_t conn_id, uint32_t path_id, uint8_t *out);
/* Verify a JOIN for a session whose keys we hold; on success write JOIN_OK into *ok. */
int rz_join_check(const rz_keys *keys, const rz_join *join, const uint8_t *msg, size_t msg_len, uint8_t *ok,
                  size_t *ok_len, rz_error *error);
int rz_join_ok_check(const rz_keys *keys, const uint8_t *join_msg, const uint8_t *msg, size_t len, uint32_t conn_id,
                     rz_error *error);

/* ---------------------------------------------------------------- scheduler */

/* What the scheduler knows about one connection. */
typedef struct rz_sched_conn {
    bool usable;
    double rate;          /* bytes/s, estimated */
    double rtt;           /* seconds */
    uint64_t queued;      /* bytes ahead of a new chunk: kernel send queue (SIOCOUTQ) + our queue */
} rz_sched_conn;

/* Expected time until a chunk of `len` bytes would arrive over this connection. */
double rz_sched_eta(const rz_sched_conn *c, uint32_t len);
/* Index of the usable connection with the earliest ETA, skipping those in exclude_mask; -1 if none. */
int rz_sched_pick(const rz_sched_conn *conns, uint32_t n, uint32_t len, uint64_t exclude_mask, double *eta);
/* Reinject a chunk that is still unacknowledged `age` seconds after it was queued on a connection that
 * promised `promised` seconds, when another connection offers `best_other`? Only when the original
 * is clearly late (twice its promise plus a margin) and the other would deliver sooner than the
 * original's remaining promise. */
bool rz_sched_should_reinject(double age, double promised, double best_other);

/* Delivery-rate estimator: samples bytes acknowledged by TCP (bytes written - SIOCOUTQ) while the
 * connection had a backlog; an idle connection's estimate creeps up so a path that was starved on a
 * low estimate gets probed again. */
typedef struct rz_rate {
    double rate;        /* bytes/s */
    double ceiling;     /* idle creep stops here: twice the last backlogged estimate */
    double last_time;
    uint64_t last_acked;
    bool primed;
} rz_rate;
void rz_rate_init(rz_rate *r, double initial);
void rz_rate_sample(rz_rate *r, double now, uint64_t acked_total, bool backlogged);

/* ---------------------------------------------------------------- receive window */

enum rz_slot_state { RZ_SLOT_EMPTY = 0, RZ_SLOT_HELD = 1, RZ_SLOT_BUSY = 2, RZ_SLOT_DONE = 3 };

typedef struct rz_rx_slot {
    uint8_t state;
    uint8_t type;
    uint32_t len;
    uint64_t arg0;
    uint64_t arg1;
    uint8_t *data;
} rz_rx_slot;

/* The receiver's view of one direction: chunks below `cumulative` are delivered; chunks at or above
 * cumulative + slot_count are refused (the sender never goes that far). */
typedef struct rz_rxwin {
    uint64_t cumulative;
    uint64_t open_epoch;  /* page epochs below this are committed */
    uint32_t slot_count;  /* power of two */
    rz_rx_slot *slots;
    uint64_t *ready;      /* FIFO of sequence numbers worth looking at (pages mode) */
    uint32_t ready_head, ready_len;
    bool ended;           /* END delivered */
    uint64_t end_bytes;
} rz_rxwin;

int rz_rxwin_init(rz_rxwin *w, uint32_t slot_count);
void rz_rxwin_free(rz_rxwin *w);
/* 1: new chunk stored (takes ownership of data); 0: duplicate (data not taken); -EPROTO: outside the
 * window or contradicting what was stored. */
int rz_rxwin_insert(rz_rxwin *w, uint64_t seq, uint8_t type, uint64_t arg0, uint64_t arg1, uint8_t *data,
                    uint32_t len);
bool rz_rxwin_has(const rz_rxwin *w, uint64_t seq);
/* Ordered mode: the next chunk in sequence, marked BUSY, or NULL. */
rz_rx_slot *rz_rxwin_next_ordered(rz_rxwin *w, uint64_t *seq);
/* Pages mode: a page of the open epoch or a barrier whose predecessors are all delivered; NULL if
 * nothing is deliverable now. Marks it BUSY. -EPROTO in *err on a protocol violation. */
rz_rx_slot *rz_rxwin_next_page(rz_rxwin *w, uint64_t *seq, int *err);
/* Mark a BUSY slot delivered, free its data and advance the cumulative point. */
void rz_rxwin_done(rz_rxwin *w, uint64_t seq);

/* ---------------------------------------------------------------- RDMA bookkeeping */

/* Credit-based flow control for the RDMA backend: the receiver posts receive buffers and grants one
 * credit per buffer; the sender spends one per chunk and never posts without one (an RC send with
 * no posted receive is an RNR error). Credits come back piggybacked on acknowledgements. */
typedef struct rz_rdma_credits {
    uint32_t available;    /* sender: credits it may spend */
    uint32_t outstanding;  /* sender: sends posted, completion not yet seen */
    uint32_t max_outstanding; /* send queue depth */
    uint32_t granted_total;   /* receiver: buffers posted so far */
    uint32_t consumed_total;  /* receiver: buffers the sender filled */
} rz_rdma_credits;

void rz_rdma_credits_init(rz_rdma_credits *c, uint32_t initial_credits, uint32_t send_queue_depth);
/* Sender: may a chunk be posted now? Consumes a credit and a send slot on success. */
bool rz_rdma_credit_take(rz_rdma_credits *c);
/* Sender: a send completion arrived. */
int rz_rdma_send_completed(rz_rdma_credits *c);
/* Sender: the peer granted `n` more credits (its cumulative grant is `granted_total`). Returns -EPROTO
 * if the grant goes backwards or exceeds the buffers it can have. */
int rz_rdma_credit_grant(rz_rdma_credits *c, uint32_t peer_granted_total, uint32_t *last_seen_total);
/* Receiver: a buffer was consumed; returns how many credits to grant back once reposted. */
uint32_t rz_rdma_recv_consumed(rz_rdma_credits *c, uint32_t reposted);

/* Map a chunk of `len` bytes onto RDMA work requests of at most `max_msg` bytes. */
uint32_t rz_rdma_wr_count(uint32_t len, uint32_t max_msg);

#endif
