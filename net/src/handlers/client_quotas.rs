//! DescribeClientQuotas (key 48) and AlterClientQuotas (key 49): the client quotas of the
//! metadata (`sluice_core::quotas`), as `kafka-configs.sh --entity-type users|clients` manages
//! them. Entity types `user` and `client-id`; a null name is the type's default entity.
//! Describing takes DESCRIBE_CONFIGS on the cluster, altering ALTER_CONFIGS
//! (CLUSTER_AUTHORIZATION_FAILED otherwise); another entity type, a key that is not a quota or a
//! value that is not positive is INVALID_REQUEST (UNSUPPORTED_VERSION for an entity type
//! unknown to the filter, as Kafka).

use kafka_protocol::messages::{
    alter_client_quotas_response, describe_client_quotas_response, AlterClientQuotasRequest,
    AlterClientQuotasResponse, ApiKey, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::acls::Operation;
use sluice_core::quotas::{EntityName, QuotaChange, QuotaEntity};
use sluice_core::{controller, ApiError};

use crate::apis::ApiRange;
use crate::handlers::{audit_outcome, unauthorized, Context};

pub const DESCRIBE_RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeClientQuotas,
    min_version: 0,
    max_version: 1,
};
pub const ALTER_RANGE: ApiRange = ApiRange {
    key: ApiKey::AlterClientQuotas,
    min_version: 0,
    max_version: 1,
};

const USER: &str = "user";
const CLIENT_ID: &str = "client-id";

/// A component of a DescribeClientQuotas filter: 0 a name (null: the default), 1 the default,
/// 2 any specified name.
enum Side {
    Unconstrained,
    Exactly(EntityName),
    Default,
    Specified,
}

fn side_matches(side: &Option<EntityName>, filter: &Side, strict: bool) -> bool {
    match filter {
        Side::Unconstrained => !strict || side.is_none(),
        Side::Exactly(name) => side.as_ref() == Some(name),
        Side::Default => side == &Some(EntityName::Default),
        Side::Specified => matches!(side, Some(EntityName::Named(_))),
    }
}

pub fn describe(
    request: DescribeClientQuotasRequest,
    ctx: &Context,
) -> DescribeClientQuotasResponse {
    let refuse = |code: ResponseError, message: &str| {
        DescribeClientQuotasResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from(message.to_string())))
            .with_entries(None)
    };
    if !ctx.allows_cluster(Operation::DESCRIBE_CONFIGS) {
        return refuse(
            ResponseError::ClusterAuthorizationFailed,
            "Authorization failed.",
        );
    }
    let (mut user, mut client) = (Side::Unconstrained, Side::Unconstrained);
    for component in &request.components {
        let side = match component.match_type {
            0 => Side::Exactly(EntityName::from_wire(component._match.as_deref())),
            1 => Side::Default,
            2 => Side::Specified,
            other => {
                return refuse(
                    ResponseError::InvalidRequest,
                    &format!("match type {other}"),
                )
            }
        };
        match component.entity_type.as_str() {
            USER => user = side,
            CLIENT_ID => client = side,
            other => {
                return refuse(
                    ResponseError::UnsupportedVersion,
                    &format!("entity type {other:?} is not supported"),
                )
            }
        }
    }
    let image = ctx.shard.catalog.image();
    let entries = image
        .client_quotas
        .iter()
        .filter(|q| {
            side_matches(&q.entity.user, &user, request.strict)
                && side_matches(&q.entity.client_id, &client, request.strict)
        })
        .map(|q| {
            let mut entity = Vec::new();
            for (kind, side) in [(USER, &q.entity.user), (CLIENT_ID, &q.entity.client_id)] {
                if let Some(name) = side {
                    entity.push(
                        describe_client_quotas_response::EntityData::default()
                            .with_entity_type(StrBytes::from_static_str(kind))
                            .with_entity_name(
                                name.to_wire().map(|n| StrBytes::from(n.to_string())),
                            ),
                    );
                }
            }
            describe_client_quotas_response::EntryData::default()
                .with_entity(entity)
                .with_values(
                    q.values
                        .iter()
                        .map(|(k, v)| {
                            describe_client_quotas_response::ValueData::default()
                                .with_key(StrBytes::from(k.clone()))
                                .with_value(*v)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeClientQuotasResponse::default().with_entries(Some(entries))
}

pub async fn alter(request: AlterClientQuotasRequest, ctx: &Context) -> AlterClientQuotasResponse {
    let allowed = ctx.allows_cluster(Operation::ALTER_CONFIGS);
    let mut checked: Vec<Result<Vec<QuotaChange>, ApiError>> = Vec::new();
    for entry in &request.entries {
        let mut entity = QuotaEntity {
            user: None,
            client_id: None,
        };
        let mut bad = None;
        for part in &entry.entity {
            let name = Some(EntityName::from_wire(part.entity_name.as_deref()));
            match part.entity_type.as_str() {
                USER if entity.user.is_none() => entity.user = name,
                CLIENT_ID if entity.client_id.is_none() => entity.client_id = name,
                other => {
                    bad = Some(format!(
                        "entity type {other:?} (twice, or not user / client-id)"
                    ))
                }
            }
        }
        checked.push(match (allowed, bad) {
            (false, _) => Err(unauthorized(ResponseError::ClusterAuthorizationFailed)),
            (true, Some(why)) => Err(ApiError {
                code: ResponseError::InvalidRequest,
                message: why,
            }),
            (true, None) => Ok(entry
                .ops
                .iter()
                .map(|op| QuotaChange {
                    entity: entity.clone(),
                    key: op.key.to_string(),
                    value: (!op.remove).then_some(op.value),
                })
                .collect()),
        });
    }
    let groups: Vec<Vec<QuotaChange>> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().cloned())
        .collect();
    let mut outcomes = controller::alter_client_quotas(&ctx.shard, groups, request.validate_only)
        .await
        .into_iter();
    let entries = request
        .entries
        .into_iter()
        .zip(checked)
        .map(|(entry, checked)| {
            let changes: Vec<serde_json::Value> = match &checked {
                Ok(changes) => changes
                    .iter()
                    .map(|c| serde_json::json!({"key": c.key, "value": c.value}))
                    .collect(),
                Err(_) => Vec::new(),
            };
            let outcome = match checked {
                Ok(_) => outcomes.next().unwrap_or(Ok(())),
                Err(e) => Err(e),
            };
            let name: Vec<String> = entry
                .entity
                .iter()
                .map(|e| {
                    format!(
                        "{}={}",
                        e.entity_type.as_str(),
                        e.entity_name.as_deref().unwrap_or("<default>")
                    )
                })
                .collect();
            ctx.audit_change(
                "CLIENT_QUOTA",
                &name.join(","),
                audit_outcome(outcome.as_ref().err()),
                serde_json::json!({"changes": changes, "validate_only": request.validate_only}),
            );
            let entity = entry
                .entity
                .into_iter()
                .map(|e| {
                    alter_client_quotas_response::EntityData::default()
                        .with_entity_type(e.entity_type)
                        .with_entity_name(e.entity_name)
                })
                .collect();
            let result = alter_client_quotas_response::EntryData::default().with_entity(entity);
            match outcome {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(e.code.code())
                    .with_error_message(Some(StrBytes::from(e.message))),
            }
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}
