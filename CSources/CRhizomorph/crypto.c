/*
 * Chunk encryption and the session handshake.
 *
 * Handshake (one round trip on the first connection):
 *   C -> S  HELLO  network ID, C's identity key, ephemeral X25519 key, random nonce, capabilities,
 *                  Ed25519 signature by C's identity over a domain string, the role 'C' and all fields.
 *   S -> C  REPLY  network ID, S's identity key, ephemeral key, session ID (random), chosen cipher,
 *                  signature by S over a domain string, the role 'S', a hash of C's HELLO and its fields.
 * Each side checks network ID, then that the identity is the one its caller expects, then the
 * signature; the first failure is reported with its own code and sent back as a REJECT. The reply's
 * signature covers the HELLO, so a replayed REPLY fails; a replayed HELLO yields keys the attacker
 * cannot compute (it lacks the ephemeral secret).
 * Keys: X25519 shared secret -> BLAKE2b keyed PRK over a hash of both messages -> crypto_kdf subkeys for
 * client-to-server, server-to-client and the join key. Per-direction keys mean a chunk from the other
 * direction or another session fails authentication.
 * Later connections send JOIN: session ID, connection and path numbers, a fresh nonce and a BLAKE2b
 * MAC under the join key; the server answers JOIN_OK with a MAC that covers the JOIN, so both ends
 * know the other holds the session keys.
 */
#include "internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static const char HELLO_CTX[] = "rhizomorph/v1/hello";
static const char REPLY_CTX[] = "rhizomorph/v1/reply";
static const char KEYS_CTX[] = "rhizomorph/v1/keys";
static const char JOIN_CTX[] = "rhizomorph/v1/join";
static const char JOIN_OK_CTX[] = "rhizomorph/v1/join-ok";
static const char KDF_CTX[8] = {'r', 'z', 's', 'e', 's', 's', 'n', '1'};

bool rz_aes_available(void) { return sodium_init() >= 0 && crypto_aead_aes256gcm_is_available(); }

int rz_aead_init(rz_aead *a, int cipher, const uint8_t key[32]) {
    memset(a, 0, sizeof *a);
    if (sodium_init() < 0) return -EIO;
    a->cipher = cipher;
    memcpy(a->key, key, 32);
    if (cipher == RZ_CIPHER_AES256GCM) {
        if (!crypto_aead_aes256gcm_is_available()) return -ENOTSUP;
        void *st = aligned_alloc(16, (sizeof(crypto_aead_aes256gcm_state) + 15) & ~(size_t)15);
        if (!st) return -ENOMEM;
        crypto_aead_aes256gcm_beforenm(st, key);
        a->aes_state = st;
    } else if (cipher != RZ_CIPHER_XCHACHA20POLY1305) {
        return -EINVAL;
    }
    return 0;
}

void rz_aead_free(rz_aead *a) {
    if (a->aes_state) {
        sodium_memzero(a->aes_state, sizeof(crypto_aead_aes256gcm_state));
        free(a->aes_state);
    }
    sodium_memzero(a, sizeof *a);
}

static void make_nonce(uint8_t nonce[24], uint64_t seq, uint8_t domain) {
    memset(nonce, 0, 24);
    rz_put64(nonce, seq);
    nonce[8] = domain;
}

void rz_aead_seal(const rz_aead *a, uint8_t *out, const uint8_t *plain, size_t len, const uint8_t *ad, size_t ad_len,
                  uint64_t seq, uint8_t domain) {
    uint8_t nonce[24];
    make_nonce(nonce, seq, domain);
    unsigned long long maclen = 0;
    if (a->cipher == RZ_CIPHER_AES256GCM)
        crypto_aead_aes256gcm_encrypt_detached_afternm(out, out + len, &maclen, plain, len, ad, ad_len, NULL, nonce,
                                                       a->aes_state);
    else
        crypto_aead_xchacha20poly1305_ietf_encrypt_detached(out, out + len, &maclen, plain, len, ad, ad_len, NULL,
                                                            nonce, a->key);
}

int rz_aead_open(const rz_aead *a, uint8_t *out, const uint8_t *cipher, size_t len, const uint8_t *ad, size_t ad_len,
                 uint64_t seq, uint8_t domain) {
    if (len < RZ_TAG) return -EBADMSG;
    uint8_t nonce[24];
    make_nonce(nonce, seq, domain);
    size_t plain = len - RZ_TAG;
    int rc;
    if (a->cipher == RZ_CIPHER_AES256GCM)
        rc = crypto_aead_aes256gcm_decrypt_detached_afternm(out, NULL, cipher, plain, cipher + plain, ad, ad_len, nonce,
                                                            a->aes_state);
    else
        rc = crypto_aead_xchacha20poly1305_ietf_decrypt_detached(out, NULL, cipher, plain, cipher + plain, ad, ad_len,
                                                                 nonce, a->key);
    return rc == 0 ? 0 : -EBADMSG;
}

int rz_identity_generate(rz_identity *out) {
    if (sodium_init() < 0) return -EIO;
    return crypto_sign_keypair(out->public_key, out->secret_key) == 0 ? 0 : -EIO;
}

int rz_identity_from_seed(rz_identity *out, const uint8_t seed[32]) {
    if (sodium_init() < 0) return -EIO;
    return crypto_sign_seed_keypair(out->public_key, out->secret_key, seed) == 0 ? 0 : -EIO;
}

static void hex8(char out[17], const uint8_t *b) {
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[16] = 0;
}

/* Signed bytes: context string || role || preamble+fields (|| hash of hello for the reply). */
static void hello_transcript(crypto_sign_state *st, const uint8_t *msg) {
    crypto_sign_init(st);
    crypto_sign_update(st, (const uint8_t *)HELLO_CTX, sizeof HELLO_CTX);
    crypto_sign_update(st, (const uint8_t *)"C", 1);
    crypto_sign_update(st, msg, RZ_PREAMBLE_LEN + RZ_HELLO_SIGNED);
}

static void reply_transcript(crypto_sign_state *st, const uint8_t *hello, const uint8_t *reply) {
    uint8_t h[32];
    crypto_generichash(h, sizeof h, hello, RZ_PREAMBLE_LEN + RZ_HELLO_BODY, NULL, 0);
    crypto_sign_init(st);
    crypto_sign_update(st, (const uint8_t *)REPLY_CTX, sizeof REPLY_CTX);
    crypto_sign_update(st, (const uint8_t *)"S", 1);
    crypto_sign_update(st, h, sizeof h);
    crypto_sign_update(st, reply, RZ_PREAMBLE_LEN + RZ_REPLY_SIGNED);
}

static int derive(rz_keys *k, const uint8_t eph_sk[32], const uint8_t peer_eph[32], const uint8_t *hello,
                  const uint8_t *reply, bool client) {
    uint8_t shared[32], th[32], prk[32], c2s[32], s2c[32];
    if (crypto_scalarmult(shared, eph_sk, peer_eph) != 0) return -EKEYREJECTED; /* low-order point */
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, NULL, 0, sizeof th);
    crypto_generichash_update(&hs, hello, RZ_PREAMBLE_LEN + RZ_HELLO_BODY);
    crypto_generichash_update(&hs, reply, RZ_PREAMBLE_LEN + RZ_REPLY_BODY);
    crypto_generichash_final(&hs, th, sizeof th);
    crypto_generichash_init(&hs, shared, sizeof shared, sizeof prk);
    crypto_generichash_update(&hs, (const uint8_t *)KEYS_CTX, sizeof KEYS_CTX);
    crypto_generichash_update(&hs, th, sizeof th);
    crypto_generichash_final(&hs, prk, sizeof prk);
    crypto_kdf_derive_from_key(c2s, 32, 1, KDF_CTX, prk);
    crypto_kdf_derive_from_key(s2c, 32, 2, KDF_CTX, prk);
    crypto_kdf_derive_from_key(k->join, 32, 3, KDF_CTX, prk);
    memcpy(k->tx, client ? c2s : s2c, 32);
    memcpy(k->rx, client ? s2c : c2s, 32);
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(c2s, sizeof c2s);
    sodium_memzero(s2c, sizeof s2c);
    return 0;
}

int rz_hs_client_hello(rz_hs_client *st, const rz_config *cfg, uint8_t *out, size_t *out_len) {
    if (sodium_init() < 0) return -EIO;
    rz_hello h;
    crypto_box_keypair(st->eph_pk, st->eph_sk);
    memcpy(h.network_id, cfg->network_id, 16);
    memcpy(h.identity, cfg->identity.public_key, 32);
    memcpy(h.ephemeral, st->eph_pk, 32);
    randombytes_buf(h.nonce, sizeof h.nonce);
    h.caps = 0;
    if (cfg->cipher == RZ_CIPHER_XCHACHA20POLY1305) h.caps |= RZ_CAP_FORCE_XCHACHA;
    else if (rz_aes_available()) h.caps |= RZ_CAP_AES;
    memset(h.signature, 0, 64);
    size_t n = rz_hello_encode(st->hello, &h);
    crypto_sign_state ss;
    hello_transcript(&ss, st->hello);
    crypto_sign_final_create(&ss, st->hello + RZ_PREAMBLE_LEN + RZ_HELLO_SIGNED, NULL, cfg->identity.secret_key);
    memcpy(out, st->hello, n);
    *out_len = n;
    return 0;
}

static int reject(uint8_t *reply, size_t *reply_len, uint8_t reason, rz_error *error, int code, const char *text) {
    *reply_len = rz_reject_encode(reply, reason, text);
    return rz_fail(error, code, "%s", text);
}

int rz_hs_server(const rz_config *cfg, const uint8_t *msg, size_t len, uint8_t *reply, size_t *reply_len, rz_keys *k,
                 rz_error *error) {
    char text[RZ_REJECT_MAX_TEXT];
    *reply_len = 0;
    if (sodium_init() < 0) return rz_fail(error, -EIO, "libsodium failed to initialise");
    rz_hello h;
    int rc = rz_hello_decode(msg, len, &h);
    if (rc == -EPROTONOSUPPORT) {
        snprintf(text, sizeof text, "version mismatch: peer speaks protocol %u, we speak %u", msg[4],
                 RZ_PROTOCOL_VERSION);
        return reject(reply, reply_len, RZ_REJECT_VERSION, error, -EPROTONOSUPPORT, text);
    }
    if (rc) return reject(reply, reply_len, RZ_REJECT_MALFORMED, error, -EPROTO, "malformed handshake: not a HELLO");
    if (sodium_memcmp(h.network_id, cfg->network_id, 16) != 0) {
        char a[17], b[17];
        hex8(a, h.network_id);
        hex8(b, cfg->network_id);
        snprintf(text, sizeof text, "wrong network: peer is in network %s..., we are in %s...", a, b);
        return reject(reply, reply_len, RZ_REJECT_WRONG_NETWORK, error, -ENONET, text);
    }
    if (sodium_memcmp(h.identity, cfg->peer_public_key, 32) != 0) {
        char a[17], b[17];
        hex8(a, h.identity);
        hex8(b, cfg->peer_public_key);
        snprintf(text, sizeof text, "wrong peer identity: peer presented key %s..., expected %s...", a, b);
        return reject(reply, reply_len, RZ_REJECT_WRONG_IDENTITY, error, -EACCES, text);
    }
    crypto_sign_state ss;
    hello_transcript(&ss, msg);
    if (crypto_sign_final_verify(&ss, h.signature, h.identity) != 0)
        return reject(reply, reply_len, RZ_REJECT_BAD_SIGNATURE, error, -EKEYREJECTED,
                      "bad signature: the HELLO is not signed by the identity it names");

    rz_reply r;
    uint8_t eph_sk[32];
    memcpy(r.network_id, cfg->network_id, 16);
    memcpy(r.identity, cfg->identity.public_key, 32);
    crypto_box_keypair(r.ephemeral, eph_sk);
    randombytes_buf(r.session_id, 16);
    bool aes = (h.caps & RZ_CAP_AES) && !(h.caps & RZ_CAP_FORCE_XCHACHA) && cfg->cipher != RZ_CIPHER_XCHACHA20POLY1305 &&
               rz_aes_available();
    r.cipher = aes ? RZ_CIPHER_AES256GCM : RZ_CIPHER_XCHACHA20POLY1305;
    memset(r.signature, 0, 64);
    size_t n = rz_reply_encode(reply, &r);
    reply_transcript(&ss, msg, reply);
    crypto_sign_final_create(&ss, reply + RZ_PREAMBLE_LEN + RZ_REPLY_SIGNED, NULL, cfg->identity.secret_key);
    rc = derive(k, eph_sk, h.ephemeral, msg, reply, false);
    sodium_memzero(eph_sk, sizeof eph_sk);
    if (rc) {
        return reject(reply, reply_len, RZ_REJECT_BAD_SIGNATURE, error, rc,
                      "bad ephemeral key: X25519 gave the all-zero secret");
    }
    memcpy(k->session_id, r.session_id, 16);
    k->cipher = (int)r.cipher;
    *reply_len = n;
    return 0;
}

static int explain_reject(const uint8_t *msg, size_t len, rz_error *error) {
    rz_reject rj;
    if (rz_reject_decode(msg, len, &rj) != 0) return rz_fail(error, -EPROTO, "malformed handshake: bad REJECT");
    int code = -ECONNREFUSED;
    switch (rj.reason) {
    case RZ_REJECT_WRONG_NETWORK: code = -ENONET; break;
    case RZ_REJECT_WRONG_IDENTITY: code = -EACCES; break;
    case RZ_REJECT_BAD_SIGNATURE: code = -EKEYREJECTED; break;
    case RZ_REJECT_MALFORMED: code = -EPROTO; break;
    case RZ_REJECT_VERSION: code = -EPROTONOSUPPORT; break;
    case RZ_REJECT_BAD_JOIN: code = -EKEYREJECTED; break;
    case RZ_REJECT_SESSION_FAILED: code = -ECONNABORTED; break;
    default: break;
    }
    return rz_fail(error, code, "peer refused: %s", rj.text);
}

int rz_hs_client_finish(rz_hs_client *st, const rz_config *cfg, const uint8_t *msg, size_t len, rz_keys *k,
                        rz_error *error) {
    rz_preamble p;
    int rc = rz_preamble_decode(msg, len, &p);
    if (rc) return rz_fail(error, -EPROTO, "malformed handshake: reply does not start with RHIZ");
    if (p.type == RZ_MSG_REJECT) return explain_reject(msg, len, error);
    rz_reply r;
    rc = rz_reply_decode(msg, len, &r);
    if (rc == -EPROTONOSUPPORT)
        return rz_fail(error, rc, "version mismatch: peer speaks protocol %u, we speak %u", p.version,
                       RZ_PROTOCOL_VERSION);
    if (rc) return rz_fail(error, -EPROTO, "malformed handshake: bad REPLY");
    if (sodium_memcmp(r.network_id, cfg->network_id, 16) != 0) {
        char a[17], b[17];
        hex8(a, r.network_id);
        hex8(b, cfg->network_id);
        return rz_fail(error, -ENONET, "wrong network: peer is in network %s..., we are in %s...", a, b);
    }
    if (sodium_memcmp(r.identity, cfg->peer_public_key, 32) != 0) {
        char a[17], b[17];
        hex8(a, r.identity);
        hex8(b, cfg->peer_public_key);
        return rz_fail(error, -EACCES, "wrong peer identity: peer presented key %s..., expected %s...", a, b);
    }
    crypto_sign_state ss;
    reply_transcript(&ss, st->hello, msg);
    if (crypto_sign_final_verify(&ss, r.signature, r.identity) != 0)
        return rz_fail(error, -EKEYREJECTED, "bad signature: the REPLY is not signed by the peer over our HELLO");
    if (r.cipher != RZ_CIPHER_AES256GCM && r.cipher != RZ_CIPHER_XCHACHA20POLY1305)
        return rz_fail(error, -EPROTO, "malformed handshake: unknown cipher %u", r.cipher);
    if (r.cipher == RZ_CIPHER_AES256GCM && !rz_aes_available())
        return rz_fail(error, -EPROTO, "peer chose AES-256-GCM, which this CPU lacks");
    rc = derive(k, st->eph_sk, r.ephemeral, st->hello, msg, true);
    sodium_memzero(st->eph_sk, sizeof st->eph_sk);
    if (rc) return rz_fail(error, rc, "bad ephemeral key from peer");
    memcpy(k->session_id, r.session_id, 16);
    k->cipher = (int)r.cipher;
    return 0;
}

static void join_mac(uint8_t mac[32], const uint8_t key[32], const uint8_t *msg) {
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, key, 32, 32);
    crypto_generichash_update(&hs, (const uint8_t *)JOIN_CTX, sizeof JOIN_CTX);
    crypto_generichash_update(&hs, msg, RZ_PREAMBLE_LEN + RZ_JOIN_MACED);
    crypto_generichash_final(&hs, mac, 32);
}

static void join_ok_mac(uint8_t mac[32], const uint8_t key[32], const uint8_t *join_msg, const uint8_t *msg) {
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, key, 32, 32);
    crypto_generichash_update(&hs, (const uint8_t *)JOIN_OK_CTX, sizeof JOIN_OK_CTX);
    crypto_generichash_update(&hs, join_msg, RZ_PREAMBLE_LEN + RZ_JOIN_BODY);
    crypto_generichash_update(&hs, msg, RZ_PREAMBLE_LEN + RZ_JOIN_OK_MACED);
    crypto_generichash_final(&hs, mac, 32);
}

size_t rz_join_make(const rz_keys *k, uint32_t conn_id, uint32_t path_id, uint8_t *out) {
    rz_join j;
    memcpy(j.session_id, k->session_id, 16);
    j.conn_id = conn_id;
    j.path_id = path_id;
    randombytes_buf(j.nonce, 16);
    memset(j.mac, 0, 32);
    size_t n = rz_join_encode(out, &j);
    join_mac(out + RZ_PREAMBLE_LEN + RZ_JOIN_MACED, k->join, out);
    return n;
}

int rz_join_check(const rz_keys *k, const rz_join *j, const uint8_t *msg, size_t len, uint8_t *ok, size_t *ok_len,
                  rz_error *error) {
    *ok_len = 0;
    if (len != RZ_PREAMBLE_LEN + RZ_JOIN_BODY) return rz_fail(error, -EPROTO, "malformed JOIN");
    if (sodium_memcmp(j->session_id, k->session_id, 16) != 0)
        return rz_fail(error, -EKEYREJECTED, "JOIN for another session");
    uint8_t mac[32];
    join_mac(mac, k->join, msg);
    if (sodium_memcmp(mac, j->mac, 32) != 0)
        return rz_fail(error, -EKEYREJECTED, "bad join token: the JOIN is not MAC'd with this session's key");
    rz_join_ok o;
    memcpy(o.session_id, k->session_id, 16);
    o.conn_id = j->conn_id;
    memset(o.mac, 0, 32);
    *ok_len = rz_join_ok_encode(ok, &o);
    join_ok_mac(ok + RZ_PREAMBLE_LEN + RZ_JOIN_OK_MACED, k->join, msg, ok);
    return 0;
}

int rz_join_ok_check(const rz_keys *k, const uint8_t *join_msg, const uint8_t *msg, size_t len, uint32_t conn_id,
                     rz_error *error) {
    rz_preamble p;
    if (rz_preamble_decode(msg, len, &p) == 0 && p.type == RZ_MSG_REJECT) return explain_reject(msg, len, error);
    rz_join_ok o;
    if (rz_join_ok_decode(msg, len, &o) != 0) return rz_fail(error, -EPROTO, "malformed JOIN_OK");
    if (sodium_memcmp(o.session_id, k->session_id, 16) != 0 || o.conn_id != conn_id)
        return rz_fail(error, -EKEYREJECTED, "JOIN_OK for another session or connection");
    uint8_t mac[32];
    join_ok_mac(mac, k->join, join_msg, msg);
    if (sodium_memcmp(mac, o.mac, 32) != 0) return rz_fail(error, -EKEYREJECTED, "bad JOIN_OK token");
    return 0;
}
