//! Errors of the replication layer.

/// What can go wrong driving a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A proposal reached a replica that does not lead; `leader` is the one it knows (0: none).
    #[error("not the leader (leader known: {leader})")]
    NotLeader { leader: u64 },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// An entry that is not whole record batches, or does not fit the log.
    #[error("raft entry {index}: {reason}")]
    BadEntry { index: u64, reason: String },
    /// A `raft-state` file that cannot be read back: the replica does not start.
    #[error("{path}: {reason}")]
    BadState {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A batch read back from a partition log that does not parse (the log's own recovery
    /// should have cut it).
    #[error("partition log at offset {offset}: {reason}")]
    CorruptLog { offset: i64, reason: String },
    #[error("partition log: {0}")]
    Storage(#[from] sluice_storage::StorageError),
}

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;
