//! ListOffsets: a partition's earliest and latest offsets, the first offset at or after a
//! timestamp, or the first record with the largest timestamp (KIP-734); and DeleteRecords, which moves a partition's start. Both run on the owning shard.

use std::rc::Rc;

use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use sluice_storage::{Log, Offset};

use crate::shard::Shard;
use crate::{resolve_topic, TopicRef};

/// Kafka's special timestamps in ListOffsets.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;
/// KIP-734 (v7): the first record carrying the largest timestamp.
pub const MAX_TIMESTAMP: i64 = -3;
/// KIP-405 (v8): the earliest offset on local storage; without tiered storage, the earliest.
pub const EARLIEST_LOCAL: i64 = -4;
/// KIP-1005 (v9): the latest tiered offset; without tiered storage there is none.
pub const LATEST_TIERED: i64 = -5;

#[derive(Debug, Clone)]
pub struct OffsetQuery {
    pub topic: TopicRef,
    pub partition: i32,
    pub timestamp: i64,
    /// The epoch the client believes current (-1: not checked; ListOffsets v4+).
    pub current_leader_epoch: i32,
    /// isolation_level read_committed (ListOffsets v2+): the latest offset is the last stable
    /// offset, and a record found by timestamp must be below it.
    pub read_committed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAnswer {
    pub error: Option<ResponseError>,
    /// -1 when no record matches.
    pub offset: i64,
    /// -1 unless a record was found by timestamp.
    pub timestamp: i64,
    /// The partition's current leader epoch (0 on a single node; the Raft term in cluster
    /// mode), whose end (OffsetForLeaderEpoch) is never below the answered offset, so a client
    /// validating its position with it never sees a truncation that did not happen.
    pub leader_epoch: i32,
}

impl OffsetAnswer {
    fn failed(code: ResponseError) -> OffsetAnswer {
        OffsetAnswer {
            error: Some(code),
            offset: -1,
            timestamp: -1,
            leader_epoch: -1,
        }
    }
    fn at(offset: i64) -> OffsetAnswer {
        OffsetAnswer {
            error: None,
            offset,
            timestamp: -1,
            leader_epoch: crate::partition::LEADER_EPOCH.0,
        }
    }
}

/// The log's answer is exact for uncompressed batches and the base of the batch for compressed
/// ones: read that batch, decompress it, and return the first record at or after `ts` with its
/// own timestamp, as Kafka does.
async fn exact_record_at_or_after(log: &Log, near: Offset, ts: i64) -> OffsetAnswer {
    let Ok(read) = log.read(near, 1).await else {
        return OffsetAnswer::failed(ResponseError::KafkaStorageError);
    };
    let mut bytes = read.bytes;
    let found = RecordBatchDecoder::decode(&mut bytes).ok().and_then(|set| {
        // Records before the log's answer are all older than `ts` (it is the first that is
        // not, or the batch holding it), so the first match in the batch is the answer.
        set.records.into_iter().find(|r| r.timestamp >= ts)
    });
    match found {
        Some(record) => OffsetAnswer {
            offset: record.offset,
            timestamp: record.timestamp,
            ..OffsetAnswer::at(record.offset)
        },
        // Undecodable here (say, a codec this build lacks): the batch-granular answer.
        None => OffsetAnswer {
            timestamp: ts,
            ..OffsetAnswer::at(near.0)
        },
    }
}

/// Answers each query on its partition's owning shard; one answer per query, in order.
pub async fn list_offsets(shard: &Rc<Shard>, queries: Vec<OffsetQuery>) -> Vec<OffsetAnswer> {
    let image = shard.image();
    let answers = queries.into_iter().map(|query| {
        let found = resolve_topic(&image, &query.topic)
            .filter(|t| (0..t.partitions).contains(&query.partition))
            .cloned();
        async move {
            let Some(topic) = found else {
                return OffsetAnswer::failed(ResponseError::UnknownTopicOrPartition);
            };
            let owner = shard.owner_of(&topic.name, query.partition);
            let partition = query.partition;
            let timestamp = query.timestamp;
            let current_leader_epoch = query.current_leader_epoch;
            let read_committed = query.read_committed;
            shard
                .invoke_on(owner, move |owner_shard| async move {
                    let p = match owner_shard.partition(&topic, partition).await {
                        Ok(p) => p,
                        Err(e) => {
                            return OffsetAnswer::failed(crate::partition::unavailable_code(&e))
                        }
                    };
                    if let Some(code) = p.refuses(current_leader_epoch) {
                        return OffsetAnswer::failed(code);
                    }
                    let log = p.log();
                    let visible_end = if read_committed {
                        p.last_stable_offset()
                    } else {
                        p.high_watermark()
                    };
                    let answer = match timestamp {
                        LATEST => OffsetAnswer::at(visible_end.0),
                        EARLIEST | EARLIEST_LOCAL => OffsetAnswer::at(log.log_start_offset().0),
                        LATEST_TIERED => OffsetAnswer::at(-1),
                        MAX_TIMESTAMP => match log.max_timestamp() {
                            Some(max) => match log.offset_for_timestamp(max).await {
                                Ok(Some(near)) => exact_record_at_or_after(log, near, max).await,
                                Ok(None) => OffsetAnswer::at(-1),
                                Err(_) => OffsetAnswer::failed(ResponseError::KafkaStorageError),
                            },
                            None => OffsetAnswer::at(-1),
                        },
                        ts if ts < 0 => OffsetAnswer::failed(ResponseError::UnsupportedVersion),
                        ts => match log.offset_for_timestamp(ts).await {
                            Ok(Some(near)) => exact_record_at_or_after(log, near, ts).await,
                            Ok(None) => OffsetAnswer::at(-1),
                            Err(_) => OffsetAnswer::failed(ResponseError::KafkaStorageError),
                        },
                    };
                    match answer.error {
                        // Cluster mode: a record found by timestamp above the high watermark
                        // is not committed yet, so not there for clients (nor one above the
                        // last stable offset for read_committed).
                        None if (timestamp >= 0 || timestamp == MAX_TIMESTAMP)
                            && answer.offset >= visible_end.0 =>
                        {
                            OffsetAnswer {
                                leader_epoch: p.leader_epoch(),
                                ..OffsetAnswer::at(-1)
                            }
                        }
                        None => OffsetAnswer {
                            leader_epoch: p.leader_epoch(),
                            ..answer
                        },
                        Some(_) => answer,
                    }
                })
                .await
                .unwrap_or_else(|_| OffsetAnswer::failed(ResponseError::NotLeaderOrFollower))
        }
    });
    futures::future::join_all(answers).await
}

/// DeleteRecords: moves each partition's log start up to the asked offset (-1: the high
/// watermark), durably, on its owning shard. Returns (error, new low watermark) per input.
pub async fn delete_records(
    shard: &Rc<Shard>,
    requests: Vec<(String, i32, i64)>,
) -> Vec<(Option<ResponseError>, i64)> {
    let image = shard.image();
    let answers = requests.into_iter().map(|(name, partition, offset)| {
        let found = image
            .topic(&name)
            .filter(|t| (0..t.partitions).contains(&partition))
            .cloned();
        async move {
            let Some(topic) = found else {
                return (Some(ResponseError::UnknownTopicOrPartition), -1);
            };
            if topic.name == crate::groups::OFFSETS_TOPIC {
                return (Some(ResponseError::InvalidTopicException), -1);
            }
            let owner = shard.owner_of(&topic.name, partition);
            shard
                .invoke_on(owner, move |owner_shard| async move {
                    let p = match owner_shard.partition(&topic, partition).await {
                        Ok(p) => p,
                        Err(e) => return (Some(crate::partition::unavailable_code(&e)), -1),
                    };
                    if p.replica().is_some_and(|link| !link.is_leader()) {
                        return (Some(ResponseError::NotLeaderOrFollower), -1);
                    }
                    let target = if offset == -1 {
                        p.high_watermark()
                    } else {
                        Offset(offset)
                    };
                    if target.0 < 0 || target > p.high_watermark() {
                        return (Some(ResponseError::OffsetOutOfRange), -1);
                    }
                    match p.truncate_prefix(target).await {
                        Ok(start) => (None, start.0),
                        Err(crate::partition::AppendError::Refused(code, _)) => (Some(code), -1),
                        Err(crate::partition::AppendError::Storage(e)) => {
                            (Some(crate::partition::unavailable_code(&e)), -1)
                        }
                    }
                })
                .await
                .unwrap_or((Some(ResponseError::NotLeaderOrFollower), -1))
        }
    });
    futures::future::join_all(answers).await
}

/// One partition of an OffsetForLeaderEpoch request.
#[derive(Debug, Clone)]
pub struct EpochQuery {
    pub topic: String,
    pub partition: i32,
    /// The epoch the client believes current (-1: not checked).
    pub current_leader_epoch: i32,
    pub leader_epoch: i32,
}

/// The answer: error, then the epoch found and where it ends (-1, -1: undefined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochAnswer {
    pub error: Option<ResponseError>,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

impl EpochAnswer {
    const UNDEFINED: EpochAnswer = EpochAnswer {
        error: None,
        leader_epoch: -1,
        end_offset: -1,
    };

    fn failed(code: ResponseError) -> EpochAnswer {
        EpochAnswer {
            error: Some(code),
            ..EpochAnswer::UNDEFINED
        }
    }
}

/// OffsetForLeaderEpoch (KIP-101, KIP-320): where each asked leader epoch ends in the
/// partition's log, on its leader. A single node has one epoch (0) ending at the log end. In
/// cluster mode epochs are Raft terms.
pub async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    queries: Vec<EpochQuery>,
) -> Vec<EpochAnswer> {
    let image = shard.image();
    let answers = queries.into_iter().map(|query| {
        let found = image
            .topic(&query.topic)
            .filter(|t| (0..t.partitions).contains(&query.partition))
            .cloned();
        async move {
            let Some(topic) = found else {
                return EpochAnswer::failed(ResponseError::UnknownTopicOrPartition);
            };
            let owner = shard.owner_of(&topic.name, query.partition);
            shard
                .invoke_on(owner, move |owner_shard| async move {
                    let p = match owner_shard.partition(&topic, query.partition).await {
                        Ok(p) => p,
                        Err(e) => {
                            return EpochAnswer::failed(crate::partition::unavailable_code(&e))
                        }
                    };
                    if let Some(code) = p.refuses(query.current_leader_epoch) {
                        return EpochAnswer::failed(code);
                    }
                    let Ok(epoch) = u64::try_from(query.leader_epoch) else {
                        return EpochAnswer::UNDEFINED;
                    };
                    let end = match (&owner_shard.replication, p.replica()) {
                        (Some(replication), Some(_)) => {
                            replication
                                .epoch_end((topic.id, query.partition), epoch)
                                .await
                        }
                        _ => (epoch == 0).then(|| (0, p.log().log_end_offset())),
                    };
                    match end {
                        // Not capped at the high watermark: a new leader's may still be below
                        // what its predecessor acknowledged to the client (Kafka answers the
                        // log's end too).
                        Some((found, end)) => EpochAnswer {
                            error: None,
                            leader_epoch: i32::try_from(found).unwrap_or(i32::MAX),
                            end_offset: end.0,
                        },
                        None => EpochAnswer::UNDEFINED,
                    }
                })
                .await
                .unwrap_or_else(|_| EpochAnswer::failed(ResponseError::NotLeaderOrFollower))
        }
    });
    futures::future::join_all(answers).await
}
