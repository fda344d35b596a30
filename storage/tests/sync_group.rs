//! Shard durability rounds (`SyncGroup`): many logs made durable by one round, overwrite-only
//! logs sharing one flush once their space is zeroed ahead, and zeroing that never corrupts
//! data however appends, rolls and truncations interleave with it.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::{batch, read_all, run, stamped};
use futures::future::join_all;
use sluice_storage::{FlushMode, LeaderEpoch, Log, LogConfig, Offset, SyncGroup};

const EPOCH: LeaderEpoch = LeaderEpoch(3);

async fn open_group(root: &std::path::Path, logs: usize, mode: FlushMode) -> (SyncGroup, Vec<Log>) {
    let group = SyncGroup::new(mode);
    let mut opened = Vec::new();
    for i in 0..logs {
        let log = Log::open(root.join(format!("p{i}")), LogConfig::default())
            .await
            .expect("open");
        log.join_sync_group(&group);
        opened.push(log);
    }
    (group, opened)
}

/// Appends one batch to every log at once and waits until all are durable.
async fn append_everywhere(logs: &[Log], seed: u64) {
    join_all(logs.iter().enumerate().map(|(i, log)| async move {
        // Over 4 KiB: every round writes new blocks, not only the tail page again.
        let b = batch(seed * 1000 + i as u64, 2, 3_000, 1_000);
        let at = log.append_durable(&b, EPOCH).await.expect("durable append");
        assert!(log.durable_end_offset() > at.last_offset);
    }))
    .await;
}

#[test]
fn one_round_makes_many_logs_durable_and_overwrites_share_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (group, logs) = open_group(&root, 48, FlushMode::Shared).await;
        // First appends land in fresh files (metadata to commit); zeroing starts behind them.
        append_everywhere(&logs, 1).await;
        let first = group.stats();
        assert_eq!(first.logs_synced, 48, "{first:?}");
        assert!(
            first.rounds < 48,
            "48 concurrent waiters need fewer rounds than logs: {first:?}"
        );
        glommio::timer::sleep(Duration::from_millis(500)).await; // zeroing steps finish
        for seed in 2..6 {
            let before = group.stats();
            append_everywhere(&logs, seed).await;
            let after = group.stats();
            let rounds = after.rounds - before.rounds;
            let fdatasyncs = after.fdatasyncs - before.fdatasyncs;
            assert_eq!(after.logs_synced - before.logs_synced, 48, "{after:?}");
            // A round that found one log alone made it durable by an O_DSYNC write instead.
            let dsync_writes = after.dsync_writes - before.dsync_writes;
            assert_eq!(
                fdatasyncs + dsync_writes,
                rounds,
                "overwrites only: one shared flush per round ({before:?} -> {after:?})"
            );
        }
        for log in &logs {
            assert_eq!(read_all(log).await.len(), 5);
            log.close().await.unwrap();
        }
    });
}

/// One log alone in its rounds (a lone partition, every durable append its own round): once its
/// space is zeroed ahead, each round is one O_DSYNC overwrite and no fdatasync; with
/// `dsync_lone_writes` off, each round is a write and an fdatasync. Either way every batch
/// reads back, before and after reopening.
#[test]
fn a_lone_log_s_overwrites_are_made_durable_by_o_dsync_writes() {
    for dsync_lone_writes in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let config = LogConfig {
            dsync_lone_writes,
            ..LogConfig::default()
        };
        let expected = {
            let (path, config) = (path.clone(), config.clone());
            run(move || async move {
                let group = SyncGroup::new(FlushMode::Shared);
                let log = Log::open(&path, config).await.expect("open");
                log.join_sync_group(&group);
                let mut expected = Vec::new();
                // The first appends write fresh blocks (own fdatasyncs); zeroing runs behind.
                for seed in 0..3 {
                    let b = batch(seed, 1, 200, 0);
                    let at = log.append_durable(&b, EPOCH).await.expect("append");
                    expected.push((at.base_offset, stamped(b, at.base_offset, EPOCH.0)));
                }
                glommio::timer::sleep(Duration::from_millis(300)).await; // zeroing finishes
                let before = group.stats();
                for seed in 3..53 {
                    let b = batch(seed, 1, 200, 0);
                    let at = log.append_durable(&b, EPOCH).await.expect("append");
                    assert!(log.durable_end_offset() > at.last_offset);
                    expected.push((at.base_offset, stamped(b, at.base_offset, EPOCH.0)));
                }
                let after = group.stats();
                let (rounds, fdatasyncs, dsync_writes) = (
                    after.rounds - before.rounds,
                    after.fdatasyncs - before.fdatasyncs,
                    after.dsync_writes - before.dsync_writes,
                );
                assert_eq!(rounds, 50, "{after:?}");
                if dsync_lone_writes {
                    assert_eq!((dsync_writes, fdatasyncs), (50, 0), "{after:?}");
                } else {
                    assert_eq!((dsync_writes, fdatasyncs), (0, 50), "{after:?}");
                }
                assert_eq!(read_all(&log).await, expected);
                log.close().await.unwrap();
                expected
            })
        };
        let (path, config) = (path.clone(), config.clone());
        run(move || async move {
            let log = Log::open(&path, config).await.expect("reopen");
            assert_eq!(read_all(&log).await, expected);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn per_file_mode_syncs_every_log_of_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (group, logs) = open_group(&root, 16, FlushMode::PerFile).await;
        for seed in 1..4 {
            append_everywhere(&logs, seed).await;
        }
        let stats = group.stats();
        assert_eq!(stats.logs_synced, 48);
        assert_eq!(stats.fdatasyncs, 48, "{stats:?}");
        for log in &logs {
            log.close().await.unwrap();
        }
    });
}

/// A writer far faster than its zeroing, with rolls and suffix truncations between: every batch
/// reads back exactly, before and after reopening.
#[test]
fn zeroing_ahead_never_corrupts_data_across_rolls_and_truncations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let config = LogConfig {
        segment_bytes_max: 3 << 20,
        write_chunk_bytes: 64 * 1024,
        preallocate_bytes: 1 << 20,
        ..LogConfig::default()
    };
    let reopened = {
        let path = path.clone();
        let config = config.clone();
        run(move || async move {
            let group = SyncGroup::new(FlushMode::Shared);
            let log = Log::open(&path, config.clone()).await.unwrap();
            log.join_sync_group(&group);
            let log = Rc::new(log);
            let mut expected: Vec<(Offset, Vec<u8>)> = Vec::new();
            for seed in 0..1200u64 {
                let b = batch(
                    seed,
                    1 + (seed % 3) as usize,
                    500 + (seed * 37 % 9000) as usize,
                    7,
                );
                let at = if seed % 5 == 0 {
                    log.append_durable(&b, EPOCH).await.unwrap()
                } else {
                    log.append(&b, EPOCH).await.unwrap()
                };
                expected.push((at.base_offset, stamped(b, at.base_offset, EPOCH.0)));
                if seed % 400 == 399 {
                    // Cut the last 50 batches: the zeroed space past the cut is reused.
                    let cut = expected[expected.len() - 50].0;
                    log.truncate(cut).await.unwrap();
                    expected.truncate(expected.len() - 50);
                }
                if seed % 97 == 0 {
                    glommio::timer::sleep(Duration::from_millis(3)).await;
                }
            }
            log.sync().await.unwrap();
            assert!(log.segment_count() > 2, "the test crosses rolls");
            assert_eq!(read_all(&log).await, expected);
            log.close().await.unwrap();
            expected
        })
    };
    run(move || async move {
        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(read_all(&log).await, reopened);
        log.close().await.unwrap();
    });
}
