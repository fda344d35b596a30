//! One chaos run (`sluice chaos run`): real nodes, a logged workload, the seed's faults, a
//! final read-back, the checker's verdict.
//!
//! The run: start the nodes ([`LocalCluster`]), create the topic (replicated to every node,
//! `min.insync.replicas` 2 on three nodes), start the workload, inject the schedule's faults
//! (each healed before the next), stop producing at the end of the duration and let the
//! producers deliver or give up (message timeout 30 s), wait until every partition has a
//! leader, stop the consumer with a last synchronous commit, read the group's committed offsets
//! and every partition from its start to its high watermark with fresh clients, stop the
//! nodes, check. The workload: `producers` librdkafka producers (idempotent, acks=all) and
//! `plain_producers` without idempotence (acks=all, librdkafka's default retries), one
//! record every `interval` each, keyed by the value so records spread over the partitions) and
//! one consumer in a group, committing asynchronously every 500 ms; every operation is recorded
//! with its time and outcome.
//!
//! Invariants: every node process is stopped on every path out ([`LocalCluster`]'s drop),
//! Ctrl-C and SIGTERM included (they end the run through its healing path; a second one ends
//! the process at once); a paused node is resumed before anything waits on the cluster; every
//! wait is bounded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;
use sluice_bench_harness::local_cluster::{ClusterOptions, LocalCluster};

use crate::checker::{check, Verdict};
use crate::history::{record_value, write_history, Event};
use crate::schedule::{plan, FaultKind, Planned, Target};

const TOPIC: &str = "chaos";
const GROUP: &str = "chaos";
/// How long a producer keeps trying to deliver a record (librdkafka `message.timeout.ms`;
/// Kafka's `delivery.timeout.ms` default). Long on purpose: once an idempotent producer's
/// records time out, librdkafka bumps its epoch and renumbers the records it still holds,
/// possibly persisted ones included (its INTRODUCTION.md, "Message timeout considerations"),
/// so after a timeout a duplicate can be the client's own doing. With 30 s, two single-broker
/// runs on a machine loaded by a build (seeds 36 and 40 of eight faults, 30 s) timed out
/// 1,438 and 4,292 records and held 82 and 55 idempotent duplicates (not reproduced in 14
/// replays without that load; the records' epochs were not kept).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of every wait after the workload (delivery, settling, reading back).
const SETTLE: Duration = Duration::from_secs(60);
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// After an interruption, how long the workload gets to stop.
const INTERRUPTED_WAIT: Duration = Duration::from_secs(5);

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
/// `segment.bytes` of the topic when fallocates fail (see [`run`]).
const SMALL_SEGMENT_BYTES: u32 = 64 << 10;
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
             --producers {} --plain-producers {} --interval-ms {}",
            self.nodes,
            faults.join(","),
            self.seed,
            self.duration.as_secs(),
            self.partitions,
            self.producers,
            self.plain_producers,
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

/// A workload thread whose end is awaited with a bound: a librdkafka client can block for long
/// in its drop when no broker answers (a consumer leaving its group), and a run must end anyway.
/// A thread that overstays is left behind (the process ends soon after).
struct Worker {
    name: &'static str,
    done: std::sync::mpsc::Receiver<Result<(), String>>,
}

impl Worker {
    fn spawn(
        name: &'static str,
        work: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Worker {
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err("panicked".into()));
            let _ = tx.send(outcome);
        });
        Worker { name, done }
    }

    fn finish(self, within: Duration) -> Result<(), String> {
        match self.done.recv_timeout(within) {
            Ok(outcome) => outcome.map_err(|e| format!("{}: {e}", self.name)),
            Err(_) => Err(format!("{} did not end within {within:?}", self.name)),
        }
    }
}

/// The run's shared event log.
struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    fn push(&self, event: Event) {
        self.events.lock().expect("recorder lock").push(event);
    }
}

struct ProducerLog {
    recorder: Arc<Recorder>,
    producer: u32,
    /// Print librdkafka's log lines ([`CLIENT_DEBUG_VAR`]).
    debug: bool,
}

/// Names librdkafka debug contexts (e.g. `eos,msg`) for the producers; their log lines then go
/// to stderr, each with the run's clock and the producer's number.
const CLIENT_DEBUG_VAR: &str = "SLUICE_CHAOS_CLIENT_DEBUG";

impl ClientContext for ProducerLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        if !self.debug {
            return;
        }
        eprintln!(
            "{:.0} ms p{} {level:?} {facility} {message}",
            self.recorder.now_ms(),
            self.producer
        );
    }
}

impl ProducerContext for ProducerLog {
    type DeliveryOpaque = Box<String>;

    fn delivery(&self, result: &DeliveryResult<'_>, value: Self::DeliveryOpaque) {
        let t_ms = self.recorder.now_ms();
        let event = match result {
            Ok(message) => Event::Acked {
                t_ms,
                producer: self.producer,
                value: *value,
                partition: message.partition(),
                offset: message.offset(),
            },
            Err((error, _)) => Event::Unknown {
                t_ms,
                producer: self.producer,
                value: *value,
                error: error.to_string(),
            },
        };
        self.recorder.push(event);
    }
}

struct ConsumerLog {
    recorder: Arc<Recorder>,
}

impl ClientContext for ConsumerLog {}

impl ConsumerContext for ConsumerLog {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if result.is_ok() {
            record_commits(&self.recorder, offsets);
        }
    }
}

fn record_commits(recorder: &Recorder, offsets: &TopicPartitionList) {
    let t_ms = recorder.now_ms();
    for element in offsets.elements() {
        if let Offset::Offset(offset) = element.offset() {
            recorder.push(Event::Committed {
                t_ms,
                partition: element.partition(),
                offset,
            });
        }
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // A killed node comes back within seconds: librdkafka's default backoff (up to 10 s)
        // would keep clients away from it long after.
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "1000");
    config
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
    let producers: Vec<Worker> = (0..options.producers + options.plain_producers)
        .map(|producer| {
            let (recorder, bootstrap) = (recorder.clone(), bootstrap.clone());
            let (duration, interval) = (options.duration, options.interval);
            let idempotent = producer < options.producers;
            let padding = if options.faults.contains(&FaultKind::FallocateEnospc) {
                PADDING_BYTES
            } else {
                0
            };
            let interrupted = interrupted.clone();
            Worker::spawn("a producer", move || {
                produce(
                    &bootstrap,
                    &recorder,
                    producer,
                    idempotent,
                    duration,
                    interval,
                    padding,
                    &interrupted,
                )
            })
        })
        .collect();

    let faults = inject(
        &mut cluster,
        &schedule,
        &recorder,
        options.duration,
        &bootstrap,
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
    drop(cluster);
    let events = std::mem::take(&mut *recorder.events.lock().expect("recorder lock"));
    write_history(&options.out.join("history.jsonl"), &events)?;
    outcome?;

    let verdict = check(&events);
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

/// Injects each planned fault at its time and heals it after its hold. Whatever happens, every
/// node runs unpaused when this returns (a node that cannot restart is an error).
fn inject(
    cluster: &mut LocalCluster,
    schedule: &[Planned],
    recorder: &Recorder,
    duration: Duration,
    bootstrap: &str,
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
        };
        let (action, heal) = match fault.kind {
            FaultKind::Kill | FaultKind::KillController => {
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
            FaultKind::Kill | FaultKind::KillController => cluster.restart(node),
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

/// Producer `producer`'s loop (idempotent or plain): a record every `interval` until `duration` has passed since the
/// run started, then delivery of what is outstanding (bounded by the message timeout).
#[allow(clippy::too_many_arguments)]
fn produce(
    bootstrap: &str,
    recorder: &Arc<Recorder>,
    producer: u32,
    idempotent: bool,
    duration: Duration,
    interval: Duration,
    padding: usize,
    interrupted: &AtomicBool,
) -> Result<(), String> {
    let pad = vec![b'.'; padding];
    recorder.push(Event::Producer {
        producer,
        idempotent,
    });
    let mut config = client_config(bootstrap);
    if padding > 0 {
        // Batches must stay below the topic's small max.message.bytes (MESSAGE_TOO_LARGE is
        // permanent, and would fail records and bump the producer's epoch).
        config.set("batch.size", (SMALL_SEGMENT_BYTES / 4).to_string());
    }
    let debug = std::env::var(CLIENT_DEBUG_VAR).ok();
    if let Some(contexts) = &debug {
        config
            .set("debug", contexts)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let client: ThreadedProducer<ProducerLog> = config
        .set("enable.idempotence", idempotent.to_string())
        .set("acks", "all")
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(ProducerLog {
            recorder: recorder.clone(),
            producer,
            debug: debug.is_some(),
        })
        .map_err(|e| format!("producer {producer}: {e}"))?;
    let end = recorder.start + duration;
    let mut seq = 0u64;
    let mut next = Instant::now();
    while Instant::now() < end && !interrupted.load(Ordering::Acquire) {
        let value = record_value(producer, seq);
        let mut record = BaseRecord::with_opaque_to(TOPIC, Box::new(value.clone()))
            .key(value.as_bytes())
            .payload(value.as_bytes());
        if padding > 0 {
            record = record.headers(rdkafka::message::OwnedHeaders::new().insert(
                rdkafka::message::Header {
                    key: "pad",
                    value: Some(&pad),
                },
            ));
        }
        let t_ms = recorder.now_ms();
        // A full local queue (the cluster down for a while) refuses the record: it is not
        // recorded as sent, and the same value goes again at the next tick.
        if client.send(record).is_ok() {
            recorder.push(Event::Send {
                t_ms,
                producer,
                value,
            });
            seq += 1;
        }
        next += interval;
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
    let deliver_within = if interrupted.load(Ordering::Acquire) {
        INTERRUPTED_WAIT
    } else {
        MESSAGE_TIMEOUT + Duration::from_secs(5)
    };
    client
        .flush(deliver_within)
        .map_err(|e| format!("producer {producer}: records still undelivered: {e}"))
}

/// The group's consumer: reads and records until told to stop, committing every
/// [`COMMIT_EVERY`]; a last synchronous commit at the end.
fn consume(bootstrap: &str, recorder: &Arc<Recorder>, stop: &AtomicBool) -> Result<(), String> {
    let consumer: BaseConsumer<ConsumerLog> = client_config(bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(ConsumerLog {
            recorder: recorder.clone(),
        })
        .map_err(|e| format!("consumer: {e}"))?;
    consumer
        .subscribe(&[TOPIC])
        .map_err(|e| format!("subscribe: {e}"))?;
    let mut last_commit = Instant::now();
    let mut read_any = false;
    while !stop.load(Ordering::Acquire) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            record_read(recorder, &message);
            read_any = true;
        }
        if read_any && last_commit.elapsed() >= COMMIT_EVERY {
            // Fails while no coordinator answers: the next one tries again.
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    if !read_any {
        return Ok(());
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        // Only partitions the consumer has a position in (after a rebalance, an assigned
        // partition it has not fetched from yet has none, and librdkafka refuses the whole
        // commit with NoOffset).
        let mut position = TopicPartitionList::new();
        for element in consumer
            .position()
            .map_err(|e| format!("consumer position: {e}"))?
            .elements()
        {
            if let Offset::Offset(at) = element.offset() {
                position
                    .add_partition_offset(element.topic(), element.partition(), Offset::Offset(at))
                    .map_err(|e| e.to_string())?;
            }
        }
        if position.count() == 0 {
            return Ok(());
        }
        match consumer.commit(&position, CommitMode::Sync) {
            Ok(()) => {
                record_commits(recorder, &position);
                // Serve the callbacks of async commits still in flight.
                let _ = consumer.poll(Duration::from_millis(100));
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("the consumer's last commit: {e}"))
            }
            // Polling lets the consumer rejoin when the coordinator no longer knows it (a
            // restarted single broker does not keep group membership: UNKNOWN_MEMBER_ID); what
            // it reads meanwhile is recorded as usual.
            Err(_) => {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                    record_read(recorder, &message);
                }
            }
        }
    }
}

/// A record's value as the workload wrote it (`p<producer>-<seq>`).
fn value_of(message: &impl Message) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into()
}

/// Records what the group's consumer read.
fn record_read(recorder: &Recorder, message: &impl Message) {
    recorder.push(Event::Read {
        t_ms: recorder.now_ms(),
        consumer: 0,
        partition: message.partition(),
        offset: message.offset(),
        value: value_of(message),
    });
}

/// Waits until Metadata names a leader for every partition.
fn wait_for_leaders(bootstrap: &str, partitions: i32) -> Result<(), String> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .create()
        .map_err(|e| format!("metadata client: {e}"))?;
    let deadline = Instant::now() + SETTLE;
    loop {
        let led = consumer
            .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics().iter().find(|t| t.name() == TOPIC).map(|t| {
                    t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if led {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not every partition of {TOPIC} has a leader after {SETTLE:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Records the group's committed offsets as a fresh client reads them.
fn read_committed(bootstrap: &str, recorder: &Recorder, partitions: i32) -> Result<(), String> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("committed-offsets client: {e}"))?;
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(TOPIC, partition);
    }
    let deadline = Instant::now() + SETTLE;
    let committed = loop {
        match consumer.committed_offsets(wanted.clone(), Duration::from_secs(10)) {
            Ok(committed) => break committed,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("the group's committed offsets: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    for element in committed.elements() {
        if let Offset::Offset(offset) = element.offset() {
            recorder.push(Event::FinalCommitted {
                partition: element.partition(),
                offset,
            });
        }
    }
    Ok(())
}

/// Reads every partition from its start to its high watermark and records what it holds.
fn read_back(bootstrap: &str, recorder: &Recorder, partitions: i32) -> Result<(), String> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", "chaos-read-back")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| format!("read-back client: {e}"))?;
    let deadline = Instant::now() + SETTLE;
    let mut ends = Vec::new();
    for partition in 0..partitions {
        let high = loop {
            match consumer.fetch_watermarks(TOPIC, partition, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("the high watermark of partition {partition}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        ends.push(high);
    }
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assign: {e}"))?;
    // Where the client's position stands per partition: past the last record read, and past
    // control batches (which it skips), so it reaches the high watermark even when the log ends
    // with one.
    let mut next: Vec<i64> = vec![0; partitions as usize];
    let mut last_position_check = Instant::now();
    while next.iter().zip(&ends).any(|(n, end)| n < end) {
        if Instant::now() >= deadline {
            return Err(format!(
                "reading back: reached {next:?} of the high watermarks {ends:?} in {SETTLE:?}"
            ));
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let partition = message.partition();
            if message.offset() < ends[partition as usize] {
                next[partition as usize] = next[partition as usize].max(message.offset() + 1);
                recorder.push(Event::Final {
                    partition,
                    offset: message.offset(),
                    value: value_of(&message),
                });
            }
        }
        if last_position_check.elapsed() >= Duration::from_millis(200) {
            last_position_check = Instant::now();
            if let Ok(position) = consumer.position() {
                for element in position.elements() {
                    if let Offset::Offset(at) = element.offset() {
                        let partition = element.partition() as usize;
                        next[partition] = next[partition].max(at);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
