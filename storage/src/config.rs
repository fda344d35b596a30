//! Per-log settings, with Kafka's topic-config names beside each field, and their validation.
//! An invalid value is refused when the log is opened, naming the field.

use crate::error::{Result, StorageError};
use crate::io::DIRECT_IO_ALIGNMENT;

/// Largest segment the index can address: positions are stored as u32.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment before one grows past this.
    pub segment_bytes_max: u64,
    /// `segment.ms`: roll a segment this long after its first append.
    pub segment_ms_max: Option<u64>,
    /// `retention.bytes`: delete the oldest sealed segments while the log is bigger than this.
    pub retention_bytes: Option<u64>,
    /// `retention.ms`: delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// `segment.index.bytes`'s cousin `index.interval.bytes`: one sparse-index entry per this many
    /// bytes of batches.
    pub index_interval_bytes: u32,
    /// `max.message.bytes`: the largest single batch accepted.
    pub batch_bytes_max: u32,
    /// Size of the DMA buffers appends are copied into. A multiple of 4 KiB.
    pub write_chunk_bytes: usize,
    /// Buffered but unwritten bytes beyond which appends wait for writes to complete
    /// (back-pressure; bounds the memory of a log's write tail). At least two chunks.
    pub unwritten_bytes_max: usize,
    /// Full chunks written concurrently (the I/O queue depth of streamed writes).
    pub writes_in_flight_max: usize,
    /// Space reserved ahead of the write position with fallocate, so writes do not wait on block
    /// allocation, at most (the steps start at 64 KiB and double up to this). A multiple of
    /// 4 KiB; 0 disables.
    pub preallocate_bytes: u64,
    /// Durable bytes of the active segment between checkpoints of its index: after a crash,
    /// a restart scans at most about this much of it (after a clean close, none).
    pub active_index_checkpoint_bytes: u64,
    /// Zero the active segment's reserved space ahead of the writer, in the background, so
    /// durable appends overwrite written blocks and their fdatasync commits no journal (only
    /// with `preallocate_bytes` > 0).
    pub zero_ahead: bool,
    /// A durability round that writes this log alone, as one overwrite of safe blocks (no
    /// other write in flight, no metadata to sync), writes it through an `O_DSYNC` descriptor
    /// of the segment: durable when the write completes, with no fdatasync after it (one
    /// system call and one wake-up less on the acks=all path of a lone partition).
    pub dsync_lone_writes: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 32 * 1024,
            batch_bytes_max: 1024 * 1024 + 12,
            write_chunk_bytes: 256 * 1024,
            unwritten_bytes_max: 8 * 1024 * 1024,
            writes_in_flight_max: 8,
            preallocate_bytes: 64 * 1024 * 1024,
            active_index_checkpoint_bytes: 64 * 1024 * 1024,
            zero_ahead: true,
            dsync_lone_writes: true,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> StorageError {
    StorageError::Config {
        field,
        reason: reason.into(),
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes_max < 4096 || self.segment_bytes_max > SEGMENT_BYTES_LIMIT {
            return Err(invalid(
                "segment_bytes_max",
                format!(
                    "{} is outside [4096, {SEGMENT_BYTES_LIMIT}]",
                    self.segment_bytes_max
                ),
            ));
        }
        if self.segment_ms_max == Some(0) {
            return Err(invalid("segment_ms_max", "must be positive"));
        }
        if self.index_interval_bytes == 0 {
            return Err(invalid("index_interval_bytes", "must be positive"));
        }
        if (self.batch_bytes_max as u64) < 61
            || u64::from(self.batch_bytes_max) > self.segment_bytes_max
        {
            return Err(invalid(
                "batch_bytes_max",
                format!(
                    "{} must be at least 61 and at most segment_bytes_max",
                    self.batch_bytes_max
                ),
            ));
        }
        if self.write_chunk_bytes == 0
            || !self.write_chunk_bytes.is_multiple_of(DIRECT_IO_ALIGNMENT)
        {
            return Err(invalid(
                "write_chunk_bytes",
                format!(
                    "{} is not a positive multiple of {DIRECT_IO_ALIGNMENT}",
                    self.write_chunk_bytes
                ),
            ));
        }
        if self.unwritten_bytes_max < 2 * self.write_chunk_bytes {
            return Err(invalid(
                "unwritten_bytes_max",
                format!(
                    "{} is less than two write chunks ({})",
                    self.unwritten_bytes_max,
                    2 * self.write_chunk_bytes
                ),
            ));
        }
        if self.writes_in_flight_max == 0 {
            return Err(invalid("writes_in_flight_max", "must be positive"));
        }
        if !self
            .preallocate_bytes
            .is_multiple_of(DIRECT_IO_ALIGNMENT as u64)
        {
            return Err(invalid(
                "preallocate_bytes",
                format!(
                    "{} is not a multiple of {DIRECT_IO_ALIGNMENT}",
                    self.preallocate_bytes
                ),
            ));
        }
        Ok(())
    }
}
