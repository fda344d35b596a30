//! OffsetFetch (key 9): a group's committed offsets (-1 where none), for the asked partitions or
//! all of them; v8+ asks for several groups at once. v7+ `require_stable` (KIP-447, what
//! read_committed consumers send): a partition with an offset committed in a transaction that
//! has not ended yet answers UNSTABLE_OFFSET_COMMIT (offset -1), and the client asks again. With an authorizer: DESCRIBE on the group
//! (GROUP_AUTHORIZATION_FAILED), and topics without DESCRIBE left out (Kafka answers named
//! ones TOPIC_AUTHORIZATION_FAILED per partition; here they are absent).

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::groups::{self, Committed, FetchedOffset};
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::{Operation, ResourceType};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::OffsetFetch,
    min_version: 1,
    max_version: 9,
};

const GROUPS_FROM: i16 = 8;

type Fetched = Result<Vec<FetchedOffset>, ResponseError>;

/// One topic's partitions and their answers.
type TopicOffsets = (String, Vec<FetchedOffset>);

/// Groups the flat answer by topic, in first-seen order.
fn by_topic(rows: Vec<FetchedOffset>) -> Vec<TopicOffsets> {
    let mut out: Vec<TopicOffsets> = Vec::new();
    for row in rows {
        match out.iter_mut().find(|(name, _)| *name == row.topic) {
            Some((_, parts)) => parts.push(row),
            None => out.push((row.topic.clone(), vec![row])),
        }
    }
    out
}

/// One group's offsets. Takes DESCRIBE on the group (GROUP_AUTHORIZATION_FAILED); topics the
/// principal may not DESCRIBE are left out of the answer.
async fn fetch_group(
    ctx: &Context,
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Fetched {
    if !ctx.allows_group(Operation::DESCRIBE, &group) {
        return Err(ResponseError::GroupAuthorizationFailed);
    }
    let topics = topics.map(|ts| {
        ts.into_iter()
            .filter(|(t, _)| ctx.allows_topic(Operation::DESCRIBE, t))
            .collect::<Vec<_>>()
    });
    let wanted = topics.map(|ts| {
        ts.into_iter()
            .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
            .collect()
    });
    let rows = groups::fetch_offsets(&ctx.shard, group, wanted, require_stable).await?;
    if !ctx.has_authorizer() {
        return Ok(rows);
    }
    // Every committed topic: those the principal may not see are left out, unlogged.
    Ok(rows
        .into_iter()
        .filter(|row| ctx.allows_unaudited(Operation::DESCRIBE, ResourceType::Topic, &row.topic))
        .collect())
}

pub async fn handle(
    request: OffsetFetchRequest,
    version: i16,
    ctx: &Context,
) -> OffsetFetchResponse {
    if version < GROUPS_FROM {
        let topics = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let require_stable = request.require_stable;
        return match fetch_group(ctx, request.group_id.0.to_string(), topics, require_stable).await
        {
            Err(code) => OffsetFetchResponse::default().with_error_code(code.code()),
            Ok(rows) => OffsetFetchResponse::default().with_topics(
                by_topic(rows)
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t)))
                            .with_partitions(
                                parts
                                    .into_iter()
                                    .map(|row| {
                                        let (offset, epoch, metadata) = committed(row.committed);
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(row.partition)
                                            .with_error_code(unstable_code(row.unstable))
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(StrBytes::from_string(metadata)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        };
    }
    let mut groups_out = Vec::with_capacity(request.groups.len());
    for g in request.groups {
        let topics = g.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let group =
            OffsetFetchResponseGroup::default().with_group_id(GroupId(g.group_id.0.clone()));
        groups_out.push(
            match fetch_group(
                ctx,
                g.group_id.0.to_string(),
                topics,
                request.require_stable,
            )
            .await
            {
                Err(code) => group.with_error_code(code.code()),
                Ok(rows) => group.with_topics(
                    by_topic(rows)
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(StrBytes::from_string(t)))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|row| {
                                            let (offset, epoch, metadata) =
                                                committed(row.committed);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(row.partition)
                                                .with_error_code(unstable_code(row.unstable))
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(Some(StrBytes::from_string(
                                                    metadata,
                                                )))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            },
        );
    }
    OffsetFetchResponse::default().with_groups(groups_out)
}

fn unstable_code(unstable: bool) -> i16 {
    if unstable {
        ResponseError::UnstableOffsetCommit.code()
    } else {
        0
    }
}

/// (offset, leader epoch, metadata); -1 and empty when nothing is committed.
fn committed(c: Option<Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata),
        None => (-1, -1, String::new()),
    }
}
