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
pub mod redis_streams;
pub mod report;
pub mod run;
pub mod wire;
pub mod workload;

use std::path::{Path, PathBuf};

use report::RunResult;
use run::Target;
use workload::{NamedRate, Rate, Workload};

pub const USAGE: &str = "  sluice bench [run] WORKLOAD.yaml [--target [NAME=]ADDRESS] [--out DIR] [--rate N|max|unpaced]
                                   [--duration S] [--warmup S] [--replication-factor N] [--quiet]
      Runs the workload against a Kafka bootstrap address (default 127.0.0.1:9092) or a
      redis://host:port Redis Streams target; writes DIR/<workload>-<name>-<time>.{json,txt}
      (DIR defaults to bench-results) and prints the summary.
  sluice bench compare WORKLOAD.yaml --target NAME=ADDRESS --target NAME=ADDRESS ... [--runs N]
                                   [--peers SCRIPT] [--out DIR] [--rate N|max|unpaced] [--duration S]
                                   [--warmup S] [--replication-factor N] [--quiet]
      Runs the workload on every target, interleaved, N rounds (default 3); prints medians and
      ratios to the first target. --peers: `SCRIPT start NAME` / `SCRIPT stop NAME` around runs.
  sluice bench plot RESULT.json... [--out DIR]
      Percentile curves and throughput over time as SVG (DIR defaults to bench-results/plots).
  sluice bench loopback [--seconds S]
      Loopback TCP limits: one stream's MB/s and 100-byte ping-pong latency (JSON).
  sluice bench fetch-sessions [--target ADDRESS] [--partitions N] [--active K] [--fetches F]
                                   [--blocks B] [--broker-pid PID]
      Incremental fetch sessions (KIP-227) beside full fetches on one topic of N partitions
      (default 10000), K of them (default 10) written before each fetch: bytes per request and
      response, round trip, and the broker's CPU per step with --broker-pid (JSON).
  sluice bench failover [--nodes N] [--kills K] [--interval-ms MS] [--dir DIR] [--keep]
                                   [--client-debug CONTEXTS] [-- NODE-ARGS...]
      Starts N (default 3) local `sluice serve` nodes under DIR (default ./bench-failover,
      must not exist; removed afterwards unless --keep), one partition replicated to all,
      an acks=all idempotent producer sending a record every MS (default 2); K times
      (default 20) SIGKILLs the leader and measures kill -> first acknowledgement on the new
      leader, restarting the node between rounds (JSON with p50/p99). NODE-ARGS go to every
      node (e.g. -- --raft-tick-ms 20).";

/// Options shared by `run` and `compare`.
struct Common {
    workload: Workload,
    targets: Vec<Target>,
    out_dir: PathBuf,
    runs: u32,
    peers: Option<PathBuf>,
    quiet: bool,
}

fn parse_common(args: &[&str], default_out: &str) -> Result<Common, String> {
    let mut workload_path = None;
    let mut targets = Vec::new();
    let mut out_dir = PathBuf::from(default_out);
    let mut runs = 3;
    let mut peers = None;
    let mut quiet = false;
    let mut rate = None;
    let mut duration = None;
    let mut warmup = None;
    let mut replication_factor = None;
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| {
            args.get(i + 1)
                .copied()
                .ok_or_else(|| format!("{} needs a value", args[i]))
        };
        match args[i] {
            "--target" => targets.push(Target::parse(value(i)?)?),
            "--out" => out_dir = PathBuf::from(value(i)?),
            "--runs" => runs = number(args[i], value(i)?)? as u32,
            "--peers" => peers = Some(PathBuf::from(value(i)?)),
            "--rate" => rate = Some(value(i)?),
            "--duration" => duration = Some(number(args[i], value(i)?)?),
            "--warmup" => warmup = Some(number(args[i], value(i)?)?),
            "--replication-factor" => {
                replication_factor = Some(
                    u32::try_from(number(args[i], value(i)?)?)
                        .ok()
                        .filter(|rf| (1..=i16::MAX as u32).contains(rf))
                        .ok_or("--replication-factor must be between 1 and 32767")?,
                )
            }
            "--quiet" => {
                quiet = true;
                i += 1;
                continue;
            }
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            path if workload_path.is_none() => {
                workload_path = Some(PathBuf::from(path));
                i += 1;
                continue;
            }
            extra => return Err(format!("unexpected argument {extra}")),
        }
        i += 2;
    }
    let path = workload_path.ok_or("a workload file is required")?;
    let mut workload = Workload::load(&path)?;
    if let Some(rate) = rate {
        workload.producer_rate = match rate {
            "max" => Rate::Named(NamedRate::Max),
            "unpaced" => Rate::Named(NamedRate::Unpaced),
            n => Rate::PerSecond(n.parse().ok().filter(|r: &f64| *r > 0.0).ok_or_else(|| {
                format!("--rate: `{n}` is not a positive number, max or unpaced")
            })?),
        };
    }
    if let Some(d) = duration {
        workload.duration_s = d.max(1);
    }
    if let Some(w) = warmup {
        workload.warmup_s = w;
    }
    if let Some(rf) = replication_factor {
        workload.replication_factor = rf;
    }
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(Common {
        workload,
        targets,
        out_dir,
        runs,
        peers,
        quiet,
    })
}

fn number(option: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{option}: `{value}` is not a whole number"))
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn read_result(path: &str) -> Result<RunResult, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not a bench result: {e}"))
}

/// Entry point of `sluice bench ...`; `args` are the words after `bench`.
pub fn main(args: &[&str]) -> Result<(), String> {
    match args {
        ["compare", rest @ ..] => {
            let common = parse_common(rest, "bench-results")?;
            if common.targets.len() < 2 {
                return Err("compare needs at least two --target".into());
            }
            let table = compare::compare(
                &common.workload,
                &compare::CompareOptions {
                    targets: common.targets,
                    runs: common.runs,
                    peers_script: common.peers,
                    out_dir: common.out_dir,
                    progress: !common.quiet,
                },
            )?;
            print!("{table}");
            Ok(())
        }
        ["plot", rest @ ..] => {
            let mut out = PathBuf::from("bench-results/plots");
            let mut files = Vec::new();
            let mut i = 0;
            while i < rest.len() {
                if rest[i] == "--out" {
                    out = PathBuf::from(rest.get(i + 1).ok_or("--out needs a value")?);
                    i += 2;
                } else {
                    files.push(read_result(rest[i])?);
                    i += 1;
                }
            }
            for path in plot::plot(&files, &out)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        ["fetch-sessions", rest @ ..] => {
            let mut options = fetch_sessions::Options {
                target: "127.0.0.1:9092".into(),
                partitions: 10_000,
                fetches: 200,
                blocks: 3,
                active: 10,
                broker_pid: None,
            };
            let small = |option: &str, value: &str| -> Result<u32, String> {
                u32::try_from(number(option, value)?)
                    .ok()
                    .filter(|n| *n <= i32::MAX as u32)
                    .ok_or_else(|| format!("{option}: `{value}` is too large"))
            };
            for pair in rest.chunks(2) {
                match pair {
                    ["--target", t] => options.target = t.to_string(),
                    ["--partitions", n] => options.partitions = small("--partitions", n)? as i32,
                    ["--active", n] => options.active = small("--active", n)? as i32,
                    ["--fetches", n] => options.fetches = small("--fetches", n)?,
                    ["--blocks", n] => options.blocks = small("--blocks", n)?,
                    ["--broker-pid", n] => options.broker_pid = Some(small("--broker-pid", n)?),
                    _ => {
                        return Err(format!(
                            "fetch-sessions: unknown or incomplete option {pair:?}"
                        ))
                    }
                }
            }
            let report = fetch_sessions::measure(&options)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        ["failover", rest @ ..] => {
            let mut options = failover::Options {
                nodes: 3,
                kills: 20,
                interval: std::time::Duration::from_millis(2),
                dir: PathBuf::from("bench-failover"),
                keep: false,
                node_args: Vec::new(),
                client_debug: None,
            };
            let mut i = 0;
            while i < rest.len() {
                let value = || {
                    rest.get(i + 1)
                        .copied()
                        .ok_or_else(|| format!("{} needs a value", rest[i]))
                };
                match rest[i] {
                    "--nodes" => options.nodes = number("--nodes", value()?)?.min(64) as usize,
                    "--kills" => options.kills = number("--kills", value()?)?.max(1) as usize,
                    "--interval-ms" => {
                        options.interval =
                            std::time::Duration::from_millis(number("--interval-ms", value()?)?)
                    }
                    "--dir" => options.dir = PathBuf::from(value()?),
                    "--client-debug" => options.client_debug = Some(value()?.to_string()),
                    "--keep" => {
                        options.keep = true;
                        i += 1;
                        continue;
                    }
                    "--" => {
                        options.node_args = rest[i + 1..].iter().map(|a| a.to_string()).collect();
                        break;
                    }
                    other => return Err(format!("failover: unknown option {other}")),
                }
                i += 2;
            }
            let report = failover::measure(&options)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        ["loopback", rest @ ..] => {
            let seconds = match rest {
                [] => 5,
                ["--seconds", s] => number("--seconds", s)?,
                _ => return Err("usage: sluice bench loopback [--seconds S]".into()),
            };
            let limits = loopback::measure(seconds)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&limits).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        ["run", rest @ ..] | rest => {
            let common = parse_common(rest, "bench-results")?;
            let target = match common.targets.as_slice() {
                [] => Target::parse("127.0.0.1:9092")?,
                [one] => one.clone(),
                _ => return Err("run takes one --target; use `sluice bench compare`".into()),
            };
            let result = run::run_workload(&target, &common.workload, !common.quiet)?;
            std::fs::create_dir_all(&common.out_dir)
                .map_err(|e| format!("create {}: {e}", common.out_dir.display()))?;
            let stem = format!(
                "{}-{}-{}",
                common.workload.name,
                target.name.replace([':', '/'], "_"),
                result.started_at_unix_s
            );
            let json = common.out_dir.join(format!("{stem}.json"));
            write_json(&json, &result)?;
            let summary = result.summary();
            let text = common.out_dir.join(format!("{stem}.txt"));
            std::fs::write(&text, &summary)
                .map_err(|e| format!("write {}: {e}", text.display()))?;
            print!("{summary}");
            println!("result: {}", json.display());
            Ok(())
        }
    }
}
