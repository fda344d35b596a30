//! ElectLeaders (key 43): Kafka's preferred-leader election, as `kafka-leader-election.sh` and
//! the admin clients' `elect_leaders` ask it. Every named partition (every partition, when the
//! request names none) gets its first replica as leader if that replica is alive and in sync:
//! the current leader hands the leadership over (Raft's leadership transfer), and the answer
//! comes once it moved or the request's timeout passed.
//!
//! Unclean elections do not exist in a Raft group: a group elects by itself among a majority
//! of its replicas, and without a majority no replica may lead without risking acknowledged
//! records. So an unclean election answers ELECTION_NOT_NEEDED where the partition has a
//! leader, and ELIGIBLE_LEADERS_NOT_AVAILABLE (with why) where it has none.

use std::time::Duration;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::cluster::{elect_preferred, ElectionRefused};
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::ElectLeaders,
    min_version: 0,
    max_version: 2,
};

const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

/// The longest a request waits for its elections, whatever its timeout says.
const WAIT_AT_MOST: Duration = Duration::from_secs(60);

pub async fn handle(
    request: ElectLeadersRequest,
    version: i16,
    ctx: &Context,
) -> ElectLeadersResponse {
    // v0 has no election type: preferred.
    let election_type = if version == 0 {
        PREFERRED
    } else {
        request.election_type
    };
    let within =
        Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0)).min(WAIT_AT_MOST);
    let named = request.topic_partitions.is_some();
    let asked: Vec<(TopicName, Vec<i32>)> = match request.topic_partitions {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.topic, t.partitions))
            .collect(),
        None => ctx
            .shard
            .image()
            .topics()
            .map(|t| {
                (
                    TopicName(StrBytes::from_string(t.name.clone())),
                    (0..t.partitions).collect(),
                )
            })
            .collect(),
    };
    // Electing leaders takes ALTER on the cluster.
    if !ctx.allows_cluster(Operation::ALTER) {
        let code = ResponseError::ClusterAuthorizationFailed.code();
        let results = asked
            .into_iter()
            .map(|(topic, partitions)| {
                ReplicaElectionResult::default()
                    .with_topic(topic)
                    .with_partition_result(
                        partitions
                            .into_iter()
                            .map(|p| {
                                PartitionResult::default()
                                    .with_partition_id(p)
                                    .with_error_code(code)
                                    .with_error_message(None)
                            })
                            .collect(),
                    )
            })
            .collect();
        return ElectLeadersResponse::default()
            .with_error_code(if version >= 1 { code } else { 0 })
            .with_replica_election_results(results);
    }
    let elections = asked.iter().flat_map(|(topic, partitions)| {
        partitions.iter().map(move |partition| async move {
            let outcome = match election_type {
                PREFERRED => {
                    elect_preferred(&ctx.shard, topic.0.as_str(), *partition, within).await
                }
                UNCLEAN => unclean(ctx, topic.0.as_str(), *partition),
                other => Err(ElectionRefused {
                    error: ResponseError::InvalidRequest,
                    message: format!("unknown election type {other} (0: preferred, 1: unclean)"),
                }),
            };
            (topic.clone(), *partition, outcome)
        })
    });
    let outcomes = futures::future::join_all(elections).await;
    let mut results: Vec<ReplicaElectionResult> = Vec::new();
    for (topic, partition, outcome) in outcomes {
        let (code, message) = match &outcome {
            Ok(()) => (0, None),
            Err(refused) => (refused.error.code(), Some(refused.message.clone())),
        };
        if outcome.is_ok() || code != ResponseError::ElectionNotNeeded.code() {
            ctx.audit_change(
                "TOPIC",
                topic.0.as_str(),
                (code, message.as_deref()),
                serde_json::json!({
                    "partition": partition,
                    "election_type": if election_type == UNCLEAN { "UNCLEAN" } else { "PREFERRED" },
                }),
            );
        }
        // Asked for every partition, Kafka answers only those an election concerned.
        if !named && code == ResponseError::ElectionNotNeeded.code() {
            continue;
        }
        let result = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string));
        match results.iter_mut().find(|r| r.topic == topic) {
            Some(r) => r.partition_result.push(result),
            None => results.push(
                ReplicaElectionResult::default()
                    .with_topic(topic)
                    .with_partition_result(vec![result]),
            ),
        }
    }
    ElectLeadersResponse::default()
        .with_error_code(0)
        .with_replica_election_results(results)
}

/// An unclean election: never needed or possible in a Raft group (see the module docs).
fn unclean(ctx: &Context, topic: &str, partition: i32) -> Result<(), ElectionRefused> {
    let image = ctx.shard.image();
    let Some(found) = image
        .topic(topic)
        .filter(|t| (0..t.partitions).contains(&partition))
    else {
        return Err(ElectionRefused {
            error: ResponseError::UnknownTopicOrPartition,
            message: format!("no partition {partition} of topic {topic:?}"),
        });
    };
    let led = ctx.shard.replication.is_none()
        || ctx
            .shard
            .catalog
            .cluster
            .leader((found.id, partition))
            .is_some_and(|l| l.leader >= 0 && !ctx.shard.catalog.cluster.hung_up(l.leader));
    if led {
        return Err(ElectionRefused {
            error: ResponseError::ElectionNotNeeded,
            message: "the partition has a leader".into(),
        });
    }
    Err(ElectionRefused {
        error: ResponseError::EligibleLeadersNotAvailable,
        message: "no leader now: the partition's Raft group elects one by itself once a \
                  majority of its replicas is alive, and an unclean election (a replica \
                  without the majority's records) would lose acknowledged records"
            .into(),
    })
}
