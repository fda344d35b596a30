//! Produce: append each partition's batches on the shard that owns it.
//!
//! The connection's shard splits the request by owning shard, sends each shard its part in one
//! job (the records travel as the `Bytes` slices of the received frame), and gathers the
//! answers back into request order. On the owner, the partitions of one job append
//! concurrently, so their fdatasyncs overlap. acks=all answers only once the batches are
//! durable; acks=1 once they are in the log's write buffer.
//!
//! Order: a connection's produce requests take effect in the order they arrived (Kafka's rule;
//! clients without idempotence rely on it for their send order). Each request is one link of
//! its connection's [`ProduceChain`]: it validates at once, then waits until the request before
//! it has dispatched its jobs, dispatches its own and lets the next request go on. A job takes
//! a ticket of the owner's placement turn for its source shard synchronously as the owner
//! receives it ([`Shard::dispatch`]; one FIFO channel per shard pair), so jobs are placed in
//! dispatch order, and placing takes each partition's append ticket. No step waits for a round
//! trip between shards: decoding, validation, the hop and the wait for durability of successive
//! requests all overlap.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::Either;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use kafka_protocol::ResponseError;
use sluice_storage::{batch, BatchError, BatchInfo, StorageError};

use crate::partition::{AppendError, Partition};
use crate::shard::Shard;
use crate::topics::Topic;
use crate::{resolve_topic, TopicRef};

/// How many replicas must have a batch before the produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: no answer at all.
    None,
    /// acks=1: the leader has it (buffered).
    Leader,
    /// acks=-1/all: every in-sync replica has it durably.
    All,
}

impl Acks {
    pub fn from_wire(acks: i16) -> Option<Acks> {
        match acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        }
    }
}

/// One partition's part of a produce request.
#[derive(Debug, Clone)]
pub struct ProduceInput {
    pub topic: TopicRef,
    pub partition: i32,
    pub records: Option<Bytes>,
}

/// The answer for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceOutput {
    pub error: Option<ResponseError>,
    pub message: Option<String>,
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// KIP-467: the records (index in the batch) that made the batch fail, with why.
    pub record_errors: Vec<(i32, String)>,
}

impl ProduceOutput {
    fn failed(code: ResponseError, message: impl Into<String>) -> ProduceOutput {
        ProduceOutput {
            error: Some(code),
            message: Some(message.into()),
            base_offset: -1,
            log_start_offset: -1,
            record_errors: Vec::new(),
        }
    }
}

/// A connection's produce requests, in arrival order: hands each request its [`OrderLink`].
#[derive(Debug, Default)]
pub struct ProduceChain {
    /// Resolves once the last linked request has dispatched its jobs (or has ended).
    last_placed: Option<oneshot::Receiver<()>>,
}

impl ProduceChain {
    /// The link for the next produce request of the connection, in arrival order.
    pub fn link(&mut self) -> OrderLink {
        let (placed, next) = oneshot::channel();
        OrderLink {
            previous: self.last_placed.replace(next),
            placed: Some(placed),
        }
    }
}

/// One request's place in its connection's [`ProduceChain`].
#[derive(Debug, Default)]
pub struct OrderLink {
    /// Resolves once the previous request has dispatched its jobs; `None` for the first.
    previous: Option<oneshot::Receiver<()>>,
    /// Dropped (or fired) once this request has dispatched its jobs: the next may go on.
    placed: Option<oneshot::Sender<()>>,
}

impl OrderLink {
    /// A link that waits for nothing and nobody waits for (a request outside any connection).
    pub fn unordered() -> OrderLink {
        OrderLink::default()
    }

    async fn wait_for_previous(&mut self) {
        if let Some(previous) = self.previous.take() {
            // Sent or dropped: either way the previous request has dispatched or ended.
            let _ = previous.await;
        }
    }

    /// This request has dispatched its jobs, in order: the next one may go on. (Dropping the
    /// link does the same, so a request that ends early never holds up the ones behind it.)
    fn mark_placed(mut self) {
        if let Some(placed) = self.placed.take() {
            let _ = placed.send(());
        }
    }
}

/// One partition's append, sent to its owning shard.
#[derive(Debug, Clone)]
struct Append {
    /// Position in the request, where the answer goes.
    index: usize,
    topic: Arc<Topic>,
    partition: i32,
    records: Bytes,
    /// A transactional batch to verify with its coordinator (KIP-890 part 1) if it would open
    /// its producer's transaction on the partition: (transactional id, producer id, epoch).
    verify: Option<(Arc<str>, i64, i16)>,
}

/// Appends every input on its owning shard; one output per input, in order. The appends are
/// dispatched only after `link`'s previous request has dispatched its own, so they land after
/// them in every partition.
pub async fn produce(
    shard: &Rc<Shard>,
    acks: Acks,
    inputs: Vec<ProduceInput>,
    transactional_id: Option<String>,
    mut link: OrderLink,
) -> Vec<ProduceOutput> {
    let transactional_id: Option<Arc<str>> = transactional_id.map(Arc::from);
    let image = shard.image();
    let mut outputs: Vec<Option<ProduceOutput>> = vec![None; inputs.len()];
    let mut per_shard: Vec<Vec<Append>> = vec![Vec::new(); shard.count];
    for (index, input) in inputs.into_iter().enumerate() {
        let Some(topic) = resolve_topic(&image, &input.topic) else {
            outputs[index] = Some(match &input.topic {
                TopicRef::Name(name) => match crate::topics::validate_topic_name(name) {
                    // No topic can have this name: the client fails at once, as with Kafka.
                    Err(why) => ProduceOutput::failed(ResponseError::InvalidTopicException, why),
                    Ok(()) => ProduceOutput::failed(
                        ResponseError::UnknownTopicOrPartition,
                        "this server does not host this topic",
                    ),
                },
                TopicRef::Id(_) => ProduceOutput::failed(
                    ResponseError::UnknownTopicId,
                    "this server does not host a topic with this id",
                ),
            });
            continue;
        };
        if !(0..topic.partitions).contains(&input.partition) {
            outputs[index] = Some(ProduceOutput::failed(
                ResponseError::UnknownTopicOrPartition,
                format!("topic {} has no partition {}", topic.name, input.partition),
            ));
            continue;
        }
        if topic.name == crate::groups::OFFSETS_TOPIC
            || topic.name == crate::transactions::TXN_STATE_TOPIC
        {
            outputs[index] = Some(ProduceOutput::failed(
                ResponseError::InvalidTopicException,
                format!(
                    "the internal topic {} is written by its coordinator only",
                    topic.name
                ),
            ));
            continue;
        }
        let replicas = shard.replicas_of(&image, &topic.name, input.partition);
        if let Some(replicas) = replicas {
            if !replicas.contains(&shard.node_id()) {
                outputs[index] = Some(ProduceOutput::failed(
                    ResponseError::NotLeaderOrFollower,
                    format!(
                        "node {} holds no replica of {}-{}",
                        shard.node_id(),
                        topic.name,
                        input.partition
                    ),
                ));
                continue;
            }
        }
        let replica_count = replicas.map_or(1, <[i32]>::len) as i64;
        if acks == Acks::All && topic.min_insync_replicas() > replica_count {
            outputs[index] = Some(ProduceOutput::failed(
                ResponseError::NotEnoughReplicas,
                format!(
                    "min.insync.replicas is {} but the partition has {replica_count} replica(s)",
                    topic.min_insync_replicas()
                ),
            ));
            continue;
        }
        if let Err(why) = shard.disk_has_room() {
            outputs[index] = Some(ProduceOutput::failed(ResponseError::KafkaStorageError, why));
            continue;
        }
        let Some(records) = input.records.filter(|r| !r.is_empty()) else {
            outputs[index] = Some(ProduceOutput::failed(
                ResponseError::InvalidRecord,
                "the partition's records are empty",
            ));
            continue;
        };
        let checked = match check_batches(&records, topic.max_message_bytes()) {
            Ok(checked) => checked,
            Err(failure) => {
                outputs[index] = Some(failure);
                continue;
            }
        };
        if checked.info.is_transactional() && transactional_id.is_none() {
            // Kafka's answer: a transactional batch needs the request's transactional id,
            // which the principal may WRITE.
            outputs[index] = Some(ProduceOutput::failed(
                ResponseError::TransactionalIdAuthorizationFailed,
                "a transactional batch needs the request's transactional id (WRITE on it)",
            ));
            continue;
        }
        if checked.info.producer_id >= 0 && checked.info.base_sequence < 0 {
            outputs[index] = Some(ProduceOutput::failed(
                ResponseError::InvalidRecord,
                "a batch with a producer id must carry a sequence",
            ));
            continue;
        }
        if topic.is_compacted() {
            let keyless: Vec<i32> = match &checked.decompressed {
                Some(records) => records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.key.is_none())
                    .map(|(i, _)| i as i32)
                    .collect(),
                None => batch::keyless_records(&records, &checked.info),
            };
            if !keyless.is_empty() {
                // Kafka's words (KIP-467), so clients and their users see the same text.
                let why = format!(
                    "Compacted topic cannot accept message without key in topic partition {}-{}.",
                    topic.name, input.partition
                );
                outputs[index] = Some(ProduceOutput {
                    record_errors: keyless.into_iter().map(|i| (i, why.clone())).collect(),
                    ..ProduceOutput::failed(ResponseError::InvalidRecord, why)
                });
                continue;
            }
        }
        let info = checked.info;
        if let Err(failure) = check_timestamps(topic, &records, &checked) {
            outputs[index] = Some(failure);
            continue;
        }
        let records = match topic.required_codec() {
            Some(codec) => match recompress(&records, checked, codec) {
                Ok(recompressed) => recompressed,
                Err(failure) => {
                    outputs[index] = Some(failure);
                    continue;
                }
            },
            None => records,
        };
        let verify = (info.is_transactional() && shard.settings.txn_partition_verification)
            .then(|| transactional_id.clone())
            .flatten()
            .map(|id| (id, info.producer_id, info.producer_epoch));
        let owner = shard.owner_of(&topic.name, input.partition);
        per_shard[owner].push(Append {
            index,
            topic: topic.clone(),
            partition: input.partition,
            records,
            verify,
        });
    }
    let durable = acks == Acks::All;
    let source = shard.id;
    link.wait_for_previous().await;
    let mut running = Vec::new();
    for (owner, parts) in per_shard.into_iter().enumerate() {
        if parts.is_empty() {
            continue;
        }
        let indexes: Vec<usize> = parts.iter().map(|p| p.index).collect();
        let dispatched = shard
            .dispatch(owner, move |owner_shard: Rc<Shard>| {
                // Taken as the owner receives the job: jobs from one shard are placed in the
                // order they were dispatched (the connection's order, by its chain).
                let placement = owner_shard.placement_turn(source).ticket();
                async move {
                    let turn = placement.await;
                    let mut appends = Vec::with_capacity(parts.len());
                    for part in parts {
                        appends.push(
                            match owner_shard.partition(&part.topic, part.partition).await {
                                Ok(partition) => {
                                    match too_few_in_sync(&partition, &part, durable) {
                                        Some(refused) => {
                                            Either::Right(futures::future::ready(refused))
                                        }
                                        None => Either::Left(append_one(
                                            &owner_shard,
                                            &partition,
                                            &part.topic.name,
                                            part.partition,
                                            part.records,
                                            part.verify,
                                            durable,
                                        )),
                                    }
                                }
                                Err(e) => Either::Right(futures::future::ready(storage_failure(e))),
                            },
                        );
                    }
                    // Every append of this job holds its partition ticket.
                    drop(turn);
                    futures::future::join_all(appends).await
                }
            })
            .await;
        running.push(async move {
            match dispatched {
                Ok(answer) => (indexes, answer.await),
                Err(gone) => (indexes, Err(gone)),
            }
        });
    }
    // Every job is placed or on its way in order: the connection's next request may go on.
    link.mark_placed();
    let answers = futures::future::join_all(running).await;
    for (indexes, answered) in answers {
        match answered {
            Ok(answers) => {
                for (index, answer) in indexes.into_iter().zip(answers) {
                    outputs[index] = Some(answer);
                }
            }
            Err(gone) => {
                for index in indexes {
                    outputs[index] = Some(ProduceOutput::failed(
                        ResponseError::NotLeaderOrFollower,
                        gone.to_string(),
                    ));
                }
            }
        }
    }
    outputs
        .into_iter()
        .map(|o| o.expect("every input gets an answer"))
        .collect()
}

/// A produced batch once [`check_batches`] has accepted it.
struct CheckedBatch {
    info: BatchInfo,
    /// The records, when checking had to decompress them (kept for [`recompress`]).
    decompressed: Option<Vec<Record>>,
}

/// Validates the partition's batch on the connection's shard, before it travels: exactly one
/// batch, its header and CRC, and every record's structure. A compressed batch is decompressed
/// to check its records, as Kafka's broker does, so corrupt compressed data is refused here
/// rather than handed to every consumer; the stored bytes are still the producer's. (The owning
/// log checks header and CRC again as it appends; that pass is cheap.)
fn check_batches(records: &Bytes, batch_bytes_max: usize) -> Result<CheckedBatch, ProduceOutput> {
    let infos = batch::validate_batches(records, batch_bytes_max)
        .map_err(|e| ProduceOutput::failed(batch_error_code(&e), e.to_string()))?;
    let [info] = infos.as_slice() else {
        // Kafka's rule since Produce v3, which idempotence relies on.
        return Err(ProduceOutput::failed(
            ResponseError::InvalidRecord,
            format!(
                "a partition's records must be exactly one record batch, not {}",
                infos.len()
            ),
        ));
    };
    let info = *info;
    if info.compression_codec() == 0 {
        batch::validate_records(records, &info)
            .map_err(|e| ProduceOutput::failed(batch_error_code(&e), e.to_string()))?;
        return Ok(CheckedBatch {
            info,
            decompressed: None,
        });
    }
    let mut compressed = records.clone();
    match RecordBatchDecoder::decode(&mut compressed) {
        Ok(set) if set.records.len() == info.record_count as usize => Ok(CheckedBatch {
            info,
            decompressed: Some(set.records),
        }),
        Ok(set) => Err(ProduceOutput::failed(
            ResponseError::CorruptMessage,
            format!(
                "the batch says {} records but its compressed data holds {}",
                info.record_count,
                set.records.len()
            ),
        )),
        Err(e) => Err(ProduceOutput::failed(
            ResponseError::CorruptMessage,
            format!("cannot decompress the batch's records: {e}"),
        )),
    }
}

/// The batch in codec `codec` (a RecordBatch attribute value), for topics whose
/// `compression.type` names one: unchanged if it already is, else encoded again with every
/// record field (offsets deltas, timestamps, keys, values, headers, producer id, epoch and
/// sequences) kept, from the records [`check_batches`] decompressed (or decoded here when the
/// batch came uncompressed). Runs on the connection's shard, like validation.
fn recompress(records: &Bytes, checked: CheckedBatch, codec: i16) -> Result<Bytes, ProduceOutput> {
    let current = checked.info;
    if current.compression_codec() == codec {
        return Ok(records.clone());
    }
    let mut decoded = match checked.decompressed {
        Some(decoded) => decoded,
        None => {
            let mut input = records.clone();
            RecordBatchDecoder::decode(&mut input)
                .map_err(|e| {
                    ProduceOutput::failed(
                        ResponseError::CorruptMessage,
                        format!("cannot decode: {e}"),
                    )
                })?
                .records
        }
    };
    if current.producer_id < 0 {
        // The encoder keeps records in one batch only when offset - sequence is the same for
        // all; without a producer the sequences carry no meaning, so make them line up.
        for r in &mut decoded {
            r.sequence = r.offset as i32;
        }
    }
    let compression = match codec {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    };
    let mut out = bytes::BytesMut::with_capacity(records.len());
    RecordBatchEncoder::encode(
        &mut out,
        &decoded,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| {
        ProduceOutput::failed(
            ResponseError::CorruptMessage,
            format!("cannot recompress the batch: {e}"),
        )
    })?;
    Ok(out.freeze())
}

/// Every record's timestamp must lie within the topic's `message.timestamp.before.max.ms` /
/// `message.timestamp.after.max.ms` of the broker's clock, as Kafka checks CreateTime records:
/// otherwise INVALID_TIMESTAMP, with the culprits in `record_errors` (KIP-467). The header's
/// max timestamp settles the common case; records are walked only when it (or a lower bound)
/// calls for it.
fn check_timestamps(
    topic: &Topic,
    records: &Bytes,
    checked: &CheckedBatch,
) -> Result<(), ProduceOutput> {
    let (oldest, newest) = topic.timestamp_window(sluice_storage::types::now_ms());
    if checked.info.max_timestamp <= newest && oldest.is_none() {
        return Ok(());
    }
    let oldest = oldest.unwrap_or(i64::MIN);
    let timestamps: Vec<i64> = match &checked.decompressed {
        Some(decoded) => decoded.iter().map(|r| r.timestamp).collect(),
        None => batch::record_timestamps(records, &checked.info),
    };
    let out_of_range: Vec<(i32, String)> = timestamps
        .iter()
        .enumerate()
        .filter(|(_, ts)| !(oldest..=newest).contains(*ts))
        .map(|(i, ts)| {
            // Kafka's words, so clients and their users see the same text.
            let why = format!(
                "Timestamp {ts} of message with offset {i} is out of range. \
                 The timestamp should be within [{oldest}, {newest}]"
            );
            (i as i32, why)
        })
        .collect();
    match out_of_range.first() {
        None => Ok(()),
        Some((_, first)) => Err(ProduceOutput {
            record_errors: out_of_range.clone(),
            ..ProduceOutput::failed(ResponseError::InvalidTimestamp, first.clone())
        }),
    }
}

fn batch_error_code(e: &BatchError) -> ResponseError {
    match e {
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
        BatchError::BadRecord { .. } => ResponseError::InvalidRecord,
        _ => ResponseError::CorruptMessage,
    }
}

/// Runs on the owning shard. The batch's place in the partition's order is taken by this call.
/// Cluster mode, acks=all: NOT_ENOUGH_REPLICAS while the leader has fewer replicas in sync
/// than the topic's `min.insync.replicas` (Kafka's check before the append).
fn too_few_in_sync(partition: &Partition, part: &Append, durable: bool) -> Option<ProduceOutput> {
    let replica = partition.replica().filter(|r| durable && r.is_leader())?;
    let needed = part.topic.min_insync_replicas();
    let in_sync = replica.in_sync_count() as i64;
    (in_sync < needed).then(|| {
        ProduceOutput::failed(
            ResponseError::NotEnoughReplicas,
            format!(
                "{in_sync} replica(s) of {}-{} in sync, min.insync.replicas is {needed}",
                part.topic.name, part.partition
            ),
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn append_one(
    shard: &Rc<Shard>,
    partition: &Rc<Partition>,
    topic: &str,
    index: i32,
    records: Bytes,
    verify: Option<(Arc<str>, i64, i16)>,
    durable: bool,
) -> impl std::future::Future<Output = ProduceOutput> + 'static {
    let verify = verify.map(|(transactional_id, producer_id, producer_epoch)| {
        let (shard, topic) = (shard.clone(), topic.to_string());
        Box::new(move || {
            Box::pin(async move {
                crate::transactions::verify_for_produce(
                    &shard,
                    transactional_id.to_string(),
                    producer_id,
                    producer_epoch,
                    topic,
                    index,
                )
                .await
            }) as futures::future::LocalBoxFuture<'static, _>
        }) as crate::partition::TxnVerify
    });
    let appended = partition.append_verified(records, durable, verify);
    let partition = partition.clone();
    async move {
        match appended.await {
            Ok(info) => ProduceOutput {
                error: None,
                message: None,
                base_offset: info.base_offset.0,
                log_start_offset: partition.log().log_start_offset().0,
                record_errors: Vec::new(),
            },
            Err(AppendError::Refused(code, message)) => ProduceOutput::failed(code, message),
            Err(AppendError::Storage(e)) => storage_failure(e),
        }
    }
}

/// The Kafka error for a storage failure.
pub(crate) fn storage_failure(e: StorageError) -> ProduceOutput {
    let code = match &e {
        StorageError::InvalidBatch { source, .. } => batch_error_code(source),
        StorageError::EmptyAppend => ResponseError::InvalidRecord,
        StorageError::Closed => ResponseError::UnknownTopicOrPartition,
        _ => ResponseError::KafkaStorageError,
    };
    ProduceOutput::failed(code, e.to_string())
}
