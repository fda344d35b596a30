//! The transaction coordinator (KIP-98), single node: transactional ids, their producer ids
//! and epochs, and the two-phase end of a transaction.
//!
//! A transactional id lives on the shard that owns its partition of the internal topic
//! `__transaction_state` (partition `crc32c(id) % partitions`; the topic is created on first
//! use, with as many partitions as `__consumer_offsets`). That shard keeps each id's state in
//! memory and, durably, as Kafka's records (`txn_log`) appended to that partition; at start-up
//! it replays the partition (the last record of an id wins) and finishes every transaction a
//! crash left between its prepare and complete records.
//!
//! The state machine is Kafka's (`TransactionMetadata`):
//! - InitProducerId: a new id gets a fresh producer id at epoch 0; a known one the next epoch,
//!   which fences the previous incarnation (its batches and requests at the old epoch are
//!   refused). A transaction still open is aborted first, at the new epoch.
//! - AddPartitionsToTxn: Empty/Complete* -> Ongoing (the clock of its timeout starts), or
//!   more partitions for an Ongoing one.
//! - EndTxn: Ongoing -> PrepareCommit/PrepareAbort (written), then a marker to every partition
//!   of the transaction (each owning shard appends it, durably: `Partition::append_marker`),
//!   then CompleteCommit/CompleteAbort. The client is answered once every marker is durable;
//!   the Complete record's place in the log is taken first, its durability not waited for.
//! - A transaction Ongoing longer than its timeout is aborted by the coordinator, at the next
//!   epoch, so its producer is fenced, as Kafka does.
//!
//! Invariants: a transaction in a Prepare state always reaches its Complete state (markers are
//! retried until written, also after a restart); while an id has an operation in flight
//! (`busy`), other requests for it are answered CONCURRENT_TRANSACTIONS, which clients retry.
//!
//! Offsets committed in a transaction (AddOffsetsToTxn, then TxnOffsetCommit to the group
//! coordinator, `groups::txn_commit_offsets`) take effect when the marker lands in the group's
//! `__consumer_offsets` partition: `write_marker` tells the group coordinator there.
//!
//! Cluster mode: `__transaction_state` is replicated like any topic. A shard coordinates the
//! ids of a state partition while its replica leads it, once it has replayed the partition
//! (`leadership_changed`); its coordinator epoch is the leader epoch it loaded at, carried by
//! its markers, so partitions fence a deposed coordinator's markers once its successor wrote
//! one. A marker for a partition another node leads goes there as WriteTxnMarkers over the
//! mesh (`peer_calls`); KIP-890's verification asks the coordinator's node the same way. A
//! coordinator that loses its partition forgets the ids and stops retrying their markers:
//! the successor finishes what its replay finds prepared.
//!
//! Not here yet: KIP-890's transaction v2.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use sluice_storage::batch::{build_batch, validate_batch, TxnMarker};
use tracing::{info, warn};

use crate::controller::{self, NewTopic};
use crate::shard::Shard;
use crate::topics::Topic;
use crate::txn_log::{self, TxnRecord, TxnStatus};

/// The internal topic holding transaction state.
pub const TXN_STATE_TOPIC: &str = "__transaction_state";

/// Longest transaction timeout a producer may ask for (Kafka's `transaction.max.timeout.ms`).
pub const TXN_TIMEOUT_MS_MAX: i32 = 900_000;

/// How often each shard looks for transactions past their timeout.
const TIMEOUT_CHECK_PERIOD: Duration = Duration::from_millis(500);

/// Between two tries of a marker that could not be written.
const MARKER_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Bytes read at a time when replaying a transaction state partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// The `__transaction_state` partition of a transactional id.
pub fn txn_partition(transactional_id: &str, partitions: i32) -> i32 {
    (crc32c::crc32c(transactional_id.as_bytes()) % partitions.max(1) as u32) as i32
}

/// One transactional id as its coordinator holds it.
#[derive(Debug, Clone)]
struct TxnMeta {
    record: TxnRecord,
    /// An operation (a write, an end, an abort) is in flight for it.
    busy: bool,
}

/// The transactional ids whose state partitions this shard owns.
#[derive(Default)]
pub struct TxnCoordinator {
    txns: RefCell<HashMap<String, TxnMeta>>,
    /// Cluster mode: the state partitions this shard coordinates (it leads them and has
    /// replayed them), each with its coordinator epoch (the leader epoch it was loaded at).
    loaded: RefCell<HashMap<i32, i32>>,
    /// This shard is creating `__transaction_state` (see [`create_state_topic_soon`]).
    creating: std::cell::Cell<bool>,
}

impl TxnCoordinator {
    /// The transactional ids held here, counted by state (for `/metrics`).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut counts: std::collections::BTreeMap<&'static str, u64> = Default::default();
        for meta in self.txns.borrow().values() {
            if meta.record.producer_id >= 0 {
                *counts.entry(meta.record.status.name()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }
}

impl std::fmt::Debug for TxnCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnCoordinator")
            .field("transactional_ids", &self.txns.borrow().len())
            .finish()
    }
}

fn now_ms() -> i64 {
    sluice_storage::types::now_ms()
}

/// The `__transaction_state` topic, created (with as many partitions as `__consumer_offsets`)
/// if it does not exist yet.
pub async fn state_topic(shard: &Rc<Shard>) -> Result<Arc<Topic>, ResponseError> {
    if let Some(topic) = shard.image().topic(TXN_STATE_TOPIC) {
        return Ok(topic.clone());
    }
    let partitions = shard
        .image()
        .topic(crate::groups::OFFSETS_TOPIC)
        .map_or(1, |t| t.partitions);
    let new = NewTopic {
        partitions,
        configs: vec![
            ("cleanup.policy".to_string(), Some("compact".to_string())),
            ("segment.bytes".to_string(), Some("104857600".to_string())),
        ],
        ..NewTopic::with_defaults(TXN_STATE_TOPIC)
    };
    // Two first users may race: whoever loses finds the topic the other created.
    let created = controller::create_topics(shard, vec![new], false).await;
    if let Some(Ok(topic)) = created.into_iter().next() {
        info!(partitions, "created {TXN_STATE_TOPIC}");
        return Ok(topic);
    }
    shard
        .image()
        .topic(TXN_STATE_TOPIC)
        .cloned()
        .ok_or(ResponseError::CoordinatorNotAvailable)
}

/// The coordinator epoch of state partition `partition` on this shard: `Ok` once it
/// coordinates the partition's ids (always, epoch 0, on a single node; in cluster mode while it
/// leads the partition and has replayed it, the leader epoch it loaded at), or why not:
/// COORDINATOR_LOAD_IN_PROGRESS while it leads and loads, NOT_COORDINATOR where another node
/// leads.
fn coordinates(shard: &Shard, topic: &Topic, partition: i32) -> Result<i32, ResponseError> {
    if shard.replication.is_none() {
        return Ok(0);
    }
    if let Some(epoch) = shard.transactions.loaded.borrow().get(&partition) {
        return Ok(*epoch);
    }
    Err(crate::cluster::not_coordinating(
        shard,
        (topic.id, partition),
    ))
}

/// Whether this shard still coordinates state partition `partition` at coordinator epoch
/// `epoch` (a coordinator that lost the partition stops working on its transactions: the new
/// one finishes them from its replay).
fn still_coordinates(shard: &Shard, partition: i32, epoch: i32) -> bool {
    shard.replication.is_none()
        || shard.transactions.loaded.borrow().get(&partition) == Some(&epoch)
}

/// Creates `__transaction_state` in the background unless this shard is creating it already
/// (cluster mode's FindCoordinator, which answers before the topic has leaders).
pub fn create_state_topic_soon(shard: &Rc<Shard>) {
    if shard.transactions.creating.replace(true) {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        if let Err(code) = state_topic(&shard).await {
            warn!(?code, "cannot create {TXN_STATE_TOPIC}");
        }
        shard.transactions.creating.set(false);
    })
    .detach();
}

/// Runs `work` on the shard that coordinates `transactional_id`.
async fn on_coordinator<R, F, Fut>(
    shard: &Rc<Shard>,
    transactional_id: &str,
    work: F,
) -> Result<R, ResponseError>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>, Arc<Topic>, i32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let topic = state_topic(shard).await?;
    let partition = txn_partition(transactional_id, topic.partitions);
    let owner = shard.owner_of(TXN_STATE_TOPIC, partition);
    shard
        .invoke_on(owner, move |s| async move {
            coordinates(&s, &topic, partition)?;
            Ok(work(s, topic, partition).await)
        })
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?
}

/// The state of `transactional_id` as its coordinator (this node) holds it, without creating
/// anything: `Ok(None)` when it does not know it (or the state topic does not exist yet);
/// NOT_COORDINATOR in a cluster where another node coordinates it.
async fn lookup(
    shard: &Rc<Shard>,
    transactional_id: String,
) -> Result<Option<TxnRecord>, ResponseError> {
    let Some(state) = shard.image().topic(TXN_STATE_TOPIC).cloned() else {
        return Ok(None);
    };
    let partition = txn_partition(&transactional_id, state.partitions);
    let owner = shard.owner_of(TXN_STATE_TOPIC, partition);
    shard
        .invoke_on(owner, move |s| async move {
            coordinates(&s, &state, partition)?;
            Ok(known(&s, &transactional_id))
        })
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?
}

/// Appends `record` for `transactional_id` to its state partition, durably.
async fn persist(
    shard: &Shard,
    topic: &Topic,
    partition: i32,
    transactional_id: &str,
    record: &TxnRecord,
) -> Result<(), ResponseError> {
    let p = shard
        .partition(topic, partition)
        .await
        .map_err(|e| crate::partition::unavailable_code(&e))?;
    p.append(state_batch(transactional_id, record), true)
        .await
        .map(|_| ())
        .map_err(|e| {
            warn!(transactional_id, error = %e, "cannot write transaction state");
            // Kafka's answer when the state could not be written: the client retries.
            ResponseError::CoordinatorNotAvailable
        })
}

/// Marks `transactional_id` busy, or answers why it cannot be worked on now.
fn take(shard: &Shard, transactional_id: &str) -> Result<Option<TxnRecord>, ResponseError> {
    let mut txns = shard.transactions.txns.borrow_mut();
    match txns.get_mut(transactional_id) {
        None => Ok(None),
        Some(meta) if meta.busy => Err(ResponseError::ConcurrentTransactions),
        Some(meta) => {
            meta.busy = true;
            Ok(Some(meta.record.clone()))
        }
    }
}

/// Ends an operation on `transactional_id`, keeping `record` (`None`: as it was). An id
/// forgotten meanwhile (this shard stopped coordinating it) stays forgotten.
fn release(shard: &Shard, transactional_id: &str, record: Option<TxnRecord>) {
    let mut txns = shard.transactions.txns.borrow_mut();
    match (txns.get_mut(transactional_id), record) {
        (Some(meta), Some(record)) => {
            meta.record = record;
            meta.busy = false;
        }
        (Some(meta), None) => meta.busy = false,
        (None, _) => {}
    }
}

/// Writes `record` and keeps it as the id's state, or keeps the old state on failure.
async fn write_and_release(
    shard: &Shard,
    topic: &Topic,
    partition: i32,
    transactional_id: &str,
    record: TxnRecord,
) -> Result<TxnRecord, ResponseError> {
    match persist(shard, topic, partition, transactional_id, &record).await {
        Ok(()) => {
            release(shard, transactional_id, Some(record.clone()));
            Ok(record)
        }
        Err(code) => {
            release(shard, transactional_id, None);
            Err(code)
        }
    }
}

/// InitProducerId with a transactional id: (producer id, epoch) for the new incarnation.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    transactional_id: String,
    timeout_ms: i32,
    current: Option<(i64, i16)>,
) -> Result<(i64, i16), ResponseError> {
    if !(1..=TXN_TIMEOUT_MS_MAX).contains(&timeout_ms) {
        return Err(ResponseError::InvalidTransactionTimeout);
    }
    let id = transactional_id.clone();
    on_coordinator(shard, &id, move |s, topic, partition| async move {
        let id = transactional_id;
        let existing = take(&s, &id)?;
        let Some(mut record) = existing else {
            // A new transactional id: a fresh producer id. Marked busy (as a placeholder with
            // no partitions) while the id is allocated and the record written.
            s.transactions.txns.borrow_mut().insert(
                id.clone(),
                TxnMeta {
                    record: empty_record(-1, -1, timeout_ms),
                    busy: true,
                },
            );
            let allocated = controller::init_producer_id(&s, None).await;
            let (producer_id, epoch) = match allocated {
                Ok(pair) => pair,
                Err(e) => {
                    s.transactions.txns.borrow_mut().remove(&id);
                    return Err(e.code);
                }
            };
            let record = empty_record(producer_id, epoch, timeout_ms);
            return match persist(&s, &topic, partition, &id, &record).await {
                Ok(()) => {
                    release(&s, &id, Some(record));
                    Ok((producer_id, epoch))
                }
                Err(code) => {
                    s.transactions.txns.borrow_mut().remove(&id);
                    Err(code)
                }
            };
        };
        if let Some(current) = current {
            if current != (record.producer_id, record.producer_epoch) {
                release(&s, &id, None);
                return Err(ResponseError::ProducerFenced);
            }
        }
        match record.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                // Being completed (after a restart): the client retries.
                return Err(resume_completion(&s, &topic, partition, &id, record));
            }
            TxnStatus::Ongoing => {
                // The previous incarnation's transaction is aborted, at the next epoch.
                if let Err(code) = bump_epoch(&s, &mut record).await {
                    release(&s, &id, None);
                    return Err(code);
                }
                record.status = TxnStatus::PrepareAbort;
                record.last_update_ms = now_ms();
                if let Err(code) = persist(&s, &topic, partition, &id, &record).await {
                    release(&s, &id, None);
                    return Err(code);
                }
                complete(&s, &topic, partition, &id, record.clone()).await;
                record = s
                    .transactions
                    .txns
                    .borrow()
                    .get(&id)
                    .map(|m| m.record.clone())
                    .expect("a completed transaction is kept");
                take(&s, &id)?;
            }
            _ => {}
        }
        if let Err(code) = bump_epoch(&s, &mut record).await {
            release(&s, &id, None);
            return Err(code);
        }
        let record = TxnRecord {
            timeout_ms,
            ..empty_record(record.producer_id, record.producer_epoch, timeout_ms)
        };
        let record = write_and_release(&s, &topic, partition, &id, record).await?;
        Ok((record.producer_id, record.producer_epoch))
    })
    .await?
}

fn empty_record(producer_id: i64, producer_epoch: i16, timeout_ms: i32) -> TxnRecord {
    TxnRecord {
        producer_id,
        producer_epoch,
        timeout_ms,
        status: TxnStatus::Empty,
        partitions: BTreeSet::new(),
        last_update_ms: now_ms(),
        start_ms: -1,
    }
}

/// The next epoch of `record`'s producer, or a fresh producer id once the epoch runs out.
async fn bump_epoch(shard: &Rc<Shard>, record: &mut TxnRecord) -> Result<(), ResponseError> {
    if record.producer_epoch < i16::MAX - 1 {
        record.producer_epoch += 1;
        return Ok(());
    }
    let (producer_id, epoch) = controller::init_producer_id(shard, None)
        .await
        .map_err(|e| e.code)?;
    record.producer_id = producer_id;
    record.producer_epoch = epoch;
    Ok(())
}

/// The checks every request of a running producer passes: its id is known, its producer id
/// is the id's, its epoch the current one.
fn check_producer(
    record: Option<&TxnRecord>,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<(), ResponseError> {
    let Some(record) = record else {
        return Err(ResponseError::InvalidProducerIdMapping);
    };
    if record.producer_id != producer_id {
        return Err(ResponseError::InvalidProducerIdMapping);
    }
    if record.producer_epoch != producer_epoch {
        return Err(ResponseError::ProducerFenced);
    }
    Ok(())
}

/// Marks `transactional_id` busy once [`check_producer`] passes, or answers why not.
fn take_checked(
    shard: &Shard,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<TxnRecord, ResponseError> {
    let record = take(shard, transactional_id)?;
    if let Err(code) = check_producer(record.as_ref(), producer_id, producer_epoch) {
        release(shard, transactional_id, None);
        return Err(code);
    }
    Ok(record.expect("checked"))
}

/// AddPartitionsToTxn: the partitions join the producer's transaction (which starts if none
/// is open). Every partition gets the same answer; unknown partitions fail the request
/// (UNKNOWN_TOPIC_OR_PARTITION for them, OPERATION_NOT_ATTEMPTED for the rest, as Kafka).
pub async fn add_partitions(
    shard: &Rc<Shard>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Vec<((String, i32), Option<ResponseError>)> {
    if let Some(codes) = refuse_unknown_partitions(shard, partitions.iter().map(|(t, p)| (t, *p))) {
        return partitions
            .into_iter()
            .zip(codes.into_iter().map(Some))
            .collect();
    }
    let id = transactional_id.clone();
    let wanted = partitions.clone();
    let outcome = on_coordinator(shard, &id, move |s, topic, partition| async move {
        let id = transactional_id;
        let mut record = take_checked(&s, &id, producer_id, producer_epoch)?;
        match record.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                return Err(resume_completion(&s, &topic, partition, &id, record));
            }
            TxnStatus::Ongoing if wanted.iter().all(|tp| record.partitions.contains(tp)) => {
                release(&s, &id, None);
                return Ok(());
            }
            TxnStatus::Ongoing => {}
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                record.partitions.clear();
                record.start_ms = now_ms();
                record.status = TxnStatus::Ongoing;
            }
        }
        record.partitions.extend(wanted);
        record.last_update_ms = now_ms();
        write_and_release(&s, &topic, partition, &id, record)
            .await
            .map(|_| ())
    })
    .await
    .and_then(|r| r);
    let code = outcome.err();
    partitions.into_iter().map(|tp| (tp, code)).collect()
}

/// Kafka's answer to a transactional request naming a partition that does not exist: every
/// partition refused, UNKNOWN_TOPIC_OR_PARTITION for those, OPERATION_NOT_ATTEMPTED for the
/// rest. `None` when all exist.
pub(crate) fn refuse_unknown_partitions<'a>(
    shard: &Shard,
    partitions: impl Iterator<Item = (&'a String, i32)>,
) -> Option<Vec<ResponseError>> {
    let image = shard.image();
    let unknown: Vec<bool> = partitions
        .map(|(topic, p)| {
            image
                .topic(topic)
                .is_none_or(|t| !(0..t.partitions).contains(&p))
        })
        .collect();
    unknown.contains(&true).then(|| {
        unknown
            .into_iter()
            .map(|unknown| {
                if unknown {
                    ResponseError::UnknownTopicOrPartition
                } else {
                    ResponseError::OperationNotAttempted
                }
            })
            .collect()
    })
}

/// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the producer's
/// transaction, so its marker makes the offsets TxnOffsetCommit writes there take effect.
pub async fn add_offsets(
    shard: &Rc<Shard>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    group: &str,
) -> Result<(), ResponseError> {
    let Some(offsets) = shard.image().topic(crate::groups::OFFSETS_TOPIC).cloned() else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let partition = crate::groups::offsets_partition(group, offsets.partitions);
    let answers = add_partitions(
        shard,
        transactional_id,
        producer_id,
        producer_epoch,
        vec![(offsets.name.clone(), partition)],
    )
    .await;
    answers
        .into_iter()
        .next()
        .and_then(|(_, code)| code)
        .map_or(Ok(()), Err)
}

/// Whether producer `(producer_id, producer_epoch)` of `transactional_id` has a transaction
/// open that includes `(topic, partition)`: what a coordinator checks before it writes on the
/// transaction's behalf (TxnOffsetCommit), so no stray producer opens a transaction there
/// that no one would end. INVALID_TXN_STATE if not. Nothing is created to answer. In a
/// cluster, the id's coordinator answers, on whichever node it is (`peer_calls`).
pub async fn verify(
    shard: &Rc<Shard>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    topic: String,
    partition: i32,
) -> Result<(), ResponseError> {
    let state = shard.image().topic(TXN_STATE_TOPIC).cloned();
    if let (Some(_), Some(state)) = (&shard.replication, state) {
        let state_partition = txn_partition(&transactional_id, state.partitions);
        let leader = shard
            .catalog
            .cluster
            .leader((state.id, state_partition))
            .map_or(-1, |l| l.leader);
        if leader >= 0 && leader != shard.node_id() {
            return crate::peer_calls::verify_on(
                shard,
                leader,
                state_partition,
                &transactional_id,
                producer_id,
                producer_epoch,
                &topic,
                partition,
            )
            .await
            .map_or(Ok(()), Err);
        }
    }
    verify_here(
        shard,
        transactional_id,
        producer_id,
        producer_epoch,
        topic,
        partition,
    )
    .await
}

/// [`verify`], answered by this node's coordinator (NOT_COORDINATOR if it is not the id's).
pub async fn verify_here(
    shard: &Rc<Shard>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    topic: String,
    partition: i32,
) -> Result<(), ResponseError> {
    let record = lookup(shard, transactional_id).await?;
    check_producer(record.as_ref(), producer_id, producer_epoch)?;
    let record = record.expect("checked");
    if record.status == TxnStatus::Ongoing && record.partitions.contains(&(topic, partition)) {
        Ok(())
    } else {
        Err(ResponseError::InvalidTxnState)
    }
}

/// KIP-890 part 1, for Produce: whether producer `(producer_id, producer_epoch)` of
/// `transactional_id` has an ongoing transaction that includes `(topic, partition)`, asked
/// before its first transactional batch there opens a transaction on the partition. Nothing
/// is created to answer. INVALID_TXN_STATE if not (or no coordinator knows the id); an older
/// epoch INVALID_PRODUCER_EPOCH, the Produce answer for a fenced producer.
pub async fn verify_for_produce(
    shard: &Rc<Shard>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    topic: String,
    partition: i32,
) -> Result<(), ResponseError> {
    verify(
        shard,
        transactional_id,
        producer_id,
        producer_epoch,
        topic,
        partition,
    )
    .await
    .map_err(|code| match code {
        ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        // Retriable: the shard is stopping, or (in a cluster) the coordinator is moving or
        // did not answer in time.
        ResponseError::CoordinatorNotAvailable
        | ResponseError::NotCoordinator
        | ResponseError::CoordinatorLoadInProgress => ResponseError::NotLeaderOrFollower,
        _ => ResponseError::InvalidTxnState,
    })
}

/// EndTxn: commits or aborts the producer's open transaction; answered once every marker is
/// written. A retry of an end that completed is answered as it was.
pub async fn end_txn(
    shard: &Rc<Shard>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
) -> Result<(), ResponseError> {
    let id = transactional_id.clone();
    on_coordinator(shard, &id, move |s, topic, partition| async move {
        let id = transactional_id;
        let mut record = take_checked(&s, &id, producer_id, producer_epoch)?;
        match (record.status, commit) {
            (TxnStatus::Ongoing, _) => {}
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                release(&s, &id, None);
                return Ok(());
            }
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                return Err(resume_completion(&s, &topic, partition, &id, record));
            }
            _ => {
                release(&s, &id, None);
                return Err(ResponseError::InvalidTxnState);
            }
        }
        record.status = if commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        record.last_update_ms = now_ms();
        if let Err(code) = persist(&s, &topic, partition, &id, &record).await {
            release(&s, &id, None);
            return Err(code);
        }
        complete(&s, &topic, partition, &id, record).await;
        Ok(())
    })
    .await?
}

/// DescribeTransactions: each id's state as its coordinator holds it, in the order asked;
/// TRANSACTIONAL_ID_NOT_FOUND for an id it does not know (nothing is created to answer).
pub async fn describe(
    shard: &Rc<Shard>,
    transactional_ids: Vec<String>,
) -> Vec<Result<TxnRecord, ResponseError>> {
    let lookups = transactional_ids.into_iter().map(|id| async move {
        lookup(shard, id)
            .await?
            .ok_or(ResponseError::TransactionalIdNotFound)
    });
    futures::future::join_all(lookups).await
}

/// ListTransactions: every transactional id every shard coordinates, with its state.
/// In a cluster, those this node coordinates (tools ask every node, as Kafka's do).
pub async fn list(shard: &Rc<Shard>) -> Result<Vec<(String, TxnRecord)>, ResponseError> {
    let mut all = Vec::new();
    for on_shard in shard
        .invoke_on_all(|s| async move {
            let txns = s.transactions.txns.borrow();
            txns.keys()
                .filter_map(|id| known(&s, id).map(|record| (id.clone(), record)))
                .collect::<Vec<_>>()
        })
        .await
    {
        all.extend(on_shard.map_err(|_| ResponseError::CoordinatorNotAvailable)?);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// The state of `transactional_id` on this shard, unless unknown or still being created.
fn known(shard: &Shard, transactional_id: &str) -> Option<TxnRecord> {
    shard
        .transactions
        .txns
        .borrow()
        .get(transactional_id)
        .map(|m| m.record.clone())
        .filter(|record| record.producer_id >= 0)
}

/// Takes a prepared transaction (`record`, busy) to its end: a marker to each of its
/// partitions, then the Complete record; releases the id. Retries until done, or until this
/// shard stops coordinating the id (its next coordinator finishes the transaction).
async fn complete(shard: &Rc<Shard>, topic: &Topic, partition: i32, id: &str, record: TxnRecord) {
    let commit = record.status == TxnStatus::PrepareCommit;
    // The coordinator epoch: 0 on a single node (one coordinator incarnation), in a cluster
    // the state partition's leader epoch, so partitions refuse the markers of a coordinator
    // that was deposed once its successor wrote one.
    let Ok(coordinator_epoch) = coordinates(shard, topic, partition) else {
        release(shard, id, None);
        return;
    };
    let marker = TxnMarker {
        commit,
        coordinator_epoch,
    };
    let writes = record.partitions.iter().map(|(name, p)| {
        write_marker(
            shard,
            partition,
            name.clone(),
            *p,
            record.producer_id,
            record.producer_epoch,
            marker,
        )
    });
    let written = futures::future::join_all(writes).await;
    if written.contains(&false) {
        // Deposed: what this shard holds of the id is forgotten already.
        release(shard, id, None);
        return;
    }
    let done = TxnRecord {
        status: if commit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        },
        last_update_ms: now_ms(),
        ..record
    };
    // The Complete record's place in the state partition is taken before the id is released,
    // so the id's next record lands after it, and the end is answered without waiting for it
    // to be durable (the markers are). A crash can lose it only with every later record of
    // the id (the log is durable in order, and a next transaction's partitions are added
    // durably before any of its records is written); replay then finishes the transaction
    // again from its Prepare record, and markers where nothing is open change nothing.
    let written = match shard.partition(topic, partition).await {
        Ok(p) => Some(p.append(state_batch(id, &done), true)),
        Err(e) => {
            warn!(transactional_id = id, error = %e,
                "cannot write a transaction's Complete record; a restart finishes it again");
            None
        }
    };
    release(shard, id, Some(done));
    if let Some(written) = written {
        let id = id.to_string();
        glommio::spawn_local(async move {
            // Not retried: a retry would land after the id's later records.
            if let Err(e) = written.await {
                warn!(transactional_id = %id, error = %e,
                    "cannot write a transaction's Complete record; a restart finishes it again");
            }
        })
        .detach();
    }
}

/// A prepared transaction `take`n (so no completion of it runs: a running one keeps the id
/// busy): its completion starts again, in the background, and keeps the id busy until it
/// ends. The answer for the request that found it: CONCURRENT_TRANSACTIONS, which clients
/// retry. A prepared transaction is idle only if a completion gave up while this shard
/// coordinates it (it should not); without this its producer would be refused for good.
fn resume_completion(
    shard: &Rc<Shard>,
    topic: &Arc<Topic>,
    partition: i32,
    transactional_id: &str,
    record: TxnRecord,
) -> ResponseError {
    warn!(
        transactional_id,
        status = record.status.name(),
        "a prepared transaction was not being completed; completing it"
    );
    complete_in_background(
        shard,
        topic,
        partition,
        transactional_id.to_string(),
        record,
    );
    ResponseError::ConcurrentTransactions
}

/// [`complete`] in a task of its own.
fn complete_in_background(
    shard: &Rc<Shard>,
    topic: &Arc<Topic>,
    partition: i32,
    transactional_id: String,
    record: TxnRecord,
) {
    let (shard, topic) = (shard.clone(), topic.clone());
    glommio::spawn_local(async move {
        complete(&shard, &topic, partition, &transactional_id, record).await;
    })
    .detach();
}

/// `record` for `transactional_id` as a batch of its state partition.
fn state_batch(transactional_id: &str, record: &TxnRecord) -> bytes::Bytes {
    let key = txn_log::encode_key(transactional_id);
    let value = txn_log::encode_value(record);
    let now = now_ms();
    build_batch(now, &[(now, &key, &value)]).into()
}

/// How one try of a marker went.
enum MarkerTry {
    Written,
    /// Nothing to write: the topic or partition is gone (deleted).
    Gone,
    /// Cluster mode: this node does not lead the partition (any more); try its leader.
    NotLeader(String),
    /// The partition refuses the marker for good (it has seen a newer epoch of the producer,
    /// whose own end supersedes this one; or a newer coordinator epoch).
    Refused(ResponseError, String),
    /// Try again (the disk refused, the shard is busy opening the log).
    Failed(String),
}

/// One try of a marker on one partition: here, on its owning shard, where this node leads it
/// (always on a single node); otherwise sent to its leader (`peer_calls`).
async fn try_marker(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
) -> MarkerTry {
    let Some(found) = shard.image().topic(topic).cloned() else {
        return MarkerTry::Gone;
    };
    if shard.replication.is_some() {
        let leader = shard.catalog.cluster.leader((found.id, partition));
        match leader {
            Some(l) if l.leader >= 0 && l.leader != shard.node_id() => {
                let answer = crate::peer_calls::write_marker_on(
                    shard,
                    l.leader,
                    producer_id,
                    producer_epoch,
                    marker,
                    topic,
                    partition,
                )
                .await;
                return match answer {
                    None => MarkerTry::Failed(format!("no answer from node {}", l.leader)),
                    Some(None) => MarkerTry::Written,
                    Some(Some(ResponseError::UnknownTopicOrPartition)) => MarkerTry::Gone,
                    Some(Some(
                        code @ (ResponseError::InvalidProducerEpoch
                        | ResponseError::TransactionCoordinatorFenced),
                    )) => MarkerTry::Refused(code, format!("refused by node {}", l.leader)),
                    Some(Some(code)) => {
                        MarkerTry::Failed(format!("node {} answered {code:?}", l.leader))
                    }
                };
            }
            Some(l) if l.leader >= 0 => {}
            _ => return MarkerTry::NotLeader("no leader known".into()),
        }
    }
    try_marker_here(shard, found, partition, producer_id, producer_epoch, marker).await
}

/// One try of a marker on one partition of this node, on its owning shard. After a marker on
/// a `__consumer_offsets` partition, the group coordinator there applies (or drops) the
/// offsets the transaction committed.
async fn try_marker_here(
    shard: &Rc<Shard>,
    found: Arc<Topic>,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
) -> MarkerTry {
    if !(0..found.partitions).contains(&partition) {
        return MarkerTry::Gone;
    }
    let owner = shard.owner_of(&found.name, partition);
    shard
        .invoke_on(owner, move |s| async move {
            let p = if s.replication.is_some() {
                // Cluster mode: only a replica this node holds, and leads.
                match s.open_partition((found.id, partition)) {
                    Some(p) => p,
                    None => return MarkerTry::NotLeader("no replica on this node".into()),
                }
            } else {
                match s.partition(&found, partition).await {
                    Ok(p) => p,
                    Err(sluice_storage::StorageError::Closed) => return MarkerTry::Gone,
                    Err(e) => return MarkerTry::Failed(e.to_string()),
                }
            };
            if let Some(why) = p.not_leader() {
                return MarkerTry::NotLeader(why);
            }
            match p.append_marker(producer_id, producer_epoch, marker).await {
                Ok(_) => {
                    if found.name == crate::groups::OFFSETS_TOPIC {
                        crate::groups::txn_offsets_ended(&s, partition, producer_id, marker.commit);
                    }
                    MarkerTry::Written
                }
                Err(crate::partition::AppendError::Refused(
                    ResponseError::NotLeaderOrFollower,
                    why,
                )) => MarkerTry::NotLeader(why),
                Err(crate::partition::AppendError::Refused(code, why)) => {
                    MarkerTry::Refused(code, why)
                }
                Err(crate::partition::AppendError::Storage(
                    sluice_storage::StorageError::Closed,
                )) => MarkerTry::Gone,
                Err(crate::partition::AppendError::Storage(e)) => MarkerTry::Failed(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|gone| MarkerTry::Failed(gone.to_string()))
}

/// WriteTxnMarkers (one marker, many partitions) on this node: what a coordinator sends the
/// partitions' leader (in a cluster, over the mesh: `peer_calls`), and what
/// `kafka-transactions.sh abort` (Kafka's `Admin.abortTransaction`) sends to end a hanging
/// transaction no coordinator knows of. One try per partition; its outcome as Kafka's error
/// code (`None`: written; NOT_LEADER_OR_FOLLOWER where this node does not lead it).
pub async fn write_markers_here(
    shard: &Rc<Shard>,
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
    partitions: Vec<(String, i32)>,
) -> Vec<((String, i32), Option<ResponseError>)> {
    let tries = partitions.iter().map(|(topic, partition)| async move {
        let Some(found) = shard.image().topic(topic).cloned() else {
            return MarkerTry::Gone;
        };
        try_marker_here(
            shard,
            found,
            *partition,
            producer_id,
            producer_epoch,
            marker,
        )
        .await
    });
    let outcomes = futures::future::join_all(tries).await;
    partitions
        .into_iter()
        .zip(outcomes)
        .map(|((topic, partition), outcome)| {
            let code = match outcome {
                MarkerTry::Written => None,
                MarkerTry::Gone => Some(ResponseError::UnknownTopicOrPartition),
                MarkerTry::NotLeader(_) => Some(ResponseError::NotLeaderOrFollower),
                MarkerTry::Refused(code, why) => {
                    info!(topic = %topic, partition, producer_id, why = %why,
                        "WriteTxnMarkers refused");
                    Some(code)
                }
                MarkerTry::Failed(why) => {
                    warn!(topic = %topic, partition, producer_id, error = %why,
                        "WriteTxnMarkers could not write");
                    Some(ResponseError::KafkaStorageError)
                }
            };
            ((topic, partition), code)
        })
        .collect()
}

/// Appends a marker to one partition of a transaction, where its leader is, until it is
/// written or moot; false if this shard stopped coordinating state partition
/// `state_partition` (at the marker's coordinator epoch) first.
async fn write_marker(
    shard: &Rc<Shard>,
    state_partition: i32,
    topic: String,
    partition: i32,
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
) -> bool {
    let mut warned = false;
    loop {
        if !still_coordinates(shard, state_partition, marker.coordinator_epoch) {
            return false;
        }
        let tried = try_marker(
            shard,
            &topic,
            partition,
            producer_id,
            producer_epoch,
            marker,
        )
        .await;
        match tried {
            MarkerTry::Written => return true,
            MarkerTry::Gone => {
                warn!(topic = %topic, partition, producer_id,
                    "transaction marker not written: the partition was deleted");
                return true;
            }
            MarkerTry::Refused(code, why) => {
                warn!(topic = %topic, partition, producer_id, code = ?code, why = %why,
                    "transaction marker not written");
                return true;
            }
            // A leader being elected, or moving: the next try asks the new one.
            MarkerTry::NotLeader(why) => {
                tracing::debug!(topic = %topic, partition, producer_id, why = %why,
                    "transaction marker waits for the partition's leader");
            }
            MarkerTry::Failed(why) if !warned => {
                warn!(topic = %topic, partition, producer_id, error = %why,
                    "cannot write a transaction marker; retrying");
                warned = true;
            }
            MarkerTry::Failed(_) => {}
        }
        let retries = &shard.metrics.txn_marker_retries;
        retries.set(retries.get() + 1);
        glommio::timer::sleep(MARKER_RETRY_DELAY).await;
    }
}

/// Cluster mode: this shard's replica of state partition `partition` became leader (load its
/// transactional ids once every entry of its log is committed, so the replay sees all the
/// previous coordinator wrote, then coordinate them at the leader epoch) or stopped leading
/// (forget them: the new leader coordinates them, and this shard's work on them stops).
pub fn leadership_changed(shard: &Rc<Shard>, topic: Arc<Topic>, partition: i32, leads: bool) {
    shard.transactions.loaded.borrow_mut().remove(&partition);
    forget_ids_of(shard, &topic, partition);
    if !leads {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let Some(p) = crate::cluster::leading_caught_up(&shard, (topic.id, partition)).await else {
            return;
        };
        let epoch = p.leader_epoch();
        forget_ids_of(&shard, &topic, partition);
        match replay(&shard, &topic, partition).await {
            Ok(replayed) => {
                if p.not_leader().is_none() && p.leader_epoch() == epoch {
                    shard
                        .transactions
                        .loaded
                        .borrow_mut()
                        .insert(partition, epoch);
                    info!(
                        partition,
                        ids = replayed.ids,
                        coordinator_epoch = epoch,
                        "transaction coordinator loaded as leader of its state partition"
                    );
                    // Only now: a completion started before the partition counts as loaded
                    // gives up at once (not coordinating), and the transaction would stay
                    // prepared, answering CONCURRENT_TRANSACTIONS to its producer for good
                    // (the chaos harness found it, kill_controller and kill faults).
                    finish_prepared(&shard, &topic, partition, replayed);
                } else {
                    forget_ids_of(&shard, &topic, partition);
                }
            }
            Err(e) => warn!(partition, error = %e, "cannot load transaction state"),
        }
    })
    .detach();
}

fn forget_ids_of(shard: &Shard, topic: &Topic, partition: i32) {
    shard
        .transactions
        .txns
        .borrow_mut()
        .retain(|id, _| txn_partition(id, topic.partitions) != partition);
}

/// What [`replay`] found.
pub struct Replayed {
    /// Transactional ids loaded.
    pub ids: usize,
    /// Transactions a crash left prepared (PrepareCommit or PrepareAbort), marked busy: to be
    /// finished by [`finish_prepared`] once this shard coordinates the partition.
    prepared: Vec<(String, TxnRecord)>,
}

/// Rebuilds the transactional ids of `partition` (a state partition this shard owns) from its
/// log.
pub async fn replay(
    shard: &Rc<Shard>,
    topic: &Arc<Topic>,
    partition: i32,
) -> sluice_storage::Result<Replayed> {
    let p = shard.partition(topic, partition).await?;
    let log = p.log();
    let mut from = log.log_start_offset();
    let end = log.log_end_offset();
    let mut latest: HashMap<String, TxnRecord> = HashMap::new();
    while from < end {
        let read = log.read(from, REPLAY_READ_BYTES).await?;
        let mut bytes = read.bytes.clone();
        while !bytes.is_empty() {
            let info = validate_batch(&bytes, usize::MAX).expect("the log returns valid batches");
            let mut one = bytes.split_to(info.size_bytes);
            if info.is_control() {
                continue;
            }
            let Ok(set) = kafka_protocol::records::RecordBatchDecoder::decode(&mut one) else {
                warn!(partition, "undecodable batch in {TXN_STATE_TOPIC}; skipped");
                continue;
            };
            for record in set.records {
                let Some(id) = record.key.as_deref().and_then(txn_log::decode_key) else {
                    continue;
                };
                match record.value.as_deref().and_then(txn_log::decode_value) {
                    Some(value) => {
                        latest.insert(id, value);
                    }
                    None => {
                        latest.remove(&id);
                    }
                }
            }
        }
        from = read.next_offset;
    }
    let loaded = latest.len();
    let mut prepared = Vec::new();
    {
        let mut txns = shard.transactions.txns.borrow_mut();
        for (id, record) in latest {
            let busy = matches!(
                record.status,
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
            );
            if busy {
                prepared.push((id.clone(), record.clone()));
            }
            txns.insert(id, TxnMeta { record, busy });
        }
    }
    Ok(Replayed {
        ids: loaded,
        prepared,
    })
}

/// Finishes, in the background, the transactions [`replay`] found prepared on state partition
/// `partition`, which this shard coordinates now.
pub fn finish_prepared(shard: &Rc<Shard>, topic: &Arc<Topic>, partition: i32, replayed: Replayed) {
    for (id, record) in replayed.prepared {
        info!(transactional_id = %id, status = record.status.name(), "finishing a transaction a restart interrupted");
        complete_in_background(shard, topic, partition, id, record);
    }
}

/// Aborts this shard's transactions that stayed open past their timeout, forever.
pub async fn timeouts(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(TIMEOUT_CHECK_PERIOD).await;
        let now = now_ms();
        let expired: Vec<String> = shard
            .transactions
            .txns
            .borrow()
            .iter()
            .filter(|(_, m)| {
                !m.busy
                    && m.record.status == TxnStatus::Ongoing
                    && now.saturating_sub(m.record.start_ms) > i64::from(m.record.timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Some(topic) = shard.image().topic(TXN_STATE_TOPIC).cloned() else {
                break;
            };
            let partition = txn_partition(&id, topic.partitions);
            let Ok(Some(mut record)) = take(&shard, &id) else {
                continue;
            };
            if record.status != TxnStatus::Ongoing {
                release(&shard, &id, None);
                continue;
            }
            // At the next epoch: the producer that let it time out is fenced.
            if bump_epoch(&shard, &mut record).await.is_err() {
                release(&shard, &id, None);
                continue;
            }
            record.status = TxnStatus::PrepareAbort;
            record.last_update_ms = now_ms();
            if persist(&shard, &topic, partition, &id, &record)
                .await
                .is_err()
            {
                release(&shard, &id, None);
                continue;
            }
            info!(transactional_id = %id, producer_id = record.producer_id,
                timeout_ms = record.timeout_ms, "aborting a transaction past its timeout");
            complete(&shard, &topic, partition, &id, record).await;
        }
    }
}
