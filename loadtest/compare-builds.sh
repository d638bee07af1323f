#!/usr/bin/env bash
# compare-builds.sh BIN_A BIN_B: two builds of Marquee under the hot
# on-sale load of compare-postgres.sh's (b), interleaved, to tell whether a
# change to the booking path helps.
#
# This machine's speed drifts by 20-30% within minutes, so one
# compare-postgres.sh run of each build says little: a build can look 60%
# faster or slower than itself. Here both servers run at once (each on a
# temp data dir, 127.0.0.1 only, rate limits off), set up alike (an event,
# BUYERS buyers), and take turns: each round gives each server a fresh
# ticket type (capacity 1,000,000, no per-user limit) and DURATION seconds
# of wrk at 64 connections with loadtest/book.lua, in the order A B, then
# B A, and so on, so that drift falls on both alike. Only the server under
# load works; the other idles.
#
# Prints one line per run (bookings/s = seats the server sold / DURATION,
# wrk's p50 and p99), then per build the mean bookings/s and the median
# p99, B's mean against A's, and in how many rounds B sold more and had
# the lower p99. Exits non-zero when something failed to run, or when a
# booking was refused (every request must be confirmed).
#
# Env: ROUNDS (default 8), DURATION (seconds per run, default 10), BUYERS
#      (default 256), WEBHOOK_DOWN (1: each server's organizer has a webhook
#      on booking.confirmed whose endpoint is down, a closed port on
#      127.0.0.1, retried every 2 s: a partner failing during the on-sale).
# Needs wrk, curl, jq, ss and awk.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

ROUNDS=${ROUNDS:-8}
WEBHOOK_DOWN=${WEBHOOK_DOWN:-0}
DURATION=${DURATION:-10}
BUYERS=${BUYERS:-256}
CONNECTIONS=64

die() {
  echo "compare-builds.sh: $*" >&2
  exit 1
}

[[ $# -eq 2 ]] || die "usage: compare-builds.sh BIN_A BIN_B"
declare -A BIN=([A]=$1 [B]=$2)
for build in A B; do
  [[ -x ${BIN[$build]} ]] || die "no executable at ${BIN[$build]}"
done
for tool in wrk curl jq ss awk timeout; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ && $BUYERS =~ ^[1-9][0-9]*$ ]] \
  || die "ROUNDS, DURATION and BUYERS must be positive integers"

tmp=$(mktemp -d -t marquee-builds.XXXXXX)
declare -A PID URL ORGANIZER EVENT
cleanup() {
  for build in A B; do
    stop_pid "${PID[$build]:-}"
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Upper bound on the whole run, for the servers' own timeout.
BOUND=$((ROUNDS * 2 * (DURATION + 20) + 600))

echo "=== Two builds, interleaved: $ROUNDS rounds of ${DURATION}s bookTickets at $CONNECTIONS connections"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine: nproc $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)"
hooks=()
[[ $WEBHOOK_DOWN == 1 ]] && hooks=(--allow-private-webhooks --webhook-retry-base 2s --webhook-timeout 1s)
[[ $WEBHOOK_DOWN == 1 ]] && echo "webhook: booking.confirmed to a closed port, retried every 2 s"
for build in A B; do
  echo "$build:       ${BIN[$build]} ($("${BIN[$build]}" --version))"
  timeout --kill-after=10 "$BOUND" "${BIN[$build]}" serve --listen 127.0.0.1:0 --data-dir "$tmp/$build" \
    --cache-mb 256 --rate-limit-token 0 --rate-limit-ip 0 --rate-limit-credentials 0 "${hooks[@]}" \
    >"$tmp/$build.out" 2>"$tmp/$build.log" &
  server_pid=$!
  PID[$build]=$server_pid
  wait_for_marquee "$tmp/$build.out" "$tmp/$build.log" 30
  URL[$build]=$url
  open_hot_event organizer@builds.example "Hot event"
  if [[ $WEBHOOK_DOWN == 1 ]]; then
    gql 'mutation { createWebhook(url: "http://127.0.0.1:9/down", events: ["booking.confirmed"]) { secret } }' '{}' \
      "$organizer" >/dev/null
  fi
  ORGANIZER[$build]=$organizer
  EVENT[$build]=$event_id
  register_buyers "$BUYERS" "$build" "$tmp/$build.tokens"
done

echo
printf '%-5s %-5s %12s %9s %9s\n' round build bookings/s p50_ms p99_ms
: >"$tmp/runs"
for round in $(seq 1 "$ROUNDS"); do
  order="A B"
  ((round % 2 == 0)) && order="B A"
  for build in $order; do
    url=${URL[$build]} organizer=${ORGANIZER[$build]} event_id=${EVENT[$build]}
    ticket_type=$(add_hot_ticket_type "GA $round")
    MARQUEE_TOKENS_FILE=$tmp/$build.tokens MARQUEE_TICKET_TYPE=$ticket_type MARQUEE_KEY_PREFIX=r$round \
      timeout --kill-after=10 $((DURATION + 60)) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -s "$here/book.lua" "$url/graphql" >"$tmp/wrk.out" 2>&1 || { cat "$tmp/wrk.out" >&2; die "wrk failed"; }
    summary=$(grep -E '^book.lua:' "$tmp/wrk.out" || true)
    [[ $summary =~ sold_out=0\ other_errors=0\ non_200=0 ]] || die "$build refused bookings in round $round: $summary"
    sold=$(stock "$ticket_type" sold)
    [[ $sold -gt 0 ]] || die "$build sold nothing in round $round"
    rate=$(awk -v s="$sold" -v d="$DURATION" 'BEGIN { printf "%.0f", s / d }')
    p50=$(wrk_percentile 50 "$tmp/wrk.out")
    p99=$(wrk_percentile 99 "$tmp/wrk.out")
    printf '%-5s %-5s %12s %9.2f %9.2f\n' "$round" "$build" "$rate" "$p50" "$p99"
    echo "$round $build $rate $p99" >>"$tmp/runs"
  done
done

echo
awk '
  { rate[$2] += $3; n[$2]++; p99[$2, n[$2]] = $4; by[$1, $2] = $3; lat[$1, $2] = $4; if ($1 > rounds) rounds = $1 }
  function median(build,   i, j, t, m, v) {
    m = n[build]
    for (i = 1; i <= m; i++) v[i] = p99[build, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  END {
    for (r = 1; r <= rounds; r++) { if (by[r, "B"] > by[r, "A"]) more++; if (lat[r, "B"] < lat[r, "A"]) lower++ }
    printf "A: mean %.0f bookings/s, median p99 %.2f ms\n", rate["A"] / n["A"], median("A")
    printf "B: mean %.0f bookings/s, median p99 %.2f ms\n", rate["B"] / n["B"], median("B")
    printf "B/A: %.1f%% of the bookings/s; B sold more in %d of %d rounds, had the lower p99 in %d\n",
      100 * (rate["B"] / n["B"]) / (rate["A"] / n["A"]), more, rounds, lower
  }' "$tmp/runs"
