//! The storage fault points (`faults::arm`) against a real log. fail-rs's registry is global
//! to the process, so this binary holds this one test.
//!
//! A write that fails before its first real wait (here the `storage::data_write` point; for
//! real, an error the submission itself returns) puts its chunk back in the write tail. The
//! loop that starts the streamed writes of sealed chunks took that chunk again at once, failed
//! again, and so on without ever yielding: `sluice chaos` saw 160,000 failed writes a second
//! and a shard that answered nothing until the point was disarmed.

mod common;

use std::time::Duration;

use common::batch;
use sluice_storage::{faults, LeaderEpoch, Log, LogConfig, StorageError};

#[test]
fn a_write_that_fails_at_once_fails_the_log_instead_of_spinning() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let config = LogConfig {
                    write_chunk_bytes: 16 * 1024,
                    unwritten_bytes_max: 1 << 20,
                    ..LogConfig::default()
                };
                let log = Log::open(&path, config).await.expect("open");
                log.append_durable(&batch(0, 4, 100, 0), LeaderEpoch(0))
                    .await
                    .expect("an append before the fault");
                faults::arm("storage::data_write=return(eio)").unwrap();
                // Each append seals a 16 KiB chunk or more: their writes start at once.
                let mut outcomes = Vec::new();
                for seed in 1..8 {
                    outcomes.push(log.append(&batch(seed, 8, 4000, 0), LeaderEpoch(0)).await);
                }
                let synced = log.sync().await;
                faults::arm("").unwrap();
                done_tx.send((outcomes, synced)).unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    });
    let (outcomes, synced) = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the appends return: the shard does not spin on the failing write");
    assert!(
        matches!(synced, Err(StorageError::Poisoned(_))),
        "the failed write fails the log: {synced:?}"
    );
    // The first append is buffered before its write fails; every later one is refused.
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert!(
        outcomes[1..]
            .iter()
            .all(|o| matches!(o, Err(StorageError::Poisoned(_)))),
        "{outcomes:?}"
    );
}
