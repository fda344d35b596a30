//! Cluster mode on a shard: the shard's Raft groups driven by one loop, and the links through
//! which the request path (produce, fetch, topic admin) reaches them.
//!
//! Every shard of a node runs one [`ReplicationNode`] for the partition replicas it owns
//! (shard = the same hash of topic and partition as on a single node), listening on the node's
//! RPC port plus the shard's id and talking only to the same shard of the other nodes: one
//! connection per shard pair, so no frame ever crosses shards. All nodes of a cluster therefore
//! run the same number of shards (`--cores`).
//!
//! Shard 0 also holds the node's replica of the controller group (voters: the seed nodes), whose
//! committed commands make the [`ClusterImage`]; every change of it is published to the node's
//! catalog, and every shard then opens the replicas the image assigns to this node and closes
//! those of deleted topics. A node announces itself (`RegisterBroker`) and asks for producer-id
//! blocks by proposing through whichever node leads the controller group, and watches the image
//! for the result. Creating and deleting topics is the controller leader's job: the request path
//! runs it there and waits for the command's outcome.
//!
//! The loop is the only owner of the groups. The request path talks to it through queues (a
//! partition's proposals, open/close commands) and reads what the loop publishes after each
//! step (role, leader, term, high watermark). One step: run the queued commands, propose the
//! queued batches, tick (every `tick`) or step the node, then apply what committed and answer the
//! waiting appends. A frame arriving or a batch queued wakes the loop at once.
//!
//! Each shard also announces, to the same shard of every other node, the partitions it leads
//! (term and in-sync replicas) whenever that set changes (at most every
//! [`ANNOUNCE_LEADING_AFTER`]) and every [`ANNOUNCE_LEADING_EVERY`] (Redpanda's leadership
//! dissemination, not a controller record: leadership changes far too often for the metadata
//! log). So Metadata on a node that holds no replica of a partition still names its leader and
//! ISR, and a follower names the ISR its leader sees.
//!
//! Invariants: a proposal is answered only once its entry is in the leader's log (acks=1) or
//! committed (acks=all, and every idempotent batch): never by a different entry that took its
//! index. A partition's producer state holds committed batches only, recorded before the appends
//! waiting on them are answered. A replica serves (takes appends, answers fetches) only once
//! the first entry of its term is applied; appends reaching the elected leader before that
//! wait for it rather than being refused. Node ids are Kafka's (≥ 0); Raft ids are node id + 1
//! (raft-rs reserves 0).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use kafka_protocol::ResponseError;
use sluice_replication::node::ReplicationNode;
use sluice_replication::partition::{CommittedEntry, Membership, Outbox};
use sluice_replication::rpc::{GroupKey, PeerCall};
use sluice_replication::{PeerEvent, ReplicaConfig, ReplicationError, Role};
use sluice_storage::{AppendInfo, Log, LogConfig, Offset};
use tracing::{info, warn};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::cluster_controller::ControllerState;
use crate::cluster_metadata::{
    encode_command, BrokerRegistration, ClusterImage, Endpoint, MetadataCommand, Refused,
};
use crate::partition::AppendError;
use crate::reassignment::{self, Step};
use crate::shard::{PartitionKey, Shard};

/// How a node takes part in a cluster (`sluice serve --node-id --rpc-listen --seeds`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: i32,
    /// Shard 0's RPC address; shard `s` listens on its port + `s`.
    pub rpc_listen: SocketAddr,
    /// The controller's voters: node id -> shard 0's RPC address (this node among them or not).
    pub seeds: BTreeMap<i32, SocketAddr>,
    /// Where Kafka clients reach this node, one entry per listener (the first is the default).
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    /// One Raft tick.
    pub tick: Duration,
    pub replica: ReplicaConfig,
    /// Partitions of `__consumer_offsets`, which the controller leader creates once every
    /// seed has registered.
    pub offsets_partitions: i32,
    /// A follower that has not caught up with its leader for this long leaves the ISR
    /// (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag: Duration,
    /// A node no shard had a frame from for this long is fenced: Metadata leaves it out
    /// (Kafka's `broker.session.timeout.ms`).
    pub session_timeout: Duration,
    /// How often each shard checks whether this node leads too few of the partitions it is
    /// the preferred leader of, and takes them back (Kafka's automatic leader rebalance);
    /// `None`: never.
    pub leader_imbalance_check: Option<Duration>,
    /// The share (percent) of its preferred leaderships a shard may miss before it takes them
    /// back (Kafka's `leader.imbalance.per.broker.percentage`, per shard here).
    pub leader_imbalance_percent: u8,
    /// The controller records its image as a snapshot and cuts its log once this many bytes
    /// of commands were applied since the last one (Kafka's
    /// `metadata.log.max.record.bytes.between.snapshots`).
    pub controller_snapshot_bytes: u64,
}

impl ClusterSettings {
    /// The RPC address of shard `shard` of the node whose shard 0 listens on `base`.
    pub fn shard_address(base: SocketAddr, shard: usize) -> SocketAddr {
        let port = base
            .port()
            .saturating_add(u16::try_from(shard).unwrap_or(u16::MAX));
        SocketAddr::new(base.ip(), port)
    }

    fn peers(&self, shard: usize) -> HashMap<u64, SocketAddr> {
        self.seeds
            .iter()
            .map(|(id, base)| (raft_id(*id), Self::shard_address(*base, shard)))
            .collect()
    }

    fn controller_voters(&self) -> Vec<u64> {
        self.seeds.keys().map(|id| raft_id(*id)).collect()
    }

    /// Whether this node is one of the seeds (a voter of the controller group).
    pub fn is_seed(&self) -> bool {
        self.seeds.contains_key(&self.node_id)
    }

    fn registration(&self) -> BrokerRegistration {
        let first = self.endpoints.first();
        BrokerRegistration {
            node_id: self.node_id,
            host: first.map_or_else(String::new, |e| e.host.clone()),
            port: first.map_or(0, |e| e.port),
            rack: self.rack.clone(),
            endpoints: self.endpoints.clone(),
            rpc: Some(
                self.seeds
                    .get(&self.node_id)
                    .copied()
                    .unwrap_or(self.rpc_listen),
            ),
            seed: self.is_seed(),
        }
    }
}

/// The Raft id of Kafka node `node` (raft-rs reserves 0 for "none").
pub fn raft_id(node: i32) -> u64 {
    u64::try_from(node).unwrap_or(0) + 1
}

/// The Kafka node of Raft id `raft` (-1 for raft-rs's "none").
pub fn node_of(raft: u64) -> i32 {
    i32::try_from(raft).map_or(-1, |id| id - 1)
}

fn group_key((topic, partition): PartitionKey) -> GroupKey {
    GroupKey {
        topic_id: topic.as_u128(),
        partition,
    }
}

fn partition_key(group: GroupKey) -> PartitionKey {
    (Uuid::from_u128(group.topic_id), group.partition)
}

/// Producer ids a node asks the controller for at a time.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// How long a stopping shard tries to hand its leaderships over before it closes anyway.
pub const HAND_OFF_WITHIN: Duration = Duration::from_secs(3);

/// How often a node repeats a proposal it made through another node (registration, a
/// producer-id block) while the image does not show it.
const RETRY_FORWARDED: Duration = Duration::from_secs(1);

/// How long a request that forwarded a command to the controller leader waits for it to
/// commit before answering REQUEST_TIMED_OUT (a lost proposal is not retried: the client is).
const FORWARDED_WITHIN: Duration = Duration::from_secs(15);

/// Kafka's default `broker.session.timeout.ms`: a node silent this long is fenced.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(9);

/// How often a shard tells the node's table when it last heard from each peer.
const HEARD_PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// The soonest a shard announces what it leads again after a change.
pub const ANNOUNCE_LEADING_AFTER: Duration = Duration::from_millis(50);

/// How often a shard announces what it leads, changed or not (a peer that restarted, or
/// missed a frame, learns it within this).
pub const ANNOUNCE_LEADING_EVERY: Duration = Duration::from_secs(1);

/// How often a node asks the controller leader for its commit point until its image caught up.
const RETRY_CATCH_UP: Duration = Duration::from_millis(200);

/// A partition's leadership as one of its replicas on this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLeader {
    /// -1: no leader known.
    pub leader: i32,
    /// The Raft term, which is the leader epoch batches are stamped with.
    pub epoch: i32,
    /// The in-sync replicas, as the leader knows them; `None` where this node does not lead
    /// (it does not know them).
    pub in_sync: Option<Vec<i32>>,
}

/// The controller group as its leader describes it (DescribeQuorum): announced by the leader
/// with what it leads, so every node can answer, at most [`ANNOUNCE_LEADING_EVERY`] old.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumView {
    pub leader: i32,
    pub epoch: i32,
    /// The end of the committed metadata commands (an offset of the controller's log).
    pub high_watermark: i64,
    pub voters: Vec<VoterView>,
}

/// One voter of the controller group as its leader tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoterView {
    pub node: i32,
    /// The end (offset) of the entries the leader knows it holds.
    pub log_end_offset: i64,
    /// Unix ms the leader last heard from it (-1: not since the leader was elected).
    pub last_fetch_ms: i64,
    /// Unix ms it last held the leader's whole log (-1: not since the leader was elected).
    pub last_caught_up_ms: i64,
    /// It does not vote (KRaft's observer): a node that joined through the seeds, or a voter
    /// removed from the voters.
    pub learner: bool,
}

/// What every shard of a node learns from the others' loops: partition leaders and the
/// controller leader. Written on role changes only (off the data path).
#[derive(Debug)]
pub struct ClusterTable {
    /// Partitions with a replica on this node, as that replica knows its leader.
    leaders: RwLock<HashMap<PartitionKey, PartitionLeader>>,
    /// Partitions as other nodes announced they lead them (the highest term heard wins).
    announced: RwLock<HashMap<PartitionKey, PartitionLeader>>,
    /// The controller group as its leader last described it.
    quorum: RwLock<Option<QuorumView>>,
    /// When some shard of this node last had a frame from each node.
    heard: RwLock<HashMap<i32, Instant>>,
    /// A node silent this long is fenced (Kafka's `broker.session.timeout.ms`), in ms.
    session_timeout_ms: std::sync::atomic::AtomicU64,
    /// When this table was made: a node never heard from counts as silent since then.
    since: Instant,
    controller: AtomicI32,
    /// The node's image has caught up with the controller's commit point as of start-up.
    caught_up: AtomicBool,
    /// Nodes whose RPC connections to some shard of this node closed, with nothing heard from
    /// them since (the latest event from any shard wins), and when.
    hung_up: RwLock<HashMap<i32, Instant>>,
}

impl Default for ClusterTable {
    fn default() -> Self {
        ClusterTable {
            leaders: RwLock::default(),
            announced: RwLock::default(),
            quorum: RwLock::default(),
            heard: RwLock::default(),
            session_timeout_ms: std::sync::atomic::AtomicU64::new(
                DEFAULT_SESSION_TIMEOUT.as_millis() as u64,
            ),
            since: Instant::now(),
            controller: AtomicI32::new(-1),
            caught_up: AtomicBool::new(false),
            hung_up: RwLock::default(),
        }
    }
}

impl ClusterTable {
    /// The leader of a partition: as this node's replica knows it, where there is one (with
    /// the ISR its leader announced, where this replica follows), unless a leader of a later
    /// term announced itself (this replica has not heard of that election yet); else as
    /// another node announced it leads it.
    pub fn leader(&self, key: PartitionKey) -> Option<PartitionLeader> {
        let local = self
            .leaders
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let announced = self
            .announced
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        match (local, announced) {
            (Some(local), Some(announced)) if announced.epoch > local.epoch => Some(announced),
            (Some(mut local), Some(announced)) => {
                if local.in_sync.is_none()
                    && (local.leader, local.epoch) == (announced.leader, announced.epoch)
                {
                    local.in_sync = announced.in_sync;
                }
                Some(local)
            }
            (local, announced) => local.or(announced),
        }
    }

    /// Records what `node` announced: it no longer leads `gone`, and leads each partition of
    /// `leading` (in the term and with the in-sync replicas given), unless a leader of a later
    /// term was announced already. One lock for the whole announcement.
    fn hear(
        &self,
        node: i32,
        gone: &[PartitionKey],
        leading: impl Iterator<Item = (PartitionKey, PartitionLeader)>,
    ) {
        let mut announced = self.announced.write().unwrap_or_else(|p| p.into_inner());
        for key in gone {
            if announced.get(key).is_some_and(|l| l.leader == node) {
                announced.remove(key);
            }
        }
        for (key, leader) in leading {
            match announced.get(&key) {
                Some(known) if known.epoch > leader.epoch => {}
                _ => {
                    announced.insert(key, leader);
                }
            }
        }
    }

    /// Whether `node` is fenced, as Kafka fences a broker that stopped heartbeating: its
    /// replication connections to this node closed and it was not heard from since, or no
    /// shard of this node had a frame from it for the session timeout (a frozen process, a
    /// cut link). Metadata leaves fenced brokers out. Never true of this node itself.
    pub fn fenced(&self, node: i32, me: i32) -> bool {
        if node == me {
            return false;
        }
        if self.hung_up(node) {
            return true;
        }
        let timeout = Duration::from_millis(self.session_timeout_ms.load(Ordering::Relaxed));
        let heard = self.heard.read().unwrap_or_else(|p| p.into_inner());
        let last = heard.get(&node).copied().unwrap_or(self.since);
        last.elapsed() > timeout
    }

    /// Sets the session timeout after which a silent node is fenced.
    pub fn set_session_timeout(&self, timeout: Duration) {
        self.session_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records that a shard of this node had a frame from `node` at `at`.
    fn note_heard(&self, node: i32, at: Instant) {
        let mut heard = self.heard.write().unwrap_or_else(|p| p.into_inner());
        let last = heard.entry(node).or_insert(at);
        if *last < at {
            *last = at;
        }
    }

    /// The controller group as its leader last described it.
    pub fn quorum(&self) -> Option<QuorumView> {
        self.quorum
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `view` unless a leader of a later term described the group already.
    fn set_quorum(&self, view: QuorumView) {
        let mut quorum = self.quorum.write().unwrap_or_else(|p| p.into_inner());
        if quorum.as_ref().is_none_or(|q| q.epoch <= view.epoch) {
            *quorum = Some(view);
        }
    }

    /// The controller group's leader (-1: not known).
    pub fn controller(&self) -> i32 {
        self.controller.load(Ordering::Acquire)
    }

    /// Whether this node's image holds everything the controller had committed when the node
    /// started (after a restart the image is the one the node stopped with until then: topics
    /// created meanwhile missing, deleted ones present). Metadata waits for it, as a KRaft
    /// broker serves only once it caught up with the metadata log.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Whether `node`'s connections to this node closed and nothing was heard from it since:
    /// it is most likely dead, though the Raft groups it led may not have elected yet.
    pub fn hung_up(&self, node: i32) -> bool {
        let hung_up = self.hung_up.read().unwrap_or_else(|p| p.into_inner());
        hung_up.contains_key(&node)
    }

    /// Whether some node hung up (and was not heard since) less than `within` ago: elections
    /// may be under way.
    pub fn hang_up_within(&self, within: Duration) -> bool {
        let hung_up = self.hung_up.read().unwrap_or_else(|p| p.into_inner());
        hung_up.values().any(|at| at.elapsed() < within)
    }

    /// Records what a shard's replication node heard about `node`'s connections.
    pub fn peer_event(&self, node: i32, event: PeerEvent) {
        let mut hung_up = self.hung_up.write().unwrap_or_else(|p| p.into_inner());
        match event {
            PeerEvent::HungUp => {
                if hung_up.insert(node, Instant::now()).is_none() {
                    info!(node, "a node's replication connections closed: not named as a leader until heard from again");
                }
            }
            PeerEvent::Heard => {
                if hung_up.remove(&node).is_some() {
                    info!(node, "a node that hung up is heard from again");
                }
            }
        }
    }

    fn set_leader(&self, key: PartitionKey, leader: Option<PartitionLeader>) {
        let mut leaders = self.leaders.write().unwrap_or_else(|p| p.into_inner());
        match leader {
            Some(leader) => leaders.insert(key, leader),
            None => leaders.remove(&key),
        };
    }
}

/// When a proposed batch is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// In the leader's log, durably (acks=1).
    Appended,
    /// Committed: durable on a majority of the replicas (acks=all).
    Committed,
}

type AppendReply = oneshot::Sender<Result<AppendInfo, AppendError>>;

struct Proposal {
    batch: Bytes,
    /// Not a batch: move every replica's log start here (retention, DeleteRecords).
    log_start: Option<Offset>,
    until: Until,
    reply: AppendReply,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LinkState {
    /// Serving: the elected leader, once the first entry of its term is applied.
    leader: bool,
    /// Raft's elected leader (serving or about to).
    elected: bool,
    leader_id: i32,
    term: u64,
    high_watermark: Offset,
}

/// The request path's handle on one replicated partition: its proposal queue and the state
/// the loop publishes after each step.
pub struct ReplicaLink {
    key: PartitionKey,
    proposals: RefCell<Vec<Proposal>>,
    /// The loop's list of links with queued proposals, which this link joins when its queue
    /// stops being empty: the loop proposes from those alone, never walking every link.
    queued: Rc<RefCell<Vec<PartitionKey>>>,
    state: Cell<LinkState>,
    /// Woken (and dropped) whenever the state changes; see [`ReplicaLink::until_serving`].
    state_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// On the leader: how many replicas (itself included) are in sync.
    in_sync: Cell<usize>,
    wake: mpsc::UnboundedSender<()>,
    /// The state above was published while the group was quiet: nothing about it can change
    /// until the group wakes, so `publish_states` skips it till then.
    published_quiet: Cell<bool>,
}

impl ReplicaLink {
    /// On the leader, the replicas in sync (itself included): those that caught up with the
    /// leader's log within `replica_lag`.
    pub fn in_sync_count(&self) -> usize {
        self.in_sync.get()
    }

    pub fn is_leader(&self) -> bool {
        self.state.get().leader
    }

    /// True once this replica serves as leader; while it is the elected leader that does not
    /// serve yet (its term's first entry is not applied), waits for that, at most `within`.
    ///
    /// Metadata names a leader from its election on, so clients send to it in that window.
    /// Refusing them there (NOT_LEADER_OR_FOLLOWER, which librdkafka takes for "not
    /// persisted") while a later request of the same pipeline finds the leader serving
    /// makes that later batch look like a sequence gap: librdkafka then bumps its epoch and
    /// renumbers the refused batches, and one of them that an earlier leader had already
    /// stored is stored twice (chaos seeds 3030, 3039, 1087). Held here instead, in the
    /// partition's append order, they are judged once the producer state is complete.
    pub async fn until_serving(&self, within: Duration) -> bool {
        // The produce path's usual case: serving, no clock read.
        if self.state.get().leader {
            return true;
        }
        let deadline = Instant::now() + within;
        loop {
            let state = self.state.get();
            if state.leader {
                return true;
            }
            let now = Instant::now();
            if !state.elected || now >= deadline {
                return false;
            }
            let (changed, waiting) = oneshot::channel();
            self.state_waiters.borrow_mut().push(changed);
            let timer = Box::pin(glommio::timer::sleep(deadline - now));
            futures::future::select(waiting, timer).await;
        }
    }

    /// Publishes `now`; wakes whoever waits on a change. The state before.
    fn replace_state(&self, now: LinkState) -> LinkState {
        let before = self.state.replace(now);
        if before != now {
            for waiter in self.state_waiters.borrow_mut().drain(..) {
                let _ = waiter.send(());
            }
        }
        before
    }

    /// The leader this replica knows (-1: none).
    pub fn leader_id(&self) -> i32 {
        self.state.get().leader_id
    }

    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.state.get().term).unwrap_or(i32::MAX)
    }

    /// The end of the committed records: what consumers may read.
    pub fn high_watermark(&self) -> Offset {
        self.state.get().high_watermark
    }

    /// Why this replica does not take appends or serve reads.
    pub fn not_leader(&self) -> String {
        if self.state.get().elected {
            return "this replica was elected leader but does not serve yet (the first entry \
                    of its term is not applied)"
                .into();
        }
        match self.leader_id() {
            -1 => "this replica does not lead the partition and no leader is known yet".into(),
            leader => format!("this replica does not lead the partition: node {leader} does"),
        }
    }

    /// Queues `batch` for the loop to propose; the answer comes as `until` says.
    pub fn propose(
        &self,
        batch: Bytes,
        until: Until,
    ) -> oneshot::Receiver<Result<AppendInfo, AppendError>> {
        self.queue(batch, None, until)
    }

    /// Queues a move of every replica's log start to `offset` (at most the high watermark),
    /// answered once committed: the leader's log start has moved then, and each replica's
    /// moves as it applies the entry.
    pub fn propose_log_start(
        &self,
        offset: Offset,
    ) -> oneshot::Receiver<Result<AppendInfo, AppendError>> {
        self.queue(Bytes::new(), Some(offset), Until::Committed)
    }

    fn queue(
        &self,
        batch: Bytes,
        log_start: Option<Offset>,
        until: Until,
    ) -> oneshot::Receiver<Result<AppendInfo, AppendError>> {
        let (reply, answer) = oneshot::channel();
        let mut proposals = self.proposals.borrow_mut();
        if proposals.is_empty() {
            self.queued.borrow_mut().push(self.key);
        }
        proposals.push(Proposal {
            batch,
            log_start,
            until,
            reply,
        });
        let _ = self.wake.unbounded_send(());
        answer
    }
}

/// How long a controller command waits for a controller leader to be elected.
const LEADERLESS_WAIT: Duration = Duration::from_secs(5);
/// Longest a request to a peer is remembered for its answer (an asker waits less).
const CALL_WAIT_MAX: Duration = Duration::from_secs(60);

/// How often a command waiting for a controller leader is tried again.
const LEADERLESS_RETRY_EVERY: Duration = Duration::from_millis(100);

/// Why a controller command was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// This node does not lead the controller group; `leader` does (-1: unknown). Nothing
    /// was proposed.
    #[error("this node is not the controller (the controller is node {leader})")]
    NotController { leader: i32 },
    /// This node proposed the command and then lost the controller's leadership before it
    /// committed: the command may or may not take effect.
    #[error("this node lost the controller's leadership (now node {leader}) before the change committed")]
    LostLeadership { leader: i32 },
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Forwarded to the controller leader, and not committed in time.
    #[error("the controller did not commit the change within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Failed(String),
}

type OpenReply = oneshot::Sender<Result<(Log, Rc<ReplicaLink>), ReplicationError>>;

enum Command {
    Open {
        key: PartitionKey,
        dir: PathBuf,
        membership: Membership,
        log_config: LogConfig,
        reply: OpenReply,
    },
    /// A controller command to propose through whichever node leads the controller group
    /// (shard 0 only), fire and forget: the sender watches the image for its effect.
    Forward {
        command: MetadataCommand,
    },
    Close {
        key: PartitionKey,
        reply: oneshot::Sender<Result<(), ReplicationError>>,
    },
    Control {
        command: MetadataCommand,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    ProducerIds {
        reply: oneshot::Sender<(i64, i64)>,
    },
    HandOff {
        reply: oneshot::Sender<()>,
    },
    EpochEnd {
        key: PartitionKey,
        epoch: u64,
        reply: oneshot::Sender<Option<(u64, Offset)>>,
    },
    TransferLeader {
        key: PartitionKey,
        leader: i32,
        to: i32,
    },
    /// A request to the same shard of node `node` (see [`ShardReplication::call`]).
    Call {
        node: i32,
        api_key: i16,
        api_version: i16,
        body: Bytes,
        reply: oneshot::Sender<Bytes>,
    },
    /// The answer to a peer's request, to send back to it (Raft id `to`).
    Answer {
        to: u64,
        call: PeerCall,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A shard's side of cluster mode, as the request path sees it.
pub struct ShardReplication {
    pub settings: ClusterSettings,
    commands: RefCell<Vec<Command>>,
    wake: mpsc::UnboundedSender<()>,
    /// Whether `reconcile` has looked, once caught up, for directories of replicas that moved
    /// away from this node while it was down.
    swept_moved_away: Cell<bool>,
    /// Each topic's configs as `reconcile` last applied them to this shard's open replicas.
    applied_configs: RefCell<HashMap<Uuid, BTreeMap<String, String>>>,
}

impl std::fmt::Debug for ShardReplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReplication")
            .field("node_id", &self.settings.node_id)
            .finish()
    }
}

/// The loop's state: the groups and who waits on them.
pub struct Driver {
    node: ReplicationNode,
    wake: mpsc::UnboundedSender<()>,
    woken: mpsc::UnboundedReceiver<()>,
    settings: ClusterSettings,
    data_dir: PathBuf,
    links: HashMap<PartitionKey, Rc<ReplicaLink>>,
    /// Links whose proposal queue is not empty (each link adds itself; see
    /// [`ReplicaLink::queue`]). A key may be listed for a link whose queue was emptied since.
    queued: Rc<RefCell<Vec<PartitionKey>>>,
    /// Appends proposed and not answered yet, per partition; a partition with none has no
    /// entry, so the loop's look at them costs what is in flight, not the partition count.
    pending: HashMap<PartitionKey, VecDeque<Pending>>,
    /// Links published while their group was quiet with its ISR not settled yet (a silent
    /// replica still in it): looked at every step until it settles, since nothing else wakes
    /// a quiet group. Every other link is looked at only when its group was.
    unsettled: HashSet<PartitionKey>,
    controller: Option<ControllerDriver>,
    /// Led partitions: the leader's last index at the previous step, and when each follower
    /// last held it (Kafka's rule: caught up with the leader's log end of a moment ago).
    catch_up: HashMap<PartitionKey, CatchUp>,
    /// A clean stop in progress: leaderships are being handed over until this deadline.
    handing_off: Option<(Instant, Vec<oneshot::Sender<()>>)>,
    /// Led partitions: the current term and the index of its first entry (the new leader's
    /// own), which must commit before the leader serves.
    term_starts: HashMap<PartitionKey, (u64, u64)>,
    /// What this shard leads changed since it was last announced to the other nodes.
    leading_changed: bool,
    /// When this shard last announced what it leads.
    leading_announced_at: Option<Instant>,
    /// The partition notes each other node last announced for its shard of this number (what
    /// it leads), as heard: a peer repeats its list every second, and a repeat changes nothing
    /// here, so it is not applied again.
    heard_notes: HashMap<i32, Vec<sluice_replication::rpc::LeadNote>>,
    /// When this shard last checked its preferred leaderships.
    imbalance_checked_at: Instant,
    /// Shard 0 leading the controller group: when it last heard from each voter and when
    /// each last held its whole log (Raft id -> instants), since it was elected.
    voter_progress: HashMap<u64, (Option<Instant>, Option<Instant>)>,
    /// When this shard last told the node's table when it heard from each peer.
    heard_published_at: Instant,
    /// When this shard last looked at the moves of the partitions it leads.
    reassignments_checked_at: Instant,
    /// What this shard last told the controller about each moving partition, and when.
    reported: HashMap<PartitionKey, (&'static str, Instant)>,
    /// The catalog version whose broker configs set the catch-up throttle.
    throttle_seen_version: Option<u64>,
    /// The catalog version whose registered nodes are this shard's peers.
    peers_seen_version: Option<u64>,
    /// Requests made of peers and not answered yet, by number: until when the asker waits.
    calls_waiting: HashMap<u64, (Instant, oneshot::Sender<Bytes>)>,
    /// The next request's number (starting from the clock, so that the answer to a request
    /// made before a restart never answers one made after it).
    next_call: u64,
}

#[derive(Default)]
struct CatchUp {
    last_index_before: u64,
    caught_up_at: HashMap<u64, Instant>,
    in_sync: Vec<i32>,
    /// A replica in `in_sync` has stopped answering (a quiet group is looked at until it left).
    silent_in_sync: bool,
}

struct Pending {
    index: u64,
    term: u64,
    until: Until,
    reply: AppendReply,
}

struct ControllerDriver {
    state: ControllerState,
    /// This node as it registers itself.
    registration: BrokerRegistration,
    /// Commands proposed here as leader, by Raft index.
    waiters: BTreeMap<u64, oneshot::Sender<Result<(), ControlError>>>,
    /// Commands forwarded from here to the leader, by request: until when they wait.
    forward_waiters: BTreeMap<u64, (Instant, oneshot::Sender<Result<(), ControlError>>)>,
    /// The next forwarded request's number (starting from the clock, so that an entry
    /// forwarded before a restart never answers a request made after it).
    next_request: u64,
    id_waiters: Vec<oneshot::Sender<(i64, i64)>>,
    /// Commands other shards asked to propose (see [`ShardReplication::forward`]).
    forwarded: Vec<MetadataCommand>,
    /// This node's producer-id block when the waiters started waiting.
    id_block_before: Option<(i64, i64)>,
    /// Nodes that asked to join, by node id: when their registration was last proposed.
    joins_proposed: HashMap<i32, Instant>,
    last_registration: Option<Instant>,
    last_id_request: Option<Instant>,
    last_offsets_topic: Option<Instant>,
    published_version: Option<u64>,
    /// Start-up catch-up: the controller leader's commit index a ReadIndex answered, when the
    /// last request left, how many left (each has its own context), and whether the image
    /// has reached it.
    catch_up_index: Option<u64>,
    last_catch_up_request: Option<Instant>,
    catch_up_requests: u64,
    caught_up: bool,
}

impl ShardReplication {
    /// Starts shard `shard`'s replication node (its RPC listener and hard-state log under
    /// `data_dir/cluster/shard-<id>`); shard 0 also opens the controller group. The returned
    /// [`Driver`] must be run with [`Driver::run`].
    pub async fn start(
        shard: usize,
        settings: ClusterSettings,
        catalog: Arc<Catalog>,
    ) -> Result<(ShardReplication, Driver), String> {
        let data_dir = catalog.data_dir().to_path_buf();
        let (wake, woken) = mpsc::unbounded();
        let listen = ClusterSettings::shard_address(settings.rpc_listen, shard);
        let arrived = wake.clone();
        let node_dir = data_dir.join("cluster").join(format!("shard-{shard}"));
        std::fs::create_dir_all(&node_dir)
            .map_err(|e| format!("cannot create {}: {e}", node_dir.display()))?;
        catalog
            .cluster
            .set_session_timeout(settings.session_timeout);
        let node = ReplicationNode::start_watched(
            raft_id(settings.node_id),
            listen,
            &settings.peers(shard),
            &node_dir,
            move || {
                let _ = arrived.unbounded_send(());
            },
            move |peer, event| catalog.cluster.peer_event(node_of(peer), event),
        )
        .await
        .map_err(|e| format!("replication on shard {shard} ({listen}): {e}"))?;
        let mut node = node;
        // A peer silent for an election timeout is not live: quiet groups with a replica on
        // it wake, and their followers' election timers run again.
        node.set_liveness_timeout(settings.tick * settings.replica.election_ticks as u32);
        let mut driver = Driver {
            node,
            wake: wake.clone(),
            woken,
            settings: settings.clone(),
            data_dir,
            links: HashMap::new(),
            queued: Rc::default(),
            pending: HashMap::new(),
            unsettled: HashSet::new(),
            controller: None,
            catch_up: HashMap::new(),
            handing_off: None,
            term_starts: HashMap::new(),
            leading_changed: true,
            leading_announced_at: None,
            heard_notes: HashMap::new(),
            imbalance_checked_at: Instant::now(),
            voter_progress: HashMap::new(),
            heard_published_at: Instant::now(),
            reassignments_checked_at: Instant::now(),
            reported: HashMap::new(),
            throttle_seen_version: None,
            peers_seen_version: None,
            calls_waiting: HashMap::new(),
            next_call: now_ms() as u64 * 1000,
        };
        if shard == 0 {
            driver.open_controller().await?;
        }
        Ok((
            ShardReplication {
                settings,
                commands: RefCell::default(),
                swept_moved_away: Cell::new(false),
                applied_configs: RefCell::default(),
                wake,
            },
            driver,
        ))
    }

    fn send(&self, command: Command) {
        self.commands.borrow_mut().push(command);
        let _ = self.wake.unbounded_send(());
    }

    /// Opens this node's replica of partition `key` in `dir` (for a new replica: a new
    /// group's voters, or where a joining learner starts; see [`Membership`]): its log and
    /// its link.
    pub async fn open_group(
        &self,
        key: PartitionKey,
        dir: PathBuf,
        membership: Membership,
        log_config: LogConfig,
    ) -> Result<(Log, Rc<ReplicaLink>), ReplicationError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Open {
            key,
            dir,
            membership,
            log_config,
            reply,
        });
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Proposes `command` to the controller group through this node's replica of it (shard
    /// 0 only; elsewhere dropped), fire and forget.
    pub fn forward(&self, command: MetadataCommand) {
        self.send(Command::Forward { command });
    }

    /// Closes this node's replica of partition `key`; the appends waiting on it fail.
    pub async fn close_group(&self, key: PartitionKey) -> Result<(), ReplicationError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Close { key, reply });
        answer.await.unwrap_or(Ok(()))
    }

    /// Runs a controller command (on shard 0): proposed if this node leads the controller
    /// group, answered with its outcome once committed.
    ///
    /// While no controller leader is known (an election in progress, e.g. just after the
    /// cluster formed) nothing was proposed, so the command is tried again for up to
    /// `LEADERLESS_WAIT` before NOT_CONTROLLER is answered: librdkafka does not retry a
    /// CreateTopics that got NOT_CONTROLLER, and an election takes about a second.
    pub async fn control(&self, command: MetadataCommand) -> Result<(), ControlError> {
        let deadline = Instant::now() + LEADERLESS_WAIT;
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(Command::Control {
                command: command.clone(),
                reply,
            });
            let outcome = answer
                .await
                .unwrap_or_else(|_| Err(ControlError::Failed("the node is stopping".into())));
            match outcome {
                Err(ControlError::NotController { leader: -1 }) if Instant::now() < deadline => {
                    glommio::timer::sleep(LEADERLESS_RETRY_EVERY).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// A new block of producer ids for this node, reserved through the controller (shard 0).
    /// Waits as long as no controller leader is reachable.
    pub async fn producer_id_block(&self) -> Option<(i64, i64)> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ProducerIds { reply });
        answer.await.ok()
    }

    /// Where leader epoch `epoch` ends in partition `key`'s log (see
    /// `PartitionStore::epoch_end`); `None`: undefined, or no such replica here.
    pub async fn epoch_end(&self, key: PartitionKey, epoch: u64) -> Option<(u64, Offset)> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::EpochEnd { key, epoch, reply });
        answer.await.ok().flatten()
    }

    /// Asks partition `key`'s leader (`leader`, as known here) to hand its leadership to node
    /// `to`: through this node's replica, which forwards it to the leader it knows, or, where
    /// this node holds none, straight to `leader`. The leader hands over once `to` has caught
    /// up (raft-rs's leadership transfer), or gives up after an election timeout.
    pub fn transfer_leader(&self, key: PartitionKey, leader: i32, to: i32) {
        self.send(Command::TransferLeader { key, leader, to });
    }

    /// Moves the leadership of every group this shard leads to a caught-up follower (a
    /// clean stop: clients see retriable errors only, and no election timeout passes);
    /// returns once none is led here, or after [`HAND_OFF_WITHIN`].
    pub async fn hand_off(&self) {
        let (reply, answer) = oneshot::channel();
        self.send(Command::HandOff { reply });
        let _ = answer.await;
    }

    /// Sends a Kafka request body (`api_key` at `api_version`) to the same shard of node
    /// `node` over the cluster's RPC mesh, and returns the answer's body; `None` when none
    /// came within `within` (the peer is unreachable, or its answer or the request was
    /// dropped with a frame: the caller decides whether to ask again). The peer serves it
    /// with [`crate::peer_calls::serve`].
    pub async fn call(
        &self,
        node: i32,
        api_key: i16,
        api_version: i16,
        body: Bytes,
        within: Duration,
    ) -> Option<Bytes> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Call {
            node,
            api_key,
            api_version,
            body,
            reply,
        });
        let deadline = std::pin::pin!(glommio::timer::sleep(within));
        match futures::future::select(answer, deadline).await {
            futures::future::Either::Left((Ok(body), _)) => Some(body),
            _ => None,
        }
    }

    /// Stops the loop after closing every group cleanly.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Shutdown { reply });
        let _ = answer.await;
    }
}

fn stopped() -> ReplicationError {
    ReplicationError::NotLeader { leader: 0 }
}

/// On the controller leader: moves the controller group's configuration one change at a time
/// toward what the image asks (KRaft's voters and observers):
/// - a registered node not in the group joins as a learner, so it receives the metadata log
///   (or, behind the log's cut, a snapshot of the image);
/// - a learner that is to vote (`SetControllerVoters`) is promoted once it holds the leader's
///   commit point;
/// - a voter that is not to vote any more is demoted to learner (it keeps the metadata while it
///   runs); when that voter is this leader, it first hands the leadership to a voter that stays;
/// - a learner whose node was unregistered leaves the group.
fn follow_controller_membership(
    node: &mut ReplicationNode,
    image: &ClusterImage,
    seeds: &BTreeMap<i32, SocketAddr>,
) {
    let Some(group) = node.group_mut(&GroupKey::CONTROLLER) else {
        return;
    };
    let replica = group.replica();
    if replica.has_pending_conf() {
        return;
    }
    let conf = replica.conf_state();
    let wanted: Vec<u64> = image
        .controller_voters_or(seeds.keys().copied())
        .into_iter()
        .map(raft_id)
        .collect();
    let member = |id: u64| {
        conf.voters.contains(&id) || conf.learners.contains(&id) || conf.learners_next.contains(&id)
    };
    let commit = replica.commit_index();
    let matched = replica.matched();
    let holds_commit = |id: u64| {
        matched
            .iter()
            .any(|(peer, held, _)| *peer == id && *held >= commit)
    };
    let me = replica.id();
    let joining = image
        .brokers
        .keys()
        .map(|n| raft_id(*n))
        .find(|id| !member(*id));
    let promoted = conf
        .learners
        .iter()
        .copied()
        .find(|id| wanted.contains(id) && holds_commit(*id));
    let demoted = conf.voters.iter().copied().find(|id| !wanted.contains(id));
    let leaving = conf.learners.iter().copied().find(|id| {
        let node = node_of(*id);
        !wanted.contains(id) && !image.brokers.contains_key(&node)
    });
    if demoted == Some(me) {
        // A leader does not demote itself: the next leader will.
        if let Some(next) = conf
            .voters
            .iter()
            .copied()
            .find(|id| *id != me && wanted.contains(id) && holds_commit(*id))
        {
            info!(
                to = node_of(next),
                "handing the controller's leadership over: this node is no longer to vote"
            );
            group.transfer_leader(next);
        }
        return;
    }
    let (change, what, who) = match (promoted, demoted, joining, leaving) {
        (Some(id), ..) => (
            reassignment::promote_learner(id),
            "promoting a learner of the controller group to voter",
            id,
        ),
        (None, Some(id), ..) => (
            reassignment::add_learners(&[id]),
            "demoting a voter of the controller group to learner",
            id,
        ),
        (None, None, Some(id), _) => (
            reassignment::add_learners(&[id]),
            "adding a node to the controller group as a learner",
            id,
        ),
        (None, None, None, Some(id)) => (
            reassignment::remove_nodes(&[id]),
            "removing an unregistered node from the controller group",
            id,
        ),
        (None, None, None, None) => return,
    };
    match group.propose_conf_change(change) {
        Ok(()) => info!(node = node_of(who), "{what}"),
        Err(e) => {
            warn!(node = node_of(who), error = %e, "cannot change the controller group's members")
        }
    }
}

/// The log settings of the controller group's partition: metadata is small.
fn controller_log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 << 20,
        preallocate_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

impl Driver {
    async fn open_controller(&mut self) -> Result<(), String> {
        let dir = self.data_dir.join("cluster").join("controller");
        self.node
            .add_group(
                GroupKey::CONTROLLER,
                &dir,
                &self.settings.controller_voters(),
                self.settings.replica,
                controller_log_config(),
            )
            .await
            .map_err(|e| format!("controller group in {}: {e}", dir.display()))?;
        let group = self
            .node
            .group(&GroupKey::CONTROLLER)
            .expect("the controller group was just added");
        let state = ControllerState::rebuild(group)
            .await
            .map_err(|e| format!("controller group in {}: {e}", dir.display()))?;
        self.controller = Some(ControllerDriver {
            state,
            registration: self.settings.registration(),
            waiters: BTreeMap::new(),
            forward_waiters: BTreeMap::new(),
            next_request: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            id_waiters: Vec::new(),
            forwarded: Vec::new(),
            id_block_before: None,
            joins_proposed: HashMap::new(),
            last_registration: None,
            last_id_request: None,
            last_offsets_topic: None,
            published_version: None,
            catch_up_index: None,
            last_catch_up_request: None,
            catch_up_requests: 0,
            caught_up: false,
        });
        Ok(())
    }

    /// Drives the groups until [`ShardReplication::shutdown`] (or the shard is gone).
    pub async fn run(mut self, shard: Weak<Shard>) {
        let tick = self.settings.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let now = Instant::now();
            if now < next_tick {
                let timer = Box::pin(glommio::timer::sleep(next_tick - now));
                futures::future::select(self.woken.next(), timer).await;
            }
            while self.woken.try_recv().is_ok() {}
            let Some(shard) = shard.upgrade() else { return };
            let Some(replication) = shard.replication.as_ref() else {
                return;
            };
            let commands = std::mem::take(&mut *replication.commands.borrow_mut());
            for command in commands {
                if let Some(done) = self.run_command(&shard, command).await {
                    let _ = done.send(());
                    return;
                }
            }
            self.take_calls(&shard);
            self.propose_queued();
            self.forward_controller_requests();
            self.hand_off_leaderships();
            let now = Instant::now();
            let ticking = now >= next_tick;
            if ticking {
                next_tick = now + tick;
                self.follow_catch_up_rate(&shard);
                self.follow_peers(&shard);
                let metrics = &shard.metrics;
                metrics.raft_groups.set(self.node.group_count() as u64);
                metrics
                    .raft_groups_quiet
                    .set(self.node.quiet_groups() as u64);
            }
            // Committed entries are answered the moment a group's ready work releases them,
            // while the step's other writes still run.
            let (committed_tx, committed_rx) = mpsc::unbounded();
            let node = &mut self.node;
            let stepping = async move {
                let hand_over = move |group, entries, high_watermark| {
                    let _ = committed_tx.unbounded_send((group, entries, high_watermark));
                };
                if ticking {
                    node.tick_handing_over(Some(&hand_over)).await
                } else {
                    node.step_handing_over(Some(&hand_over)).await
                }
            };
            let (pending, links) = (&mut self.pending, &self.links);
            let answering = committed_rx.for_each(|(group, entries, high_watermark)| {
                answer_committed(&shard, pending, links, group, &entries, high_watermark);
                futures::future::ready(())
            });
            let (stepped, ()) = futures::join!(stepping, answering);
            let (steps, looked_at) = self.node.steps_taken();
            shard.metrics.raft_steps.set(steps);
            shard.metrics.raft_step_groups.set(looked_at);
            match stepped {
                Ok(committed) => {
                    self.after_step(&shard, committed);
                    self.snapshot_controller().await;
                }
                Err(e) => {
                    warn!(shard = shard.id, error = %e, "replication step failed");
                    glommio::timer::sleep(tick).await;
                }
            }
            for (group, e) in self.node.take_step_failures() {
                self.take_offline(&shard, group, &e).await;
            }
        }
    }

    /// Answers that arrived go to their askers; requests are served in tasks of their own,
    /// whose answers leave through [`Command::Answer`]. Askers whose wait ran out are
    /// forgotten.
    fn take_calls(&mut self, shard: &Rc<Shard>) {
        for (from, call) in self.node.take_calls() {
            if call.answer {
                if let Some((_, reply)) = self.calls_waiting.remove(&call.id) {
                    let _ = reply.send(call.body);
                }
                continue;
            }
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let answer = crate::peer_calls::serve(&shard, call).await;
                if let Some(replication) = &shard.replication {
                    replication.send(Command::Answer {
                        to: from,
                        call: answer,
                    });
                }
            })
            .detach();
        }
        let now = Instant::now();
        self.calls_waiting
            .retain(|_, (deadline, reply)| now < *deadline && !reply.is_canceled());
    }

    /// Shard 0: records the controller's image as a snapshot and cuts the metadata log below
    /// it, once enough commands were applied since the last one.
    async fn snapshot_controller(&mut self) {
        let Some(controller) = &mut self.controller else {
            return;
        };
        let Some(group) = self.node.group_mut(&GroupKey::CONTROLLER) else {
            return;
        };
        match controller
            .state
            .snapshot_if_due(group, self.settings.controller_snapshot_bytes)
            .await
        {
            Ok(true) => info!(
                version = controller.state.image().version,
                log_start = %group.log().log_start_offset(),
                "controller snapshot recorded; metadata log cut below it"
            ),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot record a controller snapshot"),
        }
    }

    /// Paces learners' catch-up at the dynamic broker configs' rate (Kafka's
    /// `leader.replication.throttled.rate` / `follower.replication.throttled.rate`, per node:
    /// each shard takes its share), once the catalog changed.
    fn follow_catch_up_rate(&mut self, shard: &Shard) {
        let version = shard.catalog.version();
        if self.throttle_seen_version == Some(version) {
            return;
        }
        self.throttle_seen_version = Some(version);
        let effective = crate::broker_configs::Effective::of(&shard.settings, &shard.image());
        let per_shard = effective
            .replication_throttled_rate
            .map(|rate| (rate / shard.count.max(1) as u64).max(1));
        if per_shard != self.node.catch_up_rate() {
            info!(shard = shard.id, bytes_per_second = ?per_shard, "replica catch-up throttle");
            self.node.set_catch_up_rate(per_shard);
        }
    }

    /// Runs one command; `Some` for a shutdown, once every group is closed.
    async fn run_command(
        &mut self,
        shard: &Shard,
        command: Command,
    ) -> Option<oneshot::Sender<()>> {
        match command {
            Command::Open {
                key,
                dir,
                membership,
                log_config,
                reply,
            } => {
                let _ = reply.send(self.open(key, &dir, &membership, log_config).await);
            }
            Command::Forward { command } => {
                if let Some(controller) = &mut self.controller {
                    controller.forwarded.push(command);
                }
            }
            Command::Close { key, reply } => {
                self.links.remove(&key);
                let closed = match self.forget(shard, key, "the replica was closed") {
                    Some(group) => group.close().await,
                    None => Ok(()),
                };
                let _ = reply.send(closed);
            }
            Command::Control { command, reply } => self.propose_control(command, reply),
            Command::ProducerIds { reply } => {
                if let Some(controller) = &mut self.controller {
                    if controller.id_waiters.is_empty() {
                        controller.id_block_before = controller
                            .state
                            .image()
                            .producer_id_blocks
                            .get(&self.settings.node_id)
                            .copied();
                        controller.last_id_request = None;
                    }
                    controller.id_waiters.push(reply);
                }
            }
            Command::HandOff { reply } => {
                let deadline = Instant::now() + HAND_OFF_WITHIN;
                self.handing_off
                    .get_or_insert_with(|| (deadline, Vec::new()))
                    .1
                    .push(reply);
            }
            Command::EpochEnd { key, epoch, reply } => {
                let end = self.node.group(&group_key(key)).and_then(|group| {
                    let log_end = group.log().durable_end_offset();
                    group.replica().storage().epoch_end(epoch, log_end)
                });
                let _ = reply.send(end);
            }
            Command::TransferLeader { key, leader, to } => {
                let group = group_key(key);
                match self.node.group_mut(&group) {
                    Some(replica) => replica.transfer_leader(raft_id(to)),
                    None if leader >= 0 => {
                        self.node.ask_transfer(group, raft_id(leader), raft_id(to))
                    }
                    None => {}
                }
            }
            Command::Call {
                node,
                api_key,
                api_version,
                body,
                reply,
            } => {
                let id = self.next_call;
                self.next_call += 1;
                let call = PeerCall {
                    id,
                    answer: false,
                    api_key,
                    api_version,
                    body,
                };
                // Unknown peers get no request: the asker's wait runs out.
                if self.node.send_call(raft_id(node), call) {
                    let deadline = Instant::now() + CALL_WAIT_MAX;
                    self.calls_waiting.insert(id, (deadline, reply));
                }
            }
            Command::Answer { to, call } => {
                self.node.send_call(to, call);
            }
            Command::Shutdown { reply } => {
                for (_, waiting) in self.pending.drain() {
                    for w in waiting {
                        let _ = w.reply.send(Err(not_leader("the broker is stopping")));
                    }
                }
                let keys: Vec<GroupKey> = self.node.groups().map(|(k, _)| *k).collect();
                let groups: Vec<_> = keys
                    .iter()
                    .filter_map(|key| self.node.remove_group(key))
                    .collect();
                // Concurrently, as `Shard::close_all` closes single-node partitions.
                futures::StreamExt::for_each_concurrent(
                    futures::stream::iter(groups),
                    crate::shard::PARTITIONS_CLOSED_AT_ONCE,
                    |group| async move {
                        if let Err(e) = group.close().await {
                            warn!(error = %e, "closing a replica");
                        }
                    },
                )
                .await;
                return Some(reply);
            }
        }
        None
    }

    async fn open(
        &mut self,
        key: PartitionKey,
        dir: &std::path::Path,
        membership: &Membership,
        log_config: LogConfig,
    ) -> Result<(Log, Rc<ReplicaLink>), ReplicationError> {
        let group = group_key(key);
        if self.node.group(&group).is_none() {
            self.node
                .add_group_as(group, dir, membership, self.settings.replica, log_config)
                .await?;
            let partition = self.node.group_mut(&group).expect("just added");
            let me = partition.replica().id();
            let fresh = partition.replica().term() == 0 && partition.replica().last_index() == 0;
            let new_group = membership.index == 0;
            if fresh && new_group && membership.conf_state.voters.first() == Some(&me) {
                // A new partition's preferred leader (the first replica, as Kafka's controller
                // picks) stands at once instead of after an election timeout, so clients
                // rarely see it without a leader. If its peers have not opened the group yet,
                // the ordinary timeout elects someone a moment later.
                let _ = partition.campaign();
            }
        }
        // Looked at by the next step, so the new link's state is published even if the
        // group was open and quiet already.
        let partition = self.node.group_mut(&group).expect("just added");
        let link = Rc::new(ReplicaLink {
            key,
            proposals: RefCell::default(),
            queued: self.queued.clone(),
            state: Cell::new(LinkState {
                high_watermark: partition.high_watermark(),
                leader_id: -1,
                ..LinkState::default()
            }),
            state_waiters: RefCell::default(),
            in_sync: Cell::new(0),
            published_quiet: Cell::new(false),
            wake: self.wake.clone(),
        });
        self.links.insert(key, link.clone());
        Ok((partition.log().clone(), link))
    }

    fn propose_control(
        &mut self,
        command: MetadataCommand,
        reply: oneshot::Sender<Result<(), ControlError>>,
    ) {
        let Some(controller) = &mut self.controller else {
            let _ = reply.send(Err(ControlError::Failed(
                "the controller runs on shard 0".into(),
            )));
            return;
        };
        let Some(group) = self.node.group_mut(&GroupKey::CONTROLLER) else {
            let _ = reply.send(Err(ControlError::Failed("no controller group".into())));
            return;
        };
        if group.replica().role() != Role::Leader {
            // Through the leader this replica knows (raft-rs forwards the proposal); the
            // outcome arrives with the entry (`after_step`).
            let leader = node_of(group.replica().leader_id());
            let request = controller.next_request;
            controller.next_request += 1;
            let forwarded = MetadataCommand::Forwarded {
                origin: self.settings.node_id,
                request,
                command: Box::new(command),
            };
            if leader < 0
                || group
                    .propose_anywhere(encode_command(&forwarded, now_ms()))
                    .is_err()
            {
                let _ = reply.send(Err(ControlError::NotController { leader }));
                return;
            }
            controller
                .forward_waiters
                .insert(request, (Instant::now() + FORWARDED_WITHIN, reply));
            return;
        }
        match group.propose(encode_command(&command, now_ms())) {
            Ok(index) => {
                controller.waiters.insert(index, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ControlError::Failed(e.to_string())));
            }
        }
    }

    /// While a clean stop is in progress: asks every group led here to hand over to its
    /// most caught-up follower; answers the stop once none is led here (or at the deadline).
    fn hand_off_leaderships(&mut self) {
        let Some((deadline, _)) = &self.handing_off else {
            return;
        };
        let deadline = *deadline;
        let keys: Vec<GroupKey> = self.node.groups().map(|(k, _)| *k).collect();
        let mut leading = 0;
        for key in keys {
            let Some(group) = self.node.group(&key) else {
                continue;
            };
            if group.replica().role() != Role::Leader {
                continue;
            }
            leading += 1;
            let me = group.replica().id();
            let target = group
                .replica()
                .matched()
                .into_iter()
                .filter(|(id, _, answering)| *id != me && *answering)
                .max_by_key(|(_, held, _)| *held)
                .map(|(id, _, _)| id);
            if let Some(target) = target {
                if let Some(group) = self.node.group_mut(&key) {
                    group.transfer_leader(target);
                }
            }
        }
        if leading == 0 || Instant::now() >= deadline {
            if leading > 0 {
                warn!(
                    groups = leading,
                    "stopping while still leading: their followers elect"
                );
            }
            let (_, waiting) = self.handing_off.take().expect("checked");
            for reply in waiting {
                let _ = reply.send(());
            }
        }
    }

    /// Proposes every batch queued on the links, in queue order.
    fn propose_queued(&mut self) {
        let listed = std::mem::take(&mut *self.queued.borrow_mut());
        for key in &listed {
            let Some(link) = self.links.get(key) else {
                continue;
            };
            let queued = std::mem::take(&mut *link.proposals.borrow_mut());
            if queued.is_empty() {
                continue;
            }
            let Some(group) = self.node.group_mut(&group_key(*key)) else {
                continue; // (a link leaves `links` with its group: not reached)
            };
            for proposal in queued {
                if group.replica().role() != Role::Leader {
                    let _ = proposal.reply.send(Err(not_leader(&link.not_leader())));
                    continue;
                }
                let proposed = match proposal.log_start {
                    Some(offset) => group.propose_log_start(offset),
                    None => group.propose(proposal.batch),
                };
                match proposed {
                    Ok(index) => self.pending.entry(*key).or_default().push_back(Pending {
                        index,
                        term: group.replica().term(),
                        until: proposal.until,
                        reply: proposal.reply,
                    }),
                    Err(e) => {
                        let _ = proposal.reply.send(Err(not_leader(&e.to_string())));
                    }
                }
            }
        }
    }

    /// Registration and producer-id requests, proposed through the controller leader and
    /// repeated until the image shows them.
    fn forward_controller_requests(&mut self) {
        let Some(controller) = &mut self.controller else {
            return;
        };
        let image = controller.state.image();
        let mut forward = Vec::new();
        let due = |last: Option<Instant>| last.is_none_or(|at| at.elapsed() >= RETRY_FORWARDED);
        let registered =
            image.brokers.get(&self.settings.node_id) == Some(&controller.registration);
        if !registered && due(controller.last_registration) {
            controller.last_registration = Some(Instant::now());
            forward.push(MetadataCommand::RegisterBroker(
                controller.registration.clone(),
            ));
            if !self.settings.is_seed() {
                // Not a controller voter: no leader to propose through until the controller
                // adds this node as a learner, which it does once the registration commits.
                // So ask the seeds to propose it (KRaft's brokers register with the
                // controller quorum the same way).
                let registration: Bytes = serde_json::to_vec(&controller.registration)
                    .expect("a registration serializes")
                    .into();
                for seed in self.settings.seeds.keys() {
                    self.node.send_join(raft_id(*seed), registration.clone());
                }
            }
        }
        for (from, registration) in self.node.take_joins() {
            match serde_json::from_slice::<BrokerRegistration>(&registration) {
                Ok(joining)
                    if raft_id(joining.node_id) == from
                        && joining.rpc.is_some()
                        && !joining.seed
                        && !self.settings.seeds.contains_key(&joining.node_id) =>
                {
                    let known = image.brokers.get(&joining.node_id) == Some(&joining);
                    if !known && due(controller.joins_proposed.get(&joining.node_id).copied()) {
                        info!(node = joining.node_id, rpc = ?joining.rpc, "a node asks to join");
                        controller
                            .joins_proposed
                            .insert(joining.node_id, Instant::now());
                        forward.push(MetadataCommand::RegisterBroker(joining));
                    }
                }
                Ok(joining) => warn!(
                    node = joining.node_id,
                    sender = node_of(from),
                    "refused a request to join: a seed's id, another sender's, or no RPC address"
                ),
                Err(e) => warn!(sender = node_of(from), error = %e, "refused a request to join"),
            }
        }
        if !controller.id_waiters.is_empty() && registered && due(controller.last_id_request) {
            controller.last_id_request = Some(Instant::now());
            forward.push(MetadataCommand::ReserveProducerIds {
                node_id: self.settings.node_id,
                count: PRODUCER_ID_BLOCK,
            });
        }
        let leads = self
            .node
            .group(&GroupKey::CONTROLLER)
            .is_some_and(|g| g.replica().role() == Role::Leader);
        if leads {
            follow_controller_membership(&mut self.node, image, &self.settings.seeds);
        }
        let every_seed_registered = self
            .settings
            .seeds
            .keys()
            .all(|id| image.brokers.contains_key(id));
        if leads
            && every_seed_registered
            && !image.topics.contains_key(crate::groups::OFFSETS_TOPIC)
            && due(controller.last_offsets_topic)
        {
            controller.last_offsets_topic = Some(Instant::now());
            forward.push(offsets_topic(&self.settings, image));
        }
        let ask_catch_up = !controller.caught_up
            && controller.catch_up_index.is_none()
            && controller
                .last_catch_up_request
                .is_none_or(|at| at.elapsed() >= RETRY_CATCH_UP);
        if ask_catch_up {
            controller.last_catch_up_request = Some(Instant::now());
            controller.catch_up_requests += 1;
        }
        forward.append(&mut controller.forwarded);
        let context = controller.catch_up_requests.to_be_bytes().to_vec();
        if let Some(group) = self.node.group_mut(&GroupKey::CONTROLLER) {
            if ask_catch_up {
                // Dropped while no leader is known: asked again after RETRY_CATCH_UP.
                group.read_index(context);
            }
            for command in forward {
                // No leader known yet: the next try comes after RETRY_FORWARDED.
                let _ = group.propose_anywhere(encode_command(&command, now_ms()));
            }
        }
    }

    /// Makes every node the image registers with an RPC address (one that is not a seed) a
    /// peer of this shard: frames from it accepted, messages to it sent to its shard of this
    /// number. Once per image version.
    fn follow_peers(&mut self, shard: &Shard) {
        let version = shard.catalog.version();
        if self.peers_seen_version == Some(version) {
            return;
        }
        self.peers_seen_version = Some(version);
        let image = shard.image();
        let Some(cluster) = image.cluster.as_ref() else {
            return;
        };
        for broker in cluster.brokers.values() {
            let Some(rpc) = broker.rpc else { continue };
            if broker.node_id == self.settings.node_id {
                continue;
            }
            let address = ClusterSettings::shard_address(rpc, shard.id);
            if self.node.add_peer(raft_id(broker.node_id), address) {
                info!(shard = shard.id, node = broker.node_id, %address, "peer added");
            }
        }
    }

    fn after_step(&mut self, shard: &Rc<Shard>, applied: Vec<(GroupKey, Outbox)>) {
        for (group, outbox) in applied {
            let entries = outbox.committed;
            if group == GroupKey::CONTROLLER {
                if let Some(controller) = &mut self.controller {
                    if let Some(index) = outbox.read_indexes.iter().max() {
                        controller.catch_up_index = Some(*index);
                    }
                    if let (Some(at), Some(group)) = (
                        outbox.started_over_at,
                        self.node.group(&GroupKey::CONTROLLER),
                    ) {
                        match controller.state.restored(group) {
                            Ok(()) => info!(
                                start = %at,
                                version = controller.state.image().version,
                                "controller image restored from the leader's snapshot"
                            ),
                            Err(e) => warn!(error = %e, "cannot restore the controller image"),
                        }
                    }
                }
                self.apply_controller(entries);
                continue;
            }
            // Entries left to the end of the step (they follow a restored snapshot or a
            // moved log start, which come first).
            if let Some(partition) = shard.open_partition(partition_key(group)) {
                if let Some(offset) = outbox.started_over_at {
                    partition.started_over(offset);
                }
                if outbox.log_start_moved.is_some() {
                    partition.note_changed();
                }
            }
            let high_watermark = self
                .node
                .group(&group)
                .map_or(Offset::ZERO, |g| g.high_watermark());
            let (pending, links) = (&mut self.pending, &self.links);
            answer_committed(shard, pending, links, group, &entries, high_watermark);
        }
        self.answer_appended();
        self.publish_states(shard);
        self.publish_controller(shard);
        self.track_voters();
        self.publish_heard(shard);
        self.announce_leading(shard);
        self.hear_leading(shard);
        self.take_back_preferred_leaderships(shard);
        self.drive_reassignments(shard);
    }

    /// Takes the next step of every move (reassignment) of a partition this shard leads (see
    /// `reassignment.rs`), every [`reassignment::CHECK_EVERY`].
    fn drive_reassignments(&mut self, shard: &Rc<Shard>) {
        if self.reassignments_checked_at.elapsed() < reassignment::CHECK_EVERY {
            return;
        }
        self.reassignments_checked_at = Instant::now();
        let image = shard.image();
        let Some(cluster) = image.cluster.as_ref() else {
            return;
        };
        self.reported
            .retain(|_, (_, at)| at.elapsed() < reassignment::REPORT_AGAIN_AFTER);
        let mut reports = Vec::new();
        for assignment in cluster.topics.values() {
            for (partition, moving) in &assignment.reassignments {
                let key = (assignment.topic.id, *partition);
                let Some(group) = self.node.group_mut(&group_key(key)) else {
                    continue;
                };
                let replica = group.replica();
                if replica.role() != Role::Leader {
                    continue;
                }
                let view = reassignment::GroupView {
                    me: replica.id(),
                    conf: replica.conf_state(),
                    conf_index: group.conf_index(),
                    pending: replica.has_pending_conf(),
                    matched: replica.matched(),
                    last_index: replica.last_index(),
                };
                match reassignment::next_step(&view, key.0, key.1, moving) {
                    Step::Wait => {}
                    Step::Propose(change) => {
                        info!(topic = %assignment.topic.name, partition = key.1,
                            change = ?change.changes.iter().map(|c| (c.get_change_type(), node_of(c.node_id))).collect::<Vec<_>>(),
                            leaving_joint = change.leave_joint(),
                            "reassignment: configuration change proposed");
                        if let Err(e) = group.propose_conf_change(change) {
                            warn!(topic = %assignment.topic.name, partition = key.1, error = %e,
                                "reassignment: configuration change not proposed");
                        }
                    }
                    Step::TransferLeader(to) => group.transfer_leader(to),
                    Step::Report(command) => {
                        let kind = command.kind();
                        if self.reported.get(&key).is_some_and(|(k, _)| *k == kind) {
                            continue;
                        }
                        self.reported.insert(key, (kind, Instant::now()));
                        info!(topic = %assignment.topic.name, partition = key.1, report = kind,
                            "reassignment: telling the controller");
                        reports.push(command);
                    }
                }
            }
        }
        if reports.is_empty() {
            return;
        }
        let from = shard.clone();
        glommio::spawn_local(async move {
            let _ = from
                .invoke_on(
                    crate::controller::CONTROLLER_SHARD,
                    move |controller| async move {
                        if let Some(replication) = &controller.replication {
                            for command in reports {
                                replication.forward(command);
                            }
                        }
                    },
                )
                .await;
        })
        .detach();
    }

    /// Tells the node's table when this shard last had a frame from each peer (for fencing),
    /// every [`HEARD_PUBLISH_EVERY`].
    fn publish_heard(&mut self, shard: &Shard) {
        if self.heard_published_at.elapsed() < HEARD_PUBLISH_EVERY {
            return;
        }
        self.heard_published_at = Instant::now();
        for (peer, at) in self.node.last_heard() {
            shard.catalog.cluster.note_heard(node_of(peer), at);
        }
    }

    /// Shard 0 leading the controller group: notes, per voter, when it was last heard from
    /// (raft-rs counts it recently active) and last held the leader's whole log.
    fn track_voters(&mut self) {
        let Some(group) = self.node.group(&GroupKey::CONTROLLER) else {
            return;
        };
        let replica = group.replica();
        if replica.role() != Role::Leader {
            self.voter_progress.clear();
            return;
        }
        let now = Instant::now();
        let (me, last) = (replica.id(), replica.last_index());
        for (id, held, answering) in replica.matched() {
            let progress = self.voter_progress.entry(id).or_default();
            if answering || id == me {
                progress.0 = Some(now);
            }
            if held >= last || id == me {
                progress.1 = Some(now);
            }
        }
    }

    /// The controller group as this node, its leader, sees it; `None` elsewhere.
    fn describe_quorum(&mut self) -> Option<QuorumView> {
        let group = self.node.group(&GroupKey::CONTROLLER)?;
        let replica = group.replica();
        if replica.role() != Role::Leader {
            return None;
        }
        let (now, unix_now) = (Instant::now(), now_ms());
        let unix = |at: Option<Instant>| {
            at.map_or(-1, |at| {
                unix_now - i64::try_from(now.duration_since(at).as_millis()).unwrap_or(0)
            })
        };
        let conf = replica.conf_state();
        let mut voters: Vec<VoterView> = replica
            .matched()
            .into_iter()
            .map(|(id, held, _)| {
                let (heard, caught_up) = self.voter_progress.get(&id).copied().unwrap_or_default();
                VoterView {
                    node: node_of(id),
                    log_end_offset: group.end_offset_of(held).map_or(-1, |o| o.0),
                    last_fetch_ms: unix(heard),
                    last_caught_up_ms: unix(caught_up),
                    learner: !conf.voters.contains(&id) && !conf.voters_outgoing.contains(&id),
                }
            })
            .collect();
        voters.sort_by_key(|v| v.node);
        Some(QuorumView {
            leader: node_of(replica.id()),
            epoch: i32::try_from(replica.term()).unwrap_or(i32::MAX),
            high_watermark: group.high_watermark().0,
            voters,
        })
    }

    /// Kafka's automatic leader rebalance, from the preferred leader's side: every
    /// `leader_imbalance_check`, if this shard's replicas lead fewer than they are preferred
    /// for by more than `leader_imbalance_percent`, each of those whose leader counts this
    /// node in sync asks to have the leadership handed over (the follower forwards the
    /// request to its leader, which transfers once this replica holds its whole log). So a
    /// node that came back gets its share of leaders again.
    fn take_back_preferred_leaderships(&mut self, shard: &Shard) {
        let Some(every) = self.settings.leader_imbalance_check else {
            return;
        };
        if self.imbalance_checked_at.elapsed() < every {
            return;
        }
        self.imbalance_checked_at = Instant::now();
        let me = self.settings.node_id;
        let image = shard.image();
        let table = &shard.catalog.cluster;
        let (mut preferred, mut led_elsewhere) = (0usize, 0usize);
        let mut wanted = Vec::new();
        for (key, link) in &self.links {
            let Some(topic) = image.topic_by_id(key.0) else {
                continue;
            };
            let first = shard
                .replicas_of(&image, &topic.name, key.1)
                .and_then(|r| r.first().copied());
            if first != Some(me) {
                continue;
            }
            preferred += 1;
            if link.state.get().leader {
                continue;
            }
            led_elsewhere += 1;
            let leader = table
                .leader(*key)
                .filter(|l| l.leader >= 0 && l.leader != me);
            if leader.is_some_and(|l| l.in_sync.is_some_and(|isr| isr.contains(&me))) {
                wanted.push(*key);
            }
        }
        let percent = led_elsewhere * 100 / preferred.max(1);
        if wanted.is_empty() || percent <= usize::from(self.settings.leader_imbalance_percent) {
            return;
        }
        info!(
            shard = shard.id,
            preferred,
            led_elsewhere,
            taking_back = wanted.len(),
            "leader imbalance: asking for the preferred leaderships back"
        );
        for key in wanted {
            if let Some(group) = self.node.group_mut(&group_key(key)) {
                group.transfer_leader(raft_id(me));
            }
        }
    }

    /// Announces what this shard leads and serves to the same shard of every other node, when
    /// that changed (at most every [`ANNOUNCE_LEADING_AFTER`]) or every
    /// [`ANNOUNCE_LEADING_EVERY`]. Sent with the next step's flush.
    fn announce_leading(&mut self, shard: &Shard) {
        let now = Instant::now();
        let since = self
            .leading_announced_at
            .map_or(Duration::MAX, |at| now.duration_since(at));
        let due = since >= ANNOUNCE_LEADING_EVERY
            || (self.leading_changed && since >= ANNOUNCE_LEADING_AFTER);
        if !due {
            return;
        }
        // A node joining through the seeds is no peer of theirs until its registration
        // commits: frames from it before that would only be refused.
        if !self.settings.is_seed()
            && !shard
                .image()
                .cluster
                .as_ref()
                .is_some_and(|c| c.brokers.contains_key(&self.settings.node_id))
        {
            return;
        }
        let mut notes: Vec<_> = self
            .links
            .iter()
            .filter(|(_, link)| link.state.get().leader)
            .map(|(key, link)| sluice_replication::rpc::LeadNote {
                group: group_key(*key),
                term: link.state.get().term,
                in_sync: self
                    .catch_up
                    .get(key)
                    .map(|c| c.in_sync.iter().map(|n| raft_id(*n)).collect())
                    .unwrap_or_default(),
                high_watermark: 0,
                voters: Vec::new(),
            })
            .collect();
        if let Some(quorum) = self.describe_quorum() {
            notes.push(sluice_replication::rpc::LeadNote {
                group: GroupKey::CONTROLLER,
                term: u64::try_from(quorum.epoch).unwrap_or(0),
                in_sync: Vec::new(),
                high_watermark: quorum.high_watermark,
                voters: quorum
                    .voters
                    .iter()
                    .map(|v| sluice_replication::rpc::VoterProgress {
                        id: raft_id(v.node),
                        log_end_offset: v.log_end_offset,
                        last_fetch_ms: v.last_fetch_ms,
                        last_caught_up_ms: v.last_caught_up_ms,
                        learner: v.learner,
                    })
                    .collect(),
            });
            shard.catalog.cluster.set_quorum(quorum);
        }
        self.node.announce_leading(notes);
        self.leading_changed = false;
        self.leading_announced_at = Some(now);
    }

    /// Records what other nodes announced they lead, for Metadata here.
    fn hear_leading(&mut self, shard: &Shard) {
        let table = &shard.catalog.cluster;
        for (peer, mut notes) in self.node.take_leading_heard() {
            let node = node_of(peer);
            if let Some(at) = notes.iter().position(|n| n.group == GroupKey::CONTROLLER) {
                let quorum = notes.swap_remove(at);
                table.set_quorum(QuorumView {
                    leader: node,
                    epoch: i32::try_from(quorum.term).unwrap_or(i32::MAX),
                    high_watermark: quorum.high_watermark,
                    voters: quorum
                        .voters
                        .iter()
                        .map(|v| VoterView {
                            node: node_of(v.id),
                            log_end_offset: v.log_end_offset,
                            last_fetch_ms: v.last_fetch_ms,
                            last_caught_up_ms: v.last_caught_up_ms,
                            learner: v.learner,
                        })
                        .collect(),
                });
            }
            // The table changes only through announcements, so applying the same list again
            // would change nothing (a claim another node superseded stays superseded).
            if self.heard_notes.get(&node) == Some(&notes) {
                continue;
            }
            let keys: HashSet<PartitionKey> =
                notes.iter().map(|n| partition_key(n.group)).collect();
            let gone: Vec<PartitionKey> = self
                .heard_notes
                .get(&node)
                .into_iter()
                .flatten()
                .map(|note| partition_key(note.group))
                .filter(|key| !keys.contains(key))
                .collect();
            table.hear(
                node,
                &gone,
                notes.iter().map(|note| {
                    (
                        partition_key(note.group),
                        PartitionLeader {
                            leader: node,
                            epoch: i32::try_from(note.term).unwrap_or(i32::MAX),
                            in_sync: Some(note.in_sync.iter().map(|id| node_of(*id)).collect()),
                        },
                    )
                }),
            );
            self.heard_notes.insert(node, notes);
        }
    }

    /// Answers acks=1 appends whose entries are durable in this leader's log (the persist of
    /// a leader's entries is pipelined: written at once, its fdatasync finishing later).
    fn answer_appended(&mut self) {
        for (key, queue) in &mut self.pending {
            let Some(group) = self.node.group(&group_key(*key)) else {
                continue;
            };
            // Most steps have only acks=all appends waiting: nothing to look at.
            if !queue.iter().any(|w| w.until == Until::Appended) {
                continue;
            }
            let log_end = group.log().log_end_offset();
            let mut kept = VecDeque::with_capacity(queue.len());
            for waiting in queue.drain(..) {
                let in_log = waiting.until == Until::Appended
                    && group
                        .end_offset_of(waiting.index)
                        .is_some_and(|end| end <= log_end)
                    && waiting.term == group.replica().term();
                if in_log {
                    let answer = group
                        .replica()
                        .storage()
                        .offsets_of(waiting.index)
                        .map(|(base, end)| append_info(base, end))
                        .ok_or_else(|| {
                            not_leader("the entry left the window before it was answered")
                        });
                    let _ = waiting.reply.send(answer);
                } else {
                    kept.push_back(waiting);
                }
            }
            *queue = kept;
        }
        self.pending.retain(|_, queue| !queue.is_empty());
    }

    /// Takes a replica whose ready work failed (its log failed, or refused a write for
    /// space) offline on this node until the broker restarts, as Kafka takes a failed log
    /// directory offline. Its Raft state cannot be trusted to match its log any more (raft-rs
    /// handed the work over and moved on: continuing would append later entries where the
    /// failed ones belong, and acknowledge them), while a restart rebuilds both from disk.
    /// Waiting appends are answered NOT_LEADER_OR_FOLLOWER, the partition refuses produce and
    /// reads here as a non-leader, and this node's Metadata names no leader for it; the other
    /// replicas elect a leader among themselves.
    async fn take_offline(&mut self, shard: &Rc<Shard>, group: GroupKey, error: &ReplicationError) {
        let key = partition_key(group);
        tracing::error!(shard = shard.id, topic_id = %key.0, partition = key.1,
            %error, "a replica's log failed: the replica is offline on this node until restart");
        let why = "the replica's log failed on this node";
        if let Some(link) = self.links.remove(&key) {
            let state = link.state.get();
            link.replace_state(LinkState {
                leader: false,
                elected: false,
                leader_id: -1,
                ..state
            });
            link.in_sync.set(0);
            for proposal in link.proposals.borrow_mut().drain(..) {
                let _ = proposal.reply.send(Err(not_leader(why)));
            }
        }
        if let Some(replica) = self.forget(shard, key, why) {
            // Closing a failed log may fail too; nothing more can be saved here.
            let _ = replica.close().await;
        }
    }

    /// Drops this node's replica of `key` from the loop: its bookkeeping, its waiting appends
    /// (answered NOT_LEADER_OR_FOLLOWER, `why`), its leader in the catalog; returns the group
    /// for the caller to close.
    fn forget(
        &mut self,
        shard: &Shard,
        key: PartitionKey,
        why: &str,
    ) -> Option<sluice_replication::partition::RaftPartition> {
        self.catch_up.remove(&key);
        self.term_starts.remove(&key);
        refuse_waiting(&mut self.pending, key, why);
        shard.catalog.cluster.set_leader(key, None);
        self.node.remove_group(&group_key(key))
    }

    /// Publishes each link's role, leader and high watermark; wakes the partition's fetches
    /// when the high watermark moved.
    ///
    /// Only links whose group the step looked at can have changed, and the unsettled ones.
    fn publish_states(&mut self, shard: &Rc<Shard>) {
        let lag = self.settings.replica_lag;
        let at = Instant::now();
        let mut keys: HashSet<PartitionKey> = self
            .node
            .take_touched()
            .into_iter()
            .filter(|group| *group != GroupKey::CONTROLLER)
            .map(partition_key)
            .collect();
        keys.extend(self.unsettled.drain());
        for key in &keys {
            let Some(link) = self.links.get(key) else {
                continue;
            };
            let Some(group) = self.node.group(&group_key(*key)) else {
                continue;
            };
            // A quiet group's role, term, leader, high watermark and ISR (its followers'
            // answers stand still with its clock) stay as published once it went quiet, and
            // its ISR holds no replica that stopped answering (a group goes quiet past a
            // member that is down, which leaves the ISR only `replica_lag` after it fell
            // silent: until then the group is looked at every step).
            let quiet = group.is_quiet();
            if quiet && link.published_quiet.get() {
                continue;
            }
            let mut isr_settled = true;
            let replica = group.replica();
            // A new leader serves once the first entry of its term is applied: then every
            // entry of earlier terms it holds is committed and recorded in the producer state,
            // so a retried batch is recognised instead of appended twice. (Committed is not
            // enough: raft-rs may hand committed entries over across several steps.)
            let serving = replica.role() == Role::Leader && {
                let term = replica.term();
                let start = match self.term_starts.get(key) {
                    Some((t, index)) if *t == term => *index,
                    _ => {
                        let index = replica.last_index();
                        self.term_starts.insert(*key, (term, index));
                        index
                    }
                };
                group.applied_index() >= start
            };
            let now = LinkState {
                leader: serving,
                elected: replica.role() == Role::Leader,
                leader_id: node_of(replica.leader_id()),
                term: replica.term(),
                high_watermark: group.high_watermark(),
            };
            let before = link.replace_state(now);
            if replica.role() != Role::Leader {
                // Deposed (or never leading): the appends waiting here are answered now, as
                // Kafka's deposed leader answers its delayed produces, not once entries at
                // their indexes commit here, which a replica cut off or behind may not see for
                // long while the client waits out its request timeout. An entry of them may
                // still commit under the new leader: the client's retry then finds it there
                // (an idempotent producer's as a duplicate).
                refuse_waiting(
                    &mut self.pending,
                    *key,
                    "leadership lost before the batch committed",
                );
            }
            let isr_changed = if now.leader {
                let fresh = (before.leader, before.term) != (true, now.term);
                let catch_up = self.catch_up.entry(*key).or_default();
                if fresh {
                    // A new leader starts with every replica in sync, as Kafka's does.
                    *catch_up = CatchUp::default();
                    let elections = &shard.metrics.leader_elections;
                    elections.set(elections.get() + 1);
                }
                let in_sync = catch_up.update(replica, fresh, at, lag);
                isr_settled = !catch_up.silent_in_sync;
                link.in_sync.set(in_sync.len());
                let changed = catch_up.in_sync != in_sync;
                catch_up.in_sync = in_sync;
                changed
            } else {
                link.in_sync.set(0);
                self.catch_up.remove(key).is_some()
            };
            link.published_quiet.set(quiet && isr_settled);
            if quiet && !isr_settled {
                self.unsettled.insert(*key);
            }
            if before == now && !isr_changed {
                continue;
            }
            if before.leader || now.leader {
                self.leading_changed = true;
            }
            if (before.leader_id, before.term) != (now.leader_id, now.term) || isr_changed {
                shard.catalog.cluster.set_leader(
                    *key,
                    Some(PartitionLeader {
                        leader: now.leader_id,
                        epoch: i32::try_from(now.term).unwrap_or(i32::MAX),
                        in_sync: self.catch_up.get(key).map(|c| c.in_sync.clone()),
                    }),
                );
            }
            // Serving here started or stopped (a new leader serves once its term's first
            // entry commits, a step or more after it was elected).
            if before.leader != now.leader {
                info!(topic_id = %key.0, partition = key.1, term = now.term,
                    leader = now.leader_id, serving = now.leader, "partition leadership changed");
                let image = shard.image();
                match image.topic_by_id(key.0) {
                    Some(topic) if topic.name == crate::groups::OFFSETS_TOPIC => {
                        crate::groups::leadership_changed(shard, topic.clone(), key.1, now.leader);
                    }
                    Some(topic) if topic.name == crate::transactions::TXN_STATE_TOPIC => {
                        crate::transactions::leadership_changed(
                            shard,
                            topic.clone(),
                            key.1,
                            now.leader,
                        );
                    }
                    _ => {}
                }
            }
            if before.high_watermark != now.high_watermark {
                if let Some(partition) = shard.open_partition(*key) {
                    partition.note_changed();
                }
            }
        }
    }

    fn apply_controller(&mut self, entries: Vec<CommittedEntry>) {
        let Some(controller) = &mut self.controller else {
            return;
        };
        let leader = self
            .node
            .group(&GroupKey::CONTROLLER)
            .is_some_and(|g| g.replica().role() == Role::Leader);
        if let Err(e) = controller
            .state
            .apply(entries, leader, self.settings.node_id)
        {
            warn!(error = %e, "cannot apply a controller command");
        }
        for (request, outcome) in controller.state.take_forwarded_outcomes() {
            if let Some((_, reply)) = controller.forward_waiters.remove(&request) {
                let _ = reply.send(outcome.map_err(ControlError::from));
            }
        }
        let decided: Vec<u64> = controller.waiters.keys().copied().collect();
        for index in decided {
            if let Some(outcome) = controller.state.take_outcome(index) {
                if let Some(reply) = controller.waiters.remove(&index) {
                    let _ = reply.send(outcome.map_err(ControlError::from));
                }
            }
        }
        let block = controller
            .state
            .image()
            .producer_id_blocks
            .get(&self.settings.node_id)
            .copied();
        if let Some(block) = block.filter(|b| Some(*b) != controller.id_block_before) {
            for reply in controller.id_waiters.drain(..) {
                let _ = reply.send(block);
            }
            controller.id_block_before = Some(block);
        }
    }

    /// Shard 0: the controller leader for Metadata, commands that can no longer commit as
    /// proposed here, and a changed image to the catalog (then every shard reconciles).
    fn publish_controller(&mut self, shard: &Rc<Shard>) {
        let Some(controller) = &mut self.controller else {
            return;
        };
        let Some(group) = self.node.group(&GroupKey::CONTROLLER) else {
            return;
        };
        let leader = node_of(group.replica().leader_id());
        if shard
            .catalog
            .cluster
            .controller
            .swap(leader, Ordering::AcqRel)
            != leader
        {
            info!(controller = leader, "controller leader changed");
        }
        if !controller.forward_waiters.is_empty() {
            let now = Instant::now();
            let expired: Vec<u64> = controller
                .forward_waiters
                .iter()
                .filter(|(_, (until, _))| *until <= now)
                .map(|(request, _)| *request)
                .collect();
            for request in expired {
                if let Some((_, reply)) = controller.forward_waiters.remove(&request) {
                    let _ = reply.send(Err(ControlError::TimedOut(FORWARDED_WITHIN)));
                }
            }
        }
        if group.replica().role() != Role::Leader && !controller.waiters.is_empty() {
            for (_, reply) in std::mem::take(&mut controller.waiters) {
                let _ = reply.send(Err(ControlError::LostLeadership { leader }));
            }
        }
        let image = controller.state.image();
        let reached = controller
            .catch_up_index
            .is_some_and(|index| group.applied_index() >= index);
        let newly_caught_up = reached && !controller.caught_up;
        if newly_caught_up {
            controller.caught_up = true;
            info!(index = ?controller.catch_up_index, version = image.version,
                "cluster metadata caught up with the controller");
        }
        let changed = controller.published_version != Some(image.version);
        if changed {
            controller.published_version = Some(image.version);
            shard.catalog.publish_cluster(image);
        }
        if newly_caught_up {
            // Published first: whoever sees the flag sees this image.
            shard
                .catalog
                .cluster
                .caught_up
                .store(true, Ordering::Release);
        }
        // Also once caught up: what only a current image may do (removing replicas that moved
        // away) waits for it.
        if !changed && !newly_caught_up {
            return;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            for reconciled in shard
                .invoke_on_all(|s| async move { reconcile(&s).await })
                .await
            {
                if let Err(gone) = reconciled {
                    warn!(error = %gone, "cannot reconcile replicas");
                }
            }
        })
        .detach();
    }
}

impl CatchUp {
    /// Notes which followers hold what the leader held at the previous step; returns the
    /// replicas in sync (node ids, the leader first), and notes whether one of them has
    /// stopped answering (it leaves once `lag` has passed).
    fn update(
        &mut self,
        replica: &sluice_replication::Replica<sluice_replication::partition::PartitionStore>,
        fresh: bool,
        now: Instant,
        lag: Duration,
    ) -> Vec<i32> {
        let me = replica.id();
        // Learners (replicas joining a moving partition) are never in sync: they do not vote.
        let mut matched = replica.matched();
        matched.retain(|(id, _, _)| replica.is_voter(*id));
        for (id, held, answering) in &matched {
            // A follower that stopped answering is not caught up, even with nothing new to
            // hold (Kafka's followers, too, fall out by not fetching).
            if fresh || (*answering && *held >= self.last_index_before) {
                self.caught_up_at.insert(*id, now);
            }
        }
        self.last_index_before = replica.last_index();
        let mut in_sync = vec![node_of(me)];
        for (id, _, _) in &matched {
            let id = *id;
            let recent = self
                .caught_up_at
                .get(&id)
                .is_some_and(|at| now.duration_since(*at) <= lag);
            if id != me && recent {
                in_sync.push(node_of(id));
            }
        }
        in_sync[1..].sort_unstable();
        self.silent_in_sync = matched
            .iter()
            .any(|(id, _, answering)| !answering && *id != me && in_sync.contains(&node_of(*id)));
        in_sync
    }
}

/// The command creating `__consumer_offsets`: compacted, replicated on up to three brokers.
fn offsets_topic(settings: &ClusterSettings, image: &ClusterImage) -> MetadataCommand {
    let brokers: Vec<i32> = image.brokers.keys().copied().collect();
    let factor = brokers
        .len()
        .min(crate::controller::DEFAULT_REPLICATION_FACTOR);
    let partitions = settings.offsets_partitions;
    let replicas = crate::cluster_metadata::assign_replicas(&brokers, partitions, factor, 0, 0)
        .expect("every seed is registered, so the factor fits");
    MetadataCommand::CreateTopic {
        topic: crate::topics::Topic::offsets(partitions),
        replicas,
    }
}

/// Cluster mode: what a coordinator answers for an internal partition (`key`) it has not
/// loaded: COORDINATOR_LOAD_IN_PROGRESS while its replica here leads (and loads),
/// NOT_COORDINATOR where another node leads.
pub fn not_coordinating(shard: &Shard, key: PartitionKey) -> ResponseError {
    let leads = shard
        .open_partition(key)
        .is_some_and(|p| p.not_leader().is_none());
    if leads {
        ResponseError::CoordinatorLoadInProgress
    } else {
        ResponseError::NotCoordinator
    }
}

/// Cluster mode, for a coordinator taking over an internal partition (`__consumer_offsets`,
/// `__transaction_state`) whose replica here just started leading: the partition once every
/// entry of its log is committed (so a replay sees all the previous leader acknowledged);
/// `None` if it stopped leading first, or never opened within 30 s (the link reports
/// leadership as soon as its group runs, possibly before the shard has opened the partition).
pub async fn leading_caught_up(
    shard: &Shard,
    key: PartitionKey,
) -> Option<Rc<crate::partition::Partition>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let p = loop {
        if let Some(p) = shard.open_partition(key) {
            break p;
        }
        if Instant::now() > deadline {
            warn!(topic_id = %key.0, partition = key.1,
                "a partition this node leads never opened: its coordinator is not loaded");
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    };
    let end = p.log().log_end_offset();
    while p.high_watermark() < end {
        if p.not_leader().is_some() {
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    p.not_leader().is_none().then_some(p)
}

/// Opens the replicas the current image assigns to this node on this shard, and closes (and
/// removes) the open ones whose topic the image no longer has. Only partitions opened from an
/// image are ever removed: a stale image after a restart (its commit point not yet relearned)
/// never deletes data it does not know of.
pub async fn reconcile(shard: &Rc<Shard>) {
    let Some(replication) = &shard.replication else {
        return;
    };
    let node = replication.settings.node_id;
    let image = shard.image();
    let Some(cluster) = image.cluster.clone() else {
        return;
    };
    let mut reconfigured: Vec<crate::topics::Topic> = Vec::new();
    for assignment in cluster.topics.values() {
        let Some(topic) = image.topic(&assignment.topic.name).cloned() else {
            continue;
        };
        // Configs changed through the controller (AlterConfigs) reach the open replicas.
        let applied = replication
            .applied_configs
            .borrow()
            .get(&topic.id)
            .map(|configs| configs == &topic.configs);
        if applied != Some(true) {
            if applied.is_some() {
                info!(topic = %topic.name, configs = ?topic.configs, "topic configs applied");
            }
            reconfigured.push((*topic).clone());
        }
        for (p, replicas) in assignment.replicas.iter().enumerate() {
            let p = p as i32;
            if shard.owner_of(&topic.name, p) != shard.id || !replicas.contains(&node) {
                continue;
            }
            if shard.open_partition((topic.id, p)).is_none() {
                // `Closed`: a replica joining a moving partition waits for its join point.
                match shard.partition(&topic, p).await {
                    Ok(_) | Err(sluice_storage::StorageError::Closed) => {}
                    Err(e) => {
                        warn!(topic = %topic.name, partition = p, error = %e, "cannot open a replica");
                    }
                }
            }
        }
    }
    shard.reconfigure_topics(&reconfigured);
    {
        let mut applied = replication.applied_configs.borrow_mut();
        for topic in &reconfigured {
            applied.insert(topic.id, topic.configs.clone());
        }
        applied.retain(|id, _| image.topic_by_id(*id).is_some());
    }
    // Replicas a finished move took off this node: closed and deleted, once the image is the
    // controller's current one (an image replayed after a restart may predate the move that
    // brought the replica here).
    if shard.catalog.cluster.caught_up() {
        let moved_away: Vec<(PartitionKey, PathBuf)> = shard
            .open_partitions()
            .into_iter()
            .filter(|(key, _)| {
                image.topic_by_id(key.0).is_some_and(|topic| {
                    shard
                        .replicas_of(&image, &topic.name, key.1)
                        .is_some_and(|replicas| !replicas.contains(&node))
                })
            })
            .map(|(key, p)| (key, p.dir().to_path_buf()))
            .collect();
        for (key, dir) in moved_away {
            shard.drop_partitions(|k| *k == key).await;
            if let Err(e) = crate::shard::remove_dir_all(dir.clone()).await {
                warn!(dir = %dir.display(), error = %e, "cannot remove a replica moved away");
            }
            info!(topic_id = %key.0, partition = key.1, "replica moved away from this node removed");
        }
        // Once per process: replicas whose move finished while this node was down were never
        // opened here again, so only their directories are left.
        if !replication.swept_moved_away.replace(true) {
            for assignment in cluster.topics.values() {
                for (p, replicas) in assignment.replicas.iter().enumerate() {
                    let p = p as i32;
                    let topic = &assignment.topic;
                    if replicas.contains(&node)
                        || shard.owner_of(&topic.name, p) != shard.id
                        || shard.open_partition((topic.id, p)).is_some()
                    {
                        continue;
                    }
                    let dir = topic.partition_dir(shard.catalog.data_dir(), p);
                    if !dir.exists() {
                        continue;
                    }
                    match crate::shard::remove_dir_all(dir.clone()).await {
                        Ok(()) => info!(dir = %dir.display(),
                            "replica that moved away while this node was down removed"),
                        Err(e) => warn!(dir = %dir.display(), error = %e,
                            "cannot remove a replica moved away"),
                    }
                }
            }
        }
    }
    let gone: Vec<Uuid> = shard
        .open_partitions()
        .into_iter()
        .map(|(key, _)| key.0)
        .filter(|id| image.topic_by_id(*id).is_none())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for id in gone {
        let dirs: Vec<PathBuf> = shard
            .open_partitions()
            .into_iter()
            .filter(|(key, _)| key.0 == id)
            .map(|(_, p)| p.dir().to_path_buf())
            .collect();
        shard.drop_topic_partitions(id).await;
        for dir in dirs {
            if let Err(e) = crate::shard::remove_dir_all(dir.clone()).await {
                warn!(dir = %dir.display(), error = %e, "cannot remove a deleted partition");
            }
            if let Some(topic_dir) = dir.parent() {
                // The last shard to remove its partitions removes the topic's directory.
                let _ = std::fs::remove_dir(topic_dir);
            }
        }
        info!(topic_id = %id, "replicas of a deleted topic removed");
    }
}

/// What an append of the batch from `base` to `end` (exclusive) is answered with.
fn append_info(base: Offset, end: Offset) -> AppendInfo {
    AppendInfo {
        base_offset: base,
        last_offset: end.plus(-1),
        batch_count: 1,
    }
}

/// Answers the appends waiting on `entries` (committed, in index order): the one whose entry
/// committed with its offsets, the ones whose index another term's entry took with
/// NOT_LEADER_OR_FOLLOWER.
fn answer_waiting(queue: &mut VecDeque<Pending>, entries: &[CommittedEntry]) {
    if queue.is_empty() {
        return;
    }
    for entry in entries {
        while let Some(front) = queue.front() {
            if front.index > entry.index {
                break;
            }
            let waiting = queue.pop_front().expect("front exists");
            let answer = if waiting.index == entry.index && waiting.term == entry.term {
                Ok(append_info(entry.base_offset, entry.end_offset))
            } else {
                Err(not_leader("leadership changed before the batch committed"))
            };
            let _ = waiting.reply.send(answer);
        }
    }
}

/// A partition group's committed entries (mid-step, or at its end): recorded in the producer
/// state, then their appends answered (in that order: a retry must find its batch), and the
/// high watermark published to fetches at once.
fn answer_committed(
    shard: &Shard,
    pending: &mut HashMap<PartitionKey, VecDeque<Pending>>,
    links: &HashMap<PartitionKey, Rc<ReplicaLink>>,
    group: GroupKey,
    entries: &[CommittedEntry],
    high_watermark: Offset,
) {
    let key = partition_key(group);
    let partition = shard.open_partition(key);
    if let Some(partition) = &partition {
        partition.apply_committed(entries);
    }
    if let Some(queue) = pending.get_mut(&key) {
        answer_waiting(queue, entries);
        if queue.is_empty() {
            pending.remove(&key);
        }
    }
    if let Some(link) = links.get(&key) {
        let mut state = link.state.get();
        if high_watermark > state.high_watermark {
            state.high_watermark = high_watermark;
            link.state.set(state);
            if let Some(partition) = &partition {
                partition.note_changed();
            }
        }
    }
}

/// Answers every append waiting on `key` NOT_LEADER_OR_FOLLOWER (`why`).
fn refuse_waiting(
    pending: &mut HashMap<PartitionKey, VecDeque<Pending>>,
    key: PartitionKey,
    why: &str,
) {
    for waiting in pending.remove(&key).unwrap_or_default() {
        let _ = waiting.reply.send(Err(not_leader(why)));
    }
}

fn not_leader(why: &str) -> AppendError {
    AppendError::Refused(ResponseError::NotLeaderOrFollower, why.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How often a preferred-leader election asks again while the leadership has not moved (a
/// leader gives a transfer up after an election timeout, e.g. while the preferred replica
/// catches up).
const ELECTION_ASK_EVERY: Duration = Duration::from_millis(500);

/// Why a leader election was not done (Kafka's per-partition ElectLeaders errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionRefused {
    pub error: ResponseError,
    pub message: String,
}

fn refused(error: ResponseError, message: impl Into<String>) -> ElectionRefused {
    ElectionRefused {
        error,
        message: message.into(),
    }
}

/// Kafka's preferred-leader election for one partition: its first replica takes the
/// leadership over, if it is alive and in sync, handed over by the current leader (raft-rs's
/// leadership transfer, so no acknowledged record is at risk). Waits at most `within` for
/// the leadership to move. On a single node every partition is led by its only replica.
pub async fn elect_preferred(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    within: Duration,
) -> Result<(), ElectionRefused> {
    let image = shard.image();
    let Some(found) = image.topic(topic).cloned() else {
        return Err(refused(
            ResponseError::UnknownTopicOrPartition,
            format!("no topic {topic:?}"),
        ));
    };
    if partition < 0 || partition >= found.partitions {
        return Err(refused(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {topic:?} has no partition {partition}"),
        ));
    }
    if shard.replication.is_none() {
        return Err(refused(
            ResponseError::ElectionNotNeeded,
            "a single node leads every partition",
        ));
    }
    let Some(preferred) = shard
        .replicas_of(&image, topic, partition)
        .and_then(|replicas| replicas.first().copied())
    else {
        return Err(refused(
            ResponseError::UnknownTopicOrPartition,
            format!("partition {partition} of {topic:?} has no replicas"),
        ));
    };
    let key = (found.id, partition);
    let table = &shard.catalog.cluster;
    let deadline = Instant::now() + within;
    let mut asked_at: Option<Instant> = None;
    loop {
        let current = table.leader(key).filter(|l| l.leader >= 0);
        match &current {
            Some(l) if l.leader == preferred => {
                return match asked_at {
                    Some(_) => Ok(()),
                    None => Err(refused(
                        ResponseError::ElectionNotNeeded,
                        format!("the preferred replica {preferred} leads already"),
                    )),
                };
            }
            _ if table.hung_up(preferred) => {
                return Err(refused(
                    ResponseError::PreferredLeaderNotAvailable,
                    format!("the preferred replica {preferred} is not reachable"),
                ))
            }
            Some(l)
                if l.in_sync
                    .as_ref()
                    .is_some_and(|isr| !isr.contains(&preferred)) =>
            {
                return Err(refused(
                    ResponseError::PreferredLeaderNotAvailable,
                    format!(
                        "the preferred replica {preferred} is not in sync with leader {}",
                        l.leader
                    ),
                ))
            }
            None if asked_at.is_none() => {
                return Err(refused(
                    ResponseError::PreferredLeaderNotAvailable,
                    "the partition has no leader to hand over from (an election is under way)",
                ))
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(refused(
                ResponseError::RequestTimedOut,
                format!("the leadership did not move to replica {preferred} in time"),
            ));
        }
        if asked_at.is_none_or(|at| now.duration_since(at) >= ELECTION_ASK_EVERY) {
            let leader = current.map_or(-1, |l| l.leader);
            let owner = shard.owner_of(topic, partition);
            let asked = shard
                .invoke_on(owner, move |owner_shard| async move {
                    if let Some(replication) = owner_shard.replication.as_ref() {
                        replication.transfer_leader(key, leader, preferred);
                    }
                })
                .await;
            if asked.is_err() {
                return Err(refused(
                    ResponseError::RequestTimedOut,
                    "the broker is stopping",
                ));
            }
            asked_at = Some(now);
        }
        glommio::timer::sleep(Duration::from_millis(20).min(deadline - now)).await;
    }
}
