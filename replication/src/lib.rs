//! # sluice-replication: Raft per partition, and the controller group
//!
//! Will hold a pure Raft state machine per partition (no I/O, time in ticks), driven by the
//! shard's loop, reaching storage and network only through traits; the partition log is the
//! Raft log, with the term stamped as each batch's `partitionLeaderEpoch`. Nothing is built here
//! yet: the single-node broker comes first.
