//! DescribeConfigs (key 32): a topic's configs (every known one, with its value and whether it
//! is the default), and the broker's under Kafka's names: its dynamic configs (set at runtime,
//! or as started), its start-up settings read-only (`listeners`, `advertised.listeners`,
//! `log.dirs`, ...), and the broker defaults of topic configs (`log.retention.ms`, ...).
//! With `include_synonyms`, each entry lists where its value could come from, most specific
//! first, as Kafka does: a topic override, then the broker default it overrides; a runtime
//! broker value, then the start-up one.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{ApiKey, DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::broker_configs::{broker_default_of, Effective, TOPIC_DEFAULTS};
use sluice_core::topics::{ConfigType, TOPIC_CONFIGS};
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::{config_source, Context};
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeConfigs,
    min_version: 1,
    max_version: 4,
};

/// Resource types of Kafka's `ConfigResource.Type`.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// `ConfigSource` codes: set on the topic; set at runtime for this broker; set on the broker
/// at start-up; Kafka's default.
const TOPIC_CONFIG: i8 = 1;
const DYNAMIC_BROKER_CONFIG: i8 = 2;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// One synonym of a config entry.
fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default()
        .with_name(StrBytes::from_string(name.to_string()))
        .with_value(Some(StrBytes::from_string(value.to_string())))
        .with_source(source)
}

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
            // Describing takes DESCRIBE_CONFIGS on the topic, or on the cluster for a broker.
            let denied = match resource.resource_type {
                RESOURCE_TOPIC => (!ctx
                    .allows_topic(Operation::DESCRIBE_CONFIGS, resource.resource_name.as_str()))
                .then_some(ResponseError::TopicAuthorizationFailed),
                RESOURCE_BROKER => (!ctx.allows_cluster(Operation::DESCRIBE_CONFIGS))
                    .then_some(ResponseError::ClusterAuthorizationFailed),
                _ => None,
            };
            if let Some(code) = denied {
                return result
                    .with_error_code(code.code())
                    .with_error_message(Some(StrBytes::from_static_str("Authorization failed.")));
            }
            match resource.resource_type {
                RESOURCE_TOPIC => match image.topic(&resource.resource_name) {
                    Some(topic) => result.with_configs(
                        TOPIC_CONFIGS
                            .iter()
                            .filter(|def| wanted(def.name))
                            .map(|def| {
                                let (value, is_default) = topic.config_value(def);
                                let mut synonyms = Vec::new();
                                if request.include_synonyms {
                                    if !is_default {
                                        synonyms.push(synonym(def.name, &value, TOPIC_CONFIG));
                                    }
                                    if let Some(broker_name) = broker_default_of(def.name) {
                                        synonyms.push(synonym(
                                            broker_name,
                                            def.default,
                                            DEFAULT_CONFIG,
                                        ));
                                    }
                                }
                                entry(
                                    def.name,
                                    value,
                                    config_source(is_default),
                                    def.kind,
                                    request.include_documentation.then_some(def.doc),
                                )
                                .with_synonyms(synonyms)
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
                    let startup = Effective::startup(&ctx.shard.settings).values();
                    let mut entries: Vec<DescribeConfigsResourceResult> = effective
                        .describe(&image)
                        .into_iter()
                        .zip(startup)
                        .filter(|((name, _, _, _), _)| wanted(name))
                        .map(|((name, value, kind, dynamic), startup)| {
                            let source = if dynamic {
                                DYNAMIC_BROKER_CONFIG
                            } else {
                                STATIC_BROKER_CONFIG
                            };
                            let mut synonyms = Vec::new();
                            if request.include_synonyms {
                                if dynamic {
                                    synonyms.push(synonym(name, &value, DYNAMIC_BROKER_CONFIG));
                                }
                                synonyms.push(synonym(name, &startup, STATIC_BROKER_CONFIG));
                            }
                            entry(name, value, source, kind, None).with_synonyms(synonyms)
                        })
                        .collect();
                    let read_only =
                        ctx.broker
                            .static_configs
                            .iter()
                            .map(|(name, value, kind)| {
                                (*name, value.clone(), STATIC_BROKER_CONFIG, *kind)
                            })
                            .chain(TOPIC_DEFAULTS.iter().filter_map(
                                |(topic_name, broker_name)| {
                                    let def = sluice_core::topics::config_def(topic_name)?;
                                    Some((
                                        *broker_name,
                                        def.default.to_string(),
                                        DEFAULT_CONFIG,
                                        def.kind,
                                    ))
                                },
                            ));
                    for (name, value, source, kind) in read_only {
                        if !wanted(name) || entries.iter().any(|e| e.name.as_str() == name) {
                            continue;
                        }
                        let synonyms = if request.include_synonyms {
                            vec![synonym(name, &value, source)]
                        } else {
                            Vec::new()
                        };
                        entries.push(
                            entry(name, value, source, kind, None)
                                .with_read_only(true)
                                .with_synonyms(synonyms),
                        );
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
