//! `sluice bench compare`: one workload against several targets in one sitting, interleaved
//! round by round (A B C, A B C, ...) so that the machine's slow drifts hit every target alike,
//! then medians per target and ratios to the first target.
//!
//! A run that fails is reported under the table and left out of the medians; the rounds go on.
//!
//! With `--peers SCRIPT`, each run is bracketed by `SCRIPT start NAME` and `SCRIPT stop NAME`:
//! every run gets a freshly started broker (and brokers that must share a port, such as rivine
//! and Sluice on 9092, can take turns).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::report::RunResult;
use crate::run::{run_workload, Target};
use crate::workload::Workload;

pub struct CompareOptions {
    pub targets: Vec<Target>,
    pub runs: u32,
    pub peers_script: Option<PathBuf>,
    pub out_dir: PathBuf,
    pub progress: bool,
}

/// Runs the peers script; it learns the workload's partition count from `BENCH_PARTITIONS`
/// (for brokers that can only auto-create topics with a configured default) and its
/// replication factor from `BENCH_REPLICATION_FACTOR`.
fn peer(script: &Path, action: &str, name: &str, workload: &Workload) -> Result<(), String> {
    let status = Command::new(script)
        .arg(action)
        .arg(name)
        .env(
            "BENCH_PARTITIONS",
            workload.partitions_per_topic.to_string(),
        )
        .env(
            "BENCH_REPLICATION_FACTOR",
            workload.replication_factor.to_string(),
        )
        // Its chatter would land in the table on stdout; errors still reach stderr.
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("{} {action} {name}: {e}", script.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {action} {name} failed: {status}",
            script.display()
        ))
    }
}

pub fn compare(workload: &Workload, options: &CompareOptions) -> Result<String, String> {
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|e| format!("create {}: {e}", options.out_dir.display()))?;
    let mut results: Vec<Vec<RunResult>> = options.targets.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<Vec<String>> = options.targets.iter().map(|_| Vec::new()).collect();
    for round in 0..options.runs {
        for (index, target) in options.targets.iter().enumerate() {
            eprintln!(
                "== round {}/{}: {} on {}",
                round + 1,
                options.runs,
                workload.name,
                target.name
            );
            if let Some(script) = &options.peers_script {
                peer(script, "start", &target.name, workload)?;
            }
            let outcome = run_workload(target, workload, options.progress);
            if let Some(script) = &options.peers_script {
                peer(script, "stop", &target.name, workload)?;
            }
            // A failed run is reported and counted; the other targets' rounds go on.
            let result = match outcome {
                Ok(result) => result,
                Err(e) => {
                    eprintln!("{} round {} failed: {e}", target.name, round + 1);
                    failures[index].push(e);
                    continue;
                }
            };
            eprint!("{}", result.summary());
            let file = options.out_dir.join(format!(
                "{}-{}-run{}.json",
                workload.name,
                target.name,
                round + 1
            ));
            crate::write_json(&file, &result)?;
            results[index].push(result);
        }
    }
    let mut table = comparison_table(workload, &options.targets, &results);
    for (target, failed) in options.targets.iter().zip(&failures) {
        for e in failed {
            table.push_str(&format!("failed run on {}: {e}\n", target.name));
        }
    }
    let file = options
        .out_dir
        .join(format!("{}-compare.txt", workload.name));
    std::fs::write(&file, &table).map_err(|e| format!("write {}: {e}", file.display()))?;
    Ok(table)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Metrics compared, with whether higher is better (the ratio is always target / first).
type Metric = (&'static str, fn(&RunResult) -> f64);

const METRICS: [Metric; 11] = [
    ("rate msg/s", |r| r.target_rate.unwrap_or(0.0)),
    ("publish msg/s", |r| r.publish.msg_per_s),
    ("publish MB/s", |r| r.publish.mb_per_s),
    ("consume msg/s", |r| r.consume.msg_per_s),
    ("unsent in window", |r| r.unsent_in_window as f64),
    ("publish p50 ms", |r| {
        r.publish_latency_us.p50 as f64 / 1000.0
    }),
    ("publish p99 ms", |r| {
        r.publish_latency_us.p99 as f64 / 1000.0
    }),
    ("publish p99.9 ms", |r| {
        r.publish_latency_us.p99_9 as f64 / 1000.0
    }),
    ("e2e p50 ms", |r| {
        r.end_to_end_latency_us.p50 as f64 / 1000.0
    }),
    ("e2e p99 ms", |r| {
        r.end_to_end_latency_us.p99 as f64 / 1000.0
    }),
    ("e2e p99.9 ms", |r| {
        r.end_to_end_latency_us.p99_9 as f64 / 1000.0
    }),
];

/// Medians per target, the spread (min-max over runs, the noise), and the ratio to the first.
pub fn comparison_table(
    workload: &Workload,
    targets: &[Target],
    results: &[Vec<RunResult>],
) -> String {
    let mut s = String::new();
    let runs = results.iter().map(Vec::len).max().unwrap_or(0);
    let _ = writeln!(
        s,
        "{}: medians of {runs} interleaved runs (min-max in brackets); ratio = target / {}",
        workload.name,
        targets.first().map_or("-", |t| t.name.as_str())
    );
    let _ = write!(s, "{:<18}", "metric");
    for t in targets {
        let _ = write!(
            s,
            " | {:>30}",
            format!("{} ({})", t.name, protocol_label(t))
        );
    }
    let _ = writeln!(s);
    for (label, metric) in METRICS {
        let _ = write!(s, "{label:<18}");
        let first = results
            .first()
            .map_or(f64::NAN, |r| median(r.iter().map(metric).collect()));
        for per_target in results {
            if per_target.is_empty() {
                let _ = write!(s, " | {:>30}", "no successful run");
                continue;
            }
            let values: Vec<f64> = per_target.iter().map(metric).collect();
            let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let m = median(values);
            let ratio = if first > 0.0 { m / first } else { f64::NAN };
            let _ = write!(
                s,
                " | {:>30}",
                format!("{} [{}-{}] {ratio:.2}x", fmt(m), fmt(lo), fmt(hi))
            );
        }
        let _ = writeln!(s);
    }
    s
}

fn protocol_label(t: &Target) -> &'static str {
    match t.protocol {
        crate::run::Protocol::Kafka => "kafka",
        crate::run::Protocol::KafkaWire => "kafka-wire",
        crate::run::Protocol::RedisStreams => "redis",
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
