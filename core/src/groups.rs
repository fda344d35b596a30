//! The classic consumer-group coordinator: membership, rebalances, and committed offsets.
//!
//! A group lives on the shard that owns its partition of the internal topic
//! `__consumer_offsets` (partition `crc32c(group) % partitions`); every group request is
//! forwarded there. That shard keeps the group's state in memory and its committed offsets both
//! in memory and, durably, as records appended to that partition; at start-up it replays the
//! partition to rebuild them. Membership is not persisted: after a restart a group is Empty
//! (with its generation) until its consumers rejoin.
//!
//! The state machine is Kafka's (`GroupMetadata`): Empty → PreparingRebalance (members
//! (re)join; the round ends when every member has rejoined or the rebalance timeout passes,
//! and for a new group not before the initial delay) → CompletingRebalance (the leader
//! computes the assignment and sends it with SyncGroup) → Stable. A join with new metadata, a
//! leave, or a member whose session expires (no heartbeat within its session timeout) starts a
//! new round. Assignment strategies (eager, cooperative-sticky) run in the clients; the
//! coordinator relays their metadata and assignments untouched.
//!
//! Records in `__consumer_offsets` are Kafka's own (`offsets_topic`): an offset commit per
//! committed partition, a group metadata record (protocol type, generation) at every new
//! generation, and a null value (tombstone) for a deletion.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use sluice_storage::batch::validate_batch;
use sluice_storage::Offset;
use tracing::{debug, info, warn};

use crate::offsets_topic::{
    self, build_batch, group_key, group_value, offset_key, offset_value, Decoded, OffsetsRecord,
};
use crate::shard::Shard;
use crate::topics::Topic;

/// The internal topic holding committed offsets and group records.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Shortest and longest session timeouts accepted (Kafka's `group.min/max.session.timeout.ms`
/// are 6 s and 30 min; the minimum is lower here so tests can detect dead members quickly).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;

/// How often each shard checks its groups for expired sessions and ended rebalance rounds.
const REAPER_PERIOD: Duration = Duration::from_millis(100);

/// Bytes read at a time when replaying an offsets partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// The offsets partition of a group.
pub fn offsets_partition(group: &str, partitions: i32) -> i32 {
    (crc32c::crc32c(group.as_bytes()) % partitions.max(1) as u32) as i32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka's tools show.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+ clients are asked to rejoin with an assigned member id first (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, Default)]
pub struct JoinResponse {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader only: every member's id, instance id and metadata for the protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// A static leader rejoining a stable group keeps the assignment it made (KIP-814).
    pub skip_assignment: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SyncResponse {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// One member of a group.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_heartbeat: Instant,
    joined_this_round: bool,
}

impl Member {
    /// This member's metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

/// One group's state.
#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    /// In join order (the first member of a round leads when the old leader is gone).
    pub members: BTreeMap<u64, Member>,
    next_join_order: u64,
    /// Member ids handed out with MEMBER_ID_REQUIRED, awaiting their rejoin.
    pending_member_ids: HashSet<String>,
    joins: HashMap<String, oneshot::Sender<JoinResponse>>,
    syncs: HashMap<String, oneshot::Sender<SyncResponse>>,
    round_deadline: Option<Instant>,
    /// A new group waits this long for more members before its first round completes.
    initial_delay_until: Option<Instant>,
    pub offsets: HashMap<(String, i32), Committed>,
}

impl Group {
    /// KIP-345's check for requests naming a `group.instance.id`: the instance must be a member
    /// of the group, under this member id. A request from an instance's previous incarnation
    /// (another member id) is FENCED_INSTANCE_ID; an instance the group does not know,
    /// UNKNOWN_MEMBER_ID.
    fn check_static(&self, member_id: &str, instance_id: Option<&str>) -> Option<ResponseError> {
        let instance = instance_id?;
        match self
            .members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance))
        {
            None => Some(ResponseError::UnknownMemberId),
            Some(m) if m.id != member_id => Some(ResponseError::FencedInstanceId),
            Some(_) => None,
        }
    }

    /// A static member restarted (KIP-345): the new incarnation takes the member over under
    /// `new_id`, keeping its place, assignment and leadership; the old incarnation's waiting
    /// JoinGroup or SyncGroup is answered FENCED_INSTANCE_ID, and so is anything it sends later.
    fn replace_static_member(&mut self, old_id: &str, new_id: &str) {
        if let Some(m) = self.member_mut(old_id) {
            m.id = new_id.to_string();
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_string());
        }
        if let Some(waiting) = self.joins.remove(old_id) {
            let _ = waiting.send(JoinResponse {
                error: Some(ResponseError::FencedInstanceId),
                member_id: old_id.to_string(),
                ..JoinResponse::default()
            });
        }
        if let Some(waiting) = self.syncs.remove(old_id) {
            let _ = waiting.send(fail_sync(ResponseError::FencedInstanceId));
        }
        info!(group = %self.id, old = %old_id, new = %new_id, "static member replaced; the old one is fenced");
    }

    fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            next_join_order: 0,
            pending_member_ids: HashSet::new(),
            joins: HashMap::new(),
            syncs: HashMap::new(),
            round_deadline: None,
            initial_delay_until: None,
            offsets: HashMap::new(),
        }
    }

    fn member_key(&self, member_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.id == member_id)
            .map(|(k, _)| *k)
    }

    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.member_key(member_id)
            .and_then(|k| self.members.get(&k))
    }

    fn member_mut(&mut self, member_id: &str) -> Option<&mut Member> {
        let key = self.member_key(member_id)?;
        self.members.get_mut(&key)
    }

    fn remove_member(&mut self, member_id: &str) -> bool {
        let Some(key) = self.member_key(member_id) else {
            return false;
        };
        self.members.remove(&key);
        if let Some(join) = self.joins.remove(member_id) {
            let _ = join.send(JoinResponse {
                error: Some(ResponseError::UnknownMemberId),
                ..JoinResponse::default()
            });
        }
        self.syncs.remove(member_id);
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
        true
    }

    /// Starts a new round: members must rejoin; pending syncs learn of the rebalance.
    fn prepare_rebalance(&mut self, initial_delay: Duration) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let fresh = self.state == GroupState::Empty && self.generation == 0;
        for (_, sync) in self.syncs.drain() {
            let _ = sync.send(SyncResponse {
                error: Some(ResponseError::RebalanceInProgress),
                ..SyncResponse::default()
            });
        }
        for m in self.members.values_mut() {
            m.joined_this_round = self.joins.contains_key(&m.id);
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let now = Instant::now();
        self.round_deadline = Some(now + timeout);
        self.initial_delay_until = fresh.then(|| now + initial_delay);
        self.state = GroupState::PreparingRebalance;
        debug!(group = %self.id, "rebalance started");
    }

    /// Ends the join round if every member has rejoined (or `force`, at the deadline, which
    /// first drops the members that did not). Returns the group record to persist when a new
    /// generation starts.
    fn maybe_complete_join(&mut self, force: bool) -> Option<GroupRecord> {
        if self.state != GroupState::PreparingRebalance {
            return None;
        }
        let delayed = self
            .initial_delay_until
            .is_some_and(|until| Instant::now() < until);
        let all_joined = self.members.values().all(|m| m.joined_this_round);
        if !(force || all_joined && !delayed) {
            return None;
        }
        if force {
            let late: Vec<String> = self
                .members
                .values()
                .filter(|m| !m.joined_this_round)
                .map(|m| m.id.clone())
                .collect();
            for id in late {
                info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
                self.remove_member(&id);
            }
        }
        self.generation += 1;
        self.round_deadline = None;
        self.initial_delay_until = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return Some(self.record());
        }
        self.protocol = self.choose_protocol();
        let leader = match &self.leader {
            Some(l) if self.member(l).is_some() => l.clone(),
            _ => self.members.values().next().expect("not empty").id.clone(),
        };
        self.leader = Some(leader.clone());
        self.state = GroupState::CompletingRebalance;
        let protocol = self.protocol.clone().unwrap_or_default();
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
            .collect();
        let now = Instant::now();
        for m in self.members.values_mut() {
            m.joined_this_round = false;
            m.last_heartbeat = now;
            m.assignment = Bytes::new();
        }
        for (member_id, join) in self.joins.drain() {
            let _ = join.send(JoinResponse {
                error: None,
                generation: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol: self.protocol.clone(),
                leader: leader.clone(),
                members: if member_id == leader {
                    everyone.clone()
                } else {
                    Vec::new()
                },
                member_id,
                skip_assignment: false,
            });
        }
        info!(group = %self.id, generation = self.generation, members = self.members.len(), protocol = ?self.protocol, "rebalance round completed");
        Some(self.record())
    }

    /// The protocol every member supports that most members list first (Kafka's vote).
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates
            .iter()
            .map(|c| {
                let n = self
                    .members
                    .values()
                    .filter(|m| {
                        m.protocols
                            .iter()
                            .map(|(n, _)| n)
                            .find(|n| candidates.contains(n))
                            == Some(*c)
                    })
                    .count();
                (n, *c)
            })
            .collect();
        // Most votes; ties go to the first member's preference order (stable sort).
        votes.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        votes.first().map(|(_, c)| (*c).clone())
    }

    fn record(&self) -> GroupRecord {
        GroupRecord {
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
        }
    }
}

/// The persisted part of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub protocol_type: Option<String>,
    pub generation: i32,
}

/// The groups whose offsets partitions this shard owns.
#[derive(Default)]
pub struct Coordinator {
    groups: RefCell<HashMap<String, Rc<RefCell<Group>>>>,
    /// Cluster mode: the offsets partitions this shard leads and has replayed; groups of the
    /// others are not coordinated here.
    loaded: RefCell<HashSet<i32>>,
    /// Offsets partitions being compacted (one compaction per partition at a time).
    compacting: RefCell<HashSet<i32>>,
    /// Offsets committed in transactions not yet ended (TxnOffsetCommit), by offsets
    /// partition and producer id, in commit order: they become the groups' committed offsets
    /// when the transaction's commit marker lands in that partition, and go on abort.
    pending_txn: RefCell<HashMap<(i32, i64), Vec<PendingOffset>>>,
}

/// An offset committed in a transaction: group, topic, partition, the offset.
type PendingOffset = (String, String, i32, Committed);

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("groups", &self.groups.borrow().len())
            .finish()
    }
}

impl Coordinator {
    pub fn group(&self, id: &str) -> Option<Rc<RefCell<Group>>> {
        self.groups.borrow().get(id).cloned()
    }

    fn group_or_new(&self, id: &str) -> Rc<RefCell<Group>> {
        self.groups
            .borrow_mut()
            .entry(id.to_string())
            .or_insert_with(|| Rc::new(RefCell::new(Group::new(id))))
            .clone()
    }

    /// Every group on this shard: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        self.groups
            .borrow()
            .values()
            .map(|g| {
                let g = g.borrow();
                (
                    g.id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state,
                )
            })
            .collect()
    }

    /// Every group on this shard with its committed offsets (the metrics snapshot).
    pub fn snapshot(&self) -> Vec<crate::metrics::GroupSnapshot> {
        self.groups
            .borrow()
            .values()
            .map(|g| {
                let g = g.borrow();
                crate::metrics::GroupSnapshot {
                    group: g.id.clone(),
                    state: g.state.name().to_string(),
                    members: g.members.len(),
                    offsets: g
                        .offsets
                        .iter()
                        .map(|((topic, partition), c)| (topic.clone(), *partition, c.offset))
                        .collect(),
                }
            })
            .collect()
    }
}

fn now_ms() -> i64 {
    sluice_storage::types::now_ms()
}

/// Runs `work` on the shard that coordinates `group`.
async fn on_coordinator<R, F, Fut>(
    shard: &Rc<Shard>,
    group: &str,
    work: F,
) -> Result<R, ResponseError>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>, Arc<Topic>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let image = shard.image();
    let Some(topic) = image.topic(OFFSETS_TOPIC).cloned() else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let partition = offsets_partition(group, topic.partitions);
    let owner = shard.owner_of(OFFSETS_TOPIC, partition);
    shard
        .invoke_on(owner, move |s| async move {
            if s.replication.is_some() && !s.groups.loaded.borrow().contains(&partition) {
                // Cluster mode: only the leader of the group's offsets partition coordinates,
                // once it has replayed the partition.
                return Err(crate::cluster::not_coordinating(&s, (topic.id, partition)));
            }
            Ok(work(s, topic).await)
        })
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?
}

/// Cluster mode: this shard's replica of offsets partition `partition` became leader (load its
/// groups once every entry of the log is committed, so the replay sees all the previous leader
/// acknowledged) or stopped leading (forget its groups: the new leader coordinates them).
pub fn leadership_changed(shard: &Rc<Shard>, topic: Arc<Topic>, partition: i32, leads: bool) {
    shard.groups.loaded.borrow_mut().remove(&partition);
    forget_groups_of(shard, &topic, partition);
    if !leads {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let Some(p) = crate::cluster::leading_caught_up(&shard, (topic.id, partition)).await else {
            return;
        };
        forget_groups_of(&shard, &topic, partition);
        match replay(&shard, &topic, partition).await {
            Ok(records) => {
                info!(
                    partition,
                    records, "consumer groups loaded as leader of their offsets partition"
                );
                if p.not_leader().is_none() {
                    shard.groups.loaded.borrow_mut().insert(partition);
                }
            }
            Err(e) => warn!(partition, error = %e, "cannot load consumer groups"),
        }
    })
    .detach();
}

fn forget_groups_of(shard: &Shard, topic: &Topic, partition: i32) {
    shard
        .groups
        .groups
        .borrow_mut()
        .retain(|id, _| offsets_partition(id, topic.partitions) != partition);
}

/// JoinGroup: waits for the round to complete (or answers at once, for a member of a stable
/// group rejoining unchanged).
pub async fn join(shard: &Rc<Shard>, request: JoinRequest) -> JoinResponse {
    let group_id = request.group.clone();
    let answer = on_coordinator(shard, &group_id, move |s, topic| async move {
        match join_on_coordinator(&s, &topic, request) {
            JoinStep::Wait(rx) => rx.await.unwrap_or_else(|_| JoinResponse {
                error: Some(ResponseError::UnknownMemberId),
                ..JoinResponse::default()
            }),
            JoinStep::Answered(done) => *done,
        }
    })
    .await;
    answer.unwrap_or_else(|code| JoinResponse {
        error: Some(code),
        ..JoinResponse::default()
    })
}

fn join_on_coordinator(shard: &Rc<Shard>, topic: &Topic, request: JoinRequest) -> JoinStep {
    let fail = |code: ResponseError, member_id: &str| {
        JoinStep::Answered(Box::new(JoinResponse {
            error: Some(code),
            member_id: member_id.to_string(),
            ..JoinResponse::default()
        }))
    };
    if request.group.is_empty() {
        return fail(ResponseError::InvalidGroupId, &request.member_id);
    }
    if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&request.session_timeout_ms) {
        return fail(ResponseError::InvalidSessionTimeout, &request.member_id);
    }
    if request.protocols.is_empty() || request.protocol_type.is_empty() {
        return fail(ResponseError::InconsistentGroupProtocol, &request.member_id);
    }
    let cell = shard.groups.group_or_new(&request.group);
    let mut group = cell.borrow_mut();
    if !group.members.is_empty()
        && group.protocol_type.as_deref() != Some(request.protocol_type.as_str())
    {
        return fail(ResponseError::InconsistentGroupProtocol, &request.member_id);
    }
    if !group.members.is_empty()
        && !request.protocols.iter().any(|(name, _)| {
            group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    {
        return fail(ResponseError::InconsistentGroupProtocol, &request.member_id);
    }
    // Static members (KIP-345) keep their member id across restarts of the client.
    let static_id = request.group_instance_id.as_ref().and_then(|instance| {
        group
            .members
            .values()
            .find(|m| m.instance_id.as_ref() == Some(instance))
            .map(|m| m.id.clone())
    });
    let static_rejoin = request.member_id.is_empty() && static_id.is_some();
    let mut member_id = request.member_id.clone();
    if member_id.is_empty() {
        if let Some(existing) = static_id {
            member_id = format!("{}-{}", request.client_id, uuid::Uuid::new_v4());
            group.replace_static_member(&existing, &member_id);
        } else {
            member_id = format!("{}-{}", request.client_id, uuid::Uuid::new_v4());
            if request.require_known_member_id && request.group_instance_id.is_none() {
                group.pending_member_ids.insert(member_id.clone());
                return fail(ResponseError::MemberIdRequired, &member_id);
            }
        }
    } else if let Some(code) = group.check_static(&member_id, request.group_instance_id.as_deref())
    {
        return fail(code, &member_id);
    } else if group.member(&member_id).is_none() && !group.pending_member_ids.remove(&member_id) {
        return fail(ResponseError::UnknownMemberId, &member_id);
    }
    let now = Instant::now();
    let rejoining = group.member(&member_id).is_some();
    let unchanged = group
        .member(&member_id)
        .is_some_and(|m| m.protocols == request.protocols);
    if let Some(m) = group.member_mut(&member_id) {
        m.protocols = request.protocols.clone();
        m.session_timeout = Duration::from_millis(request.session_timeout_ms as u64);
        m.rebalance_timeout = Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64);
        m.last_heartbeat = now;
        m.joined_this_round = true;
    } else {
        let order = group.next_join_order;
        group.next_join_order += 1;
        group.members.insert(
            order,
            Member {
                id: member_id.clone(),
                instance_id: request.group_instance_id.clone(),
                client_id: request.client_id.clone(),
                client_host: request.client_host.clone(),
                session_timeout: Duration::from_millis(request.session_timeout_ms as u64),
                rebalance_timeout: Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64),
                protocols: request.protocols.clone(),
                assignment: Bytes::new(),
                last_heartbeat: now,
                joined_this_round: true,
            },
        );
    }
    group.protocol_type = Some(request.protocol_type.clone());
    let is_leader = group.leader.as_deref() == Some(member_id.as_str());
    if group.state == GroupState::Stable && rejoining && unchanged && (!is_leader || static_rejoin)
    {
        // Nothing changed (a follower rejoining, or a static member restarted within its
        // session, KIP-345): the current generation, no rebalance. A static leader keeps the
        // assignment it made (KIP-814's skip_assignment).
        return JoinStep::Answered(Box::new(JoinResponse {
            error: None,
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            leader: group.leader.clone().unwrap_or_default(),
            member_id,
            members: Vec::new(),
            skip_assignment: is_leader,
        }));
    }
    let (tx, rx) = oneshot::channel();
    if let Some(old) = group.joins.insert(member_id.clone(), tx) {
        let _ = old.send(JoinResponse {
            error: Some(ResponseError::UnknownMemberId),
            ..JoinResponse::default()
        });
    }
    group.prepare_rebalance(shard.effective().group_initial_rebalance_delay);
    if let Some(m) = group.member_mut(&member_id) {
        m.joined_this_round = true;
    }
    if let Some(record) = group.maybe_complete_join(false) {
        let group_id = group.id.clone();
        drop(group);
        persist_group_record(shard, topic, group_id, record);
    }
    JoinStep::Wait(rx)
}

/// A join either answered at once or waiting for the round to end.
enum JoinStep {
    Wait(oneshot::Receiver<JoinResponse>),
    Answered(Box<JoinResponse>),
}

/// SyncGroup: the leader's assignments are handed out; followers wait for them.
pub async fn sync(
    shard: &Rc<Shard>,
    group_id: String,
    generation: i32,
    member_id: String,
    instance_id: Option<String>,
    assignments: Vec<(String, Bytes)>,
) -> SyncResponse {
    let answer = on_coordinator(shard, &group_id.clone(), move |s, _topic| async move {
        let waiting = {
            let Some(cell) = s.groups.group(&group_id) else {
                return fail_sync(ResponseError::UnknownMemberId);
            };
            let mut group = cell.borrow_mut();
            if let Some(code) = group.check_static(&member_id, instance_id.as_deref()) {
                return fail_sync(code);
            }
            if group.member(&member_id).is_none() {
                return fail_sync(ResponseError::UnknownMemberId);
            }
            if generation != group.generation {
                return fail_sync(ResponseError::IllegalGeneration);
            }
            match group.state {
                GroupState::Empty | GroupState::PreparingRebalance => {
                    return fail_sync(ResponseError::RebalanceInProgress)
                }
                GroupState::Stable => {
                    let m = group.member(&member_id).expect("checked");
                    return SyncResponse {
                        error: None,
                        protocol_type: group.protocol_type.clone(),
                        protocol: group.protocol.clone(),
                        assignment: m.assignment.clone(),
                    };
                }
                GroupState::CompletingRebalance => {}
            }
            if group.leader.as_deref() == Some(member_id.as_str()) {
                let given: HashMap<String, Bytes> = assignments.into_iter().collect();
                for m in group.members.values_mut() {
                    m.assignment = given.get(&m.id).cloned().unwrap_or_default();
                }
                group.state = GroupState::Stable;
                let (protocol_type, protocol) =
                    (group.protocol_type.clone(), group.protocol.clone());
                let waiting: Vec<(String, oneshot::Sender<SyncResponse>)> =
                    group.syncs.drain().collect();
                for (id, tx) in waiting {
                    let assignment = group
                        .member(&id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    let _ = tx.send(SyncResponse {
                        error: None,
                        protocol_type: protocol_type.clone(),
                        protocol: protocol.clone(),
                        assignment,
                    });
                }
                info!(group = %group.id, generation = group.generation, "group stable");
                let m = group.member(&member_id).expect("checked");
                return SyncResponse {
                    error: None,
                    protocol_type,
                    protocol,
                    assignment: m.assignment.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            group.syncs.insert(member_id.clone(), tx);
            rx
        };
        waiting
            .await
            .unwrap_or_else(|_| fail_sync(ResponseError::RebalanceInProgress))
    })
    .await;
    answer.unwrap_or_else(fail_sync)
}

fn fail_sync(code: ResponseError) -> SyncResponse {
    SyncResponse {
        error: Some(code),
        ..SyncResponse::default()
    }
}

/// Heartbeat: keeps the member's session; tells it when a rebalance is under way.
pub async fn heartbeat(
    shard: &Rc<Shard>,
    group_id: String,
    generation: i32,
    member_id: String,
    instance_id: Option<String>,
) -> Option<ResponseError> {
    on_coordinator(shard, &group_id.clone(), move |s, _| async move {
        let Some(cell) = s.groups.group(&group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let mut group = cell.borrow_mut();
        if let Some(code) = group.check_static(&member_id, instance_id.as_deref()) {
            return Some(code);
        }
        let state = group.state;
        let current = group.generation;
        let Some(member) = group.member_mut(&member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        member.last_heartbeat = Instant::now();
        if state == GroupState::PreparingRebalance {
            return Some(ResponseError::RebalanceInProgress);
        }
        if generation != current {
            return Some(ResponseError::IllegalGeneration);
        }
        None
    })
    .await
    .unwrap_or_else(Some)
}

/// LeaveGroup: each member (by id, or by instance id) leaves; one error per member.
pub async fn leave(
    shard: &Rc<Shard>,
    group_id: String,
    members: Vec<(String, Option<String>)>,
) -> Result<Vec<Option<ResponseError>>, ResponseError> {
    on_coordinator(shard, &group_id.clone(), move |s, topic| async move {
        let Some(cell) = s.groups.group(&group_id) else {
            return members
                .iter()
                .map(|_| Some(ResponseError::UnknownMemberId))
                .collect();
        };
        let mut group = cell.borrow_mut();
        let mut results = Vec::new();
        let mut left = false;
        for (member_id, instance) in members {
            let id = if member_id.is_empty() {
                instance.as_ref().and_then(|i| {
                    group
                        .members
                        .values()
                        .find(|m| m.instance_id.as_ref() == Some(i))
                        .map(|m| m.id.clone())
                })
            } else if let Some(code) = group.check_static(&member_id, instance.as_deref()) {
                // A fenced incarnation cannot take the current one out of the group.
                results.push(Some(code));
                continue;
            } else {
                Some(member_id)
            };
            match id {
                Some(id) if group.remove_member(&id) => {
                    info!(group = %group.id, member = %id, "member left");
                    left = true;
                    results.push(None);
                }
                _ => results.push(Some(ResponseError::UnknownMemberId)),
            }
        }
        if left {
            let delay = s.effective().group_initial_rebalance_delay;
            group.prepare_rebalance(delay);
            if let Some(record) = group.maybe_complete_join(false) {
                let id = group.id.clone();
                drop(group);
                persist_group_record(&s, &topic, id, record);
            }
        }
        results
    })
    .await
}

/// Where a commit comes from: a member of the current generation, or a "simple" commit
/// (generation -1, no member) for a group without members. Kafka's rules for the classic
/// protocol (`ClassicGroup.validateOffsetCommit`): a member's commit needs its current
/// generation and is accepted while the group is Stable or PreparingRebalance (members of a
/// cooperative rebalance commit what they give up); only CompletingRebalance (between the
/// JoinGroup answers and SyncGroup) gets REBALANCE_IN_PROGRESS. Partitions of topics that do
/// not exist get UNKNOWN_TOPIC_OR_PARTITION and the rest are committed.
pub async fn commit_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    generation: i32,
    member_id: String,
    instance_id: Option<String>,
    offsets: Vec<(String, i32, Committed)>,
) -> Vec<Option<ResponseError>> {
    let count = offsets.len();
    let image = shard.image();
    let exists = |t: &str, p: i32| {
        image
            .topic(t)
            .is_some_and(|topic| (0..topic.partitions).contains(&p))
    };
    let unknown: Vec<bool> = offsets.iter().map(|(t, p, _)| !exists(t, *p)).collect();
    let offsets: Vec<(String, i32, Committed)> = offsets
        .into_iter()
        .zip(&unknown)
        .filter(|(_, unknown)| !**unknown)
        .map(|(o, _)| o)
        .collect();
    let known_count = offsets.len();
    let answer = on_coordinator(shard, &group_id.clone(), move |s, topic| async move {
        if offsets.is_empty() {
            return Vec::new();
        }
        let cell = s.groups.group_or_new(&group_id);
        {
            let group = cell.borrow();
            let check = if let Some(code) = group.check_static(&member_id, instance_id.as_deref()) {
                Some(code)
            } else if generation < 0 && member_id.is_empty() {
                if group.members.is_empty() {
                    None
                } else {
                    Some(ResponseError::UnknownMemberId)
                }
            } else if group.member(&member_id).is_none() {
                Some(ResponseError::UnknownMemberId)
            } else if generation != group.generation {
                Some(ResponseError::IllegalGeneration)
            } else if group.state == GroupState::CompletingRebalance {
                Some(ResponseError::RebalanceInProgress)
            } else {
                None
            };
            if let Some(code) = check {
                return offsets.iter().map(|_| Some(code)).collect();
            }
        }
        let records: Vec<(Bytes, Option<Bytes>)> = offsets
            .iter()
            .map(|(t, p, c)| (offset_key(&group_id, t, *p), Some(offset_value(c))))
            .collect();
        // Memory first, then the log (see `compact`): restored if the append fails.
        let previous: Vec<Option<Committed>> = {
            let mut group = cell.borrow_mut();
            offsets
                .iter()
                .map(|(t, p, c)| group.offsets.insert((t.clone(), *p), c.clone()))
                .collect()
        };
        if let Err(code) = append_records(&s, &topic, &group_id, &records).await {
            let mut group = cell.borrow_mut();
            for ((t, p, _), before) in offsets.iter().zip(previous) {
                match before {
                    Some(c) => group.offsets.insert((t.clone(), *p), c),
                    None => group.offsets.remove(&(t.clone(), *p)),
                };
            }
            return offsets.iter().map(|_| Some(code)).collect();
        }
        maybe_compact(&s, &topic, offsets_partition(&group_id, topic.partitions));
        (0..offsets.len()).map(|_| None).collect()
    })
    .await;
    let mut known = answer
        .unwrap_or_else(|code| (0..known_count).map(|_| Some(code)).collect())
        .into_iter();
    let results: Vec<Option<ResponseError>> = unknown
        .into_iter()
        .map(|unknown| {
            if unknown {
                Some(ResponseError::UnknownTopicOrPartition)
            } else {
                known.next().expect("one answer per known partition")
            }
        })
        .collect();
    debug_assert_eq!(results.len(), count);
    results
}

/// The committed offsets of a group: the asked partitions, or all when `None`.
pub async fn fetch_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    wanted: Option<Vec<(String, i32)>>,
    require_stable: bool,
) -> Result<Vec<FetchedOffset>, ResponseError> {
    on_coordinator(shard, &group_id.clone(), move |s, _| async move {
        let group = s.groups.group(&group_id);
        let offsets = group
            .as_ref()
            .map(|g| g.borrow().offsets.clone())
            .unwrap_or_default();
        // KIP-447: partitions with offsets committed in a transaction not yet ended.
        let unstable: HashSet<(String, i32)> = if require_stable {
            s.groups
                .pending_txn
                .borrow()
                .values()
                .flatten()
                .filter(|(group, ..)| *group == group_id)
                .map(|(_, topic, partition, _)| (topic.clone(), *partition))
                .collect()
        } else {
            HashSet::new()
        };
        let fetched = |topic: String, partition: i32, committed: Option<Committed>| {
            let key = (topic, partition);
            let unstable = unstable.contains(&key);
            FetchedOffset {
                topic: key.0,
                partition,
                committed: if unstable { None } else { committed },
                unstable,
            }
        };
        match wanted {
            Some(list) => list
                .into_iter()
                .map(|(t, p)| {
                    let c = offsets.get(&(t.clone(), p)).cloned();
                    fetched(t, p, c)
                })
                .collect(),
            None => {
                let mut all: Vec<FetchedOffset> = offsets
                    .into_iter()
                    .map(|((t, p), c)| fetched(t, p, Some(c)))
                    .collect();
                all.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
                all
            }
        }
    })
    .await
}

/// One partition's answer to OffsetFetch.
#[derive(Debug, Clone)]
pub struct FetchedOffset {
    pub topic: String,
    pub partition: i32,
    /// `None`: nothing committed (or, when `unstable`, not answered).
    pub committed: Option<Committed>,
    /// The fetch asked for stable offsets only (`require_stable`, KIP-447) and a transaction
    /// not yet ended holds an offset for this partition: the client is told
    /// UNSTABLE_OFFSET_COMMIT and asks again.
    pub unstable: bool,
}

/// DeleteGroups: removes a group without members, with its committed offsets (deletion
/// records are appended to its offsets partition first).
pub async fn delete_group(shard: &Rc<Shard>, group_id: String) -> Option<ResponseError> {
    on_coordinator(shard, &group_id.clone(), move |s, topic| async move {
        let Some(cell) = s.groups.group(&group_id) else {
            return Some(ResponseError::GroupIdNotFound);
        };
        let records: Vec<(Bytes, Option<Bytes>)> = {
            let group = cell.borrow();
            if !group.members.is_empty() {
                return Some(ResponseError::NonEmptyGroup);
            }
            group
                .offsets
                .keys()
                .map(|(t, p)| offset_key(&group_id, t, *p))
                .chain(std::iter::once(group_key(&group_id)))
                .map(|key| (key, None))
                .collect()
        };
        // Memory first, then the log (see `compact`).
        s.groups.groups.borrow_mut().remove(&group_id);
        if let Err(code) = append_records(&s, &topic, &group_id, &records).await {
            s.groups.groups.borrow_mut().insert(group_id.clone(), cell);
            return Some(code);
        }
        info!(group = %group_id, "group deleted");
        None
    })
    .await
    .unwrap_or_else(Some)
}

/// OffsetDelete: removes committed offsets of a group without members (a group with members
/// gets GROUP_SUBSCRIBED_TO_TOPIC for each partition: its members may be consuming them).
pub async fn delete_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    partitions: Vec<(String, i32)>,
) -> Result<Vec<Option<ResponseError>>, ResponseError> {
    on_coordinator(shard, &group_id.clone(), move |s, topic| async move {
        let Some(cell) = s.groups.group(&group_id) else {
            return Err(ResponseError::GroupIdNotFound);
        };
        if !cell.borrow().members.is_empty() {
            return Ok(partitions
                .iter()
                .map(|_| Some(ResponseError::GroupSubscribedToTopic))
                .collect());
        }
        let records: Vec<(Bytes, Option<Bytes>)> = partitions
            .iter()
            .map(|(t, p)| (offset_key(&group_id, t, *p), None))
            .collect();
        // Memory first, then the log (see `compact`): restored if the append fails.
        let removed: Vec<Option<Committed>> = {
            let mut group = cell.borrow_mut();
            partitions
                .iter()
                .map(|key| group.offsets.remove(key))
                .collect()
        };
        if let Err(code) = append_records(&s, &topic, &group_id, &records).await {
            let mut group = cell.borrow_mut();
            for (key, before) in partitions.iter().zip(removed) {
                if let Some(c) = before {
                    group.offsets.insert(key.clone(), c);
                }
            }
            return Err(code);
        }
        Ok(partitions.iter().map(|_| None).collect())
    })
    .await?
}

/// A group as DescribeGroups shows it; `None` if the coordinator has never seen it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

pub async fn describe(
    shard: &Rc<Shard>,
    group_id: String,
) -> Result<Option<GroupDescription>, ResponseError> {
    on_coordinator(shard, &group_id.clone(), move |s, _| async move {
        let cell = s.groups.group(&group_id)?;
        let g = cell.borrow();
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: g
                .members
                .values()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        m.metadata(&protocol),
                        m.assignment.clone(),
                    )
                })
                .collect(),
        })
    })
    .await
}

/// Every group of every shard: (id, protocol type, state).
pub async fn list(shard: &Rc<Shard>) -> Vec<(String, String, GroupState)> {
    let mut all: Vec<(String, String, GroupState)> = shard
        .invoke_on_all(|s| async move { s.groups.list() })
        .await
        .into_iter()
        .flat_map(|r| r.unwrap_or_default())
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Appends `records` (key, value) for `group` to its offsets partition, durably.
async fn append_records(
    shard: &Shard,
    topic: &Topic,
    group: &str,
    records: &[(Bytes, Option<Bytes>)],
) -> Result<(), ResponseError> {
    if records.is_empty() {
        return Ok(());
    }
    let partition = offsets_partition(group, topic.partitions);
    let p = shard
        .partition(topic, partition)
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    let batch = build_batch(now_ms(), records);
    p.append(batch, true).await.map(|_| ()).map_err(|e| {
        warn!(group, error = %e, "cannot persist to the offsets topic");
        ResponseError::CoordinatorNotAvailable
    })
}

/// Records per batch when compaction copies live keys forward.
const COMPACTION_BATCH_RECORDS: usize = 1000;

/// Starts compacting offsets partition `partition` in the background when it holds more than
/// twice its `segment.bytes`.
fn maybe_compact(shard: &Rc<Shard>, topic: &Topic, partition: i32) {
    let Some(p) = shard.open_partition((topic.id, partition)) else {
        return;
    };
    let limit = p.log().config().segment_bytes_max.saturating_mul(2);
    if p.log().size_bytes() <= limit || !shard.groups.compacting.borrow_mut().insert(partition) {
        return;
    }
    let shard = shard.clone();
    let topic = topic.clone();
    glommio::spawn_local(async move {
        match compact(&shard, &topic, partition).await {
            Ok(start) => info!(partition, log_start = start, "offsets partition compacted"),
            Err(e) => warn!(partition, error = %e, "offsets compaction failed"),
        }
        shard.groups.compacting.borrow_mut().remove(&partition);
    })
    .detach();
}

/// Compacts an offsets partition: appends the current value of every live key (each group's
/// record and committed offsets) at the end of the log, then moves the log start to where that
/// copy begins, so every older record (superseded values, deleted keys) goes with the segments
/// below it. Replay from the new start rebuilds the same state.
///
/// Why this is safe with commits running concurrently: commits, deletions and this copy all
/// change memory first and then append in the same synchronous step, and appends take the
/// partition's turn in FIFO order. So a record that lands before a copied batch holds a value
/// no newer than the copy's, and one that lands after it is newer: replay ends at the latest.
async fn compact(shard: &Shard, topic: &Topic, partition: i32) -> sluice_storage::Result<i64> {
    let p = shard.partition(topic, partition).await?;
    let groups: Vec<Rc<RefCell<Group>>> = shard
        .groups
        .groups
        .borrow()
        .values()
        .filter(|g| offsets_partition(&g.borrow().id, topic.partitions) == partition)
        .cloned()
        .collect();
    let mut keys: Vec<(String, Option<(String, i32)>)> = Vec::new();
    for g in &groups {
        let g = g.borrow();
        keys.push((g.id.clone(), None));
        keys.extend(g.offsets.keys().map(|k| (g.id.clone(), Some(k.clone()))));
    }
    // Each batch stays within the partition's max.message.bytes (half of it, for headers).
    let budget = (p.log().config().batch_bytes_max as usize / 2).max(1024);
    let mut start: Option<Offset> = None;
    let mut next = 0;
    while next < keys.len() {
        // Built from memory and appended in one synchronous step (see above).
        let mut records: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        let mut bytes = 0;
        while next < keys.len() && records.len() < COMPACTION_BATCH_RECORDS && bytes < budget {
            let (group, key) = &keys[next];
            next += 1;
            let Some(cell) = shard.groups.group(group) else {
                continue;
            };
            let g = cell.borrow();
            let record = match key {
                None => Some((group_key(group), group_value(&g.record(), now_ms()))),
                Some((t, part)) => g
                    .offsets
                    .get(&(t.clone(), *part))
                    .map(|c| (offset_key(group, t, *part), offset_value(c))),
            };
            if let Some((k, v)) = record {
                bytes += k.len() + v.len() + 32;
                records.push((k, Some(v)));
            }
        }
        if records.is_empty() {
            continue;
        }
        start.get_or_insert(p.high_watermark());
        p.append(build_batch(now_ms(), &records), true)
            .await
            .map_err(|e| as_storage_error(&p, e))?;
    }
    // With no live key left, everything before the current end is garbage.
    let start = start.unwrap_or_else(|| p.high_watermark());
    // In cluster mode the copies must commit before the cut (which must be committed too);
    // an open transaction's offsets (not in memory's committed offsets yet) are kept.
    let start = start.min(p.high_watermark()).min(p.last_stable_offset());
    p.truncate_prefix(start)
        .await
        .map(|s| s.0)
        .map_err(|e| as_storage_error(&p, e))
}

/// An append's refusal as the storage error compaction reports.
fn as_storage_error(
    p: &crate::partition::Partition,
    e: crate::partition::AppendError,
) -> sluice_storage::StorageError {
    match e {
        crate::partition::AppendError::Storage(e) => e,
        crate::partition::AppendError::Refused(_, m) => sluice_storage::StorageError::Io {
            path: p.dir().display().to_string(),
            source: std::io::Error::other(m),
        },
    }
}

/// Persists a new generation's group record in the background (membership itself is not
/// persisted; the record keeps the group and its generation across restarts).
///
/// The record is taken from memory when the task runs, in the same synchronous step as its
/// append (the ordering `compact` relies on), so a late task never writes an older generation
/// after a newer one; `_record` only marks that a generation ended.
fn persist_group_record(shard: &Rc<Shard>, topic: &Topic, group: String, _record: GroupRecord) {
    let shard = shard.clone();
    let topic = topic.clone();
    glommio::spawn_local(async move {
        let Some(cell) = shard.groups.group(&group) else {
            return;
        };
        let value = group_value(&cell.borrow().record(), now_ms());
        let _ = append_records(&shard, &topic, &group, &[(group_key(&group), Some(value))]).await;
    })
    .detach();
}

/// Rebuilds the groups of `partition` (an offsets partition this shard owns) from its log.
/// A partition holding records in Sluice's earlier JSON format is then rewritten in Kafka's
/// (the live state appended, the old prefix dropped: the compaction below), so a data
/// directory migrates on its first start; a crash half-way replays both and rewrites again.
pub async fn replay(shard: &Shard, topic: &Topic, partition: i32) -> sluice_storage::Result<usize> {
    let p = shard.partition(topic, partition).await?;
    let log = p.log();
    let mut from = log.log_start_offset();
    let end = log.log_end_offset();
    let mut applied = 0;
    let mut legacy = 0;
    let mut unknown = 0;
    while from < end {
        let read = log.read(from, REPLAY_READ_BYTES).await?;
        let mut bytes = read.bytes.clone();
        while !bytes.is_empty() {
            let info = validate_batch(&bytes, usize::MAX).expect("the log returns valid batches");
            let mut one = bytes.split_to(info.size_bytes);
            if info.is_control() {
                // A transaction's marker ends its pending offsets; anything else is one of
                // Raft's own entries (cluster mode).
                if let Some(marker) = sluice_storage::batch::txn_marker(&one) {
                    txn_offsets_ended(shard, partition, info.producer_id, marker.commit);
                }
                continue;
            }
            let Ok(set) = kafka_protocol::records::RecordBatchDecoder::decode(&mut one) else {
                warn!(partition, "undecodable batch in the offsets topic; skipped");
                continue;
            };
            if info.is_transactional() {
                // TxnOffsetCommit's records: pending until the transaction's marker.
                for record in set.records {
                    let decoded = record
                        .key
                        .as_deref()
                        .map(|key| offsets_topic::decode(key, record.value.as_deref()));
                    if let Some(Decoded::Current(OffsetsRecord::Offset {
                        group,
                        topic,
                        partition: p,
                        committed: Some(c),
                    })) = decoded
                    {
                        shard
                            .groups
                            .pending_txn
                            .borrow_mut()
                            .entry((partition, info.producer_id))
                            .or_default()
                            .push((group, topic, p, c));
                        applied += 1;
                    }
                }
                continue;
            }
            for record in set.records {
                let Some(key) = record.key.as_deref() else {
                    unknown += 1;
                    continue;
                };
                match offsets_topic::decode(key, record.value.as_deref()) {
                    Decoded::Current(r) => apply_record(shard, r),
                    Decoded::Legacy(r) => {
                        legacy += 1;
                        apply_record(shard, r);
                    }
                    Decoded::Unknown => {
                        unknown += 1;
                        continue;
                    }
                }
                applied += 1;
            }
        }
        from = read.next_offset;
    }
    if unknown > 0 {
        warn!(
            partition,
            records = unknown,
            "records of the offsets topic not understood; skipped"
        );
    }
    if legacy > 0 {
        let start = compact(shard, topic, partition).await?;
        info!(
            partition,
            records = legacy,
            log_start = start,
            "offsets topic partition migrated from Sluice's JSON records to Kafka's format"
        );
    }
    Ok(applied)
}

/// A transaction of `producer_id` ended in offsets partition `partition` (its marker is in the
/// log): on commit its pending offsets become the groups' committed offsets, in commit order;
/// on abort they go.
pub fn txn_offsets_ended(shard: &Shard, partition: i32, producer_id: i64, commit: bool) {
    let Some(pending) = shard
        .groups
        .pending_txn
        .borrow_mut()
        .remove(&(partition, producer_id))
    else {
        return;
    };
    if !commit {
        return;
    }
    for (group, topic, p, committed) in pending {
        let cell = shard.groups.group_or_new(&group);
        cell.borrow_mut().offsets.insert((topic, p), committed);
    }
}

/// A TxnOffsetCommit request, as the group coordinator takes it.
#[derive(Debug, Clone)]
pub struct TxnOffsetCommit {
    pub transactional_id: String,
    pub group_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// -1 (with an empty member id): not a member's commit.
    pub generation: i32,
    pub member_id: String,
    pub offsets: Vec<(String, i32, Committed)>,
}

/// TxnOffsetCommit (KIP-98): offsets committed as part of producer `producer_id`'s open
/// transaction, written to the group's offsets partition as a transactional batch of that
/// producer; they become the group's committed offsets when the transaction commits (its
/// marker, `txn_offsets_ended`). The transaction coordinator must know the transaction and
/// have the group's offsets partition in it (`transactions::verify`). A member's commit
/// (`generation` >= 0, KIP-447) is checked as OffsetCommit's is; a commit without one is taken
/// as a simple commit. Unknown partitions get UNKNOWN_TOPIC_OR_PARTITION.
pub async fn txn_commit_offsets(
    shard: &Rc<Shard>,
    commit: TxnOffsetCommit,
) -> Vec<Option<ResponseError>> {
    let TxnOffsetCommit {
        transactional_id,
        group_id,
        producer_id,
        producer_epoch,
        generation,
        member_id,
        offsets,
    } = commit;
    if let Some(codes) = crate::transactions::refuse_unknown_partitions(
        shard,
        offsets.iter().map(|(t, p, _)| (t, *p)),
    ) {
        return codes.into_iter().map(Some).collect();
    }
    let image = shard.image();
    let count = offsets.len();
    // The transaction must hold the group's offsets partition (AddOffsetsToTxn came first).
    if let Some(topic) = image.topic(OFFSETS_TOPIC) {
        let partition = offsets_partition(&group_id, topic.partitions);
        let verified = crate::transactions::verify(
            shard,
            transactional_id,
            producer_id,
            producer_epoch,
            OFFSETS_TOPIC.to_string(),
            partition,
        )
        .await;
        if let Err(code) = verified {
            return vec![Some(code); count];
        }
    }
    let answer = on_coordinator(shard, &group_id.clone(), move |s, topic| async move {
        if generation >= 0 {
            if let Some(cell) = s.groups.group(&group_id) {
                let group = cell.borrow();
                if group.member(&member_id).is_none() {
                    return Err(ResponseError::UnknownMemberId);
                }
                if generation != group.generation {
                    return Err(ResponseError::IllegalGeneration);
                }
            } else {
                return Err(ResponseError::UnknownMemberId);
            }
        }
        let partition = offsets_partition(&group_id, topic.partitions);
        let records: Vec<(Bytes, Option<Bytes>)> = offsets
            .iter()
            .map(|(t, p, c)| (offset_key(&group_id, t, *p), Some(offset_value(c))))
            .collect();
        let batch =
            transactional_batch(build_batch(now_ms(), &records), producer_id, producer_epoch);
        let p = s
            .partition(&topic, partition)
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        p.append(batch, true).await.map_err(|e| match e {
            crate::partition::AppendError::Refused(ResponseError::InvalidProducerEpoch, _) => {
                ResponseError::ProducerFenced
            }
            e => {
                warn!(group = %group_id, error = %e, "cannot persist transactional offsets");
                ResponseError::CoordinatorNotAvailable
            }
        })?;
        s.groups
            .pending_txn
            .borrow_mut()
            .entry((partition, producer_id))
            .or_default()
            .extend(
                offsets
                    .into_iter()
                    .map(|(t, p, c)| (group_id.clone(), t, p, c)),
            );
        Ok(())
    })
    .await
    .and_then(|r| r);
    match answer {
        Ok(()) => vec![None; count],
        Err(code) => vec![Some(code); count],
    }
}

/// `batch` (built by `build_batch`) as producer `(producer_id, producer_epoch)`'s
/// transactional batch without a sequence, as Kafka's coordinators write theirs.
fn transactional_batch(mut batch: Bytes, producer_id: i64, producer_epoch: i16) -> Bytes {
    let mut bytes = batch.to_vec();
    sluice_storage::batch::set_transactional_producer(&mut bytes, producer_id, producer_epoch);
    batch = bytes.into();
    batch
}

/// Applies one stored record to the in-memory groups.
fn apply_record(shard: &Shard, record: OffsetsRecord) {
    match record {
        OffsetsRecord::Offset {
            group,
            topic,
            partition,
            committed,
        } => {
            let cell = shard.groups.group_or_new(&group);
            let mut g = cell.borrow_mut();
            match committed {
                Some(c) => {
                    g.offsets.insert((topic, partition), c);
                }
                None => {
                    g.offsets.remove(&(topic, partition));
                }
            }
        }
        OffsetsRecord::Group {
            group,
            state: Some(r),
        } => {
            let cell = shard.groups.group_or_new(&group);
            let mut g = cell.borrow_mut();
            g.generation = r.generation;
            g.protocol_type = r.protocol_type;
        }
        OffsetsRecord::Group { group, state: None } => {
            shard.groups.groups.borrow_mut().remove(&group);
        }
    }
}

/// Expires sessions and ends overdue rebalance rounds on this shard's groups, forever.
pub async fn reaper(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(REAPER_PERIOD).await;
        let groups: Vec<Rc<RefCell<Group>>> =
            shard.groups.groups.borrow().values().cloned().collect();
        let Some(topic) = shard.image().topic(OFFSETS_TOPIC).cloned() else {
            continue;
        };
        let now = Instant::now();
        for cell in groups {
            let mut group = cell.borrow_mut();
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    // A member waiting in JoinGroup is alive; any other member must heartbeat
                    // within its session timeout, in every state (so a dead member does not
                    // hold a rebalance round until its rebalance timeout).
                    !group.joins.contains_key(&m.id)
                        && now.duration_since(m.last_heartbeat) > m.session_timeout
                })
                .map(|m| m.id.clone())
                .collect();
            for id in &expired {
                info!(group = %group.id, member = %id, "session expired; member removed");
                group.remove_member(id);
            }
            if !expired.is_empty() && group.state != GroupState::PreparingRebalance {
                group.prepare_rebalance(shard.effective().group_initial_rebalance_delay);
            }
            let overdue = group.round_deadline.is_some_and(|d| now >= d);
            if let Some(record) = group.maybe_complete_join(overdue) {
                let id = group.id.clone();
                drop(group);
                persist_group_record(&shard, &topic, id, record);
            }
        }
    }
}
