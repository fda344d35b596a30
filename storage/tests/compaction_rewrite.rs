//! Rewriting sealed segments the way log compaction does: the latest record per key kept, whole
//! batches dropped (gaps in offsets), reads stepping over the gaps, the result surviving a
//! reopen with or without its index, and every state a crash can leave in the middle of the
//! swap recovered to either the old segments or the new one, never both. A log compacted
//! keeping every batch (emptied ones as empty batches, as a replicated partition's cleaner
//! does) copies into another log batch for batch, which appends from clients refuse.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{read_all, run, small_config};
use sluice_storage::batch::{
    build_batch_nullable, empty_batch, read_header, rebuild_batch, record_views, BATCH_HEADER_BYTES,
};
use sluice_storage::rewrite::{BatchFate, IoBudget};
use sluice_storage::{LeaderEpoch, Log, Offset};

const KEYS: u64 = 17;
const BATCHES: u64 = 400;

/// Appends `BATCHES` batches of 3 records with keys from a small key space (every 7th record a
/// tombstone), rolls, and closes. Returns the latest offset of each key.
fn write_keyed_log(dir: &Path) -> HashMap<Vec<u8>, i64> {
    let dir = dir.to_path_buf();
    run(move || async move {
        let log = Log::open(&dir, small_config()).await.unwrap();
        let mut latest = HashMap::new();
        for i in 0..BATCHES {
            let keys: Vec<Vec<u8>> = (0..3)
                .map(|j| format!("k{}", (i * 3 + j) % KEYS).into_bytes())
                .collect();
            let values: Vec<Vec<u8>> = (0..3)
                .map(|j| format!("v{i}-{j}").repeat(60).into_bytes())
                .collect();
            let records: Vec<_> = (0..3)
                .map(|j| {
                    let tombstone = (i * 3 + j as u64).is_multiple_of(7);
                    (
                        1_000 + i as i64,
                        Some(keys[j].as_slice()),
                        (!tombstone).then_some(values[j].as_slice()),
                    )
                })
                .collect();
            let a = log
                .append(
                    &build_batch_nullable(1_000 + i as i64, &records),
                    LeaderEpoch(1),
                )
                .await
                .unwrap();
            for (j, key) in keys.into_iter().enumerate() {
                latest.insert(key, a.base_offset.0 + j as i64);
            }
        }
        log.roll().await.unwrap();
        log.close().await.unwrap();
        latest
    })
}

/// The fate compaction gives a batch: keep the records that are their key's latest.
fn latest_only(latest: &HashMap<Vec<u8>, i64>, batch: &[u8], base: i64, count: i32) -> BatchFate {
    let views = record_views(&batch[BATCH_HEADER_BYTES..], count).unwrap();
    let kept: Vec<_> = views
        .iter()
        .filter(|r| latest.get(r.key.unwrap()) == Some(&(base + i64::from(r.offset_delta))))
        .collect();
    match kept.len() {
        0 => BatchFate::Drop,
        n if n == views.len() => BatchFate::Keep,
        n => {
            let bytes: Vec<u8> = kept.iter().flat_map(|r| r.bytes.iter().copied()).collect();
            BatchFate::Replace(rebuild_batch(batch, &bytes, n as i32, 1_000))
        }
    }
}

/// Every record of the log as (offset, key); checks offsets only ever rise.
async fn records_of(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for (base, batch) in read_all(log).await {
        let count = i32::from_be_bytes(batch[57..61].try_into().unwrap());
        for r in record_views(&batch[BATCH_HEADER_BYTES..], count).unwrap() {
            let offset = base.0 + i64::from(r.offset_delta);
            assert!(out.last().is_none_or(|(o, _)| *o < offset), "offsets rise");
            out.push((offset, r.key.unwrap().to_vec()));
        }
    }
    out
}

/// Compacts every sealed segment of the log in `dir` into one; returns (first, end).
fn compact_all(dir: &Path, latest: HashMap<Vec<u8>, i64>) -> (Offset, Offset) {
    let dir = dir.to_path_buf();
    run(move || async move {
        let log = Log::open(&dir, small_config()).await.unwrap();
        let sealed = log.sealed_segments();
        assert!(
            sealed.len() > 3,
            "several sealed segments: {}",
            sealed.len()
        );
        let (first, end) = (sealed[0].base_offset, sealed.last().unwrap().next_offset);
        let outcome = log
            .rewrite_segments(first, end, &mut IoBudget::new(None), |batch, info, _| {
                latest_only(&latest, batch, info.base_offset.0, info.record_count)
            })
            .await
            .unwrap()
            .expect("nothing changed underneath");
        assert_eq!(outcome.segments_replaced, sealed.len());
        assert!(
            outcome.bytes_after * 10 < outcome.bytes_before,
            "{outcome:?}"
        );
        assert_eq!(log.sealed_segments().len(), 1);
        log.close().await.unwrap();
        (first, end)
    })
}

fn open_records(dir: &Path) -> (Vec<(i64, Vec<u8>)>, Offset) {
    let dir = dir.to_path_buf();
    run(move || async move {
        let log = Log::open(&dir, small_config()).await.unwrap();
        let records = records_of(&log).await;
        let end = log.log_end_offset();
        log.close().await.unwrap();
        (records, end)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_rewrite_keeps_the_latest_record_per_key_and_reads_step_over_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let latest = write_keyed_log(dir.path());
    let (before, end_before) = open_records(dir.path());
    assert_eq!(before.len() as u64, BATCHES * 3);
    let (first, end) = compact_all(dir.path(), latest.clone());

    let (after, end_after) = open_records(dir.path());
    assert_eq!(end_after, end_before, "the log end does not move");
    let mut seen = HashMap::new();
    for (offset, key) in &after {
        assert_eq!(
            latest[key], *offset,
            "only the latest record of each key is left"
        );
        assert!(
            seen.insert(key.clone(), *offset).is_none(),
            "one record per key"
        );
    }
    assert_eq!(seen.len() as u64, KEYS);

    // A read from inside a gap serves the next batch; the index rebuilt by a scan (gaps and
    // all) serves the same; and appends continue at the old end.
    let path = dir.path().to_path_buf();
    let index = path.join(format!("{:020}.index", first.0));
    let original_index = std::fs::read(&index).unwrap();
    std::fs::remove_file(&index).unwrap();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        assert_eq!(records_of(&log).await, after);
        let in_gap = (first.0..end.0)
            .find(|o| !after.iter().any(|(a, _)| a == o))
            .unwrap();
        let read = log.read(Offset(in_gap), 1 << 16).await.unwrap();
        assert!(read.first_offset.unwrap() > Offset(in_gap));
        let a = log
            .append(&common::batch(1, 2, 10, 5), LeaderEpoch(1))
            .await
            .unwrap();
        assert_eq!(a.base_offset, end_before);
        log.close().await.unwrap();
    });
    let rebuilt = std::fs::read(&index).unwrap();
    assert_eq!(rebuilt[..16], original_index[..16], "same base offset");
}

#[test]
fn a_crash_before_the_swap_commits_keeps_the_old_segments_and_after_it_the_new_one() {
    let original = tempfile::tempdir().unwrap();
    let latest = write_keyed_log(original.path());
    let (old_records, _) = open_records(original.path());
    let compacted = tempfile::tempdir().unwrap();
    copy_dir(original.path(), compacted.path());
    let (first, end) = compact_all(compacted.path(), latest);
    let (new_records, _) = open_records(compacted.path());
    let replacement: PathBuf = compacted.path().join(format!("{:020}.log", first.0));
    let old_bases: Vec<i64> = names(original.path())
        .iter()
        .filter_map(|n| n.strip_suffix(".log").and_then(|d| d.parse().ok()))
        .collect();
    let inner: Vec<i64> = old_bases
        .iter()
        .copied()
        .filter(|b| *b > first.0 && *b < end.0)
        .collect();
    assert!(inner.len() >= 2);

    let new_index: PathBuf = compacted.path().join(format!("{:020}.index", first.0));

    // Killed while writing the replacement or its index: they are debris, the old segments
    // stand.
    for with_index in [false, true] {
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(original.path(), crashed.path());
        std::fs::copy(
            &replacement,
            crashed.path().join(format!("{:020}.cleaned", first.0)),
        )
        .unwrap();
        if with_index {
            std::fs::copy(
                &new_index,
                crashed
                    .path()
                    .join(format!("{:020}.index.cleaned", first.0)),
            )
            .unwrap();
        }
        assert_eq!(open_records(crashed.path()).0, old_records, "{with_index}");
        assert!(!names(crashed.path())
            .iter()
            .any(|n| n.ends_with(".cleaned")));
    }

    // Killed in the swap's renames after the new index replaced `first`'s old one, with the
    // swap file still there: the swap is finished, the index (whichever) rebuilt.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(original.path(), crashed.path());
    std::fs::copy(
        &replacement,
        crashed
            .path()
            .join(format!("{:020}-{:020}.swap", first.0, end.0)),
    )
    .unwrap();
    for base in &inner {
        std::fs::remove_file(crashed.path().join(format!("{base:020}.log"))).unwrap();
        std::fs::remove_file(crashed.path().join(format!("{base:020}.index"))).unwrap();
    }
    std::fs::copy(
        &new_index,
        crashed.path().join(format!("{:020}.index", first.0)),
    )
    .unwrap();
    assert_eq!(open_records(crashed.path()).0, new_records);

    // Killed right after the commit (the swap file and the new index beside it are there,
    // nothing deleted yet), and killed halfway through deleting the old segments: both finish
    // the swap.
    for deleted_before_crash in [0, inner.len() / 2] {
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(original.path(), crashed.path());
        std::fs::copy(
            &replacement,
            crashed
                .path()
                .join(format!("{:020}-{:020}.swap", first.0, end.0)),
        )
        .unwrap();
        std::fs::copy(
            &new_index,
            crashed
                .path()
                .join(format!("{:020}.index.cleaned", first.0)),
        )
        .unwrap();
        for base in &inner[..deleted_before_crash] {
            std::fs::remove_file(crashed.path().join(format!("{base:020}.log"))).unwrap();
            std::fs::remove_file(crashed.path().join(format!("{base:020}.index"))).unwrap();
        }
        assert_eq!(
            open_records(crashed.path()).0,
            new_records,
            "{deleted_before_crash} deleted"
        );
        let left = names(crashed.path());
        assert!(
            !left
                .iter()
                .any(|n| n.ends_with(".swap") || n.ends_with(".cleaned")),
            "{left:?}"
        );
        for base in &inner {
            assert!(!left.contains(&format!("{base:020}.log")), "{left:?}");
        }
    }
}

/// A compacted topic deleted (or the broker stopped) while its cleaner rewrites: the log closes
/// under the rewrite, which must then give up with `Closed`. It used to index the closed log's
/// (empty) segment list and panic, which took the whole shard down.
#[test]
fn a_log_closed_while_a_rewrite_runs_ends_the_rewrite_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let latest = write_keyed_log(dir.path());
    let path = dir.path().to_path_buf();
    let (rewritten, sealed_after_close) = run(move || async move {
        let log = std::rc::Rc::new(Log::open(&path, small_config()).await.unwrap());
        let sealed = log.sealed_segments();
        let (first, end) = (sealed[0].base_offset, sealed.last().unwrap().next_offset);
        let rewriting = glommio::spawn_local({
            let log = log.clone();
            async move {
                log.rewrite_segments(first, end, &mut IoBudget::new(None), |batch, info, _| {
                    latest_only(&latest, batch, info.base_offset.0, info.record_count)
                })
                .await
            }
        });
        // Let the rewrite start (it is reading and writing the replacement), then close.
        glommio::executor().yield_task_queue_now().await;
        log.close().await.unwrap();
        (rewriting.await, log.sealed_segments().len())
    });
    assert!(
        matches!(rewritten, Err(sluice_storage::StorageError::Closed)),
        "{rewritten:?}"
    );
    assert_eq!(sealed_after_close, 0);
    // Whatever the rewrite left behind is finished or cleared at the next open, and the log
    // reads as before or as compacted: each key's latest record is there.
    let (records, _) = open_records(dir.path());
    let keys: std::collections::HashSet<&Vec<u8>> = records.iter().map(|(_, k)| k).collect();
    assert_eq!(keys.len() as u64, KEYS);
    assert!(!names(dir.path())
        .iter()
        .any(|n| n.ends_with(".cleaned") || n.ends_with(".swap")));
}

/// Cluster mode compacts keeping every batch (one Raft entry each): an emptied batch stays as
/// an empty batch. Such a log copies into another replica's log batch for batch through
/// `append_copied` (each batch keeps its offsets, so the copy ends where the original does),
/// while `append`, which takes what clients produce, refuses the compacted shapes.
#[test]
fn a_log_compacted_keeping_every_batch_copies_into_another_batch_for_batch() {
    let dir = tempfile::tempdir().unwrap();
    let latest = write_keyed_log(dir.path());
    let path = dir.path().to_path_buf();
    let copy = tempfile::tempdir().unwrap();
    let copy_path = copy.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        let sealed = log.sealed_segments();
        let (first, end) = (sealed[0].base_offset, sealed.last().unwrap().next_offset);
        let batches_before = read_all(&log).await.len();
        log.rewrite_segments(first, end, &mut IoBudget::new(None), |batch, info, _| {
            match latest_only(&latest, batch, info.base_offset.0, info.record_count) {
                BatchFate::Drop => BatchFate::Replace(empty_batch(batch)),
                fate => fate,
            }
        })
        .await
        .unwrap()
        .expect("nothing changed underneath");
        let compacted = read_all(&log).await;
        assert_eq!(compacted.len(), batches_before, "every batch is kept");
        let empties = compacted
            .iter()
            .filter(|(_, b)| read_header(b, usize::MAX).unwrap().record_count == 0)
            .count();
        assert!(
            empties > 0 && empties < compacted.len(),
            "{empties} empty batches"
        );

        let target = Log::open(&copy_path, small_config()).await.unwrap();
        for (base, batch) in &compacted {
            let info = read_header(batch, usize::MAX).unwrap();
            if !info.is_full() {
                assert!(
                    target.append(batch, LeaderEpoch(1)).await.is_err(),
                    "a client's append refuses the batch at {}",
                    base.0
                );
            }
            let appended = target.append_copied(batch, LeaderEpoch(1)).await.unwrap();
            assert_eq!(appended.base_offset, *base);
            assert_eq!(appended.last_offset, info.last_offset());
        }
        assert_eq!(target.log_end_offset(), log.log_end_offset());
        target
            .wait_durable(Offset(target.log_end_offset().0 - 1))
            .await
            .unwrap();
        assert_eq!(
            read_all(&target).await,
            compacted,
            "the copy holds the same bytes"
        );
        assert_eq!(records_of(&target).await, records_of(&log).await);
        target.close().await.unwrap();
        log.close().await.unwrap();
    });
}
