//! Latency histograms with fixed bucket bounds, as Prometheus exposes them, and the storage
//! measurements each shard thread keeps of its own I/O (fdatasync latency).
//!
//! A shard is one thread and a log lives on one thread, so the measurements are thread-locals
//! in plain cells: recording one is an add to memory no other thread touches (no atomics, no
//! locks on the I/O path). Whoever publishes a shard's metrics copies them on that thread
//! ([`durability_snapshot`]).
//!
//! Invariant: counts only grow while the thread lives; `counts[i]` is the number of
//! observations in `(bounds[i-1], bounds[i]]`, the last slot those above every bound.

use std::cell::RefCell;
use std::time::Duration;

/// Bucket upper bounds in seconds for request, round and I/O latencies: 50 µs to 10 s, about
/// three per decade, dense where a trading pipeline's p99 lives (sub-millisecond to tens of
/// milliseconds).
pub const LATENCY_BOUNDS_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Observations sorted into fixed buckets, with their sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound, plus one for observations above the last bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// A latency histogram over [`LATENCY_BOUNDS_SECONDS`].
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_SECONDS)
    }

    pub fn observe(&mut self, value: f64) {
        let slot = self.bounds.partition_point(|bound| *bound < value);
        self.counts[slot] += 1;
        self.sum += value;
    }

    pub fn observe_duration(&mut self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, observations in this bucket alone)` per bound, then `(+Inf, the rest)`:
    /// what `prometheus-client` encodes (it sums them into the cumulative `_bucket` series).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// `(upper bound, observations at or below it)` per bound, then `(+Inf, count)`: the
    /// cumulative form Prometheus' `_bucket` series take.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }

    /// Adds another histogram over the same bounds (shards' histograms summed for a node).
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }
}

thread_local! {
    /// This thread's durability fdatasyncs (the ones that make appended records durable).
    static FDATASYNC_LATENCY: RefCell<Histogram> = RefCell::new(Histogram::latency());
}

/// Records how long a durability fdatasync took on this thread.
pub(crate) fn record_fdatasync(elapsed: Duration) {
    FDATASYNC_LATENCY.with(|h| h.borrow_mut().observe_duration(elapsed));
}

/// What this thread's storage measured so far.
#[derive(Debug, Clone, PartialEq)]
pub struct DurabilitySnapshot {
    pub fdatasync_seconds: Histogram,
}

/// A copy of this thread's storage measurements (call it on the shard's own thread).
pub fn durability_snapshot() -> DurabilitySnapshot {
    DurabilitySnapshot {
        fdatasync_seconds: FDATASYNC_LATENCY.with(|h| h.borrow().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 7.0] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![(1.0, 2), (2.0, 4), (f64::INFINITY, 5)]);
        assert_eq!(h.buckets(), vec![(1.0, 2), (2.0, 2), (f64::INFINITY, 1)]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 12.0);
        let mut twice = h.clone();
        twice.merge(&h);
        assert_eq!(
            twice.cumulative(),
            vec![(1.0, 4), (2.0, 8), (f64::INFINITY, 10)]
        );
    }

    #[test]
    fn latency_bounds_ascend() {
        assert!(LATENCY_BOUNDS_SECONDS.windows(2).all(|w| w[0] < w[1]));
    }
}
