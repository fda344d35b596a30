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
//!
//! **Quiet groups** (TiKV's hibernation, CockroachDB's quiescence): a leader whose group has
//! had nothing to do for a few ticks, every follower holding its whole log, goes quiet
//! ([`Replica::tick_quietly`]) and sends one last heartbeat, which the owner marks quiet; a
//! follower that holds exactly that committed log goes quiet on it
//! ([`Replica::receive_quiet`]) and marks its answer quiet. A quiet replica's ticks do nothing:
//! no heartbeats, no election timer, so thousands of idle groups cost nothing per tick. Any
//! other message, a proposal, a campaign, a transfer or a read request wakes it, and its
//! owner wakes it when a member's node stops answering or comes back ([`Replica::wake_if_member`]):
//! that node-level liveness stands in for the heartbeats a quiet group no longer sends. Going
//! quiet changes only when ticks happen, never what Raft decides, so safety is untouched; a
//! follower that did not go quiet answers unmarked and so wakes its leader.

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
    /// A leader with nothing to do for this many ticks, whose followers all hold its whole
    /// log, goes quiet ([`Replica::tick_quietly`]); 0: never.
    pub quiet_after_ticks: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            election_ticks: 10,
            election_jitter_ticks: 10,
            heartbeat_ticks: 2,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 256,
            quiet_after_ticks: 4,
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
    /// Quiet: the replica's clock stands still (see "Quiet groups" above).
    quiet: bool,
    /// On a leader: ticks in a row at which it could have gone quiet.
    idle_ticks: usize,
    quiet_after_ticks: usize,
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
            quiet: false,
            idle_ticks: 0,
            quiet_after_ticks: config.quiet_after_ticks,
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

    /// One tick of logical time, unless the replica is quiet. True when the replica has
    /// something for `advance`.
    pub fn tick(&mut self) -> bool {
        if self.quiet {
            return false;
        }
        self.node.tick()
    }

    /// [`tick`](Self::tick), and on a leader whose group has been idle for
    /// `quiet_after_ticks` ticks in a row ([`can_go_quiet`](Self::can_go_quiet), with `live`
    /// saying which peers' nodes are up): goes quiet, with a heartbeat to every follower that
    /// the owner sends marked quiet ([`receive_quiet`](Self::receive_quiet) on the other
    /// side). True when the replica has something for `advance`.
    pub fn tick_quietly(&mut self, live: &dyn Fn(u64) -> bool) -> bool {
        if self.quiet {
            return false;
        }
        // Judged before the tick: a tick that sends the regular heartbeats leaves messages
        // behind, which are not work the group has.
        let idle = self.quiet_after_ticks > 0 && self.can_go_quiet(live);
        self.idle_ticks = if idle { self.idle_ticks + 1 } else { 0 };
        let ready = self.node.tick();
        if self.idle_ticks >= self.quiet_after_ticks && idle {
            self.quiet = true;
            self.idle_ticks = 0;
            self.node.ping();
            return true;
        }
        ready
    }

    /// Whether this replica leads a group with nothing in flight: every entry committed,
    /// durable and applied here; every other replica (learners too) either acknowledged the
    /// whole log, is replicating normally and `live`, or is down (not `live`, and silent for a
    /// whole check-quorum round, so the ISR leaves it out already); the caught-up live voters
    /// with this one a majority; no configuration change, leadership transfer or read request
    /// pending. Such a group needs no ticks until something new happens: a member coming back
    /// wakes it (its owner follows liveness), as does a message or a proposal. (CockroachDB
    /// quiesces ranges past dead replicas the same way; a leader cut off from its majority
    /// stays awake, so check-quorum still makes it step down.)
    pub fn can_go_quiet(&self, live: &dyn Fn(u64) -> bool) -> bool {
        let raft = &self.node.raft;
        let log = &raft.raft_log;
        let last = log.last_index();
        let idle = self.role() == Role::Leader
            && !self.node.has_ready()
            && log.committed == last
            && log.persisted == last
            && log.applied == last
            && self.snapshot_to_apply.is_none()
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && raft.pending_read_count() == 0
            && raft.prs().conf().to_conf_state().voters_outgoing.is_empty();
        if !idle {
            return false;
        }
        let voters = raft.prs().conf().voters();
        let mut caught_up_voters = 0;
        for (id, progress) in raft.prs().iter() {
            let holds_all = *id == raft.id
                || (progress.matched == last
                    && progress.state == raft::ProgressState::Replicate
                    && live(*id));
            if holds_all {
                caught_up_voters += usize::from(voters.contains(*id));
            } else if live(*id) || progress.recent_active {
                return false;
            }
        }
        // (No joint configuration here: the incoming voters are all of them.)
        caught_up_voters * 2 > raft.prs().conf().to_conf_state().voters.len()
    }

    /// Whether raft-rs has work for [`advance`](Self::advance).
    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Whether the replica is quiet: its clock stands still (a leader sends no heartbeats, a
    /// follower runs no election timer) until a message, a proposal or its owner wakes it.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Wakes a quiet replica: its clock runs again from where it stood (a follower's election
    /// timer, frozen just after the leader's last heartbeat, has a whole timeout to run).
    pub fn wake(&mut self) {
        self.quiet = false;
    }

    /// Wakes the replica if `peer` is a member of its group (voter or learner).
    pub fn wake_if_member(&mut self, peer: u64) {
        if self.quiet && self.is_member(peer) {
            self.wake();
        }
    }

    fn is_member(&self, peer: u64) -> bool {
        let conf = self.node.raft.prs().conf();
        conf.voters().contains(peer) || conf.learners().contains(&peer)
    }

    /// A message from a peer. It wakes a quiet replica.
    pub fn receive(&mut self, message: Message) -> Result<()> {
        self.wake();
        let stepped = self.node.step(message).map_err(ReplicationError::from);
        self.note_leader();
        stepped
    }

    /// A message its sender marked quiet. A leader's heartbeat: stepped as any heartbeat,
    /// then this replica goes quiet if it follows that leader in its term, holds exactly the
    /// committed log, durable, and the leader's node is `live` (a heartbeat that was on its way
    /// when the leader died must not put to sleep a follower its owner just woke); else it
    /// stays awake, and its unmarked answer wakes the leader. A follower's answer to such a heartbeat: stepped without waking this replica.
    /// Anything else: as [`receive`](Self::receive).
    pub fn receive_quiet(&mut self, message: Message, live: &dyn Fn(u64) -> bool) -> Result<()> {
        use raft::eraftpb::MessageType;
        let (term, from) = (message.term, message.from);
        match message.get_msg_type() {
            MessageType::MsgHeartbeat => {
                let stepped = self.node.step(message).map_err(ReplicationError::from);
                self.note_leader();
                let log = &self.node.raft.raft_log;
                let last = log.last_index();
                self.quiet = stepped.is_ok()
                    && live(from)
                    && self.role() == Role::Follower
                    && self.term() == term
                    && self.leader_id() == from
                    && log.committed == last
                    && log.persisted == last
                    && self.snapshot_to_apply.is_none();
                self.idle_ticks = 0;
                stepped
            }
            MessageType::MsgHeartbeatResponse => {
                let stepped = self.node.step(message).map_err(ReplicationError::from);
                self.note_leader();
                stepped
            }
            _ => self.receive(message),
        }
    }

    fn note_leader(&mut self) {
        if self.leader_id() != raft::INVALID_ID {
            self.last_leader = self.leader_id();
        }
    }

    /// Appends `data` as a new entry if this replica leads; `NotLeader` otherwise.
    pub fn propose(&mut self, data: Bytes) -> Result<()> {
        self.wake();
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
        self.wake();
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
        self.wake();
        self.node.transfer_leader(to);
    }

    /// Starts an election now (a leader hand-off, or a test).
    pub fn campaign(&mut self) -> Result<()> {
        self.wake();
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
        self.wake();
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
        self.wake();
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
        self.wake();
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
        self.wake_if_member(peer);
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

    /// Three voters in memory, messages carried by hand.
    struct Group {
        replicas: Vec<Replica<MemStorage>>,
        /// Messages dropped instead of delivered, to this id.
        cut_off: Option<u64>,
    }

    impl Group {
        fn new() -> Group {
            let replicas = (1..=3)
                .map(|id| {
                    let storage =
                        MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
                    Replica::new(
                        id,
                        ReplicaConfig {
                            election_jitter_ticks: 1,
                            ..ReplicaConfig::default()
                        },
                        storage,
                        0,
                        &crate::discard_logger(),
                    )
                    .unwrap()
                })
                .collect();
            let mut group = Group {
                replicas,
                cut_off: None,
            };
            group.replicas[0].campaign().unwrap();
            group.settle();
            assert_eq!(group.replicas[0].role(), Role::Leader);
            group
        }

        /// Runs every replica's ready work and delivers what it sends (marked quiet as the
        /// node marks it) until nothing moves.
        fn settle(&mut self) {
            for _ in 0..100 {
                let mut outgoing = Vec::new();
                for replica in &mut self.replicas {
                    while let Some(progress) = replica.advance().unwrap() {
                        let quiet = replica.is_quiet();
                        let mut sent = progress.send;
                        replica.persisted(progress.persist.number);
                        sent.extend(progress.persist.send_after);
                        outgoing.extend(sent.into_iter().map(|m| {
                            let marked = quiet
                                && matches!(
                                    m.get_msg_type(),
                                    raft::eraftpb::MessageType::MsgHeartbeat
                                        | raft::eraftpb::MessageType::MsgHeartbeatResponse
                                );
                            (m, marked)
                        }));
                    }
                }
                if outgoing.is_empty() {
                    return;
                }
                for (message, marked) in outgoing {
                    if Some(message.to) == self.cut_off {
                        continue;
                    }
                    let to = &mut self.replicas[message.to as usize - 1];
                    if marked {
                        to.receive_quiet(message, &|_| true).unwrap();
                    } else {
                        to.receive(message).unwrap();
                    }
                }
            }
            panic!("the group never settled");
        }

        fn tick(&mut self, live: &dyn Fn(u64) -> bool) {
            for replica in &mut self.replicas {
                replica.tick_quietly(live);
            }
            self.settle();
        }

        fn quiet(&self) -> Vec<bool> {
            self.replicas.iter().map(|r| r.is_quiet()).collect()
        }
    }

    #[test]
    fn an_idle_group_goes_quiet_on_every_replica_and_a_proposal_wakes_it() {
        let mut group = Group::new();
        group.replicas[0]
            .propose(Bytes::from_static(b"one"))
            .unwrap();
        group.settle();
        for _ in 0..ReplicaConfig::default().quiet_after_ticks + 1 {
            group.tick(&|_| true);
        }
        assert_eq!(group.quiet(), vec![true, true, true]);
        // Quiet: ticks do nothing, however many, and nobody campaigns.
        for _ in 0..100 {
            group.tick(&|_| true);
        }
        assert_eq!(group.quiet(), vec![true, true, true]);
        assert_eq!(group.replicas[0].role(), Role::Leader);
        assert_eq!(group.replicas[0].term(), group.replicas[1].term());
        // A proposal wakes the leader; its append wakes the followers.
        group.replicas[0]
            .propose(Bytes::from_static(b"two"))
            .unwrap();
        group.settle();
        assert_eq!(group.quiet(), vec![false, false, false]);
        assert!(group.replicas.iter().all(|r| r.commit_index() == 3));
    }

    #[test]
    fn a_group_goes_quiet_past_a_down_member_once_it_fell_silent_and_wakes_when_it_returns() {
        let mut group = Group::new();
        let quiet_after = ReplicaConfig::default().quiet_after_ticks;
        let election = ReplicaConfig::default().election_ticks;
        // Node 3's node is reported down but 3 still answers: the leader keeps heartbeating.
        for _ in 0..election * 3 {
            group.tick(&|id| id != 3);
        }
        assert_eq!(group.quiet(), vec![false, false, false]);
        // 3 is gone for real: once a check-quorum round saw it silent, the other two go quiet.
        group.cut_off = Some(3);
        let mut ticks = 0;
        while group.quiet()[..2] != [true, true] {
            assert!(ticks < election * 3, "never quiet past the down member");
            group.tick(&|id| id != 3);
            ticks += 1;
        }
        assert!(
            ticks > election,
            "quiet only after 3 fell silent ({ticks} ticks)"
        );
        // 3 is back: its owner's liveness wakes the leader, whose heartbeat 3 answers.
        group.cut_off = None;
        group.replicas[0].wake_if_member(3);
        group.replicas[1].wake_if_member(3);
        group.replicas[0].propose(Bytes::from_static(b"x")).unwrap();
        group.settle();
        for _ in 0..quiet_after * 3 {
            group.tick(&|_| true);
        }
        assert_eq!(group.quiet(), vec![true, true, true]);
        assert!(group.replicas.iter().all(|r| r.commit_index() == 2));
    }

    #[test]
    fn a_leader_with_only_a_minority_live_stays_awake_and_steps_down() {
        let mut group = Group::new();
        let election = ReplicaConfig::default().election_ticks;
        // Both followers are gone: the leader must not go quiet (it would lead forever); its
        // check-quorum makes it a follower.
        group.cut_off = Some(2);
        for _ in 0..election * 3 {
            group.replicas[0].tick_quietly(&|id| id == 1);
            // (3 is cut off too: nothing reaches it.)
            while let Some(progress) = group.replicas[0].advance().unwrap() {
                group.replicas[0].persisted(progress.persist.number);
            }
        }
        assert!(!group.replicas[0].is_quiet());
        assert_ne!(group.replicas[0].role(), Role::Leader);
    }

    #[test]
    fn a_group_with_a_member_down_stays_awake_and_a_woken_follower_elects() {
        let mut group = Group::new();
        let quiet_after = ReplicaConfig::default().quiet_after_ticks;
        // Node 3 is not live but answers: the leader keeps heartbeating.
        for _ in 0..quiet_after * 3 {
            group.tick(&|id| id != 3);
        }
        assert_eq!(group.quiet(), vec![false, false, false]);
        for _ in 0..quiet_after + 1 {
            group.tick(&|_| true);
        }
        assert_eq!(group.quiet(), vec![true, true, true]);
        // The leader's node goes silent: its followers' owners wake them, and one of them is
        // elected once its timer runs out; the old leader, still quiet, knows nothing of it
        // until a message reaches it.
        group.cut_off = Some(1);
        group.replicas[1].wake_if_member(1);
        group.replicas[2].wake_if_member(1);
        // (Clocks a few ticks apart: without jitter two timers that start together split
        // every vote.)
        for tick in 0..ReplicaConfig::default().election_ticks * 3 {
            group.replicas[1].tick_quietly(&|id| id != 1);
            if tick >= 3 {
                group.replicas[2].tick_quietly(&|id| id != 1);
            }
            group.settle();
        }
        let leaders: Vec<u64> = group.replicas[1..]
            .iter()
            .filter(|r| r.role() == Role::Leader)
            .map(|r| r.id())
            .collect();
        assert_eq!(leaders.len(), 1, "one of the woken followers leads");
        assert!(group.replicas[1].term() > group.replicas[0].term());
    }

    #[test]
    fn a_leader_stays_awake_until_every_follower_holds_its_log() {
        let mut group = Group::new();
        let quiet_after = ReplicaConfig::default().quiet_after_ticks;
        group.cut_off = Some(3);
        group.replicas[0].propose(Bytes::from_static(b"x")).unwrap();
        group.settle();
        for _ in 0..quiet_after * 3 {
            group.tick(&|_| true);
        }
        assert!(!group.replicas[0].is_quiet(), "3 lacks the entry");
        group.cut_off = None;
        for _ in 0..quiet_after * 3 {
            group.tick(&|_| true);
        }
        assert_eq!(group.quiet(), vec![true, true, true]);
        assert_eq!(group.replicas[2].commit_index(), 2, "3 caught up first");
        // An answer its sender did not mark quiet (a follower that stayed awake) wakes the
        // leader, which heartbeats again.
        let mut answer = Message::default();
        answer.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeatResponse);
        answer.from = 2;
        answer.to = 1;
        answer.term = group.replicas[0].term();
        answer.commit = 2;
        group.replicas[0].receive(answer).unwrap();
        assert!(!group.replicas[0].is_quiet());
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
