//! FindCoordinator (key 10): a single node coordinates every consumer group (inside, the shard
//! owning the group's `__consumer_offsets` partition does); in cluster mode, the leader of that
//! partition does, as this node's replica knows it (not a leader whose connections to this
//! node just closed: COORDINATOR_NOT_AVAILABLE until the election). A single node also
//! coordinates every transactional id (key type 1; DESCRIBE on the transactional id); a cluster
//! has no transaction coordinator yet and answers COORDINATOR_NOT_AVAILABLE. v4+ answers a
//! batch of keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::groups::{offsets_partition, OFFSETS_TOPIC};
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::{Operation, ResourceType};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::FindCoordinator,
    min_version: 0,
    max_version: 6,
};

/// FindCoordinator v4 moved from one key to a batch.
const BATCHED_FROM: i16 = 4;
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Why a key type other than a group or transaction gets no coordinator.
const KEY_TYPE_MESSAGE: &str = "this broker coordinates consumer groups and transactions only";
/// Why a cluster node names no transaction coordinator.
const NO_CLUSTER_TRANSACTIONS: &str =
    "transactions are coordinated on a single node only (not yet in a cluster)";

pub fn handle(
    request: FindCoordinatorRequest,
    version: i16,
    ctx: &Context,
) -> FindCoordinatorResponse {
    if version < BATCHED_FROM {
        let (node, host, port, error) = coordinator_of(ctx, request.key_type, request.key.as_str());
        return FindCoordinatorResponse::default()
            .with_error_code(error.map_or(0, |(e, _)| e.code()))
            // Kafka answers a null message on success ("" reads as an error text to some clients).
            .with_error_message(error.map(|(_, m)| StrBytes::from_static_str(m)))
            .with_node_id(BrokerId(node))
            .with_host(host)
            .with_port(port);
    }
    let coordinators = request
        .coordinator_keys
        .into_iter()
        .map(|key| {
            let (node, host, port, error) = coordinator_of(ctx, request.key_type, key.as_str());
            Coordinator::default()
                .with_key(key)
                .with_error_code(error.map_or(0, |(e, _)| e.code()))
                .with_error_message(error.map(|(_, m)| StrBytes::from_static_str(m)))
                .with_node_id(BrokerId(node))
                .with_host(host)
                .with_port(port)
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

/// The coordinator of `key`: (node, host, port, error). A single node coordinates every
/// group; in cluster mode, the leader of the group's `__consumer_offsets` partition does.
fn coordinator_of(
    ctx: &Context,
    key_type: i8,
    key: &str,
) -> (i32, StrBytes, i32, Option<(ResponseError, &'static str)>) {
    let none = |error, message| (-1, StrBytes::default(), -1, Some((error, message)));
    if key_type == KEY_TYPE_TRANSACTION {
        if !ctx.allows(Operation::DESCRIBE, ResourceType::TransactionalId, key) {
            return none(
                ResponseError::TransactionalIdAuthorizationFailed,
                "Authorization failed.",
            );
        }
        if ctx.shard.image().cluster.is_some() {
            return none(
                ResponseError::CoordinatorNotAvailable,
                NO_CLUSTER_TRANSACTIONS,
            );
        }
        let (host, port) = ctx.broker.endpoint(&ctx.listener);
        return (
            ctx.broker.node_id,
            StrBytes::from_string(host.to_string()),
            i32::from(port),
            None,
        );
    }
    if key_type != KEY_TYPE_GROUP {
        return none(ResponseError::CoordinatorNotAvailable, KEY_TYPE_MESSAGE);
    }
    // Finding a group's coordinator takes DESCRIBE on the group.
    if !ctx.allows_group(Operation::DESCRIBE, key) {
        return none(
            ResponseError::GroupAuthorizationFailed,
            "Authorization failed.",
        );
    }
    let broker = &ctx.broker;
    let image = ctx.shard.image();
    let Some(cluster) = image.cluster.as_ref() else {
        let (host, port) = broker.endpoint(&ctx.listener);
        return (
            broker.node_id,
            StrBytes::from_string(host.to_string()),
            i32::from(port),
            None,
        );
    };
    let Some(offsets) = image.topic(OFFSETS_TOPIC) else {
        return none(ResponseError::CoordinatorNotAvailable, NOT_YET);
    };
    let partition = offsets_partition(key, offsets.partitions);
    let leader = ctx
        .shard
        .catalog
        .cluster
        .leader((offsets.id, partition))
        // A leader whose connections to this node just closed is most likely dead: naming it
        // would send the client to wait out a connection timeout instead of asking again.
        .filter(|l| l.leader == broker.node_id || !ctx.shard.catalog.cluster.hung_up(l.leader))
        .and_then(|l| cluster.brokers.get(&l.leader))
        .and_then(|b| Some((b.node_id, b.endpoint(&ctx.listener)?)));
    match leader {
        Some((node_id, (host, port))) => (
            node_id,
            StrBytes::from_string(host.to_string()),
            i32::from(port),
            None,
        ),
        None => none(ResponseError::CoordinatorNotAvailable, NOT_YET),
    }
}

/// Why a cluster node names no coordinator yet.
const NOT_YET: &str =
    "the group's __consumer_offsets partition has no leader known here yet; retry";
