//! Topic administration and the data path at the wire level, against `sluice serve` with two
//! shards: CreateTopics (its refusals, each with Kafka's error code), CreatePartitions,
//! DescribeConfigs, DeleteTopics; one Produce and one Fetch request touching partitions on both
//! shards; the long poll (answered when data arrives, not at max_wait); ListOffsets; and
//! topics, configs and data persisting across a restart.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_storage::batch::build_batch;
use sluice_tests::wire::{call, connect};
use sluice_tests::Broker;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create(
    s: &mut TcpStream,
    topic: &str,
    partitions: i32,
    replication: i16,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> (i16, Option<String>) {
    let request = CreateTopicsRequest::default()
        .with_validate_only(validate_only)
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(replication)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )]);
    let r: CreateTopicsResponse = call(s, ApiKey::CreateTopics, 7, &request);
    let t = &r.topics[0];
    (
        t.error_code,
        t.error_message.as_ref().map(|m| m.to_string()),
    )
}

fn partition_count(s: &mut TcpStream, topic: &str) -> Option<usize> {
    let r: MetadataResponse = call(
        s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(topic)))
            ])),
    );
    (r.topics[0].error_code == 0).then(|| r.topics[0].partitions.len())
}

fn batch_for(partition: i32, n: usize) -> Vec<u8> {
    let value = format!("partition-{partition}-batch-{n}");
    build_batch(
        1_000 + n as i64,
        &[(1_000 + n as i64, b"k", value.as_bytes())],
    )
}

/// One Produce request with one batch for each of `partitions`; returns each base offset.
fn produce_all(s: &mut TcpStream, topic: &str, partitions: i32, n: usize) -> Vec<i64> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(
                (0..partitions)
                    .map(|p| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(Bytes::from(batch_for(p, n))))
                    })
                    .collect(),
            )]);
    let r: ProduceResponse = call(s, ApiKey::Produce, 9, &request);
    r.responses[0]
        .partition_responses
        .iter()
        .map(|p| {
            assert_eq!(p.error_code, 0, "partition {}", p.index);
            p.base_offset
        })
        .collect()
}

fn fetch_request(topic: &str, partitions: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(
                (0..partitions)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(1 << 16)
                    })
                    .collect(),
            )])
}

fn list_offsets(s: &mut TcpStream, topic: &str, timestamp: i64) -> i64 {
    let r: ListOffsetsResponse = call(
        s,
        ApiKey::ListOffsets,
        7,
        &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]),
    );
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

fn config_value(s: &mut TcpStream, topic: &str, key: &str) -> (i16, Option<(String, i8)>) {
    let r: DescribeConfigsResponse = call(
        s,
        ApiKey::DescribeConfigs,
        4,
        &DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(None)]),
    );
    let result = &r.results[0];
    let found = result
        .configs
        .iter()
        .find(|c| c.name.as_str() == key)
        .map(|c| (c.value.clone().unwrap().to_string(), c.config_source));
    (result.error_code, found)
}

#[test]
fn topics_are_administered_persisted_and_served_across_shards() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);

    // Refusals, each with Kafka's code and a message naming the problem.
    let (code, message) = create(&mut s, "rf3", 1, 3, &[], false);
    assert_eq!(code, 38, "INVALID_REPLICATION_FACTOR");
    assert!(message.unwrap().contains("clamp_replication_factor"));
    assert_eq!(
        create(&mut s, "bad name", 1, 1, &[], false).0,
        17,
        "INVALID_TOPIC"
    );
    assert_eq!(
        create(&mut s, "zero", 0, 1, &[], false).0,
        37,
        "INVALID_PARTITIONS"
    );
    let (code, message) = create(&mut s, "cfg", 1, 1, &[("retention.ms", "soon")], false);
    assert_eq!(code, 40, "INVALID_CONFIG");
    assert!(message.unwrap().contains("retention.ms"));
    assert_eq!(
        create(&mut s, "cfg", 1, 1, &[("no.such", "1")], false).0,
        40
    );
    assert_eq!(create(&mut s, "dry", 2, 1, &[], true).0, 0, "validate_only");
    assert_eq!(
        partition_count(&mut s, "dry"),
        None,
        "validate_only creates nothing"
    );

    // A topic with a config, grown from 4 to 6 partitions.
    let config = [("retention.ms", "3600000")];
    assert_eq!(create(&mut s, "orders", 4, -1, &config, false).0, 0);
    assert_eq!(
        create(&mut s, "orders", 4, 1, &[], false).0,
        36,
        "TOPIC_ALREADY_EXISTS"
    );
    let grow = |s: &mut TcpStream, count: i32| -> i16 {
        let r: CreatePartitionsResponse = call(
            s,
            ApiKey::CreatePartitions,
            3,
            &CreatePartitionsRequest::default().with_topics(vec![CreatePartitionsTopic::default()
                .with_name(name("orders"))
                .with_count(count)]),
        );
        r.results[0].error_code
    };
    assert_eq!(grow(&mut s, 6), 0);
    assert_eq!(grow(&mut s, 5), 37, "partitions only grow");
    assert_eq!(partition_count(&mut s, "orders"), Some(6));
    assert_eq!(
        config_value(&mut s, "orders", "retention.ms"),
        (0, Some(("3600000".to_string(), 1))),
        "set on the topic (source 1)"
    );
    assert_eq!(
        config_value(&mut s, "orders", "cleanup.policy"),
        (0, Some(("delete".to_string(), 5))),
        "a default (source 5)"
    );

    // One Produce and one Fetch request spanning all 6 partitions, hence both shards.
    assert_eq!(produce_all(&mut s, "orders", 6, 0), vec![0; 6]);
    assert_eq!(produce_all(&mut s, "orders", 6, 1), vec![1; 6]);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch_request("orders", 6, 0, 0));
    for p in &r.responses[0].partitions {
        assert_eq!((p.error_code, p.high_watermark), (0, 2));
        let records = p.records.clone().unwrap();
        let first = batch_for(p.partition_index, 0);
        assert_eq!(
            &records[12..first.len()],
            &first[12..],
            "stored bytes, unchanged"
        );
    }
    assert_eq!(list_offsets(&mut s, "orders", -2), 0, "earliest");
    assert_eq!(list_offsets(&mut s, "orders", -1), 2, "latest");
    assert_eq!(list_offsets(&mut s, "orders", 1_001), 1, "by timestamp");
    assert_eq!(list_offsets(&mut s, "orders", 9_999), -1, "none that late");

    // Long poll: with nothing new, the fetch waits about max_wait_ms...
    let started = Instant::now();
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &fetch_request("orders", 6, 2, 300),
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(280), "waited {waited:?}");
    assert!(r.responses[0]
        .partitions
        .iter()
        .all(|p| p.records.as_ref().is_none_or(|r| r.is_empty())));
    // ...and is answered as soon as data arrives, long before max_wait_ms.
    let addr = broker.addr;
    let waiter = std::thread::spawn(move || {
        let mut c = connect(addr);
        let started = Instant::now();
        let r: FetchResponse = call(
            &mut c,
            ApiKey::Fetch,
            12,
            &fetch_request("orders", 6, 2, 10_000),
        );
        (started.elapsed(), r)
    });
    std::thread::sleep(Duration::from_millis(300));
    produce_all(&mut s, "orders", 6, 2);
    let (waited, r) = waiter.join().unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "answered on arrival, after {waited:?}"
    );
    assert!(r.responses[0]
        .partitions
        .iter()
        .any(|p| p.records.as_ref().is_some_and(|r| !r.is_empty())));

    // Everything persists across a restart.
    drop(s);
    let broker = Broker::start_on(broker.stop(), &["--cores", "2"]);
    let mut s = connect(broker.addr);
    assert_eq!(partition_count(&mut s, "orders"), Some(6));
    assert_eq!(
        config_value(&mut s, "orders", "retention.ms").1,
        Some(("3600000".to_string(), 1))
    );
    assert_eq!(list_offsets(&mut s, "orders", -1), 3);

    // Deletion removes the topic and its files, for good.
    let r: DeleteTopicsResponse = call(
        &mut s,
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default().with_topics(vec![
            DeleteTopicState::default().with_name(Some(name("orders"))),
            DeleteTopicState::default().with_name(Some(name("never-existed"))),
        ]),
    );
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(r.responses[1].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(partition_count(&mut s, "orders"), None);
    // Files are removed in the background after the answer, as Kafka does.
    let topics_dir = broker.data_dir.path().join("topics");
    let orders_dirs = || {
        std::fs::read_dir(&topics_dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("orders-")
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while orders_dirs() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(orders_dirs(), 0, "files removed");
    drop(s);
    let broker = Broker::start_on(broker.stop(), &["--cores", "2"]);
    let mut s = connect(broker.addr);
    assert_eq!(
        partition_count(&mut s, "orders"),
        None,
        "still gone after a restart"
    );
}

#[test]
fn replication_factor_is_clamped_when_configured() {
    let broker = Broker::start(&["--clamp-replication-factor", "true"]);
    let mut s = connect(broker.addr);
    assert_eq!(create(&mut s, "rf3", 2, 3, &[], false).0, 0);
    assert_eq!(partition_count(&mut s, "rf3"), Some(2));
}

#[test]
fn retention_and_delete_records_move_the_log_start() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

    let broker = Broker::start(&["--retention-check-ms", "100"]);
    let mut s = connect(broker.addr);
    // Every append after the first rolls a segment (segment.ms=1); the records' timestamps
    // (1970) are far beyond retention.ms, so every sealed segment is due for deletion.
    let configs = [("retention.ms", "60000"), ("segment.ms", "1")];
    assert_eq!(create(&mut s, "aged", 1, 1, &configs, false).0, 0);
    for n in 0..4 {
        produce_all(&mut s, "aged", 1, n);
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_offsets(&mut s, "aged", -2) < 3 {
        assert!(
            Instant::now() < deadline,
            "retention never deleted the old segments"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        list_offsets(&mut s, "aged", -2),
        3,
        "the active segment stays"
    );
    assert_eq!(list_offsets(&mut s, "aged", -1), 4);

    let delete = |s: &mut TcpStream, topic: &str, offset: i64| -> (i16, i64) {
        let r: DeleteRecordsResponse = call(
            s,
            ApiKey::DeleteRecords,
            2,
            &DeleteRecordsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![DeleteRecordsTopic::default()
                    .with_name(name(topic))
                    .with_partitions(vec![DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(offset)])]),
        );
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.low_watermark)
    };
    assert_eq!(create(&mut s, "trim", 1, 1, &[], false).0, 0);
    for n in 0..5 {
        produce_all(&mut s, "trim", 1, n);
    }
    assert_eq!(delete(&mut s, "trim", 3), (0, 3));
    assert_eq!(list_offsets(&mut s, "trim", -2), 3);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch_request("trim", 1, 0, 0));
    assert_eq!(
        r.responses[0].partitions[0].error_code, 1,
        "OFFSET_OUT_OF_RANGE below the start"
    );
    assert_eq!(
        delete(&mut s, "trim", 99).0,
        1,
        "OFFSET_OUT_OF_RANGE past the end"
    );
    assert_eq!(
        delete(&mut s, "trim", -1),
        (0, 5),
        "-1: up to the high watermark"
    );
    assert_eq!(
        delete(&mut s, "__consumer_offsets", 0).0,
        17,
        "the internal topic is not trimmed by clients"
    );
    // The new start is durable.
    drop(s);
    let broker = Broker::start_on(broker.kill(), &[]);
    let mut s = connect(broker.addr);
    assert_eq!(list_offsets(&mut s, "trim", -2), 5);
}

#[test]
fn topic_configs_are_altered_validated_persisted_and_applied() {
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::incremental_alter_configs_request as incremental;
    use kafka_protocol::messages::{
        AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
        IncrementalAlterConfigsResponse,
    };

    let broker = Broker::start(&["--retention-check-ms", "100"]);
    let mut s = connect(broker.addr);
    assert_eq!(create(&mut s, "tuned", 1, 1, &[], false).0, 0);
    let change = |s: &mut TcpStream, ops: &[(&str, i8, Option<&str>)]| -> i16 {
        let r: IncrementalAlterConfigsResponse = call(
            s,
            ApiKey::IncrementalAlterConfigs,
            1,
            &IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("tuned"))
                    .with_configs(
                        ops.iter()
                            .map(|(k, op, v)| {
                                incremental::AlterableConfig::default()
                                    .with_name(StrBytes::from_string(k.to_string()))
                                    .with_config_operation(*op)
                                    .with_value(v.map(|v| StrBytes::from_string(v.to_string())))
                            })
                            .collect(),
                    ),
            ]),
        );
        r.responses[0].error_code
    };
    let value = |s: &mut TcpStream, key: &str| config_value(s, "tuned", key).1.unwrap();

    // SET and APPEND (to a list config).
    assert_eq!(
        change(
            &mut s,
            &[
                ("retention.ms", 0, Some("3600000")),
                ("cleanup.policy", 2, Some("compact"))
            ]
        ),
        0
    );
    assert_eq!(value(&mut s, "retention.ms"), ("3600000".to_string(), 1));
    assert_eq!(
        value(&mut s, "cleanup.policy"),
        ("delete,compact".to_string(), 1)
    );
    // An invalid value changes nothing.
    assert_eq!(
        change(&mut s, &[("retention.ms", 0, Some("soon"))]),
        40,
        "INVALID_CONFIG"
    );
    assert_eq!(change(&mut s, &[("no.such.config", 0, Some("1"))]), 40);
    assert_eq!(value(&mut s, "retention.ms"), ("3600000".to_string(), 1));
    // SUBTRACT and DELETE.
    assert_eq!(
        change(
            &mut s,
            &[
                ("cleanup.policy", 3, Some("compact")),
                ("retention.ms", 1, None)
            ]
        ),
        0
    );
    assert_eq!(value(&mut s, "cleanup.policy"), ("delete".to_string(), 1));
    assert_eq!(
        value(&mut s, "retention.ms"),
        ("604800000".to_string(), 5),
        "back to default"
    );

    // AlterConfigs replaces the whole set.
    let r: AlterConfigsResponse = call(
        &mut s,
        ApiKey::AlterConfigs,
        1,
        &AlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("tuned"))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str("max.message.bytes"))
                .with_value(Some(StrBytes::from_static_str("2000000")))])]),
    );
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(
        value(&mut s, "max.message.bytes"),
        ("2000000".to_string(), 1)
    );
    assert_eq!(value(&mut s, "cleanup.policy"), ("delete".to_string(), 5));

    // New limits apply to the open log at once: with segment.ms=1 and retention.ms=60000,
    // the old records (1970 timestamps) in sealed segments are deleted.
    for n in 0..3 {
        produce_all(&mut s, "tuned", 1, n);
    }
    assert_eq!(list_offsets(&mut s, "tuned", -2), 0);
    assert_eq!(
        change(
            &mut s,
            &[
                ("segment.ms", 0, Some("1")),
                ("retention.ms", 0, Some("60000"))
            ]
        ),
        0
    );
    std::thread::sleep(Duration::from_millis(5));
    produce_all(&mut s, "tuned", 1, 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_offsets(&mut s, "tuned", -2) == 0 {
        assert!(Instant::now() < deadline, "the new retention never applied");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Persisted.
    drop(s);
    let broker = Broker::start_on(broker.kill(), &[]);
    let mut s = connect(broker.addr);
    assert_eq!(value(&mut s, "retention.ms"), ("60000".to_string(), 1));
    assert_eq!(
        value(&mut s, "max.message.bytes"),
        ("2000000".to_string(), 1)
    );
}

#[test]
fn topic_compression_type_recompresses_batches() {
    use kafka_protocol::records::RecordBatchDecoder;

    let broker = Broker::start(&[]);
    let mut s = connect(broker.addr);
    for (topic, codec, attribute) in [("packed", "zstd", 4), ("plain", "uncompressed", 0)] {
        assert_eq!(
            create(&mut s, topic, 1, 1, &[("compression.type", codec)], false).0,
            0
        );
        // batch_for builds an uncompressed batch; for "plain", send it gzip-compressed.
        let batch = if attribute == 0 {
            let mut gzip = bytes::BytesMut::new();
            let records = RecordBatchDecoder::decode(&mut Bytes::from(batch_for(0, 0)))
                .unwrap()
                .records;
            kafka_protocol::records::RecordBatchEncoder::encode(
                &mut gzip,
                &records,
                &kafka_protocol::records::RecordEncodeOptions {
                    version: 2,
                    compression: kafka_protocol::records::Compression::Gzip,
                },
            )
            .unwrap();
            gzip.to_vec()
        } else {
            batch_for(0, 0)
        };
        let r: ProduceResponse = call(
            &mut s,
            ApiKey::Produce,
            9,
            &ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(name(topic))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch)))])]),
        );
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        let f: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch_request(topic, 1, 0, 0));
        let mut stored = f.responses[0].partitions[0].records.clone().unwrap();
        let attributes = i16::from_be_bytes([stored[21], stored[22]]);
        assert_eq!(attributes & 7, attribute, "{topic}: stored in {codec}");
        let set = RecordBatchDecoder::decode(&mut stored).unwrap();
        assert_eq!(set.records.len(), 1);
        assert_eq!(
            set.records[0].value.as_deref(),
            Some(&b"partition-0-batch-0"[..]),
            "{topic}: the record survives recompression"
        );
    }
}

#[test]
fn dynamic_broker_configs_change_at_once_and_persist() {
    use kafka_protocol::messages::incremental_alter_configs_request as incremental;
    use kafka_protocol::messages::{
        IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };

    let broker = Broker::start(&[]);
    let mut s = connect(broker.addr);
    let broker_config = |s: &mut TcpStream, key: &str| -> (String, i8) {
        let r: DescribeConfigsResponse = call(
            s,
            ApiKey::DescribeConfigs,
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_static_str("0"))
                    .with_configuration_keys(None),
            ]),
        );
        let c = r.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == key)
            .unwrap_or_else(|| panic!("{key} not described"));
        (c.value.clone().unwrap().to_string(), c.config_source)
    };
    let change = |s: &mut TcpStream, ops: &[(&str, i8, Option<&str>)]| -> i16 {
        let r: IncrementalAlterConfigsResponse = call(
            s,
            ApiKey::IncrementalAlterConfigs,
            1,
            &IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental::AlterConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_static_str("0"))
                    .with_configs(
                        ops.iter()
                            .map(|(k, op, v)| {
                                incremental::AlterableConfig::default()
                                    .with_name(StrBytes::from_string(k.to_string()))
                                    .with_config_operation(*op)
                                    .with_value(v.map(|v| StrBytes::from_string(v.to_string())))
                            })
                            .collect(),
                    ),
            ]),
        );
        r.responses[0].error_code
    };
    let auto_created = |s: &mut TcpStream, topic: &str| -> bool {
        let r: MetadataResponse = call(
            s,
            ApiKey::Metadata,
            12,
            &MetadataRequest::default()
                .with_allow_auto_topic_creation(true)
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(name(topic)))
                ])),
        );
        r.topics[0].error_code == 0
    };

    assert_eq!(
        broker_config(&mut s, "auto.create.topics.enable"),
        ("true".into(), 4)
    );
    assert_eq!(
        change(
            &mut s,
            &[
                ("auto.create.topics.enable", 0, Some("false")),
                ("num.partitions", 0, Some("3"))
            ]
        ),
        0
    );
    assert_eq!(
        broker_config(&mut s, "auto.create.topics.enable"),
        ("false".into(), 2)
    );
    assert!(
        !auto_created(&mut s, "not-created"),
        "auto-creation is off at once"
    );
    assert_eq!(create(&mut s, "three", -1, -1, &[], false).0, 0);
    assert_eq!(
        partition_count(&mut s, "three"),
        Some(3),
        "num.partitions applies"
    );
    assert_eq!(
        change(&mut s, &[("num.partitions", 0, Some("0"))]),
        40,
        "INVALID_CONFIG"
    );
    assert_eq!(
        change(&mut s, &[("log.dirs", 0, Some("/x"))]),
        40,
        "not dynamic"
    );

    drop(s);
    let broker = Broker::start_on(broker.kill(), &[]);
    let mut s = connect(broker.addr);
    assert_eq!(
        broker_config(&mut s, "num.partitions"),
        ("3".into(), 2),
        "persisted"
    );
    assert!(!auto_created(&mut s, "still-not"));
    assert_eq!(change(&mut s, &[("auto.create.topics.enable", 1, None)]), 0);
    assert_eq!(
        broker_config(&mut s, "auto.create.topics.enable"),
        ("true".into(), 4)
    );
    assert!(
        auto_created(&mut s, "created-now"),
        "back to the start-up value"
    );
}
