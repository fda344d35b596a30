//! OffsetCommit (key 8): a group member's (or, with generation -1, a group without members')
//! committed offsets, made durable in `__consumer_offsets` before the answer.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::groups::{self, Committed};

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::OffsetCommit,
    min_version: 2,
    max_version: 9,
};

/// A committed offset as a commit request carries it (no metadata: empty), committed at
/// `commit_ms`; OffsetCommit's and TxnOffsetCommit's partitions alike.
pub(crate) fn committed(
    offset: i64,
    leader_epoch: i32,
    metadata: Option<&StrBytes>,
    commit_ms: i64,
) -> Committed {
    Committed {
        offset,
        leader_epoch,
        metadata: metadata.map(|m| m.to_string()).unwrap_or_default(),
        commit_ms,
    }
}

pub async fn handle(request: OffsetCommitRequest, ctx: &Context) -> OffsetCommitResponse {
    let now = sluice_storage::types::now_ms();
    let offsets = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    committed(
                        p.committed_offset,
                        p.committed_leader_epoch,
                        p.committed_metadata.as_ref(),
                        now,
                    ),
                )
            })
        })
        .collect();
    // Committing takes READ on the group (else every partition is refused) and READ on each
    // topic (else that topic's partitions are).
    let group_allowed = ctx.allows_group(Operation::READ, request.group_id.0.as_str());
    let denied = if group_allowed {
        kafka_protocol::ResponseError::TopicAuthorizationFailed
    } else {
        kafka_protocol::ResponseError::GroupAuthorizationFailed
    };
    let mut results = crate::handlers::for_allowed(
        offsets,
        |(topic, _, _): &(String, i32, Committed)| {
            group_allowed && ctx.allows_topic(Operation::READ, topic)
        },
        || Some(denied),
        |allowed| {
            groups::commit_offsets(
                &ctx.shard,
                request.group_id.0.to_string(),
                request.generation_id_or_member_epoch,
                request.member_id.to_string(),
                request.group_instance_id.clone().map(|i| i.to_string()),
                allowed,
            )
        },
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
                    let error = results.next().flatten();
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
