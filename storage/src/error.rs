//! The storage crate's error type. Expected failures (bad input, offsets out of range, I/O errors)
//! are values; a broken internal invariant panics instead.

use crate::batch::BatchError;
use crate::types::Offset;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An appended buffer held a malformed batch; nothing of that append was written.
    #[error("invalid record batch at byte {position} of the append: {source}")]
    InvalidBatch {
        position: usize,
        #[source]
        source: BatchError,
    },
    #[error("append is empty")]
    EmptyAppend,
    #[error("offset {requested} is out of range: log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    /// A stored batch failed validation when read back: the bytes on the media changed.
    #[error("corrupt batch in segment {segment} at byte {position}: {source}")]
    Corrupt {
        segment: Offset,
        position: u64,
        #[source]
        source: BatchError,
    },
    #[error("invalid log config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// A write or fdatasync failed earlier. After a failed fdatasync the page state is unknown
    /// (the kernel may have dropped the dirty pages), so the log refuses all further work until it
    /// is reopened and recovered from what is really on disk.
    #[error("log is failed after an earlier I/O error ({0}); reopen it to recover")]
    Poisoned(String),
    /// The disk refused a write of buffered records for lack of space (ENOSPC, EDQUOT): they
    /// stay buffered (and readable) and are written again once space comes back; until then
    /// the log refuses appends. Nothing is poisoned: what is on disk is known.
    #[error("the disk has no room for this log's buffered records ({0}); they are retried, and appends are refused until space comes back")]
    NoSpace(String),
    #[error("log is closed")]
    Closed,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn io(path: impl std::fmt::Display, source: impl Into<std::io::Error>) -> Self {
        StorageError::Io {
            path: path.to_string(),
            source: source.into(),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
