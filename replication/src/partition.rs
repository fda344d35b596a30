//! One partition's Raft group over its partition log: the log *is* the Raft log.
//!
//! A Raft entry is one or more whole record batches (what one produce request carried for the
//! partition), appended with `Log::append`, which stamps `baseOffset` from the log end and
//! `partitionLeaderEpoch` = the entry's term. Every replica holds the same prefix of entries, so
//! every replica assigns the same offsets: the bytes on disk are identical on all of them.
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
//! Not yet (see docs/ARCHITECTURE.md, "Replication"): the window keeps every entry since the
//! group began, in memory, because nothing moves `below` up yet; and a replica too far behind
//! for the window (raft-rs's snapshot) cannot catch up.
//!
//! Invariants: window entry `i` has index `below.index + 1 + i`; entry offsets are contiguous
//! from `below.end_offset`; the log's end offset equals the window's end once every issued
//! persist job has been performed.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use sluice_storage::batch::{build_control_batch, control_record, peek_batch_size, read_header};
use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset};

use crate::error::{ReplicationError, Result};
use crate::replica::{PersistJob, Progress, Replica, ReplicaConfig, ReplicaStorage};

/// Control type of the batch standing for a new leader's empty entry (KRaft's LeaderChange).
pub const CONTROL_LEADER_CHANGE: i16 = 2;
/// Control type of the batch holding a Raft configuration change (Sluice's own; clients skip
/// control types they do not know).
pub const CONTROL_RAFT_CONF_CHANGE: i16 = 0x5343;

const STATE_FILE: &str = "raft-state";
const STATE_MAGIC: &[u8; 4] = b"SLRS";
const STATE_VERSION: u16 = 1;

/// Everything below the window, as raft-rs sees it: a snapshot at `index` of `term`, the log
/// holding its records up to `end_offset` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Below {
    pub index: u64,
    pub term: u64,
    pub end_offset: Offset,
}

#[derive(Debug, Clone)]
struct Slot {
    term: u64,
    entry_type: EntryType,
    base_offset: Offset,
    /// One past the entry's last offset.
    end_offset: Offset,
    data: Bytes,
    context: Bytes,
}

/// A partition replica's Raft storage: hard state, configuration and the window of entries.
pub struct PartitionStore {
    hard_state: HardState,
    conf_state: ConfState,
    below: Below,
    window: VecDeque<Slot>,
    batch_bytes_max: usize,
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

    pub fn below(&self) -> Below {
        self.below
    }

    fn entry(&self, index: u64, slot: &Slot) -> Entry {
        Entry {
            entry_type: slot.entry_type,
            term: slot.term,
            index,
            data: slot.data.clone(),
            context: slot.context.clone(),
            ..Entry::default()
        }
    }

    /// How many offsets an entry takes in the log.
    fn offsets_taken(&self, entry: &Entry) -> Result<i64> {
        if entry.entry_type != EntryType::EntryNormal || entry.data.is_empty() {
            return Ok(1); // one control record
        }
        let mut rest = &entry.data[..];
        let mut records = 0i64;
        while !rest.is_empty() {
            let bad = |e: sluice_storage::BatchError| ReplicationError::BadEntry {
                index: entry.index,
                reason: e.to_string(),
            };
            let size = peek_batch_size(rest, self.batch_bytes_max).map_err(bad)?;
            let info = read_header(&rest[..size], self.batch_bytes_max).map_err(bad)?;
            records += i64::from(info.last_offset_delta) + 1;
            rest = &rest[size..];
        }
        Ok(records)
    }
}

/// The bytes an entry is stored as.
fn batch_bytes_of(entry: &Entry) -> Bytes {
    match entry.entry_type {
        EntryType::EntryNormal if !entry.data.is_empty() => entry.data.clone(),
        EntryType::EntryNormal => {
            build_control_batch(0, CONTROL_LEADER_CHANGE, &entry.context).into()
        }
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
        _context: GetEntriesContext,
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
            size += slot.data.len() as u64 + 32;
            // raft-rs's rule: at least one entry, then stop before exceeding max_size.
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(self.entry(index, slot));
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

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Catch-up of a replica below the window is not built yet.
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
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
        self.window
            .truncate((first.index - self.below.index - 1) as usize);
        let mut offset = self
            .end_offset_of(first.index - 1)
            .expect("the entry before the first is in the window or below it");
        for (entry, records) in entries.iter().zip(taken) {
            let end_offset = offset.plus(records);
            self.window.push_back(Slot {
                term: entry.term,
                entry_type: entry.entry_type,
                base_offset: offset,
                end_offset,
                data: entry.data.clone(),
                context: entry.context.clone(),
            });
            offset = end_offset;
        }
        Ok(())
    }

    fn put_hard_state(&mut self, hard_state: &HardState) {
        self.hard_state = hard_state.clone();
    }
}

/// The `raft-state` file: hard state, the window's lower bound and the voters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct StateFile {
    term: u64,
    vote: u64,
    commit: u64,
    below: Below,
    voters: Vec<u64>,
}

impl StateFile {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 8 * self.voters.len());
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        for value in [
            self.term,
            self.vote,
            self.commit,
            self.below.index,
            self.below.term,
            self.below.end_offset.0 as u64,
            self.voters.len() as u64,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for voter in &self.voters {
            out.extend_from_slice(&voter.to_le_bytes());
        }
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
        if u16::from_le_bytes([body[4], body[5]]) != STATE_VERSION {
            return Err(bad("unknown version"));
        }
        let words: Vec<u64> = body[6..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if words.len() < 7 || words.len() != 7 + words[6] as usize {
            return Err(bad("voter count does not match the length"));
        }
        Ok(StateFile {
            term: words[0],
            vote: words[1],
            commit: words[2],
            below: Below {
                index: words[3],
                term: words[4],
                end_offset: Offset(words[5] as i64),
            },
            voters: words[7..].to_vec(),
        })
    }

    /// Replaces the file durably: write a temporary file, sync it, rename, sync the directory.
    fn store(&self, dir: &Path) -> Result<()> {
        let io = |e: std::io::Error| ReplicationError::Io {
            path: dir.join(STATE_FILE),
            source: e,
        };
        let temporary = dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(&self.encode()).map_err(io)?;
        file.sync_data().map_err(io)?;
        std::fs::rename(&temporary, dir.join(STATE_FILE)).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    fn load(dir: &Path) -> Result<Option<StateFile>> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => StateFile::decode(&bytes, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ReplicationError::Io { path, source }),
        }
    }
}

/// What the owner must send after running a partition's ready work.
#[derive(Debug, Default)]
pub struct Outbox {
    pub messages: Vec<Message>,
}

/// One replica of one partition: its Raft replica over its log.
pub struct RaftPartition {
    replica: Replica<PartitionStore>,
    log: Log,
    dir: PathBuf,
    /// The hard state last written to `raft-state`.
    stored: StateFile,
    high_watermark: Offset,
    applied: u64,
}

impl RaftPartition {
    /// Opens (or creates) replica `id` of a group of `voters` in `dir`: the log, the
    /// `raft-state` file, and the window rebuilt from the log after `below`. A new group's
    /// voters come from `voters`; a restarted one's from its state file.
    pub async fn open(
        dir: impl AsRef<Path>,
        id: u64,
        voters: &[u64],
        config: ReplicaConfig,
        log_config: LogConfig,
        logger: &slog::Logger,
    ) -> Result<RaftPartition> {
        let batch_bytes_max = log_config.batch_bytes_max as usize;
        let log = Log::open(dir.as_ref(), log_config).await?;
        let dir = log.dir().to_path_buf();
        let state = match StateFile::load(&dir)? {
            Some(state) => state,
            None => {
                let state = StateFile {
                    below: Below {
                        end_offset: log.log_start_offset(),
                        ..Below::default()
                    },
                    voters: voters.to_vec(),
                    ..StateFile::default()
                };
                state.store(&dir)?;
                state
            }
        };
        let mut store = PartitionStore {
            hard_state: HardState::default(),
            conf_state: ConfState::from((state.voters.clone(), vec![])),
            below: state.below,
            window: VecDeque::new(),
            batch_bytes_max,
        };
        let mut next = state.below.end_offset;
        while next < log.log_end_offset() {
            let read = log.read(next, 1 << 20).await?;
            if read.bytes.is_empty() {
                break;
            }
            let mut rest = read.bytes.clone();
            while !rest.is_empty() {
                let size = peek_batch_size(&rest, batch_bytes_max).map_err(|e| {
                    ReplicationError::BadEntry {
                        index: store.last_index() + 1,
                        reason: e.to_string(),
                    }
                })?;
                let batch = rest.split_to(size);
                let info = read_header(&batch, batch_bytes_max).map_err(|e| {
                    ReplicationError::BadEntry {
                        index: store.last_index() + 1,
                        reason: e.to_string(),
                    }
                })?;
                let (entry_type, data) = entry_of_batch(batch);
                store.window.push_back(Slot {
                    term: info.leader_epoch.0.max(0) as u64,
                    entry_type,
                    base_offset: info.base_offset,
                    end_offset: info.last_offset().plus(1),
                    data,
                    context: Bytes::new(),
                });
            }
            next = read.next_offset;
        }
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
            commit: state.commit.min(store.last_index()),
            ..HardState::default()
        };
        let high_watermark = state.below.end_offset;
        let replica = Replica::new(id, config, store, state.below.index, logger)?;
        Ok(RaftPartition {
            replica,
            log,
            dir,
            stored: state,
            high_watermark,
            applied: 0,
        })
    }

    pub fn replica(&self) -> &Replica<PartitionStore> {
        &self.replica
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Records below this offset are committed: what consumers may read.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn tick(&mut self) -> bool {
        self.replica.tick()
    }

    pub fn receive(&mut self, message: Message) -> Result<()> {
        self.replica.receive(message)
    }

    pub fn campaign(&mut self) -> Result<()> {
        self.replica.campaign()
    }

    /// Proposes record batches (what one produce request holds for this partition) if this
    /// replica leads. Returns the entry's index; its records are committed once the high
    /// watermark passes `end_offset_of(index)`.
    pub fn propose(&mut self, batches: Bytes) -> Result<u64> {
        let before = self.replica.last_index();
        self.replica.propose(batches)?;
        let index = self.replica.last_index();
        if index != before + 1 {
            return Err(ReplicationError::Raft(raft::Error::ProposalDropped));
        }
        Ok(index)
    }

    /// Where entry `index`'s records end once it is in the window (durable or not).
    pub fn end_offset_of(&self, index: u64) -> Option<Offset> {
        self.replica.storage().end_offset_of(index)
    }

    /// Runs every piece of ready work now: persists in order (awaiting the disk) and applies.
    /// Returns the messages to send.
    pub async fn run_ready(&mut self) -> Result<Outbox> {
        let mut outbox = Outbox::default();
        while let Some(progress) = self.replica.advance()? {
            let Progress {
                send,
                persist,
                committed,
                ..
            } = progress;
            outbox.messages.extend(send);
            let number = persist.number;
            let send_after = self.persist(persist).await?;
            self.replica.persisted(number);
            outbox.messages.extend(send_after);
            if let Some(last) = committed.last() {
                self.applied = last.index;
                if let Some(end) = self.replica.storage().end_offset_of(last.index) {
                    self.high_watermark = end;
                }
            }
        }
        Ok(outbox)
    }

    async fn persist(&mut self, job: PersistJob) -> Result<Vec<Message>> {
        if let Some(hard_state) = &job.hard_state {
            let changed =
                hard_state.term != self.stored.term || hard_state.vote != self.stored.vote;
            if changed || job.must_sync {
                let state = StateFile {
                    term: hard_state.term,
                    vote: hard_state.vote,
                    commit: hard_state.commit,
                    ..self.stored.clone()
                };
                state.store(&self.dir)?;
                self.stored = state;
            } else {
                // Only the commit index moved: not worth a sync (a restart relearns it).
                self.stored.commit = hard_state.commit;
            }
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
                let appended = self.log.append(&bytes, epoch).await?;
                last = Some(appended.last_offset);
            }
            if let Some(last) = last {
                self.log.wait_durable(last).await?;
            }
        }
        Ok(job.send_after)
    }

    /// Closes the log cleanly (a restart then need not scan it).
    pub async fn close(self) -> Result<()> {
        self.log.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            voters: vec![1, 2, 3],
        }
    }

    #[test]
    fn the_state_file_reads_back_what_was_written() {
        let path = Path::new("raft-state");
        assert_eq!(StateFile::decode(&state().encode(), path).unwrap(), state());
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
