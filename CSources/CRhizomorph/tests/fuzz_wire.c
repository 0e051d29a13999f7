/* libFuzzer harness for every decoder that reads peer bytes: handshake messages, the server and
 * client handshake steps, join tokens, frame headers, acknowledgements, and the receive window fed
 * with arbitrary (sequence, type, epoch) triples. The first input byte picks the target.
 *   make build/fuzz_wire && ./build/fuzz_wire -max_total_time=60 corpus/ */
#include "internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static rz_config server_cfg, client_cfg;
static rz_keys keys;
static rz_hs_client client_state;
static rz_hs_server_state server_state;

static void setup(void) {
    static int done;
    if (done) return;
    done = 1;
    if (sodium_init() < 0) abort();
    rz_identity a, b;
    uint8_t seed[32] = {1}, net[16] = {2};
    rz_identity_from_seed(&a, seed);
    seed[0] = 2;
    rz_identity_from_seed(&b, seed);
    /* rz_config_init lives in session.c, which the harness does not link. */
    server_cfg.identity = a;
    memcpy(server_cfg.network_id, net, 16);
    memcpy(server_cfg.peer_public_key, b.public_key, 32);
    client_cfg.identity = b;
    memcpy(client_cfg.network_id, net, 16);
    memcpy(client_cfg.peer_public_key, a.public_key, 32);
    uint8_t hello[RZ_HS_MAX_MSG];
    size_t hl;
    rz_hs_client_hello(&client_state, &client_cfg, hello, &hl);
    uint8_t reply[RZ_HS_MAX_MSG];
    size_t rl;
    rz_keys k;
    if (rz_hs_server(&server_cfg, hello, hl, reply, &rl, &k, &server_state, NULL) != 0) abort();
    memset(&keys, 0x5a, sizeof keys);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    if (size < 1) return 0;
    uint8_t which = data[0] % 12;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    uint8_t out[RZ_HS_MAX_MSG + 64];
    size_t out_len;
    rz_error err;
    switch (which) {
    case 0: { rz_hello h; rz_hello_decode(p, n, &h); break; }
    case 1: { rz_reply r; rz_reply_decode(p, n, &r); break; }
    case 2: { rz_join j; rz_join_decode(p, n, &j); break; }
    case 3: { rz_join_ok j; rz_join_ok_decode(p, n, &j); break; }
    case 4: { rz_reject r; rz_reject_decode(p, n, &r); break; }
    case 5: { rz_frame_hdr h; rz_frame_hdr_decode(p, n, RZ_MAX_CHUNK + RZ_TAG, &h); break; }
    case 6: { rz_ack a; rz_ack_decode(p, n, &a); break; }
    case 7: {
        /* A HELLO carries no proof; what must never pass is the PROOF that follows. */
        rz_keys k;
        rz_hs_server_state st;
        rz_hs_server(&server_cfg, p, n, out, &out_len, &k, &st, &err);
        if (rz_hs_server_finish(&server_state, p, n, out, &out_len, &err) == 0) abort();
        break;
    }
    case 11: {
        /* The server side with a set of allowed keys: the index stays in the set, and no PROOF that
         * follows a HELLO from the fuzzer verifies. */
        static uint8_t allowed[3 * 32];
        memcpy(allowed, server_cfg.identity.public_key, 32);
        memcpy(allowed + 32, client_cfg.identity.public_key, 32);
        memset(allowed + 64, 0x33, 32);
        rz_keys k;
        rz_hs_server_state st;
        uint32_t index = UINT32_MAX;
        size_t half = n / 2;
        if (rz_hs_server_any(&server_cfg, allowed, 3, p, half, out, &out_len, &k, &st, &index, &err) == 0) {
            if (index >= 3) abort();
            if (rz_hs_server_finish(&st, p + half, n - half, out, &out_len, &err) == 0) abort();
        }
        break;
    }
    case 8: {
        rz_keys k;
        rz_hs_client st = client_state;
        if (rz_hs_client_finish(&st, &client_cfg, p, n, &k, out, &out_len, &err) == 0) abort();
        rz_hs_client_verdict(p, n, &err);
        break;
    }
    case 9: {
        rz_join j;
        if (rz_join_decode(p, n, &j) == 0 && rz_join_check(&keys, &j, p, n, out, &out_len, &err) == 0) abort();
        break;
    }
    case 10: {
        /* Window operations: 10-byte records (seq offset, type, epoch, op). */
        rz_rxwin w;
        if (rz_rxwin_init(&w, 64) != 0) return 0;
        for (size_t i = 0; i + 4 <= n; i += 4) {
            uint64_t seq = w.cumulative + (p[i] % 80);
            uint8_t type = (uint8_t)(RZ_FRAME_DATA + p[i + 1] % 4);
            uint64_t epoch = w.open_epoch + p[i + 2] % 3;
            uint64_t s2;
            int e;
            switch (p[i + 3] % 3) {
            case 0: {
                uint8_t *d = malloc(1);
                if (rz_rxwin_insert(&w, seq, type, 0, epoch, d, 1) != 1) free(d);
                break;
            }
            case 1:
                if (rz_rxwin_next_page(&w, &s2, &e)) rz_rxwin_done(&w, s2);
                break;
            default:
                if (rz_rxwin_next_ordered(&w, &s2)) rz_rxwin_done(&w, s2);
                break;
            }
        }
        rz_rxwin_free(&w);
        break;
    }
    }
    return 0;
}
