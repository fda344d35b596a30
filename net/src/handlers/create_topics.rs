//! CreateTopics (key 19): new topics with partition counts and configs; `validate_only` checks
//! without creating. Replication factors above 1 are refused on this single node unless the
//! broker clamps them (`clamp_replication_factor`). v5+ answers with the topic's partition
//! count, replication factor and configs.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::controller::{self, NewTopic};
use sluice_core::topics::TOPIC_CONFIGS;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::{audit_outcome, config_source, Context};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::CreateTopics,
    min_version: 2,
    max_version: 7,
};

pub async fn handle(mut request: CreateTopicsRequest, ctx: &Context) -> CreateTopicsResponse {
    // Creating takes CREATE on the cluster or on the topic.
    let may_create_any = ctx.allows_cluster(Operation::CREATE);
    let (allowed, denied): (Vec<_>, Vec<_>) = std::mem::take(&mut request.topics)
        .into_iter()
        .partition(|t| may_create_any || ctx.allows_topic(Operation::CREATE, t.name.0.as_str()));
    request.topics = allowed;
    let mut response = create_allowed(request, ctx).await;
    response.topics.extend(denied.into_iter().map(|t| {
        CreatableTopicResult::default()
            .with_name(t.name)
            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str("Authorization failed.")))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
    }));
    response
}

async fn create_allowed(request: CreateTopicsRequest, ctx: &Context) -> CreateTopicsResponse {
    let names: Vec<_> = request.topics.iter().map(|t| t.name.clone()).collect();
    let asked: Vec<serde_json::Value> = request
        .topics
        .iter()
        .map(|t| {
            let configs: serde_json::Map<String, serde_json::Value> = t
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_deref().into()))
                .collect();
            serde_json::json!({
                "partitions": t.num_partitions,
                "replication_factor": t.replication_factor,
                "configs": configs,
                "validate_only": request.validate_only,
            })
        })
        .collect();
    let new_topics = request
        .topics
        .into_iter()
        .map(|t| NewTopic {
            name: t.name.0.to_string(),
            partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect(),
            configs: t
                .configs
                .into_iter()
                .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
                .collect(),
        })
        .collect();
    let results = controller::create_topics(&ctx.shard, new_topics, request.validate_only).await;
    for ((name, result), asked) in names.iter().zip(&results).zip(asked) {
        let error = audit_outcome(result.as_ref().err());
        ctx.audit_change("TOPIC", name.0.as_str(), error, asked);
    }
    let topics = names
        .into_iter()
        .zip(results)
        .map(|(name, result)| match result {
            Ok(topic) => {
                let configs = TOPIC_CONFIGS
                    .iter()
                    .map(|def| {
                        let (value, is_default) = topic.config_value(def);
                        CreatableTopicConfigs::default()
                            .with_name(StrBytes::from_static_str(def.name))
                            .with_value(Some(StrBytes::from_string(value)))
                            .with_config_source(config_source(is_default))
                    })
                    .collect();
                CreatableTopicResult::default()
                    .with_name(name)
                    .with_topic_id(topic.id)
                    // Kafka answers null on success; aiokafka reads "" as an error text.
                    .with_error_message(None)
                    .with_num_partitions(topic.partitions)
                    .with_replication_factor(1)
                    .with_configs(Some(configs))
            }
            Err(e) => CreatableTopicResult::default()
                .with_name(name)
                .with_error_code(e.code.code())
                .with_error_message(Some(StrBytes::from_string(e.message)))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}
