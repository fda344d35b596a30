//! OffsetDelete (key 47): removes a group's committed offsets for some partitions; refused per
//! partition with GROUP_SUBSCRIBED_TO_TOPIC while the group has members.

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetDeleteRequest, OffsetDeleteResponse};
use sluice_core::groups;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::OffsetDelete,
    min_version: 0,
    max_version: 0,
};

pub async fn handle(request: OffsetDeleteRequest, ctx: &Context) -> OffsetDeleteResponse {
    let partitions = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    // Deleting offsets takes DELETE on the group and READ on each topic.
    if !ctx.allows_group(Operation::DELETE, request.group_id.0.as_str()) {
        return OffsetDeleteResponse::default()
            .with_error_code(kafka_protocol::ResponseError::GroupAuthorizationFailed.code());
    }
    let results: Result<Vec<_>, _> = {
        let mut group_error = None;
        let results = crate::handlers::for_allowed(
            partitions,
            |(topic, _): &(String, i32)| ctx.allows_topic(Operation::READ, topic),
            || Some(kafka_protocol::ResponseError::TopicAuthorizationFailed),
            |allowed| async {
                match groups::delete_offsets(&ctx.shard, request.group_id.0.to_string(), allowed)
                    .await
                {
                    Ok(results) => results,
                    Err(code) => {
                        group_error = Some(code);
                        Vec::new()
                    }
                }
            },
        )
        .await;
        match group_error {
            Some(code) => Err(code),
            None => Ok(results),
        }
    };
    let results = match results {
        Ok(results) => results,
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code.code()),
    };
    let mut results = results.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = results.next().flatten();
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
