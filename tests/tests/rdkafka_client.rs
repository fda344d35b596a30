//! librdkafka (the C client most non-Java Kafka clients wrap), unchanged, against `sluice
//! serve` with two shards: topic creation through its admin API, 100,000 records with keys,
//! headers and timestamps over 6 partitions with acks=all, all consumed back in order; and
//! the durability promise: every record acknowledged with acks=all survives a SIGKILL of the
//! broker in the middle of a produce load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, Timestamp, TopicPartitionList};
use sluice_tests::Broker;

const PARTITIONS: i32 = 6;

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// Creates `topics` with librdkafka's AdminClient; each must succeed.
fn create_topics(bootstrap: &str, topics: &[NewTopic]) {
    let results =
        futures::executor::block_on(admin(bootstrap).create_topics(topics, &admin_options()))
            .expect("CreateTopics answered");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating {name}: {code:?}"));
    }
}

fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topics(
        bootstrap,
        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
    );
}

/// Where each acknowledged record landed, keyed by its sequence number; and failures.
#[derive(Default)]
struct Acks {
    landed: HashMap<u64, (i32, i64)>,
    failed: usize,
}

struct Recorder(Arc<Mutex<Acks>>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        let mut acks = self.0.lock().unwrap();
        match result {
            Ok(m) => {
                acks.landed.insert(*seq, (m.partition(), m.offset()));
            }
            Err(_) => acks.failed += 1,
        }
    }
}

/// A producer with acks=all; records not acknowledged within `message_timeout` fail.
fn producer(
    bootstrap: &str,
    acks: Arc<Mutex<Acks>>,
    message_timeout: Duration,
) -> BaseProducer<Recorder> {
    producer_with_acks(bootstrap, "all", acks, message_timeout)
}

/// A producer asking `required_acks` ("all", "1") of the broker, recording deliveries in
/// `acks`; records not acknowledged within `message_timeout` fail.
fn producer_with_acks(
    bootstrap: &str,
    required_acks: &str,
    acks: Arc<Mutex<Acks>>,
    message_timeout: Duration,
) -> BaseProducer<Recorder> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", required_acks)
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        .create_with_context(Recorder(acks))
        .expect("producer")
}

fn key(seq: u64) -> String {
    format!("key-{seq}")
}

fn value(seq: u64) -> String {
    format!("value-{seq}-{}", "x".repeat((seq % 97) as usize))
}

const BASE_TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// Sends record `seq` to partition `seq % PARTITIONS`, retrying while the local queue is full.
fn send(producer: &BaseProducer<Recorder>, topic: &str, seq: u64) -> bool {
    let (k, v) = (key(seq), value(seq));
    let seq_text = seq.to_string();
    let mut record = BaseRecord::with_opaque_to(topic, Box::new(seq))
        .key(&k)
        .payload(&v)
        .partition((seq % PARTITIONS as u64) as i32)
        .timestamp(BASE_TIMESTAMP_MS + seq as i64)
        .headers(OwnedHeaders::new().insert(Header {
            key: "seq",
            value: Some(&seq_text),
        }));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match producer.send(record) {
            Ok(()) => return true,
            Err((_, back)) if Instant::now() < deadline => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
}

fn consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
    consumer_of(bootstrap, topic, PARTITIONS)
}

/// A consumer assigned partitions `0..partitions` of `topic`, each from its beginning.
fn consumer_of(bootstrap: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // librdkafka needs a group id to assign partitions; offsets are given explicitly and
        // never committed, so no group coordinator is involved (that is issue 4's work).
        .set("group.id", "sluice-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Consumes every record the partitions hold (up to their high watermarks, read first; or
/// until 90 s passed); checks each record against what was sent and returns them as
/// (partition, offset) -> seq.
fn consume_checked(bootstrap: &str, topic: &str) -> HashMap<(i32, i64), u64> {
    let consumer = consumer(bootstrap, topic);
    let want: usize = (0..PARTITIONS)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            assert_eq!(low, 0);
            high as usize
        })
        .sum();
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < want && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message.expect("no consume error");
        let header = m.headers().expect("headers").get(0);
        assert_eq!(header.key, "seq");
        let seq: u64 = std::str::from_utf8(header.value.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(m.key(), Some(key(seq).as_bytes()), "key of {seq}");
        assert_eq!(m.payload(), Some(value(seq).as_bytes()), "value of {seq}");
        assert_eq!(
            m.timestamp(),
            Timestamp::CreateTime(BASE_TIMESTAMP_MS + seq as i64)
        );
        assert_eq!(m.partition(), (seq % PARTITIONS as u64) as i32);
        seen.insert((m.partition(), m.offset()), seq);
    }
    seen
}

#[test]
fn librdkafka_round_trips_100k_records_over_6_partitions_on_2_shards() {
    const RECORDS: u64 = 100_000;
    let broker = Broker::start(&["--cores", "2"]);
    let bootstrap = broker.bootstrap();
    let topic = "rdkafka-100k";
    create_topic(&bootstrap, topic, PARTITIONS);

    let acks = Arc::new(Mutex::new(Acks::default()));
    let producer = producer(&bootstrap, acks.clone(), Duration::from_secs(30));
    for seq in 0..RECORDS {
        assert!(send(&producer, topic, seq), "queueing record {seq}");
        if seq % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let acks = acks.lock().unwrap();
    assert_eq!(acks.failed, 0);
    assert_eq!(
        acks.landed.len(),
        RECORDS as usize,
        "every record acknowledged"
    );
    // Per partition, records were appended in the order they were sent: offsets 0, 1, 2, ...
    for p in 0..PARTITIONS {
        let mut offsets: Vec<(u64, i64)> = acks
            .landed
            .iter()
            .filter(|(_, (part, _))| *part == p)
            .map(|(seq, (_, offset))| (*seq, *offset))
            .collect();
        offsets.sort_unstable();
        for (i, (_, offset)) in offsets.iter().enumerate() {
            assert_eq!(
                *offset, i as i64,
                "partition {p}: offsets follow send order"
            );
        }
    }

    let seen = consume_checked(&bootstrap, topic);
    assert_eq!(seen.len(), RECORDS as usize, "every record consumed");
    for (seq, at) in &acks.landed {
        assert_eq!(seen.get(at), Some(seq), "record {seq} at {at:?}");
    }
}

#[test]
fn acks_all_records_survive_a_sigkill_during_a_produce_load() {
    let broker = Broker::start(&["--cores", "2"]);
    let bootstrap = broker.bootstrap();
    let topic = "durable";
    create_topic(&bootstrap, topic, PARTITIONS);

    let acks = Arc::new(Mutex::new(Acks::default()));
    let load = {
        let acks = acks.clone();
        let bootstrap = bootstrap.clone();
        std::thread::spawn(move || {
            let producer = producer(&bootstrap, acks.clone(), Duration::from_secs(5));
            // Bounded: at most 2 million records or 60 s, whichever first; the broker dies
            // long before.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seq = 0;
            while seq < 2_000_000 && Instant::now() < deadline {
                if !send(&producer, topic, seq) {
                    break;
                }
                seq += 1;
                if seq % 500 == 0 {
                    producer.poll(Duration::ZERO);
                }
                if acks.lock().unwrap().failed > 0 {
                    break;
                }
            }
            // Let outstanding deliveries resolve (they fail once the broker is gone).
            let _ = producer.flush(Duration::from_secs(10));
        })
    };
    let started = Instant::now();
    while acks.lock().unwrap().landed.len() < 30_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load never got going"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let data_dir = broker.kill();
    let acknowledged_at_kill = acks.lock().unwrap().landed.len();
    load.join().unwrap();
    let acked: HashMap<u64, (i32, i64)> = acks.lock().unwrap().landed.clone();
    assert!(acked.len() >= acknowledged_at_kill);

    let broker = Broker::start_on(data_dir, &["--cores", "2"]);
    let seen = consume_checked(&broker.bootstrap(), topic);
    let missing: Vec<_> = acked
        .iter()
        .filter(|(seq, at)| seen.get(at) != Some(seq))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost or moved after SIGKILL, e.g. {missing:?}",
        acked
            .iter()
            .filter(|(s, at)| seen.get(at) != Some(s))
            .count(),
        acked.len()
    );
    // The partitions really live on both shards: each recovered some at start-up.
    let log = broker.log();
    for shard in 0..2 {
        let line = log
            .lines()
            .rfind(|l| l.contains("shard ready") && l.contains(&format!("shard={shard} ")))
            .unwrap_or_else(|| panic!("no start-up line for shard {shard}:\n{log}"));
        assert!(
            !line.contains("partitions=0"),
            "shard {shard} owns partitions: {line}"
        );
    }
}

/// A record a consumer has read survives a SIGKILL of the broker: a single broker's high
/// watermark is the end of what is durable, never records still in its write buffer. acks=1
/// records (no producer asks for an fdatasync) are read back, the broker is SIGKILLed at once,
/// and after the restart every record read is still at the offset it was read at. Before the
/// fix the broker served acks=1 records from its write buffer and the kill took them back
/// (`sluice chaos run --nodes 1 --faults kill,pause --seed 25 --duration 10` found it with
/// acks=all records in flight).
#[test]
fn records_a_consumer_read_survive_a_sigkill() {
    let broker = Broker::start(&["--cores", "1"]);
    let bootstrap = broker.bootstrap();
    let topic = "read-then-kill";
    create_topic(&bootstrap, topic, PARTITIONS);
    let acks = Arc::new(Mutex::new(Acks::default()));
    let producer = producer_with_acks(&bootstrap, "1", acks.clone(), Duration::from_secs(30));
    for seq in 0..300 {
        assert!(send(&producer, topic, seq));
    }
    producer.flush(Duration::from_secs(30)).expect("delivered");
    assert_eq!(acks.lock().unwrap().landed.len(), 300);

    let consumer = consumer(&bootstrap, topic);
    let mut read = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.len() < 300 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let seq: u64 = std::str::from_utf8(m.headers().unwrap().get(0).value.unwrap())
                .unwrap()
                .parse()
                .unwrap();
            read.insert((m.partition(), m.offset()), seq);
        }
    }
    assert_eq!(read.len(), 300, "every acks=1 record becomes readable");
    let data_dir = broker.kill();

    let broker = Broker::start_on(data_dir, &["--cores", "1"]);
    let after = consume_checked(&broker.bootstrap(), topic);
    let gone: Vec<_> = read
        .iter()
        .filter(|(at, seq)| after.get(at) != Some(seq))
        .take(5)
        .collect();
    assert!(
        gone.is_empty(),
        "records read before the SIGKILL are gone or moved after it, e.g. {gone:?} ({} of {} \
         remain)",
        after.len(),
        read.len()
    );
}

#[test]
fn compressed_batches_pass_through_untouched_in_every_codec() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::RecordBatchDecoder;

    let broker = Broker::start(&["--cores", "2"]);
    let bootstrap = broker.bootstrap();
    // librdkafka's codec names, with the RecordBatch attribute value of each.
    for (codec, attribute) in [("gzip", 1), ("snappy", 2), ("lz4", 3), ("zstd", 4)] {
        let topic = format!("codec-{codec}");
        create_topic(&bootstrap, &topic, 1);
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.codec", codec)
            .set("linger.ms", "20")
            .create()
            .expect("producer");
        for i in 0..200 {
            let value = format!("{codec} record {i} {}", "abc".repeat(20));
            let record = BaseRecord::<(), str>::to(&topic)
                .payload(&value)
                .partition(0);
            producer.send(record).map_err(|(e, _)| e).expect("queued");
        }
        producer.flush(Duration::from_secs(30)).expect("flush");

        let request = FetchRequest::default()
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        let r: FetchResponse = sluice_tests::wire::call(
            &mut sluice_tests::wire::connect(broker.addr),
            ApiKey::Fetch,
            12,
            &request,
        );
        let mut records = r.responses[0].partitions[0].records.clone().unwrap();
        let attributes = i16::from_be_bytes([records[21], records[22]]);
        assert_eq!(
            attributes & 7,
            attribute,
            "{codec}: stored as the producer compressed it"
        );
        let sets = RecordBatchDecoder::decode_all(&mut records).expect("decodes");
        let values: Vec<String> = sets
            .iter()
            .flat_map(|s| s.records.iter())
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(values.len(), 200, "{codec}");
        for (i, v) in values.iter().enumerate() {
            assert!(
                v.starts_with(&format!("{codec} record {i} ")),
                "{codec}: {v}"
            );
        }
    }
}

/// A topic name no topic may have: Metadata answers INVALID_TOPIC_EXCEPTION, which librdkafka
/// treats as permanent, so the record fails at once instead of waiting out its 60 s delivery
/// timeout while the broker keeps answering "unknown topic".
#[test]
fn producing_to_an_invalid_topic_name_fails_fast() {
    let broker = Broker::start(&[]);
    let failures = Arc::new(Mutex::new(Vec::new()));
    struct Failures(Arc<Mutex<Vec<String>>>);
    impl ClientContext for Failures {}
    impl ProducerContext for Failures {
        type DeliveryOpaque = ();
        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            let outcome = match result {
                Ok(_) => "delivered".to_string(),
                Err((e, _)) => e.to_string(),
            };
            self.0.lock().unwrap().push(outcome);
        }
    }
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("message.timeout.ms", "60000")
        .create_with_context(Failures(failures.clone()))
        .expect("producer");
    let started = Instant::now();
    producer
        .send(BaseRecord::<(), _, ()>::to("bad$#!").payload("x"))
        .map_err(|(e, _)| e)
        .expect("queued");
    while failures.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(70) {
        producer.poll(Duration::from_millis(100));
    }
    let outcome = failures.lock().unwrap().clone();
    assert_eq!(outcome.len(), 1, "{outcome:?}");
    assert!(
        outcome[0].contains("Topic") || outcome[0].contains("topic"),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failed only after {:?} ({outcome:?}): the client kept retrying",
        started.elapsed()
    );
}

/// Kafka 4.x topic configs are accepted by name and validated by type and range, the inert ones
/// included (tools and Terraform set them): librdkafka's AdminClient creates a topic with them
/// and reads them back; an out-of-range value is refused with INVALID_CONFIG naming the config.
#[test]
fn kafka_4_topic_configs_are_accepted_validated_and_described() {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    use rdkafka::types::RDKafkaErrorCode;
    let broker = Broker::start(&[]);
    let admin = admin(&broker.bootstrap());
    let options = admin_options();
    let configs = [
        ("delete.retention.ms", "1000"),
        ("min.cleanable.dirty.ratio", "0.2"),
        ("min.compaction.lag.ms", "0"),
        ("segment.jitter.ms", "10"),
        ("preallocate", "true"),
        ("message.timestamp.after.max.ms", "60000"),
        ("compression.zstd.level", "7"),
    ];
    let mut topic = NewTopic::new("kafka4-configs", 1, TopicReplication::Fixed(1));
    for (name, value) in configs {
        topic = topic.set(name, value);
    }
    create_topics(&broker.bootstrap(), &[topic]);

    let described = futures::executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic("kafka4-configs")], &options),
    )
    .unwrap();
    let resource = described[0].as_ref().expect("described");
    for (name, value) in configs {
        let entry = resource
            .get(name)
            .unwrap_or_else(|| panic!("{name} listed"));
        assert_eq!(entry.value.as_deref(), Some(value), "{name}");
        assert!(!entry.is_default, "{name}");
    }
    assert_eq!(
        resource
            .get("file.delete.delay.ms")
            .and_then(|e| e.value.clone()),
        Some("60000".to_string()),
        "unset configs show Kafka's default"
    );

    let bad = NewTopic::new("kafka4-bad", 1, TopicReplication::Fixed(1))
        .set("min.cleanable.dirty.ratio", "2");
    let refused = futures::executor::block_on(admin.create_topics([&bad], &options)).unwrap();
    match &refused[0] {
        Err((name, code)) => {
            assert_eq!(name, "kafka4-bad");
            assert_eq!(*code, RDKafkaErrorCode::InvalidConfig);
        }
        Ok(_) => panic!("an out-of-range ratio was accepted"),
    }
    let alter = AlterConfig::new(ResourceSpecifier::Topic("kafka4-configs"))
        .set("delete.retention.ms", "-5");
    // (The rdkafka crate reports every AlterConfigs resource as Ok, whatever the broker
    // answered: the refusal shows as the value left unchanged.)
    futures::executor::block_on(admin.alter_configs([&alter], &options)).unwrap();
    let described = futures::executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic("kafka4-configs")], &options),
    )
    .unwrap();
    let kept = described[0]
        .as_ref()
        .unwrap()
        .get("delete.retention.ms")
        .and_then(|e| e.value.clone());
    assert_eq!(kept.as_deref(), Some("1000"), "a negative value was stored");
}

/// A compacted topic refuses records without a key, as Kafka does: INVALID_RECORD, with the
/// culprit records and Kafka's message in the response (KIP-467); keyed records go through.
#[test]
fn a_compacted_topic_refuses_records_without_a_key() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use rdkafka::types::RDKafkaErrorCode;
    let broker = Broker::start(&[]);
    create_topics(
        &broker.bootstrap(),
        &[NewTopic::new("compacted", 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")],
    );

    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let producer: BaseProducer<Outcomes> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "0")
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .create_with_context(Outcomes(outcomes.clone()))
        .expect("producer");
    for (what, key) in [
        ("keyed", Some("k")),
        ("keyless", None),
        ("keyed again", Some("k")),
    ] {
        let mut record =
            BaseRecord::<str, str, Box<String>>::with_opaque_to("compacted", Box::new(what.into()))
                .payload("v");
        if let Some(k) = key {
            record = record.key(k);
        }
        producer.send(record).map_err(|(e, _)| e).expect("queued");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(
        outcomes,
        [
            ("keyed".to_string(), Ok(0)),
            ("keyless".to_string(), Err(RDKafkaErrorCode::InvalidRecord)),
            ("keyed again".to_string(), Ok(1)),
        ]
    );

    // On the wire: the culprit's index in the batch and Kafka's message (Produce v8+).
    let batch = bytes::Bytes::from(sluice_storage::batch::build_batch_nullable(
        0,
        &[(0, Some(b"a"), Some(b"v")), (0, None, Some(b"v"))],
    ));
    let r: ProduceResponse = sluice_tests::wire::call(
        &mut sluice_tests::wire::connect(broker.addr),
        ApiKey::Produce,
        9,
        &ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("compacted")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch))])]),
    );
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 87, "INVALID_RECORD");
    let message =
        "Compacted topic cannot accept message without key in topic partition compacted-0.";
    assert_eq!(p.error_message.as_deref(), Some(message));
    assert_eq!(p.record_errors.len(), 1);
    assert_eq!(p.record_errors[0].batch_index, 1);
    assert_eq!(
        p.record_errors[0].batch_index_error_message.as_deref(),
        Some(message)
    );
}

/// `message.timestamp.after.max.ms` (Kafka 4.0's default: one hour) and
/// `message.timestamp.before.max.ms` bound record timestamps against the broker's clock: a
/// record outside gets INVALID_TIMESTAMP, the others go through.
#[test]
fn record_timestamps_are_checked_against_the_broker_clock() {
    use rdkafka::types::RDKafkaErrorCode;
    let broker = Broker::start(&[]);
    let topics = [
        NewTopic::new("clock-default", 1, TopicReplication::Fixed(1)),
        NewTopic::new("clock-recent", 1, TopicReplication::Fixed(1))
            .set("message.timestamp.before.max.ms", "60000"),
    ];
    create_topics(&broker.bootstrap(), &topics);

    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let producer: BaseProducer<Outcomes> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "0")
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .create_with_context(Outcomes(outcomes.clone()))
        .expect("producer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let hour = 3_600_000;
    for (what, topic, ts) in [
        ("now", "clock-default", now),
        ("two hours ahead", "clock-default", now + 2 * hour),
        ("a day ago", "clock-default", now - 24 * hour),
        (
            "a day ago, recent-only topic",
            "clock-recent",
            now - 24 * hour,
        ),
        ("now, recent-only topic", "clock-recent", now),
    ] {
        producer
            .send(
                BaseRecord::<str, str, Box<String>>::with_opaque_to(topic, Box::new(what.into()))
                    .payload("v")
                    .timestamp(ts),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
        producer.flush(Duration::from_secs(10)).expect("flush");
    }
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(
        outcomes,
        [
            ("now".to_string(), Ok(0)),
            (
                "two hours ahead".to_string(),
                Err(RDKafkaErrorCode::InvalidTimestamp)
            ),
            ("a day ago".to_string(), Ok(1)),
            (
                "a day ago, recent-only topic".to_string(),
                Err(RDKafkaErrorCode::InvalidTimestamp)
            ),
            ("now, recent-only topic".to_string(), Ok(0)),
        ]
    );
}

/// What happened to each labelled record: its offset, or the broker's error.
type Delivered = Vec<(String, Result<i64, rdkafka::types::RDKafkaErrorCode>)>;

/// Records each delivery report under the record's label.
struct Outcomes(Arc<Mutex<Delivered>>);

impl ClientContext for Outcomes {}

impl ProducerContext for Outcomes {
    type DeliveryOpaque = Box<String>;

    fn delivery(&self, result: &DeliveryResult<'_>, what: Box<String>) {
        let outcome = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.rdkafka_error_code().expect("a broker error")),
        };
        self.0.lock().unwrap().push((*what, outcome));
    }
}

/// Files of the broker process that lie under `dir_prefix` (by `/proc/<pid>/fd`).
fn open_files_under(pid: u32, dir_prefix: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the broker's fd table")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.contains(dir_prefix))
        .collect()
}

#[test]
fn deleting_a_topic_under_polling_consumers_frees_its_files_for_good() {
    // Consumers long-polling the topic while it is deleted: their fetches (woken by the close,
    // or arriving with metadata from before the delete) must not reopen the deleted partitions,
    // which recreated their directories after the removal and kept their files open.
    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    let topic = "doomed";
    create_topic(&bootstrap, topic, PARTITIONS);
    let dir = sluice_tests::topic_dir(broker.data_dir(), topic);
    let acks = Arc::new(Mutex::new(Acks::default()));
    let producer = producer(&bootstrap, acks.clone(), Duration::from_secs(10));
    for seq in 0..600 {
        assert!(send(&producer, topic, seq));
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    assert_eq!(acks.lock().unwrap().landed.len(), 600);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..3)
        .map(|_| {
            let (bootstrap, stop) = (bootstrap.clone(), stop.clone());
            std::thread::spawn(move || {
                let consumer = consumer(&bootstrap, topic);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(50));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let deleted =
        futures::executor::block_on(admin(&bootstrap).delete_topics(&[topic], &admin_options()))
            .expect("DeleteTopics answered");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    // The consumers go on fetching with what they knew for a while.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for poller in pollers {
        poller.join().unwrap();
    }
    let prefix = dir.to_string_lossy().into_owned();
    assert!(
        !dir.exists(),
        "{} came back after the delete",
        dir.display()
    );
    let held = open_files_under(broker.pid(), &prefix);
    assert!(held.is_empty(), "the broker still holds {held:?}");

    // A topic of the same name is a new, empty topic.
    create_topic(&bootstrap, topic, PARTITIONS);
    let consumer = consumer(&bootstrap, topic);
    for p in 0..PARTITIONS {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!((low, high), (0, 0), "partition {p} of the new topic");
    }
    assert!(
        !broker.log().contains("closing a deleted partition"),
        "{}",
        broker.log()
    );
    broker.stop();
}

/// A clean stop closes each shard's partitions many at a time (`Shard::close_all`): every one
/// of them is closed (its producer-state snapshot written), and every acknowledged acks=1
/// record is there after the restart. 600 partitions on 2 shards are more than one window of
/// closes per shard.
#[test]
fn a_clean_stop_of_many_partitions_keeps_every_acks_1_record() {
    const MANY: i32 = 600;
    const ROUNDS: i32 = 3;
    let broker = Broker::start(&["--cores", "2"]);
    let bootstrap = broker.bootstrap();
    let topic = "closed-at-once";
    create_topic(&bootstrap, topic, MANY);
    let acks = Arc::new(Mutex::new(Acks::default()));
    let producer = producer_with_acks(&bootstrap, "1", acks.clone(), Duration::from_secs(30));
    for round in 0..ROUNDS {
        for partition in 0..MANY {
            let value = format!("{partition}-{round}");
            let seq = (round * MANY + partition) as u64;
            let record: BaseRecord<'_, (), String, Box<u64>> =
                BaseRecord::with_opaque_to(topic, Box::new(seq))
                    .partition(partition)
                    .payload(&value);
            producer.send(record).map_err(|(e, _)| e).expect("queued");
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    {
        let acks = acks.lock().unwrap();
        assert_eq!(acks.failed, 0);
        assert_eq!(acks.landed.len(), (MANY * ROUNDS) as usize);
    }
    drop(producer);

    let data_dir = broker.stop();
    // Each close ends with the partition's producer-state snapshot: every partition closed.
    let topic_dir = sluice_tests::topic_dir(data_dir.path(), topic);
    let unclosed: Vec<i32> = (0..MANY)
        .filter(|p| {
            !topic_dir
                .join(p.to_string())
                .join("producer-state")
                .exists()
        })
        .collect();
    assert!(unclosed.is_empty(), "partitions not closed: {unclosed:?}");
    let broker = Broker::start_on(data_dir, &["--cores", "2"]);
    let consumer = consumer_of(&broker.bootstrap(), topic, MANY);
    let mut seen: HashMap<(i32, i64), String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < (MANY * ROUNDS) as usize && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let m = message.expect("no consume error");
            let value = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            seen.insert((m.partition(), m.offset()), value);
        }
    }
    for partition in 0..MANY {
        for round in 0..ROUNDS {
            assert_eq!(
                seen.get(&(partition, round as i64)).map(String::as_str),
                Some(format!("{partition}-{round}").as_str()),
                "partition {partition}, offset {round} after the restart"
            );
        }
    }
    assert_eq!(
        seen.len(),
        (MANY * ROUNDS) as usize,
        "nothing else is there"
    );
}
