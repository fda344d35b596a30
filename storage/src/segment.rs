//! One segment of a log: its file, its in-memory sparse index, and (for the active segment) its
//! write tail. Also the scanner that validates a segment's batches on recovery or index rebuild.
//!
//! Invariants:
//! - batches in a segment ascend in offsets: each batch's base offset is above the previous
//!   batch's last offset. As appended they are contiguous (each starts at the previous one's
//!   last offset + 1, the first at the segment's base offset); a segment the compactor rewrote
//!   has gaps where whole batches went, and its `next_offset` stays the end of the range it
//!   covered (the next segment's base), wherever its last batch ends;
//! - `size_bytes` is the logical end of the data; file bytes past it are zero or not yet valid;
//! - index entries are in ascending offset and position order; the first batch always has one.

use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::DmaFile;

use crate::batch::{peek_batch_size, validate_batch, BatchInfo, BATCH_HEADER_BYTES};
use crate::error::Result;
use crate::format::{IndexEntry, IndexFile};
use crate::io;
use crate::tail::WriteTail;
use crate::types::{Offset, TimestampMs};

/// How much of a segment the scanner reads per I/O.
const SCAN_WINDOW_BYTES: usize = 1 << 20;

/// The sparse index and summary of one segment's data, kept in memory.
#[derive(Debug, Clone)]
pub(crate) struct SegmentIndex {
    pub base_offset: Offset,
    pub next_offset: Offset,
    pub size_bytes: u64,
    pub max_timestamp: TimestampMs,
    pub entries: Vec<IndexEntry>,
    bytes_since_entry: u64,
    index_interval_bytes: u64,
}

impl SegmentIndex {
    pub fn empty(base_offset: Offset, index_interval_bytes: u32) -> Self {
        SegmentIndex {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            max_timestamp: TimestampMs::MIN,
            entries: Vec::new(),
            bytes_since_entry: 0,
            index_interval_bytes: u64::from(index_interval_bytes),
        }
    }

    pub fn from_file(f: IndexFile, index_interval_bytes: u32) -> Self {
        SegmentIndex {
            base_offset: f.base_offset,
            next_offset: f.next_offset,
            size_bytes: f.segment_bytes,
            max_timestamp: f.max_timestamp,
            entries: f.entries,
            bytes_since_entry: 0,
            index_interval_bytes: u64::from(index_interval_bytes),
        }
    }

    pub fn to_file(&self) -> IndexFile {
        IndexFile {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            segment_bytes: self.size_bytes,
            max_timestamp: self.max_timestamp,
            entries: self.entries.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// Records a batch appended at the end of the segment.
    pub fn record(&mut self, position: u64, info: &BatchInfo) {
        assert_eq!(
            position, self.size_bytes,
            "batches are recorded in file order"
        );
        assert!(
            info.base_offset >= self.next_offset,
            "batches ascend in offsets"
        );
        if self.entries.is_empty() || self.bytes_since_entry >= self.index_interval_bytes {
            self.entries.push(IndexEntry {
                relative_offset: u32::try_from(info.base_offset.0 - self.base_offset.0)
                    .expect("segment spans fewer than 2^32 offsets"),
                position: u32::try_from(position).expect("segment positions fit u32"),
                max_timestamp_before: self.max_timestamp,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += info.size_bytes as u64;
        self.size_bytes += info.size_bytes as u64;
        self.next_offset = info.next_offset();
        self.max_timestamp = self.max_timestamp.max(info.max_timestamp);
    }

    /// Moves the end of the offset range this segment covers up to `end` (a compacted segment
    /// covers offsets its batches no longer hold).
    pub fn extend_to(&mut self, end: Offset) {
        self.next_offset = self.next_offset.max(end);
    }

    /// The index entry to start a search for `offset` from: the last one at or before it.
    pub fn entry_for_offset(&self, offset: Offset) -> IndexEntry {
        let rel = offset.0 - self.base_offset.0;
        let i = self
            .entries
            .partition_point(|e| i64::from(e.relative_offset) <= rel);
        self.entry_before(i)
    }

    /// This index cut back to just before the batch of the entry at or below `offset`: what a
    /// scan from that batch rebuilds exactly as it was (the next recorded batch gets an entry
    /// again, with the same `max_timestamp_before`).
    pub fn prefix_before_entry_for(&self, offset: Offset) -> SegmentIndex {
        let rel = offset.0 - self.base_offset.0;
        let keep = self
            .entries
            .partition_point(|e| i64::from(e.relative_offset) <= rel)
            .saturating_sub(1);
        let Some(entry) = self.entries.get(keep) else {
            return SegmentIndex::empty(self.base_offset, self.index_interval_bytes as u32);
        };
        SegmentIndex {
            base_offset: self.base_offset,
            next_offset: self.base_offset.plus(i64::from(entry.relative_offset)),
            size_bytes: u64::from(entry.position),
            max_timestamp: entry.max_timestamp_before,
            entries: self.entries[..keep].to_vec(),
            // Forces an entry for the next batch recorded, as the original had.
            bytes_since_entry: self.index_interval_bytes,
            index_interval_bytes: self.index_interval_bytes,
        }
    }

    /// The entry to start a search for the first batch with a timestamp at or after `ts` from:
    /// the last one before which every batch is older than `ts`.
    pub fn entry_for_timestamp(&self, ts: TimestampMs) -> IndexEntry {
        let i = self
            .entries
            .partition_point(|e| e.max_timestamp_before < ts);
        self.entry_before(i)
    }

    /// The entry just before position `i` of the entry list; the segment start if there is none.
    fn entry_before(&self, i: usize) -> IndexEntry {
        self.entries
            .get(i.saturating_sub(1))
            .copied()
            .unwrap_or(IndexEntry {
                relative_offset: 0,
                position: 0,
                max_timestamp_before: TimestampMs::MIN,
            })
    }
}

/// A segment of the log.
pub(crate) struct Segment {
    pub path: PathBuf,
    pub file: Rc<DmaFile>,
    pub index: SegmentIndex,
    /// Present for the active (last) segment only.
    pub tail: Option<WriteTail>,
    /// Wall-clock time of the first append this process made to the segment (for `segment.ms`).
    pub first_append_ms: Option<TimestampMs>,
    /// File bytes reserved with fallocate so far.
    pub preallocated_to: u64,
    /// Which file blocks a durable write can overwrite without a metadata commit.
    pub overwrite: OverwriteState,
    /// The file opened a second time with `O_DSYNC`, for rounds that write this log alone
    /// (`LogConfig::dsync_lone_writes`); opened on first use, dropped (closed) when the segment
    /// stops being active.
    pub dsync_twin: Option<Rc<DmaFile>>,
}

/// Which blocks of a segment file are allocated, written and durable, so that a direct write
/// into them changes no filesystem metadata and needs only a device cache flush to be durable
/// (no journal commit). See `Log::zero_ahead` and the storage docs on durability rounds.
///
/// Invariant: the two ranges only ever describe blocks whose allocation has been made durable
/// (by an fdatasync of this file after they were written), and lie inside the file's size.
#[derive(Debug, Clone, Default)]
pub(crate) struct OverwriteState {
    /// Blocks below this file position are safe to overwrite.
    pub safe_end: u64,
    /// Blocks zeroed ahead of the writer and synced: also safe to overwrite.
    pub zeroed: std::ops::Range<u64>,
    /// The range a zeroing step is writing now; data writes into it wait for the zero writes
    /// (not for their fdatasync).
    pub zeroing: Option<std::ops::Range<u64>>,
    /// A zeroing step whose zero writes are done and whose fdatasync is not: data may be
    /// written there, but such writes still change metadata (their own fdatasync commits the
    /// allocation), and no further step starts until this one is synced.
    pub zero_syncing: Option<std::ops::Range<u64>>,
    /// Length of the next zeroing step (steps double, so a fast partition zeroes far ahead and
    /// an idle one holds little).
    pub next_step: u64,
}

impl OverwriteState {
    /// State of a segment whose first `durable_bytes` are written and synced.
    pub fn after(durable_bytes: u64) -> OverwriteState {
        OverwriteState {
            safe_end: crate::io::align_down(durable_bytes),
            ..OverwriteState::default()
        }
    }

    /// Whether a write of `[pos, end)` is an overwrite of safe blocks.
    pub fn is_overwrite(&self, pos: u64, end: u64) -> bool {
        end <= self.safe_end || (pos >= self.zeroed.start && end <= self.zeroed.end)
    }

    /// Whether a write of `[pos, end)` would race a zeroing write in flight.
    pub fn overlaps_zeroing(&self, pos: u64, end: u64) -> bool {
        self.zeroing
            .as_ref()
            .is_some_and(|z| pos < z.end && end > z.start)
    }

    /// Records that everything below `end` is now written and synced.
    pub fn synced_to(&mut self, end: u64) {
        self.safe_end = self.safe_end.max(end);
        self.merge();
    }

    /// Records a finished zeroing step.
    pub fn zeroed(&mut self, range: std::ops::Range<u64>) {
        if self.zeroed.end == range.start && !self.zeroed.is_empty() {
            self.zeroed.end = range.end;
        } else {
            self.zeroed = range;
        }
        self.merge();
    }

    fn merge(&mut self) {
        if !self.zeroed.is_empty() && self.safe_end >= self.zeroed.start {
            self.safe_end = self.safe_end.max(self.zeroed.end);
            self.zeroed = 0..0;
        }
    }

    /// Forgets everything at or above `end` (the file was cut there). A zeroing step still
    /// planned or syncing stays marked: its task clears the marks, and data writes keep
    /// waiting for its zero writes.
    pub fn cut(&mut self, end: u64) {
        let (zeroing, zero_syncing) = (self.zeroing.take(), self.zero_syncing.take());
        *self = OverwriteState::after(end.min(self.safe_end));
        (self.zeroing, self.zero_syncing) = (zeroing, zero_syncing);
    }
}

impl Segment {
    pub fn base_offset(&self) -> Offset {
        self.index.base_offset
    }
}

/// What a scan accepts between one batch and the next (see [`scan_segment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Continuity {
    Contiguous,
    Gaps,
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Reached the end of the file, or zero bytes where the next batch would start.
    CleanEnd,
    /// Found bytes that are not the next valid batch: the data ends before them.
    Damaged { position: u64, reason: String },
}

/// Scans a segment from `index.size_bytes` (the end of what `index` already covers), validating
/// each batch and recording it in `index`, until the file ends or a batch is invalid, torn, or
/// does not continue the offsets; or, with `stop_at`, until the batch that holds that offset.
/// `Continuity::Contiguous` wants each batch to start right after the previous one (the active
/// segment, which compaction never touches: a gap there is damage, e.g. a flipped bit in the
/// `baseOffset`, which the CRC does not cover); `Continuity::Gaps` accepts any rise (a sealed
/// segment, which compaction may have rewritten).
pub(crate) async fn scan_segment(
    file: &DmaFile,
    path: &std::path::Path,
    file_len: u64,
    index: &mut SegmentIndex,
    batch_bytes_max: usize,
    stop_at: Option<Offset>,
    continuity: Continuity,
) -> Result<ScanStop> {
    let window = SCAN_WINDOW_BYTES.max(batch_bytes_max);
    loop {
        let pos = index.size_bytes;
        if pos >= file_len {
            return Ok(ScanStop::CleanEnd);
        }
        let want = window.min((file_len - pos) as usize);
        let buf = io::read_at(file, path, pos, want).await?;
        let at_file_end = pos + buf.len() as u64 >= file_len;
        let mut used = 0usize;
        loop {
            let rest = &buf[used..];
            let here = pos + used as u64;
            if rest.is_empty() {
                break;
            }
            let damaged = |reason: String| ScanStop::Damaged {
                position: here,
                reason,
            };
            if rest.len() < BATCH_HEADER_BYTES && !at_file_end {
                break; // refill from here
            }
            let size = match peek_batch_size(rest, batch_bytes_max) {
                Ok(size) => size,
                Err(e) => {
                    let zeros = rest.iter().take(BATCH_HEADER_BYTES).all(|&b| b == 0);
                    return Ok(if zeros {
                        ScanStop::CleanEnd
                    } else {
                        damaged(e.to_string())
                    });
                }
            };
            if size > rest.len() {
                if at_file_end {
                    return Ok(damaged(format!(
                        "torn batch: {size} bytes declared, {} in file",
                        rest.len()
                    )));
                }
                break; // refill: the window always holds a whole batch
            }
            let info = match validate_batch(rest, batch_bytes_max) {
                Ok(info) => info,
                Err(e) => return Ok(damaged(e.to_string())),
            };
            let continues = match continuity {
                Continuity::Contiguous => info.base_offset == index.next_offset,
                Continuity::Gaps => info.base_offset >= index.next_offset,
            };
            if !continues {
                return Ok(damaged(format!(
                    "batch base offset {} does not continue the log at {}",
                    info.base_offset, index.next_offset
                )));
            }
            if stop_at.is_some_and(|stop| info.last_offset() >= stop) {
                return Ok(ScanStop::CleanEnd);
            }
            index.record(here, &info);
            used += size;
        }
        if used == 0 {
            // Not even one batch fitted although the window holds the largest allowed batch.
            return Ok(ScanStop::Damaged {
                position: pos,
                reason: "batch larger than the scan window".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LeaderEpoch;

    fn info(base: i64, size: usize, records: i32, max_ts: i64) -> BatchInfo {
        BatchInfo {
            base_offset: Offset(base),
            size_bytes: size,
            leader_epoch: LeaderEpoch(0),
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: max_ts,
            max_timestamp: max_ts,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count: records,
        }
    }

    /// Records 40 batches of varying size and timestamp; returns the index and the batches.
    fn sample() -> (SegmentIndex, Vec<(u64, BatchInfo)>) {
        let mut index = SegmentIndex::empty(Offset(100), 1000);
        let mut batches = Vec::new();
        let mut offset = 100;
        for i in 0..40i64 {
            let b = info(
                offset,
                300 + (i as usize * 37) % 500,
                1 + (i as i32 % 3),
                (i * 7) % 50,
            );
            batches.push((index.size_bytes, b));
            index.record(index.size_bytes, &b);
            offset = b.next_offset().0;
        }
        (index, batches)
    }

    #[test]
    fn a_prefix_rescanned_from_its_entry_rebuilds_the_same_index() {
        let (full, batches) = sample();
        for cut in [100, 101, 130, 150, 175, full.next_offset.0 - 1] {
            let mut rebuilt = full.prefix_before_entry_for(Offset(cut));
            let from = rebuilt.size_bytes;
            assert!(
                rebuilt.next_offset <= Offset(cut),
                "the prefix ends at or before the cut"
            );
            for (pos, b) in batches.iter().filter(|(pos, _)| *pos >= from) {
                rebuilt.record(*pos, b);
            }
            assert_eq!(rebuilt.entries, full.entries, "cut at {cut}");
            assert_eq!(
                (
                    rebuilt.size_bytes,
                    rebuilt.next_offset,
                    rebuilt.max_timestamp
                ),
                (full.size_bytes, full.next_offset, full.max_timestamp),
                "cut at {cut}"
            );
        }
    }
}
