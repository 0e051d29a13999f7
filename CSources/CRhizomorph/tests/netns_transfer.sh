#!/bin/bash
# Multi-path transfers over 3 shaped paths (200/400/800 Mbit/s), both delivery modes, then a path cut
# mid-transfer and restored. Content is checked by the receiver (hash; per page and per barrier).
source "$(dirname "$0")/lib.sh"
trap 'cleanup; rm -rf "${OUT:-}"' EXIT
trap 'exit 130' INT TERM
SIZE=${SIZE:-$((512 << 20))}
PAGES_SIZE=${PAGES_SIZE:-$((256 << 20))}
OUT=$(mktemp -d /tmp/rz-transfer.XXXXXX)
fail=0

setup_paths || { echo "FAIL: cannot create namespaces"; exit 1; }

# transfer NAME MODE SIZE [CUT_PATH]: run one transfer, optionally cutting a path 1 s in for 3 s.
transfer() {
    local name=$1 mode=$2 size=$3 cut=${4:-}
    ip netns exec "$NSB" "$BIN/rzpeer" server --listen "$(server_addrs)" --mode "$mode" --size "$size" \
        --seed 7 > "$OUT/$name.server" 2>&1 &
    local spid=$!
    PIDS+=("$spid")
    wait_listening "$OUT/$name.server" || { echo "FAIL $name: server did not start"; cat "$OUT/$name.server"; return 1; }
    ip netns exec "$NSA" "$BIN/rzpeer" client --paths "$(client_paths)" --mode "$mode" --size "$size" \
        --seed 7 > "$OUT/$name.client" 2>&1 &
    local cpid=$!
    PIDS+=("$cpid")
    if [ -n "$cut" ]; then
        # A second into a transfer of several seconds (its steady state). Waiting on the path's byte
        # counter instead cut too early or too late here (the counters did not follow the transfer in
        # time), and then no connection had to fail, which is not the case under test.
        sleep 1
        echo "  cutting path $cut (link down on both ends)"
        ip -n "$NSA" link set "${RZ_ID}a$cut" down
        ip -n "$NSB" link set "${RZ_ID}b$cut" down
        sleep 3  # the behaviour under test: the path stays down for 3 s, then comes back
        echo "  restoring path $cut"
        ip -n "$NSA" link set "${RZ_ID}a$cut" up
        ip -n "$NSB" link set "${RZ_ID}b$cut" up
    fi
    local rc=0
    timeout 120 tail --pid=$cpid -f /dev/null; wait $cpid || rc=1
    timeout 30 tail --pid=$spid -f /dev/null; wait $spid || rc=1
    local s c
    s=$(grep RESULT "$OUT/$name.server"); c=$(grep RESULT "$OUT/$name.client")
    echo "  server: ${s:-$(cat "$OUT/$name.server")}"
    echo "  client: ${c:-$(cat "$OUT/$name.client")}"
    [ "$(field ok "$s")" = 1 ] || rc=1
    if [ -n "$cut" ]; then
        local failed
        failed=$(( $(field conns_failed "$c") + $(field conns_failed "$s") ))
        if [ "$failed" -lt 1 ]; then echo "  the cut did not hit the transfer (no connection failed)"; rc=1; fi
    fi
    return $rc
}

echo "== stream, $((SIZE >> 20)) MiB over paths $PATH_RATES Mbit/s"
transfer stream stream "$SIZE" && echo "PASS stream" || { echo "FAIL stream"; fail=1; }
echo "== pages + barriers, $((PAGES_SIZE >> 20)) MiB region, 6 epochs"
transfer pages pages "$PAGES_SIZE" && echo "PASS pages" || { echo "FAIL pages"; fail=1; }
echo "== stream with path 3 cut mid-transfer and restored"
transfer cut stream "$SIZE" 3 && echo "PASS path-loss stream" || { echo "FAIL path-loss stream"; fail=1; }
echo "== pages with path 2 cut mid-transfer and restored"
transfer cutpages pages "$PAGES_SIZE" 2 && echo "PASS path-loss pages" || { echo "FAIL path-loss pages"; fail=1; }
rm -rf "$OUT"
exit $fail
