//! Leader failover time on a local cluster (`sluice bench failover`).
//!
//! Starts N `sluice serve` processes on loopback (this binary, `--cores 1` each, every node a
//! seed), creates one topic of one partition replicated to every node, and runs a librdkafka
//! producer (acks=all, idempotent, library defaults otherwise: what an application gets) that
//! sends one record every `interval`. Each round waits until the partition is fully in sync and
//! acknowledgements flow, SIGKILLs the partition's leader and measures **kill → the first
//! acknowledgement of a record produced after the kill**: such a record can only be
//! acknowledged by a new leader, so the span covers the client noticing the dead connection,
//! the election, the new leader's first commit and the client finding it. The killed node is
//! then restarted on its ports and directory and caught up before the next round.
//!
//! Invariants: every process started is stopped (SIGTERM, then SIGKILL) on every path out,
//! success or error; the data directory is removed at the end unless asked to keep it; every
//! wait is bounded and fails with what it waited for.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;

use crate::local_cluster::{ClusterOptions, LocalCluster};

/// The nodes' `replica.lag.time.max.ms`: short, so a restarted node counts in sync only once
/// it has caught up (a new leader starts with every replica in sync, and keeps a lagging one
/// there for this long), and a round only starts when the cluster really is whole.
const REPLICA_LAG: Duration = Duration::from_millis(1000);

/// What `sluice bench failover` does.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub kills: usize,
    /// Pause between two records the producer sends.
    pub interval: Duration,
    /// Where the nodes keep their data and logs (created; removed at the end unless `keep`).
    pub dir: PathBuf,
    pub keep: bool,
    /// Arguments every node gets after the ones this module sets.
    pub node_args: Vec<String>,
    /// librdkafka `debug` contexts for the producer (its log goes to stderr).
    pub client_debug: Option<String>,
}

/// The outcome, printed as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub kills: usize,
    pub interval_ms: f64,
    /// Kill → first acknowledgement on the new leader, per round, in milliseconds.
    pub failover_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Kill → the first Metadata answer from a surviving node (asked on the wire in a loop)
    /// naming another leader: the cluster's share of the failover; the rest is the producer
    /// finding it (librdkafka's metadata refresh backoff). Missing when the producer was
    /// acknowledged first.
    pub metadata_ms: Vec<f64>,
    pub metadata_p50_ms: f64,
    pub metadata_p99_ms: f64,
    /// Records acknowledged and delivery failures over the whole run (failures should be 0:
    /// the producer retries through every failover).
    pub acknowledged: u64,
    pub delivery_failures: u64,
}

/// Producer-side state the delivery callback and the round loop share.
#[derive(Default)]
struct Tally {
    epoch: Option<Instant>,
    /// Nanoseconds since `epoch` of the current kill; `u64::MAX` between rounds.
    kill_ns: AtomicU64,
    /// Nanoseconds since `epoch` of the first acknowledgement of a record sent after the kill;
    /// 0 until it comes.
    first_ack_ns: AtomicU64,
    acknowledged: AtomicU64,
    failures: AtomicU64,
}

impl Tally {
    fn now_ns(&self) -> u64 {
        self.epoch.expect("epoch set").elapsed().as_nanos() as u64
    }
}

struct Context(Arc<Tally>);

impl ClientContext for Context {
    /// librdkafka's own log lines (its `debug` contexts, with `--client-debug`), stamped with
    /// the tally's clock so they line up with the rounds.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        let at_ms = self
            .0
            .epoch
            .map_or(0.0, |e| e.elapsed().as_secs_f64() * 1e3);
        eprintln!("[{at_ms:10.1} ms] librdkafka {level:?} {fac}: {log_message}");
    }
}

impl ProducerContext for Context {
    /// The record's send time, nanoseconds since the tally's epoch.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: Self::DeliveryOpaque) {
        let tally = &self.0;
        if result.is_err() {
            tally.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tally.acknowledged.fetch_add(1, Ordering::Relaxed);
        if *sent_ns >= tally.kill_ns.load(Ordering::Acquire) {
            let now = tally.now_ns();
            let _ =
                tally
                    .first_ack_ns
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// The partition's leader and in-sync replica count, as Metadata from any live node says.
fn leader_and_isr(
    producer: &ThreadedProducer<Context>,
    topic: &str,
) -> Result<(i32, usize), String> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|e| format!("Metadata {topic}: {e}"))?;
    let partition = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().first())
        .ok_or_else(|| format!("Metadata lists no partition of {topic}"))?;
    Ok((partition.leader(), partition.isr().len()))
}

/// The leader of the topic's partition 0 as `node` answers Metadata (asked on the wire, no
/// client library between: the cluster's own view); `None` when it names none or cannot
/// answer.
fn leader_named_by(node: &str, topic: &str) -> Option<i32> {
    use kafka_protocol::messages::{
        metadata_request, ApiKey, MetadataRequest, MetadataResponse, TopicName,
    };
    let mut connection = crate::wire::Connection::connect(node).ok()?;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(TopicName(topic.to_string().into())))]));
    let answer: MetadataResponse = connection
        .call(ApiKey::Metadata, 12, &request, Duration::from_millis(500))
        .ok()?;
    answer
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .map(|p| p.leader_id.0)
        .filter(|leader| *leader >= 0)
}

/// Whether `node` names a leader of the topic's partition 0 other than `dead`.
fn led_elsewhere(node: &str, topic: &str, dead: i32) -> bool {
    leader_named_by(node, topic).is_some_and(|leader| leader != dead)
}

/// Waits (≤ 60 s) until the partition has a leader, every node is in sync and names that
/// leader, and the producer's acknowledgements advance; returns the leader. The ISR counts
/// only from `isr_meaningful` on: a new leader starts with every replica in sync, a restarted
/// one still catching up included, for [`REPLICA_LAG`].
fn wait_steady(
    producer: &ThreadedProducer<Context>,
    tally: &Tally,
    topic: &str,
    nodes: &[String],
    isr_meaningful: Instant,
) -> Result<i32, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    if let Some(wait) = isr_meaningful.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    while Instant::now() < deadline {
        let acknowledged = tally.acknowledged.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        let advancing = tally.acknowledged.load(Ordering::Relaxed) > acknowledged;
        match leader_and_isr(producer, topic) {
            Ok((leader, isr))
                if leader >= 0
                    && isr == nodes.len()
                    && advancing
                    && nodes
                        .iter()
                        .all(|node| leader_named_by(node, topic) == Some(leader)) =>
            {
                return Ok(leader)
            }
            Ok((leader, isr)) => {
                last = format!(
                    "leader {leader}, {isr} in sync, acknowledgements advancing: {advancing}"
                )
            }
            Err(e) => last = e,
        }
    }
    Err(format!("the cluster did not settle within 60 s ({last})"))
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the whole measurement; progress goes to stderr.
pub fn measure(options: &Options) -> Result<Report, String> {
    if options.nodes < 2 {
        return Err("failover needs at least 2 nodes".into());
    }
    if options.dir.exists() {
        return Err(format!(
            "{} exists: give an empty or new --dir",
            options.dir.display()
        ));
    }
    let result = measure_in(options);
    if !options.keep {
        let _ = std::fs::remove_dir_all(&options.dir);
    }
    result
}

fn measure_in(options: &Options) -> Result<Report, String> {
    let mut node_args = vec![
        "--replica-lag-time-max-ms".to_string(),
        REPLICA_LAG.as_millis().to_string(),
    ];
    node_args.extend(options.node_args.iter().cloned());
    let mut cluster = LocalCluster::start(&ClusterOptions {
        nodes: options.nodes,
        seeds: true,
        dir: options.dir.clone(),
        node_args,
        binary: None,
        disk_mb: None,
        proxied_links: false,
        fault_points: false,
        fake_clock: None,
    })?;
    let bootstrap = cluster.bootstrap();
    cluster.wait_formed()?;
    let topic = format!(
        "failover-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    crate::kafka::create_topics(
        &bootstrap,
        &Default::default(),
        std::slice::from_ref(&topic),
        1,
        options.nodes as u32,
        &Default::default(),
    )?;
    let tally = Arc::new(Tally {
        epoch: Some(Instant::now()),
        kill_ns: AtomicU64::new(u64::MAX),
        ..Tally::default()
    });
    let mut producer_config = ClientConfig::new();
    if let Some(contexts) = &options.client_debug {
        producer_config
            .set("debug", contexts)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let producer: ThreadedProducer<Context> = producer_config
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "60000")
        // The one setting that is not librdkafka's default: this run restarts a broker every
        // few seconds, and with the default 10 s ceiling the client's reconnect backoff to a
        // broker killed a round or two ago can still be running when it needs that broker
        // (seen as rounds of 2-4 s with "no usable brokers" in --client-debug).
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(Context(tally.clone()))
        .map_err(|e| format!("producer for {bootstrap}: {e}"))?;
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let producer = producer.clone();
        let tally = tally.clone();
        let producing = producing.clone();
        let topic = topic.clone();
        let interval = options.interval;
        std::thread::spawn(move || {
            let mut sequence = 0u64;
            while producing.load(Ordering::Relaxed) {
                sequence += 1;
                let payload = sequence.to_be_bytes();
                let record: BaseRecord<(), [u8], Box<u64>> =
                    BaseRecord::with_opaque_to(&topic, Box::new(tally.now_ns()))
                        .payload(&payload[..]);
                if producer.send(record).is_err() {
                    // Queue full: the record is dropped unsent; the next one follows.
                    tally.failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(interval);
            }
        })
    };
    let outcome = (|| {
        let mut failover_ms = Vec::new();
        let mut metadata_ms = Vec::new();
        let mut isr_meaningful = Instant::now();
        for round in 1..=options.kills {
            let nodes: Vec<String> = (0..cluster.len())
                .map(|n| cluster.kafka_address(n).to_string())
                .collect();
            let leader = wait_steady(&producer, &tally, &topic, &nodes, isr_meaningful)? as usize;
            tally.first_ack_ns.store(0, Ordering::Release);
            let survivors: Vec<String> = (0..options.nodes)
                .filter(|n| *n != leader)
                .map(|n| cluster.kafka_address(n).to_string())
                .collect();
            let killed_at = tally.now_ns();
            eprintln!(
                "[{:10.1} ms] round {round}: killing node {leader}",
                killed_at as f64 / 1e6
            );
            cluster.kill(leader);
            isr_meaningful = Instant::now() + REPLICA_LAG + Duration::from_millis(200);
            // Only records sent once the old leader is certainly dead count: one sent while
            // the signal was on its way could still be acknowledged by it.
            tally.kill_ns.store(tally.now_ns(), Ordering::Release);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut elected_at = None;
            let acked_at = loop {
                let at = tally.first_ack_ns.load(Ordering::Acquire);
                if at != 0 {
                    break at;
                }
                if elected_at.is_none()
                    && survivors
                        .iter()
                        .any(|node| led_elsewhere(node, &topic, leader as i32))
                {
                    elected_at = Some(tally.now_ns());
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "round {round}: no acknowledgement within 60 s of killing node {leader}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            tally.kill_ns.store(u64::MAX, Ordering::Release);
            let ms = (acked_at - killed_at) as f64 / 1e6;
            let elected_ms = elected_at.map(|at| at.saturating_sub(killed_at) as f64 / 1e6);
            eprintln!(
                "round {round}: killed leader {leader}, new leader in Metadata after {}, first \
                 acknowledgement after {ms:.0} ms",
                elected_ms.map_or("-".to_string(), |e| format!("{e:.0} ms"))
            );
            failover_ms.push(ms);
            if let Some(elected_ms) = elected_ms {
                metadata_ms.push(elected_ms);
            }
            cluster.restart(leader)?;
        }
        Ok((failover_ms, metadata_ms))
    })();
    producing.store(false, Ordering::Relaxed);
    let _ = sender.join();
    let _ = producer.flush(Duration::from_secs(10));
    drop(producer);
    drop(cluster);
    let (failover_ms, metadata_ms) = outcome?;
    let mut sorted = failover_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mut metadata_sorted = metadata_ms.clone();
    metadata_sorted.sort_by(f64::total_cmp);
    Ok(Report {
        nodes: options.nodes,
        kills: options.kills,
        interval_ms: options.interval.as_secs_f64() * 1e3,
        p50_ms: percentile(&sorted, 0.50),
        p99_ms: percentile(&sorted, 0.99),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        failover_ms,
        metadata_p50_ms: percentile(&metadata_sorted, 0.50),
        metadata_p99_ms: percentile(&metadata_sorted, 0.99),
        metadata_ms,
        acknowledged: tally.acknowledged.load(Ordering::Relaxed),
        delivery_failures: tally.failures.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.50), 10.0);
        assert_eq!(percentile(&sorted, 0.99), 20.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
