# lib.sh: process helpers shared by the load and comparison scripts (sourced,
# not run). Each script sets what a helper reads: the PostgreSQL helpers use
# $pg_started, $run_pg (prefix running a command as the postgres user),
# $PG_BIN, $pg_data and $tmp (the server's directory is $tmp/pg), and die();
# wait_for_marquee uses $server_pid and die(), and sets $url; gql and the
# helpers built on it use $url (Marquee's base URL) and die(), gql also
# $GQL_TIMEOUT; wrk_percentile uses die().

# stop_pid PID: TERM, wait up to 15 s, then KILL; reaps it.
stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# start_postgres NAME SETTINGS: initdb in $pg_data, then start the server on
# 127.0.0.1 at a free port ($pg_port), with SETTINGS (postgresql.conf lines)
# appended under a "# --- NAME" comment. Each step is bounded in time.
start_postgres() {
  local name=$1 settings=$2
  timeout 300 "${run_pg[@]}" "$PG_BIN/initdb" -D "$pg_data" -U bench --auth=trust -E UTF8 --locale=C \
    --no-instructions >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
  {
    echo
    echo "# --- $name"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$tmp/pg'"
    echo "$settings"
  } >>"$pg_data/postgresql.conf"
  # A port free when picked can be taken before postgres binds it (a
  # client's connection gets it): then another port, up to three times.
  local attempt
  for attempt in 1 2 3; do
    pg_port=$(free_port) || die "no free port for postgres"
    echo "port = $pg_port" >>"$pg_data/postgresql.conf" # the last one counts
    if timeout 120 "${run_pg[@]}" "$PG_BIN/pg_ctl" -D "$pg_data" -l "$tmp/pg/server.log" -w -t 60 start >/dev/null; then
      pg_started=true
      return 0
    fi
    grep -q 'could not create any TCP/IP sockets' "$tmp/pg/server.log" || break
    echo "  postgres could not bind port $pg_port (attempt $attempt); trying another" >&2
  done
  cat "$tmp/pg/server.log" >&2
  die "postgres did not start"
}

# stop_postgres: a fast shutdown, bounded; the postmaster is killed if that hangs.
stop_postgres() {
  if $pg_started; then
    timeout 60 "${run_pg[@]}" "$PG_BIN/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 || {
      local pm
      pm=$(head -n1 "$pg_data/postmaster.pid" 2>/dev/null || true)
      [[ -n $pm ]] && kill -KILL "$pm" 2>/dev/null || true
    }
    pg_started=false
  fi
}

# free_port: a TCP port no socket uses (postgres and FalkorDB cannot be
# told to pick one themselves).
free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 40000))
    # Any socket on the port, not only listeners: a connection's local
    # port (ephemeral ports start at 32768) blocks a bind as well.
    if [[ -z $(ss -Htan "sport = :$port") ]]; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# stack_ceiling_bin: prints the path of the bare HTTP + GraphQL server of
# loadtest/stack_ceiling.rs ($STACK_CEILING_BIN, or built now in the release
# profile: cargo only rebuilds what changed). Reads $repo.
stack_ceiling_bin() {
  if [[ -n ${STACK_CEILING_BIN:-} ]]; then
    [[ -x $STACK_CEILING_BIN ]] || die "no executable at STACK_CEILING_BIN=$STACK_CEILING_BIN"
    echo "$STACK_CEILING_BIN"
    return 0
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust or set STACK_CEILING_BIN"
  timeout 1800 cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --example stack_ceiling >&2 \
    || die "cannot build the stack_ceiling example"
  echo "$repo/target/release/examples/stack_ceiling"
}

# start_stack_ceiling BIN SECONDS: starts BIN on 127.0.0.1 at a free port,
# killed after SECONDS at the latest; sets $ceiling_pid and $ceiling_url.
start_stack_ceiling() {
  local out=$tmp/stack_ceiling.out
  timeout --kill-after=5 "$2" "$1" 127.0.0.1:0 >"$out" 2>&1 &
  ceiling_pid=$!
  ceiling_url=""
  for _ in $(seq 100); do
    ceiling_url=$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\)$/\1/p' "$out")
    [[ -n $ceiling_url ]] && return 0
    kill -0 "$ceiling_pid" 2>/dev/null || { cat "$out" >&2; die "stack_ceiling exited at start-up"; }
    sleep 0.1
  done
  die "stack_ceiling did not announce itself within 10 s"
}

# wait_for_marquee OUT LOG SECONDS: waits until the Marquee server running
# as $server_pid, its stdout in OUT and its log in LOG, announces where it
# listens, and sets $url to that. Dies showing both files if the server
# exits first, or after SECONDS.
wait_for_marquee() {
  local out=$1 log=$2 seconds=$3
  url=""
  for _ in $(seq $((seconds * 10))); do
    url=$(sed -n 's/^marquee listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$out" | head -n1)
    [[ -n $url ]] && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$out" "$log" >&2; die "marquee exited at start-up"; }
    sleep 0.1
  done
  die "marquee did not announce itself within $seconds s"
}

# gql QUERY VARIABLES_JSON [TOKEN]: the response's `data` from Marquee at
# $url; dies on any GraphQL error. Each request is bounded by $GQL_TIMEOUT
# seconds (default 30).
gql() {
  local body response
  body=$(jq -cn --arg q "$1" --argjson v "$2" '{query: $q, variables: $v}')
  response=$(curl -sS --max-time "${GQL_TIMEOUT:-30}" -H 'Content-Type: application/json' \
    ${3:+-H "Authorization: Bearer $3"} --data-binary "$body" "$url/graphql") || die "request failed: $1"
  if ! jq -e '.errors == null and .data != null' >/dev/null <<<"$response"; then
    die "GraphQL error for \"$1\": $response"
  fi
  jq -c '.data' <<<"$response"
}

# The register mutation (variables email, password, name and role).
MARQUEE_REGISTER='mutation($email: String!, $password: String!, $name: String!, $role: Role) { register(email: $email, password: $password, name: $name, role: $role) { token } }'

# register_buyers COUNT TAG OUT: registers COUNT attendees with Marquee at
# $url (emails buyer-N-TAG@load.example), four at a time since argon2id
# makes each one cost tens of ms, and writes their tokens to OUT, one a
# line; dies unless every one got a token.
register_buyers() {
  local count=$1 tag=$2 out=$3 tokens
  export MARQUEE_REGISTER url
  export -f register_one_buyer
  seq 1 "$count" | MARQUEE_BUYER_TAG=$tag xargs -P 4 -I{} bash -c 'register_one_buyer {}' >"$out"
  tokens=$(grep -c . "$out" || true)
  [[ $tokens -eq $count ]] || die "registered only $tokens of $count buyers"
}

# register_one_buyer N: buyer N of register_buyers (run by xargs); prints
# its token, or nothing.
register_one_buyer() {
  jq -cn --arg q "$MARQUEE_REGISTER" --arg e "buyer-$1-$MARQUEE_BUYER_TAG@load.example" --arg n "Buyer $1" \
    '{query: $q, variables: {email: $e, password: "load-password", name: $n}}' \
    | curl -sS --max-time 30 -H 'Content-Type: application/json' --data-binary @- "$url/graphql" \
    | jq -r '.data.register.token // empty'
}

# wrk prints latencies as 812.00us, 1.23ms or 1.02s; this gives milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
    else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
    else { print "nan" } }'
}

# wrk_percentile P FILE: the P% line of wrk's --latency distribution, in ms.
wrk_percentile() {
  local raw
  raw=$(awk -v p="$1%" '$1 == p { print $2; exit }' "$2")
  [[ -n $raw ]] || die "no $1% latency line in $2"
  to_ms "$raw"
}

# open_hot_event EMAIL TITLE: registers an organizer with Marquee at $url
# and creates and publishes an event; sets $organizer (its token) and
# $event_id.
open_hot_event() {
  organizer=$(gql "$MARQUEE_REGISTER" \
    "$(jq -cn --arg e "$1" '{email: $e, password: "load-password", name: "Organizer", role: "ORGANIZER"}')" \
    | jq -r .register.token)
  event_id=$(gql 'mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }' \
    "$(jq -cn --arg t "$2" '{i: {title: $t, startsAt: "2097-06-01T20:00:00Z", city: "Berlin"}}')" "$organizer" \
    | jq -r .createEvent.id)
  gql 'mutation($id: ID!) { publishEvent(id: $id) { id } }' "{\"id\":\"$event_id\"}" "$organizer" >/dev/null
}

# add_hot_ticket_type NAME: a ticket type of $event_id (as $organizer) with
# 1,000,000 seats and no per-user limit; prints its id.
add_hot_ticket_type() {
  gql 'mutation($e: ID!, $t: TicketTypeInput!) { addTicketType(eventId: $e, input: $t) { id } }' \
    "$(jq -cn --arg e "$event_id" --arg n "$1" \
      '{e: $e, t: {name: $n, priceCents: 4900, currency: "EUR", capacity: 1000000, perUserLimit: null}}')" \
    "$organizer" | jq -r .addTicketType.id
}

# stock TICKET_TYPE_ID FIELD: the ticket type's `sold` or `available`, from
# the server (of $event_id, asked as $organizer).
stock() {
  local value
  value=$(gql 'query($id: ID!) { event(id: $id) { ticketTypes { id sold available } } }' "{\"id\":\"$event_id\"}" "$organizer" \
    | jq -r --arg t "$1" --arg f "$2" '.event.ticketTypes[] | select(.id == $t) | .[$f]')
  [[ $value =~ ^[0-9]+$ ]] || die "no $2 for ticket type $1"
  echo "$value"
}
