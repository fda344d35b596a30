//! The run's workload and its record: librdkafka producers (idempotent, plain and
//! transactional, acks=all) and one group consumer (read_committed), each operation pushed to the shared [`Recorder`] with its time and
//! outcome; then the read-back clients (the group's committed offsets, every partition from its
//! start to its high watermark) whose answers the checker takes as the truth.
//!
//! Invariants: every client wait is bounded ([`SETTLE`], [`MESSAGE_TIMEOUT`]); a workload thread
//! is awaited with a bound ([`Worker`]), since a librdkafka client can block in its drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::history::{record_value, Event, TransactionOutcome};

pub(crate) const TOPIC: &str = "chaos";
pub(crate) const GROUP: &str = "chaos";
/// How long a producer keeps trying to deliver a record (librdkafka `message.timeout.ms`;
/// Kafka's `delivery.timeout.ms` default). Long on purpose: once an idempotent producer's
/// records time out, librdkafka bumps its epoch and renumbers the records it still holds,
/// possibly persisted ones included (its INTRODUCTION.md, "Message timeout considerations"),
/// so after a timeout a duplicate can be the client's own doing. With 30 s, two single-broker
/// runs on a machine loaded by a build (seeds 36 and 40 of eight faults, 30 s) timed out
/// 1,438 and 4,292 records and held 82 and 55 idempotent duplicates (not reproduced in 14
/// replays without that load; the records' epochs were not kept).
pub(crate) const MESSAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of every wait after the workload (delivery, settling, reading back).
pub(crate) const SETTLE: Duration = Duration::from_secs(60);
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// After an interruption, how long the workload gets to stop.
pub(crate) const INTERRUPTED_WAIT: Duration = Duration::from_secs(5);

/// Records per transaction of a transactional producer (fewer when the run ends inside one).
const RECORDS_PER_TRANSACTION: u64 = 10;
/// Every this many transactions a transactional producer aborts one on purpose.
const ABORT_EVERY: u64 = 4;
/// `transaction.timeout.ms`: a transaction open this long is aborted by its coordinator (a
/// producer that died inside one). librdkafka wants `message.timeout.ms` no longer.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound of one transactional call (init, commit, abort); a retriable failure is retried
/// until [`SETTLE`].
const TRANSACTION_CALL_WAIT: Duration = Duration::from_secs(15);

/// `segment.bytes` of the topic when fallocates fail (see `run::run`).
pub(crate) const SMALL_SEGMENT_BYTES: u32 = 64 << 10;

/// A workload thread whose end is awaited with a bound: a librdkafka client can block for long
/// in its drop when no broker answers (a consumer leaving its group), and a run must end anyway.
/// A thread that overstays is left behind (the process ends soon after).
pub(crate) struct Worker {
    name: &'static str,
    done: std::sync::mpsc::Receiver<Result<(), String>>,
}

impl Worker {
    pub(crate) fn spawn(
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

    pub(crate) fn finish(self, within: Duration) -> Result<(), String> {
        match self.done.recv_timeout(within) {
            Ok(outcome) => outcome.map_err(|e| format!("{}: {e}", self.name)),
            Err(_) => Err(format!("{} did not end within {within:?}", self.name)),
        }
    }
}

/// The run's shared event log.
pub(crate) struct Recorder {
    pub(crate) start: Instant,
    pub(crate) events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub(crate) fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    pub(crate) fn push(&self, event: Event) {
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
/// The same for the group's consumer (e.g. `cgrp,fetch`), its lines marked `c0`.
const CONSUMER_DEBUG_VAR: &str = "SLUICE_CHAOS_CONSUMER_DEBUG";

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
    /// Print librdkafka's log lines ([`CONSUMER_DEBUG_VAR`]).
    debug: bool,
}

impl ClientContext for ConsumerLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        if self.debug {
            eprintln!(
                "{:.0} ms c0 {level:?} {facility} {message}",
                self.recorder.now_ms()
            );
        }
    }
}

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

pub(crate) fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // A killed node comes back within seconds: librdkafka's default backoff (up to 10 s)
        // would keep clients away from it long after.
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "1000");
    config
}

/// One producer of the workload.
pub(crate) struct ProducerSpec {
    /// Its number (`p<producer>-<seq>` values).
    pub(crate) producer: u32,
    /// With `enable.idempotence`; plain otherwise (librdkafka's default retries).
    pub(crate) idempotent: bool,
    /// Sends in transactions ([`produce_in_transactions`]); idempotent.
    pub(crate) transactional: bool,
    /// How long after the run's start it sends.
    pub(crate) duration: Duration,
    /// One record every `interval`.
    pub(crate) interval: Duration,
    /// Bytes of padding header per record (0: none).
    pub(crate) padding: usize,
}

/// A producer's loop: a record every `spec.interval` until `spec.duration` has passed since the
/// run started (or the run is interrupted), then delivery of what is outstanding (bounded by
/// the message timeout).
pub(crate) fn produce(
    bootstrap: &str,
    recorder: &Arc<Recorder>,
    spec: &ProducerSpec,
    interrupted: &AtomicBool,
) -> Result<(), String> {
    let ProducerSpec {
        producer,
        idempotent,
        transactional,
        duration,
        interval,
        padding,
    } = *spec;
    if transactional {
        return produce_in_transactions(bootstrap, recorder, spec, interrupted);
    }
    recorder.push(Event::Producer {
        producer,
        idempotent,
        transactional: false,
    });
    let mut config = producer_config(bootstrap, padding);
    let client: ThreadedProducer<ProducerLog> = config
        .set("enable.idempotence", idempotent.to_string())
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(ProducerLog::new(recorder, producer))
        .map_err(|e| format!("producer {producer}: {e}"))?;
    let end = recorder.start + duration;
    let mut seq = 0u64;
    let mut next = Instant::now();
    while Instant::now() < end && !interrupted.load(Ordering::Acquire) {
        if send_one(&client, recorder, producer, seq, padding) {
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

/// What every producer of the workload shares: acks=all, a 1 ms linger, librdkafka's debug
/// contexts when asked for ([`CLIENT_DEBUG_VAR`]), smaller batches for padded records.
fn producer_config(bootstrap: &str, padding: usize) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config.set("acks", "all").set("linger.ms", "1");
    if padding > 0 {
        // Batches must stay below the topic's small max.message.bytes (MESSAGE_TOO_LARGE is
        // permanent, and would fail records and bump the producer's epoch).
        config.set("batch.size", (SMALL_SEGMENT_BYTES / 4).to_string());
    }
    if let Ok(contexts) = std::env::var(CLIENT_DEBUG_VAR) {
        config
            .set("debug", contexts)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    config
}

impl ProducerLog {
    fn new(recorder: &Arc<Recorder>, producer: u32) -> ProducerLog {
        ProducerLog {
            recorder: recorder.clone(),
            producer,
            debug: std::env::var(CLIENT_DEBUG_VAR).is_ok(),
        }
    }
}

/// Hands `p<producer>-<seq>` to `client` and records the send; false when the client refused
/// it (a full local queue while the cluster is down, or a transaction in error): then it is
/// not recorded, and the same value goes again next time.
fn send_one(
    client: &ThreadedProducer<ProducerLog>,
    recorder: &Recorder,
    producer: u32,
    seq: u64,
    padding: usize,
) -> bool {
    let value = record_value(producer, seq);
    let pad = vec![b'.'; padding];
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
    if client.send(record).is_err() {
        return false;
    }
    recorder.push(Event::Send {
        t_ms,
        producer,
        value,
    });
    true
}

/// A transactional producer's loop (`transactional.id` `chaos-p<producer>`): transactions of
/// [`RECORDS_PER_TRANSACTION`] records, one every `spec.interval`, each committed (every
/// [`ABORT_EVERY`]th aborted on purpose) and its outcome recorded. A transaction whose outcome
/// the client cannot tell (a fatal error, a call failing past [`SETTLE`]) is recorded unknown and
/// the client replaced: the new one's `init_transactions` fences the old one and ends what it
/// left open. Records go to partitions by key, so a transaction spans partitions (and, in a
/// cluster, partition leaders other than its coordinator).
fn produce_in_transactions(
    bootstrap: &str,
    recorder: &Arc<Recorder>,
    spec: &ProducerSpec,
    interrupted: &AtomicBool,
) -> Result<(), String> {
    let ProducerSpec {
        producer,
        duration,
        interval,
        padding,
        ..
    } = *spec;
    recorder.push(Event::Producer {
        producer,
        idempotent: true,
        transactional: true,
    });
    let end = recorder.start + duration;
    let running = || Instant::now() < end && !interrupted.load(Ordering::Acquire);
    let mut seq = 0u64;
    let mut begun = 0u64;
    let mut client: Option<ThreadedProducer<ProducerLog>> = None;
    // A transaction the coordinator may still hold open (its client given up on).
    let mut left_open = false;
    while running() {
        let Some(current) = client.as_ref() else {
            match transactional_client(bootstrap, recorder, producer, padding) {
                Ok(made) => client = Some(made),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
            continue;
        };
        left_open = false;
        if current.begin_transaction().is_err() {
            client = None;
            continue;
        }
        let first = seq;
        let mut next = Instant::now();
        while seq - first < RECORDS_PER_TRANSACTION && running() {
            if send_one(current, recorder, producer, seq, padding) {
                seq += 1;
            }
            next += interval;
            if let Some(left) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
        }
        if interrupted.load(Ordering::Acquire) {
            // What was sent stays without an outcome (unknown to the checker).
            break;
        }
        if seq == first {
            if current.abort_transaction(TRANSACTION_CALL_WAIT).is_err() {
                client = None;
            }
            continue;
        }
        begun += 1;
        let on_purpose = begun.is_multiple_of(ABORT_EVERY);
        let (outcome, error) = end_transaction(current, on_purpose);
        recorder.push(Event::Transaction {
            t_ms: recorder.now_ms(),
            producer,
            first_seq: first,
            last_seq: seq - 1,
            outcome,
            error,
        });
        if outcome == TransactionOutcome::Unknown {
            client = None;
            left_open = true;
        }
    }
    if left_open && !interrupted.load(Ordering::Acquire) {
        // A fresh client ends what the last one left open, so the read-back's last stable
        // offset need not wait out the transaction timeout.
        drop(client.take());
        drop(transactional_client(
            bootstrap, recorder, producer, padding,
        )?);
    }
    Ok(())
}

/// The `transactional.id` of the workload's producer `producer`.
pub(crate) fn transactional_id(producer: u32) -> String {
    format!("chaos-p{producer}")
}

/// A transactional client of `producer`, its transactions initialized (retried until
/// [`SETTLE`] while the coordinator is not there).
fn transactional_client(
    bootstrap: &str,
    recorder: &Arc<Recorder>,
    producer: u32,
    padding: usize,
) -> Result<ThreadedProducer<ProducerLog>, String> {
    let mut config = producer_config(bootstrap, padding);
    let client: ThreadedProducer<ProducerLog> = config
        .set("transactional.id", transactional_id(producer))
        .set(
            "transaction.timeout.ms",
            TRANSACTION_TIMEOUT.as_millis().to_string(),
        )
        .set(
            "message.timeout.ms",
            TRANSACTION_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(ProducerLog::new(recorder, producer))
        .map_err(|e| format!("producer {producer}: {e}"))?;
    let deadline = Instant::now() + SETTLE;
    loop {
        match client.init_transactions(TRANSACTION_CALL_WAIT) {
            Ok(()) => return Ok(client),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {}
            Err(e) => return Err(format!("producer {producer}: init_transactions: {e}")),
        }
    }
}

/// Commits (or on purpose aborts) the open transaction: its outcome as the client knows it,
/// and why when not committed.
fn end_transaction(
    client: &ThreadedProducer<ProducerLog>,
    on_purpose: bool,
) -> (TransactionOutcome, String) {
    let deadline = Instant::now() + SETTLE;
    let mut abort_because = on_purpose.then(|| "aborted on purpose".to_string());
    loop {
        let Some(reason) = &abort_because else {
            match client.commit_transaction(TRANSACTION_CALL_WAIT) {
                Ok(()) => return (TransactionOutcome::Committed, String::new()),
                Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                    abort_because = Some(format!("commit: {e}"));
                }
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && Instant::now() < deadline => {}
                Err(e) => return (TransactionOutcome::Unknown, format!("commit: {e}")),
            }
            continue;
        };
        match client.abort_transaction(TRANSACTION_CALL_WAIT) {
            Ok(()) => return (TransactionOutcome::Aborted, reason.clone()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {}
            Err(e) => return (TransactionOutcome::Unknown, format!("{reason}; abort: {e}")),
        }
    }
}

/// The group's consumer: reads and records until told to stop, committing every
/// [`COMMIT_EVERY`]; a last synchronous commit at the end.
pub(crate) fn consume(
    bootstrap: &str,
    recorder: &Arc<Recorder>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    let debug = std::env::var(CONSUMER_DEBUG_VAR).ok();
    if let Some(contexts) = &debug {
        config
            .set("debug", contexts)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    let consumer: BaseConsumer<ConsumerLog> = config
        .create_with_context(ConsumerLog {
            recorder: recorder.clone(),
            debug: debug.is_some(),
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
pub(crate) fn wait_for_leaders(bootstrap: &str, partitions: i32) -> Result<(), String> {
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
pub(crate) fn read_committed(
    bootstrap: &str,
    recorder: &Recorder,
    partitions: i32,
) -> Result<(), String> {
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
pub(crate) fn read_back(
    bootstrap: &str,
    recorder: &Recorder,
    partitions: i32,
) -> Result<(), String> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", "chaos-read-back")
        .set("enable.auto.commit", "false")
        // Committed records only (librdkafka's default, said here because the checker relies
        // on it): what an aborted or open transaction wrote is not read back.
        .set("isolation.level", "read_committed")
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
