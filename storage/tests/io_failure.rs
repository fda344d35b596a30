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

/// Runs the child test `name` of this binary with `env` naming `dir`; its standard output.
fn run_child(name: &str, env: &str, dir: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, dir)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `ACK <offset> <seed>` lines a child printed. (The first one shares its line with the
/// test harness's "test <name> ... ".)
fn acked_in(stdout: &str) -> Vec<(Offset, u64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut p = l.split("ACK ").nth(1)?.split(' ');
            Some((Offset(p.next()?.parse().ok()?), p.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_failed_write_poisons_the_log_and_loses_no_acknowledged_batch() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stdout = run_child("io_failure_child", ENV_DIR, dir.path());
    let acked = acked_in(&stdout);
    assert!(
        acked.len() > 5,
        "some appends succeed under the limit:\n{stdout}"
    );
    let failed = stdout
        .lines()
        .find(|l| l.starts_with("FAILED "))
        .expect("an append failed");
    // A write that starts below the limit and crosses it is cut short by the kernel (chunk
    // sizes vary with the rate, so where the writes fall is not fixed); one that starts at the
    // limit fails with EFBIG. Both are failed writes.
    assert!(
        failed.contains("File too large") || failed.contains("short write"),
        "the kernel's EFBIG or short write is reported: {failed}"
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

const ENV_NO_SPACE_DIR: &str = "SLUICE_NO_SPACE_DIR";

/// Preallocation on: space is reserved (fallocate) before an append takes offsets.
fn reserving_config() -> LogConfig {
    LogConfig {
        preallocate_bytes: 64 * 1024,
        ..config()
    }
}

#[test]
#[ignore = "child process of a_refused_reservation_refuses_the_append_and_the_log_goes_on"]
fn no_space_child() {
    let Ok(dir) = std::env::var(ENV_NO_SPACE_DIR) else {
        return;
    };
    let set_limit = |bytes: u64| {
        // SAFETY: plain libc calls on this process's own signal disposition and resource limit.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
    };
    set_limit(FILE_SIZE_LIMIT);
    run(move || async move {
        let log = Log::open(&dir, reserving_config())
            .await
            .expect("open under the limit");
        let mut seed = 0u64;
        loop {
            match log
                .append_durable(&batch(seed, 3, 3000, 0), LeaderEpoch(0))
                .await
            {
                Ok(a) => println!("ACK {} {seed}", a.base_offset.0),
                Err(e) => {
                    println!("REFUSED {e}");
                    break;
                }
            }
            seed += 1;
        }
        // Refused, not poisoned: reads serve every acknowledged batch, the next append is
        // refused the same way (the refusal holds until a reservation goes through), and
        // once space is back the log finds out by itself and appends go on at the same offset.
        let held = read_all(&log).await;
        println!("READ {}", held.len());
        let again = log.append(&batch(seed, 3, 3000, 0), LeaderEpoch(0)).await;
        println!("AGAIN {}", matches!(again, Err(StorageError::NoSpace(_))));
        set_limit(libc::RLIM_INFINITY);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let a = loop {
            match log
                .append_durable(&batch(seed, 3, 3000, 0), LeaderEpoch(0))
                .await
            {
                Err(StorageError::NoSpace(_)) if std::time::Instant::now() < deadline => {
                    glommio::timer::sleep(std::time::Duration::from_millis(20)).await
                }
                other => break other.expect("appends resume once space is back"),
            }
        };
        println!("ACK {} {seed}", a.base_offset.0);
        log.close().await.expect("close");
    });
}

#[test]
fn a_refused_reservation_refuses_the_append_and_the_log_goes_on() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let stdout = run_child("no_space_child", ENV_NO_SPACE_DIR, dir.path());
    let acked = acked_in(&stdout);
    let refused = stdout
        .lines()
        .find(|l| l.starts_with("REFUSED "))
        .expect("an append was refused");
    assert!(refused.contains("File too large"), "{refused}");
    assert!(!refused.contains("poisoned"), "{refused}");
    let before_refusal = acked.len() - 1;
    assert!(
        before_refusal > 5,
        "appends succeed under the limit:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("READ {before_refusal}")),
        "{stdout}"
    );
    assert!(stdout.contains("AGAIN true"), "{stdout}");
    // The append after the limit was lifted took the very next offset: nothing was skipped.
    let (last, prev) = (acked[acked.len() - 1].0, acked[acked.len() - 2].0);
    assert_eq!(last, prev.plus(3));

    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, reserving_config()).await.expect("reopen");
        let held = read_all(&log).await;
        assert_eq!(held.len(), acked.len());
        for ((offset, seed), (held_offset, bytes)) in acked.iter().zip(&held) {
            assert_eq!(offset, held_offset);
            assert_eq!(*bytes, stamped(batch(*seed, 3, 3000, 0), *offset, 0));
        }
    });
}
