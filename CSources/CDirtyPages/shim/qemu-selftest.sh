#!/bin/sh
# Tracks an unmodified QEMU's guest RAM with the uffd-remote engine through the preload shim, and
# checks it against the hash engine on the same memfd. Needs qemu-system-x86_64, a kernel and an
# initramfs whose init keeps writing memory (see docs/ENDOPHYTE.md).
# Usage: qemu-selftest.sh KERNEL INITRD [MiB] [seconds]
set -eu
kernel=$1 initrd=$2 mib=${3:-256} secs=${4:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/mdp-qemu.$$
mkdir -p "$out"
cc -O2 -shared -fPIC -o "$out/libmdp_preload.so" "$here/shim/mdp_preload.c" "$here/uffd.c" "$here/common.c" -I"$here/include" -I"$here"
cc -O2 -o "$out/shimcheck" "$here/shim/shimcheck.c" "$here/uffd.c" "$here/common.c" "$here/hash.c" -I"$here/include" -I"$here" -lxxhash -lpthread
MDP_SHIM_REPORT="$out/report" LD_PRELOAD="$out/libmdp_preload.so" qemu-system-x86_64 -accel tcg -m "$mib" \
  -object memory-backend-memfd,id=ram,size="${mib}M",share=on -machine memory-backend=ram \
  -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 quiet" -display none -serial "file:$out/serial" -no-reboot &
qemu=$!
trap 'kill $qemu 2>/dev/null; wait $qemu 2>/dev/null; rm -rf "$out"' EXIT
i=0
until grep -q GUEST-READY "$out/serial" 2>/dev/null; do sleep 0.5; i=$((i+1)); [ $i -lt 240 ] || { echo "guest did not boot"; exit 1; }; done
echo "guest up; report: $(cat "$out/report")"
"$out/shimcheck" --attach "$out/report" "$secs"
