//! # sluice-chaos: fault injection against real broker processes
//!
//! Will start real brokers, run a workload that logs every operation, inject SIGKILL/SIGSTOP,
//! network partitions (nftables), delay, disk errors, and check the history. The storage crate's
//! SIGKILL recovery test (`storage/tests/crash_kill.rs`) is the single-process seed of this.
//! Nothing is built here yet.
