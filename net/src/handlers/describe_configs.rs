//! DescribeConfigs (key 32): a topic's configs (every known one, with its value and whether it
//! is the default), and the broker's: its dynamic configs (set at runtime, or as started) and
//! read-only facts.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{ApiKey, DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::topics::{ConfigType, TOPIC_CONFIGS};
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::{config_source, Context};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeConfigs,
    min_version: 1,
    max_version: 4,
};

/// Resource types of Kafka's `ConfigResource.Type`.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// `ConfigSource` codes: set at runtime for this broker; set on the broker at start-up.
const DYNAMIC_BROKER_CONFIG: i8 = 2;
const STATIC_BROKER_CONFIG: i8 = 4;

pub fn handle(request: DescribeConfigsRequest, ctx: &Context) -> DescribeConfigsResponse {
    let image = ctx.shard.image();
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            // Null asks for every config; so does an empty list (kafka-python sends one), since
            // nobody asks for none.
            let keys: Option<Vec<String>> = resource
                .configuration_keys
                .filter(|ks| !ks.is_empty())
                .map(|ks| ks.iter().map(|k| k.to_string()).collect());
            let wanted = |name: &str| keys.as_ref().is_none_or(|ks| ks.iter().any(|k| k == name));
            let result = DescribeConfigsResult::default()
                .with_error_message(None)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => match image.topic(&resource.resource_name) {
                    Some(topic) => result.with_configs(
                        TOPIC_CONFIGS
                            .iter()
                            .filter(|def| wanted(def.name))
                            .map(|def| {
                                let (value, is_default) = topic.config_value(def);
                                entry(
                                    def.name,
                                    value,
                                    config_source(is_default),
                                    def.kind,
                                    request.include_documentation.then_some(def.doc),
                                )
                            })
                            .collect(),
                    ),
                    None => result
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "no topic named {}",
                            resource.resource_name.as_str()
                        )))),
                },
                RESOURCE_BROKER
                    if resource.resource_name.is_empty()
                        || resource.resource_name.as_str() == ctx.broker.node_id.to_string() =>
                {
                    let effective = ctx.shard.effective();
                    let mut entries: Vec<DescribeConfigsResourceResult> = effective
                        .describe(&image)
                        .into_iter()
                        .filter(|(name, _, _, _)| wanted(name))
                        .map(|(name, value, kind, dynamic)| {
                            let source = if dynamic {
                                DYNAMIC_BROKER_CONFIG
                            } else {
                                STATIC_BROKER_CONFIG
                            };
                            entry(name, value, source, kind, None)
                        })
                        .collect();
                    for (name, value, kind) in [
                        (
                            "default.replication.factor",
                            "1".to_string(),
                            ConfigType::Short,
                        ),
                        ("broker.id", ctx.broker.node_id.to_string(), ConfigType::Int),
                    ] {
                        if wanted(name) {
                            entries.push(
                                entry(name, value, STATIC_BROKER_CONFIG, kind, None)
                                    .with_read_only(true),
                            );
                        }
                    }
                    result.with_configs(entries)
                }
                RESOURCE_BROKER => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "this broker is node {}",
                        ctx.broker.node_id
                    )))),
                other => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "resource type {other} is not supported (topics: 2, brokers: 4)"
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn entry(
    name: &'static str,
    value: String,
    source: i8,
    kind: ConfigType,
    doc: Option<&'static str>,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(name))
        .with_value(Some(StrBytes::from_string(value)))
        .with_config_source(source)
        .with_config_type(kind.code())
        .with_documentation(doc.map(StrBytes::from_static_str))
}
