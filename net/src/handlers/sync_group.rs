//! SyncGroup (key 14): the leader hands in the assignment; every member gets its part.

use kafka_protocol::messages::{ApiKey, SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::groups;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::SyncGroup,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(request: SyncGroupRequest, ctx: &Context) -> SyncGroupResponse {
    if !ctx.allows_group(Operation::READ, request.group_id.0.as_str()) {
        return SyncGroupResponse::default()
            .with_error_code(kafka_protocol::ResponseError::GroupAuthorizationFailed.code());
    }
    let answer = groups::sync(
        &ctx.shard,
        request.group_id.0.to_string(),
        request.generation_id,
        request.member_id.to_string(),
        request.group_instance_id.map(|i| i.to_string()),
        request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    )
    .await;
    SyncGroupResponse::default()
        .with_error_code(answer.error.map_or(0, |e| e.code()))
        .with_protocol_type(answer.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(answer.protocol.map(StrBytes::from_string))
        .with_assignment(answer.assignment)
}
