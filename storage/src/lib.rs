//! # sluice-storage: the partition log
//!
//! A partition's log is a directory of segments holding Kafka RecordBatch v2 batches exactly as
//! producers sent them (after validation, with `baseOffset` and `partitionLeaderEpoch` stamped).
//! Writes are direct I/O through io_uring (glommio `DmaFile`) from 4 KiB-aligned chunk buffers;
//! durability is an fdatasync shared by every waiter of a group-commit round, and with a
//! [`SyncGroup`] by every log of a shard.
//!
//! ## Layout
//! - [`types`] — `Offset`, `LeaderEpoch`, timestamps.
//! - [`batch`] — the RecordBatch v2 header, validation (length, magic, CRC-32C, record count) and
//!   the stamping of broker-owned fields.
//! - [`format`] — file names, the index and checkpoint file layouts (see `docs/on-disk-format.md`).
//! - [`config`] — `LogConfig` and its validation.
//! - [`io`] — the thin layer over glommio's file API, including the IOPOLL probe work-around.
//! - `tail` — the active segment's write buffer of DMA chunks.
//! - `segment` — a segment, its sparse index, and the recovery scanner.
//! - [`log`] — `Log`, the public API: append, read, wait_durable, truncate, truncate_prefix,
//!   roll, retention, timestamp lookup.
//! - [`sync_group`] — `SyncGroup`: one durability round for every log of a shard.
//! - [`budget`] — `WriteBudget`: the write-buffer memory of a shard's logs, and back-pressure.
//! - [`metrics`] — fixed-bucket latency histograms and this thread's fdatasync latencies.
//! - [`error`] — `StorageError`.
//!
//! Everything here runs on one glommio executor thread per log (`Log` is `!Send`).

pub mod batch;
pub mod budget;
pub mod config;
pub mod error;
pub mod faults;
pub mod format;
pub mod io;
pub mod log;
pub mod metrics;
pub mod rewrite;
mod segment;
pub mod sync_group;
mod tail;
pub mod types;

pub use batch::{BatchError, BatchInfo};
pub use budget::{WriteBudget, WriteBudgetStats};
pub use config::LogConfig;
pub use error::{Result, StorageError};
pub use log::{AppendInfo, Log, ReadBatches, RetentionOutcome};
pub use sync_group::{FlushMode, SyncGroup, SyncGroupStats};
pub use types::{LeaderEpoch, Offset, TimestampMs};
