#!/usr/bin/env bash
# profile.sh: where the server's CPU goes under the hot on-sale load of
# compare-postgres.sh's (b), sampled at full speed with perf.
#
# instructions.sh counts user-space instructions under valgrind, 50 times
# slower than real; this samples the real thing, kernel included (TCP on
# loopback, wake-ups, page faults, the disk), by thread. One server on a
# temp data dir (127.0.0.1 only, rate limits off), an event, BUYERS buyers,
# a ticket type of 1,000,000 seats, then DURATION seconds of wrk at 64
# connections with loadtest/book.lua. After 2 s of warm-up perf samples the
# server's threads for SAMPLE seconds (cpu-clock, 999 Hz) and counts their
# context switches and page faults; `sold` is read on both sides of that
# window, so the per-booking figures divide by what the server sold while
# it was sampled. Prints:
#   - bookings/s (whole run and sampled window), wrk's p50 and p99;
#   - the cores the server used, µs of server CPU per booking, context
#     switches and page faults per booking;
#   - the server's CPU by thread (numbered threads such as sled-io-0..6
#     summed), as a share and in µs per booking;
#   - the TOP costliest symbols, with their thread.
# Rust builds keep no frame pointers, so there are no call graphs unless
# CALL_GRAPH=dwarf (perf's --call-graph mode; about 100 MB per 5 s); keep
# the recording for `perf report` with PERF_DATA=path.
#
# Env: DURATION (wrk seconds, default 15), SAMPLE (perf seconds, default 8,
#      at most DURATION - 4), BUYERS (default 256), TOP (default 25),
#      PERF_DATA, CALL_GRAPH, MARQUEE_BIN (default target/release/marquee).
# Needs perf (Debian package `linux-perf`, and kernel.perf_event_paranoid
# <= 1 unless root), wrk, curl, jq, ss and awk.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=lib.sh
source "$here/lib.sh"

DURATION=${DURATION:-15}
SAMPLE=${SAMPLE:-8}
BUYERS=${BUYERS:-256}
TOP=${TOP:-25}
MARQUEE_BIN=${MARQUEE_BIN:-$repo/target/release/marquee}
CONNECTIONS=64
FREQUENCY=999

die() { echo "profile.sh: $*" >&2; exit 1; }
step() { echo "--- $*"; }

[[ $DURATION =~ ^[0-9]+$ && $SAMPLE =~ ^[0-9]+$ && $SAMPLE -ge 1 ]] || die "DURATION and SAMPLE must be positive integers"
((SAMPLE + 4 <= DURATION)) || die "SAMPLE must be at most DURATION - 4 (2 s of warm-up, 2 s to spare)"
[[ $BUYERS =~ ^[1-9][0-9]*$ ]] || die "BUYERS must be a positive integer"
[[ $TOP =~ ^[0-9]+$ ]] || die "TOP must be a whole number"
[[ -x $MARQUEE_BIN ]] || die "no executable at $MARQUEE_BIN (build the release binary first)"
for tool in perf wrk curl jq ss awk timeout pgrep; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

tmp=$(mktemp -d -t marquee-profile.XXXXXX)
data=${PERF_DATA:-$tmp/perf.data}
server_pid=""
wrk_pid=""
cleanup() {
  [[ -n $wrk_pid ]] && kill "$wrk_pid" 2>/dev/null || true
  stop_pid "$server_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "=== Server CPU under the hot on-sale load: ${DURATION}s of bookTickets at $CONNECTIONS connections, ${SAMPLE}s sampled"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine: nproc $(nproc), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "marquee: $("$MARQUEE_BIN" --version)"

step "Marquee: start on a temp data dir, register $BUYERS buyers"
timeout --kill-after=10 $((DURATION + 600)) "$MARQUEE_BIN" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" \
  --cache-mb 256 --rate-limit-token 0 --rate-limit-ip 0 --rate-limit-credentials 0 \
  >"$tmp/server.out" 2>"$tmp/server.log" &
server_pid=$!
wait_for_marquee "$tmp/server.out" "$tmp/server.log" 30
# timeout runs the server as its child: perf wants the server itself.
marquee_pid=$(pgrep -P "$server_pid" | head -n1)
[[ -n $marquee_pid ]] || die "cannot find the server's process under timeout ($server_pid)"
open_hot_event organizer@profile.example "Hot event"
register_buyers "$BUYERS" profile "$tmp/tokens"
ticket_type=$(add_hot_ticket_type "GA")

step "wrk -t2 -c$CONNECTIONS -d${DURATION}s --latency -s loadtest/book.lua; perf from 2 s in, for ${SAMPLE}s"
sold_start=$(stock "$ticket_type" sold)
MARQUEE_TOKENS_FILE=$tmp/tokens MARQUEE_TICKET_TYPE=$ticket_type MARQUEE_KEY_PREFIX=profile-$$ \
  timeout --kill-after=10 $((DURATION + 60)) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
  -s "$here/book.lua" "$url/graphql" >"$tmp/wrk.out" 2>&1 &
wrk_pid=$!
sleep 2
sold_before=$(stock "$ticket_type" sold)
graph=()
[[ -n ${CALL_GRAPH:-} ]] && graph=(--call-graph "$CALL_GRAPH")
perf stat -x, -e context-switches,page-faults -p "$marquee_pid" -o "$tmp/stat.csv" -- sleep "$SAMPLE" &
stat_pid=$!
perf record -q -e cpu-clock -F "$FREQUENCY" "${graph[@]}" -p "$marquee_pid" -o "$data" -- sleep "$SAMPLE" \
  >"$tmp/record.log" 2>&1 || { cat "$tmp/record.log" >&2; die "perf record failed (kernel.perf_event_paranoid?)"; }
wait "$stat_pid" || die "perf stat failed"
sold_after=$(stock "$ticket_type" sold)
wait "$wrk_pid" || { cat "$tmp/wrk.out" >&2; die "wrk failed"; }
wrk_pid=""
summary=$(grep -E '^book.lua:' "$tmp/wrk.out" || true)
[[ $summary =~ sold_out=0\ other_errors=0\ non_200=0 ]] || die "bookings were refused: $summary"
sold_end=$(stock "$ticket_type" sold)

# Each line: share, samples, thread.
perf report -i "$data" --no-children --sort comm --stdio -n 2>/dev/null | awk '/^ *[0-9.]+%/' >"$tmp/by_thread" || true
[[ -s $tmp/by_thread ]] || die "perf recorded no samples of the server"
samples=$(awk '{ n += $2 } END { print n }' "$tmp/by_thread")
sampled_rate=$(awk -v b="$sold_before" -v a="$sold_after" -v s="$SAMPLE" 'BEGIN { printf "%.0f", (a - b) / s }')
[[ $sampled_rate -gt 0 ]] || die "nothing was sold while perf sampled"
# µs of server CPU per booking: samples / frequency = CPU seconds.
per_booking=$(awk -v n="$samples" -v f="$FREQUENCY" -v b="$sold_before" -v a="$sold_after" \
  'BEGIN { printf "%.1f", n / f * 1e6 / (a - b) }')
cores=$(awk -v n="$samples" -v f="$FREQUENCY" -v s="$SAMPLE" 'BEGIN { printf "%.2f", n / f / s }')
per_booking_stat() {
  awk -F, -v e="$1" -v b="$sold_before" -v a="$sold_after" '$3 == e { printf "%.2f", $1 / (a - b) }' "$tmp/stat.csv"
}

echo
echo "=== Results"
printf 'bookings/s:              %s over the run, %s while sampled\n' \
  "$(awk -v s="$((sold_end - sold_start))" -v d="$DURATION" 'BEGIN { printf "%.0f", s / d }')" "$sampled_rate"
printf 'wrk latency:             p50 %.2f ms, p99 %.2f ms\n' "$(wrk_percentile 50 "$tmp/wrk.out")" "$(wrk_percentile 99 "$tmp/wrk.out")"
printf 'server CPU:              %s cores, %s µs per booking (%s samples)\n' "$cores" "$per_booking" "$samples"
printf 'per booking:             %s context switches, %s page faults\n' \
  "$(per_booking_stat context-switches)" "$(per_booking_stat page-faults)"
echo
echo "Server CPU by thread (numbered threads summed):"
awk -v per="$per_booking" '
  { share = $1; sub(/%$/, "", share); $1 = ""; $2 = ""; name = substr($0, 3); sub(/-[0-9]+$/, "-N", name)
    total[name] += share }
  END { for (name in total) printf "  %6.2f%%  %6.1f µs/booking  %s\n", total[name], total[name] / 100 * per, name }' \
  "$tmp/by_thread" | sort -rn
echo
echo "Top $TOP symbols (share of the server's samples, thread, symbol; [k] the kernel):"
perf report -i "$data" --no-children --sort comm,sym --stdio 2>/dev/null | awk '/^ *[0-9.]+%/' >"$tmp/by_symbol" || true
head -n "$TOP" "$tmp/by_symbol" | sed -E "s/ +$//" | cut -c1-160
[[ -n ${PERF_DATA:-} ]] && echo "(recording kept in $PERF_DATA)"
exit 0
