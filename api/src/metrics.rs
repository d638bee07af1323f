//! Metrics in the Prometheus text format, served at GET /metrics: requests
//! and their latency by operation and outcome, GraphQL errors by code,
//! bookings by outcome, ledger lock waits, group-commit batches and
//! latency, the log's head and each reader's lag, open WebSocket
//! connections and subscriptions, webhook deliveries, rate-limit refusals,
//! and the process's memory and CPU.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use graph::stats::{Histogram, HistogramSnapshot, SECONDS_BUCKETS};

use crate::App;

/// Distinct operation names tracked; later ones are counted as `other`.
const OPERATION_NAMES_MAX: usize = 100;

/// Counters the request path and the readers update.
pub struct Metrics {
    started: Instant,
    requests: Mutex<RequestSeries>,
    errors: Mutex<BTreeMap<String, u64>>,
    rate_limited: Mutex<BTreeMap<&'static str, u64>>,
    /// WebSocket connections open now.
    pub ws_connections: AtomicI64,
    /// Subscriptions running now.
    pub subscriptions: AtomicI64,
    /// Webhook attempts answered with a 2xx.
    pub webhooks_delivered: AtomicU64,
    /// Webhook attempts that failed and will be retried.
    pub webhooks_retried: AtomicU64,
    /// Webhook deliveries given up after their last attempt.
    pub webhooks_given_up: AtomicU64,
    /// Bookings made in memory whose flush failed: never acknowledged.
    pub bookings_not_durable: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            errors: Mutex::default(),
            rate_limited: Mutex::default(),
            ws_connections: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            webhooks_retried: AtomicU64::new(0),
            webhooks_given_up: AtomicU64::new(0),
            bookings_not_durable: AtomicU64::new(0),
        }
    }
}

/// An operation name fit for a label: what clients send, bounded.
fn operation_label(name: Option<&str>) -> &str {
    match name {
        None => "anonymous",
        Some(name)
            if !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            name
        }
        Some(_) => "other",
    }
}

/// Request latency histograms by operation label, then outcome. Found by
/// the label as borrowed from the request: a request allocates nothing to
/// be counted once its series exists.
#[derive(Default)]
struct RequestSeries {
    by_operation: HashMap<String, Vec<(&'static str, Arc<Histogram>)>>,
    /// (operation, outcome) pairs held, at most `OPERATION_NAMES_MAX * 4`
    /// before new ones count as `other`.
    count: usize,
}

impl RequestSeries {
    fn find(&self, label: &str, outcome: &str) -> Option<&Arc<Histogram>> {
        self.by_operation.get(label)?.iter().find(|(o, _)| *o == outcome).map(|(_, histogram)| histogram)
    }

    /// The histogram of a pair, made if new (as `other` once there are as
    /// many as are kept).
    fn series(&mut self, label: &str, outcome: &'static str) -> Arc<Histogram> {
        if let Some(histogram) = self.find(label, outcome) {
            return histogram.clone();
        }
        let label = if self.count >= OPERATION_NAMES_MAX * 4 { "other" } else { label };
        if let Some(histogram) = self.find(label, outcome) {
            return histogram.clone();
        }
        let histogram = Arc::new(Histogram::new(SECONDS_BUCKETS));
        self.by_operation.entry(label.to_string()).or_default().push((outcome, histogram.clone()));
        self.count += 1;
        histogram
    }
}

impl Metrics {
    /// Records one request: its operation, outcome and duration.
    pub fn request(&self, operation: Option<&str>, outcome: &'static str, seconds: f64) {
        let label = operation_label(operation);
        let histogram = self.requests.lock().expect("metrics lock poisoned").series(label, outcome);
        histogram.observe(seconds);
    }

    /// Counts a GraphQL error by its code.
    pub fn error(&self, code: &str) {
        *self.errors.lock().expect("metrics lock poisoned").entry(code.to_string()).or_default() += 1;
    }

    /// Counts a refusal by a rate limit.
    pub fn rate_limited(&self, scope: &'static str) {
        *self.rate_limited.lock().expect("metrics lock poisoned").entry(scope).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, app: &App) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_requests(&mut out);
        render_counters(
            &mut out,
            "marquee_graphql_errors_total",
            "GraphQL errors by extensions.code.",
            "code",
            &self.errors.lock().expect("metrics lock poisoned").clone(),
        );
        let limited: BTreeMap<String, u64> =
            self.rate_limited.lock().expect("metrics lock poisoned").iter().map(|(k, v)| (k.to_string(), *v)).collect();
        render_counters(
            &mut out,
            "marquee_rate_limited_total",
            "Requests refused by a rate limit, by scope.",
            "scope",
            &limited,
        );
        render_bookings(&mut out, app);
        render_histogram(
            &mut out,
            "marquee_ledger_shard_lock_wait_seconds",
            "Time waited for a busy ledger shard lock.",
            "",
            &app.ledger.lock_wait_stats(),
        );
        let (flush_seconds, flush_records) = app.graph.store().flush_stats();
        render_histogram(
            &mut out,
            "marquee_store_flush_seconds",
            "Duration of a group-commit round (write and flush).",
            "",
            &flush_seconds,
        );
        render_histogram(
            &mut out,
            "marquee_store_flush_records",
            "Log records made durable by one group-commit round.",
            "",
            &flush_records,
        );
        self.render_log(&mut out, app);
        gauge(
            &mut out,
            "marquee_websocket_connections",
            "WebSocket connections open.",
            self.ws_connections.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "marquee_subscriptions",
            "Subscriptions running.",
            self.subscriptions.load(Ordering::Relaxed) as f64,
        );
        let deliveries: BTreeMap<String, u64> = [
            ("delivered", &self.webhooks_delivered),
            ("retried", &self.webhooks_retried),
            ("given_up", &self.webhooks_given_up),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
        .collect();
        render_counters(
            &mut out,
            "marquee_webhook_deliveries_total",
            "Webhook delivery attempts by outcome.",
            "outcome",
            &deliveries,
        );
        self.render_process(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let requests: Vec<((String, &'static str), HistogramSnapshot)> = {
            let requests = self.requests.lock().expect("metrics lock poisoned");
            let mut all: Vec<_> = requests
                .by_operation
                .iter()
                .flat_map(|(operation, outcomes)| {
                    outcomes.iter().map(move |(outcome, h)| ((operation.clone(), *outcome), h.snapshot()))
                })
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        let _ = writeln!(
            out,
            "# HELP marquee_http_request_duration_seconds GraphQL-over-HTTP requests by operation and outcome."
        );
        let _ = writeln!(out, "# TYPE marquee_http_request_duration_seconds histogram");
        for ((operation, outcome), snapshot) in &requests {
            let labels = format!("operation=\"{operation}\",outcome=\"{outcome}\"");
            histogram_lines(out, "marquee_http_request_duration_seconds", &labels, snapshot);
        }
    }

    fn render_log(&self, out: &mut String, app: &App) {
        let store = app.graph.store();
        gauge(out, "marquee_log_head_seq", "Highest log seq written.", store.head_seq() as f64);
        gauge(out, "marquee_log_durable_seq", "Highest log seq known on disk.", store.durable_seq() as f64);
        gauge(
            out,
            "marquee_store_rows_behind_lag",
            "Log entries after the rows-behind checkpoint, which a start-up reads again.",
            store.rows_behind_lag() as f64,
        );
        let _ = writeln!(out, "# HELP marquee_log_reader_lag Durable log entries a reader has not processed yet.");
        let _ = writeln!(out, "# TYPE marquee_log_reader_lag gauge");
        let durable = store.durable_seq();
        for reader in [&app.readers.analytics, &app.readers.notifications, &app.readers.outbox] {
            let position = *reader.position.borrow();
            let _ = writeln!(
                out,
                "marquee_log_reader_lag{{reader=\"{}\"}} {}",
                reader.name,
                durable.saturating_sub(position)
            );
        }
        gauge(
            out,
            "marquee_store_healthy",
            "1 while every write has succeeded.",
            f64::from(u8::from(store.is_healthy())),
        );
    }

    fn render_process(&self, out: &mut String) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        };
        gauge(out, "process_resident_memory_bytes", "Resident memory.", kib("VmRSS:").unwrap_or(0.0) * 1024.0);
        gauge(out, "process_virtual_memory_bytes", "Virtual memory.", kib("VmSize:").unwrap_or(0.0) * 1024.0);
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let _ = writeln!(out, "# HELP process_cpu_seconds_total User and system CPU time.");
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(out, "process_cpu_seconds_total {}", (ticks(11) + ticks(12)) / 100.0);
        gauge(out, "marquee_uptime_seconds", "Seconds since start.", self.started.elapsed().as_secs_f64());
    }
}

/// One counter without labels.
pub(crate) fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn render_counters(out: &mut String, name: &str, help: &str, label: &str, values: &BTreeMap<String, u64>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (key, value) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {value}", escape(key));
    }
}

fn render_bookings(out: &mut String, app: &App) {
    let outcomes = app.ledger.outcomes();
    let mut values: BTreeMap<String, u64> = [
        ("booked", &outcomes.booked),
        ("replayed", &outcomes.replayed),
        ("sold_out", &outcomes.sold_out),
        ("limit_exceeded", &outcomes.limit_exceeded),
        ("refused", &outcomes.refused),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
    .collect();
    // A booking counts as booked once acknowledged: one whose flush failed
    // is counted apart.
    let not_durable = app.metrics.bookings_not_durable.load(Ordering::Relaxed);
    if let Some(booked) = values.get_mut("booked") {
        *booked = booked.saturating_sub(not_durable);
    }
    values.insert("not_durable".to_string(), not_durable);
    render_counters(out, "marquee_bookings_total", "Booking attempts by outcome.", "outcome", &values);
}

fn render_histogram(out: &mut String, name: &str, help: &str, labels: &str, snapshot: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    histogram_lines(out, name, labels, snapshot);
}

fn histogram_lines(out: &mut String, name: &str, labels: &str, snapshot: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in &snapshot.buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", snapshot.count);
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", snapshot.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", snapshot.count);
}

/// Escapes a label value.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &Metrics, label: &str, outcome: &str) -> u64 {
        let requests = metrics.requests.lock().unwrap();
        requests.find(label, outcome).map_or(0, |histogram| histogram.snapshot().count)
    }

    /// Requests count under their operation's name (or `anonymous`, or
    /// `other` for a name unfit for a label) and outcome; once as many
    /// series exist as are kept, a new pair counts as `other` while the
    /// existing ones go on counting.
    #[test]
    fn requests_count_by_operation_and_outcome_up_to_the_cap() {
        let metrics = Metrics::default();
        metrics.request(Some("Buy"), "ok", 0.001);
        metrics.request(Some("Buy"), "ok", 0.002);
        metrics.request(Some("Buy"), "error", 0.001);
        metrics.request(None, "ok", 0.001);
        metrics.request(Some("not-a-label"), "ok", 0.001);
        metrics.request(Some(&"x".repeat(65)), "ok", 0.001);
        assert_eq!(count(&metrics, "Buy", "ok"), 2);
        assert_eq!(count(&metrics, "Buy", "error"), 1);
        assert_eq!(count(&metrics, "anonymous", "ok"), 1);
        assert_eq!(count(&metrics, "other", "ok"), 2);

        let held = metrics.requests.lock().unwrap().count;
        for n in held..OPERATION_NAMES_MAX * 4 {
            metrics.request(Some(&format!("Op{n}")), "ok", 0.001);
        }
        assert_eq!(metrics.requests.lock().unwrap().count, OPERATION_NAMES_MAX * 4);
        metrics.request(Some("Late"), "ok", 0.001);
        metrics.request(Some("Late"), "refused", 0.001);
        metrics.request(Some("Buy"), "ok", 0.001);
        assert_eq!(count(&metrics, "Late", "ok"), 0, "past the cap a new pair is not kept");
        assert_eq!(count(&metrics, "other", "ok"), 3);
        assert_eq!(count(&metrics, "other", "refused"), 1);
        assert_eq!(count(&metrics, "Buy", "ok"), 3, "existing series go on counting");
    }
}
