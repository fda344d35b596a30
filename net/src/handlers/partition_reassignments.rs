//! AlterPartitionReassignments (key 45) and ListPartitionReassignments (key 46): moving
//! partitions to other brokers, as `kafka-reassign-partitions.sh` and the admin clients'
//! `alter_partition_reassignments` / `list_partition_reassignments` ask it.
//!
//! Alter starts (or, with a null replica list, cancels) a move per partition through the
//! controller and answers once the controller committed it; the move itself goes on in the
//! background, carried out by the partition's Raft group (learners catch up, then one joint
//! configuration change: see `core/src/reassignment.rs`). List answers the moves under way:
//! the partition's whole replica list (target first), the replicas being added and those being
//! removed, as Kafka does. A cancelled move moves back to the list it started from (the
//! replicas it added leave again), which also shows in List until it is done.

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const ALTER_RANGE: ApiRange = ApiRange {
    key: ApiKey::AlterPartitionReassignments,
    min_version: 0,
    max_version: 1,
};

pub const LIST_RANGE: ApiRange = ApiRange {
    key: ApiKey::ListPartitionReassignments,
    min_version: 0,
    max_version: 0,
};

fn broker_ids(nodes: &[i32]) -> Vec<BrokerId> {
    nodes.iter().map(|n| BrokerId(*n)).collect()
}

pub async fn handle_alter(
    request: AlterPartitionReassignmentsRequest,
    version: i16,
    ctx: &Context,
) -> AlterPartitionReassignmentsResponse {
    // v0 has no such flag: any replication factor.
    let allow_factor_change = version == 0 || request.allow_replication_factor_change;
    let response = AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_factor_change);
    // Moving replicas takes ALTER on the cluster (Kafka's rule).
    if !ctx.allows_cluster(Operation::ALTER) {
        return response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "AlterPartitionReassignments needs ALTER on the cluster",
            )));
    }
    let mut asked = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            let target = partition
                .replicas
                .as_ref()
                .map(|r| r.iter().map(|b| b.0).collect::<Vec<i32>>());
            asked.push((topic.name.0.to_string(), partition.partition_index, target));
        }
    }
    let outcomes = sluice_core::controller::reassign_partitions(
        &ctx.shard,
        asked.clone(),
        allow_factor_change,
    )
    .await;
    let mut responses: Vec<ReassignableTopicResponse> = Vec::new();
    for ((topic, partition, target), outcome) in asked.into_iter().zip(outcomes) {
        let (code, message) = match &outcome {
            Ok(()) => (0, None),
            Err(e) => (e.code.code(), Some(e.message.clone())),
        };
        ctx.audit_change(
            "TOPIC",
            &topic,
            (code, message.as_deref()),
            serde_json::json!({ "partition": partition, "replicas": target }),
        );
        let result = ReassignablePartitionResponse::default()
            .with_partition_index(partition)
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string));
        match responses.iter_mut().find(|r| r.name.0.as_str() == topic) {
            Some(r) => r.partitions.push(result),
            None => responses.push(
                ReassignableTopicResponse::default()
                    .with_name(TopicName(StrBytes::from_string(topic)))
                    .with_partitions(vec![result]),
            ),
        }
    }
    response.with_error_code(0).with_responses(responses)
}

pub fn handle_list(
    request: ListPartitionReassignmentsRequest,
    ctx: &Context,
) -> ListPartitionReassignmentsResponse {
    // Kafka asks DESCRIBE on the cluster.
    if !ctx.allows_cluster(Operation::DESCRIBE) {
        return ListPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "ListPartitionReassignments needs DESCRIBE on the cluster",
            )));
    }
    let image = ctx.shard.image();
    let mut topics = Vec::new();
    let Some(cluster) = image.cluster.as_ref() else {
        // A single node never moves a partition.
        return ListPartitionReassignmentsResponse::default().with_topics(topics);
    };
    let wanted = |name: &str, partition: i32| match &request.topics {
        None => true,
        Some(asked) => asked
            .iter()
            .any(|t| t.name.0.as_str() == name && t.partition_indexes.contains(&partition)),
    };
    for (name, assignment) in &cluster.topics {
        let partitions: Vec<OngoingPartitionReassignment> = assignment
            .reassignments
            .iter()
            .filter(|(partition, _)| wanted(name, **partition))
            .map(|(partition, moving)| {
                let replicas = assignment
                    .replicas
                    .get(*partition as usize)
                    .cloned()
                    .unwrap_or_default();
                let removing: Vec<i32> = replicas
                    .iter()
                    .filter(|n| !moving.target.contains(n))
                    .copied()
                    .collect();
                OngoingPartitionReassignment::default()
                    .with_partition_index(*partition)
                    .with_replicas(broker_ids(&replicas))
                    .with_adding_replicas(broker_ids(&moving.adding()))
                    .with_removing_replicas(broker_ids(&removing))
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(StrBytes::from_string(name.clone())))
                    .with_partitions(partitions),
            );
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
