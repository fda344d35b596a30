//! # sluice-chaos: real Sluice nodes under seeded faults, and a checker of what they kept
//!
//! `sluice chaos run` starts real `sluice serve` processes on loopback, runs a librdkafka
//! workload that records every operation ([`history`]), injects the faults a seed plans
//! ([`schedule`]: SIGKILL of a node or of the controller, SIGSTOP/SIGCONT, a full disk, network
//! partitions through proxies on the node-to-node links, EIO/ENOSPC/stalls from the storage
//! fault points in the node's I/O path), heals them, reads everything
//! back and checks the history ([`checker`]): acknowledged records lost, duplicated, at the
//! wrong offset, reordered; reads that the log later contradicts; committed offsets lost.
//! [`run`] ties it together (the clients live in `workload`) and draws the run ([`timeline`]).
//! `sluice chaos check` re-checks a recorded history.
//!

pub mod checker;
pub mod history;
pub mod run;
pub mod schedule;
pub mod timeline;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

/// `sluice chaos`: real nodes under seeded faults, checked.
#[derive(Debug, clap::Subcommand)]
pub enum ChaosCommand {
    /// Starts N local nodes (3, or 1: a plain single broker), runs acks=all producers and a
    /// consumer group while the seed's faults hit leaders and other nodes, heals, reads
    /// everything back and checks it. Writes history.jsonl, verdict.json, verdict.txt and
    /// timeline.svg to DIR; exits 1 with the replay command when the verdict is invalid.
    ///
    /// Faults: kill, pause, disk_full (each node's data on a 512 MiB loop-mounted ext4 of its
    /// own; needs root), partition (a node cut off from the others) and bridge (from one of
    /// them), slow_link (100 ms more each way) and lossy_link (2 % of chunks reset their
    /// connection), all through proxies on the node-to-node links, kill_controller (the node
    /// leading the controller group), storage fault points armed in the node while the fault
    /// holds: write_eio and fdatasync_eio (segment writes / fdatasyncs fail with EIO; the node
    /// is restarted after), fallocate_enospc (space reservations fail with ENOSPC) and
    /// slow_disk (every fdatasync 100 ms slower); clock_jump (the node's wall clock an hour
    /// ahead or behind, through libfaketime: apt-get install faketime); move (the node's
    /// replicas of the topic move off it and back: Raft configuration changes under load);
    /// remove_voter (the node leaves the controller's voters and comes back: KIP-853);
    /// kill_coordinator (the node coordinating the transactional producers' transactions).
    Run(RunArgs),
    /// Checks a recorded history again and prints the verdict.
    Check {
        #[arg(value_name = "HISTORY.jsonl")]
        history: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// 1 (a plain single broker) or 3.
    #[arg(long, value_name = "N", default_value_t = 3)]
    nodes: usize,
    /// Comma-separated fault kinds (see above).
    #[arg(long, value_name = "F,...", default_value = "kill,pause")]
    faults: String,
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Seconds of faults (at least 1).
    #[arg(long, value_name = "S", default_value_t = 30)]
    duration: u64,
    /// Where results go (default chaos-results/seed-N).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Partitions of the topic (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 3)]
    partitions: u64,
    /// Idempotent producers (at most 16).
    #[arg(long, value_name = "N", default_value_t = 2)]
    producers: u64,
    /// Producers without idempotence (at most 16).
    #[arg(long, value_name = "N", default_value_t = 0)]
    plain_producers: u64,
    /// Producers sending in transactions of 10 records, every 4th aborted on purpose (at most
    /// 16); the checker then also asks that committed transactions be visible whole and once,
    /// aborted ones not at all, and those of unknown outcome all or nothing.
    #[arg(long, value_name = "N", default_value_t = 0)]
    transactional_producers: u64,
    /// Each producer sends a record every MS milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    interval_ms: u64,
    /// Keep the nodes' data directories.
    #[arg(long)]
    keep_data: bool,
}

/// `sluice chaos ...`.
pub fn main(command: ChaosCommand) -> Result<(), String> {
    match command {
        ChaosCommand::Run(args) => {
            let options = run_options(args)?;
            eprintln!("chaos: {}", options.replay_command());
            let report = run::run(&options)?;
            print!("{}", report.verdict.summary());
            for fault in &report.faults {
                println!(
                    "  {} node {} at {:.1} s for {:.1} s: longest wait for an acknowledgement {:.0} ms",
                    fault.action,
                    fault.node,
                    fault.at_ms / 1e3,
                    (fault.healed_ms - fault.at_ms) / 1e3,
                    fault.longest_ack_wait_ms
                );
            }
            println!(
                "  longest wait for an acknowledgement: {:.0} ms (partition {}, from {:.0} ms)",
                report.longest_ack_gap_ms,
                report.longest_ack_gap_partition,
                report.longest_ack_gap_from_ms
            );
            println!("  results in {}", options.out.display());
            if report.verdict.valid {
                Ok(())
            } else {
                Err(format!(
                    "seed {} found a violation; replay: {}",
                    options.seed, report.replay
                ))
            }
        }
        ChaosCommand::Check { history } => {
            let events = history::read_history(&history)?;
            let verdict = checker::check(&events);
            print!("{}", verdict.summary());
            if verdict.valid {
                Ok(())
            } else {
                Err("the history is invalid".into())
            }
        }
    }
}

fn run_options(args: RunArgs) -> Result<run::Options, String> {
    if args.nodes != 1 && args.nodes != 3 {
        return Err(format!("--nodes: 1 or 3, not {}", args.nodes));
    }
    let mut faults: Vec<schedule::FaultKind> = args
        .faults
        .split(',')
        .filter(|f| !f.is_empty())
        .map(schedule::FaultKind::parse)
        .collect::<Result<_, _>>()?;
    faults.dedup();
    let options = run::Options {
        nodes: args.nodes,
        faults,
        seed: args.seed,
        duration: Duration::from_secs(args.duration.max(1)),
        out: args
            .out
            .unwrap_or_else(|| PathBuf::from(format!("chaos-results/seed-{}", args.seed))),
        partitions: args.partitions.clamp(1, 1000) as i32,
        producers: args.producers.min(16) as u32,
        plain_producers: args.plain_producers.min(16) as u32,
        transactional_producers: args.transactional_producers.min(16) as u32,
        interval: Duration::from_millis(args.interval_ms.max(1)),
        keep_data: args.keep_data,
        binary: None,
    };
    if options.producers + options.plain_producers + options.transactional_producers == 0 {
        return Err(
            "--producers: at least one producer (idempotent, plain or transactional)".into(),
        );
    }
    if options.transactional_producers == 0
        && options
            .faults
            .contains(&schedule::FaultKind::KillCoordinator)
    {
        return Err(
            "--faults: kill_coordinator kills the transactional producers' coordinator; \
             --transactional-producers is 0"
                .into(),
        );
    }
    if options.nodes == 1 && options.faults.contains(&schedule::FaultKind::Move) {
        return Err(
            "--faults: move takes a node's replicas to the others; --nodes 1 has none".into(),
        );
    }
    if options.nodes == 1 && options.faults.contains(&schedule::FaultKind::RemoveVoter) {
        return Err(
            "--faults: remove_voter takes a node out of the controller's voters; --nodes 1 \
             has no controller quorum"
                .into(),
        );
    }
    if options.nodes == 1 && options.faults.iter().any(|f| f.cuts_links()) {
        return Err(
            "--faults: partition, bridge, slow_link and lossy_link work on links between \
             nodes; --nodes 1 has none"
                .into(),
        );
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `sluice chaos` as the binary nests it.
    #[derive(Debug, Parser)]
    struct Chaos {
        #[command(subcommand)]
        command: ChaosCommand,
    }

    fn parse_run(args: &[&str]) -> Result<run::Options, String> {
        let words = ["chaos", "run"].iter().chain(args);
        match Chaos::try_parse_from(words)
            .map_err(|e| e.to_string())?
            .command
        {
            ChaosCommand::Run(args) => run_options(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_options_parse_and_replay() {
        let options = parse_run(&["--nodes", "1", "--faults", "kill", "--seed", "42"]).unwrap();
        assert_eq!(options.nodes, 1);
        assert_eq!(options.faults, vec![schedule::FaultKind::Kill]);
        assert_eq!(options.out, PathBuf::from("chaos-results/seed-42"));
        assert!(options.replay_command().contains("--seed 42"));
        let again: Vec<String> = options
            .replay_command()
            .split_whitespace()
            .skip(3)
            .map(String::from)
            .collect();
        let again: Vec<&str> = again.iter().map(String::as_str).collect();
        let replayed = parse_run(&again).unwrap();
        assert_eq!(replayed.replay_command(), options.replay_command());
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        assert!(parse_run(&["--nodes", "2"])
            .unwrap_err()
            .contains("--nodes"));
        assert!(parse_run(&["--faults", "kill,flood"])
            .unwrap_err()
            .contains("flood"));
        assert!(parse_run(&["--seed", "x"]).unwrap_err().contains("--seed"));
        assert!(parse_run(&["--nodes", "1", "--faults", "move"])
            .unwrap_err()
            .contains("move"));
        assert!(parse_run(&["--nodes", "1", "--faults", "remove_voter"])
            .unwrap_err()
            .contains("remove_voter"));
        assert!(parse_run(&["--nodes", "1", "--faults", "partition"])
            .unwrap_err()
            .contains("partition"));
        assert!(parse_run(&["--bogus", "1"])
            .unwrap_err()
            .contains("--bogus"));
    }
}
