#!/usr/bin/env bash
# instructions.sh: instructions per request, a booking against the empty
# request, counted by valgrind's callgrind instead of timed.
#
# This machine's speed drifts by 20-30% from run to run, so a change of a
# few per cent to the request path cannot be seen in throughput. The
# instructions a request executes in user space barely move between runs:
# this counts them, for the whole process (request threads, the flusher,
# the row writer, the log's readers, sled's threads), per request of
# each load:
#   bookTickets     loadtest/book.lua (one seat, a new idempotency key each)
#   { __typename }  the empty request of compare-postgres.sh's (c)
# and prints the ratio, then the functions of this repository's crates that
# cost the most per booking. Kernel time (TCP, context switches, the disk)
# is not counted: this complements the timed scripts, it does not replace
# them. Under callgrind the server runs some 50 times slower, so rounds and
# batches hold fewer records than at full speed and the background's share
# reads higher than it is.
#
# Each load runs on its own server (a temp data dir, 127.0.0.1 only): warm
# up for 3 s, counters zeroed, DURATION seconds of wrk, counters dumped.
#
# Env: DURATION (seconds of each measured load, default 10), CONNECTIONS
#      (wrk connections, default 8), BUYERS (default 4), TOP (functions
#      listed, default 25), MARQUEE_BIN (default target/release/marquee).
# Needs valgrind (Debian package `valgrind`), wrk, curl and jq.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=lib.sh
source "$here/lib.sh"

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-8}
BUYERS=${BUYERS:-4}
TOP=${TOP:-25}
MARQUEE_BIN=${MARQUEE_BIN:-$repo/target/release/marquee}

die() { echo "instructions.sh: $*" >&2; exit 1; }
step() { echo "--- $*"; }

[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 ]] || die "DURATION must be a whole number of seconds"
[[ $CONNECTIONS =~ ^[0-9]+$ && $CONNECTIONS -ge 1 ]] || die "CONNECTIONS must be a positive integer"
[[ $BUYERS =~ ^[0-9]+$ && $BUYERS -ge 1 ]] || die "BUYERS must be a positive integer"
[[ $TOP =~ ^[0-9]+$ ]] || die "TOP must be a whole number"
[[ -x $MARQUEE_BIN ]] || die "no executable at $MARQUEE_BIN (build the release binary first)"
for tool in valgrind callgrind_control callgrind_annotate wrk curl jq timeout pgrep; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

tmp=$(mktemp -d -t marquee-instructions.XXXXXX)
server_pid=""
cleanup() {
  stop_pid "$server_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME: marquee under callgrind on a data dir of its own, with
# counting on from the start (zeroed before the measured load); sets $url.
start_server() {
  local out=$tmp/$1.out
  timeout --kill-after=10 $((20 * DURATION + 900)) \
    valgrind --tool=callgrind --callgrind-out-file="$tmp/$1.callgrind" \
    "$MARQUEE_BIN" serve --listen 127.0.0.1:0 --data-dir "$tmp/$1.data" \
    --rate-limit-token 0 --rate-limit-ip 0 --rate-limit-credentials 0 >"$out" 2>"$tmp/$1.log" &
  server_pid=$!
  wait_for_marquee "$out" "$tmp/$1.log" 120
}

# Under valgrind a registration (argon2id) takes seconds.
GQL_TIMEOUT=120

# measure NAME LUA: warm up, zero the counters, run the load, dump them,
# stop the server; sets $ir (instructions per request, whole process),
# $path_ir (those of the request's own task, from the HTTP service call to
# the response: what the background's batching does not blur) and
# $requests, and leaves the dump in $tmp/NAME.dump.
measure() {
  local name=$1 lua=$2 total
  timeout --kill-after=10 60 wrk -t1 -c"$CONNECTIONS" -d3s -s "$lua" "$url/graphql" >"$tmp/$name.warm" 2>&1 \
    || { cat "$tmp/$name.warm" >&2; die "wrk ($name, warm-up) failed"; }
  # The server runs under `timeout`; callgrind is its child.
  local counted
  counted=$(pgrep -P "$server_pid" | head -n1)
  [[ -n $counted ]] || die "no valgrind process under $server_pid ($name)"
  callgrind_control --zero "$counted" >/dev/null 2>&1 || die "callgrind_control could not zero $counted ($name)"
  timeout --kill-after=10 $((DURATION + 60)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$lua" "$url/graphql" \
    >"$tmp/$name.wrk" 2>&1 || { cat "$tmp/$name.wrk" >&2; die "wrk ($name) failed"; }
  callgrind_control --dump "$counted" >/dev/null 2>&1 || die "callgrind_control could not dump $counted ($name)"
  stop_pid "$server_pid"
  server_pid=""
  requests=$(awk '/requests in/ && !n { print $1; n = 1 }' "$tmp/$name.wrk")
  [[ $requests =~ ^[0-9]+$ && $requests -gt 0 ]] || die "no requests counted ($name)"
  if grep -qE 'Non-2xx|bad=[1-9]|other_errors=[1-9]|non_200=[1-9]' "$tmp/$name.wrk"; then
    cat "$tmp/$name.wrk" >&2
    die "$name: some requests failed"
  fi
  mv "$tmp/$name.callgrind.1" "$tmp/$name.dump" 2>/dev/null || die "callgrind wrote no dump ($name)"
  total=$(callgrind_annotate "$tmp/$name.dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  [[ $total =~ ^[0-9]+$ ]] || die "no instruction total in the dump ($name)"
  ir=$((total / requests))
  path_ir=$(callgrind_annotate --inclusive=yes "$tmp/$name.dump" 2>/dev/null | awk -v n="$requests" '
    /ConnectionService as hyper::service::service::Service<.*>::call::\{\{closure\}\} \[/ {
      if (!found) { gsub(",", "", $1); print int($1 / n); found = 1 } }')
  [[ $path_ir =~ ^[0-9]+$ ]] || die "no request path in the dump ($name)"
}

echo "=== Instructions per request (callgrind, whole process, user space)"
echo "marquee: $("$MARQUEE_BIN" --version) ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet 2>/dev/null || echo ', dirty tree'))"
echo "load:    wrk -t1 -c$CONNECTIONS, ${DURATION}s measured after a 3 s warm-up"

step "{ __typename }"
cat >"$tmp/typename.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"query":"{ __typename }"}'
wrk.headers["Content-Type"] = "application/json"
bad = 0
function response(status, headers, body)
  if status ~= 200 or not body:find('"Query"', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  io.write(string.format("typename.lua: bad=%d\n", bad))
end
LUA
start_server typename
measure typename "$tmp/typename.lua"
empty_ir=$ir empty_path_ir=$path_ir
echo "  $requests requests, $ir instructions each ($path_ir in the request's own task)"

step "bookTickets (registering $BUYERS buyers; argon2id under valgrind takes seconds each)"
start_server book
open_hot_event organizer@instructions.example "Counted event"
ticket_type=$(add_hot_ticket_type GA)
for buyer in $(seq 1 "$BUYERS"); do
  gql "$MARQUEE_REGISTER" "{\"email\":\"buyer-$buyer@instructions.example\",\"password\":\"count-password\",\"name\":\"Buyer $buyer\"}" \
    | jq -r .register.token >>"$tmp/tokens.txt"
done
export MARQUEE_TOKENS_FILE=$tmp/tokens.txt MARQUEE_TICKET_TYPE=$ticket_type MARQUEE_KEY_PREFIX=count-$(date +%s)
measure book "$here/book.lua"
book_ir=$ir book_path_ir=$path_ir
echo "  $requests bookings, $ir instructions each ($path_ir in the request's own task)"

echo
echo "=== Results"
printf '%-16s %14s %18s\n' "request" "whole process" "the request's task"
printf '%-16s %14s %18s\n' "bookTickets" "$book_ir" "$book_path_ir" "{ __typename }" "$empty_ir" "$empty_path_ir"
printf 'a booking costs %.2f empty requests (%.2f in the request'"'"'s own task)\n' \
  "$(awk "BEGIN { print $book_ir / $empty_ir }")" "$(awk "BEGIN { print $book_path_ir / $empty_path_ir }")"
if [[ $TOP -gt 0 ]]; then
  echo
  echo "=== This repository's functions by instructions per booking, callees included (top $TOP)"
  callgrind_annotate --inclusive=yes --threshold=100 "$tmp/book.dump" 2>/dev/null \
    | awk -v n="$requests" -v repo="$repo/" '
        /^ *[0-9,]+ \(/ && match($0, /%\) +/) {
          at = substr($0, RSTART + RLENGTH)
          if (index(at, repo) != 1 || index(at, repo "target/") == 1) next
          ir = $1; gsub(",", "", ir)
          name = substr(at, length(repo) + 1); sub(/ \[[^]]*\]$/, "", name)
          if (!(name in seen)) { seen[name] = 1; printf "%10d  %s\n", ir / n, substr(name, 1, 150) }
        }' \
    | sort -rn | head -n "$TOP"
fi
