//! Durable append latency: 1, 4 and 16 concurrent appenders, each appending one batch of one
//! 1 KiB record and waiting for it to be fdatasync'ed (group commit shares the rounds).
//! Criterion reports time per durable append (the inverse of durable throughput); the latency
//! percentiles of individual appends (P50/P99/P99.9, HDR histogram over all samples) are printed
//! at the end of each case as a `LATENCY` line. Compare with fio's 4 KiB write+fdatasync.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use glommio::LocalExecutorBuilder;
use hdrhistogram::Histogram;
use sluice_storage::{LeaderEpoch, Log};

fn durable_append(c: &mut Criterion) {
    let ex = LocalExecutorBuilder::default().make().expect("executor");
    let mut group = c.benchmark_group("durable_append_1KiB");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    let batch = Rc::new(common::batch_of_1kib_records(1));
    for appenders in [1u64, 4, 16] {
        let dir = common::bench_dir();
        let log = ex
            .run(Log::open(dir.path(), common::config()))
            .expect("open");
        let histogram = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
        ));
        let rounds_before = log.sync_rounds();
        let mut appends_total = 0u64;
        group.bench_function(BenchmarkId::new("appenders", appenders), |b| {
            b.iter_custom(|iters| {
                appends_total += iters;
                ex.run(async {
                    let start = Instant::now();
                    let per_task = iters.div_ceil(appenders);
                    let tasks: Vec<_> = (0..appenders)
                        .map(|t| {
                            let log = log.clone();
                            let batch = batch.clone();
                            let histogram = histogram.clone();
                            let n = per_task.min(iters.saturating_sub(t * per_task));
                            glommio::spawn_local(async move {
                                for _ in 0..n {
                                    let t0 = Instant::now();
                                    log.append_durable(&batch, LeaderEpoch(0))
                                        .await
                                        .expect("append");
                                    let micros = t0.elapsed().as_micros() as u64;
                                    histogram.borrow_mut().record(micros.max(1)).unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await;
                    }
                    start.elapsed()
                })
            })
        });
        let h = histogram.borrow();
        println!(
            "LATENCY durable_append_1KiB appenders={appenders}: n={} p50={}us p99={}us p99.9={}us max={}us; \
             fdatasync rounds={} ({:.2} appends per round)",
            h.len(),
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            log.sync_rounds() - rounds_before,
            appends_total as f64 / (log.sync_rounds() - rounds_before).max(1) as f64,
        );
        ex.run(log.close()).expect("close");
    }
    group.finish();
}

criterion_group!(benches, durable_append);
criterion_main!(benches);
