//! CreatePartitions (key 37): raise a topic's partition count. Manual assignments place the
//! new partitions' replicas in cluster mode; a single node ignores them (every partition lives
//! on it).

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{ApiKey, CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::controller;

use crate::apis::ApiRange;
use crate::handlers::{audit_outcome, unauthorized, Context};
use sluice_core::acls::Operation;
use sluice_core::ResponseError;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::CreatePartitions,
    min_version: 0,
    max_version: 3,
};

pub async fn handle(request: CreatePartitionsRequest, ctx: &Context) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        // Adding partitions takes ALTER on the topic.
        if !ctx.allows_topic(Operation::ALTER, topic.name.0.as_str()) {
            let denied = unauthorized(ResponseError::TopicAuthorizationFailed);
            results.push(
                CreatePartitionsTopicResult::default()
                    .with_name(topic.name)
                    .with_error_code(denied.code.code())
                    .with_error_message(Some(StrBytes::from_string(denied.message))),
            );
            continue;
        }
        let outcome = controller::create_partitions(
            &ctx.shard,
            topic.name.0.to_string(),
            topic.count,
            topic
                .assignments
                .iter()
                .flatten()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect(),
            request.validate_only,
        )
        .await;
        ctx.audit_change(
            "TOPIC",
            topic.name.0.as_str(),
            audit_outcome(outcome.as_ref().err()),
            serde_json::json!({"count": topic.count, "validate_only": request.validate_only}),
        );
        let result = CreatePartitionsTopicResult::default().with_name(topic.name);
        results.push(match outcome {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(e.code.code())
                .with_error_message(Some(StrBytes::from_string(e.message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}
