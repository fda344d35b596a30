//! A write that fails for real poisons the log. The child process (this test binary re-run
//! with `--ignored --exact io_failure_child`) limits its file size with RLIMIT_FSIZE, so the
//! kernel fails the segment write with EFBIG once the file would grow past it, and appends
//! durably until that happens. Then every call must report `Poisoned`, never pretend success;
//! and a reopened log (no limit) must hold every batch that was acknowledged, intact.
//!
//! Why poison: after a failed write or fdatasync the state of the file is unknown (the kernel
//! may have dropped dirty pages), so only a recovery from what is on disk can be trusted.

#![allow(unsafe_code)] // setrlimit/signal in the child process only

mod common;

use std::process::Command;

use common::{batch, read_all, run, stamped};
use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset, StorageError};

const ENV_DIR: &str = "SLUICE_IO_FAILURE_DIR";
const FILE_SIZE_LIMIT: u64 = 512 * 1024;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 20,
        write_chunk_bytes: 64 * 1024,
        unwritten_bytes_max: 256 * 1024,
        preallocate_bytes: 0,
        ..LogConfig::default()
    }
}

#[test]
#[ignore = "child process of a_failed_write_poisons_the_log_and_loses_no_acknowledged_batch"]
fn io_failure_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    // SAFETY: plain libc calls on this process's own signal disposition and resource limit,
    // made before any other thread of this child touches files.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: FILE_SIZE_LIMIT,
            rlim_max: FILE_SIZE_LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    run(move || async move {
        let log = Log::open(&dir, config())
            .await
            .expect("open under the limit");
        for seed in 0u64.. {
            match log
                .append_durable(&batch(seed, 3, 3000, 0), LeaderEpoch(0))
                .await
            {
                Ok(a) => println!("ACK {} {seed}", a.base_offset.0),
                Err(e) => {
                    println!("FAILED {e}");
                    break;
                }
            }
        }
        let poisoned = |r: Result<(), StorageError>| matches!(r, Err(StorageError::Poisoned(_)));
        let append = log
            .append(&batch(1, 1, 10, 0), LeaderEpoch(0))
            .await
            .map(|_| ());
        let read = log.read(Offset(0), 1000).await.map(|_| ());
        let sync = log.sync().await.map(|_| ());
        let truncate = log.truncate(Offset(0)).await.map(|_| ());
        println!(
            "POISONED append={} read={} sync={} truncate={}",
            poisoned(append),
            poisoned(read),
            poisoned(sync),
            poisoned(truncate)
        );
    });
}

#[test]
fn a_failed_write_poisons_the_log_and_loses_no_acknowledged_batch() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "io_failure_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked: Vec<(Offset, u64)> = stdout
        .lines()
        .filter_map(|l| {
            let mut p = l.strip_prefix("ACK ")?.split(' ');
            Some((Offset(p.next()?.parse().ok()?), p.next()?.parse().ok()?))
        })
        .collect();
    assert!(
        acked.len() > 5,
        "some appends succeed under the limit:\n{stdout}"
    );
    let failed = stdout
        .lines()
        .find(|l| l.starts_with("FAILED "))
        .expect("an append failed");
    assert!(
        failed.contains("File too large"),
        "the kernel's EFBIG is reported: {failed}"
    );
    assert!(
        stdout.contains("POISONED append=true read=true sync=true truncate=true"),
        "every later call reports the poisoned log:\n{stdout}"
    );

    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, config())
            .await
            .expect("reopen without the limit");
        let held = read_all(&log).await;
        for (offset, seed) in &acked {
            let expected = stamped(batch(*seed, 3, 3000, 0), *offset, 0);
            let found = held.iter().find(|(o, _)| o == offset);
            assert!(
                found.is_some_and(|(_, b)| *b == expected),
                "acknowledged batch at {offset} intact"
            );
        }
        let a = log
            .append_durable(&batch(999, 1, 10, 0), LeaderEpoch(0))
            .await
            .unwrap();
        assert_eq!(a.base_offset, log.log_end_offset().plus(-1));
    });
}
