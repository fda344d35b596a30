//! Cluster metadata as the controller Raft group replicates it (cluster mode): the commands that are the records of the controller's log, the image every
//! node builds by applying them in log order, and Kafka's replica assignment.
//!
//! A command is stored as one record batch of one record: key = the command's kind, value =
//! its JSON. Applying is deterministic and checks before it changes anything: a command that
//! does not fit the image (a topic name taken, an unknown topic, replicas on unregistered
//! brokers, ...) is refused the same way on every node and changes nothing but the version, so
//! images stay identical. The controller's leader checks a request against its image before
//! proposing; refusal on apply settles the race of two proposals in flight.
//!
//! Invariant: `version` is the position (log offset) of the last command applied; two nodes at
//! the same version hold equal images.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::topics::Topic;

/// Where Kafka clients reach a broker through one of its listeners (Kafka's
/// `advertised.listeners` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The listener's name (`PLAINTEXT`, `SSL`, or an operator's own).
    pub listener: String,
    pub host: String,
    pub port: u16,
}

/// A broker as it announced itself to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub node_id: i32,
    /// Where Kafka clients reach it: its first advertised listener.
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Every advertised listener (registrations written before listeners had names have none:
    /// `host`/`port` then serve every listener).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Where its shard 0 takes RPC frames (shard `s`: port + `s`): a seed's address in the seed
    /// list, so every node can reach every other whatever seed list it was started with.
    /// Registrations written before seeds carried theirs leave it out (then a seed's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<std::net::SocketAddr>,
    /// One of the seeds: a voter of the controller group when the cluster formed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seed: bool,
}

impl BrokerRegistration {
    /// A seed's registration (older seeds' carry no RPC address instead of the flag).
    pub fn is_seed(&self) -> bool {
        self.seed || self.rpc.is_none()
    }

    /// Where a client that came in on `listener` reaches this broker; `None` when the broker
    /// has no such listener (Kafka then leaves the broker out of that client's Metadata).
    pub fn endpoint(&self, listener: &str) -> Option<(&str, u16)> {
        if self.endpoints.is_empty() {
            return Some((&self.host, self.port));
        }
        self.endpoints
            .iter()
            .find(|e| e.listener == listener)
            .map(|e| (e.host.as_str(), e.port))
    }
}

/// A topic and where its partitions live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicAssignment {
    pub topic: Topic,
    /// One replica list per partition, preferred leader first. While a partition moves, its
    /// list holds every node that may hold a replica of it: the target first, then the others
    /// (Kafka's order during a reassignment).
    pub replicas: Vec<Vec<i32>>,
    /// Partitions moving to other replicas (AlterPartitionReassignments), by partition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassignments: BTreeMap<i32, Reassignment>,
}

/// A partition's move to another list of replicas, under way. The partition's leader carries
/// it out in its Raft group: the new replicas join as learners, catch up, then one joint
/// configuration change makes the target the voters, and the leader reports the move done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The replica list asked for, preferred leader first: the partition's list once done.
    pub target: Vec<i32>,
    /// The list before the move began.
    pub original: Vec<i32>,
    /// Where joining replicas start (set by the leader once it made them learners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joining: Option<JoinPoint>,
}

impl Reassignment {
    /// Replicas the move adds (Kafka's `adding_replicas`).
    pub fn adding(&self) -> Vec<i32> {
        self.target
            .iter()
            .filter(|n| !self.original.contains(n))
            .copied()
            .collect()
    }
}

/// A partition group's configuration at a Raft index, in Raft ids: what a replica joining the
/// group as a learner starts from (it skips the configuration changes up to `index` when it
/// receives them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinPoint {
    pub index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters_outgoing: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners_next: Vec<u64>,
}

/// One record of the controller's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetadataCommand {
    RegisterBroker(BrokerRegistration),
    /// A node leaves the cluster (Kafka's UnregisterBroker): refused for a controller voter
    /// and while any partition lists the node.
    UnregisterBroker {
        node_id: i32,
    },
    /// The controller group's voters become `voters` (KIP-853's AddRaftVoter and
    /// RemoveRaftVoter): the controller leader then changes the group's configuration one
    /// node at a time. Refused unless the voters are `from` by then (None: the seeds, as the
    /// cluster formed), and unless every new voter is registered.
    SetControllerVoters {
        voters: Vec<i32>,
        from: Option<Vec<i32>>,
    },
    CreateTopic {
        topic: Topic,
        replicas: Vec<Vec<i32>>,
    },
    DeleteTopic {
        id: Uuid,
    },
    SetTopicConfigs {
        id: Uuid,
        configs: BTreeMap<String, String>,
    },
    AddPartitions {
        id: Uuid,
        replicas: Vec<Vec<i32>>,
        /// The partition count the new partitions were chosen for: refused when the topic has
        /// another by then (a retried request must not add partitions twice).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<i32>,
    },
    /// A block of `count` producer ids for broker `node_id` to hand out: the next `count`
    /// ids above every block reserved before. The broker's previous block, if any, is
    /// abandoned (its unused ids are skipped, never handed out twice).
    ReserveProducerIds {
        node_id: i32,
        count: i64,
    },
    SetBrokerConfigs {
        configs: BTreeMap<String, String>,
    },
    /// SCRAM credentials set or removed (AlterUserScramCredentials), all or none.
    AlterScramCredentials {
        changes: Vec<crate::scram::ScramChange>,
    },
    /// ACLs added (CreateAcls); one already present is not added twice.
    CreateAcls {
        acls: Vec<crate::acls::AclBinding>,
    },
    /// ACLs removed (DeleteAcls: the bindings its filters matched on the leader).
    DeleteAcls {
        acls: Vec<crate::acls::AclBinding>,
    },
    /// Client quotas set or removed (AlterClientQuotas).
    AlterClientQuotas {
        changes: Vec<crate::quotas::QuotaChange>,
    },
    /// AlterPartitionReassignments for one partition: move it to `target`, or (`None`) cancel
    /// the move under way, moving back to the list it started from.
    Reassign {
        id: Uuid,
        partition: i32,
        target: Option<Vec<i32>>,
    },
    /// The partition's leader made the replicas joining for `target` learners: where they
    /// start.
    SetJoinPoint {
        id: Uuid,
        partition: i32,
        target: Vec<i32>,
        point: JoinPoint,
    },
    /// The partition's group has `target` as its voters, and no one else: the move is over.
    CompleteReassignment {
        id: Uuid,
        partition: i32,
        target: Vec<i32>,
    },
    /// `command`, proposed through a node that does not lead the controller group (Kafka's
    /// brokers forward admin requests to the controller too): `origin` waits for request
    /// `request`'s outcome, which it learns when it applies this entry itself.
    Forwarded {
        origin: i32,
        request: u64,
        command: Box<MetadataCommand>,
    },
}

impl MetadataCommand {
    pub fn kind(&self) -> &'static str {
        match self {
            MetadataCommand::RegisterBroker(_) => "register_broker",
            MetadataCommand::UnregisterBroker { .. } => "unregister_broker",
            MetadataCommand::SetControllerVoters { .. } => "set_controller_voters",
            MetadataCommand::CreateTopic { .. } => "create_topic",
            MetadataCommand::DeleteTopic { .. } => "delete_topic",
            MetadataCommand::SetTopicConfigs { .. } => "set_topic_configs",
            MetadataCommand::AddPartitions { .. } => "add_partitions",
            MetadataCommand::ReserveProducerIds { .. } => "reserve_producer_ids",
            MetadataCommand::SetBrokerConfigs { .. } => "set_broker_configs",
            MetadataCommand::AlterScramCredentials { .. } => "alter_scram_credentials",
            MetadataCommand::CreateAcls { .. } => "create_acls",
            MetadataCommand::DeleteAcls { .. } => "delete_acls",
            MetadataCommand::AlterClientQuotas { .. } => "alter_client_quotas",
            MetadataCommand::Reassign { .. } => "reassign",
            MetadataCommand::SetJoinPoint { .. } => "set_join_point",
            MetadataCommand::CompleteReassignment { .. } => "complete_reassignment",
            MetadataCommand::Forwarded { .. } => "forwarded",
        }
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic id {0} already exists")]
    TopicIdExists(Uuid),
    #[error("no topic with id {0}")]
    UnknownTopic(Uuid),
    #[error("replica assignment: {0}")]
    BadAssignment(String),
    #[error("a block of {0} producer ids")]
    BadProducerIdCount(i64),
    #[error("a broker's id cannot be {0}")]
    BadBrokerId(i32),
    #[error("no broker {0} is registered")]
    UnregisteredBroker(i32),
    #[error("broker {0} cannot be unregistered: {1}")]
    BrokerInUse(i32, String),
    #[error("the controller's voters changed meanwhile (now {0})")]
    StaleVoters(String),
    #[error("the controller group needs at least one voter")]
    NoVoters,
    #[error("SCRAM credentials: {0}")]
    BadScramChange(String),
    #[error("ACL: {0}")]
    BadAcl(String),
    #[error("client quota: {0}")]
    BadQuota(String),
    #[error("topic id {0} has no partition {1}")]
    UnknownPartition(Uuid, i32),
    #[error("no reassignment of partition {1} of topic id {0} is in progress")]
    NoReassignment(Uuid, i32),
    #[error("the reassignment of partition {1} of topic id {0} now moves elsewhere")]
    StaleReassignment(Uuid, i32),
}

/// The cluster as the controller's log describes it, up to `version`. Serialized (JSON) it is
/// the controller's snapshot (see `cluster_controller.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterImage {
    pub version: u64,
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    pub topics: BTreeMap<String, TopicAssignment>,
    /// Producer ids below this have been reserved by some broker.
    pub producer_ids_reserved: i64,
    /// Each broker's latest block of producer ids: `[start, end)`.
    pub producer_id_blocks: BTreeMap<i32, (i64, i64)>,
    pub broker_configs: BTreeMap<String, String>,
    pub scram_users: crate::scram::ScramUsers,
    pub acls: Vec<crate::acls::AclBinding>,
    pub client_quotas: Vec<crate::quotas::ClientQuota>,
    /// The controller group's voters as last set (SetControllerVoters); `None`: the seeds the
    /// cluster formed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_voters: Option<Vec<i32>>,
}

impl ClusterImage {
    /// The controller group's voters as wanted: the set last committed, else `seeds` (the
    /// node's seed list: before every seed registered, the image alone does not know them).
    pub fn controller_voters_or(&self, seeds: impl IntoIterator<Item = i32>) -> Vec<i32> {
        match &self.controller_voters {
            Some(voters) => voters.clone(),
            None => seeds.into_iter().collect(),
        }
    }

    /// Whether `node_id` votes in the controller group (or is to, once the leader has changed
    /// its configuration): one of the voters last set, or, before any was, a seed.
    pub fn is_controller_voter(&self, node_id: i32) -> bool {
        match &self.controller_voters {
            Some(voters) => voters.contains(&node_id),
            None => self.brokers.get(&node_id).is_some_and(|b| b.is_seed()),
        }
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicAssignment> {
        self.topics.values().find(|t| t.topic.id == id)
    }

    /// Applies the command stored at `position` in the controller's log. The version moves to
    /// `position` whatever the outcome; a refused command changes nothing else.
    pub fn apply(&mut self, position: u64, command: &MetadataCommand) -> Result<(), Refused> {
        self.version = position;
        match command {
            MetadataCommand::RegisterBroker(broker) => {
                if broker.node_id < 0 {
                    return Err(Refused::BadBrokerId(broker.node_id));
                }
                self.brokers.insert(broker.node_id, broker.clone());
            }
            MetadataCommand::UnregisterBroker { node_id } => {
                let Some(broker) = self.brokers.get(node_id) else {
                    return Err(Refused::UnregisteredBroker(*node_id));
                };
                if self.is_controller_voter(broker.node_id) {
                    return Err(Refused::BrokerInUse(
                        *node_id,
                        "it is a controller voter (remove it from the voters first: sluice \
                         cluster remove-voter)"
                            .into(),
                    ));
                }
                let listed = self.topics.values().find(|t| {
                    t.replicas.iter().flatten().any(|n| n == node_id)
                        || t.reassignments.values().any(|m| m.target.contains(node_id))
                });
                if let Some(topic) = listed {
                    return Err(Refused::BrokerInUse(
                        *node_id,
                        format!(
                            "topic {:?} has replicas on it (move them away first: sluice cluster decommission)",
                            topic.topic.name
                        ),
                    ));
                }
                self.brokers.remove(node_id);
            }
            MetadataCommand::SetControllerVoters { voters, from } => {
                if *from != self.controller_voters {
                    let now = self
                        .controller_voters
                        .as_ref()
                        .map_or("the seeds".to_string(), |v| format!("{v:?}"));
                    return Err(Refused::StaleVoters(now));
                }
                if voters.is_empty() {
                    return Err(Refused::NoVoters);
                }
                if let Some(unknown) = voters.iter().find(|n| !self.brokers.contains_key(n)) {
                    return Err(Refused::UnregisteredBroker(*unknown));
                }
                let mut voters = voters.clone();
                voters.sort_unstable();
                voters.dedup();
                self.controller_voters = Some(voters);
            }
            MetadataCommand::CreateTopic { topic, replicas } => {
                if self.topics.contains_key(&topic.name) {
                    return Err(Refused::TopicExists(topic.name.clone()));
                }
                if self.topic_by_id(topic.id).is_some() {
                    return Err(Refused::TopicIdExists(topic.id));
                }
                if replicas.len() != usize::try_from(topic.partitions).unwrap_or(usize::MAX) {
                    return Err(Refused::BadAssignment(format!(
                        "{} replica lists for {} partitions",
                        replicas.len(),
                        topic.partitions
                    )));
                }
                self.check_assignment(replicas, None)?;
                self.topics.insert(
                    topic.name.clone(),
                    TopicAssignment {
                        topic: topic.clone(),
                        replicas: replicas.clone(),
                        reassignments: BTreeMap::new(),
                    },
                );
            }
            MetadataCommand::DeleteTopic { id } => {
                let name = self.name_of(*id)?;
                self.topics.remove(&name);
            }
            MetadataCommand::SetTopicConfigs { id, configs } => {
                let name = self.name_of(*id)?;
                let entry = self.topics.get_mut(&name).expect("found by id");
                entry.topic.configs = configs.clone();
            }
            MetadataCommand::AddPartitions { id, replicas, from } => {
                let name = self.name_of(*id)?;
                let count = self.topics[&name].topic.partitions;
                if from.is_some_and(|from| from != count) {
                    return Err(Refused::BadAssignment(format!(
                        "the topic has {count} partitions by now, not {}",
                        from.unwrap_or_default()
                    )));
                }
                let width = self.topics[&name].replicas.first().map(Vec::len);
                self.check_assignment(replicas, width)?;
                let entry = self.topics.get_mut(&name).expect("found by id");
                entry.replicas.extend(replicas.iter().cloned());
                entry.topic.partitions = entry.replicas.len() as i32;
            }
            MetadataCommand::ReserveProducerIds { node_id, count } => {
                if !(1..=1 << 20).contains(count) {
                    return Err(Refused::BadProducerIdCount(*count));
                }
                if !self.brokers.contains_key(node_id) {
                    return Err(Refused::BadBrokerId(*node_id));
                }
                let start = self.producer_ids_reserved;
                self.producer_ids_reserved = start + count;
                self.producer_id_blocks
                    .insert(*node_id, (start, self.producer_ids_reserved));
            }
            MetadataCommand::SetBrokerConfigs { configs } => {
                self.broker_configs = configs.clone();
            }
            MetadataCommand::AlterScramCredentials { changes } => {
                let mut users = self.scram_users.clone();
                for change in changes {
                    change.apply(&mut users).map_err(Refused::BadScramChange)?;
                }
                self.scram_users = users;
            }
            MetadataCommand::CreateAcls { acls } => {
                for acl in acls {
                    acl.check().map_err(Refused::BadAcl)?;
                }
                for acl in acls {
                    if !self.acls.contains(acl) {
                        self.acls.push(acl.clone());
                    }
                }
            }
            MetadataCommand::DeleteAcls { acls } => {
                self.acls.retain(|a| !acls.contains(a));
            }
            MetadataCommand::AlterClientQuotas { changes } => {
                for change in changes {
                    crate::quotas::check_change(change).map_err(Refused::BadQuota)?;
                }
                crate::quotas::apply(&mut self.client_quotas, changes);
            }
            MetadataCommand::Reassign {
                id,
                partition,
                target,
            } => self.reassign(*id, *partition, target.as_deref())?,
            MetadataCommand::SetJoinPoint {
                id,
                partition,
                target,
                point,
            } => {
                let moving = self.moving(*id, *partition, target)?;
                moving.joining = Some(point.clone());
            }
            MetadataCommand::CompleteReassignment {
                id,
                partition,
                target,
            } => {
                self.moving(*id, *partition, target)?;
                let entry = self.assignment_mut(*id, *partition)?;
                entry.reassignments.remove(partition);
                entry.replicas[*partition as usize] = target.clone();
            }
            MetadataCommand::Forwarded { command, .. } => return self.apply(position, command),
        }
        Ok(())
    }

    fn assignment_mut(
        &mut self,
        id: Uuid,
        partition: i32,
    ) -> Result<&mut TopicAssignment, Refused> {
        let name = self.name_of(id)?;
        let entry = self.topics.get_mut(&name).expect("found by id");
        if partition < 0 || partition as usize >= entry.replicas.len() {
            return Err(Refused::UnknownPartition(id, partition));
        }
        Ok(entry)
    }

    /// The move of a partition under way to `target`.
    fn moving(
        &mut self,
        id: Uuid,
        partition: i32,
        target: &[i32],
    ) -> Result<&mut Reassignment, Refused> {
        let entry = self.assignment_mut(id, partition)?;
        let moving = entry
            .reassignments
            .get_mut(&partition)
            .ok_or(Refused::NoReassignment(id, partition))?;
        if moving.target != target {
            return Err(Refused::StaleReassignment(id, partition));
        }
        Ok(moving)
    }

    /// Starts, replaces or cancels (`target` `None`) a partition's move. A move to the set of
    /// replicas the partition has (and no move under way) only reorders the list. While a
    /// move is under way the list only grows (every node that may hold a replica stays on it
    /// until the move is done).
    fn reassign(
        &mut self,
        id: Uuid,
        partition: i32,
        target: Option<&[i32]>,
    ) -> Result<(), Refused> {
        if let Some(target) = target {
            self.check_assignment(&[target.to_vec()], None)?;
        }
        let entry = self.assignment_mut(id, partition)?;
        let current = entry.replicas[partition as usize].clone();
        let under_way = entry.reassignments.get(&partition).cloned();
        let target = match (target, &under_way) {
            (Some(target), _) => target.to_vec(),
            (None, Some(moving)) => moving.original.clone(),
            (None, None) => return Err(Refused::NoReassignment(id, partition)),
        };
        let same_set = |a: &[i32], b: &[i32]| a.len() == b.len() && a.iter().all(|n| b.contains(n));
        if under_way.is_none() && same_set(&target, &current) {
            entry.replicas[partition as usize] = target;
            return Ok(());
        }
        // The same target again keeps where its joining replicas start.
        let joining = under_way
            .as_ref()
            .filter(|m| m.target == target)
            .and_then(|m| m.joining.clone());
        let original = under_way.map_or(current.clone(), |m| m.original);
        let mut replicas = target.clone();
        replicas.extend(current.iter().filter(|n| !target.contains(n)));
        entry.replicas[partition as usize] = replicas;
        entry.reassignments.insert(
            partition,
            Reassignment {
                target,
                original,
                joining,
            },
        );
        Ok(())
    }

    fn name_of(&self, id: Uuid) -> Result<String, Refused> {
        self.topic_by_id(id)
            .map(|t| t.topic.name.clone())
            .ok_or(Refused::UnknownTopic(id))
    }

    /// Every list non-empty, of one width (`width` when given), of distinct registered brokers.
    fn check_assignment(&self, replicas: &[Vec<i32>], width: Option<usize>) -> Result<(), Refused> {
        let width = width.or_else(|| replicas.first().map(Vec::len));
        for (partition, list) in replicas.iter().enumerate() {
            let bad = |why: String| Refused::BadAssignment(format!("partition {partition}: {why}"));
            if list.is_empty() || Some(list.len()) != width {
                return Err(bad(format!("{} replicas, expected {width:?}", list.len())));
            }
            for (i, node) in list.iter().enumerate() {
                if !self.brokers.contains_key(node) {
                    return Err(bad(format!("broker {node} is not registered")));
                }
                if list[..i].contains(node) {
                    return Err(bad(format!("broker {node} twice")));
                }
            }
        }
        Ok(())
    }

    /// How many partition replicas each registered broker holds.
    pub fn replicas_per_broker(&self) -> BTreeMap<i32, usize> {
        let mut counts: BTreeMap<i32, usize> = self.brokers.keys().map(|id| (*id, 0)).collect();
        for topic in self.topics.values() {
            for node in topic.replicas.iter().flatten() {
                *counts.entry(*node).or_default() += 1;
            }
        }
        counts
    }
}

/// Kafka's rack-unaware replica assignment (`AdminUtils.assignReplicasToBrokers`): partition
/// `p`'s first replica is broker `(start + p) % n`, the others follow at a shift that grows
/// every `n` partitions, so leaders and followers both spread evenly. `start` and `shift` are
/// the caller's (Kafka draws them at random; the controller derives them from the log so every
/// replay agrees).
pub fn assign_replicas(
    brokers: &[i32],
    partitions: i32,
    replication_factor: usize,
    start: usize,
    shift: usize,
) -> Result<Vec<Vec<i32>>, Refused> {
    let n = brokers.len();
    if replication_factor == 0 || replication_factor > n {
        return Err(Refused::BadAssignment(format!(
            "replication factor {replication_factor} with {n} brokers"
        )));
    }
    let mut brokers = brokers.to_vec();
    brokers.sort_unstable();
    let mut shift = shift;
    let mut out = Vec::new();
    for p in 0..usize::try_from(partitions).unwrap_or(0) {
        if p > 0 && p % n == 0 {
            shift += 1;
        }
        let first = (start + p) % n;
        let mut list = vec![brokers[first]];
        for j in 0..replication_factor - 1 {
            // Never the first replica again: step 1..n-1 from it.
            let step = 1 + (shift + j) % (n - 1);
            list.push(brokers[(first + step) % n]);
        }
        out.push(list);
    }
    Ok(out)
}

/// A command as it is stored: one batch of one record.
pub fn encode_command(command: &MetadataCommand, timestamp_ms: i64) -> Bytes {
    let value = serde_json::to_vec(command).expect("metadata commands serialize");
    sluice_storage::batch::build_batch(
        timestamp_ms,
        &[(timestamp_ms, command.kind().as_bytes(), &value)],
    )
    .into()
}

/// The command a stored batch holds.
pub fn decode_command(batch: &[u8]) -> Result<MetadataCommand, String> {
    use sluice_storage::batch::{record_views, validate_batch, BATCH_HEADER_BYTES};
    let info = validate_batch(batch, usize::MAX).map_err(|e| e.to_string())?;
    let records = &batch[BATCH_HEADER_BYTES..info.size_bytes];
    let views = record_views(records, info.record_count).map_err(|e| e.to_string())?;
    let [record] = views.as_slice() else {
        return Err(format!("{} records in a metadata batch", views.len()));
    };
    let value = record.value.ok_or("record without a value")?;
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: i32) -> MetadataCommand {
        MetadataCommand::RegisterBroker(BrokerRegistration {
            node_id: id,
            host: "127.0.0.1".into(),
            port: 9092 + id as u16,
            rack: None,
            endpoints: Vec::new(),
            rpc: None,
            seed: false,
        })
    }

    fn topic(name: &str, partitions: i32) -> Topic {
        Topic {
            name: name.into(),
            id: Uuid::new_v4(),
            partitions,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn only_a_joined_node_no_partition_lists_is_unregistered() {
        let mut image = ClusterImage::default();
        for id in 0..3 {
            image.apply(id as u64, &broker(id)).unwrap();
        }
        let joined = BrokerRegistration {
            node_id: 3,
            host: "127.0.0.1".into(),
            port: 9095,
            rack: None,
            endpoints: Vec::new(),
            rpc: Some("127.0.0.1:33175".parse().unwrap()),
            seed: false,
        };
        image
            .apply(3, &MetadataCommand::RegisterBroker(joined))
            .unwrap();
        let t = topic("held", 1);
        let id = t.id;
        image
            .apply(
                4,
                &MetadataCommand::CreateTopic {
                    topic: t,
                    replicas: vec![vec![3, 0, 1]],
                },
            )
            .unwrap();
        let unregister = |node_id| MetadataCommand::UnregisterBroker { node_id };
        assert!(matches!(
            image.apply(5, &unregister(0)),
            Err(Refused::BrokerInUse(0, why)) if why.contains("controller voter")
        ));
        assert!(matches!(
            image.apply(6, &unregister(3)),
            Err(Refused::BrokerInUse(3, why)) if why.contains("held")
        ));
        assert_eq!(
            image.apply(7, &unregister(9)),
            Err(Refused::UnregisteredBroker(9))
        );
        image
            .apply(8, &MetadataCommand::DeleteTopic { id })
            .unwrap();
        image.apply(9, &unregister(3)).unwrap();
        assert_eq!(image.brokers.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn controller_voters_change_from_what_they_were_and_a_removed_seed_can_leave() {
        let mut image = ClusterImage::default();
        for id in 0..4 {
            let mut registration = match broker(id) {
                MetadataCommand::RegisterBroker(r) => r,
                _ => unreachable!(),
            };
            registration.rpc = Some(format!("127.0.0.1:{}", 4000 + id).parse().unwrap());
            registration.seed = id < 3;
            image
                .apply(id as u64, &MetadataCommand::RegisterBroker(registration))
                .unwrap();
        }
        assert!((0..3).all(|n| image.is_controller_voter(n)));
        assert!(!image.is_controller_voter(3));
        let set = |voters: Vec<i32>, from: Option<Vec<i32>>| MetadataCommand::SetControllerVoters {
            voters,
            from,
        };
        // Not what they are now: refused, nothing changes.
        assert!(matches!(
            image.apply(10, &set(vec![1, 2, 3], Some(vec![0, 1, 2]))),
            Err(Refused::StaleVoters(_))
        ));
        assert_eq!(
            image.apply(11, &set(vec![0, 1, 2, 9], None)),
            Err(Refused::UnregisteredBroker(9))
        );
        assert_eq!(
            image.apply(12, &set(Vec::new(), None)),
            Err(Refused::NoVoters)
        );
        assert_eq!(image.controller_voters, None);
        image.apply(13, &set(vec![3, 0, 1, 2], None)).unwrap();
        assert_eq!(image.controller_voters, Some(vec![0, 1, 2, 3]));
        image
            .apply(14, &set(vec![1, 2, 3], Some(vec![0, 1, 2, 3])))
            .unwrap();
        assert!(!image.is_controller_voter(0));
        assert!(image.is_controller_voter(3));
        // A voter cannot be unregistered; the seed that no longer votes can.
        let unregister = |node_id| MetadataCommand::UnregisterBroker { node_id };
        assert!(matches!(
            image.apply(15, &unregister(3)),
            Err(Refused::BrokerInUse(3, _))
        ));
        image.apply(16, &unregister(0)).unwrap();
        assert!(!image.brokers.contains_key(&0));
        // The image (the controller's snapshot) keeps the voters.
        let json = serde_json::to_vec(&image).unwrap();
        let back: ClusterImage = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.controller_voters, Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_reassignment_grows_the_list_until_its_leader_reports_it_done() {
        let mut image = ClusterImage::default();
        for id in 1..=4 {
            image.apply(id as u64, &broker(id)).unwrap();
        }
        let t = topic("moving", 1);
        let id = t.id;
        image
            .apply(
                10,
                &MetadataCommand::CreateTopic {
                    topic: t,
                    replicas: vec![vec![1, 2, 3]],
                },
            )
            .unwrap();
        let reassign = |target: Option<Vec<i32>>| MetadataCommand::Reassign {
            id,
            partition: 0,
            target,
        };
        let replicas = |image: &ClusterImage| image.topics["moving"].replicas[0].clone();
        // Nothing to cancel; a bad target changes nothing.
        assert_eq!(
            image.apply(11, &reassign(None)),
            Err(Refused::NoReassignment(id, 0))
        );
        assert!(image.apply(12, &reassign(Some(vec![1, 9]))).is_err());
        assert!(image.apply(12, &reassign(Some(vec![4, 4]))).is_err());
        // The same set reorders at once.
        image.apply(13, &reassign(Some(vec![2, 1, 3]))).unwrap();
        assert_eq!(replicas(&image), vec![2, 1, 3]);
        assert!(image.topics["moving"].reassignments.is_empty());
        // A move: target first, then the rest; a new target keeps every node listed.
        image.apply(14, &reassign(Some(vec![4, 1, 2]))).unwrap();
        assert_eq!(replicas(&image), vec![4, 1, 2, 3]);
        let moving = image.topics["moving"].reassignments[&0].clone();
        assert_eq!(
            (moving.adding(), moving.original.clone()),
            (vec![4], vec![2, 1, 3])
        );
        let point = JoinPoint {
            index: 7,
            voters: vec![2, 3, 4],
            learners: vec![5],
            voters_outgoing: vec![],
            learners_next: vec![],
        };
        let join = |target: Vec<i32>| MetadataCommand::SetJoinPoint {
            id,
            partition: 0,
            target,
            point: point.clone(),
        };
        assert_eq!(
            image.apply(15, &join(vec![1, 2, 3])),
            Err(Refused::StaleReassignment(id, 0))
        );
        image.apply(16, &join(vec![4, 1, 2])).unwrap();
        // Cancelled: back to the original list, every node still listed, nothing joins.
        image.apply(17, &reassign(None)).unwrap();
        assert_eq!(replicas(&image), vec![2, 1, 3, 4]);
        let moving = image.topics["moving"].reassignments[&0].clone();
        assert_eq!(
            (moving.target.clone(), moving.joining),
            (vec![2, 1, 3], None)
        );
        image.apply(18, &reassign(Some(vec![4, 1, 2]))).unwrap();
        image.apply(19, &join(vec![4, 1, 2])).unwrap();
        // Done as reported for the current target only.
        let done = |target: Vec<i32>| MetadataCommand::CompleteReassignment {
            id,
            partition: 0,
            target,
        };
        assert!(image.apply(20, &done(vec![2, 1, 3])).is_err());
        image.apply(21, &done(vec![4, 1, 2])).unwrap();
        assert_eq!(replicas(&image), vec![4, 1, 2]);
        assert!(image.topics["moving"].reassignments.is_empty());
        assert_eq!(image.version, 21);
    }

    #[test]
    fn kafkas_assignment_spreads_leaders_and_replicas_evenly() {
        let replicas = assign_replicas(&[3, 1, 2], 6, 3, 0, 0).unwrap();
        assert_eq!(replicas[0], vec![1, 2, 3]);
        let mut leaders = BTreeMap::new();
        let mut held = BTreeMap::new();
        for list in &replicas {
            *leaders.entry(list[0]).or_insert(0) += 1;
            for node in list {
                *held.entry(*node).or_insert(0) += 1;
            }
            let mut distinct = list.clone();
            distinct.dedup();
            assert_eq!(distinct.len(), 3);
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(held.values().copied().collect::<Vec<_>>(), vec![6, 6, 6]);
        assert!(matches!(
            assign_replicas(&[1, 2], 1, 3, 0, 0),
            Err(Refused::BadAssignment(_))
        ));
        assert_eq!(
            assign_replicas(&[7], 2, 1, 5, 9).unwrap(),
            vec![vec![7], vec![7]]
        );
    }

    #[test]
    fn commands_apply_deterministically_and_refusals_change_nothing() {
        let mut image = ClusterImage::default();
        for (index, id) in [1, 2, 3].into_iter().enumerate() {
            image.apply(index as u64 + 1, &broker(id)).unwrap();
        }
        let orders = topic("orders", 3);
        let create = MetadataCommand::CreateTopic {
            topic: orders.clone(),
            replicas: assign_replicas(&[1, 2, 3], 3, 2, 0, 0).unwrap(),
        };
        image.apply(4, &create).unwrap();
        let before = image.clone();
        assert_eq!(
            image.apply(5, &create),
            Err(Refused::TopicExists("orders".into()))
        );
        let on_stranger = MetadataCommand::CreateTopic {
            topic: topic("x", 1),
            replicas: vec![vec![1, 9]],
        };
        assert!(matches!(
            image.apply(6, &on_stranger),
            Err(Refused::BadAssignment(_))
        ));
        let twice = MetadataCommand::CreateTopic {
            topic: topic("y", 1),
            replicas: vec![vec![2, 2]],
        };
        assert!(matches!(
            image.apply(7, &twice),
            Err(Refused::BadAssignment(_))
        ));
        let nobody = MetadataCommand::RegisterBroker(BrokerRegistration {
            node_id: -1,
            host: "h".into(),
            port: 1,
            rack: None,
            endpoints: Vec::new(),
            rpc: None,
            seed: false,
        });
        assert_eq!(image.apply(7, &nobody), Err(Refused::BadBrokerId(-1)));
        assert_eq!(image.version, 7);
        assert_eq!(
            ClusterImage {
                version: 4,
                ..image.clone()
            },
            before
        );

        image
            .apply(
                8,
                &MetadataCommand::AddPartitions {
                    id: orders.id,
                    replicas: vec![vec![3, 1]],
                    from: Some(3),
                },
            )
            .unwrap();
        assert_eq!(image.topics["orders"].topic.partitions, 4);
        // The same request again (a client's retry, built on the older image) adds nothing.
        let retried = MetadataCommand::Forwarded {
            origin: 2,
            request: 1,
            command: Box::new(MetadataCommand::AddPartitions {
                id: orders.id,
                replicas: vec![vec![3, 1]],
                from: Some(3),
            }),
        };
        assert!(matches!(
            image.apply(8, &retried),
            Err(Refused::BadAssignment(m)) if m.contains("4 partitions by now")
        ));
        assert_eq!(image.topics["orders"].topic.partitions, 4);
        let forwarded = MetadataCommand::Forwarded {
            origin: 2,
            request: 2,
            command: Box::new(MetadataCommand::SetBrokerConfigs {
                configs: BTreeMap::from([("num.partitions".into(), "7".into())]),
            }),
        };
        let stored = encode_command(&forwarded, 0);
        assert_eq!(decode_command(&stored).unwrap(), forwarded);
        image.apply(8, &forwarded).unwrap();
        assert_eq!(image.broker_configs["num.partitions"], "7");
        let reserve = |node_id, count| MetadataCommand::ReserveProducerIds { node_id, count };
        image.apply(9, &reserve(1, 1000)).unwrap();
        image.apply(9, &reserve(2, 1000)).unwrap();
        image.apply(9, &reserve(1, 10)).unwrap();
        assert_eq!(image.producer_id_blocks[&1], (2000, 2010));
        assert_eq!(image.producer_id_blocks[&2], (1000, 2000));
        assert_eq!(
            image.apply(10, &reserve(1, 0)),
            Err(Refused::BadProducerIdCount(0))
        );
        assert_eq!(
            image.apply(10, &reserve(9, 5)),
            Err(Refused::BadBrokerId(9))
        );
        assert_eq!(image.producer_ids_reserved, 2010);
        image
            .apply(11, &MetadataCommand::DeleteTopic { id: orders.id })
            .unwrap();
        assert!(image.topics.is_empty());
        assert_eq!(
            image.apply(12, &MetadataCommand::DeleteTopic { id: orders.id }),
            Err(Refused::UnknownTopic(orders.id))
        );
    }

    #[test]
    fn a_command_survives_its_stored_form() {
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "60000".to_string());
        let mut t = topic("with {braces} in \"name\"", 2);
        t.configs = configs;
        for command in [
            broker(4),
            MetadataCommand::CreateTopic {
                topic: t,
                replicas: vec![vec![1], vec![2]],
            },
            MetadataCommand::ReserveProducerIds {
                node_id: 2,
                count: 5000,
            },
        ] {
            let stored = encode_command(&command, 1_700_000_000_000);
            assert_eq!(decode_command(&stored).unwrap(), command);
        }
        assert!(decode_command(b"not a batch").is_err());
    }
}
