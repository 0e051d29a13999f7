#!/bin/bash
# run.sh: builds the BPF object (and a second build for the upgrade test), the library, dpctl and the unit tests,
# then runs the BPF unit tests (BPF_PROG_TEST_RUN in a fresh netns) and the netns traffic tests. Exits nonzero
# on any failure. Needs root. Usage: CSources/CDatapath/tests/run.sh
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
BPF=$(cd "$HERE/../../bpf" && pwd)
RUN=$$

need=()
for tool in clang-14:clang-14 ping:iputils-ping iperf3:iperf3 bpftool:bpftool nsenter:util-linux ethtool:ethtool; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
[ -f /usr/include/bpf/libbpf.h ] || need+=(libbpf-dev)
if [ ${#need[@]} -gt 0 ]; then
    apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends "${need[@]}" build-essential libelf-dev zlib1g-dev
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

echo "== build"
nice make -s -C "$BPF"
nice make -s -C "$BPF" OUT=build/datapath-v2.bpf.o EXTRA_CFLAGS=-DMYC_BUILD_TAG=2
nice make -s -C "$HERE"

fails=0
echo "== BPF unit tests (BPF_PROG_TEST_RUN)"
NS=mycut-$RUN
PIN=/sys/fs/bpf/mycelium-test-$RUN-unit
trap 'ip netns del "$NS" 2>/dev/null || true; rm -rf "$PIN"' EXIT INT TERM
ip netns add "$NS"
# nsenter, not `ip netns exec`: the latter remounts /sys and would hide the host's bpffs.
nsenter --net="/run/netns/$NS" "$HERE/build/unit_test" "$BPF/build/datapath.bpf.o" "$PIN" || fails=$((fails + 1))
ip netns del "$NS"

echo "== netns traffic tests"
"$HERE/netns_test.sh" "$BPF/build/datapath.bpf.o" "$BPF/build/datapath-v2.bpf.o" || fails=$((fails + 1))

if [ "$fails" -ne 0 ]; then
    echo "datapath tests: $fails suite(s) FAILED"
    exit 1
fi
echo "datapath tests: all passed"
