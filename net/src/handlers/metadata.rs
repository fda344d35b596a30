//! Metadata (key 3): the brokers of the cluster, the controller, and topics with their
//! partitions. A single node lists itself and leads every partition at epoch 0; a cluster node
//! lists the registered brokers, the controller group's leader, and each partition's replicas
//! and its leader and epoch (the Raft term) as this node's replica knows them
//! (LEADER_NOT_AVAILABLE when no leader is known, or this node holds no replica). The ISR is
//! the leader's (replicas caught up within `replica_lag_time_max_ms`); a node that does not
//! lead the partition lists every replica.
//!
//! A request naming topics that do not exist auto-creates them when the broker allows it
//! (`auto_create_topics`) and the request does too (`allow_auto_topic_creation`, v4+; always
//! allowed before v4, as in Kafka). A name no topic may have gets INVALID_TOPIC_EXCEPTION, so
//! clients fail at once instead of retrying. Authorized operations (KIP-430) are answered when
//! asked for ([`crate::authorized`]).
//!
//! With an authorizer, a topic the principal may not DESCRIBE is left out of an "every topic"
//! answer and answered TOPIC_AUTHORIZATION_FAILED when named (whether it exists or not, so its
//! existence does not leak); auto-creation needs CREATE on the cluster or the topic (without it
//! a missing topic is UNKNOWN_TOPIC_OR_PARTITION).
//!
//! A cluster node answers only once its image caught up with the controller's commit point
//! (`ClusterTable::caught_up`, at most [`CATCH_UP_WAIT`] after start-up): a node back from a
//! restart would otherwise describe the cluster as it stopped, without the topics created
//! meanwhile, and clients would take them for missing.
//!
//! Nor does it name a leader whose RPC connections to this node just closed
//! (`ClusterTable::hung_up`): a client whose connection to a dead leader broke asks a survivor
//! within a millisecond, before the survivors have elected, and a client told the dead node
//! leads waits its whole metadata refresh interval before asking again. The answer is held up
//! to [`ELECTION_WAIT`] for the election (the closed connections start it at once), then such
//! a partition is answered LEADER_NOT_AVAILABLE, which clients re-query quickly.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::{Operation, ResourceType};
use sluice_core::catalog::Image;
use sluice_core::topics::{validate_topic_name, Topic};
use sluice_core::{controller, resolve_topic, ResponseError, TopicRef};
use uuid::Uuid;

use crate::apis::ApiRange;
use crate::authorized;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::Metadata,
    min_version: 0,
    max_version: 13,
};

/// How long a Metadata request waits for a cluster node's image to catch up before it is
/// answered from the image as it stands.
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a Metadata request waits for the election of a partition whose leader hung up.
/// The survivors campaign as soon as the connections close; a successor whose log is too short
/// to win is followed by the next one 100 ms later.
pub const ELECTION_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Whether `leader` (known, `>= 0`) is another node whose connections to this one closed.
fn hung_up(ctx: &Context, leader: i32) -> bool {
    leader != ctx.broker.node_id && ctx.shard.catalog.cluster.hung_up(leader)
}

/// Whether the partition waits for an election: this node holds a replica of it (elsewhere
/// no leader is known here anyway), and its leader hung up, or it has no leader known while
/// some node hung up lately (the survivors are electing).
fn electing(ctx: &Context, image: &Image, topic: &Topic, partition: i32) -> bool {
    let held_here = ctx
        .shard
        .replicas_of(image, &topic.name, partition)
        .is_some_and(|replicas| replicas.contains(&ctx.broker.node_id));
    if !held_here {
        return false;
    }
    let cluster = &ctx.shard.catalog.cluster;
    match cluster.leader((topic.id, partition)) {
        Some(l) if l.leader >= 0 => hung_up(ctx, l.leader),
        _ => cluster.hang_up_within(ELECTION_WAIT),
    }
}

/// Waits (bounded by [`ELECTION_WAIT`]) while a partition of `topics` waits for an election
/// after a node hung up.
async fn elections(ctx: &Context, image: &Image, topics: &[std::sync::Arc<Topic>]) {
    let cluster = &ctx.shard.catalog.cluster;
    if !cluster.hang_up_within(ELECTION_WAIT * 4) {
        return;
    }
    let deadline = std::time::Instant::now() + ELECTION_WAIT;
    while topics
        .iter()
        .any(|t| (0..t.partitions).any(|p| electing(ctx, image, t, p)))
        && std::time::Instant::now() < deadline
    {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) until this cluster node's image caught up with the controller.
async fn caught_up(ctx: &Context) {
    if ctx.shard.image().cluster.is_none() {
        return;
    }
    let deadline = std::time::Instant::now() + CATCH_UP_WAIT;
    while !ctx.shard.catalog.cluster.caught_up() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub async fn handle(request: MetadataRequest, version: i16, ctx: &Context) -> MetadataResponse {
    caught_up(ctx).await;
    let broker = &ctx.broker;
    // A fenced node (its replication connections closed and it was not heard from since, or
    // it was silent for the session timeout) is left out, as Kafka leaves out a fenced
    // broker: clients then do not pick a dead node for their next request. Partitions still
    // name it among their replicas.
    let brokers = match ctx.shard.image().cluster.as_ref() {
        Some(cluster) => cluster
            .brokers
            .values()
            .filter(|b| {
                !ctx.shard
                    .catalog
                    .cluster
                    .fenced(b.node_id, ctx.broker.node_id)
            })
            .filter_map(|b| {
                let (host, port) = b.endpoint(&ctx.listener)?;
                Some(
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(b.node_id))
                        .with_host(StrBytes::from_string(host.to_string()))
                        .with_port(i32::from(port))
                        .with_rack(b.rack.clone().map(StrBytes::from_string)),
                )
            })
            .collect(),
        None => {
            let (host, port) = broker.endpoint(&ctx.listener);
            vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(broker.node_id))
                .with_host(StrBytes::from_string(host.to_string()))
                .with_port(i32::from(port))]
        }
    };
    // v0: an empty list means every topic; v1+: null means every topic.
    let wanted: Option<Vec<TopicRef>> = match request.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(
            list.into_iter()
                .map(|t| match t.name {
                    Some(name) => TopicRef::Name(name.0.to_string()),
                    None => TopicRef::Id(t.topic_id),
                })
                .collect(),
        ),
    };
    let include_topic_operations = request.include_topic_authorized_operations;
    let cluster_operations = authorized::for_resource(
        ctx,
        request.include_cluster_authorized_operations,
        authorized::CLUSTER,
        ResourceType::Cluster,
        ResourceType::CLUSTER_NAME,
    );
    let describable = |name: &str| ctx.allows_topic(Operation::DESCRIBE, name);
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    if let (Some(refs), true, true) = (
        &wanted,
        allow_auto_create,
        ctx.shard.effective().auto_create_topics,
    ) {
        let image = ctx.shard.image();
        let missing: Vec<String> = refs
            .iter()
            .filter_map(|r| match r {
                TopicRef::Name(n)
                    if image.topic(n).is_none()
                        && validate_topic_name(n).is_ok()
                        && (ctx.allows_unaudited(
                            Operation::CREATE,
                            ResourceType::Cluster,
                            ResourceType::CLUSTER_NAME,
                        ) || ctx.allows_topic(Operation::CREATE, n)) =>
                {
                    Some(n.clone())
                }
                _ => None,
            })
            .collect();
        if !missing.is_empty() {
            controller::auto_create(&ctx.shard, missing).await;
        }
    }
    let image = ctx.shard.image();
    if image.cluster.is_some() {
        let described: Vec<std::sync::Arc<Topic>> = match &wanted {
            None => image.topics().cloned().collect(),
            Some(refs) => refs
                .iter()
                .filter_map(|r| resolve_topic(&image, r).cloned())
                .collect(),
        };
        elections(ctx, &image, &described).await;
    }
    let operations_of = |name: &str| {
        authorized::for_resource(
            ctx,
            include_topic_operations,
            authorized::TOPIC,
            ResourceType::Topic,
            name,
        )
    };
    let unauthorized = |name: Option<TopicName>, id: Uuid| {
        MetadataResponseTopic::default()
            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
            .with_name(name)
            .with_topic_id(id)
            .with_topic_authorized_operations(authorized::answer(include_topic_operations, 0))
    };
    let topics = match wanted {
        None => image
            .topics()
            .filter(|t| ctx.allows_unaudited(Operation::DESCRIBE, ResourceType::Topic, &t.name))
            .map(|t| describe(ctx, t, operations_of(&t.name)))
            .collect(),
        Some(refs) => refs
            .iter()
            .map(|r| match resolve_topic(&image, r) {
                Some(t) if !describable(&t.name) => match r {
                    TopicRef::Name(_) => unauthorized(
                        Some(TopicName(StrBytes::from_string(t.name.clone()))),
                        Uuid::nil(),
                    ),
                    TopicRef::Id(id) => unauthorized(None, *id),
                },
                Some(t) => describe(ctx, t, operations_of(&t.name)),
                None if matches!(r, TopicRef::Name(n) if !describable(n)) => {
                    let TopicRef::Name(n) = r else { unreachable!() };
                    unauthorized(
                        Some(TopicName(StrBytes::from_string(n.clone()))),
                        Uuid::nil(),
                    )
                }
                None => {
                    let (name, id, code) = match r {
                        TopicRef::Name(n) => (
                            Some(TopicName(StrBytes::from_string(n.clone()))),
                            Uuid::nil(),
                            // A name no topic can have: clients fail fast instead of retrying.
                            if validate_topic_name(n).is_err() {
                                ResponseError::InvalidTopicException
                            } else {
                                ResponseError::UnknownTopicOrPartition
                            },
                        ),
                        TopicRef::Id(id) => (None, *id, ResponseError::UnknownTopicId),
                    };
                    MetadataResponseTopic::default()
                        .with_error_code(code.code())
                        .with_name(name)
                        .with_topic_id(id)
                        .with_topic_authorized_operations(authorized::answer(
                            include_topic_operations,
                            authorized::TOPIC,
                        ))
                }
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(controller_id(ctx)))
        .with_topics(topics)
        .with_cluster_authorized_operations(cluster_operations)
}

/// The controller clients send admin requests to: this node on a single node, the controller
/// group's leader in cluster mode (-1 while none is known).
pub fn controller_id(ctx: &Context) -> i32 {
    match ctx.shard.replication {
        Some(_) => ctx.shard.catalog.cluster.controller(),
        None => ctx.broker.node_id,
    }
}

fn describe(ctx: &Context, topic: &Topic, operations: i32) -> MetadataResponseTopic {
    let image = ctx.shard.image();
    let partitions = (0..topic.partitions)
        .map(|p| {
            let partition = MetadataResponsePartition::default().with_partition_index(p);
            let Some(replicas) = ctx.shard.replicas_of(&image, &topic.name, p) else {
                let node = BrokerId(ctx.broker.node_id);
                return partition
                    .with_leader_id(node)
                    .with_leader_epoch(sluice_core::partition::LEADER_EPOCH.0)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node]);
            };
            let leader = ctx
                .shard
                .catalog
                .cluster
                .leader((topic.id, p))
                .filter(|l| l.leader >= 0 && !hung_up(ctx, l.leader));
            // The ISR is known where the leader is; elsewhere every replica is listed.
            let in_sync = leader
                .as_ref()
                .and_then(|l| l.in_sync.clone())
                .unwrap_or_else(|| replicas.to_vec());
            let replicas: Vec<BrokerId> = replicas.iter().copied().map(BrokerId).collect();
            let partition = partition
                .with_replica_nodes(replicas)
                .with_isr_nodes(in_sync.into_iter().map(BrokerId).collect());
            match leader {
                Some(leader) => partition
                    .with_leader_id(BrokerId(leader.leader))
                    .with_leader_epoch(leader.epoch),
                None => partition
                    .with_error_code(ResponseError::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1))
                    .with_leader_epoch(-1),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(topic.name == sluice_core::groups::OFFSETS_TOPIC)
        .with_partitions(partitions)
        .with_topic_authorized_operations(operations)
}
