//! The public `Log` API end to end, on real files: append and read, validation, durability and
//! group commit, roll, retention, truncation at both ends, timestamp lookup, reopen.

mod common;

use common::{batch, read_all, run, small_config, split_batches, stamped};
use sluice_storage::batch::BatchError;
use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset, StorageError};

/// 100 batches of 2 records of 700 bytes (offsets 0..200): several segments under
/// `small_config`.
async fn append_200_records(log: &Log, epoch: LeaderEpoch) {
    for i in 0..100u64 {
        log.append(&batch(i, 2, 700, 0), epoch).await.unwrap();
    }
}

#[test]
fn append_assigns_offsets_and_reads_back_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(0));
        let b1 = batch(1, 3, 100, 1_000);
        let b2 = batch(2, 5, 100, 2_000);
        let a1 = log.append(&b1, LeaderEpoch(4)).await.unwrap();
        assert_eq!((a1.base_offset, a1.last_offset), (Offset(0), Offset(2)));
        // Two batches in one append.
        let mut two = b2.clone();
        two.extend_from_slice(&b1);
        let a2 = log.append(&two, LeaderEpoch(5)).await.unwrap();
        assert_eq!(
            (a2.base_offset, a2.last_offset, a2.batch_count),
            (Offset(3), Offset(10), 2)
        );
        assert_eq!(log.log_end_offset(), Offset(11));

        let all = read_all(&log).await;
        assert_eq!(
            all,
            vec![
                (Offset(0), stamped(b1.clone(), Offset(0), 4)),
                (Offset(3), stamped(b2.clone(), Offset(3), 5)),
                (Offset(8), stamped(b1.clone(), Offset(8), 5)),
            ]
        );
        // Reading from inside a batch returns the whole batch holding the offset.
        let r = log.read(Offset(4), 1 << 20).await.unwrap();
        assert_eq!(r.first_offset, Some(Offset(3)));
        assert_eq!(r.next_offset, Offset(11));
        // At the end: nothing. Past it or below the start: out of range.
        assert!(log.read(Offset(11), 1000).await.unwrap().bytes.is_empty());
        assert!(matches!(
            log.read(Offset(12), 1000).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();
        assert!(matches!(
            log.append(&b1, LeaderEpoch(0)).await,
            Err(StorageError::Closed)
        ));
    });
}

#[test]
fn read_respects_byte_limit_but_returns_at_least_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        let b = batch(7, 4, 200, 0);
        for _ in 0..10 {
            log.append(&b, LeaderEpoch(0)).await.unwrap();
        }
        let one = log.read(Offset(0), 10).await.unwrap();
        assert_eq!(
            split_batches(&one.bytes).len(),
            1,
            "a too-small limit still yields one batch"
        );
        let three = log.read(Offset(0), b.len() * 3 + 10).await.unwrap();
        assert_eq!(split_batches(&three.bytes).len(), 3);
        assert_eq!(three.next_offset, Offset(12));
    });
}

#[test]
fn a_bad_batch_refuses_the_whole_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        let good = batch(1, 2, 50, 0);
        let mut corrupt = batch(2, 2, 50, 0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let mut append = good.clone();
        append.extend_from_slice(&corrupt);
        let err = log.append(&append, LeaderEpoch(0)).await.unwrap_err();
        match err {
            StorageError::InvalidBatch {
                position,
                source: BatchError::CrcMismatch { .. },
            } => {
                assert_eq!(position, good.len(), "the error points at the bad batch")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            log.log_end_offset(),
            Offset(0),
            "nothing of the append was written"
        );

        let mut truncated = good.clone();
        truncated.truncate(good.len() - 3);
        assert!(matches!(
            log.append(&truncated, LeaderEpoch(0)).await,
            Err(StorageError::InvalidBatch {
                source: BatchError::Truncated { .. },
                ..
            })
        ));
        let mut magic1 = good.clone();
        magic1[16] = 1;
        assert!(matches!(
            log.append(&magic1, LeaderEpoch(0)).await,
            Err(StorageError::InvalidBatch {
                source: BatchError::BadMagic { magic: 1 },
                ..
            })
        ));
        assert!(matches!(
            log.append(&[], LeaderEpoch(0)).await,
            Err(StorageError::EmptyAppend)
        ));
        let huge = batch(3, 1, 40 * 1024, 0);
        assert!(matches!(
            log.append(&huge, LeaderEpoch(0)).await,
            Err(StorageError::InvalidBatch {
                source: BatchError::TooLarge { .. },
                ..
            })
        ));
        assert_eq!(log.log_end_offset(), Offset(0));
        // The log still works.
        log.append(&good, LeaderEpoch(0)).await.unwrap();
        assert_eq!(read_all(&log).await.len(), 1);
    });
}

#[test]
fn durable_watermark_and_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        let b = batch(1, 1, 100, 0);
        let a = log.append(&b, LeaderEpoch(0)).await.unwrap();
        assert_eq!(
            log.durable_end_offset(),
            Offset(0),
            "buffered, not yet durable"
        );
        log.wait_durable(a.last_offset).await.unwrap();
        assert_eq!(log.durable_end_offset(), Offset(1));
        assert_eq!(log.sync_rounds(), 1);
        assert!(matches!(
            log.wait_durable(Offset(5)).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));

        // 32 concurrent durable appenders share far fewer fdatasync rounds than 32.
        let rounds_before = log.sync_rounds();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let log = log.clone();
                let b = batch(i, 1, 100, 0);
                glommio::spawn_local(async move {
                    log.append_durable(&b, LeaderEpoch(0)).await.unwrap()
                })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.push(t.await);
        }
        let rounds = log.sync_rounds() - rounds_before;
        assert!(
            rounds < 32,
            "group commit: 32 appenders used {rounds} rounds"
        );
        assert!(rounds >= 1);
        for a in &acked {
            assert!(log.durable_end_offset() > a.last_offset);
        }
        assert_eq!(log.durable_end_offset(), Offset(33));
    });
}

#[test]
fn rolls_by_size_and_by_age_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..60u64 {
            let b = batch(i, 3, 900, i as i64 * 10);
            let a = log.append(&b, LeaderEpoch(1)).await.unwrap();
            expected.push((a.base_offset, stamped(b, a.base_offset, 1)));
        }
        assert!(
            log.segment_count() >= 3,
            "64 KiB segments roll: {}",
            log.segment_count()
        );
        for pair in log.segment_base_offsets().windows(2) {
            assert!(pair[0] < pair[1]);
        }
        assert_eq!(read_all(&log).await, expected);
        log.close().await.unwrap();

        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(180));
        assert_eq!(read_all(&log).await, expected);
        // Index files exist for every sealed segment.
        for base in &log.segment_base_offsets()[..log.segment_count() - 1] {
            assert!(path.join(format!("{:020}.index", base.0)).exists());
        }
        log.close().await.unwrap();

        let aged = LogConfig {
            segment_ms_max: Some(30),
            ..small_config()
        };
        let log = Log::open(&path, aged).await.unwrap();
        let segments = log.segment_count();
        log.append(&batch(100, 1, 10, 0), LeaderEpoch(1))
            .await
            .unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        log.append(&batch(101, 1, 10, 0), LeaderEpoch(1))
            .await
            .unwrap();
        assert_eq!(
            log.segment_count(),
            segments + 1,
            "an aged segment rolls on the next append"
        );
    });
}

#[test]
fn retention_by_bytes_and_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            retention_bytes: Some(100 * 1024),
            retention_ms: Some(1_000),
            ..small_config()
        };
        let log = Log::open(&path, config).await.unwrap();
        // 300 KiB with timestamps 0..; segments of 64 KiB.
        for i in 0..300u64 {
            log.append(&batch(i, 1, 900, i as i64), LeaderEpoch(0))
                .await
                .unwrap();
        }
        let before = log.size_bytes();
        // "now" close to the data: only the size limit applies.
        let outcome = log.enforce_retention(500).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        assert!(
            log.size_bytes() <= 100 * 1024 + 64 * 1024,
            "size after: {}",
            log.size_bytes()
        );
        assert_eq!(log.size_bytes(), before - outcome.bytes_deleted);
        assert_eq!(log.log_start_offset(), log.segment_base_offsets()[0]);
        assert_eq!(outcome.log_start, log.log_start_offset());
        // Reads below the new start fail; at the start they work.
        assert!(matches!(
            log.read(Offset(0), 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert!(!log
            .read(log.log_start_offset(), 100)
            .await
            .unwrap()
            .bytes
            .is_empty());
        // Far in the future: every sealed segment is too old; the active one stays.
        let outcome = log.enforce_retention(1_000_000).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        assert_eq!(log.segment_count(), 1);
        let start = log.log_start_offset();
        log.close().await.unwrap();
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.log_end_offset(), Offset(300));
    });
}

#[test]
fn truncate_drops_the_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..100u64 {
            let b = batch(i, 2, 700, 0);
            let a = log.append(&b, LeaderEpoch(1)).await.unwrap();
            expected.push((a.base_offset, stamped(b, a.base_offset, 1)));
        }
        log.sync().await.unwrap();
        let segments = log.segment_count();
        assert!(segments > 2);
        // Offset 101 is inside the batch at 100: that whole batch goes.
        let end = log.truncate(Offset(101)).await.unwrap();
        assert_eq!(end, Offset(100));
        assert_eq!(log.log_end_offset(), Offset(100));
        assert!(log.durable_end_offset() <= Offset(100));
        assert!(log.segment_count() < segments);
        expected.truncate(50);
        assert_eq!(read_all(&log).await, expected);
        // Appends continue at the cut with the new epoch.
        let b = batch(999, 1, 10, 0);
        let a = log.append(&b, LeaderEpoch(2)).await.unwrap();
        assert_eq!(a.base_offset, Offset(100));
        expected.push((Offset(100), stamped(b, Offset(100), 2)));
        log.close().await.unwrap();
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(
            read_all(&log).await,
            expected,
            "truncation and the new append survive reopen"
        );
        assert_eq!(
            log.truncate(Offset(500)).await.unwrap(),
            Offset(101),
            "beyond the end: no-op"
        );
        assert_eq!(
            log.truncate(Offset(0)).await.unwrap(),
            Offset(0),
            "truncate everything"
        );
        assert!(read_all(&log).await.is_empty());
    });
}

#[test]
fn truncate_prefix_moves_the_start_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        append_200_records(&log, LeaderEpoch(0)).await;
        let segments = log.segment_count();
        assert_eq!(log.truncate_prefix(Offset(120)).await.unwrap(), Offset(120));
        assert_eq!(log.log_start_offset(), Offset(120));
        assert!(
            log.segment_count() < segments,
            "whole segments below the start are deleted"
        );
        assert!(matches!(
            log.read(Offset(119), 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let r = log.read(Offset(120), 100).await.unwrap();
        assert_eq!(r.first_offset, Some(Offset(120)));
        assert!(matches!(
            log.truncate_prefix(Offset(201)).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            log.truncate_prefix(Offset(10)).await.unwrap(),
            Offset(120),
            "never moves back"
        );
        log.close().await.unwrap();
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(120));
        // Up to the end: the log is empty but keeps its offsets.
        log.truncate_prefix(Offset(200)).await.unwrap();
        assert!(read_all(&log).await.is_empty());
        let a = log
            .append(&batch(1, 1, 1, 0), LeaderEpoch(0))
            .await
            .unwrap();
        assert_eq!(a.base_offset, Offset(200));
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        // Batch i holds 4 records with timestamps 1000*i .. 1000*i+3, at offsets 4i..4i+3.
        for i in 0..100i64 {
            log.append(&batch(i as u64, 4, 500, 1000 * i), LeaderEpoch(0))
                .await
                .unwrap();
        }
        assert!(log.segment_count() > 2);
        assert_eq!(log.offset_for_timestamp(-5).await.unwrap(), Some(Offset(0)));
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(Offset(0)));
        assert_eq!(log.offset_for_timestamp(1).await.unwrap(), Some(Offset(1)));
        assert_eq!(log.offset_for_timestamp(4).await.unwrap(), Some(Offset(4)));
        assert_eq!(
            log.offset_for_timestamp(57_002).await.unwrap(),
            Some(Offset(230))
        );
        assert_eq!(
            log.offset_for_timestamp(57_010).await.unwrap(),
            Some(Offset(232))
        );
        assert_eq!(
            log.offset_for_timestamp(99_003).await.unwrap(),
            Some(Offset(399))
        );
        assert_eq!(log.offset_for_timestamp(99_004).await.unwrap(), None);
        log.truncate_prefix(Offset(200)).await.unwrap();
        assert_eq!(
            log.offset_for_timestamp(0).await.unwrap(),
            Some(Offset(200))
        );
    });
}

#[test]
fn invalid_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let bad = LogConfig {
            write_chunk_bytes: 1000,
            ..LogConfig::default()
        };
        match Log::open(&path, bad).await {
            Err(StorageError::Config { field, .. }) => assert_eq!(field, "write_chunk_bytes"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("opened with an invalid config"),
        }
        let bad = LogConfig {
            segment_bytes_max: 5 << 30,
            ..LogConfig::default()
        };
        match Log::open(&path, bad).await {
            Err(e) => assert!(e.to_string().contains("segment_bytes_max"), "{e}"),
            Ok(_) => panic!("opened with an invalid config"),
        }
    });
}

#[test]
fn large_batches_span_chunks_and_read_back_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            write_chunk_bytes: 8192,
            unwritten_bytes_max: 16384,
            segment_bytes_max: 1 << 20,
            batch_bytes_max: 512 * 1024,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config.clone()).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..20u64 {
            let b = batch(i, 7, 5_000 + i as usize * 3_001, 0);
            let a = log.append(&b, LeaderEpoch(0)).await.unwrap();
            expected.push((a.base_offset, stamped(b, a.base_offset, 0)));
        }
        let mut from = Offset(0);
        let mut got = Vec::new();
        while from < log.log_end_offset() {
            let r = log.read(from, 100_000).await.unwrap();
            got.extend(split_batches(&r.bytes));
            from = r.next_offset;
        }
        assert_eq!(got, expected);
        log.close().await.unwrap();
        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(read_all(&log).await.len(), 20);
    });
}

#[test]
fn opens_a_relative_directory() {
    // glommio's Directory::open fails on relative paths; the log must not.
    // Integration tests run in the package directory: a temp dir made in "." has a relative path.
    let base = tempfile::tempdir_in(".").unwrap();
    let relative = std::path::Path::new(base.path().file_name().unwrap()).join("relative-log");
    assert!(relative.is_relative(), "{relative:?}");
    run(move || async move {
        let log = Log::open(&relative, small_config()).await.unwrap();
        log.append_durable(&batch(1, 1, 10, 0), LeaderEpoch(0))
            .await
            .unwrap();
        log.roll().await.unwrap();
        log.close().await.unwrap();
        let log = Log::open(&relative, small_config()).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(1));
    });
}

#[test]
fn preallocation_starts_small_and_grows_with_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let config = LogConfig {
        segment_bytes_max: 256 << 20,
        preallocate_bytes: 64 << 20,
        ..LogConfig::default()
    };
    let sizes = run(move || async move {
        let log = Log::open(&path, config).await.unwrap();
        let file = path.join(format!("{:020}.log", 0));
        let size = || std::fs::metadata(&file).unwrap().len();
        let mut sizes = Vec::new();
        log.append_durable(&batch(0, 1, 100, 0), LeaderEpoch(0))
            .await
            .unwrap();
        sizes.push(size());
        // 40 MB more in 1 MB batches: the reservation doubles as the segment grows.
        for seed in 1..=40 {
            log.append(&batch(seed, 1, 1_000_000, 0), LeaderEpoch(0))
                .await
                .unwrap();
        }
        log.sync().await.unwrap();
        sizes.push(size());
        log.close().await.unwrap();
        sizes
    });
    assert!(
        sizes[0] <= 256 << 10,
        "one small record reserves about 64 KiB, not a full step: {}",
        sizes[0]
    );
    assert!(
        sizes[1] >= 40_000_000 && sizes[1] <= 84 << 20,
        "40 MB of data holds at most about twice that: {}",
        sizes[1]
    );
}

#[test]
fn retention_point_names_the_cut_without_making_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            retention_bytes: Some(100 * 1024),
            ..small_config()
        };
        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(log.retention_point(0), None, "an empty log keeps all");
        for i in 0..300u64 {
            log.append(&batch(i, 1, 900, i as i64), LeaderEpoch(0))
                .await
                .unwrap();
        }
        let segments = log.segment_count();
        let point = log.retention_point(0).expect("over the size limit");
        assert!(log.segment_base_offsets().contains(&point));
        assert_eq!(log.segment_count(), segments, "nothing deleted");
        assert_eq!(log.log_start_offset(), Offset(0));
        // The cut retention then makes is the one it named.
        let outcome = log.enforce_retention(0).await.unwrap();
        assert_eq!(outcome.log_start, point);
        assert_eq!(log.retention_point(0), None);
    });
}

#[test]
fn start_over_at_empties_the_log_at_any_offset_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        append_200_records(&log, LeaderEpoch(1)).await;
        assert!(log.segment_count() > 2);
        // Past the end (a follower behind a leader's log start).
        log.start_over_at(Offset(1_000)).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(1_000));
        assert_eq!(log.log_end_offset(), Offset(1_000));
        assert_eq!(log.segment_count(), 1);
        assert!(read_all(&log).await.is_empty());
        let b = batch(7, 3, 10, 0);
        let a = log.append(&b, LeaderEpoch(2)).await.unwrap();
        assert_eq!(a.base_offset, Offset(1_000));
        log.sync().await.unwrap();
        log.close().await.unwrap();
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(1_000));
        assert_eq!(
            read_all(&log).await,
            vec![(Offset(1_000), stamped(b.clone(), Offset(1_000), 2))]
        );
        // Inside the log (a conflicting suffix): everything goes, the offsets stay.
        log.start_over_at(Offset(1_001)).await.unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (Offset(1_001), Offset(1_001))
        );
        // At the base of the only segment (reused in place).
        log.start_over_at(Offset(1_001)).await.unwrap();
        assert_eq!(log.log_end_offset(), Offset(1_001));
        let a = log.append(&b, LeaderEpoch(3)).await.unwrap();
        assert_eq!(a.base_offset, Offset(1_001));
        log.close().await.unwrap();
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(
            read_all(&log).await,
            vec![(Offset(1_001), stamped(b, Offset(1_001), 3))]
        );
        let files = std::fs::read_dir(&path).unwrap().count();
        assert!(
            files <= 4,
            "old segments and indexes removed: {files} files"
        );
    });
}

/// The states a crash inside `start_over_at` can leave reopen as valid logs: the new empty
/// segment beside all the old ones (a gap before it), then with the oldest already deleted;
/// cutting the prefix at the new base then finishes the job.
#[test]
fn a_start_over_interrupted_by_a_crash_reopens_as_a_valid_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        append_200_records(&log, LeaderEpoch(1)).await;
        let old_bases = log.segment_base_offsets();
        assert!(old_bases.len() > 2);
        log.close().await.unwrap();
        // Crashed right after creating the new segment at 1,000.
        let new_segment = path.join(sluice_storage::format::segment_file_name(Offset(1_000)));
        std::fs::File::create(&new_segment).unwrap();
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), Offset(0));
        assert_eq!(log.log_end_offset(), Offset(1_000));
        assert_eq!(
            read_all(&log).await.len(),
            100,
            "the old records still read"
        );
        log.close().await.unwrap();
        // Crashed after deleting the oldest segment only.
        std::fs::remove_file(path.join(sluice_storage::format::segment_file_name(old_bases[0])))
            .unwrap();
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(log.log_start_offset(), old_bases[1]);
        assert_eq!(log.log_end_offset(), Offset(1_000));
        // Finishing: the prefix cut at the new base leaves the empty log there.
        log.truncate_prefix(Offset(1_000)).await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert!(read_all(&log).await.is_empty());
        let a = log
            .append(&batch(1, 1, 10, 0), LeaderEpoch(2))
            .await
            .unwrap();
        assert_eq!(a.base_offset, Offset(1_000));
    });
}
