//! Rewriting sealed segments (log compaction): what a caller decides per batch, the writer of a
//! replacement segment, the I/O budget that paces the work, and the crash-safe swap.
//!
//! The swap protocol (the files are named in `format`):
//! 1. the replacement is written to `<first>.cleaned` and its index to `<first>.index.cleaned`,
//!    both fdatasync'ed;
//! 2. the replacement is renamed to `<first>-<end>.swap` and the directory synced: the commit
//!    point;
//! 3. under the log's io lock, without awaiting anything (the shard's durability rounds wait
//!    for that lock): the replaced segments (bases in `[first, end)`) and their indexes are
//!    deleted, the index renamed over `<first>.index`, the swap file renamed to `<first>.log`,
//!    the log's segment list changed; then, outside the lock, the directory synced.
//!
//! A crash before 2 leaves `.cleaned` files, which [`finish_interrupted_swaps`] deletes (the old
//! segments stand); a crash after 2 leaves a `.swap` file, which it completes (step 3, with
//! `first`'s index deleted and rebuilt by a scan at open). Either way every offset is served
//! from exactly one file, so a reader never sees a record twice.

use std::path::Path;
use std::time::{Duration, Instant};

use glommio::io::DmaFile;
use tracing::info;

use crate::batch::BatchInfo;
use crate::error::{Result, StorageError};
use crate::format;
use crate::io::{self, align_up, DIRECT_IO_ALIGNMENT};
use crate::segment::SegmentIndex;
use crate::types::Offset;

/// What becomes of one batch of a segment being rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchFate {
    /// Copied unchanged.
    Keep,
    /// Left out: its offsets become a gap.
    Drop,
    /// Replaced by these bytes: one valid batch within the original's offset range (fewer
    /// records, see `batch::rebuild_batch`).
    Replace(Vec<u8>),
}

/// What one rewrite did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewriteOutcome {
    pub segments_replaced: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Paces background I/O to at most `bytes_per_second` (none: unpaced) by sleeping once it runs
/// ahead, so compaction shares the disk with the produce path instead of taking it.
#[derive(Debug)]
pub struct IoBudget {
    bytes_per_second: Option<u64>,
    started: Instant,
    spent: u64,
}

impl IoBudget {
    pub fn new(bytes_per_second: Option<u64>) -> IoBudget {
        IoBudget {
            bytes_per_second: bytes_per_second.filter(|b| *b > 0),
            started: Instant::now(),
            spent: 0,
        }
    }

    /// Counts `bytes` of I/O and waits until the budget allows them. Either way it hands the
    /// core back (`yield_task_queue_now`): glommio's `yield_if_needed` would only preempt after
    /// the executor's time slice (100 ms without a latency-sensitive queue), and requests must
    /// not wait that long behind compaction.
    pub async fn spend(&mut self, bytes: u64) {
        self.spent += bytes;
        let Some(rate) = self.bytes_per_second else {
            glommio::executor().yield_task_queue_now().await;
            return;
        };
        let due = Duration::from_secs_f64(self.spent as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            glommio::timer::sleep(due - elapsed).await;
        } else {
            glommio::executor().yield_task_queue_now().await;
        }
    }
}

/// Bytes the writer gathers before writing them out.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Writes a replacement segment with direct I/O, in aligned chunks, indexing each batch.
pub(crate) struct SegmentWriter {
    pub file: DmaFile,
    pub path: std::path::PathBuf,
    pub index: SegmentIndex,
    /// Bytes not yet written, starting at file position `pending_pos` (aligned).
    pending: Vec<u8>,
    pending_pos: u64,
}

impl SegmentWriter {
    /// Creates (replacing any debris) `<first>.cleaned` in `dir`.
    pub async fn create(dir: &Path, first: Offset, index_interval_bytes: u32) -> Result<Self> {
        let path = dir.join(format::cleaned_file_name(first));
        io::remove_file_if_exists(&path)?;
        let file = io::open_segment(&path, true).await?;
        Ok(SegmentWriter {
            file,
            path,
            index: SegmentIndex::empty(first, index_interval_bytes),
            pending: Vec::with_capacity(WRITE_CHUNK_BYTES + DIRECT_IO_ALIGNMENT),
            pending_pos: 0,
        })
    }

    /// Appends one batch (already validated, `info` its header).
    pub async fn push(&mut self, batch: &[u8], info: &BatchInfo) -> Result<()> {
        let position = self.index.size_bytes;
        self.index.record(position, info);
        self.pending.extend_from_slice(batch);
        if self.pending.len() >= WRITE_CHUNK_BYTES {
            let whole = self.pending.len() / DIRECT_IO_ALIGNMENT * DIRECT_IO_ALIGNMENT;
            self.write(whole).await?;
        }
        Ok(())
    }

    /// Writes the first `len` pending bytes (`len` aligned, or everything padded with zeros).
    async fn write(&mut self, len: usize) -> Result<()> {
        let padded = align_up(len as u64) as usize;
        let mut buf = self.file.alloc_dma_buffer(padded);
        let bytes = buf.as_bytes_mut();
        bytes[..len].copy_from_slice(&self.pending[..len]);
        bytes[len..].fill(0);
        let written = self
            .file
            .write_at(buf, self.pending_pos)
            .await
            .map_err(|e| StorageError::io(self.path.display(), e))?;
        if written != padded {
            return Err(StorageError::io(
                self.path.display(),
                std::io::Error::new(std::io::ErrorKind::WriteZero, "short write"),
            ));
        }
        self.pending.drain(..len);
        self.pending_pos += len as u64;
        Ok(())
    }

    /// Writes what is left, trims the file to its data, makes it durable, and covers offsets
    /// up to `end`. Returns the file and its index.
    pub async fn finish(
        mut self,
        end: Offset,
    ) -> Result<(DmaFile, std::path::PathBuf, SegmentIndex)> {
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.write(len).await?;
        }
        let io_err = |path: &Path| {
            let p = path.display().to_string();
            move |e| StorageError::io(p, e)
        };
        self.file
            .truncate(self.index.size_bytes)
            .await
            .map_err(io_err(&self.path))?;
        self.file.fdatasync().await.map_err(io_err(&self.path))?;
        self.index.extend_to(end);
        Ok((self.file, self.path, self.index))
    }
}

/// Finishes what a crash interrupted (see the module docs): deletes `.cleaned` files, and
/// completes each `.swap`. Runs at open, before the segments are listed.
pub(crate) async fn finish_interrupted_swaps(dir: &Path) -> Result<()> {
    let mut swaps = Vec::new();
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io(dir.display(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(format::CLEANED_SUFFIX) {
            info!(file = %name, "removing an unfinished compacted segment");
            io::remove_file_if_exists(&entry.path())?;
        } else if let Some(range) = format::parse_swap_file_name(&name) {
            swaps.push((range, name));
        } else if let Some(base) = format::parse_segment_file_name(&name) {
            segments.push(base);
        }
    }
    if swaps.is_empty() {
        return Ok(());
    }
    for ((first, end), name) in swaps {
        for base in segments.iter().filter(|b| **b > first && **b < end) {
            io::remove_file_if_exists(&dir.join(format::segment_file_name(*base)))?;
            io::remove_file_if_exists(&dir.join(format::index_file_name(*base)))?;
        }
        io::remove_file_if_exists(&dir.join(format::index_file_name(first)))?;
        std::fs::rename(dir.join(&name), dir.join(format::segment_file_name(first)))
            .map_err(|e| StorageError::io(dir.join(&name).display(), e))?;
        info!(file = %name, %first, %end, "finished an interrupted compaction swap");
    }
    io::sync_dir(dir).await
}
