//! OffsetForLeaderEpoch (key 23, KIP-101/KIP-320): where a leader epoch ends in a partition's
//! log, so a client (or a follower) whose position came from an older leader can tell whether
//! the log it read was truncated. On the leader only; `current_leader_epoch` (v2+) fences a
//! client behind (FENCED_LEADER_EPOCH) or ahead (UNKNOWN_LEADER_EPOCH) of it. See
//! `sluice_core::offsets::offset_for_leader_epoch`.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{ApiKey, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_core::offsets::{self, EpochQuery};

use crate::apis::ApiRange;
use crate::handlers::{for_allowed, Context};
use sluice_core::acls::Operation;
use sluice_core::ResponseError;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::OffsetForLeaderEpoch,
    // v0 answers without the epoch; librdkafka and the Java client use v2+.
    min_version: 2,
    max_version: 4,
};

pub async fn handle(
    request: OffsetForLeaderEpochRequest,
    ctx: &Context,
) -> OffsetForLeaderEpochResponse {
    let queries = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| EpochQuery {
                topic: t.topic.0.to_string(),
                partition: p.partition,
                current_leader_epoch: p.current_leader_epoch,
                leader_epoch: p.leader_epoch,
            })
        })
        .collect();
    // Taking DESCRIBE on the topic, as Kafka's consumers ask it.
    let mut answers = for_allowed(
        queries,
        |q: &EpochQuery| ctx.allows_topic(Operation::DESCRIBE, &q.topic),
        || offsets::EpochAnswer {
            error: Some(ResponseError::TopicAuthorizationFailed),
            leader_epoch: -1,
            end_offset: -1,
        },
        |allowed| offsets::offset_for_leader_epoch(&ctx.shard, allowed),
    )
    .await
    .into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let a = answers.next().expect("one answer per partition");
                    EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_error_code(a.error.map_or(0, |e| e.code()))
                        .with_leader_epoch(a.leader_epoch)
                        .with_end_offset(a.end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
