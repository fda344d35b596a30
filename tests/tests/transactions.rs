//! Transactions (KIP-98) with librdkafka's transactional producer, unchanged, against a single
//! node: read_committed consumers see committed transactions only, never an aborted record,
//! and nothing past an open transaction; a second incarnation of a transactional id fences the
//! first; a transaction left open past its timeout is aborted by the coordinator, also when the
//! broker was SIGKILLed while it was open. kafka-python's transactional producer runs a
//! consume-transform-produce loop too; `sluice txn` lists, describes, finds and aborts
//! (WriteTxnMarkers) a hanging transaction. On a three-node cluster, the loop stays exactly
//! once when the transactional id's coordinator is SIGKILLed with a transaction open.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_tests::Broker;

const PARTITIONS: i32 = 3;
const TIMEOUT: Duration = Duration::from_secs(20);

fn create_topic(bootstrap: &str, name: &str) {
    create_topic_with_replicas(bootstrap, name, 1);
}

fn create_topic_with_replicas(bootstrap: &str, name: &str, replicas: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(replicas));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in futures::executor::block_on(admin.create_topics([&topic], &options))
        .expect("CreateTopics answered")
    {
        result.unwrap_or_else(|(name, code)| panic!("creating {name}: {code:?}"));
    }
}

fn transactional_producer(bootstrap: &str, id: &str, timeout_ms: u32) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "1")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer
}

/// Sends `count` records `{prefix}-{i}` spread over the partitions, and waits for their
/// delivery (inside the producer's open transaction).
fn send(producer: &BaseProducer, topic: &str, prefix: &str, count: usize) {
    for i in 0..count {
        let value = format!("{prefix}-{i}");
        let key = format!("k{i}");
        let partition = (i % PARTITIONS as usize) as i32;
        producer
            .send(
                BaseRecord::to(topic)
                    .key(&key)
                    .payload(&value)
                    .partition(partition),
            )
            .expect("queued");
    }
    producer.flush(TIMEOUT).expect("delivered");
}

fn consumer(bootstrap: &str, topic: &str, isolation: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("txn-reader-{isolation}"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Every value read within `window` (after the first `expected` arrive, a short look for
/// more), in the order each partition gave them.
fn read(consumer: &BaseConsumer, expected: usize, window: Duration) -> Vec<String> {
    let mut values = Vec::new();
    let deadline = Instant::now() + window;
    let mut extra_until = None;
    while Instant::now() < deadline && extra_until.is_none_or(|until| Instant::now() < until) {
        if let Some(message) = consumer
            .poll(Duration::from_millis(100))
            .filter(|m| !lost_a_broker(m))
        {
            let message = message.expect("a record, not an error");
            values.push(String::from_utf8_lossy(message.payload().unwrap_or(b"")).into_owned());
        }
        if values.len() >= expected && extra_until.is_none() {
            extra_until = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    values
}

/// Whether a poll reported that a connection to a broker failed: in a cluster whose node was
/// killed, librdkafka says so through the consumer, and goes on with the other nodes.
fn lost_a_broker<T>(polled: &Result<T, rdkafka::error::KafkaError>) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    matches!(
        polled,
        Err(KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown
        ))
    )
}

/// Writes `in-0` .. `in-{count - 1}` to `topic` round-robin over its partitions, acks=all,
/// with a plain producer.
fn produce_inputs(bootstrap: &str, topic: &str, count: usize) {
    let plain: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..count {
        let value = format!("in-{i}");
        plain
            .send(
                BaseRecord::to(topic)
                    .key("")
                    .payload(&value)
                    .partition((i % PARTITIONS as usize) as i32),
            )
            .expect("queued");
    }
    plain.flush(TIMEOUT).expect("delivered");
}

/// The output of a transform of `in-0` .. `in-{count - 1}`: each `out-in-i` exactly once,
/// and nothing else (no aborted record, no zombie's).
fn assert_each_output_once(values: &[String], count: usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for v in values {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    for i in 0..count {
        let expected = format!("out-in-{i}");
        assert_eq!(
            seen.get(expected.as_str()).copied(),
            Some(1),
            "{expected} once in the committed output: {values:?}"
        );
    }
    assert_eq!(values.len(), count, "nothing else: {values:?}");
}

fn with_prefix(values: &[String], prefix: &str) -> usize {
    values
        .iter()
        .filter(|v| v.starts_with(&format!("{prefix}-")))
        .count()
}

#[test]
fn read_committed_consumers_see_committed_transactions_only_and_wait_for_open_ones() {
    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "txn-out");
    let producer = transactional_producer(&bootstrap, "txn-main", 60_000);

    producer.begin_transaction().unwrap();
    send(&producer, "txn-out", "first", 30);
    producer.commit_transaction(TIMEOUT).expect("commit");

    producer.begin_transaction().unwrap();
    send(&producer, "txn-out", "aborted", 30);
    producer.abort_transaction(TIMEOUT).expect("abort");

    producer.begin_transaction().unwrap();
    send(&producer, "txn-out", "second", 12);
    producer.commit_transaction(TIMEOUT).expect("commit");

    let committed = consumer(&bootstrap, "txn-out", "read_committed");
    let values = read(&committed, 42, TIMEOUT);
    assert_eq!(with_prefix(&values, "first"), 30, "{values:?}");
    assert_eq!(with_prefix(&values, "second"), 12, "{values:?}");
    assert_eq!(with_prefix(&values, "aborted"), 0, "{values:?}");
    assert_eq!(values.len(), 42);
    let uncommitted = consumer(&bootstrap, "txn-out", "read_uncommitted");
    let all = read(&uncommitted, 72, TIMEOUT);
    assert_eq!(all.len(), 72, "read_uncommitted reads aborted records too");

    // An open transaction holds read_committed consumers back; its commit lets them on.
    producer.begin_transaction().unwrap();
    send(&producer, "txn-out", "open", 9);
    let waiting = read(&committed, 1, Duration::from_secs(3));
    assert!(
        waiting.is_empty(),
        "records of an open transaction: {waiting:?}"
    );
    // Operators see it on /metrics: one id coordinated here, Ongoing.
    assert_eq!(
        transactions_by_state(&broker),
        vec![("Ongoing".to_string(), 1.0)]
    );
    producer.commit_transaction(TIMEOUT).expect("commit");
    let after = read(&committed, 9, TIMEOUT);
    assert_eq!(with_prefix(&after, "open"), 9, "{after:?}");
    assert_eq!(
        transactions_by_state(&broker),
        vec![("CompleteCommit".to_string(), 1.0)]
    );
    assert!(
        metrics(&broker).contains("sluice_transaction_marker_retries_total{shard=\"0\"} 0"),
        "no marker had to be tried again"
    );
    // Within a partition, committed records keep their order.
    let mut per_partition: HashMap<usize, Vec<usize>> = HashMap::new();
    for value in &values {
        if let Some(n) = value.strip_prefix("first-") {
            let n: usize = n.parse().unwrap();
            per_partition
                .entry(n % PARTITIONS as usize)
                .or_default()
                .push(n);
        }
    }
    for (p, ns) in per_partition {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "partition {p}: {ns:?}");
    }
    broker.stop();
}

/// The broker's `/metrics` text.
fn metrics(broker: &Broker) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(format!("http://{}/metrics", broker.admin_addr()))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("a text body")
}

/// `sluice_transactions` as the broker exposes it: (state, ids).
fn transactions_by_state(broker: &Broker) -> Vec<(String, f64)> {
    metrics(broker)
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("sluice_transactions{state=\"")?;
            let (state, value) = rest.split_once("\"} ")?;
            Some((state.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_new_incarnation_fences_the_old_and_an_abandoned_transaction_is_aborted_after_a_crash() {
    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "txn-fence");

    // Zombie fencing: the second init of the id fences the first producer.
    let zombie = transactional_producer(&bootstrap, "txn-z", 60_000);
    zombie.begin_transaction().unwrap();
    send(&zombie, "txn-fence", "zombie", 3);
    let successor = transactional_producer(&bootstrap, "txn-z", 60_000);
    assert!(
        zombie.commit_transaction(TIMEOUT).is_err(),
        "the fenced producer cannot commit"
    );
    successor.begin_transaction().unwrap();
    send(&successor, "txn-fence", "successor", 3);
    successor.commit_transaction(TIMEOUT).expect("commit");
    drop(zombie);

    // A transaction left open (timeout 3 s) when the broker is killed.
    let abandoned = transactional_producer(&bootstrap, "txn-abandoned", 3_000);
    abandoned.begin_transaction().unwrap();
    send(&abandoned, "txn-fence", "abandoned", 6);
    drop(abandoned);
    let data = broker.kill();
    let broker = Broker::start_on(data, &[]);
    let bootstrap = broker.bootstrap();

    // Once the coordinator aborts it, later transactions become readable behind it.
    let later = transactional_producer(&bootstrap, "txn-later", 60_000);
    later.begin_transaction().unwrap();
    send(&later, "txn-fence", "later", 6);
    later.commit_transaction(TIMEOUT).expect("commit");
    let committed = consumer(&bootstrap, "txn-fence", "read_committed");
    let values = read(&committed, 9, TIMEOUT);
    assert_eq!(with_prefix(&values, "successor"), 3, "{values:?}");
    assert_eq!(with_prefix(&values, "later"), 6, "{values:?}");
    assert_eq!(with_prefix(&values, "zombie"), 0, "{values:?}");
    assert_eq!(with_prefix(&values, "abandoned"), 0, "{values:?}");
    assert!(
        broker
            .log()
            .contains("aborting a transaction past its timeout"),
        "the coordinator aborted it"
    );
    broker.stop();
}

/// Hostile or stale input, on the wire, gets Kafka's error codes and changes nothing.
#[test]
fn stale_unknown_and_forged_transactional_requests_get_kafkas_errors() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::ResponseError;
    use sluice_tests::wire::{call, connect};

    let broker = Broker::start(&[]);
    create_topic(&broker.bootstrap(), "txn-wire");
    let mut s = connect(broker.addr);
    let txn_id = |s: &str| TransactionalId(StrBytes::from_string(s.to_string()));
    let init = |s: &mut std::net::TcpStream, timeout_ms: i32| init_on_wire(s, "wire", timeout_ms);
    let add = |s: &mut std::net::TcpStream, pid: i64, epoch: i16, topic: &str| {
        add_on_wire(s, "wire", pid, epoch, topic)
    };
    let end = end_on_wire;

    assert_eq!(
        init(&mut s, 3_600_000).error_code,
        ResponseError::InvalidTransactionTimeout.code(),
        "a timeout above the maximum"
    );
    let first = init(&mut s, 60_000);
    assert_eq!(first.error_code, 0);
    let second = init(&mut s, 60_000);
    assert_eq!(second.producer_id, first.producer_id);
    assert_eq!(
        second.producer_epoch,
        first.producer_epoch + 1,
        "the epoch moves on"
    );
    let (pid, epoch) = (second.producer_id.0, second.producer_epoch);

    assert_eq!(
        end(&mut s, "never-initialised", pid, epoch, true),
        ResponseError::InvalidProducerIdMapping.code()
    );
    assert_eq!(
        add(&mut s, pid, epoch - 1, "txn-wire"),
        ResponseError::ProducerFenced.code(),
        "a stale epoch"
    );
    assert_eq!(
        add(&mut s, pid + 1, epoch, "txn-wire"),
        ResponseError::InvalidProducerIdMapping.code()
    );
    assert_eq!(
        add(&mut s, pid, epoch, "txn-wire-missing"),
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        end(&mut s, "wire", pid, epoch, true),
        ResponseError::InvalidTxnState.code(),
        "no transaction open"
    );
    assert_eq!(add(&mut s, pid, epoch, "txn-wire"), 0);
    assert_eq!(end(&mut s, "wire", pid, epoch, false), 0);
    assert_eq!(end(&mut s, "wire", pid, epoch, false), 0, "a retried end");
    assert_eq!(
        end(&mut s, "wire", pid, epoch, true),
        ResponseError::InvalidTxnState.code(),
        "the opposite end of a completed transaction"
    );

    // A marker forged by a client is refused, and clients cannot write the coordinator's topic.
    let produce = |s: &mut std::net::TcpStream, id: Option<&str>, topic: &str, batch: Vec<u8>| {
        sluice_tests::wire::produce(s, -1, id, topic, 0, batch).error_code
    };
    let marker = sluice_storage::batch::build_txn_marker(
        0,
        pid,
        epoch,
        sluice_storage::batch::TxnMarker {
            commit: true,
            coordinator_epoch: 0,
        },
    );
    assert_eq!(
        produce(&mut s, Some("wire"), "txn-wire", marker.clone()),
        ResponseError::InvalidRecord.code(),
        "a forged marker, even with the transactional id"
    );
    assert_eq!(
        produce(&mut s, None, "txn-wire", marker),
        ResponseError::TransactionalIdAuthorizationFailed.code(),
        "a transactional batch without the request's transactional id"
    );
    let plain = sluice_storage::batch::build_batch(0, &[(0, b"k", b"v")]);
    assert_eq!(
        produce(&mut s, None, "__transaction_state", plain),
        ResponseError::InvalidTopicException.code()
    );

    // WriteTxnMarkers (as `kafka-transactions.sh abort` sends it): a marker from an older
    // producer epoch, from an older coordinator epoch, for a partition that does not exist.
    let write_marker = |s: &mut std::net::TcpStream, epoch: i16, coordinator_epoch: i32, topic| {
        use kafka_protocol::messages::write_txn_markers_request::{
            WritableTxnMarker, WritableTxnMarkerTopic,
        };
        let r: WriteTxnMarkersResponse = call(
            s,
            ApiKey::WriteTxnMarkers,
            1,
            &WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_transaction_result(false)
                .with_coordinator_epoch(coordinator_epoch)
                .with_topics(vec![WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str(topic)))
                    .with_partition_indexes(vec![0])])]),
        );
        r.markers[0].topics[0].partitions[0].error_code
    };
    assert_eq!(
        write_marker(&mut s, epoch - 1, 0, "txn-wire"),
        ResponseError::InvalidProducerEpoch.code(),
        "the partition has seen the producer's newer epoch (its abort marker)"
    );
    assert_eq!(
        write_marker(&mut s, epoch, -1, "txn-wire"),
        ResponseError::TransactionCoordinatorFenced.code(),
        "the partition has seen a marker of coordinator epoch 0"
    );
    assert_eq!(
        write_marker(&mut s, epoch, 0, "txn-wire-missing"),
        ResponseError::UnknownTopicOrPartition.code()
    );

    // ListTransactions v2: a pattern that is no regular expression; a state no one knows.
    let listed: ListTransactionsResponse = call(
        &mut s,
        ApiKey::ListTransactions,
        2,
        &ListTransactionsRequest::default()
            .with_transactional_id_pattern(Some(StrBytes::from_static_str("wire(["))),
    );
    assert_eq!(
        listed.error_code,
        ResponseError::InvalidRegularExpression.code()
    );
    let listed: ListTransactionsResponse = call(
        &mut s,
        ApiKey::ListTransactions,
        2,
        &ListTransactionsRequest::default()
            .with_state_filters(vec![StrBytes::from_static_str("Bogus")])
            .with_transactional_id_pattern(Some(StrBytes::from_static_str("wi.*"))),
    );
    assert_eq!(listed.error_code, 0);
    assert_eq!(
        listed.unknown_state_filters,
        vec![StrBytes::from_static_str("Bogus")]
    );
    assert!(listed.transaction_states.is_empty(), "{listed:?}");
    let described: DescribeTransactionsResponse = call(
        &mut s,
        ApiKey::DescribeTransactions,
        0,
        &DescribeTransactionsRequest::default().with_transactional_ids(vec![txn_id("unknown")]),
    );
    assert_eq!(
        described.transaction_states[0].error_code,
        ResponseError::TransactionalIdNotFound.code()
    );
    broker.stop();
}

/// Records of `ctp-in` read, transformed and written to `ctp-out`, each batch in a transaction
/// that also commits the input offsets (`send_offsets_to_transaction`), until `until` input
/// records are done in all; with `crash`, one more transaction is left open (its output
/// written, not committed) and the broker is SIGKILLed under it. Returns the inputs done.
fn transform(broker: &Broker, until: usize) -> usize {
    transform_through(&broker.bootstrap(), until)
}

/// [`transform`] through the brokers of `bootstrap`.
fn transform_through(bootstrap: &str, until: usize) -> usize {
    let input: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ctp")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset("ctp-in", p, Offset::Stored)
            .unwrap();
    }
    input.assign(&assignment).expect("assign");
    let producer = transactional_producer(bootstrap, "ctp-txn", 60_000);
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < until && Instant::now() < deadline {
        let mut batch = Vec::new();
        while batch.len() < 40 {
            match input
                .poll(Duration::from_millis(200))
                .filter(|m| !lost_a_broker(m))
            {
                Some(message) => {
                    let m = message.expect("a record");
                    let value = String::from_utf8_lossy(m.payload().unwrap_or(b"")).into_owned();
                    batch.push((m.partition(), m.offset(), value));
                }
                None => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        producer.begin_transaction().unwrap();
        let mut positions = TopicPartitionList::new();
        for (partition, offset, value) in &batch {
            let out = format!("out-{value}");
            producer
                .send(
                    BaseRecord::to("ctp-out")
                        .key("")
                        .payload(&out)
                        .partition(*partition),
                )
                .expect("queued");
            positions
                .add_partition_offset("ctp-in", *partition, Offset::Offset(offset + 1))
                .unwrap();
        }
        producer
            .send_offsets_to_transaction(
                &positions,
                &input.group_metadata().expect("group metadata"),
                TIMEOUT,
            )
            .expect("send_offsets_to_transaction");
        producer.commit_transaction(TIMEOUT).expect("commit");
        done += batch.len();
    }
    done
}

/// The issue's exactly-once loop: consume, transform, produce and commit the input offsets in
/// one transaction, with the broker SIGKILLed while a transaction (output written, offsets
/// sent) is open. The output read with read_committed holds every input exactly once.
#[test]
fn consume_transform_produce_is_exactly_once_across_a_sigkill() {
    const RECORDS: usize = 600;
    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "ctp-in");
    create_topic(&bootstrap, "ctp-out");
    produce_inputs(&bootstrap, "ctp-in", RECORDS);

    let first = transform(&broker, RECORDS / 2);
    assert!(first >= RECORDS / 2, "only {first} transformed");
    // A transaction left open by the crash: its output and offsets are written, not committed.
    {
        let _open = leave_a_transaction_open(&bootstrap, RECORDS);
        let data = broker.kill();
        let broker = Broker::start_on(data, &[]);
        let second = transform(&broker, RECORDS - first);
        assert_eq!(first + second, RECORDS, "every input transformed once");

        let output = consumer_of(&broker.bootstrap(), "ctp-out");
        let values = read(&output, RECORDS, TIMEOUT);
        assert_each_output_once(&values, RECORDS);
        broker.stop();
    }
}

/// The transform's incarnation a crash interrupts: a transaction with output written (12
/// records `out-in-crashed-*`) and the input offsets sent (all `records` consumed), not
/// committed. The producer is returned to be crashed under, or dropped.
fn leave_a_transaction_open(bootstrap: &str, records: usize) -> BaseProducer {
    let producer = transactional_producer(bootstrap, "ctp-txn", 60_000);
    producer.begin_transaction().unwrap();
    send(&producer, "ctp-out", "out-in-crashed", 12);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ctp")
        .create()
        .expect("consumer");
    let mut positions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        positions
            .add_partition_offset("ctp-in", p, Offset::Offset(records as i64))
            .unwrap();
    }
    producer
        .send_offsets_to_transaction(
            &positions,
            &consumer.group_metadata().expect("group metadata"),
            TIMEOUT,
        )
        .expect("send_offsets_to_transaction");
    producer
}

/// The same exactly-once loop on a three-node cluster, with the node that coordinates the
/// transactional id (the leader of its `__transaction_state` partition) SIGKILLed while a
/// transaction is open: the partition's new leader loads the state, aborts the open
/// transaction at the next epoch (its markers go to every partition's leader, over the mesh
/// where that is another node) and the next incarnation carries on. Every input once in the
/// committed output. Two shards per node, so requests between nodes also start and end on
/// shards other than the coordinator's.
#[test]
fn a_clusters_transform_is_exactly_once_across_a_sigkill_of_the_coordinator() {
    const RECORDS: usize = 600;
    let mut cluster = sluice_tests::cluster::Cluster::start_with_cores(3, 2, &[]);
    let bootstrap = cluster.bootstrap();
    create_topic_with_replicas(&bootstrap, "ctp-in", 3);
    create_topic_with_replicas(&bootstrap, "ctp-out", 3);
    produce_inputs(&bootstrap, "ctp-in", RECORDS);

    let first = transform_through(&bootstrap, RECORDS / 2);
    assert!(first >= RECORDS / 2, "only {first} transformed");
    let producer = leave_a_transaction_open(&bootstrap, RECORDS);
    let coordinator = txn_coordinator(&cluster, "ctp-txn");
    cluster.kill(coordinator);
    drop(producer);

    let second = transform_through(&bootstrap, RECORDS - first);
    assert_eq!(first + second, RECORDS, "every input transformed once");
    let output = consumer_of(&bootstrap, "ctp-out");
    let values = read(&output, RECORDS, TIMEOUT);
    assert_each_output_once(&values, RECORDS);
    // The new coordinator is another node, and it knows the id's new incarnation.
    let successor = txn_coordinator(&cluster, "ctp-txn");
    assert_ne!(successor, coordinator);
    assert!(
        cluster
            .node(successor)
            .log()
            .lines()
            .any(|l| l.contains("transaction coordinator loaded") && l.contains("ids=1")),
        "node {successor} loaded the id from the replicated state"
    );
    // The tools find it on its new coordinator: listed once (every node asked), described
    // with the epoch the crash's abort and the next incarnation moved it to. Their bootstrap
    // list starts with the dead node: the next one is used.
    let tools = format!(
        "{},{}",
        cluster.node(coordinator).kafka,
        cluster.node(successor).kafka
    );
    let listed = sluice_txn_json_through(&tools, &["list"]);
    let entries: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["transactional_id"] == "ctp-txn")
        .collect();
    assert_eq!(entries.len(), 1, "listed once: {listed}");
    let described = sluice_txn_json_through(&tools, &["describe", "ctp-txn"]);
    assert_eq!(described["state"], "CompleteCommit", "{described}");
    assert!(
        described["producer_epoch"].as_i64() >= Some(2),
        "fenced twice at least: {described}"
    );
}

/// The node FindCoordinator names for `transactional_id` (asking the running nodes until one
/// names a running node: the first request creates `__transaction_state`).
fn txn_coordinator(cluster: &sluice_tests::cluster::Cluster, transactional_id: &str) -> i32 {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    use kafka_protocol::protocol::StrBytes;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            let answer: FindCoordinatorResponse = sluice_tests::wire::call(
                &mut sluice_tests::wire::connect(node.kafka),
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string(transactional_id.to_string()))
                    .with_key_type(1),
            );
            if answer.error_code == 0 && cluster.node(answer.node_id.0).is_running() {
                return answer.node_id.0;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator for {transactional_id}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A read_committed reader of all of `topic` from the start, in a group of its own.
fn consumer_of(bootstrap: &str, topic: &str) -> BaseConsumer {
    consumer(bootstrap, topic, "read_committed")
}

/// `sluice txn` as an operator runs it; its stdout, or a panic with its stderr.
fn sluice_txn(broker: &Broker, args: &[&str]) -> std::process::Output {
    sluice_txn_through(&broker.bootstrap(), args)
}

/// [`sluice_txn`] through the brokers of `bootstrap`.
fn sluice_txn_through(bootstrap: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(sluice_tests::sluice_binary())
        .arg("txn")
        .args(args)
        .args(["--bootstrap", bootstrap])
        .output()
        .expect("run sluice txn")
}

fn sluice_txn_json(broker: &Broker, args: &[&str]) -> serde_json::Value {
    sluice_txn_json_through(&broker.bootstrap(), args)
}

/// [`sluice_txn_json`] through the brokers of `bootstrap`.
fn sluice_txn_json_through(bootstrap: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = sluice_txn_through(bootstrap, &all);
    assert!(
        out.status.success(),
        "sluice txn {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// InitProducerId v4 for `transactional_id` with `timeout_ms`, as a new producer.
fn init_on_wire(
    s: &mut std::net::TcpStream,
    transactional_id: &str,
    timeout_ms: i32,
) -> kafka_protocol::messages::InitProducerIdResponse {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    sluice_tests::wire::call(
        s,
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            ))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    )
}

/// [`init_on_wire`] with a 60 s timeout, which must succeed: (producer id, epoch).
fn init_ok(s: &mut std::net::TcpStream, transactional_id: &str) -> (i64, i16) {
    let init = init_on_wire(s, transactional_id, 60_000);
    assert_eq!(init.error_code, 0);
    (init.producer_id.0, init.producer_epoch)
}

/// EndTxn v3 (commit or abort) of `transactional_id`'s transaction: its error code.
fn end_on_wire(
    s: &mut std::net::TcpStream,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> i16 {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let r: EndTxnResponse = sluice_tests::wire::call(
        s,
        ApiKey::EndTxn,
        3,
        &EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_committed(commit),
    );
    r.error_code
}

/// AddPartitionsToTxn v3 of `topic` partition 0: its error code.
fn add_on_wire(
    s: &mut std::net::TcpStream,
    transactional_id: &str,
    producer_id: i64,
    epoch: i16,
    topic: &str,
) -> i16 {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let r: AddPartitionsToTxnResponse = sluice_tests::wire::call(
        s,
        ApiKey::AddPartitionsToTxn,
        3,
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_v3_and_below_producer_id(ProducerId(producer_id))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![0])]),
    );
    r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

#[test]
fn a_transactional_batch_outside_its_producers_transaction_is_refused() {
    use kafka_protocol::ResponseError;
    use sluice_tests::wire::transactional_batch;

    let broker = Broker::start(&[]);
    create_topic(&broker.bootstrap(), "txn-verify");
    let mut s = sluice_tests::wire::connect(broker.addr);
    let (pid, epoch) = init_ok(&mut s, "verify-id");
    let produce = |s: &mut std::net::TcpStream, id: Option<&str>, partition: i32, value: &[u8]| {
        let batch = transactional_batch(pid, epoch, 0, value);
        sluice_tests::wire::produce(s, -1, id, "txn-verify", partition, batch).error_code
    };
    // KIP-890 part 1: the partition is not in the producer's transaction.
    assert_eq!(
        produce(&mut s, Some("verify-id"), 0, b"stray"),
        ResponseError::InvalidTxnState.code(),
        "a batch that would open a transaction nobody ends"
    );
    assert_eq!(
        produce(&mut s, None, 0, b"no-id"),
        ResponseError::TransactionalIdAuthorizationFailed.code(),
        "a transactional batch without the request's transactional id"
    );
    assert_eq!(
        add_on_wire(&mut s, "verify-id", pid, epoch, "txn-verify"),
        0
    );
    assert_eq!(
        produce(&mut s, Some("verify-id"), 0, b"in"),
        0,
        "the partition is in the transaction now"
    );
    assert_eq!(
        produce(&mut s, Some("verify-id"), 1, b"other"),
        ResponseError::InvalidTxnState.code(),
        "another partition is not"
    );
    // The records of the refused batches never reached the log: only "in" is there, open.
    let reader = consumer(&broker.bootstrap(), "txn-verify", "read_uncommitted");
    assert_eq!(
        read(&reader, 1, Duration::from_secs(5)),
        vec!["in".to_string()]
    );
    broker.stop();
}

/// A batch that repeats the sequences of a batch of the producer's ended (aborted) transaction
/// is no retry: answered as a duplicate it would be acknowledged at the aborted batch's offset
/// and never be read. librdkafka sends such a batch after abort_transaction purges a batch it
/// was retrying (the chaos harness lost a committed record so). Refused with
/// OUT_OF_ORDER_SEQUENCE_NUMBER instead; a retry within the open transaction is still a
/// duplicate.
#[test]
fn a_batch_reusing_the_sequences_of_an_ended_transaction_is_refused_not_acknowledged() {
    use kafka_protocol::ResponseError;
    use sluice_tests::wire::transactional_batch;

    let broker = Broker::start(&[]);
    create_topic(&broker.bootstrap(), "txn-reuse");
    let mut s = sluice_tests::wire::connect(broker.addr);
    let (pid, epoch) = init_ok(&mut s, "reuse-id");
    let produce = |s: &mut std::net::TcpStream, sequence: i32, value: &[u8]| {
        let batch = transactional_batch(pid, epoch, sequence, value);
        sluice_tests::wire::produce(s, -1, Some("reuse-id"), "txn-reuse", 0, batch)
    };
    assert_eq!(add_on_wire(&mut s, "reuse-id", pid, epoch, "txn-reuse"), 0);
    let aborted = produce(&mut s, 0, b"aborted");
    assert_eq!((aborted.error_code, aborted.base_offset), (0, 0));
    assert_eq!(end_on_wire(&mut s, "reuse-id", pid, epoch, false), 0);

    assert_eq!(add_on_wire(&mut s, "reuse-id", pid, epoch, "txn-reuse"), 0);
    let reused = produce(&mut s, 0, b"reuses sequence 0");
    assert_eq!(
        reused.error_code,
        ResponseError::OutOfOrderSequenceNumber.code(),
        "not acknowledged at offset {}",
        reused.base_offset
    );
    let next = produce(&mut s, 1, b"committed");
    assert_eq!(next.error_code, 0);
    let retry = produce(&mut s, 1, b"committed");
    assert_eq!(
        (retry.error_code, retry.base_offset),
        (0, next.base_offset),
        "a retry within the open transaction is a duplicate"
    );
    assert_eq!(end_on_wire(&mut s, "reuse-id", pid, epoch, true), 0);
    let reader = consumer(&broker.bootstrap(), "txn-reuse", "read_committed");
    assert_eq!(
        read(&reader, 1, Duration::from_secs(5)),
        vec!["committed".to_string()]
    );
    broker.stop();
}

#[test]
fn hanging_transactions_are_listed_found_and_aborted_with_sluice_txn() {
    use sluice_tests::wire::connect;

    // Without KIP-890's verification (as Kafka before 3.6), a stray batch can open a
    // transaction no coordinator will end: what the tools are for.
    let broker = Broker::start(&["--transaction-partition-verification-enable", "false"]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "txn-tools");

    // A running transaction: librdkafka's, open on partition 0.
    let running = transactional_producer(&bootstrap, "tools-running", 60_000);
    running.begin_transaction().unwrap();
    running
        .send(
            BaseRecord::to("txn-tools")
                .key("k")
                .payload("running-0")
                .partition(0),
        )
        .expect("queued");
    running.flush(TIMEOUT).expect("delivered");

    let listed = sluice_txn_json(&broker, &["list"]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["transactional_id"] == "tools-running")
        .unwrap_or_else(|| panic!("tools-running listed: {listed}"));
    assert_eq!(entry["state"], "Ongoing");
    let running_pid = entry["producer_id"].as_i64().unwrap();
    let described = sluice_txn_json(&broker, &["describe", "tools-running"]);
    assert_eq!(described["state"], "Ongoing");
    assert_eq!(described["producer_id"].as_i64(), Some(running_pid));
    assert_eq!(described["timeout_ms"], 60_000);
    assert_eq!(
        described["partitions"],
        serde_json::json!([{ "topic": "txn-tools", "partition": 0 }])
    );
    let none = sluice_txn_json(&broker, &["list", "--state", "CompleteCommit"]);
    assert!(
        none.as_array()
            .unwrap()
            .iter()
            .all(|t| t["transactional_id"] != "tools-running"),
        "the state filter applies: {none}"
    );
    let missing = sluice_txn(&broker, &["describe", "no-such-id"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("TransactionalIdNotFound"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let bad_state = sluice_txn(&broker, &["list", "--state", "Bogus"]);
    assert_eq!(
        bad_state.status.code(),
        Some(1),
        "an unknown state is named"
    );

    // A hanging transaction: a producer writes a transactional batch to partition 1 without
    // adding the partition to any transaction, so no coordinator will ever end it (what a
    // client bug or a lost AddPartitionsToTxn leaves behind in Kafka before KIP-890).
    let mut s = connect(broker.addr);
    let (stray_pid, stray_epoch) = init_ok(&mut s, "tools-stray");
    let stray = sluice_tests::wire::produce(
        &mut s,
        -1,
        Some("tools-stray"),
        "txn-tools",
        1,
        sluice_tests::wire::transactional_batch(stray_pid, stray_epoch, 0, b"stray-0"),
    );
    assert_eq!(stray.error_code, 0);
    let stray_offset = stray.base_offset;

    // Behind it, a plain record that read_committed consumers cannot reach.
    let plain: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    plain
        .send(
            BaseRecord::to("txn-tools")
                .key("k")
                .payload("behind-0")
                .partition(1),
        )
        .expect("queued");
    plain.flush(TIMEOUT).expect("delivered");
    let reader = consumer(&bootstrap, "txn-tools", "read_committed");
    let before = read(&reader, 1, Duration::from_secs(3));
    assert!(
        !before.contains(&"behind-0".to_string()),
        "the hanging transaction holds the last stable offset back: {before:?}"
    );

    // find-hanging names the stray transaction only: the running one is its coordinator's.
    let producers = sluice_txn_json(&broker, &["producers", "txn-tools"]);
    assert!(
        producers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["partition"] == 0
                && p["producer_id"].as_i64() == Some(running_pid)
                && p["txn_start_offset"].as_i64().is_some()),
        "{producers}"
    );
    let hanging = sluice_txn_json(
        &broker,
        &[
            "find-hanging",
            "--topic",
            "txn-tools",
            "--older-than-ms",
            "0",
        ],
    );
    assert_eq!(
        hanging,
        serde_json::json!([{
            "topic": "txn-tools",
            "partition": 1,
            "producer_id": stray_pid,
            "producer_epoch": stray_epoch,
            "coordinator_epoch": -1,
            "start_offset": stray_offset,
            "last_timestamp": hanging[0]["last_timestamp"],
        }]),
        "only the stray transaction hangs"
    );
    let default_age = sluice_txn_json(&broker, &["find-hanging", "--topic", "txn-tools"]);
    assert_eq!(
        default_age,
        serde_json::json!([]),
        "younger than the longest transaction timeout: not hanging yet"
    );

    let wrong = sluice_txn(
        &broker,
        &[
            "abort",
            "--topic",
            "txn-tools",
            "--partition",
            "1",
            "--start-offset",
            "999",
        ],
    );
    assert_eq!(wrong.status.code(), Some(1), "no transaction starts there");
    let start = stray_offset.to_string();
    let aborted = sluice_txn(
        &broker,
        &[
            "abort",
            "--topic",
            "txn-tools",
            "--partition",
            "1",
            "--start-offset",
            &start,
        ],
    );
    assert!(
        aborted.status.success(),
        "abort: {}",
        String::from_utf8_lossy(&aborted.stderr)
    );

    // The consumer now reads past it, never the aborted record; the running transaction is
    // untouched and commits.
    let after = read(&reader, 1, Duration::from_secs(10));
    assert_eq!(after, vec!["behind-0".to_string()]);
    assert_eq!(
        sluice_txn_json(
            &broker,
            &[
                "find-hanging",
                "--topic",
                "txn-tools",
                "--older-than-ms",
                "0"
            ]
        ),
        serde_json::json!([])
    );
    running.commit_transaction(TIMEOUT).expect("commit");
    let committed = read(&reader, 1, Duration::from_secs(10));
    assert_eq!(committed, vec!["running-0".to_string()]);
    let listed = sluice_txn_json(
        &broker,
        &["list", "--producer-id", &running_pid.to_string()],
    );
    assert_eq!(
        listed,
        serde_json::json!([{
            "transactional_id": "tools-running",
            "producer_id": running_pid,
            "state": "CompleteCommit",
        }])
    );
    broker.stop();
}

/// kafka-python's transactional producer and read_committed consumer: a consume-transform-
/// produce loop whose first transaction is aborted (its inputs read again), then a second
/// incarnation that fences the first, whose commit must fail.
const KAFKA_PYTHON_LOOP: &str = r#"
import sys, time
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata
bootstrap, total = sys.argv[1], int(sys.argv[2])

def incarnation():
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="py-ctp",
                      transaction_timeout_ms=60000, max_block_ms=15000)
    p.init_transactions()
    return p

producer = incarnation()
consumer = KafkaConsumer("py-in", bootstrap_servers=bootstrap, group_id="py-ctp-group",
                         isolation_level="read_committed", enable_auto_commit=False,
                         auto_offset_reset="earliest")
done, aborted, deadline = 0, 0, time.time() + 60
while done < total and time.time() < deadline:
    polled = consumer.poll(timeout_ms=500, max_records=25)
    if not polled:
        continue
    producer.begin_transaction()
    for records in polled.values():
        for r in records:
            producer.send("py-out", key=r.key, value=b"out-" + r.value)
    offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)
               for tp, records in polled.items()}
    producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
    if aborted == 0:
        producer.flush()  # the records reach the log, then their transaction is aborted
        producer.abort_transaction()
        aborted = sum(len(records) for records in polled.values())
        for tp, records in polled.items():
            consumer.seek(tp, records[0].offset)
        continue
    producer.commit_transaction()
    done += sum(len(records) for records in polled.values())

zombie, fresh = producer, incarnation()
try:
    zombie.begin_transaction()
    zombie.send("py-out", value=b"zombie")
    zombie.commit_transaction()
    print("the zombie committed")
    sys.exit(1)
except Exception as e:
    print("zombie fenced:", type(e).__name__)
fresh.close(timeout=5)
consumer.close()
print("aborted", aborted, "done", done)
"#;

#[test]
fn kafka_python_transforms_exactly_once_and_its_zombie_is_fenced() {
    const RECORDS: usize = 90;
    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "py-in");
    create_topic(&bootstrap, "py-out");
    produce_inputs(&bootstrap, "py-in", RECORDS);

    let (ok, output) = sluice_tests::python(KAFKA_PYTHON_LOOP, &[&bootstrap, &RECORDS.to_string()]);
    assert!(ok, "kafka-python loop failed:\n{output}");
    assert!(output.contains("zombie fenced"), "{output}");
    assert!(
        output.contains(&format!("done {RECORDS}")),
        "every input transformed once: {output}"
    );
    assert!(
        !output.contains("aborted 0 "),
        "one transaction aborted: {output}"
    );

    let values = read(&consumer_of(&bootstrap, "py-out"), RECORDS, TIMEOUT);
    assert_each_output_once(&values, RECORDS);
    let uncommitted = read(
        &consumer(&bootstrap, "py-out", "read_uncommitted"),
        RECORDS,
        TIMEOUT,
    );
    assert!(
        uncommitted.len() > RECORDS,
        "the aborted transaction's records are in the log ({} records)",
        uncommitted.len()
    );

    // The group's committed offsets are the input's ends: committed with the transactions.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "py-ctp-group")
        .create()
        .expect("consumer");
    let mut asked = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        asked.add_partition("py-in", p);
    }
    let committed = group.committed_offsets(asked, TIMEOUT).expect("committed");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!("{other:?} committed"),
        })
        .sum();
    assert_eq!(total, RECORDS as i64);
    broker.stop();
}

#[test]
fn offsets_of_an_open_transaction_are_unstable_to_fetches_that_require_stable_ones() {
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::ResponseError;
    use sluice_tests::wire::{call, connect};

    let broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "stable-in");
    let producer = transactional_producer(&bootstrap, "stable-txn", 60_000);
    producer.begin_transaction().unwrap();
    let group_reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "stable-group")
        .create()
        .expect("consumer");
    let mut positions = TopicPartitionList::new();
    positions
        .add_partition_offset("stable-in", 0, Offset::Offset(5))
        .unwrap();
    producer
        .send_offsets_to_transaction(
            &positions,
            &group_reader.group_metadata().expect("group metadata"),
            TIMEOUT,
        )
        .expect("send_offsets_to_transaction");

    let mut s = connect(broker.addr);
    // (error code, offset) of partition 0 at v7 (one group) and v9 (groups).
    let mut fetch = |require_stable: bool| -> [(i16, i64); 2] {
        let v7: OffsetFetchResponse = call(
            &mut s,
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("stable-group")))
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("stable-in")))
                    .with_partition_indexes(vec![0])]))
                .with_require_stable(require_stable),
        );
        let v9: OffsetFetchResponse = call(
            &mut s,
            ApiKey::OffsetFetch,
            9,
            &OffsetFetchRequest::default()
                .with_groups(vec![OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("stable-group")))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(TopicName(StrBytes::from_static_str("stable-in")))
                        .with_partition_indexes(vec![0])]))])
                .with_require_stable(require_stable),
        );
        assert_eq!(v7.error_code, 0);
        let a = &v7.topics[0].partitions[0];
        let b = &v9.groups[0].topics[0].partitions[0];
        [
            (a.error_code, a.committed_offset),
            (b.error_code, b.committed_offset),
        ]
    };
    let unstable = (ResponseError::UnstableOffsetCommit.code(), -1);
    assert_eq!(
        fetch(true),
        [unstable, unstable],
        "pending in the open transaction"
    );
    assert_eq!(
        fetch(false),
        [(0, -1), (0, -1)],
        "not asked for stable offsets: the last committed (none)"
    );
    producer.commit_transaction(TIMEOUT).expect("commit");
    assert_eq!(
        fetch(true),
        [(0, 5), (0, 5)],
        "committed with the transaction"
    );
    broker.stop();
}
