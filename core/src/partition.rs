//! One partition replica on its owning shard: its log, its idempotent-producer state, and the
//! fetches waiting for new data.
//!
//! Single node: this broker is the leader of every partition at epoch 0, and the high
//! watermark is the log end (every replica there is, is in sync). Records appended with acks=1
//! are visible to consumers before they are fdatasync'ed, as in Kafka.
//!
//! Appends take the partition's turn (a ticket lock, [`crate::turn`]) for the producer-state
//! check and the buffered append together, so the check always sees the batches before it; the
//! wait for durability (acks=all) happens after the turn is released, so appends still share
//! fdatasyncs (group commit). The ticket is taken when [`Partition::append`] is called, so
//! batches land in the order of those calls, whatever happens while they wait.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use sluice_storage::batch::{build_txn_marker, read_header, validate_batch, TxnMarker};
use sluice_storage::{AppendInfo, LeaderEpoch, Log, LogConfig, Offset, Result, StorageError};
use tracing::{info, warn};

use crate::changes::ChangeFeed;
use crate::cluster::{ReplicaLink, Until};
use crate::producers::{AbortedTxn, ProducerState, Verdict, SNAPSHOT_EVERY_BYTES};
use crate::shard::PartitionKey;
use crate::turn::{Ticket, Turn};

/// The leader epoch stamped on every batch (single node: leadership never changes).
pub const LEADER_EPOCH: LeaderEpoch = LeaderEpoch(0);

/// Bytes read at a time when rebuilding producer state from the log.
const REBUILD_READ_BYTES: usize = 1 << 20;

/// Cluster mode: how long an append waits for its elected leader to serve (one commit round
/// of the term's first entry, well under a second unless the disks stall) before it is
/// refused NOT_LEADER_OR_FOLLOWER.
const ELECTED_SERVING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Refused by the producer-state rules (sequence, epoch) or the request's shape.
    #[error("{1}")]
    Refused(ResponseError, String),
}

/// The answer for a batch that is in the log but whose durability failed (a failed write or
/// fdatasync poisons the log; a write refused for space is retried in the background): the
/// records may or may not be there after recovery. Kafka's code for "written to the log, but
/// not safely enough" is NOT_ENOUGH_REPLICAS_AFTER_APPEND, and clients treat it as possibly
/// persisted: an idempotent producer retries the batch with the same sequence (a duplicate is
/// then recognised) instead of renumbering it, as KAFKA_STORAGE_ERROR ("not persisted") would
/// let librdkafka do. A log closed meanwhile (topic deleted, shutdown) keeps its own answer.
fn written_not_durable(error: StorageError) -> AppendError {
    match error {
        StorageError::Closed => AppendError::Storage(error),
        error => AppendError::Refused(
            ResponseError::NotEnoughReplicasAfterAppend,
            format!("written to the log but not made durable (outcome unknown): {error}"),
        ),
    }
}

/// Asks a producer's transaction coordinator whether this partition is in its ongoing
/// transaction (`Err`: the code to refuse the batch with). Built by the produce path, which
/// knows the request's transactional id.
pub type TxnVerify = Box<
    dyn FnOnce()
        -> futures::future::LocalBoxFuture<'static, std::result::Result<(), ResponseError>>,
>;

pub struct Partition {
    log: Log,
    producers: RefCell<ProducerState>,
    /// Held from the producer check through the buffered append; served in call order.
    turn: Rc<Turn>,
    appended_since_snapshot: Cell<u64>,
    /// Fetches waiting for the log end to move. Senders whose receiver is gone are pruned on
    /// every registration, so the list holds at most the waiting fetches.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// The owning shard's change feed and this partition's key there (set once the shard has
    /// opened it; see [`Partition::note_changed`]).
    changes: std::cell::OnceCell<(Rc<ChangeFeed>, PartitionKey)>,
    /// Cluster mode: the partition's Raft group, which owns the log's appends.
    replica: Option<Rc<ReplicaLink>>,
}

impl Partition {
    /// Opens (recovers) the log, then rebuilds the producer state from the last snapshot and
    /// the batches after it.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<Partition> {
        let log = Log::open(dir, config).await?;
        Self::over_log(log, None).await
    }

    /// Cluster mode: the partition over its Raft group's log. The producer state covers the
    /// committed batches only (the rest are recorded as they commit, see
    /// [`Partition::apply_committed`]).
    pub async fn replicated(log: Log, replica: Rc<ReplicaLink>) -> Result<Partition> {
        Self::over_log(log, Some(replica)).await
    }

    async fn over_log(log: Log, replica: Option<Rc<ReplicaLink>>) -> Result<Partition> {
        let dir = log.dir().to_path_buf();
        let dir = dir.as_path();
        // What the state must reflect: the whole log on a single node; in cluster mode the
        // committed batches, which go on committing (on the replication loop) while the reads
        // below wait.
        let covered_end = || {
            replica
                .as_ref()
                .map_or_else(|| log.log_end_offset(), |r| r.high_watermark())
        };
        let mut end = covered_end();
        // A snapshot beyond the recovered log end describes batches that are gone: rebuild
        // from the start instead.
        let mut state = ProducerState::load(dir)
            .filter(|s| s.covered_to() <= end)
            .unwrap_or_default();
        let mut from = state.covered_to().max(log.log_start_offset());
        let rescan_from = from;
        loop {
            while from < end {
                let read = log.read(from, REBUILD_READ_BYTES).await?;
                let mut rest = &read.bytes[..];
                from = read.next_offset;
                while !rest.is_empty() {
                    let info =
                        validate_batch(rest, usize::MAX).expect("the log returns valid batches");
                    // A read runs on to the log end; in cluster mode batches past the
                    // committed end may still be truncated away, and are recorded once
                    // they commit.
                    if info.base_offset >= end {
                        from = info.base_offset;
                        break;
                    }
                    state.record(&info, &rest[..info.size_bytes]);
                    rest = &rest[info.size_bytes..];
                }
            }
            // Entries that committed while this partition was opening were handed to no
            // `apply_committed` (the shard finds the partition only once it is open): read
            // them too, until the committed end stands still. No await separates this check
            // from the shard putting the partition in its map, so every later entry is
            // applied there.
            let now = covered_end();
            if now <= end {
                break;
            }
            end = now;
        }
        state.cover_to(end);
        if rescan_from < end {
            info!(dir = %dir.display(), from = %rescan_from, to = %end, "producer state rebuilt from the log");
        }
        Ok(Partition {
            log,
            producers: RefCell::new(state),
            turn: Rc::new(Turn::new()),
            appended_since_snapshot: Cell::new(0),
            waiters: RefCell::default(),
            changes: std::cell::OnceCell::new(),
            replica,
        })
    }

    /// Cluster mode: the partition's Raft link.
    pub fn replica(&self) -> Option<&Rc<ReplicaLink>> {
        self.replica.as_ref()
    }

    /// Cluster mode: why this replica does not serve clients (it does not lead); `None` when
    /// it does, and always on a single node.
    pub fn not_leader(&self) -> Option<String> {
        self.replica
            .as_ref()
            .filter(|r| !r.is_leader())
            .map(|r| r.not_leader())
    }

    /// Whether a request may be served here: this replica leads, and the epoch the client
    /// believes current (`-1`: not checked, Kafka's KIP-320) is this leader's. A client
    /// behind gets FENCED_LEADER_EPOCH (its metadata is stale: refresh), one ahead
    /// UNKNOWN_LEADER_EPOCH (this replica has not learnt the new epoch yet: retry).
    pub fn refuses(&self, current_leader_epoch: i32) -> Option<ResponseError> {
        if self.not_leader().is_some() {
            return Some(ResponseError::NotLeaderOrFollower);
        }
        let current = self.leader_epoch();
        match current_leader_epoch {
            -1 => None,
            asked if asked < current => Some(ResponseError::FencedLeaderEpoch),
            asked if asked > current => Some(ResponseError::UnknownLeaderEpoch),
            _ => None,
        }
    }

    /// The leader epoch clients see (the Raft term in cluster mode).
    pub fn leader_epoch(&self) -> i32 {
        self.replica
            .as_ref()
            .map_or(LEADER_EPOCH.0, |r| r.leader_epoch())
    }

    /// Cluster mode: records newly committed entries in the producer state (every replica
    /// does, so a new leader keeps deduplicating).
    pub fn apply_committed(&self, entries: &[sluice_replication::partition::CommittedEntry]) {
        let mut producers = self.producers.borrow_mut();
        // Entries below `covered_to` are reflected already: the opening rebuild read them
        // from the log (they committed while it ran, and raft-rs hands them over after).
        let covered = producers.covered_to();
        for entry in entries
            .iter()
            .filter(|e| !e.data.is_empty() && e.base_offset >= covered)
        {
            if let Ok(header) = read_header(&entry.data, usize::MAX) {
                producers.record(
                    &sluice_storage::BatchInfo {
                        base_offset: entry.base_offset,
                        ..header
                    },
                    &entry.data,
                );
            }
        }
    }

    /// Cluster mode: the replica restored a leader's snapshot and its log now starts (empty)
    /// at `offset`. The producer state of the old log is dropped, as Kafka's
    /// `truncateFullyAndStartAt` drops it, with its snapshot file (a reopen rebuilds from the
    /// new log); waiting fetches look again.
    pub fn started_over(&self, offset: Offset) {
        let mut fresh = ProducerState::default();
        fresh.cover_to(offset);
        *self.producers.borrow_mut() = fresh;
        self.appended_since_snapshot.set(0);
        let snapshot = self.dir().join(crate::producers::SNAPSHOT_FILE);
        if let Err(e) = std::fs::remove_file(&snapshot) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(file = %snapshot.display(), error = %e, "cannot remove a stale producer snapshot");
            }
        }
        self.note_changed();
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The offset of each known idempotent producer's last batch.
    pub fn producer_last_offsets(&self) -> std::collections::HashMap<i64, i64> {
        self.producers.borrow().last_offsets()
    }

    /// The idempotent producers this partition knows, with their last batch.
    pub fn active_producers(&self) -> Vec<crate::producers::ActiveProducer> {
        self.producers.borrow().active()
    }

    pub fn dir(&self) -> &Path {
        self.log.dir()
    }

    /// The offset after the last record a consumer may read: on a single node the end of what
    /// is durable (fdatasync'd), in cluster mode the end of the committed entries. Never a
    /// record that a crash could still take back: a consumer that read a record must find it
    /// again after any restart (the chaos harness found a single broker serving appended but
    /// not yet written records, which a SIGKILL then lost and the producer's retry replaced).
    pub fn high_watermark(&self) -> Offset {
        match &self.replica {
            Some(replica) => replica.high_watermark(),
            None => self
                .log
                .durable_end_offset()
                .max(self.log.log_start_offset()),
        }
    }

    /// Appends one validated batch (Produce v3+ carries exactly one per partition); with
    /// `durable`, resolves only once it is fdatasync'ed. A retry of a batch an idempotent
    /// producer already wrote is not appended again: its original offsets are returned.
    ///
    /// The batch's place in the partition's append order is taken by this call, before the
    /// returned future is first polled: batches of calls made one after another land in that
    /// order (a connection's produce requests rely on it).
    ///
    /// Control batches are refused here: transaction markers come from the transaction
    /// coordinator, through [`Partition::append_marker`].
    pub fn append(
        self: &Rc<Self>,
        batch: Bytes,
        durable: bool,
    ) -> impl Future<Output = std::result::Result<AppendInfo, AppendError>> + 'static {
        self.append_verified(batch, durable, None)
    }

    /// [`Partition::append`], and for a transactional batch that would open its producer's
    /// transaction here (KIP-890 part 1), `verify` asked first, in the batch's turn: its
    /// refusal refuses the batch. The turn is held across it, so nothing else of the
    /// partition's order moves meanwhile (a marker ending the transaction included).
    pub fn append_verified(
        self: &Rc<Self>,
        batch: Bytes,
        durable: bool,
        verify: Option<TxnVerify>,
    ) -> impl Future<Output = std::result::Result<AppendInfo, AppendError>> + 'static {
        let ticket = self.turn.ticket();
        let this = self.clone();
        async move {
            this.append_in_turn(ticket, batch, durable, false, verify)
                .await
        }
    }

    /// Appends a transaction marker ending `producer_id`'s transaction on this partition
    /// (whether or not one is open here); resolves once it is durable. Its place in the
    /// append order is taken by this call, as with [`Partition::append`].
    pub fn append_marker(
        self: &Rc<Self>,
        producer_id: i64,
        producer_epoch: i16,
        marker: TxnMarker,
    ) -> impl Future<Output = std::result::Result<AppendInfo, AppendError>> + 'static {
        let ticket = self.turn.ticket();
        let this = self.clone();
        let batch = build_txn_marker(
            sluice_storage::types::now_ms(),
            producer_id,
            producer_epoch,
            marker,
        );
        async move {
            this.append_in_turn(ticket, batch.into(), true, true, None)
                .await
        }
    }

    async fn append_in_turn(
        self: &Rc<Self>,
        ticket: Ticket,
        batch: Bytes,
        durable: bool,
        marker: bool,
        verify: Option<TxnVerify>,
    ) -> std::result::Result<AppendInfo, AppendError> {
        // Only the header's fields are needed here: the CRC was checked on the connection's
        // shard (or the batch was built here), and the log checks it again before writing.
        let header =
            read_header(&batch, usize::MAX).map_err(|source| StorageError::InvalidBatch {
                position: 0,
                source,
            })?;
        if header.size_bytes != batch.len() {
            return Err(AppendError::Refused(
                ResponseError::InvalidRecord,
                "a partition's records must be exactly one record batch".into(),
            ));
        }
        if header.is_control() != marker {
            return Err(AppendError::Refused(
                ResponseError::InvalidRecord,
                "control batches are written by the transaction coordinator only".into(),
            ));
        }
        if let Some(replica) = &self.replica {
            return self
                .propose_in_turn(replica, ticket, batch, &header, durable, verify)
                .await;
        }
        let batch = &batch[..];
        let turn = ticket.await;
        let verdict = self.verdict(&header, batch, verify).await;
        // A log that takes no appends refuses before a sequence error, as Kafka's offline log
        // refuses every produce: a producer whose earlier batch this log refused must see its
        // later in-flight batches refused the same way (KAFKA_STORAGE_ERROR, not persisted),
        // not OUT_OF_ORDER_SEQUENCE_NUMBER, which makes librdkafka bump its epoch and renumber
        // its unacknowledged records. A retry of a batch already in the log is not refused so:
        // "not persisted" would be untrue of it (it is answered below, as a duplicate).
        if !matches!(verdict, Verdict::Duplicate(_)) {
            self.log.check_appendable()?;
        }
        let appended = match verdict {
            Verdict::Reject(code, message) => return Err(AppendError::Refused(code, message)),
            Verdict::Duplicate(kept) => {
                drop(turn);
                if durable {
                    self.log
                        .wait_durable(Offset(kept.last_offset))
                        .await
                        .map_err(written_not_durable)?;
                }
                return Ok(AppendInfo {
                    base_offset: Offset(kept.base_offset),
                    last_offset: Offset(kept.last_offset),
                    batch_count: 1,
                });
            }
            Verdict::Append => self.log.append(batch, LEADER_EPOCH).await?,
        };
        self.producers.borrow_mut().record(
            &sluice_storage::BatchInfo {
                base_offset: appended.base_offset,
                ..header
            },
            batch,
        );
        drop(turn);
        // The high watermark moves once the records are durable: then fetches waiting on this
        // partition may see them. Without acks=all nobody waits for that here, so a task does
        // (the shard's next group-commit round makes them durable).
        if durable {
            self.log
                .wait_durable(appended.last_offset)
                .await
                .map_err(written_not_durable)?;
            self.note_changed();
        } else {
            let (this, last) = (self.clone(), appended.last_offset);
            glommio::spawn_local(async move {
                if this.log.wait_durable(last).await.is_ok() {
                    this.note_changed();
                }
            })
            .detach();
        }
        let since = self.appended_since_snapshot.get() + batch.len() as u64;
        self.appended_since_snapshot.set(since);
        if since >= SNAPSHOT_EVERY_BYTES {
            self.appended_since_snapshot.set(0);
            if let Err(e) = self.snapshot_producers().await {
                warn!(dir = %self.dir().display(), error = %e, "cannot snapshot producer state");
            }
        }
        Ok(appended)
    }

    /// Cluster mode: the batch goes to the Raft group (on its leader only). A plain batch is
    /// answered as `durable` asks and releases the turn once queued, so appends pipeline. An
    /// idempotent producer's batch holds the turn until it commits, because the producer state
    /// its successor is checked against holds committed batches only.
    /// What to do with a batch, in its turn: the producer state's verdict, and for a
    /// transactional batch that would open its producer's transaction here, `verify`'s
    /// (KIP-890 part 1), asked while the turn is held.
    async fn verdict(
        &self,
        header: &sluice_storage::BatchInfo,
        batch: &[u8],
        verify: Option<TxnVerify>,
    ) -> Verdict {
        let verdict = self.producers.borrow().check(header, batch);
        let Some(verify) = verify else {
            return verdict;
        };
        let opens = matches!(verdict, Verdict::Append)
            && header.is_transactional()
            && !self
                .producers
                .borrow()
                .has_open_transaction(header.producer_id);
        if !opens {
            return verdict;
        }
        match verify().await {
            Ok(()) => verdict,
            Err(code) => Verdict::Reject(
                code,
                format!(
                    "producer {} epoch {}: the partition is not in its ongoing transaction \
                     (KIP-890 verification; AddPartitionsToTxn first)",
                    header.producer_id, header.producer_epoch
                ),
            ),
        }
    }

    async fn propose_in_turn(
        &self,
        replica: &ReplicaLink,
        ticket: Ticket,
        batch: Bytes,
        header: &sluice_storage::BatchInfo,
        durable: bool,
        verify: Option<TxnVerify>,
    ) -> std::result::Result<AppendInfo, AppendError> {
        let turn = ticket.await;
        // An elected leader that does not serve yet holds the append (and every later one of
        // the partition, behind the turn) until it does; see `ReplicaLink::until_serving`.
        if !replica.until_serving(ELECTED_SERVING_WAIT).await {
            return Err(AppendError::Refused(
                ResponseError::NotLeaderOrFollower,
                replica.not_leader(),
            ));
        }
        let verdict = self.verdict(header, &batch, verify).await;
        // As on a single node: a log that takes no appends refuses before a sequence error,
        // and a retry of a committed batch is answered as a duplicate all the same.
        if !matches!(verdict, Verdict::Duplicate(_)) {
            self.log.check_appendable()?;
        }
        match verdict {
            Verdict::Reject(code, message) => return Err(AppendError::Refused(code, message)),
            // The kept batch is committed: nothing to wait for.
            Verdict::Duplicate(kept) => {
                return Ok(AppendInfo {
                    base_offset: Offset(kept.base_offset),
                    last_offset: Offset(kept.last_offset),
                    batch_count: 1,
                })
            }
            Verdict::Append => {}
        }
        let idempotent = header.producer_id >= 0;
        let until = if durable || idempotent {
            Until::Committed
        } else {
            Until::Appended
        };
        let answer = replica.propose(batch, until);
        if !idempotent {
            drop(turn);
        }
        answer.await.unwrap_or_else(|_| {
            Err(AppendError::Refused(
                ResponseError::NotLeaderOrFollower,
                "the replica closed before the batch was written".into(),
            ))
        })
    }

    /// Writes the producer-state snapshot, once the log is durable up to what it covers (so a
    /// crash never leaves a snapshot ahead of the recovered log).
    async fn snapshot_producers(&self) -> Result<()> {
        self.forget_aborted_gone();
        let json = self.producers.borrow().to_snapshot();
        let covered = self.producers.borrow().covered_to();
        if covered > Offset::ZERO {
            self.log.wait_durable(covered.plus(-1)).await?;
        }
        sluice_storage::io::write_file_atomically(
            self.dir(),
            crate::producers::SNAPSHOT_FILE,
            &json,
        )
        .await
    }

    /// The last stable offset: the offset after the last record a read_committed consumer may
    /// read. The high watermark, or the first offset of the oldest open transaction if lower.
    pub fn last_stable_offset(&self) -> Offset {
        let high_watermark = self.high_watermark();
        self.producers
            .borrow()
            .first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions a read_committed consumer of `[from, to)` must be told of.
    pub fn aborted_between(&self, from: Offset, to: Offset) -> Vec<AbortedTxn> {
        self.producers.borrow().aborted_between(from, to)
    }

    /// The open transactions here: (producer id, first offset), oldest first.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.producers.borrow().open_transactions()
    }

    /// Resolves once the high watermark is above `seen` (at once if it already is), or when
    /// the partition is closed.
    pub fn wait_beyond(&self, seen: Offset) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.high_watermark() > seen {
            let _ = tx.send(());
        } else {
            let mut waiters = self.waiters.borrow_mut();
            waiters.retain(|w| !w.is_canceled());
            waiters.push(tx);
        }
        rx
    }

    /// Drops the records before `offset` (DeleteRecords, offsets-topic cleanup); answers the
    /// new log start offset. In cluster mode, on the leader only: every replica cuts at the
    /// same offset as it applies the Raft entry this proposes; answered once it committed
    /// (the leader's own cut is made by then).
    pub async fn truncate_prefix(&self, offset: Offset) -> Result<Offset, AppendError> {
        if let Some(link) = &self.replica {
            if !link.is_leader() {
                return Err(AppendError::Refused(
                    ResponseError::NotLeaderOrFollower,
                    link.not_leader(),
                ));
            }
            if offset > self.log.log_start_offset() {
                link.propose_log_start(offset).await.map_err(|_| {
                    AppendError::Refused(
                        ResponseError::NotLeaderOrFollower,
                        "the replica was closed".into(),
                    )
                })??;
            }
            return Ok(self.log.log_start_offset());
        }
        let start = self.log.truncate_prefix(offset).await;
        self.forget_aborted_gone();
        self.note_changed();
        Ok(start?)
    }

    /// Forgets the aborted transactions whose records retention or DeleteRecords removed.
    fn forget_aborted_gone(&self) {
        self.producers
            .borrow_mut()
            .forget_aborted_before(self.log.log_start_offset());
    }

    /// Reports this partition's changes to `feed` under `key` from now on (the owning shard
    /// calls it once, as it opens the partition).
    pub fn attach_changes(&self, feed: Rc<ChangeFeed>, key: PartitionKey) {
        let _ = self.changes.set((feed, key));
    }

    /// Tells whoever watches that the high watermark or log start offset may have moved (or
    /// the partition closed): the fetches waiting on this partition, and the shard's change
    /// feed (fetch sessions). Every such change must call this.
    pub fn note_changed(&self) {
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
        if let Some((feed, key)) = self.changes.get() {
            feed.push(*key);
        }
    }

    /// Flushes and closes the log, then snapshots the producer state; waiting fetches are
    /// released.
    pub async fn close(&self) -> Result<()> {
        self.waiters.borrow_mut().clear();
        if let Some((feed, key)) = self.changes.get() {
            feed.push(*key);
        }
        self.forget_aborted_gone();
        let json = self.producers.borrow().to_snapshot();
        // Cluster mode: the Raft group owns the log and closes it (it records its commit
        // point as it does).
        if self.replica.is_none() {
            self.log.close().await?;
        }
        sluice_storage::io::write_file_atomically(
            self.dir(),
            crate::producers::SNAPSHOT_FILE,
            &json,
        )
        .await
    }
}

/// The Kafka error for a partition that could not be opened or read: a closed log belongs to a
/// deleted topic (UNKNOWN_TOPIC_OR_PARTITION, which clients answer by refreshing metadata);
/// anything else is the disk's fault.
pub fn unavailable_code(e: &StorageError) -> kafka_protocol::ResponseError {
    match e {
        StorageError::Closed => kafka_protocol::ResponseError::UnknownTopicOrPartition,
        _ => kafka_protocol::ResponseError::KafkaStorageError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::batch::build_batch;

    /// A batch of `records` records from producer `(id, epoch)` at `sequence`, flagged
    /// transactional if `transactional`.
    fn producer_batch(
        id: i64,
        epoch: i16,
        sequence: i32,
        records: usize,
        transactional: bool,
    ) -> Bytes {
        let recs: Vec<(i64, &[u8], &[u8])> =
            (0..records).map(|_| (1, &b"k"[..], &b"v"[..])).collect();
        let mut batch = build_batch(1, &recs);
        batch[43..51].copy_from_slice(&id.to_be_bytes());
        batch[51..53].copy_from_slice(&epoch.to_be_bytes());
        batch[53..57].copy_from_slice(&sequence.to_be_bytes());
        if transactional {
            batch[22] |= 0x10;
        }
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        batch.into()
    }

    fn plain() -> Bytes {
        build_batch(1, &[(1, b"k", b"v")]).into()
    }

    const ABORT: TxnMarker = TxnMarker {
        commit: false,
        coordinator_epoch: 0,
    };
    const COMMIT: TxnMarker = TxnMarker {
        commit: true,
        coordinator_epoch: 0,
    };

    /// Reopens the partition in `dir`, from its snapshot or (`rebuild`) from the log alone.
    async fn reopen(dir: &Path, rebuild: bool) -> Rc<Partition> {
        if rebuild {
            std::fs::remove_file(dir.join(crate::producers::SNAPSHOT_FILE)).unwrap();
        }
        Rc::new(Partition::open(dir, LogConfig::default()).await.unwrap())
    }

    #[test]
    fn transactions_hold_the_stable_offset_until_their_markers_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let p = Rc::new(Partition::open(&dir, LogConfig::default()).await.unwrap());
            p.append(plain(), true).await.unwrap();
            let first = p
                .append(producer_batch(7, 0, 0, 2, true), true)
                .await
                .unwrap();
            assert_eq!(first.base_offset, Offset(1));
            p.append(plain(), true).await.unwrap();
            assert_eq!(p.high_watermark(), Offset(4));
            assert_eq!(
                p.last_stable_offset(),
                Offset(1),
                "the open transaction's start"
            );
            // The producer's plain batch is refused while its transaction is open.
            assert!(matches!(
                p.append(producer_batch(7, 0, 2, 1, false), true).await,
                Err(AppendError::Refused(ResponseError::InvalidTxnState, _))
            ));
            // A client's control batch is refused: markers come from the coordinator.
            let control = sluice_storage::batch::build_txn_marker(0, 7, 0, COMMIT);
            assert!(matches!(
                p.append(control.into(), true).await,
                Err(AppendError::Refused(ResponseError::InvalidRecord, _))
            ));
            let abort = p.append_marker(7, 0, ABORT).await.unwrap();
            assert_eq!(abort.base_offset, Offset(4));
            assert_eq!(p.last_stable_offset(), Offset(5));
            let aborted = AbortedTxn {
                producer_id: 7,
                first_offset: 1,
                last_offset: 4,
            };
            assert_eq!(p.aborted_between(Offset(0), Offset(5)), vec![aborted]);
            // The next transaction commits; a third stays open.
            p.append(producer_batch(7, 0, 2, 1, true), true)
                .await
                .unwrap();
            p.append_marker(7, 0, COMMIT).await.unwrap();
            assert_eq!(p.last_stable_offset(), Offset(7));
            p.append(producer_batch(9, 3, 0, 1, true), true)
                .await
                .unwrap();
            assert_eq!(p.last_stable_offset(), Offset(7));
            // A marker from an older producer epoch is refused.
            assert!(matches!(
                p.append_marker(9, 2, COMMIT).await,
                Err(AppendError::Refused(ResponseError::InvalidProducerEpoch, _))
            ));
            p.close().await.unwrap();
            drop(p);

            for rebuild in [false, true] {
                let p = reopen(&dir, rebuild).await;
                assert_eq!(p.high_watermark(), Offset(8), "rebuild {rebuild}");
                assert_eq!(p.last_stable_offset(), Offset(7), "rebuild {rebuild}");
                assert_eq!(p.open_transactions(), vec![(9, 7)], "rebuild {rebuild}");
                assert_eq!(
                    p.aborted_between(Offset(0), Offset(8)),
                    vec![aborted],
                    "rebuild {rebuild}"
                );
                p.close().await.unwrap();
            }
            let p = reopen(&dir, false).await;
            p.append_marker(9, 3, ABORT).await.unwrap();
            assert_eq!(p.last_stable_offset(), Offset(9));
            assert_eq!(p.aborted_between(Offset(5), Offset(9)).len(), 1);
            // Records gone from the log take their aborted transactions with them.
            p.truncate_prefix(Offset(5)).await.unwrap();
            assert_eq!(
                p.aborted_between(Offset(0), Offset(9)),
                vec![AbortedTxn {
                    producer_id: 9,
                    first_offset: 7,
                    last_offset: 8,
                }]
            );
            p.close().await.unwrap();
        });
    }
}
