//! # sluice-bench-harness: side-by-side load runs (`sluice bench`)
//!
//! OpenMessaging-Benchmark-style workloads (YAML, [`workload`]) run against any Kafka bootstrap
//! address through librdkafka ([`kafka`]), or against Redis Streams as a labelled
//! different-protocol comparison ([`redis_streams`]). [`run`] paces producers open-loop and
//! records publish and end-to-end latency from intended send times in HDR histograms;
//! [`report`] writes the JSON result and the text summary; [`compare`] interleaves targets and
//! prints medians and ratios; [`plot`] draws SVG charts; [`loopback`] measures the loopback
//! network limit; [`fetch_sessions`] sets incremental fetch sessions beside full fetches;
//! [`failover`] measures leader failover on a local cluster ([`local_cluster`]: real node
//! processes, killed, paused and restarted by PID; `sluice chaos` uses it too). The disk limit is
//! `bench-harness/fio/device-limits.sh`; peers are started and stopped by
//! `bench-harness/peers/peer.sh`.

pub mod compare;
pub mod failover;
pub mod fetch_sessions;
pub mod kafka;
pub mod kafka_wire;
pub mod link_proxy;
pub mod local_cluster;
pub mod loopback;
pub mod plot;
pub mod ports;
pub mod redis_streams;
pub mod report;
pub mod run;
pub mod wire;
pub mod workload;

use std::path::{Path, PathBuf};

use report::RunResult;
use run::Target;
use workload::{NamedRate, Rate, Workload};

/// `sluice bench`: load runs. Without a subcommand, `sluice bench WORKLOAD.yaml ...` is
/// `sluice bench run WORKLOAD.yaml ...`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Runs a workload against one Kafka bootstrap address (default 127.0.0.1:9092) or a
    /// redis://host:port Redis Streams target; writes DIR/<workload>-<name>-<time>.{json,txt}
    /// and prints the summary.
    Run(RunArgs),
    /// Runs a workload on every target, interleaved, N rounds; prints medians and ratios to
    /// the first target.
    Compare(CompareArgs),
    /// Percentile curves and throughput over time as SVG.
    Plot(PlotArgs),
    /// Loopback TCP limits: one stream's MB/s, 100-byte ping-pong latency, and the paced floor (timer wake-up lateness, a 1 KiB echo a millisecond) (JSON).
    Loopback(LoopbackArgs),
    /// Incremental fetch sessions (KIP-227) beside full fetches on one topic of N partitions,
    /// K of them written before each fetch: bytes per request and response, round trip, and
    /// the broker's CPU per step with --broker-pid (JSON).
    FetchSessions(FetchSessionsArgs),
    /// Starts N local `sluice serve` nodes, one partition replicated to all, an acks=all
    /// idempotent producer; K times SIGKILLs the leader and measures kill -> first
    /// acknowledgement on the new leader, restarting the node between rounds (JSON with
    /// p50/p99).
    Failover(FailoverArgs),
}

/// What a workload run may override.
#[derive(Debug, Clone, clap::Args)]
struct WorkloadOverrides {
    /// Producer rate: records per second, `max` (the highest rate that holds) or `unpaced`.
    #[arg(long, value_name = "N|max|unpaced")]
    rate: Option<String>,
    /// Seconds to measure (at least 1).
    #[arg(long, value_name = "S")]
    duration: Option<u64>,
    /// Seconds to run before measuring.
    #[arg(long, value_name = "S")]
    warmup: Option<u64>,
    /// Replication factor of the workload's topics.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=32767))]
    replication_factor: Option<u32>,
    /// A librdkafka property for every client of the run (repeatable), e.g. `-X
    /// security.protocol=SASL_SSL -X ssl.ca.location=ca.pem -X sasl.mechanisms=SCRAM-SHA-512`;
    /// added to the workload's `client` map.
    #[arg(short = 'X', long = "client-property", value_name = "KEY=VALUE")]
    client_property: Vec<String>,
    /// Where results go.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// The workload file (OpenMessaging-Benchmark style YAML).
    #[arg(value_name = "WORKLOAD.yaml")]
    workload: Option<PathBuf>,
    /// `[NAME=]ADDRESS`: a Kafka bootstrap address or redis://host:port.
    #[arg(long, value_name = "[NAME=]ADDRESS")]
    target: Option<String>,
    #[command(flatten)]
    overrides: WorkloadOverrides,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    #[arg(value_name = "WORKLOAD.yaml")]
    workload: PathBuf,
    /// `NAME=ADDRESS`, at least two; ratios are to the first.
    #[arg(long, value_name = "NAME=ADDRESS", required = true, num_args = 1)]
    target: Vec<String>,
    /// Interleaved rounds.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// `SCRIPT start NAME` / `SCRIPT stop NAME` around each target's runs.
    #[arg(long, value_name = "SCRIPT")]
    peers: Option<PathBuf>,
    #[command(flatten)]
    overrides: WorkloadOverrides,
}

#[derive(Debug, clap::Args)]
struct PlotArgs {
    /// Results of `sluice bench run` (JSON).
    #[arg(value_name = "RESULT.json", required = true)]
    results: Vec<String>,
    #[arg(long, value_name = "DIR", default_value = "bench-results/plots")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct LoopbackArgs {
    #[arg(long, value_name = "S", default_value_t = 5)]
    seconds: u64,
}

#[derive(Debug, clap::Args)]
struct FetchSessionsArgs {
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:9092")]
    target: String,
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Partitions written before each fetch.
    #[arg(long, value_name = "K", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..))]
    active: i32,
    #[arg(long, value_name = "F", default_value_t = 200)]
    fetches: u32,
    #[arg(long, value_name = "B", default_value_t = 3)]
    blocks: u32,
    /// The broker's process, for its CPU time per step.
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
}

#[derive(Debug, clap::Args)]
struct FailoverArgs {
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    nodes: u64,
    #[arg(long, value_name = "K", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    kills: u64,
    /// A record every MS milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2)]
    interval_ms: u64,
    /// Where the nodes keep their data (must not exist; removed afterwards unless --keep).
    #[arg(long, value_name = "DIR", default_value = "bench-failover")]
    dir: PathBuf,
    #[arg(long)]
    keep: bool,
    /// librdkafka debug contexts for the producer (e.g. eos,msg).
    #[arg(long, value_name = "CONTEXTS")]
    client_debug: Option<String>,
    /// Arguments for every node (after `--`, e.g. -- --raft-tick-ms 20).
    #[arg(last = true, value_name = "NODE-ARGS")]
    node_args: Vec<String>,
}

impl WorkloadOverrides {
    fn apply(&self, path: &Path) -> Result<Workload, String> {
        let mut workload = Workload::load(path)?;
        if let Some(rate) = &self.rate {
            workload.producer_rate =
                match rate.as_str() {
                    "max" => Rate::Named(NamedRate::Max),
                    "unpaced" => Rate::Named(NamedRate::Unpaced),
                    n => Rate::PerSecond(n.parse().ok().filter(|r: &f64| *r > 0.0).ok_or_else(
                        || format!("--rate: `{n}` is not a positive number, max or unpaced"),
                    )?),
                };
        }
        if let Some(d) = self.duration {
            workload.duration_s = d.max(1);
        }
        if let Some(w) = self.warmup {
            workload.warmup_s = w;
        }
        if let Some(rf) = self.replication_factor {
            workload.replication_factor = rf;
        }
        for property in &self.client_property {
            let (key, value) = property
                .split_once('=')
                .filter(|(key, _)| !key.trim().is_empty())
                .ok_or_else(|| format!("-X {property}: expected KEY=VALUE"))?;
            workload
                .client
                .insert(key.trim().to_string(), value.to_string());
        }
        Ok(workload)
    }
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn read_result(path: &str) -> Result<RunResult, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not a bench result: {e}"))
}

/// Entry point of `sluice bench ...`.
pub fn main(args: BenchArgs) -> Result<(), String> {
    match args.command {
        None => run_one(args.run),
        Some(BenchCommand::Run(run)) => run_one(run),
        Some(BenchCommand::Compare(compare)) => {
            if compare.target.len() < 2 {
                return Err("compare needs at least two --target".into());
            }
            let workload = compare.overrides.apply(&compare.workload)?;
            let table = compare::compare(
                &workload,
                &compare::CompareOptions {
                    targets: compare
                        .target
                        .iter()
                        .map(|t| Target::parse(t))
                        .collect::<Result<_, _>>()?,
                    runs: compare.runs,
                    peers_script: compare.peers,
                    out_dir: compare.overrides.out,
                    progress: !compare.overrides.quiet,
                },
            )?;
            print!("{table}");
            Ok(())
        }
        Some(BenchCommand::Plot(plot)) => {
            let files = plot
                .results
                .iter()
                .map(|path| read_result(path))
                .collect::<Result<Vec<_>, _>>()?;
            for path in plot::plot(&files, &plot.out)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Some(BenchCommand::FetchSessions(f)) => {
            let options = fetch_sessions::Options {
                target: f.target,
                partitions: f.partitions,
                fetches: f.fetches,
                blocks: f.blocks,
                active: f.active,
                broker_pid: f.broker_pid,
            };
            print_json(&fetch_sessions::measure(&options)?)
        }
        Some(BenchCommand::Failover(f)) => {
            let options = failover::Options {
                nodes: f.nodes as usize,
                kills: f.kills as usize,
                interval: std::time::Duration::from_millis(f.interval_ms),
                dir: f.dir,
                keep: f.keep,
                node_args: f.node_args,
                client_debug: f.client_debug,
            };
            print_json(&failover::measure(&options)?)
        }
        Some(BenchCommand::Loopback(l)) => print_json(&loopback::measure(l.seconds)?),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// `sluice bench [run] WORKLOAD.yaml`.
fn run_one(args: RunArgs) -> Result<(), String> {
    let path = args.workload.ok_or("a workload file is required")?;
    let workload = args.overrides.apply(&path)?;
    let target = Target::parse(args.target.as_deref().unwrap_or("127.0.0.1:9092"))?;
    let out_dir = args.overrides.out;
    let result = run::run_workload(&target, &workload, !args.overrides.quiet)?;
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let stem = format!(
        "{}-{}-{}",
        workload.name,
        target.name.replace([':', '/'], "_"),
        result.started_at_unix_s
    );
    let json = out_dir.join(format!("{stem}.json"));
    write_json(&json, &result)?;
    let summary = result.summary();
    let text = out_dir.join(format!("{stem}.txt"));
    std::fs::write(&text, &summary).map_err(|e| format!("write {}: {e}", text.display()))?;
    print!("{summary}");
    println!("result: {}", json.display());
    Ok(())
}
