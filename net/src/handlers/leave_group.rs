//! LeaveGroup (key 13): one member (v0–2) or a batch by member or instance id (v3+).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{ApiKey, LeaveGroupRequest, LeaveGroupResponse};
use sluice_core::groups;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::LeaveGroup,
    min_version: 0,
    max_version: 5,
};

const BATCHED_FROM: i16 = 3;

pub async fn handle(request: LeaveGroupRequest, version: i16, ctx: &Context) -> LeaveGroupResponse {
    if !ctx.allows_group(Operation::READ, request.group_id.0.as_str()) {
        return LeaveGroupResponse::default()
            .with_error_code(kafka_protocol::ResponseError::GroupAuthorizationFailed.code());
    }
    let members: Vec<(String, Option<String>)> = if version < BATCHED_FROM {
        vec![(request.member_id.to_string(), None)]
    } else {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    };
    match groups::leave(&ctx.shard, request.group_id.0.to_string(), members).await {
        Err(code) => LeaveGroupResponse::default().with_error_code(code.code()),
        Ok(results) if version < BATCHED_FROM => {
            LeaveGroupResponse::default().with_error_code(results[0].map_or(0, |e| e.code()))
        }
        Ok(results) => LeaveGroupResponse::default().with_members(
            request
                .members
                .into_iter()
                .zip(results)
                .map(|(m, error)| {
                    MemberResponse::default()
                        .with_member_id(m.member_id)
                        .with_group_instance_id(m.group_instance_id)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect(),
        ),
    }
}
