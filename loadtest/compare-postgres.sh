#!/usr/bin/env bash
# compare-postgres.sh: hot-event booking, Marquee against the PostgreSQL
# design a competent team would write, side by side on this machine.
#
# Measures, each for $DURATION seconds at 64 connections, one after another
# (only the system under test runs while it is measured):
#   (a) PostgreSQL 15, durable defaults (fsync, synchronous_commit on): one
#       transaction per booking, a conditional UPDATE of the sold counter and
#       an INSERT of the booking in one statement, driven by pgbench.
#       Throughput = rows in bookings / duration; p50/p99 from pgbench's
#       per-transaction log.
#   (b) Marquee: POST /graphql bookTickets (quantity 1) on one hot ticket type
#       (capacity 1,000,000, no per-user limit, a fresh one each round),
#       driven by wrk with loadtest/book.lua. Throughput = seats sold (the
#       server's `sold`, read before and after) / duration; p50/p99 from wrk
#       --latency. Then the same load from k6 (64 constant VUs, a fresh
#       ticket type): its req/s and p50/p99, the view of a scripted client.
#   (c) Marquee: POST /graphql `{ __typename }` with wrk: the ceiling of the
#       HTTP + GraphQL path with no work behind it.
#   (d) For reference, the stack alone: a bare async-graphql mutation on axum
#       (loadtest/stack_ceiling.rs, built here with cargo), same wrk load. What
#       this machine gives any server of Marquee's stack.
# (b) with wrk and (c) take turns, ROUNDS of each, in the order b c, c b,
# b c, ...: this machine's speed drifts by 20-30% within minutes, so one run
# of each, a minute apart, put (b)/(c) anywhere between 41% and 61% for the
# same build. Their figures are the means over the rounds (the ratio is
# the ratio of the means); p50 is the rounds' median; (b)'s p99 is a bound
# on the p99 of all its rounds' requests together, pooled from each round's
# percentiles (book.lua prints them), and (c)'s the highest round's.
# Targets: (b)/(a) >= 10x, (b)/(c) >= 50%, p99 of (b) < 20 ms.
#
# Everything listens on 127.0.0.1 only, lives in a temp dir and is stopped and
# removed on exit. Exits 0 when the measurements ran (targets missed or not),
# non-zero when something failed to run.
#
# Env: DURATION (seconds per measurement, default 15), ROUNDS (turns of (b)
#      and (c), default 3), BUYERS (pre-registered
#      buyer tokens for (b), default 256), MARQUEE_BIN, PG_BIN
#      (default /usr/lib/postgresql/15/bin), STACK_CEILING_BIN (a prebuilt
#      stack_ceiling example), PG_USER (the non-root user that
#      runs postgres when this runs as root: default postgres if it exists,
#      else pgbench_runner, created if missing).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=lib.sh
source "$here/lib.sh"

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=64
THREADS=2
BUYERS=${BUYERS:-256}
MARQUEE_BIN=${MARQUEE_BIN:-$repo/target/release/marquee}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench || true)
# Hard bound for each measurement process, in case one hangs.
BOUND=$((DURATION + 60))

die() { echo "compare-postgres.sh: $*" >&2; exit 1; }
step() { echo "--- $*"; }

# ------------------------------------------------------------ preconditions

[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 ]] || die "DURATION must be a whole number of seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || die "ROUNDS must be a positive integer"
[[ $BUYERS =~ ^[0-9]+$ && $BUYERS -ge 1 ]] || die "BUYERS must be a positive integer"
[[ -x $MARQUEE_BIN ]] || die "no executable at $MARQUEE_BIN (build the release binary first)"
for tool in initdb pg_ctl postgres; do
  [[ -x $PG_BIN/$tool ]] || die "$PG_BIN/$tool not found (set PG_BIN)"
done
[[ -n $PGBENCH ]] || die "pgbench not found"
for tool in wrk k6 curl jq ss awk timeout; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
PSQL=$PG_BIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"
ceiling_bin=$(stack_ceiling_bin)

# ------------------------------------------------------------ temp dir, cleanup

tmp=$(mktemp -d -t marquee-compare.XXXXXX)
chmod 755 "$tmp" # the postgres user must reach its data dir inside
pg_data=$tmp/pg/data
pg_started=false
server_pid=""
ceiling_pid=""
run_pg=() # prefix that runs a command as the postgres user

stop_marquee() { stop_pid "$server_pid"; server_pid=""; }
cleanup() {
  stop_marquee
  stop_pid "$ceiling_pid"
  stop_postgres
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ helpers

# percentile P FILE: the P-th percentile (nearest rank) of the sorted numbers in FILE.
percentile() {
  awk -v p="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    i = int(p / 100 * NR); if (i < p / 100 * NR) i++; if (i < 1) i = 1
    print v[i] }' "$2"
}

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { print $1 }"; }

# ------------------------------------------------------------ header

echo "=== Marquee vs PostgreSQL: hot-event booking at $CONNECTIONS connections, ${DURATION}s per measurement"
echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine:  nproc $(nproc), $(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*: *//'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "marquee:  $("$MARQUEE_BIN" --version) ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet 2>/dev/null || echo ', dirty tree'))"
echo "postgres: $("$PG_BIN/postgres" --version)"
echo "drivers:  $("$PGBENCH" --version), $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), $(k6 version | head -n1 | awk '{print $1, $2}')"

# ============================================================ (a) PostgreSQL

step "(a) PostgreSQL: initdb and start in $tmp/pg"
if [[ $(id -u) -eq 0 ]]; then
  # postgres refuses to run as root: use a system user.
  pg_user=${PG_USER:-}
  if [[ -z $pg_user ]]; then
    if id postgres >/dev/null 2>&1; then pg_user=postgres; else pg_user=pgbench_runner; fi
  fi
  if ! id "$pg_user" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
  fi
  run_pg=(runuser -u "$pg_user" --)
  install -d -o "$pg_user" -m 700 "$tmp/pg"
else
  install -d -m 700 "$tmp/pg"
fi
# Durable defaults, stated explicitly; only connections and buffers raised.
start_postgres compare-postgres.sh "max_connections = 100
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on"

pg_sql() { "$PSQL" -h 127.0.0.1 -p "$pg_port" -U bench -d postgres -v ON_ERROR_STOP=1 -qAtX "$@"; }

echo "settings: $(pg_sql -F' ' -c "SELECT 'fsync=' || current_setting('fsync'), 'synchronous_commit=' || current_setting('synchronous_commit'), 'wal_sync_method=' || current_setting('wal_sync_method'), 'shared_buffers=' || current_setting('shared_buffers'), 'max_connections=' || current_setting('max_connections')")"

pg_sql <<'SQL'
CREATE TABLE ticket_types (
  id       integer PRIMARY KEY,
  capacity integer NOT NULL,
  sold     integer NOT NULL DEFAULT 0 CHECK (sold >= 0 AND sold <= capacity)
);
CREATE TABLE bookings (
  id              bigserial PRIMARY KEY,
  ticket_type_id  integer NOT NULL REFERENCES ticket_types (id),
  user_id         integer NOT NULL,
  quantity        integer NOT NULL CHECK (quantity > 0),
  idempotency_key text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, idempotency_key)
);
INSERT INTO ticket_types (id, capacity) VALUES (1, 1000000);
SQL

# One booking = one transaction (autocommit): take seats only if they are
# there, and record the booking only if seats were taken. The key is what a
# client would send; random over 10^15, so a collision is practically nil.
cat >"$tmp/book.sql" <<'SQL'
\set user_id random(1, 1000)
\set key random(1, 1000000000000000)
WITH taken AS (
  UPDATE ticket_types SET sold = sold + 1
   WHERE id = 1 AND sold + 1 <= capacity
  RETURNING id
)
INSERT INTO bookings (ticket_type_id, user_id, quantity, idempotency_key)
SELECT taken.id, :user_id, 1, :client_id || '-' || :key FROM taken;
SQL

step "(a) pgbench -c $CONNECTIONS -j $THREADS -T $DURATION"
mkdir -p "$tmp/pglog"
if ! timeout --kill-after=10 "$BOUND" "$PGBENCH" -h 127.0.0.1 -p "$pg_port" -U bench \
  -n -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" -f "$tmp/book.sql" \
  --log --log-prefix="$tmp/pglog/tx" postgres >"$tmp/pgbench.out" 2>&1; then
  cat "$tmp/pgbench.out" >&2
  die "pgbench failed"
fi
grep -E '^(number of (transactions actually processed|failed transactions)|latency average|tps)' "$tmp/pgbench.out" | sed 's/^/  pgbench: /'

pg_rows=$(pg_sql -c "SELECT count(*) FROM bookings")
pg_sold=$(pg_sql -c "SELECT sold FROM ticket_types WHERE id = 1")
[[ $pg_rows -eq $pg_sold ]] || die "postgres: $pg_rows booking rows but sold = $pg_sold"
[[ $pg_rows -gt 0 ]] || die "postgres: no bookings were made"
# Per-transaction log: client_id tx_no latency_us script_no epoch epoch_us.
cat "$tmp"/pglog/tx.* | awk '$3 ~ /^[0-9]+$/ { print $3 / 1000 }' | sort -n >"$tmp/pg_latency_ms"
a_rate=$(calc "$pg_rows / $DURATION")
a_p50=$(percentile 50 "$tmp/pg_latency_ms")
a_p99=$(percentile 99 "$tmp/pg_latency_ms")
echo "  postgres: $pg_rows bookings in ${DURATION}s, sold = $pg_sold"
stop_postgres
# PostgreSQL's data would otherwise be written back to disk during
# Marquee's run, which waits on the same disk for its flushes: removed, its
# dirty pages are dropped instead.
rm -rf "$tmp/pg" "$tmp/pglog"
sync

# ============================================================ Marquee

step "Marquee: start $MARQUEE_BIN on a temp data dir"
# The comparison measures the booking path itself: every buyer comes from
# this one address with a few hundred tokens at tens of thousands of
# requests a second, so the rate limits (there to stop bots) are off.
timeout --kill-after=10 $(((2 * ROUNDS + 4) * BOUND + 300)) \
  "$MARQUEE_BIN" serve --listen 127.0.0.1:0 --data-dir "$tmp/marquee" --cache-mb 256 \
  --rate-limit-token 0 --rate-limit-ip 0 --rate-limit-credentials 0 \
  >"$tmp/marquee.out" 2>"$tmp/marquee.log" &
server_pid=$!
wait_for_marquee "$tmp/marquee.out" "$tmp/marquee.log" 30
echo "  listening on $url"

run_id=$(date +%s)
open_hot_event organizer@compare.example "Hot event"
tt_k6=$(add_hot_ticket_type "GA (k6)")

step "Marquee: registering $BUYERS buyers (4 at a time; argon2id makes each one cost tens of ms)"
register_buyers "$BUYERS" "$run_id" "$tmp/tokens.txt"

# wrk_one NAME URL BODY EXPECT: the wrk load of (b) with one fixed request
# body, counting answers that are not 200 with EXPECT in the body (like
# book.lua it looks at every response, so the client does the same work).
# Sets ${NAME}_rps, ${NAME}_p50, ${NAME}_p99 and ${NAME}_bad.
wrk_one() {
  local name=$1 url=$2 body=$3 expect=$4
  cat >"$tmp/$name.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
bad = 0
function response(status, headers, body)
  if status ~= 200 or not body:find('$expect', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + (thread:get("bad") or 0) end
  io.write(string.format("$name.lua: requests=%d bad=%d\\n", summary.requests, total))
end
LUA
  timeout --kill-after=10 "$BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s "$tmp/$name.lua" "$url/graphql" >"$tmp/wrk_$name.out" 2>&1 \
    || { cat "$tmp/wrk_$name.out" >&2; die "wrk ($name) failed"; }
  grep -E "requests in|Requests/sec|Socket errors|Non-2xx|^$name.lua:" "$tmp/wrk_$name.out" | sed 's/^ */  wrk: /'
  local rps
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/wrk_$name.out")
  [[ -n $rps ]] || die "no Requests/sec in the wrk output ($name)"
  printf -v "${name}_rps" '%s' "$rps"
  printf -v "${name}_p50" '%s' "$(wrk_percentile 50 "$tmp/wrk_$name.out")"
  printf -v "${name}_p99" '%s' "$(wrk_percentile 99 "$tmp/wrk_$name.out")"
  printf -v "${name}_bad" '%s' "$(sed -n "s/^$name.lua:.* bad=\([0-9]*\).*/\1/p" "$tmp/wrk_$name.out")"
}

# ------------------------------------------------------------ (b) wrk and (c), in turns

# book_round N: one round of (b), on a fresh ticket type.
book_round() {
  local tt before after available other
  tt=$(add_hot_ticket_type "GA (wrk, round $1)")
  step "(b) round $1: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -s loadtest/book.lua (ticket type $tt)"
  before=$(stock "$tt" sold)
  MARQUEE_TOKENS_FILE=$tmp/tokens.txt MARQUEE_TICKET_TYPE=$tt MARQUEE_KEY_PREFIX=wrk-$run_id-$1 \
    timeout --kill-after=10 "$BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s "$here/book.lua" "$url/graphql" >"$tmp/wrk_book.out" 2>&1 || { cat "$tmp/wrk_book.out" >&2; die "wrk (book) failed"; }
  after=$(stock "$tt" sold)
  available=$(stock "$tt" available)
  grep -E 'requests in|Requests/sec|Socket errors|Non-2xx|^book.lua:' "$tmp/wrk_book.out" | sed 's/^ */  wrk: /'
  b_seats+=($((after - before)))
  ((b_seats[-1] > 0)) || die "marquee sold nothing in round $1 of (b)"
  b_p50s+=("$(wrk_percentile 50 "$tmp/wrk_book.out")")
  b_p99s+=("$(wrk_percentile 99 "$tmp/wrk_book.out")")
  b_wrk_rps+=("$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/wrk_book.out")")
  # Requests and latency percentiles, for the p99 of all rounds together.
  local requests percentiles
  requests=$(sed -n 's/^book.lua: requests=\([0-9]*\).*/\1/p' "$tmp/wrk_book.out")
  percentiles=$(sed -n 's/^book.lua: latency_us //p' "$tmp/wrk_book.out")
  [[ -n $requests && -n $percentiles ]] || die "no request count or latency percentiles from book.lua in round $1"
  echo "$requests $percentiles" >>"$tmp/b_percentiles"
  echo "  marquee: ${b_seats[-1]} seats sold in ${DURATION}s; available after: $available"
  ((available > 0)) || b_sold_out+=("$1")
  other=$(sed -n 's/^book.lua:.* other_errors=\([0-9]*\) non_200=\([0-9]*\).*/\1 \2/p' "$tmp/wrk_book.out")
  [[ -z $other || $other == "0 0" ]] || b_other+=("round $1: $other")
}

# typename_round N: one round of (c).
typename_round() {
  step "(c) round $1: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency: { __typename }"
  wrk_one c "$url" '{"query":"{ __typename }"}' '"Query"'
  c_rpss+=("$c_rps")
  c_p50s+=("$c_p50")
  c_p99s+=("$c_p99")
  c_bad_total=$((c_bad_total + ${c_bad:-0}))
}

b_seats=() b_p50s=() b_p99s=() b_wrk_rps=() b_sold_out=() b_other=()
c_rpss=() c_p50s=() c_p99s=() c_bad_total=0
for ((round = 1; round <= ROUNDS; round++)); do
  if ((round % 2 == 1)); then
    book_round "$round"
    typename_round "$round"
  else
    typename_round "$round"
    book_round "$round"
  fi
done

# mean / median / highest of numbers given as arguments.
mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { print s / NR }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
highest() { printf '%s\n' "$@" | sort -g | tail -n1; }
# join SEPARATOR WORDS...: the words with SEPARATOR between them.
join() { local separator=$1 first=$2; shift 2; printf '%s' "$first" "${@/#/$separator}"; }
b_rates=()
for seats in "${b_seats[@]}"; do b_rates+=("$(calc "$seats / $DURATION")"); done
b_rate=$(mean "${b_rates[@]}")
b_p50=$(median "${b_p50s[@]}")
# pooled_p99 FILE: a bound on the p99 of all rounds' requests together,
# from each round's request count and percentiles (lines "N p=us ..."): the
# least latency x at which the requests known slower than x, round by
# round (100 - the highest percentile at or below x), are at most 1% of
# them all. At most the highest round's p99, and no less than the truth.
pooled_p99() {
  awk '{ n[NR] = $1; total += $1; k[NR] = NF - 1
         for (i = 2; i <= NF; i++) { split($i, pv, "="); p[NR, i - 1] = pv[1]; v[NR, i - 1] = pv[2]; xs[pv[2]] = 1 } }
       END {
         best = -1
         for (x in xs) {
           slower = 0
           for (r = 1; r <= NR; r++) {
             below = 0
             for (j = 1; j <= k[r]; j++) if (v[r, j] + 0 <= x + 0 && p[r, j] + 0 > below) below = p[r, j]
             slower += n[r] * (100 - below) / 100
           }
           if (slower <= total / 100 && (best < 0 || x + 0 < best)) best = x + 0
         }
         printf "%.2f\n", best / 1000 }' "$1"
}
b_p99=$(pooled_p99 "$tmp/b_percentiles")
c_rps=$(mean "${c_rpss[@]}")
c_p50=$(median "${c_p50s[@]}")
c_p99=$(highest "${c_p99s[@]}")

# ------------------------------------------------------------ (b) k6

step "(b) k6: $CONNECTIONS constant VUs for ${DURATION}s (fresh ticket type $tt_k6)"
cat >"$tmp/steady.js" <<'JS'
// The same booking load as book.lua, from k6: 64 VUs, each one request at a time.
import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';

const tokens = new SharedArray('tokens', () => open(__ENV.TOKENS_FILE).split('\n').filter((t) => t.length > 0));
const query = 'mutation($input: BookInput!) { bookTickets(input: $input) { id status quantity tickets { code } } }';
let counter = 0;

export const options = {
  scenarios: {
    steady: { executor: 'constant-vus', vus: Number(__ENV.VUS), duration: `${__ENV.DURATION}s`, gracefulStop: '5s' },
  },
  summaryTrendStats: ['med', 'p(99)'],
};

export default function () {
  counter += 1;
  const token = tokens[(__VU * 7919 + counter) % tokens.length];
  const body = JSON.stringify({
    query,
    variables: { input: { ticketTypeId: __ENV.TICKET_TYPE, quantity: 1, idempotencyKey: `k6-${__ENV.RUN}-${__VU}-${counter}`, hold: false } },
  });
  const res = http.post(__ENV.GRAPHQL_URL, body, {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
  });
  check(res, { confirmed: (r) => r.status === 200 && r.body.indexOf('"CONFIRMED"') !== -1 });
}

export function handleSummary(data) {
  const m = data.metrics;
  return {
    [__ENV.OUT]: JSON.stringify({
      requests: m.http_reqs.values.count,
      rps: m.http_reqs.values.rate,
      p50: m.http_req_duration.values.med,
      p99: m.http_req_duration.values['p(99)'],
      failedChecks: m.checks.values.fails,
    }),
  };
}
JS
k6_sold_before=$(stock "$tt_k6" sold)
TOKENS_FILE=$tmp/tokens.txt TICKET_TYPE=$tt_k6 GRAPHQL_URL=$url/graphql RUN=$run_id VUS=$CONNECTIONS \
  DURATION=$DURATION OUT=$tmp/k6.json \
  timeout --signal=INT --kill-after=10 "$BOUND" k6 run --quiet --no-usage-report "$tmp/steady.js" \
  >"$tmp/k6.out" 2>&1 || { cat "$tmp/k6.out" >&2; die "k6 failed"; }
k6_sold_after=$(stock "$tt_k6" sold)
k6_available_after=$(stock "$tt_k6" available)
k6_rps=$(jq -r .rps "$tmp/k6.json")
k6_p50=$(jq -r .p50 "$tmp/k6.json")
k6_p99=$(jq -r .p99 "$tmp/k6.json")
k6_failed=$(jq -r .failedChecks "$tmp/k6.json")
echo "  k6: $(jq -r .requests "$tmp/k6.json") requests, $((k6_sold_after - k6_sold_before)) seats sold, $k6_failed not confirmed, available after: $k6_available_after"

stop_marquee
server_errors=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/marquee.log" | grep -cE ' ERROR |panicked' || true)

# ------------------------------------------------------------ (d) the bare stack

step "(d) wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency: a bare async-graphql mutation on axum"
start_stack_ceiling "$ceiling_bin" $((BOUND + 30))
wrk_one d "$ceiling_url" '{"query":"mutation { book(quantity: 1) }"}' '"book":1'
stop_pid "$ceiling_pid"
ceiling_pid=""

# ============================================================ report

echo
echo "=== Results (${DURATION}s each, (b) wrk and (c) over $ROUNDS rounds each, $CONNECTIONS connections, load generator and server share $(nproc) cores)"
row() { printf '%-24s | %-28s | %18s | %9s | %9s\n' "$@"; }
ms() { awk -v v="$1" 'BEGIN { printf "%.2f ms", v }'; }
per_s() { awk -v v="$1" -v u="$2" 'BEGIN { printf "%.0f %s", v, u }'; }
row "system" "driver" "bookings(or req)/s" "p50" "p99"
row "------------------------" "----------------------------" "------------------" "---------" "---------"
row "(a) PostgreSQL 15" "pgbench -c$CONNECTIONS -j$THREADS" "$(per_s "$a_rate" bookings)" "$(ms "$a_p50")" "$(ms "$a_p99")"
row "(b) marquee bookTickets" "wrk -t$THREADS -c$CONNECTIONS book.lua" "$(per_s "$b_rate" bookings)" "$(ms "$b_p50")" "$(ms "$b_p99")"
row "(b) marquee bookTickets" "k6 $CONNECTIONS VUs" "$(per_s "$k6_rps" req)" "$(ms "$k6_p50")" "$(ms "$k6_p99")"
row "(c) marquee __typename" "wrk -t$THREADS -c$CONNECTIONS" "$(per_s "$c_rps" req)" "$(ms "$c_p50")" "$(ms "$c_p99")"
row "(d) bare stack mutation" "wrk -t$THREADS -c$CONNECTIONS" "$(per_s "$d_rps" req)" "$(ms "$d_p50")" "$(ms "$d_p99")"
echo "(b) wrk throughput is seats the server sold / ${DURATION}s; wrk itself reported $(join ' / ' "${b_wrk_rps[@]}") req/s."
echo
echo "=== (b) wrk and (c), round by round (order: b c, c b, ...)"
printf '%-6s | %16s | %9s | %14s | %9s | %7s\n' round "(b) bookings/s" "(b) p99" "(c) req/s" "(c) p99" "(b)/(c)"
for ((i = 0; i < ROUNDS; i++)); do
  printf '%-6s | %16.0f | %6.2f ms | %14.0f | %6.2f ms | %6.1f%%\n' "$((i + 1))" "${b_rates[i]}" "${b_p99s[i]}" \
    "${c_rpss[i]}" "${c_p99s[i]}" "$(calc "${b_rates[i]} / ${c_rpss[i]} * 100")"
done

verdict() { if [[ $(awk "BEGIN { print ($1) ? 1 : 0 }") -eq 1 ]]; then echo "met"; else echo "NOT met"; fi; }
r_pg=$(calc "$b_rate / $a_rate")
r_ceiling=$(calc "$b_rate / $c_rps * 100")
echo
echo "=== Ratios"
printf '(b)/(a)  marquee vs PostgreSQL bookings/s   %8.1fx   target >= 10x   %s\n' "$r_pg" "$(verdict "$r_pg >= 10")"
printf '(b)/(c)  bookTickets vs __typename ceiling  %8.1f%%   target >= 50%%   %s\n' "$r_ceiling" "$(verdict "$r_ceiling >= 50")"
printf 'p99 (b)  bookTickets under wrk            %8.2f ms  target < 20 ms  %s\n' "$b_p99" "$(verdict "$b_p99 < 20")"
echo "         (all rounds' requests together; the rounds' own p99s: $(join ' / ' "${b_p99s[@]}") ms)"
printf '(c)/(d)  marquee __typename vs bare stack mutation %6.1f%%   (reference: the stack alone on this machine)\n' \
  "$(calc "$c_rps / $d_rps * 100")"
printf '(b)/(d)  bookTickets vs bare stack mutation %8.1f%%\n' "$(calc "$b_rate / $d_rps * 100")"

echo
if ((${#b_sold_out[@]} > 0)); then
  echo "WARNING: the hot ticket type SOLD OUT during (b) round(s) ${b_sold_out[*]}: the throughput above is bounded by the stock."
else
  echo "(b) never sold out: each round's ticket type had seats left after its run."
fi
[[ $k6_available_after -gt 0 ]] || echo "WARNING: the k6 ticket type sold out during its run."
if ((${#b_other[@]} > 0)); then
  echo "WARNING: book.lua saw unexpected answers (other_errors non_200): $(join '; ' "${b_other[@]}")"
fi
[[ $k6_failed == 0 ]] || echo "WARNING: $k6_failed k6 bookings were not CONFIRMED"
[[ $c_bad_total == 0 ]] || echo "WARNING: $c_bad_total __typename answers were not 200 + \"Query\""
[[ ${d_bad:-0} == 0 ]] || echo "WARNING: $d_bad bare stack answers were not 200 + the quantity"
[[ $server_errors -eq 0 ]] || {
  echo "WARNING: marquee logged $server_errors error line(s):"
  sed 's/\x1b\[[0-9;]*m//g' "$tmp/marquee.log" | grep -E ' ERROR |panicked' | head -n 10
}
exit 0
