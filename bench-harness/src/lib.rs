//! # sluice-bench-harness: side-by-side load runs
//!
//! Will hold the OpenMessaging-Benchmark-style workload runner behind `sluice bench`
//! (issue "bench-harness"). Today the storage micro-benchmarks live in `storage/benches/`, and
//! the device-limit measurements are `bench-harness/fio/*.sh`.
