#!/bin/sh
# Builds the preload shim and checks it end to end against a stand-in for QEMU: a Python process
# that maps a memfd MAP_SHARED (what memory-backend-memfd,share=on does) and writes pages on command.
# The tracker side is shimcheck.c, using the same CDirtyPages code as DirtyTracker.uffdRemote.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/mdp-shim.$$
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
cc -O2 -shared -fPIC -o "$out/libmdp_preload.so" "$here/shim/mdp_preload.c" "$here/uffd.c" "$here/common.c" -I"$here/include" -I"$here"
cc -O2 -o "$out/shimcheck" "$here/shim/shimcheck.c" "$here/uffd.c" "$here/common.c" "$here/hash.c" -I"$here/include" -I"$here" -lxxhash -lpthread
"$out/shimcheck" "$out/libmdp_preload.so" "$out/report"
