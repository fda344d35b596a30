//! JoinGroup (key 11): join a classic consumer group and wait for the rebalance round to end.
//! v4+ members joining without an id get MEMBER_ID_REQUIRED and an id to rejoin with
//! (KIP-394); v5+ carry `group.instance.id` (static membership, KIP-345).

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{ApiKey, JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::groups::{self, JoinRequest};

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::JoinGroup,
    min_version: 0,
    max_version: 9,
};

pub async fn handle(
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
    ctx: &Context,
) -> JoinGroupResponse {
    // Joining takes READ on the group.
    if !ctx.allows_group(Operation::READ, request.group_id.0.as_str()) {
        return JoinGroupResponse::default()
            .with_error_code(kafka_protocol::ResponseError::GroupAuthorizationFailed.code())
            .with_generation_id(-1);
    }
    let rebalance_timeout_ms = if request.rebalance_timeout_ms < 0 {
        request.session_timeout_ms
    } else {
        request.rebalance_timeout_ms
    };
    let answer = groups::join(
        &ctx.shard,
        JoinRequest {
            group: request.group_id.0.to_string(),
            member_id: request.member_id.to_string(),
            group_instance_id: request.group_instance_id.map(|i| i.to_string()),
            client_id: client_id.to_string(),
            client_host: ctx.client_host.to_string(),
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms,
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            require_known_member_id: version >= 4,
        },
    )
    .await;
    JoinGroupResponse::default()
        .with_error_code(answer.error.map_or(0, |e| e.code()))
        .with_generation_id(if answer.error.is_some() {
            -1
        } else {
            answer.generation
        })
        .with_protocol_type(answer.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(answer.protocol.map(StrBytes::from_string))
        .with_leader(StrBytes::from_string(answer.leader))
        .with_member_id(StrBytes::from_string(answer.member_id))
        // The field exists from v9 (KIP-814); older static leaders send an empty assignment,
        // which SyncGroup ignores for a stable group (every member keeps its own).
        .with_skip_assignment(version >= 9 && answer.skip_assignment)
        .with_members(
            answer
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_group_instance_id(instance.map(StrBytes::from_string))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}
