//! A connection's produce requests take effect in the order they arrived (Kafka's rule).
//!
//! librdkafka without idempotence and without retries, with its default `max.in.flight`
//! (1,000,000), pipelines many Produce requests on one connection and relies on the broker to
//! append them in that order: the log must hold the records in send order. The workload is the
//! one that exposed the bug (records alternating in runs of 30 between 200 B and 400 KB, so
//! small requests queue behind large ones that wait on write-behind back-pressure); before the
//! fix it stored a few later records at lower offsets.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_tests::Broker;

const RECORDS: u64 = 1_800;
const RUN_LENGTH: u64 = 30;
const SMALL_BYTES: usize = 200;
const LARGE_BYTES: usize = 400_000;

/// Record `seq`'s value: its sequence number, then filler up to the run's size.
fn value(seq: u64) -> Vec<u8> {
    let size = if (seq / RUN_LENGTH).is_multiple_of(2) {
        SMALL_BYTES
    } else {
        LARGE_BYTES
    };
    let mut v = seq.to_be_bytes().to_vec();
    v.resize(size, (seq % 251) as u8);
    v
}

/// Delivery reports: (seq, offset) of each acknowledged record, and the failures.
#[derive(Default)]
struct Reports {
    acked: Vec<(u64, i64)>,
    failed: Vec<String>,
}

struct Recorder(Arc<Mutex<Reports>>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        let mut reports = self.0.lock().unwrap();
        match result {
            Ok(m) => reports.acked.push((*seq, m.offset())),
            Err((e, _)) => reports.failed.push(format!("record {seq}: {e}")),
        }
    }
}

fn create_topic(bootstrap: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("CreateTopics answered");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating {name}: {code:?}"));
    }
}

/// Produces the workload to partition 0 of `topic` and returns the delivery reports.
fn produce_pipelined(bootstrap: &str, topic: &str) -> Reports {
    let reports = Arc::new(Mutex::new(Reports::default()));
    let producer: BaseProducer<Recorder> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "60000")
        .create_with_context(Recorder(reports.clone()))
        .expect("producer");
    for seq in 0..RECORDS {
        let payload = value(seq);
        let mut record = BaseRecord::<(), _, _>::with_opaque_to(topic, Box::new(seq))
            .partition(0)
            .payload(&payload);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(Instant::now() < deadline, "queueing record {seq}: {e}");
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let mut reports = reports.lock().unwrap();
    std::mem::take(&mut *reports)
}

/// Reads partition 0 from the beginning to its high watermark: the sequence numbers in offset
/// order.
fn read_back(bootstrap: &str, topic: &str) -> Vec<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "produce-order")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).expect("assign");
    let mut seqs = Vec::new();
    let mut next_offset = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while next_offset < high && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message.expect("no consume error");
        let payload = m.payload().expect("a value");
        let seq = u64::from_be_bytes(payload[..8].try_into().unwrap());
        assert_eq!(payload, value(seq), "value of record {seq}");
        seqs.push(seq);
        next_offset = m.offset() + 1;
    }
    assert_eq!(
        next_offset, high,
        "read the partition to its high watermark"
    );
    seqs
}

/// Later records at lower offsets: pairs (i, i+1) of the log whose sequence numbers go down.
fn inversions(seqs: &[u64]) -> Vec<(u64, u64)> {
    seqs.windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| (w[0], w[1]))
        .collect()
}

#[test]
fn pipelined_produce_requests_of_one_connection_land_in_send_order() {
    // Two shards: whether the connection lands on the partition's owner or not, order holds.
    let broker = Broker::start(&["--cores", "2"]);
    let bootstrap = broker.bootstrap();
    for topic in ["order-a", "order-b"] {
        create_topic(&bootstrap, topic);
        let reports = produce_pipelined(&bootstrap, topic);
        assert!(reports.failed.is_empty(), "failures: {:?}", reports.failed);
        assert_eq!(reports.acked.len(), RECORDS as usize, "every record acked");
        let mut acked = reports.acked;
        acked.sort_unstable();
        let acked_inversions: Vec<_> = acked
            .windows(2)
            .filter(|w| w[1].1 <= w[0].1)
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            acked_inversions.is_empty(),
            "{topic}: acknowledged offsets out of send order: {acked_inversions:?}"
        );
        let seqs = read_back(&bootstrap, topic);
        assert_eq!(
            seqs.len(),
            RECORDS as usize,
            "{topic}: one copy of each record"
        );
        let found = inversions(&seqs);
        assert!(
            found.is_empty(),
            "{topic}: {} order inversions in the log: {found:?}",
            found.len()
        );
    }
}
