//! The group coordinator at the wire level, where real clients do not easily reach: a member
//! that does not rejoin within its rebalance timeout (`max.poll.interval.ms`) is removed so the
//! round completes without it; OffsetFetch for several groups at once (v8+); OffsetDelete and
//! DeleteGroups, and what each refuses; which group states, generations and members
//! OffsetCommit accepts (Kafka's `ClassicGroup.validateOffsetCommit`), and partitions of unknown
//! topics refused one by one.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteGroupsRequest, DeleteGroupsResponse,
    GroupId, JoinGroupRequest, JoinGroupResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_tests::wire::{call, connect};
use sluice_tests::Broker;

/// Creates topic `t` (2 partitions), which the commits below name.
fn create_topic_t(s: &mut TcpStream) {
    let r: CreateTopicsResponse = call(
        s,
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_num_partitions(2)
                .with_replication_factor(1)]),
    );
    assert_eq!(r.topics[0].error_code, 0);
}

fn join(s: &mut TcpStream, group: &str, member: &str, rebalance_ms: i32) -> JoinGroupResponse {
    call(
        s,
        ApiKey::JoinGroup,
        5,
        &JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(rebalance_ms)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"m"))]),
    )
}

fn sync(s: &mut TcpStream, group: &str, generation: i32, member: &str) -> SyncGroupResponse {
    call(
        s,
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(StrBytes::from_string(member.to_string()))
                .with_assignment(Bytes::from_static(b"a"))]),
    )
}

#[test]
fn a_member_that_does_not_rejoin_in_time_is_removed_from_the_round() {
    let broker = Broker::start(&["--group-initial-rebalance-delay-ms", "0"]);
    let mut a = connect(broker.addr);
    // v5: the first join gets MEMBER_ID_REQUIRED and the id to use (KIP-394).
    let first = join(&mut a, "slow", "", 1000);
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    let a_id = first.member_id.to_string();
    let joined = join(&mut a, "slow", &a_id, 1000);
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    assert_eq!(joined.leader.as_str(), a_id, "the only member leads");
    assert_eq!(sync(&mut a, "slow", 1, &a_id).assignment.as_ref(), b"a");

    // b joins; a (stuck in its poll loop) never rejoins: after a's rebalance timeout (1 s) it
    // is dropped and b's round completes with b alone.
    let addr = broker.addr;
    let started = Instant::now();
    let b = std::thread::spawn(move || {
        let mut b = connect(addr);
        let id = join(&mut b, "slow", "", 1000).member_id.to_string();
        (id.clone(), join(&mut b, "slow", &id, 1000))
    });
    let (b_id, round) = b.join().unwrap();
    let took = started.elapsed();
    assert_eq!(round.error_code, 0);
    assert_eq!(round.generation_id, 2);
    assert_eq!(round.leader.as_str(), b_id, "a is gone; b leads");
    assert_eq!(round.members.len(), 1);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "the round waited for a's rebalance timeout: {took:?}"
    );
    // a learns it was removed.
    assert_eq!(
        sync(&mut a, "slow", 1, &a_id).error_code,
        25,
        "UNKNOWN_MEMBER_ID"
    );
}

fn commit(s: &mut TcpStream, group: &str, offsets: &[(i32, i64)]) -> Vec<i16> {
    let r: OffsetCommitResponse = call(
        s,
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                        })
                        .collect(),
                )]),
    );
    r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect()
}

/// OffsetFetch v8 for several groups: per group, the committed offsets of t's partitions 0, 1.
fn fetch(s: &mut TcpStream, groups: &[&str]) -> Vec<(String, Vec<i64>)> {
    let r: OffsetFetchResponse = call(
        s,
        ApiKey::OffsetFetch,
        8,
        &OffsetFetchRequest::default().with_groups(
            groups
                .iter()
                .map(|g| {
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(g.to_string())))
                        .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                            .with_name(TopicName(StrBytes::from_static_str("t")))
                            .with_partition_indexes(vec![0, 1])]))
                })
                .collect(),
        ),
    );
    r.groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.topics[0]
                    .partitions
                    .iter()
                    .map(|p| p.committed_offset)
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn offsets_of_several_groups_are_fetched_and_deleted() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);
    create_topic_t(&mut s);
    assert_eq!(commit(&mut s, "g1", &[(0, 5), (1, 7)]), [0, 0]);
    assert_eq!(commit(&mut s, "g2", &[(0, 9)]), [0]);
    assert_eq!(
        fetch(&mut s, &["g1", "g2"]),
        [
            ("g1".to_string(), vec![5, 7]),
            ("g2".to_string(), vec![9, -1])
        ]
    );

    let r: OffsetDeleteResponse = call(
        &mut s,
        ApiKey::OffsetDelete,
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g1")))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]),
    );
    assert_eq!((r.error_code, r.topics[0].partitions[0].error_code), (0, 0));
    let delete_groups = |s: &mut TcpStream, names: &[&str]| -> Vec<i16> {
        let r: DeleteGroupsResponse = call(
            s,
            ApiKey::DeleteGroups,
            2,
            &DeleteGroupsRequest::default().with_groups_names(
                names
                    .iter()
                    .map(|n| GroupId(StrBytes::from_string(n.to_string())))
                    .collect(),
            ),
        );
        r.results.iter().map(|g| g.error_code).collect()
    };
    assert_eq!(
        delete_groups(&mut s, &["g2", "never"]),
        [0, 69],
        "GROUP_ID_NOT_FOUND"
    );

    // Both changes are durable.
    drop(s);
    let broker = Broker::start_on(broker.kill(), &["--cores", "2"]);
    let mut s = connect(broker.addr);

    assert_eq!(
        fetch(&mut s, &["g1", "g2"]),
        [
            ("g1".to_string(), vec![-1, 7]),
            ("g2".to_string(), vec![-1, -1])
        ]
    );

    // A group with members cannot be deleted, nor its offsets.
    let mut m = connect(broker.addr);
    let id = join(&mut m, "busy", "", 5000).member_id.to_string();
    assert_eq!(join(&mut m, "busy", &id, 5000).error_code, 0);
    assert_eq!(delete_groups(&mut s, &["busy"]), [68], "NON_EMPTY_GROUP");
    let r: OffsetDeleteResponse = call(
        &mut s,
        ApiKey::OffsetDelete,
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("busy")))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]),
    );
    assert_eq!(
        r.topics[0].partitions[0].error_code, 86,
        "GROUP_SUBSCRIBED_TO_TOPIC"
    );
}

/// A group name whose `__consumer_offsets` partition (crc32c % 8, the default count) is `p`.
fn group_on(prefix: &str, p: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|g| crc32c::crc32c(g.as_bytes()) % 8 == p)
        .unwrap()
}

#[test]
fn the_offsets_topic_is_compacted_and_keeps_every_live_offset() {
    use kafka_protocol::messages::incremental_alter_configs_request as incremental;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{
        IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListOffsetsRequest,
        ListOffsetsResponse,
    };

    let broker = Broker::start(&["--cores", "2"]);
    let mut s = connect(broker.addr);
    create_topic_t(&mut s);
    // Small segments (and batches that fit them), so compaction (at twice the segment size)
    // comes quickly.
    let r: IncrementalAlterConfigsResponse = call(
        &mut s,
        ApiKey::IncrementalAlterConfigs,
        1,
        &IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("__consumer_offsets"))
                .with_configs(vec![
                    incremental::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("segment.bytes"))
                        .with_config_operation(0)
                        .with_value(Some(StrBytes::from_static_str("65536"))),
                    incremental::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("max.message.bytes"))
                        .with_config_operation(0)
                        .with_value(Some(StrBytes::from_static_str("32768"))),
                ]),
        ]),
    );
    assert_eq!(r.responses[0].error_code, 0);
    let partition = crc32c::crc32c(b"busy") % 8;
    let keep = group_on("keep", partition);
    let gone = group_on("gone", partition);
    assert_eq!(commit(&mut s, &keep, &[(0, 11), (1, 12)]), [0, 0]);
    assert_eq!(commit(&mut s, &gone, &[(0, 13)]), [0]);
    let r: DeleteGroupsResponse = call(
        &mut s,
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(StrBytes::from_string(gone.clone()))]),
    );
    assert_eq!(r.results[0].error_code, 0);

    let log_start = |s: &mut TcpStream| -> i64 {
        let r: ListOffsetsResponse = call(
            s,
            ApiKey::ListOffsets,
            7,
            &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("__consumer_offsets")))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition as i32)
                    .with_timestamp(-2)])]),
        );
        r.topics[0].partitions[0].offset
    };
    // Many commits of the same two keys, with bulky metadata: far more than two segments.
    let metadata = "m".repeat(400);
    let mut n = 0i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_start(&mut s) == 0 {
        assert!(
            Instant::now() < deadline,
            "the offsets partition was never compacted"
        );
        for _ in 0..100 {
            n += 1;
            let r: OffsetCommitResponse = call(
                &mut s,
                ApiKey::OffsetCommit,
                8,
                &OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("busy")))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(n)
                                .with_committed_metadata(Some(StrBytes::from_string(
                                    metadata.clone(),
                                ))),
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(1)
                                .with_committed_offset(n * 2),
                        ])]),
            );
            assert_eq!(r.topics[0].partitions[0].error_code, 0);
        }
    }
    let expected = [
        ("busy".to_string(), vec![n, n * 2]),
        (keep.clone(), vec![11, 12]),
        (gone.clone(), vec![-1, -1]),
    ];
    assert_eq!(fetch(&mut s, &["busy", &keep, &gone]), expected);

    // Replayed from the compacted log after a SIGKILL: the same state.
    drop(s);
    let broker = Broker::start_on(broker.kill(), &["--cores", "2"]);
    let mut s = connect(broker.addr);
    assert!(log_start(&mut s) > 0);
    assert_eq!(fetch(&mut s, &["busy", &keep, &gone]), expected);
}

/// An OffsetCommit of `group` by `member` at `generation`: one code per partition, for t's
/// partitions 0 and 1 and partition 0 of a topic that does not exist.
fn member_commit(s: &mut TcpStream, group: &str, generation: i32, member: &str) -> Vec<i16> {
    let partition = |p: i32| {
        OffsetCommitRequestPartition::default()
            .with_partition_index(p)
            .with_committed_offset(3)
    };
    let r: OffsetCommitResponse = call(
        s,
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![partition(0), partition(1)]),
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("no-such-topic")))
                    .with_partitions(vec![partition(0)]),
            ]),
    );
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;

/// Kafka's rules (`ClassicGroup.validateOffsetCommit`), state by state: a member of the current
/// generation commits while the group is Stable and also while it prepares a rebalance (the
/// cooperative protocol commits revoked partitions then); between the JoinGroup answers and
/// SyncGroup (CompletingRebalance) it gets REBALANCE_IN_PROGRESS; a stale generation
/// ILLEGAL_GENERATION; an unknown member or a member-less commit to a group with members
/// UNKNOWN_MEMBER_ID. A topic that does not exist gets UNKNOWN_TOPIC_OR_PARTITION on its own.
#[test]
fn offset_commit_follows_kafkas_rules_in_every_group_state() {
    let broker = Broker::start(&["--cores", "2", "--group-initial-rebalance-delay-ms", "0"]);
    let mut a = connect(broker.addr);
    create_topic_t(&mut a);
    let g = "rules";
    let a_id = join(&mut a, g, "", 30_000).member_id.to_string();
    let joined = join(&mut a, g, &a_id, 30_000);
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    // CompletingRebalance: a has its JoinGroup answer but has not synced.
    assert_eq!(
        member_commit(&mut a, g, 1, &a_id),
        [
            REBALANCE_IN_PROGRESS,
            REBALANCE_IN_PROGRESS,
            UNKNOWN_TOPIC_OR_PARTITION
        ]
    );
    assert_eq!(sync(&mut a, g, 1, &a_id).error_code, 0);
    // Stable.
    assert_eq!(
        member_commit(&mut a, g, 1, &a_id),
        [NONE, NONE, UNKNOWN_TOPIC_OR_PARTITION]
    );
    assert_eq!(
        member_commit(&mut a, g, 0, &a_id),
        [
            ILLEGAL_GENERATION,
            ILLEGAL_GENERATION,
            UNKNOWN_TOPIC_OR_PARTITION
        ]
    );
    assert_eq!(
        member_commit(&mut a, g, 1, "stranger"),
        [
            UNKNOWN_MEMBER_ID,
            UNKNOWN_MEMBER_ID,
            UNKNOWN_TOPIC_OR_PARTITION
        ]
    );
    assert_eq!(
        member_commit(&mut a, g, -1, ""),
        [
            UNKNOWN_MEMBER_ID,
            UNKNOWN_MEMBER_ID,
            UNKNOWN_TOPIC_OR_PARTITION
        ],
        "a member-less commit to a group with members"
    );

    // b joins: the group prepares a rebalance and waits for a to rejoin.
    let addr = broker.addr;
    let b = std::thread::spawn(move || {
        let mut b = connect(addr);
        let b_id = join(&mut b, g, "", 30_000).member_id.to_string();
        let joined = join(&mut b, g, &b_id, 30_000);
        (b, b_id, joined)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        member_commit(&mut a, g, 1, &a_id),
        [NONE, NONE, UNKNOWN_TOPIC_OR_PARTITION],
        "PreparingRebalance: the current generation still commits"
    );
    let rejoined = join(&mut a, g, &a_id, 30_000);
    let (mut b, b_id, b_joined) = b.join().unwrap();
    assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 2));
    assert_eq!(b_joined.generation_id, 2);
    assert_eq!(
        member_commit(&mut b, g, 2, &b_id),
        [
            REBALANCE_IN_PROGRESS,
            REBALANCE_IN_PROGRESS,
            UNKNOWN_TOPIC_OR_PARTITION
        ],
        "CompletingRebalance"
    );
    assert_eq!(
        member_commit(&mut a, g, 1, &a_id),
        [
            ILLEGAL_GENERATION,
            ILLEGAL_GENERATION,
            UNKNOWN_TOPIC_OR_PARTITION
        ]
    );
}

/// Every record of `__consumer_offsets` partition `partition`, read with Fetch: (key, value).
fn offsets_topic_records(s: &mut TcpStream, partition: i32) -> Vec<(Bytes, Option<Bytes>)> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    use kafka_protocol::records::RecordBatchDecoder;
    let start: ListOffsetsResponse = call(
        s,
        ApiKey::ListOffsets,
        7,
        &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("__consumer_offsets")))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-2)])]),
    );
    let start = start.topics[0].partitions[0].offset;
    let r: FetchResponse = call(
        s,
        ApiKey::Fetch,
        12,
        &FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(16 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("__consumer_offsets")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(start)
                    .with_partition_max_bytes(16 << 20)])]),
    );
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let mut records = p.records.clone().unwrap_or_default();
    RecordBatchDecoder::decode_all(&mut records)
        .expect("decodes")
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| (r.key.expect("a key"), r.value))
        .collect()
}

/// Kafka's `OffsetCommitKey` (v0/v1), decoded here from the published schema, independently
/// of the broker's code: (group, topic, partition).
fn kafka_offset_key(key: &[u8]) -> Option<(String, String, i32)> {
    let version = i16::from_be_bytes([key[0], key[1]]);
    if !(0..=1).contains(&version) {
        return None;
    }
    let mut at = 2;
    let string = |at: &mut usize| {
        let len = i16::from_be_bytes([key[*at], key[*at + 1]]) as usize;
        let s = String::from_utf8(key[*at + 2..*at + 2 + len].to_vec()).unwrap();
        *at += 2 + len;
        s
    };
    let group = string(&mut at);
    let topic = string(&mut at);
    let partition = i32::from_be_bytes(key[at..at + 4].try_into().unwrap());
    Some((group, topic, partition))
}

/// Kafka's `OffsetCommitValue` v3: (offset, leader epoch, metadata).
fn kafka_offset_value_v3(value: &[u8]) -> (i64, i32, String) {
    assert_eq!(i16::from_be_bytes([value[0], value[1]]), 3, "value version");
    let offset = i64::from_be_bytes(value[2..10].try_into().unwrap());
    let epoch = i32::from_be_bytes(value[10..14].try_into().unwrap());
    let len = i16::from_be_bytes([value[14], value[15]]) as usize;
    let metadata = String::from_utf8(value[16..16 + len].to_vec()).unwrap();
    (offset, epoch, metadata)
}

/// `__consumer_offsets` holds Kafka's own binary records, so tools that read the topic
/// directly understand them; a deletion is a tombstone (null value).
#[test]
fn the_offsets_topic_holds_kafkas_binary_records() {
    let broker = Broker::start(&[]);
    let mut s = connect(broker.addr);
    create_topic_t(&mut s);
    assert_eq!(commit(&mut s, "layout", &[(0, 5), (1, 7)]), [0, 0]);
    let partition = (crc32c::crc32c(b"layout") % 8) as i32;
    let records = offsets_topic_records(&mut s, partition);
    let mut committed: Vec<(String, String, i32, i64)> = records
        .iter()
        .filter_map(|(k, v)| {
            let (group, topic, p) = kafka_offset_key(k)?;
            let (offset, _, _) = kafka_offset_value_v3(v.as_ref()?);
            Some((group, topic, p, offset))
        })
        .collect();
    committed.sort();
    assert_eq!(
        committed,
        [
            ("layout".to_string(), "t".to_string(), 0, 5),
            ("layout".to_string(), "t".to_string(), 1, 7)
        ]
    );

    // OffsetDelete appends a tombstone for the key.
    let r: OffsetDeleteResponse = call(
        &mut s,
        ApiKey::OffsetDelete,
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("layout")))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]),
    );
    assert_eq!(r.error_code, 0);
    let records = offsets_topic_records(&mut s, partition);
    let (key, value) = records.last().unwrap();
    assert_eq!(
        kafka_offset_key(key),
        Some(("layout".to_string(), "t".to_string(), 0))
    );
    assert_eq!(value, &None, "a tombstone");
}

/// A data directory written before the binary format (JSON records) is migrated on its first
/// start: the offsets are restored, and the partition then holds only Kafka's records.
#[test]
fn json_offsets_records_of_an_older_data_directory_are_migrated() {
    let broker = Broker::start(&[]);
    let mut s = connect(broker.addr);
    create_topic_t(&mut s);
    drop(s);
    let data = broker.stop();
    // Write what the older broker wrote for group "old": two offsets and a group record.
    let partition = (crc32c::crc32c(b"old") % 8) as i32;
    let topic_dir = sluice_tests::topic_dir(data.path(), "__consumer_offsets");
    let dir = topic_dir.join(partition.to_string());
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let log = sluice_storage::Log::open(&dir, sluice_storage::LogConfig::default())
                .await
                .unwrap();
            let value = |offset: i64| {
                format!(r#"{{"offset":{offset},"leader_epoch":-1,"metadata":"","commit_ms":1}}"#)
            };
            let (v0, v1) = (value(11), value(12));
            let batch = sluice_storage::batch::build_batch(
                1,
                &[
                    (1, br#"["offset","old","t",0]"#, v0.as_bytes()),
                    (1, br#"["offset","old","t",1]"#, v1.as_bytes()),
                    (
                        1,
                        br#"["group","old"]"#,
                        br#"{"protocol_type":"consumer","generation":4}"#,
                    ),
                ],
            );
            log.append_durable(&batch, sluice_storage::LeaderEpoch(0))
                .await
                .unwrap();
            log.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();

    let broker = Broker::start_on(data, &[]);
    let mut s = connect(broker.addr);
    assert_eq!(
        fetch(&mut s, &["old"]),
        [("old".to_string(), vec![11, 12])],
        "offsets restored from the JSON records"
    );
    assert!(broker.log().contains("migrated"), "{}", broker.log());
    let records = offsets_topic_records(&mut s, partition);
    assert!(!records.is_empty());
    for (key, _) in &records {
        assert_ne!(key.first(), Some(&b'['), "a JSON record is left: {key:?}");
    }
    // And the migrated partition replays on the next start too.
    drop(s);
    let broker = Broker::start_on(broker.stop(), &[]);
    let mut s = connect(broker.addr);
    assert_eq!(fetch(&mut s, &["old"]), [("old".to_string(), vec![11, 12])]);
}
