# lib.sh: process helpers shared by the load and comparison scripts (sourced,
# not run). Each script sets what a helper reads: stop_postgres uses
# $pg_started, $run_pg (prefix running a command as the postgres user),
# $PG_BIN and $pg_data.

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

# free_port: a TCP port nobody listens on (postgres and FalkorDB cannot be
# told to pick one themselves).
free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 40000))
    if [[ -z $(ss -Htln "sport = :$port") ]]; then
      echo "$port"
      return 0
    fi
  done
  return 1
}
