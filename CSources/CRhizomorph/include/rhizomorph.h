/*
 * Rhizomorph: the bulk transport for RAM replication, VM migration and storage traffic.
 *
 * A session joins two nodes over several TCP connections spread across several network paths
 * (a path is a local address and a remote address). Data is cut into sequenced, encrypted chunks;
 * a scheduler puts each chunk on the connection expected to deliver it first, reinjects chunks
 * stuck behind a slow path, and resends the chunks of a dead connection on the others. The
 * receiver deduplicates by sequence number and acknowledges what it has verified.
 *
 * Two delivery modes, one per direction at a time:
 *   - ordered byte stream: rz_send_fd pumps an fd into the session, rz_recv_fd writes the bytes, in
 *     order, into an fd (a QEMU migration stream handed over as an fd);
 *   - pages with barriers: rz_send_page writes idempotent data at an offset, rz_send_barrier closes
 *     an epoch. The receiver's page callback sees a page as soon as it arrives, in any order within
 *     its epoch; the barrier callback for epoch E runs only after every chunk sent before it, and no
 *     page sent after barrier E is delivered before barrier E.
 *
 * Handshake: docs/HANDSHAKE.md (the stream handshake; Endophyte's TCP transport speaks the same one).
 *
 * Conventions: every function returns 0 (or a count where documented) or a negative errno. Functions
 * that can fail for a reason worth reading take an rz_error*, which may be NULL, and fill it with the
 * code and a message. Handshake failures have distinct codes:
 *   -ENONET           the peer belongs to another network (network ID differs)
 *   -EACCES           the peer's identity key is not the expected one
 *   -EKEYREJECTED     a handshake signature or join token does not verify
 *   -EPROTO           malformed handshake or frame
 *   -EPROTONOSUPPORT  protocol version mismatch
 *   -EBADMSG          too many chunks failed authentication (tampering on the wire)
 *   -ECONNREFUSED     the peer refused us (its reason is in the message)
 *   -ESHUTDOWN        the session was shut down locally (rz_session_shutdown)
 *   -ETIMEDOUT, -ENETDOWN (every path is dead), and plain errnos from the system.
 */
#ifndef RHIZOMORPH_H
#define RHIZOMORPH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Protocol version spoken on the wire. */
#define RZ_PROTOCOL_VERSION 2u
/** Upper bound on the payload of one chunk. */
#define RZ_MAX_CHUNK 1048576u
/** Upper bound on connections in one session. */
#define RZ_MAX_CONNS 32u
/** Upper bound on paths in one session. */
#define RZ_MAX_PATHS 8u
/** Upper bound on the allowed peer keys of one rz_accept_any call. */
#define RZ_MAX_ALLOWED_PEERS 4096u

/** A readable error: the negative errno that was returned and what happened. */
typedef struct rz_error {
    int code;
    char message[256];
} rz_error;

/** A node's long-term Ed25519 identity (libsodium crypto_sign layout). */
typedef struct rz_identity {
    uint8_t public_key[32];
    uint8_t secret_key[64];
} rz_identity;

/** One network path: the local address to bind and the peer's address. IPv4 or IPv6 literals. */
typedef struct rz_path {
    char local_addr[64];
    char remote_addr[64];
    uint16_t remote_port;
} rz_path;

typedef enum rz_cipher {
    RZ_CIPHER_AUTO = 0,            /* AES-256-GCM when both ends have hardware AES, else XChaCha20 */
    RZ_CIPHER_AES256GCM = 1,
    RZ_CIPHER_XCHACHA20POLY1305 = 2,
} rz_cipher;

/** Session parameters. Zero means "default" for every numeric field (see rz_config_init). */
typedef struct rz_config {
    rz_identity identity;          /* our identity */
    uint8_t network_id[16];        /* both ends must agree */
    uint8_t peer_public_key[32];   /* the identity we expect on the other side */
    uint32_t conns_per_path;       /* TCP connections per path (default 2) */
    uint32_t chunk_size;           /* bytes per chunk (default 65536, at most RZ_MAX_CHUNK) */
    uint32_t window_bytes;         /* most unacknowledged payload in flight (default 64 MiB) */
    uint32_t stall_timeout_ms;     /* a connection silent this long is dead (default 1500) */
    uint32_t user_timeout_ms;      /* TCP_USER_TIMEOUT (default 2 * stall_timeout_ms) */
    uint32_t connect_timeout_ms;   /* per connection attempt (default 2000) */
    uint32_t handshake_timeout_ms; /* per handshake read (default 3000) */
    uint32_t max_auth_failures;    /* chunks that fail authentication before the session fails (default 8; TCP checksums make one already suspicious) */
    uint32_t notsent_lowat;        /* TCP_NOTSENT_LOWAT per connection (default 262144) */
    rz_cipher cipher;              /* force a cipher (tests, benchmarks) */
} rz_config;

/** Counters of one session, both directions. */
typedef struct rz_stats {
    uint64_t chunks_sent;          /* first transmissions */
    uint64_t chunks_resent;        /* after a connection died */
    uint64_t chunks_reinjected;    /* duplicated from a slow connection to a faster one */
    uint64_t chunks_received;      /* verified and new */
    uint64_t duplicates_dropped;   /* already had it (reinjection, resend or replay) */
    uint64_t auth_failures;        /* chunks or control frames that failed authentication */
    uint64_t conns_failed;         /* connections declared dead */
    uint64_t conns_joined;         /* connections that completed a join (including reconnects) */
    uint64_t bytes_sent;           /* payload bytes, first transmissions */
    uint64_t bytes_received;       /* payload bytes delivered */
    uint32_t conns_live;
    uint32_t cipher;               /* rz_cipher in use */
    uint64_t per_path_bytes[RZ_MAX_PATHS]; /* bytes written on each path, all transmissions */
} rz_stats;

typedef struct rz_session rz_session;
typedef struct rz_listener rz_listener;

/** Called for each page, in any order within an epoch, on the thread inside rz_recv_pages. Return 0
 * or a negative errno, which fails the session. `data` is valid during the call only. */
typedef int (*rz_page_fn)(void *context, uint64_t offset, const uint8_t *data, uint32_t length);
/** Called when every chunk sent before the barrier has been delivered. */
typedef int (*rz_barrier_fn)(void *context, uint64_t epoch);

/** Fill *config with defaults, our identity and the expected peer. */
void rz_config_init(rz_config *config, const rz_identity *identity, const uint8_t network_id[16],
                    const uint8_t peer_public_key[32]);

/** Create a fresh Ed25519 identity, or derive one from a 32-byte seed. */
int rz_identity_generate(rz_identity *out);
int rz_identity_from_seed(rz_identity *out, const uint8_t seed[32]);

/** Open a listener on `count` local addresses, all on `port` (0 picks one, returned in *bound_port;
 * with several addresses, the port picked for the first is used for the rest). */
int rz_listener_open(rz_listener **out, const char *const *addresses, uint32_t count, uint16_t port,
                     uint16_t *bound_port, rz_error *error);
/** Wait up to timeout_ms (negative: forever) for one new session and authenticate it. A failed
 * handshake returns its error (the listener keeps running); call again for the next peer. */
int rz_accept(rz_listener *listener, const rz_config *config, int timeout_ms, rz_session **out,
              rz_error *error);
/** rz_accept for a listener that serves several peers: the peer's identity key must be one of
 * `count` keys (allowed_keys holds them back to back, 32 bytes each; config->peer_public_key is
 * ignored). *index (may be NULL) gets the position of the peer's key. A key not in the set is
 * refused with -EACCES, a PROOF not signed by the key the peer presented with -EKEYREJECTED, as
 * in rz_accept. count is 1..RZ_MAX_ALLOWED_PEERS, else -EINVAL. */
int rz_accept_any(rz_listener *listener, const rz_config *config, const uint8_t *allowed_keys, uint32_t count,
                  int timeout_ms, rz_session **out, uint32_t *index, rz_error *error);
/** Stop the listener. Close its sessions first. */
void rz_listener_close(rz_listener *listener);

/** Connect to a peer over `path_count` paths with config->conns_per_path connections each. Returns
 * once the handshake succeeded on one connection and the others joined or failed to within the
 * connect timeout (failed ones are retried with backoff in the background). */
int rz_connect(const rz_config *config, const rz_path *paths, uint32_t path_count, rz_session **out,
               rz_error *error);

/** Send `length` bytes read from fd (UINT64_MAX: until EOF) as an ordered stream and wait until the
 * peer has written all of them. Returns 0 or a negative errno. */
int rz_send_fd(rz_session *session, int fd, uint64_t length, rz_error *error);
/** Send `length` bytes from memory as an ordered stream; `end` marks end of stream. Does not wait
 * for delivery unless `end` is set. */
int rz_send_bytes(rz_session *session, const uint8_t *data, uint64_t length, int end, rz_error *error);
/** Receive an ordered stream and write it to fd until the sender ends it. *received gets the byte
 * count (may be NULL). */
int rz_recv_fd(rz_session *session, int fd, uint64_t *received, rz_error *error);

/** Queue an idempotent write of `length` bytes at `offset` (split into chunks). Copies the data. */
int rz_send_page(rz_session *session, uint64_t offset, const uint8_t *data, uint32_t length, rz_error *error);
/** Close epoch `epoch`. Pages queued afterwards belong to the next epoch. Does not wait. */
int rz_send_barrier(rz_session *session, uint64_t epoch, rz_error *error);
/** Wait until the peer delivered everything queued so far (timeout_ms < 0: forever). */
int rz_flush(rz_session *session, int timeout_ms, rz_error *error);
/** Tell the peer this direction is finished and wait until it delivered everything. */
int rz_send_end(rz_session *session, int timeout_ms, rz_error *error);
/** Receive pages and barriers, calling the callbacks on this thread, until the sender ends the
 * direction (returns 0), the session fails, or timeout_ms passes (-ETIMEDOUT; call again). */
int rz_recv_pages(rz_session *session, rz_page_fn on_page, rz_barrier_fn on_barrier, void *context,
                  int timeout_ms, rz_error *error);

/** Counters. */
int rz_session_stats(rz_session *session, rz_stats *out);
/** The session's 16-byte ID (same at both ends). */
int rz_session_id(rz_session *session, uint8_t out[16]);
/** Wait until `count` connections are live (timeout_ms < 0: forever). */
int rz_session_wait_conns(rz_session *session, uint32_t count, int timeout_ms);
/** Fail the session with -ESHUTDOWN so that calls blocked in it on other threads return; frees
 * nothing. Call rz_session_close once they have all returned. */
void rz_session_shutdown(rz_session *session);
/** Close: flush acknowledgements, tell the peer, wait for it briefly, free everything. No call on
 * the session may be in progress or follow (see rz_session_shutdown). */
void rz_session_close(rz_session *session);

/** The readable name of an errno returned by this library. */
const char *rz_strerror(int code);

/* ---- RDMA backend (ibverbs). Chosen when rz_rdma_probe finds a device. ---- */

typedef struct rz_rdma_device_info {
    char name[64];
    uint64_t guid;
    uint32_t port_count;
} rz_rdma_device_info;

/** List RDMA devices: returns the count (0: "none", not an error), fills up to `capacity` entries. */
int rz_rdma_probe(rz_rdma_device_info *out, uint32_t capacity, rz_error *error);

#ifdef __cplusplus
}
#endif
#endif
