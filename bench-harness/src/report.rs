//! What a run produced, as it is written out: the JSON result (one file per run, the input of
//! `sluice bench plot` and of comparisons) and the text summary printed at the end.
//!
//! Latencies are microseconds. Every percentile comes from an HDR histogram over the measured
//! window only (warm-up excluded), recorded from each record's intended send time, so a stalled
//! broker shows up in the tail instead of silently lowering the send rate.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::workload::Workload;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub workload: Workload,
    pub target: String,
    pub address: String,
    /// `kafka` or `redis-streams`.
    pub protocol: String,
    /// Seconds since the Unix epoch when the measured window began.
    pub started_at_unix_s: u64,
    /// The open-loop rate this run was paced at, records/s; `None` = unpaced.
    pub target_rate: Option<f64>,
    /// The search that chose `target_rate`, when the workload asked for `max`.
    pub max_rate_trials: Vec<Trial>,
    pub measured_s: f64,
    /// Acknowledgements / receipts that arrived inside the measured window.
    pub publish: Throughput,
    pub consume: Throughput,
    pub publish_errors: u64,
    /// Open loop: records the schedule put in the window ... (absent in results written
    /// before these fields existed, hence the defaults)
    #[serde(default)]
    pub scheduled_in_window: Option<u64>,
    /// ... of which the producers never got to send this many (the target was too slow):
    /// they have no latency sample, so a non-zero value means the percentiles flatter it.
    #[serde(default)]
    pub unsent_in_window: u64,
    pub publish_latency_us: Latency,
    pub end_to_end_latency_us: Latency,
    /// One entry per second of the run, warm-up included (`t` < 0 during warm-up).
    pub series: Vec<SecondSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trial {
    pub rate: Option<f64>,
    pub published_per_s: f64,
    pub consumed_per_s: f64,
    pub publish_p99_us: u64,
    /// End-to-end P99 of the trial's consumed records (0 without consumers); results written
    /// before it was recorded read as 0.
    #[serde(default)]
    pub end_to_end_p99_us: u64,
    pub passed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throughput {
    pub messages: u64,
    pub bytes: u64,
    pub msg_per_s: f64,
    pub mb_per_s: f64,
}

impl Throughput {
    pub fn over(messages: u64, bytes: u64, seconds: f64) -> Throughput {
        Throughput {
            messages,
            bytes,
            msg_per_s: messages as f64 / seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
    /// (percentile, value) points for percentile-curve plots, up to 99.999 and the max.
    pub curve: Vec<(f64, u64)>,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let mut curve = Vec::new();
        // 1 - 10^(-k/8): dense towards the tail, as HdrHistogram's percentile plots.
        for step in 0..=40 {
            let percentile = 100.0 * (1.0 - 10f64.powf(-(step as f64) / 8.0));
            curve.push((percentile, h.value_at_percentile(percentile)));
        }
        curve.push((100.0, h.max()));
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            p99_99: h.value_at_quantile(0.9999),
            max: h.max(),
            curve,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecondSample {
    pub t: i64,
    pub published: u64,
    pub published_bytes: u64,
    pub consumed: u64,
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

impl RunResult {
    /// The text summary: throughput, then one line per latency kind, in milliseconds.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let rate = match self.target_rate {
            Some(r) => format!("{r:.0} msg/s open loop"),
            None => "unpaced".into(),
        };
        let _ = writeln!(
            s,
            "{} on {} ({} {}), {rate}, {:.1} s measured",
            self.workload.name, self.target, self.protocol, self.address, self.measured_s
        );
        for trial in &self.max_rate_trials {
            let _ = writeln!(
                s,
                "  max-rate trial {:>10}: published {:>10.0}/s consumed {:>10.0}/s p99 {} ms e2e p99 {} ms -> {}",
                trial
                    .rate
                    .map(|r| format!("{r:.0}/s"))
                    .unwrap_or_else(|| "unpaced".into()),
                trial.published_per_s,
                trial.consumed_per_s,
                ms(trial.publish_p99_us),
                ms(trial.end_to_end_p99_us),
                match (trial.rate, trial.passed) {
                    (None, _) => "ceiling probe",
                    (Some(_), true) => "sustained",
                    (Some(_), false) => "not sustained",
                }
            );
        }
        let _ = writeln!(
            s,
            "  publish  {:>11.0} msg/s {:>9.2} MB/s  ({} records, {} errors)",
            self.publish.msg_per_s,
            self.publish.mb_per_s,
            self.publish.messages,
            self.publish_errors
        );
        let _ = writeln!(
            s,
            "  consume  {:>11.0} msg/s {:>9.2} MB/s  ({} records)",
            self.consume.msg_per_s, self.consume.mb_per_s, self.consume.messages
        );
        if self.unsent_in_window > 0 {
            let _ = writeln!(
                s,
                "  BEHIND SCHEDULE: {} of the {} records scheduled in the window were never sent; \
                 latency covers the {} that were",
                self.unsent_in_window,
                self.scheduled_in_window.unwrap_or(0),
                self.publish_latency_us.count
            );
        }
        let _ = writeln!(
            s,
            "  latency ms        p50      p90      p99    p99.9   p99.99      max"
        );
        for (label, l) in [
            ("publish", &self.publish_latency_us),
            ("end-to-end", &self.end_to_end_latency_us),
        ] {
            let _ = writeln!(
                s,
                "  {label:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p99_9),
                ms(l.p99_99),
                ms(l.max)
            );
        }
        s
    }
}
