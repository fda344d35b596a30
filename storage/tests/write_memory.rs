//! Write-tail memory: a slow log holds one small chunk, a fast one grows its chunks, and an
//! idle one parks (gives its buffers back) without losing a byte of what it holds or what
//! comes after.

mod common;

use std::time::Duration;

use common::{batch, read_all, run, stamped};
use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset, WriteBudget};

const EPOCH: LeaderEpoch = LeaderEpoch(2);

#[test]
fn slow_logs_hold_a_small_chunk_and_fast_ones_grow_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let slow = Log::open(root.join("slow"), LogConfig::default())
            .await
            .unwrap();
        slow.append_durable(&batch(1, 1, 900, 5), EPOCH)
            .await
            .unwrap();
        assert_eq!(slow.write_buffer_bytes(), 16 * 1024, "one 16 KiB chunk");

        let fast = Log::open(root.join("fast"), LogConfig::default())
            .await
            .unwrap();
        for seed in 0..2_000 {
            fast.append(&batch(seed, 1, 1_000, 5), EPOCH).await.unwrap();
        }
        fast.sync().await.unwrap();
        let held = fast.write_buffer_bytes();
        assert!(held > 16 * 1024, "chunks grew with the rate: {held}");
        // Once everything is written: the filling chunk, the newest written one (kept for
        // reads) and at most four spares, none bigger than `write_chunk_bytes`.
        assert!(
            held <= 6 * 256 * 1024,
            "bounded by the largest chunk and its spares: {held}"
        );
        slow.close().await.unwrap();
        fast.close().await.unwrap();
    });
}

#[test]
fn an_idle_log_parks_its_tail_and_appends_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let config = LogConfig {
        write_chunk_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    let written = {
        let path = path.clone();
        let config = config.clone();
        run(move || async move {
            let log = Log::open(&path, config).await.unwrap();
            let mut expected: Vec<(Offset, Vec<u8>)> = Vec::new();
            let mut seed = 0;
            for phase in 0..6 {
                // Odd sizes, so the tail page is partly filled when the log parks.
                for _ in 0..(3 + phase * 7) {
                    let b = batch(
                        seed,
                        1 + (seed % 2) as usize,
                        333 + (seed * 101 % 3000) as usize,
                        9,
                    );
                    let at = log.append(&b, EPOCH).await.unwrap();
                    expected.push((at.base_offset, stamped(b, at.base_offset, EPOCH.0)));
                    seed += 1;
                }
                assert!(
                    !log.park_if_idle(Duration::from_secs(3600)),
                    "not idle long enough"
                );
                if phase % 2 == 0 {
                    log.sync().await.unwrap();
                } else {
                    log.flush().await.unwrap();
                }
                glommio::timer::sleep(Duration::from_millis(30)).await;
                assert!(log.park_if_idle(Duration::from_millis(20)), "phase {phase}");
                assert_eq!(log.write_buffer_bytes(), 0);
                assert_eq!(
                    read_all(&log).await,
                    expected,
                    "reads from the file while parked"
                );
            }
            log.close().await.unwrap();
            expected
        })
    };
    run(move || async move {
        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(read_all(&log).await, written);
        log.close().await.unwrap();
    });
}

#[test]
fn a_log_with_unwritten_bytes_does_not_park() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    run(move || async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        log.append(&batch(7, 1, 500, 1), EPOCH).await.unwrap();
        glommio::timer::sleep(Duration::from_millis(30)).await;
        assert!(
            !log.park_if_idle(Duration::from_millis(10)),
            "the partial chunk is not in the file yet"
        );
        log.flush().await.unwrap();
        assert!(log.park_if_idle(Duration::from_millis(10)));
        log.close().await.unwrap();
    });
}

/// Eight logs written as fast as memory allows, without waiting for durability: with a small
/// shard budget the appends are slowed (they wait for their writes), none fails, every byte
/// reads back, and the memory held stays near the budget; without one the backlog grows to
/// each log's own limit.
#[test]
fn a_shard_over_its_write_budget_slows_appends_and_loses_nothing() {
    const LOGS: usize = 8;
    const CHUNK: usize = 256 * 1024;
    let run_with = |limit: usize| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        run(move || async move {
            let budget = WriteBudget::new(limit);
            let mut logs = Vec::new();
            for i in 0..LOGS {
                let log = Log::open(root.join(format!("p{i}")), LogConfig::default())
                    .await
                    .unwrap();
                log.join_write_budget(&budget);
                logs.push(log);
            }
            let tasks: Vec<_> = logs
                .iter()
                .enumerate()
                .map(|(i, log)| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        let mut expected = Vec::new();
                        for n in 0..300u64 {
                            let b = batch(i as u64 * 1_000 + n, 4, 2_000, 3);
                            let at = log.append(&b, EPOCH).await.expect("slowed, never failed");
                            expected.push((at.base_offset, stamped(b, at.base_offset, EPOCH.0)));
                        }
                        expected
                    })
                })
                .collect();
            let mut written = Vec::new();
            for task in tasks {
                written.push(task.await);
            }
            let stats = budget.stats();
            for (log, expected) in logs.iter().zip(&written) {
                log.sync().await.unwrap();
                assert_eq!(&read_all(log).await, expected);
                log.close().await.unwrap();
            }
            assert_eq!(budget.stats().used, 0, "closed logs hold nothing");
            stats
        })
    };
    let tight = run_with(1 << 20);
    let loose = run_with(usize::MAX / 2);
    println!("tight {tight:?}\nloose {loose:?}");
    assert!(tight.waits > 0, "appends waited: {tight:?}");
    assert_eq!(loose.waits, 0);
    // Over the limit, each log holds at most its working set: the filling chunk, the newest
    // written one, one sealed chunk being written, and up to four spares.
    assert!(
        tight.peak <= (1 << 20) + LOGS * 7 * CHUNK,
        "memory stays near the budget: {tight:?}"
    );
}
