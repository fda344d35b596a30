//! # sluice-core: everything above the log
//!
//! Topics, partitions on shards, and the semantics of produce, fetch and offsets. Protocol
//! codecs stay in `sluice-net`; this crate speaks in topics, partitions, offsets and Kafka
//! error codes.
//!
//! ## Layout
//! - [`topics`] — topic names, ids, partition counts and per-topic configs (Kafka's names),
//!   validated; the partition directory layout.
//! - [`catalog`] — the persisted topic table (`metadata.json`): one writer (the controller
//!   shard), immutable images read lock-free by every shard.
//! - [`shard`] — one executor's state: its partitions, its mesh links to the other shards
//!   (`invoke_on`), partition → shard ownership, retention.
//! - [`partition`] — a partition on its owner: the log, its producer state, and the fetches
//!   waiting on it.
//! - [`producers`] — idempotent-producer state: sequence and epoch checks, duplicates,
//!   snapshots.
//! - [`controller`] — create/delete topics, add partitions, auto-create, config changes.
//! - [`offsets_topic`] — the records of `__consumer_offsets` in Kafka's binary schemas.
//! - [`broker_configs`] — broker configs changeable at runtime, and the settings in force.
//! - [`metrics`] — the counters a shard bumps on the data path, the snapshot it publishes
//!   every second, and the node-wide hub the admin listener reads.
//! - [`log_dirs`] — the partitions stored here and their sizes (DescribeLogDirs).
//! - [`groups`] — the classic consumer-group coordinator and committed offsets, on the shard
//!   owning each group's `__consumer_offsets` partition.
//! - [`transactions`] — the transaction coordinator (KIP-98), on the shard owning each
//!   transactional id's `__transaction_state` partition; [`txn_log`] its records in Kafka's
//!   binary schemas.
//! - [`fetch_sessions`] — incremental fetch sessions (KIP-227), a bounded cache per shard.
//! - [`turn`] — a first-come-first-served ticket lock (the partition append order).
//! - [`produce`], [`fetch`], [`offsets`] — the data path: split a request by owning shard,
//!   run each part there, gather the answers in request order.
//!
//! Dependency direction: `net → core → replication → storage`.

pub mod acls;
pub mod audit;
pub mod broker_configs;
pub mod catalog;
pub mod changes;
pub mod cleaner;
pub mod client_telemetry;
pub mod cluster;
pub mod cluster_controller;
pub mod cluster_metadata;
pub mod controller;
pub mod fetch;
pub mod fetch_sessions;
pub mod groups;
pub mod log_dirs;
pub mod metrics;
pub mod offsets;
pub mod offsets_topic;
pub mod partition;
pub mod peer_calls;
pub mod produce;
pub mod producers;
pub mod quotas;
pub mod reassignment;
pub mod scram;
pub mod session_views;
pub mod shard;
pub mod topics;
pub mod transactions;
pub mod turn;
pub mod txn_log;

use std::sync::Arc;

pub use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::catalog::Image;
use crate::topics::Topic;

/// An error for one item of a request: the Kafka error code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ResponseError,
    pub message: String,
}

/// How a request names a topic: by name, or by id (newer API versions).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

/// The topic a request names, if it exists.
pub fn resolve_topic<'a>(image: &'a Image, topic: &TopicRef) -> Option<&'a Arc<Topic>> {
    match topic {
        TopicRef::Name(name) => image.topic(name),
        TopicRef::Id(id) => image.topic_by_id(*id),
    }
}
