//! Idempotent producers, against `sluice serve` with two shards.
//!
//! At the wire level: InitProducerId; a retried batch is answered with its original offset and
//! not appended again; a sequence gap gets OUT_OF_ORDER_SEQUENCE_NUMBER; an older epoch gets
//! INVALID_PRODUCER_EPOCH; KIP-360 epoch bumps; and the state survives a SIGKILL (rebuilt from
//! the log) and a clean restart (from its snapshot). Then librdkafka, idempotent, produces
//! through a proxy that cuts its connections at random: every record lands exactly once, in
//! order per partition.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, ProduceRequest,
    ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_tests::proxy::CuttingProxy;
use sluice_tests::wire::{call, connect, idempotent_batch};
use sluice_tests::Broker;

fn create_topic(s: &mut TcpStream, topic: &str, partitions: i32) {
    let r: CreateTopicsResponse = call(
        s,
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]),
    );
    assert_eq!(r.topics[0].error_code, 0);
}

fn init_producer_id(s: &mut TcpStream, current: Option<(i64, i16)>) -> (i64, i16) {
    let (id, epoch) = current.unwrap_or((-1, -1));
    let r: InitProducerIdResponse = call(
        s,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
    );
    assert_eq!(r.error_code, 0);
    (r.producer_id.0, r.producer_epoch)
}

/// A Produce of one batch to partition 0 of `idem`.
fn produce_request(acks: i16, batch: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("idem")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch)))])])
}

/// The (error code, base offset) a Produce response gives its one partition.
fn answer_of(r: &ProduceResponse) -> (i16, i64) {
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Produces one batch with `acks`; returns (error code, base offset).
fn produce_with(s: &mut TcpStream, acks: i16, batch: Vec<u8>) -> (i16, i64) {
    answer_of(&call(s, ApiKey::Produce, 11, &produce_request(acks, batch)))
}

/// Produces one batch with acks=all; returns (error code, base offset).
fn produce(s: &mut TcpStream, batch: Vec<u8>) -> (i16, i64) {
    produce_with(s, -1, batch)
}

fn log_end(s: &mut TcpStream) -> i64 {
    let r: ListOffsetsResponse = call(
        s,
        ApiKey::ListOffsets,
        7,
        &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("idem")))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]),
    );
    r.topics[0].partitions[0].offset
}

/// Starts a broker (one shard) that arms its storage fault points from `control`.
fn broker_with_fault_points(data_dir: tempfile::TempDir, control: &std::path::Path) -> Broker {
    let env = format!("SLUICE_FAULT_POINTS={}", control.display());
    Broker::start_wrapped(data_dir, &["env", &env], &["--cores", "1"])
}

/// A broker with fault points (none armed), topic `idem` (one partition), a connection and
/// an idempotent producer id.
struct FaultyBroker {
    _control_dir: tempfile::TempDir,
    control: std::path::PathBuf,
    broker: Broker,
    s: TcpStream,
    id: i64,
    epoch: i16,
}

impl FaultyBroker {
    fn start() -> FaultyBroker {
        let control_dir = tempfile::tempdir().unwrap();
        let control = control_dir.path().join("fault-points");
        let broker = broker_with_fault_points(tempfile::tempdir().unwrap(), &control);
        let mut s = connect(broker.addr);
        create_topic(&mut s, "idem", 1);
        let (id, epoch) = init_producer_id(&mut s, None);
        FaultyBroker {
            _control_dir: control_dir,
            control,
            broker,
            s,
            id,
            epoch,
        }
    }

    /// Arms the broker's fault points as `spec` says (see [`arm`]).
    fn arm(&self, spec: &str) {
        arm(&self.broker, &self.control, spec);
    }

    /// The producer's batch of `records` records from `sequence`.
    fn batch(&self, sequence: i32, records: usize) -> Vec<u8> {
        idempotent_batch(self.id, self.epoch, sequence, records)
    }

    /// Produces the producer's batch (see [`FaultyBroker::batch`]) with `acks`.
    fn produce_with(&mut self, acks: i16, sequence: i32, records: usize) -> (i16, i64) {
        let batch = self.batch(sequence, records);
        produce_with(&mut self.s, acks, batch)
    }

    /// Produces the producer's batch with acks=all.
    fn produce(&mut self, sequence: i32, records: usize) -> (i16, i64) {
        self.produce_with(-1, sequence, records)
    }

    /// Produces the producer's batch (acks=all) again while it is refused with
    /// KAFKA_STORAGE_ERROR, for up to 10 s (a log refusing appends for space finds out by
    /// itself that space is back).
    fn produce_once_space_is_back(&mut self, sequence: i32, records: usize) -> (i16, i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.produce(sequence, records) {
                (56, _) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                answer => break answer,
            }
        }
    }
}

/// Writes the control file and waits until the broker says it took it.
fn arm(broker: &Broker, control: &std::path::Path, spec: &str) {
    let changes = broker.log().matches("fault points changed").count();
    std::fs::write(control, spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.log().matches("fault points changed").count() == changes {
        assert!(Instant::now() < deadline, "the broker never took {spec:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Found by `sluice chaos` (single broker, seed 3, fdatasync_eio): a batch written to the
/// log whose fdatasync then failed was answered KAFKA_STORAGE_ERROR, which librdkafka takes
/// as "not persisted", and the batches in flight behind it OUT_OF_ORDER_SEQUENCE_NUMBER; the
/// producer bumped its epoch, renumbered the batch, and after the restart (which recovered
/// the written batch) stored it twice. Now: the written batch is answered possibly persisted
/// (NOT_ENOUGH_REPLICAS_AFTER_APPEND), those behind it KAFKA_STORAGE_ERROR, and its retry
/// after the restart is recognised as a duplicate.
#[test]
fn a_batch_whose_fdatasync_failed_is_possibly_persisted_and_its_retry_lands_once() {
    let FaultyBroker {
        _control_dir,
        control,
        broker,
        mut s,
        id,
        epoch,
    } = FaultyBroker::start();
    assert_eq!(produce(&mut s, idempotent_batch(id, epoch, 0, 2)), (0, 0));

    arm(&broker, &control, "storage::fdatasync=return(eio)");
    assert_eq!(
        produce(&mut s, idempotent_batch(id, epoch, 2, 3)).0,
        20,
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND: written, durability unknown"
    );
    assert_eq!(
        produce(&mut s, idempotent_batch(id, epoch, 5, 1)).0,
        56,
        "KAFKA_STORAGE_ERROR for the next batch, not OUT_OF_ORDER_SEQUENCE_NUMBER (45)"
    );
    assert!(
        broker.log().contains("fault point fired"),
        "{}",
        broker.log()
    );
    arm(&broker, &control, "");
    // Until the broker restarts the log's state is unknown: a retry of the written batch is
    // answered possibly persisted again (never "not persisted", which would let the client
    // renumber it), a new batch is refused.
    assert_eq!(produce(&mut s, idempotent_batch(id, epoch, 2, 3)).0, 20);
    assert_eq!(produce(&mut s, idempotent_batch(id, epoch, 5, 1)).0, 56);

    drop(s);
    let broker = broker_with_fault_points(broker.stop(), &control);
    let mut s = connect(broker.addr);
    // The written batch came back with the log: its retry is a duplicate, not a new append.
    assert_eq!(produce(&mut s, idempotent_batch(id, epoch, 2, 3)), (0, 2));
    assert_eq!(produce(&mut s, idempotent_batch(id, epoch, 5, 1)), (0, 5));
    assert_eq!(log_end(&mut s), 6, "every record once");
}

/// Found by `sluice chaos` (single broker, seeds 152 and 157, fallocate_enospc): a batch whose
/// space reservation the disk refused was answered KAFKA_STORAGE_ERROR, but the producer's next
/// batch in flight, checked against a sequence the refused one never advanced, was answered
/// OUT_OF_ORDER_SEQUENCE_NUMBER; librdkafka then bumped its epoch and renumbered every
/// unacknowledged batch, a possibly persisted one on another partition included, which was
/// stored twice. Now the refusal holds for every append until space is reserved again.
#[test]
fn a_refused_space_reservation_refuses_the_batches_behind_it_until_space_is_back() {
    let mut b = FaultyBroker::start();
    b.arm("storage::fallocate=return(enospc)");
    assert_eq!(
        b.produce(0, 2).0,
        56,
        "KAFKA_STORAGE_ERROR: no space reserved, nothing written"
    );
    assert_eq!(
        b.produce(2, 3).0,
        56,
        "the batch behind it is refused the same way, not OUT_OF_ORDER_SEQUENCE_NUMBER (45)"
    );
    let log = b.broker.log();
    assert!(log.contains("the disk refused to reserve space"), "{log}");
    b.arm("");
    // Space is back: the log finds out by itself and takes both batches, in order.
    let first = b.produce_once_space_is_back(0, 2);
    assert_eq!(first, (0, 0), "{}", b.broker.log());
    assert_eq!(b.produce(2, 3), (0, 2));
    assert_eq!(log_end(&mut b.s), 5, "every record once");
    let log = b.broker.log();
    assert!(log.contains("appends are taken again"), "{log}");
}

/// A control file that stops parsing while points are armed disarms every point (the
/// broker says so), instead of leaving the last faults firing.
#[test]
fn a_fault_point_control_file_gone_bad_disarms_every_point() {
    let mut b = FaultyBroker::start();
    b.arm("storage::fallocate=return(enospc)");
    assert_eq!(b.produce(0, 2).0, 56);

    std::fs::write(&b.control, "storage::fallocate=return(enospc\nnot a line\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.broker.log().contains("fault points left disarmed") {
        assert!(Instant::now() < deadline, "{}", b.broker.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let landed = b.produce_once_space_is_back(0, 2);
    assert_eq!(landed, (0, 0), "the reservation goes through once disarmed");
}

/// Found by `sluice chaos` (single broker, seed 115 of kill, pause, disk_full, write_eio,
/// fdatasync_eio, fallocate_enospc, slow_disk, clock_jump; 30 s: 15 acknowledged records
/// lost): while a clean stop was closing the partitions, a produce opened one of them again,
/// a second instance of a log the first was still closing; both wrote segments, the restart
/// found them overlapping and dropped the later one, acknowledged records with it. Once the
/// stop closes partitions, none is opened again: the produce is refused (retriable).
#[test]
fn a_produce_during_a_clean_stop_does_not_open_a_closing_partition_again() {
    let mut b = FaultyBroker::start();
    assert_eq!(b.produce(0, 2), (0, 0));
    // Slow fdatasyncs keep the stop closing the partition for seconds.
    b.arm("storage::fdatasync=return(stall:3000)");
    assert_eq!(b.produce_with(1, 2, 3).0, 0, "buffered");

    b.broker.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.broker.log().contains("closing the partitions") {
        assert!(Instant::now() < deadline, "{}", b.broker.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Answered with an error, or not at all (the connection closes with the broker).
    use std::io::Write;
    let request =
        sluice_tests::wire::request(ApiKey::Produce, 11, 7, &produce_request(-1, b.batch(5, 1)));
    let answered =
        b.s.write_all(&request)
            .ok()
            .and_then(|()| sluice_tests::wire::read_frame(&mut b.s));
    if let Some(mut frame) = answered {
        use kafka_protocol::protocol::Decodable;
        kafka_protocol::messages::ResponseHeader::decode(
            &mut frame,
            ApiKey::Produce.response_header_version(11),
        )
        .unwrap();
        let answer = answer_of(&ProduceResponse::decode(&mut frame, 11).unwrap());
        assert_ne!(answer.0, 0, "taken by a partition that is closing");
    }
    let FaultyBroker {
        _control_dir,
        control,
        broker,
        ..
    } = b;
    let dir = broker.stop();
    let stopped_log = std::fs::read_to_string(dir.path().join("sluice.log")).unwrap();
    let partition_opens = stopped_log
        .lines()
        .filter(|l| l.contains("log opened") && l.contains("/idem-"))
        .count();
    assert_eq!(
        partition_opens, 1,
        "the partition was opened again during the stop:\n{stopped_log}"
    );
    std::fs::write(&control, "").unwrap();
    let broker = broker_with_fault_points(dir, &control);
    let mut s = connect(broker.addr);
    assert_eq!(log_end(&mut s), 5, "every acknowledged record, once");
    assert!(!broker.log().contains("overlaps"), "{}", broker.log());
}

#[test]
fn retries_land_once_and_sequence_rules_hold_across_restarts() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);
    create_topic(&mut s, "idem", 2);
    let (id, epoch) = init_producer_id(&mut s, None);
    assert!(id >= 0);
    assert_eq!(epoch, 0);

    assert_eq!(produce(&mut s, idempotent_batch(id, 0, 0, 3)), (0, 0));
    assert_eq!(
        produce(&mut s, idempotent_batch(id, 0, 0, 3)),
        (0, 0),
        "a retry gets its original offset"
    );
    assert_eq!(log_end(&mut s), 3, "and is not appended again");
    assert_eq!(produce(&mut s, idempotent_batch(id, 0, 3, 2)), (0, 3));
    assert_eq!(
        produce(&mut s, idempotent_batch(id, 0, 9, 1)).0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER for a gap"
    );
    assert_eq!(
        produce(&mut s, idempotent_batch(id + 1000, 0, 4, 1)).0,
        45,
        "an unknown producer starts at 0"
    );
    // KIP-360: the producer asks for a new epoch of its id; the old epoch is fenced.
    assert_eq!(init_producer_id(&mut s, Some((id, 0))), (id, 1));
    assert_eq!(produce(&mut s, idempotent_batch(id, 1, 0, 1)), (0, 5));
    assert_eq!(
        produce(&mut s, idempotent_batch(id, 0, 5, 1)).0,
        47,
        "INVALID_PRODUCER_EPOCH"
    );

    // SIGKILL: no snapshot was written; the state is rebuilt from the log.
    drop(s);
    let broker = Broker::start_on(broker.kill(), &["--cores", "2"]);
    let mut s = connect(broker.addr);
    assert_eq!(
        produce(&mut s, idempotent_batch(id, 1, 0, 1)),
        (0, 5),
        "dedup after SIGKILL"
    );
    assert_eq!(produce(&mut s, idempotent_batch(id, 1, 1, 1)), (0, 6));
    assert_eq!(produce(&mut s, idempotent_batch(id, 0, 7, 1)).0, 47);

    // Clean restart: from the snapshot written at shutdown.
    drop(s);
    let broker = Broker::start_on(broker.stop(), &["--cores", "2"]);
    let mut s = connect(broker.addr);
    assert_eq!(
        produce(&mut s, idempotent_batch(id, 1, 1, 1)),
        (0, 6),
        "dedup after restart"
    );
    assert_eq!(log_end(&mut s), 7);
    // Rebuilt from the log once, after the SIGKILL (no snapshot then); this start read the
    // snapshot, which covered the whole log.
    let rebuilt = broker
        .log()
        .lines()
        .filter(|l| l.contains("producer state rebuilt from the log") && l.contains("idem-"))
        .count();
    assert_eq!(rebuilt, 1, "{}", broker.log());
    let snapshot_dirs = std::fs::read_dir(broker.data_dir.path().join("topics"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("idem-"))
        .filter(|e| e.path().join("0").join("producer-state").exists())
        .count();
    assert_eq!(snapshot_dirs, 1, "the snapshot file exists");
    let (fresh, _) = init_producer_id(&mut s, None);
    assert_ne!(
        fresh, id,
        "producer ids are never handed out twice, restarts included"
    );
}

struct Deliveries(Arc<Mutex<(usize, usize)>>);
impl ClientContext for Deliveries {}
impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut d = self.0.lock().unwrap();
        if result.is_ok() {
            d.0 += 1;
        } else {
            d.1 += 1;
        }
    }
}

#[test]
fn librdkafka_idempotent_through_cut_connections_writes_each_record_once_in_order() {
    const RECORDS: u64 = 20_000;
    const PARTITIONS: i32 = 3;
    let mut proxy = CuttingProxy::bind();
    let port = proxy.addr.port().to_string();
    let broker = Broker::start(&["--cores", "2", "--advertised-port", &port]);
    create_topic(&mut connect(broker.addr), "cut", PARTITIONS);
    proxy.start(broker.addr, (40, 200), 0x5eed);

    let deliveries = Arc::new(Mutex::new((0usize, 0usize)));
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", proxy.addr.to_string())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "120000")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "100")
        .create_with_context(Deliveries(deliveries.clone()))
        .expect("producer");
    let deadline = Instant::now() + Duration::from_secs(120);
    for seq in 0..RECORDS {
        let payload = seq.to_string();
        let mut record = BaseRecord::to("cut")
            .payload(&payload)
            .key(&payload)
            .partition((seq % PARTITIONS as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    assert!(Instant::now() < deadline, "queue never drained");
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        // Paced (about 8 s in all), so the run spans many connection lifetimes.
        if seq % 100 == 0 {
            producer.poll(Duration::from_millis(40));
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let (delivered, failed) = *deliveries.lock().unwrap();
    assert_eq!((delivered, failed), (RECORDS as usize, 0));
    let cuts = proxy.cuts();
    assert!(cuts >= 5, "the proxy cut connections ({cuts})");
    proxy.heal();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "sluice-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset("cut", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut per_partition: HashMap<i32, Vec<u64>> = HashMap::new();
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(m) => {
                let m = m.expect("no consume error");
                let seq: u64 = std::str::from_utf8(m.payload().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                per_partition.entry(m.partition()).or_default().push(seq);
                total += 1;
            }
            None if total >= RECORDS as usize => break,
            None => {}
        }
    }
    assert_eq!(
        total, RECORDS as usize,
        "every record exactly once (no duplicates, none lost)"
    );
    for (partition, seqs) in per_partition {
        let expected: Vec<u64> = (0..RECORDS)
            .filter(|s| (s % PARTITIONS as u64) as i32 == partition)
            .collect();
        assert_eq!(seqs, expected, "partition {partition}: in order, each once");
    }
}
