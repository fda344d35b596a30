//! Idempotent producers: per-partition producer state, the sequence checks that make a retried
//! batch land exactly once, and its persistence.
//!
//! For each producer id seen on a partition the state keeps the producer epoch and the last
//! [`BATCHES_KEPT`] batches (first and last sequence, offsets), as Kafka does. An incoming
//! batch is, in this order (Kafka's `ProducerStateManager` rules):
//! - from an older epoch: INVALID_PRODUCER_EPOCH;
//! - from a newer epoch: accepted only at sequence 0 (a new epoch starts over);
//! - a repeat of a kept batch (same first and last sequence): not appended again, answered
//!   with the original offsets;
//! - the next sequence after the last batch: appended;
//! - anything else (a gap, or an unknown producer not starting at 0):
//!   OUT_OF_ORDER_SEQUENCE_NUMBER.
//!
//! Transactions (KIP-98): a producer's first transactional batch on the partition opens its
//! transaction there, and the coordinator's marker (a control batch, [`TxnMarker`]) ends it.
//! While a transaction is open:
//! - the partition's last stable offset (LSO) stays at or below its first offset
//!   ([`ProducerState::first_unstable_offset`]), so read_committed consumers wait for it;
//! - a non-transactional batch from that producer is refused INVALID_TXN_STATE.
//!
//! A marker from an older producer epoch is refused INVALID_PRODUCER_EPOCH, one from an older
//! coordinator epoch TRANSACTION_COORDINATOR_FENCED. An abort marker records the
//! transaction's range (producer, first offset, marker offset) in the *aborted index*, which
//! read_committed fetches hand to consumers so they skip its records; entries whose range lies
//! wholly before the log start are forgotten ([`ProducerState::forget_aborted_before`]).
//!
//! Persistence: the state is a function of the log, so it is rebuilt by reading the batch
//! headers from where the last snapshot (`producer-state` in the partition directory) ends.
//! A snapshot is written when the partition closes and after every [`SNAPSHOT_EVERY_BYTES`]
//! appended, so a restart after a crash rescans at most that much.
//!
//! Invariants: `covered_to` is the offset up to which the log's batches are reflected; `open`
//! holds exactly the producers whose transaction is open, by its first offset; `aborted` is
//! in marker (last offset) order.
//!
//! [`describe_producers`] answers DescribeProducers (61) from the partition leaders' state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use sluice_storage::batch::txn_marker;
use sluice_storage::{BatchInfo, Offset};

/// Batches remembered per producer for duplicate detection (Kafka's value; producers keep at
/// most 5 requests in flight when idempotent).
pub const BATCHES_KEPT: usize = 5;

/// Producers remembered per partition; past this the least recently written is forgotten
/// (a bound on memory; Kafka expires producers after `producer.id.expiration.ms`).
pub const PRODUCERS_MAX: usize = 10_000;

/// The base sequence of a batch without one (Kafka's `RecordBatch.NO_SEQUENCE`).
pub const NO_SEQUENCE: i32 = -1;

/// Bytes appended between two snapshots.
pub const SNAPSHOT_EVERY_BYTES: u64 = 64 << 20;

/// File name of the snapshot in the partition directory.
pub const SNAPSHOT_FILE: &str = "producer-state";

const SNAPSHOT_FORMAT: u32 = 1;

/// One batch of a producer, as remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Producer {
    epoch: i16,
    batches: VecDeque<KeptBatch>,
    /// The max timestamp of its last batch (snapshots written before it: -1 until the next).
    #[serde(default = "unknown_timestamp")]
    last_timestamp: i64,
    /// The first offset of its open transaction on this partition (`None`: none open).
    #[serde(default)]
    txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last marker it got here (-1: none yet).
    #[serde(default = "no_coordinator_epoch")]
    coordinator_epoch: i32,
}

impl Default for Producer {
    fn default() -> Producer {
        Producer {
            epoch: 0,
            batches: VecDeque::new(),
            last_timestamp: unknown_timestamp(),
            txn_first_offset: None,
            coordinator_epoch: no_coordinator_epoch(),
        }
    }
}

fn unknown_timestamp() -> i64 {
    -1
}

fn no_coordinator_epoch() -> i32 {
    -1
}

/// An aborted transaction as read_committed consumers are told of it: its records are the
/// producer's batches from `first_offset` up to the abort marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// A producer as DescribeProducers (61) lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    /// Of its last batch (-1: not known).
    pub last_timestamp: i64,
    /// The epoch of the coordinator of its last marker here (-1: none).
    pub coordinator_epoch: i32,
    /// The first offset of its open transaction here (-1: none).
    pub txn_start_offset: i64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// Already in the log: answer with these offsets.
    Duplicate(KeptBatch),
    Reject(ResponseError, String),
}

/// The producer state of one partition.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProducerState {
    producers: HashMap<i64, Producer>,
    covered_to: i64,
    aborted: VecDeque<AbortedTxn>,
    /// Open transactions: first offset -> producer id (derived from `producers`).
    #[serde(skip)]
    open: BTreeMap<i64, i64>,
}

/// A snapshot file as read back. Its fields are spelled out rather than `flatten`ed: serde's
/// `flatten` buffers the map, and a buffered JSON object key ("9") no longer parses as the
/// producer id's integer, so every snapshot with a producer in it failed to load (and the
/// partition silently rescanned its whole log at open) until this was found.
#[derive(Deserialize)]
struct Snapshot {
    format: u32,
    producers: HashMap<i64, Producer>,
    covered_to: i64,
    /// Absent from snapshots written before transactions.
    #[serde(default)]
    aborted: VecDeque<AbortedTxn>,
}

impl ProducerState {
    /// The offset up to which the log is reflected here.
    pub fn covered_to(&self) -> Offset {
        Offset(self.covered_to)
    }

    /// Whether `producer_id` has a transaction open on this partition.
    pub fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|p| p.txn_first_offset.is_some())
    }

    /// Judges a batch before it is appended (`bytes`: the whole batch; a marker's record is
    /// read from it).
    pub fn check(&self, batch: &BatchInfo, bytes: &[u8]) -> Verdict {
        if batch.producer_id < 0 {
            return Verdict::Append;
        }
        if batch.is_control() {
            return self.check_marker(batch, bytes);
        }
        if batch.base_sequence == NO_SEQUENCE {
            return self.check_unsequenced(batch);
        }
        let out_of_order = |detail: String| {
            Verdict::Reject(
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {} epoch {}: {detail}",
                    batch.producer_id, batch.producer_epoch
                ),
            )
        };
        let Some(producer) = self.producers.get(&batch.producer_id) else {
            return if batch.base_sequence == 0 {
                Verdict::Append
            } else {
                out_of_order(format!(
                    "unknown producer must start at sequence 0, not {}",
                    batch.base_sequence
                ))
            };
        };
        if let Some(refused) = older_epoch(batch, producer) {
            return refused;
        }
        if producer.txn_first_offset.is_some() && !batch.is_transactional() {
            return Verdict::Reject(
                ResponseError::InvalidTxnState,
                format!(
                    "producer {} has a transaction open on this partition: its batches must be \
                     transactional until the transaction ends",
                    batch.producer_id
                ),
            );
        }
        if batch.producer_epoch > producer.epoch {
            return if batch.base_sequence == 0 {
                Verdict::Append
            } else {
                out_of_order(format!(
                    "a new epoch starts at sequence 0, not {}",
                    batch.base_sequence
                ))
            };
        }
        if let Some(kept) = producer.batches.iter().find(|k| {
            k.first_sequence == batch.base_sequence && k.last_sequence == batch.last_sequence()
        }) {
            // A transactional batch is a retry only of a batch of the transaction still open
            // here. One that repeats the sequences of a batch from a transaction that has
            // ended (a marker came between) is a new record reusing a sequence whose batch its
            // client gave up on: answered as a duplicate, it would be acknowledged at the old
            // batch's offset and never be visible, since that batch's transaction ended. Kafka
            // answers it as a duplicate; librdkafka 2.x sends it when it purges a batch that
            // was retried after an error (possibly written) in abort_transaction and hands the
            // batch's sequences to the next transaction (the chaos harness lost a committed
            // record so, seed 8 of kill,write_eio,fdatasync_eio). Refused instead, so the
            // client aborts that transaction and bumps its epoch, and nothing is lost.
            let of_open_transaction = producer
                .txn_first_offset
                .is_some_and(|first| kept.base_offset >= first);
            if batch.is_transactional() && !of_open_transaction {
                return out_of_order(format!(
                    "sequences {}..={} belong to a batch at offset {} whose transaction has \
                     ended: a new batch must not reuse them",
                    batch.base_sequence,
                    batch.last_sequence(),
                    kept.base_offset
                ));
            }
            return Verdict::Duplicate(*kept);
        }
        let expected = producer.batches.back().map_or(0, |last| {
            sluice_storage::batch::next_sequence(last.last_sequence, 1)
        });
        if batch.base_sequence == expected {
            Verdict::Append
        } else {
            out_of_order(format!(
                "expected sequence {expected}, got {}",
                batch.base_sequence
            ))
        }
    }

    /// A batch without a sequence, which only coordinators write (TxnOffsetCommit's offsets in
    /// `__consumer_offsets`; clients' are refused before they get here): refused from an older
    /// epoch, else appended without sequence checks.
    fn check_unsequenced(&self, batch: &BatchInfo) -> Verdict {
        self.producers
            .get(&batch.producer_id)
            .and_then(|producer| older_epoch(batch, producer))
            .unwrap_or(Verdict::Append)
    }

    /// A transaction marker: refused from an older producer epoch (a fenced incarnation's
    /// coordinator state) or an older coordinator; anything else is appended, whether or not
    /// a transaction is open here (the coordinator writes markers to every partition it
    /// added, some of which may have received nothing).
    fn check_marker(&self, batch: &BatchInfo, bytes: &[u8]) -> Verdict {
        let Some(marker) = txn_marker(bytes) else {
            return Verdict::Reject(
                ResponseError::InvalidRecord,
                "a control batch of a producer must be a transaction marker".into(),
            );
        };
        let Some(producer) = self.producers.get(&batch.producer_id) else {
            return Verdict::Append;
        };
        if let Some(refused) = older_epoch(batch, producer) {
            return refused;
        }
        if marker.coordinator_epoch < producer.coordinator_epoch {
            return Verdict::Reject(
                ResponseError::TransactionCoordinatorFenced,
                format!(
                    "marker of producer {} from coordinator epoch {} after one from epoch {}",
                    batch.producer_id, marker.coordinator_epoch, producer.coordinator_epoch
                ),
            );
        }
        Verdict::Append
    }

    /// Records a batch the log now holds (its base offset stamped; `bytes`: the whole batch).
    pub fn record(&mut self, batch: &BatchInfo, bytes: &[u8]) {
        self.covered_to = self.covered_to.max(batch.next_offset().0);
        if batch.producer_id < 0 {
            return;
        }
        let marker = if batch.is_control() {
            // Raft's own control batches carry no producer; a producer's control batch that is
            // not a marker was refused before it was appended.
            match txn_marker(bytes) {
                Some(marker) => Some(marker),
                None => return,
            }
        } else {
            None
        };
        if !self.producers.contains_key(&batch.producer_id) && self.producers.len() >= PRODUCERS_MAX
        {
            self.forget_least_recent();
        }
        let producer = self.producers.entry(batch.producer_id).or_default();
        if batch.producer_epoch != producer.epoch {
            producer.epoch = batch.producer_epoch;
            producer.batches.clear();
        }
        if let Some(marker) = marker {
            producer.coordinator_epoch = marker.coordinator_epoch;
            if let Some(first_offset) = producer.txn_first_offset.take() {
                self.open.remove(&first_offset);
                if !marker.commit {
                    self.aborted.push_back(AbortedTxn {
                        producer_id: batch.producer_id,
                        first_offset,
                        last_offset: batch.base_offset.0,
                    });
                }
            }
            return;
        }
        if batch.is_transactional() && producer.txn_first_offset.is_none() {
            producer.txn_first_offset = Some(batch.base_offset.0);
            self.open.insert(batch.base_offset.0, batch.producer_id);
        }
        if batch.base_sequence == NO_SEQUENCE {
            // Nothing to deduplicate against: a coordinator's batch.
            return;
        }
        producer.last_timestamp = batch.max_timestamp;
        producer.batches.push_back(KeptBatch {
            first_sequence: batch.base_sequence,
            last_sequence: batch.last_sequence(),
            base_offset: batch.base_offset.0,
            last_offset: batch.last_offset().0,
        });
        while producer.batches.len() > BATCHES_KEPT {
            producer.batches.pop_front();
        }
    }

    /// The offset of each known producer's last batch: compaction keeps that batch (emptied if
    /// need be) so the producer's sequence survives a rebuild from the log.
    pub fn last_offsets(&self) -> HashMap<i64, i64> {
        self.producers
            .iter()
            .filter_map(|(id, p)| p.batches.back().map(|b| (*id, b.last_offset)))
            .collect()
    }

    /// Every producer known here with its last batch, by producer id.
    pub fn active(&self) -> Vec<ActiveProducer> {
        let mut active: Vec<ActiveProducer> = self
            .producers
            .iter()
            .filter_map(|(id, p)| {
                p.batches.back().map(|last| ActiveProducer {
                    producer_id: *id,
                    epoch: p.epoch,
                    last_sequence: last.last_sequence,
                    last_timestamp: p.last_timestamp,
                    coordinator_epoch: p.coordinator_epoch,
                    txn_start_offset: p.txn_first_offset.unwrap_or(-1),
                })
            })
            .collect();
        active.sort_by_key(|p| p.producer_id);
        active
    }

    /// The first offset of the oldest open transaction (`None`: none open). The last stable
    /// offset is the high watermark or this, whichever is lower.
    pub fn first_unstable_offset(&self) -> Option<Offset> {
        self.open.keys().next().map(|first| Offset(*first))
    }

    /// The open transactions: (producer id, first offset), oldest first.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.open.iter().map(|(first, id)| (*id, *first)).collect()
    }

    /// The aborted transactions whose records overlap `[from, to)`: those a read_committed
    /// consumer of that range must be told of.
    pub fn aborted_between(&self, from: Offset, to: Offset) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from.0);
        self.aborted
            .iter()
            .skip(start)
            .filter(|a| a.first_offset < to.0)
            .copied()
            .collect()
    }

    /// Forgets the aborted transactions that end before `offset` (the log start: their records
    /// are gone).
    pub fn forget_aborted_before(&mut self, offset: Offset) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < offset.0)
        {
            self.aborted.pop_front();
        }
    }

    /// Marks offsets up to `offset` as reflected (batches without producers in between).
    pub fn cover_to(&mut self, offset: Offset) {
        self.covered_to = self.covered_to.max(offset.0);
    }

    /// Forgets the producer written longest ago, among those without an open transaction (an
    /// open transaction holds the last stable offset back: it cannot be forgotten).
    fn forget_least_recent(&mut self) {
        let oldest = self
            .producers
            .iter()
            .filter(|(_, p)| p.txn_first_offset.is_none())
            .min_by_key(|(_, p)| p.batches.back().map_or(i64::MIN, |b| b.last_offset))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }

    /// The snapshot in `dir`, if there is a readable one of this format.
    pub fn load(dir: &Path) -> Option<ProducerState> {
        let bytes = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
        let snapshot: Snapshot = serde_json::from_slice(&bytes).ok()?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return None;
        }
        let open = snapshot
            .producers
            .iter()
            .filter_map(|(id, p)| Some((p.txn_first_offset?, *id)))
            .collect();
        Some(ProducerState {
            producers: snapshot.producers,
            covered_to: snapshot.covered_to,
            aborted: snapshot.aborted,
            open,
        })
    }

    /// The snapshot file's contents for the state as it is now.
    pub fn to_snapshot(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct SnapshotRef<'a> {
            format: u32,
            #[serde(flatten)]
            state: &'a ProducerState,
        }
        serde_json::to_vec(&SnapshotRef {
            format: SNAPSHOT_FORMAT,
            state: self,
        })
        .expect("producer state always serializes")
    }
}

/// INVALID_PRODUCER_EPOCH for a batch (data, marker, or a coordinator's) from an epoch older
/// than the producer's current one: a fenced incarnation.
fn older_epoch(batch: &BatchInfo, producer: &Producer) -> Option<Verdict> {
    (batch.producer_epoch < producer.epoch).then(|| {
        Verdict::Reject(
            ResponseError::InvalidProducerEpoch,
            format!(
                "producer {} epoch {} is older than the current epoch {}",
                batch.producer_id, batch.producer_epoch, producer.epoch
            ),
        )
    })
}

/// One partition DescribeProducers asks about.
#[derive(Debug, Clone)]
pub struct ProducersQuery {
    pub topic: String,
    pub partition: i32,
}

/// The producers of one partition, or why not.
pub type ProducersAnswer = Result<Vec<ActiveProducer>, ResponseError>;

/// DescribeProducers: each partition's active producers, from its leader (on the shard that
/// owns it); an unknown partition answers UNKNOWN_TOPIC_OR_PARTITION, a replica that does not
/// lead NOT_LEADER_OR_FOLLOWER, as Kafka's.
pub async fn describe_producers(
    shard: &std::rc::Rc<crate::shard::Shard>,
    queries: Vec<ProducersQuery>,
) -> Vec<ProducersAnswer> {
    let image = shard.image();
    let answers = queries.into_iter().map(|query| {
        let found = image
            .topic(&query.topic)
            .filter(|t| (0..t.partitions).contains(&query.partition))
            .cloned();
        async move {
            let Some(topic) = found else {
                return Err(ResponseError::UnknownTopicOrPartition);
            };
            let owner = shard.owner_of(&topic.name, query.partition);
            shard
                .invoke_on(owner, move |owner_shard| async move {
                    let p = owner_shard
                        .partition(&topic, query.partition)
                        .await
                        .map_err(|e| crate::partition::unavailable_code(&e))?;
                    if let Some(code) = p.refuses(-1) {
                        return Err(code);
                    }
                    Ok(p.active_producers())
                })
                .await
                .unwrap_or(Err(ResponseError::NotLeaderOrFollower))
        }
    });
    futures::future::join_all(answers).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::batch::{build_batch, validate_batch, TxnMarker};

    /// A one-record batch header from producer `pid`, `epoch`, at `sequence`, placed at
    /// `offset`.
    fn batch(pid: i64, epoch: i16, sequence: i32, records: i32, offset: i64) -> BatchInfo {
        let mut info = validate_batch(&build_batch(0, &[(0, b"k", b"v")]), 1 << 20).unwrap();
        info.producer_id = pid;
        info.producer_epoch = epoch;
        info.base_sequence = sequence;
        info.record_count = records;
        info.last_offset_delta = records - 1;
        info.base_offset = Offset(offset);
        info
    }

    #[test]
    fn active_producers_are_listed_with_their_last_batch() {
        let mut state = ProducerState::default();
        let mut first = batch(9, 0, 0, 2, 0);
        first.max_timestamp = 1_000;
        state.record(&first, &[]);
        let mut second = batch(9, 0, 2, 3, 2);
        second.max_timestamp = 2_000;
        state.record(&second, &[]);
        state.record(&batch(4, 2, 0, 1, 5), &[]);
        state.record(&batch(-1, -1, -1, 1, 6), &[]);
        let listed: Vec<(i64, i16, i32)> = state
            .active()
            .iter()
            .map(|p| (p.producer_id, p.epoch, p.last_sequence))
            .collect();
        assert_eq!(listed, vec![(4, 2, 0), (9, 0, 4)]);
        assert_eq!(state.active()[1].last_timestamp, 2_000);
        // The snapshot reads back whole.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SNAPSHOT_FILE), state.to_snapshot()).unwrap();
        let loaded = ProducerState::load(dir.path()).expect("the snapshot loads");
        assert_eq!(loaded.active(), state.active());
        assert_eq!(loaded.covered_to(), state.covered_to());
        // A snapshot from before last timestamps were kept reads back as unknown (-1).
        let old = r#"{"format":1,"producers":{"9":{"epoch":0,"batches":[{"first_sequence":0,"last_sequence":1,"base_offset":0,"last_offset":1}]}},"covered_to":2}"#;
        std::fs::write(dir.path().join(SNAPSHOT_FILE), old).unwrap();
        let loaded = ProducerState::load(dir.path()).expect("an older snapshot loads");
        assert_eq!(loaded.active()[0].last_timestamp, -1);
        assert_eq!(loaded.covered_to(), Offset(2));
    }

    #[test]
    fn sequences_epochs_and_duplicates_follow_kafkas_rules() {
        let mut state = ProducerState::default();
        assert_eq!(
            state.check(&batch(-1, -1, -1, 1, 0), &[]),
            Verdict::Append,
            "not idempotent"
        );
        assert!(matches!(
            state.check(&batch(7, 0, 3, 1, 0), &[]),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        let first = batch(7, 0, 0, 2, 0);
        assert_eq!(state.check(&first, &[]), Verdict::Append);
        state.record(&first, &[]);
        let kept = KeptBatch {
            first_sequence: 0,
            last_sequence: 1,
            base_offset: 0,
            last_offset: 1,
        };
        assert_eq!(
            state.check(&batch(7, 0, 0, 2, 99), &[]),
            Verdict::Duplicate(kept)
        );
        assert!(matches!(
            state.check(&batch(7, 0, 3, 1, 2), &[]),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        let second = batch(7, 0, 2, 1, 2);
        assert_eq!(state.check(&second, &[]), Verdict::Append);
        state.record(&second, &[]);
        // A new epoch starts at 0; then the old epoch is fenced.
        assert!(matches!(
            state.check(&batch(7, 1, 3, 1, 3), &[]),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        let bumped = batch(7, 1, 0, 1, 3);
        assert_eq!(state.check(&bumped, &[]), Verdict::Append);
        state.record(&bumped, &[]);
        assert!(matches!(
            state.check(&batch(7, 0, 3, 1, 4), &[]),
            Verdict::Reject(ResponseError::InvalidProducerEpoch, _)
        ));
        assert_eq!(state.covered_to(), Offset(4));
    }

    /// `batch` flagged transactional.
    fn txn_batch(pid: i64, epoch: i16, sequence: i32, records: i32, offset: i64) -> BatchInfo {
        let mut info = batch(pid, epoch, sequence, records, offset);
        info.attributes |= 0x10;
        info
    }

    /// A marker of `pid` at `epoch` from coordinator epoch `coordinator_epoch`, placed at
    /// `offset`: its header and its bytes.
    fn marker(
        pid: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        offset: i64,
    ) -> (BatchInfo, Vec<u8>) {
        let bytes = sluice_storage::batch::build_txn_marker(
            0,
            pid,
            epoch,
            TxnMarker {
                commit,
                coordinator_epoch,
            },
        );
        let mut info = validate_batch(&bytes, 1 << 20).unwrap();
        info.base_offset = Offset(offset);
        (info, bytes)
    }

    #[test]
    fn a_transaction_holds_the_stable_offset_until_its_marker_and_an_abort_is_indexed() {
        let mut state = ProducerState::default();
        state.record(&batch(1, 0, 0, 10, 0), &[]);
        assert_eq!(state.first_unstable_offset(), None);
        let first = txn_batch(5, 2, 0, 2, 10);
        assert_eq!(state.check(&first, &[]), Verdict::Append);
        state.record(&first, &[]);
        assert_eq!(state.first_unstable_offset(), Some(Offset(10)));
        // Its plain batches are refused while the transaction is open.
        assert!(matches!(
            state.check(&batch(5, 2, 2, 1, 12), &[]),
            Verdict::Reject(ResponseError::InvalidTxnState, _)
        ));
        state.record(&txn_batch(5, 2, 2, 2, 12), &[]);
        // A second producer's transaction opens later; the oldest bounds the stable offset.
        state.record(&txn_batch(6, 0, 0, 1, 14), &[]);
        assert_eq!(state.open_transactions(), vec![(5, 10), (6, 14)]);
        // Markers from an older producer epoch or an older coordinator are refused.
        let (stale, bytes) = marker(5, 1, false, 0, 15);
        assert!(matches!(
            state.check(&stale, &bytes),
            Verdict::Reject(ResponseError::InvalidProducerEpoch, _)
        ));
        let (abort, bytes) = marker(5, 2, false, 3, 15);
        assert_eq!(state.check(&abort, &bytes), Verdict::Append);
        state.record(&abort, &bytes);
        assert_eq!(state.first_unstable_offset(), Some(Offset(14)));
        let aborted = AbortedTxn {
            producer_id: 5,
            first_offset: 10,
            last_offset: 15,
        };
        assert_eq!(state.aborted_between(Offset(0), Offset(100)), vec![aborted]);
        assert_eq!(state.aborted_between(Offset(15), Offset(16)), vec![aborted]);
        assert!(state.aborted_between(Offset(16), Offset(100)).is_empty());
        assert!(state.aborted_between(Offset(0), Offset(10)).is_empty());
        let (older_coordinator, bytes) = marker(5, 2, true, 2, 16);
        assert!(matches!(
            state.check(&older_coordinator, &bytes),
            Verdict::Reject(ResponseError::TransactionCoordinatorFenced, _)
        ));
        // A commit ends the other transaction and indexes nothing.
        let (commit, bytes) = marker(6, 0, true, 3, 16);
        state.record(&commit, &bytes);
        assert_eq!(state.first_unstable_offset(), None);
        assert_eq!(state.aborted_between(Offset(0), Offset(100)), vec![aborted]);
        // The producer's next transaction starts at the sequence after its last batch; a batch
        // reusing the sequences of a batch of the aborted transaction is no retry, and is
        // refused rather than acknowledged at that batch's offset.
        assert!(matches!(
            state.check(&txn_batch(5, 2, 2, 2, 17), &[]),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        assert_eq!(
            state.check(&txn_batch(5, 2, 4, 1, 17), &[]),
            Verdict::Append
        );
        state.record(&txn_batch(5, 2, 4, 1, 17), &[]);
        // A retry of a batch of the transaction open now is a duplicate, as always.
        assert!(matches!(
            state.check(&txn_batch(5, 2, 4, 1, 18), &[]),
            Verdict::Duplicate(KeptBatch {
                base_offset: 17,
                ..
            })
        ));

        // A snapshot keeps open transactions and the aborted index.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SNAPSHOT_FILE), state.to_snapshot()).unwrap();
        let mut loaded = ProducerState::load(dir.path()).expect("the snapshot loads");
        assert_eq!(loaded.open_transactions(), vec![(5, 17)]);
        assert_eq!(
            loaded.aborted_between(Offset(0), Offset(100)),
            vec![aborted]
        );
        loaded.forget_aborted_before(Offset(15));
        assert_eq!(
            loaded.aborted_between(Offset(0), Offset(100)),
            vec![aborted]
        );
        loaded.forget_aborted_before(Offset(16));
        assert!(loaded.aborted_between(Offset(0), Offset(100)).is_empty());
    }

    #[test]
    fn a_marker_for_a_producer_never_seen_here_is_taken_and_sets_its_epoch() {
        let mut state = ProducerState::default();
        let (abort, bytes) = marker(8, 4, false, 0, 0);
        assert_eq!(state.check(&abort, &bytes), Verdict::Append);
        state.record(&abort, &bytes);
        assert!(state.aborted_between(Offset(0), Offset(10)).is_empty());
        assert!(matches!(
            state.check(&txn_batch(8, 3, 0, 1, 1), &[]),
            Verdict::Reject(ResponseError::InvalidProducerEpoch, _)
        ));
        // A control batch of a producer that is not a marker is refused.
        let mut not_a_marker = batch(8, 4, -1, 1, 1);
        not_a_marker.attributes |= 0x20;
        assert!(matches!(
            state.check(
                &not_a_marker,
                &sluice_storage::batch::build_control_batch(0, 2, b"")
            ),
            Verdict::Reject(ResponseError::InvalidRecord, _)
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_kept() {
        let mut state = ProducerState::default();
        for seq in 0..8 {
            state.record(&batch(1, 0, seq, 1, i64::from(seq)), &[]);
        }
        assert!(matches!(
            state.check(&batch(1, 0, 2, 1, 0), &[]),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        assert!(matches!(
            state.check(&batch(1, 0, 3, 1, 0), &[]),
            Verdict::Duplicate(_)
        ));
        assert_eq!(state.check(&batch(1, 0, 8, 1, 8), &[]), Verdict::Append);
    }
}
