#!/bin/bash
# Rhizomorph benchmark. Everything runs between namespaces this script creates (A = sender, B = receiver).
#  1. Shaped paths (PATH_RATES, default 200/400/800 Mbit/s, tbf both ways): single TCP per path, Rhizomorph
#     over all paths, Linux MPTCP over all paths (in-kernel path manager, server announces its other
#     addresses, client accepts). ROUNDS interleaved rounds; medians; ratios.
#  2. Loopback (inside A): one path, Rhizomorph vs one plain TCP stream (CPU cost of chunking + crypto).
#  3. Zero-copy: MSG_ZEROCOPY vs copy, plain and with sealing, on loopback and on an unshaped veth.
#  4. Seal throughput per core.
# Timing: sender side, from the first byte to the receiver's confirmation that it has everything.
# Output: lines "BENCH name=value" and a summary. Usage: tests/bench.sh [ROUNDS]
source "$(dirname "$0")/lib.sh"
trap 'cleanup; rm -rf "${OUT:-}"' EXIT
trap 'exit 130' INT TERM
ROUNDS=${1:-${ROUNDS:-3}}
RZ_SIZE=${RZ_SIZE:-$((512 << 20))}
LO_SIZE=${LO_SIZE:-$((1024 << 20))}
OUT=$(mktemp -d /tmp/rz-bench.XXXXXX)
setup_paths || exit 1
# An unshaped veth pair for the zero-copy measurement.
ip link add "${RZ_ID}az" netns "$NSA" type veth peer name "${RZ_ID}bz" netns "$NSB"
ip -n "$NSA" addr add 10.209.0.1/24 dev "${RZ_ID}az"; ip -n "$NSB" addr add 10.209.0.2/24 dev "${RZ_ID}bz"
ip -n "$NSA" link set "${RZ_ID}az" up; ip -n "$NSB" link set "${RZ_ID}bz" up

# MPTCP: the server announces its other path addresses; the client accepts them as subflows.
ip netns exec "$NSA" ip mptcp limits set subflows 8 add_addr_accepted 8
ip netns exec "$NSB" ip mptcp limits set subflows 8 add_addr_accepted 8
for i in $(seq 2 "$NPATHS"); do ip netns exec "$NSB" ip mptcp endpoint add "10.201.$i.2" dev "${RZ_ID}b$i" signal; done

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# run NAME SERVER_NS CLIENT_NS SERVER_ARGS -- CLIENT_ARGS: prints the client's mbps (0 on failure).
run() {
    local name=$1 sns=$2 cns=$3; shift 3
    local sargs=() cargs=()
    while [ "$1" != -- ]; do sargs+=("$1"); shift; done; shift
    cargs=("$@")
    ip netns exec "$sns" "$BIN/rzpeer" server "${sargs[@]}" > "$OUT/$name.s" 2>&1 &
    local spid=$!
    PIDS+=("$spid")
    wait_listening "$OUT/$name.s"
    ip netns exec "$cns" "$BIN/rzpeer" client "${cargs[@]}" > "$OUT/$name.c" 2>&1
    timeout 60 tail --pid=$spid -f /dev/null; wait $spid 2>/dev/null
    local line; line=$(grep RESULT "$OUT/$name.c")
    if [ -z "$line" ] || ! grep -q 'ok=1' "$OUT/$name.s"; then
        echo "  $name failed: $(cat "$OUT/$name.c" "$OUT/$name.s" | grep -E 'ERROR|RESULT' | head -2)" >&2; echo 0; return
    fi
    # CPU of both ends per GiB, kept beside the result for the loopback comparison.
    local sline; sline=$(grep RESULT "$OUT/$name.s")
    echo "$(field cpu "$line") $(field cpu "$sline") $(field bytes "$line")" | awk '{printf "%.3f\n", ($1 + $2) / ($3 / 1073741824)}' > "$OUT/$name.cpu"
    field mbps "$line"
}

declare -A R C
i=0
for rate in $PATH_RATES; do i=$((i + 1)); RATE[$i]=$rate; done
if [ "${SKIP_SHAPED:-}" != 1 ]; then
echo "== shaped paths: $PATH_RATES Mbit/s, $ROUNDS interleaved rounds"
for r in $(seq 1 "$ROUNDS"); do
    for i in $(seq 1 "$NPATHS"); do
        size=$(( RATE[i] * 3 * 1000000 / 8 ))
        v=$(run "tcp$i.$r" "$NSB" "$NSA" --transport tcp --listen "10.201.$i.2" --port 7500 --size $size -- \
            --transport tcp --paths "10.201.$i.1=10.201.$i.2" --port 7500 --size $size)
        R[tcp$i]+="$v "; echo "BENCH round=$r tcp_path$i=$v"
    done
    v=$(run "rz.$r" "$NSB" "$NSA" --bench --listen "$(server_addrs)" --size $RZ_SIZE -- --bench --paths "$(client_paths)" --size $RZ_SIZE)
    R[rz]+="$v "; echo "BENCH round=$r rhizomorph_all_paths=$v"
    v=$(run "mptcp.$r" "$NSB" "$NSA" --transport mptcp --listen 10.201.1.2 --port 7501 --size $RZ_SIZE -- \
        --transport mptcp --paths 10.201.1.1=10.201.1.2 --port 7501 --size $RZ_SIZE)
    R[mptcp]+="$v "; echo "BENCH round=$r mptcp_all_paths=$v"
done
sum=0; best=0
for i in $(seq 1 "$NPATHS"); do
    m=$(echo ${R[tcp$i]} | tr ' ' '\n' | median); echo "BENCH median tcp_path$i=$m"
    sum=$(echo "$sum + $m" | bc -l); best=$(echo "if ($m > $best) $m else $best" | bc -l)
done
rz=$(echo ${R[rz]} | tr ' ' '\n' | median); mp=$(echo ${R[mptcp]} | tr ' ' '\n' | median)
echo "BENCH median rhizomorph=$rz mptcp=$mp sum_of_paths=$sum best_single=$best"
printf 'BENCH ratio rhizomorph/sum=%.3f rhizomorph/best=%.3f mptcp/sum=%.3f rhizomorph/mptcp=%.3f\n' \
    "$(echo "$rz / $sum" | bc -l)" "$(echo "$rz / $best" | bc -l)" "$(echo "$mp / $sum" | bc -l)" "$(echo "$rz / $mp" | bc -l)"

fi
echo "== loopback, one path: Rhizomorph vs one TCP stream ($((LO_SIZE >> 20)) MiB)"
for r in $(seq 1 "$ROUNDS"); do
    v=$(run "lotcp.$r" "$NSA" "$NSA" --transport tcp --listen 127.0.0.1 --port 7600 --size $LO_SIZE -- \
        --transport tcp --paths 127.0.0.1=127.0.0.1 --port 7600 --size $LO_SIZE)
    R[lotcp]+="$v "; C[lotcp]+="$(cat "$OUT/lotcp.$r.cpu" 2>/dev/null) "; echo "BENCH round=$r loopback_tcp=$v cpu_s_per_gib=$(cat "$OUT/lotcp.$r.cpu" 2>/dev/null)"
    v=$(run "lorz.$r" "$NSA" "$NSA" --bench --listen 127.0.0.1 --port 7601 --size $LO_SIZE -- \
        --bench --paths 127.0.0.1=127.0.0.1 --port 7601 --size $LO_SIZE --conns 1)
    R[lorz]+="$v "; C[lorz]+="$(cat "$OUT/lorz.$r.cpu" 2>/dev/null) "; echo "BENCH round=$r loopback_rhizomorph_1conn=$v cpu_s_per_gib=$(cat "$OUT/lorz.$r.cpu" 2>/dev/null)"
    v=$(run "lorz2.$r" "$NSA" "$NSA" --bench --listen 127.0.0.1 --port 7602 --size $LO_SIZE -- \
        --bench --paths 127.0.0.1=127.0.0.1 --port 7602 --size $LO_SIZE --conns 2)
    R[lorz2]+="$v "; C[lorz2]+="$(cat "$OUT/lorz2.$r.cpu" 2>/dev/null) "; echo "BENCH round=$r loopback_rhizomorph_2conns=$v cpu_s_per_gib=$(cat "$OUT/lorz2.$r.cpu" 2>/dev/null)"
done
lt=$(echo ${R[lotcp]} | tr ' ' '\n' | median); lr=$(echo ${R[lorz]} | tr ' ' '\n' | median); lr2=$(echo ${R[lorz2]} | tr ' ' '\n' | median)
echo "BENCH median loopback_tcp=$lt loopback_rhizomorph_1conn=$lr loopback_rhizomorph_2conns=$lr2"
printf 'BENCH ratio loopback rhizomorph_1conn/tcp=%.3f rhizomorph_2conns/tcp=%.3f\n' "$(echo "$lr / $lt" | bc -l)" "$(echo "$lr2 / $lt" | bc -l)"
echo "BENCH median loopback cpu_s_per_gib (both ends): tcp=$(echo ${C[lotcp]} | tr ' ' '\n' | median) rhizomorph_1conn=$(echo ${C[lorz]} | tr ' ' '\n' | median) rhizomorph_2conns=$(echo ${C[lorz2]} | tr ' ' '\n' | median)"

[ "${SKIP_ZC:-}" = 1 ] && { rm -rf "$OUT"; exit 0; }
echo "== zero-copy (2 GiB per run, medians of $ROUNDS)"
ip netns exec "$NSB" "$BIN/rzbench" zc-server 10.209.0.2 7700 > "$OUT/zc.s" 2>&1 & PIDS+=($!)
ip netns exec "$NSA" "$BIN/rzbench" zc-server 127.0.0.1 7701 > "$OUT/zclo.s" 2>&1 & PIDS+=($!)
# Both servers listening (5 s at most); the ports are private to these namespaces.
for _ in $(seq 1 50); do
    ip netns exec "$NSB" ss -Hltn 'sport = :7700' | grep -q . && ip netns exec "$NSA" ss -Hltn 'sport = :7701' | grep -q . && break
    sleep 0.1
done
for where in veth loopback; do
    if [ $where = veth ]; then ns=$NSA; l=10.209.0.1; rmt=10.209.0.2; port=7700; else ns=$NSA; l=127.0.0.1; rmt=127.0.0.1; port=7701; fi
    for mode in copy zerocopy seal-copy seal-zerocopy; do
        vals=""; cpus=""; fb=""
        for r in $(seq 1 "$ROUNDS"); do
            line=$(ip netns exec $ns "$BIN/rzbench" zc-client $l $rmt $port $((2 << 30)) $mode)
            vals+="$(field mbps "$line") "; cpus+="$(field cpu_s_per_gib "$line") "; fb="$(field zc_fell_back_to_copy "$line")/$(field zc_sends "$line")"
        done
        echo "BENCH zerocopy where=$where mode=$mode mbps=$(echo $vals | tr ' ' '\n' | median) cpu_s_per_gib=$(echo $cpus | tr ' ' '\n' | median) copied_sends=$fb"
    done
done
"$BIN/rzbench" crypto | sed 's/^/BENCH /'
rm -rf "$OUT"
