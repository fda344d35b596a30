//! The partition log: segments in one directory, appended to, read from, made durable with group
//! commit, truncated at either end, rolled and retained.
//!
//! Concurrency model: a `Log` lives on one glommio executor (it is `!Send`); clones are handles
//! to the same log for the tasks of that executor. Two locks order the work:
//! - `append_lock` serializes appends (offset assignment, segment roll) and suffix truncation;
//! - `io_lock` serializes everything that writes the segment files: flush, fdatasync, roll,
//!   truncation, retention. Lock order: `append_lock` before `io_lock`.
//!
//! Appends copy into the active segment's write tail and return. Each chunk that fills is
//! written at once (up to `writes_in_flight_max` writes in flight, outside `io_lock`); the
//! partly filled last chunk is written when someone needs it in the file. `wait_durable` is
//! group commit: one waiter at a time runs a sync round (write + fdatasync), everybody whose data
//! that round covered is released together, and appends arriving meanwhile share the next round.
//!
//! Invariants:
//! - `log_start <= durable_end <= next_offset`… except that `durable_end` is only meaningful
//!   at or above `log_start`; it never passes `next_offset`;
//! - every segment but the last is sealed: synced, trimmed to its data, with an index file;
//! - no state borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use glommio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::batch::{
    batch_offsets, first_record_at_or_after, peek_batch_size, stamped_prefix, validate_batch,
    validate_batches, validate_copied_batches, BatchError, BatchInfo, BATCH_HEADER_BYTES,
};
use crate::budget::WriteBudget;
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::format::{self, IndexFile};
use crate::io::{self, align_down, align_up};
use crate::rewrite::{
    finish_interrupted_swaps, BatchFate, IoBudget, RewriteOutcome, SegmentWriter,
};
use crate::segment::{scan_segment, Continuity, OverwriteState, ScanStop, Segment, SegmentIndex};
use crate::sync_group::SyncGroup;
use crate::tail::{PlannedWrite, WriteTail};
use crate::types::{now_ms, LeaderEpoch, Offset, TimestampMs};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub batch_count: usize,
}

/// Whole batches read from the log, back to back, exactly as stored.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    pub bytes: Bytes,
    /// Base offset of the first batch (which may be below the offset asked for: Kafka serves the
    /// whole batch containing it, and clients skip the records before).
    pub first_offset: Option<Offset>,
    /// The offset after the last batch returned: where the next read continues.
    pub next_offset: Offset,
}

/// What `enforce_retention` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start: Offset,
}

/// A sealed segment as compaction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: Offset,
    /// The end of the offsets it covers: the next segment's base offset.
    pub next_offset: Offset,
    pub size_bytes: u64,
    /// Largest record timestamp in it (`TimestampMs::MIN` when empty).
    pub max_timestamp: TimestampMs,
    /// When its file was last written (kept across compaction): Kafka's measure of a
    /// segment's age for tombstone retention.
    pub modified_ms: TimestampMs,
}

struct State {
    /// Ascending by base offset; the last is the active segment.
    segments: Vec<Segment>,
    log_start: Offset,
    next_offset: Offset,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }
    /// Index of the segment holding `offset`.
    fn segment_for(&self, offset: Offset) -> usize {
        self.segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1)
    }
}

struct Inner {
    dir: PathBuf,
    /// Replaced whole by `update_config` (topic config changes); never borrowed across an
    /// await.
    config: RefCell<LogConfig>,
    state: RefCell<State>,
    append_lock: Semaphore,
    io_lock: Semaphore,
    durable_end: Cell<Offset>,
    sync_in_flight: Cell<bool>,
    durable_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    failure: RefCell<Option<String>>,
    closed: Cell<bool>,
    /// Bumped by every suffix truncation, so a read that raced one retries.
    generation: Cell<u64>,
    /// How far compaction has cleaned the log (its checkpoint; the log start when never).
    cleaned_to: Cell<Offset>,
    /// Bytes of the active segment its last checkpointed index covers (see `format`).
    checkpointed_bytes: Cell<u64>,
    /// fdatasync rounds run by group commit since open (a metric, and how tests see batching).
    sync_rounds: Cell<u64>,
    /// Writes to the active segment in flight.
    writes_in_flight: Cell<usize>,
    /// Bytes appended since an append last yielded to the reactor.
    appended_since_yield: Cell<usize>,
    /// Tasks waiting for a write to complete (back-pressure, write-out).
    write_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Held by a zeroing step, and by whatever cuts the active segment's file (roll,
    /// truncation, close) so that no zero write lands after the cut. Lock order: `append_lock`,
    /// `io_lock`, then `zero_lock`.
    zero_lock: Semaphore,
    /// Data writes waiting for the zeroing step they would overlap.
    zero_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Completed writes that changed filesystem metadata (not overwrites of safe blocks) since
    /// the last fdatasync of this log's file: while nonzero, its durability needs an fdatasync
    /// of its own file; at zero, any flush of the device after the write completed will do.
    metadata_writes: Cell<u64>,
    /// The per-shard group whose rounds make this log durable (`None`: rounds of its own).
    sync_group: RefCell<Option<SyncGroup>>,
    /// This log waits in its group's queue for the next round.
    queued_in_group: Cell<bool>,
    /// The log end the group round in flight is making durable for this log, if it is in one.
    in_round_to: Cell<Option<Offset>>,
    /// The device holding the log's directory: one shared flush covers one device.
    device: u64,
    /// Data writes completed so far, and how many of the first of them a durability round has
    /// made durable: equal when every completed write is durable (what an `O_DSYNC` lone
    /// write needs, since on a device with FUA it makes only itself durable).
    completed_writes: Cell<u64>,
    durable_writes: Cell<u64>,
    /// When the last append was buffered (an idle log parks its write tail).
    last_append: Cell<std::time::Instant>,
    /// The shard's write-buffer budget, and what this log's tail is charged to it.
    write_budget: RefCell<Option<WriteBudget>>,
    charged: Cell<usize>,
    /// Set while a data write the disk refused for lack of space waits to be written again (its
    /// data stays in the write tail): appends are refused meanwhile. The message of the refusal.
    refused_write: RefCell<Option<String>>,
    /// Bumped by every refused data write: a durability waiter that sees it move fails.
    refused_writes: Cell<u64>,
    /// A background task is retrying the refused write.
    retrying_refused: Cell<bool>,
    /// Set while the disk refuses to reserve space for appends (fallocate failed): appends are
    /// refused until a background probe reserves it. The message of the refusal.
    refused_reservation: RefCell<Option<String>>,
    /// A background task is probing for the refused reservation.
    probing_reservation: Cell<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(budget) = self.write_budget.get_mut() {
            budget.recharge(self.charged.get(), 0);
        }
    }
}

/// The first reservation of a segment: later ones double it up to `preallocate_bytes`. As
/// small as the first zeroing step: at 1 MiB, 10,000 partitions holding one record each held
/// 10 GB of disk.
const PREALLOCATE_FIRST_BYTES: u64 = ZERO_STEP_FIRST;

/// The first zeroing step of a segment; later ones double up to [`ZERO_STEP_MAX`].
const ZERO_STEP_FIRST: u64 = 64 * 1024;
/// The longest zeroing step: how far a fast writer's zeroing runs ahead, at most.
const ZERO_STEP_MAX: u64 = 8 << 20;
/// Largest zero buffer a zeroing step writes at once.
const ZERO_WRITE_BYTES: usize = 1 << 20;

thread_local! {
    /// Zero-filled DMA buffers by size, shared by every zeroing step of this shard's logs (they
    /// are only ever read). One buffer per step made 10,000 new partitions hold 640 MB of zeros
    /// at once.
    static ZERO_BUFFERS: RefCell<std::collections::HashMap<usize, Rc<glommio::io::DmaBuffer>>> =
        RefCell::new(std::collections::HashMap::new());
}

/// A zero-filled buffer of `len` bytes for direct writes to `file`. Power-of-two sizes (every
/// step but a segment's last) are kept for reuse; others are made for the call.
fn shared_zeros(file: &glommio::io::DmaFile, len: usize) -> Rc<glommio::io::DmaBuffer> {
    let make = || {
        let mut buffer = file.alloc_dma_buffer(len);
        buffer.as_bytes_mut().fill(0);
        Rc::new(buffer)
    };
    if !len.is_power_of_two() {
        return make();
    }
    ZERO_BUFFERS.with(|buffers| buffers.borrow_mut().entry(len).or_insert_with(make).clone())
}

/// Bytes of batches a rewrite handles between offers to yield the core.
const YIELD_EVERY_BYTES: usize = 64 * 1024;

/// Group-commit rounds at least this long are logged (warn), with their write and fdatasync
/// parts: the disk, not the broker, is then what acks=all producers wait for.
const SLOW_SYNC_ROUND: std::time::Duration = std::time::Duration::from_millis(100);

/// One log's part in a group durability round (see [`SyncGroup`]): its io lock is held, and its
/// file holds everything up to `target`; an fdatasync (its own, or a shared flush of the device)
/// makes it durable.
pub(crate) struct RoundPart<'a> {
    pub log: &'a Log,
    _io: glommio::sync::Permit<'a>,
    pub file: Rc<glommio::io::DmaFile>,
    pub target: Offset,
    pub written_end: u64,
    /// Metadata-changing writes among those the round covers: nonzero means the log's own file
    /// must be fdatasync'ed.
    pub metadata_writes: u64,
    /// The round's only write went through the `O_DSYNC` file and covered everything: the
    /// part is durable without any fdatasync.
    pub durable_by_write: bool,
    /// The log's completed data writes when its write-out ended: the round's sync covers all
    /// of them (they completed before it began).
    writes_covered: u64,
}

impl RoundPart<'_> {
    /// Completes the log's part after its own file was fdatasync'ed.
    pub(crate) fn synced_own_file(&self) {
        self.log
            .note_file_synced(&self.file, self.written_end, self.metadata_writes);
        self.made_durable();
    }

    /// Completes the log's part once its writes are durable (a flush of the device after they
    /// completed, or its own `O_DSYNC` write).
    pub(crate) fn made_durable(&self) {
        self.log.mark_durable(self.target);
        let durable = &self.log.inner.durable_writes;
        durable.set(durable.get().max(self.writes_covered));
    }

    /// Ends the log's part; the io lock is released. Runs the active-index checkpoint when due.
    pub(crate) async fn finish(self) {
        self.log.inner.in_round_to.set(None);
        if self.log.durable_end_offset() >= self.target {
            self.log.checkpoint_active_index(Some(self.target)).await;
        }
    }
}

/// A partition log. See the module docs for the concurrency model.
#[derive(Clone)]
pub struct Log {
    inner: Rc<Inner>,
}

/// Resets `sync_in_flight` and wakes the durability waiters when a sync round ends, however it ends.
struct SyncRoundGuard<'a>(&'a Inner);

impl Drop for SyncRoundGuard<'_> {
    fn drop(&mut self) {
        self.0.sync_in_flight.set(false);
        for waiter in self.0.durable_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl Log {
    /// Opens the log in `dir`, creating it if needed, and recovers it: stray temp files are
    /// removed, sealed segments' indexes loaded (or rebuilt), and the active segment scanned and
    /// truncated at the first batch that is torn, corrupt or out of sequence.
    pub async fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(dir.display(), e))?;
        // glommio's Directory::open fails with EBADF on relative paths: work with absolute ones.
        let dir = std::fs::canonicalize(&dir).map_err(|e| StorageError::io(dir.display(), e))?;
        io::prime_iopoll_probe(&dir).await?;
        finish_interrupted_swaps(&dir).await?;

        let mut bases = Vec::new();
        let mut indexes = Vec::new();
        let mut active_indexes = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| StorageError::io(dir.display(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(dir.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(format::TEMP_SUFFIX) {
                info!(file = %name, "removing stray temp file");
                io::remove_file_if_exists(&entry.path())?;
            } else if let Some(base) = format::parse_segment_file_name(&name) {
                bases.push(base);
            } else if name.ends_with(format::INDEX_SUFFIX) {
                indexes.push(name);
            } else if name.ends_with(format::ACTIVE_INDEX_SUFFIX) {
                active_indexes.push(entry.path());
            }
        }
        bases.sort();
        for name in indexes {
            let has_segment = bases.iter().any(|b| format::index_file_name(*b) == name);
            if !has_segment {
                info!(file = %name, "removing index without a segment");
                io::remove_file_if_exists(&dir.join(name))?;
            }
        }

        let checkpoint = read_log_start(&dir);
        if bases.is_empty() {
            bases.push(checkpoint.unwrap_or(Offset::ZERO));
        }

        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let batch_max = config.batch_bytes_max as usize;
        let mut dropped_from: Option<usize> = None;
        for (i, base) in bases.iter().copied().enumerate() {
            let is_last = i + 1 == bases.len();
            let path = dir.join(format::segment_file_name(base));
            let file = io::open_segment(&path, true).await?;
            let file_len = file
                .file_size()
                .await
                .map_err(|e| StorageError::io(path.display(), e))?;
            if let Some(prev) = segments.last_mut() {
                // A segment may start past the previous one's last batch (compaction removed
                // the batches at its end: the gap is the end of its range), never below it.
                if base >= prev.index.next_offset {
                    prev.index.extend_to(base);
                } else {
                    warn!(segment = %base, expected = %prev.index.next_offset,
                        "segment overlaps the one before; dropping it and all after it");
                    file.close()
                        .await
                        .map_err(|e| StorageError::io(path.display(), e))?;
                    dropped_from = Some(i);
                    break;
                }
            }
            let index_path = dir.join(format::index_file_name(base));
            let loaded = if is_last {
                None
            } else {
                load_index(&index_path, base, file_len, config.index_interval_bytes)
            };
            let index_loaded = loaded.is_some();
            let (index, stop) = match loaded {
                Some(index) => (index, ScanStop::CleanEnd),
                None => {
                    // The active segment: scan only past its checkpointed index, if any.
                    let checkpoint = is_last
                        .then(|| {
                            load_active_index(&dir, base, file_len, config.index_interval_bytes)
                        })
                        .flatten();
                    let mut index = checkpoint
                        .unwrap_or_else(|| SegmentIndex::empty(base, config.index_interval_bytes));
                    let continuity = if is_last {
                        Continuity::Contiguous
                    } else {
                        Continuity::Gaps
                    };
                    let stop = scan_segment(
                        &file, &path, file_len, &mut index, batch_max, None, continuity,
                    )
                    .await?;
                    (index, stop)
                }
            };
            let damaged = matches!(stop, ScanStop::Damaged { .. });
            if let ScanStop::Damaged { position, reason } = &stop {
                warn!(segment = %base, position, %reason, kept_bytes = index.size_bytes,
                    "log truncated at the last valid batch");
            }
            let sealed = !is_last && !damaged;
            if sealed && !index_loaded {
                // The index was missing or invalid: write the rebuilt one. A full disk (a roll
                // that could not write it is one way to get here) must not keep the log from
                // opening: the index is in memory, and rebuilt again at the next open.
                match io::write_file_atomically(
                    &dir,
                    &format::index_file_name(base),
                    &index.to_file().encode(),
                )
                .await
                {
                    Ok(()) => info!(segment = %base, "rebuilt segment index"),
                    Err(StorageError::Io { source, .. }) if is_out_of_space(&source) => {
                        warn!(segment = %base, error = %source,
                            "rebuilt segment index kept in memory only: the disk is full")
                    }
                    Err(e) => return Err(e),
                }
            }
            if !sealed {
                io::remove_file_if_exists(&index_path)?;
                if file_len > index.size_bytes {
                    // Drop whatever follows the data, so stale batches can never reappear behind
                    // new appends.
                    file.truncate(index.size_bytes)
                        .await
                        .map_err(|e| StorageError::io(path.display(), e))?;
                }
                file.fdatasync()
                    .await
                    .map_err(|e| StorageError::io(path.display(), e))?;
            }
            let tail = if sealed {
                None
            } else {
                Some(resume_tail(&file, &path, index.size_bytes, &config).await?)
            };
            let preallocated_to = if sealed { file_len } else { index.size_bytes };
            let index_size = index.size_bytes;
            segments.push(Segment {
                path,
                file: Rc::new(file),
                index,
                tail,
                first_append_ms: None,
                preallocated_to,
                overwrite: OverwriteState::after(index_size),
                dsync_twin: None,
            });
            if damaged && !is_last {
                dropped_from = Some(i + 1);
                break;
            }
        }
        if let Some(from) = dropped_from {
            for base in &bases[from..] {
                io::remove_file_if_exists(&dir.join(format::segment_file_name(*base)))?;
                io::remove_file_if_exists(&dir.join(format::index_file_name(*base)))?;
            }
            if segments.last().is_some_and(|s| s.tail.is_none()) {
                // The kept last segment was sealed: it becomes the active one again.
                let seg = segments.last_mut().expect("checked");
                io::remove_file_if_exists(&dir.join(format::index_file_name(seg.base_offset())))?;
                seg.tail =
                    Some(resume_tail(&seg.file, &seg.path, seg.index.size_bytes, &config).await?);
            }
        }
        // Active-segment checkpoints are used once: from here on the log moves past them.
        for path in &active_indexes {
            io::remove_file_if_exists(path)?;
        }
        io::sync_dir(&dir).await?;

        let first_base = segments[0].base_offset();
        let next_offset = segments
            .last()
            .expect("at least one segment")
            .index
            .next_offset;
        let log_start = checkpoint
            .unwrap_or(first_base)
            .max(first_base)
            .min(next_offset);
        let cleaned_to = read_checkpoint(&dir, format::CLEANED_TO_FILE, format::decode_cleaned_to)
            .unwrap_or(log_start)
            .clamp(log_start, next_offset);
        let device = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&dir)
                .map_err(|e| StorageError::io(dir.display(), e))?
                .dev()
        };
        info!(dir = %dir.display(), segments = segments.len(), %log_start, %next_offset, "log opened");
        Ok(Log {
            inner: Rc::new(Inner {
                dir,
                config: RefCell::new(config),
                state: RefCell::new(State {
                    segments,
                    log_start,
                    next_offset,
                }),
                append_lock: Semaphore::new(1),
                io_lock: Semaphore::new(1),
                durable_end: Cell::new(next_offset),
                sync_in_flight: Cell::new(false),
                durable_waiters: RefCell::new(Vec::new()),
                failure: RefCell::new(None),
                closed: Cell::new(false),
                generation: Cell::new(0),
                cleaned_to: Cell::new(cleaned_to),
                checkpointed_bytes: Cell::new(0),
                sync_rounds: Cell::new(0),
                writes_in_flight: Cell::new(0),
                appended_since_yield: Cell::new(0),
                last_append: Cell::new(std::time::Instant::now()),
                write_budget: RefCell::new(None),
                charged: Cell::new(0),
                refused_write: RefCell::new(None),
                refused_writes: Cell::new(0),
                retrying_refused: Cell::new(false),
                refused_reservation: RefCell::new(None),
                probing_reservation: Cell::new(false),
                write_waiters: RefCell::new(Vec::new()),
                zero_lock: Semaphore::new(1),
                zero_waiters: RefCell::new(Vec::new()),
                metadata_writes: Cell::new(0),
                sync_group: RefCell::new(None),
                queued_in_group: Cell::new(false),
                in_round_to: Cell::new(None),
                device,
                completed_writes: Cell::new(0),
                durable_writes: Cell::new(0),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The settings in force.
    pub fn config(&self) -> LogConfig {
        self.inner.config.borrow().clone()
    }

    /// Applies new settings (a topic's configs changed). They must be valid; the I/O sizes
    /// (`write_chunk_bytes`, `unwritten_bytes_max`, `writes_in_flight_max`,
    /// `preallocate_bytes`) are kept as they are, since buffers in use were sized by them.
    /// Limits apply from the next append, roll or retention pass.
    pub fn update_config(&self, new: LogConfig) -> Result<()> {
        new.validate()?;
        let mut config = self.inner.config.borrow_mut();
        *config = LogConfig {
            write_chunk_bytes: config.write_chunk_bytes,
            unwritten_bytes_max: config.unwritten_bytes_max,
            writes_in_flight_max: config.writes_in_flight_max,
            preallocate_bytes: config.preallocate_bytes,
            ..new
        };
        Ok(())
    }

    /// The first offset that can be read.
    pub fn log_start_offset(&self) -> Offset {
        self.inner.state.borrow().log_start
    }

    /// The offset the next appended record gets (Kafka's log end offset).
    pub fn log_end_offset(&self) -> Offset {
        self.inner.state.borrow().next_offset
    }

    /// The durable watermark: every offset below it has been fdatasync'ed.
    pub fn durable_end_offset(&self) -> Offset {
        self.inner.durable_end.get()
    }

    /// Group-commit fdatasync rounds run since the log was opened.
    pub fn sync_rounds(&self) -> u64 {
        self.inner.sync_rounds.get()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<Offset> {
        self.inner
            .state
            .borrow()
            .segments
            .iter()
            .map(Segment::base_offset)
            .collect()
    }

    /// Total bytes of batch data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .state
            .borrow()
            .segments
            .iter()
            .map(|s| s.index.size_bytes)
            .sum()
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(why) = self.inner.failure.borrow().as_ref() {
            return Err(StorageError::Poisoned(why.clone()));
        }
        if self.inner.closed.get() {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Whether an append would be taken now: the log is neither failed nor closed, and no
    /// write refused for lack of space waits to be written again. (An append can still fail
    /// after this says yes: its space reservation may be refused.)
    pub fn check_appendable(&self) -> Result<()> {
        self.check_usable()?;
        self.check_room()
    }

    /// Refuses new appends while a write the disk refused for lack of space waits to be
    /// written again, or while the disk refuses to reserve space for them.
    fn check_room(&self) -> Result<()> {
        if let Some(why) = self.inner.refused_write.borrow().as_ref() {
            return Err(StorageError::NoSpace(why.clone()));
        }
        match self.inner.refused_reservation.borrow().as_ref() {
            Some(why) => Err(StorageError::NoSpace(why.clone())),
            None => Ok(()),
        }
    }

    /// Records that the disk refused to reserve `bytes` of space for an append, and returns
    /// the append's error. Appends stay refused (by [`Log::check_room`]) until a background
    /// probe reserves the space: the refusal is sticky, not per append, because an idempotent
    /// producer's next in-flight batch must be refused the same way as the one before it
    /// ("not persisted"), not checked against a sequence the refused batch never advanced
    /// (OUT_OF_ORDER_SEQUENCE_NUMBER makes librdkafka renumber its unacknowledged batches,
    /// possibly persisted ones included, and store them twice). Nothing on disk is unknown,
    /// so the log is not poisoned.
    fn refuse_reservation(&self, bytes: usize, err: StorageError) -> StorageError {
        let why = err.to_string();
        if self
            .inner
            .refused_reservation
            .replace(Some(why.clone()))
            .is_none()
        {
            warn!(dir = %self.inner.dir.display(), error = %why,
                "the disk refused to reserve space: appends to this log are refused until a reservation goes through");
        }
        self.spawn_reservation_probe(bytes);
        StorageError::NoSpace(why)
    }

    /// Tries the refused reservation again in the background until it goes through, so
    /// appends resume by themselves once space comes back.
    fn spawn_reservation_probe(&self, bytes: usize) {
        self.retry_in_background(
            |inner| &inner.probing_reservation,
            move |log| async move {
                let Ok(_append) = log.lock_appends().await else {
                    return true;
                };
                if log.try_reserve(bytes).await.is_err() {
                    return false;
                }
                log.inner.refused_reservation.take();
                info!(dir = %log.inner.dir.display(), "the disk reserved space again: appends are taken again");
                true
            },
        );
    }

    /// Runs `attempt` in the background, first after 100 ms and then backing off to every
    /// 2 s, until it says it is done or the log fails or closes. `running` names the flag that
    /// marks the task, so at most one runs per flag.
    fn retry_in_background<Attempt, Done>(
        &self,
        running: fn(&Inner) -> &Cell<bool>,
        attempt: Attempt,
    ) where
        Attempt: Fn(Log) -> Done + 'static,
        Done: std::future::Future<Output = bool>,
    {
        if running(&self.inner).replace(true) {
            return;
        }
        let log = self.clone();
        glommio::spawn_local(async move {
            let mut backoff = std::time::Duration::from_millis(100);
            loop {
                glommio::timer::sleep(backoff).await;
                if log.check_usable().is_err() || attempt(log.clone()).await {
                    break;
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
            running(&log.inner).set(false);
        })
        .detach();
    }

    /// Records that the disk refused the write of the chunk at `chunk_pos` for lack of space:
    /// the chunk stays in the tail to be written again (by the next write-out, or the retry
    /// task started here), and appends are refused until a write goes through. Nothing on disk
    /// is unknown (a refused or short direct write is simply written again whole), so the log
    /// is not poisoned.
    fn refuse_write(&self, chunk_pos: u64, path: &Path, err: std::io::Error) -> StorageError {
        {
            let mut state = self.inner.state.borrow_mut();
            if let Some(tail) = state.active_mut().tail.as_mut() {
                tail.abandon(chunk_pos);
            }
        }
        let why = StorageError::io(path.display(), err).to_string();
        let first = self
            .inner
            .refused_write
            .replace(Some(why.clone()))
            .is_none();
        self.inner
            .refused_writes
            .set(self.inner.refused_writes.get() + 1);
        if first {
            warn!(dir = %self.inner.dir.display(), error = %why,
                "the disk refused a write for lack of space: the records stay buffered and are written again, appends to this log are refused until then");
        }
        self.spawn_refused_write_retry();
        StorageError::NoSpace(why)
    }

    /// Retries the refused writes in the background until one goes through, so a log nobody
    /// appends to or waits on still writes its buffered records once space comes back.
    fn spawn_refused_write_retry(&self) {
        self.retry_in_background(
            |inner| &inner.retrying_refused,
            |log| async move {
                if log.inner.refused_write.borrow().is_none() {
                    return true;
                }
                let Ok(_io) = log.lock_io().await else {
                    return true;
                };
                let _ = log.write_out(false).await;
                false
            },
        );
    }

    /// A write went through: appends are taken again.
    fn note_write_accepted(&self) {
        if self.inner.refused_write.take().is_some() {
            info!(dir = %self.inner.dir.display(), "a write the disk had refused went through: appends are taken again");
        }
    }

    /// Records an I/O failure that leaves the files in an unknown state, and returns its error.
    fn fail(&self, err: StorageError) -> StorageError {
        let mut failure = self.inner.failure.borrow_mut();
        if failure.is_none() {
            tracing::error!(dir = %self.inner.dir.display(), error = %err, "log failed");
            *failure = Some(err.to_string());
        }
        err
    }

    /// Appends whole RecordBatch v2 batches, assigning offsets from the log end and stamping
    /// `epoch` as their partitionLeaderEpoch. Every batch is validated first; if any is bad,
    /// nothing is appended. Returns once the data is buffered (see [`Log::wait_durable`]).
    pub async fn append(&self, batches: &[u8], epoch: LeaderEpoch) -> Result<AppendInfo> {
        self.append_checked(batches, epoch, validate_batches).await
    }

    /// [`append`](Self::append) of batches copied from another replica of this log, which may
    /// have the shape compaction leaves (fewer records than offsets, down to none): each still
    /// takes its whole offset range. (Cluster mode: a follower appends what the leader's log
    /// holds, compacted or not, as Kafka's follower does.)
    pub async fn append_copied(&self, batches: &[u8], epoch: LeaderEpoch) -> Result<AppendInfo> {
        self.append_checked(batches, epoch, validate_copied_batches)
            .await
    }

    async fn append_checked(
        &self,
        batches: &[u8],
        epoch: LeaderEpoch,
        validate: fn(&[u8], usize) -> std::result::Result<Vec<BatchInfo>, BatchError>,
    ) -> Result<AppendInfo> {
        self.check_usable()?;
        if batches.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        let batch_max = self.inner.config.borrow().batch_bytes_max as usize;
        let infos = validate(batches, batch_max).map_err(|source| {
            // Find where the bad batch starts, for the error message.
            let mut position = 0;
            while let Ok(info) = validate_batch(&batches[position..], batch_max) {
                position += info.size_bytes;
            }
            StorageError::InvalidBatch { position, source }
        })?;
        let _append = self.lock_appends().await?;
        self.check_usable()?;
        self.check_room()?;
        self.roll_if_aged().await?;

        let mut pos = 0usize;
        let mut first = None;
        let mut last = Offset::ZERO;
        for info in &infos {
            let needs_roll = {
                let state = self.inner.state.borrow();
                let active = state.active();
                !active.index.is_empty()
                    && active.index.size_bytes + info.size_bytes as u64
                        > self.inner.config.borrow().segment_bytes_max
            };
            if needs_roll {
                self.roll_locked().await?;
            }
            self.reserve_for(info.size_bytes).await?;
            let bytes = &batches[pos..pos + info.size_bytes];
            pos += info.size_bytes;
            let mut state = self.inner.state.borrow_mut();
            let base = state.next_offset;
            let stamped = BatchInfo {
                base_offset: base,
                leader_epoch: epoch,
                ..*info
            };
            let active = state.active_mut();
            let tail = active.tail.as_mut().expect("the active segment has a tail");
            let position = tail.end_pos();
            tail.push(&active.file, &stamped_prefix(bytes, base, epoch));
            tail.push(&active.file, &bytes[16..]);
            active.index.record(position, &stamped);
            active.first_append_ms.get_or_insert_with(now_ms);
            self.inner.last_append.set(std::time::Instant::now());
            state.next_offset = stamped.next_offset();
            first.get_or_insert(base);
            last = stamped.last_offset();
        }
        self.recharge_budget();
        self.write_behind(batches.len()).await?;
        Ok(AppendInfo {
            base_offset: first.expect("at least one batch"),
            last_offset: last,
            batch_count: infos.len(),
        })
    }

    /// The io lock, or `Closed` if the log was closed while this waited for it (a closed log
    /// has no segments: whatever the caller checked before waiting no longer holds).
    async fn lock_io(&self) -> Result<glommio::sync::Permit<'_>> {
        let permit = self
            .inner
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        if self.inner.closed.get() {
            return Err(StorageError::Closed);
        }
        Ok(permit)
    }

    async fn lock_zeroing(&self) -> Result<glommio::sync::Permit<'_>> {
        self.inner
            .zero_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)
    }

    async fn lock_appends(&self) -> Result<glommio::sync::Permit<'_>> {
        self.inner
            .append_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Unwritten bytes in the active segment's write tail.
    fn unwritten_bytes(&self) -> u64 {
        let state = self.inner.state.borrow();
        state
            .active()
            .tail
            .as_ref()
            .map_or(0, WriteTail::unwritten_bytes)
    }

    /// After an append: start writing the chunks it filled, and if more than
    /// `unwritten_bytes_max` is waiting, wait for the writes to catch up (back-pressure keeps
    /// buffered memory bounded).
    async fn write_behind(&self, appended: usize) -> Result<()> {
        self.maybe_zero_ahead();
        let started = self.start_sealed_writes(self.inner.config.borrow().writes_in_flight_max);
        let since_yield = self.inner.appended_since_yield.get() + appended;
        let writing = self.inner.writes_in_flight.get() > 0;
        if started > 0 || (writing && since_yield >= self.inner.config.borrow().write_chunk_bytes) {
            // Let the reactor submit new writes and reap finished ones, about once per chunk
            // appended: a producer that never awaits real I/O would otherwise leave the device
            // idle once its writes complete, until back-pressure stops the producer.
            self.inner.appended_since_yield.set(0);
            glommio::executor().yield_task_queue_now().await;
        } else {
            self.inner.appended_since_yield.set(since_yield);
        }
        loop {
            if self.inner.refused_write.borrow().is_some() {
                // The records are in; their writes wait for space (see `refuse_write`).
                break;
            }
            let backlog =
                self.unwritten_bytes() >= self.inner.config.borrow().unwritten_bytes_max as u64;
            let budget = self.inner.write_budget.borrow().clone();
            let over_budget = budget.as_ref().is_some_and(WriteBudget::is_over)
                && self.inner.writes_in_flight.get() > 0;
            if !backlog && !over_budget {
                break;
            }
            if let (Some(budget), false) = (&budget, backlog) {
                // The shard holds too much: wait for this log's writes, which free its chunks.
                budget.count_wait();
            }
            self.check_usable()?;
            self.start_sealed_writes(self.inner.config.borrow().writes_in_flight_max);
            if self.inner.writes_in_flight.get() == 0 {
                // Only the filling chunk is unwritten; it is smaller than the limit allows.
                break;
            }
            let (tx, rx) = oneshot::channel();
            self.inner.write_waiters.borrow_mut().push(tx);
            let _ = rx.await;
        }
        Ok(())
    }

    /// [`Log::append`], then waits until the appended batches are durable.
    pub async fn append_durable(&self, batches: &[u8], epoch: LeaderEpoch) -> Result<AppendInfo> {
        let appended = self.append(batches, epoch).await?;
        self.wait_durable(appended.last_offset).await?;
        Ok(appended)
    }

    /// Waits until `offset` is durable (below the durable watermark), running or joining a group
    /// commit round as needed.
    pub async fn wait_durable(&self, offset: Offset) -> Result<()> {
        let refused_before = self.inner.refused_writes.get();
        loop {
            self.check_usable()?;
            if self.inner.durable_end.get() > offset {
                return Ok(());
            }
            if self.inner.refused_writes.get() != refused_before {
                // A write since this wait began was refused for lack of space: the records
                // may be among those it carried. They stay buffered; the caller hears of it.
                return Err(self.check_room().err().unwrap_or_else(|| {
                    StorageError::NoSpace("a write was refused while waiting".into())
                }));
            }
            let log_end = self.log_end_offset();
            if offset >= log_end {
                return Err(StorageError::OffsetOutOfRange {
                    requested: offset,
                    log_start: self.log_start_offset(),
                    log_end,
                });
            }
            let group = self.inner.sync_group.borrow().clone();
            if let Some(group) = group {
                let covered = self.inner.in_round_to.get().is_some_and(|to| to > offset);
                if !covered {
                    group.enqueue(self);
                }
                group.wait_for_round().await;
                continue;
            }
            if self.inner.sync_in_flight.get() {
                let (tx, rx) = oneshot::channel();
                self.inner.durable_waiters.borrow_mut().push(tx);
                let _ = rx.await;
            } else {
                self.sync_round().await?;
            }
        }
    }

    /// Writes and fdatasyncs everything appended so far; returns the new durable watermark.
    pub async fn sync(&self) -> Result<Offset> {
        let end = self.log_end_offset();
        if end > Offset::ZERO && self.durable_end_offset() < end {
            self.wait_durable(end.plus(-1)).await?;
        }
        Ok(self.durable_end_offset())
    }

    async fn sync_round(&self) -> Result<()> {
        self.inner.sync_in_flight.set(true);
        let _round = SyncRoundGuard(&self.inner);
        let _io = self.lock_io().await?;
        self.check_usable()?;
        let target = self.log_end_offset();
        let started = std::time::Instant::now();
        let file = self.write_out(false).await?.0;
        let written = started.elapsed();
        let (written_end, metadata_writes) = (self.written_pos(), self.inner.metadata_writes.get());
        io::fdatasync(&file).await.map_err(|e| self.fail_sync(e))?;
        self.note_file_synced(&file, written_end, metadata_writes);
        let round = started.elapsed();
        if round >= SLOW_SYNC_ROUND {
            // Every acks=all answer waiting on this round waited this long: worth a line.
            tracing::warn!(
                dir = %self.inner.dir.display(),
                write_ms = written.as_millis() as u64,
                fdatasync_ms = (round - written).as_millis() as u64,
                "slow group commit"
            );
        }
        self.mark_durable(target);
        self.checkpoint_active_index(Some(target)).await;
        Ok(())
    }

    /// The active segment's file holds every byte below this position.
    fn written_pos(&self) -> u64 {
        let state = self.inner.state.borrow();
        let active = state.active();
        active
            .tail
            .as_ref()
            .map_or(active.index.size_bytes, WriteTail::written_pos)
    }

    /// Records an fdatasync of the active segment's `file` that began once the file held every
    /// byte below `written_end`, after `metadata_writes` metadata-changing writes: those writes
    /// and the blocks below `written_end` are durable now.
    fn note_file_synced(
        &self,
        file: &glommio::io::DmaFile,
        written_end: u64,
        metadata_writes: u64,
    ) {
        let left = self
            .inner
            .metadata_writes
            .get()
            .saturating_sub(metadata_writes);
        self.inner.metadata_writes.set(left);
        let mut state = self.inner.state.borrow_mut();
        let active = state.active_mut();
        if std::ptr::eq(&*active.file, file) {
            // Partial writes zero-pad their last block: it is written, and allocated, too.
            active.overwrite.synced_to(align_up(written_end));
        }
    }

    /// Puts this log in `group`: from now on its durability rounds are the group's (one round
    /// for every log of a shard, see [`SyncGroup`]).
    pub fn join_sync_group(&self, group: &SyncGroup) {
        *self.inner.sync_group.borrow_mut() = Some(group.clone());
    }

    /// First half of a group round for this log: takes the io lock and writes out everything
    /// appended so far. `None` when there is nothing to make durable.
    pub(crate) async fn begin_group_round(&self, alone: bool) -> Result<Option<RoundPart<'_>>> {
        self.check_usable()?;
        let io = self.lock_io().await?;
        self.check_usable()?;
        let target = self.log_end_offset();
        if self.inner.durable_end.get() >= target {
            return Ok(None);
        }
        self.inner.in_round_to.set(Some(target));
        let (file, durable_by_write) = match self.write_out(alone).await {
            Ok(written) => written,
            Err(e) => {
                self.inner.in_round_to.set(None);
                return Err(e);
            }
        };
        Ok(Some(RoundPart {
            log: self,
            _io: io,
            file,
            target,
            written_end: self.written_pos(),
            metadata_writes: self.inner.metadata_writes.get(),
            durable_by_write,
            writes_covered: self.inner.completed_writes.get(),
        }))
    }

    /// The active segment's `O_DSYNC` twin, opened on first use (`None` if it cannot be
    /// opened: the round then syncs as usual). Caller holds `io_lock`, so the active segment
    /// cannot roll meanwhile.
    async fn dsync_twin(&self) -> Option<Rc<glommio::io::DmaFile>> {
        let path = {
            let state = self.inner.state.borrow();
            let active = state.active();
            if let Some(twin) = &active.dsync_twin {
                return Some(twin.clone());
            }
            active.path.clone()
        };
        let twin = glommio::io::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DSYNC.bits() as i32)
            .dma_open(&path)
            .await
            .ok()
            .map(Rc::new)?;
        let mut state = self.inner.state.borrow_mut();
        Some(state.active_mut().dsync_twin.insert(twin).clone())
    }

    /// Frees the write tail's buffers if nothing was appended for `idle_for` and everything
    /// appended is written: an idle partition then holds at most its last partial 4 KiB page
    /// in memory. Returns whether it did. The next append starts a small chunk again.
    pub fn park_if_idle(&self, idle_for: std::time::Duration) -> bool {
        if self.check_usable().is_err()
            || self.inner.writes_in_flight.get() > 0
            || self.inner.last_append.get().elapsed() < idle_for
        {
            return false;
        }
        let parked = {
            let mut state = self.inner.state.borrow_mut();
            state
                .active_mut()
                .tail
                .as_mut()
                .is_some_and(WriteTail::park)
        };
        if parked {
            self.recharge_budget();
        }
        parked
    }

    /// Charges this log's write tail to `budget`, the shard's write-buffer budget: while the
    /// shard is over it, appends wait for this log's writes (see [`WriteBudget`]).
    pub fn join_write_budget(&self, budget: &WriteBudget) {
        *self.inner.write_budget.borrow_mut() = Some(budget.clone());
        self.recharge_budget();
    }

    /// Brings this log's charge to its budget up to date with its tail's memory.
    fn recharge_budget(&self) {
        let budget = self.inner.write_budget.borrow();
        let Some(budget) = budget.as_ref() else {
            return;
        };
        let now = self.write_buffer_bytes();
        budget.recharge(self.inner.charged.replace(now), now);
    }

    /// Bytes of DMA memory the active segment's write tail holds (0 once closed).
    pub fn write_buffer_bytes(&self) -> usize {
        let state = self.inner.state.borrow();
        state
            .segments
            .last()
            .and_then(|s| s.tail.as_ref())
            .map_or(0, WriteTail::memory_bytes)
    }

    /// The device holding this log (one shared flush per device and round).
    pub(crate) fn device(&self) -> u64 {
        self.inner.device
    }

    pub(crate) fn group_queue_flag(&self) -> &Cell<bool> {
        &self.inner.queued_in_group
    }

    /// Records that the log's data up to a round's target is durable.
    pub(crate) fn mark_durable(&self, target: Offset) {
        let durable = self.inner.durable_end.get().max(target);
        self.inner.durable_end.set(durable);
        self.inner.sync_rounds.set(self.inner.sync_rounds.get() + 1);
    }

    /// Records an fdatasync failure of this log's file: its page state is unknown.
    pub(crate) fn fail_sync(&self, err: std::io::Error) -> StorageError {
        self.fail(StorageError::io(self.inner.dir.display(), err))
    }

    /// Writes the active segment's index as far as it is durable (up to `durable_below`, or all
    /// of it at close), once `active_index_checkpoint_bytes` more are covered than last time (or
    /// at close): a restart then scans only what follows. Best effort: without it a restart
    /// scans more. Caller holds `io_lock` (truncation and roll, which invalidate it, cannot
    /// run meanwhile).
    async fn checkpoint_active_index(&self, durable_below: Option<Offset>) {
        let (name, file) = {
            let state = self.inner.state.borrow();
            let active = state.active();
            let index = match durable_below {
                Some(target) => {
                    let every = self.inner.config.borrow().active_index_checkpoint_bytes;
                    if active.index.size_bytes < self.inner.checkpointed_bytes.get() + every {
                        return;
                    }
                    active.index.prefix_before_entry_for(target)
                }
                None => active.index.clone(),
            };
            if index.size_bytes == 0 || index.size_bytes <= self.inner.checkpointed_bytes.get() {
                return;
            }
            self.inner.checkpointed_bytes.set(index.size_bytes);
            (
                format::active_index_file_name(active.base_offset()),
                index.to_file(),
            )
        };
        if let Err(e) = io::write_file_atomically(&self.inner.dir, &name, &file.encode()).await {
            warn!(dir = %self.inner.dir.display(), error = %e, "cannot checkpoint the active segment's index; a restart scans it");
        }
    }

    /// Writes every byte buffered in the active segment's tail so far to its file (no
    /// fdatasync): starts all pending streamed writes, writes the filling chunk's partial
    /// bytes, and waits until the file holds everything up to where the tail ended on entry.
    /// Caller holds `io_lock`. Returns the active segment's file.
    async fn write_out(&self, alone: bool) -> Result<(Rc<glommio::io::DmaFile>, bool)> {
        let refused_before = self.inner.refused_writes.get();
        let (file, path, target, partial) = {
            let mut state = self.inner.state.borrow_mut();
            let active = state.active_mut();
            let file = active.file.clone();
            let tail = active.tail.as_mut().expect("the active segment has a tail");
            let target = tail.end_pos();
            let partial = tail.partial_write(&file);
            let reserve = partial.as_ref().and_then(|w| {
                reserve_space(active, w.pos + w.len() as u64, &self.inner.config.borrow())
            });
            (
                file,
                active.path.clone(),
                target,
                partial.map(|w| (w, reserve)),
            )
        };
        let in_flight_before = self.inner.writes_in_flight.get();
        let sealed = self.start_sealed_writes(usize::MAX);
        let mut durable_by_write = false;
        let mut completed_before = 0;
        if let Some((write, reserve)) = partial {
            // Alone in its round, with no other write in flight and every earlier write durable:
            // an O_DSYNC write is durable when it completes, so the round needs no fdatasync.
            let lone = self.inner.config.borrow().dsync_lone_writes;
            let all_durable = self.inner.completed_writes.get() == self.inner.durable_writes.get();
            let dsync = if alone && lone && all_durable && in_flight_before == 0 && sealed == 0 {
                self.dsync_twin().await
            } else {
                None
            };
            completed_before = self.inner.completed_writes.get();
            self.inner
                .writes_in_flight
                .set(self.inner.writes_in_flight.get() + 1);
            let result = self
                .perform_write(&file, dsync.as_deref(), &path, write, reserve)
                .await;
            self.inner
                .writes_in_flight
                .set(self.inner.writes_in_flight.get() - 1);
            self.wake_write_waiters();
            durable_by_write = result?;
        }
        loop {
            self.check_usable()?;
            let written = {
                let state = self.inner.state.borrow();
                state
                    .active()
                    .tail
                    .as_ref()
                    .map_or(u64::MAX, WriteTail::written_pos)
            };
            if written >= target {
                // Only if no other write started or completed meanwhile (an append sealing a
                // chunk during the write): else the round flushes as usual, covering them.
                let alone = self.inner.completed_writes.get() == completed_before + 1
                    && self.inner.writes_in_flight.get() == 0;
                return Ok((file, durable_by_write && alone));
            }
            if self.inner.refused_writes.get() != refused_before {
                return Err(self.check_room().err().unwrap_or_else(|| {
                    StorageError::NoSpace("a write was refused during the write-out".into())
                }));
            }
            // A chunk sealed while its partial write was in flight is writable now.
            self.start_sealed_writes(usize::MAX);
            let (tx, rx) = oneshot::channel();
            self.inner.write_waiters.borrow_mut().push(tx);
            let _ = rx.await;
        }
    }

    /// Starts streamed writes of sealed chunks while fewer than `limit` writes are in flight.
    /// Returns how many it started.
    fn start_sealed_writes(&self, limit: usize) -> usize {
        let mut started = 0;
        while self.inner.writes_in_flight.get() < limit {
            let next = {
                let mut state = self.inner.state.borrow_mut();
                let active = state.active_mut();
                let file = active.file.clone();
                let Some(tail) = active.tail.as_mut() else {
                    break;
                };
                let Some(write) = tail.next_sealed_write(&file) else {
                    break;
                };
                let reserve = reserve_space(
                    active,
                    write.pos + write.len() as u64,
                    &self.inner.config.borrow(),
                );
                (file, active.path.clone(), write, reserve)
            };
            let (file, path, write, reserve) = next;
            self.inner
                .writes_in_flight
                .set(self.inner.writes_in_flight.get() + 1);
            started += 1;
            let log = self.clone();
            let refused_before = self.inner.refused_writes.get();
            glommio::spawn_local(async move {
                let result = log
                    .perform_write(&file, None, &path, write, reserve)
                    .await
                    .map(|_| ());
                log.inner
                    .writes_in_flight
                    .set(log.inner.writes_in_flight.get() - 1);
                log.wake_write_waiters();
                if result.is_ok() {
                    log.start_sealed_writes(log.inner.config.borrow().writes_in_flight_max);
                }
            })
            .detach();
            // The task runs at once up to its first real wait: a write that failed before it
            // (an error the submission itself returned) has failed the log or been refused for
            // space, putting its chunk back, and taking the chunk again here would fail the
            // same way, forever, without ever yielding.
            if self.check_usable().is_err() || self.inner.refused_writes.get() != refused_before {
                break;
            }
        }
        started
    }

    /// Performs one write taken from the tail and records its outcome there. Any failure
    /// poisons the log.
    async fn perform_write(
        &self,
        file: &glommio::io::DmaFile,
        dsync: Option<&glommio::io::DmaFile>,
        path: &Path,
        write: PlannedWrite,
        reserve_to: Option<u64>,
    ) -> Result<bool> {
        let (chunk_pos, data_end, pos, len) =
            (write.chunk_pos, write.data_end, write.pos, write.len());
        let abandon = |err: StorageError| {
            let mut state = self.inner.state.borrow_mut();
            if let Some(tail) = state.active_mut().tail.as_mut() {
                tail.abandon(chunk_pos);
            }
            self.fail(err)
        };
        if let Some(to) = reserve_to {
            if let Err(e) = io::pre_allocate(file, to).await {
                if is_out_of_space(&e) {
                    return Err(self.refuse_write(chunk_pos, path, e));
                }
                return Err(abandon(StorageError::io(path.display(), e)));
            }
        }
        let end = pos + len as u64;
        // A zero write racing this one could land after it: wait for the zeroing step.
        while self.active_overwrite(file, |o| o.overlaps_zeroing(pos, end)) == Some(true) {
            let (tx, rx) = oneshot::channel();
            self.inner.zero_waiters.borrow_mut().push(tx);
            let _ = rx.await;
        }
        let overwrite = self.active_overwrite(file, |o| o.is_overwrite(pos, end)) == Some(true);
        // The O_DSYNC twin only for an overwrite into a file with no metadata to sync. Its
        // write is also the round's sync: the fdatasync fault point applies to it once the
        // data is written (as a sync that fails after the write), and a failure poisons the
        // log as a failed fdatasync does.
        let dsync = dsync.filter(|_| overwrite && self.inner.metadata_writes.get() == 0);
        let mut durable_by_write = dsync.is_some();
        let outcome = match write.submit(dsync.unwrap_or(file)).await {
            Ok(n) if n == len && dsync.is_some() => {
                crate::faults::inject(crate::faults::FaultPoint::Fdatasync).await
            }
            Ok(n) if n == len => Ok(()),
            Ok(n) => {
                // The rest goes through the plain file; the round syncs it as usual.
                durable_by_write = false;
                self.write_rest(file, pos, len, n, data_end).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                self.inner
                    .completed_writes
                    .set(self.inner.completed_writes.get() + 1);
                if !overwrite {
                    self.inner
                        .metadata_writes
                        .set(self.inner.metadata_writes.get() + 1);
                }
                let mut state = self.inner.state.borrow_mut();
                let active = state.active_mut();
                assert!(
                    std::ptr::eq(&*active.file, file),
                    "roll and truncation wait for every write, so the segment is still active"
                );
                active
                    .tail
                    .as_mut()
                    .expect("the active segment has a tail")
                    .complete(chunk_pos, data_end);
                drop(state);
                self.recharge_budget();
                self.note_write_accepted();
                Ok(durable_by_write)
            }
            Err(e) if is_out_of_space(&e) => Err(self.refuse_write(chunk_pos, path, e)),
            Err(e) => Err(abandon(StorageError::io(path.display(), e))),
        }
    }

    /// After a short direct write (`written` of the `len` bytes at `pos`), writes the rest
    /// from the tail's copy of the data: a filesystem that stopped partway says why here
    /// (ENOSPC, EFBIG, ...), or the rest goes through and the whole write is done.
    async fn write_rest(
        &self,
        file: &glommio::io::DmaFile,
        pos: u64,
        len: usize,
        written: usize,
        data_end: u64,
    ) -> std::io::Result<()> {
        let short = || {
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write at {pos}: {written} of {len} bytes"),
            )
        };
        if written == 0 || !written.is_multiple_of(io::DIRECT_IO_ALIGNMENT) {
            return Err(short());
        }
        let rest_pos = pos + written as u64;
        let rest_len = len - written;
        let mut buf = file.alloc_dma_buffer(rest_len);
        buf.as_bytes_mut().fill(0);
        let data_len = data_end.saturating_sub(rest_pos).min(rest_len as u64) as usize;
        if data_len > 0 {
            let data = {
                let state = self.inner.state.borrow();
                let tail = state.active().tail.as_ref().ok_or_else(short)?;
                if rest_pos < tail.memory_start() || rest_pos + data_len as u64 > tail.end_pos() {
                    return Err(short());
                }
                tail.copy_range(rest_pos, data_len)
            };
            buf.as_bytes_mut()[..data_len].copy_from_slice(&data);
        }
        match file.write_at(buf, rest_pos).await {
            Ok(n) if n == rest_len => Ok(()),
            Ok(_) => Err(short()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts the next zeroing step of the active segment, in the background, when its zeroed
    /// space ahead of the writer runs short (less than half a step).
    ///
    /// A step fallocates (if the reservation does not reach far enough yet), writes zeros over
    /// its range and fdatasyncs the file: its blocks are then written and their allocation
    /// durable, so data written there later is an overwrite whose fdatasync commits no journal.
    /// Data writes into a step's range wait for the step (they never race a zero write); cuts
    /// of the file wait for it through `zero_lock`.
    fn maybe_zero_ahead(&self) {
        let config = self.inner.config.borrow();
        if !config.zero_ahead || config.preallocate_bytes == 0 {
            return;
        }
        let (file, path, range) = {
            let mut state = self.inner.state.borrow_mut();
            let active = state.active_mut();
            let Some(tail) = active.tail.as_ref() else {
                return;
            };
            if tail.is_fast() {
                // A fast writer's rounds are large: the journal commit is a small part of each,
                // while zeroing would double its writes and make it wait behind the zeroing
                // (measured: -22 % of one partition's unpaced throughput).
                return;
            }
            let overwrite = &mut active.overwrite;
            if overwrite.zeroing.is_some() || overwrite.zero_syncing.is_some() {
                return;
            }
            let end = align_up(tail.end_pos());
            let frontier = if overwrite.zeroed.start <= end && end <= overwrite.zeroed.end {
                overwrite.zeroed.end
            } else {
                overwrite.safe_end.max(end)
            };
            let step = overwrite.next_step.clamp(ZERO_STEP_FIRST, ZERO_STEP_MAX);
            if frontier - end >= step / 2 {
                return;
            }
            let to = (frontier + step).min(align_up(config.segment_bytes_max));
            if to <= frontier {
                return;
            }
            overwrite.zeroing = Some(frontier..to);
            overwrite.next_step = (step * 2).min(ZERO_STEP_MAX);
            (active.file.clone(), active.path.clone(), frontier..to)
        };
        let log = self.clone();
        glommio::spawn_local(async move {
            let outcome = log.zero_step(&file, range.clone()).await;
            let mut state = log.inner.state.borrow_mut();
            let active = state.active_mut();
            if Rc::ptr_eq(&active.file, &file) {
                active.overwrite.zeroing = None;
                active.overwrite.zero_syncing = None;
                match outcome {
                    Ok(true) => active.overwrite.zeroed(range),
                    Ok(false) => {}
                    Err(e) => {
                        debug!(file = %path.display(), error = %e, "zeroing ahead failed; appends there commit the journal")
                    }
                }
            }
            drop(state);
            for waiter in log.inner.zero_waiters.borrow_mut().drain(..) {
                let _ = waiter.send(());
            }
        })
        .detach();
    }

    /// One zeroing step over `range` of the active segment's `file`. `Ok(false)` when the
    /// segment stopped being active (or the log closed) before it ran.
    async fn zero_step(
        &self,
        file: &Rc<glommio::io::DmaFile>,
        range: std::ops::Range<u64>,
    ) -> std::io::Result<bool> {
        let Ok(_zero) = self.lock_zeroing().await else {
            return Ok(false);
        };
        let still_active = |log: &Log| {
            !log.inner.closed.get() && Rc::ptr_eq(&log.inner.state.borrow().active().file, file)
        };
        if !still_active(self) {
            return Ok(false);
        }
        let reserved = self.inner.state.borrow().active().preallocated_to;
        if reserved < range.end {
            io::pre_allocate(file, range.end).await?;
            let mut state = self.inner.state.borrow_mut();
            let active = state.active_mut();
            active.preallocated_to = active.preallocated_to.max(range.end);
        }
        let len = (range.end - range.start) as usize;
        let zeros = shared_zeros(file, len.min(ZERO_WRITE_BYTES));
        let mut pos = range.start;
        while pos < range.end {
            let n = ((range.end - pos) as usize).min(zeros.len());
            let buffer = if n == zeros.len() {
                zeros.clone()
            } else {
                shared_zeros(file, n)
            };
            let written = file.write_rc_at(buffer, pos).await?;
            if written != n {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short zero write at {pos}: {written} of {n} bytes"),
                ));
            }
            pos += n as u64;
        }
        // The zero writes are done: data writes may go there now (as writes that change
        // metadata, until the fdatasync below makes the allocation durable). Waiting for the
        // fdatasync too made new partitions' first appends queue behind every other zeroing
        // step's journal commit (10,000 partitions: publish p99 > 100 ms).
        if let Some(()) = self.with_active_overwrite(file, |o| {
            o.zeroing = None;
            o.zero_syncing = Some(range.clone());
        }) {
            for waiter in self.inner.zero_waiters.borrow_mut().drain(..) {
                let _ = waiter.send(());
            }
        }
        file.fdatasync().await?;
        Ok(still_active(self))
    }

    /// Changes the active segment's overwrite state if `file` is the active segment's.
    fn with_active_overwrite<T>(
        &self,
        file: &glommio::io::DmaFile,
        f: impl FnOnce(&mut OverwriteState) -> T,
    ) -> Option<T> {
        let mut state = self.inner.state.borrow_mut();
        let active = state.active_mut();
        std::ptr::eq(&*active.file, file).then(|| f(&mut active.overwrite))
    }

    /// Applies `f` to the active segment's overwrite state if `file` is the active segment's.
    fn active_overwrite<T>(
        &self,
        file: &glommio::io::DmaFile,
        f: impl FnOnce(&OverwriteState) -> T,
    ) -> Option<T> {
        let state = self.inner.state.borrow();
        let active = state.active();
        std::ptr::eq(&*active.file, file).then(|| f(&active.overwrite))
    }

    fn wake_write_waiters(&self) {
        for waiter in self.inner.write_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Writes buffered data to the files without waiting for fdatasync.
    pub async fn flush(&self) -> Result<()> {
        self.check_usable()?;
        let _io = self.lock_io().await?;
        self.write_out(false).await.map(|_| ())
    }

    /// Seals the active segment (if it holds data) and starts a new one at the log end.
    pub async fn roll(&self) -> Result<()> {
        self.check_usable()?;
        let _append = self.lock_appends().await?;
        self.roll_locked().await
    }

    async fn roll_if_aged(&self) -> Result<()> {
        let Some(max_ms) = self.inner.config.borrow().segment_ms_max else {
            return Ok(());
        };
        let aged = {
            let state = self.inner.state.borrow();
            state
                .active()
                .first_append_ms
                .is_some_and(|t| now_ms().saturating_sub(t) >= max_ms as i64)
        };
        if aged {
            self.roll_locked().await?;
        }
        Ok(())
    }

    /// Makes sure the active segment's file has space allocated for `bytes` more (with
    /// fallocate, a `preallocate_bytes` step ahead), before an append takes offsets: a full disk
    /// then refuses that append and the appends after it until space comes back (see
    /// [`Log::refuse_reservation`]), leaving the log as it was (not poisoned), and the writes
    /// behind appends never need new space. Caller holds `append_lock`.
    async fn reserve_for(&self, bytes: usize) -> Result<()> {
        self.try_reserve(bytes)
            .await
            .map_err(|e| self.refuse_reservation(bytes, e))
    }

    /// [`Log::reserve_for`] without the sticky refusal. Caller holds `append_lock`.
    async fn try_reserve(&self, bytes: usize) -> Result<()> {
        let (file, path, to, before) = {
            let mut state = self.inner.state.borrow_mut();
            let active = state.active_mut();
            let Some(tail) = active.tail.as_ref() else {
                return Ok(());
            };
            let end = align_up(tail.end_pos() + bytes as u64);
            let before = active.preallocated_to;
            let Some(to) = reserve_space(active, end, &self.inner.config.borrow()) else {
                return Ok(());
            };
            (active.file.clone(), active.path.clone(), to, before)
        };
        if let Err(e) = io::pre_allocate(&file, to).await {
            // Not reserved after all: the next append tries again (space may come back).
            let mut state = self.inner.state.borrow_mut();
            let active = state.active_mut();
            if Rc::ptr_eq(&active.file, &file) {
                active.preallocated_to = before;
            }
            return Err(StorageError::io(path.display(), e));
        }
        Ok(())
    }

    /// Caller holds `append_lock`.
    async fn roll_locked(&self) -> Result<()> {
        let _io = self.lock_io().await?;
        if self.inner.state.borrow().active().index.is_empty() {
            return Ok(());
        }
        let file = self.write_out(false).await?.0;
        let (path, index_file, next) = {
            let state = self.inner.state.borrow();
            let active = state.active();
            (
                active.path.clone(),
                active.index.to_file(),
                state.next_offset,
            )
        };
        let io_err = |e: std::io::Error| self.fail(StorageError::io(path.display(), e));
        io::fdatasync(&file).await.map_err(io_err)?;
        // No zero write may land beyond the data once the file is trimmed.
        let _zero = self.lock_zeroing().await?;
        file.truncate(index_file.segment_bytes)
            .await
            .map_err(|e| io_err(e.into()))?;
        io::fdatasync(&file).await.map_err(io_err)?;
        self.inner.metadata_writes.set(0);
        // The file no longer reaches past its data: were the roll to stop below, appends to
        // this segment reserve their space again.
        self.inner.state.borrow_mut().active_mut().preallocated_to = index_file.segment_bytes;
        let base = index_file.base_offset;
        // A full disk may refuse the two new files below. Neither failure leaves anything
        // unknown, so neither poisons the log: a missing index is rebuilt at open, and without
        // a new segment the current one simply stays active (this roll is refused).
        if let Err(e) = io::write_file_atomically(
            &self.inner.dir,
            &format::index_file_name(base),
            &index_file.encode(),
        )
        .await
        {
            warn!(segment = %base, error = %e, "cannot write a sealed segment's index; it is rebuilt at the next open");
        }

        let new_path = self.inner.dir.join(format::segment_file_name(next));
        let new_file = match io::open_segment(&new_path, true).await {
            Ok(file) => file,
            Err(e) => {
                let _ = io::remove_file_if_exists(&new_path);
                let _ =
                    io::remove_file_if_exists(&self.inner.dir.join(format::index_file_name(base)));
                return Err(e);
            }
        };
        io::sync_dir(&self.inner.dir)
            .await
            .map_err(|e| self.fail(e))?;
        let tail = WriteTail::resume(
            &new_file,
            self.inner.config.borrow().write_chunk_bytes,
            0,
            &[],
        );
        {
            let mut state = self.inner.state.borrow_mut();
            let sealed = state.active_mut();
            sealed.tail = None;
            sealed.dsync_twin = None;
            sealed.preallocated_to = sealed.index.size_bytes;
            state.segments.push(Segment {
                path: new_path,
                file: Rc::new(new_file),
                index: SegmentIndex::empty(next, self.inner.config.borrow().index_interval_bytes),
                tail: Some(tail),
                first_append_ms: None,
                preallocated_to: 0,
                overwrite: OverwriteState::default(),
                dsync_twin: None,
            });
        }
        // Everything before the new segment is now synced; the sealed one has its real index.
        self.inner
            .durable_end
            .set(self.inner.durable_end.get().max(next));
        self.inner.checkpointed_bytes.set(0);
        let _ =
            io::remove_file_if_exists(&self.inner.dir.join(format::active_index_file_name(base)));
        self.recharge_budget();
        debug!(sealed = %base, active = %next, "segment rolled");
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `from`, up to `max_bytes` (always at
    /// least one batch, even a larger one, as Kafka does since KIP-74). Every batch returned has
    /// been re-validated. Reading at the log end returns nothing.
    pub async fn read(&self, from: Offset, max_bytes: usize) -> Result<ReadBatches> {
        let read = loop {
            let generation = self.inner.generation.get();
            let result = self.read_across_segments(from, max_bytes).await;
            if self.inner.generation.get() == generation {
                break result?;
            }
        };
        // Past the read: a stalled answer holds what the log held when it was read.
        crate::faults::inject(crate::faults::FaultPoint::LogRead)
            .await
            .map_err(|e| StorageError::io(self.dir().display(), e))?;
        Ok(read)
    }

    /// Reads from the segment holding `from`, then on into the following segments while the
    /// byte limit allows.
    async fn read_across_segments(&self, from: Offset, max_bytes: usize) -> Result<ReadBatches> {
        let (first, mut reached_end) = self.read_once(from, max_bytes, true).await?;
        let mut total = first.bytes.len();
        let mut next_offset = first.next_offset;
        let mut first_offset = first.first_offset;
        let mut more = Vec::new();
        while reached_end && total < max_bytes && next_offset < self.log_end_offset() {
            // Until a batch is found the first one is served whatever its size; a segment
            // compaction emptied (or whose end is a gap) only moves the offset on.
            let (part, end) = self
                .read_once(next_offset, max_bytes - total, total == 0)
                .await?;
            if part.bytes.is_empty() && part.next_offset <= next_offset {
                break;
            }
            reached_end = end;
            total += part.bytes.len();
            next_offset = part.next_offset;
            first_offset = first_offset.or(part.first_offset);
            if !part.bytes.is_empty() {
                more.push(part.bytes);
            }
        }
        if more.is_empty() {
            return Ok(ReadBatches {
                next_offset,
                ..first
            });
        }
        let mut joined = BytesMut::with_capacity(total);
        joined.extend_from_slice(&first.bytes);
        for part in more {
            joined.extend_from_slice(&part);
        }
        Ok(ReadBatches {
            bytes: joined.freeze(),
            first_offset,
            next_offset,
        })
    }

    /// Reads within the one segment holding `from`. With `at_least_one`, the first batch is
    /// returned even when it alone exceeds `max_bytes`. Also says whether the read stopped at
    /// the end of the segment (rather than at the byte limit).
    async fn read_once(
        &self,
        from: Offset,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<(ReadBatches, bool)> {
        self.check_usable()?;
        let batch_max = self.inner.config.borrow().batch_bytes_max as usize;
        let (seg_base, seg_next, file, path, start_pos, seg_end) = {
            let state = self.inner.state.borrow();
            if from < state.log_start || from > state.next_offset {
                return Err(StorageError::OffsetOutOfRange {
                    requested: from,
                    log_start: state.log_start,
                    log_end: state.next_offset,
                });
            }
            if from == state.next_offset {
                let nothing = ReadBatches {
                    bytes: Bytes::new(),
                    first_offset: None,
                    next_offset: from,
                };
                return Ok((nothing, true));
            }
            let seg = &state.segments[state.segment_for(from)];
            let entry = seg.index.entry_for_offset(from);
            (
                seg.base_offset(),
                seg.index.next_offset,
                seg.file.clone(),
                seg.path.clone(),
                u64::from(entry.position),
                seg.index.size_bytes,
            )
        };
        // One read from the indexed position usually covers the skip to `from` (about one index
        // interval at most) and max_bytes of batches; `SegmentReader` reads more when not.
        let window = (max_bytes.max(BATCH_HEADER_BYTES) as u64)
            .saturating_add(u64::from(self.inner.config.borrow().index_interval_bytes))
            .min(seg_end - start_pos);
        let mut reader = SegmentReader {
            log: self,
            file: &file,
            path: &path,
            buf: self.read_range(&file, &path, start_pos, window).await?,
            buf_pos: start_pos,
            used: 0,
            out_start: None,
        };
        let mut first_offset = None;
        let mut next_offset = from;
        let reached_end = loop {
            let at = reader.buf_pos + reader.used as u64;
            if at >= seg_end {
                break true;
            }
            let corrupt = |source| StorageError::Corrupt {
                segment: seg_base,
                position: at,
                source,
            };
            let taken = reader.out_start.map_or(0, |s| reader.used - s);
            let budget = max_bytes.saturating_sub(taken) as u64;
            reader.ensure(BATCH_HEADER_BYTES, budget, seg_end).await?;
            let rest = &reader.buf[reader.used..];
            let size = peek_batch_size(rest, batch_max).map_err(corrupt)?;
            let (_, last) = batch_offsets(rest);
            let wanted = last >= from;
            if wanted && taken + size > max_bytes && (reader.out_start.is_some() || !at_least_one) {
                break false;
            }
            if wanted {
                reader.ensure(size, budget, seg_end).await?;
            } else if reader.buf.len() - reader.used < size {
                // Skipped batches need not be read: jump over it.
                reader.skip(size);
                continue;
            }
            let rest = &reader.buf[reader.used..];
            if !wanted {
                reader.used += size;
                continue;
            }
            let info = validate_batch(&rest[..size], batch_max).map_err(corrupt)?;
            reader.out_start.get_or_insert(reader.used);
            first_offset.get_or_insert(info.base_offset);
            reader.used += size;
            next_offset = info.next_offset();
        };
        if reached_end {
            // Past the last batch the segment's range may go on (a gap compaction left).
            next_offset = next_offset.max(seg_next);
        }
        let bytes = match reader.out_start {
            Some(start) => reader.buf.slice(start..reader.used),
            None => Bytes::new(),
        };
        let read = ReadBatches {
            bytes,
            first_offset,
            next_offset,
        };
        Ok((read, reached_end))
    }

    /// Reads segment bytes `[pos, pos + len)`, from memory where the active segment's write tail
    /// still holds them and from the file below that.
    async fn read_range(
        &self,
        file: &glommio::io::DmaFile,
        path: &Path,
        pos: u64,
        len: u64,
    ) -> Result<Bytes> {
        let end = pos + len;
        // Copy the in-memory part first, synchronously: everything below the tail's memory start
        // at this moment has been completely written, whatever the tail does during the await.
        let (memory, disk_end) = {
            let state = self.inner.state.borrow();
            let active = state.active();
            match active.tail.as_ref() {
                Some(tail) if std::ptr::eq(&*active.file, file) && end > tail.memory_start() => {
                    let from = pos.max(tail.memory_start());
                    let to = end.min(tail.end_pos());
                    let mem = (to > from).then(|| tail.copy_range(from, (to - from) as usize));
                    (mem, from)
                }
                _ => (None, end),
            }
        };
        let disk = io::read_at(file, path, pos, (disk_end - pos) as usize).await?;
        Ok(match memory {
            None => disk,
            Some(mem) if disk.is_empty() => mem,
            Some(mem) => {
                let mut joined = BytesMut::with_capacity(disk.len() + mem.len());
                joined.extend_from_slice(&disk);
                joined.extend_from_slice(&mem);
                joined.freeze()
            }
        })
    }

    /// Drops the suffix of the log from the batch holding `offset` on (Raft truncation). If
    /// `offset` falls inside a batch, that whole batch goes too, as in Kafka. Returns the new log
    /// end offset. The truncation is durable when this returns.
    pub async fn truncate(&self, offset: Offset) -> Result<Offset> {
        self.check_usable()?;
        let _append = self.lock_appends().await?;
        let _io = self.lock_io().await?;
        let (log_start, next) = {
            let state = self.inner.state.borrow();
            (state.log_start, state.next_offset)
        };
        if offset >= next {
            return Ok(next);
        }
        if offset < log_start {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end: next,
            });
        }
        // Put everything buffered into the file first, so the file is the one truth to cut.
        self.write_out(false).await?;
        self.inner.generation.set(self.inner.generation.get() + 1);

        // Drop whole segments above the target one.
        let removed: Vec<Segment> = {
            let mut state = self.inner.state.borrow_mut();
            let keep = state.segment_for(offset) + 1;
            state.segments.split_off(keep)
        };
        for seg in &removed {
            io::remove_file_if_exists(&seg.path)?;
            io::remove_file_if_exists(
                &self
                    .inner
                    .dir
                    .join(format::index_file_name(seg.base_offset())),
            )?;
        }
        drop(removed);

        // Find the batch holding `offset` in the target segment and cut the file there.
        // The index places the cut within one index interval: keep what lies before the entry
        // at or below `offset`, and scan (validating) from there to the batch holding it.
        let (file, path, base, mut rebuilt) = {
            let state = self.inner.state.borrow();
            let seg = state.active();
            (
                seg.file.clone(),
                seg.path.clone(),
                seg.base_offset(),
                seg.index.prefix_before_entry_for(offset),
            )
        };
        let file_len = file
            .file_size()
            .await
            .map_err(|e| StorageError::io(path.display(), e))?;
        let batch_max = self.inner.config.borrow().batch_bytes_max as usize;
        scan_segment(
            &file,
            &path,
            file_len,
            &mut rebuilt,
            batch_max,
            Some(offset),
            Continuity::Gaps,
        )
        .await?;
        let io_err = |e| self.fail(StorageError::io(path.display(), e));
        // A checkpoint of the active index may describe batches this cut removes.
        io::remove_file_if_exists(&self.inner.dir.join(format::active_index_file_name(base)))?;
        self.inner.checkpointed_bytes.set(0);
        let _zero = self.lock_zeroing().await?;
        file.truncate(rebuilt.size_bytes).await.map_err(io_err)?;
        file.fdatasync().await.map_err(io_err)?;
        self.inner.metadata_writes.set(0);
        io::remove_file_if_exists(&self.inner.dir.join(format::index_file_name(base)))?;
        io::sync_dir(&self.inner.dir)
            .await
            .map_err(|e| self.fail(e))?;
        let config = self.config();
        let tail = resume_tail(&file, &path, rebuilt.size_bytes, &config).await?;
        let new_end = rebuilt.next_offset;
        if new_end < log_start {
            // The cut fell inside the batch holding the log start: the log is now empty at
            // `new_end`, and the start moves down with it (nothing below it exists any more).
            self.checkpoint_log_start(new_end).await?;
        }
        {
            let mut state = self.inner.state.borrow_mut();
            let seg = state.active_mut();
            seg.tail = Some(tail);
            seg.preallocated_to = rebuilt.size_bytes;
            seg.overwrite.cut(rebuilt.size_bytes);
            seg.index = rebuilt;
            state.next_offset = new_end;
            state.log_start = state.log_start.min(new_end);
        }
        self.inner
            .durable_end
            .set(self.inner.durable_end.get().min(new_end));
        self.inner.generation.set(self.inner.generation.get() + 1);
        self.recharge_budget();
        info!(dir = %self.inner.dir.display(), requested = %offset, log_end = %new_end, "log truncated");
        Ok(new_end)
    }

    /// Makes `offset` the durable log start checkpoint (atomic replace).
    async fn checkpoint_log_start(&self, offset: Offset) -> Result<()> {
        io::write_file_atomically(
            &self.inner.dir,
            format::LOG_START_FILE,
            &format::encode_log_start(offset),
        )
        .await
        .map_err(|e| self.fail(e))
    }

    /// Moves the log start offset up to `offset` (retention, DeleteRecords): offsets below it can
    /// no longer be read, and segments entirely below it are deleted. The new start is durable
    /// when this returns. `offset` may be at most the log end offset.
    pub async fn truncate_prefix(&self, offset: Offset) -> Result<Offset> {
        self.check_usable()?;
        let _io = self.lock_io().await?;
        let (log_start, next) = {
            let state = self.inner.state.borrow();
            (state.log_start, state.next_offset)
        };
        if offset > next {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start,
                log_end: next,
            });
        }
        if offset <= log_start {
            return Ok(log_start);
        }
        self.checkpoint_log_start(offset).await?;
        let removed = {
            let mut state = self.inner.state.borrow_mut();
            state.log_start = offset;
            let sealed = state.segments.len() - 1;
            let drop_count = state.segments[..sealed]
                .iter()
                .take_while(|s| s.index.next_offset <= offset)
                .count();
            state.segments.drain(..drop_count).collect::<Vec<_>>()
        };
        self.delete_segments(removed).await?;
        Ok(offset)
    }

    /// Deletes sealed segments beyond `retention.ms` (their newest record is older) or beyond
    /// `retention.bytes` (oldest first, while the rest still exceeds it). The active segment is
    /// never deleted. `now` is passed in so callers and tests control time.
    pub async fn enforce_retention(&self, now: TimestampMs) -> Result<RetentionOutcome> {
        self.check_usable()?;
        let _io = self.lock_io().await?;
        let removed = {
            let drop_count = self.segments_beyond_retention(now);
            let mut state = self.inner.state.borrow_mut();
            let removed: Vec<Segment> = state.segments.drain(..drop_count).collect();
            if let Some(first) = state.segments.first() {
                state.log_start = state.log_start.max(first.base_offset());
            }
            removed
        };
        let outcome = RetentionOutcome {
            segments_deleted: removed.len(),
            bytes_deleted: removed.iter().map(|s| s.index.size_bytes).sum(),
            log_start: self.log_start_offset(),
        };
        self.delete_segments(removed).await?;
        Ok(outcome)
    }

    /// How many sealed segments, oldest first, retention would delete at `now`.
    fn segments_beyond_retention(&self, now: TimestampMs) -> usize {
        let state = self.inner.state.borrow();
        let mut total: u64 = state.segments.iter().map(|s| s.index.size_bytes).sum();
        let sealed = state.segments.len() - 1;
        let (retention_ms, retention_bytes) = {
            let config = self.inner.config.borrow();
            (config.retention_ms, config.retention_bytes)
        };
        let mut drop_count = 0;
        for seg in &state.segments[..sealed] {
            let too_old = retention_ms
                .is_some_and(|ms| seg.index.max_timestamp < now.saturating_sub(ms as i64));
            let too_big = retention_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            total -= seg.index.size_bytes;
            drop_count += 1;
        }
        drop_count
    }

    /// The log start offset retention would leave at `now` (the base of the first segment it
    /// keeps), without deleting anything: a replicated partition's leader proposes it so that
    /// every replica cuts at the same offset. `None` when retention would delete nothing.
    pub fn retention_point(&self, now: TimestampMs) -> Option<Offset> {
        let drop_count = self.segments_beyond_retention(now);
        let state = self.inner.state.borrow();
        let start = state.segments[drop_count]
            .base_offset()
            .max(state.log_start);
        (drop_count > 0 && start > state.log_start).then_some(start)
    }

    /// Empties the log and makes it start (and end) at `offset`, whatever it held: Kafka's
    /// `truncateFullyAndStartAt`, for a Raft follower restored from a leader's snapshot whose
    /// log start is past this log's end or whose suffix conflicts. Durable when it returns.
    ///
    /// Crash-safe in every order: the new empty segment at `offset` is created (and the
    /// directory synced) first, then the old segments are deleted oldest first, then the log
    /// start checkpoint is written; a reopen in between finds the old segments followed by a
    /// gap and the new one (a valid log ending at `offset`), or fewer old segments.
    pub async fn start_over_at(&self, offset: Offset) -> Result<()> {
        self.check_usable()?;
        let _append = self.lock_appends().await?;
        let _io = self.lock_io().await?;
        // Nothing may be in flight towards the files about to go.
        self.write_out(false).await?;
        let _zero = self.lock_zeroing().await?;
        self.inner.generation.set(self.inner.generation.get() + 1);
        let dir = self.inner.dir.clone();
        let new_path = dir.join(format::segment_file_name(offset));
        let reuse = {
            let state = self.inner.state.borrow();
            state.segments.iter().any(|s| s.path == new_path)
        };
        if reuse {
            // A segment already starts at `offset`: empty it in place (it is the first one
            // or the rest are deleted below; either way it is the only one left).
            let (file, path) = {
                let state = self.inner.state.borrow();
                let seg = state
                    .segments
                    .iter()
                    .find(|s| s.path == new_path)
                    .expect("checked");
                (seg.file.clone(), seg.path.clone())
            };
            file.truncate(0)
                .await
                .map_err(|e| self.fail(StorageError::io(path.display(), e)))?;
            file.fdatasync()
                .await
                .map_err(|e| self.fail(StorageError::io(path.display(), e)))?;
        }
        let new_file = if reuse {
            None
        } else {
            let file = io::open_segment(&new_path, true).await?;
            io::sync_dir(&dir).await.map_err(|e| self.fail(e))?;
            Some(file)
        };
        let old: Vec<Segment> = {
            let mut state = self.inner.state.borrow_mut();
            let all = std::mem::take(&mut state.segments);
            let (kept, old): (Vec<Segment>, Vec<Segment>) =
                all.into_iter().partition(|s| s.path == new_path);
            state.segments = kept;
            old
        };
        for seg in &old {
            io::remove_file_if_exists(&dir.join(format::index_file_name(seg.base_offset())))?;
            io::remove_file_if_exists(
                &dir.join(format::active_index_file_name(seg.base_offset())),
            )?;
            io::remove_file_if_exists(&seg.path)?;
        }
        io::remove_file_if_exists(&dir.join(format::index_file_name(offset)))?;
        io::remove_file_if_exists(&dir.join(format::active_index_file_name(offset)))?;
        io::sync_dir(&dir).await.map_err(|e| self.fail(e))?;
        drop(old);
        self.checkpoint_log_start(offset).await?;
        let config = self.config();
        let segment = match new_file {
            Some(file) => {
                let tail = WriteTail::resume(&file, config.write_chunk_bytes, 0, &[]);
                Segment {
                    path: new_path,
                    file: Rc::new(file),
                    index: SegmentIndex::empty(offset, config.index_interval_bytes),
                    tail: Some(tail),
                    first_append_ms: None,
                    preallocated_to: 0,
                    overwrite: OverwriteState::default(),
                    dsync_twin: None,
                }
            }
            None => {
                let mut seg = self
                    .inner
                    .state
                    .borrow_mut()
                    .segments
                    .pop()
                    .expect("the reused segment");
                seg.tail = Some(resume_tail(&seg.file, &seg.path, 0, &config).await?);
                seg.index = SegmentIndex::empty(offset, config.index_interval_bytes);
                seg.preallocated_to = 0;
                seg.overwrite = OverwriteState::default();
                seg.first_append_ms = None;
                seg
            }
        };
        {
            let mut state = self.inner.state.borrow_mut();
            state.segments = vec![segment];
            state.log_start = offset;
            state.next_offset = offset;
        }
        self.inner.durable_end.set(offset);
        self.inner.cleaned_to.set(offset);
        self.inner.checkpointed_bytes.set(0);
        self.inner.metadata_writes.set(0);
        self.inner.generation.set(self.inner.generation.get() + 1);
        self.recharge_budget();
        info!(dir = %dir.display(), start = %offset, "log emptied to start over");
        Ok(())
    }

    async fn delete_segments(&self, removed: Vec<Segment>) -> Result<()> {
        if removed.is_empty() {
            return Ok(());
        }
        for seg in &removed {
            io::remove_file_if_exists(
                &self
                    .inner
                    .dir
                    .join(format::index_file_name(seg.base_offset())),
            )?;
            io::remove_file_if_exists(&seg.path)?;
            info!(segment = %seg.base_offset(), bytes = seg.index.size_bytes, "segment deleted");
        }
        io::sync_dir(&self.inner.dir).await
    }

    /// The largest record timestamp in the log (ListOffsets' MAX_TIMESTAMP, KIP-734), or `None`
    /// when the log holds no records. Read from the segment indexes; pair it with
    /// [`Log::offset_for_timestamp`] for the first record carrying it.
    pub fn max_timestamp(&self) -> Option<TimestampMs> {
        let state = self.inner.state.borrow();
        state
            .segments
            .iter()
            .filter(|s| !s.index.is_empty() && s.index.next_offset > state.log_start)
            .map(|s| s.index.max_timestamp)
            .max()
    }

    /// The offset of the first record whose timestamp is at or after `ts` (ListOffsets by
    /// timestamp), or `None` if every record is older. For compressed batches the answer is the
    /// base offset of the first batch whose max timestamp qualifies.
    pub async fn offset_for_timestamp(&self, ts: TimestampMs) -> Result<Option<Offset>> {
        self.check_usable()?;
        let start = {
            let state = self.inner.state.borrow();
            let Some(seg) = state.segments.iter().find(|s| {
                !s.index.is_empty()
                    && s.index.max_timestamp >= ts
                    && s.index.next_offset > state.log_start
            }) else {
                return Ok(None);
            };
            let entry = seg.index.entry_for_timestamp(ts);
            seg.base_offset()
                .plus(i64::from(entry.relative_offset))
                .max(state.log_start)
        };
        let mut from = start;
        let window = 256 * 1024;
        while from < self.log_end_offset() {
            let read = self.read(from, window).await?;
            let mut rest = &read.bytes[..];
            while !rest.is_empty() {
                let info =
                    validate_batch(rest, self.inner.config.borrow().batch_bytes_max as usize)
                        .expect("read() returns validated batches");
                if info.max_timestamp >= ts {
                    let found =
                        first_record_at_or_after(rest, &info, ts).unwrap_or(info.base_offset);
                    return Ok(Some(found.max(self.log_start_offset())));
                }
                rest = &rest[info.size_bytes..];
            }
            if read.next_offset <= from {
                break;
            }
            from = read.next_offset;
        }
        Ok(None)
    }

    /// How far compaction has cleaned the log: offsets below hold at most one record per key
    /// (as of the cleaning). The log start when never cleaned.
    pub fn cleaned_to(&self) -> Offset {
        self.inner
            .cleaned_to
            .get()
            .max(self.log_start_offset())
            .min(self.log_end_offset())
    }

    /// Records (durably) that compaction has cleaned the log up to `offset`.
    pub async fn set_cleaned_to(&self, offset: Offset) -> Result<()> {
        io::write_file_atomically(
            &self.inner.dir,
            format::CLEANED_TO_FILE,
            &format::encode_cleaned_to(offset),
        )
        .await?;
        self.inner.cleaned_to.set(offset);
        Ok(())
    }

    /// The sealed segments (every one but the active), oldest first.
    pub fn sealed_segments(&self) -> Vec<SegmentSummary> {
        let state = self.inner.state.borrow();
        // A closed log has no segments at all.
        state.segments[..state.segments.len().saturating_sub(1)]
            .iter()
            .map(|s| SegmentSummary {
                base_offset: s.base_offset(),
                next_offset: s.index.next_offset,
                size_bytes: s.index.size_bytes,
                max_timestamp: s.index.max_timestamp,
                modified_ms: modified_ms(&s.path),
            })
            .collect()
    }

    /// Replaces the sealed segments with base offsets in `[first, end)` (whole segments: `first`
    /// a segment's base, `end` the next one's) by one segment holding what `fate` keeps of
    /// their batches, in order; `fate` also gets the age (`modified_ms`) of the segment a batch
    /// is in. Reads and writes are paced by `budget`. Crash-safe (see `rewrite`); appends,
    /// reads and retention go on meanwhile. Returns `None`, changing nothing, when the
    /// segments changed underneath (retention or truncation removed some).
    pub async fn rewrite_segments<F>(
        &self,
        first: Offset,
        end: Offset,
        budget: &mut IoBudget,
        mut fate: F,
    ) -> Result<Option<RewriteOutcome>>
    where
        F: FnMut(&[u8], &BatchInfo, TimestampMs) -> BatchFate,
    {
        self.check_usable()?;
        let group: Vec<(Rc<glommio::io::DmaFile>, PathBuf, u64, TimestampMs)> = {
            let state = self.inner.state.borrow();
            let sealed = &state.segments[..state.segments.len() - 1];
            let chosen: Vec<&Segment> = sealed
                .iter()
                .filter(|s| s.base_offset() >= first && s.base_offset() < end)
                .collect();
            let whole = chosen.first().is_some_and(|s| s.base_offset() == first)
                && chosen.last().is_some_and(|s| s.index.next_offset == end);
            if !whole {
                return Ok(None);
            }
            chosen
                .iter()
                .map(|s| {
                    (
                        s.file.clone(),
                        s.path.clone(),
                        s.index.size_bytes,
                        modified_ms(&s.path),
                    )
                })
                .collect()
        };
        let config = self.config();
        let writer =
            SegmentWriter::create(&self.inner.dir, first, config.index_interval_bytes).await?;
        let cleaned_path = writer.path.clone();
        let written = self
            .write_rewritten(writer, &group, end, budget, &mut fate, &config)
            .await;
        let (file, index, outcome) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = io::remove_file_if_exists(&cleaned_path);
                return Err(e);
            }
        };
        // The replacement is as old as the newest segment it replaces.
        let newest = group.iter().map(|g| g.3).max().unwrap_or_else(now_ms);
        let modified =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(newest.max(0) as u64);
        if let Err(e) = std::fs::File::options()
            .write(true)
            .open(&cleaned_path)
            .and_then(|f| f.set_modified(modified))
        {
            warn!(file = %cleaned_path.display(), error = %e, "cannot carry the segment age over");
        }
        let dir = self.inner.dir.clone();
        // The index goes beside the replacement before the commit point, so that the swap
        // itself, under the io lock, is only renames: every durability round of the shard
        // waits for this log's io lock (`SyncGroup`), and an fdatasync held under it showed in
        // every partition's produce p99 (docs/benchmarks.md, "Compaction's cost").
        let cleaned_index_path = dir.join(format::cleaned_index_file_name(first));
        let index_written =
            io::write_file_durably(&cleaned_index_path, &index.to_file().encode()).await;
        let swap_path = dir.join(format::swap_file_name(first, end));
        let committed = index_written.and_then(|()| {
            std::fs::rename(&cleaned_path, &swap_path)
                .map_err(|e| StorageError::io(swap_path.display(), e))
        });
        if let Err(e) = committed {
            let _ = io::remove_file_if_exists(&cleaned_path);
            let _ = io::remove_file_if_exists(&cleaned_index_path);
            let _ = file.close().await;
            return Err(e);
        }
        io::sync_dir(&dir).await?;

        let io_lock = self.lock_io().await?;
        let unchanged = {
            let state = self.inner.state.borrow();
            let now: Vec<&Segment> = state.segments[..state.segments.len() - 1]
                .iter()
                .filter(|s| s.base_offset() >= first && s.base_offset() < end)
                .collect();
            now.len() == group.len()
                && now
                    .iter()
                    .zip(&group)
                    .all(|(s, g)| Rc::ptr_eq(&s.file, &g.0))
        };
        if !unchanged {
            drop(io_lock);
            io::remove_file_if_exists(&swap_path)?;
            io::remove_file_if_exists(&cleaned_index_path)?;
            io::sync_dir(&dir).await?;
            let _ = file.close().await;
            return Ok(None);
        }
        // From here to the splice nothing awaits: the lock is held for a few renames only.
        // Renames go in the order recovery needs: should a crash keep only some of them, the
        // `.swap` file is still there and `finish_interrupted_swaps` redoes the swap (it
        // deletes `first`'s index, old or new, and the index is rebuilt by a scan).
        for (_, path, _, _) in &group[1..] {
            io::remove_file_if_exists(path)?;
            if let Some(base) = path
                .file_name()
                .and_then(|n| format::parse_segment_file_name(&n.to_string_lossy()))
            {
                io::remove_file_if_exists(&dir.join(format::index_file_name(base)))?;
            }
        }
        let index_path = dir.join(format::index_file_name(first));
        std::fs::rename(&cleaned_index_path, &index_path)
            .map_err(|e| StorageError::io(index_path.display(), e))?;
        let path = dir.join(format::segment_file_name(first));
        std::fs::rename(&swap_path, &path).map_err(|e| StorageError::io(path.display(), e))?;
        {
            let mut state = self.inner.state.borrow_mut();
            let at = state
                .segments
                .iter()
                .position(|s| s.base_offset() == first)
                .expect("checked under the io lock");
            let size = index.size_bytes;
            state.segments.splice(
                at..at + group.len(),
                [Segment {
                    path,
                    file: Rc::new(file),
                    index,
                    tail: None,
                    first_append_ms: None,
                    preallocated_to: size,
                    overwrite: OverwriteState::after(size),
                    dsync_twin: None,
                }],
            );
        }
        drop(io_lock);
        io::sync_dir(&dir).await?;
        info!(dir = %dir.display(), %first, %end, segments = outcome.segments_replaced,
            bytes_before = outcome.bytes_before, bytes_after = outcome.bytes_after, "segments compacted");
        Ok(Some(outcome))
    }

    /// Reads the segments of `group` batch by batch, passes each through `fate`, and writes
    /// what it keeps with `writer`; the finished, durable file and its index.
    async fn write_rewritten<F>(
        &self,
        mut writer: SegmentWriter,
        group: &[(Rc<glommio::io::DmaFile>, PathBuf, u64, TimestampMs)],
        end: Offset,
        budget: &mut IoBudget,
        fate: &mut F,
        config: &LogConfig,
    ) -> Result<(glommio::io::DmaFile, SegmentIndex, RewriteOutcome)>
    where
        F: FnMut(&[u8], &BatchInfo, TimestampMs) -> BatchFate,
    {
        let batch_max = config.batch_bytes_max as usize;
        let window = (1usize << 20).max(batch_max);
        let mut outcome = RewriteOutcome {
            segments_replaced: group.len(),
            ..RewriteOutcome::default()
        };
        let mut since_yield = 0usize;
        for (file, path, size, modified) in group {
            outcome.bytes_before += size;
            let mut pos = 0u64;
            while pos < *size {
                let want = window.min((size - pos) as usize);
                let buf = io::read_at(file, path, pos, want).await?;
                let at_end = pos + buf.len() as u64 >= *size;
                let mut used = 0usize;
                while used < buf.len() {
                    let rest = &buf[used..];
                    let here = pos + used as u64;
                    let corrupt = |source| StorageError::Corrupt {
                        segment: writer.index.base_offset,
                        position: here,
                        source,
                    };
                    if rest.len() < BATCH_HEADER_BYTES && !at_end {
                        break;
                    }
                    let batch_size = peek_batch_size(rest, batch_max).map_err(corrupt)?;
                    if batch_size > rest.len() {
                        if at_end {
                            return Err(corrupt(crate::batch::BatchError::Truncated {
                                needed: batch_size,
                                available: rest.len(),
                            }));
                        }
                        break;
                    }
                    let batch = &rest[..batch_size];
                    let info = validate_batch(batch, batch_max).map_err(corrupt)?;
                    // Hand the core back often: a request waiting behind this work waits at
                    // most about one slice's worth of it.
                    since_yield += batch_size;
                    if since_yield >= YIELD_EVERY_BYTES {
                        since_yield = 0;
                        glommio::executor().yield_task_queue_now().await;
                    }
                    match fate(batch, &info, *modified) {
                        BatchFate::Keep => writer.push(batch, &info).await?,
                        BatchFate::Drop => {}
                        BatchFate::Replace(bytes) => {
                            let new = validate_batch(&bytes, usize::MAX).map_err(corrupt)?;
                            assert!(
                                new.base_offset >= info.base_offset
                                    && new.last_offset() <= info.last_offset(),
                                "a replacement batch stays within the original's offsets"
                            );
                            writer.push(&bytes, &new).await?;
                        }
                    }
                    used += batch_size;
                }
                if used == 0 {
                    return Err(StorageError::Corrupt {
                        segment: writer.index.base_offset,
                        position: pos,
                        source: crate::batch::BatchError::TooLarge {
                            size: want,
                            max: batch_max,
                        },
                    });
                }
                budget.spend(used as u64).await;
                pos += used as u64;
            }
        }
        let (file, _, index) = writer.finish(end).await?;
        outcome.bytes_after = index.size_bytes;
        Ok((file, index, outcome))
    }

    /// Writes and syncs everything, then closes the log; later calls fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.get() {
            return Ok(());
        }
        let refused = match self.sync().await {
            Ok(_) => false,
            // Closing on a full disk (a deleted topic, a shutdown): the records the disk
            // refused were never durable, and holding the files open would hold their space.
            Err(StorageError::NoSpace(why)) => {
                warn!(dir = %self.inner.dir.display(), error = %why,
                    "closing with buffered records the disk refused: they are dropped (none was acknowledged as durable)");
                true
            }
            Err(e) => return Err(e),
        };
        let _append = self.lock_appends().await?;
        let _io = match self.lock_io().await {
            // Another close finished while this one waited.
            Err(StorageError::Closed) => return Ok(()),
            io => io?,
        };
        let _zero = self.lock_zeroing().await?;
        if !refused {
            // Everything is durable now: the whole active index is a valid checkpoint.
            self.checkpoint_active_index(None).await;
        }
        self.inner.closed.set(true);
        let segments = std::mem::take(&mut self.inner.state.borrow_mut().segments);
        self.recharge_budget();
        for seg in segments {
            if let Ok(file) = Rc::try_unwrap(seg.file) {
                drop(seg.tail);
                file.close()
                    .await
                    .map_err(|e| StorageError::io(seg.path.display(), e))?;
            }
        }
        Ok(())
    }
}

/// Whether a write failed for lack of space (the filesystem's or a quota's), which leaves
/// nothing unknown: the write is simply done again later.
fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT)
    )
}

/// Reads the log-start checkpoint; a missing or damaged one is ignored (the first segment's base
/// offset is then the start).
fn read_log_start(dir: &Path) -> Option<Offset> {
    read_checkpoint(dir, format::LOG_START_FILE, format::decode_log_start)
}

/// Reads an offset checkpoint file; a missing or damaged one is ignored (with a warning).
fn read_checkpoint(
    dir: &Path,
    name: &str,
    decode: fn(&[u8]) -> std::result::Result<Offset, format::FormatError>,
) -> Option<Offset> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).ok()?;
    match decode(&bytes) {
        Ok(offset) => Some(offset),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "ignoring a damaged checkpoint");
            None
        }
    }
}

/// When `path` was last modified, in ms since the epoch (now, if that cannot be read).
fn modified_ms(path: &Path) -> TimestampMs {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as TimestampMs)
}

/// Loads a sealed segment's index file if it is valid and matches the segment file.
fn load_index(
    path: &Path,
    base: Offset,
    file_len: u64,
    index_interval_bytes: u32,
) -> Option<SegmentIndex> {
    if let Err(e) = std::fs::metadata(path) {
        warn!(file = %path.display(), error = %e, "segment index missing; rebuilding");
        return None;
    }
    read_index_file(
        path,
        index_interval_bytes,
        "segment index",
        "rebuilding",
        |f| f.base_offset == base && f.segment_bytes == file_len,
    )
}

/// The active segment's checkpointed index, if there is a valid one for this segment that
/// covers no more than the file holds.
fn load_active_index(
    dir: &Path,
    base: Offset,
    file_len: u64,
    index_interval_bytes: u32,
) -> Option<SegmentIndex> {
    let path = dir.join(format::active_index_file_name(base));
    if !path.exists() {
        return None;
    }
    read_index_file(
        &path,
        index_interval_bytes,
        "active segment checkpoint",
        "scanning it all",
        |f| f.base_offset == base && f.segment_bytes <= file_len,
    )
}

/// Reads and decodes an index file, keeping it when `fits` its segment; otherwise warns
/// "<what> ...; <fallback>" and returns `None`.
fn read_index_file(
    path: &Path,
    index_interval_bytes: u32,
    what: &str,
    fallback: &str,
    fits: impl Fn(&IndexFile) -> bool,
) -> Option<SegmentIndex> {
    let decoded = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| IndexFile::decode(&bytes).map_err(|e| e.to_string()));
    match decoded {
        Ok(f) if fits(&f) => Some(SegmentIndex::from_file(f, index_interval_bytes)),
        Ok(_) => {
            warn!(file = %path.display(), "{what} does not match its segment; {fallback}");
            None
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "{what} invalid; {fallback}");
            None
        }
    }
}

/// Extends the active segment's reserved space when a write would pass it: returns the new end
/// to fallocate to (never past the segment size limit). The step grows with the segment: as
/// much again as is reserved already, from `PREALLOCATE_FIRST_BYTES` up to
/// `preallocate_bytes`, so a partition written slowly (or once) holds about twice its data,
/// not a full step, while a busy one soon reserves in full steps.
fn reserve_space(active: &mut Segment, write_end: u64, config: &LogConfig) -> Option<u64> {
    if config.preallocate_bytes == 0 || write_end <= active.preallocated_to {
        return None;
    }
    let step = config
        .preallocate_bytes
        .min(active.preallocated_to.max(PREALLOCATE_FIRST_BYTES));
    let to = align_up(write_end + step)
        .min(align_up(config.segment_bytes_max))
        .max(write_end);
    active.preallocated_to = to;
    Some(to)
}

/// A window over a segment's bytes for [`Log::read_once`]: holds the batches selected so far
/// (from `out_start`) and reads on when the next batch is not whole in the window.
struct SegmentReader<'a> {
    log: &'a Log,
    file: &'a glommio::io::DmaFile,
    path: &'a Path,
    buf: Bytes,
    /// File position of `buf[0]`.
    buf_pos: u64,
    /// The next batch starts at `buf[used]`.
    used: usize,
    /// Where the selected batches start in `buf`.
    out_start: Option<usize>,
}

impl SegmentReader<'_> {
    /// Makes sure `buf[used..]` holds at least `need` bytes (or reaches `seg_end`), reading at
    /// least `budget` more bytes when it must read, and keeping the selected batches.
    async fn ensure(&mut self, need: usize, budget: u64, seg_end: u64) -> Result<()> {
        let have = self.buf.len() - self.used;
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if have >= need || buf_end >= seg_end {
            return Ok(());
        }
        let len = ((need - have) as u64).max(budget).min(seg_end - buf_end);
        let more = self
            .log
            .read_range(self.file, self.path, buf_end, len)
            .await?;
        let keep = self.out_start.unwrap_or(self.used);
        let mut joined = BytesMut::with_capacity(self.buf.len() - keep + more.len());
        joined.extend_from_slice(&self.buf[keep..]);
        joined.extend_from_slice(&more);
        self.buf = joined.freeze();
        self.buf_pos += keep as u64;
        self.used -= keep;
        self.out_start = self.out_start.map(|s| s - keep);
        Ok(())
    }

    /// Moves past `size` bytes that start at `used`, beyond the window: the window restarts
    /// empty there. Only used before any batch is selected.
    fn skip(&mut self, size: usize) {
        debug_assert!(self.out_start.is_none());
        self.buf_pos += (self.used + size) as u64;
        self.buf = Bytes::new();
        self.used = 0;
    }
}

/// A write tail for a segment whose data (all in the file) ends at `size_bytes`: the partial
/// last page is read back so the next write can rewrite it whole.
async fn resume_tail(
    file: &glommio::io::DmaFile,
    path: &Path,
    size_bytes: u64,
    config: &LogConfig,
) -> Result<WriteTail> {
    let page_start = align_down(size_bytes);
    let page = io::read_at(file, path, page_start, (size_bytes - page_start) as usize).await?;
    Ok(WriteTail::resume(
        file,
        config.write_chunk_bytes,
        size_bytes,
        &page,
    ))
}
