//! One replica of one Raft group, driven as a pure state machine: no I/O, no async, no clock.
//! Time is ticks the owner calls, messages are values the owner carries, and persistence is a
//! job the owner performs and reports back. This is what a shard's loop (and the deterministic
//! simulation in `tests/simulation.rs`) drives for every partition it holds.
//!
//! The consensus itself is raft-rs (`RawNode`); this module is the contract around it:
//! - [`Replica::advance`] turns one raft-rs `Ready` into a [`Progress`]: messages to send now,
//!   one [`PersistJob`] (entries and hard state to make durable), and committed entries to apply;
//! - entries are put into the replica's storage at once (readable, not yet durable: raft-rs's
//!   asynchronous-ready contract), and become durable when the owner completes the job;
//! - the owner completes persist jobs **in the order they were issued** and calls
//!   [`Replica::persisted`] with the job's number; only then may the job's `send_after`
//!   messages leave (votes and follower acknowledgements promise durable state);
//! - a leader's messages leave at once, before its own persist completes (Raft thesis 10.2.1:
//!   the leader's own copy counts toward the quorum only once persisted).
//!
//! Invariant: a message in `send_after` never leaves before its job is durable. Everything the
//! replica has acknowledged to a peer therefore survives a crash of this replica.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, Snapshot,
};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage};

use crate::error::{ReplicationError, Result};

/// Storage a replica writes through: raft-rs reads entries back through `raft::Storage`, and
/// the replica puts new entries and hard state in as each `Ready` arrives (before they are
/// durable; the owner's persist job makes them so).
pub trait ReplicaStorage: Storage {
    /// Adds entries after dropping any stored entry at or after the first one's index (a
    /// follower whose suffix conflicts with the leader's truncates it).
    fn put_entries(&mut self, entries: &[Entry]) -> Result<()>;
    fn put_hard_state(&mut self, hard_state: &HardState);
    /// Replaces everything up to the snapshot's index by the snapshot (a follower too far
    /// behind the leader's compacted log): the entries held are dropped.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<()>;
    /// The index of the last configuration change the stored configuration reflects (0:
    /// none): committed changes at or below it are not applied again (a replica that joined
    /// a group started from the configuration its leader had at that index).
    fn conf_index(&self) -> u64 {
        0
    }
    /// Records the configuration the change at `index` produced.
    fn put_conf_state(&mut self, index: u64, conf_state: &ConfState);
}

impl ReplicaStorage for MemStorage {
    fn put_entries(&mut self, entries: &[Entry]) -> Result<()> {
        self.wl().append(entries).map_err(ReplicationError::from)
    }

    fn put_hard_state(&mut self, hard_state: &HardState) {
        self.wl().set_hardstate(hard_state.clone());
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.wl()
            .apply_snapshot(snapshot.clone())
            .map_err(ReplicationError::from)
    }

    fn put_conf_state(&mut self, _index: u64, conf_state: &ConfState) {
        self.wl().set_conf_state(conf_state.clone());
    }
}

/// Timing and flow limits of a replica, in ticks and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// A follower that hears nothing from a leader for `election_ticks` plus a random number
    /// of ticks below `election_jitter_ticks` campaigns.
    pub election_ticks: usize,
    /// At least 1. raft-rs draws the jitter from the thread's own random generator, so a
    /// deterministic run (the simulation) sets 1 and varies the clocks instead.
    pub election_jitter_ticks: usize,
    /// A leader sends heartbeats this often.
    pub heartbeat_ticks: usize,
    /// Append messages carry at most this many bytes of entries.
    pub max_bytes_per_message: u64,
    /// Append messages in flight to one follower.
    pub max_inflight_messages: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            election_ticks: 10,
            election_jitter_ticks: 10,
            heartbeat_ticks: 2,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 256,
        }
    }
}

/// The role of a replica as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Role {
        match role {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        }
    }
}

/// Entries and hard state to make durable, in issue order, then report with
/// [`Replica::persisted`]. A job may be empty (nothing to write): it still completes in order.
#[derive(Debug, Default)]
pub struct PersistJob {
    pub number: u64,
    /// A leader's snapshot this follower restored from (the storage holds it already): make
    /// it durable before the entries, which follow it.
    pub snapshot: Option<Snapshot>,
    /// To write after dropping any durable entry at or after the first one's index.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// False when only the commit index moved: the write may be lazy (raft-rs's `must_sync`).
    pub must_sync: bool,
    /// Messages that may leave only once this job is durable.
    pub send_after: Vec<Message>,
}

impl PersistJob {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.hard_state.is_none() && self.snapshot.is_none()
    }
}

/// What one `advance` asks of the owner.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages to send now.
    pub send: Vec<Message>,
    pub persist: PersistJob,
    /// Entries now committed (and durable here), in index order, to apply.
    pub committed: Vec<Entry>,
    /// The replica's role changed: its new role, term and known leader (0: none).
    pub role_changed: Option<(Role, u64, u64)>,
    /// Answers to [`Replica::read_index`]: the leader's commit index when it confirmed it
    /// still led, per request.
    pub read_indexes: Vec<u64>,
    /// A committed configuration change was applied: the last one's index and the
    /// configuration it produced (the owner makes it durable; a restart applies again any
    /// committed change it lost).
    pub conf_changed: Option<(u64, ConfState)>,
}

/// One replica of one Raft group.
pub struct Replica<S: ReplicaStorage> {
    node: RawNode<S>,
    /// Role, term and leader as last reported in a `Progress`.
    reported: (Role, u64, u64),
    /// The last leader this replica knew (kept when an election makes it forget the leader),
    /// so a vote request that arrives before the news of the leader's death does not hide
    /// whose group this was.
    last_leader: u64,
    /// A restored snapshot's index, applied once its persist job is reported done.
    snapshot_to_apply: Option<(u64, u64)>,
    /// Peers whose append window `pace_learners` narrowed: a learner promoted to voter (or
    /// removed) gets the configured window back, or the group could not commit without it.
    narrowed: Vec<u64>,
}

impl<S: ReplicaStorage> Replica<S> {
    /// A replica `id` over `storage`, which holds its durable state (hard state, configuration
    /// and entries: empty for a new group, whose voters are in the storage's configuration).
    /// `applied` is the last index the owner's state machine already holds.
    pub fn new(
        id: u64,
        config: ReplicaConfig,
        storage: S,
        applied: u64,
        logger: &slog::Logger,
    ) -> Result<Replica<S>> {
        let raft_config = raft::Config {
            id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks + config.election_jitter_ticks.max(1),
            applied,
            max_size_per_msg: config.max_bytes_per_message,
            max_inflight_msgs: config.max_inflight_messages,
            // A partitioned-away replica neither disrupts the group when it returns (pre-vote)
            // nor keeps believing it leads (check quorum).
            pre_vote: true,
            check_quorum: true,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let node = RawNode::new(&raft_config, storage, logger)?;
        let reported = (node.raft.state.into(), node.raft.term, node.raft.leader_id);
        let last_leader = node.raft.leader_id;
        Ok(Replica {
            node,
            reported,
            last_leader,
            snapshot_to_apply: None,
            narrowed: Vec::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.node.raft.id
    }

    pub fn role(&self) -> Role {
        self.node.raft.state.into()
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// The leader this replica knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The last index in this replica's log, durable or not.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    pub fn storage(&self) -> &S {
        self.node.store()
    }

    pub fn storage_mut(&mut self) -> &mut S {
        self.node.mut_store()
    }

    /// On a leader, the lowest index every replica (itself included) is known to hold.
    pub fn min_matched(&self) -> Option<u64> {
        if self.role() != Role::Leader {
            return None;
        }
        self.node.raft.prs().iter().map(|(_, p)| p.matched).min()
    }

    /// On a leader, each replica's id, the highest index it is known to hold, and whether it
    /// answered since the last check-quorum round (every election timeout); itself included.
    /// Empty elsewhere.
    pub fn matched(&self) -> Vec<(u64, u64, bool)> {
        if self.role() != Role::Leader {
            return Vec::new();
        }
        self.node
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (*id, p.matched, p.recent_active))
            .collect()
    }

    /// Entries the storage could only fetch asynchronously are now in memory: raft-rs retries
    /// what it was doing with them (sending an append).
    pub fn entries_fetched(&mut self, context: raft::GetEntriesContext) {
        self.node.on_entries_fetched(context);
    }

    /// One tick of logical time. True when the replica has something for `advance`.
    pub fn tick(&mut self) -> bool {
        self.node.tick()
    }

    /// A message from a peer.
    pub fn receive(&mut self, message: Message) -> Result<()> {
        let stepped = self.node.step(message).map_err(ReplicationError::from);
        self.note_leader();
        stepped
    }

    fn note_leader(&mut self) {
        if self.leader_id() != raft::INVALID_ID {
            self.last_leader = self.leader_id();
        }
    }

    /// Appends `data` as a new entry if this replica leads; `NotLeader` otherwise.
    pub fn propose(&mut self, data: Bytes) -> Result<()> {
        if self.role() != Role::Leader {
            return Err(ReplicationError::NotLeader {
                leader: self.leader_id(),
            });
        }
        self.node
            .propose(Vec::new(), data.to_vec())
            .map_err(ReplicationError::from)
    }

    /// Proposes `data` wherever the leader is: appended here if this replica leads, else
    /// forwarded to the leader it knows. Fire and forget: whether it commits shows in the
    /// log, so the caller must recognise its entry there (and propose again if it never
    /// appears). `NotLeader` when no leader is known.
    pub fn propose_anywhere(&mut self, data: Bytes) -> Result<()> {
        if self.role() != Role::Leader && self.leader_id() == raft::INVALID_ID {
            return Err(ReplicationError::NotLeader { leader: 0 });
        }
        self.node
            .propose(Vec::new(), data.to_vec())
            .map_err(ReplicationError::from)
    }

    /// On a leader: hands leadership to `to` as soon as it holds the whole log (raft-rs's
    /// TimeoutNow); proposals are dropped meanwhile. Repeating it for the same `to` is a no-op.
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Starts an election now (a leader hand-off, or a test).
    pub fn campaign(&mut self) -> Result<()> {
        self.node.campaign().map_err(ReplicationError::from)
    }

    /// When the process of `peer` is gone (its connection to this node closed) and this
    /// replica followed it (or followed it last, and has since heard a candidate's vote
    /// request): its place among the other voters in the order the group's
    /// `successors` gives (sorted ids in, an ordering out), so that the first campaigns at once
    /// and each next one only if the earlier could not win. `None` when `peer` was not this
    /// replica's leader.
    pub fn successor_rank(
        &self,
        peer: u64,
        successors: impl Fn(Vec<u64>) -> Vec<u64>,
    ) -> Option<usize> {
        let followed = self.leader_id() == peer
            || (self.leader_id() == raft::INVALID_ID && self.last_leader == peer);
        if self.role() != Role::Follower || !followed {
            return None;
        }
        let mut others: Vec<u64> = self
            .node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != peer)
            .collect();
        others.sort_unstable();
        successors(others).iter().position(|id| *id == self.id())
    }

    /// Starts an election at once if this replica follows and knows no live leader (its
    /// leader was `gone`, or it knows none): as a leader hand-off would (raft-rs's TimeoutNow),
    /// without pre-vote, and the other voters grant the vote although they heard from a leader
    /// within the election timeout. Safety is Raft's as ever (a vote still needs a log at least
    /// as up to date); only waiting out the election timeout is saved. Returns whether it
    /// campaigned.
    pub fn campaign_without(&mut self, gone: u64) -> bool {
        let leaderless = self.leader_id() == gone || self.leader_id() == raft::INVALID_ID;
        if self.role() != Role::Follower || !leaderless {
            return false;
        }
        let mut timeout_now = Message::default();
        timeout_now.set_msg_type(raft::eraftpb::MessageType::MsgTimeoutNow);
        timeout_now.from = gone;
        timeout_now.to = self.id();
        timeout_now.term = self.term();
        self.node.step(timeout_now).is_ok() && self.role() == Role::Candidate
    }

    /// Asks the leader (through this replica, wherever the leader is) for its commit index,
    /// confirmed by a quorum's heartbeat (raft-rs's ReadIndex): once this replica has applied
    /// that index, it has seen everything committed before the request. The answer comes in a
    /// later `Progress::read_indexes`; a request made while no leader is known is dropped (ask
    /// again). `context` tells concurrent requests apart.
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.node.read_index(context);
    }

    /// Whether `id` votes in the group's configuration (in either half of a joint one):
    /// learners do not.
    pub fn is_voter(&self, id: u64) -> bool {
        self.node.raft.prs().conf().voters().contains(id)
    }

    /// On a leader: lets appends flow to the group's learners (`in_flight` messages at most;
    /// `None`: the configured window) or holds them back (`Some(0)`: raft-rs sends a learner
    /// no further append until the window reopens; heartbeats go on). Returns the group's
    /// learners (none on a follower). A new configuration starts every learner with the configured
    /// window again, so a pacing caller paces on every step.
    pub fn pace_learners(&mut self, in_flight: Option<usize>) -> Vec<u64> {
        if self.role() != Role::Leader {
            // A new leader starts every peer with the configured window.
            self.narrowed.clear();
            return Vec::new();
        }
        let full = self.node.raft.max_inflight;
        let learners: Vec<u64> = self
            .node
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        for id in std::mem::take(&mut self.narrowed) {
            if !learners.contains(&id) {
                self.node.raft.adjust_max_inflight_msgs(id, full);
            }
        }
        let window = in_flight.unwrap_or(full);
        for id in &learners {
            self.node.raft.adjust_max_inflight_msgs(*id, window);
        }
        if window < full {
            self.narrowed.clone_from(&learners);
        }
        learners
    }

    /// Whether `id` is a learner of the group (a replica joining it, not voting yet).
    pub fn is_learner(&self, id: u64) -> bool {
        self.node.raft.prs().conf().learners().contains(&id)
    }

    /// The group's configuration as this replica knows it (voters, learners, and the
    /// outgoing voters while a joint change is under way).
    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    /// A configuration change is in the log but not applied yet (a leader proposes no other
    /// meanwhile: raft-rs would drop it).
    pub fn has_pending_conf(&self) -> bool {
        self.node.raft.has_pending_conf()
    }

    /// On a leader: proposes a configuration change (raft-rs's joint consensus: a simple
    /// change, entering a joint configuration, or an empty change leaving one). raft-rs
    /// drops it (appends an empty entry instead) while another change is pending or when it
    /// does not fit the current configuration; `NotLeader` elsewhere.
    pub fn propose_conf_change(&mut self, change: ConfChangeV2) -> Result<()> {
        if self.role() != Role::Leader {
            return Err(ReplicationError::NotLeader {
                leader: self.leader_id(),
            });
        }
        self.node
            .propose_conf_change(Vec::new(), change)
            .map_err(ReplicationError::from)
    }

    /// Applies a committed configuration change entry (not one the stored configuration
    /// already reflects); returns the new configuration, and records it in the storage.
    /// Normal entries, and a change raft-rs refuses (the same on every replica), give `None`.
    pub fn apply_conf_entry(&mut self, entry: &Entry) -> Option<ConfState> {
        if entry.index <= self.node.store().conf_index() {
            return None;
        }
        let applied = match entry.entry_type {
            EntryType::EntryNormal => return None,
            EntryType::EntryConfChange => ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| e.to_string())
                .and_then(|c| self.node.apply_conf_change(&c).map_err(|e| e.to_string())),
            EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|e| e.to_string())
                .and_then(|c| self.node.apply_conf_change(&c).map_err(|e| e.to_string())),
        };
        match applied {
            Ok(conf_state) => {
                self.node
                    .mut_store()
                    .put_conf_state(entry.index, &conf_state);
                Some(conf_state)
            }
            Err(reason) => {
                tracing::warn!(index = entry.index, %reason, "a configuration change was not applied");
                None
            }
        }
    }

    /// Tells the replica a peer could not be reached, so it stops pipelining to it.
    pub fn unreachable(&mut self, peer: u64) {
        self.node.report_unreachable(peer);
    }

    /// The work raft-rs has for the owner, if any: one `Ready` taken, its entries put into
    /// storage, its committed entries marked applied (the owner applies them before it
    /// advances again).
    pub fn advance(&mut self) -> Result<Option<Progress>> {
        if !self.node.has_ready() {
            return Ok(None);
        }
        let mut ready = self.node.ready();
        let send = ready.take_messages();
        for message in &send {
            if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                // Reported as sent at once: raft-rs then probes the follower again after its
                // next heartbeat answer, so a snapshot lost on the way is simply sent again
                // instead of leaving the follower waiting forever.
                self.node
                    .report_snapshot(message.to, raft::SnapshotStatus::Finish);
            }
        }
        let mut progress = Progress {
            send,
            committed: ready.take_committed_entries(),
            read_indexes: ready.read_states().iter().map(|r| r.index).collect(),
            ..Progress::default()
        };
        let storage = self.node.mut_store();
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        if let Some(snapshot) = &snapshot {
            // raft-rs reads the snapshot's term back from storage as soon as the ready is
            // handed back, so the storage takes it now, as it takes entries.
            storage.restore(snapshot)?;
            self.snapshot_to_apply = Some((ready.number(), snapshot.get_metadata().index));
        }
        storage.put_entries(ready.entries())?;
        if let Some(hard_state) = ready.hs() {
            storage.put_hard_state(hard_state);
        }
        progress.persist = PersistJob {
            number: ready.number(),
            snapshot,
            entries: ready.take_entries(),
            hard_state: ready.hs().cloned(),
            must_sync: ready.must_sync(),
            send_after: ready.take_persisted_messages(),
        };
        self.node.advance_append_async(ready);
        for entry in &progress.committed {
            if let Some(conf_state) = self.apply_conf_entry(entry) {
                progress.conf_changed = Some((entry.index, conf_state));
            }
        }
        if let Some(last) = progress.committed.last() {
            self.node.advance_apply_to(last.index);
        }
        self.note_leader();
        let now = (self.role(), self.term(), self.leader_id());
        if now != self.reported {
            self.reported = now;
            progress.role_changed = Some(now);
        }
        Ok(Some(progress))
    }

    /// The persist job `number` (and every job before it) is durable.
    pub fn persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
        if let Some((job, index)) = self.snapshot_to_apply {
            if job <= number {
                // The snapshot is the state machine up to its index: applied once durable
                // (raft-rs allows no earlier, and campaigns read from the applied index on).
                self.snapshot_to_apply = None;
                self.node.advance_apply_to(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfChange, ConfChangeType};

    /// A single voter (1) leading a group with one learner (2).
    fn leader_with_a_learner() -> Replica<MemStorage> {
        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1], vec![2])));
        let mut replica = Replica::new(
            1,
            ReplicaConfig::default(),
            storage,
            0,
            &crate::discard_logger(),
        )
        .unwrap();
        replica.campaign().unwrap();
        assert_eq!(replica.role(), Role::Leader, "a single voter elects itself");
        replica
    }

    fn window_closed(replica: &Replica<MemStorage>, id: u64) -> bool {
        replica.node.raft.prs().get(id).unwrap().ins.full()
    }

    #[test]
    fn a_paced_learner_promoted_to_voter_gets_its_window_back() {
        let mut replica = leader_with_a_learner();
        assert_eq!(replica.pace_learners(Some(0)), vec![2]);
        assert!(window_closed(&replica, 2), "paced: no append may leave");
        // The joint change commits and applies: 2 votes now, and its acks count.
        let promote = ConfChange {
            change_type: ConfChangeType::AddNode,
            node_id: 2,
            ..Default::default()
        };
        replica.node.apply_conf_change(&promote).unwrap();
        assert!(replica.is_voter(2));
        assert!(replica.pace_learners(Some(0)).is_empty());
        assert!(
            !window_closed(&replica, 2),
            "a voter's window is never left closed"
        );
    }

    #[test]
    fn pacing_off_reopens_every_learners_window() {
        let mut replica = leader_with_a_learner();
        replica.pace_learners(Some(0));
        assert!(window_closed(&replica, 2));
        assert_eq!(replica.pace_learners(None), vec![2]);
        assert!(!window_closed(&replica, 2));
        assert!(!replica.is_learner(1) && replica.is_learner(2));
    }
}
