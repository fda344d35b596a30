//! # sluice-replication: Raft per partition, and the controller group
//!
//! A pure Raft state machine per partition (no I/O, time in ticks), driven by the shard's loop,
//! reaching storage and network only through what the owner does with a [`Progress`]. The
//! consensus is raft-rs (TiKV's); this crate is the contract around it ([`replica`]), the
//! partition log as the Raft log ([`partition`]), the per-executor hard-state log
//! ([`hard_state_log`]), broker-to-broker frames ([`rpc`]) and connections ([`transport`]),
//! and one node's groups driven together ([`node`]). `tests/simulation.rs` checks the contract
//! by deterministic simulation: replicas over a seeded network and disk that drop, delay,
//! reorder, partition and crash.
//!
//! The broker drives it in cluster mode (`core/src/cluster.rs`; see docs/ARCHITECTURE.md,
//! "Replication").

pub mod error;
pub mod hard_state_log;
pub mod node;
pub mod partition;
pub mod replica;
pub mod rpc;
pub mod throttle;
pub mod transport;

pub use error::{ReplicationError, Result};
pub use node::PeerEvent;
pub use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState, Message, MessageType,
};
pub use raft::storage::MemStorage;
pub use replica::{PersistJob, Progress, Replica, ReplicaConfig, ReplicaStorage, Role};

/// A logger that drops raft-rs's log lines (it logs through slog; Sluice logs through tracing).
pub fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}
