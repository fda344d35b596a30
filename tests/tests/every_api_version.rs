//! Every API at every version ApiVersions advertises, on the wire: raw requests of that
//! version with typical and edge-case answers (success, errors, empty results, per-partition
//! failures), each response read back and decoded at that version with nothing left over.
//!
//! The class of bug this closes: a handler that sets a response field the client's version
//! does not have (Kafka's generated codecs refuse to encode it), so the broker closes the
//! connection instead of answering; e.g. ListOffsets v2 carrying a leader epoch (a v4 field)
//! broke `kcat -C -o beginning`. A new API or version advertised without a case here fails
//! the coverage check at the end. The matrix runs twice: against a single node, and against a
//! node in cluster mode (a one-seed cluster), whose answers come from other code (the
//! controller's image, Raft-backed partitions, the controller quorum).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::Write;
use std::net::TcpStream;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_tests::cluster::Cluster;
use sluice_tests::{wire, Broker};

const TOPIC: &str = "matrix";
const MISSING: &str = "matrix-missing";

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn group(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Talks to the broker and keeps score: every (API, version) tried, every failure.
struct Matrix {
    addr: std::net::SocketAddr,
    stream: TcpStream,
    correlation_id: i32,
    /// (API key, min, max) as ApiVersions advertised them.
    ranges: Vec<(i16, i16, i16)>,
    tried: BTreeSet<(i16, i16)>,
    failures: Vec<String>,
    /// A node in cluster mode (a one-seed cluster), where some answers differ: see the cases.
    cluster: bool,
    /// The leader epoch of the test topic's partition 0 (0 on a single node, the Raft term in
    /// cluster mode).
    leader_epoch: i32,
    /// The offset of partition 0's first record (in cluster mode the log starts with Raft's
    /// own entry for the new leader).
    first_record: Option<i64>,
}

impl Matrix {
    /// The versions the broker advertises for `api` (none if it does not).
    fn range(&self, api: ApiKey) -> Vec<i16> {
        self.ranges
            .iter()
            .find(|(k, _, _)| *k == api as i16)
            .map_or_else(Vec::new, |(_, lo, hi)| (*lo..=*hi).collect())
    }

    /// Sends `request` at `version`; the response must come back and decode at that version
    /// with no bytes left over. `None` (and a failure recorded) otherwise.
    fn call<Req: Encodable, Resp: Decodable + Debug>(
        &mut self,
        api: ApiKey,
        version: i16,
        case: &str,
        request: &Req,
    ) -> Option<Resp> {
        self.tried.insert((api as i16, version));
        self.correlation_id += 1;
        let what = format!("{api:?} v{version} ({case})");
        let mut header = bytes::BytesMut::new();
        let request_header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(text("matrix")));
        request_header
            .encode(&mut header, api.request_header_version(version))
            .unwrap();
        if let Err(e) = request.encode(&mut header, version) {
            self.failures
                .push(format!("{what}: the test's request does not encode: {e}"));
            return None;
        }
        let frame = wire::frame(&header);
        if self.stream.write_all(&frame).is_err() {
            self.reconnect();
            self.failures.push(format!("{what}: connection lost"));
            return None;
        }
        let Some(mut response) = wire::read_frame(&mut self.stream) else {
            self.failures.push(format!(
                "{what}: the broker closed the connection instead of answering"
            ));
            self.reconnect();
            return None;
        };
        let header =
            match ResponseHeader::decode(&mut response, api.response_header_version(version)) {
                Ok(h) => h,
                Err(e) => {
                    self.failures
                        .push(format!("{what}: response header does not decode: {e}"));
                    return None;
                }
            };
        if header.correlation_id != self.correlation_id {
            self.failures.push(format!(
                "{what}: correlation id {} instead of {}",
                header.correlation_id, self.correlation_id
            ));
        }
        match Resp::decode(&mut response, version) {
            Ok(decoded) if response.is_empty() => Some(decoded),
            Ok(_) => {
                self.failures.push(format!(
                    "{what}: {} bytes left after the response body",
                    response.len()
                ));
                None
            }
            Err(e) => {
                self.failures
                    .push(format!("{what}: response does not decode: {e}"));
                None
            }
        }
    }

    fn reconnect(&mut self) {
        self.stream = wire::connect(self.addr);
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

/// A valid one-record batch.
fn batch() -> Bytes {
    Bytes::from(sluice_storage::batch::build_batch(
        1_700_000_000_000,
        &[(1_700_000_000_000, b"k", b"v")],
    ))
}

fn produce_request(
    topic: &str,
    topic_id: uuid::Uuid,
    version: i16,
    partitions: &[i32],
) -> ProduceRequest {
    let mut data = produce_request::TopicProduceData::default().with_partition_data(
        partitions
            .iter()
            .map(|p| {
                produce_request::PartitionProduceData::default()
                    .with_index(*p)
                    .with_records(Some(batch()))
            })
            .collect(),
    );
    data = if version >= 13 {
        data.with_topic_id(topic_id)
    } else {
        data.with_name(name(topic))
    };
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![data])
}

fn fetch_request(
    topic: &str,
    topic_id: uuid::Uuid,
    version: i16,
    partitions: &[(i32, i64)],
) -> FetchRequest {
    let mut t = fetch_request::FetchTopic::default().with_partitions(
        partitions
            .iter()
            .map(|(p, offset)| {
                fetch_request::FetchPartition::default()
                    .with_partition(*p)
                    .with_fetch_offset(*offset)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect(),
    );
    t = if version >= 13 {
        t.with_topic_id(topic_id)
    } else {
        t.with_topic(name(topic))
    };
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![t]);
    if version >= 15 {
        request
    } else {
        request.with_replica_id(BrokerId(-1))
    }
}

/// The options both runs start their node with. No auto-creation: the unknown topic stays
/// unknown for every case.
const NODE_OPTIONS: [&str; 6] = [
    "--cores",
    "2",
    "--group-initial-rebalance-delay-ms",
    "0",
    "--auto-create-topics",
    "false",
];

#[test]
fn every_api_answers_at_every_advertised_version() {
    let broker = Broker::start(&NODE_OPTIONS);
    run_matrix(broker.addr, false);
}

/// The same matrix against a node in cluster mode (a one-seed cluster: it leads every
/// partition, so the answers are a single node's, but they come from the cluster-mode code:
/// the controller's image, Raft-backed partitions, DescribeQuorum's `nodes`). Found that a
/// v2-only field set at every version in cluster mode closed the connection of v0/v1 clients.
#[test]
fn every_api_answers_at_every_advertised_version_in_cluster_mode() {
    let cluster = Cluster::start(1, &NODE_OPTIONS);
    run_matrix(cluster.node(0).kafka, true);
}

fn run_matrix(addr: std::net::SocketAddr, cluster: bool) {
    let stream = wire::connect(addr);
    let mut m = Matrix {
        addr,
        stream,
        correlation_id: 0,
        ranges: Vec::new(),
        tried: BTreeSet::new(),
        failures: Vec::new(),
        cluster,
        leader_epoch: 0,
        first_record: None,
    };

    // What the broker advertises (and ApiVersions at each of its versions).
    let mut advertised = Vec::new();
    for v in 0..=4 {
        let request = ApiVersionsRequest::default();
        let request = if v >= 3 {
            request
                .with_client_software_name(text("matrix"))
                .with_client_software_version(text("1"))
        } else {
            request
        };
        if let Some(r) =
            m.call::<_, ApiVersionsResponse>(ApiKey::ApiVersions, v, "typical", &request)
        {
            m.check(r.error_code == 0, || {
                format!("ApiVersions v{v}: error {}", r.error_code)
            });
            m.ranges = r
                .api_keys
                .iter()
                .map(|k| (k.api_key, k.min_version, k.max_version))
                .collect();
            advertised = r
                .api_keys
                .iter()
                .flat_map(|k| (k.min_version..=k.max_version).map(move |v| (k.api_key, v)))
                .collect();
        }
    }
    assert!(
        !advertised.is_empty(),
        "ApiVersions answered: {:?}",
        m.failures
    );

    // The topic every case uses: 2 partitions, created at CreateTopics v7 for its id.
    let created = m
        .call::<_, CreateTopicsResponse>(
            ApiKey::CreateTopics,
            7,
            "setup",
            &CreateTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![create_topics_request::CreatableTopic::default()
                    .with_name(name(TOPIC))
                    .with_num_partitions(2)
                    .with_replication_factor(1)]),
        )
        .expect("the topic is created");
    let topic_id = created.topics[0].topic_id;
    assert_eq!(created.topics[0].error_code, 0);
    let described = m
        .call::<_, MetadataResponse>(
            ApiKey::Metadata,
            9,
            "setup",
            &MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(name(TOPIC))),
            ])),
        )
        .expect("metadata");
    m.leader_epoch = described.topics[0]
        .partitions
        .iter()
        .find(|p| p.partition_index == 0)
        .expect("partition 0")
        .leader_epoch;

    produce_cases(&mut m, topic_id);
    fetch_cases(&mut m, topic_id);
    list_offsets_cases(&mut m);
    offset_for_leader_epoch_cases(&mut m);
    metadata_cases(&mut m);
    topic_admin_cases(&mut m);
    config_cases(&mut m);
    group_cases(&mut m);
    producer_id_cases(&mut m);
    txn_cases(&mut m);
    describe_producers_cases(&mut m);
    cluster_cases(&mut m);
    sasl_cases(&mut m);
    scram_credential_cases(&mut m);
    acl_cases(&mut m);
    quota_cases(&mut m);

    let untried: Vec<_> = advertised
        .iter()
        .filter(|(api, v)| !m.tried.contains(&(*api, *v)))
        .map(|(api, v)| format!("{:?} v{v}", ApiKey::try_from(*api).unwrap()))
        .collect();
    assert!(
        untried.is_empty(),
        "advertised but not covered here: {untried:?}"
    );
    assert!(
        m.failures.is_empty(),
        "{} failures:\n{}",
        m.failures.len(),
        m.failures.join("\n")
    );
}

fn produce_cases(m: &mut Matrix, topic_id: uuid::Uuid) {
    for v in m.range(ApiKey::Produce) {
        let r: Option<ProduceResponse> = m.call(
            ApiKey::Produce,
            v,
            "partition 0 ok, partition 9 unknown",
            &produce_request(TOPIC, topic_id, v, &[0, 9]),
        );
        if let Some(r) = r {
            let codes: Vec<i16> = r.responses[0]
                .partition_responses
                .iter()
                .map(|p| p.error_code)
                .collect();
            m.check(codes == [0, 3], || format!("Produce v{v}: codes {codes:?}"));
            let base_offset = r.responses[0].partition_responses[0].base_offset;
            m.first_record.get_or_insert(base_offset);
            let message = &r.responses[0].partition_responses[0].error_message;
            m.check(message.is_none(), || {
                format!("Produce v{v}: success carries message {message:?}")
            });
        }
        if let Some(r) = m.call::<_, ProduceResponse>(
            ApiKey::Produce,
            v,
            "unknown topic",
            &produce_request(MISSING, uuid::Uuid::from_u128(7), v, &[0]),
        ) {
            let code = r.responses[0].partition_responses[0].error_code;
            let expected = if v >= 13 { 100 } else { 3 }; // UNKNOWN_TOPIC_ID by id
            m.check(code == expected, || {
                format!("Produce v{v}: unknown topic code {code}")
            });
        }
        if v < 13 {
            if let Some(r) = m.call::<_, ProduceResponse>(
                ApiKey::Produce,
                v,
                "invalid topic name",
                &produce_request("bad$#!", uuid::Uuid::nil(), v, &[0]),
            ) {
                let code = r.responses[0].partition_responses[0].error_code;
                m.check(code == 17, || {
                    format!("Produce v{v}: invalid name code {code}")
                });
            }
        }
    }
}

fn fetch_cases(m: &mut Matrix, topic_id: uuid::Uuid) {
    for v in m.range(ApiKey::Fetch) {
        let r: Option<FetchResponse> = m.call(
            ApiKey::Fetch,
            v,
            "data, out of range, unknown partition",
            &fetch_request(TOPIC, topic_id, v, &[(0, 0), (1, 1_000_000), (9, 0)]),
        );
        if let Some(r) = r {
            let codes: Vec<i16> = r.responses[0]
                .partitions
                .iter()
                .map(|p| p.error_code)
                .collect();
            m.check(codes == [0, 1, 3], || {
                format!("Fetch v{v}: codes {codes:?}")
            });
        }
        if v >= 9 {
            // KIP-320: the leader's epoch is served; a client ahead of it is told so.
            let mut request = fetch_request(TOPIC, topic_id, v, &[(0, 0), (0, 0)]);
            request.topics[0].partitions[0].current_leader_epoch = m.leader_epoch;
            request.topics[0].partitions[1].current_leader_epoch = m.leader_epoch + 3;
            if let Some(r) = m.call::<_, FetchResponse>(
                ApiKey::Fetch,
                v,
                "current leader epoch: current, ahead",
                &request,
            ) {
                let codes: Vec<i16> = r.responses[0]
                    .partitions
                    .iter()
                    .map(|p| p.error_code)
                    .collect();
                m.check(codes == [0, 75], || {
                    format!("Fetch v{v}: epoch codes {codes:?}")
                });
            }
        }
        let _: Option<FetchResponse> = m.call(
            ApiKey::Fetch,
            v,
            "unknown topic",
            &fetch_request(MISSING, uuid::Uuid::from_u128(7), v, &[(0, 0)]),
        );
        let _: Option<FetchResponse> = m.call(
            ApiKey::Fetch,
            v,
            "empty",
            &fetch_request(TOPIC, topic_id, v, &[]),
        );
    }
}

fn offset_for_leader_epoch_cases(m: &mut Matrix) {
    const UNKNOWN_LEADER_EPOCH: i16 = 75;
    let epoch = m.leader_epoch;
    for v in m.range(ApiKey::OffsetForLeaderEpoch) {
        let asked = |current: i32, epoch: i32| {
            offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)
        };
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name(TOPIC))
                    .with_partitions(vec![
                        asked(-1, epoch),
                        asked(epoch, epoch),
                        asked(-1, epoch + 7),
                        asked(epoch + 3, epoch),
                    ]),
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name(MISSING))
                    .with_partitions(vec![asked(-1, 0)]),
            ]);
        let Some(r) = m.call::<_, OffsetForLeaderEpochResponse>(
            ApiKey::OffsetForLeaderEpoch,
            v,
            "epochs known, unknown, fenced",
            &request,
        ) else {
            continue;
        };
        let answers: Vec<(i16, i32, i64)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        let end = answers[0].2;
        let expected = vec![
            (0, epoch, end),
            (0, epoch, end),
            (0, -1, -1),
            (UNKNOWN_LEADER_EPOCH, -1, -1),
        ];
        if end < 1 || answers != expected || r.topics[1].partitions[0].error_code != 3 {
            m.failures.push(format!(
                "OffsetForLeaderEpoch v{v}: {answers:?} / {:?}",
                r.topics[1].partitions
            ));
        }
    }
}

fn list_offsets_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::ListOffsets) {
        // -2 earliest, -1 latest, a timestamp; -3 max timestamp from v7 (KIP-734).
        let mut timestamps = vec![-2, -1, 1_600_000_000_000];
        if v >= 7 {
            timestamps.push(-3);
        }
        let partitions = timestamps
            .iter()
            .map(|ts| {
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(*ts)
            })
            .chain([list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(9)
                .with_timestamp(-1)])
            .collect();
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(partitions),
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name(MISSING))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default().with_timestamp(-2)
                    ]),
            ]);
        if let Some(r) =
            m.call::<_, ListOffsetsResponse>(ApiKey::ListOffsets, v, "typical and errors", &request)
        {
            let codes: Vec<i16> = r.topics[0]
                .partitions
                .iter()
                .map(|p| p.error_code)
                .collect();
            let expected_ok = timestamps.len();
            m.check(
                codes[..expected_ok].iter().all(|c| *c == 0) && codes[expected_ok] == 3,
                || format!("ListOffsets v{v}: codes {codes:?}"),
            );
            let earliest = r.topics[0].partitions[0].offset;
            m.check(earliest == 0, || {
                format!("ListOffsets v{v}: earliest {earliest}")
            });
            if v >= 7 {
                // Every record carries the same timestamp: the first of them is the answer.
                let max = &r.topics[0].partitions[3];
                let first = m.first_record;
                m.check(
                    Some(max.offset) == first && max.timestamp == 1_700_000_000_000,
                    || {
                        format!(
                            "ListOffsets v{v}: max timestamp at {} ({})",
                            max.offset, max.timestamp
                        )
                    },
                );
            }
            let unknown = r.topics[1].partitions[0].error_code;
            m.check(unknown == 3, || {
                format!("ListOffsets v{v}: unknown topic code {unknown}")
            });
        }
    }
}

fn metadata_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::Metadata) {
        let topics = |names: &[&str]| {
            names
                .iter()
                .map(|n| metadata_request::MetadataRequestTopic::default().with_name(Some(name(n))))
                .collect::<Vec<_>>()
        };
        let mut request = MetadataRequest::default().with_topics(Some(topics(&[TOPIC, MISSING])));
        if v >= 4 {
            request = request.with_allow_auto_topic_creation(false);
        }
        if (8..=10).contains(&v) {
            request = request.with_include_cluster_authorized_operations(true);
        }
        if v >= 8 {
            request = request.with_include_topic_authorized_operations(true);
        }
        if let Some(r) =
            m.call::<_, MetadataResponse>(ApiKey::Metadata, v, "known and unknown topic", &request)
        {
            let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
            m.check(codes == [0, 3], || {
                format!("Metadata v{v}: codes {codes:?}")
            });
        }
        let all = if v == 0 {
            MetadataRequest::default().with_topics(Some(Vec::new()))
        } else {
            MetadataRequest::default().with_topics(None)
        };
        let _: Option<MetadataResponse> = m.call(ApiKey::Metadata, v, "all topics", &all);
        if v >= 1 {
            let none = MetadataRequest::default().with_topics(Some(Vec::new()));
            let _: Option<MetadataResponse> = m.call(ApiKey::Metadata, v, "no topics", &none);
        }
    }
}

fn topic_admin_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::CreateTopics) {
        let new = format!("matrix-created-{v}");
        let topic = |n: &str, partitions: i32| {
            create_topics_request::CreatableTopic::default()
                .with_name(name(n))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
        };
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![
                topic(&new, 1),
                topic(TOPIC, 1),
                topic("bad$#!", 1),
                topic(&format!("{new}-zero"), 0),
            ]);
        if let Some(r) = m.call::<_, CreateTopicsResponse>(
            ApiKey::CreateTopics,
            v,
            "new, existing, invalid name, invalid count",
            &request,
        ) {
            let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
            m.check(codes == [0, 36, 17, 37], || {
                format!("CreateTopics v{v}: codes {codes:?}")
            });
            // Kafka answers a null message on success; "" reads as an error text to aiokafka.
            let message = &r.topics[0].error_message;
            m.check(message.is_none(), || {
                format!("CreateTopics v{v}: success carries message {message:?}")
            });
        }
        let validate = CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_validate_only(true)
            .with_topics(vec![topic(&format!("{new}-dry"), 3)]);
        let _: Option<CreateTopicsResponse> =
            m.call(ApiKey::CreateTopics, v, "validate only", &validate);
        let _: Option<CreateTopicsResponse> = m.call(
            ApiKey::CreateTopics,
            v,
            "empty",
            &CreateTopicsRequest::default().with_timeout_ms(5000),
        );
    }
    for v in m.range(ApiKey::CreatePartitions) {
        let grow = |n: &str, count: i32| {
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name(n))
                .with_count(count)
        };
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![
                grow(&format!("matrix-created-{}", 2 + v), 2),
                grow(MISSING, 3),
                grow(TOPIC, 1),
            ]);
        if let Some(r) = m.call::<_, CreatePartitionsResponse>(
            ApiKey::CreatePartitions,
            v,
            "grow, unknown, shrink",
            &request,
        ) {
            let codes: Vec<i16> = r.results.iter().map(|t| t.error_code).collect();
            m.check(codes[0] == 0 && codes[1] == 3 && codes[2] == 37, || {
                format!("CreatePartitions v{v}: codes {codes:?}")
            });
        }
    }
    for v in m.range(ApiKey::DeleteRecords) {
        let request = DeleteRecordsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(1)
                            .with_offset(0),
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(9)
                            .with_offset(0),
                    ]),
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(name(MISSING))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default(),
                    ]),
            ]);
        let _: Option<DeleteRecordsResponse> = m.call(
            ApiKey::DeleteRecords,
            v,
            "ok, unknown partition and topic",
            &request,
        );
    }
    for v in m.range(ApiKey::DeleteTopics) {
        let doomed = format!("matrix-created-{}", 1 + v);
        let request = if v >= 6 {
            DeleteTopicsRequest::default().with_topics(vec![
                delete_topics_request::DeleteTopicState::default().with_name(Some(name(&doomed))),
                delete_topics_request::DeleteTopicState::default().with_name(Some(name(MISSING))),
            ])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![name(&doomed), name(MISSING)])
        }
        .with_timeout_ms(5000);
        if let Some(r) = m.call::<_, DeleteTopicsResponse>(
            ApiKey::DeleteTopics,
            v,
            "existing and unknown",
            &request,
        ) {
            let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
            m.check(codes == [0, 3], || {
                format!("DeleteTopics v{v}: codes {codes:?}")
            });
        }
    }
}

fn config_cases(m: &mut Matrix) {
    const TOPIC_RESOURCE: i8 = 2;
    const BROKER_RESOURCE: i8 = 4;
    for v in m.range(ApiKey::DescribeConfigs) {
        let resource = |kind: i8, n: &str| {
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(kind)
                .with_resource_name(text(n))
                .with_configuration_keys(None)
        };
        let mut request = DescribeConfigsRequest::default().with_resources(vec![
            resource(TOPIC_RESOURCE, TOPIC),
            resource(TOPIC_RESOURCE, MISSING),
            resource(BROKER_RESOURCE, "1"),
        ]);
        if v >= 1 {
            request = request.with_include_synonyms(true);
        }
        if v >= 3 {
            request = request.with_include_documentation(true);
        }
        if let Some(r) = m.call::<_, DescribeConfigsResponse>(
            ApiKey::DescribeConfigs,
            v,
            "topic, unknown topic, broker",
            &request,
        ) {
            let codes: Vec<i16> = r.results.iter().map(|t| t.error_code).collect();
            m.check(codes[0] == 0 && codes[1] == 3, || {
                format!("DescribeConfigs v{v}: codes {codes:?}")
            });
            let message = &r.results[0].error_message;
            m.check(message.is_none(), || {
                format!("DescribeConfigs v{v}: success carries message {message:?}")
            });
        }
    }
    for v in m.range(ApiKey::AlterConfigs) {
        let resource = |n: &str, key: &str, value: &str| {
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(text(n))
                .with_configs(vec![alter_configs_request::AlterableConfig::default()
                    .with_name(text(key))
                    .with_value(Some(text(value)))])
        };
        let request = AlterConfigsRequest::default().with_resources(vec![
            resource(TOPIC, "retention.ms", "600000"),
            resource(MISSING, "retention.ms", "600000"),
            resource(TOPIC, "retention.ms", "not-a-number"),
        ]);
        let _: Option<AlterConfigsResponse> =
            m.call(ApiKey::AlterConfigs, v, "ok, unknown, invalid", &request);
    }
    for v in m.range(ApiKey::IncrementalAlterConfigs) {
        let resource = |n: &str, key: &str, op: i8| {
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(text(n))
                .with_configs(vec![
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(text(key))
                        .with_config_operation(op)
                        .with_value(Some(text("1000000"))),
                ])
        };
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            resource(TOPIC, "retention.bytes", 0),
            resource(MISSING, "retention.bytes", 0),
            resource(TOPIC, "no.such.config", 0),
        ]);
        let _: Option<IncrementalAlterConfigsResponse> = m.call(
            ApiKey::IncrementalAlterConfigs,
            v,
            "ok, unknown, invalid",
            &request,
        );
    }
}

fn group_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::FindCoordinator) {
        let request = if v >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![text("g1"), text("g2")])
        } else {
            FindCoordinatorRequest::default().with_key(text("g1"))
        };
        if let Some(r) =
            m.call::<_, FindCoordinatorResponse>(ApiKey::FindCoordinator, v, "group", &request)
        {
            let (code, message) = if v >= 4 {
                (
                    r.coordinators[0].error_code,
                    r.coordinators[0].error_message.clone(),
                )
            } else {
                (r.error_code, r.error_message.clone())
            };
            m.check(code == 0 && (v == 0 || message.is_none()), || {
                format!("FindCoordinator v{v}: code {code}, message {message:?}")
            });
        }
        if v >= 1 {
            let txn = if v >= 4 {
                FindCoordinatorRequest::default()
                    .with_key_type(1)
                    .with_coordinator_keys(vec![text("txn")])
            } else {
                FindCoordinatorRequest::default()
                    .with_key_type(1)
                    .with_key(text("txn"))
            };
            let _: Option<FindCoordinatorResponse> =
                m.call(ApiKey::FindCoordinator, v, "transaction", &txn);
        }
    }

    // A group per JoinGroup version, joined for real (v4+: MEMBER_ID_REQUIRED first).
    let mut joined = Vec::new();
    for v in m.range(ApiKey::JoinGroup) {
        let group_name = format!("matrix-group-{v}");
        let join = |member: &str| {
            let request = JoinGroupRequest::default()
                .with_group_id(group(&group_name))
                .with_session_timeout_ms(30_000)
                .with_member_id(text(member))
                .with_protocol_type(text("consumer"))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                )
                .with_name(text("range"))
                .with_metadata(Bytes::from_static(b"\0\0\0\0\0\x01\0\x06matrix\0\0\0\0"))]);
            if v >= 1 {
                request.with_rebalance_timeout_ms(30_000)
            } else {
                request
            }
        };
        let Some(first) =
            m.call::<_, JoinGroupResponse>(ApiKey::JoinGroup, v, "new member", &join(""))
        else {
            continue;
        };
        let response = if first.error_code == 79 {
            let member = first.member_id.to_string();
            m.call::<_, JoinGroupResponse>(ApiKey::JoinGroup, v, "with member id", &join(&member))
        } else {
            Some(first)
        };
        if let Some(r) = response {
            m.check(r.error_code == 0, || {
                format!("JoinGroup v{v}: code {}", r.error_code)
            });
            joined.push((group_name.clone(), r.member_id.to_string(), r.generation_id));
        }
        let _: Option<JoinGroupResponse> = m.call(
            ApiKey::JoinGroup,
            v,
            "unknown member",
            &join("no-such-member"),
        );
    }
    assert!(!joined.is_empty(), "no group joined: {:?}", m.failures);
    let (group_name, member, generation) = joined[0].clone();

    for v in m.range(ApiKey::SyncGroup) {
        let mut request = SyncGroupRequest::default()
            .with_group_id(group(&group_name))
            .with_generation_id(generation)
            .with_member_id(text(&member))
            .with_assignments(vec![
                sync_group_request::SyncGroupRequestAssignment::default()
                    .with_member_id(text(&member))
                    .with_assignment(Bytes::from_static(b"\0\0\0\0\0\0\0\0\0\0")),
            ]);
        if v >= 5 {
            request = request
                .with_protocol_type(Some(text("consumer")))
                .with_protocol_name(Some(text("range")));
        }
        let _: Option<SyncGroupResponse> = m.call(ApiKey::SyncGroup, v, "leader", &request);
        let stale = request.clone().with_generation_id(generation + 100);
        let _: Option<SyncGroupResponse> = m.call(ApiKey::SyncGroup, v, "stale generation", &stale);
    }
    for v in m.range(ApiKey::Heartbeat) {
        let request = HeartbeatRequest::default()
            .with_group_id(group(&group_name))
            .with_generation_id(generation)
            .with_member_id(text(&member));
        let _: Option<HeartbeatResponse> = m.call(ApiKey::Heartbeat, v, "member", &request);
        let unknown = request.with_member_id(text("no-such-member"));
        let _: Option<HeartbeatResponse> = m.call(ApiKey::Heartbeat, v, "unknown member", &unknown);
    }
    for v in m.range(ApiKey::OffsetCommit) {
        let partition = |p: i32| {
            offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(p)
                .with_committed_offset(1)
                .with_committed_metadata(Some(text("m")))
        };
        let mut request = OffsetCommitRequest::default()
            .with_group_id(group(&format!("matrix-commits-{v}")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![partition(0), partition(9)]),
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(name(MISSING))
                    .with_partitions(vec![partition(0)]),
            ]);
        if (2..=4).contains(&v) {
            request = request.with_retention_time_ms(-1);
        }
        let _: Option<OffsetCommitResponse> =
            m.call(ApiKey::OffsetCommit, v, "standalone commit", &request);
        let member_commit = OffsetCommitRequest::default()
            .with_group_id(group(&group_name))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(text(&member))
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![partition(1)]),
            ]);
        let member_commit = if (2..=4).contains(&v) {
            member_commit.with_retention_time_ms(-1)
        } else {
            member_commit
        };
        let _: Option<OffsetCommitResponse> =
            m.call(ApiKey::OffsetCommit, v, "member commit", &member_commit);
    }
    for v in m.range(ApiKey::OffsetFetch) {
        let topics = vec![offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(name(TOPIC))
            .with_partition_indexes(vec![0, 1, 9])];
        let request = if v >= 8 {
            OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(group("matrix-commits-2"))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(name(TOPIC))
                            .with_partition_indexes(vec![0, 1, 9]),
                    ])),
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(group("matrix-no-such-group"))
                    .with_topics(None),
            ])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(group("matrix-commits-2"))
                .with_topics(Some(topics))
        };
        let _: Option<OffsetFetchResponse> = m.call(ApiKey::OffsetFetch, v, "committed", &request);
        if (2..8).contains(&v) {
            let all = OffsetFetchRequest::default()
                .with_group_id(group("matrix-no-such-group"))
                .with_topics(None);
            let _: Option<OffsetFetchResponse> =
                m.call(ApiKey::OffsetFetch, v, "all, no group", &all);
        }
    }
    for v in m.range(ApiKey::DescribeGroups) {
        let mut request = DescribeGroupsRequest::default()
            .with_groups(vec![group(&group_name), group("matrix-no-such-group")]);
        if v >= 3 {
            request = request.with_include_authorized_operations(true);
        }
        let _: Option<DescribeGroupsResponse> =
            m.call(ApiKey::DescribeGroups, v, "live and unknown", &request);
    }
    for v in m.range(ApiKey::ListGroups) {
        let _: Option<ListGroupsResponse> =
            m.call(ApiKey::ListGroups, v, "all", &ListGroupsRequest::default());
        if v >= 4 {
            let filtered = ListGroupsRequest::default().with_states_filter(vec![text("Dead")]);
            let _: Option<ListGroupsResponse> =
                m.call(ApiKey::ListGroups, v, "filter matches none", &filtered);
        }
    }
    for v in m.range(ApiKey::OffsetDelete) {
        let request = OffsetDeleteRequest::default()
            .with_group_id(group("matrix-commits-3"))
            .with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default()
                            .with_partition_index(0),
                    ]),
            ]);
        let _: Option<OffsetDeleteResponse> =
            m.call(ApiKey::OffsetDelete, v, "committed", &request);
        let unknown = request.with_group_id(group("matrix-no-such-group"));
        let _: Option<OffsetDeleteResponse> =
            m.call(ApiKey::OffsetDelete, v, "unknown group", &unknown);
    }
    for v in m.range(ApiKey::LeaveGroup) {
        let (group_name, member, _) = joined[(v as usize) % joined.len()].clone();
        let request = if v >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(group(&group_name))
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(text(&member)),
                    leave_group_request::MemberIdentity::default()
                        .with_member_id(text("no-such-member")),
                ])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(group(&group_name))
                .with_member_id(text(&member))
        };
        let _: Option<LeaveGroupResponse> = m.call(ApiKey::LeaveGroup, v, "member", &request);
    }
    for v in m.range(ApiKey::DeleteGroups) {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![
            group(&format!("matrix-commits-{}", 4 + v)),
            group("matrix-no-such-group"),
            group(&group_name),
        ]);
        let _: Option<DeleteGroupsResponse> =
            m.call(ApiKey::DeleteGroups, v, "empty, unknown, live", &request);
    }
}

fn producer_id_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::InitProducerId) {
        let mut request = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        if v >= 3 {
            request = request
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
        }
        let _: Option<InitProducerIdResponse> =
            m.call(ApiKey::InitProducerId, v, "idempotent", &request);
        let txn = request.with_transactional_id(Some(TransactionalId(text("matrix-txn"))));
        let _: Option<InitProducerIdResponse> =
            m.call(ApiKey::InitProducerId, v, "transactional", &txn);
    }
}

fn txn_cases(m: &mut Matrix) {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    for v in m.range(ApiKey::AddPartitionsToTxn) {
        for (case, topic) in [("unknown producer", TOPIC), ("unknown topic", MISSING)] {
            let request = AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(text("matrix-txn-none")))
                .with_v3_and_below_producer_id(ProducerId(987_654))
                .with_v3_and_below_producer_epoch(0)
                .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                    .with_name(name(topic))
                    .with_partitions(vec![0, 1])]);
            let _: Option<AddPartitionsToTxnResponse> =
                m.call(ApiKey::AddPartitionsToTxn, v, case, &request);
        }
    }
    for v in m.range(ApiKey::AddOffsetsToTxn) {
        let request = AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(text("matrix-txn-none")))
            .with_producer_id(ProducerId(987_654))
            .with_producer_epoch(0)
            .with_group_id(group("matrix-txn-group"));
        let _: Option<AddOffsetsToTxnResponse> =
            m.call(ApiKey::AddOffsetsToTxn, v, "unknown producer", &request);
    }
    for v in m.range(ApiKey::TxnOffsetCommit) {
        use kafka_protocol::messages::txn_offset_commit_request::{
            TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
        };
        for (case, topic) in [("unknown producer", TOPIC), ("unknown topic", MISSING)] {
            let request = TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(text("matrix-txn-none")))
                .with_group_id(group("matrix-txn-group"))
                .with_producer_id(ProducerId(987_654))
                .with_producer_epoch(0)
                .with_generation_id(-1)
                .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                    .with_name(name(topic))
                    .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1)
                        .with_committed_leader_epoch(-1)])]);
            let _: Option<TxnOffsetCommitResponse> =
                m.call(ApiKey::TxnOffsetCommit, v, case, &request);
        }
    }
    for v in m.range(ApiKey::EndTxn) {
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(text("matrix-txn-none")))
            .with_producer_id(ProducerId(987_654))
            .with_producer_epoch(0)
            .with_committed(true);
        let _: Option<EndTxnResponse> = m.call(ApiKey::EndTxn, v, "unknown producer", &request);
    }
    for v in m.range(ApiKey::WriteTxnMarkers) {
        use kafka_protocol::messages::write_txn_markers_request::{
            WritableTxnMarker, WritableTxnMarkerTopic,
        };
        let request =
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(987_654))
                .with_producer_epoch(0)
                .with_transaction_result(false)
                .with_coordinator_epoch(0)
                .with_topics(vec![
                    WritableTxnMarkerTopic::default()
                        .with_name(name(TOPIC))
                        .with_partition_indexes(vec![0]),
                    WritableTxnMarkerTopic::default()
                        .with_name(name(MISSING))
                        .with_partition_indexes(vec![0]),
                ])]);
        let _: Option<WriteTxnMarkersResponse> =
            m.call(ApiKey::WriteTxnMarkers, v, "known and unknown", &request);
    }
    for v in m.range(ApiKey::DescribeTransactions) {
        let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![
            TransactionalId(text("matrix-txn")),
            TransactionalId(text("matrix-txn-none")),
        ]);
        let _: Option<DescribeTransactionsResponse> = m.call(
            ApiKey::DescribeTransactions,
            v,
            "known and unknown",
            &request,
        );
    }
    for v in m.range(ApiKey::ListTransactions) {
        let request = ListTransactionsRequest::default()
            .with_state_filters(vec![text("Ongoing"), text("NoSuchState")])
            .with_duration_filter(if v >= 1 { 0 } else { -1 })
            .with_transactional_id_pattern((v >= 2).then(|| text("matrix-.*")));
        let _: Option<ListTransactionsResponse> =
            m.call(ApiKey::ListTransactions, v, "filtered", &request);
    }
}

fn describe_producers_cases(m: &mut Matrix) {
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    for v in m.range(ApiKey::DescribeProducers) {
        let request = DescribeProducersRequest::default().with_topics(vec![
            TopicRequest::default()
                .with_name(name(TOPIC))
                .with_partition_indexes(vec![0, 5]),
            TopicRequest::default()
                .with_name(name(MISSING))
                .with_partition_indexes(vec![0]),
        ]);
        if let Some(r) = m.call::<_, DescribeProducersResponse>(
            ApiKey::DescribeProducers,
            v,
            "known, out of range, unknown",
            &request,
        ) {
            let codes: Vec<i16> = r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .collect();
            m.check(codes == [0, 3, 3], || {
                format!("DescribeProducers v{v}: {r:?}")
            });
        }
    }
}

fn cluster_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::DescribeCluster) {
        let request =
            DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
        if let Some(r) =
            m.call::<_, DescribeClusterResponse>(ApiKey::DescribeCluster, v, "brokers", &request)
        {
            m.check(
                r.error_code == 0
                    && r.error_message.is_none()
                    && r.brokers.len() == 1
                    && r.cluster_authorized_operations == 8096,
                || format!("DescribeCluster v{v}: {r:?}"),
            );
        }
        if v >= 1 {
            let controllers = request.with_endpoint_type(2);
            if let Some(r) = m.call::<_, DescribeClusterResponse>(
                ApiKey::DescribeCluster,
                v,
                "controllers endpoint",
                &controllers,
            ) {
                m.check(r.error_code == 115, || {
                    format!("DescribeCluster v{v}: controllers code {}", r.error_code)
                });
            }
        }
    }
    for v in m.range(ApiKey::ElectLeaders) {
        use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
        use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
        // A single node: its partitions need no election; a missing one is unknown; an
        // election of every partition answers none (Kafka leaves out those not needed).
        let request = ElectLeadersRequest::default()
            .with_election_type(0)
            .with_timeout_ms(1000)
            .with_topic_partitions(Some(vec![
                TopicPartitions::default()
                    .with_topic(name(TOPIC))
                    .with_partitions(vec![0]),
                TopicPartitions::default()
                    .with_topic(name(MISSING))
                    .with_partitions(vec![0]),
            ]));
        if let Some(r) =
            m.call::<_, ElectLeadersResponse>(ApiKey::ElectLeaders, v, "named", &request)
        {
            let codes: Vec<(String, i32, i16, bool)> = r
                .replica_election_results
                .iter()
                .flat_map(|t| {
                    t.partition_result.iter().map(|p| {
                        (
                            t.topic.0.to_string(),
                            p.partition_id,
                            p.error_code,
                            p.error_message.is_some(),
                        )
                    })
                })
                .collect();
            m.check(
                r.error_code == 0
                    && codes
                        == vec![
                            (TOPIC.to_string(), 0, 84, true),
                            (MISSING.to_string(), 0, 3, true),
                        ],
                || format!("ElectLeaders v{v}: {r:?}"),
            );
        }
        // v0 has no election type (preferred); v1+ ask an unclean one.
        let every = ElectLeadersRequest::default()
            .with_election_type(if v == 0 { 0 } else { 1 })
            .with_timeout_ms(1000)
            .with_topic_partitions(None);
        if let Some(r) =
            m.call::<_, ElectLeadersResponse>(ApiKey::ElectLeaders, v, "every partition", &every)
        {
            m.check(
                r.error_code == 0 && r.replica_election_results.is_empty(),
                || format!("ElectLeaders v{v} (all partitions): {r:?}"),
            );
        }
    }
    for v in m.range(ApiKey::AlterPartitionReassignments) {
        use kafka_protocol::messages::alter_partition_reassignments_request::{
            ReassignablePartition, ReassignableTopic,
        };
        use kafka_protocol::messages::{
            AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
        };
        // A single node: its own list is no move, another broker is invalid, nothing is in
        // progress to cancel, a missing topic is unknown.
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(1000)
            .with_topics(vec![
                ReassignableTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![
                        ReassignablePartition::default()
                            .with_partition_index(0)
                            .with_replicas(Some(vec![BrokerId(0)])),
                        ReassignablePartition::default()
                            .with_partition_index(1)
                            .with_replicas(None),
                    ]),
                ReassignableTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![ReassignablePartition::default()
                        .with_partition_index(1)
                        .with_replicas(Some(vec![BrokerId(7)]))]),
                ReassignableTopic::default()
                    .with_name(name(MISSING))
                    .with_partitions(vec![ReassignablePartition::default()
                        .with_partition_index(0)
                        .with_replicas(Some(vec![BrokerId(0)]))]),
            ]);
        if let Some(r) = m.call::<_, AlterPartitionReassignmentsResponse>(
            ApiKey::AlterPartitionReassignments,
            v,
            "single node",
            &request,
        ) {
            let codes: Vec<(String, i32, i16, bool)> = r
                .responses
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(|p| {
                        (
                            t.name.0.to_string(),
                            p.partition_index,
                            p.error_code,
                            p.error_message.is_some(),
                        )
                    })
                })
                .collect();
            m.check(
                r.error_code == 0
                    && codes
                        == vec![
                            (TOPIC.to_string(), 0, 0, false),
                            (TOPIC.to_string(), 1, 85, true),
                            (TOPIC.to_string(), 1, 39, true),
                            (MISSING.to_string(), 0, 3, true),
                        ],
                || format!("AlterPartitionReassignments v{v}: {r:?}"),
            );
        }
        if v >= 1 {
            // KIP-860: a different replication factor, not allowed.
            let request = AlterPartitionReassignmentsRequest::default()
                .with_allow_replication_factor_change(false)
                .with_topics(vec![ReassignableTopic::default()
                    .with_name(name(TOPIC))
                    .with_partitions(vec![ReassignablePartition::default()
                        .with_partition_index(0)
                        .with_replicas(Some(vec![BrokerId(0), BrokerId(1)]))])]);
            if let Some(r) = m.call::<_, AlterPartitionReassignmentsResponse>(
                ApiKey::AlterPartitionReassignments,
                v,
                "factor change refused",
                &request,
            ) {
                let code = r.responses.first().and_then(|t| t.partitions.first());
                m.check(
                    !r.allow_replication_factor_change && code.is_some_and(|p| p.error_code == 38),
                    || format!("AlterPartitionReassignments v{v}: {r:?}"),
                );
            }
        }
    }
    for v in m.range(ApiKey::ListPartitionReassignments) {
        use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
        use kafka_protocol::messages::{
            ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
        };
        for topics in [
            None,
            Some(vec![ListPartitionReassignmentsTopics::default()
                .with_name(name(TOPIC))
                .with_partition_indexes(vec![0, 1])]),
        ] {
            let request = ListPartitionReassignmentsRequest::default()
                .with_timeout_ms(1000)
                .with_topics(topics);
            if let Some(r) = m.call::<_, ListPartitionReassignmentsResponse>(
                ApiKey::ListPartitionReassignments,
                v,
                "none under way",
                &request,
            ) {
                m.check(r.error_code == 0 && r.topics.is_empty(), || {
                    format!("ListPartitionReassignments v{v}: {r:?}")
                });
            }
        }
    }
    for v in m.range(ApiKey::UnregisterBroker) {
        use kafka_protocol::messages::{UnregisterBrokerRequest, UnregisterBrokerResponse};
        // A single node has no registrations to remove (INVALID_REQUEST); a cluster has none
        // for broker 7 (BROKER_ID_NOT_REGISTERED).
        let request = UnregisterBrokerRequest::default().with_broker_id(BrokerId(7));
        let expected = if m.cluster { 102 } else { 42 };
        if let Some(r) = m.call::<_, UnregisterBrokerResponse>(
            ApiKey::UnregisterBroker,
            v,
            "not registered",
            &request,
        ) {
            m.check(
                r.error_code == expected && r.error_message.is_some(),
                || format!("UnregisterBroker v{v}: {r:?}"),
            );
        }
    }
    for v in m.range(ApiKey::AddRaftVoter) {
        use kafka_protocol::messages::{AddRaftVoterRequest, AddRaftVoterResponse};
        // A single node has no controller quorum, a cluster no broker 7; a foreign cluster id
        // is refused first.
        let unregistered = if m.cluster { 102 } else { 42 };
        for (cluster_id, code) in [(None, unregistered), (Some("not-this-one"), 104)] {
            let request = AddRaftVoterRequest::default()
                .with_cluster_id(cluster_id.map(StrBytes::from_static_str))
                .with_voter_id(7);
            if let Some(r) =
                m.call::<_, AddRaftVoterResponse>(ApiKey::AddRaftVoter, v, "refused", &request)
            {
                m.check(r.error_code == code && r.error_message.is_some(), || {
                    format!("AddRaftVoter v{v}: {r:?}")
                });
            }
        }
    }
    for v in m.range(ApiKey::RemoveRaftVoter) {
        use kafka_protocol::messages::{RemoveRaftVoterRequest, RemoveRaftVoterResponse};
        // A single node has no quorum; a one-seed cluster's only voter is the last one: both
        // INVALID_REQUEST.
        let request = RemoveRaftVoterRequest::default().with_voter_id(0);
        if let Some(r) =
            m.call::<_, RemoveRaftVoterResponse>(ApiKey::RemoveRaftVoter, v, "refused", &request)
        {
            m.check(r.error_code == 42 && r.error_message.is_some(), || {
                format!("RemoveRaftVoter v{v}: {r:?}")
            });
        }
    }
    for v in m.range(ApiKey::DescribeQuorum) {
        use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
        use kafka_protocol::messages::{DescribeQuorumRequest, DescribeQuorumResponse};
        // A single node has no quorum: the metadata partition and any other are unknown. A
        // cluster describes its metadata partition (led by node 0 here), and names its voters'
        // endpoints in `nodes` from v2 (the field does not exist before).
        let request = DescribeQuorumRequest::default().with_topics(vec![
            TopicData::default()
                .with_topic_name(name("__cluster_metadata"))
                .with_partitions(vec![PartitionData::default().with_partition_index(0)]),
            TopicData::default()
                .with_topic_name(name(TOPIC))
                .with_partitions(vec![PartitionData::default().with_partition_index(1)]),
        ]);
        if let Some(r) =
            m.call::<_, DescribeQuorumResponse>(ApiKey::DescribeQuorum, v, "typical", &request)
        {
            let codes: Vec<(i32, i16, i32, bool)> = r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .map(|p| {
                    (
                        p.partition_index,
                        p.error_code,
                        p.leader_id.0,
                        // The message field exists from v2 on: null on success, the
                        // reason on an error.
                        v < 2 || p.error_message.is_some() == (p.error_code != 0),
                    )
                })
                .collect();
            let (metadata, nodes) = if m.cluster {
                ((0, 0, 0, true), usize::from(v >= 2))
            } else {
                ((0, 3, -1, true), 0)
            };
            m.check(
                r.error_code == 0
                    && codes == vec![metadata, (1, 3, -1, true)]
                    && r.nodes.len() == nodes,
                || format!("DescribeQuorum v{v}: {r:?}"),
            );
        }
    }
    for v in m.range(ApiKey::DescribeLogDirs) {
        let asked = DescribeLogDirsRequest::default().with_topics(Some(vec![
            describe_log_dirs_request::DescribableLogDirTopic::default()
                .with_topic(name(TOPIC))
                .with_partitions(vec![0, 1, 9]),
            describe_log_dirs_request::DescribableLogDirTopic::default()
                .with_topic(name(MISSING))
                .with_partitions(vec![0]),
        ]));
        if let Some(r) =
            m.call::<_, DescribeLogDirsResponse>(ApiKey::DescribeLogDirs, v, "some", &asked)
        {
            let dir = &r.results[0];
            let listed: Vec<(String, i32, i64)> = dir
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (t.name.0.to_string(), p.partition_index, p.partition_size))
                })
                .collect();
            m.check(
                listed.len() == 2
                    && listed[0].0 == TOPIC
                    && listed[0].1 == 0
                    && listed[0].2 > 0
                    && listed[1].1 == 1,
                || format!("DescribeLogDirs v{v}: {listed:?}"),
            );
            m.check(
                v < 4 || (dir.total_bytes > 0 && dir.usable_bytes > 0),
                || {
                    format!(
                        "DescribeLogDirs v{v}: space {} {}",
                        dir.total_bytes, dir.usable_bytes
                    )
                },
            );
        }
        let all = DescribeLogDirsRequest::default().with_topics(None);
        let _: Option<DescribeLogDirsResponse> = m.call(ApiKey::DescribeLogDirs, v, "all", &all);
    }
    for v in m.range(ApiKey::ListConfigResources) {
        let every = ListConfigResourcesRequest::default();
        if let Some(r) = m.call::<_, ListConfigResourcesResponse>(
            ApiKey::ListConfigResources,
            v,
            "every type",
            &every,
        ) {
            let has_topic = r
                .config_resources
                .iter()
                .any(|c| c.resource_name.as_str() == TOPIC);
            m.check(r.error_code == 0 && has_topic == (v >= 1), || {
                format!("ListConfigResources v{v}: {r:?}")
            });
        }
        if v >= 1 {
            let bad = ListConfigResourcesRequest::default().with_resource_types(vec![99]);
            if let Some(r) = m.call::<_, ListConfigResourcesResponse>(
                ApiKey::ListConfigResources,
                v,
                "unknown type",
                &bad,
            ) {
                m.check(r.error_code == 42, || {
                    format!("ListConfigResources v{v}: code {}", r.error_code)
                });
            }
        }
    }
    let mut subscription = None;
    for v in m.range(ApiKey::GetTelemetrySubscriptions) {
        let new_client = GetTelemetrySubscriptionsRequest::default();
        if let Some(r) = m.call::<_, GetTelemetrySubscriptionsResponse>(
            ApiKey::GetTelemetrySubscriptions,
            v,
            "new client instance",
            &new_client,
        ) {
            m.check(
                r.error_code == 0
                    && !r.client_instance_id.is_nil()
                    && r.push_interval_ms > 0
                    && !r.requested_metrics.is_empty(),
                || format!("GetTelemetrySubscriptions v{v}: {r:?}"),
            );
            subscription = Some((r.client_instance_id, r.subscription_id));
        }
    }
    for v in m.range(ApiKey::PushTelemetry) {
        let Some((instance, subscription_id)) = subscription else {
            m.failures
                .push("PushTelemetry without GetTelemetrySubscriptions".into());
            break;
        };
        let push = |subscription_id: i32, compression: i8, metrics: &'static [u8]| {
            PushTelemetryRequest::default()
                .with_client_instance_id(instance)
                .with_subscription_id(subscription_id)
                .with_compression_type(compression)
                .with_metrics(Bytes::from_static(metrics))
        };
        // An empty MetricsData (no bytes) is valid protobuf: accepted.
        for (what, request, code) in [
            ("empty metrics", push(subscription_id, 0, b""), 0),
            ("stale subscription", push(subscription_id ^ 1, 0, b""), 117),
            ("unknown compression", push(subscription_id, 7, b""), 76),
            (
                "undecodable metrics",
                push(subscription_id, 0, b"\xff\xff"),
                87,
            ),
        ] {
            if let Some(r) =
                m.call::<_, PushTelemetryResponse>(ApiKey::PushTelemetry, v, what, &request)
            {
                m.check(r.error_code == code, || {
                    format!("PushTelemetry v{v} {what}: code {}", r.error_code)
                });
            }
        }
    }
    for v in m.range(ApiKey::DescribeTopicPartitions) {
        let invalid = DescribeTopicPartitionsRequest::default()
            .with_topics(vec![
                describe_topic_partitions_request::TopicRequest::default()
                    .with_name(name("bad$#!")),
            ])
            .with_response_partition_limit(10);
        if let Some(r) = m.call::<_, DescribeTopicPartitionsResponse>(
            ApiKey::DescribeTopicPartitions,
            v,
            "invalid name",
            &invalid,
        ) {
            let code = r.topics[0].error_code;
            m.check(code == 17, || {
                format!("DescribeTopicPartitions v{v}: invalid name code {code}")
            });
        }
        let request = DescribeTopicPartitionsRequest::default()
            .with_topics(vec![
                describe_topic_partitions_request::TopicRequest::default().with_name(name(TOPIC)),
                describe_topic_partitions_request::TopicRequest::default().with_name(name(MISSING)),
            ])
            .with_response_partition_limit(1);
        if let Some(r) = m.call::<_, DescribeTopicPartitionsResponse>(
            ApiKey::DescribeTopicPartitions,
            v,
            "first page",
            &request,
        ) {
            let cursor = r
                .next_cursor
                .as_ref()
                .map(|c| (c.topic_name.0.to_string(), c.partition_index));
            m.check(
                r.topics.len() == 1
                    && r.topics[0].partitions.len() == 1
                    && cursor == Some((TOPIC.to_string(), 1)),
                || format!("DescribeTopicPartitions v{v}: first page {r:?}"),
            );
            let next = request
                .clone()
                .with_response_partition_limit(10)
                .with_cursor(Some(
                    describe_topic_partitions_request::Cursor::default()
                        .with_topic_name(name(TOPIC))
                        .with_partition_index(1),
                ));
            if let Some(r) = m.call::<_, DescribeTopicPartitionsResponse>(
                ApiKey::DescribeTopicPartitions,
                v,
                "second page",
                &next,
            ) {
                // Name order: "matrix" then "matrix-missing" (unknown).
                let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
                m.check(
                    codes == [0, 3]
                        && r.topics[0].partitions[0].partition_index == 1
                        && r.next_cursor.is_none(),
                    || format!("DescribeTopicPartitions v{v}: second page {r:?}"),
                );
            }
        }
    }
}

/// On a PLAINTEXT listener SaslHandshake and SaslAuthenticate are answered with
/// ILLEGAL_SASL_STATE, as Kafka answers them (the SASL listeners' own exchanges are in
/// `tests/sasl.rs`).
fn sasl_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::SaslHandshake) {
        let request = SaslHandshakeRequest::default().with_mechanism(text("PLAIN"));
        if let Some(r) = m.call::<_, SaslHandshakeResponse>(
            ApiKey::SaslHandshake,
            v,
            "no SASL on this listener",
            &request,
        ) {
            m.check(r.error_code == 34 && r.mechanisms.is_empty(), || {
                format!("SaslHandshake v{v}: {r:?}")
            });
        }
    }
    for v in m.range(ApiKey::SaslAuthenticate) {
        let request = SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from_static(b"\0user\0password"));
        if let Some(r) = m.call::<_, SaslAuthenticateResponse>(
            ApiKey::SaslAuthenticate,
            v,
            "no SASL on this listener",
            &request,
        ) {
            m.check(r.error_code == 34 && r.error_message.is_some(), || {
                format!("SaslAuthenticate v{v}: {r:?}")
            });
        }
    }
}

/// SCRAM users: set, described, refused the way Kafka refuses bad changes.
fn scram_credential_cases(m: &mut Matrix) {
    use alter_user_scram_credentials_request::{ScramCredentialDeletion, ScramCredentialUpsertion};
    let upsert = |user: &str, mechanism: i8, iterations: i32| {
        ScramCredentialUpsertion::default()
            .with_name(text(user))
            .with_mechanism(mechanism)
            .with_iterations(iterations)
            .with_salt(Bytes::from_static(b"salt"))
            .with_salted_password(Bytes::from_static(&[7u8; 32]))
    };
    let delete = |user: &str, mechanism: i8| {
        ScramCredentialDeletion::default()
            .with_name(text(user))
            .with_mechanism(mechanism)
    };
    for v in m.range(ApiKey::AlterUserScramCredentials) {
        let request = AlterUserScramCredentialsRequest::default()
            .with_upsertions(vec![
                upsert("matrix-user", 1, 4096),
                upsert("few-iterations", 1, 100),
                upsert("odd-mechanism", 9, 4096),
                upsert("", 2, 4096),
            ])
            .with_deletions(vec![
                delete("nobody", 2),
                delete("twice", 1),
                delete("twice", 1),
            ]);
        if let Some(r) = m.call::<_, AlterUserScramCredentialsResponse>(
            ApiKey::AlterUserScramCredentials,
            v,
            "ok and every refusal",
            &request,
        ) {
            let codes: Vec<(String, i16)> = r
                .results
                .iter()
                .map(|r| (r.user.to_string(), r.error_code))
                .collect();
            let expected: Vec<(String, i16)> = [
                ("nobody", 91),
                ("twice", 92),
                ("matrix-user", 0),
                ("few-iterations", 93),
                ("odd-mechanism", 33),
                ("", 93),
            ]
            .iter()
            .map(|(u, c)| (u.to_string(), *c))
            .collect();
            m.check(codes == expected, || {
                format!("AlterUserScramCredentials v{v}: {codes:?}")
            });
        }
    }
    for v in m.range(ApiKey::DescribeUserScramCredentials) {
        if let Some(r) = m.call::<_, DescribeUserScramCredentialsResponse>(
            ApiKey::DescribeUserScramCredentials,
            v,
            "all users",
            &DescribeUserScramCredentialsRequest::default(),
        ) {
            m.check(
                r.error_code == 0
                    && r.results.len() == 1
                    && r.results[0].user.as_str() == "matrix-user"
                    && r.results[0].credential_infos.len() == 1
                    && r.results[0].credential_infos[0].iterations == 4096,
                || format!("DescribeUserScramCredentials v{v}: all {r:?}"),
            );
        }
        let named = DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
            describe_user_scram_credentials_request::UserName::default()
                .with_name(text("matrix-user")),
            describe_user_scram_credentials_request::UserName::default().with_name(text("nobody")),
            describe_user_scram_credentials_request::UserName::default().with_name(text("nobody")),
        ]));
        if let Some(r) = m.call::<_, DescribeUserScramCredentialsResponse>(
            ApiKey::DescribeUserScramCredentials,
            v,
            "known, unknown and twice",
            &named,
        ) {
            let codes: Vec<i16> = r.results.iter().map(|r| r.error_code).collect();
            m.check(codes == [0, 92, 92], || {
                format!("DescribeUserScramCredentials v{v}: named {r:?}")
            });
        }
    }
}

/// This broker runs without an authorizer: the ACL APIs answer SECURITY_DISABLED, as Kafka's
/// do (`tests/acls.rs` covers them with ACLs on).
fn acl_cases(m: &mut Matrix) {
    for v in m.range(ApiKey::CreateAcls) {
        let request = CreateAclsRequest::default().with_creations(vec![
            create_acls_request::AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(text(TOPIC))
                .with_resource_pattern_type(3)
                .with_principal(text("User:alice"))
                .with_host(text("*"))
                .with_operation(3)
                .with_permission_type(3),
        ]);
        if let Some(r) =
            m.call::<_, CreateAclsResponse>(ApiKey::CreateAcls, v, "no authorizer", &request)
        {
            m.check(
                r.results.len() == 1 && r.results[0].error_code == 54,
                || format!("CreateAcls v{v}: {r:?}"),
            );
        }
    }
    for v in m.range(ApiKey::DescribeAcls) {
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(1)
            .with_pattern_type_filter(1)
            .with_operation(1)
            .with_permission_type(1);
        if let Some(r) =
            m.call::<_, DescribeAclsResponse>(ApiKey::DescribeAcls, v, "no authorizer", &request)
        {
            m.check(r.error_code == 54 && r.resources.is_empty(), || {
                format!("DescribeAcls v{v}: {r:?}")
            });
        }
    }
    for v in m.range(ApiKey::DeleteAcls) {
        let request = DeleteAclsRequest::default().with_filters(vec![
            delete_acls_request::DeleteAclsFilter::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ]);
        if let Some(r) =
            m.call::<_, DeleteAclsResponse>(ApiKey::DeleteAcls, v, "no authorizer", &request)
        {
            m.check(
                r.filter_results.len() == 1 && r.filter_results[0].error_code == 54,
                || format!("DeleteAcls v{v}: {r:?}"),
            );
        }
    }
}

/// Client quotas: set for a user and the default client id, described back, refused when the
/// key is no quota.
fn quota_cases(m: &mut Matrix) {
    let entity = |kind: &str, name: Option<&str>| {
        alter_client_quotas_request::EntityData::default()
            .with_entity_type(text(kind))
            .with_entity_name(name.map(text))
    };
    for v in m.range(ApiKey::AlterClientQuotas) {
        let request = AlterClientQuotasRequest::default().with_entries(vec![
            alter_client_quotas_request::EntryData::default()
                .with_entity(vec![
                    entity("user", Some("matrix")),
                    entity("client-id", None),
                ])
                .with_ops(vec![alter_client_quotas_request::OpData::default()
                    .with_key(text("consumer_byte_rate"))
                    .with_value(1e9)]),
            alter_client_quotas_request::EntryData::default()
                .with_entity(vec![entity("client-id", Some("x"))])
                .with_ops(vec![alter_client_quotas_request::OpData::default()
                    .with_key(text("not_a_quota"))
                    .with_value(1.0)]),
        ]);
        if let Some(r) = m.call::<_, AlterClientQuotasResponse>(
            ApiKey::AlterClientQuotas,
            v,
            "ok and a bad key",
            &request,
        ) {
            let codes: Vec<i16> = r.entries.iter().map(|e| e.error_code).collect();
            m.check(codes == [0, 42], || {
                format!("AlterClientQuotas v{v}: {r:?}")
            });
        }
    }
    for v in m.range(ApiKey::DescribeClientQuotas) {
        let request = DescribeClientQuotasRequest::default().with_components(vec![
            describe_client_quotas_request::ComponentData::default()
                .with_entity_type(text("user"))
                .with_match_type(2),
        ]);
        if let Some(r) = m.call::<_, DescribeClientQuotasResponse>(
            ApiKey::DescribeClientQuotas,
            v,
            "specified users",
            &request,
        ) {
            let found = r.entries.as_ref().map_or(0, Vec::len);
            m.check(r.error_code == 0 && found == 1, || {
                format!("DescribeClientQuotas v{v}: {r:?}")
            });
        }
    }
}
