//! The ticket ledger's booking path, alone (no HTTP, no GraphQL): one hot
//! ticket type that everybody wants, and bookings spread over 10,000 ticket
//! types; decided in memory, and acknowledged durably (after the group-commit
//! flush that holds them). Targets on a 2-core machine: >= 1,000,000
//! in-memory bookings/s and >= 100,000 durable acknowledged bookings/s.
//!
//! The durable runs drive the ledger the way the server does: a few threads
//! decide bookings and wait for durability without blocking on each one
//! (the server's requests await the durable seq asynchronously), keeping a
//! bounded number of buyers in flight; a booking counts when the flush that
//! holds it has returned.
//!
//! `cargo bench --bench ledger`; figures go in the README.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use graph::ids::{TicketTypeId, UserId};
use graph::model::Role;
use graph::{Graph, NewEvent, NewTicketType};
use ledger::{BookRequest, Ledger, Options};

// The server runs on mimalloc; so do its benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A data directory with published events and their ticket types.
struct World {
    dir: PathBuf,
    graph: Arc<Graph>,
    ticket_types: Vec<TicketTypeId>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `count` ticket types of `capacity` seats, 50 to an event.
fn world(name: &str, count: usize, capacity: i64) -> World {
    let dir = std::env::temp_dir().join(format!("marquee-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let graph = Arc::new(Graph::open(&dir, graph::Options::default()).expect("open a scratch data directory"));
    let organizer = graph.register("org@example.com", "Org", Role::Organizer, None).expect("register").id;
    let mut ticket_types = Vec::with_capacity(count);
    while ticket_types.len() < count {
        let new = NewEvent {
            title: "Bench".into(),
            starts_at_ms: graph::now_ms() + 86_400_000,
            city: "Oslo".into(),
            ..NewEvent::default()
        };
        let event = graph.create_event(organizer, new).expect("create event").id;
        for _ in 0..(count - ticket_types.len()).min(graph::rules::TICKET_TYPES_PER_EVENT_MAX) {
            // Names are unique within an event.
            let new = NewTicketType {
                name: format!("GA {}", ticket_types.len()),
                price_cents: 4_500,
                currency: "EUR".into(),
                capacity,
                per_user_limit: None,
            };
            ticket_types.push(graph.add_ticket_type(event, new).expect("add ticket type").id);
        }
        graph.publish_event(event).expect("publish");
    }
    World { dir, graph, ticket_types }
}

/// How buyers pick a ticket type.
#[derive(Clone, Copy)]
enum Demand {
    /// Everybody books the same ticket type until it sells out, then the next.
    Hot,
    /// Buyer i books ticket type i mod n.
    Spread,
}

/// Books `total` single seats from `threads` threads and returns the wall
/// time. Hot demand moves to the next ticket type when one sells out.
fn rush(ledger: &Ledger, world: &World, demand: Demand, threads: usize, total: u64, round: u64) -> Duration {
    let hot = AtomicUsize::new(0);
    let per_thread = total.div_ceil(threads as u64);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads as u64 {
            let hot = &hot;
            scope.spawn(move || {
                for i in 0..per_thread {
                    let n = thread * per_thread + i;
                    book_one(ledger, world, demand, hot, n, round);
                }
            });
        }
    });
    started.elapsed()
}

/// Books `total` single seats from `threads` threads with up to
/// `in_flight` buyers in all waiting for their flush; returns the wall time
/// until the last one is durable.
fn rush_durably(ledger: &Ledger, world: &World, demand: Demand, in_flight: usize, total: u64, round: u64) -> Duration {
    const THREADS: u64 = 2;
    let hot = AtomicUsize::new(0);
    let per_thread = total.div_ceil(THREADS);
    let window_max = in_flight / THREADS as usize;
    let store = world.graph.store();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let hot = &hot;
            scope.spawn(move || {
                let mut waiting: VecDeque<u64> = VecDeque::with_capacity(window_max);
                for i in 0..per_thread {
                    waiting.push_back(book_one(ledger, world, demand, hot, thread * per_thread + i, round));
                    if waiting.len() >= window_max {
                        acknowledge(store, &mut waiting);
                    }
                }
                while !waiting.is_empty() {
                    acknowledge(store, &mut waiting);
                }
            });
        }
    });
    started.elapsed()
}

/// Waits for the oldest waiting booking, then lets go of every one the
/// same flush made durable.
fn acknowledge(store: &graph::Store, waiting: &mut VecDeque<u64>) {
    let oldest = waiting.pop_front().expect("something is waiting");
    store.sync(oldest).expect("flush");
    let durable = store.durable_seq();
    while waiting.front().is_some_and(|&seq| seq <= durable) {
        waiting.pop_front();
    }
}

/// Decides one booking and returns the seq it must wait for.
fn book_one(ledger: &Ledger, world: &World, demand: Demand, hot: &AtomicUsize, n: u64, round: u64) -> u64 {
    let user = UserId(1 + n % 100_000);
    loop {
        let index = match demand {
            Demand::Hot => hot.load(Ordering::Relaxed),
            Demand::Spread => (n % world.ticket_types.len() as u64) as usize,
        };
        let request = BookRequest {
            user,
            ticket_type: world.ticket_types[index],
            quantity: 1,
            idempotency_key: format!("r{round}-{n}"),
            hold: false,
        };
        match ledger.book_logged(&request, graph::now_ms()) {
            Ok(logged) => return std::hint::black_box(logged).seq,
            Err(ledger::Error::SoldOut { .. }) if matches!(demand, Demand::Hot) => {
                let _ = hot.compare_exchange(index, index + 1, Ordering::Relaxed, Ordering::Relaxed);
                assert!(index + 1 < world.ticket_types.len(), "the bench ran out of hot ticket types");
            }
            Err(error) => panic!("booking failed: {error}"),
        }
    }
}

fn in_memory(c: &mut Criterion) {
    let hot = world("memory-hot", 8, 1_000_000);
    let spread = world("memory-spread", 10_000, 1_000);
    let mut group = c.benchmark_group("ledger_in_memory");
    group.throughput(Throughput::Elements(1));
    let options = Options { shards: 16, hold_ttl_ms: 600_000, durable: false };
    for (name, world, demand) in [("hot_ticket_type", &hot, Demand::Hot), ("10k_ticket_types", &spread, Demand::Spread)]
    {
        for threads in [1, 2] {
            group.bench_with_input(BenchmarkId::new(name, format!("{threads}_threads")), &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    // A fresh ledger each sample: full stock, no bookings.
                    let ledger = Ledger::open(world.graph.clone(), options.clone()).expect("open ledger");
                    rush(&ledger, world, demand, threads, iters, 0)
                });
            });
        }
    }
    group.finish();
}

fn durable(c: &mut Criterion) {
    const BUYERS: usize = 512;
    let hot = world("durable-hot", 20, 1_000_000);
    let spread = world("durable-spread", 10_000, 1_000);
    let mut group = c.benchmark_group("ledger_durable");
    group.throughput(Throughput::Elements(1)).sample_size(10).measurement_time(Duration::from_secs(8));
    let options = Options { shards: 16, hold_ttl_ms: 600_000, durable: true };
    for (name, world, demand) in [("hot_ticket_type", &hot, Demand::Hot), ("10k_ticket_types", &spread, Demand::Spread)]
    {
        let ledger = Ledger::open(world.graph.clone(), options.clone()).expect("open ledger");
        let mut round = 0;
        group.bench_function(BenchmarkId::new(name, format!("{BUYERS}_in_flight")), |b| {
            b.iter_custom(|iters| {
                round += 1;
                rush_durably(&ledger, world, demand, BUYERS, iters.max(BUYERS as u64), round)
            });
        });
        let flushes = world.graph.store().flush_count();
        let seq = world.graph.store().durable_seq();
        eprintln!("{name}: {seq} records in {flushes} flushes ({:.0} per flush)", seq as f64 / flushes.max(1) as f64);
    }
    group.finish();
}

criterion_group!(benches, in_memory, durable);
criterion_main!(benches);
