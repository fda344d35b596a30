//! Cluster mode: three `sluice serve` processes on loopback, replication factor 3, with
//! librdkafka as the client.
//!
//! The leader of a partition is SIGKILLed and restarted again and again while an idempotent
//! producer (acks=all) writes: afterwards every acknowledged record is in the log exactly once,
//! at the offset it was acknowledged with, and every replica's log holds the same batches.
//! A consumer group's committed offsets survive the SIGKILL of its coordinator: the group's
//! next consumer resumes exactly where the first one committed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_storage::{Log, LogConfig};
use sluice_tests::cluster::{free_ports, metadata, partition_dir, Cluster};

const TOPIC: &str = "orders";

/// The tests of this file run one at a time: each starts three nodes, and timing (elections,
/// the ISR lag) should not depend on how many other clusters share the two cores.
fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
const PARTITIONS: i32 = 3;

/// A delivery report: the payload, and (partition, offset) or the error.
type Report = (String, Result<(i32, i64), String>);

/// Delivery reports, in the order librdkafka gave them.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<Report>>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let (payload, outcome) = match result {
            Ok(m) => (
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                Ok((m.partition(), m.offset())),
            ),
            Err((e, m)) => (
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                Err(e.to_string()),
            ),
        };
        self.0.lock().unwrap().push((payload, outcome));
    }
}

fn create_topic(cluster: &Cluster) {
    create_topic_named(cluster, TOPIC);
}

fn create_topic_named(cluster: &Cluster, name: &str) {
    create_topics_through(
        cluster,
        &[NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(3))],
    );
}

/// Creates `topics` with librdkafka's admin client through any node; every one must succeed.
fn create_topics_through(cluster: &Cluster, topics: &[NewTopic]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let created = futures::executor::block_on(admin.create_topics(
        topics,
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("CreateTopics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}

/// Assigns partitions `0..partitions` of `topic` from offset 0. Not from the logical
/// BEGINNING: librdkafka (2.x) resolving a logical offset while the partition's leader moves
/// can let a stale offset query land after fetching started and rewind the position (seen as
/// records read twice, with its log saying "timed offset query ... in state active").
fn assign_from_offset_zero(consumer: &BaseConsumer, topic: &str, partitions: i32) {
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Offset(0))
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
}

/// `topic` as a Metadata answer describes it.
fn topic_in<'a>(
    answer: &'a kafka_protocol::messages::MetadataResponse,
    topic: &str,
) -> Option<&'a kafka_protocol::messages::metadata_response::MetadataResponseTopic> {
    answer
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
}

/// The leader of `topic`'s `partition` and its epoch, as a running node reports them, once a
/// running node leads.
fn leader_of(cluster: &Cluster, topic: &str, partition: i32) -> (i32, i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            let answer = metadata(node.kafka);
            let (leader, epoch) = topic_in(&answer, topic)
                .and_then(|t| t.partitions.iter().find(|p| p.partition_index == partition))
                .map_or((-1, -1), |p| (p.leader_id.0, p.leader_epoch));
            if leader >= 0 && cluster.node(leader).is_running() {
                return (leader, epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader for {topic} partition {partition}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every batch of a stopped node's replica of `partition`, as stored.
fn stored_batches(cluster: &Cluster, node: i32, partition: i32) -> Vec<(i64, Vec<u8>)> {
    stored_batches_of(cluster, node, TOPIC, partition)
}

fn stored_batches_of(
    cluster: &Cluster,
    node: i32,
    topic: &str,
    partition: i32,
) -> Vec<(i64, Vec<u8>)> {
    let dir = partition_dir(&cluster.data_dir(node), topic, partition);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let log = Log::open(&dir, LogConfig::default()).await.expect("open");
            let mut batches = Vec::new();
            let mut at = log.log_start_offset();
            while at < log.log_end_offset() {
                let read = log.read(at, 1 << 20).await.expect("read");
                let mut rest = &read.bytes[..];
                while !rest.is_empty() {
                    let info = sluice_storage::batch::validate_batch(rest, usize::MAX)
                        .expect("a valid batch");
                    batches.push((info.base_offset.0, rest[..info.size_bytes].to_vec()));
                    rest = &rest[info.size_bytes..];
                }
                at = read.next_offset;
            }
            log.close().await.expect("close");
            batches
        })
        .expect("executor")
        .join()
        .expect("read the log")
}

#[test]
fn acknowledged_records_survive_repeated_leader_kills_on_every_replica() {
    // Two shards per node: partitions live on both, and each shard talks to its peers.
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &["--cores", "2"]);
    create_topic(&cluster);
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create_with_context(deliveries.clone())
        .expect("producer");
    // A consumer reads along the whole time, through every failover (its position checked
    // with OffsetForLeaderEpoch by librdkafka on each new leader: a wrong epoch answer would
    // reset it and show as records read twice).
    let stop_reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let read_along: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let stop = stop_reading.clone();
        let read = read_along.clone();
        let bootstrap = cluster.bootstrap();
        std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "alongside-no-commits")
                .set("enable.auto.commit", "false")
                .set("topic.metadata.refresh.interval.ms", "500")
                .create()
                .expect("consumer");
            assign_from_offset_zero(&consumer, TOPIC, PARTITIONS);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                    let payload = message.payload().unwrap_or_default();
                    read.lock().unwrap().push(format!(
                        "{}@{}-{}",
                        String::from_utf8_lossy(payload),
                        message.partition(),
                        message.offset()
                    ));
                }
            }
        })
    };

    // Records go out steadily while leaders die: 10 kills, rotating over the partitions.
    let mut sent = 0u64;
    let mut send_some = |producer: &ThreadedProducer<Deliveries>, count: u64| {
        for _ in 0..count {
            let payload = format!("record-{sent}");
            let key = sent.to_string();
            let partition = (sent % PARTITIONS as u64) as i32;
            let record = BaseRecord::to(TOPIC)
                .partition(partition)
                .key(&key)
                .payload(&payload);
            if let Err((e, _)) = producer.send(record) {
                panic!(
                    "queue a record: {e}; fatal: {:?}",
                    producer.client().fatal_error()
                );
            }
            sent += 1;
        }
    };
    send_some(&producer, 300);
    let kills = 10;
    for round in 0..kills {
        let partition = round % PARTITIONS;
        let (leader, _) = leader_of(&cluster, TOPIC, partition);
        cluster.kill(leader);
        for _ in 0..5 {
            send_some(&producer, 60);
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster.restart(leader);
        for _ in 0..3 {
            send_some(&producer, 60);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    send_some(&producer, 300);
    producer
        .flush(Duration::from_secs(120))
        .expect("every record answered");

    let reports = deliveries.0.lock().unwrap().clone();
    assert_eq!(reports.len() as u64, sent);
    let failed: Vec<_> = reports.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {sent} records failed; first: {:?}",
        failed.len(),
        failed.first()
    );
    eprintln!("{sent} records acknowledged through {kills} leader kills");
    let acknowledged: HashMap<String, (i32, i64)> = reports
        .into_iter()
        .map(|(payload, r)| (payload, r.expect("checked")))
        .collect();

    // The consumer that read along gets everything, once (and then nothing more).
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_along.lock().unwrap().len() < acknowledged.len() {
        assert!(
            Instant::now() < deadline,
            "the consumer reading along has {} of {}",
            read_along.lock().unwrap().len(),
            acknowledged.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop_reading.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("the reader");
    let read_along: Vec<String> = read_along.lock().unwrap().clone();
    let mut where_read: HashMap<&str, Vec<&str>> = HashMap::new();
    for entry in &read_along {
        let (payload, at) = entry.split_once('@').expect("payload@partition-offset");
        where_read.entry(payload).or_default().push(at);
    }
    let twice: Vec<_> = where_read.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "the consumer reading along saw {} records twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let distinct: HashSet<String> = where_read.keys().map(|p| p.to_string()).collect();
    for payload in acknowledged.keys() {
        assert!(
            distinct.contains(payload),
            "the consumer reading along missed {payload}"
        );
    }

    // Read back from the leaders: each acknowledged record once, at its offset; nothing else.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "unused-no-commits")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    assign_from_offset_zero(&consumer, TOPIC, PARTITIONS);
    let mut read: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < acknowledged.len() {
        assert!(
            Instant::now() < deadline,
            "read {} of {} records",
            read.len(),
            acknowledged.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("a record");
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
            assert!(seen.insert(payload.to_string()), "{payload} twice");
            read.insert((message.partition(), message.offset()), payload.to_string());
        }
    }
    for (payload, at) in &acknowledged {
        assert_eq!(read.get(at), Some(payload), "acknowledged at {at:?}");
    }
    assert_eq!(read.len(), acknowledged.len(), "nothing unacknowledged");
    drop(consumer);
    drop(producer);

    // Let every follower catch up, stop cleanly, and compare the replicas' logs.
    std::thread::sleep(Duration::from_secs(2));
    for node in 0..3 {
        cluster.stop(node);
    }
    for p in 0..PARTITIONS {
        let last_acked = acknowledged
            .values()
            .filter(|(partition, _)| *partition == p)
            .map(|(_, offset)| *offset)
            .max()
            .expect("records in every partition");
        let logs: Vec<Vec<(i64, Vec<u8>)>> = (0..3)
            .map(|node| stored_batches(&cluster, node, p))
            .collect();
        for (node, log) in logs.iter().enumerate() {
            let end = log.last().map_or(0, |(base, bytes)| {
                let info = sluice_storage::batch::validate_batch(bytes, usize::MAX).unwrap();
                base + i64::from(info.last_offset_delta) + 1
            });
            assert!(
                end > last_acked,
                "node {node}'s replica of partition {p} ends at {end}, before {last_acked}"
            );
        }
        assert_replicas_agree(&logs, &format!("partition {p}"));
    }
}

/// The replicas' logs are identical up to the shortest; past it they hold only Raft's own
/// entries (control batches): a clean stop hands leaderships over, and the nodes stopped
/// later append the new leaders' entries the ones stopped before never see.
fn assert_replicas_agree(logs: &[Vec<(i64, Vec<u8>)>], what: &str) {
    let shortest = logs.iter().map(Vec::len).min().unwrap_or(0);
    for (node, log) in logs.iter().enumerate() {
        assert_eq!(
            log[..shortest],
            logs[0][..shortest],
            "node {node}'s replica of {what} differs"
        );
        for (base, bytes) in &log[shortest..] {
            let info = sluice_storage::batch::validate_batch(bytes, usize::MAX).unwrap();
            assert!(
                info.is_control(),
                "node {node}'s replica of {what} has data at {base} the others lack"
            );
        }
    }
}

/// The node coordinating `group`, as a running node answers FindCoordinator.
fn coordinator_of(cluster: &Cluster, group: &str) -> i32 {
    coordinator_by(cluster, 0, group)
}

/// The node FindCoordinator names for transactional id `id` (the first request creates
/// `__transaction_state`: asked again until a node is named).
fn txn_coordinator_of(cluster: &Cluster, id: &str) -> i32 {
    coordinator_by(cluster, 1, id)
}

fn coordinator_by(cluster: &Cluster, key_type: i8, group: &str) -> i32 {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            let mut s = sluice_tests::wire::connect(node.kafka);
            let answer: FindCoordinatorResponse = sluice_tests::wire::call(
                &mut s,
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string(group.to_string()))
                    .with_key_type(key_type),
            );
            if answer.error_code == 0 && cluster.node(answer.node_id.0).is_running() {
                return answer.node_id.0;
            }
        }
        assert!(Instant::now() < deadline, "no coordinator for {group}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn group_consumer(cluster: &Cluster, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

#[test]
fn committed_offsets_survive_the_coordinators_death() {
    let topic = "payments";
    let group = "settlement";
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &["--offsets-partitions", "5"]);
    create_topic_named(&cluster, topic);
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .create_with_context(Deliveries::default())
        .expect("producer");
    let total = 300;
    for n in 0..total {
        let payload = format!("payment-{n}");
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .partition(n % PARTITIONS)
                    .payload(&payload),
            )
            .expect("queue");
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");

    // The first consumer reads about half, commits synchronously and leaves.
    let mut read = HashSet::new();
    let first = group_consumer(&cluster, group, topic);
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < total as usize / 2 {
        assert!(
            Instant::now() < deadline,
            "the first consumer read {}",
            read.len()
        );
        if let Some(message) = first.poll(Duration::from_millis(200)) {
            let message = message.expect("a record");
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
            assert!(read.insert(payload.to_string()), "{payload} twice");
        }
    }
    first
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    drop(first);

    // Its coordinator dies; the group's next consumer finds the new one and resumes exactly at
    // the committed offsets: every record once between the two.
    let coordinator = coordinator_of(&cluster, group);
    cluster.kill(coordinator);
    let second = group_consumer(&cluster, group, topic);
    let deadline = Instant::now() + Duration::from_secs(90);
    while read.len() < total as usize {
        assert!(
            Instant::now() < deadline,
            "read {} of {total} after the coordinator died",
            read.len()
        );
        // Errors are the dead node's connection, reported and retried by librdkafka.
        if let Some(Ok(message)) = second.poll(Duration::from_millis(200)) {
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
            assert!(read.insert(payload.to_string()), "{payload} read again");
        }
    }
    // Nothing more arrives.
    for _ in 0..5 {
        if let Some(Ok(message)) = second.poll(Duration::from_millis(200)) {
            panic!("an extra record: {:?}", message.payload());
        }
    }
    assert_ne!(coordinator_of(&cluster, group), coordinator);
}

#[test]
fn cluster_dev_runs_three_nodes_and_stops_them_all_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let _one_at_a_time = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let kafka = free_ports(3);
    let rpc = free_ports(30);
    let admin = free_ports(3);
    let mut dev = std::process::Command::new(sluice_tests::sluice_binary())
        .args(["cluster", "dev", "--nodes", "3"])
        .args([
            "--kafka-port",
            &kafka.to_string(),
            "--rpc-port",
            &rpc.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start sluice cluster dev");
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    let bootstrap = loop {
        let line = lines.next().expect("a line").expect("readable");
        if let Some(rest) = line.strip_prefix("node ") {
            let pid = rest
                .split(", ")
                .next()
                .unwrap()
                .split("pid ")
                .nth(1)
                .unwrap();
            pids.push(pid.parse::<u32>().unwrap());
        }
        if let Some(list) = line.strip_prefix("bootstrap: ") {
            break list.to_string();
        }
    };
    assert_eq!(pids.len(), 3);
    // A real client uses it: three brokers, a replicated topic, records through.
    let first: std::net::SocketAddr = bootstrap.split(',').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metadata(first).brokers.len() < 3 || metadata(first).controller_id.0 < 0 {
        assert!(Instant::now() < deadline, "the dev cluster did not form");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let created = futures::executor::block_on(admin.create_topics(
        [&NewTopic::new("dev", 1, TopicReplication::Fixed(3))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    // Sluice's own tool finds the controller from any node.
    for node in bootstrap.split(',') {
        let name = format!("cli-{}", node.rsplit(':').next().unwrap());
        let out = std::process::Command::new(sluice_tests::sluice_binary())
            .args(["topic", "create", &name, "--replication-factor", "3"])
            .args(["--bootstrap", node])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .create_with_context(deliveries.clone())
        .unwrap();
    for n in 0..10 {
        producer
            .send(BaseRecord::<(), _>::to("dev").payload(&format!("r{n}")))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let delivered = deliveries.0.lock().unwrap().clone();
    assert_eq!(delivered.len(), 10);
    assert!(delivered.iter().all(|(_, r)| r.is_ok()), "{delivered:?}");
    drop(producer);

    // Ctrl-C: every node stops, then the command exits cleanly.
    std::process::Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "cluster dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node pid {pid} still runs"
        );
    }
}

/// One Produce (v9) of `values` (one batch) to partition 0 of `topic` with `acks`, straight
/// on the wire to `node`; the partition's error code and base offset.
fn produce_on_wire(
    node: std::net::SocketAddr,
    topic: &str,
    acks: i16,
    values: &[&[u8]],
) -> (i16, i64) {
    let records: Vec<(i64, &[u8], &[u8])> =
        values.iter().map(|v| (0, b"k".as_slice(), *v)).collect();
    let batch = sluice_storage::batch::build_batch(0, &records);
    produce_batch_on_wire(node, topic, acks, batch)
}

/// One Produce (v9) of `batch` to partition 0 of `topic` with `acks` (see [`produce_on_wire`]).
fn produce_batch_on_wire(
    node: std::net::SocketAddr,
    topic: &str,
    acks: i16,
    batch: Vec<u8>,
) -> (i16, i64) {
    let (code, offset, _) = produce_batch_explained(node, topic, acks, batch);
    (code, offset)
}

/// [`produce_batch_on_wire`] with the partition's error message ("" when none).
fn produce_batch_explained(
    node: std::net::SocketAddr,
    topic: &str,
    acks: i16,
    batch: Vec<u8>,
) -> (i16, i64, String) {
    let mut s = sluice_tests::wire::connect(node);
    let partition = sluice_tests::wire::produce(&mut s, acks, None, topic, 0, batch);
    let message = partition
        .error_message
        .as_ref()
        .map_or_else(String::new, |m| m.to_string());
    (partition.error_code, partition.base_offset, message)
}

/// One record with acks=all (see [`produce_on_wire`]); the error code.
fn produce_one(node: std::net::SocketAddr, topic: &str) -> i16 {
    produce_on_wire(node, topic, -1, &[b"v"]).0
}

/// Produces one record (acks=all) to `leader` until it takes it, within 20 s. Metadata names
/// a new leader a step before it serves (once the first entry of its term is applied), and it
/// answers NOT_LEADER_OR_FOLLOWER until then, which clients retry; so does this, and any other
/// answer fails the test.
fn produce_once_serving(leader: std::net::SocketAddr, topic: &str) {
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match produce_one(leader, topic) {
            0 => return,
            NOT_LEADER_OR_FOLLOWER if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            code => panic!("{topic}: the leader at {leader} answered error {code}"),
        }
    }
}

/// The ISR of `topic`'s partition 0 as `node` answers Metadata.
fn in_sync(node: std::net::SocketAddr, topic: &str) -> Vec<i32> {
    let answer = metadata(node);
    let t = topic_in(&answer, topic).expect("the topic");
    t.partitions[0].isr_nodes.iter().map(|b| b.0).collect()
}

#[test]
fn a_paused_follower_leaves_the_isr_and_min_insync_replicas_decides() {
    const NOT_ENOUGH_REPLICAS: i16 = 19;
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &["--replica-lag-time-max-ms", "2000"]);
    create_topics_through(
        &cluster,
        &[
            NewTopic::new("two", 1, TopicReplication::Fixed(3)).set("min.insync.replicas", "2"),
            NewTopic::new("three", 1, TopicReplication::Fixed(3)).set("min.insync.replicas", "3"),
        ],
    );
    let (two, three) = (
        leader_of(&cluster, "two", 0).0,
        leader_of(&cluster, "three", 0).0,
    );
    // Everything in sync: both topics take acks=all.
    for (topic, leader) in [("two", two), ("three", three)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while produce_one(cluster.node(leader).kafka, topic) != 0 {
            assert!(Instant::now() < deadline, "{topic} refuses acks=all");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut expected = vec![leader];
        expected.extend((0..3).filter(|n| *n != leader));
        assert_eq!(in_sync(cluster.node(leader).kafka, topic), expected);
    }
    // Pause a node that leads neither: after the lag it leaves both ISRs.
    let follower = (0..3).find(|n| *n != two && *n != three).unwrap();
    cluster.pause(follower, true);
    std::thread::sleep(Duration::from_millis(4500));
    for (topic, leader) in [("two", two), ("three", three)] {
        let isr = in_sync(cluster.node(leader).kafka, topic);
        assert_eq!(isr.len(), 2, "{topic}: {isr:?}");
        assert!(!isr.contains(&follower), "{topic}: {isr:?}");
    }
    assert_eq!(
        produce_one(cluster.node(two).kafka, "two"),
        0,
        "2 of 3 suffice"
    );
    assert_eq!(
        produce_one(cluster.node(three).kafka, "three"),
        NOT_ENOUGH_REPLICAS,
        "min.insync.replicas=3 with 2 in sync"
    );
    // Back: it catches up and rejoins, and acks=all works again for both.
    cluster.pause(follower, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_sync(cluster.node(three).kafka, "three").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the follower did not rejoin the ISR: {:?}",
            in_sync(cluster.node(three).kafka, "three")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(produce_one(cluster.node(three).kafka, "three"), 0);
}

#[test]
fn an_isolated_leaders_unreplicated_suffix_is_truncated_when_it_returns() {
    let topic = "ledger";
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &[]);
    create_topic_named(&cluster, topic);
    let produce = |cluster: &Cluster, acks: &str, from: u64, count: u64| {
        let deliveries = Deliveries::default();
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .set("acks", acks)
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .create_with_context(deliveries.clone())
            .unwrap();
        for n in from..from + count {
            let payload = format!("entry-{n}");
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .partition(0)
                        .payload(&payload),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(60)).unwrap();
        let reports = deliveries.0.lock().unwrap().clone();
        reports
    };
    let before = produce(&cluster, "all", 0, 50);
    assert!(before.iter().all(|(_, r)| r.is_ok()), "{before:?}");

    // The leader of partition 0 loses its followers (paused): it still takes acks=1 writes
    // for a moment, which nobody else gets; then everyone dies, and the old leader comes back
    // last, with a suffix nobody else has.
    let (leader, isolated_epoch) = leader_of(&cluster, topic, 0);
    let followers: Vec<i32> = (0..3).filter(|n| *n != leader).collect();
    for f in &followers {
        cluster.pause(*f, true);
    }
    let lost: Vec<String> = (0..5).map(|n| format!("lost-{n}")).collect();
    let lost: Vec<&[u8]> = lost.iter().map(|v| v.as_bytes()).collect();
    let (isolated, lost_at) = produce_on_wire(cluster.node(leader).kafka, topic, 1, &lost);
    assert_eq!(isolated, 0, "the isolated leader acknowledges acks=1");
    cluster.kill(leader);
    // The followers die paused, so the appends waiting in their sockets die with them (resumed,
    // they would take them: a majority would then hold the batch and it would commit).
    for f in &followers {
        cluster.kill(*f);
        cluster.restart(*f);
    }
    // The others elect a leader and go on; the old leader returns and follows.
    let after = produce(&cluster, "all", 50, 50);
    assert!(after.iter().all(|(_, r)| r.is_ok()), "{after:?}");
    cluster.restart(leader);
    let last = produce(&cluster, "all", 100, 10);
    assert!(last.iter().all(|(_, r)| r.is_ok()), "{last:?}");

    // A consumer sees every acks=all record once and none of the lost ones.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "ledger-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    assign_from_offset_zero(&consumer, topic, 1);
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < 110 {
        assert!(Instant::now() < deadline, "read {} of 110", read.len());
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            read.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
    }
    let expected: Vec<String> = (0..110).map(|n| format!("entry-{n}")).collect();
    assert_eq!(read, expected);
    drop(consumer);

    // A client that had read the lost records (epoch `isolated_epoch`, up to lost_at + 5)
    // learns from OffsetForLeaderEpoch that the epoch ended before them (KIP-320).
    let ended = {
        use kafka_protocol::messages::offset_for_leader_epoch_request::{
            OffsetForLeaderPartition, OffsetForLeaderTopic,
        };
        use kafka_protocol::messages::{
            ApiKey, BrokerId, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut answered = None;
            for node in cluster.nodes.iter().filter(|n| n.is_running()) {
                let mut s = sluice_tests::wire::connect(node.kafka);
                let answer: OffsetForLeaderEpochResponse = sluice_tests::wire::call(
                    &mut s,
                    ApiKey::OffsetForLeaderEpoch,
                    4,
                    &OffsetForLeaderEpochRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![OffsetForLeaderTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                            .with_partitions(vec![OffsetForLeaderPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(-1)
                                .with_leader_epoch(isolated_epoch)])]),
                );
                let p = &answer.topics[0].partitions[0];
                if p.error_code == 0 {
                    answered = Some((p.leader_epoch, p.end_offset));
                }
            }
            if let Some(answer) = answered {
                break answer;
            }
            assert!(
                Instant::now() < deadline,
                "no leader answers OffsetForLeaderEpoch"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(ended.0, isolated_epoch);
    assert!(
        ended.1 <= lost_at,
        "epoch {isolated_epoch} ends at {}, the lost records began at {lost_at}",
        ended.1
    );

    // The returned node cut its suffix: the three logs end identical, without "lost-".
    std::thread::sleep(Duration::from_secs(2));
    for node in 0..3 {
        cluster.stop(node);
    }
    let logs: Vec<Vec<(i64, Vec<u8>)>> = (0..3)
        .map(|node| stored_batches_of(&cluster, node, topic, 0))
        .collect();
    assert_replicas_agree(&logs, topic);
    for (node, log) in logs.iter().enumerate() {
        let lost = log
            .iter()
            .any(|(_, bytes)| bytes.windows(5).any(|w| w == b"lost-"));
        assert!(
            !lost,
            "node {node} still holds the isolated leader's records"
        );
    }
}

#[test]
fn a_rolling_restart_under_load_loses_nothing() {
    let _one_at_a_time = one_cluster_at_a_time();
    let topic = "rolling";
    let mut cluster = Cluster::start(3, &[]);
    create_topic_named(&cluster, topic);
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create_with_context(deliveries.clone())
        .expect("producer");
    let mut sent = 0u64;
    let mut send_some = |producer: &ThreadedProducer<Deliveries>, count: u64| {
        for _ in 0..count {
            let payload = format!("r-{sent}");
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .partition((sent % PARTITIONS as u64) as i32)
                        .payload(&payload),
                )
                .expect("queue");
            sent += 1;
        }
    };
    send_some(&producer, 300);
    // One node at a time: SIGTERM (it hands its leaderships over, then stops), back again.
    for node in 0..3 {
        for _ in 0..3 {
            send_some(&producer, 50);
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopping = Instant::now();
        cluster.stop(node);
        let took = stopping.elapsed();
        eprintln!("node {node} stopped in {took:?}");
        assert!(
            took < Duration::from_secs(10),
            "node {node} took {took:?} to stop"
        );
        for _ in 0..5 {
            send_some(&producer, 50);
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.restart(node);
        std::thread::sleep(Duration::from_secs(1));
    }
    send_some(&producer, 300);
    let flushing = Instant::now();
    producer.flush(Duration::from_secs(120)).expect("flushed");
    eprintln!("flushed in {:?}", flushing.elapsed());
    let reports = deliveries.0.lock().unwrap().clone();
    assert_eq!(reports.len() as u64, sent);
    let failed: Vec<&Report> = reports.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    let acknowledged: HashMap<String, (i32, i64)> = reports
        .into_iter()
        .map(|(payload, r)| (payload, r.expect("checked")))
        .collect();
    drop(producer);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "rolling-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    assign_from_offset_zero(&consumer, topic, PARTITIONS);
    let mut read: HashMap<String, (i32, i64)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read.len() < acknowledged.len() {
        assert!(
            Instant::now() < deadline,
            "read {} of {}",
            read.len(),
            acknowledged.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
            let at = (message.partition(), message.offset());
            assert!(
                read.insert(payload.to_string(), at).is_none(),
                "{payload} twice"
            );
        }
    }
    assert_eq!(
        read, acknowledged,
        "every record once, where it was acknowledged"
    );
}

/// The low and high watermarks of `topic`'s partition 0, from its leader (asked again while
/// a node just restarted has not learnt the topic yet).
fn watermarks(cluster: &Cluster, topic: &str) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A client of its own each time: librdkafka keeps a topic it was told is unknown.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .create()
            .expect("consumer");
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(5)) {
            Ok(marks) => return marks,
            Err(e) if Instant::now() < deadline => {
                for node in cluster.nodes.iter().filter(|n| n.is_running()) {
                    let answer = metadata(node.kafka);
                    let t = topic_in(&answer, topic);
                    eprintln!(
                        "{}: {:?}",
                        node.kafka,
                        t.map(|t| (t.error_code, t.partitions.clone()))
                    );
                }
                eprintln!("watermarks: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("watermarks: {e}"),
        }
    }
}

/// Retention and DeleteRecords in cluster mode: the leader names the cut, every replica makes
/// it as it applies the Raft entry, and a follower that was down while the log moved past
/// everything it held restores the leader's snapshot (its log starts over at the cut) and
/// catches up: the three logs agree from the cut on, and a consumer reads from it.
#[test]
fn retention_cuts_every_replica_and_a_follower_behind_it_starts_over() {
    let _one_at_a_time = one_cluster_at_a_time();
    let topic = "retained";
    let mut cluster = Cluster::start(3, &["--retention-check-ms", "200"]);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(3))
        .set("segment.bytes", "65536")
        .set("max.message.bytes", "60000")
        .set("retention.bytes", "131072");
    create_topics_through(&cluster, &[new_topic]);
    let (leader, _) = leader_of(&cluster, topic, 0);
    let behind = (0..3).find(|n| *n != leader).unwrap();
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "5")
        // Batches within the topic's max.message.bytes.
        .set("batch.size", "50000")
        .create_with_context(deliveries.clone())
        .expect("producer");
    let payload = vec![b'x'; 1000];
    let send = |from: u32, to: u32| {
        for n in from..to {
            let key = format!("{n:06}");
            producer
                .send(BaseRecord::to(topic).key(&key).payload(&payload))
                .expect("queue");
        }
        producer.flush(Duration::from_secs(60)).expect("flushed");
        let reports = deliveries.0.lock().unwrap();
        let failed = reports.iter().find(|(_, r)| r.is_err());
        assert!(failed.is_none(), "{failed:?}");
    };
    send(0, 50);
    // The follower misses the next 1.5 MB, far more than retention keeps.
    cluster.kill(behind);
    send(50, 1_500);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (low, high) = loop {
        let (low, high) = watermarks(&cluster, topic);
        if low > 1_000 {
            break (low, high);
        }
        assert!(
            Instant::now() < deadline,
            "retention never cut: {low}..{high}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // DeleteRecords through librdkafka's admin client moves the start further.
    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(topic, 0, Offset::Offset(low + 10))
        .unwrap();
    let deleted = futures::executor::block_on(admin.delete_records(
        &cut,
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("DeleteRecords");
    let answer = deleted.find_partition(topic, 0).expect("partition 0");
    assert!(answer.error().is_ok(), "{:?}", answer.error());
    assert_eq!(answer.offset(), Offset::Offset(low + 10));
    let low = low + 10;
    // (The cut is a Raft entry of its own: the high watermark moves past it.)
    let (now_low, now_high) = watermarks(&cluster, topic);
    assert_eq!(now_low, low);
    assert!(now_high > high);

    // Back, the follower is below the leader's window: it starts over at the cut.
    cluster.restart(behind);
    send(1_500, 1_600);
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_sync(cluster.node(leader).kafka, topic).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the follower never rejoined the ISR"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, end) = watermarks(&cluster, topic);
    drop(producer);
    // The last record written (the log may end with Raft's own entries, which consumers skip).
    let last = deliveries
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|(_, offset)| *offset))
        .max()
        .unwrap();

    // A consumer from the beginning starts at the cut and reads every record after it.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "retained-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let (mut offsets, mut keys) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut error = None;
    while offsets.last().is_none_or(|o| *o < last) {
        assert!(
            Instant::now() < deadline,
            "read up to {:?} of {last} (watermarks {:?}, last error {error:?})",
            offsets.last(),
            watermarks(&cluster, topic)
        );
        let polled = consumer.poll(Duration::from_millis(200));
        if let Some(Err(e)) = &polled {
            error = Some(e.to_string());
        }
        if let Some(Ok(message)) = polled {
            offsets.push(message.offset());
            let key = String::from_utf8_lossy(message.key().unwrap_or_default());
            keys.push(key.parse::<u32>().expect("a numbered key"));
        }
    }
    drop(consumer);
    assert!(offsets[0] >= low, "nothing below the cut: {}", offsets[0]);
    // Every record from the first one kept to the last, once and in order.
    assert!(offsets.windows(2).all(|w| w[1] > w[0]), "{offsets:?}");
    let expected: Vec<u32> = (keys[0]..1_600).collect();
    assert_eq!(keys, expected);

    // Stopped, the three replicas agree batch for batch from the latest start on, and none
    // holds anything below the cut (the follower's old records are gone).
    for node in 0..3 {
        cluster.stop(node);
    }
    assert!(
        cluster
            .node(behind)
            .log()
            .contains("restored a leader's snapshot"),
        "the follower caught up through a snapshot"
    );
    let logs: Vec<Vec<(i64, Vec<u8>)>> = (0..3)
        .map(|node| stored_batches_of(&cluster, node, topic, 0))
        .collect();
    for (node, log) in logs.iter().enumerate() {
        let first = log.first().map(|b| b.0).unwrap_or(end);
        assert!(
            first >= low - 1_000,
            "node {node} still holds offset {first}, far below the cut at {low}"
        );
    }
    let from = low;
    let common: Vec<Vec<(i64, Vec<u8>)>> = logs
        .iter()
        .map(|log| log.iter().filter(|b| b.0 >= from).cloned().collect())
        .collect();
    assert_replicas_agree(&common, "from the cut");
}

/// A record as a consumer reads it: offset, key, value (`None`: a tombstone).
type ReadRecord = (i64, String, Option<String>);

/// Reads `topic`'s partition 0 from offset 0 through offset `last` (a record's), as the
/// partition's leader serves it.
fn read_partition_through(cluster: &Cluster, topic: &str, last: i64) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    assign_from_offset_zero(&consumer, topic, 1);
    let mut records: Vec<ReadRecord> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut error = None;
    while records.last().is_none_or(|r| r.0 < last) {
        assert!(
            Instant::now() < deadline,
            "read through {:?} of {last}, last error {error:?}",
            records.last().map(|r| r.0)
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => records.push((
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
            )),
            Some(Err(e)) => error = Some(e.to_string()),
            None => {}
        }
    }
    records
}

/// Log compaction in cluster mode. Every replica cleans its own committed segments and keeps
/// every batch (an emptied one stays as an empty batch: each batch is one Raft entry). Here a
/// follower is down while a compacted topic takes 20 updates of 50 keys and 10 tombstones; the
/// two others compact; both restart (their Raft windows rebuilt from compacted logs, committed
/// entries no longer in memory), so the follower, back, catches up from the leader's compacted
/// log; made leader, it serves the same compacted view. The replicas' batches agree offset for
/// offset throughout.
#[test]
fn a_compacted_topic_is_cleaned_on_every_replica_and_a_follower_catches_up_from_it() {
    const KEYS: usize = 50;
    const ROUNDS: usize = 20;
    const TOMBSTONED: usize = 10;
    let topic = "changelog";
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &["--log-cleaner-backoff-ms", "200"]);
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(3))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "65536")
        .set("max.message.bytes", "65536")
        .set("segment.ms", "300")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "3600000");
    create_topics_through(&cluster, &[new_topic]);
    let (leader, _) = leader_of(&cluster, topic, 0);
    let behind = (0..3).find(|n| *n != leader).unwrap();
    let other = (0..3).find(|n| *n != leader && *n != behind).unwrap();
    cluster.kill(behind);

    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create_with_context(deliveries.clone())
        .expect("producer");
    let value = |key: usize, round: usize| format!("key {key} round {round} {}", "x".repeat(200));
    let send = |key: &str, value: Option<&str>| {
        let mut record = BaseRecord::to(topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer.send(record).map_err(|(e, _)| e).expect("queue");
    };
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            send(&format!("k{key}"), Some(&value(key, round)));
        }
        producer.flush(Duration::from_secs(30)).expect("flushed");
        std::thread::sleep(Duration::from_millis(20));
    }
    for key in 0..TOMBSTONED {
        send(&format!("k{key}"), None);
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    // The active segment is never cleaned: after segment.ms, one more record rolls it.
    std::thread::sleep(Duration::from_millis(400));
    send("roll", Some("roll"));
    producer.flush(Duration::from_secs(30)).expect("flushed");
    let acked: HashMap<String, i64> = {
        let reports = deliveries.0.lock().unwrap();
        assert_eq!(reports.len(), ROUNDS * KEYS + TOMBSTONED + 1);
        let failed = reports.iter().find(|(_, r)| r.is_err());
        assert!(failed.is_none(), "{failed:?}");
        reports
            .iter()
            .map(|(payload, r)| (payload.clone(), r.as_ref().unwrap().1))
            .collect()
    };
    let roll = acked["roll"];
    // The compacted view: each live key once, at its last value's offset; each tombstoned key
    // once, as its tombstone (delete.retention.ms keeps it); the roll record.
    let check = |records: &[ReadRecord], what: &str| {
        assert!(
            records.windows(2).all(|w| w[1].0 > w[0].0),
            "{what}: offsets rise"
        );
        let mut by_key: BTreeMap<&str, Vec<&ReadRecord>> = BTreeMap::new();
        for record in records.iter().filter(|r| r.0 <= roll) {
            by_key.entry(record.1.as_str()).or_default().push(record);
        }
        for key in 0..KEYS {
            let name = format!("k{key}");
            let seen = &by_key[name.as_str()];
            assert_eq!(seen.len(), 1, "{what}: {name} {seen:?}");
            if key < TOMBSTONED {
                assert_eq!(seen[0].2, None, "{what}: {name}");
            } else {
                let last = value(key, ROUNDS - 1);
                assert_eq!(seen[0].2.as_deref(), Some(last.as_str()), "{what}: {name}");
                assert_eq!(seen[0].0, acked[&last], "{what}: {name}'s offset");
            }
        }
        assert_eq!(by_key["roll"][0].0, roll, "{what}");
        assert_eq!(by_key.len(), KEYS + 1, "{what}");
    };

    // The leader and the running follower both clean their own logs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let compacted = loop {
        let records = read_partition_through(&cluster, topic, roll);
        let cleaned_on_both = [leader, other]
            .iter()
            .all(|n| cluster.node(*n).log().contains("partition compacted"));
        if records.len() == KEYS + 1 && cleaned_on_both {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted on both within 60 s: {} records read",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    check(&compacted, "the leader's view");
    drop(producer);

    // Stopped, the two replicas hold every batch (emptied ones empty) at the same offsets.
    cluster.stop(leader);
    cluster.stop(other);
    let layouts: Vec<Vec<BatchLayout>> = [leader, other]
        .iter()
        .map(|n| batch_layout(&stored_batches_of(&cluster, *n, topic, 0)))
        .collect();
    assert_batch_layouts_agree(&layouts, &format!("{topic} after compaction"));
    for (layout, node) in layouts.iter().zip([leader, other]) {
        let records: i32 = layout.iter().map(|b| b.records).sum();
        assert!(
            records < (KEYS * 3) as i32,
            "node {node} keeps {records} of {} records",
            ROUNDS * KEYS
        );
        assert!(
            layout.iter().any(|b| b.records == 0 && !b.control),
            "node {node} keeps emptied batches"
        );
    }

    // Restarted (the window rebuilt from the compacted logs), they serve the same view; the
    // follower that missed everything catches up from the compacted log.
    cluster.restart(leader);
    cluster.restart(other);
    check(
        &read_partition_through(&cluster, topic, roll),
        "after the restart",
    );
    cluster.restart(behind);
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .create_with_context(deliveries.clone())
        .expect("producer");
    send_and_wait(&producer, topic, "after");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (now_leader, _) = leader_of(&cluster, topic, 0);
        if in_sync(cluster.node(now_leader).kafka, topic).len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never rejoined the ISR"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    make_leader(&mut cluster, topic, behind);
    let after = deliveries
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(payload, _)| payload == "after")
        .and_then(|(_, r)| r.as_ref().ok().map(|(_, offset)| *offset))
        .expect("after acknowledged");
    assert!(after > roll);
    let served = read_partition_through(&cluster, topic, after);
    check(&served, "the caught-up follower, leading");
    assert_eq!(served.last().unwrap().1, "after");
    drop(producer);

    for node in 0..3 {
        cluster.stop(node);
    }
    let layouts: Vec<Vec<BatchLayout>> = (0..3)
        .map(|n| batch_layout(&stored_batches_of(&cluster, n, topic, 0)))
        .collect();
    assert_batch_layouts_agree(&layouts, &format!("{topic} at the end"));
    let caught_up: i32 = layouts[behind as usize].iter().map(|b| b.records).sum();
    assert!(
        caught_up < (KEYS * 3) as i32,
        "the follower holds {caught_up} records: it copied compacted batches"
    );
}

/// Produces one record keyed `payload` and waits for its acknowledgement.
fn send_and_wait(producer: &ThreadedProducer<Deliveries>, topic: &str, payload: &str) {
    producer
        .send(BaseRecord::to(topic).key(payload).payload(payload))
        .map_err(|(e, _)| e)
        .expect("queue");
    producer.flush(Duration::from_secs(30)).expect("flushed");
    let reports = producer.context().0.lock().unwrap();
    let report = reports.iter().rev().find(|(p, _)| p == payload);
    assert!(
        report.is_some_and(|(_, r)| r.is_ok()),
        "{payload}: {report:?}"
    );
}

/// One stored batch's place in the log: what every replica agrees on even where compaction
/// rewrote its bytes.
#[derive(Debug, Clone, PartialEq)]
struct BatchLayout {
    base: i64,
    last: i64,
    leader_epoch: i32,
    control: bool,
    records: i32,
}

fn batch_layout(batches: &[(i64, Vec<u8>)]) -> Vec<BatchLayout> {
    batches
        .iter()
        .map(|(base, bytes)| {
            let info = sluice_storage::batch::validate_batch(bytes, usize::MAX).unwrap();
            BatchLayout {
                base: *base,
                last: info.last_offset().0,
                leader_epoch: info.leader_epoch.0,
                control: info.is_control(),
                records: info.record_count,
            }
        })
        .collect()
}

/// The replicas' batches have the same offsets and terms up to the shortest log (their record
/// counts may differ where one compacted more); past it, only Raft's own entries (see
/// `assert_replicas_agree`).
fn assert_batch_layouts_agree(layouts: &[Vec<BatchLayout>], what: &str) {
    let shortest = layouts.iter().map(Vec::len).min().unwrap_or(0);
    let place = |b: &BatchLayout| (b.base, b.last, b.leader_epoch, b.control);
    for (node, layout) in layouts.iter().enumerate() {
        for (mine, first) in layout[..shortest].iter().zip(&layouts[0][..shortest]) {
            assert_eq!(place(mine), place(first), "replica {node} of {what}");
        }
        for extra in &layout[shortest..] {
            assert!(
                extra.control,
                "replica {node} of {what} has data at {} the others lack",
                extra.base
            );
        }
    }
}

/// A node restarted after a topic was created (and another deleted) without it answers its
/// first Metadata with the cluster's current topics: it serves metadata only once its image
/// caught up with the controller's commit point (as a KRaft broker waits for its metadata
/// log), not from the stale image it restarted with.
#[test]
fn a_restarted_node_answers_metadata_only_once_caught_up() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &[]);
    create_topic_named(&cluster, "early");
    let absent = 2;
    cluster.kill(absent);
    create_topic_named(&cluster, "late");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let deleted = futures::executor::block_on(admin.delete_topics(
        &["early"],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("DeleteTopics");
    assert!(deleted[0].is_ok(), "{deleted:?}");
    cluster.restart(absent);
    let answer = metadata(cluster.node(absent).kafka);
    let names: Vec<&str> = answer
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.as_str()))
        .collect();
    assert!(
        names.contains(&"late"),
        "the first answer lacks a topic: {names:?}"
    );
    assert!(
        !names.contains(&"early"),
        "the first answer has a deleted topic: {names:?}"
    );
}

/// The leaders `answer` names for `topic`'s partitions (-1 where none).
fn named_leaders(answer: &kafka_protocol::messages::MetadataResponse, topic: &str) -> Vec<i32> {
    topic_in(answer, topic)
        .map(|t| t.partitions.iter().map(|p| p.leader_id.0).collect())
        .unwrap_or_default()
}

/// The first and second survivor, in the order they campaign for `topic_id`'s `partition`
/// when `gone` dies (replication's successor order over the other nodes of three).
fn campaign_order(topic_id: uuid::Uuid, partition: i32, gone: i32) -> (i32, i32) {
    let survivors: Vec<u64> = (0..3u64)
        .filter(|n| *n as i32 != gone)
        .map(|n| n + 1)
        .collect();
    let key = sluice_replication::rpc::GroupKey {
        topic_id: topic_id.as_u128(),
        partition,
    };
    let order = sluice_replication::node::successors(&key, survivors);
    (order[0] as i32 - 1, order[1] as i32 - 1)
}

/// How many times node `id`'s log says `peer`'s replication connections closed.
fn hang_ups_seen(cluster: &Cluster, id: i32, peer: i32) -> usize {
    cluster
        .node(id)
        .log()
        .lines()
        .filter(|l| {
            l.contains("replication connections closed") && l.ends_with(&format!("node={peer}"))
        })
        .count()
}

#[test]
fn a_survivor_never_names_a_leader_whose_connections_closed() {
    use kafka_protocol::messages::{
        ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    };
    use kafka_protocol::protocol::StrBytes;
    use sluice_tests::wire::{call, connect};
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &[]);
    create_topic(&cluster);
    let mut coordinators_checked = 0;
    for round in 0..3 {
        let partition = round % PARTITIONS;
        let (victim, _) = leader_of(&cluster, TOPIC, partition);
        let answer = metadata(cluster.node(victim).kafka);
        let topic = |name: &str| topic_in(&answer, name).cloned().expect("the topic");
        // The survivor that campaigns second for the partition: without the fix it names the
        // dead leader from the moment it sees the connections close until its turn comes
        // (100 ms later), since the first one is paused and cannot campaign.
        let (paused, survivor) = campaign_order(topic(TOPIC).topic_id, partition, victim);
        // A group whose coordinator partition the victim leads, in the same campaign order.
        let offsets = topic("__consumer_offsets");
        let group = offsets
            .partitions
            .iter()
            .find(|p| {
                p.leader_id.0 == victim
                    && campaign_order(offsets.topic_id, p.partition_index, victim)
                        == (paused, survivor)
            })
            .and_then(|p| {
                (0..10_000).map(|i| format!("g-{i}")).find(|g| {
                    crc32c::crc32c(g.as_bytes()) % offsets.partitions.len() as u32
                        == p.partition_index as u32
                })
            });
        let seen_before = hang_ups_seen(&cluster, survivor, victim);
        let mut s = connect(cluster.node(survivor).kafka);
        cluster.pause(paused, true);
        cluster.kill(victim);
        let deadline = Instant::now() + Duration::from_secs(10);
        while hang_ups_seen(&cluster, survivor, victim) == seen_before {
            assert!(
                Instant::now() < deadline,
                "node {survivor} never saw node {victim}'s connections close"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // First the coordinator (a Metadata request is held for the election).
        if let Some(group) = group {
            let coordinator: FindCoordinatorResponse = call(
                &mut s,
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string(group.clone()))
                    .with_key_type(0),
            );
            assert!(
                coordinator.error_code != 0 || coordinator.node_id.0 != victim,
                "round {round}: node {survivor} names the killed node {victim} coordinator of \
                 {group}"
            );
            coordinators_checked += 1;
        }
        let answer: kafka_protocol::messages::MetadataResponse = call(
            &mut s,
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        );
        for t in &answer.topics {
            for p in &t.partitions {
                assert_ne!(
                    p.leader_id.0, victim,
                    "round {round}: node {survivor} names the killed node {victim} leader of \
                     {:?} {} after its connections closed",
                    t.name, p.partition_index
                );
            }
        }
        let p = &topic_in(&answer, TOPIC).expect("the topic").partitions[partition as usize];
        assert_eq!(
            p.error_code, 5,
            "LEADER_NOT_AVAILABLE while the election cannot finish"
        );
        cluster.pause(paused, false);
        for p in 0..PARTITIONS {
            let (leader, _) = leader_of(&cluster, TOPIC, p);
            assert_ne!(leader, victim);
        }
        cluster.restart(victim);
        // Back as every partition's follower (it knows each leader) before the next round.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leaders = named_leaders(&metadata(cluster.node(victim).kafka), TOPIC);
            if leaders.len() == PARTITIONS as usize
                && leaders
                    .iter()
                    .all(|l| *l >= 0 && cluster.node(*l).is_running())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {victim} knows no leaders after its restart: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("coordinators checked in {coordinators_checked} of 3 rounds");
}

/// `sluice cluster info` against the cluster, as an operator runs it.
fn cluster_info(cluster: &Cluster) -> String {
    sluice_cluster_command(cluster, &["info"])
}

/// `sluice cluster <args> --bootstrap <node 0>`: its output, once it succeeded.
fn sluice_cluster_command(cluster: &Cluster, args: &[&str]) -> String {
    let out = std::process::Command::new(sluice_tests::sluice_binary())
        .arg("cluster")
        .args(args)
        .args(["--bootstrap", &cluster.node(0).kafka.to_string()])
        .output()
        .expect("run sluice cluster");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice cluster {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number after `label` in `text` ("leaderless 0" -> 0).
fn count_after(text: &str, label: &str) -> usize {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"));
    text[at + label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {text}"))
}

/// `sluice cluster info` names every node and what it leads, the controller, and the
/// partitions without a leader or short of replicas; with a node SIGKILLed it shows the node
/// unreachable and, once the ISR lag passed, every partition it held under-replicated.
#[test]
fn cluster_info_shows_nodes_leaders_and_under_replicated_partitions() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &["--replica-lag-time-max-ms", "1000"]);
    create_topic(&cluster);
    for partition in 0..PARTITIONS {
        leader_of(&cluster, TOPIC, partition);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let healthy = loop {
        let info = cluster_info(&cluster);
        if count_after(&info, "leaderless") == 0 {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "partitions stay leaderless:\n{info}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(healthy.contains("cluster: 3 brokers"), "{healthy}");
    let controller = metadata(cluster.node(0).kafka).controller_id.0;
    assert!(
        healthy.contains(&format!("controller node {controller}")),
        "{healthy}"
    );
    let total = count_after(&healthy, "partitions:");
    assert!(total >= PARTITIONS as usize, "{healthy}");
    assert_eq!(count_after(&healthy, "under-replicated"), 0, "{healthy}");
    let led: usize = (0..3)
        .map(|id| {
            let line = healthy
                .lines()
                .find(|l| l.starts_with(&format!("node {id} ")))
                .unwrap_or_else(|| panic!("no line for node {id}:\n{healthy}"));
            assert!(line.contains(" up "), "{line}");
            count_after(line, "leads")
        })
        .sum();
    assert_eq!(led, total, "every partition led once:\n{healthy}");
    // The same for scripts.
    let json = std::process::Command::new(sluice_tests::sluice_binary())
        .args(["cluster", "info", "--output", "json", "--bootstrap"])
        .arg(cluster.node(0).kafka.to_string())
        .output()
        .expect("run sluice cluster info");
    assert!(json.status.success(), "{json:?}");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(json["controller"], controller, "{json}");
    let nodes = json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{json}");
    assert!(nodes.iter().all(|n| n["up"] == true), "{json}");
    let led_json: u64 = nodes.iter().map(|n| n["leads"].as_u64().unwrap()).sum();
    assert_eq!(led_json as usize, total, "{json}");
    assert_eq!(json["leaderless"], serde_json::json!([]), "{json}");
    let stray = std::process::Command::new(sluice_tests::sluice_binary())
        .args(["cluster", "info", "stray"])
        .output()
        .expect("run sluice cluster info");
    assert_eq!(stray.status.code(), Some(2), "usage errors exit 2");
    let complaint = String::from_utf8_lossy(&stray.stderr);
    assert!(
        complaint.contains("unexpected argument 'stray'"),
        "{complaint}"
    );

    let gone = (0..3).find(|id| *id != 0).unwrap();
    cluster.kill(gone);
    let deadline = Instant::now() + Duration::from_secs(30);
    let degraded = loop {
        let info = cluster_info(&cluster);
        let settled = count_after(&info, "leaderless") == 0
            && count_after(&info, "under-replicated") == total;
        if settled {
            break info;
        }
        assert!(Instant::now() < deadline, "never settled:\n{info}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let line = degraded
        .lines()
        .find(|l| l.starts_with(&format!("node {gone} ")))
        .unwrap();
    assert!(line.contains("unreachable"), "{degraded}");
    assert!(
        degraded.contains(&format!("{TOPIC}-0 leader")),
        "each under-replicated partition listed:\n{degraded}"
    );
}

/// kafka-python against three nodes: its admin client finds the controller, its default
/// (idempotent) producer writes to an RF=3 topic, a consumer group reads and commits, and the
/// cluster description names every node.
const KAFKA_PYTHON_SCRIPT: &str = r#"
import sys
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

bootstrap = sys.argv[1].split(",")
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic("py-replicated", 3, 3)])
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
futures = [producer.send("py-replicated", value=b"v%d" % i, partition=i % 3) for i in range(300)]
producer.flush()
offsets = sorted((f.get(timeout=30).partition, f.get(timeout=30).offset) for f in futures)
print("PRODUCED", len(offsets))
member = KafkaConsumer("py-replicated", bootstrap_servers=bootstrap, group_id="py-cluster",
                       auto_offset_reset="earliest", enable_auto_commit=False,
                       consumer_timeout_ms=4000)
values = sorted(m.value for m in member)
member.commit()
member.close()
assert values == sorted(b"v%d" % i for i in range(300)), len(values)
print("GROUP_CONSUMED", len(values))
committed = admin.list_group_offsets("py-cluster")["py-cluster"]
print("COMMITTED", sum(o.offset for o in committed.values()))
cluster = admin.describe_cluster()
print("BROKERS", sorted(b["broker_id"] for b in cluster["brokers"]))
print("CONTROLLER_KNOWN", cluster["controller_id"] in (0, 1, 2))
"#;

#[test]
fn kafka_python_uses_a_three_node_cluster() {
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &["--offsets-partitions", "3"]);
    let out = std::process::Command::new("python3")
        .args(["-c", KAFKA_PYTHON_SCRIPT, &cluster.bootstrap()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python failed (scripts/test installs it):\n{stdout}\n{stderr}"
    );
    for expected in [
        "PRODUCED 300",
        "GROUP_CONSUMED 300",
        // 100 records per partition after the new leader's own entry at offset 0 (a control
        // batch clients skip), each committed at the end, 101.
        "COMMITTED 303",
        "BROKERS [0, 1, 2]",
        "CONTROLLER_KNOWN True",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?}: {stdout}\n{stderr}"
        );
    }
}

/// kafka-python changes a cluster's topics and configs through whichever node it talks to
/// (the node forwards to the controller, as Kafka's brokers do): more partitions, topic
/// configs every replica then applies, a broker config auto-creation then follows.
const KAFKA_PYTHON_ALTER_SCRIPT: &str = r#"
import sys, time
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic, NewPartitions, ConfigResource, ConfigResourceType
from kafka.errors import MessageSizeTooLargeError

bootstrap, elsewhere = sys.argv[1].split(","), sys.argv[2]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
admin.create_topics([NewTopic("py-altered", 2, 3)])
admin.create_partitions({"py-altered": NewPartitions(total_count=5)})
print("TOPIC_ALTERED", admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "py-altered",
    configs={"segment.bytes": "65536", "max.message.bytes": "20000"})]))
print("BROKER_ALTERED", admin.alter_configs([ConfigResource(ConfigResourceType.BROKER, elsewhere,
    configs={"num.partitions": "4"})]))
described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "py-altered")])
print("DESCRIBED", sorted((k, c["value"]) for k, c in described["topic"]["py-altered"].items()))
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=5)
futures = [producer.send("py-altered", value=b"x" * 1000, partition=i % 5) for i in range(1000)]
producer.flush()
print("PARTITIONS_WRITTEN", sorted(set(f.get(timeout=30).partition for f in futures)))
try:
    producer.send("py-altered", value=b"y" * 50000, partition=0).get(timeout=30)
    print("LARGE_ACCEPTED")
except MessageSizeTooLargeError:
    print("LARGE_REFUSED")
# A fresh producer: the idempotent one above is in error after the refused batch.
KafkaProducer(bootstrap_servers=bootstrap, acks="all").send("py-auto-created", value=b"z").get(timeout=30)
for _ in range(100):
    topics = admin.describe_topics(["py-auto-created"])
    if topics and topics[0]["error_code"] == 0:
        break
    time.sleep(0.1)
print("AUTO_CREATED_PARTITIONS", len(topics[0]["partitions"]))
"#;

#[test]
fn kafka_python_alters_a_clusters_topics_and_configs_through_any_node() {
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &["--offsets-partitions", "3"]);
    let controller = metadata(cluster.node(0).kafka).controller_id.0;
    let elsewhere = (0..3).find(|n| *n != controller).unwrap();
    let (ok, out) = sluice_tests::python(
        KAFKA_PYTHON_ALTER_SCRIPT,
        &[&cluster.bootstrap(), &elsewhere.to_string()],
    );
    assert!(ok, "kafka-python failed (scripts/test installs it):\n{out}");
    for expected in [
        "TOPIC_ALTERED {'topic': {'py-altered': 'OK'}}".to_string(),
        format!("BROKER_ALTERED {{'broker': {{'{elsewhere}': 'OK'}}}}"),
        "('segment.bytes', '65536')".to_string(),
        "('max.message.bytes', '20000')".to_string(),
        "PARTITIONS_WRITTEN [0, 1, 2, 3, 4]".to_string(),
        "LARGE_REFUSED".to_string(),
        "AUTO_CREATED_PARTITIONS 4".to_string(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?}:\n{out}");
    }
    // Every replica rolls its own segments at the new segment.bytes: ~200 KB in partition 0.
    for node in 0..3 {
        let dir = partition_dir(&cluster.data_dir(node), "py-altered", 0);
        eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            let count = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                        .count()
                })
                .unwrap_or(0);
            if count >= 3 {
                Ok(())
            } else {
                Err(format!(
                    "node {node} rolls its replica at 64 KiB: {count} segments in {}",
                    dir.display()
                ))
            }
        });
    }
}

/// What a cluster node does only elsewhere is done there or refused with the error a Kafka
/// client acts on and a message naming why: topic admin and client quotas on a node that is
/// not the controller (forwarded), a replication factor above the brokers, CreatePartitions retried or with a
/// bad assignment, DeleteRecords, and produce and fetch on a follower.
#[test]
fn a_cluster_node_refuses_what_it_cannot_do_with_clear_errors() {
    use kafka_protocol::messages::{
        create_partitions_request, create_topics_request, delete_records_request, fetch_request,
        list_offsets_request, ApiKey, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
        CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
        FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use sluice_tests::wire::{call, connect};
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    const INVALID_REPLICATION_FACTOR: i16 = 38;
    const TOPIC_ALREADY_EXISTS: i16 = 36;
    const INVALID_PARTITIONS: i16 = 37;
    const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &[]);
    let name = |n: &str| TopicName(StrBytes::from_string(n.to_string()));
    let create = |node: i32, topic: &str, factor: i16| -> (i16, String) {
        let answer: CreateTopicsResponse = call(
            &mut connect(cluster.node(node).kafka),
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(name(topic))
                    .with_num_partitions(1)
                    .with_replication_factor(factor)]),
        );
        let t = &answer.topics[0];
        let message = t.error_message.as_ref().map_or("", |m| m.as_str());
        (t.error_code, message.to_string())
    };
    let controller = metadata(cluster.node(0).kafka).controller_id.0;
    let elsewhere = (0..3).find(|n| *n != controller).unwrap();
    // A node that is not the controller forwards the change to it, as Kafka's brokers do.
    let (code, message) = create(elsewhere, "forwarded", 3);
    assert_eq!(code, 0, "{message}");
    assert!(topic_in(&metadata(cluster.node(controller).kafka), "forwarded").is_some());
    let (code, message) = create(elsewhere, "forwarded", 3);
    assert_eq!(code, TOPIC_ALREADY_EXISTS, "{message}");
    let (code, message) = create(controller, "too-wide", 5);
    assert_eq!(code, INVALID_REPLICATION_FACTOR, "{message}");
    assert!(message.contains("3 registered broker"), "{message}");
    assert_eq!(create(controller, "accepted", 3).0, 0);

    // Transactions: the first FindCoordinator for a transactional id creates
    // __transaction_state, then its partition's leader is named. A transactional batch of a
    // producer the coordinator does not know is refused (INVALID_TXN_STATE) by the partition's
    // leader once it asked the coordinator, here one on another node, over the mesh (KIP-890).
    {
        let (leader, _) = leader_of(&cluster, "accepted", 0);
        let elsewhere = (0..50)
            .map(|i| format!("txn-{i}"))
            .find(|id| txn_coordinator_of(&cluster, id) != leader)
            .expect("some transactional id coordinated by another node");
        let answer = sluice_tests::wire::produce(
            &mut connect(cluster.node(leader).kafka),
            -1,
            Some(&elsewhere),
            "accepted",
            0,
            sluice_tests::wire::transactional_batch(7, 0, 0, b"stray"),
        );
        assert_eq!(answer.error_code, 48, "INVALID_TXN_STATE: {answer:?}");
    }

    // A client quota set through a node that is not the controller (kafka-python and Java's
    // admin send AlterClientQuotas to any node) is forwarded, and every node then has it.
    {
        use kafka_protocol::messages::alter_client_quotas_request::{
            EntityData, EntryData, OpData,
        };
        use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
        use kafka_protocol::messages::{
            AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
            DescribeClientQuotasResponse,
        };
        let altered: AlterClientQuotasResponse = call(
            &mut connect(cluster.node(elsewhere).kafka),
            ApiKey::AlterClientQuotas,
            1,
            &AlterClientQuotasRequest::default().with_entries(vec![EntryData::default()
                .with_entity(vec![EntityData::default()
                    .with_entity_type(StrBytes::from_static_str("client-id"))
                    .with_entity_name(Some(StrBytes::from_static_str("forwarded")))])
                .with_ops(vec![OpData::default()
                    .with_key(StrBytes::from_static_str("producer_byte_rate"))
                    .with_value(1_048_576.0)])]),
        );
        assert_eq!(altered.entries[0].error_code, 0, "{altered:?}");
        for node in 0..3 {
            eventually(Duration::from_secs(5), Duration::from_millis(50), || {
                let described: DescribeClientQuotasResponse = call(
                    &mut connect(cluster.node(node).kafka),
                    ApiKey::DescribeClientQuotas,
                    1,
                    &DescribeClientQuotasRequest::default().with_components(vec![
                        ComponentData::default()
                            .with_entity_type(StrBytes::from_static_str("client-id"))
                            .with_match_type(0)
                            .with_match(Some(StrBytes::from_static_str("forwarded"))),
                    ]),
                );
                let values: Vec<(String, f64)> = described
                    .entries
                    .iter()
                    .flatten()
                    .flat_map(|e| &e.values)
                    .map(|v| (v.key.to_string(), v.value))
                    .collect();
                match values == [("producer_byte_rate".to_string(), 1_048_576.0)] {
                    true => Ok(()),
                    false => Err(format!("node {node} describes the quota as {values:?}")),
                }
            });
        }
    }

    // CreatePartitions through a node that is not the controller; the same request again
    // (a retry) adds nothing; an assignment places the new partition's replicas.
    let grow = |count: i32, assignment: Option<Vec<i32>>| -> (i16, String) {
        let answer: CreatePartitionsResponse = call(
            &mut connect(cluster.node(elsewhere).kafka),
            ApiKey::CreatePartitions,
            3,
            &CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(name("accepted"))
                        .with_count(count)
                        .with_assignments(assignment.map(|brokers| {
                            vec![
                                create_partitions_request::CreatePartitionsAssignment::default()
                                    .with_broker_ids(brokers.into_iter().map(BrokerId).collect()),
                            ]
                        })),
                ]),
        );
        let result = &answer.results[0];
        let message = result.error_message.as_ref().map_or("", |m| m.as_str());
        (result.error_code, message.to_string())
    };
    assert_eq!(grow(2, None), (0, String::new()));
    let (code, message) = grow(2, None);
    assert_eq!(code, INVALID_PARTITIONS, "{message}");
    let (code, message) = grow(3, Some(vec![controller, elsewhere]));
    assert_eq!(code, INVALID_REPLICA_ASSIGNMENT, "{message}");
    assert!(message.contains("3 replicas"), "{message}");
    let (code, message) = grow(3, Some(vec![controller, elsewhere, 9]));
    assert_eq!(code, INVALID_REPLICA_ASSIGNMENT, "{message}");
    assert!(message.contains("broker 9 is not registered"), "{message}");
    let (code, message) = grow(3, Some(vec![controller, elsewhere, controller]));
    assert_eq!(code, INVALID_REPLICA_ASSIGNMENT, "{message}");
    assert!(message.contains("twice"), "{message}");
    let placed = vec![elsewhere, controller, 3 - elsewhere - controller];
    assert_eq!(grow(3, Some(placed.clone())), (0, String::new()));
    let partitions = topic_in(&metadata(cluster.node(controller).kafka), "accepted")
        .map(|t| t.partitions.clone())
        .unwrap();
    assert_eq!(partitions.len(), 3);
    let third = partitions.iter().find(|p| p.partition_index == 2).unwrap();
    assert_eq!(
        third.replica_nodes.iter().map(|b| b.0).collect::<Vec<_>>(),
        placed
    );

    let (leader, _) = leader_of(&cluster, "accepted", 0);
    let follower = (0..3).find(|n| *n != leader).unwrap();
    assert_eq!(
        produce_one(cluster.node(follower).kafka, "accepted"),
        NOT_LEADER_OR_FOLLOWER
    );
    produce_once_serving(cluster.node(leader).kafka, "accepted");
    // Fetch v12 of partition 0 from offset 0 on `node`, believing `current_leader_epoch`.
    let fetch_on = |node: i32, current_leader_epoch: i32| -> i16 {
        let fetch: FetchResponse = call(
            &mut connect(cluster.node(node).kafka),
            ApiKey::Fetch,
            12,
            &FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(name("accepted"))
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(current_leader_epoch)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20)])]),
        );
        fetch.responses[0].partitions[0].error_code
    };
    assert_eq!(fetch_on(follower, -1), NOT_LEADER_OR_FOLLOWER);

    // The leader checks the epoch a client believes current (KIP-320): behind it is fenced,
    // ahead of it is unknown, equal (or -1, unchecked) is served.
    const FENCED_LEADER_EPOCH: i16 = 74;
    const UNKNOWN_LEADER_EPOCH: i16 = 75;
    let at_leader = |current_leader_epoch: i32| -> (i16, i16) {
        let offsets: ListOffsetsResponse = call(
            &mut connect(cluster.node(leader).kafka),
            ApiKey::ListOffsets,
            7,
            &ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name("accepted"))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_current_leader_epoch(current_leader_epoch)
                            .with_timestamp(-1),
                    ])]),
        );
        (
            fetch_on(leader, current_leader_epoch),
            offsets.topics[0].partitions[0].error_code,
        )
    };
    let epoch = topic_in(&metadata(cluster.node(leader).kafka), "accepted")
        .map(|t| t.partitions[0].leader_epoch)
        .unwrap();
    assert!(epoch >= 1, "a Raft term: {epoch}");
    assert_eq!(at_leader(epoch), (0, 0));
    assert_eq!(at_leader(-1), (0, 0));
    assert_eq!(
        at_leader(epoch - 1),
        (FENCED_LEADER_EPOCH, FENCED_LEADER_EPOCH)
    );
    assert_eq!(
        at_leader(epoch + 1),
        (UNKNOWN_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH)
    );
    // DeleteRecords: the leader cuts every replica's log (through Raft); a follower refuses.
    let delete_on = |node: i32| -> (i16, i64) {
        let delete: DeleteRecordsResponse = call(
            &mut connect(cluster.node(node).kafka),
            ApiKey::DeleteRecords,
            2,
            &DeleteRecordsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
                    .with_name(name("accepted"))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(-1),
                    ])]),
        );
        let answer = &delete.topics[0].partitions[0];
        (answer.error_code, answer.low_watermark)
    };
    assert_eq!(delete_on(follower).0, NOT_LEADER_OR_FOLLOWER);
    let (code, low_watermark) = delete_on(leader);
    assert_eq!(code, 0);
    assert!(
        low_watermark >= 2,
        "past the leader's entry and the record: {low_watermark}"
    );
}

/// A data directory a single node wrote (its topics are not Raft groups) does not start as a
/// cluster node: start-up fails naming the file and why.
#[test]
fn a_single_nodes_data_directory_is_refused_in_cluster_mode() {
    let broker = sluice_tests::Broker::start(&["--cores", "1"]);
    let dir = broker.stop();
    let rpc = free_ports(1);
    let out = std::process::Command::new(sluice_tests::sluice_binary())
        .args([
            "serve",
            "--cores",
            "1",
            "--node-id",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--seeds", &format!("0@127.0.0.1:{rpc}")])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run sluice serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("metadata.json") && stderr.contains("holds a single node's topics"),
        "{stderr}"
    );
}

/// A leader that loses its quorum with acks=all appends waiting on it answers them
/// (NOT_LEADER_OR_FOLLOWER, as Kafka's deposed leader answers its delayed produces, or their
/// offsets if they commit after all) within seconds, not after the client's request timeout.
/// Prompted by `sluice chaos` (three nodes, seed 9 of kill, kill_controller, pause, partition,
/// bridge, disk_full, slow_link, lossy_link, clock_jump; 30 s), where a partition's acks
/// stopped for 29 s after its leader was cut off: that run is not reproduced here (followers
/// paused rather than cut off; this test passes without the step-down answer too, the answer
/// then comes from the new leader's entries committing on the old one); it bounds the wait.
#[test]
fn a_deposed_leader_answers_the_appends_waiting_on_it() {
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    let topic = "deposed";
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &[]);
    create_topic_named(&cluster, topic);
    let (leader, _) = leader_of(&cluster, topic, 0);
    produce_once_serving(cluster.node(leader).kafka, topic);
    let followers: Vec<i32> = (0..3).filter(|n| *n != leader).collect();
    for f in &followers {
        cluster.pause(*f, true);
    }
    let at = cluster.node(leader).kafka;
    let waiting = std::thread::spawn(move || {
        let sent = Instant::now();
        let code = produce_one(at, topic);
        (code, sent.elapsed())
    });
    // Long enough for the leader to find it has lost its quorum and step down.
    std::thread::sleep(Duration::from_secs(4));
    for f in &followers {
        cluster.pause(*f, false);
    }
    let (code, took) = waiting.join().expect("answered");
    assert!(
        code == NOT_LEADER_OR_FOLLOWER || code == 0,
        "answered {code} after {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "answered {code} after {took:?}"
    );
}

/// One idempotent batch of three records (acks=all) of `producer` (id, epoch) to `node`'s
/// replica of `topic`'s partition 0: the error code and base offset.
fn produce_idempotent(
    cluster: &Cluster,
    node: i32,
    topic: &str,
    producer: (i64, i16),
    sequence: i32,
) -> (i16, i64) {
    let (code, offset, _) = produce_idempotent_explained(cluster, node, topic, producer, sequence);
    (code, offset)
}

/// [`produce_idempotent`] with the partition's error message ("" when none).
fn produce_idempotent_explained(
    cluster: &Cluster,
    node: i32,
    topic: &str,
    (id, epoch): (i64, i16),
    sequence: i32,
) -> (i16, i64, String) {
    let batch = sluice_tests::wire::idempotent_batch(id, epoch, sequence, 3);
    produce_batch_explained(cluster.node(node).kafka, topic, -1, batch)
}

/// A new idempotent producer (id and epoch from `leader`) whose first batch (sequence 0)
/// `leader` has taken; retried while it does not take acks=all yet (20 s).
fn producer_with_first_batch(cluster: &Cluster, topic: &str, leader: i32) -> (i64, i16) {
    let producer = init_producer_id(cluster.node(leader).kafka);
    let deadline = Instant::now() + Duration::from_secs(20);
    while produce_idempotent(cluster, leader, topic, producer, 0).0 != 0 {
        assert!(Instant::now() < deadline, "{topic} refuses acks=all");
        std::thread::sleep(Duration::from_millis(100));
    }
    producer
}

/// A new idempotent producer's id and epoch, from `node`.
fn init_producer_id(node: std::net::SocketAddr) -> (i64, i16) {
    use kafka_protocol::messages::{
        ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId,
    };
    let mut s = sluice_tests::wire::connect(node);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer: InitProducerIdResponse = sluice_tests::wire::call(
            &mut s,
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        if answer.error_code == 0 {
            return (answer.producer_id.0, answer.producer_epoch);
        }
        assert!(
            Instant::now() < deadline,
            "InitProducerId: {}",
            answer.error_code
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the leader of `topic`'s partition 0 until node `node` leads it (restarting each
/// killed node before the next kill, so a majority always runs).
fn make_leader(cluster: &mut Cluster, topic: &str, node: i32) {
    for _ in 0..6 {
        let (leader, _) = leader_of(cluster, topic, 0);
        if leader == node {
            return;
        }
        cluster.kill(leader);
        // Waits for a running node to lead.
        leader_of(cluster, topic, 0);
        cluster.restart(leader);
    }
    panic!("node {node} never came to lead {topic}");
}

/// Found by `sluice chaos` (three nodes, seeds 57 and 66 of the 30 s all-fault campaign: an
/// idempotent producer's record stored twice, two offsets apart). A replica's partition is
/// opened (after a restart) by rebuilding its producer state from the log up to the high
/// watermark; entries that committed while that rebuild read were handed to no partition (it
/// was not open yet) and were missing from the state for good. Once that replica led, the
/// retry of such a batch passed the sequence check and was stored again. Here the restarted
/// follower's log reads are stalled (the `storage::log_read` fault point) while it catches up
/// on the batches written without it; then it is made leader and gets a retry of one of them:
/// it must answer with the batch's original offset, not append it again.
#[test]
fn a_replica_that_opened_while_entries_committed_recognises_their_retries() {
    let topic = "opening";
    let _one_at_a_time = one_cluster_at_a_time();
    // One offsets partition: the stall below then holds up little else.
    let mut cluster = Cluster::start(3, &["--offsets-partitions", "1"]);
    create_topic_named(&cluster, topic);
    let (leader, _) = leader_of(&cluster, topic, 0);
    let producer = producer_with_first_batch(&cluster, topic, leader);
    let produce = |cluster: &Cluster, sequence: i32| {
        let (leader, _) = leader_of(cluster, topic, 0);
        produce_idempotent(cluster, leader, topic, producer, sequence)
    };
    // A new term once every replica knows the batch committed: the followers store their
    // commit index with it (commit-only changes are not written), so a replica restarted
    // later starts from a committed end its producer state must be rebuilt up to, from the
    // log.
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill(leader);
    let (new_leader, _) = leader_of(&cluster, topic, 0);
    cluster.restart(leader);
    std::thread::sleep(Duration::from_secs(2));
    // A follower, killed while the others write, restarted, then made leader.
    let next = (0..3).find(|n| *n != new_leader).expect("a follower");
    cluster.kill(next);
    let written: Vec<(i16, i64)> = (1..6).map(|batch| produce(&cluster, batch * 3)).collect();
    assert!(written.iter().all(|(code, _)| *code == 0), "{written:?}");
    // Its log reads stall while it opens the partition (and catches up meanwhile).
    std::fs::write(
        cluster.node(next).fault_points_file(),
        "storage::log_read=return(stall:3000)\n",
    )
    .unwrap();
    cluster.restart(next);
    let opened = format!("/{topic}-");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .node(next)
        .log()
        .lines()
        .any(|l| l.contains("producer state rebuilt from the log") && l.contains(&opened))
    {
        assert!(
            Instant::now() < deadline,
            "node {next} never rebuilt the producer state of {topic}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(cluster.node(next).fault_points_file(), "").unwrap();
    make_leader(&mut cluster, topic, next);
    let deadline = Instant::now() + Duration::from_secs(30);
    let retried = loop {
        // The retry of the first batch written without `next`, as a client whose answer got
        // lost would send it to the new leader.
        match produce_idempotent(&cluster, next, topic, producer, 3) {
            (0, offset) => break offset,
            (code, _) => {
                assert!(
                    Instant::now() < deadline,
                    "node {next} never took the retry: {code}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(
        retried, written[0].1,
        "the retry was stored again instead of answered with its offset"
    );
}

/// Found by `sluice chaos` (three nodes: seeds 3030 and 3039 of a kill/pause/partition
/// campaign, probably 1087 and the slow-link test's seed 2): an idempotent producer's record
/// stored twice, hundreds of offsets apart. Metadata names a leader from its election on, but
/// it serves only once its term's first entry is applied. Refused there, the client's retries
/// of batches an earlier leader had stored came back NOT_LEADER_OR_FOLLOWER ("not persisted"
/// to librdkafka) while a later batch of the same pipeline reached the leader once it served
/// and was refused as a sequence gap; librdkafka then bumped its epoch and sent the refused
/// batches again under new sequence numbers. An elected leader now holds appends until it
/// serves. Here the new leader's disk syncs stall, so it stays elected and not serving for
/// seconds; an append sent to it then must be taken, not refused.
#[test]
fn an_elected_leader_holds_appends_until_it_serves() {
    let topic = "elected";
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &["--offsets-partitions", "1"]);
    create_topic_named(&cluster, topic);
    let (leader, epoch_before) = leader_of(&cluster, topic, 0);
    let producer = producer_with_first_batch(&cluster, topic, leader);
    // Every sync of one survivor stalls: whichever of the two they elect, its term's first
    // entry commits only once that one has synced it, seconds later. (Stalling both would
    // let their campaigns overlap again and again.)
    let followers: Vec<i32> = (0..3).filter(|n| *n != leader).collect();
    std::fs::write(
        cluster.node(followers[0]).fault_points_file(),
        "storage::fdatasync=return(stall:600)\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    cluster.kill(leader);
    // The survivors may elect more than once (the stalled one answers late): an append the
    // named leader refuses because it lost that leadership meanwhile is no failure; the test
    // then waits for the next election. A refusal by a leader still elected in that term is.
    let named_leader = |node: i32| {
        let answer = metadata(cluster.node(node).kafka);
        topic_in(&answer, topic)
            .map(|t| (t.partitions[0].leader_id.0, t.partitions[0].leader_epoch))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut epoch_seen = epoch_before;
    let (elected, offset, waited) = 'held: loop {
        // The first moment a survivor names itself leader (elected; not serving for seconds).
        let (elected, epoch) = 'found: loop {
            for f in &followers {
                if let Some((named, epoch)) = named_leader(*f) {
                    if named == *f && epoch > epoch_seen {
                        break 'found (named, epoch);
                    }
                }
            }
            assert!(Instant::now() < deadline, "no survivor was elected");
            std::thread::sleep(Duration::from_millis(20));
        };
        let sent = Instant::now();
        let (code, offset, message) =
            produce_idempotent_explained(&cluster, elected, topic, producer, 3);
        if code == 0 {
            break 'held (elected, offset, sent.elapsed());
        }
        assert!(
            !message.contains("was elected leader but does not serve yet")
                && named_leader(elected) != Some((elected, epoch)),
            "node {elected}, named leader in epoch {epoch}, refused the append instead of \
             holding it until it served: {code} {message}"
        );
        assert!(
            Instant::now() < deadline,
            "no election held: {code} {message}"
        );
        epoch_seen = epoch;
    };
    std::fs::write(cluster.node(followers[0]).fault_points_file(), "").unwrap();
    assert_eq!(
        produce_idempotent(&cluster, elected, topic, producer, 3),
        (0, offset),
        "a retry is answered with its offset"
    );
    println!("the elected leader held the append for {waited:?}");
}

/// Every node registers all its listeners with the controller, and each answer names the
/// brokers at the addresses of the listener the request came in on (Kafka's
/// `advertised.listeners` per listener): a client on the internal network is never sent to
/// the external addresses, or the other way round.
#[test]
fn every_answer_names_the_brokers_on_the_listener_it_came_in_on() {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start_with_internal_listener(3, &[]);
    type AddressOn = fn(&sluice_tests::cluster::Node) -> std::net::SocketAddr;
    let by_listener: [(&str, AddressOn); 2] = [
        ("PLAINTEXT", |n| n.kafka),
        ("INTERNAL", |n| n.internal.expect("an internal listener")),
    ];
    for (listener, address) in by_listener {
        let expected: Vec<(i32, String)> = cluster
            .nodes
            .iter()
            .map(|n| (n.id, address(n).to_string()))
            .collect();
        for node in &cluster.nodes {
            let answer = metadata(address(node));
            let mut brokers: Vec<(i32, String)> = answer
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                .collect();
            brokers.sort();
            assert_eq!(brokers, expected, "asked node {} on {listener}", node.id);
        }
        // FindCoordinator too (once the offsets topic has leaders).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut s = sluice_tests::wire::connect(address(&cluster.nodes[0]));
            let answer: FindCoordinatorResponse = sluice_tests::wire::call(
                &mut s,
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_static_str("listener-group"))
                    .with_key_type(0),
            );
            if answer.error_code == 0 {
                let coordinator = cluster.node(answer.node_id.0);
                assert_eq!(
                    format!("{}:{}", answer.host, answer.port),
                    address(coordinator).to_string(),
                    "FindCoordinator on {listener}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "no coordinator on {listener}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // A SCRAM user made through any node is a controller command: every node comes to know it.
    let made = std::process::Command::new(sluice_tests::sluice_binary())
        .args([
            "user",
            "create",
            "carol",
            "--password",
            "pw",
            "--mechanism",
            "SCRAM-SHA-512",
        ])
        .args(["--bootstrap", &cluster.nodes[2].kafka.to_string()])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut s = sluice_tests::wire::connect(node.kafka);
            let users: kafka_protocol::messages::DescribeUserScramCredentialsResponse =
                sluice_tests::wire::call(
                    &mut s,
                    ApiKey::DescribeUserScramCredentials,
                    0,
                    &kafka_protocol::messages::DescribeUserScramCredentialsRequest::default(),
                );
            let names: Vec<String> = users.results.iter().map(|r| r.user.to_string()).collect();
            if names == ["carol"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} knows {names:?}",
                node.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A partition as Metadata describes it: (leader, replicas, ISR).
type PartitionView = (i32, Vec<i32>, Vec<i32>);

/// What `answer` says of each partition of `topic`.
fn partition_views(
    answer: &kafka_protocol::messages::MetadataResponse,
    topic: &str,
) -> Vec<PartitionView> {
    topic_in(answer, topic)
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| {
                    (
                        p.leader_id.0,
                        p.replica_nodes.iter().map(|n| n.0).collect(),
                        p.isr_nodes.iter().map(|n| n.0).collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Calls `attempt` every `every` until it gives `Ok`, for at most `within`; then fails the
/// test with the last `Err`.
fn eventually<T>(
    within: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match attempt() {
            Ok(done) => return done,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(every);
    }
}

/// Waits until every running node's Metadata names, for every partition of `topic`, the same
/// running leader, one of the partition's replicas and in its ISR; returns that view.
fn agreed_views(cluster: &Cluster, topic: &str, partitions: usize) -> Vec<PartitionView> {
    eventually(Duration::from_secs(15), Duration::from_millis(100), || {
        let views: Vec<(i32, Vec<PartitionView>)> = cluster
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| (n.id, partition_views(&metadata(n.kafka), topic)))
            .collect();
        let first = &views[0].1;
        let sound = first.len() == partitions
            && first.iter().all(|(leader, replicas, isr)| {
                *leader >= 0
                    && cluster.node(*leader).is_running()
                    && replicas.contains(leader)
                    && isr.contains(leader)
            });
        let leaders = |v: &Vec<PartitionView>| -> Vec<i32> { v.iter().map(|p| p.0).collect() };
        if sound && views.iter().all(|(_, v)| leaders(v) == leaders(first)) {
            return Ok(first.clone());
        }
        Err(format!(
            "the nodes do not agree on live leaders for every partition: {views:?}"
        ))
    })
}

/// The coordinator node `node` names for `group`, once it names one (within 15 s).
fn coordinator_asked_of(cluster: &Cluster, node: i32, group: &str) -> i32 {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    eventually(Duration::from_secs(15), Duration::from_millis(50), || {
        let mut s = sluice_tests::wire::connect(cluster.node(node).kafka);
        let answer: FindCoordinatorResponse = sluice_tests::wire::call(
            &mut s,
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(group.to_string()))
                .with_key_type(0),
        );
        match answer.error_code {
            0 => Ok(answer.node_id.0),
            code => Err(format!(
                "node {node} names no coordinator for {group}: error {code}"
            )),
        }
    })
}

/// Four nodes, replication factor 3: every node holds only some partitions, yet each node's
/// Metadata names the leader (and ISR) of every partition, also after a leader dies, and a
/// client that only knows one node produces to all of them.
#[test]
fn every_node_names_the_leaders_of_partitions_it_holds_no_replica_of() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(4, &[]);
    let topic = "spread";
    let partitions = 8;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let created = futures::executor::block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(3),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("CreateTopics");
    assert!(created[0].is_ok(), "{created:?}");

    let views = agreed_views(&cluster, topic, partitions as usize);
    for node in 0..4 {
        assert!(
            views
                .iter()
                .any(|(_, replicas, _)| !replicas.contains(&node)),
            "node {node} holds every partition: the test needs some it does not hold ({views:?})"
        );
    }
    // Group coordinators too: each group's coordinator is the leader of its
    // `__consumer_offsets` partition, which most nodes hold no replica of for some groups.
    let offsets = agreed_views(&cluster, "__consumer_offsets", 8);
    for node in 0..4 {
        assert!(
            offsets
                .iter()
                .any(|(_, replicas, _)| !replicas.contains(&node)),
            "node {node} holds every offsets partition ({offsets:?})"
        );
    }
    for group in (0..16).map(|g| format!("group-{g}")) {
        let coordinators: Vec<i32> = (0..4)
            .map(|node| coordinator_asked_of(&cluster, node, &group))
            .collect();
        assert!(
            coordinators.iter().all(|c| *c == coordinators[0]),
            "the nodes name different coordinators for {group}: {coordinators:?}"
        );
    }

    // The node leading most partitions dies; the survivors elect, and every survivor names the
    // new leaders, the one holding no replica of a partition included.
    let mut led: HashMap<i32, usize> = HashMap::new();
    for (leader, _, _) in &views {
        *led.entry(*leader).or_default() += 1;
    }
    let victim = *led.iter().max_by_key(|(_, count)| **count).unwrap().0;
    cluster.kill(victim);
    let after = agreed_views(&cluster, topic, partitions as usize);
    assert!(
        after.iter().all(|(leader, _, _)| *leader != victim),
        "{after:?}"
    );

    // A producer bootstrapped from one survivor alone reaches every partition's leader.
    let survivor = (0..4).find(|n| *n != victim).unwrap();
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set(
            "bootstrap.servers",
            cluster.node(survivor).kafka.to_string(),
        )
        .set("acks", "all")
        .set("message.timeout.ms", "20000")
        .create_with_context(deliveries.clone())
        .expect("producer");
    for partition in 0..partitions {
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(partition)
                    .payload(&format!("to partition {partition}")),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    producer.flush(Duration::from_secs(25)).expect("flush");
    let reports = deliveries.0.lock().unwrap().clone();
    assert_eq!(reports.len(), partitions as usize, "{reports:?}");
    for (payload, outcome) in reports {
        let (partition, _) = outcome.unwrap_or_else(|e| panic!("{payload}: {e}"));
        assert_eq!(payload, format!("to partition {partition}"));
    }
}

/// kafka-python's `elect_leaders` (argv: bootstrap, topic): a preferred election of every
/// partition, then an unclean one and one of a partition that does not exist; prints each
/// answer's (partition, error code) pairs.
const ELECT_LEADERS_SCRIPT: &str = r#"
import sys
from kafka.admin import KafkaAdminClient
bootstrap, topic = sys.argv[1], sys.argv[2]
admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=30000)
def codes(response):
    return sorted((p.partition_id, p.error_code) for r in response.replica_election_results for p in r.partition_result)
print("PREFERRED", codes(admin.elect_leaders(0, {topic: [0, 1, 2]}, timeout_ms=20000)))
print("AGAIN", codes(admin.elect_leaders(0, {topic: [0, 1, 2]}, timeout_ms=20000)))
print("UNCLEAN", codes(admin.elect_leaders(1, {topic: [0]}, timeout_ms=5000, raise_errors=False)))
print("MISSING", codes(admin.elect_leaders(0, {topic: [7]}, timeout_ms=5000, raise_errors=False)))
admin.close()
"#;

/// A node that died and came back follows where it was the preferred leader; ElectLeaders
/// (kafka-python) hands those leaderships back to it without losing a record, and answers
/// Kafka's codes for what needs no election or cannot be done.
#[test]
fn elect_leaders_hands_leadership_back_to_the_preferred_replica() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &["--replica-lag-time-max-ms", "2000"]);
    let topic = "prefer";
    create_topic_named(&cluster, topic);
    let views = agreed_views(&cluster, topic, PARTITIONS as usize);
    let preferred: Vec<i32> = views.iter().map(|(_, replicas, _)| replicas[0]).collect();
    // The preferred leader of partition 0 dies and comes back: its partitions are led elsewhere.
    let returning = preferred[0];
    cluster.kill(returning);
    agreed_views(&cluster, topic, PARTITIONS as usize);
    cluster.restart(returning);
    let moved: Vec<i32> = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        let views = agreed_views(&cluster, topic, PARTITIONS as usize);
        match views.iter().all(|(_, _, isr)| isr.contains(&returning)) {
            true => Ok((0..PARTITIONS)
                .filter(|p| views[*p as usize].0 != preferred[*p as usize])
                .collect()),
            false => Err(format!(
                "node {returning} never rejoined the ISR: {views:?}"
            )),
        }
    });
    assert!(
        moved.contains(&0),
        "partition 0 is still led by {returning}"
    );

    let (ok, out) = sluice_tests::python(ELECT_LEADERS_SCRIPT, &[&cluster.bootstrap(), topic]);
    assert!(ok, "kafka-python failed (scripts/test installs it):\n{out}");
    let expected: Vec<String> = (0..PARTITIONS)
        .map(|p| format!("({p}, {})", if moved.contains(&p) { 0 } else { 84 }))
        .collect();
    for line in [
        format!("PREFERRED [{}]", expected.join(", ")),
        "AGAIN [(0, 84), (1, 84), (2, 84)]".to_string(),
        // Unclean: the partition has a leader (ELECTION_NOT_NEEDED).
        "UNCLEAN [(0, 84)]".to_string(),
        // UNKNOWN_TOPIC_OR_PARTITION.
        "MISSING [(7, 3)]".to_string(),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    let views = agreed_views(&cluster, topic, PARTITIONS as usize);
    let leaders: Vec<i32> = views.iter().map(|v| v.0).collect();
    assert_eq!(leaders, preferred, "{views:?}");
}

/// Kafka's automatic leader rebalance: a node that died and came back takes the leaderships it
/// is the preferred replica of back once it is in sync again, with no request from anyone.
#[test]
fn a_returning_node_takes_its_preferred_leaderships_back() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(
        3,
        &[
            "--leader-imbalance-check-interval-ms",
            "500",
            "--replica-lag-time-max-ms",
            "2000",
        ],
    );
    let topic = "rebalance";
    create_topic_named(&cluster, topic);
    let views = agreed_views(&cluster, topic, PARTITIONS as usize);
    let preferred: Vec<i32> = views.iter().map(|(_, replicas, _)| replicas[0]).collect();
    let returning = preferred[0];
    cluster.kill(returning);
    let away = agreed_views(&cluster, topic, PARTITIONS as usize);
    assert!(away.iter().all(|(leader, _, _)| *leader != returning));
    cluster.restart(returning);
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let views = agreed_views(&cluster, topic, PARTITIONS as usize);
        let leaders: Vec<i32> = views.iter().map(|v| v.0).collect();
        match leaders == preferred {
            true => Ok(()),
            false => Err(format!(
                "node {returning} did not take its preferred leaderships back: {views:?}"
            )),
        }
    });
    assert!(
        cluster
            .node(returning)
            .log()
            .contains("leader imbalance: asking for the preferred leaderships back"),
        "no log line says why the leaderships moved"
    );
}

/// kafka-python's `describe_metadata_quorum` (argv: bootstrap): prints the answer as JSON with
/// the time it was asked.
const DESCRIBE_QUORUM_SCRIPT: &str = r#"
import json, sys, time
from kafka.admin import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1].split(","), request_timeout_ms=30000)
quorum = admin.describe_metadata_quorum()
print("QUORUM", json.dumps({"asked_ms": int(time.time() * 1000), "quorum": quorum}))
admin.close()
"#;

/// A metadata quorum as kafka-python reads it: (asked at ms, leader, epoch, high watermark,
/// voters as (id, log end, last fetch ms)).
type QuorumAnswer = (i64, i64, i64, i64, Vec<(i64, i64, i64)>);

/// kafka-python's `describe_metadata_quorum` against `bootstrap`, as JSON (`quorum`,
/// `asked_ms`).
fn quorum_answer(bootstrap: &str) -> serde_json::Value {
    let (ok, out) = sluice_tests::python(DESCRIBE_QUORUM_SCRIPT, &[bootstrap]);
    assert!(ok, "kafka-python failed (scripts/test installs it):\n{out}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("QUORUM "))
        .unwrap_or_else(|| panic!("no answer in:\n{out}"));
    serde_json::from_str(line).expect("JSON")
}

/// kafka-python's `describe_metadata_quorum` against `bootstrap`.
fn describe_quorum(bootstrap: &str) -> QuorumAnswer {
    let answer = quorum_answer(bootstrap);
    let partition = &answer["quorum"]["topics"][0]["partitions"][0];
    assert!(partition["error"].is_null(), "{answer}");
    let voters = partition["current_voters"]
        .as_array()
        .expect("voters")
        .iter()
        .map(|v| {
            (
                v["replica_id"].as_i64().unwrap(),
                v["log_end_offset"].as_i64().unwrap(),
                v["last_fetch_timestamp"].as_i64().unwrap(),
            )
        })
        .collect();
    (
        answer["asked_ms"].as_i64().unwrap(),
        partition["leader_id"].as_i64().unwrap(),
        partition["leader_epoch"].as_i64().unwrap(),
        partition["high_watermark"].as_i64().unwrap(),
        voters,
    )
}

/// The voters' and observers' ids in DescribeQuorum (kafka-python), asked of `bootstrap`.
fn quorum_members(bootstrap: &str) -> (Vec<i64>, Vec<i64>) {
    let answer = quorum_answer(bootstrap);
    let partition = &answer["quorum"]["topics"][0]["partitions"][0];
    let ids = |field: &str| -> Vec<i64> {
        partition[field]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|r| r["replica_id"].as_i64())
                    .collect()
            })
            .unwrap_or_default()
    };
    (ids("current_voters"), ids("observers"))
}

/// DescribeQuorum (kafka-python `describe_metadata_quorum`) from any node: the controller
/// group's leader (the Metadata controller), its epoch and high watermark, every voter with
/// its log end and when the leader last heard from it; a dead voter's last fetch stops moving.
#[test]
fn describe_quorum_shows_the_controller_group_and_a_silent_voter() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &[]);
    create_topic_named(&cluster, "quorum");
    let controller = metadata(cluster.node(0).kafka).controller_id.0;
    // Asked of each node in turn: each answers from the leader's announcement.
    for node in 0..3 {
        let (asked, leader, epoch, high_watermark, voters) =
            describe_quorum(&cluster.node(node).kafka.to_string());
        assert_eq!(leader, i64::from(controller));
        assert!(epoch >= 1 && high_watermark > 0, "{epoch} {high_watermark}");
        let ids: Vec<i64> = voters.iter().map(|v| v.0).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        for (id, log_end, fetched) in &voters {
            assert!(
                *log_end > 0 && *log_end <= high_watermark + 1_000,
                "voter {id}: {voters:?}"
            );
            assert!(
                asked - fetched < 5_000,
                "voter {id} not heard lately: {voters:?} at {asked}"
            );
        }
    }
    let silent = (0..3).find(|n| *n != controller).unwrap();
    cluster.kill(silent);
    std::thread::sleep(Duration::from_secs(4));
    let asker = (0..3).find(|n| *n != silent).unwrap();
    let (asked, leader, _, _, voters) = describe_quorum(&cluster.node(asker).kafka.to_string());
    assert_eq!(leader, i64::from(controller));
    for (id, _, fetched) in &voters {
        if *id == i64::from(silent) {
            assert!(
                asked - fetched >= 2_000,
                "the dead voter {id} still looks heard: {voters:?}"
            );
        } else {
            assert!(
                asked - fetched < 2_000,
                "voter {id} not heard lately: {voters:?}"
            );
        }
    }
}

/// The broker ids a node's Metadata lists.
fn listed_brokers(node: std::net::SocketAddr) -> Vec<i32> {
    let mut ids: Vec<i32> = metadata(node).brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort_unstable();
    ids
}

/// Waits until `node`'s Metadata lists exactly `expected`.
fn wait_for_brokers(node: std::net::SocketAddr, expected: &[i32], within: Duration) {
    eventually(within, Duration::from_millis(100), || {
        let listed = listed_brokers(node);
        match listed == expected {
            true => Ok(()),
            false => Err(format!(
                "{node} lists brokers {listed:?}, expected {expected:?}"
            )),
        }
    })
}

/// A frozen node (SIGSTOP: its connections stay open, it just says nothing) is fenced after
/// the session timeout, as Kafka fences a broker that stops heartbeating: Metadata leaves it
/// out, so clients stop picking it; once it runs again it is listed again. A killed node is
/// left out at once (its connections closed).
#[test]
fn a_silent_node_is_fenced_out_of_metadata_and_back_when_heard() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &["--broker-session-timeout-ms", "2000"]);
    let asker = cluster.node(0).kafka;
    let controller = metadata(asker).controller_id.0;
    let frozen = (1..3).find(|n| *n != controller).unwrap();
    assert_eq!(listed_brokers(asker), vec![0, 1, 2]);
    cluster.pause(frozen, true);
    let others: Vec<i32> = (0..3).filter(|n| *n != frozen).collect();
    let started = Instant::now();
    wait_for_brokers(asker, &others, Duration::from_secs(10));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "fenced after {:?}, before the session timeout",
        started.elapsed()
    );
    cluster.pause(frozen, false);
    wait_for_brokers(asker, &[0, 1, 2], Duration::from_secs(10));
    let gone = (1..3)
        .find(|n| *n != controller && *n != frozen)
        .unwrap_or(frozen);
    cluster.kill(gone);
    let started = Instant::now();
    let rest: Vec<i32> = (0..3).filter(|n| *n != gone).collect();
    wait_for_brokers(asker, &rest, Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "a killed node was left out only after {:?}",
        started.elapsed()
    );
}

/// kafka-python's reassignment calls (argv: bootstrap, topic, step), printing each answer:
/// `move` moves partition 0 to [3, 1, 2] and partition 1 to [3, 2, 0]; `cancel` cancels
/// partition 1's move; `list` lists the moves under way; `errors` asks what cannot be done.
const REASSIGN_SCRIPT: &str = r#"
import sys
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient
bootstrap, topic, step = sys.argv[1], sys.argv[2], sys.argv[3]
admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=30000)
def codes(result):
    return sorted((tp.topic, tp.partition, 0 if e is None else e.errno) for tp, e in result.items())
if step == "move":
    print("MOVE", codes(admin.alter_partition_reassignments(
        {TopicPartition(topic, 0): [3, 1, 2], TopicPartition(topic, 1): [3, 2, 0]})))
elif step == "cancel":
    print("CANCEL", codes(admin.alter_partition_reassignments({TopicPartition(topic, 1): None})))
elif step == "list":
    moves = admin.list_partition_reassignments()
    print("LIST", sorted((tp.partition, m["replicas"], m["adding_replicas"], m["removing_replicas"])
                         for tp, m in moves.items()))
elif step == "errors":
    print("UNKNOWN_BROKER", codes(admin.alter_partition_reassignments({TopicPartition(topic, 1): [1, 2, 9]})))
    print("TWICE", codes(admin.alter_partition_reassignments({TopicPartition(topic, 1): [1, 1, 2]})))
    print("NOTHING_TO_CANCEL", codes(admin.alter_partition_reassignments({TopicPartition(topic, 1): None})))
    print("UNKNOWN_PARTITION", codes(admin.alter_partition_reassignments({TopicPartition(topic, 9): [1, 2, 3]})))
admin.close()
"#;

/// Runs `step` of [`REASSIGN_SCRIPT`] through nodes 0 to 2 (node 3 is paused at times).
fn reassign(cluster: &Cluster, topic: &str, step: &str) -> String {
    let bootstrap: Vec<String> = (0..3).map(|n| cluster.node(n).kafka.to_string()).collect();
    let (ok, out) = sluice_tests::python(REASSIGN_SCRIPT, &[&bootstrap.join(","), topic, step]);
    assert!(ok, "kafka-python failed (scripts/test installs it):\n{out}");
    out
}

/// AlterPartitionReassignments moves a partition to another node while an idempotent producer
/// writes to it: the new replica joins as a learner (here while its node is paused, so the
/// move is seen under way, a second move is cancelled meanwhile, and the partition's leader
/// is killed and restarted), catches up, the leader hands over if it leaves; nothing
/// acknowledged is lost or doubled, the replicas' logs agree byte for byte, and the node that
/// left deletes its copy.
#[test]
fn a_partition_moves_to_another_node_under_load_and_a_cancelled_move_goes_back() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(
        4,
        &[
            "--replica-lag-time-max-ms",
            "2000",
            "--broker-session-timeout-ms",
            "2000",
        ],
    );
    let topic = "moving";
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let assignment: [&[i32]; 2] = [&[0, 1, 2], &[1, 2, 0]];
    let created = futures::executor::block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            2,
            TopicReplication::Variable(&assignment),
        )],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("CreateTopics");
    assert!(created[0].is_ok(), "{created:?}");
    agreed_views(&cluster, topic, 2);
    let errors = reassign(&cluster, topic, "errors");
    for line in [
        // INVALID_REPLICA_ASSIGNMENT (39), NO_REASSIGNMENT_IN_PROGRESS (85),
        // UNKNOWN_TOPIC_OR_PARTITION (3).
        "UNKNOWN_BROKER [('moving', 1, 39)]",
        "TWICE [('moving', 1, 39)]",
        "NOTHING_TO_CANCEL [('moving', 1, 85)]",
        "UNKNOWN_PARTITION [('moving', 9, 3)]",
    ] {
        assert!(errors.contains(line), "missing {line:?} in:\n{errors}");
    }

    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create_with_context(deliveries.clone())
        .expect("producer");
    let mut sent = 0;
    let mut send_some = |count: usize| {
        for _ in 0..count {
            let payload = format!("record-{sent}");
            let record = BaseRecord::<(), _>::to(topic)
                .partition(0)
                .payload(&payload);
            producer.send(record).map_err(|(e, _)| e).expect("queued");
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    send_some(200);

    // Node 3 is paused: both moves wait for it to catch up, so both are seen under way.
    cluster.pause(3, true);
    // Fenced first, so kafka-python (which talks to any listed broker) leaves it alone.
    wait_for_brokers(cluster.node(0).kafka, &[0, 1, 2], Duration::from_secs(10));
    let moved = reassign(&cluster, topic, "move");
    assert!(
        moved.contains("MOVE [('moving', 0, 0), ('moving', 1, 0)]"),
        "{moved}"
    );
    send_some(200);
    let listed = reassign(&cluster, topic, "list");
    assert!(
        listed.contains("LIST [(0, [3, 1, 2, 0], [3], [0]), (1, [3, 2, 0, 1], [3], [1])]"),
        "{listed}"
    );
    let cancelled = reassign(&cluster, topic, "cancel");
    assert!(
        cancelled.contains("CANCEL [('moving', 1, 0)]"),
        "{cancelled}"
    );
    // Partition 1 goes back to [1, 2, 0] without node 3 (its learner is removed again).
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        let listed = reassign(&cluster, topic, "list");
        match listed.contains("LIST [(0, [3, 1, 2, 0], [3], [0])]") {
            true => Ok(()),
            false => Err(format!(
                "partition 1's cancelled move is not over: {listed}"
            )),
        }
    });
    send_some(200);
    // The leader that is to leave dies and comes back while the move waits: a new leader goes
    // on with it, and the old one reopens its replica with the learner in its configuration.
    let (leader, _) = leader_of(&cluster, topic, 0);
    cluster.kill(leader);
    send_some(100);
    cluster.restart(leader);
    send_some(100);

    cluster.pause(3, false);
    for _ in 0..10 {
        send_some(50);
    }
    let views = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let views = agreed_views(&cluster, topic, 2);
        let listed = reassign(&cluster, topic, "list");
        match (
            views[0].1 == [3, 1, 2],
            views[1].1 == [1, 2, 0],
            listed.contains("LIST []"),
        ) {
            (true, true, true) => Ok(views),
            _ => Err(format!("the move did not finish: {views:?}\n{listed}")),
        }
    });
    assert!(views[0].0 != 0, "node 0 left but still leads: {views:?}");
    send_some(200);
    producer.flush(Duration::from_secs(60)).expect("flush");

    // Every acknowledged record exactly once, in the order sent.
    let reports = deliveries.0.lock().unwrap().clone();
    assert_eq!(reports.len(), sent, "delivery reports");
    let mut acknowledged: Vec<(i64, String)> = reports
        .iter()
        .map(|(payload, outcome)| {
            let (_, offset) = outcome
                .clone()
                .unwrap_or_else(|e| panic!("{payload} failed: {e}"));
            (offset, payload.clone())
        })
        .collect();
    acknowledged.sort();
    let in_order: Vec<String> = (0..sent).map(|n| format!("record-{n}")).collect();
    let stored: Vec<String> = acknowledged.into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        stored, in_order,
        "records stored out of order, lost or twice"
    );

    // Node 0 deleted its replica of partition 0; the three replicas agree.
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let dir = partition_dir(&cluster.data_dir(0), topic, 0);
        match dir.exists() {
            false => Ok(()),
            true => Err(format!("{} is still there", dir.display())),
        }
    });
    for node in 0..4 {
        cluster.stop(node);
    }
    let logs: Vec<Vec<(i64, Vec<u8>)>> = [3, 1, 2]
        .iter()
        .map(|node| stored_batches_of(&cluster, *node, topic, 0))
        .collect();
    let records_on_3: usize = logs[0]
        .iter()
        .map(|(_, bytes)| sluice_storage::batch::validate_batch(bytes, usize::MAX).unwrap())
        .filter(|info| !info.is_control())
        .map(|info| info.record_count as usize)
        .sum();
    assert_eq!(records_on_3, sent, "records in node 3's new replica");
    assert_replicas_agree(&logs, "the moved partition");
}

/// kafka-python throttles a move (`leader.replication.throttled.rate`, as
/// `kafka-reassign-partitions.sh --throttle` sets it), moves a 4 MB partition from node 0 to
/// node 1, and reads every record back from its new home.
const THROTTLED_MOVE_SCRIPT: &str = r#"
import sys, time
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic, ConfigResource, ConfigResourceType
bootstrap, rate = sys.argv[1].split(","), sys.argv[2]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
admin.create_topics([NewTopic("throttled", -1, -1, replica_assignments={0: [0]})])
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=65536)
for i in range(4000):
    producer.send("throttled", value=b"%06d" % i + b"x" * 994, partition=0)
producer.flush()
def broker_config(value):
    return admin.alter_configs([ConfigResource(ConfigResourceType.BROKER, "0",
        configs={"leader.replication.throttled.rate": value})], raise_on_unknown=False)
print("THROTTLED", broker_config(rate))
time.sleep(0.5)
start = time.time()
moved = admin.alter_partition_reassignments({TopicPartition("throttled", 0): [1]})
print("MOVE", [(tp.partition, e) for tp, e in moved.items()])
time.sleep(2)
print("MOVING_AFTER_2S", len(admin.list_partition_reassignments()))
while admin.list_partition_reassignments() and time.time() - start < 60:
    time.sleep(0.1)
print("MOVED_IN %.1f" % (time.time() - start))
print("UNTHROTTLED", broker_config(("DELETE", None)))
consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         consumer_timeout_ms=5000)
consumer.assign([TopicPartition("throttled", 0)])
values = [m.value[:6] for m in consumer]
print("CONSUMED", len(values), values == [b"%06d" % i for i in range(4000)])
"#;

/// A throttled move's learner catches up at the throttled rate (4 MB at 400 KB/s: about 7 s
/// after the first append message of up to 1 MiB and the second banked, where the unthrottled
/// copy takes well under 2 s here), and the move completes (the learner, promoted to voter,
/// gets its full window back) with every record.
#[test]
fn a_throttled_move_catches_up_at_the_throttled_rate() {
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &["--offsets-partitions", "3"]);
    let (ok, out) = sluice_tests::python(THROTTLED_MOVE_SCRIPT, &[&cluster.bootstrap(), "400000"]);
    assert!(ok, "kafka-python failed (scripts/test installs it):\n{out}");
    for expected in [
        "THROTTLED {'broker': {'0': 'OK'}}",
        "MOVE [(0, None)]",
        "MOVING_AFTER_2S 1",
        "UNTHROTTLED {'broker': {'0': 'OK'}}",
        "CONSUMED 4000 True",
    ] {
        assert!(out.contains(expected), "missing {expected:?}:\n{out}");
    }
    let seconds: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("MOVED_IN "))
        .and_then(|s| s.trim().parse().ok())
        .expect("MOVED_IN");
    eprintln!("the throttled move took {seconds} s");
    assert!(
        (3.0..40.0).contains(&seconds),
        "4 MB at 400 KB/s takes about 7 s: {seconds} s\n{out}"
    );
    let replicas = topic_in(&metadata(cluster.node(1).kafka), "throttled").map(|t| {
        t.partitions[0]
            .replica_nodes
            .iter()
            .map(|b| b.0)
            .collect::<Vec<_>>()
    });
    assert_eq!(replicas, Some(vec![1]));
}

/// `sluice cluster decommission` moves every replica off a node (the offsets topic's too) to
/// the other nodes and waits for the moves, here while the node is down (its disk died):
/// afterwards no partition lists the node, every record produced before is still there, and
/// the node, started again, removes the partition directories it no longer holds.
#[test]
fn decommissioning_a_node_moves_every_replica_off_it() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(4, &["--broker-session-timeout-ms", "2000"]);
    let topic = "retiring";
    create_topic_named(&cluster, topic);
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries::default())
        .expect("producer");
    let sent = 300;
    for n in 0..sent {
        let payload = format!("record-{n}");
        let record = BaseRecord::<(), _>::to(topic)
            .partition(n % PARTITIONS)
            .payload(&payload);
        producer.send(record).map_err(|(e, _)| e).expect("queued");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let leaving = 2;
    let held_before = partition_views(&metadata(cluster.node(0).kafka), topic)
        .iter()
        .filter(|(_, replicas, _)| replicas.contains(&leaving))
        .count();
    assert!(
        held_before > 0,
        "node {leaving} holds no replica of {topic}"
    );
    cluster.kill(leaving);
    wait_for_brokers(cluster.node(0).kafka, &[0, 1, 3], Duration::from_secs(10));

    let stdout = sluice_cluster_command(
        &cluster,
        &[
            "decommission",
            "--node",
            &leaving.to_string(),
            "--wait-secs",
            "60",
            "--throttle",
            "100000000",
        ],
    );
    assert!(stdout.contains("every replica moved"), "{stdout}");
    assert!(
        stdout.contains("catch-up throttle: leader.replication.throttled.rate=100000000")
            && stdout.contains("catch-up throttle removed"),
        "{stdout}"
    );

    cluster.restart(leaving);
    for node in [0, 1, 3] {
        let answer = metadata(cluster.node(node).kafka);
        for t in &answer.topics {
            for p in &t.partitions {
                assert!(
                    !p.replica_nodes.iter().any(|n| n.0 == leaving),
                    "node {node} still lists node {leaving} for {:?}-{}",
                    t.name,
                    p.partition_index
                );
            }
        }
    }
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let left: Vec<std::path::PathBuf> = (0..PARTITIONS)
            .map(|p| partition_dir(&cluster.data_dir(leaving), topic, p))
            .filter(|dir| dir.exists())
            .collect();
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("node {leaving} still has {left:?}")),
        }
    });

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "after-decommission")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    assign_from_offset_zero(&consumer, topic, PARTITIONS);
    let mut read = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.len() < sent as usize && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            read.insert(
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            );
        }
    }
    assert_eq!(read.len(), sent as usize, "records read after the moves");
}

/// Waits until node `id`'s log holds `needle`.
fn wait_for_node_log(cluster: &Cluster, id: i32, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !cluster.node(id).log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "node {id} never logged {needle:?}:\n{}",
            cluster.node(id).log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The topic names a node's Metadata answer lists.
fn topic_names(node: std::net::SocketAddr) -> HashSet<String> {
    metadata(node)
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect()
}

/// The controller's snapshots: the nodes record their image and cut the metadata log once
/// enough commands applied; a node that was down past the cut gets the leader's image in a
/// Raft snapshot and lists every topic; a node whose log was cut restarts from its snapshot.
#[test]
fn controller_snapshots_cut_the_metadata_log_and_bring_a_node_back_past_the_cut() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(
        3,
        &["--metadata-log-max-record-bytes-between-snapshots", "2048"],
    );
    let absent = 2;
    cluster.kill(absent);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("admin client");
    let names: Vec<String> = (0..16).map(|n| format!("snap-{n}")).collect();
    for chunk in names.chunks(4) {
        let topics: Vec<NewTopic> = chunk
            .iter()
            .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(3)))
            .collect();
        let created = futures::executor::block_on(admin.create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("CreateTopics");
        assert!(created.iter().all(|c| c.is_ok()), "{created:?}");
    }
    for id in [0, 1] {
        wait_for_node_log(
            &cluster,
            id,
            "controller snapshot recorded",
            Duration::from_secs(10),
        );
    }

    // The absent node's log ends before every cut: it starts over from the leader's image.
    cluster.restart(absent);
    wait_for_node_log(
        &cluster,
        absent,
        "controller image restored from the leader's snapshot",
        Duration::from_secs(20),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = topic_names(cluster.node(absent).kafka);
        if names.iter().all(|n| listed.contains(n)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {absent} lists {listed:?} after its restore"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A node whose metadata log was cut restarts from its snapshot with every topic, and
    // records on a topic created before the cut still flow through the cluster.
    cluster.kill(0);
    cluster.restart(0);
    let listed = topic_names(cluster.node(0).kafka);
    assert!(
        names.iter().all(|n| listed.contains(n)),
        "node 0 rebuilt {listed:?}"
    );
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .create_with_context(Deliveries::default())
        .expect("producer");
    producer
        .send(BaseRecord::to("snap-0").key("k").payload("after the cut"))
        .expect("queue");
    producer.flush(Duration::from_secs(30)).expect("flushed");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "snapshots")
        .create()
        .expect("consumer");
    assign_from_offset_zero(&consumer, "snap-0", 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            assert_eq!(message.payload(), Some(&b"after the cut"[..]));
            break;
        }
        assert!(Instant::now() < deadline, "the record never came back");
    }
}

/// A node that is not a seed joins a running cluster through the seeds: it is registered, gets
/// the metadata (as a learner of the controller group), takes replicas, leads a partition that
/// librdkafka produces to and consumes from, and comes back after a SIGKILL.
#[test]
fn a_node_that_is_not_a_seed_joins_and_serves_replicas() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &[]);
    create_topic_named(&cluster, "before");
    let joined = cluster.join_node();
    assert_eq!(joined, 3);
    cluster.wait_until_formed(Duration::from_secs(30));
    assert!(
        cluster.node(0).log().contains("a node asks to join")
            || cluster.node(1).log().contains("a node asks to join")
            || cluster.node(2).log().contains("a node asks to join"),
        "no seed heard the join"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !topic_names(cluster.node(joined).kafka).contains("before") {
        assert!(
            Instant::now() < deadline,
            "the joined node never listed the topic created before it joined"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // `sluice cluster rebalance` moves replicas of the partitions made before it onto it.
    let out = sluice_cluster_command(&cluster, &["rebalance", "--wait-secs", "120"]);
    assert!(out.contains("balanced"), "{out}");
    let held = |cluster: &Cluster| {
        let mut held: BTreeMap<i32, usize> = BTreeMap::new();
        for topic in metadata(cluster.node(0).kafka).topics {
            for p in topic.partitions {
                for node in p.replica_nodes {
                    *held.entry(node.0).or_default() += 1;
                }
            }
        }
        held
    };
    let spread = held(&cluster);
    let (least, most) = (
        spread.values().min().copied().unwrap_or(0),
        spread.values().max().copied().unwrap_or(0),
    );
    assert!(
        spread.len() == 4 && most - least <= 1,
        "replicas per node after the rebalance: {spread:?}\n{out}"
    );

    // A topic whose preferred leader is the joined node.
    let assignment: &[&[i32]] = &[&[3, 0, 1]];
    create_topics_through(
        &cluster,
        &[NewTopic::new(
            "joined",
            1,
            TopicReplication::Variable(assignment),
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader_of(&cluster, "joined", 0).0 != joined {
        assert!(
            Instant::now() < deadline,
            "the joined node never led its preferred partition"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .create_with_context(deliveries.clone())
        .expect("producer");
    for n in 0..100 {
        producer
            .send(BaseRecord::to("joined").key("k").payload(&format!("r{n}")))
            .expect("queue");
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    {
        let reports = deliveries.0.lock().unwrap();
        assert_eq!(reports.len(), 100);
        assert!(reports.iter().all(|(_, r)| r.is_ok()), "{reports:?}");
    }
    let consume_all = |cluster: &Cluster| {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap())
            .set("group.id", "joined-readers")
            .create()
            .expect("consumer");
        assign_from_offset_zero(&consumer, "joined", 1);
        let mut read = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while read.len() < 100 {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                read.push(String::from_utf8_lossy(message.payload().unwrap()).into_owned());
            }
            assert!(Instant::now() < deadline, "read {} of 100", read.len());
        }
        read
    };
    let expected: Vec<String> = (0..100).map(|n| format!("r{n}")).collect();
    assert_eq!(consume_all(&cluster), expected);
    // DescribeQuorum: the seeds vote, the joined node observes (a learner).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (voters, observers) = quorum_members(&cluster.node(joined).kafka.to_string());
        if voters == [0, 1, 2] && observers == [3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "voters {voters:?}, observers {observers:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Back from a SIGKILL, it is still a member: it lists every node and topic.
    cluster.kill(joined);
    cluster.restart(joined);
    cluster.wait_until_formed(Duration::from_secs(30));
    let listed = topic_names(cluster.node(joined).kafka);
    assert!(
        listed.contains("before") && listed.contains("joined"),
        "{listed:?}"
    );
    assert_eq!(consume_all(&cluster), expected);

    // Leaving: UnregisterBroker refuses a seed and a node partitions still list; after
    // `decommission` moved its replicas and it stopped, it is unregistered and leaves the
    // controller group's learners.
    let bootstrap = cluster.node(1).kafka.to_string();
    let unregister = |node: i32| {
        std::process::Command::new(sluice_tests::sluice_binary())
            .args(["cluster", "unregister", "--node", &node.to_string()])
            .args(["--bootstrap", &bootstrap])
            .output()
            .expect("run sluice cluster unregister")
    };
    let seed = unregister(0);
    assert!(!seed.status.success());
    let why = String::from_utf8_lossy(&seed.stderr).into_owned();
    assert!(
        why.contains("INVALID_REQUEST") || why.contains("InvalidRequest"),
        "{why}"
    );
    assert!(why.contains("controller voter"), "{why}");
    let busy = unregister(joined);
    assert!(!busy.status.success());
    let why = String::from_utf8_lossy(&busy.stderr).into_owned();
    assert!(why.contains("has replicas on it"), "{why}");
    sluice_cluster_command(
        &cluster,
        &["decommission", "--node", "3", "--wait-secs", "60"],
    );
    cluster.stop(joined);
    let done = unregister(joined);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let brokers = listed_brokers(cluster.node(0).kafka);
        let (voters, observers) = quorum_members(&cluster.node(0).kafka.to_string());
        if brokers == [0, 1, 2] && voters == [0, 1, 2] && observers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "brokers {brokers:?}, voters {voters:?}, observers {observers:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let again = unregister(joined);
    let why = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(
        !again.status.success() && why.contains("BrokerIdNotRegistered"),
        "{why}"
    );
    assert_eq!(consume_all(&cluster), expected);
}

/// The controller's voters change while the cluster runs (KIP-853's AddRaftVoter and
/// RemoveRaftVoter through `sluice cluster add-voter|remove-voter`): a node that joined through
/// the seeds becomes a voter, the controller's leader (a seed) stops being one (it hands the
/// leadership over first) and observes; then the metadata quorum is the new set: with the
/// removed seed and another seed dead, a topic is still created (the seeds alone would have
/// one of three left). The new voter keeps its vote across a SIGKILL.
#[test]
fn the_controller_voters_change_while_the_cluster_runs() {
    let _one_at_a_time = one_cluster_at_a_time();
    let mut cluster = Cluster::start(3, &[]);
    let joined = cluster.join_node();
    cluster.wait_until_formed(Duration::from_secs(30));
    let voter_command = |cluster: &Cluster, verb: &str, node: i32| {
        std::process::Command::new(sluice_tests::sluice_binary())
            .args(["cluster", verb, "--node", &node.to_string()])
            .args(["--wait-secs", "60"])
            .args(["--bootstrap", &cluster.node(1).kafka.to_string()])
            .output()
            .expect("run sluice cluster")
    };
    let members_become = |cluster: &Cluster, voters: &[i64], observers: &[i64]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = quorum_members(&cluster.node(joined).kafka.to_string());
            if seen.0 == voters && seen.1 == observers {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "voters, observers: {seen:?}, not {voters:?}, {observers:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    members_become(&cluster, &[0, 1, 2], &[3]);
    // Every version DescribeQuorum advertises answers in cluster mode (`nodes` is v2's only).
    for version in 0..=2 {
        use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
        use kafka_protocol::messages::{
            ApiKey, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
        };
        let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
            .with_topic_name(TopicName("__cluster_metadata".into()))
            .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
        let answer: DescribeQuorumResponse = sluice_tests::wire::call(
            &mut sluice_tests::wire::connect(cluster.node(0).kafka),
            ApiKey::DescribeQuorum,
            version,
            &request,
        );
        let partition = &answer.topics[0].partitions[0];
        assert_eq!(partition.current_voters.len(), 3, "v{version}: {answer:?}");
        assert_eq!(answer.nodes.len(), if version >= 2 { 3 } else { 0 });
    }

    let added = voter_command(&cluster, "add-voter", joined);
    assert!(
        added.status.success(),
        "{}{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    members_become(&cluster, &[0, 1, 2, 3], &[]);
    let stderr = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let again = voter_command(&cluster, "add-voter", joined);
    assert!(!again.status.success());
    assert!(stderr(again).contains("DuplicateVoter"));
    let unknown = voter_command(&cluster, "remove-voter", 7);
    assert!(!unknown.status.success());
    assert!(stderr(unknown).contains("VoterNotFound"));
    let unregistered = voter_command(&cluster, "add-voter", 9);
    assert!(!unregistered.status.success());
    assert!(stderr(unregistered).contains("BrokerIdNotRegistered"));

    // The controller's leader leaves the voters: it hands the leadership to another voter and
    // stays a learner (an observer).
    let leader = metadata(cluster.node(0).kafka).controller_id.0;
    assert!((0..3).contains(&leader), "controller {leader}");
    let removed = voter_command(&cluster, "remove-voter", leader);
    assert!(
        removed.status.success(),
        "{}{}",
        String::from_utf8_lossy(&removed.stdout),
        String::from_utf8_lossy(&removed.stderr)
    );
    let remaining: Vec<i64> = (0..4).filter(|n| *n != i64::from(leader)).collect();
    members_become(&cluster, &remaining, &[i64::from(leader)]);
    assert!(
        cluster
            .node(leader)
            .log()
            .contains("handing the controller's leadership over"),
        "the leader did not hand over"
    );

    // The removed seed and one more seed die: two of the three voters are left, so metadata
    // changes still commit.
    let other_seed = (0..3).find(|n| *n != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(other_seed);
    let survivor = (0..3).find(|n| *n != leader && *n != other_seed).unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set(
            "bootstrap.servers",
            format!(
                "{},{}",
                cluster.node(survivor).kafka,
                cluster.node(joined).kafka
            ),
        )
        .create()
        .expect("admin client");
    let topic = NewTopic::new("after-the-change", 1, TopicReplication::Fixed(2));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = futures::executor::block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("CreateTopics");
        match &created[0] {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no topic created by the new voters: {e:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !topic_names(cluster.node(joined).kafka).contains("after-the-change") {
        assert!(
            Instant::now() < deadline,
            "the new voter never listed the topic"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The new voter keeps its vote across a SIGKILL (its configuration is on disk).
    cluster.restart(other_seed);
    cluster.kill(joined);
    cluster.restart(joined);
    cluster.restart(leader);
    cluster.wait_until_formed(Duration::from_secs(60));
    members_become(&cluster, &remaining, &[i64::from(leader)]);
}

/// A one-seed cluster's only voter cannot be removed (INVALID_REQUEST, saying why), and the
/// quorum stays as it was.
#[test]
fn the_last_controller_voter_is_not_removed() {
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(1, &[]);
    let out = std::process::Command::new(sluice_tests::sluice_binary())
        .args(["cluster", "remove-voter", "--node", "0"])
        .args(["--bootstrap", &cluster.node(0).kafka.to_string()])
        .output()
        .expect("run sluice cluster remove-voter");
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        why.contains("InvalidRequest") && why.contains("last voter"),
        "{why}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (voters, observers) = quorum_members(&cluster.node(0).kafka.to_string());
        if voters == [0] && observers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{voters:?} {observers:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Join frames that must not register anything, sent raw to a seed's RPC port: a registration
/// that is not JSON, one claiming a seed's id, one naming another id than its sender, one
/// without an RPC address, one calling itself a seed. Each is refused with a log line; the
/// brokers stay the seeds and the cluster still takes changes.
#[test]
fn a_seed_refuses_join_requests_that_do_not_hold_up() {
    use std::io::Write;
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &[]);
    let registration = |node: i32, rpc: Option<&str>, seed: bool| {
        let mut json = serde_json::json!({
            "node_id": node, "host": "127.0.0.1", "port": 1, "rack": null,
        });
        if let Some(rpc) = rpc {
            json["rpc"] = rpc.into();
        }
        if seed {
            json["seed"] = true.into();
        }
        json.to_string().into_bytes()
    };
    let bad: Vec<(u64, Vec<u8>)> = vec![
        (8, b"{not json".to_vec()),
        // Raft ids are node ids + 1.
        (2, registration(1, Some("127.0.0.1:1"), false)),
        (10, registration(11, Some("127.0.0.1:1"), false)),
        (11, registration(10, None, false)),
        (12, registration(11, Some("127.0.0.1:1"), true)),
    ];
    let seed = cluster.node(0);
    for (from, join) in &bad {
        let mut frame = Vec::new();
        sluice_replication::rpc::encode_join_frame(*from, join, &mut frame);
        let mut stream = std::net::TcpStream::connect(seed.rpc).expect("the seed's RPC port");
        stream.write_all(&frame).expect("send the join frame");
        stream.flush().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while seed.log().matches("refused a request to join").count() < bad.len() {
        assert!(
            Instant::now() < deadline,
            "refusals logged: {}\n{}",
            seed.log().matches("refused a request to join").count(),
            seed.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing was registered: the joins kept coming for seconds would have been proposed by now.
    std::thread::sleep(Duration::from_secs(2));
    for node in 0..3 {
        assert_eq!(listed_brokers(cluster.node(node).kafka), [0, 1, 2]);
    }
    assert!(!seed.log().contains("a node asks to join"));
    create_topic_named(&cluster, "after-bad-joins");
}

/// A change forwarded to a controller leader that cannot commit it (the leader and the third
/// node are frozen: no quorum) answers REQUEST_TIMED_OUT after the forwarding timeout instead
/// of hanging; once the nodes thaw, the cluster takes changes again (the client's retry finds
/// the topic made or makes it: a timed-out change's outcome is unknown, as in Kafka).
#[test]
fn a_forwarded_change_the_controller_cannot_commit_times_out() {
    use kafka_protocol::messages::{
        create_topics_request, ApiKey, CreateTopicsRequest, CreateTopicsResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use sluice_tests::wire::{call, connect};
    const REQUEST_TIMED_OUT: i16 = 7;
    const TOPIC_ALREADY_EXISTS: i16 = 36;
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &[]);
    let create = |node: i32| -> (i16, String) {
        let answer: CreateTopicsResponse = call(
            &mut connect(cluster.node(node).kafka),
            ApiKey::CreateTopics,
            7,
            &CreateTopicsRequest::default()
                .with_timeout_ms(60_000)
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("stranded")))
                    .with_num_partitions(1)
                    .with_replication_factor(3)]),
        );
        let t = &answer.topics[0];
        let message = t.error_message.as_ref().map_or("", |m| m.as_str());
        (t.error_code, message.to_string())
    };
    let controller = metadata(cluster.node(0).kafka).controller_id.0;
    let asker = (0..3).find(|n| *n != controller).unwrap();
    let third = (0..3).find(|n| *n != controller && *n != asker).unwrap();
    cluster.pause(controller, true);
    cluster.pause(third, true);
    let asked = Instant::now();
    let (code, message) = create(asker);
    let waited = asked.elapsed();
    cluster.pause(controller, false);
    cluster.pause(third, false);
    assert_eq!(code, REQUEST_TIMED_OUT, "{message}");
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(40),
        "answered after {waited:?}: {message}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, message) = create(asker);
        if code == 0 || code == TOPIC_ALREADY_EXISTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the thawed cluster takes no change: {code} {message}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Node `id`'s `/metrics` text.
fn metrics_text(cluster: &Cluster, id: i32) -> String {
    let admin = sluice_tests::admin_addr_in(&cluster.node(id).log()).expect("admin listening");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(format!("http://{admin}/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("a text body")
}

/// The sum over node `id`'s shards of the samples named `name` whose labels contain `label`.
fn metric_sum(cluster: &Cluster, id: i32, name: &str, label: &str) -> u64 {
    metrics_text(cluster, id)
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter(|line| line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Raft groups with a replica on `id` that are quiet, from its `/metrics`.
fn quiet_groups(cluster: &Cluster, id: i32) -> u64 {
    metric_sum(cluster, id, "sluice_raft_groups", "state=\"quiet\"")
}

/// Node `id`'s replication steps so far, and the Raft groups they looked at in all.
fn steps_and_looks(cluster: &Cluster, id: i32) -> (u64, u64) {
    (
        metric_sum(cluster, id, "sluice_raft_steps_total", ""),
        metric_sum(cluster, id, "sluice_raft_step_groups_total", ""),
    )
}

/// Idle partitions go quiet on every node (no heartbeats, no ticks), and cost the busy ones
/// nothing: while records flow to one partition, each replication step looks at a handful of
/// groups, not at every group the node holds. A leader that stops without its connections
/// closing (SIGSTOP) is still replaced: the nodes' keep-alives stop, its followers' nodes count
/// it down and wake its groups, and one of them is elected, so a librdkafka producer's
/// acks=all record is acknowledged by the new leader and kept.
#[test]
fn idle_partitions_go_quiet_and_a_paused_leader_is_still_replaced() {
    const QUIET: &str = "quiet";
    const QUIET_PARTITIONS: i32 = 60;
    let _one_at_a_time = one_cluster_at_a_time();
    let cluster = Cluster::start(3, &[]);
    let topic = NewTopic::new(QUIET, QUIET_PARTITIONS, TopicReplication::Fixed(3));
    create_topics_through(&cluster, &[topic]);
    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("socket.timeout.ms", "3000")
        .set("message.timeout.ms", "60000")
        .create_with_context(deliveries.clone())
        .unwrap();
    let delivered = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(70);
        while deliveries.0.lock().unwrap().len() < count {
            assert!(Instant::now() < deadline, "deliveries never came");
            std::thread::sleep(Duration::from_millis(20));
        }
        let reports = deliveries.0.lock().unwrap().clone();
        assert!(
            reports.iter().all(|(_, outcome)| outcome.is_ok()),
            "{reports:?}"
        );
    };
    let send = |partition: i32, payload: &str| {
        producer
            .send(
                BaseRecord::<(), _>::to(QUIET)
                    .partition(partition)
                    .payload(payload),
            )
            .unwrap();
    };
    for partition in 0..QUIET_PARTITIONS {
        send(partition, &format!("before-{partition}"));
    }
    delivered(QUIET_PARTITIONS as usize);
    // Idle now: every node's replicas of the topic go quiet, and so does every other
    // partition (the controller never does).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let quiet: Vec<u64> = (0..3).map(|id| quiet_groups(&cluster, id)).collect();
        let awake: Vec<u64> = (0..3)
            .map(|id| metric_sum(&cluster, id, "sluice_raft_groups", "state=\"awake\""))
            .collect();
        if quiet.iter().all(|q| *q >= QUIET_PARTITIONS as u64) && awake.iter().all(|a| *a <= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle groups did not go quiet: quiet {quiet:?}, awake {awake:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Records flow to partition 1 alone, one at a time: every node's steps look at the few
    // groups with work (partition 1, the controller, whatever woke), where a step that
    // scanned every group would look at more than QUIET_PARTITIONS each time.
    let before: Vec<(u64, u64)> = (0..3).map(|id| steps_and_looks(&cluster, id)).collect();
    const BUSY_RECORDS: usize = 40;
    for n in 0..BUSY_RECORDS {
        send(1, &format!("busy-{n}"));
        delivered(QUIET_PARTITIONS as usize + n + 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    // A node's `/metrics` is at most a second old.
    std::thread::sleep(Duration::from_millis(1500));
    for (id, (steps_before, looks_before)) in before.into_iter().enumerate() {
        let (steps, looks) = steps_and_looks(&cluster, id as i32);
        let (steps, looks) = (steps - steps_before, looks - looks_before);
        assert!(
            steps >= BUSY_RECORDS as u64,
            "node {id} took {steps} steps for {BUSY_RECORDS} acks=all records"
        );
        let per_step = looks as f64 / steps as f64;
        eprintln!("node {id}: {steps} steps looked at {per_step:.2} groups each");
        assert!(
            per_step < 8.0,
            "node {id}'s steps looked at {per_step:.1} groups each ({looks} over {steps} steps) \
             while one partition of {QUIET_PARTITIONS} was busy"
        );
    }
    let (leader, epoch) = leader_of(&cluster, QUIET, 0);
    cluster.pause(leader, true);
    let paused_at = Instant::now();
    // The survivors elect one of them (nothing else would wake their quiet replicas: no
    // connection closed, no message arrives).
    let survivors: Vec<i32> = (0..3).filter(|n| *n != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let now_led = loop {
        let answer = metadata(cluster.node(survivors[0]).kafka);
        let named = topic_in(&answer, QUIET)
            .and_then(|t| t.partitions.iter().find(|p| p.partition_index == 0))
            .map(|p| (p.leader_id.0, p.leader_epoch));
        if let Some((led_by, led_in)) = named {
            if survivors.contains(&led_by) && led_in > epoch {
                break (led_by, led_in);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no survivor took over from paused leader {leader}: {named:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = paused_at.elapsed();
    eprintln!("paused leader {leader} replaced by {now_led:?} after {took:?}");
    // librdkafka gets its record acknowledged by the new leader (its request to the paused
    // one times out first, after `socket.timeout.ms`: the connection stays open).
    let payload = "after the pause".to_string();
    send(0, &payload);
    delivered(QUIET_PARTITIONS as usize + BUSY_RECORDS + 1);
    cluster.pause(leader, false);
    // The partition holds both records, once each, in order.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "quiet-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(QUIET, 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.len() < 2 && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            read.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
    }
    assert_eq!(read, vec!["before-0".to_string(), payload]);
}
