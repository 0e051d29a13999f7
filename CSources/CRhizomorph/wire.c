/* Wire codec: handshake messages, frame headers and acknowledgements. Little-endian, fixed layouts,
 * every length checked before it is read. No allocation, no I/O. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int rz_fail(rz_error *error, int code, const char *fmt, ...) {
    if (error) {
        error->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error->message, sizeof error->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *rz_strerror(int code) {
    switch (code) {
    case 0: return "success";
    case -ENONET: return "wrong network: the peer belongs to another network ID";
    case -EACCES: return "wrong peer identity: the peer's key is not the expected one";
    case -EKEYREJECTED: return "bad signature or join token";
    case -EPROTO: return "malformed handshake or frame";
    case -EPROTONOSUPPORT: return "protocol version mismatch";
    case -EBADMSG: return "chunk authentication failed too often (data tampered with on the wire)";
    case -ECONNREFUSED: return "refused by the peer";
    case -ETIMEDOUT: return "timed out";
    case -ENETDOWN: return "every path is down";
    default: return code < 0 ? strerror(-code) : "unknown";
    }
}

void rz_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
void rz_put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
void rz_put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
uint16_t rz_get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
uint32_t rz_get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
uint64_t rz_get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void rz_preamble_encode(uint8_t out[RZ_PREAMBLE_LEN], uint8_t type, uint16_t body_len) {
    out[0] = RZ_MAGIC0; out[1] = RZ_MAGIC1; out[2] = RZ_MAGIC2; out[3] = RZ_MAGIC3;
    out[4] = RZ_PROTOCOL_VERSION;
    out[5] = type;
    rz_put16(out + 6, body_len);
}

/* The magic is checked before the version so garbage reads as "malformed", not "version". */
int rz_preamble_decode(const uint8_t *in, size_t len, rz_preamble *out) {
    if (len < RZ_PREAMBLE_LEN) return -EAGAIN;
    if (in[0] != RZ_MAGIC0 || in[1] != RZ_MAGIC1 || in[2] != RZ_MAGIC2 || in[3] != RZ_MAGIC3) return -EPROTO;
    out->version = in[4];
    out->type = in[5];
    out->body_len = rz_get16(in + 6);
    if (out->body_len > RZ_HS_MAX_MSG - RZ_PREAMBLE_LEN) return -EPROTO;
    return 0;
}

static int expect(const uint8_t *in, size_t len, uint8_t type, uint16_t body) {
    rz_preamble p;
    int rc = rz_preamble_decode(in, len, &p);
    if (rc) return rc;
    if (p.version != RZ_PROTOCOL_VERSION) return -EPROTONOSUPPORT;
    if (p.type != type || p.body_len != body) return -EPROTO;
    if (len < RZ_PREAMBLE_LEN + (size_t)body) return -EAGAIN;
    if (len > RZ_PREAMBLE_LEN + (size_t)body) return -EPROTO;
    return 0;
}

size_t rz_hello_encode(uint8_t *out, const rz_hello *h) {
    rz_preamble_encode(out, RZ_MSG_HELLO, RZ_HELLO_BODY);
    uint8_t *b = out + RZ_PREAMBLE_LEN;
    memcpy(b, h->network_id, 16);
    memcpy(b + 16, h->identity, 32);
    memcpy(b + 48, h->ephemeral, 32);
    memcpy(b + 80, h->nonce, 32);
    rz_put32(b + 112, h->caps);
    return RZ_PREAMBLE_LEN + RZ_HELLO_BODY;
}

int rz_hello_decode(const uint8_t *in, size_t len, rz_hello *h) {
    int rc = expect(in, len, RZ_MSG_HELLO, RZ_HELLO_BODY);
    if (rc) return rc;
    const uint8_t *b = in + RZ_PREAMBLE_LEN;
    memcpy(h->network_id, b, 16);
    memcpy(h->identity, b + 16, 32);
    memcpy(h->ephemeral, b + 48, 32);
    memcpy(h->nonce, b + 80, 32);
    h->caps = rz_get32(b + 112);
    return 0;
}

size_t rz_reply_encode(uint8_t *out, const rz_reply *r) {
    rz_preamble_encode(out, RZ_MSG_REPLY, RZ_REPLY_BODY);
    uint8_t *b = out + RZ_PREAMBLE_LEN;
    memcpy(b, r->network_id, 16);
    memcpy(b + 16, r->identity, 32);
    memcpy(b + 48, r->ephemeral, 32);
    memcpy(b + 80, r->nonce, 32);
    memcpy(b + 112, r->session_id, 16);
    rz_put32(b + 128, r->cipher);
    memcpy(b + 132, r->signature, 64);
    return RZ_PREAMBLE_LEN + RZ_REPLY_BODY;
}

int rz_reply_decode(const uint8_t *in, size_t len, rz_reply *r) {
    int rc = expect(in, len, RZ_MSG_REPLY, RZ_REPLY_BODY);
    if (rc) return rc;
    const uint8_t *b = in + RZ_PREAMBLE_LEN;
    memcpy(r->network_id, b, 16);
    memcpy(r->identity, b + 16, 32);
    memcpy(r->ephemeral, b + 48, 32);
    memcpy(r->nonce, b + 80, 32);
    memcpy(r->session_id, b + 112, 16);
    r->cipher = rz_get32(b + 128);
    memcpy(r->signature, b + 132, 64);
    return 0;
}

size_t rz_join_encode(uint8_t *out, const rz_join *j) {
    rz_preamble_encode(out, RZ_MSG_JOIN, RZ_JOIN_BODY);
    uint8_t *b = out + RZ_PREAMBLE_LEN;
    memcpy(b, j->session_id, 16);
    rz_put32(b + 16, j->conn_id);
    rz_put32(b + 20, j->path_id);
    memcpy(b + 24, j->nonce, 16);
    memcpy(b + 40, j->mac, 32);
    return RZ_PREAMBLE_LEN + RZ_JOIN_BODY;
}

int rz_join_decode(const uint8_t *in, size_t len, rz_join *j) {
    int rc = expect(in, len, RZ_MSG_JOIN, RZ_JOIN_BODY);
    if (rc) return rc;
    const uint8_t *b = in + RZ_PREAMBLE_LEN;
    memcpy(j->session_id, b, 16);
    j->conn_id = rz_get32(b + 16);
    j->path_id = rz_get32(b + 20);
    memcpy(j->nonce, b + 24, 16);
    memcpy(j->mac, b + 40, 32);
    if (j->conn_id >= RZ_MAX_CONNS || j->path_id >= RZ_MAX_PATHS) return -EPROTO;
    return 0;
}

size_t rz_join_ok_encode(uint8_t *out, const rz_join_ok *j) {
    rz_preamble_encode(out, RZ_MSG_JOIN_OK, RZ_JOIN_OK_BODY);
    uint8_t *b = out + RZ_PREAMBLE_LEN;
    memcpy(b, j->session_id, 16);
    rz_put32(b + 16, j->conn_id);
    memcpy(b + 20, j->mac, 32);
    return RZ_PREAMBLE_LEN + RZ_JOIN_OK_BODY;
}

int rz_join_ok_decode(const uint8_t *in, size_t len, rz_join_ok *j) {
    int rc = expect(in, len, RZ_MSG_JOIN_OK, RZ_JOIN_OK_BODY);
    if (rc) return rc;
    const uint8_t *b = in + RZ_PREAMBLE_LEN;
    memcpy(j->session_id, b, 16);
    j->conn_id = rz_get32(b + 16);
    memcpy(j->mac, b + 20, 32);
    return 0;
}

size_t rz_proof_encode(uint8_t *out, const uint8_t signature[64]) {
    rz_preamble_encode(out, RZ_MSG_PROOF, RZ_PROOF_BODY);
    memcpy(out + RZ_PREAMBLE_LEN, signature, 64);
    return RZ_PREAMBLE_LEN + RZ_PROOF_BODY;
}

int rz_proof_decode(const uint8_t *in, size_t len, uint8_t signature[64]) {
    int rc = expect(in, len, RZ_MSG_PROOF, RZ_PROOF_BODY);
    if (rc) return rc;
    memcpy(signature, in + RZ_PREAMBLE_LEN, 64);
    return 0;
}

size_t rz_accept_encode(uint8_t *out) {
    rz_preamble_encode(out, RZ_MSG_ACCEPT, 0);
    return RZ_PREAMBLE_LEN;
}

int rz_accept_decode(const uint8_t *in, size_t len) { return expect(in, len, RZ_MSG_ACCEPT, 0); }

size_t rz_reject_encode(uint8_t *out, uint8_t reason, const char *text) {
    size_t n = text ? strlen(text) : 0;
    if (n > RZ_REJECT_MAX_TEXT) n = RZ_REJECT_MAX_TEXT;
    rz_preamble_encode(out, RZ_MSG_REJECT, (uint16_t)(2 + n));
    out[RZ_PREAMBLE_LEN] = reason;
    out[RZ_PREAMBLE_LEN + 1] = (uint8_t)n;
    if (n) memcpy(out + RZ_PREAMBLE_LEN + 2, text, n);
    return RZ_PREAMBLE_LEN + 2 + n;
}

/* A REJECT is accepted from any version so that a version mismatch can still be explained. */
int rz_reject_decode(const uint8_t *in, size_t len, rz_reject *r) {
    rz_preamble p;
    int rc = rz_preamble_decode(in, len, &p);
    if (rc) return rc;
    if (p.type != RZ_MSG_REJECT || p.body_len < 2) return -EPROTO;
    if (len < RZ_PREAMBLE_LEN + (size_t)p.body_len) return -EAGAIN;
    if (len > RZ_PREAMBLE_LEN + (size_t)p.body_len) return -EPROTO;
    const uint8_t *b = in + RZ_PREAMBLE_LEN;
    r->reason = b[0];
    r->text_len = b[1];
    if ((size_t)r->text_len + 2 != p.body_len || r->text_len > RZ_REJECT_MAX_TEXT) return -EPROTO;
    for (uint32_t i = 0; i < r->text_len; i++) {
        uint8_t c = b[2 + i];
        r->text[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?'; /* never print peer bytes raw */
    }
    r->text[r->text_len] = 0;
    return 0;
}

void rz_frame_hdr_encode(uint8_t out[RZ_FRAME_HDR], const rz_frame_hdr *h) {
    out[0] = h->type;
    out[1] = h->flags;
    out[2] = 0;
    out[3] = 0;
    rz_put32(out + 4, h->body_len);
    rz_put64(out + 8, h->seq);
    rz_put64(out + 16, h->arg0);
    rz_put64(out + 24, h->arg1);
}

int rz_frame_hdr_decode(const uint8_t *in, size_t len, uint32_t max_body, rz_frame_hdr *h) {
    if (len < RZ_FRAME_HDR) return -EAGAIN;
    h->type = in[0];
    h->flags = in[1];
    if (in[2] || in[3] || h->flags) return -EPROTO;
    h->body_len = rz_get32(in + 4);
    h->seq = rz_get64(in + 8);
    h->arg0 = rz_get64(in + 16);
    h->arg1 = rz_get64(in + 24);
    bool known = rz_frame_is_chunk(h->type) || (h->type >= RZ_FRAME_ACK && h->type <= RZ_FRAME_CLOSE);
    if (!known) return -EPROTO;
    if (h->body_len < RZ_TAG || h->body_len > max_body) return -EPROTO;
    if (h->type == RZ_FRAME_ACK) {
        uint32_t plain = h->body_len - RZ_TAG;
        if (plain < RZ_ACK_FIXED || (plain - RZ_ACK_FIXED) % RZ_ACK_RANGE != 0 ||
            (plain - RZ_ACK_FIXED) / RZ_ACK_RANGE > RZ_ACK_MAX_RANGES)
            return -EPROTO;
    } else if (h->type == RZ_FRAME_PING || h->type == RZ_FRAME_PONG) {
        if (h->body_len != RZ_TAG + 8) return -EPROTO;
    } else if (h->type == RZ_FRAME_CLOSE || h->type == RZ_FRAME_BARRIER || h->type == RZ_FRAME_END) {
        if (h->body_len != RZ_TAG) return -EPROTO;
    }
    return 0;
}

size_t rz_ack_encode(uint8_t *out, const rz_ack *a) {
    uint32_t n = a->range_count > RZ_ACK_MAX_RANGES ? RZ_ACK_MAX_RANGES : a->range_count;
    rz_put64(out, a->cumulative);
    rz_put32(out + 8, n);
    for (uint32_t i = 0; i < n; i++) {
        rz_put64(out + RZ_ACK_FIXED + i * RZ_ACK_RANGE, a->ranges[i].start);
        rz_put32(out + RZ_ACK_FIXED + i * RZ_ACK_RANGE + 8, a->ranges[i].count);
    }
    return RZ_ACK_FIXED + n * RZ_ACK_RANGE;
}

int rz_ack_decode(const uint8_t *in, size_t len, rz_ack *a) {
    if (len < RZ_ACK_FIXED) return -EPROTO;
    a->cumulative = rz_get64(in);
    a->range_count = rz_get32(in + 8);
    if (a->range_count > RZ_ACK_MAX_RANGES || len != RZ_ACK_FIXED + (size_t)a->range_count * RZ_ACK_RANGE)
        return -EPROTO;
    for (uint32_t i = 0; i < a->range_count; i++) {
        a->ranges[i].start = rz_get64(in + RZ_ACK_FIXED + i * RZ_ACK_RANGE);
        a->ranges[i].count = rz_get32(in + RZ_ACK_FIXED + i * RZ_ACK_RANGE + 8);
        if (a->ranges[i].count == 0 || a->ranges[i].count > (1u << 20) ||
            a->ranges[i].start > UINT64_MAX - a->ranges[i].count)
            return -EPROTO;
    }
    return 0;
}
