# Shared by the namespace tests and the benchmark: two simulated hosts A (client) and B (server) in
# their own network namespaces, joined by one veth pair per path, each shaped with tbf in both
# directions. Names carry the PID; cleanup() deletes everything and runs from a trap.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$HERE/build
RZ_ID=${RZ_ID:-rz$$}
NSA=${RZ_ID}a
NSB=${RZ_ID}b
PATH_RATES=${PATH_RATES:-"200 400 800"}
PIDS=()

cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    ip netns del "$NSA" 2>/dev/null
    ip netns del "$NSB" 2>/dev/null
    return 0
}

# setup_paths: NSA/NSB with path i = 10.201.i.1 (A) <-> 10.201.i.2 (B) at the i-th rate (Mbit/s).
setup_paths() {
    ip netns add "$NSA" && ip netns add "$NSB" || return 1
    ip -n "$NSA" link set lo up
    ip -n "$NSB" link set lo up
    local i=1
    for rate in $PATH_RATES; do
        ip link add "${RZ_ID}a$i" netns "$NSA" type veth peer name "${RZ_ID}b$i" netns "$NSB" || return 1
        ip -n "$NSA" addr add "10.201.$i.1/24" dev "${RZ_ID}a$i"
        ip -n "$NSB" addr add "10.201.$i.2/24" dev "${RZ_ID}b$i"
        ip -n "$NSA" link set "${RZ_ID}a$i" up
        ip -n "$NSB" link set "${RZ_ID}b$i" up
        # burst must cover what the kernel releases per timer tick at this rate; latency bounds the queue.
        tc -n "$NSA" qdisc add dev "${RZ_ID}a$i" root tbf rate "${rate}mbit" burst 512kb latency 20ms
        tc -n "$NSB" qdisc add dev "${RZ_ID}b$i" root tbf rate "${rate}mbit" burst 512kb latency 20ms
        i=$((i + 1))
    done
    NPATHS=$((i - 1))
}

client_paths() { # LOCAL=REMOTE list for paths 1..N (or the ones given)
    local list="" i
    [ $# -gt 0 ] || set -- $(seq 1 "$NPATHS")
    for i in "$@"; do list="$list${list:+,}10.201.$i.1=10.201.$i.2"; done
    echo "$list"
}
server_addrs() {
    local list="" i
    for i in $(seq 1 "$NPATHS"); do list="$list${list:+,}10.201.$i.2"; done
    echo "$list"
}

# wait_listening FILE: until the server printed LISTENING (or 10 s).
wait_listening() {
    for _ in $(seq 1 100); do grep -q LISTENING "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

field() { # field NAME LINE (0 when absent)
    local v
    v=$(echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1)
    echo "${v:-0}"
}
