//! DescribeQuorum (key 55, KIP-595/KIP-853): the controller group, as `kafka-metadata-quorum.sh
//! describe` and the admin clients' `describe_metadata_quorum` ask it, for the topic
//! `__cluster_metadata` partition 0. Any node answers, from what the controller's leader last
//! announced (at most a second old): leader, epoch (Raft term), high watermark, and each voter's
//! log end and when the leader last heard from it and last saw it caught up. The group's voters
//! (the seeds, until AddRaftVoter / RemoveRaftVoter change them) are listed as voters, its
//! learners (nodes that joined through the seeds, voters removed) as observers; `nodes` (v2)
//! lists each voter's RPC address as its `CONTROLLER` listener.
//!
//! A single node keeps its metadata in `metadata.json`, not in a replicated log: it answers
//! UNKNOWN_TOPIC_OR_PARTITION, saying so.

use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeQuorumRequest, DescribeQuorumResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeQuorum,
    min_version: 0,
    max_version: 2,
};

/// KRaft's metadata topic, the name clients ask the quorum of.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

pub fn handle(
    request: DescribeQuorumRequest,
    version: i16,
    ctx: &Context,
) -> DescribeQuorumResponse {
    // Describing the quorum takes DESCRIBE on the cluster.
    if !ctx.allows_cluster(Operation::DESCRIBE) {
        return DescribeQuorumResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str("Authorization failed.")));
    }
    let table = &ctx.shard.catalog.cluster;
    let quorum = ctx.shard.replication.as_ref().and_then(|_| table.quorum());
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let metadata = topic.topic_name.0.as_str() == METADATA_TOPIC;
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let answer = PartitionData::default().with_partition_index(p.partition_index);
                    let refuse = |error: ResponseError, message: String| {
                        answer
                            .clone()
                            .with_error_code(error.code())
                            .with_error_message(Some(StrBytes::from_string(message)))
                            .with_leader_id(BrokerId(-1))
                            .with_leader_epoch(-1)
                            .with_high_watermark(-1)
                    };
                    if !metadata || p.partition_index != 0 {
                        return refuse(
                            ResponseError::UnknownTopicOrPartition,
                            format!("the metadata quorum is {METADATA_TOPIC} partition 0"),
                        );
                    }
                    if ctx.shard.replication.is_none() {
                        return refuse(
                            ResponseError::UnknownTopicOrPartition,
                            "a single node keeps its metadata in metadata.json, with no quorum \
                             (a cluster is started with --seeds)"
                                .into(),
                        );
                    }
                    let Some(quorum) = &quorum else {
                        return refuse(
                            ResponseError::NotLeaderOrFollower,
                            "no controller leader has described the quorum to this node yet".into(),
                        );
                    };
                    // The leader tracks every replica of the group: voters, and learners
                    // (KRaft's observers).
                    let (voters, observers): (Vec<_>, Vec<_>) = quorum
                        .voters
                        .iter()
                        .map(|v| {
                            let state = ReplicaState::default()
                                .with_replica_id(BrokerId(v.node))
                                .with_log_end_offset(v.log_end_offset)
                                .with_last_fetch_timestamp(v.last_fetch_ms)
                                .with_last_caught_up_timestamp(v.last_caught_up_ms);
                            (!v.learner, state)
                        })
                        .partition(|(voter, _)| *voter);
                    let states = |replicas: Vec<(bool, ReplicaState)>| -> Vec<ReplicaState> {
                        replicas.into_iter().map(|(_, state)| state).collect()
                    };
                    let (voters, observers) = (states(voters), states(observers));
                    answer
                        .with_error_code(0)
                        .with_error_message(None)
                        .with_leader_id(BrokerId(quorum.leader))
                        .with_leader_epoch(quorum.epoch)
                        .with_high_watermark(quorum.high_watermark)
                        .with_current_voters(voters)
                        .with_observers(observers)
                })
                .collect();
            TopicData::default()
                .with_topic_name(topic.topic_name)
                .with_partitions(partitions)
        })
        .collect();
    // Each voter's RPC address: from its registration, else (a registration from before
    // seeds carried theirs) from the seed list.
    let image = ctx.shard.image();
    // `nodes` exists from v2 on.
    let nodes = match (&ctx.shard.replication, &quorum) {
        (Some(replication), Some(quorum)) if version >= 2 => quorum
            .voters
            .iter()
            .filter(|v| !v.learner)
            .filter_map(|v| {
                let registered = image
                    .cluster
                    .as_ref()
                    .and_then(|c| c.brokers.get(&v.node))
                    .and_then(|b| b.rpc);
                let address =
                    registered.or_else(|| replication.settings.seeds.get(&v.node).copied())?;
                Some(
                    Node::default()
                        .with_node_id(BrokerId(v.node))
                        .with_listeners(vec![Listener::default()
                            .with_name(StrBytes::from_static_str("CONTROLLER"))
                            .with_host(StrBytes::from_string(address.ip().to_string()))
                            .with_port(address.port())]),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    DescribeQuorumResponse::default()
        .with_error_code(0)
        .with_error_message(None)
        .with_topics(topics)
        .with_nodes(nodes)
}
