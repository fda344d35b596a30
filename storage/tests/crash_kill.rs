//! Crash safety under SIGKILL: a child process appends with several concurrent durable appenders
//! (and one non-durable one), printing `ACK <offset> <seed>` after each durable acknowledgement;
//! the parent kills it at a random moment, reopens the log, and checks that
//! - every acknowledged batch is there, at its offset, bit-identical;
//! - every batch served is whole and valid, offsets are contiguous, and each batch is one that
//!   some appender really wrote (unacknowledged ones may or may not survive);
//! - the log accepts appends again.
//!
//! The child's log shares a shard durability round (`SyncGroup`, shared flush) with a
//! neighbour log, so kills also land in rounds covering several logs.
//!
//! 50 rounds on the same directory, so recoveries stack on top of earlier recoveries.
//! The child is this same test binary, re-run with `--ignored --exact crash_child_appender`.
//! The kill-timing seed is printed; set `SLUICE_CRASH_SEED` to replay a run.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{batch, read_all, run, stamped};
use sluice_storage::{FlushMode, LeaderEpoch, Log, LogConfig, Offset, SyncGroup};

const ROUNDS: u64 = 50;
const DURABLE_APPENDERS: u64 = 4;
const EPOCH: i32 = 1;
const ENV_DIR: &str = "SLUICE_CRASH_CHILD_DIR";
const ENV_SEED_BASE: &str = "SLUICE_CRASH_CHILD_SEED_BASE";

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 512 * 1024,
        index_interval_bytes: 4096,
        write_chunk_bytes: 64 * 1024,
        unwritten_bytes_max: 256 * 1024,
        writes_in_flight_max: 2,
        preallocate_bytes: 256 * 1024,
        batch_bytes_max: 64 * 1024,
        // Checkpoints of the active index often, so kills land around them too.
        active_index_checkpoint_bytes: 32 * 1024,
        ..LogConfig::default()
    }
}

/// The batch an appender writes for `seed`; the parent regenerates it to compare.
fn batch_for(seed: u64) -> Vec<u8> {
    if seed % 10 == 9 {
        batch(seed, 4, 5_000, seed as i64) // the large, non-durable kind
    } else {
        batch(
            seed,
            1 + (seed % 4) as usize,
            100 + (seed % 700) as usize,
            seed as i64,
        )
    }
}

/// The seed a stored batch was built from: it is in every record key (`key-<seed>-<i>`).
fn seed_of(stored: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stored);
    let at = text.find("key-").expect("stored batch carries a key");
    let rest = &text[at + 4..];
    rest[..rest.find('-').expect("key format")]
        .parse()
        .expect("seed digits")
}

#[test]
#[ignore = "child process of crash_kill_recovers_every_acknowledged_batch"]
fn crash_child_appender() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let seed_base: u64 = std::env::var(ENV_SEED_BASE).unwrap().parse().unwrap();
    run(move || async move {
        // The log shares its durability rounds with a neighbour, as a shard's partitions do,
        // so kills land inside rounds that cover several logs and share one flush.
        let group = SyncGroup::new(FlushMode::Shared);
        let log = Log::open(&dir, config())
            .await
            .expect("child opens the log");
        log.join_sync_group(&group);
        let neighbour = Log::open(Path::new(&dir).with_file_name("neighbour"), config())
            .await
            .expect("child opens the neighbour log");
        neighbour.join_sync_group(&group);
        let mut tasks = Vec::new();
        tasks.push(glommio::spawn_local(async move {
            for n in 0.. {
                neighbour
                    .append_durable(&batch_for(n * 10), LeaderEpoch(EPOCH))
                    .await
                    .unwrap();
            }
        }));
        for appender in 0..DURABLE_APPENDERS {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for n in 0.. {
                    let mut seed = seed_base + appender * 100_000 + n * 10;
                    if seed % 10 == 9 {
                        seed += 1;
                    }
                    let a = log
                        .append_durable(&batch_for(seed), LeaderEpoch(EPOCH))
                        .await
                        .unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {}", a.base_offset.0, seed).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        let log2 = log.clone();
        tasks.push(glommio::spawn_local(async move {
            for n in 0.. {
                let seed = seed_base + 900_000 + n * 10 + 9;
                log2.append(&batch_for(seed), LeaderEpoch(EPOCH))
                    .await
                    .unwrap();
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
        }));
        for t in tasks {
            t.await;
        }
    });
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn run_child_and_kill(dir: &Path, seed_base: u64, kill_after: Duration) -> Vec<(Offset, u64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_appender",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_SEED_BASE, seed_base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let mut parts = line.strip_prefix("ACK ")?.split(' ');
                let offset = parts.next()?.parse().ok()?;
                let seed = parts.next()?.parse().ok()?;
                Some((Offset(offset), seed))
            })
            .collect::<Vec<_>>()
    });
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the child"); // Child::kill sends SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, it did not finish");
    reader.join().unwrap()
}

#[test]
fn crash_kill_recovers_every_acknowledged_batch() {
    let seed = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            nanos as u64 ^ u64::from(std::process::id())
        });
    println!("crash test seed: SLUICE_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path: PathBuf = dir.path().join("log");
    let mut acked: BTreeMap<Offset, u64> = BTreeMap::new();
    let mut total_acks_seen = 0usize;
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(20 + rng.next() % 150);
        let acks = run_child_and_kill(&path, (round + 1) * 10_000_000, kill_after);
        total_acks_seen += acks.len();
        for (offset, seed) in acks {
            assert!(
                acked.insert(offset, seed).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
        let acked_now = acked.clone();
        let p = path.clone();
        let probe_seed = (round + 1) * 10_000_000 + 5_000_000;
        let probe_offset = run(move || async move {
            let log = Log::open(&p, config()).await.expect("reopen after SIGKILL");
            let held = read_all(&log).await;
            let mut next = log.log_start_offset();
            let by_offset: BTreeMap<Offset, &Vec<u8>> = held.iter().map(|(o, b)| (*o, b)).collect();
            for (offset, bytes) in &held {
                assert_eq!(*offset, next, "round {round}: offsets are contiguous");
                let expected = stamped(batch_for(seed_of(bytes)), *offset, EPOCH);
                assert!(
                    bytes == &expected,
                    "round {round}: batch at {offset} is not one an appender wrote, intact"
                );
                next = next.plus(i64::from(
                    sluice_storage::batch::validate_batch(bytes, usize::MAX)
                        .unwrap()
                        .last_offset_delta
                        + 1,
                ));
            }
            assert_eq!(next, log.log_end_offset());
            for (offset, seed) in &acked_now {
                let stored = by_offset.get(offset).unwrap_or_else(|| {
                    panic!("round {round}: acknowledged batch at {offset} lost")
                });
                let expected = stamped(batch_for(*seed), *offset, EPOCH);
                assert!(
                    **stored == expected,
                    "round {round}: acknowledged batch at {offset} changed"
                );
            }
            // The recovered log takes appends again.
            let a = log
                .append_durable(&batch_for(probe_seed), LeaderEpoch(EPOCH))
                .await
                .unwrap();
            assert_eq!(a.base_offset, next);
            log.close().await.unwrap();
            a.base_offset
        });
        // That probe batch is durable too: later rounds check it like any acknowledged batch.
        acked.insert(probe_offset, probe_seed);
    }
    assert!(total_acks_seen > 0, "the children acknowledged something");
    println!("{ROUNDS} SIGKILL rounds, {total_acks_seen} acknowledged batches checked");
}
