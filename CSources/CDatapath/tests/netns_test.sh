#!/bin/bash
# netns_test.sh OBJECT OBJECT_V2: real traffic through the datapath between network namespaces.
#   (a) pod to pod on one node: ping and a TCP transfer
#   (b) pod to pod across two nodes joined by a veth "underlay": native routing, then VXLAN
#   (c) isolation between networks, on one node and across nodes, and policy_allow opening it
#   (d) upgrade: load a different build while traffic flows; endpoints, counters and traffic survive
# Every node has net.ipv4.ip_forward=0, so a packet that reaches another pod went through eBPF; the datapath's
# counters show it did. Needs root and iproute2.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OBJ=$1
OBJ2=$2
DPCTL=$HERE/build/dpctl
source "$HERE/lib.sh"
trap cleanup_all EXIT INT TERM

A=mycA-$RUN; B=mycB-$RUN
PINA=/sys/fs/bpf/mycelium-test-$RUN-nodeA; PINB=/sys/fs/bpf/mycelium-test-$RUN-nodeB
PIN_DIRS+=("$PINA" "$PINB")
new_ns "$A"; new_ns "$B"

# Underlay: one veth between the nodes, MTU with room for VXLAN's 50 bytes.
ip -n "$A" link add ula mtu 1600 type veth peer name ulb netns "$B" mtu 1600
ip -n "$A" addr add 192.168.77.1/24 dev ula; ip -n "$A" link set ula up
ip -n "$B" addr add 192.168.77.2/24 dev ulb; ip -n "$B" link set ulb up
for n in "$A" "$B"; do
    ip -n "$n" link add vxlan0 type vxlan external dstport 4789
    ip -n "$n" link set vxlan0 up
done

# Pods: node A has a1, a2 (network 1) and a3 (network 2); node B has b1 (network 1) and b2 (network 2).
add_pod "$A" "mycPa1-$RUN" va1 10.1.0.1
add_pod "$A" "mycPa2-$RUN" va2 10.1.0.2
add_pod "$A" "mycPa3-$RUN" va3 10.1.0.3
add_pod "$B" "mycPb1-$RUN" vb1 10.2.0.1
add_pod "$B" "mycPb2-$RUN" vb2 10.2.0.2
PA1=mycPa1-$RUN; PA2=mycPa2-$RUN; PA3=mycPa3-$RUN; PB1=mycPb1-$RUN; PB2=mycPb2-$RUN

# tcp_transfer WHAT CLIENT_NS SERVER_NS SERVER_IP PORT SERVER_NODE SERVER_PIN: exactly 20 MB over TCP; the
# sink must get every byte and the receiving pod's counter must cover them (plus headers).
TCPTOOL=$HERE/build/tcptool
tcp_transfer() {
    local what=$1 cns=$2 sns=$3 ip=$4 port=$5 node=$6 pin=$7 bytes=20000000
    local before after out=/tmp/myc-sink-$RUN-$port
    before=$(stat_of "$node" "$pin" "$ip" rx_bytes)
    ip netns exec "$sns" "$TCPTOOL" sink "$port" > "$out" &
    local sink=$!
    check "$what: TCP send of $bytes bytes" ip netns exec "$cns" timeout 60 "$TCPTOOL" send "$ip" "$port" $bytes
    wait $sink
    check "$what: the sink received all $bytes bytes" test "$(cat "$out")" = $bytes
    rm -f "$out"
    after=$(stat_of "$node" "$pin" "$ip" rx_bytes)
    check_ge "$what: the pod's rx_bytes cover them" $((after - before)) $bytes
}

echo "== load and register"
check "node A: load" dp "$A" -d "$PINA" load "$OBJ"
check "node B: load" dp "$B" -d "$PINB" load "$OBJ"
check "node A: load again is a no-op" dp "$A" -d "$PINA" load "$OBJ"
register_pod "$A" "$PINA" "$PA1" va1 10.1.0.1 1
register_pod "$A" "$PINA" "$PA2" va2 10.1.0.2 1
register_pod "$A" "$PINA" "$PA3" va3 10.1.0.3 2
register_pod "$B" "$PINB" "$PB1" vb1 10.2.0.1 1
register_pod "$B" "$PINB" "$PB2" vb2 10.2.0.2 2
check "node A lists 3 endpoints" test "$(dp "$A" -d "$PINA" ep-list | wc -l)" = 3
dp "$A" -d "$PINA" underlay 192.168.77.1 ula vxlan0
dp "$B" -d "$PINB" underlay 192.168.77.2 ulb vxlan0
check "ip_forward is 0 on node A" test "$(ip netns exec "$A" sysctl -n net.ipv4.ip_forward)" = 0
check "ip_forward is 0 on node B" test "$(ip netns exec "$B" sysctl -n net.ipv4.ip_forward)" = 0

echo "== (a) same node"
rx0=$(stat_of "$A" "$PINA" 10.1.0.2 rx_packets)
check "a1 pings a2" ip netns exec "$PA1" ping -c 3 -i 0.2 -W 2 10.1.0.2
check_ge "a2 rx_packets grew by the 3 echo requests" $(( $(stat_of "$A" "$PINA" 10.1.0.2 rx_packets) - rx0 )) 3
check_ge "a2 tx_packets counts the 3 replies" "$(stat_of "$A" "$PINA" 10.1.0.2 tx_packets)" 3
tcp_transfer "a1 -> a2" "$PA1" "$PA2" 10.1.0.2 5201 "$A" "$PINA"

echo "== (b) across nodes, native routing"
dp "$A" -d "$PINA" route-add 10.2.0.0/16 native 192.168.77.2
dp "$B" -d "$PINB" route-add 10.1.0.0/16 native 192.168.77.1
check_not "no identity for a1 on node B yet: ping fails" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 1 10.2.0.1
check_ge "node B counted the POLICY drop on b1" "$(stat_of "$B" "$PINB" 10.2.0.1 drop_policy)" 1
for ip in 10.1.0.1 10.1.0.2; do dp "$B" -d "$PINB" remote-add $ip 1; done
dp "$B" -d "$PINB" remote-add 10.1.0.3 2
check "node A lists its route" test "$(dp "$A" -d "$PINA" route-list)" = "10.2.0.0/16 native 192.168.77.2"
check "node B lists its 3 remote identities" test "$(dp "$B" -d "$PINB" remote-list | sort | tr '\n' ' ')" = \
    "10.1.0.1 network=1 10.1.0.2 network=1 10.1.0.3 network=2 "
dp "$A" -d "$PINA" remote-add 10.2.0.1 1
dp "$A" -d "$PINA" remote-add 10.2.0.2 2
rx0=$(stat_of "$B" "$PINB" 10.2.0.1 rx_packets); rxa0=$(stat_of "$A" "$PINA" 10.1.0.1 rx_packets)
check "a1 pings b1 natively" ip netns exec "$PA1" ping -c 3 -i 0.2 -W 2 10.2.0.1
check_ge "b1 rx_packets on node B grew" $(( $(stat_of "$B" "$PINB" 10.2.0.1 rx_packets) - rx0 )) 3
check_ge "a1 rx_packets on node A grew (the replies)" $(( $(stat_of "$A" "$PINA" 10.1.0.1 rx_packets) - rxa0 )) 3
tcp_transfer "a1 -> b1, native" "$PA1" "$PB1" 10.2.0.1 5202 "$B" "$PINB"
# With forwarding on, bpf_fib_lookup answers (instead of FWD_DISABLED) and its next hop is used. Node A has no
# route to 10.2.0.0/16, so its kernel could not forward these packets by itself.
ip netns exec "$A" sysctl -qw net.ipv4.ip_forward=1
rx0=$(stat_of "$B" "$PINB" 10.2.0.1 rx_packets)
check "FIB path (forwarding on at node A): a1 pings b1" ip netns exec "$PA1" ping -c 3 -i 0.2 -W 2 10.2.0.1
check_ge "b1 rx_packets on node B grew" $(( $(stat_of "$B" "$PINB" 10.2.0.1 rx_packets) - rx0 )) 3
ip netns exec "$A" sysctl -qw net.ipv4.ip_forward=0
check_not "native: a1 (network 1) cannot reach b2 (network 2)" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 1 10.2.0.2

echo "== (b) across nodes, VXLAN"
dp "$A" -d "$PINA" route-add 10.2.0.0/16 vxlan 192.168.77.2
dp "$B" -d "$PINB" route-add 10.1.0.0/16 vxlan 192.168.77.1
# Identity now travels in the VNI: forget the remote identities to prove they are not what lets packets in.
for ip in 10.1.0.1 10.1.0.2 10.1.0.3; do dp "$B" -d "$PINB" remote-del $ip; done
for ip in 10.2.0.1 10.2.0.2; do dp "$A" -d "$PINA" remote-del $ip; done
vx_rx() { ip -n "$1" -j -s link show vxlan0 | grep -o '"rx":{"bytes":[0-9]*,"packets":[0-9]*' | grep -o '[0-9]*$'; }
ul_tx() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/tx_$3"; }
rx0=$(stat_of "$B" "$PINB" 10.2.0.1 rx_packets); vx0=$(vx_rx "$B")
check "a1 pings b1 over VXLAN" ip netns exec "$PA1" ping -c 3 -i 0.2 -W 2 10.2.0.1
check_ge "b1 rx_packets on node B grew" $(( $(stat_of "$B" "$PINB" 10.2.0.1 rx_packets) - rx0 )) 3
# The datapath encapsulates and decapsulates single frames itself; the kernel's VXLAN device only sees GSO bursts.
check "node B decapsulated the pings in the datapath: vxlan0 received none of them" test "$(vx_rx "$B")" = "$vx0"
tcp_transfer "a1 -> b1, VXLAN" "$PA1" "$PB1" 10.2.0.1 5203 "$B" "$PINB"
# With scatter-gather off node A's underlay cannot take a GSO burst, so the kernel segments the datapath's
# UDP-tunnel bursts in software: every segment must come out as a whole VXLAN frame, which node B then
# decapsulates in its datapath, one by one.
ip netns exec "$A" ethtool -K ula sg off > /dev/null 2>&1
p0=$(ul_tx "$A" ula packets); b0=$(ul_tx "$A" ula bytes)
tcp_transfer "a1 -> b1, VXLAN, bursts segmented in software" "$PA1" "$PB1" 10.2.0.1 5204 "$B" "$PINB"
frames=$(( $(ul_tx "$A" ula packets) - p0 )); fbytes=$(( $(ul_tx "$A" ula bytes) - b0 ))
check "node A's underlay carried only frames within its MTU ($fbytes bytes in $frames frames)" test $((fbytes / (frames > 0 ? frames : 1))) -le 1614
ip netns exec "$A" ethtool -K ula sg on > /dev/null 2>&1

echo "== (c) isolation"
d0=$(stat_of "$A" "$PINA" 10.1.0.3 drop_policy)
check_not "same node: a1 (network 1) cannot ping a3 (network 2)" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 1 10.1.0.3
check_ge "a3's POLICY drops grew" $(( $(stat_of "$A" "$PINA" 10.1.0.3 drop_policy) - d0 )) 2
d0=$(stat_of "$B" "$PINB" 10.2.0.2 drop_policy)
check_not "VXLAN: a1 (network 1) cannot ping b2 (network 2)" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 1 10.2.0.2
check_ge "b2's POLICY drops on node B grew" $(( $(stat_of "$B" "$PINB" 10.2.0.2 drop_policy) - d0 )) 2
dp "$A" -d "$PINA" policy-allow 1 2
dp "$A" -d "$PINA" policy-allow 2 1
check "after policy_allow both ways, a1 pings a3" ip netns exec "$PA1" ping -c 3 -i 0.2 -W 2 10.1.0.3
dp "$B" -d "$PINB" policy-allow 1 2
dp "$A" -d "$PINA" policy-allow 2 1
check "after policy_allow on both nodes, a1 pings b2 over VXLAN" ip netns exec "$PA1" ping -c 3 -i 0.2 -W 2 10.2.0.2
dp "$A" -d "$PINA" policy-del 1 2
check_not "after policy_del, a1 cannot ping a3 again" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 1 10.1.0.3
sp0=$(stat_of "$A" "$PINA" 10.1.0.1 drop_spoofed)
ip -n "$PA1" addr add 10.1.0.99/32 dev eth0
check_not "a1 sending from a stolen address reaches nobody" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 1 -I 10.1.0.99 10.1.0.2
check_ge "a1's SPOOFED drops grew" $(( $(stat_of "$A" "$PINA" 10.1.0.1 drop_spoofed) - sp0 )) 2

echo "== (d) upgrade under traffic"
before=$(dp "$A" -d "$PINA" links | sort)
rx0=$(stat_of "$A" "$PINA" 10.1.0.2 rx_packets)
ip netns exec "$PA1" ping -c 200 -i 0.01 -W 1 10.1.0.2 > "/tmp/myc-upgrade-ping-$RUN" 2>&1 &
PING=$!
# Upgrade only once traffic is flowing: wait (5 s at most) for the first reply.
for _ in $(seq 1 50); do grep -q 'bytes from' "/tmp/myc-upgrade-ping-$RUN" 2>/dev/null && break; sleep 0.1; done
check "node A: load a different build" dp "$A" -d "$PINA" load "$OBJ2"
wait $PING
check "no ping lost across the upgrade" grep -q ' 0% packet loss' "/tmp/myc-upgrade-ping-$RUN"
rm -f "/tmp/myc-upgrade-ping-$RUN"
after=$(dp "$A" -d "$PINA" links | sort)
check "the same links exist after the upgrade" test "$(echo "$before" | cut -d' ' -f1,2)" = "$(echo "$after" | cut -d' ' -f1,2)"
check "no link kept its old program" test -z "$(comm -12 <(echo "$before") <(echo "$after"))"
check "endpoints kept (3)" test "$(dp "$A" -d "$PINA" ep-list | wc -l)" = 3
check_ge "counters kept and still counting" $(( $(stat_of "$A" "$PINA" 10.1.0.2 rx_packets) - rx0 )) 200
check "a1 still pings a2" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 2 10.1.0.2
check "a1 still reaches b1 over VXLAN" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 2 10.2.0.1
again=$(dp "$A" -d "$PINA" links | sort)
dp "$A" -d "$PINA" load "$OBJ2"
check "loading the same build again changes nothing" test "$again" = "$(dp "$A" -d "$PINA" links | sort)"

echo "== endpoint removal and unload"
dp "$A" -d "$PINA" ep-del 10.1.0.2
check_not "a2 removed: a1 can no longer reach it (forwarding is off)" ip netns exec "$PA1" ping -c 1 -W 1 10.1.0.2
dp "$A" -d "$PINA" policy-allow 1 2
check "a1 pings a3 again once 1 -> 2 is allowed" ip netns exec "$PA1" ping -c 2 -i 0.2 -W 2 10.1.0.3
check "node A: unload" dp "$A" -d "$PINA" unload
check "node A: pin dir gone" test ! -e "$PINA"
check_not "after unload nothing forwards a1 -> a3 (forwarding is off)" ip netns exec "$PA1" ping -c 1 -W 1 10.1.0.3

echo "netns_test: $FAILS failure(s)"
[ "$FAILS" = 0 ]
