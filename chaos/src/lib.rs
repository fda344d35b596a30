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

pub const USAGE: &str =
    "  sluice chaos run [--nodes N] [--faults F,...] [--seed N] [--duration S] [--out DIR]
                   [--partitions N] [--producers N] [--plain-producers N] [--interval-ms MS]
                   [--keep-data]
      Starts N (default 3; 1 = a plain single broker) local nodes, runs acks=all producers
      (default 2 idempotent, 0 plain) and a consumer group while the seed's faults hit leaders and other nodes for
      S seconds (default 30), heals, reads everything back and checks it. Faults (default
      kill,pause): kill, pause, disk_full (each node's data on a 512 MiB loop-mounted ext4 of
      its own; needs root), partition (a node cut off from the others) and bridge (from one of
      them), slow_link (100 ms more each way) and lossy_link (2 % of chunks reset their
      connection), all through proxies on the node-to-node links, kill_controller (the node
      leading the controller group), and storage fault points armed in the node while the
      fault holds: write_eio and fdatasync_eio (segment writes / fdatasyncs fail with EIO;
      the node is restarted after), fallocate_enospc (space reservations fail with ENOSPC)
      and slow_disk (every fdatasync 100 ms slower); clock_jump (the node's wall clock an
      hour ahead or behind, through libfaketime: apt-get install faketime). Writes
      history.jsonl,
      verdict.json, verdict.txt and timeline.svg to DIR (default chaos-results/seed-N); exits 1
      with the replay command when the verdict is invalid (default seed 1).
  sluice chaos check HISTORY.jsonl
      Checks a recorded history again and prints the verdict.";

/// `sluice chaos ...`.
pub fn main(args: &[&str]) -> Result<(), String> {
    match args {
        ["run", rest @ ..] => {
            let options = parse_run(rest)?;
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
        ["check", path] => {
            let events = history::read_history(std::path::Path::new(path))?;
            let verdict = checker::check(&events);
            print!("{}", verdict.summary());
            if verdict.valid {
                Ok(())
            } else {
                Err("the history is invalid".into())
            }
        }
        _ => Err(format!("usage:\n{USAGE}")),
    }
}

fn parse_run(args: &[&str]) -> Result<run::Options, String> {
    let mut options = run::Options {
        nodes: 3,
        faults: vec![schedule::FaultKind::Kill, schedule::FaultKind::Pause],
        seed: 1,
        duration: Duration::from_secs(30),
        out: PathBuf::new(),
        partitions: 3,
        producers: 2,
        plain_producers: 0,
        interval: Duration::from_millis(5),
        keep_data: false,
        binary: None,
    };
    let mut out = None;
    let mut i = 0;
    while i < args.len() {
        let flag = args[i];
        if flag == "--keep-data" {
            options.keep_data = true;
            i += 1;
            continue;
        }
        let value = *args
            .get(i + 1)
            .ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what}: {value:?} is not a whole number"))
        };
        match flag {
            "--nodes" => {
                options.nodes = number("--nodes")? as usize;
                if options.nodes != 1 && options.nodes != 3 {
                    return Err(format!("--nodes: 1 or 3, not {}", options.nodes));
                }
            }
            "--faults" => {
                options.faults = value
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(schedule::FaultKind::parse)
                    .collect::<Result<_, _>>()?;
                options.faults.dedup();
            }
            "--seed" => options.seed = number("--seed")?,
            "--duration" => options.duration = Duration::from_secs(number("--duration")?.max(1)),
            "--out" => out = Some(PathBuf::from(value)),
            "--partitions" => options.partitions = number("--partitions")?.clamp(1, 1000) as i32,
            "--producers" => options.producers = number("--producers")?.min(16) as u32,
            "--plain-producers" => {
                options.plain_producers = number("--plain-producers")?.min(16) as u32
            }
            "--interval-ms" => {
                options.interval = Duration::from_millis(number("--interval-ms")?.max(1))
            }
            other => return Err(format!("run: unknown option {other}")),
        }
        i += 2;
    }
    if options.producers + options.plain_producers == 0 {
        return Err("--producers: at least one producer (idempotent or plain)".into());
    }
    if options.nodes == 1 && options.faults.iter().any(|f| f.cuts_links()) {
        return Err(
            "--faults: partition, bridge, slow_link and lossy_link work on links between \
             nodes; --nodes 1 has none"
                .into(),
        );
    }
    options.out =
        out.unwrap_or_else(|| PathBuf::from(format!("chaos-results/seed-{}", options.seed)));
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_run(&["--nodes", "1", "--faults", "partition"])
            .unwrap_err()
            .contains("partition"));
        assert!(parse_run(&["--bogus", "1"])
            .unwrap_err()
            .contains("--bogus"));
    }
}
