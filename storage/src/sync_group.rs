//! Group commit across the logs of a shard: one durability round makes every waiting log of the
//! shard durable together, instead of one round (and one fdatasync) per partition.
//!
//! A round takes every log queued since the last round, and for all of them at once takes the
//! log's io lock and writes out what it buffered (the writes run concurrently). Once every
//! write of the round has completed, it makes them durable:
//! - a log that made metadata-changing writes (into blocks not yet written and synced: a new
//!   segment, or a writer ahead of its zeroing) fdatasyncs its own file, which also commits
//!   the filesystem journal for it;
//! - a log whose writes were all overwrites of safe blocks (see `OverwriteState`: zeroed
//!   ahead and synced, or written and synced before) needs no metadata, only the device's
//!   volatile cache flushed. With a shared flush, one fdatasync per device, issued after every
//!   write of the round completed, covers all of them: fdatasync must flush the device cache
//!   after it is called (for its own file's direct-I/O overwrites, which the filesystem does not
//!   track), and a cache flush covers every write the device completed before it.
//!
//! A round that writes one log alone, whose write-out is a single overwrite of safe blocks
//! with no other write in flight (a lone partition at a low rate: every acks=all record its
//! own round), writes it through the segment's `O_DSYNC` descriptor instead
//! (`LogConfig::dsync_lone_writes`): the write is durable when it completes, and the round
//! issues no fdatasync. That saves a system call and a wake-up of the shard between the write
//! and the fdatasync (docs/benchmarks.md, "O_DSYNC for lone writes").
//!
//! One round runs at a time per group; logs that fill up meanwhile share the next round.
//!
//! Invariant: a log's durable end moves only after an fdatasync that began after the log's
//! writes of the round completed, either its own file's or (for overwrite-only logs, with
//! shared flush) one on the same device; or after its round's only write, an `O_DSYNC`
//! overwrite issued when no other write of the log was in flight and every write completed
//! before it had been made durable, completed. (On a device with FUA an `O_DSYNC` overwrite
//! makes only itself durable, not the writes completed before it.)

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::channel::oneshot;
use futures::future::join_all;

use crate::log::{Log, RoundPart};

/// Rounds at least this long are logged (warn) with their parts.
const SLOW_ROUND: std::time::Duration = std::time::Duration::from_millis(50);

/// How a round makes overwrite-only logs durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// One fdatasync per device per round covers every log whose writes were overwrites.
    Shared,
    /// Every log in the round fdatasyncs its own file (concurrently).
    PerFile,
}

/// Counters of a group's rounds (metrics, and how tests see batching).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncGroupStats {
    pub rounds: u64,
    /// Log parts made durable, summed over rounds.
    pub logs_synced: u64,
    pub fdatasyncs: u64,
    /// Log parts made durable by their own `O_DSYNC` write (no fdatasync).
    pub dsync_writes: u64,
}

struct Inner {
    mode: FlushMode,
    queue: RefCell<Vec<Log>>,
    in_flight: Cell<bool>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    stats: Cell<SyncGroupStats>,
}

/// The durability rounds of one shard. Cheap to clone (a handle); `!Send`, like the logs.
#[derive(Clone)]
pub struct SyncGroup {
    inner: Rc<Inner>,
}

/// Ends a round however it ends: the next one may start, and its waiters wake.
struct RoundGuard<'a>(&'a Inner);

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(false);
        for waiter in self.0.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl SyncGroup {
    pub fn new(mode: FlushMode) -> SyncGroup {
        SyncGroup {
            inner: Rc::new(Inner {
                mode,
                queue: RefCell::new(Vec::new()),
                in_flight: Cell::new(false),
                waiters: RefCell::new(Vec::new()),
                stats: Cell::new(SyncGroupStats::default()),
            }),
        }
    }

    pub fn mode(&self) -> FlushMode {
        self.inner.mode
    }

    pub fn stats(&self) -> SyncGroupStats {
        self.inner.stats.get()
    }

    /// Queues `log` for the next round (once).
    pub(crate) fn enqueue(&self, log: &Log) {
        if !log.group_queue_flag().replace(true) {
            self.inner.queue.borrow_mut().push(log.clone());
        }
    }

    /// Waits for the round in flight to end, or runs the next one if none is in flight.
    pub(crate) async fn wait_for_round(&self) {
        if self.inner.in_flight.get() {
            let (tx, rx) = oneshot::channel();
            self.inner.waiters.borrow_mut().push(tx);
            let _ = rx.await;
        } else {
            self.run_round().await;
        }
    }

    async fn run_round(&self) {
        self.inner.in_flight.set(true);
        let round = RoundGuard(&self.inner);
        let started = std::time::Instant::now();
        let logs = std::mem::take(&mut *self.inner.queue.borrow_mut());
        for log in &logs {
            log.group_queue_flag().set(false);
        }
        // A log that fails here is poisoned or closed; its waiters see that when they wake.
        let alone = logs.len() == 1 && self.inner.mode == FlushMode::Shared;
        let parts: Vec<RoundPart<'_>> =
            join_all(logs.iter().map(|log| log.begin_group_round(alone)))
                .await
                .into_iter()
                .filter_map(|part| part.ok().flatten())
                .collect();
        if parts.is_empty() {
            return;
        }
        let written = started.elapsed();
        // Every write of the round has completed: any fdatasync from here on flushes them.
        let syncs_own: Vec<bool> = parts
            .iter()
            .map(|p| p.metadata_writes > 0 || self.inner.mode == FlushMode::PerFile)
            .collect();
        let own: Vec<usize> = (0..parts.len()).filter(|&i| syncs_own[i]).collect();
        let mut anchors: Vec<usize> = Vec::new();
        if self.inner.mode == FlushMode::Shared {
            // One fdatasync per device: an own sync there serves, else the first log on it.
            let mut covered: Vec<u64> = own.iter().map(|&i| parts[i].log.device()).collect();
            covered.sort_unstable();
            covered.dedup();
            for (i, part) in parts.iter().enumerate() {
                if part.durable_by_write {
                    continue;
                }
                if !covered.contains(&part.log.device()) {
                    covered.push(part.log.device());
                    anchors.push(i);
                }
            }
        }
        let synced: Vec<usize> = own.iter().chain(anchors.iter()).copied().collect();
        let results = join_all(synced.iter().map(|&i| crate::io::fdatasync(&parts[i].file))).await;
        let mut flushed_devices = Vec::new();
        let mut failed = vec![false; parts.len()];
        for (&i, result) in synced.iter().zip(results) {
            match result {
                Ok(()) => flushed_devices.push(parts[i].log.device()),
                Err(e) => {
                    failed[i] = true;
                    let _ = parts[i].log.fail_sync(e);
                }
            }
        }
        let mut logs_synced = 0;
        let mut dsync_writes = 0;
        for (i, part) in parts.iter().enumerate() {
            if failed[i] {
                continue;
            }
            if syncs_own[i] {
                part.synced_own_file();
                logs_synced += 1;
            } else if part.durable_by_write {
                part.made_durable();
                logs_synced += 1;
                dsync_writes += 1;
            } else if flushed_devices.contains(&part.log.device()) {
                // Overwrites only: nothing of the file's metadata was needed, and a flush of
                // the device that began after its writes completed has ended.
                part.made_durable();
                logs_synced += 1;
            }
        }
        let took = started.elapsed();
        if took >= SLOW_ROUND {
            // Every acks=all answer waiting on this round waited this long.
            tracing::warn!(
                logs = parts.len(),
                own_fdatasyncs = own.len(),
                shared_flushes = anchors.len(),
                write_ms = written.as_millis() as u64,
                fdatasync_ms = (took - written).as_millis() as u64,
                "slow durability round"
            );
        }
        let mut stats = self.inner.stats.get();
        stats.rounds += 1;
        stats.logs_synced += logs_synced;
        stats.fdatasyncs += synced.len() as u64;
        stats.dsync_writes += dsync_writes;
        self.inner.stats.set(stats);
        // Waiters may go on while the parts finish (index checkpoints, when due).
        drop(round);
        join_all(parts.into_iter().map(RoundPart::finish)).await;
    }
}
