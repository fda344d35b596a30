//! Deterministic simulation of one Raft group: three or five replicas in one process, driven
//! through the public `Replica` contract over a seeded network (drop, duplicate, delay,
//! reorder, partition), a seeded disk (persist jobs complete in order after a delay; a crash
//! loses what was not yet durable), pauses (a SIGSTOPped node: no ticks, mail held) and clock
//! skew (a node that ticks twice). The same seed replays the same run.
//!
//! Checked after every step:
//! - election safety: at most one leader per term;
//! - state-machine safety: every replica applies, at each index, the same entry, in order;
//! - log matching: two logs holding the same term at an index agree on everything before it;
//! - leader completeness: a replica that becomes leader of term T holds every entry that was
//!   applied somewhere while the highest term in the group was below T.
//!
//! Over the partition store, replicas also compact their logs at random points at or below
//! what they applied (each on its own, a superset of the log start cuts every replica applies
//! in Sluice), so a replica that falls behind a leader's floor is caught up by a snapshot; a
//! restored snapshot must name the index and term applied there elsewhere.
//!
//! With membership changes on (`groups_keep_every_applied_entry_while_their_members_change`),
//! the leader also changes the group: spare nodes join as learners (started from the
//! configuration at the change that added them, as a moved replica starts from its join
//! point), learners are promoted, voters demoted or swapped for a learner in one joint change,
//! learners removed for good. Each replica's configuration survives crashes as its state file
//! does (written when a change applies or a snapshot restores), and a restart opens from it.
//!
//! After the faulty phase everything is healed (crashed nodes restart from their durable state,
//! pauses end, links mend) and the group must elect a leader, commit a fresh proposal and bring
//! every replica to the same applied log, holding every entry ever applied anywhere: a
//! committed (acknowledged) entry is never lost.
//!
//! `SLUICE_SIM_SEEDS=N` runs N seeds per test (default 1,000 over raft-rs's store, 500 over the
//! partition store and with membership changes); `SLUICE_SIM_SEED=S` replays one (numbered
//! from each test's offset: seed 2000061 of the membership test is `SLUICE_SIM_SEED=61`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
};
use raft::{GetEntriesContext, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_replication::partition::{
    snapshot_conf_index, snapshot_end_offset, Below, Membership, PartitionStore,
};
use sluice_replication::{
    discard_logger, Entry, HardState, MemStorage, Message, PersistJob, Progress, Replica,
    ReplicaConfig, ReplicaStorage, Role,
};
use sluice_storage::batch::build_batch;

const FAULTY_STEPS: u64 = 600;
/// Data budget of the partition store in the simulation: small, so eviction and reads back
/// from the "log" (the durable entries) happen all the time.
const SIM_DATA_BUDGET: u64 = 512;

/// Which storage the replicas run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    /// raft-rs's in-memory storage: the contract alone.
    Memory,
    /// Sluice's partition store (window of offsets, evicted data read back asynchronously).
    Partition,
}

/// The storage of a simulated replica: either kind, behind raft-rs's traits.
enum SimStore {
    Memory(MemStorage),
    Partition(Box<PartitionStore>),
}

impl Storage for SimStore {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        match self {
            SimStore::Memory(s) => s.initial_state(),
            SimStore::Partition(s) => s.initial_state(),
        }
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        match self {
            SimStore::Memory(s) => s.entries(low, high, max_size, context),
            SimStore::Partition(s) => s.entries(low, high, max_size, context),
        }
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        match self {
            SimStore::Memory(s) => s.term(index),
            SimStore::Partition(s) => s.term(index),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        match self {
            SimStore::Memory(s) => s.first_index(),
            SimStore::Partition(s) => s.first_index(),
        }
    }

    fn last_index(&self) -> raft::Result<u64> {
        match self {
            SimStore::Memory(s) => Storage::last_index(s),
            SimStore::Partition(s) => Storage::last_index(s.as_ref()),
        }
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<raft::eraftpb::Snapshot> {
        match self {
            SimStore::Memory(s) => s.snapshot(request_index, to),
            SimStore::Partition(s) => s.snapshot(request_index, to),
        }
    }
}

impl ReplicaStorage for SimStore {
    fn put_entries(&mut self, entries: &[Entry]) -> sluice_replication::Result<()> {
        match self {
            SimStore::Memory(s) => s.put_entries(entries),
            SimStore::Partition(s) => s.put_entries(entries),
        }
    }

    fn put_hard_state(&mut self, hard_state: &HardState) {
        match self {
            SimStore::Memory(s) => s.put_hard_state(hard_state),
            SimStore::Partition(s) => s.put_hard_state(hard_state),
        }
    }

    fn restore(&mut self, snapshot: &raft::eraftpb::Snapshot) -> sluice_replication::Result<()> {
        match self {
            SimStore::Memory(s) => s.restore(snapshot),
            SimStore::Partition(s) => s.restore(snapshot),
        }
    }

    fn conf_index(&self) -> u64 {
        match self {
            SimStore::Memory(s) => s.conf_index(),
            SimStore::Partition(s) => s.conf_index(),
        }
    }

    fn put_conf_state(&mut self, index: u64, conf_state: &raft::eraftpb::ConfState) {
        match self {
            SimStore::Memory(s) => s.put_conf_state(index, conf_state),
            SimStore::Partition(s) => s.put_conf_state(index, conf_state),
        }
    }
}
const SETTLE_STEPS_MAX: u64 = 3_000;

/// How a run may deviate from the contract, to show the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Follows the contract.
    Correct,
    /// Sends `send_after` messages when the job is issued, before it is durable.
    AcknowledgesBeforePersisting,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    crashes: u64,
    elections: u64,
    applied_entries: u64,
    suffix_truncations: u64,
    messages_dropped: u64,
    partitions: u64,
    pauses: u64,
    log_fetches: u64,
    compactions: u64,
    snapshots_restored: u64,
    /// Configuration changes applied somewhere (membership runs only).
    conf_changes: u64,
    /// Nodes that joined the group as learners (membership runs only).
    joins: u64,
    /// Times a leader went quiet (quiet runs only).
    quiet_spells: u64,
    /// Quiet replicas woken because a member's liveness changed (quiet runs only).
    woken_by_liveness: u64,
    /// Quiet spells a leader began with a voter of its group down.
    quiet_past_down: u64,
    /// Leaders of a quiet group lost for good after healing (quiet runs only).
    quiet_leaders_lost: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.crashes += other.crashes;
        self.elections += other.elections;
        self.applied_entries += other.applied_entries;
        self.suffix_truncations += other.suffix_truncations;
        self.messages_dropped += other.messages_dropped;
        self.partitions += other.partitions;
        self.pauses += other.pauses;
        self.log_fetches += other.log_fetches;
        self.compactions += other.compactions;
        self.snapshots_restored += other.snapshots_restored;
        self.conf_changes += other.conf_changes;
        self.joins += other.joins;
        self.quiet_spells += other.quiet_spells;
        self.woken_by_liveness += other.woken_by_liveness;
        self.quiet_past_down += other.quiet_past_down;
        self.quiet_leaders_lost += other.quiet_leaders_lost;
    }
}

/// What survives a crash: the floor of a compacted log, the entries above it, hard state.
#[derive(Default, Clone)]
struct Durable {
    hard_state: HardState,
    below: Below,
    /// Entries from `below.index + 1` on.
    entries: Vec<Entry>,
    /// The configuration in the replica's state file (membership runs; the real replica
    /// writes it when it applies a change, and when it restores a snapshot).
    membership: Option<Membership>,
}

impl Durable {
    fn get(&self, index: u64) -> Option<&Entry> {
        let position = index.checked_sub(self.below.index + 1)?;
        self.entries.get(position as usize)
    }

    /// Drops the entries through `below.index`.
    fn compact(&mut self, below: Below) {
        let count = ((below.index - self.below.index) as usize).min(self.entries.len());
        self.entries.drain(..count);
        self.below = below;
    }

    fn write(&mut self, job: &PersistJob) -> bool {
        let mut truncated = false;
        if let Some(snapshot) = &job.snapshot {
            let metadata = snapshot.get_metadata();
            self.below = Below {
                index: metadata.index,
                term: metadata.term,
                end_offset: snapshot_end_offset(snapshot).expect("a snapshot the store made"),
            };
            self.entries.clear();
            self.membership = Some(Membership {
                conf_state: metadata.get_conf_state().clone(),
                index: snapshot_conf_index(snapshot).max(metadata.index),
            });
        }
        if let Some(first) = job.entries.first() {
            let keep = (first.index - 1 - self.below.index) as usize;
            truncated = keep < self.entries.len();
            self.entries.truncate(keep);
            self.entries.extend(job.entries.iter().cloned());
        }
        if let Some(hard_state) = &job.hard_state {
            self.hard_state = hard_state.clone();
        }
        truncated
    }
}

struct Node {
    id: u64,
    replica: Option<Replica<SimStore>>,
    durable: Durable,
    /// Persist jobs in issue order, each with the step it completes at (non-decreasing).
    disk: VecDeque<(u64, PersistJob)>,
    paused: bool,
    last_applied: u64,
    role: Role,
    /// A replica of the group exists on this node (a spare is none until it joins).
    member: bool,
    /// Removed from the group: never started again.
    retired: bool,
}

struct Mail {
    deliver_at: u64,
    from: u64,
    to: u64,
    message: Message,
    /// Sent marked quiet (a quiet group's heartbeat or answer), as a node marks it.
    quiet: bool,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    owner: Owner,
    store_kind: StoreKind,
    now: u64,
    voters: Vec<u64>,
    nodes: Vec<Node>,
    network: Vec<Mail>,
    /// Directed links that drop everything.
    cut: HashSet<(u64, u64)>,
    leaders: HashMap<u64, u64>,
    /// Every entry applied anywhere: index -> (term, data, highest term in the group then).
    applied: BTreeMap<u64, (u64, Bytes, u64)>,
    next_proposal: u64,
    /// Membership changes are proposed (spare nodes join, learners are promoted, voters
    /// demoted, replaced in joint changes, learners removed).
    membership_changes: bool,
    /// Idle groups go quiet (`Replica::tick_quietly`), proposals come in bursts so that they
    /// do, and each node wakes its quiet replica when a member's liveness changes as it sees
    /// it (up, not paused, its link to this node not cut).
    quiet_groups: bool,
    /// Per node: the peers it saw live at its last tick.
    live_seen: Vec<HashSet<u64>>,
    stats: Stats,
}

type Check = Result<(), String>;

fn config() -> ReplicaConfig {
    ReplicaConfig {
        election_ticks: 10,
        election_jitter_ticks: 1,
        heartbeat_ticks: 2,
        max_bytes_per_message: 4096,
        max_inflight_messages: 16,
        quiet_after_ticks: 4,
    }
}

impl Sim {
    fn with_membership(
        seed: u64,
        owner: Owner,
        store_kind: StoreKind,
        membership_changes: bool,
    ) -> Sim {
        assert!(
            !membership_changes || store_kind == StoreKind::Partition,
            "only the partition store keeps a replica's configuration across restarts"
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let count = if rng.gen_bool(0.25) { 5 } else { 3 };
        let voters: Vec<u64> = (1..=count).collect();
        let mut sim = Sim {
            seed,
            rng,
            owner,
            store_kind,
            now: 0,
            voters: voters.clone(),
            nodes: Vec::new(),
            network: Vec::new(),
            cut: HashSet::new(),
            leaders: HashMap::new(),
            applied: BTreeMap::new(),
            next_proposal: 0,
            membership_changes,
            quiet_groups: false,
            live_seen: Vec::new(),
            stats: Stats::default(),
        };
        let spares = if membership_changes { 2 } else { 0 };
        for id in 1..=count + spares {
            let member = id <= count;
            let mut node = Node {
                id,
                replica: None,
                durable: Durable {
                    membership: member.then(|| Membership::voters(&voters)),
                    ..Durable::default()
                },
                disk: VecDeque::new(),
                paused: false,
                last_applied: 0,
                role: Role::Follower,
                member,
                retired: false,
            };
            if member {
                node.replica = Some(sim.start(&node));
            }
            sim.nodes.push(node);
        }
        sim
    }

    /// Whether `node` runs a replica when it is up: a member not removed.
    fn startable(node: &Node) -> bool {
        node.member && !node.retired
    }

    /// A replica over what `node` holds durably, as a restarted process would open it.
    fn start(&self, node: &Node) -> Replica<SimStore> {
        let storage = match self.store_kind {
            StoreKind::Memory => {
                let mut storage =
                    MemStorage::new_with_conf_state(ConfState::from((self.voters.clone(), vec![])));
                storage.put_hard_state(&node.durable.hard_state);
                storage
                    .put_entries(&node.durable.entries)
                    .expect("durable entries are contiguous");
                SimStore::Memory(storage)
            }
            StoreKind::Partition => SimStore::Partition(Box::new(
                PartitionStore::from_entries_after_as(
                    node.durable
                        .membership
                        .as_ref()
                        .expect("a member's configuration"),
                    node.durable.hard_state.clone(),
                    node.durable.below,
                    &node.durable.entries,
                    1 << 20,
                )
                .expect("durable entries are whole batches"),
            )),
        };
        Replica::new(node.id, config(), storage, 0, &discard_logger()).expect("replica starts")
    }

    /// Each node's state, for a failure message.
    fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.replica {
                Some(r) => format!(
                    "node {}: {:?} term {} leader {} commit {} last {} applied {} disk {}{}",
                    n.id,
                    r.role(),
                    r.term(),
                    r.leader_id(),
                    r.commit_index(),
                    r.last_index(),
                    n.last_applied,
                    n.disk.len(),
                    if n.paused { " paused" } else { "" }
                ),
                None if n.retired => format!("node {}: removed", n.id),
                None if !n.member => format!("node {}: spare", n.id),
                None => format!("node {}: down", n.id),
            })
            .collect();
        format!(
            "{}; {} messages in flight",
            nodes.join("; "),
            self.network.len()
        )
    }

    fn fail(&self, what: String) -> String {
        format!("seed {}, step {}: {what}", self.seed, self.now)
    }

    fn max_term(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(|r| r.term()))
            .chain(self.nodes.iter().map(|n| n.durable.hard_state.term))
            .max()
            .unwrap_or(0)
    }

    fn inject_faults(&mut self) {
        let count = self.nodes.len();
        let pick = self.rng.gen_range(0..count);
        let roll: f64 = self.rng.gen();
        if roll < 0.006 {
            let node = &mut self.nodes[pick];
            if node.replica.is_some() {
                node.replica = None;
                node.disk.clear();
                node.paused = false;
                // A restarted replica applies again from its floor.
                node.last_applied = node.durable.below.index;
                node.role = Role::Follower;
                self.stats.crashes += 1;
            }
        } else if roll < 0.05 {
            if self.nodes[pick].replica.is_none() && Self::startable(&self.nodes[pick]) {
                let replica = self.start(&self.nodes[pick]);
                self.nodes[pick].replica = Some(replica);
            }
        } else if roll < 0.056 {
            if !self.nodes[pick].paused && self.nodes[pick].replica.is_some() {
                self.nodes[pick].paused = true;
                self.stats.pauses += 1;
            }
        } else if roll < 0.08 {
            self.nodes[pick].paused = false;
        } else if roll < 0.09 {
            // Split the nodes in two random sides.
            self.cut.clear();
            let side: Vec<bool> = (0..count).map(|_| self.rng.gen_bool(0.5)).collect();
            for a in 0..count {
                for b in 0..count {
                    if side[a] != side[b] {
                        self.cut.insert((a as u64 + 1, b as u64 + 1));
                    }
                }
            }
            self.stats.partitions += 1;
        } else if roll < 0.095 {
            // One direction of one link only.
            let other = self.rng.gen_range(0..count);
            if other != pick {
                self.cut.insert((pick as u64 + 1, other as u64 + 1));
                self.stats.partitions += 1;
            }
        } else if roll < 0.12 {
            self.cut.clear();
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        for index in 0..self.nodes.len() {
            self.nodes[index].paused = false;
            if self.nodes[index].replica.is_none() && Self::startable(&self.nodes[index]) {
                let replica = self.start(&self.nodes[index]);
                self.nodes[index].replica = Some(replica);
            }
        }
    }

    fn send(&mut self, from: u64, messages: Vec<Message>, lossy: bool) {
        let sender_quiet = self.nodes[(from - 1) as usize]
            .replica
            .as_ref()
            .is_some_and(|r| r.is_quiet());
        for message in messages {
            let to = message.to;
            let quiet = sender_quiet
                && matches!(
                    message.get_msg_type(),
                    raft::eraftpb::MessageType::MsgHeartbeat
                        | raft::eraftpb::MessageType::MsgHeartbeatResponse
                );
            if self.cut.contains(&(from, to)) || (lossy && self.rng.gen_bool(0.05)) {
                self.stats.messages_dropped += 1;
                continue;
            }
            let delay = if lossy && self.rng.gen_bool(0.05) {
                self.rng.gen_range(5..30)
            } else {
                self.rng.gen_range(0..3)
            };
            if lossy && self.rng.gen_bool(0.02) {
                self.network.push(Mail {
                    deliver_at: self.now + self.rng.gen_range(0..10),
                    from,
                    to,
                    message: message.clone(),
                    quiet,
                });
            }
            self.network.push(Mail {
                deliver_at: self.now + delay,
                from,
                to,
                message,
                quiet,
            });
        }
    }

    fn propose(&mut self) {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let node = &self.nodes[i];
                !node.paused && node.replica.as_ref().map(|r| r.role()) == Some(Role::Leader)
            })
            .collect();
        if leaders.is_empty() {
            return;
        }
        let index = leaders[self.rng.gen_range(0..leaders.len())];
        self.next_proposal += 1;
        let data = self.payload(&format!(
            "seed {} proposal {}",
            self.seed, self.next_proposal
        ));
        let replica = self.nodes[index].replica.as_mut().expect("leader is up");
        // A proposal a leader drops is a client's retry, not an error.
        let _ = replica.propose(data);
    }

    /// One live node compacts its log to a point at or a little below what it applied (and
    /// holds durably): its store's window and its durable log lose the entries through it.
    fn compact_one(&mut self) {
        let pick = self.rng.gen_range(0..self.nodes.len());
        let back = self.rng.gen_range(0..4);
        let node = &mut self.nodes[pick];
        let durable_last = node.durable.below.index + node.durable.entries.len() as u64;
        let target = node.last_applied.saturating_sub(back).min(durable_last);
        if target <= node.durable.below.index {
            return;
        }
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let SimStore::Partition(store) = replica.storage_mut() else {
            return;
        };
        if let Some(below) = store.compact_through(target) {
            node.durable.compact(below);
            self.stats.compactions += 1;
        }
    }

    /// A proposal's data: a record batch holding `text` (the partition store takes batches).
    fn payload(&self, text: &str) -> Bytes {
        build_batch(0, &[(0, b"k", text.as_bytes())]).into()
    }

    /// The partition store's owner duties: answer raft-rs's requests for evicted entries from
    /// the durable entries (the log), then evict what every replica has and what is over the
    /// budget. True if raft-rs got entries back (it may have more to do).
    fn serve_partition_store(&mut self, index: usize) -> bool {
        let node = &mut self.nodes[index];
        let applied = node.last_applied;
        let Some(replica) = node.replica.as_mut() else {
            return false;
        };
        let min_matched = replica.min_matched();
        let SimStore::Partition(store) = replica.storage_mut() else {
            return false;
        };
        let fetches = store.take_fetches();
        let served = !fetches.is_empty();
        for fetch in fetches {
            let mut filled = Vec::new();
            let mut size = 0u64;
            for i in fetch.low..fetch.high {
                let Some(entry) = node.durable.get(i) else {
                    break;
                };
                let SimStore::Partition(store) = replica.storage_mut() else {
                    unreachable!()
                };
                if store.fill(i, entry.data.clone()) {
                    filled.push(i);
                }
                size += entry.data.len() as u64;
                if size >= fetch.max_size {
                    break;
                }
            }
            replica.entries_fetched(fetch.context);
            let SimStore::Partition(store) = replica.storage_mut() else {
                unreachable!()
            };
            self.stats.log_fetches += filled.len() as u64;
            for i in filled {
                store.forget(i);
            }
        }
        let SimStore::Partition(store) = replica.storage_mut() else {
            unreachable!()
        };
        store.evict_through(applied.min(min_matched.unwrap_or(applied)));
        store.evict_to_budget(applied, SIM_DATA_BUDGET);
        served
    }

    /// Runs every live, unpaused node's pending work to quiescence.
    fn drive(&mut self, lossy: bool) -> Check {
        for index in 0..self.nodes.len() {
            self.drive_node(index, lossy)?;
        }
        Ok(())
    }

    fn drive_node(&mut self, index: usize, lossy: bool) -> Check {
        loop {
            let node = &mut self.nodes[index];
            if node.paused {
                return Ok(());
            }
            let Some(replica) = node.replica.as_mut() else {
                return Ok(());
            };
            let progress = match replica.advance() {
                Ok(Some(progress)) => progress,
                Ok(None) => {
                    if self.store_kind == StoreKind::Partition && self.serve_partition_store(index)
                    {
                        continue;
                    }
                    return Ok(());
                }
                Err(e) => return Err(self.fail(format!("node {} advance: {e}", index + 1))),
            };
            self.handle(index, progress, lossy)?;
        }
    }

    fn handle(&mut self, index: usize, progress: Progress, lossy: bool) -> Check {
        let id = self.nodes[index].id;
        let Progress {
            send,
            mut persist,
            committed,
            role_changed,
            conf_changed,
            ..
        } = progress;
        if let Some((conf_index, conf_state)) = conf_changed {
            self.configuration_applied(index, conf_index, conf_state);
        }
        if let Some((role, term, _)) = role_changed {
            self.nodes[index].role = role;
            if role == Role::Leader {
                self.stats.elections += 1;
                self.check_leader_completeness(index, term)?;
            }
        }
        self.send(id, send, lossy);
        if self.owner == Owner::AcknowledgesBeforePersisting {
            let early = std::mem::take(&mut persist.send_after);
            self.send(id, early, lossy);
        }
        let ready_at = self.nodes[index]
            .disk
            .back()
            .map_or(self.now, |(at, _)| *at)
            .max(self.now + self.rng.gen_range(0..3));
        self.nodes[index].disk.push_back((ready_at, persist));
        for entry in committed {
            self.apply(index, entry)?;
        }
        Ok(())
    }

    /// Node `index` applied a configuration change: its state file takes it at once (as the
    /// real replica's does), a spare it adds starts as that configuration's replica (the join
    /// point the controller hands a new replica), a node it drops is removed for good.
    fn configuration_applied(&mut self, index: usize, conf_index: u64, conf_state: ConfState) {
        self.stats.conf_changes += 1;
        let listed = |id: u64| {
            conf_state.voters.contains(&id)
                || conf_state.learners.contains(&id)
                || conf_state.voters_outgoing.contains(&id)
                || conf_state.learners_next.contains(&id)
        };
        let membership = Membership {
            conf_state: conf_state.clone(),
            index: conf_index,
        };
        self.nodes[index].durable.membership = Some(membership.clone());
        for other in 0..self.nodes.len() {
            let node = &self.nodes[other];
            if node.retired {
                continue;
            }
            if !node.member && listed(node.id) {
                self.nodes[other].member = true;
                self.nodes[other].durable.membership = Some(membership.clone());
                let replica = self.start(&self.nodes[other]);
                self.nodes[other].replica = Some(replica);
                self.stats.joins += 1;
            } else if node.member && !listed(node.id) {
                let node = &mut self.nodes[other];
                node.retired = true;
                node.replica = None;
                node.disk.clear();
                node.paused = false;
            }
        }
    }

    /// The leader, when no change is pending, proposes one: a spare joins as a learner, a
    /// learner is promoted, a voter (not itself) is demoted while more than three vote, a
    /// voter is replaced by a learner in one joint change, or a learner is removed.
    fn propose_conf_change(&mut self) {
        let Some(index) = (0..self.nodes.len()).find(|&i| {
            let node = &self.nodes[i];
            !node.paused
                && node
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && !r.has_pending_conf())
        }) else {
            return;
        };
        let leader = self.nodes[index].id;
        let conf = self.nodes[index]
            .replica
            .as_ref()
            .expect("leader is up")
            .conf_state();
        let spare = self
            .nodes
            .iter()
            .find(|n| !n.member && !n.retired)
            .map(|n| n.id);
        let learner = (!conf.learners.is_empty())
            .then(|| conf.learners[self.rng.gen_range(0..conf.learners.len())]);
        let others: Vec<u64> = conf
            .voters
            .iter()
            .copied()
            .filter(|v| *v != leader)
            .collect();
        let voter = (!others.is_empty()).then(|| others[self.rng.gen_range(0..others.len())]);
        let single = |kind: ConfChangeType, node: u64| {
            let mut change = ConfChangeSingle::default();
            change.set_change_type(kind);
            change.node_id = node;
            change
        };
        let changes = match (self.rng.gen_range(0..5), spare, learner, voter) {
            (0, Some(spare), _, _) => vec![single(ConfChangeType::AddLearnerNode, spare)],
            (1, _, Some(learner), _) => vec![single(ConfChangeType::AddNode, learner)],
            (2, _, _, Some(voter)) if conf.voters.len() > 3 => {
                vec![single(ConfChangeType::AddLearnerNode, voter)]
            }
            (3, _, Some(learner), Some(voter)) => vec![
                single(ConfChangeType::AddNode, learner),
                single(ConfChangeType::AddLearnerNode, voter),
            ],
            (4, _, Some(learner), _) if self.rng.gen_bool(0.3) => {
                vec![single(ConfChangeType::RemoveNode, learner)]
            }
            _ => return,
        };
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Auto);
        change.set_changes(changes.into());
        let replica = self.nodes[index].replica.as_mut().expect("leader is up");
        // A change the leader refuses (one already pending by then) is simply not made.
        let _ = replica.propose_conf_change(change);
    }

    fn apply(&mut self, index: usize, entry: Entry) -> Check {
        let node = &mut self.nodes[index];
        if entry.index != node.last_applied + 1 {
            return Err(self.fail(format!(
                "node {} applied index {} after {}",
                index + 1,
                entry.index,
                self.nodes[index].last_applied
            )));
        }
        node.last_applied = entry.index;
        let max_term = self.max_term();
        match self.applied.get(&entry.index) {
            Some((term, data, _)) if *term == entry.term && *data == entry.data => {}
            Some((term, data, _)) => {
                return Err(self.fail(format!(
                    "node {} applied index {} as term {} {:?}, elsewhere term {} {:?}",
                    index + 1,
                    entry.index,
                    entry.term,
                    entry.data,
                    term,
                    data
                )))
            }
            None => {
                self.stats.applied_entries += 1;
                self.applied
                    .insert(entry.index, (entry.term, entry.data.clone(), max_term));
            }
        }
        Ok(())
    }

    fn complete_disk_jobs(&mut self, lossy: bool) -> Check {
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused || self.nodes[index].replica.is_none() {
                continue;
            }
            while let Some((at, _)) = self.nodes[index].disk.front() {
                if *at > self.now {
                    break;
                }
                let (_, job) = self.nodes[index].disk.pop_front().expect("front exists");
                if let Some(snapshot) = &job.snapshot {
                    let (at, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
                    if self.applied.get(&at).map(|(t, _, _)| *t) != Some(term) {
                        return Err(self.fail(format!(
                            "node {} restored a snapshot at index {at} term {term}, which no \
                             replica applied",
                            index + 1
                        )));
                    }
                    // The snapshot is the state machine through its index.
                    let node = &mut self.nodes[index];
                    node.last_applied = node.last_applied.max(at);
                    self.stats.snapshots_restored += 1;
                }
                if self.nodes[index].durable.write(&job) {
                    self.stats.suffix_truncations += 1;
                }
                let id = self.nodes[index].id;
                let replica = self.nodes[index].replica.as_mut().expect("node is up");
                replica.persisted(job.number);
                self.send(id, job.send_after, lossy);
            }
            self.drive_node(index, lossy)?;
        }
        Ok(())
    }

    fn deliver(&mut self, lossy: bool) -> Check {
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            let mail = &self.network[index];
            let to = (mail.to - 1) as usize;
            if mail.deliver_at <= self.now && !self.nodes[to].paused {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        // swap_remove scrambles arrival order a little more; sort by time then shuffle ties.
        due.sort_by_key(|mail| mail.deliver_at);
        for mail in due {
            let to = (mail.to - 1) as usize;
            let Some(replica) = self.nodes[to].replica.as_mut() else {
                continue;
            };
            let _ = mail.from;
            // A message for a stale term or unknown peer is refused inside raft-rs; fine.
            let _ = if mail.quiet {
                let live = self.live_seen.get(to);
                replica.receive_quiet(mail.message, &|peer| {
                    live.is_some_and(|live| live.contains(&peer))
                })
            } else {
                replica.receive(mail.message)
            };
            self.drive_node(to, lossy)?;
        }
        Ok(())
    }

    fn tick(&mut self, lossy: bool) -> Check {
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                continue;
            }
            // Clocks drift (raft-rs's own election jitter is off: it is not seedable), and
            // sometimes jump.
            let ticks = if self.rng.gen_bool(0.15) {
                0
            } else if lossy && self.rng.gen_bool(0.01) {
                2
            } else {
                1
            };
            if self.nodes[index].replica.is_none() {
                continue;
            }
            if self.quiet_groups {
                self.tick_quietly(index, ticks);
            } else {
                let replica = self.nodes[index].replica.as_mut().expect("up");
                for _ in 0..ticks {
                    replica.tick();
                }
            }
            self.drive_node(index, lossy)?;
        }
        Ok(())
    }

    /// Node `index`'s tick in a quiet run: it sees which peers are live (as node-level
    /// keep-alives would tell it: up, not paused, their link to it not cut), wakes its replica
    /// if a member's liveness changed, then ticks it quietly.
    fn tick_quietly(&mut self, index: usize, ticks: u32) {
        let me = self.nodes[index].id;
        let live: HashSet<u64> = self
            .nodes
            .iter()
            .filter(|n| n.id != me && n.replica.is_some() && !n.paused)
            .filter(|n| !self.cut.contains(&(n.id, me)))
            .map(|n| n.id)
            .collect();
        if self.live_seen.len() < self.nodes.len() {
            self.live_seen.resize(self.nodes.len(), HashSet::new());
        }
        let changed: Vec<u64> = live
            .symmetric_difference(&self.live_seen[index])
            .copied()
            .collect();
        let others: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| *id != me)
            .collect();
        let replica = self.nodes[index].replica.as_mut().expect("up");
        for peer in changed {
            let was_quiet = replica.is_quiet();
            replica.wake_if_member(peer);
            if was_quiet && !replica.is_quiet() {
                self.stats.woken_by_liveness += 1;
            }
        }
        for _ in 0..ticks {
            let was_quiet = replica.is_quiet();
            replica.tick_quietly(&|peer| live.contains(&peer));
            if !was_quiet && replica.is_quiet() {
                self.stats.quiet_spells += 1;
                let down_voter = others
                    .iter()
                    .any(|id| replica.is_voter(*id) && !live.contains(id));
                if replica.role() == Role::Leader && down_voter {
                    self.stats.quiet_past_down += 1;
                }
            }
        }
        self.live_seen[index] = live;
    }

    /// Quiet runs, once healed: waits for the group to go quiet on every replica, then
    /// crashes its leader for good. Only the followers' liveness wake-up can then elect
    /// another, which the final proposal needs.
    fn lose_a_quiet_leader(&mut self) -> Check {
        for _ in 0..1_000 {
            self.step(false)?;
            let up: Vec<&Replica<SimStore>> = self
                .nodes
                .iter()
                .filter_map(|n| n.replica.as_ref())
                .collect();
            if up.len() == self.nodes.len() && up.iter().all(|r| r.is_quiet()) {
                let leader = self
                    .nodes
                    .iter_mut()
                    .find(|n| n.replica.as_ref().is_some_and(|r| r.role() == Role::Leader));
                if let Some(node) = leader {
                    node.replica = None;
                    node.retired = true;
                    self.stats.quiet_leaders_lost += 1;
                }
                return Ok(());
            }
        }
        Ok(())
    }

    fn check_leader_completeness(&self, index: usize, term: u64) -> Check {
        let storage = self.nodes[index].replica.as_ref().expect("up").storage();
        for (&entry_index, (entry_term, data, max_term_then)) in &self.applied {
            if *max_term_then >= term {
                continue;
            }
            // Compacted entries: the floor's term must match; those below it went with it.
            let first = storage.first_index().expect("first index");
            if entry_index + 1 < first {
                continue;
            }
            if entry_index + 1 == first {
                if storage.term(entry_index).ok() != Some(*entry_term) {
                    return Err(self.fail(format!(
                        "node {} leads term {term} with its floor at {entry_index} of another \
                         term than the applied entry's ({entry_term})",
                        index + 1
                    )));
                }
                continue;
            }
            // Evicted data is in the durable log (checked at the end); the term must match.
            match entry_at(storage, entry_index) {
                Some((held_term, held_data))
                    if held_term == *entry_term && held_data.as_ref().is_none_or(|d| d == data) => {
                }
                other => {
                    return Err(self.fail(format!(
                        "node {} leads term {term} without applied entry {entry_index} \
                         (term {entry_term}); it holds {:?}",
                        index + 1,
                        other.map(|e| e.0)
                    )))
                }
            }
        }
        Ok(())
    }

    fn check_invariants(&mut self) -> Check {
        for index in 0..self.nodes.len() {
            let Some(replica) = self.nodes[index].replica.as_ref() else {
                continue;
            };
            if replica.role() == Role::Leader {
                let term = replica.term();
                let id = self.nodes[index].id;
                if let Some(other) = self.leaders.insert(term, id) {
                    if other != id {
                        return Err(self.fail(format!("term {term} has leaders {other} and {id}")));
                    }
                }
            }
        }
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (Some(ra), Some(rb)) = (&self.nodes[a].replica, &self.nodes[b].replica) else {
                    continue;
                };
                check_log_matching(ra.storage(), rb.storage())
                    .map_err(|e| self.fail(format!("nodes {} and {}: {e}", a + 1, b + 1)))?;
            }
        }
        Ok(())
    }

    fn step(&mut self, lossy: bool) -> Check {
        self.now += 1;
        if lossy {
            self.inject_faults();
        }
        // Quiet runs propose in bursts, with idle stretches between them for groups to go
        // quiet in.
        let proposing = if self.quiet_groups {
            (self.now / 40).is_multiple_of(3) && self.rng.gen_bool(0.5)
        } else {
            self.rng.gen_bool(0.3)
        };
        if proposing {
            self.propose();
        }
        if self.membership_changes && lossy && self.rng.gen_bool(0.02) {
            self.propose_conf_change();
        }
        if self.store_kind == StoreKind::Partition && self.rng.gen_bool(0.05) {
            self.compact_one();
        }
        self.drive(lossy)?;
        self.tick(lossy)?;
        self.deliver(lossy)?;
        self.complete_disk_jobs(lossy)?;
        self.check_invariants()
    }

    fn run(mut self) -> Result<Stats, String> {
        for _ in 0..FAULTY_STEPS {
            self.step(true)?;
        }
        self.heal();
        if self.quiet_groups {
            self.lose_a_quiet_leader()?;
        }
        // Settle: a fresh proposal applied everywhere. A leader that lost its term before the
        // proposal committed drops it, as a client's request times out: propose again.
        let final_proposal = self.payload(&format!("seed {} final", self.seed));
        let final_index = loop {
            if (self.now - FAULTY_STEPS) % 100 == 1 {
                if let Some(leader) = self
                    .nodes
                    .iter_mut()
                    .filter_map(|n| n.replica.as_mut())
                    .find(|r| r.role() == Role::Leader)
                {
                    let _ = leader.propose(final_proposal.clone());
                }
            }
            self.step(false)?;
            let final_index = self
                .applied
                .iter()
                .find(|(_, (_, data, _))| *data == final_proposal)
                .map(|(index, _)| *index);
            if let Some(final_index) = final_index {
                if self
                    .nodes
                    .iter()
                    .filter(|n| Self::startable(n))
                    .all(|n| n.last_applied >= final_index)
                {
                    break final_index;
                }
            }
            if self.now > FAULTY_STEPS + SETTLE_STEPS_MAX {
                return Err(self.fail(format!(
                    "final proposal not applied everywhere after healing: {}",
                    self.describe()
                )));
            }
        };
        // Every entry applied anywhere is, unchanged, on the durable log of every replica (up
        // to the final proposal, which all have applied) or of a majority (after it).
        // (After it, a majority of the voters: learners need not hold what just committed.)
        let members: Vec<&Node> = self.nodes.iter().filter(|n| Self::startable(n)).collect();
        let voters: Vec<u64> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .find(|r| r.role() == Role::Leader)
            .map_or_else(|| self.voters.clone(), |r| r.conf_state().voters);
        let majority = voters.len() / 2 + 1;
        for (&index, (term, data, _)) in &self.applied {
            let holders = members
                .iter()
                .filter(|node| index <= final_index || voters.contains(&node.id))
                .filter(|node| {
                    // Below a floor counts as held: the floor's term was checked when set.
                    index <= node.durable.below.index
                        || matches!(node.durable.get(index),
                            Some(entry) if entry.term == *term && entry.data == *data)
                })
                .count();
            let needed = if index <= final_index {
                members.len()
            } else {
                majority
            };
            if holders < needed {
                return Err(self.fail(format!(
                    "applied entry {index} (term {term}) is on {holders} durable logs, not \
                     {needed}; {}",
                    self.describe()
                )));
            }
        }
        Ok(self.stats)
    }
}

/// The term of entry `index`, and its data when in memory (the partition store evicts).
fn entry_at(storage: &SimStore, index: u64) -> Option<(u64, Option<Bytes>)> {
    let first = storage.first_index().ok()?;
    let last = Storage::last_index(storage).ok()?;
    if index < first || index > last {
        return None;
    }
    let term = storage.term(index).ok()?;
    let data = storage
        .entries(index, index + 1, None, GetEntriesContext::empty(false))
        .ok()
        .and_then(|mut e| e.pop())
        .map(|e| e.data);
    Some((term, data))
}

/// Every entry's term, with its data where one read gets all of it (the in-memory store; the
/// partition store's log matching is checked on terms, its data at apply and at the end).
/// The first index held (after the floor), then every entry's term, with its data where one
/// read gets all of it (the in-memory store; the partition store's log matching is checked on
/// terms, its data at apply and at the end).
fn all_entries(storage: &SimStore) -> (u64, Vec<(u64, Option<Bytes>)>) {
    let first = storage.first_index().expect("first index");
    let last = Storage::last_index(storage).expect("last index");
    if last < first {
        return (first, Vec::new());
    }
    if let SimStore::Memory(memory) = storage {
        let entries = memory
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .expect("entries in range");
        return (
            first,
            entries
                .into_iter()
                .map(|e| (e.term, Some(e.data)))
                .collect(),
        );
    }
    (
        first,
        (first..=last)
            .map(|i| (storage.term(i).expect("term in range"), None))
            .collect(),
    )
}

/// Log matching over the indexes both replicas still hold (each may have compacted a prefix).
fn check_log_matching(a: &SimStore, b: &SimStore) -> Result<(), String> {
    let ((a_first, a), (b_first, b)) = (all_entries(a), all_entries(b));
    let from = a_first.max(b_first);
    let to = (a_first + a.len() as u64).min(b_first + b.len() as u64);
    let at = |log: &Vec<(u64, Option<Bytes>)>, first: u64, index: u64| {
        log[(index - first) as usize].clone()
    };
    let Some(highest_match) = (from..to)
        .rev()
        .find(|&i| at(&a, a_first, i).0 == at(&b, b_first, i).0)
    else {
        return Ok(());
    };
    for i in from..=highest_match {
        let (x, y) = (at(&a, a_first, i), at(&b, b_first, i));
        let data_differs = matches!((&x.1, &y.1), (Some(p), Some(q)) if p != q);
        if x.0 != y.0 || data_differs {
            return Err(format!(
                "both hold term {} at index {highest_match} but differ at index {i}",
                at(&a, a_first, highest_match).0,
            ));
        }
    }
    Ok(())
}

/// Runs one seed; a panic inside raft-rs (its own consistency checks) counts as a violation.
fn run_seed(seed: u64, owner: Owner, store_kind: StoreKind) -> Result<Stats, String> {
    run_seed_with(seed, owner, store_kind, false)
}

/// [`run_seed`] with quiet groups (over the partition store).
fn run_quiet_seed(seed: u64) -> Result<Stats, String> {
    run_catching_panics(seed, || {
        let mut sim = Sim::with_membership(seed, Owner::Correct, StoreKind::Partition, false);
        sim.quiet_groups = true;
        sim
    })
}

/// [`run_seed`], with membership changes when `membership_changes`.
fn run_seed_with(
    seed: u64,
    owner: Owner,
    store_kind: StoreKind,
    membership_changes: bool,
) -> Result<Stats, String> {
    run_catching_panics(seed, || {
        Sim::with_membership(seed, owner, store_kind, membership_changes)
    })
}

/// Runs the simulation `make` builds; a panic (raft-rs's own consistency checks) is a
/// violation like any other.
fn run_catching_panics(
    seed: u64,
    make: impl FnOnce() -> Sim + std::panic::UnwindSafe,
) -> Result<Stats, String> {
    std::panic::catch_unwind(move || make().run()).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("seed {seed}: raft-rs panicked: {what}"))
    })
}

fn seeds() -> Vec<u64> {
    seeds_from(0, 1_000)
}

/// The seeds of a test whose seed numbers start at `offset`: `SLUICE_SIM_SEED` (counted from
/// the offset) replays one, `SLUICE_SIM_SEEDS` sets how many, `default_count` otherwise.
fn seeds_from(offset: u64, default_count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("SLUICE_SIM_SEED") {
        return vec![offset + seed.parse::<u64>().expect("SLUICE_SIM_SEED is a number")];
    }
    let count = std::env::var("SLUICE_SIM_SEEDS")
        .map(|n| n.parse().expect("SLUICE_SIM_SEEDS is a number"))
        .unwrap_or(default_count);
    (offset..offset + count).collect()
}

#[test]
fn raft_groups_keep_every_applied_entry_under_seeded_faults() {
    let mut total = Stats::default();
    let seeds = seeds();
    for &seed in &seeds {
        match run_seed(seed, Owner::Correct, StoreKind::Memory) {
            Ok(stats) => total += stats,
            Err(violation) => panic!("{violation} (replay: SLUICE_SIM_SEED={seed})"),
        }
    }
    eprintln!("{} seeds: {total:?}", seeds.len());
    // The faults really happened, and the paths they open were taken.
    if seeds.len() >= 100 {
        assert!(total.crashes > seeds.len() as u64, "{total:?}");
        assert!(total.elections > 2 * seeds.len() as u64, "{total:?}");
        assert!(total.suffix_truncations > 0, "{total:?}");
        assert!(total.partitions > seeds.len() as u64, "{total:?}");
        assert!(total.pauses > 0 && total.messages_dropped > 0, "{total:?}");
        assert!(total.applied_entries > 50 * seeds.len() as u64, "{total:?}");
    }
}

/// The same faults over Sluice's partition store: offsets window, data evicted past a tiny
/// budget and read back (from the durable entries, standing for the log) when raft-rs asks.
#[test]
fn partition_store_groups_keep_every_applied_entry_under_seeded_faults() {
    let mut total = Stats::default();
    let seeds = seeds_from(1_000_000, 500);
    for &seed in &seeds {
        match run_seed(seed, Owner::Correct, StoreKind::Partition) {
            Ok(stats) => total += stats,
            Err(violation) => panic!("{violation} (partition store, seed {seed})"),
        }
    }
    eprintln!("{} seeds over the partition store: {total:?}", seeds.len());
    if seeds.len() >= 100 {
        assert!(
            total.log_fetches > 0,
            "evicted entries were read back: {total:?}"
        );
        assert!(
            total.suffix_truncations > 0 && total.crashes > 0,
            "{total:?}"
        );
        assert!(
            total.compactions > 0 && total.snapshots_restored > 0,
            "replicas compacted, and some caught up through a snapshot: {total:?}"
        );
    }
}

/// The same faults while the group's members change (as partition moves and the
/// controller's voter changes do): spare nodes join as learners from the configuration at the
/// change that added them, learners are promoted, voters demoted or swapped for a learner in
/// one joint change, learners removed; every replica keeps its configuration across crashes
/// (its state file) and restarts from it.
#[test]
fn groups_keep_every_applied_entry_while_their_members_change() {
    let mut total = Stats::default();
    let seeds = seeds_from(2_000_000, 500);
    for &seed in &seeds {
        match run_seed_with(seed, Owner::Correct, StoreKind::Partition, true) {
            Ok(stats) => total += stats,
            Err(violation) => panic!("{violation} (membership changes, seed {seed})"),
        }
    }
    eprintln!("{} seeds with membership changes: {total:?}", seeds.len());
    if seeds.len() >= 100 {
        assert!(
            total.joins > seeds.len() as u64 / 2 && total.conf_changes > seeds.len() as u64,
            "spares joined and configurations changed: {total:?}"
        );
        assert!(
            total.crashes > 0 && total.snapshots_restored > 0,
            "{total:?}"
        );
    }
}

/// The same faults with quiet groups: idle leaders go quiet and their followers with them,
/// and only what each node can see of the others (up, not paused, link not cut) wakes them.
/// Besides every check above, the run's end needs a leader elected and a proposal applied
/// everywhere after healing, which a group left quiet with a dead leader could never do.
#[test]
fn quiet_groups_keep_every_applied_entry_and_wake_when_a_member_goes() {
    let mut total = Stats::default();
    let seeds = seeds_from(3_000_000, 500);
    for &seed in &seeds {
        match run_quiet_seed(seed) {
            Ok(stats) => total += stats,
            Err(violation) => panic!("{violation} (quiet groups, seed {seed})"),
        }
    }
    eprintln!("{} seeds with quiet groups: {total:?}", seeds.len());
    if seeds.len() >= 100 {
        assert!(
            total.quiet_spells > seeds.len() as u64 && total.woken_by_liveness > 0,
            "groups went quiet, and liveness woke some: {total:?}"
        );
        assert!(
            total.quiet_past_down > 0,
            "leaders went quiet past a down voter: {total:?}"
        );
        assert!(
            total.quiet_leaders_lost > seeds.len() as u64 / 2,
            "most runs lost a quiet group's leader for good: {total:?}"
        );
        assert!(
            total.crashes > 0 && total.elections > 2 * seeds.len() as u64,
            "{total:?}"
        );
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let first = run_seed(7, Owner::Correct, StoreKind::Partition).expect("seed 7 passes");
    let second = run_seed(7, Owner::Correct, StoreKind::Partition).expect("seed 7 passes");
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
}

/// The checks are not vacuous: an owner that lets votes and acknowledgements leave before
/// they are durable loses committed entries or elects two leaders, and the simulation says so.
#[test]
fn an_owner_that_acknowledges_before_persisting_is_caught() {
    let caught = (0..2_000u64).find_map(|seed| {
        run_seed(seed, Owner::AcknowledgesBeforePersisting, StoreKind::Memory).err()
    });
    let violation = caught.expect("some seed exposes acknowledging before persisting");
    eprintln!("caught: {violation}");
}
