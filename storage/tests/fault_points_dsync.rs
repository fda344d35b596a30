//! The fdatasync fault point against a lone log's O_DSYNC rounds (`LogConfig::dsync_lone_writes`):
//! such a round issues no fdatasync, its write is the sync, so a sync failing after the data
//! was written must fail that write and poison the log, as a failed fdatasync does; the batch
//! is then possibly persisted (a restart finds it). fail-rs's registry is global to the
//! process, so this binary holds this one test.

mod common;

use std::time::Duration;

use common::{batch, read_all, run};
use sluice_storage::{faults, FlushMode, LeaderEpoch, Log, LogConfig, StorageError, SyncGroup};

#[test]
fn a_lone_round_s_o_dsync_write_meets_the_fdatasync_fault_point_and_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    run(move || async move {
        let group = SyncGroup::new(FlushMode::Shared);
        let log = Log::open(&path, LogConfig::default()).await.expect("open");
        log.join_sync_group(&group);
        for seed in 0..3 {
            log.append_durable(&batch(seed, 1, 200, 0), LeaderEpoch(0))
                .await
                .expect("an append before the fault");
        }
        glommio::timer::sleep(Duration::from_millis(300)).await; // zeroing finishes
        let before = group.stats();
        log.append_durable(&batch(3, 1, 200, 0), LeaderEpoch(0))
            .await
            .expect("a lone overwrite round");
        let lone = group.stats().dsync_writes - before.dsync_writes;
        assert_eq!(lone, 1, "the round before the fault was an O_DSYNC write");

        faults::arm("storage::fdatasync=return(eio)").unwrap();
        let failed = log
            .append_durable(&batch(4, 1, 200, 0), LeaderEpoch(0))
            .await;
        faults::arm("").unwrap();
        assert!(
            failed.is_err(),
            "the failed sync fails the append: {failed:?}"
        );
        let after = log.append(&batch(5, 1, 200, 0), LeaderEpoch(0)).await;
        assert!(
            matches!(after, Err(StorageError::Poisoned(_))),
            "and poisons the log: {after:?}"
        );
        assert_eq!(
            log.durable_end_offset().0,
            4,
            "the four appends before it stay durable"
        );
        drop(log);

        // Recovery reads what the file holds: the failed round's batch was written.
        let reopened = Log::open(&path, LogConfig::default())
            .await
            .expect("reopen");
        assert_eq!(
            read_all(&reopened).await.len(),
            5,
            "and the failed one was written: possibly persisted"
        );
        reopened.close().await.unwrap();
    });
}
