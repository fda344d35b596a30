//! Sequential read throughput from disk: a log of 64 KiB batches (1 KiB records) is written,
//! closed and reopened (so nothing is served from the write tail), then read front to back
//! with 1 MiB reads, wrapping around. O_DIRECT reads bypass the page cache, so this measures the
//! device path. Compare with fio's seqread-1m.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::LocalExecutorBuilder;
use sluice_storage::{LeaderEpoch, Log, Offset};

const LOG_BYTES: usize = 512 << 20;
const READ_BYTES: usize = 1 << 20;

fn sequential_read(c: &mut Criterion) {
    let ex = LocalExecutorBuilder::default().make().expect("executor");
    let dir = common::bench_dir();
    let batch = common::batch_of_1kib_records(common::records_for(64 << 10));
    ex.run(async {
        let log = Log::open(dir.path(), common::config()).await.expect("open");
        for _ in 0..LOG_BYTES / batch.len() {
            log.append(&batch, LeaderEpoch(0)).await.expect("append");
        }
        log.close().await.expect("close");
    });
    let log = ex
        .run(Log::open(dir.path(), common::config()))
        .expect("reopen");
    let per_read = (READ_BYTES / batch.len()) * batch.len();
    let mut group = c.benchmark_group("sequential_read");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Bytes(per_read as u64));
    let mut from = Offset(0);
    group.bench_function("1MiB_reads_of_64KiB_batches", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let start = Instant::now();
                for _ in 0..iters {
                    if from >= log.log_end_offset() {
                        from = Offset(0);
                    }
                    let r = log.read(from, READ_BYTES).await.expect("read");
                    from = r.next_offset;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    ex.run(log.close()).expect("close");
}

criterion_group!(benches, sequential_read);
criterion_main!(benches);
