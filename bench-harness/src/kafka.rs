//! The Kafka side of a run, through librdkafka (the `rdkafka` crate): topic setup, a producer
//! per producer thread (`ThreadedProducer`: its own thread waits on librdkafka's event queue, so
//! a delivery report is timed the moment it arrives, not when the pacing thread next wakes up)
//! and a
//! consumer per consumer thread (`BaseConsumer` with an explicit assignment from the beginning of
//! fresh topics, so no group rebalance sits inside the measurement and brokers without consumer
//! groups can be measured too).
//!
//! The producer settings of the workload map one to one onto librdkafka properties; `extra`
//! passes anything else through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::run::{new_histogram, Receiver, Sender, Shared};
use crate::workload::Workload;

/// The librdkafka properties of the run's clients (e.g. security settings).
pub type ClientProperties = std::collections::BTreeMap<String, String>;

/// A client configuration for `bootstrap` with the run's `client` properties.
fn client_config(bootstrap: &str, client: &ClientProperties) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in client {
        config.set(key, value);
    }
    config
}

fn admin(
    bootstrap: &str,
    client: &ClientProperties,
) -> Result<AdminClient<DefaultClientContext>, String> {
    client_config(bootstrap, client)
        .create()
        .map_err(|e| format!("admin client for {bootstrap}: {e}"))
}

/// Creates the run's topics with CreateTopics. When the answer cannot be parsed (rivine 0.2
/// creates the topic but sends a CreateTopics response librdkafka rejects as BadMessage), the
/// topics are looked up with Metadata instead (which auto-creates them where the broker does),
/// and accepted only with the workload's partition count.
pub fn create_topics(
    bootstrap: &str,
    client: &ClientProperties,
    names: &[String],
    partitions: u32,
    replication_factor: u32,
    configs: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    reachable(bootstrap).map_err(|e| format!("CreateTopics on {bootstrap}: {e}"))?;
    let admin = admin(bootstrap, client)?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            configs.iter().fold(
                NewTopic::new(
                    n,
                    partitions as i32,
                    TopicReplication::Fixed(replication_factor as i32),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    // Kafka's own admin timeout (default.api.timeout.ms) is 60 s: a loaded machine (a CI
    // build's writeback in flight) can take seconds to fsync a new topic into existence.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(60)))
        .request_timeout(Some(Duration::from_secs(60)));
    // NOT_CONTROLLER: the controller changed under the request (a cluster just formed, or an
    // election). librdkafka does not retry it (Kafka's Java admin client does): try again
    // for a while; a topic the lost attempt did create answers TOPIC_ALREADY_EXISTS.
    let retry_until = std::time::Instant::now() + Duration::from_secs(30);
    let create_once = || -> Result<(), (Option<RDKafkaErrorCode>, String)> {
        let results = futures::executor::block_on(admin.create_topics(&topics, &options))
            .map_err(|e| (None, format!("CreateTopics on {bootstrap}: {e}")))?;
        for result in results {
            if let Err((name, code)) = result {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err((
                        Some(code),
                        format!("CreateTopics {name} on {bootstrap}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    };
    let outcome = loop {
        match create_once() {
            Err((Some(RDKafkaErrorCode::NotController), _))
                if std::time::Instant::now() < retry_until =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            outcome => break outcome.map_err(|(_, e)| e),
        }
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e) if e.contains("BadMessage") || e.contains("UnsupportedVersion") => names
            .iter()
            .try_for_each(|name| auto_create(bootstrap, client, name, partitions))
            .map_err(|fallback| format!("{e}; auto-creation instead: {fallback}")),
        Err(e) => Err(e),
    }
}

/// Fails at once when no bootstrap address accepts a TCP connection, instead of after the
/// admin request's long timeout.
fn reachable(bootstrap: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let mut last = String::from("no address given");
    for address in bootstrap.split(',').map(str::trim) {
        let resolved = match address.to_socket_addrs() {
            Ok(resolved) => resolved,
            Err(e) => {
                last = format!("{address}: {e}");
                continue;
            }
        };
        for socket in resolved {
            match TcpStream::connect_timeout(&socket, Duration::from_secs(5)) {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("cannot connect to {socket}: {e}"),
            }
        }
    }
    Err(last)
}

fn auto_create(
    bootstrap: &str,
    client: &ClientProperties,
    topic: &str,
    partitions: u32,
) -> Result<(), String> {
    let client: BaseConsumer = client_config(bootstrap, client)
        .set("group.id", "sluice-bench-metadata")
        .set("allow.auto.create.topics", "true")
        .create()
        .map_err(|e| format!("client for {bootstrap}: {e}"))?;
    for _ in 0..20 {
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(|e| format!("Metadata {topic}: {e}"))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as u32);
        match found {
            Some(n) if n == partitions => return Ok(()),
            Some(n) if n > 0 => {
                return Err(format!(
                    "{topic} was auto-created with {n} partitions, the workload wants {partitions} \
                     (set the broker's default partition count)"
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    Err(format!("{topic} did not appear in Metadata"))
}

pub fn delete_topics(
    bootstrap: &str,
    client: &ClientProperties,
    names: &[String],
) -> Result<(), String> {
    let admin = admin(bootstrap, client)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    futures::executor::block_on(admin.delete_topics(&names, &options))
        .map(|_| ())
        .map_err(|e| format!("DeleteTopics on {bootstrap}: {e}"))
}

/// Delivery reports land here (on the producer's polling thread).
pub struct Deliveries {
    shared: Arc<Shared>,
    publish: Mutex<Histogram<u64>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// The record's intended send time, ns since the run's epoch.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, intended_ns: usize) {
        match result {
            Ok(_) => self
                .shared
                .record_ack(&mut self.publish.lock().unwrap(), intended_ns as u64),
            Err(_) => self.shared.record_error(),
        }
    }
}

pub struct Producer {
    client: ThreadedProducer<Deliveries>,
    topic: String,
    /// With `transaction_records`: records per transaction, and those sent in the open one.
    transaction: Option<(u64, u64)>,
}

/// How long a transaction's init, commit or begin may take before the run fails.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A `transactional.id` no other producer of this or another run on the machine uses.
fn unique_transactional_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("sluice-bench-{}-{nanos}-{n}", std::process::id())
}

impl Producer {
    pub fn new(
        bootstrap: &str,
        workload: &Workload,
        topic: &str,
        shared: Arc<Shared>,
    ) -> Result<Producer, String> {
        let settings = &workload.producer;
        let mut config = client_config(bootstrap, &workload.client);
        config
            .set("acks", &settings.acks)
            .set("linger.ms", settings.linger_ms.to_string())
            .set("batch.size", settings.batch_size.to_string())
            .set("compression.codec", &settings.compression)
            .set("enable.idempotence", settings.idempotence.to_string());
        if settings.transaction_records.is_some() {
            config.set("transactional.id", unique_transactional_id());
        }
        for (key, value) in &settings.extra {
            config.set(key, value);
        }
        let client: ThreadedProducer<Deliveries> = config
            .create_with_context(Deliveries {
                shared,
                publish: Mutex::new(new_histogram()),
            })
            .map_err(|e| format!("producer for {bootstrap}: {e}"))?;
        let transaction = match settings.transaction_records {
            Some(every) => {
                client
                    .init_transactions(TRANSACTION_TIMEOUT)
                    .map_err(|e| format!("init_transactions on {bootstrap}: {e}"))?;
                client
                    .begin_transaction()
                    .map_err(|e| format!("begin_transaction: {e}"))?;
                Some((every, 0))
            }
            None => None,
        };
        Ok(Producer {
            client,
            topic: topic.to_string(),
            transaction,
        })
    }

    /// Commits the open transaction once its records are acknowledged.
    ///
    /// The commit flushes first, and rust-rdkafka's flush polls the event queue in the calling
    /// thread for up to 100 ms at a time while `ThreadedProducer`'s own thread takes the
    /// delivery reports it waits for: each commit then took ~100 ms (10 transactions/s, on any
    /// broker). Waiting here until nothing is in flight leaves the commit's flush nothing to do.
    fn commit(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + TRANSACTION_TIMEOUT;
        while self.client.in_flight_count() > 0 {
            if std::time::Instant::now() >= deadline {
                return Err("the transaction's records were not acknowledged within 30 s".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        self.client
            .commit_transaction(TRANSACTION_TIMEOUT)
            .map_err(|e| format!("commit_transaction: {e}"))
    }
}

impl Sender for Producer {
    fn send(
        &mut self,
        partition_hint: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        intended_ns: u64,
    ) -> Result<bool, String> {
        let mut record =
            BaseRecord::with_opaque_to(&self.topic, intended_ns as usize).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition_hint {
            record = record.partition(partition);
        }
        match self.client.send(record) {
            Ok(()) => {
                if let Some((every, sent)) = &mut self.transaction {
                    *sent += 1;
                    if *sent == *every {
                        *sent = 0;
                        // Synchronous, as an application's loop: the pacing thread waits for
                        // the commit, and records due meanwhile are sent late (their latency
                        // counts from when they were due).
                        self.commit()?;
                        self.client
                            .begin_transaction()
                            .map_err(|e| format!("begin_transaction: {e}"))?;
                    }
                }
                Ok(true)
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
            Err((e, _)) => Err(format!("produce: {e}")),
        }
    }

    fn service(&mut self, wait: Duration) -> Result<(), String> {
        // The polling thread serves delivery reports; nothing to do but wait.
        std::thread::sleep(wait);
        Ok(())
    }

    fn with_publish_latencies(&self, use_it: &mut dyn FnMut(&Histogram<u64>)) {
        use_it(&self.client.context().publish.lock().unwrap());
    }

    fn finish(&mut self, timeout: Duration) -> Result<(), String> {
        if self.transaction.take().is_some() {
            return self.commit();
        }
        if self.client.flush(timeout).is_err() {
            // A broker slower than the records queued for it (the unpaced probe on a slow
            // peer): what is still queued is not published; purged records report as errors.
            self.client.purge(PurgeConfig::default().queue().inflight());
            let _ = self.client.flush(Duration::from_secs(5));
        }
        Ok(())
    }
}

pub struct Consumer {
    client: BaseConsumer,
}

impl Consumer {
    pub fn new(
        bootstrap: &str,
        workload: &Workload,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Consumer, String> {
        let mut config = client_config(bootstrap, &workload.client);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        for (key, value) in &workload.consumer.extra {
            config.set(key, value);
        }
        let client: BaseConsumer = config
            .create()
            .map_err(|e| format!("consumer for {bootstrap}: {e}"))?;
        let mut assignment = TopicPartitionList::new();
        for &p in partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| format!("assignment: {e}"))?;
        }
        client
            .assign(&assignment)
            .map_err(|e| format!("assign {topic}: {e}"))?;
        Ok(Consumer { client })
    }
}

impl Receiver for Consumer {
    fn poll(&mut self, wait: Duration, on_record: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        let mut wait = wait;
        // Drain what is ready, then return so the caller can check for the end of the run.
        for _ in 0..10_000 {
            match self.client.poll(wait) {
                None => break,
                Some(Ok(message)) => on_record(message.payload().unwrap_or_default()),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(format!("consume: {e}")),
            }
            wait = Duration::ZERO;
        }
        Ok(())
    }
}
