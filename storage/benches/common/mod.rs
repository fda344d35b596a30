//! Shared by the storage benchmarks: where the logs live, the batches written, a config.
#![allow(dead_code)]

use std::path::PathBuf;

use sluice_storage::batch::build_batch;
use sluice_storage::LogConfig;

/// Benchmark logs live on the disk under test: `$SLUICE_BENCH_DIR`, or `target/bench-data`.
pub fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("SLUICE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// A batch of `records` records with 1 KiB values (the benchmarks' record size).
pub fn batch_of_1kib_records(records: usize) -> Vec<u8> {
    let value = vec![0x42u8; 1024];
    let keys: Vec<String> = (0..records).map(|i| format!("key-{i:08}")).collect();
    let recs: Vec<(i64, &[u8], &[u8])> = keys
        .iter()
        .map(|k| (1_700_000_000_000, k.as_bytes(), value.as_slice()))
        .collect();
    build_batch(1_700_000_000_000, &recs)
}

/// Records per batch so that a batch of 1 KiB records is about `batch_bytes` long.
pub fn records_for(batch_bytes: usize) -> usize {
    // Each record: 1024 value + 12 key + ~8 bytes of varints and attributes.
    (batch_bytes.saturating_sub(61) / 1044).max(1)
}

pub fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256 << 20,
        batch_bytes_max: 2 << 20,
        ..LogConfig::default()
    }
}
