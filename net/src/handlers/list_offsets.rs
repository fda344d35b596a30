//! ListOffsets (key 2): earliest (-2), latest (-1), or the first offset at or after a
//! timestamp; -4 (earliest local) is the earliest, -5 (latest tiered) has none (no tiered
//! storage); -3 (max timestamp, KIP-734) is not served yet.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};
use sluice_core::offsets::{self, OffsetQuery};
use sluice_core::TopicRef;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::ListOffsets,
    min_version: 1,
    max_version: 10,
};

pub async fn handle(request: ListOffsetsRequest, ctx: &Context) -> ListOffsetsResponse {
    let queries = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| OffsetQuery {
                topic: TopicRef::Name(t.name.0.to_string()),
                partition: p.partition_index,
                timestamp: p.timestamp,
            })
        })
        .collect();
    let mut answers = offsets::list_offsets(&ctx.shard, queries).await.into_iter();
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
                        .with_leader_epoch(sluice_core::partition::LEADER_EPOCH.0)
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
