//! The graph index's relationship queries, in process, on the shared
//! generator's dataset (`shared/datasets/social`, default 100k users and
//! 10k events, its 2,000 draws): Q1 friends going, Q2 recommendations, Q3
//! social distance, Q4 who's going, exactly as the dataset README defines
//! them. Targets (p99): Q1 < 50 µs, Q2 < 1 ms, Q3 < 2 ms, Q4 < 500 µs.
//!
//! `cargo bench --bench graph` imports the dataset into a scratch data
//! directory (generating it first with `python3 gen.py` when
//! `target/datasets/social-100k` is missing), reopens it the way the server
//! starts, then measures: criterion's mean per query over all draws, and a
//! percentile table from timing every draw on its own. Environment:
//! `MARQUEE_DATASET=DIR` picks another dataset (e.g. the 2M-user one);
//! `MARQUEE_DRAWS_JSON=FILE` skips criterion and writes every draw's answers
//! and engine time as JSON lines (for loadtest/compare-graph.sh).

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use graph::ids::{EventId, UserId};
use graph::social::DISTANCE_HOPS_MAX;
use graph::{Graph, SocialGraph};

// The server runs on mimalloc; so do its benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One parameter draw: U, E, V.
#[derive(Clone, Copy)]
struct Draw {
    user: UserId,
    event: EventId,
    other: UserId,
}

fn dataset_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MARQUEE_DATASET") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/datasets/social-100k");
    if !dir.join("manifest.json").exists() {
        let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/social/gen.py");
        eprintln!("generating {} (needs python3 with numpy==2.4.6)", dir.display());
        let status = std::process::Command::new("python3").arg(generator).arg("--out").arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "gen.py failed: pip install numpy==2.4.6");
    }
    dir
}

fn draws(dataset: &Path) -> Vec<Draw> {
    let text = std::fs::read_to_string(dataset.join("queries.csv")).expect("queries.csv");
    text.lines()
        .skip(1)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let field: Vec<u64> = line.split(',').map(|f| f.parse().expect("queries.csv holds integers")).collect();
            Draw { user: UserId(field[1]), event: EventId(field[2]), other: UserId(field[3]) }
        })
        .collect()
}

/// Imports the dataset into a scratch directory and opens it like the server.
fn open(dataset: &Path) -> (Graph, PathBuf, Duration) {
    let dir = std::env::temp_dir().join(format!("marquee-bench-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = graph::Options::default();
    graph::import::import(&dir, dataset, options.clone(), &mut |_| {}).expect("import the dataset");
    let started = Instant::now();
    let graph = Graph::open(&dir, options).expect("open the imported data");
    (graph, dir, started.elapsed())
}

fn q1(index: &SocialGraph, draw: Draw) -> graph::social::FriendsGoing {
    index.friends_going(draw.user, draw.event, 20)
}

fn q2(index: &SocialGraph, draw: Draw) -> Vec<(EventId, u32)> {
    index.recommend(draw.user, 10, Some)
}

fn q3(index: &SocialGraph, draw: Draw) -> Option<u32> {
    index.distance(draw.user, draw.other, DISTANCE_HOPS_MAX)
}

fn q4(index: &SocialGraph, draw: Draw) -> graph::social::WhosGoing {
    index.whos_going(draw.event, 20)
}

/// Times every draw of a query on its own, `rounds` times over, and prints
/// p50 / p99 / max over all timings, and p99 over each draw's best (what
/// the query costs without the machine's noise).
fn percentiles(name: &str, draws: &[Draw], rounds: usize, query: impl Fn(Draw)) {
    let mut all = Vec::with_capacity(draws.len() * rounds);
    let mut best = vec![Duration::MAX; draws.len()];
    for _ in 0..rounds {
        for (slot, &draw) in best.iter_mut().zip(draws) {
            let started = Instant::now();
            query(draw);
            let took = started.elapsed();
            all.push(took);
            *slot = (*slot).min(took);
        }
    }
    all.sort_unstable();
    best.sort_unstable();
    let at = |sorted: &[Duration], p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    eprintln!(
        "{name:<20} p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}  | per-draw best: p99 {:>9.1?}",
        at(&all, 0.50),
        at(&all, 0.99),
        all[all.len() - 1],
        at(&best, 0.99)
    );
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|k| k.parse::<u64>().ok()).map_or(0, |k| k * 1024)
}

fn report(index: &SocialGraph, opened_in: Duration) {
    let edges = index.follow_count() + index.attend_count();
    eprintln!(
        "index: {} follows, {} attends, {} MiB adjacency = {:.1} bytes per edge (both directions); \
         process RSS {} MiB; opened in {:.2?}",
        index.follow_count(),
        index.attend_count(),
        index.adjacency_bytes() >> 20,
        index.adjacency_bytes() as f64 / edges as f64,
        rss_bytes() >> 20,
        opened_in
    );
}

/// Writes each draw's answers and engine time (ns) as one JSON line.
fn write_answers(index: &SocialGraph, draws: &[Draw], path: &Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create the answers file"));
    for (n, &draw) in draws.iter().enumerate() {
        let timed = |f: &dyn Fn() -> String| {
            let started = Instant::now();
            let answer = f();
            (answer, started.elapsed().as_nanos())
        };
        let (a1, t1) = timed(&|| {
            let r = q1(index, draw);
            format!("{{\"count\":{},\"first\":{:?}}}", r.count, r.first.iter().map(|u| u.0).collect::<Vec<_>>())
        });
        let (a2, t2) =
            timed(&|| format!("{:?}", q2(index, draw).iter().map(|(e, s)| [e.0, u64::from(*s)]).collect::<Vec<_>>()));
        let (a3, t3) = timed(&|| q3(index, draw).map_or("null".into(), |d| d.to_string()));
        let (a4, t4) = timed(&|| {
            let r = q4(index, draw);
            let first: Vec<[u64; 2]> = r.first.iter().map(|(u, f)| [u.0, u64::from(*f)]).collect();
            format!("{{\"count\":{},\"first\":{first:?}}}", r.count)
        });
        writeln!(
            out,
            "{{\"draw\":{n},\"q1\":{a1},\"q2\":{a2},\"q3\":{a3},\"q4\":{a4},\"ns\":{{\"q1\":{t1},\"q2\":{t2},\"q3\":{t3},\"q4\":{t4}}}}}"
        )
        .expect("write answers");
    }
    out.flush().expect("flush answers");
}

fn main() {
    let dataset = dataset_dir();
    let draws = draws(&dataset);
    let (graph, dir, opened_in) = open(&dataset);
    let index = graph.social();
    if let Ok(path) = std::env::var("MARQUEE_DRAWS_JSON") {
        write_answers(&index, &draws, Path::new(&path));
        drop(index);
        drop(graph);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    report(&index, opened_in);
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("graph_queries");
    group.throughput(Throughput::Elements(1));
    let queries: [(&str, &dyn Fn(Draw)); 4] = [
        ("q1_friends_going", &|d| {
            black_box(q1(&index, d));
        }),
        ("q2_recommendations", &|d| {
            black_box(q2(&index, d));
        }),
        ("q3_social_distance", &|d| {
            black_box(q3(&index, d));
        }),
        ("q4_whos_going", &|d| {
            black_box(q4(&index, d));
        }),
    ];
    for (name, query) in queries {
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                query(draws[next % draws.len()]);
                next += 1;
            })
        });
    }
    group.finish();
    eprintln!("latency of each of the {} draws, timed alone, 5 runs:", draws.len());
    for (name, query) in queries {
        percentiles(name, &draws, 5, query);
    }
    drop(index);
    drop(graph);
    let _ = std::fs::remove_dir_all(&dir);
    criterion.final_summary();
}
