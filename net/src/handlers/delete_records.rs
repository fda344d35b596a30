//! DeleteRecords (key 21): moves partitions' log start offsets up (-1: to the high watermark);
//! whole segments below the new start are deleted. Answers the new low watermark.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{ApiKey, DeleteRecordsRequest, DeleteRecordsResponse};
use sluice_core::offsets;

use crate::apis::ApiRange;
use crate::handlers::{for_allowed, Context};
use sluice_core::acls::Operation;
use sluice_core::ResponseError;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DeleteRecords,
    min_version: 0,
    max_version: 2,
};

pub async fn handle(request: DeleteRecordsRequest, ctx: &Context) -> DeleteRecordsResponse {
    let asked: Vec<(String, i32, i64)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index, p.offset))
        })
        .collect();
    // Deleting records takes DELETE on the topic.
    let answers = for_allowed(
        asked.clone(),
        |(topic, _, _): &(String, i32, i64)| ctx.allows_topic(Operation::DELETE, topic),
        || (Some(ResponseError::TopicAuthorizationFailed), -1),
        |allowed| offsets::delete_records(&ctx.shard, allowed),
    )
    .await;
    for ((topic, partition, offset), (error, _)) in asked.iter().zip(&answers) {
        ctx.audit_change(
            "TOPIC",
            topic,
            (error.map_or(0, |e| e.code()), None),
            serde_json::json!({"partition": partition, "before_offset": offset}),
        );
    }
    let mut answers = answers.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let (error, low) = answers.next().expect("one answer per partition");
                    DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(low)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
