//! Append throughput without fsync: 1 KiB records in 16 KiB, 64 KiB and 1 MiB batches. Each
//! sample appends `iters` batches and then flushes, so the time covers getting the bytes into
//! the file (write-behind through O_DIRECT), not just into memory. Compare with
//! `bench-harness/fio/device-limits.sh` (seqwrite-<size>-qd1/qd4), see docs/benchmarks.md.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::LocalExecutorBuilder;
use sluice_storage::{LeaderEpoch, Log};

fn append_no_fsync(c: &mut Criterion) {
    let ex = LocalExecutorBuilder::default().make().expect("executor");
    let mut group = c.benchmark_group("append_no_fsync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    for (label, batch_bytes) in [("16KiB", 16 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let batch = common::batch_of_1kib_records(common::records_for(batch_bytes));
        let dir = common::bench_dir();
        let log = ex
            .run(Log::open(dir.path(), common::config()))
            .expect("open");
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| {
                ex.run(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        log.append(&batch, LeaderEpoch(0)).await.expect("append");
                    }
                    log.flush().await.expect("flush");
                    let elapsed = start.elapsed();
                    // Reclaim the space between samples (whole sealed segments are deleted).
                    log.truncate_prefix(log.log_end_offset())
                        .await
                        .expect("truncate_prefix");
                    elapsed
                })
            })
        });
        ex.run(log.close()).expect("close");
    }
    group.finish();
}

criterion_group!(benches, append_no_fsync);
criterion_main!(benches);
