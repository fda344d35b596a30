//! # sluice-core: everything above the log
//!
//! Will hold the partition manager, shard routing, topic metadata, produce/fetch semantics
//! (acks 0/1/all, long-poll fetch), the consumer-group coordinator, idempotent producers,
//! transactions and share groups (see `../shared/design.md`, "Above the log", and issue
//! "A single-node Kafka-compatible broker").
//!
//! Nothing is built here yet. Dependency direction: `net → core → replication → storage`;
//! this crate may use `sluice-storage` and `sluice-replication`, never the reverse.
