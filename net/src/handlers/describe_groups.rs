//! DescribeGroups (key 15): state, protocol and members (with metadata and assignment) of
//! groups. A group never seen is "Dead" (v6+: with GROUP_ID_NOT_FOUND, as Kafka does).

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{ApiKey, DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::{groups, ResponseError};

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeGroups,
    min_version: 0,
    max_version: 6,
};

const NOT_FOUND_FROM: i16 = 6;

pub async fn handle(
    request: DescribeGroupsRequest,
    version: i16,
    ctx: &Context,
) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let base = DescribedGroup::default()
            .with_group_id(group_id.clone())
            .with_authorized_operations(crate::authorized::for_resource(
                ctx,
                request.include_authorized_operations,
                crate::authorized::GROUP,
                sluice_core::acls::ResourceType::Group,
                group_id.0.as_str(),
            ));
        // Describing takes DESCRIBE on the group.
        if !ctx.allows_group(Operation::DESCRIBE, group_id.0.as_str()) {
            described.push(
                base.with_error_code(ResponseError::GroupAuthorizationFailed.code())
                    .with_authorized_operations(crate::authorized::answer(
                        request.include_authorized_operations,
                        0,
                    )),
            );
            continue;
        }
        described.push(
            match groups::describe(&ctx.shard, group_id.0.to_string()).await {
                Err(code) => base.with_error_code(code.code()),
                Ok(None) => {
                    let dead = base.with_group_state(StrBytes::from_static_str("Dead"));
                    if version >= NOT_FOUND_FROM {
                        dead.with_error_code(ResponseError::GroupIdNotFound.code())
                    } else {
                        dead
                    }
                }
                Ok(Some(g)) => base
                    .with_group_state(StrBytes::from_static_str(g.state.name()))
                    .with_protocol_type(StrBytes::from_string(g.protocol_type))
                    .with_protocol_data(StrBytes::from_string(g.protocol))
                    .with_members(
                        g.members
                            .into_iter()
                            .map(|(id, instance, client_id, host, metadata, assignment)| {
                                DescribedGroupMember::default()
                                    .with_member_id(StrBytes::from_string(id))
                                    .with_group_instance_id(instance.map(StrBytes::from_string))
                                    .with_client_id(StrBytes::from_string(client_id))
                                    .with_client_host(StrBytes::from_string(host))
                                    .with_member_metadata(metadata)
                                    .with_member_assignment(assignment)
                            })
                            .collect(),
                    ),
            },
        );
    }
    DescribeGroupsResponse::default().with_groups(described)
}
