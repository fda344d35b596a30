//! Client quotas: set and described with AlterClientQuotas / DescribeClientQuotas on the wire
//! (Kafka's entity types and precedence), refused when malformed; a produce above its byte rate
//! is answered with `throttle_time_ms` and paced, and a kafka-python producer over its quota is
//! measurably slower than one without, on the same broker (one tenant cannot starve another);
//! a client over its request share (`request_percentage`) is answered with `throttle_time_ms`
//! and delayed by it, while another client id is not.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    alter_client_quotas_request, describe_client_quotas_request, AlterClientQuotasRequest,
    AlterClientQuotasResponse, ApiKey, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_tests::{python, wire, Broker};

/// The client id `sluice_tests::wire` sends.
const WIRE_CLIENT: &str = wire::CLIENT_ID;

fn set_quota(client_id: Option<&str>, key: &str, value: f64) -> AlterClientQuotasRequest {
    AlterClientQuotasRequest::default().with_entries(vec![
        alter_client_quotas_request::EntryData::default()
            .with_entity(vec![alter_client_quotas_request::EntityData::default()
                .with_entity_type(StrBytes::from_static_str("client-id"))
                .with_entity_name(client_id.map(|c| StrBytes::from(c.to_string())))])
            .with_ops(vec![alter_client_quotas_request::OpData::default()
                .with_key(StrBytes::from(key.to_string()))
                .with_value(value)]),
    ])
}

/// kafka-python: sends 150 records of 10 KB with `client_id`, prints the seconds it took.
const TIMED_PRODUCER: &str = r#"
import sys, time
from kafka import KafkaProducer
bootstrap, client_id, topic = sys.argv[1:4]
p = KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks=1, linger_ms=5,
                  request_timeout_ms=60000)
value = b"x" * 10_000
start = time.time()
for _ in range(150):
    p.send(topic, value, partition=0)
p.flush()
print("ELAPSED %.2f" % (time.time() - start))
p.close()
"#;

fn elapsed(output: &str) -> f64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("ELAPSED "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timing in {output}"))
}

#[test]
fn a_client_over_its_byte_rate_is_throttled_and_others_are_not() {
    let broker = Broker::start(&["--cores", "1"]);
    let mut s = wire::connect(broker.addr);

    // Set, described back; malformed changes refused.
    let set: AlterClientQuotasResponse = wire::call(
        &mut s,
        ApiKey::AlterClientQuotas,
        1,
        &set_quota(Some("slow"), "producer_byte_rate", 100_000.0),
    );
    assert_eq!(set.entries[0].error_code, 0, "{set:?}");
    let bad: AlterClientQuotasResponse = wire::call(
        &mut s,
        ApiKey::AlterClientQuotas,
        1,
        &set_quota(Some("slow"), "io_thread_units", 1.0),
    );
    assert_eq!(bad.entries[0].error_code, 42, "INVALID_REQUEST: {bad:?}");
    let negative: AlterClientQuotasResponse = wire::call(
        &mut s,
        ApiKey::AlterClientQuotas,
        1,
        &set_quota(None, "producer_byte_rate", -5.0),
    );
    assert_eq!(negative.entries[0].error_code, 42, "{negative:?}");
    let described: DescribeClientQuotasResponse = wire::call(
        &mut s,
        ApiKey::DescribeClientQuotas,
        1,
        &DescribeClientQuotasRequest::default().with_components(vec![
            describe_client_quotas_request::ComponentData::default()
                .with_entity_type(StrBytes::from_static_str("client-id"))
                .with_match_type(0)
                .with_match(Some(StrBytes::from_static_str("slow"))),
        ]),
    );
    let entries = described.entries.expect("entries");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].values[0].key.as_str(), "producer_byte_rate");
    assert_eq!(entries[0].values[0].value, 100_000.0);

    // A raw producer at 10 KB/s sending 120 KB: answered with throttle_time_ms, after it.
    let quota: AlterClientQuotasResponse = wire::call(
        &mut s,
        ApiKey::AlterClientQuotas,
        1,
        &set_quota(Some(WIRE_CLIENT), "producer_byte_rate", 10_000.0),
    );
    assert_eq!(quota.entries[0].error_code, 0);
    let value = vec![7u8; 1000];
    let records: Vec<(i64, &[u8], &[u8])> = (0..120).map(|_| (0, &b"k"[..], &value[..])).collect();
    let batch = sluice_storage::batch::build_batch(0, &records);
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("quota-raw")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch)))])]);
    // Produce does not create topics: make it first.
    let created = Command::new(sluice_tests::sluice_binary())
        .args([
            "topic",
            "create",
            "quota-raw",
            "--partitions",
            "1",
            "--bootstrap",
        ])
        .arg(broker.bootstrap())
        .output()
        .unwrap();
    assert!(created.status.success());
    let started = Instant::now();
    let answered: ProduceResponse = wire::call(&mut s, ApiKey::Produce, 9, &produce);
    let took = started.elapsed();
    let partition = &answered.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, 0, "{answered:?}");
    // 120 KB over the 10 s window is 12 KB/s against 10: (12 - 10) / 10 * 10 s = 2 s.
    assert!(
        (1_500..=2_500).contains(&answered.throttle_time_ms),
        "throttle_time_ms {}",
        answered.throttle_time_ms
    );
    assert!(
        took >= Duration::from_millis(1_400),
        "answered after {took:?}"
    );

    // kafka-python: 1.5 MB with client id "slow" (100 KB/s) against the same without a quota.
    let (ok, fast) = python(TIMED_PRODUCER, &[&broker.bootstrap(), "fast", "quota-py"]);
    assert!(ok, "{fast}");
    let (ok, slow) = python(TIMED_PRODUCER, &[&broker.bootstrap(), "slow", "quota-py"]);
    assert!(ok, "{slow}");
    let (fast, slow) = (elapsed(&fast), elapsed(&slow));
    assert!(
        slow >= 3.0 && slow > 2.0 * fast,
        "slow {slow:.2} s, fast {fast:.2} s"
    );
}

#[test]
fn a_client_over_its_request_share_is_throttled_and_others_are_not() {
    let broker = Broker::start(&["--cores", "1"]);
    let mut s = wire::connect(broker.addr);
    // 0.05% of the shard's thread: 5 ms of its time within the 10 s window.
    let quota: AlterClientQuotasResponse = wire::call(
        &mut s,
        ApiKey::AlterClientQuotas,
        1,
        &set_quota(Some("busy"), "request_percentage", 0.05),
    );
    assert_eq!(quota.entries[0].error_code, 0, "{quota:?}");
    let metadata = MetadataRequest::default().with_topics(None);
    // Metadata requests one after another until one comes back throttled by 100 ms or more
    // (the throttle grows with the client's excess over its share; bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (throttle_ms, took) = loop {
        let started = Instant::now();
        let answered: MetadataResponse =
            wire::call_as(&mut s, "busy", ApiKey::Metadata, 12, &metadata);
        if answered.throttle_time_ms >= 100 {
            break (answered.throttle_time_ms, started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "no Metadata request was throttled"
        );
    };
    // Answered after the throttle, which Kafka caps at the 10 s window.
    assert!(throttle_ms <= 10_000, "throttle_time_ms {throttle_ms}");
    assert!(
        took >= Duration::from_millis(throttle_ms as u64 * 9 / 10),
        "throttle_time_ms {throttle_ms} answered after {took:?}"
    );
    // Another client id on the same connection and shard is not throttled.
    let other: MetadataResponse = wire::call_as(&mut s, "calm", ApiKey::Metadata, 12, &metadata);
    assert_eq!(other.throttle_time_ms, 0);
}
