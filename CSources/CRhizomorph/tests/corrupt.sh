#!/bin/bash
# Corruption on the wire. Inside a private namespace (loopback only): path 1 goes straight to the
# server, path 2 goes through flipproxy, which flips bytes client->server.
#  1. One corrupted path among two: every corrupted chunk must be refused and resent; the transfer
#     completes with the exact content, and the receiver counted authentication failures.
#  2. The only path corrupted, heavily: the receiver must fail with a clear integrity error, and
#     must not report success.
source "$(dirname "$0")/lib.sh"
NS=${RZ_ID}c
cleanup_c() { cleanup; ip netns del "$NS" 2>/dev/null; rm -rf "${OUT:-}"; return 0; }
trap cleanup_c EXIT
trap 'exit 130' INT TERM
OUT=$(mktemp -d /tmp/rz-corrupt.XXXXXX)
fail=0
ip netns add "$NS" || exit 1
ip -n "$NS" link set lo up
PORT=7400
# wait_proxy LOG: until flipproxy printed that it listens (or 10 s); its log says why when it cannot.
wait_proxy() {
    for _ in $(seq 1 100); do grep -q "flipproxy: listening" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "  flipproxy did not start listening: $(cat "$1")"; return 1
}

echo "== one of two paths corrupts about one byte per 2 MiB (256 MiB stream)"
ip netns exec "$NS" "$BIN/flipproxy" 127.0.0.3 $PORT 127.0.0.2 $PORT $((2 << 20)) 4096 2> "$OUT/proxy1" &
p1=$!; PIDS+=($p1)
wait_proxy "$OUT/proxy1"
ip netns exec "$NS" "$BIN/rzpeer" server --listen 127.0.0.1,127.0.0.2 --port $PORT --size $((256 << 20)) \
    --max-auth 100000 > "$OUT/s1" 2>&1 &
spid=$!; PIDS+=($spid)
wait_listening "$OUT/s1"
timeout 120 ip netns exec "$NS" "$BIN/rzpeer" client --paths 127.0.0.1=127.0.0.1,127.0.0.3=127.0.0.3 --port $PORT \
    --size $((256 << 20)) > "$OUT/c1" 2>&1
crc=$?
wait $spid; src=$?
s=$(grep RESULT "$OUT/s1"); echo "  server: ${s:-$(cat "$OUT/s1")}"
echo "  client: $(cat "$OUT/c1")"
echo "  proxy: $(tail -1 "$OUT/proxy1")"
if [ $crc = 0 ] && [ $src = 0 ] && [ "$(field ok "$s")" = 1 ] && [ "$(field auth_failures "$s")" -gt 0 ]; then
    echo "PASS corrupted path: chunks refused and resent, content exact"
else
    echo "FAIL corrupted path"; fail=1
    echo "  proxy: $(cat "$OUT/proxy1")"
fi
kill $p1 2>/dev/null; wait $p1 2>/dev/null

echo "== the only path corrupts about one byte per 64 KiB"
ip netns exec "$NS" "$BIN/flipproxy" 127.0.0.3 $PORT 127.0.0.2 $PORT 65536 4096 2> "$OUT/proxy2" &
ppid=$!; PIDS+=($ppid)
wait_proxy "$OUT/proxy2"
ip netns exec "$NS" "$BIN/rzpeer" server --listen 127.0.0.2 --port $PORT --size $((64 << 20)) > "$OUT/s2" 2>&1 &
spid=$!; PIDS+=($spid)
wait_listening "$OUT/s2"
RZ_DEBUG=${RZ_DEBUG_CLIENT:-} ip netns exec "$NS" "$BIN/rzpeer" client --paths 127.0.0.3=127.0.0.3 --port $PORT --size $((64 << 20)) > "$OUT/c2" 2>&1 &
cpid=$!; PIDS+=($cpid)
timeout 60 tail --pid=$spid -f /dev/null
wait $spid; src=$?
# The sender must learn of the failure too, and not claim success.
timeout 30 tail --pid=$cpid -f /dev/null
wait $cpid; crc=$?
kill $ppid 2>/dev/null
echo "  server: $(grep -E 'RESULT|ERROR' "$OUT/s2")"
echo "  client: $(grep -E 'RESULT|ERROR' "$OUT/c2")"
if [ $src != 0 ] && grep -q 'ERROR receive code=-74' "$OUT/s2" && grep -q 'integrity failure' "$OUT/s2" && ! grep -q 'ok=1' "$OUT/s2" \
   && [ $crc != 0 ] && grep -q ERROR "$OUT/c2"; then
    echo "PASS heavily corrupted only path: session failed with a clear integrity error, nothing delivered as good"
else
    echo "FAIL heavily corrupted only path"; fail=1
    echo "  proxy: $(cat "$OUT/proxy2")"
    echo "  server output (end):"; tail -5 "$OUT/s2" | sed 's/^/    /'
    echo "  client output (end):"; tail -5 "$OUT/c2" | sed 's/^/    /'
fi
[ -n "${RZ_DEBUG_CLIENT:-}" ] && grep -v "^rz [0-9]" "$OUT/c2" | tail -20
rm -rf "$OUT"
exit $fail
