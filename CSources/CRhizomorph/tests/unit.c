/* Unit tests without a network: codec, crypto (tamper, replay, other session), scheduler decisions,
 * reorder and barrier logic, RDMA bookkeeping. Then handshake refusals over loopback (run.sh runs
 * this binary inside a private network namespace). */
#include "common.h"
#include "internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

static int failures;

static void test_codec(void) {
    uint8_t buf[RZ_HS_MAX_MSG + 16];
    rz_hello h, h2;
    memset(&h, 0, sizeof h);
    for (int i = 0; i < 16; i++) h.network_id[i] = (uint8_t)i;
    h.caps = 3;
    h.nonce[31] = 9;
    size_t n = rz_hello_encode(buf, &h);
    CHECK(n == RZ_PREAMBLE_LEN + RZ_HELLO_BODY);
    CHECK(rz_hello_decode(buf, n, &h2) == 0 && memcmp(&h, &h2, sizeof h) == 0);
    for (size_t k = 0; k < n; k++) CHECK(rz_hello_decode(buf, k, &h2) == (k < RZ_PREAMBLE_LEN + RZ_HELLO_BODY ? (k < 8 ? -EAGAIN : -EAGAIN) : 0));
    CHECK(rz_hello_decode(buf, n + 1, &h2) == -EPROTO);
    buf[4] = RZ_PROTOCOL_VERSION + 1;
    CHECK(rz_hello_decode(buf, n, &h2) == -EPROTONOSUPPORT);
    buf[4] = RZ_PROTOCOL_VERSION;
    buf[0] = 'X';
    CHECK(rz_hello_decode(buf, n, &h2) == -EPROTO);
    buf[0] = 'R';
    buf[5] = RZ_MSG_JOIN;
    CHECK(rz_hello_decode(buf, n, &h2) == -EPROTO);

    rz_join j = {.conn_id = 3, .path_id = 1}, j2;
    n = rz_join_encode(buf, &j);
    CHECK(rz_join_decode(buf, n, &j2) == 0 && j2.conn_id == 3 && j2.path_id == 1);
    rz_put32(buf + RZ_PREAMBLE_LEN + 16, RZ_MAX_CONNS);
    CHECK(rz_join_decode(buf, n, &j2) == -EPROTO);

    rz_reject r;
    n = rz_reject_encode(buf, RZ_REJECT_WRONG_NETWORK, "no\x01way");
    CHECK(rz_reject_decode(buf, n, &r) == 0 && r.reason == RZ_REJECT_WRONG_NETWORK && strcmp(r.text, "no?way") == 0);
    buf[RZ_PREAMBLE_LEN + 1] = 200; /* text length disagrees with body length */
    CHECK(rz_reject_decode(buf, n, &r) == -EPROTO);

    rz_frame_hdr f = {.type = RZ_FRAME_PAGE, .body_len = 4096 + RZ_TAG, .seq = 77, .arg0 = 1ull << 40, .arg1 = 5}, f2;
    rz_frame_hdr_encode(buf, &f);
    CHECK(rz_frame_hdr_decode(buf, RZ_FRAME_HDR, 65536 + RZ_TAG, &f2) == 0 && f2.seq == 77 && f2.arg0 == 1ull << 40);
    CHECK(rz_frame_hdr_decode(buf, RZ_FRAME_HDR - 1, 65536 + RZ_TAG, &f2) == -EAGAIN);
    CHECK(rz_frame_hdr_decode(buf, RZ_FRAME_HDR, 1024, &f2) == -EPROTO); /* longer than allowed */
    buf[0] = 99;
    CHECK(rz_frame_hdr_decode(buf, RZ_FRAME_HDR, 65536 + RZ_TAG, &f2) == -EPROTO);
    buf[0] = RZ_FRAME_PAGE;
    buf[2] = 1;
    CHECK(rz_frame_hdr_decode(buf, RZ_FRAME_HDR, 65536 + RZ_TAG, &f2) == -EPROTO);
    f.type = RZ_FRAME_ACK;
    f.body_len = RZ_TAG + RZ_ACK_FIXED + 5; /* not a whole number of ranges */
    rz_frame_hdr_encode(buf, &f);
    CHECK(rz_frame_hdr_decode(buf, RZ_FRAME_HDR, 65536 + RZ_TAG, &f2) == -EPROTO);

    rz_ack a = {.cumulative = 10, .range_count = 2}, a2;
    a.ranges[0] = (rz_ack_range){12, 3};
    a.ranges[1] = (rz_ack_range){20, 1};
    n = rz_ack_encode(buf, &a);
    CHECK(rz_ack_decode(buf, n, &a2) == 0 && a2.range_count == 2 && a2.ranges[0].start == 12 && a2.ranges[1].count == 1);
    CHECK(rz_ack_decode(buf, n - 1, &a2) == -EPROTO);
    rz_put32(buf + RZ_ACK_FIXED + 8, 0); /* empty range */
    CHECK(rz_ack_decode(buf, n, &a2) == -EPROTO);
    rz_put64(buf + RZ_ACK_FIXED, UINT64_MAX); /* range that wraps */
    rz_put32(buf + RZ_ACK_FIXED + 8, 2);
    CHECK(rz_ack_decode(buf, n, &a2) == -EPROTO);
}

/* Both sides of a handshake in memory: HELLO, REPLY, PROOF, ACCEPT (or a REJECT where one side refuses). */
static int handshake(rz_config *cc, rz_config *sc, rz_keys *ck, rz_keys *sk, rz_error *ce, rz_error *se) {
    rz_hs_client hs;
    rz_hs_server_state ss;
    uint8_t hello[RZ_HS_MAX_MSG], reply[RZ_HS_MAX_MSG], proof[RZ_HS_MAX_MSG], verdict[RZ_HS_MAX_MSG];
    size_t hl, rl, pl = 0, vl = 0;
    rz_hs_client_hello(&hs, cc, hello, &hl);
    int rc = rz_hs_server(sc, hello, hl, reply, &rl, sk, &ss, se);
    int rc2 = rz_hs_client_finish(&hs, cc, reply, rl, ck, proof, &pl, ce);
    if (rc) return rc;
    int rc3 = rz_hs_server_finish(&ss, proof, pl, verdict, &vl, se);
    if (rc2) return rc2;
    int rc4 = rz_hs_client_verdict(verdict, vl, ce);
    return rc3 ? rc3 : rc4;
}

static void test_crypto(void) {
    rz_identity a, b, c;
    identity_named(&a, "alice");
    identity_named(&b, "bob");
    identity_named(&c, "carol");
    uint8_t net[16], other_net[16];
    network_named(net, "net");
    network_named(other_net, "other");
    rz_config ca, cb;
    rz_config_init(&ca, &a, net, b.public_key);
    rz_config_init(&cb, &b, net, a.public_key);
    rz_keys ka, kb, ka2, kb2;
    rz_error ea, eb;
    CHECK(handshake(&ca, &cb, &ka, &kb, &ea, &eb) == 0);
    CHECK(memcmp(ka.tx, kb.rx, 32) == 0 && memcmp(ka.rx, kb.tx, 32) == 0 && memcmp(ka.tx, ka.rx, 32) != 0);
    CHECK(memcmp(ka.session_id, kb.session_id, 16) == 0 && ka.cipher == kb.cipher);
    CHECK(handshake(&ca, &cb, &ka2, &kb2, &ea, &eb) == 0);
    CHECK(memcmp(ka.tx, ka2.tx, 32) != 0); /* fresh keys per session */

    /* Refusals, each with its own code, on the side that detects it and via REJECT on the other. */
    rz_config wrong = ca;
    memcpy(wrong.network_id, other_net, 16);
    memset(&eb, 0, sizeof eb);
    CHECK(handshake(&wrong, &cb, &ka2, &kb2, &ea, &eb) == -ENONET && eb.code == -ENONET && ea.code == -ENONET);
    CHECK(strstr(eb.message, "wrong network") != NULL && strstr(ea.message, "wrong network") != NULL);
    rz_config carol;
    rz_config_init(&carol, &c, net, b.public_key);
    CHECK(handshake(&carol, &cb, &ka2, &kb2, &ea, &eb) == -EACCES && strstr(eb.message, "wrong peer identity"));
    CHECK(ea.code == -EACCES);
    rz_config expects_carol = ca;
    memcpy(expects_carol.peer_public_key, c.public_key, 32);
    CHECK(handshake(&expects_carol, &cb, &ka2, &kb2, &ea, &eb) == -EACCES && strstr(ea.message, "wrong peer identity"));

    /* Bad signatures: a flipped byte in the REPLY's proof, in the PROOF, or in the HELLO (which the
     * server's proof covers through the binding). */
    rz_hs_client hs;
    rz_hs_server_state ss;
    uint8_t hello[RZ_HS_MAX_MSG], reply[RZ_HS_MAX_MSG], proof[RZ_HS_MAX_MSG], verdict[RZ_HS_MAX_MSG];
    size_t hl, rl, pl, vl;
    rz_hs_client_hello(&hs, &ca, hello, &hl);
    CHECK(rz_hs_server(&cb, hello, hl, reply, &rl, &kb2, &ss, &eb) == 0);
    reply[rl - 1] ^= 1;
    CHECK(rz_hs_client_finish(&hs, &ca, reply, rl, &ka2, proof, &pl, &ea) == -EKEYREJECTED && strstr(ea.message, "bad signature"));
    CHECK(pl > 0 && rz_hs_server_finish(&ss, proof, pl, verdict, &vl, &eb) == -EKEYREJECTED && strstr(eb.message, "peer refused"));
    reply[rl - 1] ^= 1;
    rz_hs_client_hello(&hs, &ca, hello, &hl);
    hello[RZ_PREAMBLE_LEN + 90] ^= 1; /* the client's nonce, changed on the way */
    CHECK(rz_hs_server(&cb, hello, hl, reply, &rl, &kb2, &ss, &eb) == 0);
    CHECK(rz_hs_client_finish(&hs, &ca, reply, rl, &ka2, proof, &pl, &ea) == -EKEYREJECTED);
    rz_hs_client_hello(&hs, &ca, hello, &hl);
    CHECK(rz_hs_server(&cb, hello, hl, reply, &rl, &kb2, &ss, &eb) == 0);
    CHECK(rz_hs_client_finish(&hs, &ca, reply, rl, &ka2, proof, &pl, &ea) == 0);
    proof[pl - 1] ^= 1;
    CHECK(rz_hs_server_finish(&ss, proof, pl, verdict, &vl, &eb) == -EKEYREJECTED && strstr(eb.message, "bad signature"));
    CHECK(rz_hs_client_verdict(verdict, vl, &ea) == -EKEYREJECTED && strstr(ea.message, "peer refused"));
    /* A PROOF from a previous session (replayed) does not verify in this one. */
    rz_hs_server_state ss_new;
    uint8_t hello2[RZ_HS_MAX_MSG], reply2[RZ_HS_MAX_MSG];
    size_t hl2, rl2;
    rz_hs_client hs2;
    rz_hs_client_hello(&hs2, &ca, hello2, &hl2);
    CHECK(rz_hs_server(&cb, hello2, hl2, reply2, &rl2, &kb2, &ss_new, &eb) == 0);
    proof[pl - 1] ^= 1;
    CHECK(rz_hs_server_finish(&ss, proof, pl, verdict, &vl, &eb) == 0); /* the genuine one, in its own session */
    CHECK(rz_hs_server_finish(&ss_new, proof, pl, verdict, &vl, &eb) == -EKEYREJECTED);
    hello[4] = 7;
    CHECK(rz_hs_server(&cb, hello, hl, reply, &rl, &kb2, &ss, &eb) == -EPROTONOSUPPORT && strstr(eb.message, "version"));
    CHECK(rz_hs_client_finish(&hs, &ca, reply, rl, &ka2, proof, &pl, &ea) == -EPROTONOSUPPORT);
    hello[4] = RZ_PROTOCOL_VERSION;
    /* A REPLY from a previous session (replayed) does not verify against this HELLO. */
    uint8_t old_reply[RZ_HS_MAX_MSG];
    size_t orl;
    rz_hs_client hs_old;
    uint8_t old_hello[RZ_HS_MAX_MSG];
    size_t ohl;
    rz_hs_client_hello(&hs_old, &ca, old_hello, &ohl);
    CHECK(rz_hs_server(&cb, old_hello, ohl, old_reply, &orl, &kb2, &ss, &eb) == 0);
    rz_hs_client_hello(&hs, &ca, hello, &hl);
    CHECK(rz_hs_client_finish(&hs, &ca, old_reply, orl, &ka2, proof, &pl, &ea) == -EKEYREJECTED);
    uint8_t junk[64] = "GET / HTTP/1.1\r\n\r\n";
    CHECK(rz_hs_server(&cb, junk, 18, reply, &rl, &kb2, &ss, &eb) == -EPROTO && strstr(eb.message, "malformed"));

    /* Chunks: tamper, replay (dedup lives in rxwin), other session, other direction. */
    for (int cipher = RZ_CIPHER_AES256GCM; cipher <= RZ_CIPHER_XCHACHA20POLY1305; cipher++) {
        if (cipher == RZ_CIPHER_AES256GCM && !rz_aes_available()) continue;
        rz_aead tx, rx, rx_other, rx_reverse;
        CHECK(rz_aead_init(&tx, cipher, ka.tx) == 0);
        CHECK(rz_aead_init(&rx, cipher, kb.rx) == 0);
        CHECK(rz_aead_init(&rx_other, cipher, kb2.rx) == 0);
        CHECK(rz_aead_init(&rx_reverse, cipher, ka.rx) == 0);
        uint8_t plain[1000], frame[RZ_FRAME_HDR + 1000 + RZ_TAG], out[1000];
        fill_pattern(plain, sizeof plain, 5);
        rz_frame_hdr h = {.type = RZ_FRAME_DATA, .body_len = 1000 + RZ_TAG, .seq = 42, .arg0 = 4096};
        rz_frame_hdr_encode(frame, &h);
        rz_aead_seal(&tx, frame + RZ_FRAME_HDR, plain, 1000, frame, RZ_FRAME_HDR, 42, RZ_NONCE_DATA);
        CHECK(rz_aead_open(&rx, out, frame + RZ_FRAME_HDR, 1000 + RZ_TAG, frame, RZ_FRAME_HDR, 42, RZ_NONCE_DATA) == 0);
        CHECK(memcmp(out, plain, 1000) == 0);
        frame[RZ_FRAME_HDR + 500] ^= 0x10;
        CHECK(rz_aead_open(&rx, out, frame + RZ_FRAME_HDR, 1000 + RZ_TAG, frame, RZ_FRAME_HDR, 42, RZ_NONCE_DATA) == -EBADMSG);
        frame[RZ_FRAME_HDR + 500] ^= 0x10;
        frame[16] ^= 1; /* header (offset) is authenticated */
        CHECK(rz_aead_open(&rx, out, frame + RZ_FRAME_HDR, 1000 + RZ_TAG, frame, RZ_FRAME_HDR, 42, RZ_NONCE_DATA) == -EBADMSG);
        frame[16] ^= 1;
        /* Moved to another sequence number: the nonce differs. */
        CHECK(rz_aead_open(&rx, out, frame + RZ_FRAME_HDR, 1000 + RZ_TAG, frame, RZ_FRAME_HDR, 43, RZ_NONCE_DATA) == -EBADMSG);
        /* As a control frame: other nonce domain. */
        CHECK(rz_aead_open(&rx, out, frame + RZ_FRAME_HDR, 1000 + RZ_TAG, frame, RZ_FRAME_HDR, 42, RZ_NONCE_CONTROL) == -EBADMSG);
        CHECK(rz_aead_open(&rx_other, out, frame + RZ_FRAME_HDR, 1000 + RZ_TAG, frame, RZ_FRAME_HDR, 42, RZ_NONCE_DATA) == -EBADMSG);
        CHECK(rz_aead_open(&rx_reverse, out, frame + RZ_FRAME_HDR, 1000 + RZ_TAG, frame, RZ_FRAME_HDR, 42, RZ_NONCE_DATA) == -EBADMSG);
        /* Replay: the receive window refuses a sequence it already has or delivered. */
        rz_rxwin w;
        rz_rxwin_init(&w, 64);
        uint8_t *d1 = malloc(4), *d2 = malloc(4);
        CHECK(rz_rxwin_insert(&w, 42 - 42, RZ_FRAME_DATA, 0, 0, d1, 4) == 1);
        CHECK(rz_rxwin_insert(&w, 0, RZ_FRAME_DATA, 0, 0, d2, 4) == 0);
        uint64_t seq;
        CHECK(rz_rxwin_next_ordered(&w, &seq) != NULL && seq == 0);
        rz_rxwin_done(&w, 0);
        CHECK(rz_rxwin_insert(&w, 0, RZ_FRAME_DATA, 0, 0, d2, 4) == 0 && rz_rxwin_has(&w, 0));
        free(d2);
        rz_rxwin_free(&w);
        rz_aead_free(&tx);
        rz_aead_free(&rx);
        rz_aead_free(&rx_other);
        rz_aead_free(&rx_reverse);
    }

    /* Join tokens: good, forged, replayed into another session. */
    uint8_t join[RZ_HS_MAX_MSG], ok[RZ_HS_MAX_MSG];
    size_t jl = rz_join_make(&ka, 2, 1, join), okl;
    rz_join j;
    CHECK(rz_join_decode(join, jl, &j) == 0);
    CHECK(rz_join_check(&kb, &j, join, jl, ok, &okl, &eb) == 0);
    CHECK(rz_join_ok_check(&ka, join, ok, okl, 2, &ea) == 0);
    CHECK(rz_join_ok_check(&ka, join, ok, okl, 3, &ea) == -EKEYREJECTED);
    CHECK(rz_join_check(&kb2, &j, join, jl, ok, &okl, &eb) == -EKEYREJECTED); /* other session */
    join[RZ_PREAMBLE_LEN + 20] ^= 1; /* path id changed after MAC */
    CHECK(rz_join_decode(join, jl, &j) == 0 && rz_join_check(&kb, &j, join, jl, ok, &okl, &eb) == -EKEYREJECTED);
}

/* rz_hs_server_any: one server, several allowed peers. The key that matched is reported, a key not in
 * the set is refused as a wrong identity, and presenting an allowed key without its secret (the PROOF
 * signed by another key) fails the signature check. */
static void test_crypto_any(void) {
    rz_identity srv, a, b, c, mallory;
    identity_named(&srv, "server");
    identity_named(&a, "alice");
    identity_named(&b, "bob");
    identity_named(&c, "carol");
    identity_named(&mallory, "mallory");
    uint8_t net[16];
    network_named(net, "net");
    uint8_t allowed[3 * 32];
    memcpy(allowed, a.public_key, 32);
    memcpy(allowed + 32, b.public_key, 32);
    memcpy(allowed + 64, c.public_key, 32);
    rz_config sc;
    rz_config_init(&sc, &srv, net, NULL);
    const rz_identity *clients[] = {&a, &b, &c, &mallory};
    for (uint32_t i = 0; i < 4; i++) {
        rz_config cc;
        rz_config_init(&cc, clients[i], net, srv.public_key);
        rz_hs_client hs;
        rz_hs_server_state ss;
        rz_keys ck, sk;
        rz_error ce = {0, ""}, se = {0, ""};
        uint8_t hello[RZ_HS_MAX_MSG], reply[RZ_HS_MAX_MSG], proof[RZ_HS_MAX_MSG], verdict[RZ_HS_MAX_MSG];
        size_t hl, rl, pl = 0, vl = 0;
        uint32_t index = 99;
        rz_hs_client_hello(&hs, &cc, hello, &hl);
        int rc = rz_hs_server_any(&sc, allowed, 3, hello, hl, reply, &rl, &sk, &ss, &index, &se);
        if (i < 3) {
            CHECK(rc == 0 && index == i);
            CHECK(rz_hs_client_finish(&hs, &cc, reply, rl, &ck, proof, &pl, &ce) == 0);
            CHECK(rz_hs_server_finish(&ss, proof, pl, verdict, &vl, &se) == 0);
            CHECK(rz_hs_client_verdict(verdict, vl, &ce) == 0);
            CHECK(memcmp(ck.tx, sk.rx, 32) == 0 && memcmp(ck.session_id, sk.session_id, 16) == 0);
        } else {
            CHECK(rc == -EACCES && index == 99 && strstr(se.message, "not one of the 3 allowed keys"));
            CHECK(rz_hs_client_finish(&hs, &cc, reply, rl, &ck, proof, &pl, &ce) == -EACCES);
        }
    }
    /* Mallory presents Bob's key but can only sign with her own. */
    rz_identity forged = mallory;
    memcpy(forged.public_key, b.public_key, 32);
    rz_config fc;
    rz_config_init(&fc, &forged, net, srv.public_key);
    rz_hs_client hs;
    rz_hs_server_state ss;
    rz_keys ck, sk;
    rz_error ce = {0, ""}, se = {0, ""};
    uint8_t hello[RZ_HS_MAX_MSG], reply[RZ_HS_MAX_MSG], proof[RZ_HS_MAX_MSG], verdict[RZ_HS_MAX_MSG];
    size_t hl, rl, pl = 0, vl = 0;
    uint32_t index = 99;
    rz_hs_client_hello(&hs, &fc, hello, &hl);
    CHECK(rz_hs_server_any(&sc, allowed, 3, hello, hl, reply, &rl, &sk, &ss, &index, &se) == 0 && index == 1);
    CHECK(rz_hs_client_finish(&hs, &fc, reply, rl, &ck, proof, &pl, &ce) == 0);
    CHECK(rz_hs_server_finish(&ss, proof, pl, verdict, &vl, &se) == -EKEYREJECTED && strstr(se.message, "bad signature"));
    CHECK(rz_hs_client_verdict(verdict, vl, &ce) == -EKEYREJECTED);
    /* A set of one says what it expected, as rz_hs_server does. */
    CHECK(rz_hs_server_any(&sc, allowed, 1, hello, hl, reply, &rl, &sk, &ss, &index, &se) == -EACCES &&
          strstr(se.message, "expected"));
    CHECK(rz_hs_server_any(&sc, allowed, 0, hello, hl, reply, &rl, &sk, &ss, &index, &se) == -EINVAL);
}

static void test_sched(void) {
    /* 100, 200, 400 MB/s with queues: an idle slow path loses to a fast path with a short queue. */
    rz_sched_conn c[3] = {
        {.usable = true, .rate = 100e6, .rtt = 0.001, .queued = 0},
        {.usable = true, .rate = 200e6, .rtt = 0.001, .queued = 65536},
        {.usable = true, .rate = 400e6, .rtt = 0.001, .queued = 262144},
    };
    double eta;
    int p = rz_sched_pick(c, 3, 65536, 0, &eta);
    /* ETAs: 0.5ms+0.655ms, 0.5+0.655, 0.5+0.819 -> the 200 MB/s path ties the idle slow one; lowest index wins ties */
    CHECK(p == 0 || p == 1);
    c[2].queued = 0;
    c[1].queued = 0;
    CHECK(rz_sched_pick(c, 3, 65536, 0, &eta) == 2);
    CHECK(rz_sched_pick(c, 3, 65536, 1u << 2, &eta) == 1); /* excluded */
    c[1].usable = false;
    CHECK(rz_sched_pick(c, 3, 65536, 1u << 2, &eta) == 0);
    c[0].usable = false;
    CHECK(rz_sched_pick(c, 3, 65536, 1u << 2, &eta) == -1);
    /* Deep queue on the fast path: the slow path gets the chunk. */
    c[0].usable = c[1].usable = true;
    c[2].queued = 8u << 20;
    c[0].queued = 0;
    CHECK(rz_sched_pick(c, 3, 65536, 0, &eta) == 0 || rz_sched_pick(c, 3, 65536, 0, &eta) == 1);
    /* Proportional sharing: feed 1000 chunks draining nothing: shares follow rates (1:2:4). */
    rz_sched_conn d[3] = {{true, 100e6, 0.0001, 0}, {true, 200e6, 0.0001, 0}, {true, 400e6, 0.0001, 0}};
    uint32_t count[3] = {0};
    for (int i = 0; i < 7000; i++) {
        int k = rz_sched_pick(d, 3, 65536, 0, NULL);
        count[k]++;
        d[k].queued += 65536;
    }
    CHECK(count[0] > 900 && count[0] < 1100 && count[1] > 1900 && count[1] < 2100 && count[2] > 3900 && count[2] < 4100);
    /* Reinjection: only when clearly late and another path would do better. */
    CHECK(!rz_sched_should_reinject(0.005, 0.004, 0.001));
    CHECK(rz_sched_should_reinject(0.100, 0.004, 0.001));
    CHECK(!rz_sched_should_reinject(0.100, 0.004, 0.200));
    /* Rate estimator: converges on backlogged samples, creeps up when idle. */
    rz_rate r;
    rz_rate_init(&r, 1e6);
    double t = 0;
    uint64_t acked = 0;
    for (int i = 0; i < 100; i++) {
        rz_rate_sample(&r, t, acked, true);
        t += 0.02;
        acked += 2000000; /* 100 MB/s */
    }
    CHECK(r.rate > 95e6 && r.rate < 105e6);
    double before = r.rate;
    for (int i = 0; i < 10; i++) {
        rz_rate_sample(&r, t, acked, false);
        t += 0.02;
    }
    CHECK(r.rate > before);
}

static void test_rxwin(void) {
    rz_rxwin w;
    CHECK(rz_rxwin_init(&w, 100) == -EINVAL);
    CHECK(rz_rxwin_init(&w, 16) == 0);
    uint64_t seq;
    int err;
    /* Ordered: out-of-order arrival, in-order delivery, duplicate dropped, window bound enforced. */
    CHECK(rz_rxwin_insert(&w, 2, RZ_FRAME_DATA, 0, 0, malloc(1), 1) == 1);
    CHECK(rz_rxwin_next_ordered(&w, &seq) == NULL);
    CHECK(rz_rxwin_insert(&w, 0, RZ_FRAME_DATA, 0, 0, malloc(1), 1) == 1);
    CHECK(rz_rxwin_next_ordered(&w, &seq) != NULL && seq == 0);
    CHECK(rz_rxwin_next_ordered(&w, &seq) == NULL); /* 0 is busy, 1 missing */
    rz_rxwin_done(&w, 0);
    CHECK(w.cumulative == 1);
    CHECK(rz_rxwin_insert(&w, 1, RZ_FRAME_DATA, 0, 0, malloc(1), 1) == 1);
    uint8_t *dup = malloc(1);
    CHECK(rz_rxwin_insert(&w, 2, RZ_FRAME_DATA, 0, 0, dup, 1) == 0);
    free(dup);
    CHECK(rz_rxwin_insert(&w, 1 + 16, RZ_FRAME_DATA, 0, 0, NULL, 0) == -EPROTO);
    CHECK(rz_rxwin_next_ordered(&w, &seq) && seq == 1);
    rz_rxwin_done(&w, 1);
    CHECK(rz_rxwin_next_ordered(&w, &seq) && seq == 2);
    rz_rxwin_done(&w, 2);
    CHECK(w.cumulative == 3);
    rz_rxwin_free(&w);

    /* Pages: epoch 0 = seqs 0..3, barrier 0 at 4, epoch 1 = 5..6, barrier 1 at 7, end at 8. */
    rz_rxwin_init(&w, 16);
    CHECK(rz_rxwin_insert(&w, 5, RZ_FRAME_PAGE, 500, 1, malloc(1), 1) == 1); /* epoch 1 early */
    CHECK(rz_rxwin_insert(&w, 4, RZ_FRAME_BARRIER, 10, 0, NULL, 0) == 1);    /* barrier early */
    CHECK(rz_rxwin_insert(&w, 2, RZ_FRAME_PAGE, 200, 0, malloc(1), 1) == 1);
    rz_rx_slot *s = rz_rxwin_next_page(&w, &seq, &err);
    CHECK(s && seq == 2 && s->arg0 == 200); /* page of the open epoch: delivered out of order */
    rz_rxwin_done(&w, 2);
    CHECK(rz_rxwin_next_page(&w, &seq, &err) == NULL && err == 0); /* page 5 held, barrier waits for 0,1,3 */
    for (uint64_t q = 0; q < 4; q++)
        if (q != 2) rz_rxwin_insert(&w, q, RZ_FRAME_PAGE, q * 100, 0, malloc(1), 1);
    int delivered = 0;
    while ((s = rz_rxwin_next_page(&w, &seq, &err)) && s->type == RZ_FRAME_PAGE && s->arg1 == 0) {
        rz_rxwin_done(&w, seq);
        delivered++;
    }
    CHECK(delivered == 3);
    CHECK(s && s->type == RZ_FRAME_BARRIER && seq == 4 && s->arg0 == 10); /* all before it delivered */
    rz_rxwin_done(&w, 4);
    CHECK(w.open_epoch == 1 && w.cumulative == 5);
    s = rz_rxwin_next_page(&w, &seq, &err);
    CHECK(s && seq == 5); /* released by the barrier */
    rz_rxwin_done(&w, 5);
    /* A barrier with the wrong epoch index is a protocol violation. */
    rz_rxwin_insert(&w, 6, RZ_FRAME_BARRIER, 11, 5, NULL, 0);
    CHECK(rz_rxwin_next_page(&w, &seq, &err) == NULL && err == -EPROTO);
    /* A page for an epoch that is already committed is refused. */
    rz_rxwin_free(&w);
    rz_rxwin_init(&w, 16);
    rz_rxwin_insert(&w, 0, RZ_FRAME_BARRIER, 0, 0, NULL, 0);
    s = rz_rxwin_next_page(&w, &seq, &err);
    rz_rxwin_done(&w, seq);
    CHECK(rz_rxwin_insert(&w, 1, RZ_FRAME_PAGE, 0, 0, NULL, 0) == -EPROTO);
    CHECK(rz_rxwin_insert(&w, 1, RZ_FRAME_END, 0, 0, NULL, 0) == 1);
    s = rz_rxwin_next_page(&w, &seq, &err);
    CHECK(s && s->type == RZ_FRAME_END);
    rz_rxwin_done(&w, seq);
    CHECK(w.ended);
    CHECK(rz_rxwin_insert(&w, 2, RZ_FRAME_PAGE, 0, 1, NULL, 0) == -EPROTO); /* nothing after END */
    rz_rxwin_free(&w);
}

static void test_rdma(void) {
    rz_rdma_device_info info[4];
    rz_error e;
    int n = rz_rdma_probe(info, 4, &e);
    printf("rdma: %d device(s)%s\n", n, n == 0 ? " (none: RDMA data path not run)" : "");
    CHECK(n >= 0);
    rz_rdma_credits c;
    rz_rdma_credits_init(&c, 4, 2);
    CHECK(rz_rdma_credit_take(&c) && rz_rdma_credit_take(&c));
    CHECK(!rz_rdma_credit_take(&c)); /* send queue depth 2 */
    CHECK(rz_rdma_send_completed(&c) == 0 && rz_rdma_credit_take(&c));
    CHECK(rz_rdma_send_completed(&c) == 0 && rz_rdma_credit_take(&c));
    CHECK(rz_rdma_send_completed(&c) == 0 && rz_rdma_send_completed(&c) == 0);
    CHECK(!rz_rdma_credit_take(&c)); /* 4 credits spent: no receive buffer left at the peer */
    CHECK(rz_rdma_send_completed(&c) == -EPROTO);
    uint32_t seen = 4;
    CHECK(rz_rdma_credit_grant(&c, 6, &seen) == 0 && c.available == 2 && seen == 6);
    CHECK(rz_rdma_credit_grant(&c, 6, &seen) == 0 && c.available == 2); /* repeated grant mints nothing */
    CHECK(rz_rdma_credit_grant(&c, 5, &seen) == -EPROTO);                /* backwards */
    CHECK(rz_rdma_credit_take(&c));
    rz_rdma_credits r;
    rz_rdma_credits_init(&r, 8, 8);
    CHECK(rz_rdma_recv_consumed(&r, 1) == 1 && r.granted_total == 9 && r.consumed_total == 1);
    CHECK(rz_rdma_wr_count(65536, 4096) == 16 && rz_rdma_wr_count(65537, 4096) == 17 && rz_rdma_wr_count(0, 4096) == 1);
}

/* ---------------------------------------------------------------- loopback refusals */

typedef struct accept_job {
    rz_listener *l;
    rz_config cfg;
    int rc;
    rz_error err;
    rz_session *s;
} accept_job;

static void *accept_thread(void *arg) {
    accept_job *j = arg;
    j->rc = rz_accept(j->l, &j->cfg, 5000, &j->s, &j->err);
    return NULL;
}

static int raw_exchange(uint16_t port, const uint8_t *msg, size_t len, uint8_t *reply, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    if (write(fd, msg, len) < 0) { close(fd); return -1; }
    shutdown(fd, SHUT_WR);
    int got = 0;
    ssize_t r;
    while ((r = read(fd, reply + got, cap - (size_t)got)) > 0) got += (int)r;
    close(fd);
    return got;
}

static void test_loopback_refusals(void) {
    rz_identity srv, cli, evil;
    identity_named(&srv, "server");
    identity_named(&cli, "client");
    identity_named(&evil, "mallory");
    uint8_t net[16], net2[16];
    network_named(net, "mycelium");
    network_named(net2, "elsewhere");
    const char *addrs[] = {"127.0.0.1"};
    rz_listener *l;
    uint16_t port;
    rz_error e;
    if (rz_listener_open(&l, addrs, 1, 0, &port, &e) != 0) {
        fprintf(stderr, "listener: %s\n", e.message);
        failures++;
        return;
    }
    rz_path path = {.local_addr = "127.0.0.1", .remote_addr = "127.0.0.1", .remote_port = port};
    struct {
        const char *name;
        const rz_identity *id;
        const uint8_t *net;
        const uint8_t *expect_peer;
        int client_code, server_code;
        const char *words;
    } cases[] = {
        {"another identity", &evil, net, srv.public_key, -EACCES, -EACCES, "wrong peer identity"},
        {"another network", &cli, net2, srv.public_key, -ENONET, -ENONET, "wrong network"},
        {"client expects another server", &cli, net, evil.public_key, -EACCES, 0, "wrong peer identity"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        accept_job job = {.l = l};
        rz_config_init(&job.cfg, &srv, net, cli.public_key);
        pthread_t th;
        pthread_create(&th, NULL, accept_thread, &job);
        rz_config cc;
        rz_config_init(&cc, cases[i].id, cases[i].net, cases[i].expect_peer);
        rz_session *s = NULL;
        rz_error ce = {0, ""};
        int rc = rz_connect(&cc, &path, 1, &s, &ce);
        pthread_join(th, NULL);
        printf("refusal '%s': client %d \"%s\"; server %d \"%s\"\n", cases[i].name, rc, ce.message, job.rc,
               job.rc ? job.err.message : "(accepted)");
        CHECK(rc == cases[i].client_code && strstr(ce.message, cases[i].words));
        if (cases[i].server_code) CHECK(job.rc == cases[i].server_code && strstr(job.err.message, cases[i].words));
        if (s) rz_session_close(s);
        if (job.rc == 0) rz_session_close(job.s);
    }
    /* Garbage and a future version, by hand. */
    const uint8_t garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    uint8_t reply[512];
    accept_job job = {.l = l};
    rz_config_init(&job.cfg, &srv, net, cli.public_key);
    pthread_t th;
    pthread_create(&th, NULL, accept_thread, &job);
    int got = raw_exchange(port, garbage, sizeof garbage - 1, reply, sizeof reply);
    pthread_join(th, NULL);
    rz_reject rj;
    printf("refusal 'garbage': server %d \"%s\"\n", job.rc, job.err.message);
    CHECK(job.rc == -EPROTO && strstr(job.err.message, "malformed handshake"));
    CHECK(got > 0 && rz_reject_decode(reply, (size_t)got, &rj) == 0 && rj.reason == RZ_REJECT_MALFORMED);

    rz_hs_client hs;
    uint8_t hello[RZ_HS_MAX_MSG];
    size_t hl;
    rz_config cc;
    rz_config_init(&cc, &cli, net, srv.public_key);
    rz_hs_client_hello(&hs, &cc, hello, &hl);
    hello[4] = 9;
    job = (accept_job){.l = l};
    rz_config_init(&job.cfg, &srv, net, cli.public_key);
    pthread_create(&th, NULL, accept_thread, &job);
    got = raw_exchange(port, hello, hl, reply, sizeof reply);
    pthread_join(th, NULL);
    printf("refusal 'version 9': server %d \"%s\"\n", job.rc, job.err.message);
    CHECK(job.rc == -EPROTONOSUPPORT && strstr(job.err.message, "version mismatch"));
    uint8_t unused[RZ_HS_MAX_MSG];
    size_t unused_len;
    CHECK(got > 0 && rz_hs_client_finish(&hs, &cc, reply, (size_t)got, NULL, unused, &unused_len, &e) == -EPROTONOSUPPORT);
    printf("client sees: \"%s\"\n", e.message);

    /* Truncated HELLO, then silence: the server reports it and moves on. */
    job = (accept_job){.l = l};
    rz_config_init(&job.cfg, &srv, net, cli.public_key);
    rz_hs_client_hello(&hs, &cc, hello, &hl);
    pthread_create(&th, NULL, accept_thread, &job);
    got = raw_exchange(port, hello, 50, reply, sizeof reply);
    pthread_join(th, NULL);
    printf("refusal 'truncated': server %d \"%s\"\n", job.rc, job.err.message);
    CHECK(job.rc == -EPROTO && strstr(job.err.message, "cut short"));

    /* A forged JOIN for a session that does not exist. */
    rz_keys fake;
    memset(&fake, 7, sizeof fake);
    uint8_t join[RZ_HS_MAX_MSG];
    size_t jl = rz_join_make(&fake, 1, 0, join);
    got = raw_exchange(port, join, jl, reply, sizeof reply);
    CHECK(got > 0 && rz_reject_decode(reply, (size_t)got, &rj) == 0 && rj.reason == RZ_REJECT_SESSION_FAILED);
    rz_listener_close(l);
}

/* One listener, several allowed clients (rz_accept_any): the right index and a working session for an
 * allowed key, -EACCES on both sides for a key not in the set, -EKEYREJECTED for a forged proof. */
typedef struct any_job {
    rz_listener *l;
    rz_config cfg;
    const uint8_t *allowed;
    uint32_t count;
    int rc;
    uint32_t index;
    rz_error err;
    rz_session *s;
} any_job;

static void *accept_any_thread(void *arg) {
    any_job *j = arg;
    j->index = 99;
    j->rc = rz_accept_any(j->l, &j->cfg, j->allowed, j->count, 5000, &j->s, &j->index, &j->err);
    return NULL;
}

static void test_loopback_accept_any(void) {
    rz_identity srv, a, b, c, mallory;
    identity_named(&srv, "server");
    identity_named(&a, "alice");
    identity_named(&b, "bob");
    identity_named(&c, "carol");
    identity_named(&mallory, "mallory");
    uint8_t net[16];
    network_named(net, "mycelium");
    uint8_t allowed[3 * 32];
    memcpy(allowed, a.public_key, 32);
    memcpy(allowed + 32, b.public_key, 32);
    memcpy(allowed + 64, c.public_key, 32);
    rz_identity forged = mallory;
    memcpy(forged.public_key, c.public_key, 32);
    const char *addrs[] = {"127.0.0.1"};
    rz_listener *l;
    uint16_t port;
    rz_error e;
    if (rz_listener_open(&l, addrs, 1, 0, &port, &e) != 0) {
        fprintf(stderr, "listener: %s\n", e.message);
        failures++;
        return;
    }
    rz_path path = {.local_addr = "127.0.0.1", .remote_addr = "127.0.0.1", .remote_port = port};
    struct {
        const char *name;
        const rz_identity *id;
        int client_code, server_code;
        uint32_t index;
        const char *words;
    } cases[] = {
        {"bob among three", &b, 0, 0, 1, NULL},
        {"carol among three", &c, 0, 0, 2, NULL},
        {"unknown key", &mallory, -EACCES, -EACCES, 99, "not one of the 3 allowed keys"},
        {"forged proof for carol", &forged, -EKEYREJECTED, -EKEYREJECTED, 99, "bad signature"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        any_job job = {.l = l, .allowed = allowed, .count = 3};
        rz_config_init(&job.cfg, &srv, net, NULL);
        pthread_t th;
        pthread_create(&th, NULL, accept_any_thread, &job);
        rz_config cc;
        rz_config_init(&cc, cases[i].id, net, srv.public_key);
        rz_session *s = NULL;
        rz_error ce = {0, ""};
        int rc = rz_connect(&cc, &path, 1, &s, &ce);
        pthread_join(th, NULL);
        printf("accept_any '%s': client %d \"%s\"; server %d index %u \"%s\"\n", cases[i].name, rc,
               rc ? ce.message : "(connected)", job.rc, job.index, job.rc ? job.err.message : "(accepted)");
        CHECK(rc == cases[i].client_code && job.rc == cases[i].server_code);
        CHECK(job.index == cases[i].index); /* set only for a session that was accepted */
        if (cases[i].words) CHECK(strstr(job.err.message, cases[i].words) != NULL);
        if (rc == 0 && job.rc == 0) {
            /* Both ends hold the same session. */
            uint8_t sid_c[16], sid_s[16];
            CHECK(rz_session_id(s, sid_c) == 0 && rz_session_id(job.s, sid_s) == 0 && memcmp(sid_c, sid_s, 16) == 0);
        }
        if (s) rz_session_close(s);
        if (job.rc == 0) rz_session_close(job.s);
    }
    any_job bad = {.l = l, .allowed = allowed, .count = 0};
    rz_config_init(&bad.cfg, &srv, net, NULL);
    accept_any_thread(&bad);
    CHECK(bad.rc == -EINVAL);
    bad.count = RZ_MAX_ALLOWED_PEERS + 1;
    accept_any_thread(&bad);
    CHECK(bad.rc == -EINVAL);
    rz_listener_close(l);
}

/* A session on loopback: 2 paths, send 8 MiB as a stream and some pages with barriers. */
typedef struct server_job {
    rz_listener *l;
    rz_config cfg;
    int rc;
    rz_error err;
    char hash[65];
    uint64_t got;
    int pages;
    int barriers;
} server_job;

static int on_page(void *ctx, uint64_t off, const uint8_t *d, uint32_t len) {
    server_job *j = ctx;
    (void)off;
    (void)d;
    (void)len;
    j->pages++;
    return 0;
}
static int on_barrier(void *ctx, uint64_t epoch) {
    server_job *j = ctx;
    if ((int)epoch != j->barriers) return -EPROTO;
    j->barriers++;
    return 0;
}

static void *server_thread(void *arg) {
    server_job *j = arg;
    rz_session *s;
    j->rc = rz_accept(j->l, &j->cfg, 5000, &s, &j->err);
    if (j->rc) return NULL;
    int fd = memfd_create("rz-unit", 0);
    j->rc = rz_recv_fd(s, fd, &j->got, &j->err);
    if (!j->rc) {
        uint8_t *m = mmap(NULL, j->got, PROT_READ, MAP_SHARED, fd, 0);
        hash_hex(m, j->got, j->hash);
        munmap(m, j->got);
    }
    close(fd);
    rz_session_close(s);
    if (j->rc) return NULL;
    /* A second session on the same listener for pages: END closes a direction for good. */
    j->rc = rz_accept(j->l, &j->cfg, 5000, &s, &j->err);
    if (j->rc) return NULL;
    j->rc = rz_recv_pages(s, on_page, on_barrier, j, 10000, &j->err);
    rz_session_close(s);
    return NULL;
}

static void test_loopback_session(void) {
    rz_identity srv, cli;
    identity_named(&srv, "server");
    identity_named(&cli, "client");
    uint8_t net[16];
    network_named(net, "mycelium");
    const char *addrs[] = {"127.0.0.1", "127.0.0.2"};
    rz_listener *l;
    uint16_t port;
    rz_error e;
    if (rz_listener_open(&l, addrs, 2, 0, &port, &e) != 0) {
        fprintf(stderr, "listener: %s\n", e.message);
        failures++;
        return;
    }
    server_job job = {.l = l};
    rz_config_init(&job.cfg, &srv, net, cli.public_key);
    pthread_t th;
    pthread_create(&th, NULL, server_thread, &job);
    rz_config cc;
    rz_config_init(&cc, &cli, net, srv.public_key);
    rz_path paths[2] = {{"127.0.0.1", "127.0.0.1", port}, {"127.0.0.2", "127.0.0.2", port}};
    rz_session *s;
    int rc = rz_connect(&cc, paths, 2, &s, &e);
    CHECK(rc == 0);
    if (rc) {
        fprintf(stderr, "connect: %s\n", e.message);
        pthread_join(th, NULL);
        rz_listener_close(l);
        return;
    }
    size_t n = 8u << 20;
    uint8_t *buf = malloc(n);
    fill_pattern(buf, n, 99);
    char want[65];
    hash_hex(buf, n, want);
    CHECK(rz_send_bytes(s, buf, n, 1, &e) == 0);
    rz_stats st;
    rz_session_stats(s, &st);
    rz_session_close(s);
    CHECK(st.conns_joined == 4);
    rc = rz_connect(&cc, paths, 2, &s, &e);
    CHECK(rc == 0);
    if (rc) {
        pthread_join(th, NULL);
        rz_listener_close(l);
        return;
    }
    for (int ep = 0; ep < 3; ep++) {
        for (int p = 0; p < 10; p++) {
            int prc = rz_send_page(s, (uint64_t)p * 4096, buf + p * 4096, 4096, &e);
            if (prc) fprintf(stderr, "send_page: %s\n", e.message);
            CHECK(prc == 0);
        }
        CHECK(rz_send_barrier(s, (uint64_t)ep, &e) == 0);
    }
    CHECK(rz_send_end(s, 10000, &e) == 0);
    rz_session_stats(s, &st);
    rz_session_close(s);
    pthread_join(th, NULL);
    printf("loopback session: rc %d %s, %llu bytes, pages %d, barriers %d, conns joined %llu, cipher %u\n", job.rc,
           job.rc ? job.err.message : "", (unsigned long long)job.got, job.pages, job.barriers,
           (unsigned long long)st.conns_joined, st.cipher);
    CHECK(job.rc == 0 && job.got == n && strcmp(job.hash, want) == 0);
    CHECK(job.pages == 30 && job.barriers == 3);
    free(buf);
    rz_listener_close(l);
}

/* The receiver's callback fails: the sender must hear about it (CLOSE) and fail, not hang. */
static int failing_page(void *ctx, uint64_t off, const uint8_t *d, uint32_t len) {
    (void)off, (void)d, (void)len;
    int *n = ctx;
    return ++*n == 5 ? -EIO : 0;
}

static void *failing_server(void *arg) {
    server_job *j = arg;
    rz_session *s;
    j->rc = rz_accept(j->l, &j->cfg, 5000, &s, &j->err);
    if (j->rc) return NULL;
    int n = 0;
    j->rc = rz_recv_pages(s, failing_page, NULL, &n, 10000, &j->err);
    rz_session_close(s);
    return NULL;
}

static void test_receiver_failure_reaches_sender(void) {
    rz_identity srv, cli;
    identity_named(&srv, "server");
    identity_named(&cli, "client");
    uint8_t net[16];
    network_named(net, "mycelium");
    const char *addrs[] = {"127.0.0.1"};
    rz_listener *l;
    uint16_t port;
    rz_error e;
    if (rz_listener_open(&l, addrs, 1, 0, &port, &e) != 0) {
        failures++;
        return;
    }
    server_job job = {.l = l};
    rz_config_init(&job.cfg, &srv, net, cli.public_key);
    pthread_t th;
    pthread_create(&th, NULL, failing_server, &job);
    rz_config cc;
    rz_config_init(&cc, &cli, net, srv.public_key);
    rz_path path = {"127.0.0.1", "127.0.0.1", port};
    rz_session *s;
    if (rz_connect(&cc, &path, 1, &s, &e) != 0) {
        failures++;
        pthread_join(th, NULL);
        rz_listener_close(l);
        return;
    }
    uint8_t page[4096] = {0};
    int rc = 0;
    for (int i = 0; i < 100 && !rc; i++) rc = rz_send_page(s, (uint64_t)i * 4096, page, sizeof page, &e);
    if (!rc) rc = rz_send_end(s, 10000, &e);
    pthread_join(th, NULL);
    printf("receiver failure: receiver %d \"%s\"; sender %d \"%s\"\n", job.rc, job.err.message, rc, e.message);
    CHECK(job.rc == -EIO && strstr(job.err.message, "callback"));
    CHECK(rc == -ECONNABORTED || rc == -ECONNRESET);
    rz_session_close(s);
    rz_listener_close(l);
}

/* A migration stream is a pipe whose writer may pause mid-chunk: the bytes so far must arrive without
 * waiting for a full chunk, or a writer that waits for the other side would deadlock. */
typedef struct pipe_job {
    rz_listener *l;
    rz_config srv, cli;
    uint16_t port;
    int src_read, dst_write;
    int server_rc, client_rc;
    uint64_t got;
    rz_error server_err, client_err;
} pipe_job;

static void *pipe_server(void *arg) {
    pipe_job *j = arg;
    rz_session *s;
    j->server_rc = rz_accept(j->l, &j->srv, 5000, &s, &j->server_err);
    if (j->server_rc) return NULL;
    j->server_rc = rz_recv_fd(s, j->dst_write, &j->got, &j->server_err);
    close(j->dst_write);
    rz_session_close(s);
    return NULL;
}

static void *pipe_client(void *arg) {
    pipe_job *j = arg;
    rz_path path = {"127.0.0.1", "127.0.0.1", j->port};
    rz_session *s;
    j->client_rc = rz_connect(&j->cli, &path, 1, &s, &j->client_err);
    if (j->client_rc) return NULL;
    j->client_rc = rz_send_fd(s, j->src_read, UINT64_MAX, &j->client_err);
    rz_session_close(s);
    return NULL;
}

static void test_pipe_stream(void) {
    rz_identity srv, cli;
    identity_named(&srv, "server");
    identity_named(&cli, "client");
    uint8_t net[16];
    network_named(net, "mycelium");
    const char *addrs[] = {"127.0.0.1"};
    pipe_job j = {0};
    rz_error e;
    if (rz_listener_open(&j.l, addrs, 1, 0, &j.port, &e) != 0) {
        failures++;
        return;
    }
    rz_config_init(&j.srv, &srv, net, cli.public_key);
    rz_config_init(&j.cli, &cli, net, srv.public_key);
    int src[2], dst[2];
    if (pipe(src) || pipe(dst)) {
        failures++;
        return;
    }
    j.src_read = src[0];
    j.dst_write = dst[1];
    pthread_t ts, tc;
    pthread_create(&ts, NULL, pipe_server, &j);
    pthread_create(&tc, NULL, pipe_client, &j);
    CHECK(write(src[1], "hello", 5) == 5);
    /* The writer holds its end open: "hello" must still come through within 5 s. */
    struct pollfd p = {.fd = dst[0], .events = POLLIN};
    char buf[64] = {0};
    ssize_t n = 0;
    if (poll(&p, 1, 5000) == 1) n = read(dst[0], buf, sizeof buf - 1);
    CHECK(n == 5 && memcmp(buf, "hello", 5) == 0);
    CHECK(write(src[1], " world", 6) == 6);
    close(src[1]);
    size_t total = (size_t)(n > 0 ? n : 0);
    while ((n = read(dst[0], buf + total, sizeof buf - 1 - total)) > 0) total += (size_t)n;
    pthread_join(tc, NULL);
    pthread_join(ts, NULL);
    printf("pipe stream: sender %d, receiver %d, got \"%s\"\n", j.client_rc, j.server_rc, buf);
    CHECK(j.client_rc == 0 && j.server_rc == 0 && j.got == 11 && strcmp(buf, "hello world") == 0);
    close(src[0]);
    close(dst[0]);
    rz_listener_close(j.l);
}

int main(int argc, char **argv) {
    if (sodium_init() < 0) return 2;
    bool net = argc > 1 && strcmp(argv[1], "--loopback") == 0;
    test_codec();
    test_crypto();
    test_crypto_any();
    test_sched();
    test_rxwin();
    test_rdma();
    printf("unit: %s\n", failures ? "FAILED" : "ok");
    if (net) {
        test_loopback_refusals();
        test_loopback_accept_any();
        test_loopback_session();
        test_receiver_failure_reaches_sender();
        test_pipe_stream();
        printf("loopback: %s\n", failures ? "FAILED" : "ok");
    }
    return failures ? 1 : 0;
}
