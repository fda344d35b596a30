//! DeleteGroups (key 42): removes groups without members, with their committed offsets.
//! A group with members gets NON_EMPTY_GROUP; an unknown one GROUP_ID_NOT_FOUND.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{ApiKey, DeleteGroupsRequest, DeleteGroupsResponse};
use sluice_core::groups;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DeleteGroups,
    min_version: 0,
    max_version: 2,
};

pub async fn handle(request: DeleteGroupsRequest, ctx: &Context) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group in request.groups_names {
        // Deleting takes DELETE on the group.
        let error = if ctx.allows_group(Operation::DELETE, group.0.as_str()) {
            groups::delete_group(&ctx.shard, group.0.to_string()).await
        } else {
            Some(kafka_protocol::ResponseError::GroupAuthorizationFailed)
        };
        ctx.audit_change(
            "GROUP",
            group.0.as_str(),
            (error.map_or(0, |e| e.code()), None),
            serde_json::json!({}),
        );
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group)
                .with_error_code(error.map_or(0, |e| e.code())),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
