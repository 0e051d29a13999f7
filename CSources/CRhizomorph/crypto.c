/*
 * Chunk encryption and the session handshake.
 *
 * Handshake (docs/HANDSHAKE.md; MyceliumIdentity/StreamHandshake.swift is the same in Swift):
 *   C -> S  HELLO   network ID, C's identity key, ephemeral X25519 key, nonce, capabilities.
 *   S -> C  REPLY   network ID, S's identity key, ephemeral key, nonce, session ID (random), cipher,
 *                   S's proof: Ed25519 over label || role 2 || network || binding || C's nonce.
 *   C -> S  PROOF   C's proof: Ed25519 over label || role 1 || network || binding || S's nonce.
 *   S -> C  ACCEPT
 * binding = BLAKE2b(HELLO || REPLY up to its signature): both ephemerals, both nonces, the session ID.
 * Each side checks network ID, then that the identity is the one its caller expects, then the
 * signature; the first failure is reported with its own code and sent back as a REJECT. Both proofs
 * cover both sides' fresh values, so neither a replayed REPLY nor a replayed PROOF verifies, and the
 * role byte stops a proof being reflected.
 * Keys: X25519 shared secret -> BLAKE2b keyed PRK over the binding -> crypto_kdf subkeys for
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

static const char PROOF_LABEL[] = "mycelium/stream-proof/v2";     /* signed with its NUL */
static const char BINDING_KEY[] = "mycelium/stream-binding/v2";   /* BLAKE2b key, without its NUL */
enum { RZ_ROLE_CLIENT = 1, RZ_ROLE_SERVER = 2 };                 /* MyceliumIdentity's HandshakeRole */
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

/* What a proof signs (docs/HANDSHAKE.md, the same builder as MyceliumIdentity's HandshakeTranscript):
 * label (with its NUL) || role || network ID || binding || the nonce the peer sent. */
#define PROOF_SIGNED_LEN (sizeof PROOF_LABEL + 1 + 16 + 32 + 32)
static void proof_bytes(uint8_t out[PROOF_SIGNED_LEN], uint8_t role, const uint8_t network[16],
                        const uint8_t binding[32], const uint8_t peer_nonce[32]) {
    memcpy(out, PROOF_LABEL, sizeof PROOF_LABEL);
    uint8_t *p = out + sizeof PROOF_LABEL;
    *p++ = role;
    memcpy(p, network, 16);
    memcpy(p + 16, binding, 32);
    memcpy(p + 48, peer_nonce, 32);
}

/* The binding: a keyed hash of the HELLO and the REPLY up to its signature, so both ephemeral keys,
 * both nonces and the session ID. Fresh on both sides, which is what makes a proof single-use. */
static void binding_of(uint8_t out[32], const uint8_t *hello, const uint8_t *reply) {
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, (const uint8_t *)BINDING_KEY, sizeof BINDING_KEY - 1, 32);
    crypto_generichash_update(&hs, hello, RZ_PREAMBLE_LEN + RZ_HELLO_BODY);
    crypto_generichash_update(&hs, reply, RZ_PREAMBLE_LEN + RZ_REPLY_SIGNED);
    crypto_generichash_final(&hs, out, 32);
}

static int derive(rz_keys *k, const uint8_t eph_sk[32], const uint8_t peer_eph[32], const uint8_t binding[32],
                  bool client) {
    uint8_t shared[32], prk[32], c2s[32], s2c[32];
    if (crypto_scalarmult(shared, eph_sk, peer_eph) != 0) return -EKEYREJECTED; /* low-order point */
    crypto_generichash_state hs;
    crypto_generichash_init(&hs, shared, sizeof shared, sizeof prk);
    crypto_generichash_update(&hs, (const uint8_t *)KEYS_CTX, sizeof KEYS_CTX);
    crypto_generichash_update(&hs, binding, 32);
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
    randombytes_buf(st->nonce, sizeof st->nonce);
    memcpy(h.nonce, st->nonce, 32);
    h.caps = 0;
    if (cfg->cipher == RZ_CIPHER_XCHACHA20POLY1305) h.caps |= RZ_CAP_FORCE_XCHACHA;
    else if (rz_aes_available()) h.caps |= RZ_CAP_AES;
    size_t n = rz_hello_encode(st->hello, &h);
    memcpy(out, st->hello, n);
    *out_len = n;
    return 0;
}

static int reject(uint8_t *reply, size_t *reply_len, uint8_t reason, rz_error *error, int code, const char *text) {
    *reply_len = rz_reject_encode(reply, reason, text);
    return rz_fail(error, code, "%s", text);
}

/* The checks on the peer's first message, in the order of the spec: network, then identity. The
 * identity must be one of `count` allowed keys (32 bytes each); *index gets which. Every key is
 * compared, so the time taken says nothing about which one matched. */
static int check_peer(const rz_config *cfg, const uint8_t network[16], const uint8_t identity[32],
                      const uint8_t *allowed, uint32_t count, uint32_t *index, uint8_t *out, size_t *out_len,
                      rz_error *error) {
    char text[RZ_REJECT_MAX_TEXT], a[17], b[17];
    if (sodium_memcmp(network, cfg->network_id, 16) != 0) {
        hex8(a, network);
        hex8(b, cfg->network_id);
        snprintf(text, sizeof text, "wrong network: peer is in network %s..., we are in %s...", a, b);
        return reject(out, out_len, RZ_REJECT_WRONG_NETWORK, error, -ENONET, text);
    }
    uint32_t found = UINT32_MAX;
    for (uint32_t i = 0; i < count; i++)
        if (sodium_memcmp(identity, allowed + (size_t)i * 32, 32) == 0 && found == UINT32_MAX) found = i;
    if (found == UINT32_MAX) {
        hex8(a, identity);
        if (count == 1) {
            hex8(b, allowed);
            snprintf(text, sizeof text, "wrong peer identity: peer presented key %s..., expected %s...", a, b);
        } else {
            snprintf(text, sizeof text, "wrong peer identity: peer presented key %s..., not one of the %u allowed keys",
                     a, count);
        }
        return reject(out, out_len, RZ_REJECT_WRONG_IDENTITY, error, -EACCES, text);
    }
    if (index) *index = found;
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

static bool is_reject(const uint8_t *msg, size_t len) {
    rz_preamble p;
    return rz_preamble_decode(msg, len, &p) == 0 && p.type == RZ_MSG_REJECT;
}

/* Decode failures as the spec names them: a version mismatch or a malformed message. */
static int refuse_undecodable(int rc, const uint8_t *msg, const char *what, uint8_t *out, size_t *out_len,
                              rz_error *error) {
    char text[RZ_REJECT_MAX_TEXT];
    if (rc == -EPROTONOSUPPORT) {
        snprintf(text, sizeof text, "version mismatch: peer speaks protocol %u, we speak %u", msg[4],
                 RZ_PROTOCOL_VERSION);
        return reject(out, out_len, RZ_REJECT_VERSION, error, -EPROTONOSUPPORT, text);
    }
    snprintf(text, sizeof text, "malformed handshake: not a %s", what);
    return reject(out, out_len, RZ_REJECT_MALFORMED, error, -EPROTO, text);
}

int rz_hs_server(const rz_config *cfg, const uint8_t *msg, size_t len, uint8_t *reply, size_t *reply_len, rz_keys *k,
                 rz_hs_server_state *st, rz_error *error) {
    return rz_hs_server_any(cfg, cfg->peer_public_key, 1, msg, len, reply, reply_len, k, st, NULL, error);
}

int rz_hs_server_any(const rz_config *cfg, const uint8_t *allowed, uint32_t count, const uint8_t *msg, size_t len,
                     uint8_t *reply, size_t *reply_len, rz_keys *k, rz_hs_server_state *st, uint32_t *index,
                     rz_error *error) {
    *reply_len = 0;
    if (sodium_init() < 0) return rz_fail(error, -EIO, "libsodium failed to initialise");
    if (!allowed || count == 0) return rz_fail(error, -EINVAL, "no allowed peer keys");
    if (is_reject(msg, len)) return explain_reject(msg, len, error);
    rz_hello h;
    int rc = rz_hello_decode(msg, len, &h);
    if (rc) return refuse_undecodable(rc, msg, "HELLO", reply, reply_len, error);
    rc = check_peer(cfg, h.network_id, h.identity, allowed, count, index, reply, reply_len, error);
    if (rc) return rc;

    rz_reply r;
    uint8_t eph_sk[32];
    memcpy(r.network_id, cfg->network_id, 16);
    memcpy(r.identity, cfg->identity.public_key, 32);
    crypto_box_keypair(r.ephemeral, eph_sk);
    randombytes_buf(r.nonce, 32);
    randombytes_buf(r.session_id, 16);
    bool aes = (h.caps & RZ_CAP_AES) && !(h.caps & RZ_CAP_FORCE_XCHACHA) && cfg->cipher != RZ_CIPHER_XCHACHA20POLY1305 &&
               rz_aes_available();
    r.cipher = aes ? RZ_CIPHER_AES256GCM : RZ_CIPHER_XCHACHA20POLY1305;
    memset(r.signature, 0, 64);
    size_t n = rz_reply_encode(reply, &r);
    binding_of(st->binding, msg, reply);
    rc = derive(k, eph_sk, h.ephemeral, st->binding, false);
    sodium_memzero(eph_sk, sizeof eph_sk);
    if (rc)
        return reject(reply, reply_len, RZ_REJECT_BAD_SIGNATURE, error, rc,
                      "bad ephemeral key: X25519 gave the all-zero secret");
    uint8_t signed_bytes[PROOF_SIGNED_LEN];
    proof_bytes(signed_bytes, RZ_ROLE_SERVER, cfg->network_id, st->binding, h.nonce);
    crypto_sign_detached(reply + RZ_PREAMBLE_LEN + RZ_REPLY_SIGNED, NULL, signed_bytes, sizeof signed_bytes,
                         cfg->identity.secret_key);
    memcpy(st->peer, h.identity, 32);
    memcpy(st->nonce, r.nonce, 32);
    memcpy(st->network_id, cfg->network_id, 16);
    memcpy(k->session_id, r.session_id, 16);
    k->cipher = (int)r.cipher;
    *reply_len = n;
    return 0;
}

int rz_hs_server_finish(const rz_hs_server_state *st, const uint8_t *msg, size_t len, uint8_t *out, size_t *out_len,
                        rz_error *error) {
    *out_len = 0;
    if (is_reject(msg, len)) return explain_reject(msg, len, error);
    uint8_t sig[64];
    int rc = rz_proof_decode(msg, len, sig);
    if (rc) return refuse_undecodable(rc, msg, "PROOF", out, out_len, error);
    uint8_t signed_bytes[PROOF_SIGNED_LEN];
    proof_bytes(signed_bytes, RZ_ROLE_CLIENT, st->network_id, st->binding, st->nonce);
    if (crypto_sign_verify_detached(sig, signed_bytes, sizeof signed_bytes, st->peer) != 0)
        return reject(out, out_len, RZ_REJECT_BAD_SIGNATURE, error, -EKEYREJECTED,
                      "bad signature: the PROOF is not signed by the peer over this handshake");
    *out_len = rz_accept_encode(out);
    return 0;
}

int rz_hs_client_finish(rz_hs_client *st, const rz_config *cfg, const uint8_t *msg, size_t len, rz_keys *k,
                        uint8_t *out, size_t *out_len, rz_error *error) {
    *out_len = 0;
    rz_preamble p;
    int rc = rz_preamble_decode(msg, len, &p);
    if (rc) return rz_fail(error, -EPROTO, "malformed handshake: reply does not start with RHIZ");
    if (p.type == RZ_MSG_REJECT) return explain_reject(msg, len, error);
    rz_reply r;
    rc = rz_reply_decode(msg, len, &r);
    if (rc) return refuse_undecodable(rc, msg, "REPLY", out, out_len, error);
    rc = check_peer(cfg, r.network_id, r.identity, cfg->peer_public_key, 1, NULL, out, out_len, error);
    if (rc) return rc;
    uint8_t binding[32], signed_bytes[PROOF_SIGNED_LEN];
    binding_of(binding, st->hello, msg);
    proof_bytes(signed_bytes, RZ_ROLE_SERVER, cfg->network_id, binding, st->nonce);
    if (crypto_sign_verify_detached(r.signature, signed_bytes, sizeof signed_bytes, r.identity) != 0)
        return reject(out, out_len, RZ_REJECT_BAD_SIGNATURE, error, -EKEYREJECTED,
                      "bad signature: the REPLY is not signed by the peer over this handshake");
    if (r.cipher != RZ_CIPHER_AES256GCM && r.cipher != RZ_CIPHER_XCHACHA20POLY1305)
        return reject(out, out_len, RZ_REJECT_MALFORMED, error, -EPROTO, "malformed handshake: unknown cipher");
    if (r.cipher == RZ_CIPHER_AES256GCM && !rz_aes_available())
        return reject(out, out_len, RZ_REJECT_MALFORMED, error, -EPROTO, "peer chose AES-256-GCM, which this CPU lacks");
    rz_keys tmp;
    if (!k) k = &tmp;
    rc = derive(k, st->eph_sk, r.ephemeral, binding, true);
    sodium_memzero(st->eph_sk, sizeof st->eph_sk);
    if (rc)
        return reject(out, out_len, RZ_REJECT_BAD_SIGNATURE, error, rc, "bad ephemeral key: X25519 gave the all-zero secret");
    memcpy(k->session_id, r.session_id, 16);
    k->cipher = (int)r.cipher;
    uint8_t sig[64];
    proof_bytes(signed_bytes, RZ_ROLE_CLIENT, cfg->network_id, binding, r.nonce);
    crypto_sign_detached(sig, NULL, signed_bytes, sizeof signed_bytes, cfg->identity.secret_key);
    *out_len = rz_proof_encode(out, sig);
    return 0;
}

int rz_hs_client_verdict(const uint8_t *msg, size_t len, rz_error *error) {
    if (is_reject(msg, len)) return explain_reject(msg, len, error);
    int rc = rz_accept_decode(msg, len);
    if (rc == -EPROTONOSUPPORT)
        return rz_fail(error, rc, "version mismatch: peer speaks protocol %u, we speak %u", msg[4], RZ_PROTOCOL_VERSION);
    if (rc) return rz_fail(error, -EPROTO, "malformed handshake: expected ACCEPT");
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
