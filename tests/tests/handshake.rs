//! The connection handshake every Kafka client performs first, against a running
//! `sluice serve`, at the wire level: ApiVersions (incl. the KIP-511 fallback for versions the
//! broker does not know) and Metadata (this broker as controller; unknown topics refused or
//! auto-created, by config).

use std::io::Write;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use sluice_tests::wire::{call, connect, frame, read_frame};
use sluice_tests::Broker;

/// Every API the broker implements, with the versions it must advertise: from the minimum
/// Kafka 4.0 still accepts (KIP-896) to the newest the codec knows.
const EXPECTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::GetTelemetrySubscriptions, 0, 0),
    (ApiKey::PushTelemetry, 0, 0),
    (ApiKey::ListConfigResources, 0, 1),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 2),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
];

#[test]
fn api_versions_at_every_version_lists_what_is_implemented() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);
    for version in 0..=4 {
        // ApiVersions responses always use header v0, whatever the request version.
        let r: ApiVersionsResponse = call(
            &mut s,
            ApiKey::ApiVersions,
            version,
            &ApiVersionsRequest::default(),
        );
        assert_eq!(r.error_code, 0);
        let mut keys: Vec<(i16, i16, i16)> = r
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        keys.sort_unstable();
        let mut expected: Vec<(i16, i16, i16)> = EXPECTED
            .iter()
            .map(|(k, lo, hi)| (*k as i16, *lo, *hi))
            .collect();
        expected.sort_unstable();
        assert_eq!(keys, expected, "exactly what is implemented (v{version})");
    }
}

#[test]
fn unknown_api_versions_version_gets_the_v0_fallback() {
    // KIP-511: a newer client's ApiVersions gets UNSUPPORTED_VERSION in the v0 format.
    let broker = Broker::start(&[]);
    let mut s = connect(broker.addr);
    let mut raw = BytesMut::new();
    raw.put_i16(ApiKey::ApiVersions as i16);
    raw.put_i16(99);
    raw.put_i32(42);
    raw.put_i16(-1); // null client id
    raw.put_u8(0); // empty tagged fields
    s.write_all(&frame(&raw)).unwrap();
    let mut response = read_frame(&mut s).expect("fallback response");
    assert_eq!(response.get_i32(), 42);
    let r = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(r.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version == 4));
    // The connection stays usable: the client retries at a version both know.
    let r: ApiVersionsResponse = call(
        &mut s,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    assert_eq!(r.error_code, 0);
}

fn metadata_for(name: &'static str, auto_create: bool) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str(name))))]))
        .with_allow_auto_topic_creation(auto_create)
}

#[test]
fn metadata_names_this_broker_as_controller_and_refuses_unknown_topics() {
    let broker = Broker::start(&["--auto-create-topics", "false"]);
    let mut s = connect(broker.addr);
    for version in [0i16, 1, 4, 9, 12, 13] {
        let r: MetadataResponse = call(
            &mut s,
            ApiKey::Metadata,
            version,
            &metadata_for("no-such-topic", true),
        );
        assert_eq!(r.brokers.len(), 1);
        assert_eq!(r.brokers[0].port, i32::from(broker.addr.port()));
        if version >= 1 {
            assert_eq!(
                r.controller_id, r.brokers[0].node_id,
                "the controller is a broker that exists"
            );
        }
        assert_eq!(r.topics.len(), 1);
        assert_eq!(r.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    }
}

#[test]
fn metadata_auto_creates_topics_when_both_sides_allow_it() {
    let broker = Broker::start(&["--default-partitions", "3", "--cores", "2"]);
    let mut s = connect(broker.addr);
    // v4+ carries the client's allow_auto_topic_creation: false is respected.
    let r: MetadataResponse = call(&mut s, ApiKey::Metadata, 12, &metadata_for("manual", false));
    assert_eq!(r.topics[0].error_code, 3);
    let r: MetadataResponse = call(&mut s, ApiKey::Metadata, 12, &metadata_for("auto", true));
    let topic = &r.topics[0];
    assert_eq!(topic.error_code, 0);
    assert_eq!(topic.partitions.len(), 3, "num.partitions default");
    assert!(!topic.topic_id.is_nil());
    for p in &topic.partitions {
        assert_eq!(p.leader_id, r.brokers[0].node_id);
        assert_eq!(p.replica_nodes, vec![r.brokers[0].node_id]);
        assert_eq!(p.isr_nodes, vec![r.brokers[0].node_id]);
    }
    // v0 with an empty list and v1+ with a null list mean every topic.
    let all: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        0,
        &MetadataRequest::default().with_topics(Some(vec![])),
    );
    // Besides `__consumer_offsets` (v0 has no is_internal flag: tell it by name).
    let user_topics = |r: &MetadataResponse| {
        r.topics
            .iter()
            .filter(|t| !t.name.as_ref().is_some_and(|n| n.starts_with("__")))
            .count()
    };
    assert_eq!(user_topics(&all), 1);
    let all: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        9,
        &MetadataRequest::default().with_topics(None),
    );
    assert_eq!(user_topics(&all), 1);
    assert!(
        all.topics.iter().any(|t| t.is_internal
            && t.name
                .as_ref()
                .is_some_and(|n| n.as_str() == "__consumer_offsets")),
        "__consumer_offsets is listed as internal"
    );
}
