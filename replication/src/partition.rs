//! One partition's Raft group over its partition log: the log *is* the Raft log.
//!
//! A Raft entry is one whole record batch (what one produce request carried for the
//! partition), appended with `Log::append_copied`, which stamps `baseOffset` from the log end and
//! `partitionLeaderEpoch` = the entry's term. Every replica holds the same prefix of entries, so
//! every replica assigns the same offsets: the bytes on disk are identical on all of them (but
//! where compaction rewrote them, below).
//! Entries raft-rs makes itself are stored as one-record control batches, which consumers skip:
//! a new leader's empty entry as type [`CONTROL_LEADER_CHANGE`] (KRaft's LeaderChange), a
//! configuration change as type [`CONTROL_RAFT_CONF_CHANGE`] with the change as its value. So
//! every Raft index is a batch range at known offsets, and the log alone rebuilds the Raft log.
//!
//! Raft indexes count entries and Kafka offsets count records, so [`PartitionStore`] keeps a
//! window: for every index above `below` (the point raft-rs sees as its snapshot), the entry's
//! term, kind, offset range and data. The hard state (term, vote, commit) and `below` live in the
//! partition directory's `raft-state` file.
//!
//! [`RaftPartition`] is the owner: it ticks, steps, proposes, and performs persist jobs in
//! order, inline: hard state first (written and synced when the term or vote changed), then the
//! entries (truncating a conflicting suffix first), then `wait_durable`; only then does it
//! report the job and release the job's `send_after` messages. The high watermark is the end
//! offset of the last applied (committed) index.
//!
//! The log's prefix is cut by a Raft entry of its own, so every replica cuts at the same
//! offset: the leader proposes a [`CONTROL_LOG_START`] batch (retention, DeleteRecords) and
//! each replica, as it applies it, records the window's new floor (`below`: the last entry
//! ending at or below the new start) in `raft-state`, then moves the log start up
//! (`Log::truncate_prefix`; a reopen finishes a cut a crash interrupted). A follower that needs
//! entries below the leader's floor gets raft-rs's snapshot instead: only `below` (index,
//! term, end offset), no data, because everything below it is below the log start on the
//! leader too. The follower empties its log to start at that offset
//! (`Log::start_over_at`, Kafka's `truncateFullyAndStartAt`) and takes the entries above it
//! as usual. So the window holds the entries of the retained log only.
//!
//! Log compaction (`cleanup.policy=compact`, Kafka's cleaner) runs on each replica on its own,
//! below its commit point, and keeps every batch: one emptied of records stays as an empty
//! batch with its offset range, term and producer fields. So every entry keeps its batch, its
//! offsets and its term: a reopen rebuilds the same window, and a follower that needs evicted
//! entries gets the leader's compacted batches, which it appends as they are
//! (`Log::append_copied`). Replicas' bytes may then differ below their commit points, never
//! their entries' offsets and terms, nor any key's latest record.
//!
//! Invariants: window entry `i` has index `below.index + 1 + i`; entry offsets are contiguous
//! from `below.end_offset`; the log's end offset equals the window's end once every issued
//! persist job has been performed.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use sluice_storage::batch::{build_control_batch, control_record, peek_batch_size, read_header};
use sluice_storage::{BatchInfo, LeaderEpoch, Log, LogConfig, Offset};

use crate::error::{ReplicationError, Result};
use crate::hard_state_log::HardStateLog;
use crate::replica::{PersistJob, Progress, Replica, ReplicaConfig, ReplicaStorage};
use crate::rpc::GroupKey;

/// Control type of the batch standing for a new leader's empty entry (KRaft's LeaderChange).
pub const CONTROL_LEADER_CHANGE: i16 = 2;
/// Control type of the batch holding a Raft configuration change (Sluice's own; clients skip
/// control types they do not know).
pub const CONTROL_RAFT_CONF_CHANGE: i16 = 0x5343;
/// Control type of the batch moving the log start offset of every replica (retention,
/// DeleteRecords); its value is the new start, an i64 big-endian (Sluice's own).
pub const CONTROL_LOG_START: i16 = 0x534C;

/// Where the log starts over for a snapshot [`PartitionStore::snapshot`] made (its data: the
/// floor's end offset, 8 bytes big-endian, then the index of the configuration change its
/// configuration reflects, 8 bytes big-endian, then, for a group whose owner keeps a state
/// machine beside the log (the controller's image), that state as of the floor; snapshots of
/// before the second field have only the first).
pub fn snapshot_end_offset(snapshot: &Snapshot) -> Result<Offset> {
    snapshot
        .data
        .get(..8)
        .filter(|_| snapshot.data.len() == 8 || snapshot.data.len() >= 16)
        .map(|b| Offset(i64::from_be_bytes(b.try_into().expect("8 bytes"))))
        .ok_or_else(|| ReplicationError::BadEntry {
            index: snapshot.get_metadata().index,
            reason: format!(
                "a snapshot carries its end offset and configuration index in 8 or 16 bytes, not {} (an owner's state follows the 16)",
                snapshot.data.len()
            ),
        })
}

/// The index of the configuration change a snapshot's configuration reflects (0: unknown).
pub fn snapshot_conf_index(snapshot: &Snapshot) -> u64 {
    snapshot
        .data
        .get(8..16)
        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// The owner's state carried by a snapshot after its end offset and configuration index
/// (`None`: the group keeps no state beside its log).
pub fn snapshot_state(snapshot: &Snapshot) -> Option<Bytes> {
    (snapshot.data.len() > 16).then(|| snapshot.data.slice(16..))
}

/// A group's configuration as a replica starts it: a new group's voters, or, for a replica
/// joining a running group, the configuration its leader had once it added the replica as a
/// learner, and the index of that change (committed changes up to it are not applied again
/// when the joining replica receives them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Membership {
    pub conf_state: ConfState,
    pub index: u64,
}

impl Membership {
    /// A new group of `voters`.
    pub fn voters(voters: &[u64]) -> Membership {
        Membership {
            conf_state: ConfState::from((voters.to_vec(), vec![])),
            index: 0,
        }
    }
}

/// The batch a leader proposes to move every replica's log start to `offset`.
pub fn log_start_batch(offset: Offset) -> Bytes {
    build_control_batch(0, CONTROL_LOG_START, &offset.0.to_be_bytes()).into()
}

/// The new log start a [`log_start_batch`] carries (`None`: not one).
pub fn log_start_of(batch: &[u8]) -> Option<Offset> {
    match control_record(batch) {
        Some((CONTROL_LOG_START, value)) => {
            Some(Offset(i64::from_be_bytes(value.try_into().ok()?)))
        }
        _ => None,
    }
}

const STATE_FILE: &str = "raft-state";
const STATE_MAGIC: &[u8; 4] = b"SLRS";
/// Version 2 added the `starting_over` flag after the voters, version 3 the rest of the
/// configuration (learners, outgoing voters, learners next, auto-leave) and the index of the
/// change it reflects; version 1 and 2 files still load (voters only, index 0).
const STATE_VERSION: u16 = 3;

/// Everything below the window, as raft-rs sees it: a snapshot at `index` of `term`, the log
/// holding its records up to `end_offset` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Below {
    pub index: u64,
    pub term: u64,
    pub end_offset: Offset,
}

const STATE_SNAPSHOT_FILE: &str = "state-snapshot";
const STATE_SNAPSHOT_MAGIC: &[u8; 4] = b"SLSS";
const STATE_SNAPSHOT_VERSION: u16 = 1;

/// The state an owner keeps beside the log (the controller's image), as of the log up to
/// `below` (every entry through `below.index`, the records below `below.end_offset`): the
/// window may be cut at `below` only once this is durable, and a follower that needs entries
/// below the cut gets it in raft-rs's snapshot. Kept in the partition directory's
/// `state-snapshot` file; opaque bytes to this module.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSnapshot {
    pub below: Below,
    pub data: Bytes,
}

impl StateSnapshot {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 2 + 4 * 8 + self.data.len() + 4);
        out.extend_from_slice(STATE_SNAPSHOT_MAGIC);
        out.extend_from_slice(&STATE_SNAPSHOT_VERSION.to_le_bytes());
        for word in [
            self.below.index,
            self.below.term,
            self.below.end_offset.0 as u64,
            self.data.len() as u64,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8], path: &Path) -> Result<StateSnapshot> {
        let bad = |reason: &str| ReplicationError::BadState {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let header = 4 + 2 + 4 * 8;
        if bytes.len() < header + 4 {
            return Err(bad("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("checksum mismatch"));
        }
        if &body[..4] != STATE_SNAPSHOT_MAGIC {
            return Err(bad("not a state-snapshot file"));
        }
        if u16::from_le_bytes([body[4], body[5]]) != STATE_SNAPSHOT_VERSION {
            return Err(bad("unknown version"));
        }
        let word = |i: usize| {
            let at = 6 + 8 * i;
            u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"))
        };
        if word(3) != (body.len() - header) as u64 {
            return Err(bad("state length does not match the file"));
        }
        Ok(StateSnapshot {
            below: Below {
                index: word(0),
                term: word(1),
                end_offset: Offset(word(2) as i64),
            },
            data: Bytes::copy_from_slice(&body[header..]),
        })
    }

    fn store(&self, dir: &Path) -> Result<()> {
        replace_durably(dir, STATE_SNAPSHOT_FILE, &self.encode())
    }

    fn load(dir: &Path) -> Result<Option<StateSnapshot>> {
        let path = dir.join(STATE_SNAPSHOT_FILE);
        read_if_present(&path)?
            .map(|bytes| StateSnapshot::decode(&bytes, &path))
            .transpose()
    }
}

/// The bytes of the file at `path`; `None` if there is none.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReplicationError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces `dir/name` durably: write a temporary file, sync it, rename, sync the directory.
fn replace_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| ReplicationError::Io {
        path: dir.join(name),
        source: e,
    };
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_data().map_err(io)?;
    std::fs::rename(&temporary, dir.join(name)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[derive(Debug, Clone)]
struct Slot {
    term: u64,
    entry_type: EntryType,
    base_offset: Offset,
    /// One past the entry's last offset.
    end_offset: Offset,
    /// `None` once evicted: the entry is then read back from the log when raft-rs asks.
    data: Option<Bytes>,
}

/// An entries request raft-rs made that the window could not answer from memory: the owner
/// reads entries from `low` (below `high`, about `max_size` bytes) from the log, puts them in
/// with [`PartitionStore::fill`], then tells raft-rs (`Replica::entries_fetched`).
pub struct FetchRequest {
    pub low: u64,
    pub high: u64,
    pub max_size: u64,
    pub context: GetEntriesContext,
}

/// Counters of a partition's window (tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Entries whose data is in memory, and its bytes.
    pub resident_entries: u64,
    pub resident_bytes: u64,
    /// Entries read back from the log (`fill`).
    pub log_fetches: u64,
}

/// A partition replica's Raft storage: hard state, configuration and the window of entries.
pub struct PartitionStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The configuration change `conf_state` reflects (see [`Membership`]).
    conf_index: u64,
    below: Below,
    window: VecDeque<Slot>,
    batch_bytes_max: usize,
    /// Entries at or below this index have had their data evicted (unless fetched since).
    evicted_to: u64,
    resident_bytes: u64,
    fetches: std::cell::RefCell<Vec<FetchRequest>>,
    log_fetches: u64,
    /// The owner's state as of some floor (groups whose owner keeps one: the controller).
    state_snapshot: Option<StateSnapshot>,
}

impl PartitionStore {
    fn slot(&self, index: u64) -> Option<&Slot> {
        let position = index.checked_sub(self.below.index + 1)?;
        self.window.get(usize::try_from(position).ok()?)
    }

    /// The offset after entry `index` (`below.end_offset` for `below.index`).
    pub fn end_offset_of(&self, index: u64) -> Option<Offset> {
        if index == self.below.index {
            return Some(self.below.end_offset);
        }
        self.slot(index).map(|slot| slot.end_offset)
    }

    /// The offsets entry `index` occupies: `[base, end)`.
    pub fn offsets_of(&self, index: u64) -> Option<(Offset, Offset)> {
        self.slot(index).map(|s| (s.base_offset, s.end_offset))
    }

    pub fn last_index(&self) -> u64 {
        self.below.index + self.window.len() as u64
    }

    /// Kafka's `endOffsetFor` over the terms of the log (a batch's leader epoch is the term it
    /// was appended in): the largest term at or below `epoch` and the offset where the next
    /// term begins, `log_end` for the latest term; `epoch` itself with the start of the next
    /// term when the log holds no older one. `None` for an epoch above the latest (Kafka's
    /// UNDEFINED).
    pub fn epoch_end(&self, epoch: u64, log_end: Offset) -> Option<(u64, Offset)> {
        let latest = self.window.back().map_or(self.below.term, |s| s.term);
        if epoch == latest {
            return Some((epoch, log_end));
        }
        // Terms never decrease along the log.
        let higher = self.window.partition_point(|s| s.term <= epoch);
        let next = self.window.get(higher)?;
        let floor = match higher {
            0 if self.below.index > 0 && self.below.term <= epoch => Some(self.below.term),
            0 => None,
            i => Some(self.window[i - 1].term),
        };
        Some((floor.unwrap_or(epoch), next.base_offset))
    }

    pub fn below(&self) -> Below {
        self.below
    }

    fn entry(&self, index: u64, slot: &Slot, data: Bytes) -> Entry {
        Entry {
            entry_type: slot.entry_type,
            term: slot.term,
            index,
            data,
            ..Entry::default()
        }
    }

    pub fn stats(&self) -> WindowStats {
        WindowStats {
            resident_entries: self.window.iter().filter(|s| s.data.is_some()).count() as u64,
            resident_bytes: self.resident_bytes,
            log_fetches: self.log_fetches,
        }
    }

    /// Drops the data of entries from the oldest resident one through `index`: every replica
    /// has them (or the budget says so), and the log holds them.
    pub fn evict_through(&mut self, index: u64) {
        let index = index.min(self.last_index());
        while self.evicted_to < index {
            self.evicted_to += 1;
            self.drop_data(self.evicted_to);
        }
    }

    fn drop_data(&mut self, index: u64) {
        let position = (index - self.below.index - 1) as usize;
        if let Some(data) = self.window[position].data.take() {
            self.resident_bytes -= data.len() as u64;
        }
    }

    /// Evicts the oldest resident entries at or below `applied` until at most `budget` bytes of
    /// data stay in memory.
    pub fn evict_to_budget(&mut self, applied: u64, budget: u64) {
        while self.resident_bytes > budget && self.evicted_to < applied.min(self.last_index()) {
            self.evicted_to += 1;
            self.drop_data(self.evicted_to);
        }
    }

    /// The entries requests raft-rs made since the last call that memory could not answer.
    /// Whether raft-rs asked for entries that must be read back from the log first.
    pub fn has_fetches(&self) -> bool {
        !self.fetches.borrow().is_empty()
    }

    pub fn take_fetches(&self) -> Vec<FetchRequest> {
        std::mem::take(&mut *self.fetches.borrow_mut())
    }

    /// Puts back the data of evicted entry `index` (read from the log). False if the entry is
    /// not in the window or its data is in memory already.
    pub fn fill(&mut self, index: u64, data: Bytes) -> bool {
        let Some(position) = index
            .checked_sub(self.below.index + 1)
            .map(|p| p as usize)
            .filter(|p| *p < self.window.len())
        else {
            return false;
        };
        let slot = &mut self.window[position];
        if slot.data.is_some() {
            return false;
        }
        self.resident_bytes += data.len() as u64;
        slot.data = Some(data);
        self.log_fetches += 1;
        true
    }

    /// Evicts again an entry `fill` put back, once raft-rs has used it.
    pub fn forget(&mut self, index: u64) {
        if index <= self.evicted_to && index > self.below.index && index <= self.last_index() {
            self.drop_data(index);
        }
    }

    /// The window's floor for a log starting at `start`: the last entry ending at or below it,
    /// among those at or below `applied` (`below` itself if none).
    fn floor_for(&self, start: Offset, applied: u64) -> Below {
        let mut floor = self.below;
        for (position, slot) in self.window.iter().enumerate() {
            let index = self.below.index + 1 + position as u64;
            if index > applied || slot.end_offset > start {
                break;
            }
            floor = Below {
                index,
                term: slot.term,
                end_offset: slot.end_offset,
            };
        }
        floor
    }

    /// Drops the entries at or below `floor.index` from the window: raft-rs then sees them as
    /// compacted, and a replica that needs them gets a snapshot at `floor`.
    fn compact_to(&mut self, floor: Below) {
        if floor.index <= self.below.index {
            return;
        }
        let count = ((floor.index - self.below.index) as usize).min(self.window.len());
        for dropped in self.window.drain(..count) {
            if let Some(data) = dropped.data {
                self.resident_bytes -= data.len() as u64;
            }
        }
        self.evicted_to = self.evicted_to.max(floor.index);
        self.below = floor;
    }

    /// Drops the entries through `index` (in the window, at most `applied`) from the window,
    /// as applying a log start cut does; returns the new floor. `None` if `index` is not in
    /// the window. (The deterministic simulation compacts with it.)
    pub fn compact_through(&mut self, index: u64) -> Option<Below> {
        let slot = self.slot(index)?;
        let floor = Below {
            index,
            term: slot.term,
            end_offset: slot.end_offset,
        };
        self.compact_to(floor);
        Some(floor)
    }

    /// A store with no entries above `below`.
    fn empty(membership: &Membership, below: Below, batch_bytes_max: usize) -> PartitionStore {
        PartitionStore {
            hard_state: HardState::default(),
            conf_state: membership.conf_state.clone(),
            conf_index: membership.index,
            below,
            window: VecDeque::new(),
            batch_bytes_max,
            evicted_to: below.index,
            resident_bytes: 0,
            fetches: Default::default(),
            log_fetches: 0,
            state_snapshot: None,
        }
    }

    /// The owner's latest durable state (see [`StateSnapshot`]).
    pub fn state_snapshot(&self) -> Option<&StateSnapshot> {
        self.state_snapshot.as_ref()
    }

    /// A store over `entries` (consecutive from index 1, each one batch or one of Raft's own),
    /// as a replica restarted from them would hold it, every entry's data in memory.
    pub fn from_entries(
        voters: &[u64],
        hard_state: HardState,
        entries: &[Entry],
        batch_bytes_max: usize,
    ) -> Result<PartitionStore> {
        PartitionStore::from_entries_after(
            voters,
            hard_state,
            Below::default(),
            entries,
            batch_bytes_max,
        )
    }

    /// A store over a compacted log: `below`, then `entries` (consecutive from
    /// `below.index + 1`), as a replica restarted from them would hold it.
    pub fn from_entries_after(
        voters: &[u64],
        hard_state: HardState,
        below: Below,
        entries: &[Entry],
        batch_bytes_max: usize,
    ) -> Result<PartitionStore> {
        PartitionStore::from_entries_after_as(
            &Membership::voters(voters),
            hard_state,
            below,
            entries,
            batch_bytes_max,
        )
    }

    /// Like [`from_entries_after`](Self::from_entries_after), with the configuration the
    /// replica's state file holds (a group whose members changed, or a replica that joined).
    pub fn from_entries_after_as(
        membership: &Membership,
        mut hard_state: HardState,
        below: Below,
        entries: &[Entry],
        batch_bytes_max: usize,
    ) -> Result<PartitionStore> {
        let mut store = PartitionStore::empty(membership, below, batch_bytes_max);
        hard_state.commit = hard_state.commit.max(below.index);
        store.hard_state = hard_state;
        store.put_entries(entries)?;
        Ok(store)
    }

    /// How many offsets an entry takes in the log. An entry is exactly one batch (the log
    /// rebuilds one entry per batch on restart).
    fn offsets_taken(&self, entry: &Entry) -> Result<i64> {
        if entry.entry_type != EntryType::EntryNormal || entry.data.is_empty() {
            return Ok(1); // one control record
        }
        let bad = |reason: String| ReplicationError::BadEntry {
            index: entry.index,
            reason,
        };
        let size =
            peek_batch_size(&entry.data, self.batch_bytes_max).map_err(|e| bad(e.to_string()))?;
        if size != entry.data.len() {
            return Err(bad("an entry holds exactly one record batch".into()));
        }
        let info =
            read_header(&entry.data, self.batch_bytes_max).map_err(|e| bad(e.to_string()))?;
        Ok(i64::from(info.last_offset_delta) + 1)
    }
}

/// Calls `visit` with every whole batch of `log` from the one holding `from` on, until a batch
/// starts at or past `to` or `visit` returns false. The batches are slices of the reads.
pub async fn for_each_batch<E: From<ReplicationError>>(
    log: &Log,
    from: Offset,
    to: Offset,
    batch_bytes_max: usize,
    mut visit: impl FnMut(BatchInfo, Bytes) -> std::result::Result<bool, E>,
) -> std::result::Result<(), E> {
    let mut next = from;
    while next < to {
        // Below the log start only the batch holding it can be read (an entry the start cut
        // through: its batch begins below the start).
        let read = log
            .read(next.max(log.log_start_offset()), 1 << 20)
            .await
            .map_err(ReplicationError::from)?;
        if read.bytes.is_empty() {
            return Ok(());
        }
        let mut rest = read.bytes;
        while !rest.is_empty() {
            let corrupt = |e: sluice_storage::BatchError| ReplicationError::CorruptLog {
                offset: next.0,
                reason: e.to_string(),
            };
            let size = peek_batch_size(&rest, batch_bytes_max).map_err(corrupt)?;
            let batch = rest.split_to(size);
            let info = read_header(&batch, batch_bytes_max).map_err(corrupt)?;
            if info.base_offset >= to || !visit(info, batch)? {
                return Ok(());
            }
        }
        next = read.next_offset;
    }
    Ok(())
}

/// The bytes an entry is stored as.
fn batch_bytes_of(entry: &Entry) -> Bytes {
    match entry.entry_type {
        EntryType::EntryNormal if !entry.data.is_empty() => entry.data.clone(),
        EntryType::EntryNormal => build_control_batch(0, CONTROL_LEADER_CHANGE, &[]).into(),
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
            let mut value = Vec::with_capacity(entry.data.len() + 1);
            value.push(entry.entry_type as u8);
            value.extend_from_slice(&entry.data);
            build_control_batch(0, CONTROL_RAFT_CONF_CHANGE, &value).into()
        }
    }
}

/// The entry type and data of a stored batch (the inverse of `batch_bytes_of`).
fn entry_of_batch(batch: Bytes) -> (EntryType, Bytes) {
    match control_record(&batch) {
        Some((CONTROL_LEADER_CHANGE, _)) => (EntryType::EntryNormal, Bytes::new()),
        Some((CONTROL_RAFT_CONF_CHANGE, value)) if !value.is_empty() => {
            let entry_type = if value[0] == EntryType::EntryConfChange as u8 {
                EntryType::EntryConfChange
            } else {
                EntryType::EntryConfChangeV2
            };
            (entry_type, batch.slice_ref(&value[1..]))
        }
        _ => (EntryType::EntryNormal, batch),
    }
}

impl Storage for PartitionStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.below.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut entries = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let slot = self.slot(index).expect("index within the window");
            let Some(data) = slot.data.clone() else {
                if !entries.is_empty() {
                    break; // send what is in memory; the rest comes next time
                }
                if context.can_async() {
                    self.fetches.borrow_mut().push(FetchRequest {
                        low,
                        high,
                        max_size,
                        context,
                    });
                    return Err(raft::Error::Store(
                        RaftStorageError::LogTemporarilyUnavailable,
                    ));
                }
                // Only entries at or below the applied index are evicted, and raft-rs asks
                // synchronously only for entries above it.
                return Err(raft::Error::Store(RaftStorageError::Unavailable));
            };
            size += data.len() as u64 + 32;
            // raft-rs's rule: at least one entry, then stop before exceeding max_size.
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(self.entry(index, slot, data));
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.below.index {
            return Ok(self.below.term);
        }
        if index < self.below.index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        self.slot(index)
            .map(|slot| slot.term)
            .ok_or(raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.below.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(PartitionStore::last_index(self))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Only `below` itself: whatever lies below it is below the log start here too, so a
        // follower needs no data, only where its log starts over.
        if self.below.index == 0 || request_index > self.below.index {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut data = self.below.end_offset.0.to_be_bytes().to_vec();
        data.extend_from_slice(&self.conf_index.to_be_bytes());
        if let Some(state) = &self.state_snapshot {
            // An owner with a state machine: the follower needs it as of the floor (the
            // state is made and made durable before the window is cut to it).
            if state.below != self.below {
                return Err(raft::Error::Store(
                    RaftStorageError::SnapshotTemporarilyUnavailable,
                ));
            }
            data.extend_from_slice(&state.data);
        }
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        let metadata = snapshot.mut_metadata();
        metadata.index = self.below.index;
        metadata.term = self.below.term;
        metadata.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}

impl ReplicaStorage for PartitionStore {
    fn put_entries(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.below.index || first.index > self.last_index() + 1 {
            return Err(ReplicationError::BadEntry {
                index: first.index,
                reason: format!(
                    "does not follow the window ({}..={})",
                    self.below.index + 1,
                    self.last_index()
                ),
            });
        }
        let mut taken = Vec::with_capacity(entries.len());
        for entry in entries {
            taken.push(self.offsets_taken(entry)?);
        }
        let keep = (first.index - self.below.index - 1) as usize;
        for dropped in self.window.drain(keep..) {
            if let Some(data) = dropped.data {
                self.resident_bytes -= data.len() as u64;
            }
        }
        let mut offset = self
            .end_offset_of(first.index - 1)
            .expect("the entry before the first is in the window or below it");
        for (entry, records) in entries.iter().zip(taken) {
            let end_offset = offset.plus(records);
            self.resident_bytes += entry.data.len() as u64;
            self.window.push_back(Slot {
                term: entry.term,
                entry_type: entry.entry_type,
                base_offset: offset,
                end_offset,
                data: Some(entry.data.clone()),
            });
            offset = end_offset;
        }
        Ok(())
    }

    fn put_hard_state(&mut self, hard_state: &HardState) {
        self.hard_state = hard_state.clone();
    }

    fn conf_index(&self) -> u64 {
        self.conf_index
    }

    fn put_conf_state(&mut self, index: u64, conf_state: &ConfState) {
        self.conf_state = conf_state.clone();
        self.conf_index = index;
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        let metadata = snapshot.get_metadata();
        let end_offset = snapshot_end_offset(snapshot)?;
        self.window.clear();
        self.resident_bytes = 0;
        self.below = Below {
            index: metadata.index,
            term: metadata.term,
            end_offset,
        };
        self.evicted_to = metadata.index;
        self.conf_state = metadata.get_conf_state().clone();
        self.conf_index = snapshot_conf_index(snapshot).max(metadata.index);
        if let Some(data) = snapshot_state(snapshot) {
            self.state_snapshot = Some(StateSnapshot {
                below: self.below,
                data,
            });
        }
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        Ok(())
    }
}

/// The `raft-state` file: hard state, the window's lower bound and the configuration.
#[derive(Debug, Clone, PartialEq, Default)]
struct StateFile {
    term: u64,
    vote: u64,
    commit: u64,
    below: Below,
    membership: Membership,
    /// Set while the log is being emptied to start over at `below.end_offset` (a snapshot
    /// restored): a reopen finishes that before anything reads the log.
    starting_over: bool,
}

impl StateFile {
    fn encode(&self) -> Vec<u8> {
        let conf = &self.membership.conf_state;
        let mut out = Vec::with_capacity(128 + 8 * conf.voters.len());
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        for value in [
            self.term,
            self.vote,
            self.commit,
            self.below.index,
            self.below.term,
            self.below.end_offset.0 as u64,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        let mut list = |ids: &[u64]| {
            out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
        };
        list(&conf.voters);
        out.extend_from_slice(&u64::from(self.starting_over).to_le_bytes());
        // Version 3's words: the change index, then the rest of the configuration.
        out.extend_from_slice(&self.membership.index.to_le_bytes());
        let mut list = |ids: &[u64]| {
            out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
        };
        list(&conf.learners);
        list(&conf.voters_outgoing);
        list(&conf.learners_next);
        out.extend_from_slice(&u64::from(conf.auto_leave).to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8], path: &Path) -> Result<StateFile> {
        let bad = |reason: &str| ReplicationError::BadState {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.len() < 4 + 2 + 7 * 8 + 4 {
            return Err(bad("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("checksum mismatch"));
        }
        if &body[..4] != STATE_MAGIC {
            return Err(bad("not a raft-state file"));
        }
        let version = u16::from_le_bytes([body[4], body[5]]);
        if !(1..=STATE_VERSION).contains(&version) {
            return Err(bad("unknown version"));
        }
        let trailing = usize::from(version >= 2);
        let words: Vec<u64> = body[6..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if words.len() < 7 || words.len() < 7 + words[6] as usize + trailing {
            return Err(bad("voter count does not match the length"));
        }
        let voters_end = 7 + words[6] as usize;
        let mut conf_state = ConfState::from((words[7..voters_end].to_vec(), vec![]));
        let mut index = 0;
        let mut at = voters_end + trailing;
        if version >= 3 {
            let mut word = || {
                let value = words.get(at).copied();
                at += 1;
                value.ok_or_else(|| bad("configuration cut short"))
            };
            index = word()?;
            let mut lists: [Vec<u64>; 3] = Default::default();
            for list in &mut lists {
                let count = word()?;
                for _ in 0..count {
                    list.push(word()?);
                }
            }
            let [learners, voters_outgoing, learners_next] = lists;
            conf_state.learners = learners;
            conf_state.voters_outgoing = voters_outgoing;
            conf_state.learners_next = learners_next;
            conf_state.auto_leave = word()? != 0;
        }
        if words.len() != at {
            return Err(bad("configuration does not match the length"));
        }
        Ok(StateFile {
            starting_over: trailing == 1 && words[voters_end] != 0,
            term: words[0],
            vote: words[1],
            commit: words[2],
            below: Below {
                index: words[3],
                term: words[4],
                end_offset: Offset(words[5] as i64),
            },
            membership: Membership { conf_state, index },
        })
    }

    /// Replaces the file durably.
    fn store(&self, dir: &Path) -> Result<()> {
        replace_durably(dir, STATE_FILE, &self.encode())
    }

    fn load(dir: &Path) -> Result<Option<StateFile>> {
        let path = dir.join(STATE_FILE);
        read_if_present(&path)?
            .map(|bytes| StateFile::decode(&bytes, &path))
            .transpose()
    }
}

/// Where a replica keeps its term, vote and commit index.
#[derive(Clone)]
pub enum HardStateHome {
    /// In its own `raft-state` file (replaced, with two syncs, at every vote).
    OwnFile,
    /// In the node executor's shared hard-state log, under `key`: one sync per round for
    /// every group that voted (the `raft-state` file then keeps voters and `below` only).
    Shared { log: HardStateLog, key: GroupKey },
}

/// What came of running a partition's ready work: messages to send, and the entries that
/// became committed (with the offsets their records took), in index order.
#[derive(Debug, Default)]
pub struct Outbox {
    pub messages: Vec<Message>,
    pub committed: Vec<CommittedEntry>,
    /// The log start moved up (a committed [`CONTROL_LOG_START`] entry): the new start.
    pub log_start_moved: Option<Offset>,
    /// The replica restored a leader's snapshot: its log was emptied to start over at this
    /// offset (whatever state the owner derived from the old log is stale).
    pub started_over_at: Option<Offset>,
    /// Answers to [`RaftPartition::read_index`] (the leader's commit index each time).
    pub read_indexes: Vec<u64>,
}

/// An entry now committed (and applied: the high watermark covers it).
#[derive(Debug, Clone)]
pub struct CommittedEntry {
    pub index: u64,
    pub term: u64,
    pub base_offset: Offset,
    /// Where its records end (exclusive).
    pub end_offset: Offset,
    /// The batch a data entry holds; empty for Raft's own entries.
    pub data: Bytes,
}

/// One replica of one partition: its Raft replica over its log.
pub struct RaftPartition {
    replica: Replica<PartitionStore>,
    log: Log,
    dir: PathBuf,
    /// The hard state last written to `raft-state`.
    stored: StateFile,
    home: HardStateHome,
    high_watermark: Offset,
    applied: u64,
    /// Applied entries' data kept in memory beyond what every follower already has.
    data_budget_bytes: u64,
    /// Pipelined persist jobs whose entries are written and whose fdatasync runs in a task of
    /// its own: their outcomes come back here, in any order.
    durable_tx: futures::channel::mpsc::UnboundedSender<Durable>,
    durable_rx: futures::channel::mpsc::UnboundedReceiver<Durable>,
    /// Which finished jobs may be reported to raft-rs yet.
    job_order: JobOrder,
    /// Called when a pipelined job's outcome arrives, so the owner runs the group again.
    wake: Option<Rc<dyn Fn()>>,
}

/// The outcome of a pipelined persist job's fdatasync.
struct Durable {
    number: u64,
    outcome: std::result::Result<(), sluice_storage::StorageError>,
    send_after: Vec<Message>,
}

/// Persist jobs finish out of order once pipelined, but raft-rs must hear of them in order:
/// reporting job n says every job before it is durable, and a job's messages (an
/// acknowledgement up to the replica's last index) may speak for earlier jobs' entries. A
/// finished job is reported, and its messages released, only once every job before it is.
#[derive(Debug, Default)]
struct JobOrder {
    /// Pipelined jobs not durable yet.
    unfinished: std::collections::BTreeSet<u64>,
    /// Finished jobs behind an unfinished one, with the messages they release.
    finished: BTreeMap<u64, Vec<Message>>,
}

impl JobOrder {
    /// No pipelined job is syncing: a job done inline may be reported at once.
    fn idle(&self) -> bool {
        self.unfinished.is_empty()
    }

    fn started(&mut self, number: u64) {
        self.unfinished.insert(number);
    }

    fn finished(&mut self, number: u64, send_after: Vec<Message>) {
        self.unfinished.remove(&number);
        self.finished.insert(number, send_after);
    }

    /// The highest job every job up to which has finished, with the messages those jobs
    /// release in job order; `None` while the earliest job is unfinished.
    fn reportable(&mut self) -> Option<(u64, Vec<Message>)> {
        let limit = self.unfinished.first().copied().unwrap_or(u64::MAX);
        let mut released = Vec::new();
        let mut highest = None;
        while let Some(entry) = self.finished.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let (number, send_after) = entry.remove_entry();
            highest = Some(number);
            released.extend(send_after);
        }
        highest.map(|number| (number, released))
    }
}

/// What [`RaftPartition::persist`] did with a job.
enum Persisted {
    /// Durable: the messages it released, and a restored snapshot's new log start.
    Done(Vec<Message>, Option<Offset>),
    /// Written; its fdatasync runs in a task that reports to `durable_rx`.
    Pending,
}

/// Default for `RaftPartition::set_data_budget`.
pub const DATA_BUDGET_BYTES: u64 = 4 << 20;

impl RaftPartition {
    /// Opens (or creates) replica `id` of a group of `voters` in `dir`: the log, the
    /// `raft-state` file, and the window rebuilt from the log after `below`. A new group's
    /// voters come from `voters`; a restarted one's from its state file.
    /// Term, vote and commit live where `home` says.
    pub async fn open(
        dir: impl AsRef<Path>,
        id: u64,
        voters: &[u64],
        config: ReplicaConfig,
        log_config: LogConfig,
        home: HardStateHome,
        logger: &slog::Logger,
    ) -> Result<RaftPartition> {
        let membership = Membership::voters(voters);
        Self::open_as(dir, id, &membership, config, log_config, home, logger).await
    }

    /// [`open`](Self::open) for a replica that starts (when `dir` holds no replica yet) with
    /// `membership`: a new group's voters, or a running group's configuration as its leader
    /// handed it to a joining learner. A restarted replica's configuration is its state
    /// file's, with every committed change the file missed applied again.
    pub async fn open_as(
        dir: impl AsRef<Path>,
        id: u64,
        membership: &Membership,
        config: ReplicaConfig,
        log_config: LogConfig,
        home: HardStateHome,
        logger: &slog::Logger,
    ) -> Result<RaftPartition> {
        let batch_bytes_max = log_config.batch_bytes_max as usize;
        let log = Log::open(dir.as_ref(), log_config).await?;
        let dir = log.dir().to_path_buf();
        let mut state = match StateFile::load(&dir)? {
            Some(state) => state,
            None => {
                let state = StateFile {
                    below: Below {
                        end_offset: log.log_start_offset(),
                        ..Below::default()
                    },
                    membership: membership.clone(),
                    ..StateFile::default()
                };
                // (A new group's log is empty: its start is where its first entry goes.)
                state.store(&dir)?;
                state
            }
        };
        if let HardStateHome::Shared { log, key } = &home {
            if let Some(shared) = log.get(key) {
                state.term = shared.term;
                state.vote = shared.vote;
                state.commit = shared.commit;
            }
        }
        if state.starting_over {
            // A snapshot's restore was interrupted: finish emptying the log first.
            log.start_over_at(state.below.end_offset).await?;
            state.starting_over = false;
            state.store(&dir)?;
        }
        let mut store = PartitionStore::empty(&state.membership, state.below, batch_bytes_max);
        store.state_snapshot = StateSnapshot::load(&dir)?;
        let log_end = log.log_end_offset();
        // The newest log start a committed entry set (a cut a crash may have interrupted).
        let mut committed_start = None;
        // Committed configuration changes the state file may not reflect yet.
        let mut conf_changes = Vec::new();
        for_each_batch(
            &log,
            state.below.end_offset,
            log_end,
            batch_bytes_max,
            |info, batch| {
                let index = store.last_index() + 1;
                if index <= state.commit {
                    committed_start = log_start_of(&batch).or(committed_start);
                }
                let (entry_type, data) = entry_of_batch(batch);
                if entry_type != EntryType::EntryNormal
                    && index <= state.commit
                    && index > state.membership.index
                {
                    conf_changes.push(Entry {
                        index,
                        entry_type,
                        data: data.clone(),
                        ..Entry::default()
                    });
                }
                // Committed entries' data stays in the log until raft-rs asks for it.
                let data = (index > state.commit).then_some(data);
                store.resident_bytes += data.as_ref().map_or(0, |d| d.len() as u64);
                store.window.push_back(Slot {
                    term: info.leader_epoch.0.max(0) as u64,
                    entry_type,
                    base_offset: info.base_offset,
                    end_offset: info.last_offset().plus(1),
                    data,
                });
                Ok::<_, ReplicationError>(true)
            },
        )
        .await?;
        // Entries of a job may have been durable before its hard state was, or the reverse:
        // the commit index never points past the log, and the term is never below its entries.
        let last_term = store.window.back().map_or(state.below.term, |s| s.term);
        store.hard_state = HardState {
            term: state.term.max(last_term),
            vote: if last_term > state.term {
                0
            } else {
                state.vote
            },
            // Everything below the window's floor is committed by definition.
            commit: state.commit.min(store.last_index()).max(state.below.index),
            ..HardState::default()
        };
        if let Some(start) = committed_start.filter(|s| *s > log.log_start_offset()) {
            log.truncate_prefix(start.min(log.log_end_offset())).await?;
        }
        // The log is the state machine: entries up to the restored commit index are applied as
        // they stand, so raft-rs hands out only later ones.
        let applied = store.hard_state.commit.max(state.below.index);
        let high_watermark = store
            .end_offset_of(applied)
            .expect("the commit index is within the window");
        let mut replica = Replica::new(id, config, store, applied, logger)?;
        // A change committed (the commit index says so) whose new configuration a crash kept
        // from the state file: applied again, in order, from the log.
        let mut reapplied = None;
        for entry in conf_changes.iter().filter(|e| e.index <= applied) {
            if let Some(conf_state) = replica.apply_conf_entry(entry) {
                reapplied = Some(Membership {
                    conf_state,
                    index: entry.index,
                });
            }
        }
        if let Some(membership) = reapplied {
            state.membership = membership;
            state.store(&dir)?;
        }
        let (durable_tx, durable_rx) = futures::channel::mpsc::unbounded();
        Ok(RaftPartition {
            replica,
            log,
            dir,
            stored: state,
            home,
            high_watermark,
            applied,
            data_budget_bytes: DATA_BUDGET_BYTES,
            durable_tx,
            durable_rx,
            job_order: JobOrder::default(),
            wake: None,
        })
    }

    /// Lets pipelined persist jobs wake the owner when their fdatasync is over (see
    /// [`run_ready_with`](Self::run_ready_with)).
    pub fn set_waker(&mut self, wake: Rc<dyn Fn()>) {
        self.wake = Some(wake);
    }

    pub fn replica(&self) -> &Replica<PartitionStore> {
        &self.replica
    }

    /// See [`Replica::pace_learners`].
    pub fn pace_learners(&mut self, in_flight: Option<usize>) -> Vec<u64> {
        self.replica.pace_learners(in_flight)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The last index applied here (the high watermark is its end).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// See [`Replica::read_index`]; the answer comes in a later [`Outbox::read_indexes`].
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.replica.read_index(context);
    }

    /// Records below this offset are committed: what consumers may read.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn tick(&mut self) -> bool {
        self.replica.tick()
    }

    /// See [`Replica::tick_quietly`].
    pub fn tick_quietly(&mut self, live: &dyn Fn(u64) -> bool) -> bool {
        self.replica.tick_quietly(live)
    }

    /// See [`Replica::is_quiet`].
    pub fn is_quiet(&self) -> bool {
        self.replica.is_quiet()
    }

    /// See [`Replica::wake_if_member`].
    pub fn wake_if_member(&mut self, peer: u64) {
        self.replica.wake_if_member(peer);
    }

    /// Whether [`run_ready`](Self::run_ready) has anything to do: raft-rs has a `Ready`, a
    /// pipelined write is still syncing (its outcome is collected there), or entries wait to
    /// be read back from the log. A group without any is left out of a node's step.
    pub fn has_work(&self) -> bool {
        self.replica.has_ready() || !self.job_order.idle() || self.replica.storage().has_fetches()
    }

    /// See [`Replica::propose_conf_change`].
    pub fn propose_conf_change(&mut self, change: raft::eraftpb::ConfChangeV2) -> Result<()> {
        self.replica.propose_conf_change(change)
    }

    /// The index of the configuration change the group's configuration here reflects.
    pub fn conf_index(&self) -> u64 {
        self.replica.storage().conf_index
    }

    pub fn receive(&mut self, message: Message) -> Result<()> {
        self.replica.receive(message)
    }

    /// See [`Replica::receive_quiet`].
    pub fn receive_quiet(&mut self, message: Message, live: &dyn Fn(u64) -> bool) -> Result<()> {
        self.replica.receive_quiet(message, live)
    }

    pub fn campaign(&mut self) -> Result<()> {
        self.replica.campaign()
    }

    /// Hands leadership to `to` (see [`Replica::transfer_leader`]).
    pub fn transfer_leader(&mut self, to: u64) {
        self.replica.transfer_leader(to);
    }

    /// See [`Replica::successor_rank`].
    pub fn successor_rank(
        &self,
        peer: u64,
        successors: impl Fn(Vec<u64>) -> Vec<u64>,
    ) -> Option<usize> {
        self.replica.successor_rank(peer, successors)
    }

    /// See [`Replica::campaign_without`].
    pub fn campaign_without(&mut self, gone: u64) -> bool {
        self.replica.campaign_without(gone)
    }

    /// A peer could not be reached: stop pipelining to it.
    pub fn unreachable(&mut self, peer: u64) {
        self.replica.unreachable(peer);
    }

    /// Proposes one record batch if this replica leads. Returns the entry's index; its
    /// records are committed once the high watermark passes `end_offset_of(index)`.
    pub fn propose(&mut self, batch: Bytes) -> Result<u64> {
        let size =
            peek_batch_size(&batch, self.replica.storage().batch_bytes_max).map_err(|e| {
                ReplicationError::BadEntry {
                    index: 0,
                    reason: e.to_string(),
                }
            })?;
        if size != batch.len() {
            return Err(ReplicationError::BadEntry {
                index: 0,
                reason: "propose one record batch at a time".into(),
            });
        }
        let before = self.replica.last_index();
        self.replica.propose(batch)?;
        let index = self.replica.last_index();
        if index != before + 1 {
            return Err(ReplicationError::Raft(raft::Error::ProposalDropped));
        }
        Ok(index)
    }

    /// On the leader: proposes moving every replica's log start up to `offset` (retention,
    /// DeleteRecords). Returns the entry's index; the cut happens on each replica as it applies
    /// the entry. `offset` must be committed already (at most the high watermark).
    pub fn propose_log_start(&mut self, offset: Offset) -> Result<u64> {
        if offset > self.high_watermark {
            return Err(ReplicationError::BadEntry {
                index: 0,
                reason: format!(
                    "a log start ({}) above the high watermark ({})",
                    offset.0, self.high_watermark.0
                ),
            });
        }
        self.propose(log_start_batch(offset))
    }

    /// Proposes one record batch through whichever replica leads (see
    /// [`Replica::propose_anywhere`]): for commands any node may issue, such as a broker's
    /// registration with the controller.
    pub fn propose_anywhere(&mut self, batch: Bytes) -> Result<()> {
        self.replica.propose_anywhere(batch)
    }

    /// How much applied entries' data may stay in memory (default [`DATA_BUDGET_BYTES`]);
    /// beyond it, a follower that needs older entries gets them read back from the log.
    pub fn set_data_budget(&mut self, bytes: u64) {
        self.data_budget_bytes = bytes;
    }

    pub fn window_stats(&self) -> WindowStats {
        self.replica.storage().stats()
    }

    /// Where entry `index`'s records end once it is in the window (durable or not).
    pub fn end_offset_of(&self, index: u64) -> Option<Offset> {
        self.replica.storage().end_offset_of(index)
    }

    /// Runs every piece of ready work now: persists in order (awaiting the disk) and applies.
    /// Returns the messages to send.
    pub async fn run_ready(&mut self) -> Result<Outbox> {
        self.run_ready_with(None, None).await
    }

    /// [`run_ready`](Self::run_ready), handing `early` the messages that may leave before this
    /// replica's own write is durable (a leader's appends, so followers write while the leader
    /// does) and those released by a write as soon as it is durable; without it they wait in
    /// the outbox with the rest. `committed_now`, if given, gets newly committed entries (with
    /// the high watermark after them) as soon as raft-rs hands them over, before this
    /// replica's next write is durable (raft-rs hands over only entries already durable here
    /// and on a quorum), instead of in the outbox: the owner can answer their producers
    /// without waiting for later entries' fdatasync.
    ///
    /// With `early`, persist jobs are also **pipelined**: a job's entries are written and its
    /// fdatasync left to a task of its own, so the group (and the node's step) goes on at once;
    /// raft-rs hears the job is durable, and its messages leave, in a later call, after the
    /// waker set by [`set_waker`](Self::set_waker) ran. Term and vote are still made durable
    /// before a job's entries are written, and a job that restores a snapshot completes
    /// inline.
    pub async fn run_ready_with(
        &mut self,
        early: Option<&dyn Fn(Vec<Message>)>,
        committed_now: Option<&dyn Fn(Vec<CommittedEntry>, Offset)>,
    ) -> Result<Outbox> {
        let mut outbox = Outbox::default();
        let released = self.collect_durable()?;
        match early {
            Some(send_now) if !released.is_empty() => send_now(released),
            _ => outbox.messages.extend(released),
        }
        loop {
            let fetches = self.replica.storage().take_fetches();
            let worked = !fetches.is_empty();
            for fetch in fetches {
                let loaded = self
                    .load_from_log(fetch.low, fetch.high, fetch.max_size)
                    .await?;
                self.replica.entries_fetched(fetch.context);
                // raft-rs took what it needed while sending; the data goes back to the log.
                let store = self.replica.storage_mut();
                for index in loaded {
                    store.forget(index);
                }
            }
            if !self.advance_all(&mut outbox, early, committed_now).await? && !worked {
                break;
            }
            self.evict();
        }
        Ok(outbox)
    }

    /// Drops applied entries' data that every replica has, and more while over the budget.
    fn evict(&mut self) {
        let everyone_has = self.replica.min_matched().unwrap_or(self.applied);
        let (applied, budget) = (self.applied, self.data_budget_bytes);
        let store = self.replica.storage_mut();
        store.evict_through(applied.min(everyone_has));
        store.evict_to_budget(applied, budget);
    }

    /// Reads entries from `low` (below `high`, about `max_size` bytes of them, at least one)
    /// back from the log into the window; returns the indexes loaded.
    async fn load_from_log(&mut self, low: u64, high: u64, max_size: u64) -> Result<Vec<u64>> {
        let store = self.replica.storage();
        let wanted: Vec<(u64, Offset, Offset)> = (low..high)
            .map_while(|index| store.slot(index).map(|slot| (index, slot)))
            .take_while(|(_, slot)| slot.data.is_none())
            .map(|(index, slot)| (index, slot.base_offset, slot.end_offset))
            .collect();
        let (Some(&(first_index, from, _)), Some(&(_, _, to))) = (wanted.first(), wanted.last())
        else {
            return Ok(Vec::new());
        };
        let batch_bytes_max = store.batch_bytes_max;
        let mut batches = std::collections::HashMap::new();
        let mut bytes = 0u64;
        for_each_batch(&self.log, from, to, batch_bytes_max, |info, batch| {
            bytes += batch.len() as u64;
            batches.insert(info.base_offset, batch);
            Ok::<_, ReplicationError>(bytes < max_size)
        })
        .await?;
        let store = self.replica.storage_mut();
        let mut loaded = Vec::new();
        for (index, base, _) in wanted {
            let Some(batch) = batches.remove(&base) else {
                break;
            };
            let (_, data) = entry_of_batch(batch);
            store.fill(index, data);
            loaded.push(index);
        }
        if loaded.is_empty() {
            return Err(ReplicationError::BadEntry {
                index: first_index,
                reason: format!("no batch at offset {} in the log", from.0),
            });
        }
        Ok(loaded)
    }

    /// Runs every ready raft-rs has: persist in order, then apply. True if there was any.
    async fn advance_all(
        &mut self,
        outbox: &mut Outbox,
        early: Option<&dyn Fn(Vec<Message>)>,
        committed_now: Option<&dyn Fn(Vec<CommittedEntry>, Offset)>,
    ) -> Result<bool> {
        let mut any = false;
        while let Some(progress) = self.replica.advance()? {
            any = true;
            let Progress {
                send,
                persist,
                committed,
                read_indexes,
                conf_changed,
                ..
            } = progress;
            outbox.read_indexes.extend(read_indexes);
            if let Some((index, conf_state)) = conf_changed {
                // Durable for the next restart's sake only: a crash before this write
                // applies the change again from the log.
                let state = StateFile {
                    membership: Membership { conf_state, index },
                    ..self.stored.clone()
                };
                state.store(&self.dir)?;
                self.stored = state;
            }
            match early {
                Some(send_now) if !send.is_empty() => send_now(send),
                _ => outbox.messages.extend(send),
            }
            let new_start = committed
                .iter()
                .filter(|e| e.entry_type == EntryType::EntryNormal)
                .filter_map(|e| log_start_of(&e.data))
                .max();
            // Committed entries are durable here already: they are handed over before this
            // Ready's own write, unless it restores a snapshot (the log they refer to) or one
            // of them moves the log start (whoever waits on it expects the log moved).
            let in_order = persist.snapshot.is_some() || new_start.is_some();
            let mut committed = Some(committed);
            if !in_order {
                self.take_committed(committed.take().unwrap_or_default(), outbox, committed_now);
            }
            let number = persist.number;
            match self.persist(persist, early.is_some()).await? {
                Persisted::Done(send_after, started_over) if self.job_order.idle() => {
                    self.replica.persisted(number);
                    // What waited for this write (a follower's acknowledgement, a vote)
                    // leaves now, not when every other group of the step is done too.
                    match early {
                        Some(send_now) if !send_after.is_empty() => send_now(send_after),
                        _ => outbox.messages.extend(send_after),
                    }
                    if started_over.is_some() {
                        outbox.started_over_at = started_over;
                    }
                }
                Persisted::Done(send_after, started_over) => {
                    // Behind a pipelined job still syncing: reported after it.
                    self.job_order.finished(number, send_after);
                    if started_over.is_some() {
                        outbox.started_over_at = started_over;
                    }
                }
                Persisted::Pending => self.job_order.started(number),
            }
            if let Some(committed) = committed {
                self.take_committed(committed, outbox, None);
            }
            if let Some(start) = new_start {
                if self.apply_log_start(start).await? {
                    outbox.log_start_moved = Some(self.log.log_start_offset());
                }
            }
        }
        Ok(any)
    }

    /// Records entries raft-rs handed over as committed: the applied index and high watermark
    /// move, and the entries go to `committed_now` if given, else to the outbox.
    fn take_committed(
        &mut self,
        committed: Vec<Entry>,
        outbox: &mut Outbox,
        committed_now: Option<&dyn Fn(Vec<CommittedEntry>, Offset)>,
    ) {
        let Some(last) = committed.last() else {
            return;
        };
        self.applied = last.index;
        if let Some(end) = self.replica.storage().end_offset_of(last.index) {
            self.high_watermark = end;
        }
        let store = self.replica.storage();
        let entries: Vec<CommittedEntry> = committed
            .into_iter()
            .filter_map(|entry| {
                let (base_offset, end_offset) = store.offsets_of(entry.index)?;
                let data = if entry.entry_type == EntryType::EntryNormal {
                    entry.data
                } else {
                    Bytes::new()
                };
                Some(CommittedEntry {
                    index: entry.index,
                    term: entry.term,
                    base_offset,
                    end_offset,
                    data,
                })
            })
            .collect();
        match committed_now {
            Some(hand_over) => hand_over(entries, self.high_watermark),
            None => outbox.committed.extend(entries),
        }
    }

    /// The owner's latest durable state (see [`StateSnapshot`]): where a restarted owner
    /// rebuilds from, and what a restored leader's snapshot brought.
    pub fn state_snapshot(&self) -> Option<&StateSnapshot> {
        self.replica.storage().state_snapshot()
    }

    /// For an owner that keeps a state machine beside the log (the controller's image):
    /// records `state`, the owner's state after applying every entry through `index` (at most
    /// the applied index), then cuts this replica's log and window there — Raft's log
    /// compaction, local to this replica (the log is not a consumer-visible Kafka log, so
    /// replicas need not cut at the same offset). The state is durable before the cut, so a
    /// crash at any point leaves either the old floor or the new one with its state. A
    /// follower that needs entries below the cut gets the state in raft-rs's snapshot.
    /// Returns false (nothing done) when `index` is not above the floor or not applied.
    pub async fn compact_with_state(&mut self, index: u64, state: Bytes) -> Result<bool> {
        if index <= self.stored.below.index || index > self.applied {
            return Ok(false);
        }
        let store = self.replica.storage();
        let Some((_, end_offset)) = store.offsets_of(index) else {
            return Ok(false);
        };
        let floor = Below {
            index,
            term: store.slot(index).map_or(0, |slot| slot.term),
            end_offset,
        };
        let snapshot = StateSnapshot {
            below: floor,
            data: state,
        };
        snapshot.store(&self.dir)?;
        let stored = StateFile {
            below: floor,
            commit: self.stored.commit.max(floor.index),
            ..self.stored.clone()
        };
        stored.store(&self.dir)?;
        self.stored = stored;
        let store = self.replica.storage_mut();
        store.compact_to(floor);
        store.state_snapshot = Some(snapshot);
        self.log.truncate_prefix(floor.end_offset).await?;
        Ok(true)
    }

    /// Applies a committed log start: the window's new floor goes to `raft-state` first (a
    /// reopen reads the log from it, and finishes the cut from the committed entry), then the
    /// log start moves. True if it moved.
    async fn apply_log_start(&mut self, start: Offset) -> Result<bool> {
        let start = start.min(self.high_watermark);
        if start <= self.log.log_start_offset() {
            return Ok(false);
        }
        let floor = self.replica.storage().floor_for(start, self.applied);
        if floor.index > self.stored.below.index {
            let state = StateFile {
                below: floor,
                commit: self.stored.commit.max(floor.index),
                ..self.stored.clone()
            };
            state.store(&self.dir)?;
            self.stored = state;
            self.replica.storage_mut().compact_to(floor);
        }
        self.log.truncate_prefix(start).await?;
        Ok(true)
    }

    /// Makes a job durable in order: hard state, a restored snapshot, entries. Returns the
    /// messages that waited for it, and where the log started over if a snapshot emptied it.
    /// The outcomes of pipelined jobs that arrived: raft-rs hears the highest durable job, and
    /// their messages are returned to be sent. A job whose entries a later truncation replaced
    /// (its wait ends out of range) is dropped: a new leader overwrote them, nothing to answer.
    fn collect_durable(&mut self) -> Result<Vec<Message>> {
        while let Ok(durable) = self.durable_rx.try_recv() {
            let send_after = match durable.outcome {
                Ok(()) => durable.send_after,
                // raft-rs ignores a report for entries since replaced (their term differs).
                Err(sluice_storage::StorageError::OffsetOutOfRange { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            self.job_order.finished(durable.number, send_after);
        }
        let Some((number, released)) = self.job_order.reportable() else {
            return Ok(Vec::new());
        };
        self.replica.persisted(number);
        Ok(released)
    }

    async fn persist(&mut self, job: PersistJob, pipelined: bool) -> Result<Persisted> {
        if let Some(hard_state) = &job.hard_state {
            let changed =
                hard_state.term != self.stored.term || hard_state.vote != self.stored.vote;
            // Term and vote must be durable before anything is answered; the commit index need
            // not be (a restart relearns it), and the entries' durability is the log's own
            // sync below. Writing (and syncing) the state file only when term or vote moved
            // keeps a follower's append at one sync instead of two.
            if changed {
                // The recorded commit never passes what the log holds durably, whatever the
                // order of the two writes (this job's entries are written after).
                let durable_end = job
                    .entries
                    .first()
                    .map_or(u64::MAX, |first| first.index.saturating_sub(1));
                let state = StateFile {
                    term: hard_state.term,
                    vote: hard_state.vote,
                    commit: hard_state.commit.min(durable_end),
                    ..self.stored.clone()
                };
                self.store_hard_state(&state).await?;
                self.stored = state;
            } else {
                // Only the commit index moved: not worth a sync (a restart relearns it).
                self.stored.commit = hard_state.commit;
            }
        }
        let mut started_over = None;
        if let Some(snapshot) = &job.snapshot {
            // The storage already holds the snapshot as its floor. The flag makes a reopen
            // finish emptying the log if a crash interrupts it (entries kept past the floor
            // would otherwise be renumbered from it).
            let below = self.replica.storage().below();
            if let Some(state) = self
                .replica
                .storage()
                .state_snapshot()
                .filter(|s| s.below == below)
            {
                // The owner's state first: once the log starts over, nothing else holds
                // what lies below the floor.
                state.store(&self.dir)?;
            }
            let mut state = StateFile {
                below,
                membership: Membership {
                    conf_state: snapshot.get_metadata().get_conf_state().clone(),
                    index: self.replica.storage().conf_index(),
                },
                commit: self.stored.commit.max(below.index),
                starting_over: true,
                ..self.stored.clone()
            };
            state.store(&self.dir)?;
            self.log.start_over_at(below.end_offset).await?;
            state.starting_over = false;
            state.store(&self.dir)?;
            self.stored = state;
            self.applied = below.index;
            self.high_watermark = below.end_offset;
            started_over = Some(below.end_offset);
            tracing::info!(dir = %self.dir.display(), index = below.index, term = below.term,
                start = %below.end_offset, "restored a leader's snapshot: the log starts over");
        }
        if let Some(first) = job.entries.first() {
            let base = self
                .replica
                .storage()
                .end_offset_of(first.index - 1)
                .ok_or_else(|| ReplicationError::BadEntry {
                    index: first.index,
                    reason: "no offset for the entry before it".into(),
                })?;
            if self.log.log_end_offset() > base {
                self.log.truncate(base).await?;
            }
            let mut last = None;
            for entry in &job.entries {
                let bytes = batch_bytes_of(entry);
                let epoch = LeaderEpoch(i32::try_from(entry.term).unwrap_or(i32::MAX));
                // A leader's log may hold compacted batches (fewer records than offsets):
                // copied as they are, each keeping its offsets.
                let appended = self.log.append_copied(&bytes, epoch).await?;
                last = Some(appended.last_offset);
            }
            if let Some(last) = last {
                if pipelined && started_over.is_none() {
                    let (log, done, wake) =
                        (self.log.clone(), self.durable_tx.clone(), self.wake.clone());
                    let (number, send_after) = (job.number, job.send_after);
                    glommio::spawn_local(async move {
                        let outcome = log.wait_durable(last).await;
                        let _ = done.unbounded_send(Durable {
                            number,
                            outcome,
                            send_after,
                        });
                        if let Some(wake) = wake {
                            wake();
                        }
                    })
                    .detach();
                    return Ok(Persisted::Pending);
                }
                self.log.wait_durable(last).await?;
            }
        }
        Ok(Persisted::Done(job.send_after, started_over))
    }

    /// Closes cleanly: the log (a restart then need not scan it) and the state file with the
    /// current commit index (a restart then starts from everything it knew committed).
    pub async fn close(self) -> Result<()> {
        self.log.close().await?;
        // `stored.commit` follows commit-only changes in memory without writing them.
        let commit = self
            .replica
            .commit_index()
            .min(self.replica.storage().last_index());
        let state = StateFile {
            commit,
            ..self.stored.clone()
        };
        self.store_hard_state(&state).await
    }

    async fn store_hard_state(&self, state: &StateFile) -> Result<()> {
        match &self.home {
            HardStateHome::OwnFile => state.store(&self.dir),
            HardStateHome::Shared { log, key } => {
                let hard_state = HardState {
                    term: state.term,
                    vote: state.vote,
                    commit: state.commit,
                    ..HardState::default()
                };
                log.store(*key, &hard_state).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(to: u64) -> Message {
        Message {
            to,
            ..Message::default()
        }
    }

    #[test]
    fn a_state_snapshot_file_round_trips_and_a_damaged_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StateSnapshot::load(dir.path()).unwrap(), None);
        let snapshot = StateSnapshot {
            below: Below {
                index: 41,
                term: 3,
                end_offset: Offset(57),
            },
            data: Bytes::from_static(b"{\"version\":56}"),
        };
        snapshot.store(dir.path()).unwrap();
        assert_eq!(StateSnapshot::load(dir.path()).unwrap(), Some(snapshot));
        let path = dir.path().join(STATE_SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = StateSnapshot::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("state-snapshot") && e.contains("checksum"),
            "{e}"
        );
        std::fs::write(&path, b"SLSS").unwrap();
        let e = StateSnapshot::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn a_snapshot_carries_the_owners_state_after_offset_and_configuration_index() {
        let mut data = 57i64.to_be_bytes().to_vec();
        data.extend_from_slice(&9u64.to_be_bytes());
        let bare = Snapshot {
            data: data.clone().into(),
            ..Snapshot::default()
        };
        assert_eq!(snapshot_end_offset(&bare).unwrap(), Offset(57));
        assert_eq!(snapshot_state(&bare), None);
        data.extend_from_slice(b"image");
        let with_state = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        assert_eq!(snapshot_end_offset(&with_state).unwrap(), Offset(57));
        assert_eq!(snapshot_conf_index(&with_state), 9);
        assert_eq!(snapshot_state(&with_state).as_deref(), Some(&b"image"[..]));
        let torn = Snapshot {
            data: Bytes::from_static(&[0; 12]),
            ..Snapshot::default()
        };
        assert!(snapshot_end_offset(&torn).is_err());
    }

    #[test]
    fn jobs_are_reported_in_order_whatever_order_they_finish_in() {
        let mut order = JobOrder::default();
        order.started(5);
        // Job 6 needed no fdatasync (only the commit index moved) and finished inline, but 5
        // still syncs: reporting 6 would tell raft-rs that 5's entries are durable.
        order.finished(6, vec![message(6)]);
        assert!(order.reportable().is_none());
        order.started(7);
        order.finished(7, vec![message(7)]);
        assert!(order.reportable().is_none(), "5 still syncs");
        order.finished(5, vec![message(5)]);
        let (number, released) = order.reportable().expect("5, 6 and 7 are durable");
        assert_eq!(number, 7);
        assert_eq!(
            released.iter().map(|m| m.to).collect::<Vec<_>>(),
            [5, 6, 7],
            "messages leave in job order"
        );
        assert!(order.reportable().is_none(), "nothing twice");
        order.started(8);
        order.started(9);
        order.finished(9, vec![]);
        assert!(order.reportable().is_none());
        order.finished(8, vec![]);
        assert_eq!(order.reportable().map(|(n, _)| n), Some(9));
    }

    fn state() -> StateFile {
        StateFile {
            term: 7,
            vote: 2,
            commit: 41,
            below: Below {
                index: 3,
                term: 1,
                end_offset: Offset(17),
            },
            membership: Membership {
                conf_state: ConfState {
                    voters: vec![1, 2, 4],
                    learners: vec![5],
                    voters_outgoing: vec![1, 2, 3],
                    learners_next: vec![3],
                    auto_leave: false,
                    ..ConfState::default()
                },
                index: 38,
            },
            starting_over: true,
        }
    }

    #[test]
    fn the_state_file_reads_back_what_was_written() {
        let path = Path::new("raft-state");
        assert_eq!(StateFile::decode(&state().encode(), path).unwrap(), state());
    }

    /// A crash in the middle of restoring a snapshot left `raft-state` saying "starting over"
    /// beside the old log: the reopen empties the log at the snapshot's end first, so no old
    /// entry is numbered from the new floor.
    #[test]
    fn a_reopen_finishes_an_interrupted_snapshot_restore() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let dir = tempfile::tempdir().unwrap();
                let log = Log::open(dir.path(), LogConfig::default()).await.unwrap();
                for n in 0..5 {
                    let batch = sluice_storage::batch::build_batch(n, &[(n, b"k", b"old")]);
                    log.append(&batch, LeaderEpoch(1)).await.unwrap();
                }
                log.close().await.unwrap();
                let floor = Below {
                    index: 40,
                    term: 3,
                    end_offset: Offset(500),
                };
                StateFile {
                    term: 3,
                    vote: 2,
                    commit: 40,
                    below: floor,
                    membership: Membership::voters(&[1, 2, 3]),
                    starting_over: true,
                }
                .store(dir.path())
                .unwrap();
                let partition = RaftPartition::open(
                    dir.path(),
                    1,
                    &[1, 2, 3],
                    ReplicaConfig::default(),
                    LogConfig::default(),
                    HardStateHome::OwnFile,
                    &crate::discard_logger(),
                )
                .await
                .unwrap();
                assert_eq!(partition.log().log_start_offset(), Offset(500));
                assert_eq!(partition.log().log_end_offset(), Offset(500));
                assert_eq!(partition.replica().last_index(), 40);
                assert_eq!(partition.high_watermark(), Offset(500));
                assert!(!StateFile::load(dir.path()).unwrap().unwrap().starting_over);
                partition.close().await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A log of leader-change, data, "add learner 4" (index 3) and data entries, committed
    /// through index 4, beside a `raft-state` file whose configuration is `membership`; the
    /// configuration the reopened replica has, and its change index.
    async fn reopened_configuration(membership: Membership) -> (ConfState, u64, Membership) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogConfig::default()).await.unwrap();
        let mut add_learner = raft::eraftpb::ConfChangeV2::default();
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(raft::eraftpb::ConfChangeType::AddLearnerNode);
        single.node_id = 4;
        add_learner.set_changes(vec![single].into());
        let data = |n: i64| Bytes::from(sluice_storage::batch::build_batch(0, &[(n, b"k", b"v")]));
        let entries = [
            (EntryType::EntryNormal, Bytes::new()),
            (EntryType::EntryNormal, data(1)),
            (
                EntryType::EntryConfChangeV2,
                protobuf::Message::write_to_bytes(&add_learner)
                    .unwrap()
                    .into(),
            ),
            (EntryType::EntryNormal, data(2)),
        ];
        for (entry_type, data) in entries {
            let entry = Entry {
                entry_type,
                data,
                ..Entry::default()
            };
            log.append(&batch_bytes_of(&entry), LeaderEpoch(1))
                .await
                .unwrap();
        }
        log.close().await.unwrap();
        StateFile {
            term: 1,
            vote: 1,
            commit: 4,
            membership,
            ..StateFile::default()
        }
        .store(dir.path())
        .unwrap();
        let partition = RaftPartition::open(
            dir.path(),
            1,
            &[1, 2, 3],
            ReplicaConfig::default(),
            LogConfig::default(),
            HardStateHome::OwnFile,
            &crate::discard_logger(),
        )
        .await
        .unwrap();
        let seen = (partition.replica().conf_state(), partition.conf_index());
        partition.close().await.unwrap();
        let stored = StateFile::load(dir.path()).unwrap().unwrap().membership;
        (seen.0, seen.1, stored)
    }

    /// A crash after a configuration change committed but before `raft-state` recorded it:
    /// the reopen applies it again from the log, and records it. A change the file already
    /// reflects is not applied twice.
    #[test]
    fn a_reopen_applies_the_committed_configuration_changes_its_state_file_missed() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let (conf, index, stored) =
                    reopened_configuration(Membership::voters(&[1, 2, 3])).await;
                assert_eq!(
                    (conf.voters.clone(), conf.learners.clone()),
                    (vec![1, 2, 3], vec![4])
                );
                assert_eq!(index, 3);
                assert_eq!((stored.index, stored.conf_state.learners), (3, vec![4]));

                let reflected = Membership {
                    index: 3,
                    ..Membership::voters(&[1, 2, 3])
                };
                let (conf, index, _) = reopened_configuration(reflected).await;
                assert!(conf.learners.is_empty(), "applied twice: {conf:?}");
                assert_eq!(index, 3);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A version 3 file whose configuration lists claim more ids than it holds (its checksum
    /// right): refused, naming the file and why.
    #[test]
    fn a_state_file_with_a_configuration_cut_short_is_refused() {
        let path = Path::new("/data/t-0/raft-state");
        let mut bytes = state().encode();
        bytes.truncate(bytes.len() - 4);
        // The file ends [learners-next count = 1][id 3][auto-leave]: a count of 9 claims more
        // ids than the file holds.
        let count_at = bytes.len() - 24;
        bytes[count_at..count_at + 8].copy_from_slice(&9u64.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let error = StateFile::decode(&bytes, path).unwrap_err().to_string();
        assert!(
            error.contains("/data/t-0/raft-state") && error.contains("configuration"),
            "{error}"
        );
    }

    #[test]
    fn a_snapshot_without_its_end_offset_is_refused_and_restores_nothing() {
        let mut store =
            PartitionStore::empty(&Membership::voters(&[1, 2, 3]), Below::default(), 1 << 20);
        let mut snapshot = Snapshot {
            data: vec![1u8, 2, 3].into(),
            ..Snapshot::default()
        };
        snapshot.mut_metadata().index = 9;
        snapshot.mut_metadata().term = 2;
        let error = store.restore(&snapshot).unwrap_err().to_string();
        assert!(
            error.contains("raft entry 9") && error.contains("8 or 16 bytes, not 3"),
            "{error}"
        );
        assert_eq!(store.below(), Below::default(), "nothing restored");
    }

    /// A file of an earlier version, as that version wrote it: the words up to the voters,
    /// then (version 2) the `starting_over` flag.
    fn old_state_file(version: u16, starting_over: bool) -> Vec<u8> {
        let mut old = STATE_MAGIC.to_vec();
        old.extend_from_slice(&version.to_le_bytes());
        let mut words = vec![7, 2, 41, 3, 1, 17, 3, 1, 2, 3];
        if version == 2 {
            words.push(u64::from(starting_over));
        }
        for word in words {
            old.extend_from_slice(&word.to_le_bytes());
        }
        let crc = crc32c::crc32c(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        old
    }

    #[test]
    fn version_1_and_2_state_files_still_load_with_their_voters() {
        let path = Path::new("raft-state");
        for (version, starting_over) in [(1, false), (2, true), (2, false)] {
            let loaded = StateFile::decode(&old_state_file(version, starting_over), path).unwrap();
            assert_eq!(
                loaded,
                StateFile {
                    starting_over,
                    membership: Membership::voters(&[1, 2, 3]),
                    ..state()
                },
                "version {version}"
            );
        }
    }

    #[test]
    fn a_damaged_state_file_is_refused_with_its_path() {
        let path = Path::new("/data/t-0/raft-state");
        let mut bytes = state().encode();
        bytes[10] ^= 1;
        let error = StateFile::decode(&bytes, path).unwrap_err().to_string();
        assert!(
            error.contains("/data/t-0/raft-state") && error.contains("checksum"),
            "{error}"
        );
        let error = StateFile::decode(&bytes[..20], path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("too short"), "{error}");
    }

    #[test]
    fn raft_own_entries_are_stored_as_control_batches_and_read_back() {
        let noop = Entry::default();
        let stored = batch_bytes_of(&noop);
        assert_eq!(
            control_record(&stored).map(|c| c.0),
            Some(CONTROL_LEADER_CHANGE)
        );
        assert_eq!(
            entry_of_batch(stored),
            (EntryType::EntryNormal, Bytes::new())
        );

        let change = Entry {
            entry_type: EntryType::EntryConfChangeV2,
            data: Bytes::from_static(b"conf change bytes"),
            ..Entry::default()
        };
        let stored = batch_bytes_of(&change);
        assert_eq!(
            entry_of_batch(stored),
            (
                EntryType::EntryConfChangeV2,
                Bytes::from_static(b"conf change bytes")
            )
        );

        let data = Bytes::from(sluice_storage::batch::build_batch(5, &[(5, b"k", b"v")]));
        let normal = Entry {
            data: data.clone(),
            ..Entry::default()
        };
        assert_eq!(batch_bytes_of(&normal), data);
        assert_eq!(entry_of_batch(data.clone()), (EntryType::EntryNormal, data));
    }
}
