//! Log compaction of a user topic, through librdkafka: a compacted topic written with many
//! updates per key (lz4-compressed batches) and tombstones, read from the beginning after the
//! cleaner ran, shows one record per key, the latest, at its original offset; tombstoned keys
//! show their tombstone until `delete.retention.ms` has passed, then vanish; and the compacted
//! log reads the same after a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_tests::Broker;

const TOPIC: &str = "changelog";
const KEYS: usize = 50;
const ROUNDS: usize = 20;
const TOMBSTONED: usize = 10;
const DELETE_RETENTION_MS: u64 = 4_000;

fn create_compacted_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let retention = DELETE_RETENTION_MS.to_string();
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "65536")
        .set("max.message.bytes", "65536")
        .set("segment.ms", "300")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", &retention);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures::executor::block_on(admin.create_topics(&[topic], &options)).unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

fn producer(bootstrap: &str) -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn value(key: usize, round: usize) -> String {
    format!("key {key} round {round} {}", "x".repeat(200))
}

/// Every record of the partition from the beginning: (offset, key, value).
fn read_all(bootstrap: &str) -> Vec<(i64, String, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let value = m.payload().map(|v| String::from_utf8(v.to_vec()).unwrap());
                records.push((m.offset(), key, value));
                if m.offset() + 1 >= high {
                    break;
                }
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {
                let position = consumer.position().unwrap();
                let at = position.elements()[0].offset();
                if at == Offset::Offset(high) {
                    break;
                }
            }
        }
    }
    records
}

/// Produces one record and waits for its acknowledgement.
fn send(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    key: &str,
    value: Option<&str>,
) {
    let mut record = BaseRecord::to(TOPIC).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer.send(record).map_err(|(e, _)| e).unwrap();
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_per_key_and_drops_expired_tombstones() {
    let broker = Broker::start(&["--log-cleaner-backoff-ms", "200"]);
    let bootstrap = broker.bootstrap();
    create_compacted_topic(&bootstrap);
    let producer = producer(&bootstrap);
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            send(&producer, &format!("k{key}"), Some(&value(key, round)));
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    for key in 0..TOMBSTONED {
        send(&producer, &format!("k{key}"), None);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    // The active segment is never cleaned: after segment.ms, one more record rolls it.
    std::thread::sleep(Duration::from_millis(400));
    send(&producer, "roll", Some("roll"));
    producer.flush(Duration::from_secs(10)).unwrap();
    let written = ROUNDS * KEYS + TOMBSTONED + 1;

    // Wait for the cleaner: every live key once, at its latest value.
    let deadline = Instant::now() + Duration::from_secs(30);
    let compacted = loop {
        let records = read_all(&bootstrap);
        if records.len() <= KEYS + 1 {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted within 30 s: {} records of {written}",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let check = |records: &[(i64, String, Option<String>)], tombstones_expected: bool| {
        let mut by_key: BTreeMap<&str, Vec<(i64, Option<&str>)>> = BTreeMap::new();
        let mut last_offset = -1;
        for (offset, key, value) in records {
            assert!(
                *offset > last_offset,
                "offsets rise: {offset} after {last_offset}"
            );
            last_offset = *offset;
            by_key
                .entry(key)
                .or_default()
                .push((*offset, value.as_deref()));
        }
        for key in 0..KEYS {
            let name = format!("k{key}");
            let seen = by_key.get(name.as_str()).cloned().unwrap_or_default();
            if key < TOMBSTONED {
                let expected: &[Option<&str>] = if tombstones_expected { &[None] } else { &[] };
                let values: Vec<Option<&str>> = seen.iter().map(|(_, v)| *v).collect();
                assert_eq!(values, expected, "{name}");
            } else {
                assert_eq!(seen.len(), 1, "{name}: {seen:?}");
                assert_eq!(seen[0].1, Some(value(key, ROUNDS - 1).as_str()), "{name}");
                // The latest value of key k in the last round sits at offset (ROUNDS-1)*KEYS+k.
                assert_eq!(
                    seen[0].0,
                    ((ROUNDS - 1) * KEYS + key) as i64,
                    "{name}'s offset"
                );
            }
        }
        assert_eq!(by_key["roll"].len(), 1);
    };
    // Tombstones are younger than delete.retention.ms right after the first cleaning...
    let first_pass_had_tombstones = compacted.iter().any(|(_, _, v)| v.is_none());
    if first_pass_had_tombstones {
        check(&compacted, true);
    }
    // ...and are gone once it has passed (the roll record makes their segment cleanable again).
    let deadline = Instant::now() + Duration::from_secs(30);
    let without_tombstones = loop {
        let records = read_all(&bootstrap);
        if !records.iter().any(|(_, _, v)| v.is_none()) {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "tombstones still there after 30 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    check(&without_tombstones, false);
    assert!(
        broker.log().contains("partition compacted"),
        "{}",
        broker.log()
    );

    // The compacted log survives a restart unchanged, and takes new records after it.
    drop(producer);
    let dir = broker.stop();
    let broker = Broker::start_on(dir, &["--log-cleaner-backoff-ms", "200"]);
    let bootstrap = broker.bootstrap();
    assert_eq!(read_all(&bootstrap), without_tombstones);
    let producer = self::producer(&bootstrap);
    send(&producer, "k42", Some("after restart"));
    producer.flush(Duration::from_secs(10)).unwrap();
    let after = read_all(&bootstrap);
    assert_eq!(after.last().unwrap().2.as_deref(), Some("after restart"));
    assert_eq!(after.last().unwrap().0, written as i64);
    broker.stop();
}

/// Acknowledged records: (key, value, offset).
#[derive(Clone, Default)]
struct Acked(std::sync::Arc<std::sync::Mutex<Vec<(String, String, i64)>>>);

impl rdkafka::ClientContext for Acked {}

impl rdkafka::producer::ProducerContext for Acked {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
            self.0
                .lock()
                .unwrap()
                .push((text(m.key()), text(m.payload()), m.offset()));
        }
    }
}

#[test]
fn sigkills_during_compaction_lose_no_acknowledged_latest_value_and_show_no_record_twice() {
    let args = [
        "--log-cleaner-backoff-ms",
        "20",
        "--log-cleaner-io-bytes-per-second",
        "0",
    ];
    let mut broker = Broker::start(&args);
    create_compacted_topic(&broker.bootstrap());
    let acked = Acked::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for cycle in 0..5 {
        let producer: ThreadedProducer<Acked> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "5000")
            .create_with_context(acked.clone())
            .unwrap();
        let run_for = Duration::from_millis(700 + random(900));
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < run_for {
            let key = format!("k{}", random(30));
            let value = format!("cycle {cycle} record {n} {}", "y".repeat(100));
            let _ = producer.send(BaseRecord::to(TOPIC).key(&key).payload(&value));
            n += 1;
            if n.is_multiple_of(20) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let dir = broker.kill();
        drop(producer);
        broker = Broker::start_on(dir, &args);
    }
    // A few more passes after the last restart, then everything is read back.
    std::thread::sleep(Duration::from_secs(2));
    let records = read_all(&broker.bootstrap());
    let mut last_offset = -1;
    let mut present = std::collections::HashMap::new();
    for (offset, key, value) in &records {
        assert!(
            *offset > last_offset,
            "offsets rise: {offset} after {last_offset}"
        );
        last_offset = *offset;
        present.insert((key.clone(), *offset), value.clone().unwrap());
    }
    // Every key's latest acknowledged record is there, with its value.
    let mut latest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for (key, value, offset) in acked.0.lock().unwrap().iter() {
        let entry = latest
            .entry(key.clone())
            .or_insert((*offset, value.clone()));
        if *offset > entry.0 {
            *entry = (*offset, value.clone());
        }
    }
    assert!(latest.len() >= 25, "{} keys acknowledged", latest.len());
    for (key, (offset, value)) in &latest {
        assert_eq!(
            present.get(&(key.clone(), *offset)),
            Some(value),
            "{key}'s latest acknowledged record (offset {offset})"
        );
    }
    assert!(broker.log().contains("partition compacted"));
    let finished_swaps = broker
        .log()
        .matches("finished an interrupted compaction swap")
        .count();
    eprintln!(
        "{} records acknowledged, {} left after compaction, {finished_swaps} interrupted swaps finished at start-up",
        acked.0.lock().unwrap().len(),
        records.len()
    );
    broker.stop();
}
