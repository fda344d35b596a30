//! The replication side of one node on one executor: many Raft groups (partitions, the
//! controller), the transport to the other nodes, and the loop step that drives them.
//!
//! A `step` delivers what arrived, runs every group's ready work **concurrently** (so the
//! groups' fdatasyncs share the shard's group-commit rounds instead of queueing one behind
//! another), queues what they send per peer and flushes: one frame per peer per step, whatever
//! the number of groups, plus earlier frames for what may leave before the sender's own write
//! is durable (a leader's appends: followers then write while the leader does). `tick` adds
//! one logical tick to every group first. Peers a flush could not reach are reported to every
//! group, so their leaders stop pipelining to them. A peer
//! whose connection to this node closed (its process died, or it stopped) is reported too: of
//! each group it led, the first surviving voter in the group's successor order (rotated by
//! group, so leaderships spread) campaigns at once instead of waiting out the election timeout,
//! and the next ones follow, spaced, while no leader has emerged. The owner hears of it too
//! ([`PeerEvent`]: a peer hung up, or was heard again after hanging up), so the broker can stop
//! naming a dead leader before the survivors' election is over.
//!
//! The owner also announces what this shard leads ([`announce_leading`](ReplicationNode::announce_leading))
//! to every peer, and hears the same of theirs ([`take_leading_heard`](ReplicationNode::take_leading_heard)),
//! so a node can name the leader of a partition it holds no replica of.
//!
//! Quiet groups (`replica.rs`): `tick` ticks partition groups with
//! [`RaftPartition::tick_quietly`], so an idle group stops ticking on every replica, and a
//! step runs only the groups that have work ([`RaftPartition::has_work`]): thousands of idle
//! groups cost neither heartbeats nor steps. What the groups' heartbeats said about the other
//! nodes, node-level liveness says instead: every [`KEEP_ALIVE_TICKS`] ticks each peer gets a
//! frame (empty when nothing else is queued), a peer not heard from for the liveness timeout
//! (or whose connection closed) is not live, and when a peer's liveness changes either way
//! every quiet group it is a member of wakes (its followers' election timers run again; its
//! leader's heartbeats reach a node that came back). The controller group never goes quiet.
//!
//! Nor do idle groups cost a look: a step and a tick visit only the groups that may have
//! changed, never every group, so their cost follows the busy groups, not the group count.
//! What makes that safe (a group left out while it has work would stall):
//! - `dirty` holds every group that may have work. A group enters it when a message is
//!   delivered to it, a tick reaches it, a peer's liveness or reachability changed its state,
//!   its pipelined write became durable (its waker marks it), or the owner took it mutably
//!   ([`group_mut`](ReplicationNode::group_mut): proposals, campaigns, transfers, reads). A
//!   step takes the set, runs those with work, and puts back those that still have some.
//! - `awake` holds every group that is not quiet: a tick ticks those alone. A quiet group
//!   wakes only through one of the paths above, each of which adds it (directly, or through
//!   the step that looks at it); a step drops the groups it finds quiet.
//! - What steps looked at, the owner takes ([`take_touched`](ReplicationNode::take_touched))
//!   to republish those groups' state, and nothing else: no other group's state can change.
//!
//! Invariant: a message reaches a group only through `step`, after the group's earlier ready
//! work has run; a group's persist jobs stay in order because each group runs its own ready work
//! one job at a time.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_storage::{FlushMode, LogConfig, Offset, SyncGroup};

use crate::error::{ReplicationError, Result};
use crate::hard_state_log::HardStateLog;
use crate::partition::{CommittedEntry, HardStateHome, Membership, Outbox, RaftPartition};
use crate::replica::ReplicaConfig;
use crate::rpc::{GroupKey, GroupMessage, LeadNote, PeerCall};
use crate::throttle::{catch_up_bytes, CatchUpThrottle};
use crate::transport::{Listener, Transport};

/// Largest frame a node accepts from a peer.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// How long a group's next successor waits for the one before it to win.
pub const NEXT_SUCCESSOR_AFTER: Duration = Duration::from_millis(100);

/// The order in which `voters` (sorted, the gone leader left out) campaign for group `key`:
/// rotated by group so the leaderships of a dead node do not all land on one survivor.
pub fn successors(key: &GroupKey, mut voters: Vec<u64>) -> Vec<u64> {
    if !voters.is_empty() {
        let spread = (key.topic_id as u64) ^ ((key.topic_id >> 64) as u64) ^ key.partition as u64;
        let len = voters.len() as u64;
        voters.rotate_left((spread % len) as usize);
    }
    voters
}

/// A peer not heard from for this long is not live: quiet groups it is a member of wake
/// (see `replica.rs`, "Quiet groups"). [`ReplicationNode::set_liveness_timeout`] changes it.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_millis(500);

/// Every this many ticks, each peer gets a frame (empty if nothing else is queued), so that
/// peers whose groups are all quiet still hear this node is up.
pub const KEEP_ALIVE_TICKS: u64 = 2;

/// Heartbeats and their answers: the messages a quiet group's marks apply to.
fn is_heartbeat(message: &raft::eraftpb::Message) -> bool {
    use raft::eraftpb::MessageType;
    matches!(
        message.get_msg_type(),
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
    )
}

/// A peer's announcement: its id and every group its shard of this number leads.
pub type Announcement = (u64, Vec<LeadNote>);

/// What a node tells its owner about a peer's connections to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A connection that carried the peer's frames closed (it died, stopped, or re-dialled).
    HungUp,
    /// The first frame from the peer since it hung up.
    Heard,
}

/// One node's Raft groups on one executor, and their transport.
pub struct ReplicationNode {
    node_id: u64,
    /// Boxed, so a step moves a pointer when it takes a group out to run it.
    groups: HashMap<GroupKey, Box<RaftPartition>>,
    transport: Transport,
    inbox: Rc<RefCell<Vec<GroupMessage>>>,
    /// What peers announced they lead, in arrival order, until the owner takes it.
    leading_heard: Rc<RefCell<Vec<Announcement>>>,
    /// When each peer's latest frame arrived.
    heard_at: Rc<RefCell<HashMap<u64, Instant>>>,
    /// Peers whose connection to this node closed since the last step.
    hung_up: Rc<RefCell<Vec<u64>>>,
    /// Peers that hung up and have not been heard from since.
    silent: Rc<RefCell<HashSet<u64>>>,
    /// Peers live at the last tick (see [`is_live`](Self::is_live)).
    live: HashSet<u64>,
    liveness_timeout: Duration,
    /// Ticks so far (keep-alives leave every [`KEEP_ALIVE_TICKS`]).
    ticks: u64,
    /// Requests to join the cluster that arrived (sender, registration), until taken.
    joins: Rc<RefCell<Vec<(u64, Bytes)>>>,
    /// Requests and answers from peers (sender, call), in arrival order, until taken.
    calls: Rc<RefCell<Vec<(u64, PeerCall)>>>,
    /// Elections to start once due, for groups whose leader (the peer) is gone.
    campaigns_due: Vec<(Instant, GroupKey, u64)>,
    listener: Listener,
    /// Wakes the owner (as a frame's arrival does) when a group's pipelined write is durable.
    wake: Rc<dyn Fn()>,
    sync_group: SyncGroup,
    hard_states: HardStateLog,
    /// Groups whose ready work failed in the last step (a failed log, a refused write), for
    /// the owner to report ([`take_step_failures`](Self::take_step_failures)); the step
    /// went on for every other group.
    step_failures: Vec<(GroupKey, ReplicationError)>,
    /// Paces what leaders here send learners (see `throttle`).
    throttle: CatchUpThrottle,
    /// Groups that may have work: the only ones a step looks at (see the module's header).
    /// Shared with each group's waker, which marks its group when a pipelined write is durable.
    dirty: Rc<RefCell<HashSet<GroupKey>>>,
    /// The groups that are not quiet, as of the last step: the only ones a tick ticks.
    awake: HashSet<GroupKey>,
    /// Groups steps looked at since the owner last took them.
    touched: HashSet<GroupKey>,
    /// Steps so far, and the groups they looked at together.
    steps: u64,
    groups_looked_at: u64,
}

impl ReplicationNode {
    /// Listens on `listen` for frames from `peers` (node id -> RPC address, this node's own
    /// entry ignored) and dials them as there is something to send. The groups' hard states
    /// live in one log in `dir`.
    pub async fn start(
        node_id: u64,
        listen: SocketAddr,
        peers: &HashMap<u64, SocketAddr>,
        dir: impl AsRef<Path>,
    ) -> Result<ReplicationNode> {
        Self::start_watched(node_id, listen, peers, dir, || {}, |_, _| {}).await
    }

    /// [`start`](Self::start), calling `on_arrival` whenever a frame arrives (so an owner that
    /// sleeps between ticks can wake and `step` at once) and `on_peer` when a peer hangs up or
    /// is heard again after that (once per change, not per frame).
    pub async fn start_watched(
        node_id: u64,
        listen: SocketAddr,
        peers: &HashMap<u64, SocketAddr>,
        dir: impl AsRef<Path>,
        on_arrival: impl Fn() + 'static,
        on_peer: impl Fn(u64, PeerEvent) + 'static,
    ) -> Result<ReplicationNode> {
        let hard_states = HardStateLog::open(dir).await?;
        let inbox: Rc<RefCell<Vec<GroupMessage>>> = Rc::default();
        let leading_heard: Rc<RefCell<Vec<Announcement>>> = Rc::default();
        let announced = leading_heard.clone();
        let heard_at: Rc<RefCell<HashMap<u64, Instant>>> = Rc::default();
        let arrived_from = heard_at.clone();
        let hung_up: Rc<RefCell<Vec<u64>>> = Rc::default();
        // Peers that hung up and have not been heard from since.
        let silent: Rc<RefCell<HashSet<u64>>> = Rc::default();
        let silent_kept = silent.clone();
        let delivered = inbox.clone();
        let joins: Rc<RefCell<Vec<(u64, Bytes)>>> = Rc::default();
        let joined = joins.clone();
        let calls: Rc<RefCell<Vec<(u64, PeerCall)>>> = Rc::default();
        let called = calls.clone();
        let gone = hung_up.clone();
        let heard = silent.clone();
        let on_arrival = Rc::new(on_arrival);
        let on_hang_up = on_arrival.clone();
        let wake: Rc<dyn Fn()> = on_arrival.clone();
        let on_peer = Rc::new(on_peer);
        let on_peer_heard = on_peer.clone();
        let senders: Vec<u64> = peers.keys().copied().filter(|id| *id != node_id).collect();
        let listener = Listener::bind_with_hang_up(
            listen,
            senders,
            FRAME_BYTES_MAX,
            move |frame| {
                let from = frame.from_node;
                if let Some(registration) = frame.join {
                    joined.borrow_mut().push((from, registration));
                    if frame.messages.is_empty()
                        && frame.leading.is_none()
                        && frame.calls.is_empty()
                    {
                        on_arrival();
                        return; // (perhaps from a node that is no peer yet)
                    }
                }
                arrived_from.borrow_mut().insert(from, Instant::now());
                // A keep-alive (an empty frame) only says the peer is up: the owner need not
                // step for it, unless the peer was silent.
                let mut news = !frame.messages.is_empty()
                    || frame.leading.is_some()
                    || !frame.calls.is_empty();
                delivered.borrow_mut().extend(frame.messages);
                called
                    .borrow_mut()
                    .extend(frame.calls.into_iter().map(|call| (from, call)));
                if let Some(leading) = frame.leading {
                    announced.borrow_mut().push((from, leading));
                }
                if heard.borrow_mut().remove(&from) {
                    on_peer_heard(from, PeerEvent::Heard);
                    news = true;
                }
                if news {
                    on_arrival();
                }
            },
            move |peer| {
                gone.borrow_mut().push(peer);
                silent.borrow_mut().insert(peer);
                on_peer(peer, PeerEvent::HungUp);
                on_hang_up();
            },
        )
        .map_err(|source| ReplicationError::Io {
            path: format!("rpc listener {listen}").into(),
            source,
        })?;
        Ok(ReplicationNode {
            node_id,
            groups: HashMap::new(),
            transport: Transport::new(node_id, peers),
            throttle: CatchUpThrottle::default(),
            inbox,
            leading_heard,
            heard_at,
            hung_up,
            silent: silent_kept,
            live: HashSet::new(),
            liveness_timeout: LIVENESS_TIMEOUT,
            ticks: 0,
            joins,
            calls,
            campaigns_due: Vec::new(),
            listener,
            wake,
            sync_group: SyncGroup::new(FlushMode::Shared),
            hard_states,
            step_failures: Vec::new(),
            dirty: Rc::default(),
            awake: HashSet::new(),
            touched: HashSet::new(),
            steps: 0,
            groups_looked_at: 0,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// Adds peer `id` at `address` (a node that joined after this one started): frames from it
    /// are accepted and messages to it sent from now on. False if it was known there already.
    pub fn add_peer(&mut self, id: u64, address: SocketAddr) -> bool {
        self.listener.allow_sender(id);
        self.transport.add_peer(id, address)
    }

    /// Whether `id` is a peer of this node.
    pub fn knows_peer(&self, id: u64) -> bool {
        self.transport.knows(id)
    }

    /// Asks `peer` to let this node join, with its `registration` (sent with the next step's
    /// flush). False for an unknown peer.
    pub fn send_join(&self, peer: u64, registration: Bytes) -> bool {
        self.transport.send_join(peer, registration)
    }

    /// Queues a request or an answer (see [`PeerCall`]) for `peer`, sent with the next step's
    /// flush. False for an unknown peer.
    pub fn send_call(&self, peer: u64, call: PeerCall) -> bool {
        self.transport.send_call(peer, call)
    }

    /// Requests and answers that arrived since the last call: (sender, call).
    pub fn take_calls(&mut self) -> Vec<(u64, PeerCall)> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }

    /// Requests to join that arrived since the last call: (sender, registration).
    pub fn take_joins(&mut self) -> Vec<(u64, Bytes)> {
        std::mem::take(&mut *self.joins.borrow_mut())
    }

    /// Opens this node's replica of group `key` in `dir` (see [`RaftPartition::open`]); its log
    /// joins the node's group-commit rounds.
    pub async fn add_group(
        &mut self,
        key: GroupKey,
        dir: impl AsRef<Path>,
        voters: &[u64],
        config: ReplicaConfig,
        log_config: LogConfig,
    ) -> Result<()> {
        let membership = Membership::voters(voters);
        self.add_group_as(key, dir, &membership, config, log_config)
            .await
    }

    /// [`add_group`](Self::add_group) for a replica that starts as `membership` says (a
    /// learner joining a running group; see [`RaftPartition::open_as`]).
    pub async fn add_group_as(
        &mut self,
        key: GroupKey,
        dir: impl AsRef<Path>,
        membership: &Membership,
        config: ReplicaConfig,
        log_config: LogConfig,
    ) -> Result<()> {
        let logger = crate::discard_logger();
        let home = HardStateHome::Shared {
            log: self.hard_states.clone(),
            key,
        };
        let mut partition = RaftPartition::open_as(
            dir,
            self.node_id,
            membership,
            config,
            log_config,
            home,
            &logger,
        )
        .await?;
        // A durable pipelined write is work for its group's next step.
        let (dirty, wake) = (self.dirty.clone(), self.wake.clone());
        partition.set_waker(Rc::new(move || {
            dirty.borrow_mut().insert(key);
            wake();
        }));
        partition.log().join_sync_group(&self.sync_group);
        self.groups.insert(key, Box::new(partition));
        self.mark(key);
        self.awake.insert(key);
        Ok(())
    }

    /// Takes group `key` out of the node (the caller closes it); messages for it are dropped
    /// from then on.
    pub fn remove_group(&mut self, key: &GroupKey) -> Option<RaftPartition> {
        self.awake.remove(key);
        self.dirty.borrow_mut().remove(key);
        self.groups.remove(key).map(|group| *group)
    }

    /// Group `key`, to look at.
    pub fn group(&self, key: &GroupKey) -> Option<&RaftPartition> {
        self.groups.get(key).map(|group| &**group)
    }

    /// Group `key`, to change (propose, campaign, transfer, read): the next step looks at it.
    pub fn group_mut(&mut self, key: &GroupKey) -> Option<&mut RaftPartition> {
        let group = self.groups.get_mut(key)?;
        self.dirty.borrow_mut().insert(*key);
        Some(&mut **group)
    }

    /// How many groups this node holds.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The groups steps looked at since the last call: the only ones whose state (role,
    /// term, leader, commit point, quietness) can have changed since.
    pub fn take_touched(&mut self) -> HashSet<GroupKey> {
        std::mem::take(&mut self.touched)
    }

    /// Steps taken so far, and the groups they looked at in all: their ratio is what a step
    /// costs, which follows the groups with work, not the groups held.
    pub fn steps_taken(&self) -> (u64, u64) {
        (self.steps, self.groups_looked_at)
    }

    fn mark(&self, key: GroupKey) {
        self.dirty.borrow_mut().insert(key);
    }

    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &RaftPartition)> {
        self.groups.iter().map(|(key, group)| (key, &**group))
    }

    /// Tells every peer, with the next flush, that this shard leads exactly `leading` (replacing
    /// what it said before).
    pub fn announce_leading(&self, leading: Vec<LeadNote>) {
        self.transport.announce(leading.into());
    }

    /// What peers announced they lead since the last call: (peer, everything it leads on its
    /// shard of this executor's number), oldest first.
    pub fn take_leading_heard(&mut self) -> Vec<Announcement> {
        std::mem::take(&mut *self.leading_heard.borrow_mut())
    }

    /// When each peer's latest frame arrived (peers never heard from are left out). Every
    /// live peer's shard sends at least its leadership announcement every second.
    pub fn last_heard(&self) -> Vec<(u64, Instant)> {
        self.heard_at
            .borrow()
            .iter()
            .map(|(peer, at)| (*peer, *at))
            .collect()
    }

    /// Asks `leader`, which leads group `key` on another node, to hand the leadership to
    /// `to` (raft-rs's leadership transfer, as a follower forwards it), with the next flush.
    /// For a group this node holds no replica of; a replica here asks through its own group.
    pub fn ask_transfer(&self, key: GroupKey, leader: u64, to: u64) {
        let message = raft::eraftpb::Message {
            msg_type: raft::eraftpb::MessageType::MsgTransferLeader,
            to: leader,
            from: to,
            ..raft::eraftpb::Message::default()
        };
        self.transport.send(
            leader,
            GroupMessage {
                group: key,
                message,
                quiet: false,
            },
        );
    }

    /// Write-and-sync rounds of the shared hard-state log so far.
    pub fn hard_state_rounds(&self) -> u64 {
        self.hard_states.rounds()
    }

    /// Paces the catch-up traffic of learners (replicas joining a moving partition) that
    /// groups led here send, at `bytes_per_second` in all (`None`: at full speed).
    pub fn set_catch_up_rate(&mut self, bytes_per_second: Option<u64>) {
        self.throttle.set_rate(bytes_per_second);
    }

    pub fn catch_up_rate(&self) -> Option<u64> {
        self.throttle.rate()
    }

    /// One logical tick for every group, then a [`step`](Self::step).
    pub async fn tick(&mut self) -> Result<Vec<(GroupKey, Outbox)>> {
        self.tick_handing_over(None).await
    }

    /// [`tick`](Self::tick) with [`step_handing_over`](Self::step_handing_over)'s hand-over.
    pub async fn tick_handing_over(
        &mut self,
        committed_now: Option<&dyn Fn(GroupKey, Vec<CommittedEntry>, Offset)>,
    ) -> Result<Vec<(GroupKey, Outbox)>> {
        self.ticks += 1;
        if self.ticks.is_multiple_of(KEEP_ALIVE_TICKS) {
            self.transport.keep_alive();
        }
        self.follow_liveness();
        let live = &self.live;
        let is_live = |peer: u64| live.contains(&peer);
        let mut ticked = Vec::with_capacity(self.awake.len());
        self.awake.retain(|key| {
            let Some(group) = self.groups.get_mut(key) else {
                return false;
            };
            if *key == GroupKey::CONTROLLER {
                group.tick();
            } else {
                group.tick_quietly(&is_live);
            }
            // A group that went quiet in this tick still runs (its last heartbeat leaves
            // marked quiet); the step then leaves it out of `awake`.
            ticked.push(*key);
            true
        });
        self.dirty.borrow_mut().extend(ticked);
        self.step_handing_over(committed_now).await
    }

    /// Changes how long a peer may stay unheard before it counts as not live.
    pub fn set_liveness_timeout(&mut self, timeout: Duration) {
        self.liveness_timeout = timeout;
    }

    /// Whether `peer`'s node is up as far as this node knows: heard from within the liveness
    /// timeout, and no connection of it closed since.
    pub fn is_live(&self, peer: u64) -> bool {
        self.live.contains(&peer)
    }

    /// Groups that were quiet here at the last step (none of them ticks or steps until woken).
    pub fn quiet_groups(&self) -> usize {
        self.groups.len() - self.awake.len()
    }

    /// Recomputes which peers are live; a quiet group wakes when a member's liveness changed.
    fn follow_liveness(&mut self) {
        let now = Instant::now();
        let live: HashSet<u64> = {
            let heard_at = self.heard_at.borrow();
            let silent = self.silent.borrow();
            heard_at
                .iter()
                .filter(|(peer, at)| {
                    !silent.contains(peer) && now.duration_since(**at) < self.liveness_timeout
                })
                .map(|(peer, _)| *peer)
                .collect()
        };
        let changed: Vec<u64> = live.symmetric_difference(&self.live).copied().collect();
        if !changed.is_empty() {
            // Rare (a node came or went): every group is looked at.
            let mut dirty = self.dirty.borrow_mut();
            for (key, group) in self.groups.iter_mut() {
                for peer in &changed {
                    group.wake_if_member(*peer);
                }
                if !group.is_quiet() {
                    self.awake.insert(*key);
                    dirty.insert(*key);
                }
            }
        }
        self.live = live;
    }

    /// Delivers what arrived, runs every group's ready work concurrently, sends what it
    /// produced (one frame per peer) and reports unreachable peers. Returns what each group
    /// applied in this step (committed entries in index order, a moved log start, a restored
    /// snapshot; its messages are sent already); groups that applied nothing are left out.
    pub async fn step(&mut self) -> Result<Vec<(GroupKey, Outbox)>> {
        self.step_handing_over(None).await
    }

    /// [`step`](Self::step), handing every group's newly committed entries but the
    /// controller's to `committed_now` (with the group's high watermark after them) the moment
    /// raft-rs releases them, mid-step, instead of returning them: the owner answers producers
    /// without waiting for the rest of the step's writes.
    pub async fn step_handing_over(
        &mut self,
        committed_now: Option<&dyn Fn(GroupKey, Vec<CommittedEntry>, Offset)>,
    ) -> Result<Vec<(GroupKey, Outbox)>> {
        self.campaign_for_gone_leaders();
        let arrived = std::mem::take(&mut *self.inbox.borrow_mut());
        let live = &self.live;
        let is_live = |peer: u64| live.contains(&peer);
        let mut delivered = Vec::with_capacity(arrived.len());
        for GroupMessage {
            group,
            message,
            quiet,
        } in arrived
        {
            // A message for a group this node does not hold (yet, or any more) is dropped:
            // Raft retransmits.
            if let Some(partition) = self.groups.get_mut(&group) {
                let _ = if quiet {
                    partition.receive_quiet(message, &is_live)
                } else {
                    partition.receive(message)
                };
                delivered.push(group);
            }
        }
        // The groups this step looks at: the only ones that may have work.
        let candidates: Vec<GroupKey> = {
            let mut dirty = self.dirty.borrow_mut();
            dirty.extend(delivered);
            dirty.drain().collect()
        };
        self.steps += 1;
        self.groups_looked_at += candidates.len() as u64;
        // Learners whose catch-up is paced: (group, learner) pairs whose appends are counted.
        // A group only sends in a step that looks at it, so pacing the candidates is enough;
        // the throttle's end gives every group its window back.
        let mut paced: HashSet<(GroupKey, u64)> = HashSet::new();
        if let Some(window) = self.throttle.window(Instant::now()) {
            let mut pace = |key: &GroupKey, partition: &mut RaftPartition| {
                for learner in partition.pace_learners(window) {
                    paced.insert((*key, learner));
                }
            };
            if window.is_none() {
                self.groups.iter_mut().for_each(|(key, p)| pace(key, p));
            } else {
                for key in &candidates {
                    if let Some(partition) = self.groups.get_mut(key) {
                        pace(key, partition);
                    }
                }
            }
        }
        let paced_bytes = Cell::new(0u64);
        let count_paced = |message: &GroupMessage| {
            if !paced.is_empty() && paced.contains(&(message.group, message.message.to)) {
                paced_bytes.set(paced_bytes.get() + catch_up_bytes(&message.message));
            }
        };
        // A leader's appends leave while its own write is in flight (a flush as soon as any
        // group has some); everything else leaves in one flush at the end.
        let (early_tx, mut early_rx) = futures::channel::mpsc::unbounded::<GroupMessage>();
        let transport = &self.transport;
        // The candidates with work leave the map while they run (each runs on its own `&mut`),
        // and go back before anything else looks at the groups.
        let mut running: Vec<(GroupKey, Box<RaftPartition>)> = Vec::new();
        for key in &candidates {
            if self.groups.get(key).is_some_and(|p| p.has_work()) {
                running.extend(self.groups.remove_entry(key));
            }
        }
        let work = async {
            let runs = running.iter_mut().map(|(key, partition)| {
                let early_tx = early_tx.clone();
                // Whether this group's heartbeats (or answers to them) leave marked quiet: it
                // went quiet in this tick or delivery, before running.
                let quiet = partition.is_quiet();
                async move {
                    let group = *key;
                    let send_now = move |messages: Vec<raft::eraftpb::Message>| {
                        for message in messages {
                            let quiet = quiet && is_heartbeat(&message);
                            let _ = early_tx.unbounded_send(GroupMessage {
                                group,
                                message,
                                quiet,
                            });
                        }
                    };
                    let hand_over = move |entries: Vec<CommittedEntry>, high_watermark: Offset| {
                        if let Some(committed_now) = committed_now {
                            committed_now(group, entries, high_watermark);
                        }
                    };
                    let hand_over: Option<&dyn Fn(Vec<CommittedEntry>, Offset)> =
                        match committed_now {
                            Some(_) if group != GroupKey::CONTROLLER => Some(&hand_over),
                            _ => None,
                        };
                    partition
                        .run_ready_with(Some(&send_now), hand_over)
                        .await
                        .map(|outbox| (group, outbox))
                        .map_err(|e| (group, e))
                }
            });
            let outcomes = futures::future::join_all(runs).await;
            drop(early_tx);
            outcomes
        };
        let flusher = async move {
            use futures::StreamExt;
            let mut unreachable = Vec::new();
            while let Some(first) = early_rx.next().await {
                count_paced(&first);
                transport.send(first.message.to, first);
                while let Ok(more) = early_rx.try_recv() {
                    count_paced(&more);
                    transport.send(more.message.to, more);
                }
                unreachable.extend(transport.flush().await.unreachable);
            }
            unreachable
        };
        let (outcomes, early_unreachable) = futures::join!(work, flusher);
        self.groups.extend(running);
        let mut committed = Vec::new();
        for outcome in outcomes {
            // One group's failure (its log failed, or a write was refused for space) must not
            // cost the others this step's messages and committed entries: they go on, and
            // the failure is reported to the owner.
            let (group, mut outbox) = match outcome {
                Ok(done) => done,
                Err(failure) => {
                    self.mark(failure.0);
                    self.step_failures.push(failure);
                    continue;
                }
            };
            let quiet = self.groups.get(&group).is_some_and(|g| g.is_quiet());
            for message in std::mem::take(&mut outbox.messages) {
                let quiet = quiet && is_heartbeat(&message);
                let message = GroupMessage {
                    group,
                    message,
                    quiet,
                };
                count_paced(&message);
                self.transport.send(message.message.to, message);
            }
            let applied = !outbox.committed.is_empty()
                || outbox.log_start_moved.is_some()
                || outbox.started_over_at.is_some()
                || !outbox.read_indexes.is_empty();
            if applied {
                committed.push((group, outbox));
            }
        }
        self.throttle.spend(paced_bytes.get());
        let mut unreachable = self.transport.flush().await.unreachable;
        unreachable.extend(early_unreachable);
        unreachable.sort_unstable();
        unreachable.dedup();
        for peer in unreachable {
            // A peer known down fails every frame (keep-alives, a quiet group's last
            // heartbeat): a quiet group does not wake for it (it would go quiet, send, fail
            // and wake again, over and over); its return wakes it (`follow_liveness`). So
            // while a peer is known down, only the awake groups hear of it.
            let known_down = !self.live.contains(&peer);
            let mut dirty = self.dirty.borrow_mut();
            let mut woken = Vec::new();
            let mut tell = |key: &GroupKey, partition: &mut RaftPartition| {
                if known_down && partition.is_quiet() {
                    return;
                }
                // (This wakes a quiet group the peer is a member of.)
                partition.unreachable(peer);
                if !partition.is_quiet() {
                    woken.push(*key);
                }
                if partition.has_work() {
                    dirty.insert(*key);
                }
            };
            if known_down {
                for key in &self.awake {
                    if let Some(partition) = self.groups.get_mut(key) {
                        tell(key, partition);
                    }
                }
            } else {
                self.groups.iter_mut().for_each(|(key, p)| tell(key, p));
            }
            self.awake.extend(woken);
        }
        // What the step looked at: those with work left stay candidates, and `awake` follows
        // their quietness.
        let mut dirty = self.dirty.borrow_mut();
        for key in candidates {
            let Some(partition) = self.groups.get(&key) else {
                continue;
            };
            if partition.has_work() {
                dirty.insert(key);
            }
            if partition.is_quiet() {
                self.awake.remove(&key);
            } else {
                self.awake.insert(key);
            }
            self.touched.insert(key);
        }
        Ok(committed)
    }

    /// The groups whose ready work failed since the last call, with why. Such a group tries
    /// again in the next step.
    pub fn take_step_failures(&mut self) -> Vec<(GroupKey, ReplicationError)> {
        std::mem::take(&mut self.step_failures)
    }

    /// Groups whose leader's connection closed: the first successor campaigns at once, the
    /// next one a [`NEXT_SUCCESSOR_AFTER`] later if no leader emerged (the first's log may
    /// have been too short to win), and so on.
    fn campaign_for_gone_leaders(&mut self) {
        let now = Instant::now();
        let gone = std::mem::take(&mut *self.hung_up.borrow_mut());
        for peer in gone {
            for (key, partition) in self.groups.iter() {
                if let Some(rank) = partition.successor_rank(peer, |voters| successors(key, voters))
                {
                    self.campaigns_due
                        .push((now + NEXT_SUCCESSOR_AFTER * rank as u32, *key, peer));
                }
            }
        }
        let mut campaigns = 0;
        let groups = &mut self.groups;
        let mut dirty = self.dirty.borrow_mut();
        self.campaigns_due.retain(|(due, key, peer)| {
            if *due > now {
                return true;
            }
            if let Some(partition) = groups.get_mut(key) {
                if partition.campaign_without(*peer) {
                    campaigns += 1;
                }
                dirty.insert(*key);
            }
            false
        });
        if campaigns > 0 {
            tracing::info!(campaigns, "leaders' connections closed: campaigning");
        }
    }

    /// Closes every group cleanly (logs closed, commit indexes recorded).
    pub async fn close(self) -> Result<()> {
        for (_, partition) in self.groups {
            partition.close().await?;
        }
        Ok(())
    }
}
