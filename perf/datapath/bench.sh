#!/bin/bash
# perf/datapath/bench.sh: pod-to-pod TCP throughput and latency through three paths, for `mycelium-bench datapath`.
#   (a) ebpf    Mycelium's datapath: two pods on one node, tcx on the host veths, bpf_redirect_peer
#   (b) bridge  Debian's reference CNI `bridge` plugin (containernetworking-plugins), run in its own node netns
#   (c) veth    the two pods joined by one veth pair: the physical limit
# Runs are interleaved (a,b,c,a,b,c,...) and both ends are pinned to one CPU (taskset -c $CPU). Reports medians
# and ratios, plus one "result" line of key=value pairs for machines.
#
#   perf/datapath/bench.sh [-r ROUNDS] [-t SECONDS] [-n RR_TRIPS] [-c CPU]
# Needs root, iperf3, iputils-ping, containernetworking-plugins, and the objects built by
# CSources/CDatapath/tests/Makefile and CSources/bpf/Makefile (built here when missing).
set -eu
ROUNDS=5; SECS=5; TRIPS=20000; CPU=1
while getopts "r:t:n:c:" o; do
    case $o in r) ROUNDS=$OPTARG ;; t) SECS=$OPTARG ;; n) TRIPS=$OPTARG ;; c) CPU=$OPTARG ;; *) exit 2 ;; esac
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TESTS=$ROOT/CSources/CDatapath/tests
DPCTL=$TESTS/build/dpctl
TCPTOOL=$TESTS/build/tcptool
OBJ=$ROOT/CSources/bpf/build/datapath.bpf.o
CNI=/usr/lib/cni
RUN=$$
source "$TESTS/lib.sh"

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
[ -x "$CNI/bridge" ] || need+=(containernetworking-plugins)
[ ${#need[@]} -eq 0 ] || apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends "${need[@]}"
[ -f "$OBJ" ] || nice make -s -C "$ROOT/CSources/bpf"
[ -x "$DPCTL" ] && [ -x "$TCPTOOL" ] || nice make -s -C "$TESTS"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# The bridge plugin turns on ip_forward in the namespace it runs in; that is its own node namespace here, but the
# host's value is saved and put back regardless.
FWD_SAVED=$(sysctl -n net.ipv4.ip_forward)
IPAM_DIR=/tmp/myc-bench-$RUN-ipam
PIN=/sys/fs/bpf/mycelium-bench-$RUN
PIN_DIRS+=("$PIN")
finish() {
    cleanup_all
    rm -rf "$IPAM_DIR"
    sysctl -qw net.ipv4.ip_forward="$FWD_SAVED"
}
trap finish EXIT INT TERM

# (a) eBPF: node E, pods e1 e2.
E=mycbE-$RUN; PE1=mycbe1-$RUN; PE2=mycbe2-$RUN
new_ns "$E"
add_pod "$E" "$PE1" ve1 10.50.0.1
add_pod "$E" "$PE2" ve2 10.50.0.2
dp "$E" -d "$PIN" load "$OBJ"
register_pod "$E" "$PIN" "$PE1" ve1 10.50.0.1 1
register_pod "$E" "$PIN" "$PE2" ve2 10.50.0.2 1

# (b) bridge plugin: node Bn, pods b1 b2, configured by the plugin itself.
BN=mycbB-$RUN; PB1=mycbb1-$RUN; PB2=mycbb2-$RUN
new_ns "$BN"; new_ns "$PB1"; new_ns "$PB2"
CONF='{"cniVersion":"0.4.0","name":"mycbench'$RUN'","type":"bridge","bridge":"mycbr'$RUN'","isGateway":true,
"ipMasq":false,"ipam":{"type":"host-local","subnet":"10.60.0.0/24","dataDir":"'$IPAM_DIR'"}}'
for p in "$PB1" "$PB2"; do
    echo "$CONF" | nsenter --net="/run/netns/$BN" env CNI_COMMAND=ADD CNI_CONTAINERID="$p" \
        CNI_NETNS="/run/netns/$p" CNI_IFNAME=eth0 CNI_PATH="$CNI" "$CNI/bridge" > /dev/null
done
IPB2=$(ip -n "$PB2" -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1)

# (c) one veth pair.
PV1=mycbv1-$RUN; PV2=mycbv2-$RUN
new_ns "$PV1"; new_ns "$PV2"
ip -n "$PV1" link add eth0 type veth peer name eth0 netns "$PV2"
ip -n "$PV1" addr add 10.70.0.1/24 dev eth0; ip -n "$PV1" link set eth0 up
ip -n "$PV2" addr add 10.70.0.2/24 dev eth0; ip -n "$PV2" link set eth0 up

declare -A CLIENT=([ebpf]=$PE1 [bridge]=$PB1 [veth]=$PV1)
declare -A SERVER=([ebpf]=$PE2 [bridge]=$PB2 [veth]=$PV2)
declare -A DST=([ebpf]=10.50.0.2 [bridge]=$IPB2 [veth]=10.70.0.2)
PATHS="ebpf bridge veth"
for p in $PATHS; do # warm up neighbours and make sure every path works before measuring
    ip netns exec "${CLIENT[$p]}" ping -c 2 -i 0.2 -W 2 "${DST[$p]}" > /dev/null || { echo "path $p does not work"; exit 1; }
done
rx0=$(stat_of "$E" "$PIN" 10.50.0.2 rx_packets)

median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
pct() { sort -g | awk -v q="$1" '{v[NR]=$1} END {i=int(NR*q); if (i<1) i=1; print v[i]}'; }

declare -A GBPS RR50 RR99 P50 P99
echo "datapath bench: $ROUNDS rounds x $SECS s iperf3 (single stream), $TRIPS TCP round trips, ping -i 0.01 x 500, cpu $CPU"
for r in $(seq 1 "$ROUNDS"); do
    for p in $PATHS; do
        ip netns exec "${SERVER[$p]}" taskset -c "$CPU" iperf3 -s -1 -p 5301 > /dev/null 2>&1 &
        srv=$!
        sleep 0.3
        g=$(ip netns exec "${CLIENT[$p]}" taskset -c "$CPU" iperf3 -c "${DST[$p]}" -p 5301 -t "$SECS" -f g 2>/dev/null \
            | grep receiver | grep -o '[0-9.]* Gbits/sec' | awk '{print $1}')
        wait $srv || true
        GBPS[$p]="${GBPS[$p]:-} ${g:-0}"

        ip netns exec "${SERVER[$p]}" taskset -c "$CPU" "$TCPTOOL" rr-server 5302 &
        srv=$!
        out=$(ip netns exec "${CLIENT[$p]}" taskset -c "$CPU" "$TCPTOOL" rr-client "${DST[$p]}" 5302 "$TRIPS")
        wait $srv || true
        RR50[$p]="${RR50[$p]:-} $(echo "$out" | sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p')"
        RR99[$p]="${RR99[$p]:-} $(echo "$out" | sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p')"

        times=$(ip netns exec "${CLIENT[$p]}" taskset -c "$CPU" ping -c 500 -i 0.01 -W 1 "${DST[$p]}" \
            | grep -o 'time=[0-9.]*' | cut -d= -f2)
        P50[$p]="${P50[$p]:-} $(echo "$times" | median)"
        P99[$p]="${P99[$p]:-} $(echo "$times" | pct 0.99)"
        printf "  round %d %-6s %6s Gbit/s  tcp_rr p50 %6s us  ping p50 %6s ms\n" "$r" "$p" "${g:-0}" \
            "$(echo "$out" | sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p')" "$(echo "$times" | median)"
    done
done
rx1=$(stat_of "$E" "$PIN" 10.50.0.2 rx_packets)

declare -A M
echo
printf "%-8s %12s %14s %14s %12s %12s\n" path "Gbit/s(med)" "tcp_rr p50 us" "tcp_rr p99 us" "ping p50 ms" "ping p99 ms"
for p in $PATHS; do
    M[$p.gbps]=$(echo "${GBPS[$p]}" | tr ' ' '\n' | grep . | median)
    M[$p.rr50]=$(echo "${RR50[$p]}" | tr ' ' '\n' | grep . | median)
    M[$p.rr99]=$(echo "${RR99[$p]}" | tr ' ' '\n' | grep . | median)
    M[$p.p50]=$(echo "${P50[$p]}" | tr ' ' '\n' | grep . | median)
    M[$p.p99]=$(echo "${P99[$p]}" | tr ' ' '\n' | grep . | median)
    printf "%-8s %12s %14s %14s %12s %12s\n" "$p" "${M[$p.gbps]}" "${M[$p.rr50]}" "${M[$p.rr99]}" "${M[$p.p50]}" "${M[$p.p99]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
echo
echo "throughput ebpf/veth   = $(ratio "${M[ebpf.gbps]}" "${M[veth.gbps]}")   (goal >= 0.95)"
echo "throughput ebpf/bridge = $(ratio "${M[ebpf.gbps]}" "${M[bridge.gbps]}")   (goal >= 1)"
echo "tcp_rr p50 ebpf/bridge = $(ratio "${M[ebpf.rr50]}" "${M[bridge.rr50]}")   (goal < 1)"
echo "ping p50   ebpf/bridge = $(ratio "${M[ebpf.p50]}" "${M[bridge.p50]}")"
echo "packets delivered by eBPF to the server pod during the runs: $((rx1 - rx0))"
echo "result ebpf_gbps=${M[ebpf.gbps]} bridge_gbps=${M[bridge.gbps]} veth_gbps=${M[veth.gbps]}" \
     "ebpf_rr_p50_us=${M[ebpf.rr50]} bridge_rr_p50_us=${M[bridge.rr50]} veth_rr_p50_us=${M[veth.rr50]}" \
     "ebpf_rr_p99_us=${M[ebpf.rr99]} bridge_rr_p99_us=${M[bridge.rr99]} veth_rr_p99_us=${M[veth.rr99]}" \
     "ebpf_ping_p50_ms=${M[ebpf.p50]} bridge_ping_p50_ms=${M[bridge.p50]} veth_ping_p50_ms=${M[veth.p50]}" \
     "ratio_ebpf_veth=$(ratio "${M[ebpf.gbps]}" "${M[veth.gbps]}") ratio_ebpf_bridge=$(ratio "${M[ebpf.gbps]}" "${M[bridge.gbps]}")"
