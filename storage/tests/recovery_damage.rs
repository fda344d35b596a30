//! Files damaged on purpose, then reopened: each case asserts exactly what recovery keeps and what
//! it drops, that no damaged byte is ever served, and that the log accepts appends afterwards.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::{batch, read_all, run, small_config, stamped};
use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset, StorageError};

/// One big segment, so every batch lands in the active segment.
fn one_segment_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 << 20,
        ..small_config()
    }
}

/// Writes `count` batches of 2 records into a fresh log at `path` and leaves it as a crash
/// would: closed, but without the clean close's checkpoint of the active segment's index, so a
/// reopen scans the whole active segment. Returns the stored batches and their byte positions
/// in the first segment file.
fn write_log(path: &Path, count: u64, config: LogConfig) -> (Vec<(Offset, Vec<u8>)>, Vec<u64>) {
    let written = write_log_closed_cleanly(path, count, config);
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap().path();
        if entry.to_string_lossy().ends_with(".active-index") {
            std::fs::remove_file(entry).unwrap();
        }
    }
    written
}

/// [`write_log`], keeping the clean close's checkpoint.
fn write_log_closed_cleanly(
    path: &Path,
    count: u64,
    config: LogConfig,
) -> (Vec<(Offset, Vec<u8>)>, Vec<u64>) {
    let path = path.to_path_buf();
    run(move || async move {
        let log = Log::open(&path, config).await.unwrap();
        let mut stored = Vec::new();
        let mut positions = Vec::new();
        let mut pos = 0u64;
        for i in 0..count {
            let b = batch(i, 2, 300 + (i as usize % 7) * 50, i as i64);
            let a = log.append(&b, LeaderEpoch(3)).await.unwrap();
            positions.push(pos);
            pos += b.len() as u64;
            stored.push((a.base_offset, stamped(b, a.base_offset, 3)));
        }
        log.close().await.unwrap();
        (stored, positions)
    })
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// Reopens the log, returns everything it holds, then checks it accepts and keeps a new append.
fn reopen_and_read(path: &Path, config: LogConfig) -> Vec<(Offset, Vec<u8>)> {
    let path = path.to_path_buf();
    run(move || async move {
        let log = Log::open(&path, config.clone()).await.unwrap();
        let held = read_all(&log).await;
        let end = log.log_end_offset();
        let extra = batch(4242, 1, 10, 0);
        let a = log.append_durable(&extra, LeaderEpoch(9)).await.unwrap();
        assert_eq!(
            a.base_offset, end,
            "appends continue right after the recovered data"
        );
        log.close().await.unwrap();
        let log = Log::open(&path, config).await.unwrap();
        let mut expected = held.clone();
        expected.push((end, stamped(extra, end, 9)));
        assert_eq!(
            read_all(&log).await,
            expected,
            "recovered data plus the new append survive reopen"
        );
        held
    })
}

#[test]
fn truncated_mid_batch_keeps_the_batches_before() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log(dir.path(), 20, one_segment_config());
    let cut = positions[15] + 40; // inside batch 15's header
    let f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    f.set_len(cut).unwrap();
    assert_eq!(
        reopen_and_read(dir.path(), one_segment_config()),
        stored[..15]
    );

    // Cut inside the records of the last batch instead.
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log(dir.path(), 20, one_segment_config());
    let f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    f.set_len(positions[19] + 200).unwrap();
    assert_eq!(
        reopen_and_read(dir.path(), one_segment_config()),
        stored[..19]
    );
}

#[test]
fn zeroed_tail_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log(dir.path(), 20, one_segment_config());
    let file_len = std::fs::metadata(segment_path(dir.path(), 0))
        .unwrap()
        .len();
    // Zero from the middle of batch 12 to the end of the file (a lost page cache, say).
    let from = positions[12] + 100;
    let mut f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    f.seek(SeekFrom::Start(from)).unwrap();
    f.write_all(&vec![0u8; (file_len - from) as usize]).unwrap();
    drop(f);
    assert_eq!(
        reopen_and_read(dir.path(), one_segment_config()),
        stored[..12]
    );

    // Zero from a batch boundary: a clean end.
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log(dir.path(), 20, one_segment_config());
    let mut f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    f.seek(SeekFrom::Start(positions[17])).unwrap();
    f.write_all(&vec![0u8; 4096]).unwrap();
    drop(f);
    assert_eq!(
        reopen_and_read(dir.path(), one_segment_config()),
        stored[..17]
    );
}

#[test]
fn flipped_byte_in_the_active_segment_truncates_at_the_last_valid_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log(dir.path(), 20, one_segment_config());
    // Flip a byte inside batch 9's records: its CRC fails, and batches 10.. after it go too, even
    // though they are intact, because the log must stay contiguous.
    let at = positions[9] + 90;
    let byte = std::fs::read(segment_path(dir.path(), 0)).unwrap()[at as usize];
    let mut f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte ^ 0x10]).unwrap();
    drop(f);
    let kept = reopen_and_read(dir.path(), one_segment_config());
    assert_eq!(kept, stored[..9]);
    // The damaged bytes are gone from the file, not merely skipped.
    let len = std::fs::metadata(segment_path(dir.path(), 0))
        .unwrap()
        .len();
    assert!(len >= positions[9], "file holds the kept batches");
}

#[test]
fn flipped_header_byte_breaks_offset_continuity_and_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log(dir.path(), 10, one_segment_config());
    // baseOffset is outside the CRC: a flip there is caught by the offset-continuity check.
    let mut f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    f.seek(SeekFrom::Start(positions[6] + 7)).unwrap();
    f.write_all(&[0x7f]).unwrap();
    drop(f);
    assert_eq!(
        reopen_and_read(dir.path(), one_segment_config()),
        stored[..6]
    );
}

/// Writes enough for several sealed segments; returns the stored batches and segment bases.
fn write_sealed_segments(path: &Path) -> (Vec<(Offset, Vec<u8>)>, Vec<Offset>) {
    let (stored, _) = write_log(path, 150, small_config());
    let p = path.to_path_buf();
    let bases = run(move || async move {
        let log = Log::open(&p, small_config()).await.unwrap();
        let bases = log.segment_base_offsets();
        log.close().await.unwrap();
        bases
    });
    assert!(bases.len() >= 3, "need sealed segments, got {bases:?}");
    (stored, bases)
}

#[test]
fn missing_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, bases) = write_sealed_segments(dir.path());
    let idx = index_path(dir.path(), bases[1].0);
    let original = std::fs::read(&idx).unwrap();
    std::fs::remove_file(&idx).unwrap();
    assert_eq!(reopen_and_read(dir.path(), small_config()), stored);
    assert_eq!(
        std::fs::read(&idx).unwrap(),
        original,
        "the rebuilt index equals the original"
    );
}

#[test]
fn corrupt_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, bases) = write_sealed_segments(dir.path());
    let idx = index_path(dir.path(), bases[0].0);
    let original = std::fs::read(&idx).unwrap();
    let mut damaged = original.clone();
    damaged[50] ^= 0xff;
    std::fs::write(&idx, &damaged).unwrap();
    // And another index truncated to half.
    let idx2 = index_path(dir.path(), bases[1].0);
    let original2 = std::fs::read(&idx2).unwrap();
    std::fs::write(&idx2, &original2[..original2.len() / 2]).unwrap();
    assert_eq!(reopen_and_read(dir.path(), small_config()), stored);
    assert_eq!(std::fs::read(&idx).unwrap(), original);
    assert_eq!(std::fs::read(&idx2).unwrap(), original2);
}

#[test]
fn stray_temp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, bases) = write_sealed_segments(dir.path());
    let stray = dir.path().join(format!("{:020}.index.tmp", bases[1].0));
    std::fs::write(&stray, b"half-written index").unwrap();
    let stray2 = dir.path().join("log-start-offset.tmp");
    std::fs::write(&stray2, b"").unwrap();
    assert_eq!(reopen_and_read(dir.path(), small_config()), stored);
    assert!(!stray.exists() && !stray2.exists());
}

#[test]
fn corrupt_sealed_segment_with_missing_index_truncates_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, bases) = write_sealed_segments(dir.path());
    // Damage the middle of the second segment and remove its index, so recovery scans it.
    let seg = segment_path(dir.path(), bases[1].0);
    let len = std::fs::metadata(&seg).unwrap().len();
    let mut f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    drop(f);
    std::fs::remove_file(index_path(dir.path(), bases[1].0)).unwrap();
    let kept = reopen_and_read(dir.path(), small_config());
    assert!(!kept.is_empty());
    assert_eq!(
        kept[..],
        stored[..kept.len()],
        "what is kept is an exact prefix"
    );
    assert!(
        kept.last().unwrap().0 < bases[2],
        "nothing after the damage is kept"
    );
    assert!(
        kept.last().unwrap().0 >= bases[1],
        "everything before the damage is kept"
    );
    assert!(
        !segment_path(dir.path(), bases[2].0).exists(),
        "later segments are deleted"
    );
}

#[test]
fn corruption_in_a_trusted_sealed_segment_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, bases) = write_sealed_segments(dir.path());
    // Index intact, so the segment is trusted at open; the damage shows when it is read.
    let seg = segment_path(dir.path(), bases[0].0);
    let mut f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.seek(SeekFrom::Start(700)).unwrap();
    f.write_all(&[0x55; 3]).unwrap();
    drop(f);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, small_config()).await.unwrap();
        assert!(matches!(
            log.read(Offset(0), 1 << 20).await,
            Err(StorageError::Corrupt { .. })
        ));
        // Data in later segments is still served.
        let r = log.read(bases[1], 1 << 20).await.unwrap();
        assert_eq!(r.first_offset, Some(bases[1]));
        assert_eq!(
            common::split_batches(&r.bytes)[0],
            stored.iter().find(|(o, _)| *o == bases[1]).unwrap().clone()
        );
    });
}

#[test]
fn damaged_log_start_checkpoint_falls_back_to_the_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (_stored, bases) = write_sealed_segments(dir.path());
    let p = dir.path().to_path_buf();
    let start = bases[1].plus(3);
    run(move || async move {
        let log = Log::open(&p, small_config()).await.unwrap();
        log.truncate_prefix(start).await.unwrap();
        log.close().await.unwrap();
    });
    let checkpoint = dir.path().join("log-start-offset");
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&checkpoint, &bytes).unwrap();
    let p = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&p, small_config()).await.unwrap();
        assert_eq!(
            log.log_start_offset(),
            bases[1],
            "the first remaining segment bounds the start"
        );
    });
}

fn active_index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.active-index"))
}

#[test]
fn a_clean_close_checkpoints_the_active_index_so_a_reopen_scans_nothing_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log_closed_cleanly(dir.path(), 10, one_segment_config());
    let checkpoint = active_index_path(dir.path(), 0);
    assert!(
        checkpoint.exists(),
        "a clean close checkpoints the active index"
    );
    // Damage inside the checkpointed part goes unnoticed at open (it is not scanned)...
    let mut f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    f.seek(SeekFrom::Start(positions[3] + 100)).unwrap();
    f.write_all(&[0xff, 0xee]).unwrap();
    drop(f);
    let path = dir.path().to_path_buf();
    let end = stored.last().unwrap().0.plus(2);
    run(move || async move {
        let log = Log::open(&path, one_segment_config()).await.unwrap();
        assert_eq!(
            log.log_end_offset(),
            end,
            "nothing was cut: the open did not scan"
        );
        // ...and is still never served: reads validate every batch.
        assert!(matches!(
            log.read(Offset(6), 1 << 20).await,
            Err(StorageError::Corrupt { .. })
        ));
        let r = log.read(Offset(8), 1 << 20).await.unwrap();
        assert_eq!(r.first_offset, Some(Offset(8)));
        log.close().await.unwrap();
    });
}

#[test]
fn a_checkpoint_that_does_not_fit_the_segment_is_ignored_and_the_segment_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, positions) = write_log_closed_cleanly(dir.path(), 10, one_segment_config());
    // The segment lost its end (as if the checkpoint were from another life of the file): the
    // checkpoint covers more than the file holds, so the open scans and keeps what is valid.
    let seg = segment_path(dir.path(), 0);
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(positions[7] + 10)
        .unwrap();
    assert_eq!(
        reopen_and_read(dir.path(), one_segment_config()),
        stored[..7]
    );

    // A damaged checkpoint is ignored the same way.
    let dir = tempfile::tempdir().unwrap();
    let (stored, _) = write_log_closed_cleanly(dir.path(), 10, one_segment_config());
    let checkpoint = active_index_path(dir.path(), 0);
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    bytes[20] ^= 0x55;
    std::fs::write(&checkpoint, &bytes).unwrap();
    assert_eq!(reopen_and_read(dir.path(), one_segment_config()), stored);
    assert!(!checkpoint.exists() || std::fs::read(&checkpoint).unwrap() != bytes);
}
