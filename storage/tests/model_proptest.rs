//! Random sequences of append / read / truncate / truncate_prefix / roll / sync / close+reopen,
//! run against the real log and against a plain in-memory model; every read must agree.
//!
//! The model is the specification in a few lines: a list of stamped batches, a log start offset,
//! Kafka's "whole batch holding the offset, at least one batch, then up to max_bytes" read rule.

mod common;

use common::{batch, run, split_batches, stamped};
use proptest::prelude::*;
use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset, StorageError};

#[derive(Debug, Clone)]
enum Op {
    /// Append batches with (records, value bytes) each.
    Append(Vec<(usize, usize)>),
    /// Read from a position chosen relative to the log's range (per mille), with a byte limit.
    Read(u16, usize),
    Truncate(u16),
    TruncatePrefix(u16),
    Roll,
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((1usize..6, 0usize..1500), 1..4).prop_map(Op::Append),
        5 => (0u16..1100, 1usize..8000).prop_map(|(p, m)| Op::Read(p, m)),
        1 => (0u16..1100).prop_map(Op::Truncate),
        1 => (0u16..1100).prop_map(Op::TruncatePrefix),
        1 => Just(Op::Roll),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    batches: Vec<(Offset, Vec<u8>, i64)>, // base, stored bytes, record count
    start: Offset,
    end: Offset,
}

impl Model {
    fn pick(&self, per_mille: u16) -> Offset {
        // Spread over [start - 2, end + 2] so out-of-range offsets are exercised too.
        let lo = self.start.0 - 2;
        let span = self.end.0 + 2 - lo;
        Offset(lo + span * i64::from(per_mille) / 1000)
    }

    fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<(Offset, Vec<u8>)>, ()> {
        if from < self.start || from > self.end {
            return Err(());
        }
        let mut out = Vec::new();
        let mut total = 0;
        for (base, bytes, count) in &self.batches {
            if base.0 + count - 1 < from.0 {
                continue;
            }
            if !out.is_empty() && total + bytes.len() > max_bytes {
                break;
            }
            total += bytes.len();
            out.push((*base, bytes.clone()));
        }
        Ok(out)
    }

    fn truncate(&mut self, offset: Offset) {
        if offset >= self.end {
            return;
        }
        self.batches
            .retain(|(base, _, count)| base.0 + count - 1 < offset.0);
        // The log starts at offset 0, so an emptied model ends at 0 as well.
        self.end = self
            .batches
            .last()
            .map_or(Offset(0), |(b, _, c)| b.plus(*c));
        self.start = self.start.min(self.end);
    }
}

/// Small segments; the index interval varies, so reads both land on index entries and skip
/// over many batches from a distant one.
fn config(index_interval_bytes: u32) -> LogConfig {
    LogConfig {
        segment_bytes_max: 8 * 1024,
        index_interval_bytes,
        write_chunk_bytes: 8 * 1024,
        unwritten_bytes_max: 16 * 1024,
        writes_in_flight_max: 3,
        preallocate_bytes: 16 * 1024,
        batch_bytes_max: 8 * 1024,
        ..LogConfig::default()
    }
}

async fn check_ops(
    path: std::path::PathBuf,
    ops: Vec<Op>,
    index_interval: u32,
) -> Result<(), String> {
    let config = || config(index_interval);
    let mut log = Log::open(&path, config())
        .await
        .map_err(|e| e.to_string())?;
    let mut model = Model::default();
    let mut seed = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = |what: &str| format!("step {step} {op:?}: {what}");
        match &op {
            Op::Append(specs) => {
                let mut buf = Vec::new();
                let mut pieces = Vec::new();
                for (records, value_bytes) in specs {
                    seed += 1;
                    let b = batch(seed, *records, *value_bytes, seed as i64);
                    buf.extend_from_slice(&b);
                    pieces.push((b, *records as i64));
                }
                let a = log
                    .append(&buf, LeaderEpoch(2))
                    .await
                    .map_err(|e| ctx(&e.to_string()))?;
                if a.base_offset != model.end {
                    return Err(ctx(&format!(
                        "appended at {} but model end is {}",
                        a.base_offset, model.end
                    )));
                }
                for (b, count) in pieces {
                    let base = model.end;
                    model.batches.push((base, stamped(b, base, 2), count));
                    model.end = base.plus(count);
                }
            }
            Op::Read(p, max) => {
                let from = model.pick(*p);
                let got = log.read(from, *max).await;
                match (model.read(from, *max), got) {
                    (Ok(expected), Ok(r)) => {
                        let got = split_batches(&r.bytes);
                        if got != expected {
                            return Err(ctx(&format!(
                                "read {from}: got {:?}, model {:?}",
                                got.iter().map(|b| b.0).collect::<Vec<_>>(),
                                expected.iter().map(|b| b.0).collect::<Vec<_>>()
                            )));
                        }
                    }
                    (Err(()), Err(StorageError::OffsetOutOfRange { .. })) => {}
                    (m, g) => {
                        return Err(ctx(&format!(
                            "read {from}: model {:?} vs log {:?}",
                            m.is_ok(),
                            g.map(|_| ())
                        )))
                    }
                }
            }
            Op::Truncate(p) => {
                let offset = model.pick(*p);
                let got = log.truncate(offset).await;
                if offset < model.start {
                    if !matches!(got, Err(StorageError::OffsetOutOfRange { .. })) {
                        return Err(ctx("truncate below start accepted"));
                    }
                } else {
                    let end = got.map_err(|e| ctx(&e.to_string()))?;
                    model.truncate(offset);
                    if end != model.end {
                        return Err(ctx(&format!("truncate end {end} vs model {}", model.end)));
                    }
                }
            }
            Op::TruncatePrefix(p) => {
                let offset = model.pick(*p);
                let got = log.truncate_prefix(offset).await;
                if offset > model.end {
                    if !matches!(got, Err(StorageError::OffsetOutOfRange { .. })) {
                        return Err(ctx("prefix past end accepted"));
                    }
                } else {
                    got.map_err(|e| ctx(&e.to_string()))?;
                    model.start = model.start.max(offset);
                }
            }
            Op::Roll => log.roll().await.map_err(|e| ctx(&e.to_string()))?,
            Op::Sync => {
                let durable = log.sync().await.map_err(|e| ctx(&e.to_string()))?;
                if durable != model.end && model.end > Offset(0) {
                    return Err(ctx(&format!(
                        "durable {durable} after sync, end {}",
                        model.end
                    )));
                }
            }
            Op::Reopen => {
                log.close().await.map_err(|e| ctx(&e.to_string()))?;
                log = Log::open(&path, config())
                    .await
                    .map_err(|e| ctx(&e.to_string()))?;
            }
        }
        if log.log_end_offset() != model.end || log.log_start_offset() != model.start {
            return Err(ctx(&format!(
                "log [{}, {}) vs model [{}, {})",
                log.log_start_offset(),
                log.log_end_offset(),
                model.start,
                model.end
            )));
        }
    }
    // A final full read after a reopen agrees too.
    log.close().await.map_err(|e| e.to_string())?;
    let log = Log::open(&path, config())
        .await
        .map_err(|e| e.to_string())?;
    let got = common::read_all(&log).await;
    let expected = model.read(model.start, usize::MAX).unwrap_or_default();
    if got != expected {
        return Err("final read after reopen differs from the model".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_agrees_with_the_model(
        ops in prop::collection::vec(op(), 1..60),
        index_interval in prop_oneof![Just(512u32), Just(4096), Just(1 << 20)],
    ) {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().to_path_buf();
        let outcome = run(move || check_ops(path, ops, index_interval));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
