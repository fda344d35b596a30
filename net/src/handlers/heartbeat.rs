//! Heartbeat (key 12): keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin.

use kafka_protocol::messages::{ApiKey, HeartbeatRequest, HeartbeatResponse};
use sluice_core::groups;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::Heartbeat,
    min_version: 0,
    max_version: 4,
};

pub async fn handle(request: HeartbeatRequest, ctx: &Context) -> HeartbeatResponse {
    if !ctx.allows_group(Operation::READ, request.group_id.0.as_str()) {
        return HeartbeatResponse::default()
            .with_error_code(kafka_protocol::ResponseError::GroupAuthorizationFailed.code());
    }
    let error = groups::heartbeat(
        &ctx.shard,
        request.group_id.0.to_string(),
        request.generation_id,
        request.member_id.to_string(),
        request.group_instance_id.map(|i| i.to_string()),
    )
    .await;
    HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
}
