//! FindCoordinator (key 10): a single node coordinates every consumer group (inside, the shard
//! owning the group's `__consumer_offsets` partition does); in cluster mode, the leader of that
//! partition does, as this node's replica knows it (not a leader whose connections to this
//! node just closed: COORDINATOR_NOT_AVAILABLE until the election). Transactional ids (key
//! type 1; DESCRIBE on the transactional id) likewise, with `__transaction_state`: a single
//! node coordinates them all; in a cluster, the leader of the id's partition does. The first
//! request for a transactional id creates that topic (as Kafka does), answering
//! COORDINATOR_NOT_AVAILABLE until it has leaders. v4+ answers a batch of keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::groups::{offsets_partition, OFFSETS_TOPIC};
use sluice_core::transactions::{self, txn_partition, TXN_STATE_TOPIC};
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
/// Why a cluster node names no transaction coordinator yet.
const TXN_NOT_YET: &str =
    "the transactional id's __transaction_state partition has no leader known here yet; retry";

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

/// A coordinator as FindCoordinator answers it: (node, host, port, error and its message).
type Answer = (i32, StrBytes, i32, Option<(ResponseError, &'static str)>);

/// The coordinator of `key`: (node, host, port, error). A single node coordinates every
/// group; in cluster mode, the leader of the group's `__consumer_offsets` partition does.
fn coordinator_of(ctx: &Context, key_type: i8, key: &str) -> Answer {
    let none = |error, message| (-1, StrBytes::default(), -1, Some((error, message)));
    if key_type == KEY_TYPE_TRANSACTION {
        if !ctx.allows(Operation::DESCRIBE, ResourceType::TransactionalId, key) {
            return none(
                ResponseError::TransactionalIdAuthorizationFailed,
                "Authorization failed.",
            );
        }
        let image = ctx.shard.image();
        if image.cluster.is_some() {
            let Some(state) = image.topic(TXN_STATE_TOPIC) else {
                transactions::create_state_topic_soon(&ctx.shard);
                return none(ResponseError::CoordinatorNotAvailable, TXN_NOT_YET);
            };
            let partition = txn_partition(key, state.partitions);
            return partition_leader(ctx, (state.id, partition))
                .unwrap_or_else(|| none(ResponseError::CoordinatorNotAvailable, TXN_NOT_YET));
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
    if image.cluster.is_none() {
        let (host, port) = broker.endpoint(&ctx.listener);
        return (
            broker.node_id,
            StrBytes::from_string(host.to_string()),
            i32::from(port),
            None,
        );
    }
    let Some(offsets) = image.topic(OFFSETS_TOPIC) else {
        return none(ResponseError::CoordinatorNotAvailable, NOT_YET);
    };
    let partition = offsets_partition(key, offsets.partitions);
    partition_leader(ctx, (offsets.id, partition))
        .unwrap_or_else(|| none(ResponseError::CoordinatorNotAvailable, NOT_YET))
}

/// Cluster mode: the leader of partition `key` as this node knows it, with its endpoint on
/// the client's listener.
fn partition_leader(ctx: &Context, key: (uuid::Uuid, i32)) -> Option<Answer> {
    let image = ctx.shard.image();
    let cluster = image.cluster.as_ref()?;
    let leader = ctx
        .shard
        .catalog
        .cluster
        .leader(key)
        // A leader whose connections to this node just closed is most likely dead: naming it
        // would send the client to wait out a connection timeout instead of asking again.
        .filter(|l| {
            l.leader == ctx.broker.node_id || !ctx.shard.catalog.cluster.hung_up(l.leader)
        })?;
    let broker = cluster.brokers.get(&leader.leader)?;
    let (host, port) = broker.endpoint(&ctx.listener)?;
    Some((
        broker.node_id,
        StrBytes::from_string(host.to_string()),
        i32::from(port),
        None,
    ))
}

/// Why a cluster node names no coordinator yet.
const NOT_YET: &str =
    "the group's __consumer_offsets partition has no leader known here yet; retry";
