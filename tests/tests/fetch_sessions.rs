//! Fetch sessions (KIP-227) against a running `sluice serve`.
//!
//! At the wire (kafka-protocol codecs): a full fetch with epoch 0 creates a session; incremental
//! fetches answer only partitions with news, take new positions and forgotten partitions, work
//! from any connection (so from any shard), long-poll on the session's partitions; a stale
//! epoch, an unknown id and a switch from topic ids to names are refused with Kafka's codes; a
//! full fetch closes the session it names; a full cache evicts as Kafka's does. With a byte
//! limit well below what 96 partitions on two shards hold (read from the disk, many at once):
//! a full fetch answers a prefix of its partitions, and a session serves every record once, in
//! order, to the last partition, each response within the limit.
//!
//! With a client we did not write: kafka-python's consumer (incremental sessions on by default)
//! reads 40 partitions while a producer writes them in waves: every record exactly once and in
//! order, and the client's own log shows it fetching incrementally.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_storage::batch::build_batch;
use sluice_tests::wire::{call, connect};
use sluice_tests::Broker;

const TOPIC: &str = "sessions";
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
const FETCH_SESSION_TOPIC_ID_ERROR: i16 = 106;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Creates `TOPIC` with `partitions` partitions; returns its id.
fn create_topic(s: &mut TcpStream, partitions: i32) -> uuid::Uuid {
    let created: CreateTopicsResponse = call(
        s,
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(name(TOPIC))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]),
    );
    assert_eq!(created.topics[0].error_code, 0);
    created.topics[0].topic_id
}

/// Appends one record to `partition`; returns its offset.
fn produce(s: &mut TcpStream, partition: i32) -> i64 {
    produce_value(s, partition, b"v")
}

/// Appends one record holding `value` to `partition`; returns its offset.
fn produce_value(s: &mut TcpStream, partition: i32, value: &[u8]) -> i64 {
    let batch = build_batch(1_700_000_000_000, &[(1_700_000_000_000, b"k", value)]);
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(TOPIC))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(batch)))])]);
    let r: ProduceResponse = call(s, ApiKey::Produce, 9, &request);
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    p.base_offset
}

/// A fetch of `positions` (partition, offset) in session `id` at `epoch`, by name (v12).
fn session_fetch(id: i32, epoch: i32, positions: &[(i32, i64)], forget: &[i32]) -> FetchRequest {
    let mut request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(id)
        .with_session_epoch(epoch);
    if !positions.is_empty() {
        request = request.with_topics(vec![FetchTopic::default()
            .with_topic(name(TOPIC))
            .with_partitions(
                positions
                    .iter()
                    .map(|(p, offset)| {
                        FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(*offset)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )]);
    }
    if !forget.is_empty() {
        request = request.with_forgotten_topics_data(vec![ForgottenTopic::default()
            .with_topic(name(TOPIC))
            .with_partitions(forget.to_vec())]);
    }
    request
}

/// The partitions a response carries: (partition, error, high watermark, record bytes).
fn answered(r: &FetchResponse) -> Vec<(i32, i16, i64, usize)> {
    answered_with_start(r)
        .into_iter()
        .map(|(p, error, high_watermark, _, bytes)| (p, error, high_watermark, bytes))
        .collect()
}

fn partitions_with_records(r: &FetchResponse) -> Vec<i32> {
    answered(r)
        .into_iter()
        .filter(|a| a.3 > 0)
        .map(|a| a.0)
        .collect()
}

#[test]
fn incremental_fetches_answer_only_what_changed_and_refuse_what_kafka_refuses() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);
    let topic_id = create_topic(&mut s, 4);
    for p in 0..4 {
        assert_eq!(produce(&mut s, p), 0);
    }

    // A full fetch with epoch 0 creates a session and answers every partition.
    let all: Vec<(i32, i64)> = (0..4).map(|p| (p, 0)).collect();
    let full: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(0, 0, &all, &[]));
    assert_eq!(full.error_code, 0);
    let id = full.session_id;
    assert!(id > 0, "a session was created");
    assert_eq!(partitions_with_records(&full), vec![0, 1, 2, 3]);

    // Positions move past the records: nothing new, so nothing in the answer.
    let moved: Vec<(i32, i64)> = (0..4).map(|p| (p, 1)).collect();
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(id, 1, &moved, &[]),
    );
    assert_eq!((r.error_code, r.session_id), (0, id));
    assert_eq!(answered(&r), vec![], "no news, no partitions");

    // One partition grows: only it is answered, though the request names none.
    produce(&mut s, 2);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(id, 2, &[], &[]));
    assert_eq!(answered(&r).len(), 1, "{:?}", answered(&r));
    assert_eq!(partitions_with_records(&r), vec![2]);
    assert_eq!(answered(&r)[0].2, 2, "its new high watermark");

    // The same epoch again is stale; an unknown session is not found. Neither changes the
    // session.
    let stale: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(id, 2, &[], &[]));
    assert_eq!(stale.error_code, INVALID_FETCH_SESSION_EPOCH);
    assert!(stale.responses.is_empty());
    let unknown: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(id ^ 0x40, 1, &[], &[]),
    );
    assert_eq!(unknown.error_code, FETCH_SESSION_ID_NOT_FOUND);

    // Every later request comes from a new connection: the session lives on its home shard and
    // is reached from either. Partition 2 is forgotten: its growth is no longer news.
    let mut epoch = 3;
    let r: FetchResponse = call(
        &mut connect(broker.addr),
        ApiKey::Fetch,
        12,
        &session_fetch(id, epoch, &[], &[2]),
    );
    assert_eq!(
        answered(&r),
        vec![],
        "partition 2's position was 1, its records were read"
    );
    epoch += 1;
    produce(&mut s, 2);
    produce(&mut s, 3);
    let r: FetchResponse = call(
        &mut connect(broker.addr),
        ApiKey::Fetch,
        12,
        &session_fetch(id, epoch, &[], &[]),
    );
    assert_eq!(partitions_with_records(&r), vec![3], "2 was forgotten");
    epoch += 1;
    for _ in 0..6 {
        let r: FetchResponse = call(
            &mut connect(broker.addr),
            ApiKey::Fetch,
            12,
            &session_fetch(id, epoch, &[(3, 2)], &[]),
        );
        assert_eq!((r.error_code, r.session_id), (0, id), "epoch {epoch}");
        epoch += 1;
    }

    // A long poll on the session wakes when one of its partitions grows.
    let addr = broker.addr;
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let request = session_fetch(id, epoch, &[], &[]).with_max_wait_ms(10_000);
        let r: FetchResponse = call(&mut connect(addr), ApiKey::Fetch, 12, &request);
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    produce(&mut s, 1);
    let (r, waited) = poll.join().unwrap();
    assert_eq!(partitions_with_records(&r), vec![1]);
    assert!(
        waited < Duration::from_secs(8),
        "woken by the append, not the deadline: {waited:?}"
    );
    epoch += 1;

    // A full fetch naming the session closes it (epoch -1: and opens none).
    let closed: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(id, -1, &all, &[]));
    assert_eq!((closed.error_code, closed.session_id), (0, 0));
    assert_eq!(
        answered(&closed).len(),
        4,
        "a full fetch answers every partition"
    );
    let gone: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(id, epoch, &[], &[]),
    );
    assert_eq!(gone.error_code, FETCH_SESSION_ID_NOT_FOUND);

    // A session made with topic ids (v13) cannot go on by names (v12).
    let by_id = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 13, &by_id);
    assert_eq!(partitions_with_records(&r), vec![0]);
    let id_session = r.session_id;
    assert!(id_session > 0);
    let by_id_incremental = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_session_id(id_session)
        .with_session_epoch(1);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 13, &by_id_incremental);
    assert_eq!((r.error_code, r.session_id), (0, id_session));
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(id_session, 2, &[], &[]),
    );
    assert_eq!(r.error_code, FETCH_SESSION_TOPIC_ID_ERROR);

    // Fetch v4-6 has no sessions: answered in full, session id 0.
    let old: FetchResponse = call(&mut s, ApiKey::Fetch, 6, &session_fetch(0, -1, &all, &[]));
    assert_eq!(answered(&old).len(), 4);
}

/// The partitions a response carries: (partition, error, high watermark, log start, record
/// bytes).
fn answered_with_start(r: &FetchResponse) -> Vec<(i32, i16, i64, i64, usize)> {
    let mut out: Vec<_> = r
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    p.partition_index,
                    p.error_code,
                    p.high_watermark,
                    p.log_start_offset,
                    p.records.as_ref().map_or(0, |r| r.len()),
                )
            })
        })
        .collect();
    out.sort();
    out
}

/// A session of 40 partitions (20 on each shard: the owners watch their change feed, not each
/// partition) hears of every kind of news: records, a log start moved by DeleteRecords, a
/// partition appended to during a long poll, and its topic deleted.
#[test]
fn a_large_session_hears_of_log_start_moves_long_poll_appends_and_deleted_topics() {
    const PARTITIONS: i32 = 40;
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);
    create_topic(&mut s, PARTITIONS);
    for p in 0..PARTITIONS {
        produce(&mut s, p);
    }
    let all: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, 1)).collect();
    let full: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(0, 0, &all, &[]));
    let id = full.session_id;
    assert!(id > 0);
    assert_eq!(answered(&full).len(), PARTITIONS as usize);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(id, 1, &[], &[]));
    assert_eq!(answered(&r), vec![], "nothing new");

    // DeleteRecords moves partition 7's log start: news, without records.
    let deleted: DeleteRecordsResponse = call(
        &mut s,
        ApiKey::DeleteRecords,
        2,
        &DeleteRecordsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(name(TOPIC))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(7)
                    .with_offset(1)])]),
    );
    assert_eq!(deleted.topics[0].partitions[0].error_code, 0);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(id, 2, &[], &[]));
    assert_eq!(answered_with_start(&r), vec![(7, 0, 1, 1, 0)]);

    // A long poll wakes for an append to one of the 40, and answers only it.
    let addr = broker.addr;
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let request = session_fetch(id, 3, &[], &[]).with_max_wait_ms(10_000);
        let r: FetchResponse = call(&mut connect(addr), ApiKey::Fetch, 12, &request);
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    produce(&mut s, 33);
    let (r, waited) = poll.join().unwrap();
    assert_eq!(partitions_with_records(&r), vec![33]);
    assert_eq!(answered(&r).len(), 1, "{:?}", answered(&r));
    assert!(
        waited < Duration::from_secs(8),
        "woken by the append: {waited:?}"
    );

    // Partition 33's records stay news until the consumer moves past them.
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(id, 4, &[], &[]));
    assert_eq!(partitions_with_records(&r), vec![33]);
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(id, 5, &[(33, 2)], &[]),
    );
    assert_eq!(answered(&r), vec![]);

    // The topic is deleted: every partition of the session answers the error.
    let gone: DeleteTopicsResponse = call(
        &mut s,
        ApiKey::DeleteTopics,
        4,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![name(TOPIC)])
            .with_timeout_ms(5000),
    );
    assert_eq!(gone.responses[0].error_code, 0);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &session_fetch(id, 6, &[], &[]));
    let errors: Vec<i16> = answered(&r).iter().map(|a| a.1).collect();
    assert_eq!(
        errors,
        vec![UNKNOWN_TOPIC_OR_PARTITION; PARTITIONS as usize],
        "{:?}",
        answered(&r)
    );
}

#[test]
fn a_full_session_cache_evicts_as_kafka_does() {
    // One shard, one slot; nothing is idle long enough to be evicted by time.
    let broker = Broker::start(&[
        "--cores",
        "1",
        "--fetch-session-cache-slots",
        "1",
        "--fetch-session-eviction-ms",
        "600000",
    ]);
    let mut s = connect(broker.addr);
    create_topic(&mut s, 2);
    let first: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(0, 0, &[(0, 0)], &[]),
    );
    assert!(first.session_id > 0);
    // A session no larger than the one held gets none: the client goes on with full fetches.
    let refused: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(0, 0, &[(1, 0)], &[]),
    );
    assert_eq!((refused.error_code, refused.session_id), (0, 0));
    // A larger one evicts the smaller.
    let larger: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(0, 0, &[(0, 0), (1, 0)], &[]),
    );
    assert!(larger.session_id > 0);
    let evicted: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(first.session_id, 1, &[], &[]),
    );
    assert_eq!(evicted.error_code, FETCH_SESSION_ID_NOT_FOUND);
    let kept: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(larger.session_id, 1, &[], &[]),
    );
    assert_eq!(kept.error_code, 0);

    // With no slots, no sessions at all.
    drop(s);
    let broker = Broker::start(&["--cores", "1", "--fetch-session-cache-slots", "0"]);
    let mut s = connect(broker.addr);
    create_topic(&mut s, 1);
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(0, 0, &[(0, 0)], &[]),
    );
    assert_eq!((r.error_code, r.session_id), (0, 0));
}

const CONSUMER_SCRIPT: &str = r#"
import logging, sys, threading, time
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

bootstrap = sys.argv[1]
PARTITIONS, WAVES, PER_WAVE = 40, 5, 400

class Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.created = self.incremental = self.errors = 0
    def emit(self, record):
        text = record.getMessage()
        if "created a new incremental fetch session" in text:
            self.created += 1
        elif "incremental fetch response for session" in text:
            self.incremental += 1
        elif any(bad in text for bad in ("unable to process the fetch", "invalid", "failed")):
            self.errors += 1
count = Count()
fetcher_log = logging.getLogger("kafka.consumer.fetcher")
fetcher_log.setLevel(logging.DEBUG)
fetcher_log.addHandler(count)

admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("py-sessions", PARTITIONS, 1)])
partitions = [TopicPartition("py-sessions", p) for p in range(PARTITIONS)]

consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, fetch_max_wait_ms=100)
consumer.assign(partitions)
assert consumer.config["enable_incremental_fetch_sessions"]

producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
sent = 0
def produce():
    global sent
    for wave in range(WAVES):
        for i in range(PER_WAVE):
            n = wave * PER_WAVE + i
            # Uneven: a few partitions get most records, so most are quiet in each fetch.
            p = (n * 7) % 5 if n % 4 else n % PARTITIONS
            producer.send("py-sessions", value=b"%d" % n, partition=p)
        producer.flush()
        sent += PER_WAVE
        time.sleep(0.3)
threading.Thread(target=produce).start()

seen = {}
total = 0
deadline = time.time() + 60
while total < WAVES * PER_WAVE and time.time() < deadline:
    for tp, records in consumer.poll(timeout_ms=500).items():
        for r in records:
            last = seen.get(tp.partition)
            assert last is None or r.offset == last + 1, ("gap or repeat", tp.partition, last, r.offset)
            assert last is not None or r.offset == 0, ("did not start at 0", tp.partition, r.offset)
            seen[tp.partition] = r.offset
            total += 1
assert total == WAVES * PER_WAVE, (total, sent)
# Nothing more arrives: every record was read once.
extra = sum(len(v) for v in consumer.poll(timeout_ms=1000).values())
assert extra == 0, extra
print("CONSUMED", total)
print("SESSIONS", count.created, count.incremental, count.errors)
"#;

#[test]
fn kafka_python_consumes_many_partitions_through_incremental_fetches() {
    let broker = Broker::start(&["--cores", "2"]);
    let out = Command::new("python3")
        .args(["-c", CONSUMER_SCRIPT, &broker.bootstrap()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CONSUMED 2000"), "{stdout}");
    let sessions = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SESSIONS "))
        .expect("session counts");
    let counts: Vec<u64> = sessions.split(' ').map(|n| n.parse().unwrap()).collect();
    assert!(counts[0] >= 1, "the broker created a session: {sessions}");
    assert!(
        counts[1] >= 10,
        "the client fetched incrementally (incremental responses): {sessions}"
    );
    assert_eq!(counts[2], 0, "no fetch errors: {sessions}");
}

/// Appends one ~3 KB record (most of it read from the disk, below the tail kept in memory)
/// whose value names its partition and sequence number.
fn produce_named(s: &mut TcpStream, partition: i32, n: usize) {
    let value = format!("p{partition}-{n}-{}", "x".repeat(3000));
    produce_value(s, partition, value.as_bytes());
}

/// Each partition's records in a response: (partition, first offset, values).
fn decoded(r: &FetchResponse) -> Vec<(i32, i64, Vec<String>)> {
    use kafka_protocol::records::RecordBatchDecoder;
    r.responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| {
            let mut records = p.records.clone().filter(|r| !r.is_empty())?;
            let sets = RecordBatchDecoder::decode_all(&mut records).expect("whole batches");
            let records: Vec<_> = sets.iter().flat_map(|s| s.records.iter()).collect();
            let values = records
                .iter()
                .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
                .collect();
            Some((p.partition_index, records[0].offset, values))
        })
        .collect()
}

/// The owners read many partitions at once and stop reading at the request's byte limit:
/// answers must still be each partition's own records, from its position, in order, within
/// the limit, and every partition must be served in turn.
#[test]
fn reads_in_parallel_within_the_byte_limit_keep_each_partition_whole_and_in_order() {
    const PARTITIONS: i32 = 96;
    const RECORDS: usize = 3;
    const MAX_BYTES: i32 = 48 << 10;
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);
    create_topic(&mut s, PARTITIONS);
    for n in 0..RECORDS {
        for p in 0..PARTITIONS {
            produce_named(&mut s, p, n);
        }
    }
    let check = |answers: &[(i32, i64, Vec<String>)], positions: &[i64]| {
        for (p, first, values) in answers {
            assert_eq!(
                *first, positions[*p as usize],
                "partition {p} from its position"
            );
            for (i, value) in values.iter().enumerate() {
                let expected = format!("p{p}-{}-", *first + i as i64);
                assert!(
                    value.starts_with(&expected),
                    "{value:.12} is not {expected}"
                );
            }
        }
    };

    // Without a session: the partitions with records are a prefix of the request's order
    // (KIP-74), however the owners' reads interleave, and within the limit.
    let all: Vec<(i32, i64)> = (0..PARTITIONS).rev().map(|p| (p, 0)).collect();
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(0, -1, &all, &[]).with_max_bytes(MAX_BYTES),
    );
    let answers = decoded(&r);
    check(&answers, &[0; PARTITIONS as usize]);
    let served: Vec<i32> = answers.iter().map(|a| a.0).collect();
    let requested: Vec<i32> = all.iter().map(|a| a.0).take(served.len()).collect();
    assert_eq!(served, requested, "a prefix of the request");
    assert!(
        served.len() >= 4 && served.len() < PARTITIONS as usize,
        "{served:?}"
    );
    let bytes: usize = answered(&r).iter().map(|a| a.3).sum();
    assert!(bytes <= MAX_BYTES as usize, "{bytes} bytes");

    // In a session: every record once, in order, within the limit per response.
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &session_fetch(0, 0, &all, &[]).with_max_bytes(MAX_BYTES),
    );
    let id = r.session_id;
    assert!(id > 0);
    let mut positions = vec![0i64; PARTITIONS as usize];
    let mut response = r;
    let mut epoch = 1;
    while positions.iter().any(|&p| p < RECORDS as i64) {
        assert!(epoch < 200, "not every partition was served: {positions:?}");
        let bytes: usize = answered(&response).iter().map(|a| a.3).sum();
        assert!(
            bytes <= MAX_BYTES as usize,
            "{bytes} bytes at epoch {epoch}"
        );
        let answers = decoded(&response);
        check(&answers, &positions);
        let mut moved = Vec::new();
        for (p, first, values) in answers {
            positions[p as usize] = first + values.len() as i64;
            moved.push((p, positions[p as usize]));
        }
        response = call(
            &mut s,
            ApiKey::Fetch,
            12,
            &session_fetch(id, epoch, &moved, &[]).with_max_bytes(MAX_BYTES),
        );
        assert_eq!(response.error_code, 0);
        epoch += 1;
    }
    assert!(decoded(&response).is_empty(), "nothing left to give");
}
