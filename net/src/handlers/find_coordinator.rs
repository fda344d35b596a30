//! FindCoordinator (key 10): this broker coordinates every consumer group (inside, the shard
//! owning the group's `__consumer_offsets` partition does). Transaction coordinators do not
//! exist yet: key type 1 gets COORDINATOR_NOT_AVAILABLE. v4+ answers a batch of keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::FindCoordinator,
    min_version: 0,
    max_version: 6,
};

/// FindCoordinator v4 moved from one key to a batch.
const BATCHED_FROM: i16 = 4;
const KEY_TYPE_GROUP: i8 = 0;
/// Why a key type other than a group gets no coordinator.
const KEY_TYPE_MESSAGE: &str = "this broker coordinates consumer groups only (no transactions yet)";

pub fn handle(
    request: FindCoordinatorRequest,
    version: i16,
    ctx: &Context,
) -> FindCoordinatorResponse {
    let broker = &ctx.broker;
    let error =
        (request.key_type != KEY_TYPE_GROUP).then_some(ResponseError::CoordinatorNotAvailable);
    let host = StrBytes::from_string(broker.advertised_host.clone());
    let port = i32::from(broker.advertised_port);
    if version < BATCHED_FROM {
        return FindCoordinatorResponse::default()
            .with_error_code(error.map_or(0, |e| e.code()))
            // Kafka answers a null message on success ("" reads as an error text to some clients).
            .with_error_message(error.map(|_| StrBytes::from_static_str(KEY_TYPE_MESSAGE)))
            .with_node_id(BrokerId(if error.is_some() { -1 } else { broker.node_id }))
            .with_host(host)
            .with_port(port);
    }
    let coordinators = request
        .coordinator_keys
        .into_iter()
        .map(|key| {
            Coordinator::default()
                .with_key(key)
                .with_error_code(error.map_or(0, |e| e.code()))
                .with_error_message(error.map(|_| StrBytes::from_static_str(KEY_TYPE_MESSAGE)))
                .with_node_id(BrokerId(if error.is_some() { -1 } else { broker.node_id }))
                .with_host(host.clone())
                .with_port(port)
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}
