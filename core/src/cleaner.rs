//! Log compaction of user topics (`cleanup.policy` with `compact`): Kafka's log cleaner, one
//! per shard, for the partitions that shard owns.
//!
//! A pass over a partition, as Kafka's cleaner does it:
//! 1. The *dirty* section runs from the cleaned-to checkpoint (the log start when never
//!    cleaned) to the *cleanable end*: the base of the active segment, or of the first sealed
//!    segment holding a record younger than `min.compaction.lag.ms`, or reaching the last
//!    stable offset (an open transaction's records are not cleaned: it may still abort). The active segment is
//!    never cleaned (`max.compaction.lag.ms` makes it roll in time, see `Topic::log_config`).
//! 2. The pass runs when dirty bytes are at least `min.cleanable.dirty.ratio` of the cleanable
//!    bytes, or when the oldest dirty segment is older than `max.compaction.lag.ms`, or (as
//!    KIP-534 has Kafka do) when a tombstone an earlier pass had to keep may now go.
//! 3. An offset map (key -> offset of its latest record) is built over the dirty section,
//!    keys stored whole (no hash, so no collision can drop a record), up to a memory budget; a
//!    map that fills ends the dirty section early, and the next pass goes on from there.
//! 4. Every sealed segment from the log start to the map's end is rewritten (in groups of
//!    consecutive segments up to `segment.bytes`, which merges small cleaned segments) keeping a
//!    record when it is its key's latest, or when the map does not know its key. A tombstone
//!    (null value) also goes once its segment was last written more than `delete.retention.ms`
//!    ago. A record without a key goes (a compacted topic refuses them; they are debris of an
//!    earlier `delete` policy), as in Kafka. Control batches (transaction markers) and the
//!    batches of aborted transactions are kept whole, and their keys stay out of the map, so
//!    an aborted record never makes a committed one go (Kafka removes aborted records and,
//!    later, markers; keeping them costs space only, and read_committed consumers skip them
//!    with the partition's aborted index). Committed transactions are compacted like any
//!    record. A batch emptied of
//!    records goes, except an idempotent producer's last batch, kept empty so its sequence
//!    survives a rebuild of producer state from the log.
//! 5. The checkpoint moves to the map's end.
//!
//! Kept records keep their offsets, timestamps and bytes (a batch is rebuilt around them with
//! its original header, recompressed with its codec); consumers see gaps in offsets, as with
//! Kafka. The rewrite itself (`Log::rewrite_segments`) is crash-safe and paced by an I/O
//! budget, and the pass runs in a task queue of its own with few shares, so produce and fetch
//! work always go first.
//!
//! Cluster mode: every replica cleans its own log (as each Kafka replica runs its own
//! cleaner), leader and followers alike, with two rules of its own. Only segments wholly below
//! the replica's commit point (its high watermark) are cleaned, so nothing a Raft truncation
//! could still take back is rewritten. And no batch goes: one emptied of records stays as an
//! empty batch (`batch::empty_batch`), because each batch is one Raft entry, and a reopen
//! rebuilds the Raft window batch by batch; a follower catching up gets these batches as the
//! leader holds them (see `sluice_replication::partition`).
//!
//! `__consumer_offsets` is not cleaned here: its coordinator compacts it (see `groups`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::compression::{Compressor, Decompressor};
use sluice_storage::batch::{
    empty_batch, rebuild_batch, record_views, BatchInfo, BATCH_HEADER_BYTES,
};
use sluice_storage::log::SegmentSummary;
use sluice_storage::rewrite::{BatchFate, IoBudget};
use sluice_storage::types::{now_ms, TimestampMs};
use sluice_storage::{Offset, StorageError};
use tracing::{debug, info, warn};

use crate::partition::Partition;
use crate::producers::AbortedTxn;
use crate::shard::Shard;
use crate::topics::Compaction;

/// How the cleaner of each shard runs.
#[derive(Debug, Clone)]
pub struct CleanerSettings {
    /// Pause between passes over the shard's compacted partitions (`log.cleaner.backoff.ms`).
    pub backoff: Duration,
    /// Bytes per second a shard's cleaner reads and writes at most
    /// (`log.cleaner.io.max.bytes.per.second`); `None`: unpaced.
    pub io_bytes_per_second: Option<u64>,
    /// Memory for one pass's offset map (`log.cleaner.dedupe.buffer.size`, per shard here).
    pub dedupe_buffer_bytes: u64,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        CleanerSettings {
            backoff: Duration::from_secs(15),
            io_bytes_per_second: Some(100 << 20),
            dedupe_buffer_bytes: 64 << 20,
        }
    }
}

/// Bytes one map entry costs besides its key (the offset, the key's box, the table slot).
const MAP_ENTRY_OVERHEAD_BYTES: u64 = 48;

/// Bytes of batches handled between offers to yield the core to request handling.
const YIELD_EVERY_BYTES: usize = 64 * 1024;

/// Bytes of the dirty section read per I/O while building the map.
const MAP_READ_BYTES: usize = 1 << 20;

/// What one pass over a partition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassOutcome {
    pub cleaned_to: i64,
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// When the earliest tombstone this pass kept (too young to go) may go: the partition is
    /// cleaned again then, dirty or not (as KIP-534 has Kafka do).
    pub tombstones_expire_at: Option<TimestampMs>,
}

/// Cleans this shard's compacted partitions, forever, every `backoff`. Spawned once per shard
/// into a low-priority task queue.
pub async fn cleaner_loop(shard: Rc<Shard>) {
    let settings = shard.settings.cleaner.clone();
    let mut revisit_at: HashMap<crate::shard::PartitionKey, TimestampMs> = HashMap::new();
    loop {
        glommio::timer::sleep(settings.backoff).await;
        let image = shard.image();
        let compacted: Vec<_> = shard
            .open_partitions()
            .into_iter()
            .filter_map(|(key, partition)| {
                let topic = image.topic_by_id(key.0)?;
                if topic.name == crate::groups::OFFSETS_TOPIC {
                    return None;
                }
                let segment_bytes = partition.log().config().segment_bytes_max;
                Some((key, partition, topic.compaction()?, segment_bytes))
            })
            .collect();
        revisit_at.retain(|key, _| compacted.iter().any(|c| c.0 == *key));
        for (key, partition, compaction, segment_bytes) in compacted {
            let now = now_ms();
            let revisit = revisit_at.get(&key).is_some_and(|at| *at <= now);
            let pass = clean_partition(
                &partition,
                &compaction,
                segment_bytes,
                &settings,
                now,
                revisit,
            );
            match pass.await {
                Ok(Some(outcome)) => {
                    info!(dir = %partition.dir().display(),
                        cleaned_to = outcome.cleaned_to, segments = outcome.segments_rewritten,
                        bytes_before = outcome.bytes_before, bytes_after = outcome.bytes_after,
                        "partition compacted");
                    match outcome.tombstones_expire_at {
                        Some(at) => revisit_at.insert(key, at),
                        None => revisit_at.remove(&key),
                    };
                }
                Ok(None) => {}
                Err(StorageError::Closed) => {}
                Err(e) => warn!(dir = %partition.dir().display(), error = %e, "compaction failed"),
            }
        }
    }
}

/// One cleaning pass over `partition` as of `now`, if it is due (see the module docs) or
/// `revisit` says tombstones kept by an earlier pass have expired.
pub async fn clean_partition(
    partition: &Partition,
    compaction: &Compaction,
    segment_bytes_max: u64,
    settings: &CleanerSettings,
    now: TimestampMs,
    revisit: bool,
) -> Result<Option<PassOutcome>, StorageError> {
    let log = partition.log();
    // Only what is committed (cluster mode) or durable (one node), and stable (no open
    // transaction), is cleaned.
    let committed = partition.last_stable_offset();
    let sealed: Vec<SegmentSummary> = log
        .sealed_segments()
        .into_iter()
        .take_while(|s| s.next_offset <= committed)
        .collect();
    let keep_every_batch = partition.replica().is_some();
    let first_dirty = log.cleaned_to();
    let end = match cleanable_end(&sealed, first_dirty, compaction, now) {
        Some(end) => end,
        None if revisit => first_dirty,
        None => return Ok(None),
    };
    let clean_bytes: u64 = sealed
        .iter()
        .filter(|s| s.next_offset <= first_dirty)
        .map(|s| s.size_bytes)
        .sum();
    let dirty: Vec<&SegmentSummary> = sealed
        .iter()
        .filter(|s| s.next_offset > first_dirty && s.base_offset < end)
        .collect();
    let dirty_bytes: u64 = dirty.iter().map(|s| s.size_bytes).sum();
    let ratio = dirty_bytes as f64 / (clean_bytes + dirty_bytes).max(1) as f64;
    let overdue = dirty
        .first()
        .is_some_and(|s| s.modified_ms < now.saturating_sub(compaction.max_lag_ms));
    if ratio < compaction.min_cleanable_dirty_ratio && !overdue && !revisit {
        debug!(dir = %partition.dir().display(), ratio, "not dirty enough to clean");
        return Ok(None);
    }

    let mut budget = IoBudget::new(settings.io_bytes_per_second);
    let aborted = partition.aborted_between(log.log_start_offset(), end);
    let (map, map_end) =
        build_offset_map(partition, first_dirty, end, &aborted, settings, &mut budget).await?;
    let producer_last = partition.producer_last_offsets();
    let mut outcome = PassOutcome {
        cleaned_to: map_end.0,
        ..PassOutcome::default()
    };
    let kept_tombstones_expire = std::cell::Cell::new(None::<TimestampMs>);
    for (first, group_end) in groups(&sealed, map_end, segment_bytes_max) {
        let fate = |batch: &[u8], info: &BatchInfo, segment_modified: TimestampMs| {
            let expire_at = segment_modified.saturating_add(compaction.delete_retention_ms);
            let (fate, kept_tombstone) = fate_of(
                batch,
                info,
                &map,
                &aborted,
                expire_at < now,
                &producer_last,
                keep_every_batch,
            );
            if kept_tombstone {
                let earliest = kept_tombstones_expire
                    .get()
                    .map_or(expire_at, |e| e.min(expire_at));
                kept_tombstones_expire.set(Some(earliest));
            }
            fate
        };
        match log
            .rewrite_segments(first, group_end, &mut budget, fate)
            .await?
        {
            Some(done) => {
                outcome.segments_rewritten += done.segments_replaced;
                outcome.bytes_before += done.bytes_before;
                outcome.bytes_after += done.bytes_after;
            }
            // Retention or truncation changed the log meanwhile: the next pass starts over.
            None => return Ok(None),
        }
    }
    log.set_cleaned_to(map_end).await?;
    outcome.tombstones_expire_at = kept_tombstones_expire.get().map(|at| at.saturating_add(1));
    Ok(Some(outcome))
}

/// The end of what may be cleaned now, if there is anything past `first_dirty`.
fn cleanable_end(
    sealed: &[SegmentSummary],
    first_dirty: Offset,
    compaction: &Compaction,
    now: TimestampMs,
) -> Option<Offset> {
    let youngest_allowed = now.saturating_sub(compaction.min_lag_ms);
    let mut end = first_dirty;
    for segment in sealed.iter().filter(|s| s.next_offset > first_dirty) {
        if compaction.min_lag_ms > 0 && segment.max_timestamp > youngest_allowed {
            break;
        }
        end = segment.next_offset;
    }
    (end > first_dirty).then_some(end)
}

/// Consecutive sealed segments from the log start up to the one holding `map_end - 1`, grouped
/// while their sizes add up to at most `segment_bytes_max`: each group becomes one segment.
fn groups(
    sealed: &[SegmentSummary],
    map_end: Offset,
    segment_bytes_max: u64,
) -> Vec<(Offset, Offset)> {
    let mut groups: Vec<(Offset, Offset, u64)> = Vec::new();
    for segment in sealed.iter().filter(|s| s.base_offset < map_end) {
        match groups.last_mut() {
            Some((_, end, bytes))
                if *bytes + segment.size_bytes <= segment_bytes_max
                    && segment.next_offset.0 - end.0 < i64::from(i32::MAX) =>
            {
                *end = segment.next_offset;
                *bytes += segment.size_bytes;
            }
            _ => groups.push((segment.base_offset, segment.next_offset, segment.size_bytes)),
        }
    }
    groups
        .into_iter()
        .map(|(first, end, _)| (first, end))
        .collect()
}

/// Key -> offset of its latest record in `[first_dirty, end)`, and where the map stops (`end`,
/// or earlier when the memory budget ran out).
async fn build_offset_map(
    partition: &Partition,
    first_dirty: Offset,
    end: Offset,
    aborted: &[AbortedTxn],
    settings: &CleanerSettings,
    budget: &mut IoBudget,
) -> Result<(HashMap<Box<[u8]>, i64>, Offset), StorageError> {
    let log = partition.log();
    let mut map: HashMap<Box<[u8]>, i64> = HashMap::new();
    let mut used = 0u64;
    let mut from = first_dirty;
    while from < end {
        let read = log.read(from, MAP_READ_BYTES).await?;
        budget.spend(read.bytes.len() as u64).await;
        let mut rest = &read.bytes[..];
        let mut since_yield = 0usize;
        while !rest.is_empty() {
            let info = sluice_storage::batch::read_header(rest, usize::MAX).map_err(|e| {
                StorageError::Corrupt {
                    segment: from,
                    position: 0,
                    source: e,
                }
            })?;
            let batch = &rest[..info.size_bytes];
            rest = &rest[info.size_bytes..];
            since_yield += info.size_bytes;
            if since_yield >= YIELD_EVERY_BYTES {
                since_yield = 0;
                glommio::executor().yield_task_queue_now().await;
            }
            if info.base_offset >= end {
                return Ok((map, end));
            }
            // An aborted transaction's batches stay out of the map: its keys must not make
            // an earlier committed record go.
            if info.is_control() || is_aborted(&info, aborted) {
                continue;
            }
            let Ok(records) = records_section(batch, &info) else {
                warn!(dir = %partition.dir().display(), offset = %info.base_offset,
                    "cannot decompress a batch; its keys stay out of the map");
                continue;
            };
            let Ok(views) = record_views(&records, info.record_count) else {
                continue;
            };
            let new_keys: u64 = views
                .iter()
                .filter_map(|r| r.key)
                .filter(|k| !map.contains_key(*k))
                .map(|k| k.len() as u64 + MAP_ENTRY_OVERHEAD_BYTES)
                .sum();
            if used + new_keys > settings.dedupe_buffer_bytes && !map.is_empty() {
                // Full: this batch starts the next pass's dirty section.
                return Ok((map, info.base_offset));
            }
            used += new_keys;
            for r in views {
                if let Some(key) = r.key {
                    let offset = info.base_offset.0 + i64::from(r.offset_delta);
                    map.insert(key.into(), offset);
                }
            }
        }
        if read.next_offset <= from {
            break;
        }
        from = read.next_offset;
    }
    Ok((map, end))
}

/// What compaction keeps of one batch (see the module docs), and whether that includes a
/// tombstone. With `keep_every_batch` (a replica), a batch emptied of records stays empty.
fn fate_of(
    batch: &[u8],
    info: &BatchInfo,
    map: &HashMap<Box<[u8]>, i64>,
    aborted: &[AbortedTxn],
    tombstones_expire: bool,
    producer_last: &HashMap<i64, i64>,
    keep_every_batch: bool,
) -> (BatchFate, bool) {
    if info.is_control() || is_aborted(info, aborted) {
        return (BatchFate::Keep, false);
    }
    let Ok(records) = records_section(batch, info) else {
        return (BatchFate::Keep, false);
    };
    let Ok(views) = record_views(&records, info.record_count) else {
        return (BatchFate::Keep, false);
    };
    let kept: Vec<_> = views
        .iter()
        .filter(|r| {
            let Some(key) = r.key else {
                return false;
            };
            let offset = info.base_offset.0 + i64::from(r.offset_delta);
            let latest = map.get(key).is_none_or(|latest| offset >= *latest);
            latest && !(r.value_is_null && tombstones_expire)
        })
        .collect();
    let kept_tombstone = kept.iter().any(|r| r.value_is_null);
    if kept.len() == views.len() {
        return (BatchFate::Keep, kept_tombstone);
    }
    if kept.is_empty() {
        let keeps_sequence = info.producer_id >= 0
            && producer_last.get(&info.producer_id) == Some(&info.last_offset().0);
        let fate = if keeps_sequence || keep_every_batch {
            BatchFate::Replace(empty_batch(batch))
        } else {
            BatchFate::Drop
        };
        return (fate, false);
    }
    let log_append_time = info.attributes & 0x08 != 0;
    let max_timestamp = if log_append_time {
        info.max_timestamp
    } else {
        kept.iter()
            .map(|r| info.base_timestamp.saturating_add(r.timestamp_delta))
            .max()
            .unwrap_or(info.base_timestamp)
    };
    let plain: Vec<u8> = kept.iter().flat_map(|r| r.bytes.iter().copied()).collect();
    let fate = match compress(info.compression_codec(), &plain) {
        Ok(section) => BatchFate::Replace(rebuild_batch(
            batch,
            &section,
            kept.len() as i32,
            max_timestamp,
        )),
        Err(_) => BatchFate::Keep,
    };
    (fate, kept_tombstone)
}

/// Whether a batch belongs to one of the `aborted` transactions.
fn is_aborted(info: &BatchInfo, aborted: &[AbortedTxn]) -> bool {
    info.is_transactional()
        && aborted.iter().any(|a| {
            a.producer_id == info.producer_id
                && (a.first_offset..a.last_offset).contains(&info.base_offset.0)
        })
}

/// The records section of a batch, decompressed when it is compressed.
fn records_section<'a>(batch: &'a [u8], info: &BatchInfo) -> Result<Cow<'a, [u8]>, String> {
    let section = &batch[BATCH_HEADER_BYTES..info.size_bytes];
    fn via<D: Decompressor<Bytes>>(section: &[u8]) -> Result<Cow<'static, [u8]>, String> {
        let mut data = Bytes::copy_from_slice(section);
        D::decompress(&mut data, |out| {
            Ok(out.copy_to_bytes(out.remaining()).to_vec())
        })
        .map(Cow::Owned)
        .map_err(|e| e.to_string())
    }
    use bytes::Buf;
    use kafka_protocol::compression as codec;
    match info.compression_codec() {
        // Uncompressed records are read where they lie.
        0 => Ok(Cow::Borrowed(section)),
        1 => via::<codec::Gzip>(section),
        2 => via::<codec::Snappy>(section),
        3 => via::<codec::Lz4>(section),
        4 => via::<codec::Zstd>(section),
        other => Err(format!("unknown codec {other}")),
    }
}

/// `records` compressed with `codec` (a RecordBatch attribute value).
fn compress(codec: i16, records: &[u8]) -> Result<Vec<u8>, String> {
    fn via<C: Compressor<Vec<u8>>>(records: &[u8]) -> Result<Vec<u8>, String>
    where
        C::BufMut: bytes::BufMut,
    {
        let mut out = Vec::new();
        C::compress(&mut out, |tmp| {
            bytes::BufMut::put_slice(tmp, records);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(out)
    }
    use kafka_protocol::compression as codec;
    match codec {
        0 => Ok(records.to_vec()),
        1 => via::<codec::Gzip>(records),
        2 => via::<codec::Snappy>(records),
        3 => via::<codec::Lz4>(records),
        4 => via::<codec::Zstd>(records),
        other => Err(format!("unknown codec {other}")),
    }
}
