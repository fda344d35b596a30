//! One chaos run (`sluice chaos run`): real nodes, a logged workload, the seed's faults, a
//! final read-back, the checker's verdict.
//!
//! The run: start the nodes ([`LocalCluster`]), create the topic (replicated to every node,
//! `min.insync.replicas` 2 on three nodes), start the workload, inject the schedule's faults
//! (each healed before the next), stop producing at the end of the duration and let the
//! producers deliver or give up (message timeout 120 s), wait until every partition has a
//! leader, stop the consumer with a last synchronous commit, read the group's committed offsets
//! and every partition from its start to its high watermark with fresh clients, stop the
//! nodes, check. The workload: `producers` librdkafka producers (idempotent, acks=all) and
//! `plain_producers` without idempotence (acks=all, librdkafka's default retries) and
//! `transactional_producers` sending in transactions (some aborted on purpose), one
//! record every `interval` each, keyed by the value so records spread over the partitions) and
//! one read_committed consumer in a group, committing asynchronously every 500 ms; every operation is recorded
//! with its time and outcome.
//!
//! Invariants: every node process is stopped on every path out ([`LocalCluster`]'s drop),
//! Ctrl-C and SIGTERM included (they end the run through its healing path; a second one ends
//! the process at once); a paused node is resumed before anything waits on the cluster; every
//! wait is bounded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use sluice_bench_harness::local_cluster::{ClusterOptions, LocalCluster};

use crate::checker::{check, Verdict};
use crate::history::{write_history, Event};
use crate::schedule::{plan, FaultKind, Planned, Target};
use crate::workload::{
    client_config, consume, produce, read_back, read_committed, transactional_id, wait_for_leaders,
    ProducerSpec, Recorder, Worker, GROUP, INTERRUPTED_WAIT, MESSAGE_TIMEOUT, SETTLE,
    SMALL_SEGMENT_BYTES, TOPIC,
};

/// Makes SIGINT (Ctrl-C) and SIGTERM end the run through its healing path: the flag returned
/// is set, the fault loop heals what is in force and the run stops every node and unmounts
/// every disk before it returns. A second signal ends the process at once.
fn interruptible() -> Result<Arc<AtomicBool>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, interrupted.clone())
            .and_then(|_| signal_hook::flag::register(signal, interrupted.clone()))
            .map_err(|e| format!("install a handler for signal {signal}: {e}"))?;
    }
    Ok(interrupted)
}

/// How far `clock_jump` moves a node's wall clock.
const CLOCK_JUMP_S: i64 = 3600;
/// What `slow_link` adds to every byte between the node and the others, each way.
const LINK_DELAY: Duration = Duration::from_millis(100);
/// `lossy_link`: the chance per chunk carried that the link resets its connection.
const LINK_RESETS_PER_MILLE: u32 = 20;
/// A header of this many bytes pads each record when fallocates fail (see [`run`]).
const PADDING_BYTES: usize = 1024;
/// How long a node restarted after an I/O error may take to stop before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Each node's own filesystem when disks are filled (sparse: only what is written takes space).
const DISK_MB: u64 = 512;

/// What `sluice chaos run` does.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub faults: Vec<FaultKind>,
    pub seed: u64,
    pub duration: Duration,
    pub out: PathBuf,
    pub partitions: i32,
    /// Idempotent producers.
    pub producers: u32,
    /// Plain producers (no idempotence) besides them.
    pub plain_producers: u32,
    /// Transactional producers besides those.
    pub transactional_producers: u32,
    /// Pause between two records of one producer.
    pub interval: Duration,
    /// Keep the nodes' data directories after a valid run (an invalid run always keeps them).
    pub keep_data: bool,
    /// The `sluice` binary the nodes run (this executable when `None`).
    pub binary: Option<PathBuf>,
}

impl Options {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        format!(
            "sluice chaos run --nodes {} --faults {} --seed {} --duration {} --partitions {} \
             --producers {} --plain-producers {} --transactional-producers {} --interval-ms {}",
            self.nodes,
            faults.join(","),
            self.seed,
            self.duration.as_secs(),
            self.partitions,
            self.producers,
            self.plain_producers,
            self.transactional_producers,
            self.interval.as_millis()
        )
    }
}

/// `verdict.json`: the run, its schedule, what clients saw, and the checker's verdict.
#[derive(Debug, Serialize)]
pub struct Report {
    pub replay: String,
    pub seed: u64,
    pub nodes: usize,
    pub duration_s: f64,
    pub schedule: Vec<Planned>,
    /// Producer errors (outcome unknown), by librdkafka's message.
    pub producer_errors: std::collections::BTreeMap<String, u64>,
    /// The longest span a partition went without an acknowledgement while records were being
    /// produced, when it began and which partition: how long a fault kept producers waiting.
    pub longest_ack_gap_ms: f64,
    pub longest_ack_gap_from_ms: f64,
    pub longest_ack_gap_partition: i32,
    /// Every fault as injected, and how long producers waited through it.
    pub faults: Vec<FaultOutcome>,
    pub verdict: Verdict,
}

/// One injected fault and what it cost the producers.
#[derive(Debug, Serialize)]
pub struct FaultOutcome {
    pub action: String,
    pub node: usize,
    pub at_ms: f64,
    pub healed_ms: f64,
    /// The longest wait between two acknowledgements of one partition that overlaps the fault
    /// (0 if none overlapped it): for a killed leader, kill → the new leader's first
    /// acknowledgement, as the producer saw it.
    pub longest_ack_wait_ms: f64,
}

/// Pairs each injected fault with its heal and measures the longest acknowledgement gap of any
/// partition overlapping it (`acks`: per partition, sorted times).
fn fault_outcomes(
    events: &[Event],
    acks: &std::collections::BTreeMap<i32, Vec<f64>>,
) -> Vec<FaultOutcome> {
    let mut outcomes: Vec<FaultOutcome> = Vec::new();
    for event in events {
        let Event::Fault { t_ms, action, node } = event else {
            continue;
        };
        match FaultKind::parse(action) {
            Ok(_) => outcomes.push(FaultOutcome {
                action: action.clone(),
                node: *node,
                at_ms: *t_ms,
                healed_ms: f64::INFINITY,
                longest_ack_wait_ms: 0.0,
            }),
            Err(_) => {
                if let Some(open) = outcomes
                    .iter_mut()
                    .rev()
                    .find(|o| o.node == *node && o.healed_ms.is_infinite())
                {
                    open.healed_ms = *t_ms;
                }
            }
        }
    }
    for outcome in &mut outcomes {
        for times in acks.values() {
            for pair in times.windows(2) {
                if pair[0] < outcome.healed_ms && pair[1] > outcome.at_ms {
                    outcome.longest_ack_wait_ms =
                        outcome.longest_ack_wait_ms.max(pair[1] - pair[0]);
                }
            }
        }
    }
    outcomes
}

/// Runs the workload and the faults; returns the report (the verdict inside). Writes
/// `history.jsonl`, `verdict.json`, `verdict.txt` and `timeline.svg` under `options.out`.
pub fn run(options: &Options) -> Result<Report, String> {
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("create {}: {e}", options.out.display()))?;
    let interrupted = interruptible()?;
    let schedule = plan(
        options.seed,
        &options.faults,
        options.nodes,
        options.partitions,
        options.duration,
    );
    let nodes_dir = options.out.join("nodes");
    let _ = std::fs::remove_dir_all(&nodes_dir);
    let mut cluster = LocalCluster::start(&ClusterOptions {
        nodes: options.nodes,
        seeds: options.nodes > 1,
        dir: nodes_dir,
        node_args: Vec::new(),
        binary: options.binary.clone(),
        disk_mb: options
            .faults
            .contains(&FaultKind::DiskFull)
            .then_some(DISK_MB),
        proxied_links: options.faults.iter().any(|f| f.cuts_links()),
        fault_points: options.faults.iter().any(|f| f.uses_fault_points()),
        fake_clock: if options.faults.contains(&FaultKind::ClockJump) {
            Some(sluice_bench_harness::local_cluster::find_libfaketime()?)
        } else {
            None
        },
    })?;
    cluster.wait_formed()?;
    let bootstrap = cluster.bootstrap();
    let mut topic_configs = std::collections::BTreeMap::new();
    if options.nodes >= 3 {
        topic_configs.insert("min.insync.replicas".to_string(), "2".to_string());
    }
    if options.faults.contains(&FaultKind::FallocateEnospc) {
        // A log reserves space (fallocate) in steps of 1 MiB and more: at this workload's rate
        // a fault of a second or two would rarely meet one. Small segments, and records padded
        // with a header of PADDING_BYTES, roll a segment about every half second per
        // partition, and each new segment reserves its first step.
        topic_configs.insert("segment.bytes".to_string(), SMALL_SEGMENT_BYTES.to_string());
        // (A batch must fit a segment.)
        topic_configs.insert(
            "max.message.bytes".to_string(),
            SMALL_SEGMENT_BYTES.to_string(),
        );
    }
    sluice_bench_harness::kafka::create_topics(
        &bootstrap,
        &Default::default(),
        &[TOPIC.to_string()],
        options.partitions as u32,
        options.nodes as u32,
        &topic_configs,
    )?;
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        events: Mutex::new(Vec::new()),
    });

    let stop_consumer = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (recorder, stop, bootstrap) =
            (recorder.clone(), stop_consumer.clone(), bootstrap.clone());
        Worker::spawn("the consumer", move || {
            consume(&bootstrap, &recorder, &stop)
        })
    };
    let all_producers =
        options.producers + options.plain_producers + options.transactional_producers;
    let producers: Vec<Worker> = (0..all_producers)
        .map(|producer| {
            let (recorder, bootstrap) = (recorder.clone(), bootstrap.clone());
            let (duration, interval) = (options.duration, options.interval);
            let transactional = producer >= options.producers + options.plain_producers;
            let idempotent = producer < options.producers || transactional;
            let padding = if options.faults.contains(&FaultKind::FallocateEnospc) {
                PADDING_BYTES
            } else {
                0
            };
            let interrupted = interrupted.clone();
            let spec = ProducerSpec {
                producer,
                idempotent,
                transactional,
                duration,
                interval,
                padding,
            };
            Worker::spawn("a producer", move || {
                produce(&bootstrap, &recorder, &spec, &interrupted)
            })
        })
        .collect();

    // The id whose coordinator `kill_coordinator` kills (the first transactional producer's).
    let transactional_id = (options.transactional_producers > 0)
        .then(|| transactional_id(options.producers + options.plain_producers));
    let faults = inject(
        &mut cluster,
        &schedule,
        &recorder,
        options.duration,
        &bootstrap,
        transactional_id.as_deref(),
        &interrupted,
    );
    if interrupted.load(Ordering::Acquire) {
        // Healed already: stop the workload, stop the nodes (which unmounts their disks) and
        // keep what was recorded.
        stop_consumer.store(true, Ordering::Release);
        for producer in producers {
            let _ = producer.finish(INTERRUPTED_WAIT);
        }
        let _ = consumer.finish(INTERRUPTED_WAIT);
        drop(cluster);
        let events = std::mem::take(&mut *recorder.events.lock().expect("recorder lock"));
        write_history(&options.out.join("history.jsonl"), &events)?;
        return Err(format!(
            "interrupted: every fault healed, every node stopped, every disk unmounted; the \
             history so far is in {} ({})",
            options.out.display(),
            faults.err().unwrap_or_default()
        ));
    }
    let mut outcome = faults;
    for producer in producers {
        outcome = outcome.and(producer.finish(options.duration + MESSAGE_TIMEOUT + SETTLE));
    }
    outcome = outcome.and_then(|()| wait_for_leaders(&bootstrap, options.partitions));
    stop_consumer.store(true, Ordering::Release);
    outcome = outcome.and(consumer.finish(SETTLE + SETTLE));
    outcome = outcome.and_then(|()| read_committed(&bootstrap, &recorder, options.partitions));
    outcome = outcome.and_then(|()| read_back(&bootstrap, &recorder, options.partitions));
    // Without a verdict (or with --keep-data): what the cluster says of the topic, the group
    // and the transactions, asked before the nodes stop (a consumer that does not end is a
    // stalled group, a last stable offset that stopped moving, or the client).
    let heading = match &outcome {
        Err(reason) => Some(format!("The run ended without a verdict: {reason}")),
        Ok(()) if options.keep_data => Some("At the end of the run (--keep-data)".to_string()),
        Ok(()) => None,
    };
    if let Some(heading) = heading {
        let state = options.out.join("cluster-state.txt");
        look_at_the_cluster(&cluster, &heading, &state, TOOL_WAIT);
    }
    let events = std::mem::take(&mut *recorder.events.lock().expect("recorder lock"));
    let verdict = outcome.is_ok().then(|| check(&events));
    // A run without a verdict, or an invalid one, keeps the nodes' disk images (their data)
    // to be looked at; so does --keep-data.
    if options.keep_data || verdict.as_ref().is_none_or(|v| !v.valid) {
        cluster.keep_disks();
    }
    drop(cluster);
    write_history(&options.out.join("history.jsonl"), &events)?;
    outcome?;
    let verdict = verdict.expect("checked when the run ended well");
    let mut producer_errors = std::collections::BTreeMap::new();
    let mut acks: std::collections::BTreeMap<i32, Vec<f64>> = Default::default();
    for event in &events {
        match event {
            Event::Unknown { error, .. } => *producer_errors.entry(error.clone()).or_insert(0) += 1,
            Event::Acked {
                t_ms, partition, ..
            } => acks.entry(*partition).or_default().push(*t_ms),
            _ => {}
        }
    }
    let produce_end = options.duration.as_secs_f64() * 1e3;
    let (mut gap, mut gap_from, mut gap_partition) = (0.0, 0.0, 0);
    for (partition, times) in &mut acks {
        times.sort_by(f64::total_cmp);
        for pair in times.windows(2).filter(|p| p[0] < produce_end) {
            if pair[1] - pair[0] > gap {
                (gap, gap_from, gap_partition) = (pair[1] - pair[0], pair[0], *partition);
            }
        }
    }
    let faults = fault_outcomes(&events, &acks);
    let report = Report {
        replay: options.replay_command(),
        seed: options.seed,
        nodes: options.nodes,
        duration_s: options.duration.as_secs_f64(),
        schedule,
        producer_errors,
        longest_ack_gap_ms: gap,
        longest_ack_gap_from_ms: gap_from,
        longest_ack_gap_partition: gap_partition,
        faults,
        verdict,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(options.out.join("verdict.json"), json)
        .map_err(|e| format!("write verdict.json: {e}"))?;
    std::fs::write(options.out.join("verdict.txt"), report.verdict.summary())
        .map_err(|e| format!("write verdict.txt: {e}"))?;
    crate::timeline::draw(&options.out.join("timeline.svg"), &events)?;
    if report.verdict.valid && !options.keep_data {
        for id in 0..options.nodes {
            let _ = std::fs::remove_dir_all(options.out.join(format!("nodes/node-{id}/data")));
        }
    }
    Ok(report)
}

/// How long one of [`look_at_the_cluster`]'s tools may take.
const TOOL_WAIT: Duration = Duration::from_secs(30);

/// Writes to `path` what `sluice`'s own tools report of the topic, the group and the
/// transactions, each tool's output under its command line. Best effort: a tool that fails or
/// hangs (killed after `wait`) is noted and the next one runs.
fn look_at_the_cluster(
    cluster: &LocalCluster,
    heading: &str,
    path: &std::path::Path,
    wait: Duration,
) {
    use std::io::Write;
    let bootstrap = cluster.bootstrap();
    let tools: [&[&str]; 6] = [
        &["cluster", "info"],
        &["topic", "describe", TOPIC],
        &["group", "describe", GROUP],
        &["txn", "list"],
        &["txn", "producers", TOPIC],
        &[
            "txn",
            "find-hanging",
            "--topic",
            TOPIC,
            "--older-than-ms",
            "0",
        ],
    ];
    let written = std::fs::File::create(path).and_then(|mut file| {
        writeln!(file, "{heading}")?;
        for args in tools {
            writeln!(
                file,
                "\n$ sluice {} --bootstrap {bootstrap}",
                args.join(" ")
            )?;
            let outcome = run_tool(cluster.binary(), args, &bootstrap, &file, wait)?;
            writeln!(file, "({outcome})")?;
        }
        Ok(())
    });
    if let Err(e) = written {
        eprintln!("write {}: {e}", path.display());
    }
}

/// Runs one tool with its stdout and stderr appended to `file`; how it ended (killed after
/// `wait`).
fn run_tool(
    binary: &std::path::Path,
    args: &[&str],
    bootstrap: &str,
    file: &std::fs::File,
    wait: Duration,
) -> std::io::Result<String> {
    let spawned = std::process::Command::new(binary)
        .args(args)
        .args(["--bootstrap", bootstrap])
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file.try_clone()?)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Ok(format!("not started: {e}")),
    };
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.to_string());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(format!("killed: no answer within {wait:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Injects each planned fault at its time and heals it after its hold. Whatever happens, every
/// node runs unpaused when this returns (a node that cannot restart is an error).
fn inject(
    cluster: &mut LocalCluster,
    schedule: &[Planned],
    recorder: &Recorder,
    duration: Duration,
    bootstrap: &str,
    transactional_id: Option<&str>,
    interrupted: &AtomicBool,
) -> Result<(), String> {
    let metadata: BaseConsumer = client_config(bootstrap)
        .create()
        .map_err(|e| format!("metadata client: {e}"))?;
    let start = recorder.start;
    // Returns early once the run is interrupted.
    let sleep_until = |ms: u64| {
        let at = start + Duration::from_millis(ms);
        while let Some(left) = at.checked_duration_since(Instant::now()) {
            if interrupted.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    };
    let mut outcome = Ok(());
    for fault in schedule {
        sleep_until(fault.at_ms);
        if interrupted.load(Ordering::Acquire) {
            outcome = Err("interrupted".to_string());
            break;
        }
        let node = match fault.target {
            Target::Node(node) => node,
            // No leader known (an election running): the partition's first replica's node.
            Target::LeaderOf(partition) => leader_of(&metadata, partition)
                .filter(|&node| node < cluster.len())
                .unwrap_or(partition as usize % cluster.len()),
            // No controller known: the first node.
            Target::Controller => cluster.controller().unwrap_or(0),
            // No coordinator known (its partition's election running): the first node.
            Target::TransactionCoordinator => transactional_id
                .and_then(|id| coordinator_of(cluster, id))
                .filter(|&node| node < cluster.len())
                .unwrap_or(0),
        };
        // A move fault's partitions, with the replica lists to move them back to.
        let mut moved_off = BTreeMap::new();
        let (action, heal) = match fault.kind {
            FaultKind::Move => {
                let held = match replica_lists(&metadata) {
                    Ok(lists) => lists,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                };
                let node_id = node as i32;
                moved_off = held
                    .into_iter()
                    .filter(|(_, replicas)| replicas.contains(&node_id) && replicas.len() > 1)
                    .collect();
                let without: BTreeMap<i32, Vec<i32>> = moved_off
                    .iter()
                    .map(|(p, replicas)| {
                        let rest = replicas.iter().copied().filter(|b| *b != node_id);
                        (*p, rest.collect())
                    })
                    .collect();
                if let Err(e) = reassign(cluster, &without) {
                    outcome = Err(format!("moving partitions off node {node}: {e}"));
                    break;
                }
                ("move", "moved_back")
            }
            FaultKind::RemoveVoter => {
                if let Err(e) = change_voter(cluster, node, false) {
                    outcome = Err(format!("removing node {node} from the voters: {e}"));
                    break;
                }
                ("remove_voter", "voter_back")
            }
            FaultKind::Kill | FaultKind::KillController | FaultKind::KillCoordinator => {
                cluster.kill(node);
                (fault.kind.name(), "restart")
            }
            FaultKind::WriteEio
            | FaultKind::FdatasyncEio
            | FaultKind::FallocateEnospc
            | FaultKind::SlowDisk => {
                let spec = fault.kind.fault_points().expect("a fault-point fault");
                if let Err(e) = cluster.arm_faults(node, spec) {
                    outcome = Err(format!("arming node {node}'s fault points: {e}"));
                    break;
                }
                let heal = if restarts_after(fault.kind, cluster.len()) {
                    "restart"
                } else {
                    "disarmed"
                };
                (fault.kind.name(), heal)
            }
            FaultKind::Pause => {
                cluster.pause(node);
                ("pause", "resume")
            }
            FaultKind::DiskFull => {
                if let Err(e) = cluster.fill_disk(node) {
                    outcome = Err(format!("filling node {node}'s disk: {e}"));
                    break;
                }
                ("disk_full", "disk_freed")
            }
            FaultKind::Partition | FaultKind::Bridge => {
                let others: Vec<usize> = match fault.kind {
                    FaultKind::Bridge => vec![(node + 1) % cluster.len()],
                    _ => (0..cluster.len()).filter(|&n| n != node).collect(),
                };
                for other in others {
                    if let Err(e) = cluster.cut(node, other) {
                        outcome = Err(format!("cutting node {node} off: {e}"));
                    }
                }
                if outcome.is_err() {
                    break;
                }
                match fault.kind {
                    FaultKind::Bridge => ("bridge", "links_healed"),
                    _ => ("partition", "links_healed"),
                }
            }
            FaultKind::ClockJump => {
                let seconds = if fault.at_ms % 2 == 0 {
                    CLOCK_JUMP_S
                } else {
                    -CLOCK_JUMP_S
                };
                if let Err(e) = cluster.set_clock_offset(node, seconds) {
                    outcome = Err(format!("jumping node {node}'s clock: {e}"));
                    break;
                }
                ("clock_jump", "clock_back")
            }
            FaultKind::SlowLink | FaultKind::LossyLink => {
                for other in (0..cluster.len()).filter(|&n| n != node) {
                    let applied = match fault.kind {
                        FaultKind::SlowLink => cluster.delay_link(node, other, LINK_DELAY),
                        _ => cluster.make_link_lossy(node, other, LINK_RESETS_PER_MILLE),
                    };
                    if let Err(e) = applied {
                        outcome = Err(format!("degrading node {node}'s links: {e}"));
                    }
                }
                if outcome.is_err() {
                    break;
                }
                (fault.kind.name(), "links_healed")
            }
        };
        let injected_ms = recorder.now_ms();
        recorder.push(Event::Fault {
            t_ms: injected_ms,
            action: action.into(),
            node,
        });
        // Held for its whole length even when injected late (the heal of the fault before
        // took longer than its gap, e.g. a restart on a loaded machine), so every planned
        // fault really acts; the faults after it move later with it.
        sleep_until((injected_ms as u64).max(fault.at_ms) + fault.hold_ms);
        let healed = match fault.kind {
            FaultKind::Move => reassign(cluster, &moved_off),
            FaultKind::RemoveVoter => change_voter(cluster, node, true),
            FaultKind::Kill | FaultKind::KillController | FaultKind::KillCoordinator => {
                cluster.restart(node)
            }
            kind if restarts_after(kind, cluster.len()) => {
                cluster.disarm_faults(node).and_then(|()| {
                    if !cluster.stop(node, STOP_GRACE) {
                        eprintln!("chaos: node {node} ignored SIGTERM for {STOP_GRACE:?}");
                    }
                    cluster.restart(node)
                })
            }
            FaultKind::WriteEio
            | FaultKind::FdatasyncEio
            | FaultKind::FallocateEnospc
            | FaultKind::SlowDisk => cluster.disarm_faults(node),
            FaultKind::Pause => {
                cluster.resume(node);
                Ok(())
            }
            FaultKind::DiskFull => cluster.free_disk(node),
            FaultKind::Partition
            | FaultKind::Bridge
            | FaultKind::SlowLink
            | FaultKind::LossyLink => {
                cluster.heal_links();
                Ok(())
            }
            FaultKind::ClockJump => cluster.set_clock_offset(node, 0),
        };
        recorder.push(Event::Fault {
            t_ms: recorder.now_ms(),
            action: heal.into(),
            node,
        });
        if let Err(e) = healed {
            outcome = Err(format!("healing {action} of node {node}: {e}"));
            break;
        }
    }
    sleep_until(duration.as_millis() as u64);
    cluster.heal_links();
    for id in 0..cluster.len() {
        cluster.resume(id);
        outcome = outcome.and(cluster.free_disk(id));
        outcome = outcome.and(cluster.disarm_faults(id));
        if cluster.has_fake_clock() {
            outcome = outcome.and(cluster.set_clock_offset(id, 0));
        }
        if !cluster.is_running(id) {
            outcome = outcome.and(cluster.restart(id));
        }
    }
    outcome
}

/// The node leading `partition` of the topic, as Metadata says (node ids are node indexes).
fn leader_of(metadata: &BaseConsumer, partition: i32) -> Option<usize> {
    let answer = metadata
        .fetch_metadata(Some(TOPIC), Duration::from_secs(2))
        .ok()?;
    let topic = answer.topics().iter().find(|t| t.name() == TOPIC)?;
    let leader = topic
        .partitions()
        .iter()
        .find(|p| p.id() == partition)?
        .leader();
    usize::try_from(leader).ok()
}

/// The node coordinating `transactional_id`'s transactions, as the first running node that
/// answers FindCoordinator names it.
fn coordinator_of(cluster: &LocalCluster, transactional_id: &str) -> Option<usize> {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    let request = FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_coordinator_keys(vec![StrBytes::from_string(transactional_id.to_string())]);
    (0..cluster.len())
        .filter(|&node| cluster.is_running(node) && !cluster.is_paused(node))
        .find_map(|node| {
            let mut connection = sluice_bench_harness::wire::Connection::connect(
                &cluster.kafka_address(node).to_string(),
            )
            .ok()?;
            let answer: FindCoordinatorResponse = connection
                .call(ApiKey::FindCoordinator, 4, &request, Duration::from_secs(2))
                .ok()?;
            let coordinator = answer.coordinators.first()?;
            (coordinator.error_code == 0)
                .then(|| usize::try_from(coordinator.node_id.0).ok())
                .flatten()
        })
}

/// The workload topic's replica lists by partition, as Metadata says.
fn replica_lists(metadata: &BaseConsumer) -> Result<BTreeMap<i32, Vec<i32>>, String> {
    let answer = metadata
        .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
        .map_err(|e| format!("metadata of {TOPIC}: {e}"))?;
    let topic = answer
        .topics()
        .iter()
        .find(|t| t.name() == TOPIC)
        .ok_or_else(|| format!("no topic {TOPIC} in metadata"))?;
    Ok(topic
        .partitions()
        .iter()
        .map(|p| (p.id(), p.replicas().to_vec()))
        .collect())
}

/// How long a move fault keeps asking for its reassignments (no controller known, a forward
/// that timed out) before the run fails.
const REASSIGN_WITHIN: Duration = Duration::from_secs(30);

/// Asks for the workload topic's partitions to move to `targets` (AlterPartitionReassignments,
/// through each running node in turn: any node forwards it to the controller), retrying what
/// a client would retry; answered once the controller recorded the moves, which then go on
/// in the background.
fn reassign(cluster: &LocalCluster, targets: &BTreeMap<i32, Vec<i32>>) -> Result<(), String> {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    use kafka_protocol::messages::{
        AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId,
        TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    // NOT_CONTROLLER, REQUEST_TIMED_OUT, and the answers of a node still starting.
    const RETRIABLE: [i16; 4] = [41, 7, 5, 15];
    if targets.is_empty() {
        return Ok(());
    }
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(20_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(
                targets
                    .iter()
                    .map(|(p, replicas)| {
                        ReassignablePartition::default()
                            .with_partition_index(*p)
                            .with_replicas(Some(replicas.iter().map(|b| BrokerId(*b)).collect()))
                    })
                    .collect(),
            )]);
    let deadline = Instant::now() + REASSIGN_WITHIN;
    let mut last = String::new();
    for attempt in 0.. {
        if Instant::now() >= deadline {
            break;
        }
        let node = attempt % cluster.len();
        if !cluster.is_running(node) || cluster.is_paused(node) {
            continue;
        }
        let answer = sluice_bench_harness::wire::Connection::connect(
            &cluster.kafka_address(node).to_string(),
        )
        .and_then(|mut connection| {
            connection.call::<_, AlterPartitionReassignmentsResponse>(
                ApiKey::AlterPartitionReassignments,
                0,
                &request,
                Duration::from_secs(25),
            )
        });
        let codes: Vec<(i16, String)> = match answer {
            Ok(answer) if answer.error_code != 0 => vec![(
                answer.error_code,
                answer
                    .error_message
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )],
            Ok(answer) => answer
                .responses
                .iter()
                .flat_map(|t| &t.partitions)
                .filter(|p| p.error_code != 0)
                .map(|p| {
                    let message = p.error_message.as_ref().map(|m| m.to_string());
                    (p.error_code, message.unwrap_or_default())
                })
                .collect(),
            Err(e) => vec![(RETRIABLE[0], e)],
        };
        if codes.is_empty() {
            return Ok(());
        }
        last = format!("{codes:?}");
        if codes.iter().any(|(code, _)| !RETRIABLE.contains(code)) {
            return Err(format!("AlterPartitionReassignments refused: {last}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "AlterPartitionReassignments not accepted within {REASSIGN_WITHIN:?}: {last}"
    ))
}

/// How long a change of the controller's voters may take, sent and carried out.
const VOTER_CHANGE_WITHIN: Duration = Duration::from_secs(60);

/// Makes `node` a controller voter again (`add`) or a learner (RemoveRaftVoter), through
/// whichever running node answers, and waits until DescribeQuorum shows the change made.
/// Retried while the controller is away or busy; a change already made counts as done.
fn change_voter(cluster: &LocalCluster, node: usize, add: bool) -> Result<(), String> {
    use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    use kafka_protocol::messages::{
        AddRaftVoterRequest, AddRaftVoterResponse, ApiKey, DescribeQuorumRequest,
        DescribeQuorumResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use sluice_bench_harness::wire::Connection;
    // NOT_CONTROLLER, REQUEST_TIMED_OUT, LEADER_NOT_AVAILABLE, COORDINATOR_NOT_AVAILABLE and
    // INVALID_REQUEST (the voters changed meanwhile: computed again on the next try).
    const RETRIABLE: [i16; 5] = [41, 7, 5, 15, 42];
    // DUPLICATE_VOTER when adding, VOTER_NOT_FOUND when removing: already so.
    let done_already = if add { 126 } else { 127 };
    let id = node as i32;
    let deadline = Instant::now() + VOTER_CHANGE_WITHIN;
    let mut last = String::new();
    let mut sent = false;
    for attempt in 0.. {
        if Instant::now() >= deadline {
            break;
        }
        let via = attempt % cluster.len();
        if !cluster.is_running(via) || cluster.is_paused(via) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut connection = match Connection::connect(&cluster.kafka_address(via).to_string()) {
            Ok(connection) => connection,
            Err(e) => {
                last = e;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if !sent {
            let answer = if add {
                connection
                    .call::<_, AddRaftVoterResponse>(
                        ApiKey::AddRaftVoter,
                        0,
                        &AddRaftVoterRequest::default().with_voter_id(id),
                        Duration::from_secs(25),
                    )
                    .map(|a| (a.error_code, a.error_message))
            } else {
                connection
                    .call::<_, RemoveRaftVoterResponse>(
                        ApiKey::RemoveRaftVoter,
                        0,
                        &RemoveRaftVoterRequest::default().with_voter_id(id),
                        Duration::from_secs(25),
                    )
                    .map(|a| (a.error_code, a.error_message))
            };
            match answer {
                Ok((0, _)) => sent = true,
                Ok((code, _)) if code == done_already => sent = true,
                Ok((code, message)) => {
                    last = format!("error {code}: {}", message.unwrap_or_default());
                    if !RETRIABLE.contains(&code) {
                        return Err(last);
                    }
                }
                Err(e) => last = e,
            }
            if !sent {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
        let voters: Result<Vec<i32>, String> = connection
            .call::<_, DescribeQuorumResponse>(
                ApiKey::DescribeQuorum,
                1,
                &request,
                Duration::from_secs(5),
            )
            .and_then(|answer| {
                let partition = answer
                    .topics
                    .first()
                    .and_then(|t| t.partitions.first())
                    .ok_or_else(|| format!("DescribeQuorum answered no partition: {answer:?}"))?;
                if partition.error_code != 0 {
                    return Err(format!(
                        "DescribeQuorum: error {} {:?}",
                        partition.error_code, partition.error_message
                    ));
                }
                Ok(partition
                    .current_voters
                    .iter()
                    .map(|v| v.replica_id.0)
                    .collect())
            });
        match voters {
            Ok(voters) if voters.contains(&id) == add => return Ok(()),
            Ok(voters) => last = format!("voters still {voters:?}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "node {node} not {} the voters within {VOTER_CHANGE_WITHIN:?}: {last}",
        if add { "among" } else { "out of" }
    ))
}

/// Whether healing a fault-point fault takes a restart of the node, as an operator's: a log
/// whose write or fdatasync failed stays offline until the broker restarts (its page state is
/// unknown), and so does a replica whose log refused a write for space (its Raft state no
/// longer matches its log); a single broker's log refuses the append for space and goes on.
fn restarts_after(kind: FaultKind, nodes: usize) -> bool {
    match kind {
        FaultKind::WriteEio | FaultKind::FdatasyncEio => true,
        FaultKind::FallocateEnospc => nodes > 1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_s_output_is_kept_a_tool_that_hangs_is_killed_and_a_missing_one_noted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.txt");
        let file = std::fs::File::create(&path).expect("create");
        let sh = std::path::Path::new("/bin/sh");
        // `sh -c SCRIPT --bootstrap ADDRESS`: the appended arguments become $0 and $1.
        let ended =
            run_tool(sh, &["-c", "echo said $1"], "127.0.0.1:1", &file, TOOL_WAIT).expect("run");
        assert!(ended.contains("exit status: 0"), "{ended}");
        let started = Instant::now();
        let killed = run_tool(
            sh,
            &["-c", "echo waiting; exec sleep 60"],
            "x",
            &file,
            Duration::from_millis(300),
        )
        .expect("run");
        assert!(killed.starts_with("killed"), "{killed}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let missing = std::path::Path::new("/nonexistent/sluice");
        let not_started = run_tool(missing, &["txn", "list"], "x", &file, TOOL_WAIT).expect("run");
        assert!(not_started.starts_with("not started"), "{not_started}");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "said 127.0.0.1:1\nwaiting\n");
    }

    #[test]
    fn each_fault_gets_the_longest_acknowledgement_gap_that_overlaps_it() {
        let fault = |t_ms: f64, action: &str| Event::Fault {
            t_ms,
            action: action.into(),
            node: 1,
        };
        let events = vec![
            fault(100.0, "kill"),
            fault(300.0, "restart"),
            fault(1000.0, "pause"),
            fault(1100.0, "resume"),
        ];
        // Acknowledgements every 10 ms, but partition 0 waits 90 -> 250 (across the kill) and
        // partition 1 waits 1000 -> 1090 (the pause).
        let every_10 = |from: u32, to: u32| (from..=to).step_by(10).map(f64::from);
        let mut acks = std::collections::BTreeMap::new();
        acks.insert(
            0,
            every_10(0, 90)
                .chain(every_10(250, 2000))
                .collect::<Vec<_>>(),
        );
        acks.insert(1, every_10(0, 1000).chain(every_10(1090, 2000)).collect());
        let outcomes = fault_outcomes(&events, &acks);
        assert_eq!(outcomes.len(), 2);
        assert_eq!((outcomes[0].at_ms, outcomes[0].healed_ms), (100.0, 300.0));
        assert_eq!(outcomes[0].action, "kill");
        assert_eq!(outcomes[0].longest_ack_wait_ms, 160.0);
        assert_eq!(outcomes[1].action, "pause");
        assert_eq!(outcomes[1].longest_ack_wait_ms, 90.0);
    }
}
