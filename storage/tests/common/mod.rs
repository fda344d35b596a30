//! Helpers shared by the storage integration tests: run a future on a fresh glommio executor,
//! build deterministic batches, and small configs that make rolls and index entries frequent.
#![allow(dead_code)]

use std::future::Future;

use glommio::LocalExecutorBuilder;
use sluice_storage::batch::{build_batch, validate_batch};
use sluice_storage::{LogConfig, Offset};

/// Runs `f` to completion on a new glommio executor thread and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("executor thread finished")
}

/// A config with small segments and dense index entries, so tests cross many boundaries.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 1024,
        write_chunk_bytes: 16 * 1024,
        unwritten_bytes_max: 64 * 1024,
        preallocate_bytes: 128 * 1024,
        batch_bytes_max: 32 * 1024,
        ..LogConfig::default()
    }
}

/// A deterministic batch of `records` records whose contents depend on `seed`.
pub fn batch(seed: u64, records: usize, value_bytes: usize, timestamp: i64) -> Vec<u8> {
    let keys: Vec<Vec<u8>> = (0..records)
        .map(|i| format!("key-{seed}-{i}").into_bytes())
        .collect();
    let values: Vec<Vec<u8>> = (0..records)
        .map(|i| {
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i as u64 + 1);
            (0..value_bytes)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect();
    let recs: Vec<(i64, &[u8], &[u8])> = (0..records)
        .map(|i| {
            (
                timestamp + i as i64,
                keys[i].as_slice(),
                values[i].as_slice(),
            )
        })
        .collect();
    build_batch(timestamp, &recs)
}

/// Splits a read result into `(base_offset, batch bytes)` pairs, checking each batch.
pub fn split_batches(bytes: &[u8]) -> Vec<(Offset, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let info = validate_batch(rest, usize::MAX).expect("read returns valid batches");
        out.push((info.base_offset, rest[..info.size_bytes].to_vec()));
        rest = &rest[info.size_bytes..];
    }
    out
}

/// `batch` as the log stores it: with base offset and leader epoch stamped.
pub fn stamped(mut b: Vec<u8>, base: Offset, epoch: i32) -> Vec<u8> {
    b[..8].copy_from_slice(&base.0.to_be_bytes());
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b
}

/// Reads the whole log from its start, returning every batch.
pub async fn read_all(log: &sluice_storage::Log) -> Vec<(Offset, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = log.log_start_offset();
    while from < log.log_end_offset() {
        let r = log.read(from, 64 * 1024).await.expect("read");
        assert!(r.next_offset > from, "read made progress");
        out.extend(split_batches(&r.bytes));
        from = r.next_offset;
    }
    out
}
