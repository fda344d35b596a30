//! DescribeCluster (key 60, KIP-700): the cluster id, the controller and the brokers (this one,
//! never fenced). Kafka's admin clients prefer it to Metadata when the broker offers it. Only the
//! brokers endpoint type (1) exists here; asking for controllers (2, KIP-919) gets
//! UNSUPPORTED_ENDPOINT_TYPE, as from a Kafka broker.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::authorized;
use crate::handlers::Context;
use sluice_core::acls::{Operation, ResourceType};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeCluster,
    min_version: 0,
    max_version: 2,
};

/// `endpoint_type` 1: brokers.
const BROKERS_ENDPOINT: i8 = 1;

pub fn handle(request: DescribeClusterRequest, ctx: &Context) -> DescribeClusterResponse {
    let broker = &ctx.broker;
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(request.endpoint_type)
        .with_error_message(None)
        .with_cluster_id(StrBytes::from_string(broker.cluster_id.clone()));
    // Describing the cluster takes DESCRIBE on it.
    if !ctx.allows_cluster(Operation::DESCRIBE) {
        return response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str("Authorization failed.")))
            .with_controller_id(BrokerId(-1));
    }
    if request.endpoint_type != BROKERS_ENDPOINT {
        return response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "this broker serves the brokers endpoint type (1) only",
            )))
            .with_controller_id(BrokerId(-1));
    }
    // A fenced node (connections closed, or silent for the session timeout) is left out, as
    // Metadata leaves it out; listed only when asked (v2 `include_fenced_brokers`).
    let brokers = match ctx.shard.image().cluster.as_ref() {
        Some(cluster) => cluster
            .brokers
            .values()
            .filter_map(|b| {
                let fenced = ctx
                    .shard
                    .catalog
                    .cluster
                    .fenced(b.node_id, ctx.broker.node_id);
                if fenced && !request.include_fenced_brokers {
                    return None;
                }
                let (host, port) = b.endpoint(&ctx.listener)?;
                Some(
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.node_id))
                        .with_host(StrBytes::from_string(host.to_string()))
                        .with_port(i32::from(port))
                        .with_rack(b.rack.clone().map(StrBytes::from_string))
                        .with_is_fenced(fenced),
                )
            })
            .collect(),
        None => {
            let (host, port) = broker.endpoint(&ctx.listener);
            vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(broker.node_id))
                .with_host(StrBytes::from_string(host.to_string()))
                .with_port(i32::from(port))
                .with_rack(None)]
        }
    };
    response
        .with_controller_id(BrokerId(super::metadata::controller_id(ctx)))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(authorized::for_resource(
            ctx,
            request.include_cluster_authorized_operations,
            authorized::CLUSTER,
            ResourceType::Cluster,
            ResourceType::CLUSTER_NAME,
        ))
}
