//! Topic administration: create, delete, add partitions, auto-create.
//!
//! In cluster mode, creating and deleting are commands of the controller group, run by its
//! leader and answered once committed (`cluster`); the other changes are refused there for now.
//!
//! Every change runs on the controller shard (0), one at a time under its lock, as
//! validate → persist the new catalog → publish → act on the owning shards (open new
//! partition logs, close and delete removed ones). The order means an acknowledged change is
//! durable, and a crash between persisting and acting leaves only work that start-up redoes
//! (partitions are opened on first use; orphan directories are removed at start).

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use tracing::{info, warn};
use uuid::Uuid;

use crate::acls::{AclBinding, AclFilter};
use crate::cluster::{ControlError, ShardReplication};
use crate::cluster_metadata::{assign_replicas, ClusterImage, MetadataCommand, Refused};
use crate::quotas::QuotaChange;
use crate::scram::ScramChange;
use crate::shard::{remove_dir_all, Shard};
use crate::topics::{validate_config, validate_topic_name, Topic, PARTITIONS_MAX};
use crate::{ApiError, TopicRef};

/// Shard that owns the catalog.
pub const CONTROLLER_SHARD: usize = 0;

/// A topic to create, as CreateTopics describes it.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's default.
    pub partitions: i32,
    /// -1: the broker's default (1).
    pub replication_factor: i16,
    /// Manual assignment: one replica list per partition (empty: none given).
    pub assignments: Vec<Vec<i32>>,
    pub configs: Vec<(String, Option<String>)>,
}

impl NewTopic {
    /// A topic with every setting at the broker's default.
    pub fn with_defaults(name: impl Into<String>) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions: -1,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: Vec::new(),
        }
    }
}

fn error(code: ResponseError, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        message: message.into(),
    }
}

/// Creates topics (or, with `validate_only`, only checks them). One result per request entry,
/// in order.
pub async fn create_topics(
    shard: &Rc<Shard>,
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<Arc<Topic>, ApiError>> {
    let count = topics.len();
    let outcome = shard
        .invoke_on(CONTROLLER_SHARD, move |controller| async move {
            create_on_controller(&controller, topics, validate_only).await
        })
        .await;
    outcome.unwrap_or_else(|gone| {
        (0..count)
            .map(|_| Err(error(ResponseError::UnknownServerError, gone.to_string())))
            .collect()
    })
}

async fn create_on_controller(
    controller: &Rc<Shard>,
    requested: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<Arc<Topic>, ApiError>> {
    let _turn = controller.controller_turn().await;
    let image = controller.catalog.image();
    let mut topics = image.to_topics();
    if let (Some(replication), Some(cluster)) = (&controller.replication, &image.cluster) {
        return create_in_cluster(
            controller,
            replication,
            cluster,
            &topics,
            requested,
            validate_only,
        )
        .await;
    }
    let duplicated = named_twice(&requested);
    let mut results: Vec<Result<Topic, ApiError>> = Vec::with_capacity(requested.len());
    for new in requested {
        let checked = if duplicated.contains(&new.name) {
            Err(named_twice_error(&new.name))
        } else {
            check_new_topic(controller, &new, &topics)
        };
        if let (Ok(topic), false) = (&checked, validate_only) {
            topics.insert(topic.name.clone(), topic.clone());
        }
        results.push(checked);
    }
    let created: Vec<&Topic> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    if validate_only || created.is_empty() {
        return results.into_iter().map(|r| r.map(Arc::new)).collect();
    }
    if let Err(e) = controller
        .catalog
        .publish(topics, image.producer_ids_reserved)
        .await
    {
        warn!(error = %e, "cannot persist the catalog; topics not created");
        return not_persisted(results, &e)
            .into_iter()
            .map(|r| r.map(Arc::new))
            .collect();
    }
    let mut out = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(topic) => {
                info!(topic = %topic.name, id = %topic.id, partitions = topic.partitions, "topic created");
                let topic = Arc::new(topic);
                open_partitions(controller, &topic, 0).await;
                out.push(Ok(topic));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

/// The names a CreateTopics request gives more than once (each such entry is refused).
fn named_twice(requested: &[NewTopic]) -> HashSet<String> {
    let mut seen = HashSet::new();
    requested
        .iter()
        .filter(|t| !seen.insert(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect()
}

fn named_twice_error(name: &str) -> ApiError {
    error(
        ResponseError::InvalidRequest,
        format!("topic {name} appears more than once in the request"),
    )
}

/// Cluster mode: each topic checked as on a single node, given its replicas (the request's
/// assignment, or Kafka's spread over the registered brokers), then created by the controller
/// group; answered once the command is committed. Only the controller leader creates.
async fn create_in_cluster(
    controller: &Rc<Shard>,
    replication: &ShardReplication,
    cluster: &ClusterImage,
    topics: &BTreeMap<String, Topic>,
    requested: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<Arc<Topic>, ApiError>> {
    let brokers: Vec<i32> = cluster.brokers.keys().copied().collect();
    let duplicated = named_twice(&requested);
    let mut out = Vec::with_capacity(requested.len());
    for new in requested {
        if duplicated.contains(&new.name) {
            out.push(Err(named_twice_error(&new.name)));
            continue;
        }
        let checked = check_new_topic(controller, &new, topics).and_then(|topic| {
            let replicas = cluster_assignment(&new, &topic, &brokers, cluster.version)?;
            Ok((topic, replicas))
        });
        let (topic, replicas) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        if validate_only {
            out.push(Ok(Arc::new(topic)));
            continue;
        }
        let command = MetadataCommand::CreateTopic {
            topic: topic.clone(),
            replicas: replicas.clone(),
        };
        out.push(match replication.control(command).await {
            Ok(()) => {
                info!(topic = %topic.name, id = %topic.id, partitions = topic.partitions,
                    ?replicas, "topic created");
                Ok(Arc::new(topic))
            }
            Err(e) => Err(control_error(e)),
        });
    }
    wait_for_leaders(controller, &out).await;
    out
}

/// How long CreateTopics waits, in cluster mode, for the new partitions to elect leaders.
const LEADERS_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (at most [`LEADERS_WITHIN`]) until every partition of the created topics that has a
/// replica on this node knows its leader, so a client that acts on the answer finds leaders
/// in Metadata (librdkafka, consuming a partition it saw without a leader, can restart from its
/// starting offset later).
async fn wait_for_leaders(controller: &Rc<Shard>, created: &[Result<Arc<Topic>, ApiError>]) {
    let deadline = std::time::Instant::now() + LEADERS_WITHIN;
    for topic in created.iter().filter_map(|r| r.as_ref().ok()) {
        for p in 0..topic.partitions {
            let here = controller
                .replicas_of(&controller.catalog.image(), &topic.name, p)
                .is_some_and(|r| r.contains(&controller.node_id()));
            while here
                && std::time::Instant::now() < deadline
                && controller
                    .catalog
                    .cluster
                    .leader((topic.id, p))
                    .is_none_or(|l| l.leader < 0)
            {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// The replicas of a new topic's partitions in cluster mode.
fn cluster_assignment(
    new: &NewTopic,
    topic: &Topic,
    brokers: &[i32],
    version: u64,
) -> Result<Vec<Vec<i32>>, ApiError> {
    if !new.assignments.is_empty() {
        return Ok(new.assignments.clone());
    }
    let factor = match new.replication_factor {
        -1 => brokers.len().min(DEFAULT_REPLICATION_FACTOR),
        n if n < 1 => {
            return Err(error(
                ResponseError::InvalidReplicationFactor,
                format!("replication factor {n} is below 1"),
            ))
        }
        n => n as usize,
    };
    if factor == 0 || factor > brokers.len() {
        return Err(error(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {factor} is larger than the {} registered broker(s)",
                brokers.len()
            ),
        ));
    }
    // Kafka draws the first broker and the shift at random; any spread will do, as long as
    // topics do not all start on the same broker.
    let seed = crc32c::crc32c(topic.name.as_bytes()) as usize ^ version as usize;
    assign_replicas(brokers, topic.partitions, factor, seed, seed / 7)
        .map_err(|e| error(ResponseError::InvalidReplicationFactor, e.to_string()))
}

/// Cluster mode: the replicas of `topic`'s new partitions `[topic.partitions, count)`: the
/// request's `assignments`, checked (one list per new partition, as wide as the topic's,
/// registered brokers, none twice), or Kafka's spread continued from the existing partitions.
fn new_partitions_in_cluster(
    cluster: &ClusterImage,
    topic: &Topic,
    count: i32,
    assignments: Vec<Vec<i32>>,
) -> Result<Vec<Vec<i32>>, ApiError> {
    let existing = cluster
        .topics
        .get(&topic.name)
        .map(|t| t.replicas.clone())
        .unwrap_or_default();
    let factor = existing.first().map_or(1, Vec::len);
    let added = (count - topic.partitions) as usize;
    let refused = |m: String| error(ResponseError::InvalidReplicaAssignment, m);
    if !assignments.is_empty() {
        if assignments.len() != added {
            return Err(refused(format!(
                "{} assignments for {added} new partitions",
                assignments.len()
            )));
        }
        for list in &assignments {
            if list.len() != factor {
                return Err(refused(format!(
                    "replicas {list:?}: the topic's partitions have {factor} replicas"
                )));
            }
            if let Some(unknown) = list.iter().find(|b| !cluster.brokers.contains_key(b)) {
                return Err(refused(format!("broker {unknown} is not registered")));
            }
            let distinct: HashSet<i32> = list.iter().copied().collect();
            if distinct.len() != list.len() {
                return Err(refused(format!("replicas {list:?} name a broker twice")));
            }
        }
        return Ok(assignments);
    }
    let brokers: Vec<i32> = cluster.brokers.keys().copied().collect();
    // Continue the topic's spread: partition p's first replica where partition 0's is, plus p.
    let start = existing
        .first()
        .and_then(|l| l.first())
        .and_then(|first| {
            let mut sorted = brokers.clone();
            sorted.sort_unstable();
            sorted.iter().position(|b| b == first)
        })
        .unwrap_or(0);
    let seed = crc32c::crc32c(topic.name.as_bytes()) as usize;
    let all = assign_replicas(&brokers, count, factor, start, seed / 7).map_err(|e| {
        error(
            ResponseError::InvalidReplicationFactor,
            format!("{e}: the topic's replication factor no longer fits the brokers"),
        )
    })?;
    Ok(all[topic.partitions as usize..].to_vec())
}

/// A controller command's failure as the Kafka error clients expect.
fn control_error(e: ControlError) -> ApiError {
    let code = match &e {
        ControlError::NotController { .. } | ControlError::LostLeadership { .. } => {
            ResponseError::NotController
        }
        ControlError::Refused(Refused::TopicExists(_) | Refused::TopicIdExists(_)) => {
            ResponseError::TopicAlreadyExists
        }
        ControlError::Refused(Refused::BadAssignment(_)) => ResponseError::InvalidReplicaAssignment,
        ControlError::Refused(Refused::UnknownTopic(_) | Refused::UnknownPartition(..)) => {
            ResponseError::UnknownTopicOrPartition
        }
        ControlError::Refused(Refused::NoReassignment(..)) => {
            ResponseError::NoReassignmentInProgress
        }
        ControlError::Refused(Refused::UnregisteredBroker(_)) => {
            ResponseError::BrokerIdNotRegistered
        }
        ControlError::Refused(
            Refused::BrokerInUse(..) | Refused::StaleVoters(_) | Refused::NoVoters,
        ) => ResponseError::InvalidRequest,
        ControlError::TimedOut(_) => ResponseError::RequestTimedOut,
        ControlError::Refused(_) | ControlError::Failed(_) => ResponseError::UnknownServerError,
    };
    error(code, e.to_string())
}

/// Turns every success of a change that could not be persisted into KAFKA_STORAGE_ERROR.
fn not_persisted<T>(
    results: Vec<Result<T, ApiError>>,
    e: &crate::catalog::CatalogError,
) -> Vec<Result<T, ApiError>> {
    results
        .into_iter()
        .map(|r| {
            r.and_then(|_| {
                Err(error(
                    ResponseError::KafkaStorageError,
                    format!("cannot persist the catalog: {e}"),
                ))
            })
        })
        .collect()
}

/// Opens partitions `from..` of `topic` on their owners, so their directories exist and a
/// failure shows in the log now rather than at the first produce.
async fn open_partitions(controller: &Rc<Shard>, topic: &Arc<Topic>, from: i32) {
    let opens = (from..topic.partitions).map(|p| {
        let topic = topic.clone();
        let owner = controller.owner_of(&topic.name, p);
        controller.invoke_on(owner, move |shard| async move {
            shard
                .partition(&topic, p)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    });
    for (p, opened) in futures::future::join_all(opens)
        .await
        .into_iter()
        .enumerate()
    {
        if let Err(e) = opened.map_err(|e| e.to_string()).and_then(|r| r) {
            warn!(topic = %topic.name, partition = from + p as i32, error = %e, "cannot open a new partition");
        }
    }
}

/// Validates one topic to create and builds it.
fn check_new_topic(
    controller: &Shard,
    new: &NewTopic,
    existing: &BTreeMap<String, Topic>,
) -> Result<Topic, ApiError> {
    validate_topic_name(&new.name).map_err(|m| error(ResponseError::InvalidTopicException, m))?;
    if existing.contains_key(&new.name) {
        return Err(error(
            ResponseError::TopicAlreadyExists,
            format!("topic {} already exists", new.name),
        ));
    }
    let settings = &controller.settings;
    let (partitions, replicas) = if new.assignments.is_empty() {
        let partitions = match new.partitions {
            -1 => controller.effective().default_partitions,
            n => n,
        };
        (partitions, new.replication_factor)
    } else {
        if new.partitions != -1 || new.replication_factor != -1 {
            return Err(error(
                ResponseError::InvalidRequest,
                "give either a replica assignment or num_partitions and replication_factor",
            ));
        }
        let replicas = new.assignments[0].len();
        if new.assignments.iter().any(|a| a.len() != replicas) {
            return Err(error(
                ResponseError::InvalidReplicaAssignment,
                "every partition needs the same number of replicas",
            ));
        }
        (
            i32::try_from(new.assignments.len()).unwrap_or(i32::MAX),
            i16::try_from(replicas).unwrap_or(i16::MAX),
        )
    };
    if !(1..=PARTITIONS_MAX).contains(&partitions) {
        return Err(error(
            ResponseError::InvalidPartitions,
            format!("{partitions} partitions: a topic has 1 to {PARTITIONS_MAX}"),
        ));
    }
    if controller.replication.is_none() {
        check_replication_factor(settings.clamp_replication_factor, replicas)?;
    }
    let mut configs = BTreeMap::new();
    for (name, value) in &new.configs {
        let Some(value) = value else {
            return Err(error(
                ResponseError::InvalidConfig,
                format!("config {name} has a null value"),
            ));
        };
        validate_config(name, value).map_err(|m| error(ResponseError::InvalidConfig, m))?;
        configs.insert(name.clone(), value.trim().to_string());
    }
    let topic = Topic {
        name: new.name.clone(),
        id: Uuid::new_v4(),
        partitions,
        configs,
    };
    topic
        .log_config(&settings.log_defaults)
        .validate()
        .map_err(|e| error(ResponseError::InvalidConfig, e.to_string()))?;
    Ok(topic)
}

/// A single node holds one replica of each partition. Asking for more is refused (the default)
/// or, with `clamp`, accepted as one: test suites and tools often ask for 3.
fn check_replication_factor(clamp: bool, replicas: i16) -> Result<(), ApiError> {
    match replicas {
        -1 | 1 => Ok(()),
        n if n > 1 && clamp => Ok(()),
        n if n > 1 => Err(error(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {n} is larger than the 1 broker of this single-node cluster \
                 (start sluice with clamp_replication_factor = true to accept it as 1)"
            ),
        )),
        n => Err(error(
            ResponseError::InvalidReplicationFactor,
            format!("replication factor {n} is below 1"),
        )),
    }
}

/// One partition's wanted move (AlterPartitionReassignments): topic, partition, and the new
/// replica list (`None`: cancel the move under way).
pub type ReassignRequest = (String, i32, Option<Vec<i32>>);

/// Starts (or cancels) partition moves, one result per request, each answered once the
/// controller committed it (the move itself goes on in the background: see
/// `reassignment.rs`). `allow_replication_factor_change` false (KIP-860) refuses a target of
/// another length than the partition's replica list. On a single node the only list is the
/// node itself.
pub async fn reassign_partitions(
    shard: &Rc<Shard>,
    requests: Vec<ReassignRequest>,
    allow_replication_factor_change: bool,
) -> Vec<Result<(), ApiError>> {
    let count = requests.len();
    shard
        .invoke_on(CONTROLLER_SHARD, move |controller| async move {
            reassign_on_controller(&controller, requests, allow_replication_factor_change).await
        })
        .await
        .unwrap_or_else(|gone| {
            (0..count)
                .map(|_| Err(error(ResponseError::UnknownServerError, gone.to_string())))
                .collect()
        })
}

async fn reassign_on_controller(
    controller: &Rc<Shard>,
    requests: Vec<ReassignRequest>,
    allow_replication_factor_change: bool,
) -> Vec<Result<(), ApiError>> {
    let _turn = controller.controller_turn().await;
    let mut results = Vec::with_capacity(requests.len());
    for (name, partition, target) in requests {
        let image = controller.catalog.image();
        let Some(topic) = image
            .topic(&name)
            .filter(|t| (0..t.partitions).contains(&partition))
        else {
            results.push(Err(error(
                ResponseError::UnknownTopicOrPartition,
                format!("no partition {partition} of topic {name}"),
            )));
            continue;
        };
        let current: Vec<i32> = controller
            .replicas_of(&image, &name, partition)
            .map_or_else(|| vec![controller.node_id()], <[i32]>::to_vec);
        let moving = image
            .cluster
            .as_ref()
            .and_then(|c| c.topics.get(&name))
            .and_then(|t| t.reassignments.get(&partition));
        let width = moving.map_or(current.len(), |m| m.original.len());
        if let Some(target) = &target {
            if !allow_replication_factor_change && target.len() != width {
                results.push(Err(error(
                    ResponseError::InvalidReplicationFactor,
                    format!(
                        "the target has {} replicas, the partition {width}, and the request does \
                         not allow the replication factor to change",
                        target.len()
                    ),
                )));
                continue;
            }
        }
        let Some(replication) = &controller.replication else {
            results.push(match target {
                None => Err(error(
                    ResponseError::NoReassignmentInProgress,
                    format!("no reassignment of partition {partition} of {name} is in progress"),
                )),
                Some(target) if target == current => Ok(()),
                Some(target) => Err(error(
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "replicas {target:?}: a single node holds every partition on broker {}",
                        controller.node_id()
                    ),
                )),
            });
            continue;
        };
        let command = MetadataCommand::Reassign {
            id: topic.id,
            partition,
            target: target.clone(),
        };
        results.push(match replication.control(command).await {
            Ok(()) => {
                info!(topic = %name, partition, ?target, "partition reassignment accepted");
                Ok(())
            }
            Err(e) => Err(control_error(e)),
        });
    }
    results
}

/// Deletes topics: removed from the catalog (durably), then their logs are closed and their
/// directories removed. One result per entry: the deleted topic's name and id.
pub async fn delete_topics(
    shard: &Rc<Shard>,
    topics: Vec<TopicRef>,
) -> Vec<Result<(String, Uuid), ApiError>> {
    let count = topics.len();
    shard
        .invoke_on(CONTROLLER_SHARD, move |controller| async move {
            delete_on_controller(&controller, topics).await
        })
        .await
        .unwrap_or_else(|gone| {
            (0..count)
                .map(|_| Err(error(ResponseError::UnknownServerError, gone.to_string())))
                .collect()
        })
}

async fn delete_on_controller(
    controller: &Rc<Shard>,
    requested: Vec<TopicRef>,
) -> Vec<Result<(String, Uuid), ApiError>> {
    let _turn = controller.controller_turn().await;
    let image = controller.catalog.image();
    let mut topics = image.to_topics();
    let mut results = Vec::with_capacity(requested.len());
    let cluster = controller.replication.as_ref();
    for wanted in requested {
        let found = match &wanted {
            TopicRef::Name(name) => image.topic(name),
            TopicRef::Id(id) => image.topic_by_id(*id),
        };
        results.push(match (found, &wanted) {
            (Some(topic), _)
                if topic.name == crate::groups::OFFSETS_TOPIC
                    || topic.name == crate::transactions::TXN_STATE_TOPIC =>
            {
                Err(error(
                    ResponseError::InvalidTopicException,
                    format!("the internal topic {} cannot be deleted", topic.name),
                ))
            }
            (Some(topic), _) if cluster.is_some() => {
                let replication = cluster.expect("checked");
                let deleted = replication
                    .control(MetadataCommand::DeleteTopic { id: topic.id })
                    .await;
                match deleted {
                    // Every node's shards remove their replicas as the image changes.
                    Ok(()) => {
                        info!(topic = %topic.name, id = %topic.id, "topic deleted");
                        Ok((topic.name.clone(), topic.id))
                    }
                    Err(e) => Err(control_error(e)),
                }
            }
            (Some(topic), _) if topics.remove(&topic.name).is_some() => {
                Ok((topic.name.clone(), topic.id))
            }
            (_, TopicRef::Name(name)) => Err(error(
                ResponseError::UnknownTopicOrPartition,
                format!("no topic named {name}"),
            )),
            (_, TopicRef::Id(id)) => Err(error(
                ResponseError::UnknownTopicId,
                format!("no topic with id {id}"),
            )),
        });
    }
    let deleted: Vec<(String, Uuid)> = results.iter().filter_map(|r| r.clone().ok()).collect();
    if deleted.is_empty() || cluster.is_some() {
        return results;
    }
    if let Err(e) = controller
        .catalog
        .publish(topics, image.producer_ids_reserved)
        .await
    {
        warn!(error = %e, "cannot persist the catalog; topics not deleted");
        return not_persisted(results, &e);
    }
    for (name, id) in &deleted {
        let id = *id;
        for closed in controller
            .invoke_on_all(move |shard| async move { shard.drop_topic_partitions(id).await })
            .await
        {
            if let Err(e) = closed {
                warn!(topic = %name, error = %e, "closing partitions of a deleted topic");
            }
        }
        // The files go in the background, outside the controller's turn: removing gigabytes
        // takes seconds (ext4 mounted with discard), and creates must not wait for it. The
        // directory name carries the topic id, so a re-created topic never meets them, and
        // start-up removes what a crash left.
        let dir = crate::topics::topic_dir(controller.catalog.data_dir(), name, id);
        glommio::spawn_local(async move {
            if let Err(e) = remove_dir_all(dir.clone()).await {
                warn!(dir = %dir.display(), error = %e, "cannot remove a deleted topic's files; start-up will retry");
            }
        })
        .detach();
        info!(topic = %name, %id, "topic deleted");
    }
    results
}

/// Raises the partition count of `name` to `count`. `validate_only` checks without changing.
/// In cluster mode the new partitions' replicas are `assignments` (one broker list per new
/// partition, as CreatePartitions carries them) or Kafka's spread over the registered brokers;
/// a single node ignores them.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    name: String,
    count: i32,
    assignments: Vec<Vec<i32>>,
    validate_only: bool,
) -> Result<(), ApiError> {
    shard
        .invoke_on(CONTROLLER_SHARD, move |controller| async move {
            let _turn = controller.controller_turn().await;
            let image = controller.catalog.image();
            let mut topics = image.to_topics();
            let Some(topic) = topics.get_mut(&name) else {
                return Err(error(
                    ResponseError::UnknownTopicOrPartition,
                    format!("no topic named {name}"),
                ));
            };
            let before = topic.partitions;
            if count <= before {
                return Err(error(
                    ResponseError::InvalidPartitions,
                    format!("topic {name} has {before} partitions; the new count must be larger, not {count}"),
                ));
            }
            if count > PARTITIONS_MAX {
                return Err(error(
                    ResponseError::InvalidPartitions,
                    format!("{count} partitions: a topic has at most {PARTITIONS_MAX}"),
                ));
            }
            if let (Some(replication), Some(cluster)) = (&controller.replication, &image.cluster) {
                let replicas = new_partitions_in_cluster(cluster, topic, count, assignments)?;
                if validate_only {
                    return Ok(());
                }
                let command = MetadataCommand::AddPartitions {
                    id: topic.id,
                    replicas: replicas.clone(),
                    from: Some(before),
                };
                replication.control(command).await.map_err(control_error)?;
                info!(topic = %name, from = before, to = count, ?replicas, "partitions added");
                let mut grown = topic.clone();
                grown.partitions = count;
                wait_for_leaders(&controller, &[Ok(Arc::new(grown))]).await;
                return Ok(());
            }
            if validate_only {
                return Ok(());
            }
            topic.partitions = count;
            let grown = Arc::new(topic.clone());
            controller
                .catalog
                .publish(topics, image.producer_ids_reserved)
                .await
                .map_err(|e| {
                error(
                    ResponseError::KafkaStorageError,
                    format!("cannot persist the catalog: {e}"),
                )
            })?;
            info!(topic = %name, from = before, to = count, "partitions added");
            open_partitions(&controller, &grown, before).await;
            Ok(())
        })
        .await
        .unwrap_or_else(|gone| Err(error(ResponseError::UnknownServerError, gone.to_string())))
}

/// Creates each named topic that does not exist yet, with the broker's defaults (topic
/// auto-creation, when enabled). Names that are invalid are left alone.
pub async fn auto_create(shard: &Rc<Shard>, names: Vec<String>) {
    let image = shard.image();
    let missing: Vec<NewTopic> = names
        .into_iter()
        .filter(|n| image.topic(n).is_none() && validate_topic_name(n).is_ok())
        .map(NewTopic::with_defaults)
        .collect();
    if missing.is_empty() {
        return;
    }
    for (result, name) in create_topics(shard, missing.clone(), false)
        .await
        .into_iter()
        .zip(missing)
    {
        match result {
            Ok(_) => info!(topic = %name.name, "topic auto-created"),
            Err(e) if e.code == ResponseError::TopicAlreadyExists => {}
            // Cluster mode: only the controller creates (clients also ask it, through the
            // controller id Metadata names); not worth a warning per Metadata request.
            Err(e) if e.code == ResponseError::NotController => {
                tracing::debug!(topic = %name.name, "auto-creation is the controller's");
            }
            Err(e) => warn!(topic = %name.name, error = %e.message, "cannot auto-create topic"),
        }
    }
}

/// The replication factor of a topic created without one, in cluster mode (fewer brokers: all).
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// Producer ids reserved (persisted) at a time; a restart skips the rest of a block, so an id is
/// never handed out twice.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// InitProducerId for an idempotent (non-transactional) producer: a new producer id at epoch 0;
/// or, when the producer names its current id and epoch (KIP-360, after a sequence error), the
/// same id at the next epoch, which fences the old one.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    current: Option<(i64, i16)>,
) -> Result<(i64, i16), ApiError> {
    if let Some((id, epoch)) = current {
        if id >= 0 && (0..i16::MAX - 1).contains(&epoch) {
            return Ok((id, epoch + 1));
        }
    }
    shard
        .invoke_on(CONTROLLER_SHARD, |controller| async move {
            let _turn = controller.controller_turn().await;
            let image = controller.catalog.image();
            let (next, end) = controller
                .producer_ids
                .get()
                .unwrap_or((image.producer_ids_reserved, image.producer_ids_reserved));
            let (next, end) = if next < end {
                (next, end)
            } else if let Some(replication) = &controller.replication {
                // Cluster mode: a block of the controller's, for this node alone.
                replication.producer_id_block().await.ok_or_else(|| {
                    error(
                        ResponseError::CoordinatorNotAvailable,
                        "the broker is stopping",
                    )
                })?
            } else {
                let end = next + PRODUCER_ID_BLOCK;
                controller
                    .catalog
                    .publish(image.to_topics(), end)
                    .await
                    .map_err(|e| {
                        error(
                            ResponseError::KafkaStorageError,
                            format!("cannot reserve producer ids: {e}"),
                        )
                    })?;
                (next, end)
            };
            controller.producer_ids.set(Some((next + 1, end)));
            Ok((next, 0))
        })
        .await
        .unwrap_or_else(|gone| Err(error(ResponseError::UnknownServerError, gone.to_string())))
}

/// One change to a topic config (IncrementalAlterConfigs' operations; AlterConfigs is a set of
/// `Set`s replacing every config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    Set(String),
    Delete,
    /// Add an element to a list config (`cleanup.policy`).
    Append(String),
    /// Remove an element from a list config.
    Subtract(String),
}

/// Changes topic `name`'s configs: the listed changes (or, with `replace_all`, exactly the
/// listed values, every other config back to its default). Validated as CreateTopics
/// validates; applied to the open partition logs of every shard once persisted.
pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    name: String,
    changes: Vec<(String, ConfigOp)>,
    replace_all: bool,
    validate_only: bool,
) -> Result<(), ApiError> {
    shard
        .invoke_on(CONTROLLER_SHARD, move |controller| async move {
            let _turn = controller.controller_turn().await;
            let image = controller.catalog.image();
            let mut topics = image.to_topics();
            let Some(topic) = topics.get_mut(&name) else {
                return Err(error(
                    ResponseError::UnknownTopicOrPartition,
                    format!("no topic named {name}"),
                ));
            };
            let mut configs = if replace_all {
                BTreeMap::new()
            } else {
                topic.configs.clone()
            };
            for (key, op) in changes {
                let def = crate::topics::config_def(&key).ok_or_else(|| {
                    error(
                        ResponseError::InvalidConfig,
                        format!("unknown topic config {key:?}"),
                    )
                })?;
                let current = configs
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| def.default.to_string());
                let list = |v: &str| -> Vec<String> {
                    v.split(',')
                        .map(|e| e.trim().to_string())
                        .filter(|e| !e.is_empty())
                        .collect()
                };
                let value = match op {
                    ConfigOp::Delete => {
                        configs.remove(&key);
                        continue;
                    }
                    ConfigOp::Set(v) => v,
                    ConfigOp::Append(_) | ConfigOp::Subtract(_)
                        if def.kind != crate::topics::ConfigType::List =>
                    {
                        return Err(error(
                            ResponseError::InvalidConfig,
                            format!("{key} is not a list: APPEND and SUBTRACT do not apply"),
                        ))
                    }
                    ConfigOp::Append(v) => {
                        let mut items = list(&current);
                        for item in list(&v) {
                            if !items.contains(&item) {
                                items.push(item);
                            }
                        }
                        items.join(",")
                    }
                    ConfigOp::Subtract(v) => {
                        let gone = list(&v);
                        list(&current)
                            .into_iter()
                            .filter(|i| !gone.contains(i))
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                };
                validate_config(&key, &value)
                    .map_err(|m| error(ResponseError::InvalidConfig, m))?;
                configs.insert(key, value.trim().to_string());
            }
            topic.configs = configs;
            topic
                .log_config(&controller.settings.log_defaults)
                .validate()
                .map_err(|e| error(ResponseError::InvalidConfig, e.to_string()))?;
            if validate_only {
                return Ok(());
            }
            if let Some(replication) = &controller.replication {
                // Every node applies the new configs to its replicas as its image changes.
                let command = MetadataCommand::SetTopicConfigs {
                    id: topic.id,
                    configs: topic.configs.clone(),
                };
                replication.control(command).await.map_err(control_error)?;
                info!(topic = %name, configs = ?topic.configs, "topic configs changed");
                return Ok(());
            }
            let changed = Arc::new(topic.clone());
            controller
                .catalog
                .publish(topics, image.producer_ids_reserved)
                .await
                .map_err(|e| {
                    error(
                        ResponseError::KafkaStorageError,
                        format!("cannot persist the catalog: {e}"),
                    )
                })?;
            info!(topic = %name, configs = ?changed.configs, "topic configs changed");
            for applied in controller
                .invoke_on_all(move |s| async move { s.reconfigure_topic(&changed) })
                .await
            {
                if let Err(e) = applied {
                    warn!(topic = %name, error = %e, "applying new topic configs");
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|gone| Err(error(ResponseError::UnknownServerError, gone.to_string())))
}

/// Changes dynamic broker configs (`Some` sets, `None` deletes back to the start-up value);
/// with `replace_all`, every dynamic config not listed goes back to its start-up value.
pub async fn alter_broker_configs(
    shard: &Rc<Shard>,
    changes: Vec<(String, Option<String>)>,
    replace_all: bool,
    validate_only: bool,
) -> Result<(), ApiError> {
    shard
        .invoke_on(CONTROLLER_SHARD, move |controller| async move {
            let _turn = controller.controller_turn().await;
            let image = controller.catalog.image();
            let mut configs = if replace_all {
                BTreeMap::new()
            } else {
                image.broker_configs.clone()
            };
            for (name, value) in changes {
                match value {
                    Some(v) => {
                        crate::broker_configs::validate(&name, &v)
                            .map_err(|m| error(ResponseError::InvalidConfig, m))?;
                        configs.insert(name, v.trim().to_string());
                    }
                    None => {
                        if !crate::broker_configs::DYNAMIC
                            .iter()
                            .any(|(n, _)| *n == name)
                        {
                            return Err(error(
                                ResponseError::InvalidConfig,
                                format!("{name} is not a dynamic broker config"),
                            ));
                        }
                        configs.remove(&name);
                    }
                }
            }
            if validate_only {
                return Ok(());
            }
            if let Some(replication) = &controller.replication {
                let command = MetadataCommand::SetBrokerConfigs {
                    configs: configs.clone(),
                };
                replication.control(command).await.map_err(control_error)?;
                info!(configs = ?configs, "broker configs changed");
                return Ok(());
            }
            controller
                .catalog
                .publish_all(
                    image.to_topics(),
                    image.producer_ids_reserved,
                    configs.clone(),
                    image.scram_users.clone(),
                    image.acls.clone(),
                    image.client_quotas.clone(),
                )
                .await
                .map_err(|e| {
                    error(
                        ResponseError::KafkaStorageError,
                        format!("cannot persist the catalog: {e}"),
                    )
                })?;
            info!(configs = ?configs, "broker configs changed");
            Ok(())
        })
        .await
        .unwrap_or_else(|gone| Err(error(ResponseError::UnknownServerError, gone.to_string())))
}

/// Sets and removes SCRAM credentials (AlterUserScramCredentials). `groups` holds one list of
/// changes per user: a group takes effect whole or not at all (deleting a credential that does
/// not exist: RESOURCE_NOT_FOUND), and the groups that pass are made durable together: the
/// catalog file on a single node, one controller command in cluster mode. Authentication reads
/// the new credentials from the next image on.
pub async fn alter_scram_credentials(
    shard: &Rc<Shard>,
    groups: Vec<Vec<ScramChange>>,
) -> Vec<Result<(), ApiError>> {
    let count = groups.len();
    access_change(shard, count, move |controller| async move {
        let image = controller.catalog.image();
        let mut users = image.scram_users.clone();
        let mut accepted = Vec::new();
        let results: Vec<Result<(), ApiError>> = groups
            .into_iter()
            .map(|group| {
                let mut changed = users.clone();
                for change in &group {
                    change.apply(&mut changed).map_err(|m| {
                        let code = match change {
                            ScramChange::Delete { .. } => ResponseError::ResourceNotFound,
                            ScramChange::Upsert { .. } => ResponseError::UnacceptableCredential,
                        };
                        error(code, m)
                    })?;
                }
                users = changed;
                accepted.extend(group);
                Ok(())
            })
            .collect();
        if accepted.is_empty() {
            return results;
        }
        let persisted = persist_access(
            &controller,
            &image,
            |parts| parts.scram_users = users,
            || MetadataCommand::AlterScramCredentials {
                changes: accepted.clone(),
            },
        )
        .await;
        if persisted.is_ok() {
            for change in &accepted {
                info!(user = change.user(), change = %change.action(),
                        "SCRAM credential changed");
            }
        }
        fail_accepted(results, persisted)
    })
    .await
}

/// Adds ACLs (CreateAcls): each checked on its own; the valid ones made durable together (the
/// catalog file, or one controller command in cluster mode). Adding one that exists changes
/// nothing and succeeds, as Kafka does.
pub async fn create_acls(shard: &Rc<Shard>, acls: Vec<AclBinding>) -> Vec<Result<(), ApiError>> {
    let count = acls.len();
    access_change(shard, count, move |controller| async move {
        let image = controller.catalog.image();
        let mut results = Vec::with_capacity(acls.len());
        let mut accepted = Vec::new();
        for acl in acls {
            match acl.check() {
                Ok(()) => {
                    results.push(Ok(()));
                    accepted.push(acl);
                }
                Err(m) => results.push(Err(error(ResponseError::InvalidRequest, m))),
            }
        }
        let mut stored = image.acls.clone();
        for acl in &accepted {
            if !stored.contains(acl) {
                stored.push(acl.clone());
            }
        }
        if stored.len() == image.acls.len() {
            return results;
        }
        let persisted = persist_access(
            &controller,
            &image,
            |parts| parts.acls = stored,
            || MetadataCommand::CreateAcls {
                acls: accepted.clone(),
            },
        )
        .await;
        if persisted.is_ok() {
            for acl in &accepted {
                info!(acl = ?acl, "ACL created");
            }
        }
        fail_accepted(results, persisted)
    })
    .await
}

/// Removes the ACLs each filter matches (DeleteAcls); per filter, the bindings it removed.
pub async fn delete_acls(
    shard: &Rc<Shard>,
    filters: Vec<AclFilter>,
) -> Vec<Result<Vec<AclBinding>, ApiError>> {
    let count = filters.len();
    access_change(shard, count, move |controller| async move {
        let image = controller.catalog.image();
        let matched: Vec<Vec<AclBinding>> = filters
            .iter()
            .map(|f| {
                image
                    .acls
                    .iter()
                    .filter(|a| f.matches(a))
                    .cloned()
                    .collect()
            })
            .collect();
        let doomed: Vec<AclBinding> = matched.iter().flatten().cloned().collect();
        if doomed.is_empty() {
            return matched.into_iter().map(Ok).collect();
        }
        let kept = image
            .acls
            .iter()
            .filter(|a| !doomed.contains(a))
            .cloned()
            .collect();
        let persisted = persist_access(
            &controller,
            &image,
            |parts| parts.acls = kept,
            || MetadataCommand::DeleteAcls {
                acls: doomed.clone(),
            },
        )
        .await;
        match persisted {
            Ok(()) => {
                for acl in &doomed {
                    info!(acl = ?acl, "ACL deleted");
                }
                matched.into_iter().map(Ok).collect()
            }
            Err(e) => matched.iter().map(|_| Err(e.clone())).collect(),
        }
    })
    .await
}

/// Runs a change of users, ACLs or client quotas on the controller shard, in the controller's
/// turn; `work` answers one result per item. If the controller shard is gone, each of the
/// `count` items answers UNKNOWN_SERVER_ERROR.
async fn access_change<T, F, Fut>(
    shard: &Rc<Shard>,
    count: usize,
    work: F,
) -> Vec<Result<T, ApiError>>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<Result<T, ApiError>>> + 'static,
{
    shard
        .invoke_on(CONTROLLER_SHARD, move |controller| async move {
            let _turn = controller.controller_turn().await;
            work(controller.clone()).await
        })
        .await
        .unwrap_or_else(|gone| {
            (0..count)
                .map(|_| Err(error(ResponseError::UnknownServerError, gone.to_string())))
                .collect()
        })
}

/// The items that passed their checks answer `persisted`'s error when the change could not be
/// made durable; the refused ones keep their own.
fn fail_accepted(
    mut results: Vec<Result<(), ApiError>>,
    persisted: Result<(), ApiError>,
) -> Vec<Result<(), ApiError>> {
    if let Err(e) = persisted {
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            *result = Err(e.clone());
        }
    }
    results
}

/// The parts of the catalog that users, ACLs and quotas change.
struct AccessParts {
    scram_users: crate::scram::ScramUsers,
    acls: Vec<AclBinding>,
    client_quotas: Vec<crate::quotas::ClientQuota>,
}

/// Makes a change of users, ACLs or client quotas durable: on a single node the catalog file
/// with `edit` applied to the current parts, in cluster mode the controller command `command`
/// builds (every node applies it to its image).
async fn persist_access(
    controller: &Rc<Shard>,
    image: &crate::catalog::Image,
    edit: impl FnOnce(&mut AccessParts),
    command: impl FnOnce() -> MetadataCommand,
) -> Result<(), ApiError> {
    if let Some(replication) = controller.replication.as_ref() {
        return replication.control(command()).await.map_err(control_error);
    }
    let mut parts = AccessParts {
        scram_users: image.scram_users.clone(),
        acls: image.acls.clone(),
        client_quotas: image.client_quotas.clone(),
    };
    edit(&mut parts);
    controller
        .catalog
        .publish_all(
            image.to_topics(),
            image.producer_ids_reserved,
            image.broker_configs.clone(),
            parts.scram_users,
            parts.acls,
            parts.client_quotas,
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            warn!(error = %e, "cannot persist the catalog; nothing changed");
            error(
                ResponseError::KafkaStorageError,
                format!("cannot persist the catalog: {e}"),
            )
        })
}

/// Removes broker `node_id`'s registration (Kafka's UnregisterBroker): a node that joined
/// through the seeds, stopped, with no replica left on it. In cluster mode only: a single node
/// has no registrations (INVALID_REQUEST).
pub async fn unregister_broker(shard: &Rc<Shard>, node_id: i32) -> Result<(), ApiError> {
    let results = access_change(shard, 1, move |controller| async move {
        let Some(replication) = controller.replication.as_ref() else {
            return vec![Err(error(
                ResponseError::InvalidRequest,
                "a single node has no broker registrations (a cluster is started with --seeds)"
                    .to_string(),
            ))];
        };
        vec![replication
            .control(MetadataCommand::UnregisterBroker { node_id })
            .await
            .map_err(control_error)]
    })
    .await;
    results.into_iter().next().unwrap_or(Ok(()))
}

/// A change to the controller group's voters (KIP-853).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoterChange {
    /// AddRaftVoter: a registered node becomes a voter (it first catches up as a learner).
    Add(i32),
    /// RemoveRaftVoter: a voter becomes a learner (an observer while it runs).
    Remove(i32),
}

/// Changes the controller group's voters (AddRaftVoter, RemoveRaftVoter): commits the new
/// voter set to the metadata log; the controller leader then changes the group's configuration
/// toward it, one node at a time (`cluster::follow_controller_membership`). Answers once the
/// set is committed; DescribeQuorum shows when the configuration follows. Refused: a node
/// already a voter (DUPLICATE_VOTER), one that is not (VOTER_NOT_FOUND), the last voter, an
/// unregistered node (BROKER_ID_NOT_REGISTERED), a single node (INVALID_REQUEST).
pub async fn change_controller_voters(
    shard: &Rc<Shard>,
    change: VoterChange,
) -> Result<(), ApiError> {
    let results = access_change(shard, 1, move |controller| async move {
        let Some(replication) = controller.replication.as_ref() else {
            return vec![Err(error(
                ResponseError::InvalidRequest,
                "a single node has no controller quorum (a cluster is started with --seeds)"
                    .to_string(),
            ))];
        };
        let image = controller.image();
        let Some(cluster) = image.cluster.as_ref() else {
            return vec![Err(error(
                ResponseError::NotController,
                "this node has no cluster metadata yet".to_string(),
            ))];
        };
        let from = cluster.controller_voters.clone();
        let mut voters = cluster.controller_voters_or(replication.settings.seeds.keys().copied());
        match change {
            VoterChange::Add(node) => {
                if voters.contains(&node) {
                    return vec![Err(error(
                        ResponseError::DuplicateVoter,
                        format!("node {node} is already a controller voter"),
                    ))];
                }
                if !cluster.brokers.contains_key(&node) {
                    return vec![Err(error(
                        ResponseError::BrokerIdNotRegistered,
                        format!("no broker {node} is registered"),
                    ))];
                }
                voters.push(node);
            }
            VoterChange::Remove(node) => {
                if !voters.contains(&node) {
                    return vec![Err(error(
                        ResponseError::VoterNotFound,
                        format!("node {node} is not a controller voter (voters: {voters:?})"),
                    ))];
                }
                if voters.len() == 1 {
                    return vec![Err(error(
                        ResponseError::InvalidRequest,
                        format!("node {node} is the controller group's last voter"),
                    ))];
                }
                voters.retain(|n| *n != node);
            }
        }
        voters.sort_unstable();
        vec![replication
            .control(MetadataCommand::SetControllerVoters { voters, from })
            .await
            .map_err(control_error)]
    })
    .await;
    results.into_iter().next().unwrap_or(Ok(()))
}

/// Sets and removes client quotas (AlterClientQuotas): `groups` holds one list of changes per
/// entity, each checked on its own (INVALID_REQUEST); the valid ones are made durable together.
/// With `validate_only` nothing changes.
pub async fn alter_client_quotas(
    shard: &Rc<Shard>,
    groups: Vec<Vec<QuotaChange>>,
    validate_only: bool,
) -> Vec<Result<(), ApiError>> {
    let count = groups.len();
    access_change(shard, count, move |controller| async move {
        let image = controller.catalog.image();
        let mut accepted = Vec::new();
        let results: Vec<Result<(), ApiError>> = groups
            .into_iter()
            .map(|group| {
                for change in &group {
                    crate::quotas::check_change(change)
                        .map_err(|m| error(ResponseError::InvalidRequest, m))?;
                }
                accepted.extend(group);
                Ok(())
            })
            .collect();
        if accepted.is_empty() || validate_only {
            return results;
        }
        let persisted = persist_access(
            &controller,
            &image,
            |parts| crate::quotas::apply(&mut parts.client_quotas, &accepted),
            || MetadataCommand::AlterClientQuotas {
                changes: accepted.clone(),
            },
        )
        .await;
        if persisted.is_ok() {
            for change in &accepted {
                info!(entity = ?change.entity, key = %change.key, value = ?change.value,
                        "client quota changed");
            }
        }
        fail_accepted(results, persisted)
    })
    .await
}
