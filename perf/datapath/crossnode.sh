#!/bin/bash
# perf/datapath/crossnode.sh: pod to pod across two nodes through the datapath the agents program, against
# host-to-host TCP over the same underlay, in the same run. For `mycelium-bench podnet`.
#
# Two pairs of nodes, each node a network namespace running its own myceliumd (release), the two nodes of a
# pair joined by one veth "underlay" (MTU 1500) and forming a network:
#   pair N: datapath_mode = native  (the agents route each other's pod CIDR natively over the underlay)
#   pair V: datapath_mode = vxlan   (the agents route it in VXLAN; pods get MTU 1450 for the 50-byte header)
# In each node one pod made by the real mycelium-cni plugin, addressed from the pod CIDR its agent got.
# The routes and the pods' identities are the agents' work; nothing here adds either (each agent publishes
# its node's pods through the control state, and the other records them for natively routed packets, which
# carry no identity; VXLAN carries it in the VNI).
# Measured per round, interleaved host-N, pod-N, host-V, pod-V: one iperf3 stream for SECS s and a TCP
# request/response ping-pong; both ends pinned to one CPU; medians; ratios pod/host per pair.
#
#   perf/datapath/crossnode.sh [-r ROUNDS] [-t SECONDS] [-n RR_TRIPS] [-c CPU] [-b BIN_DIR]
# Needs root, iperf3, and release builds of myceliumd, mycelium and mycelium-cni in BIN_DIR
# (default .build-release/release).
set -eu
ROUNDS=5; SECS=5; TRIPS=20000; CPU=1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/.build-release/release
while getopts "r:t:n:c:b:" o; do
    case $o in r) ROUNDS=$OPTARG ;; t) SECS=$OPTARG ;; n) TRIPS=$OPTARG ;; c) CPU=$OPTARG ;; b) BIN=$OPTARG ;; *) exit 2 ;; esac
done
TESTS=$ROOT/CSources/CDatapath/tests
DPCTL=$TESTS/build/dpctl
TCPTOOL=$TESTS/build/tcptool
OBJ=$ROOT/CSources/bpf/build/datapath.bpf.o
RUN=$$
source "$TESTS/lib.sh"

for b in myceliumd mycelium mycelium-cni; do
    [ -x "$BIN/$b" ] || { echo "crossnode: $BIN/$b not found; build it first: swift build -c release --scratch-path .build-release --product $b"; exit 1; }
done
command -v iperf3 >/dev/null || apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends iperf3
[ -f "$OBJ" ] || nice make -s -C "$ROOT/CSources/bpf"
[ -x "$DPCTL" ] && [ -x "$TCPTOOL" ] || nice make -s -C "$TESTS"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

WORK=/tmp/myc-xnode-$RUN
mkdir -p "$WORK"
AGENTS=()
finish() {
    set +e  # clean up everything, whatever fails on the way
    for p in "${AGENTS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${AGENTS[@]}"; do wait "$p" 2>/dev/null; done
    cleanup_all
    rm -rf "$WORK"
}
trap finish EXIT INT TERM

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

# pair TAG MODE SUBNET(3 octets) POD_MTU: two nodes with agents; sets NODE_a/NODE_b, POD_a/POD_b, IP_a/IP_b.
declare -A NODE POD PODIP HOSTIP PIN
pair() {
    local t=$1 mode=$2 sub=$3 mtu=$4
    local a=myx$t-a-$RUN b=myx$t-b-$RUN
    new_ns "$a"; new_ns "$b"
    ip -n "$a" link add ul type veth peer name ul netns "$b"
    ip -n "$a" addr add "$sub.1/24" dev ul; ip -n "$a" link set ul up
    ip -n "$b" addr add "$sub.2/24" dev ul; ip -n "$b" link set ul up
    NODE[$t.a]=$a; NODE[$t.b]=$b; HOSTIP[$t.a]=$sub.1; HOSTIP[$t.b]=$sub.2
    for n in a b; do
        PIN[$t.$n]=/sys/fs/bpf/myx-$t$n-$RUN
        PIN_DIRS+=("${PIN[$t.$n]}")
        cat > "$WORK/$t$n.conf" <<EOF
home = "$WORK/$t$n"
listen = "${HOSTIP[$t.$n]}:7100"
dns_listen = ""
datapath_mode = "$mode"
datapath_object = "$OBJ"
datapath_pin_dir = "${PIN[$t.$n]}"
EOF
    done
    "$BIN/mycelium" network create --home "$WORK/${t}a" > "$WORK/${t}a.create" 2>&1
    in_ns "$a" env MYCELIUM_EXIT_WITH_PARENT=1 "$BIN/myceliumd" --config "$WORK/${t}a.conf" > "$WORK/${t}a.log" 2>&1 &
    AGENTS+=($!)
    local token="" i
    for i in $(seq 1 100); do
        token=$("$BIN/mycelium" invite create --home "$WORK/${t}a" --address "${HOSTIP[$t.a]}:7100" 2>/dev/null) && break
        sleep 0.1  # polls until the first agent answers its API
    done
    for i in $(seq 1 100); do
        in_ns "$b" "$BIN/mycelium" node join --home "$WORK/${t}b" "$token" > "$WORK/${t}b.join" 2>&1 && break
        grep -q "already been used" "$WORK/${t}b.join" && token=$("$BIN/mycelium" invite create --home "$WORK/${t}a" --address "${HOSTIP[$t.a]}:7100")
        sleep 0.1  # polls until the inviter accepts joins
    done
    in_ns "$b" env MYCELIUM_EXIT_WITH_PARENT=1 "$BIN/myceliumd" --config "$WORK/${t}b.conf" > "$WORK/${t}b.log" 2>&1 &
    AGENTS+=($!)
    for n in a b; do
        for i in $(seq 1 300); do [ -s "$WORK/$t$n/podcidr" ] && break; sleep 0.1; done
        [ -s "$WORK/$t$n/podcidr" ] || { echo "node $t$n got no pod CIDR; its log:"; tail -20 "$WORK/$t$n.log"; exit 1; }
        local pod=myx$t-p$n-$RUN
        new_ns "$pod"
        local out
        out=$(echo "{\"cniVersion\":\"1.0.0\",\"name\":\"mycelium\",\"type\":\"mycelium-cni\",\"mtu\":$mtu,\"pinDir\":\"${PIN[$t.$n]}\",
              \"bpfObject\":\"$OBJ\",\"ipam\":{\"podCIDRFile\":\"$WORK/$t$n/podcidr\",\"dataDir\":\"$WORK/$t$n/ipam\"}}" \
            | in_ns "${NODE[$t.$n]}" env CNI_COMMAND=ADD CNI_CONTAINERID="$pod" CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 \
              CNI_PATH=/usr/lib/cni "$BIN/mycelium-cni")
        POD[$t.$n]=$pod
        PODIP[$t.$n]=$(echo "$out" | grep -o '"address": *"[0-9.]*' | grep -o '[0-9.]*$')
    done
}

pair N native 10.91.0 1500
pair V vxlan 10.92.0 1450
# The agents' routes and identities: wait until each pod reaches the other (both come from the control state).
for t in N V; do
    for i in $(seq 1 300); do
        ip netns exec "${POD[$t.a]}" ping -c 1 -W 1 "${PODIP[$t.b]}" > /dev/null 2>&1 && break
        sleep 0.1
    done
    ip netns exec "${POD[$t.a]}" ping -c 2 -i 0.2 -W 2 "${PODIP[$t.b]}" > /dev/null \
        || { echo "pair $t: pod ${PODIP[$t.a]} does not reach ${PODIP[$t.b]}; routes and remote pods:"; dp "${NODE[$t.a]}" -d "${PIN[$t.a]}" route-list || true
           dp "${NODE[$t.b]}" -d "${PIN[$t.b]}" remote-list || true; exit 1; }
    echo "pair $t: pods ${PODIP[$t.a]} (${HOSTIP[$t.a]}) and ${PODIP[$t.b]} (${HOSTIP[$t.b]}) reach each other through the agents' routes and identities"
done

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
declare -A GBPS RR50
# measure NAME CLIENT_NS SERVER_NS DST: one iperf3 stream and a TCP ping-pong, both ends on $CPU.
measure() {
    local name=$1 cns=$2 sns=$3 dst=$4 g out srv
    ip netns exec "$sns" taskset -c "$CPU" iperf3 -s -1 -p 5401 > /dev/null 2>&1 &
    srv=$!
    for _ in $(seq 1 50); do ip netns exec "$sns" ss -ltn 2>/dev/null | grep -q ':5401 ' && break; sleep 0.05; done
    g=$(ip netns exec "$cns" taskset -c "$CPU" iperf3 -c "$dst" -p 5401 -t "$SECS" -f g 2>/dev/null \
        | grep receiver | grep -o '[0-9.]* Gbits/sec' | awk '{print $1}')
    wait $srv || true
    ip netns exec "$sns" taskset -c "$CPU" "$TCPTOOL" rr-server 5402 &
    srv=$!
    out=$(ip netns exec "$cns" taskset -c "$CPU" "$TCPTOOL" rr-client "$dst" 5402 "$TRIPS")
    wait $srv || true
    GBPS[$name]="${GBPS[$name]:-} ${g:-0}"
    local rr; rr=$(echo "$out" | sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p')
    RR50[$name]="${RR50[$name]:-} $rr"
    printf "  round %d %-7s %6s Gbit/s  tcp_rr p50 %6s us\n" "$r" "$name" "${g:-0}" "$rr"
}

echo "crossnode bench: $ROUNDS rounds x $SECS s iperf3 (single stream), $TRIPS TCP round trips, cpu $CPU"
for r in $(seq 1 "$ROUNDS"); do
    measure host-N "${NODE[N.a]}" "${NODE[N.b]}" "${HOSTIP[N.b]}"
    measure pod-N "${POD[N.a]}" "${POD[N.b]}" "${PODIP[N.b]}"
    measure host-V "${NODE[V.a]}" "${NODE[V.b]}" "${HOSTIP[V.b]}"
    measure pod-V "${POD[V.a]}" "${POD[V.b]}" "${PODIP[V.b]}"
done
declare -A M
echo
printf "%-8s %12s %14s\n" path "Gbit/s(med)" "tcp_rr p50 us"
for p in host-N pod-N host-V pod-V; do
    M[$p.g]=$(echo "${GBPS[$p]}" | tr ' ' '\n' | grep . | median)
    M[$p.rr]=$(echo "${RR50[$p]}" | tr ' ' '\n' | grep . | median)
    printf "%-8s %12s %14s\n" "$p" "${M[$p.g]}" "${M[$p.rr]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
echo
echo "throughput pod/host native = $(ratio "${M[pod-N.g]}" "${M[host-N.g]}")   (goal >= 0.95)"
echo "throughput pod/host vxlan  = $(ratio "${M[pod-V.g]}" "${M[host-V.g]}")   (goal >= 0.85)"
echo "tcp_rr p50 pod/host native = $(ratio "${M[pod-N.rr]}" "${M[host-N.rr]}"), vxlan = $(ratio "${M[pod-V.rr]}" "${M[host-V.rr]}")"
echo "result host_native_gbps=${M[host-N.g]} pod_native_gbps=${M[pod-N.g]} host_vxlan_gbps=${M[host-V.g]} pod_vxlan_gbps=${M[pod-V.g]}" \
     "ratio_native=$(ratio "${M[pod-N.g]}" "${M[host-N.g]}") ratio_vxlan=$(ratio "${M[pod-V.g]}" "${M[host-V.g]}")" \
     "rr_p50_us_host_native=${M[host-N.rr]} rr_p50_us_pod_native=${M[pod-N.rr]} rr_p50_us_host_vxlan=${M[host-V.rr]} rr_p50_us_pod_vxlan=${M[pod-V.rr]}"
