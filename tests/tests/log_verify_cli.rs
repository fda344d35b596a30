//! `sluice log verify <dir>` on logs written by the storage engine: it recovers the directory
//! as the broker will and reports what it holds; damage is cut off, not reported as data.

use std::process::Command;

use sluice_storage::batch::build_batch;
use sluice_storage::{LeaderEpoch, Log, LogConfig};
use sluice_tests::sluice_binary;

fn write_log(dir: std::path::PathBuf, batches: usize) -> Vec<u64> {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let log = Log::open(&dir, LogConfig::default()).await.unwrap();
            let mut ends = Vec::new();
            let mut pos = 0u64;
            for i in 0..batches {
                let value = vec![b'v'; 200 + i];
                let b = build_batch(
                    1000 + i as i64,
                    &[
                        (1000 + i as i64, b"k", &value),
                        (1001 + i as i64, b"k2", b"x"),
                    ],
                );
                log.append_durable(&b, LeaderEpoch(0)).await.unwrap();
                pos += b.len() as u64;
                ends.push(pos);
            }
            log.close().await.unwrap();
            ends
        })
        .unwrap()
        .join()
        .unwrap()
}

fn verify(dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(sluice_binary())
        .args(["log", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_reports_an_intact_log() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path().to_path_buf(), 25);
    let (ok, stdout, stderr) = verify(dir.path());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("offsets [0, 50)"), "{stdout}");
    assert!(stdout.contains("25 batches"), "{stdout}");
}

#[test]
fn verify_recovers_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_log(dir.path().to_path_buf(), 10);
    let segment = dir.path().join(format!("{:020}.log", 0));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .unwrap();
    f.set_len(ends[6] + 30).unwrap(); // tear batch 7
    let (ok, stdout, stderr) = verify(dir.path());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("offsets [0, 14)"), "{stdout}");
    assert!(stdout.contains("7 batches"), "{stdout}");
}

#[test]
fn unknown_commands_fail_with_usage() {
    let out = Command::new(sluice_binary())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: sluice"));
}
