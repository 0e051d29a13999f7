#!/bin/bash
# Build and run every Rhizomorph C test. Exit status is nonzero if anything failed.
#   tests/run.sh            unit + loopback refusals + namespace transfers + path loss + corruption + fuzz (60 s)
#   FUZZ_SECONDS=0 tests/run.sh   skip the fuzzer
# Needs root (network namespaces), libsodium-dev, libibverbs-dev, iproute2, clang with libFuzzer.
set -u
cd "$(dirname "$0")"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
status=0
step() { echo; echo "######## $*"; }

step "build"
nice make all || exit 1

step "unit tests (no network)"
./build/unit || status=1

step "loopback: handshake refusals and a 2-path session (private namespace)"
NS=rzunit$$
trap 'ip netns del "$NS" 2>/dev/null; true' EXIT
trap 'exit 130' INT TERM
ip netns add "$NS" && ip -n "$NS" link set lo up || exit 1
timeout 120 ip netns exec "$NS" ./build/unit --loopback || status=1
ip netns del "$NS"

step "multi-path transfers, both modes, path loss (namespaces, tbf 200/400/800 Mbit/s)"
timeout 400 ./netns_transfer.sh || status=1

step "corruption on the wire"
timeout 300 ./corrupt.sh || status=1

if [ "$FUZZ_SECONDS" -gt 0 ]; then
    step "libFuzzer on the wire decoders, $FUZZ_SECONDS s"
    if nice make build/fuzz_wire > build/fuzz-build.log 2>&1; then
        mkdir -p build/corpus
        if nice ./build/fuzz_wire -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 build/corpus > build/fuzz.log 2>&1; then
            grep -E 'Done|number_of_executed_units|new_units_added' build/fuzz.log
            echo "PASS fuzz"
        else
            tail -40 build/fuzz.log; echo "FAIL fuzz"; status=1
        fi
    else
        tail -20 build/fuzz-build.log; echo "FAIL fuzz build"; status=1
    fi
fi

echo
[ $status = 0 ] && echo "ALL RHIZOMORPH TESTS PASSED" || echo "SOME RHIZOMORPH TESTS FAILED"
exit $status
