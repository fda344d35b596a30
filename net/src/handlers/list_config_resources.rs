//! ListConfigResources (key 74; v0 was ListClientMetricsResources, KIP-714): the resources
//! that carry configs, by type. Topics (2): every topic; brokers (4): this node; groups (32)
//! and client-metrics subscriptions (16): none exist here. An empty type list asks for every
//! type (v1); v0 asks for client-metrics subscriptions only. Any other type is INVALID_REQUEST.

use kafka_protocol::messages::list_config_resources_response::ConfigResource;
use kafka_protocol::messages::{ApiKey, ListConfigResourcesRequest, ListConfigResourcesResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::Operation;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::ListConfigResources,
    min_version: 0,
    max_version: 1,
};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const CLIENT_METRICS: i8 = 16;
const GROUP: i8 = 32;

pub fn handle(
    request: ListConfigResourcesRequest,
    version: i16,
    ctx: &Context,
) -> ListConfigResourcesResponse {
    // Listing config resources takes DESCRIBE_CONFIGS on the cluster (KIP-1142).
    if !ctx.allows_cluster(Operation::DESCRIBE_CONFIGS) {
        return ListConfigResourcesResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let types = if version == 0 {
        vec![CLIENT_METRICS]
    } else if request.resource_types.is_empty() {
        vec![TOPIC, BROKER, CLIENT_METRICS, GROUP]
    } else {
        request.resource_types
    };
    let mut resources = Vec::new();
    for kind in types {
        match kind {
            TOPIC => resources.extend(ctx.shard.image().topics().map(|t| {
                ConfigResource::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(StrBytes::from_string(t.name.clone()))
            })),
            BROKER => resources.push(
                ConfigResource::default()
                    .with_resource_type(BROKER)
                    .with_resource_name(StrBytes::from_string(ctx.broker.node_id.to_string())),
            ),
            CLIENT_METRICS | GROUP => {}
            _ => {
                return ListConfigResourcesResponse::default()
                    .with_error_code(ResponseError::InvalidRequest.code())
            }
        }
    }
    ListConfigResourcesResponse::default().with_config_resources(resources)
}
