# lib.sh: helpers for the datapath's netns tests and benchmark (sourced). Everything created carries $RUN in
# its name, so runs never collide and cleanup only touches what this run made.
RUN=${RUN:-$$}
NAMESPACES=()
PIN_DIRS=()
FAILS=0

mac_of() { # NS IFNAME
    ip -n "$1" -o link show "$2" 2>/dev/null | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p'
}

# dpctl inside a node's network namespace. Not `ip netns exec`: it remounts /sys privately, which hides the
# host's bpffs, and a bpffs mounted there dies with the command (and the pins with it).
dp() { # NS ARGS...
    local ns=$1; shift
    nsenter --net="/run/netns/$ns" "$DPCTL" "$@"
}

new_ns() { # NAME: a namespace with loopback up and IPv4 forwarding off (a "node" that cannot route by itself)
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
    ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=0
}

cleanup_all() {
    for d in "${PIN_DIRS[@]}"; do
        [ -d "$d" ] && "$DPCTL" -d "$d" unload >/dev/null 2>&1
        rm -rf "$d" 2>/dev/null
    done
    for ns in "${NAMESPACES[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
}

# add_pod NODE_NS POD_NS HOST_IF IP MTU: a pod as the CNI plugin makes it: a /32, the link-local gateway
# 169.254.1.1 as a static neighbour with the host-side veth's MAC, default route through it.
add_pod() {
    local node=$1 pod=$2 hif=$3 ip=$4 mtu=${5:-1500}
    new_ns "$pod"
    ip -n "$node" link add "$hif" mtu "$mtu" type veth peer name eth0 netns "$pod" mtu "$mtu"
    ip -n "$node" link set "$hif" up
    ip -n "$pod" addr add "$ip/32" dev eth0
    ip -n "$pod" link set eth0 up
    ip -n "$pod" route add 169.254.1.1 dev eth0 scope link
    ip -n "$pod" route add default via 169.254.1.1 dev eth0
    ip -n "$pod" neigh add 169.254.1.1 lladdr "$(mac_of "$node" "$hif")" dev eth0 nud permanent
}

# register_pod NODE_NS PIN POD_NS HOST_IF IP NETWORK_ID
register_pod() {
    dp "$1" -d "$2" ep-add "$5" "$4" "$6" "$(mac_of "$3" eth0)" "$(mac_of "$1" "$4")"
}

stat_of() { # NODE_NS PIN IP FIELD
    dp "$1" -d "$2" stats "$3" "$4"
}

ok() { echo "  ok   $*"; }
fail() { echo "  FAIL $*"; FAILS=$((FAILS + 1)); }
check() { # DESCRIPTION COMMAND...: passes when the command succeeds
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}
check_not() {
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then fail "$what"; else ok "$what"; fi
}
check_ge() { # DESCRIPTION VALUE MIN
    if [ "${2:-0}" -ge "$3" ] 2>/dev/null; then ok "$1 ($2 >= $3)"; else fail "$1 (got '${2}', want >= $3)"; fi
}
