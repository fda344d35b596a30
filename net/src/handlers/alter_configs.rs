//! AlterConfigs (key 33) and IncrementalAlterConfigs (key 44) for topics. AlterConfigs
//! replaces a topic's whole config set; IncrementalAlterConfigs applies SET (0), DELETE (1),
//! APPEND (2) and SUBTRACT (3). Values are validated as CreateTopics validates them; the new
//! configs apply to the partitions' logs at once. On the broker resource, the dynamic broker
//! configs (`sluice_core::broker_configs`) change at once and persist; others get INVALID_CONFIG.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as LegacyResult;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::controller::{self, ConfigOp};
use sluice_core::{ApiError, ResponseError};

use crate::apis::ApiRange;
use crate::handlers::{audit_outcome, Context};
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::AlterConfigs,
    min_version: 0,
    max_version: 2,
};

pub const INCREMENTAL_RANGE: ApiRange = ApiRange {
    key: ApiKey::IncrementalAlterConfigs,
    min_version: 0,
    max_version: 1,
};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Applies one resource's changes and records them in the audit trail; the error to answer
/// with, if any.
async fn alter(
    ctx: &Context,
    resource_type: i8,
    name: &StrBytes,
    changes: Result<Vec<(String, ConfigOp)>, ApiError>,
    replace_all: bool,
    validate_only: bool,
) -> Option<ApiError> {
    let asked: serde_json::Map<String, serde_json::Value> = changes
        .iter()
        .flatten()
        .map(|(key, op)| {
            let op = match op {
                ConfigOp::Set(v) => serde_json::json!({"set": v}),
                ConfigOp::Delete => serde_json::json!("delete"),
                ConfigOp::Append(v) => serde_json::json!({"append": v}),
                ConfigOp::Subtract(v) => serde_json::json!({"subtract": v}),
            };
            (key.clone(), op)
        })
        .collect();
    let error = apply(
        ctx,
        resource_type,
        name,
        changes,
        replace_all,
        validate_only,
    )
    .await;
    let kind = match resource_type {
        RESOURCE_BROKER => "BROKER",
        RESOURCE_TOPIC => "TOPIC",
        _ => "UNKNOWN",
    };
    ctx.audit_change(
        kind,
        name.as_str(),
        audit_outcome(error.as_ref()),
        serde_json::json!({
            "configs": asked,
            "replace_all": replace_all,
            "validate_only": validate_only,
        }),
    );
    error
}

async fn apply(
    ctx: &Context,
    resource_type: i8,
    name: &StrBytes,
    changes: Result<Vec<(String, ConfigOp)>, ApiError>,
    replace_all: bool,
    validate_only: bool,
) -> Option<ApiError> {
    // Altering takes ALTER_CONFIGS on the topic, or on the cluster for the broker's configs.
    let (allowed, denied) = match resource_type {
        RESOURCE_BROKER => (
            ctx.allows_cluster(Operation::ALTER_CONFIGS),
            ResponseError::ClusterAuthorizationFailed,
        ),
        _ => (
            ctx.allows_topic(Operation::ALTER_CONFIGS, name.as_str()),
            ResponseError::TopicAuthorizationFailed,
        ),
    };
    if !allowed {
        return Some(crate::handlers::unauthorized(denied));
    }
    let changes = match changes {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    if resource_type == RESOURCE_BROKER {
        // This broker by id, or "" for the cluster-wide default: on one node, the same.
        if !name.is_empty() && name.as_str() != ctx.broker.node_id.to_string() {
            return Some(ApiError {
                code: ResponseError::InvalidRequest,
                message: format!("this broker is node {}", ctx.broker.node_id),
            });
        }
        let mut plain = Vec::with_capacity(changes.len());
        for (key, op) in changes {
            plain.push(match op {
                ConfigOp::Set(v) => (key, Some(v)),
                ConfigOp::Delete => (key, None),
                _ => {
                    return Some(ApiError {
                        code: ResponseError::InvalidConfig,
                        message: format!("{key}: APPEND and SUBTRACT apply to list configs"),
                    })
                }
            });
        }
        return controller::alter_broker_configs(&ctx.shard, plain, replace_all, validate_only)
            .await
            .err();
    }
    if resource_type != RESOURCE_TOPIC {
        return Some(ApiError {
            code: ResponseError::InvalidRequest,
            message: format!(
                "resource type {resource_type}: topics (2) and brokers (4) have configs"
            ),
        });
    }
    controller::alter_topic_configs(
        &ctx.shard,
        name.to_string(),
        changes,
        replace_all,
        validate_only,
    )
    .await
    .err()
}

pub async fn handle(request: AlterConfigsRequest, ctx: &Context) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let changes = r
            .configs
            .iter()
            .map(|c| match &c.value {
                Some(v) => Ok((c.name.to_string(), ConfigOp::Set(v.to_string()))),
                None => Ok((c.name.to_string(), ConfigOp::Delete)),
            })
            .collect();
        let error = alter(
            ctx,
            r.resource_type,
            &r.resource_name,
            changes,
            true,
            request.validate_only,
        )
        .await;
        responses.push(
            LegacyResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(error.as_ref().map_or(0, |e| e.code.code()))
                .with_error_message(error.map(|e| StrBytes::from_string(e.message))),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn handle_incremental(
    request: IncrementalAlterConfigsRequest,
    ctx: &Context,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for r in request.resources {
        let changes = r
            .configs
            .iter()
            .map(|c| {
                let name = c.name.to_string();
                let value = c.value.as_ref().map(|v| v.to_string());
                let op = match (c.config_operation, value) {
                    (0, Some(v)) => ConfigOp::Set(v),
                    (1, _) => ConfigOp::Delete,
                    (2, Some(v)) => ConfigOp::Append(v),
                    (3, Some(v)) => ConfigOp::Subtract(v),
                    (op, _) => {
                        return Err(ApiError {
                            code: ResponseError::InvalidRequest,
                            message: format!("{name}: operation {op} without a valid value"),
                        })
                    }
                };
                Ok((name, op))
            })
            .collect();
        let error = alter(
            ctx,
            r.resource_type,
            &r.resource_name,
            changes,
            false,
            request.validate_only,
        )
        .await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name)
                .with_error_code(error.as_ref().map_or(0, |e| e.code.code()))
                .with_error_message(error.map(|e| StrBytes::from_string(e.message))),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
