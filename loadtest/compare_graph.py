#!/usr/bin/env python3
"""compare_graph.py: the Python half of loadtest/compare-graph.sh.

Measures Marquee's social-graph queries Q1-Q4 (shared/datasets/social/README.md:
Q1 friends going, Q2 recommendations, Q3 social distance <= 4, Q4 who's going)
against FalkorDB (Cypher; the stand-in for Neo4j) and PostgreSQL 15 on the same
2,000 parameter draws, and checks that every engine gives the same answer for
every draw and query. Targets: engine time, better peer's p50 / Marquee's p50
>= 20x for every query; throughput at 16 clients, Marquee / better peer >= 3x on
Q1 and Q2, >= 20x on Q3 and Q4.

Subcommands (each run by compare-graph.sh; none starts or stops a server):
  falkor-csv    write the CSV files falkordb-bulk-insert expects
  falkor-run    create the indexes, then answer and time every draw (FalkorDB's
                "Query internal execution time"); check the throughput variants
  falkor-bench  print the Cypher used under redis-benchmark for one query
  pg-load       create tables, COPY, keys and reverse indexes, VACUUM ANALYZE, prewarm
  pg-run        answer every draw (pg_stat_statements: mean_exec_time), then time
                every draw with EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON)
  pg-scripts    write the pgbench scripts (draw picked with \\set random)
  graphql-check Marquee over GraphQL must give the engine's answers (Q1, Q3, Q4)
  cpu-monitor   sample the CPU used by processes that are not this comparison's
                (another build on the machine), so the report can show it
  report        compare all answers draw by draw and print the tables
"""
import argparse
import csv
import http.client
import json
import os
import sys
import time
import urllib.parse

QUERIES = ("q1", "q2", "q3", "q4")
TITLES = {
    "q1": "Q1 friends going",
    "q2": "Q2 recommendations",
    "q3": "Q3 social distance",
    "q4": "Q4 who's going",
}

# ---------------------------------------------------------------- Cypher (FalkorDB)
# Q1 starts from U: FalkorDB's planner would otherwise start at the event and
# walk all its attendees (up to 30k); WITH fixes the order, as a team would.
CYPHER = {
    "q1": "MATCH (u:User {id: $u})-[:FOLLOWS]->(f:User)-[:FOLLOWS]->(u) "
          "WITH f MATCH (f)-[:ATTENDS]->(e:Event {id: $e}) "
          "WITH f.id AS fid ORDER BY fid "
          "WITH collect(fid) AS fs RETURN size(fs), fs[0..20]",
    # Each (u, f) FOLLOWS edge and (f, e) ATTENDS edge exists once (the dataset
    # has no duplicates), so count(f) counts distinct followees.
    "q2": "MATCH (u:User {id: $u})-[:FOLLOWS]->(f:User)-[:ATTENDS]->(e:Event) "
          "WHERE NOT (u)-[:ATTENDS]->(e) "
          "WITH e.id AS eid, count(f) AS score "
          "RETURN eid, score ORDER BY score DESC, eid ASC LIMIT 10",
    "q3": "MATCH (a:User {id: $u}), (b:User {id: $v}) "
          "WITH shortestPath((a)-[:FOLLOWS*1..4]->(b)) AS p RETURN length(p)",
    "q4": "MATCH (e:Event {id: $e})<-[:ATTENDS]-(a:User) WITH e, count(a) AS n "
          "MATCH (e)<-[:ATTENDS]-(a:User) "
          "WITH n, a.id AS id, indegree(a, 'FOLLOWS') AS fc ORDER BY fc DESC, id ASC LIMIT 20 "
          "RETURN n, collect([id, fc])",
}
# The same queries for redis-benchmark: the draw number d comes from
# __rand_int__ (-r 2000) and U, E, V from the draw's :Draw node (indexed).
CYPHER_BENCH = {
    "q1": "MATCH (x:Draw {n: $d}) WITH x.u AS uid, x.e AS eid "
          "MATCH (u:User {id: uid})-[:FOLLOWS]->(f:User)-[:FOLLOWS]->(u) "
          "WITH f, eid MATCH (f)-[:ATTENDS]->(e:Event {id: eid}) "
          "WITH f.id AS fid ORDER BY fid "
          "WITH collect(fid) AS fs RETURN size(fs), fs[0..20]",
    "q2": "MATCH (x:Draw {n: $d}) WITH x.u AS uid "
          "MATCH (u:User {id: uid})-[:FOLLOWS]->(f:User)-[:ATTENDS]->(e:Event) "
          "WHERE NOT (u)-[:ATTENDS]->(e) "
          "WITH e.id AS eid, count(f) AS score "
          "RETURN eid, score ORDER BY score DESC, eid ASC LIMIT 10",
    "q3": "MATCH (x:Draw {n: $d}) WITH x.u AS uid, x.v AS vid "
          "MATCH (a:User {id: uid}), (b:User {id: vid}) "
          "WITH shortestPath((a)-[:FOLLOWS*1..4]->(b)) AS p RETURN length(p)",
    "q4": "MATCH (x:Draw {n: $d}) WITH x.e AS eid "
          "MATCH (e:Event {id: eid})<-[:ATTENDS]-(a:User) WITH e, count(a) AS n "
          "MATCH (e)<-[:ATTENDS]-(a:User) "
          "WITH n, a.id AS id, indegree(a, 'FOLLOWS') AS fc ORDER BY fc DESC, id ASC LIMIT 20 "
          "RETURN n, collect([id, fc])",
}

# ---------------------------------------------------------------- SQL (PostgreSQL)
# %(u)s, %(e)s, %(v)s are the draw's U, E, V (bound as literals by psycopg's
# ClientCursor, so every draw gets its own plan, as with a simple-protocol app).
SQL = {
    "q1": """WITH f AS (
  SELECT a.dst AS id
    FROM follows a
    JOIN follows b ON b.src = a.dst AND b.dst = a.src
    JOIN attends t ON t.user_id = a.dst AND t.event_id = %(e)s
   WHERE a.src = %(u)s)
SELECT (SELECT count(*) FROM f)::int, ARRAY(SELECT id FROM f ORDER BY id LIMIT 20)""",
    # The primary keys make (f.src, f.dst) and (t.user_id, t.event_id) unique,
    # so count(*) per event counts distinct followees.
    "q2": """SELECT t.event_id, count(*)::int AS score
  FROM follows f
  JOIN attends t ON t.user_id = f.dst
 WHERE f.src = %(u)s
   AND NOT EXISTS (SELECT 1 FROM attends m WHERE m.user_id = %(u)s AND m.event_id = t.event_id)
 GROUP BY t.event_id
 ORDER BY score DESC, t.event_id
 LIMIT 10""",
    # Two hops from each end: F1 = out(U), B1 = in(V), F2 = out(F1), B2 = in(B1).
    # A walk of length k exists iff: k=1 V in F1; k=2 F1 & B1; k=3 F2 & B1;
    # k=4 F2 & B2. The first k that holds is the shortest path length. CASE stops
    # at the first true branch, and a CTE is only computed when first read.
    "q3": """WITH f1 AS (SELECT dst AS id FROM follows WHERE src = %(u)s),
     b1 AS (SELECT src AS id FROM follows WHERE dst = %(v)s),
     f2 AS (SELECT DISTINCT f.dst AS id FROM f1 JOIN follows f ON f.src = f1.id),
     b2 AS (SELECT DISTINCT f.src AS id FROM b1 JOIN follows f ON f.dst = b1.id)
SELECT CASE
  WHEN %(u)s = %(v)s THEN 0
  WHEN EXISTS (SELECT 1 FROM f1 WHERE id = %(v)s) THEN 1
  WHEN EXISTS (SELECT 1 FROM f1 JOIN b1 USING (id)) THEN 2
  WHEN EXISTS (SELECT 1 FROM f2 JOIN b1 USING (id)) THEN 3
  WHEN EXISTS (SELECT 1 FROM f2 JOIN b2 USING (id)) THEN 4
END""",
    # Follower count = index-only count on follows (dst, src).
    "q4": """WITH a AS (SELECT user_id FROM attends WHERE event_id = %(e)s)
SELECT (SELECT count(*) FROM a)::int,
       ARRAY(SELECT ARRAY[user_id, followers] FROM (
               SELECT a.user_id, (SELECT count(*) FROM follows f WHERE f.dst = a.user_id)::int AS followers
                 FROM a
                ORDER BY followers DESC, a.user_id
                LIMIT 20) top)""",
}
# pgbench: U, E, V looked up from the draws table inside the statement (one
# round trip per query, as for the other systems).
SQL_BENCH_PARAMS = {
    "u": "(SELECT user_id FROM draws WHERE draw = :d)",
    "e": "(SELECT event_id FROM draws WHERE draw = :d)",
    "v": "(SELECT user2_id FROM draws WHERE draw = :d)",
}


def die(msg):
    print(f"compare_graph.py: {msg}", file=sys.stderr)
    sys.exit(1)


def read_draws(dataset):
    with open(os.path.join(dataset, "queries.csv")) as f:
        rows = csv.reader(f)
        next(rows)
        return [tuple(int(x) for x in r) for r in rows if r]


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(min(k, len(sorted_values))) - 1]


def normalise(which, rows):
    """An engine's result rows -> the answer in the bench binary's JSON shape."""
    if which in ("q1", "q4"):
        if not rows:
            return {"count": 0, "first": []}
        count, first = rows[0][0], rows[0][1]
        first = [list(x) for x in first] if which == "q4" else list(first)
        return {"count": int(count), "first": first}
    if which == "q2":
        return [[int(e), int(s)] for e, s in rows]
    value = rows[0][0] if rows else None
    return None if value is None else int(value)


def progress(msg):
    print(f"  {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- FalkorDB

def cmd_falkor_csv(a):
    os.makedirs(a.out, exist_ok=True)
    started = time.time()

    def copy_rows(src, dst, header, pick):
        with open(os.path.join(a.dataset, src), newline="") as fin, open(os.path.join(a.out, dst), "w") as fout:
            rows = csv.reader(fin)
            next(rows)
            fout.write(header + "\n")
            fout.writelines(pick(r) for r in rows if r)

    copy_rows("users.csv", "User.csv", "id:ID(User)", lambda r: r[0] + "\n")
    copy_rows("events.csv", "Event.csv", "id:ID(Event),starts_at:LONG", lambda r: f"{r[0]},{r[3]}\n")
    copy_rows("follows.csv", "FOLLOWS.csv", ":START_ID(User),:END_ID(User)", lambda r: f"{r[0]},{r[1]}\n")
    copy_rows("attends.csv", "ATTENDS.csv", ":START_ID(User),:END_ID(Event)", lambda r: f"{r[0]},{r[1]}\n")
    # The draws, as :Draw nodes, only for the redis-benchmark runs.
    copy_rows("queries.csv", "Draw.csv", "n:ID(Draw),u:LONG,e:LONG,v:LONG", lambda r: ",".join(r) + "\n")
    print(json.dumps({"csv_s": round(time.time() - started, 2)}))


def falkor_graph(port):
    import falkordb
    return falkordb.FalkorDB(host="127.0.0.1", port=port).select_graph("social")


def cmd_falkor_run(a):
    g = falkor_graph(a.port)
    started = time.time()
    for label, prop in (("User", "id"), ("Event", "id"), ("Draw", "n")):
        g.query(f"CREATE INDEX FOR (x:{label}) ON (x.{prop})")
    deadline = time.time() + a.timeout
    while True:
        rows = g.query("CALL db.indexes() YIELD label, status RETURN label, status").result_set
        if len(rows) >= 3 and all(status == "OPERATIONAL" for _, status in rows):
            break
        if time.time() > deadline:
            die(f"FalkorDB indexes not ready after {a.timeout}s: {rows}")
        time.sleep(0.05)
    index_s = time.time() - started
    counts = g.query("MATCH (u:User) WITH count(u) AS users MATCH ()-[f:FOLLOWS]->() "
                     "RETURN users, count(f)").result_set[0]
    draws = read_draws(a.dataset)
    answers = [{"draw": d[0], "ms": {}} for d in draws]
    for which in QUERIES:
        q = CYPHER[which]
        plan = g.explain(q, {"u": draws[0][1], "e": draws[0][2], "v": draws[0][3]})
        with open(f"{a.out}.{which}.plan", "w") as f:
            f.write(str(plan) + "\n")
        for d, u, e, v in draws[: a.warmup]:  # plan cache and memory warm-up, not recorded
            g.query(q, {"u": u, "e": e, "v": v})
        t0 = time.time()
        for i, (d, u, e, v) in enumerate(draws):
            r = g.query(q, {"u": u, "e": e, "v": v})
            answers[i][which] = normalise(which, r.result_set)
            answers[i]["ms"][which] = r.run_time_ms
        progress(f"falkordb {which}: {len(draws)} draws in {time.time() - t0:.1f}s")
    # The redis-benchmark variants must answer like the plain queries.
    for which in QUERIES:
        for i, (d, u, e, v) in enumerate(draws[: a.check]):
            got = normalise(which, g.query(CYPHER_BENCH[which], {"d": d}).result_set)
            if got != answers[i][which]:
                die(f"FalkorDB benchmark variant of {which} differs on draw {d}: {got} vs {answers[i][which]}")
    with open(a.out, "w") as f:
        for row in answers:
            f.write(json.dumps(row) + "\n")
    print(json.dumps({"index_s": round(index_s, 2), "users": counts[0], "follows": counts[1]}))


def cmd_falkor_bench(a):
    print("CYPHER d=__rand_int__ " + CYPHER_BENCH[a.query])


# ---------------------------------------------------------------- PostgreSQL

def pg_connect(port, **kw):
    import psycopg
    return psycopg.connect(f"host=127.0.0.1 port={port} user=bench dbname=postgres", autocommit=True, **kw)


def cmd_pg_load(a):
    c = pg_connect(a.port)
    t = {}
    started = time.time()
    for stmt in (
        "CREATE EXTENSION pg_stat_statements",
        "CREATE EXTENSION pg_prewarm",
        "CREATE TABLE users (user_id integer NOT NULL, name text NOT NULL, city text NOT NULL)",
        "CREATE TABLE events (event_id integer NOT NULL, name text NOT NULL, city text NOT NULL, starts_at bigint NOT NULL)",
        "CREATE TABLE follows (src integer NOT NULL, dst integer NOT NULL)",
        "CREATE TABLE attends (user_id integer NOT NULL, event_id integer NOT NULL)",
        "CREATE TABLE draws (draw integer NOT NULL, user_id integer NOT NULL, event_id integer NOT NULL, user2_id integer NOT NULL)",
    ):
        c.execute(stmt)
    for table, name in (("users", "users"), ("events", "events"), ("follows", "follows"),
                        ("attends", "attends"), ("draws", "queries")):
        with c.cursor().copy(f"COPY {table} FROM STDIN (FORMAT csv, HEADER true)") as cp, \
                open(os.path.join(a.dataset, f"{name}.csv"), "rb") as f:
            while block := f.read(1 << 20):
                cp.write(block)
    t["copy_s"] = time.time() - started
    started = time.time()
    for stmt in (
        "ALTER TABLE users ADD PRIMARY KEY (user_id)",
        "ALTER TABLE events ADD PRIMARY KEY (event_id)",
        "ALTER TABLE follows ADD PRIMARY KEY (src, dst)",
        "CREATE INDEX follows_dst_src ON follows (dst, src)",
        "ALTER TABLE attends ADD PRIMARY KEY (user_id, event_id)",
        "CREATE INDEX attends_event_user ON attends (event_id, user_id)",
        "ALTER TABLE draws ADD PRIMARY KEY (draw)",
    ):
        c.execute(stmt)
    t["index_s"] = time.time() - started
    started = time.time()
    c.execute("VACUUM (ANALYZE)")  # statistics, and the visibility map for index-only scans
    t["analyze_s"] = time.time() - started
    started = time.time()
    c.execute("SELECT sum(pg_prewarm(oid)) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i')")
    t["prewarm_s"] = time.time() - started
    t["db_bytes"] = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    t["follows"] = c.execute("SELECT count(*) FROM follows").fetchone()[0]
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items()}))


def cmd_pg_run(a):
    import psycopg
    c = pg_connect(a.port, cursor_factory=psycopg.ClientCursor)
    cur = c.cursor()
    draws = read_draws(a.dataset)
    answers = [{"draw": d[0], "ms": {}} for d in draws]
    pgss = {}
    for which in QUERIES:
        q = SQL[which]
        p0 = {"u": draws[0][1], "e": draws[0][2], "v": draws[0][3]}
        plan = cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) " + q, p0).fetchall()
        with open(f"{a.out}.{which}.plan", "w") as f:
            f.write("\n".join(r[0] for r in plan) + "\n")
        for d, u, e, v in draws[: a.warmup]:
            cur.execute(q, {"u": u, "e": e, "v": v}).fetchall()
        # Pass A: the answers; pg_stat_statements sees exactly these executions.
        cur.execute("SELECT pg_stat_statements_reset()")
        t0 = time.time()
        for i, (d, u, e, v) in enumerate(draws):
            answers[i][which] = normalise(which, cur.execute(q, {"u": u, "e": e, "v": v}).fetchall())
        rows = cur.execute(
            "SELECT calls, mean_exec_time, total_exec_time FROM pg_stat_statements "
            "WHERE query NOT LIKE '%%pg_stat_statements%%' AND query NOT LIKE 'EXPLAIN%%' "
            "ORDER BY calls DESC LIMIT 1").fetchall()
        pgss[which] = {"calls": rows[0][0], "mean_ms": rows[0][1]} if rows else {"calls": 0, "mean_ms": float("nan")}
        # Pass B: server-side execution time of each draw.
        for i, (d, u, e, v) in enumerate(draws):
            plan = cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + q, {"u": u, "e": e, "v": v}).fetchone()[0]
            if isinstance(plan, str):
                plan = json.loads(plan)
            answers[i]["ms"][which] = plan[0]["Execution Time"]
        progress(f"postgres {which}: {len(draws)} draws x 2 passes in {time.time() - t0:.1f}s")
    # The pgbench variants must answer like the plain queries.
    for which in QUERIES:
        bench = SQL[which] % SQL_BENCH_PARAMS
        for i, (d, u, e, v) in enumerate(draws[: a.check]):
            got = normalise(which, cur.execute(bench.replace(":d", str(d))).fetchall())
            if got != answers[i][which]:
                die(f"pgbench variant of {which} differs on draw {d}: {got} vs {answers[i][which]}")
    with open(a.out, "w") as f:
        for row in answers:
            f.write(json.dumps(row) + "\n")
    with open(a.pgss, "w") as f:
        json.dump(pgss, f)


def cmd_pg_scripts(a):
    os.makedirs(a.out, exist_ok=True)
    for which in QUERIES:
        with open(os.path.join(a.out, f"{which}.sql"), "w") as f:
            f.write(f"-- {TITLES[which]}: one draw of queries.csv per transaction\n")
            f.write(f"\\set d random(0, {a.draws - 1})\n")
            f.write(SQL[which] % SQL_BENCH_PARAMS + ";\n")


# ---------------------------------------------------------------- Marquee GraphQL

def cmd_graphql_check(a):
    url = urllib.parse.urlparse(a.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    tokens = {}
    with open(a.tokens) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                tokens[int(parts[0])] = parts[1]
    engine = [json.loads(line) for line in open(a.marquee)]
    draws = read_draws(a.dataset)

    def gql(query, variables, token):
        body = json.dumps({"query": query, "variables": variables})
        conn.request("POST", "/graphql", body, {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        if resp.status != 200 or data.get("errors"):
            return ("error", resp.status, data.get("errors"))
        return data["data"]

    mismatches = 0
    t0 = time.time()
    for i, (d, u, e, v) in enumerate(draws):
        want = engine[i]
        r1 = gql("query($e: ID!) { event(id: $e) { friendsGoing(first: 20) { id } } }", {"e": str(e)}, tokens[u])
        g1 = r1 if isinstance(r1, tuple) else [int(x["id"]) for x in r1["event"]["friendsGoing"]]
        r3 = gql("query($v: ID!) { socialDistance(userId: $v) }", {"v": str(v)}, tokens[u])
        g3 = r3 if isinstance(r3, tuple) else r3["socialDistance"]
        r4 = gql("query($e: ID!) { event(id: $e) { attendeeCount whosGoing(first: 20) { id followerCount } } }",
                 {"e": str(e)}, a.admin)
        g4 = r4 if isinstance(r4, tuple) else {
            "count": r4["event"]["attendeeCount"],
            "first": [[int(x["id"]), x["followerCount"]] for x in r4["event"]["whosGoing"]]}
        for which, got, exp in (("q1", g1, want["q1"]["first"]), ("q3", g3, want["q3"]), ("q4", g4, want["q4"])):
            if got != exp:
                mismatches += 1
                if mismatches <= 10:
                    print(f"GRAPHQL MISMATCH draw {d} {which}: graphql {json.dumps(got)} engine {json.dumps(exp)}")
    print(json.dumps({"draws": len(draws), "mismatches": mismatches, "seconds": round(time.time() - t0, 1)}))
    sys.exit(1 if mismatches else 0)


# ---------------------------------------------------------------- CPU used by others

def cmd_cpu_monitor(a):
    """Every --interval s, appends "unix_time cores" to --out: the CPU (in cores)
    that processes outside this comparison used since the previous sample. Ours:
    descendants of --root, the postgres OS user's processes, anything whose command
    line names --tmp. Stops when --root exits (or after --max seconds)."""
    import pwd
    tick = os.sysconf("SC_CLK_TCK")
    try:
        pg_uid = pwd.getpwnam(a.pg_user).pw_uid
    except KeyError:
        pg_uid = -1

    def snapshot():
        procs = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                uid = os.stat(f"/proc/{name}").st_uid
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmd = f.read()
            except (OSError, ValueError):
                continue
            # fields[0] is field 3 (state): ppid = 4, utime = 14, stime = 15, starttime = 22
            procs[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]), uid, cmd)
        return procs

    def ours(pid, procs):
        seen = 0
        p = pid
        while p in procs and seen < 64:
            if p == a.root:
                return True
            p = procs[p][0]
            seen += 1
        _, _, _, uid, cmd = procs[pid]
        return uid == pg_uid or a.tmp.encode() in cmd

    boot_ticks_prev = None
    prev = snapshot()
    t_prev = time.time()
    with open("/proc/uptime") as f:
        boot_ticks_prev = float(f.read().split()[0]) * tick
    started = t_prev
    with open(a.out, "a") as out:
        while time.time() - started < a.max:
            time.sleep(a.interval)
            if not os.path.exists(f"/proc/{a.root}"):
                break
            cur = snapshot()
            t_now = time.time()
            used = 0
            for pid, (ppid, cpu, start, uid, cmd) in cur.items():
                if ours(pid, cur):
                    continue
                old = prev.get(pid)
                if old is not None and old[2] == start:
                    used += cpu - old[1]
                elif start >= boot_ticks_prev:  # born since the previous sample
                    used += cpu
            out.write(f"{t_now:.2f} {used / tick / (t_now - t_prev):.2f}\n")
            out.flush()
            prev, t_prev = cur, t_now
            with open("/proc/uptime") as f:
                boot_ticks_prev = float(f.read().split()[0]) * tick


def foreign_cores(samples, t0, t1):
    """Mean CPU (cores) used by other processes between t0 and t1."""
    vals = [c for t, c in samples if t0 < t <= t1 + 0.6]
    return sum(vals) / len(vals) if vals else float("nan")


# ---------------------------------------------------------------- report

def load_jsonl(path):
    return [json.loads(line) for line in open(path)] if path and os.path.exists(path) else None


def fmt_ms(ms):
    if ms != ms:  # nan
        return "-"
    if ms < 1:
        return f"{ms * 1000:.1f} µs"
    return f"{ms:.2f} ms"


def cmd_report(a):
    draws = read_draws(a.dataset)
    marquee = load_jsonl(a.marquee)
    peers = {"FalkorDB": load_jsonl(a.falkor), "PostgreSQL": load_jsonl(a.pg)}
    if marquee is None or len(marquee) != len(draws):
        die("no complete Marquee engine answers")
    info = json.load(open(a.info)) if a.info and os.path.exists(a.info) else {}
    samples = []
    if a.cpu and os.path.exists(a.cpu):
        for line in open(a.cpu):
            parts = line.split()
            if len(parts) == 2:
                samples.append((float(parts[0]), float(parts[1])))
    windows = {}
    if a.windows and os.path.exists(a.windows):
        for line in open(a.windows):
            parts = line.split()
            if len(parts) == 3:
                windows[parts[0]] = (float(parts[1]), float(parts[2]))

    def other_cpu(key):
        if key not in windows or not samples:
            return "?"
        return f"{foreign_cores(samples, *windows[key]):.2f}"
    pgss = json.load(open(a.pgss)) if a.pgss and os.path.exists(a.pgss) else {}

    # ---- agreement, draw by draw
    mismatches = 0
    agreement = []
    for name, rows in peers.items():
        if rows is None:
            agreement.append(f"{name}: NOT RUN")
            mismatches += 1
            continue
        bad = {q: 0 for q in QUERIES}
        for i, want in enumerate(marquee):
            got = rows[i]
            for q in QUERIES:
                if got[q] != want[q]:
                    bad[q] += 1
                    mismatches += 1
                    if mismatches <= 20:
                        print(f"MISMATCH {name} draw {want['draw']} {q}: {name} {json.dumps(got[q])} "
                              f"Marquee {json.dumps(want[q])}")
        agreement.append(f"{name}: " + ", ".join(f"{q.upper()} {len(marquee) - bad[q]}/{len(marquee)}" for q in QUERIES))

    # ---- (1) engine time
    def times(rows, key, scale):
        return {q: sorted(r[key][q] * scale for r in rows) for q in QUERIES} if rows else None

    t_m = times(marquee, "ns", 1e-6)
    t_f = times(peers["FalkorDB"], "ms", 1.0)
    t_p = times(peers["PostgreSQL"], "ms", 1.0)
    print()
    print(f"=== (1) Engine time per query, {len(draws)} draws each, sequential (p50 / p99)")
    print("    Marquee: in-process index (bench binary); FalkorDB: \"Query internal execution time\";")
    print("    PostgreSQL: EXPLAIN (ANALYZE, TIMING OFF) \"Execution Time\". Target: better peer p50 / Marquee p50 >= 20x")
    hdr = f"{'query':<20} | {'Marquee p50':>11} {'p99':>10} | {'FalkorDB p50':>12} {'p99':>10} | {'Postgres p50':>12} {'p99':>10} | {'ratio':>8} | target"
    print(hdr)
    print("-" * len(hdr))
    engine_ok = True
    for q in QUERIES:
        m50, m99 = percentile(t_m[q], 50), percentile(t_m[q], 99)
        cells, p50s = [], []
        for t in (t_f, t_p):
            if t:
                p50, p99 = percentile(t[q], 50), percentile(t[q], 99)
                p50s.append(p50)
                cells.append((fmt_ms(p50), fmt_ms(p99)))
            else:
                cells.append(("-", "-"))
        ratio = min(p50s) / m50 if p50s and m50 > 0 else float("nan")
        met = ratio >= 20
        engine_ok &= met
        print(f"{TITLES[q]:<20} | {fmt_ms(m50):>11} {fmt_ms(m99):>10} | {cells[0][0]:>12} {cells[0][1]:>10} | "
              f"{cells[1][0]:>12} {cells[1][1]:>10} | {ratio:>7.1f}x | >= 20x {'met' if met else 'NOT met'}")
    if windows:
        print(f"    CPU used by other processes on the machine meanwhile (cores of {os.cpu_count()}): "
              f"Marquee {other_cpu('marquee-engine')}, FalkorDB {other_cpu('falkordb-engine')}, "
              f"PostgreSQL {other_cpu('postgres-engine')}")
    if pgss and t_p:
        print("    cross-check, PostgreSQL mean per query: pg_stat_statements mean_exec_time (plain queries) vs mean EXPLAIN time")
        for q in QUERIES:
            s = pgss.get(q, {})
            explain_mean = sum(t_p[q]) / len(t_p[q])
            print(f"      {q.upper()}: pg_stat_statements {fmt_ms(s.get('mean_ms', float('nan')))} over {s.get('calls', 0)} calls; "
                  f"EXPLAIN {fmt_ms(explain_mean)}")

    # ---- (2) throughput
    tput = {}
    if a.tput and os.path.exists(a.tput):
        for line in open(a.tput):
            parts = line.split()
            if len(parts) == 3:
                tput[(parts[0], parts[1])] = float(parts[2])
    if tput:
        print()
        print(f"=== (2) Throughput, {a.clients} concurrent clients, {a.duration}s per system and query, queries/s")
        print("    Marquee: GraphQL/HTTP, wrk + loadtest/graph.lua; FalkorDB: RESP, redis-benchmark (C);")
        print("    PostgreSQL: pgbench -M prepared. Targets: Marquee / better peer >= 3x (Q1, Q2), >= 20x (Q3, Q4)")
        hdr = f"{'query':<20} | {'Marquee':>10} | {'FalkorDB':>10} | {'PostgreSQL':>10} | {'ratio':>8} | target"
        print(hdr)
        print("-" * len(hdr))
        for q in QUERIES:
            m = tput.get(("marquee", q), float("nan"))
            f = tput.get(("falkordb", q), float("nan"))
            p = tput.get(("postgres", q), float("nan"))
            best = max(x for x in (f, p, 0.0) if x == x)
            ratio = m / best if best > 0 else float("nan")
            target = 3 if q in ("q1", "q2") else 20
            print(f"{TITLES[q]:<20} | {m:>10.0f} | {f:>10.0f} | {p:>10.0f} | {ratio:>7.1f}x | >= {target}x "
                  f"{'met' if ratio >= target else 'NOT met'}")
        m_empty = tput.get(("marquee", "typename"))
        bare_empty = tput.get(("bare", "typename"))
        if m_empty and bare_empty:
            print(f"    The HTTP + GraphQL path alone, {{ __typename }} under the same load: Marquee {m_empty:.0f}/s, "
                  f"a bare async-graphql server on axum {bare_empty:.0f}/s.")
            asked = []
            for q in QUERIES:
                f = tput.get(("falkordb", q), float("nan"))
                p = tput.get(("postgres", q), float("nan"))
                best = max(x for x in (f, p, 0.0) if x == x)
                need = best * (3 if q in ("q1", "q2") else 20)
                mark = " (more than either answers empty requests)" if need > max(m_empty, bare_empty) else ""
                asked.append(f"{q.upper()} {need:.0f}/s{mark}")
            print("    The targets ask Marquee for " + "; ".join(asked) + ".")
        if windows:
            print(f"    CPU used by other processes during each run (cores of {os.cpu_count()}; Marquee / FalkorDB / PostgreSQL):")
            print("      " + "; ".join(
                f"{q.upper()} {other_cpu('marquee-' + q)} / {other_cpu('falkordb-' + q)} / {other_cpu('postgres-' + q)}"
                for q in QUERIES))

    # ---- answers
    print()
    print("=== Answer agreement with Marquee's engine, draw by draw")
    for line in agreement:
        print("    " + line)
    if "graphql" in info:
        print("    " + info["graphql"])
    print(f"    result: {'ALL AGREE' if mismatches == 0 else f'{mismatches} MISMATCH(ES)'}")
    sys.exit(1 if mismatches else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("falkor-csv"); s.add_argument("--dataset", required=True); s.add_argument("--out", required=True)
    s = sub.add_parser("falkor-run")
    for opt in ("--dataset", "--out"):
        s.add_argument(opt, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--warmup", type=int, default=100)
    s.add_argument("--check", type=int, default=100)
    s.add_argument("--timeout", type=float, default=600)
    s = sub.add_parser("falkor-bench"); s.add_argument("query", choices=QUERIES)
    s = sub.add_parser("pg-load"); s.add_argument("--dataset", required=True); s.add_argument("--port", type=int, required=True)
    s = sub.add_parser("pg-run")
    for opt in ("--dataset", "--out", "--pgss"):
        s.add_argument(opt, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--warmup", type=int, default=100)
    s.add_argument("--check", type=int, default=100)
    s = sub.add_parser("pg-scripts"); s.add_argument("--out", required=True); s.add_argument("--draws", type=int, required=True)
    s = sub.add_parser("graphql-check")
    for opt in ("--url", "--tokens", "--admin", "--dataset", "--marquee"):
        s.add_argument(opt, required=True)
    s = sub.add_parser("report")
    for opt in ("--dataset", "--marquee"):
        s.add_argument(opt, required=True)
    for opt in ("--falkor", "--pg", "--pgss", "--tput", "--info", "--cpu", "--windows"):
        s.add_argument(opt)
    s.add_argument("--duration", default="10")
    s.add_argument("--clients", default="16")
    s = sub.add_parser("cpu-monitor")
    s.add_argument("--root", type=int, required=True)
    s.add_argument("--tmp", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--pg-user", default="postgres")
    s.add_argument("--interval", type=float, default=0.5)
    s.add_argument("--max", type=float, default=6 * 3600)
    a = ap.parse_args()
    {
        "falkor-csv": cmd_falkor_csv, "falkor-run": cmd_falkor_run, "falkor-bench": cmd_falkor_bench,
        "pg-load": cmd_pg_load, "pg-run": cmd_pg_run, "pg-scripts": cmd_pg_scripts,
        "graphql-check": cmd_graphql_check, "report": cmd_report, "cpu-monitor": cmd_cpu_monitor,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
