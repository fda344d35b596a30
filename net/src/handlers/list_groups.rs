//! ListGroups (key 16): every group, with its protocol type; v4+ its state (and a state filter),
//! v5+ its type ("classic").

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{ApiKey, GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::groups;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::{Operation, ResourceType};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::ListGroups,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(request: ListGroupsRequest, ctx: &Context) -> ListGroupsResponse {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let all_visible = ctx.allows_unaudited(
        Operation::DESCRIBE,
        ResourceType::Cluster,
        ResourceType::CLUSTER_NAME,
    );
    let listed = groups::list(&ctx.shard)
        .await
        .into_iter()
        .filter(|(_, _, state)| {
            states.is_empty() || states.contains(&state.name().to_ascii_lowercase())
        })
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        // DESCRIBE on the cluster lists every group; otherwise those the principal may DESCRIBE.
        .filter(|(id, _, _)| {
            all_visible || ctx.allows_unaudited(Operation::DESCRIBE, ResourceType::Group, id)
        })
        .map(|(id, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(id)))
                .with_protocol_type(StrBytes::from_string(protocol_type))
                .with_group_state(StrBytes::from_static_str(state.name()))
                .with_group_type(StrBytes::from_static_str("classic"))
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}
