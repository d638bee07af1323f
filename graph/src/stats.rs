//! Lock-free histograms for operational metrics (flush latency and batch
//! size here, shard lock waits in the ledger), read by the api's /metrics.
//! Buckets are fixed at construction; observing is a few atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of observations at or below each bound, plus their sum.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in millionths (observations are small and few
    /// enough that this does not overflow in practice).
    sum_micros: AtomicU64,
    total: AtomicU64,
}

/// A histogram's figures at one moment: cumulative counts per bound.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at or below it), ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Buckets for latencies in seconds, from 50 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Buckets for counts (batch sizes), from 1 to 10,000.
pub const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 2_000.0, 10_000.0];

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]), "bounds ascend");
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(bucket) = self.bounds.iter().position(|&bound| value <= bound) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures now, cumulative as Prometheus wants them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.counts.iter())
            .map(|(&bound, count)| {
                running += count.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.total.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let histogram = Histogram::new(COUNT_BUCKETS);
        for value in [1.0, 3.0, 3.0, 15_000.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert_eq!(snapshot.sum, 15_007.0);
        assert_eq!(snapshot.buckets[0], (1.0, 1));
        assert_eq!(snapshot.buckets[2], (5.0, 3));
        assert_eq!(snapshot.buckets.last(), Some(&(10_000.0, 3)), "beyond the last bound counts only in +Inf");
    }
}
