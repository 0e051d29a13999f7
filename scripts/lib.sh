# Shared by scripts/test, scripts/demo and scripts/fuzz; sourced, not run.

# swift_build ARGS...: runs `swift build ARGS` and stops the calling script when it fails, with the
# compiler's errors shown, so a script never goes on to run a binary left over from an older build.
swift_build() {
  local log
  log="$(mktemp /tmp/mycelium-build.XXXXXX)"
  if ! swift build "$@" > "$log" 2>&1; then
    echo "== swift build $* FAILED:" >&2
    if grep -q "error:" "$log"; then grep -E -A3 "error:" "$log" >&2; else tail -50 "$log" >&2; fi
    rm -f "$log"
    echo "$(basename "$0"): stopping; the build above failed, and nothing stale is run in its place" >&2
    exit 1
  fi
  grep -E "warning: unre|Build complete|Build of product" "$log" || true
  rm -f "$log"
}

# kill_tree PID SIGNAL: the process and all its descendants, children first found, by pid only.
kill_tree() {
  local pid=$1 sig=${2:-TERM} child
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill_tree "$child" "$sig"; done
  kill -"$sig" "$pid" 2>/dev/null || true
}
