//! ListOffsets (key 2): earliest (-2), latest (-1), the first offset at or after a timestamp,
//! or the first record with the largest timestamp (-3, KIP-734, v7+); -4 (earliest local) is
//! the earliest, -5 (latest tiered) has none (no tiered storage). read_committed (v2+) answers
//! the last stable offset for latest, and nothing past it by timestamp. The leader epoch (the
//! partition's current one) is answered from v4 only (the field does not exist before).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};
use sluice_core::offsets::{self, OffsetQuery};
use sluice_core::TopicRef;

use crate::apis::ApiRange;
use crate::handlers::{for_allowed, Context};
use sluice_core::acls::Operation;
use sluice_core::ResponseError;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::ListOffsets,
    min_version: 1,
    max_version: 10,
};

/// `isolation_level` of read_committed consumers (v2+; 0 is read_uncommitted).
const READ_COMMITTED: i8 = 1;

/// ListOffsets carries the leader epoch from v4 (KIP-320).
const LEADER_EPOCH_FROM: i16 = 4;

pub async fn handle(
    request: ListOffsetsRequest,
    version: i16,
    ctx: &Context,
) -> ListOffsetsResponse {
    let with_epoch = version >= LEADER_EPOCH_FROM;
    let queries = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| OffsetQuery {
                topic: TopicRef::Name(t.name.0.to_string()),
                partition: p.partition_index,
                timestamp: p.timestamp,
                current_leader_epoch: p.current_leader_epoch,
                read_committed: request.isolation_level == READ_COMMITTED,
            })
        })
        .collect();
    // Listing offsets takes DESCRIBE on the topic.
    let mut answers = for_allowed(
        queries,
        |q: &OffsetQuery| match &q.topic {
            TopicRef::Name(name) => ctx.allows_topic(Operation::DESCRIBE, name),
            TopicRef::Id(_) => true,
        },
        || offsets::OffsetAnswer {
            error: Some(ResponseError::TopicAuthorizationFailed),
            offset: -1,
            timestamp: -1,
            leader_epoch: -1,
        },
        |allowed| offsets::list_offsets(&ctx.shard, allowed),
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
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(a.error.map_or(0, |e| e.code()))
                        .with_offset(a.offset)
                        .with_timestamp(a.timestamp)
                        .with_leader_epoch(if with_epoch { a.leader_epoch } else { -1 })
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
