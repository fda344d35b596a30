//! One partition replica on its owning shard: its log, and the fetches waiting for new data.
//!
//! Single node: this broker is the leader of every partition at epoch 0, and the high
//! watermark is the log end (every replica there is, is in sync). Records appended with acks=1
//! are visible to consumers before they are fdatasync'ed, as in Kafka.

use std::cell::RefCell;
use std::path::Path;

use futures::channel::oneshot;
use sluice_storage::{AppendInfo, LeaderEpoch, Log, LogConfig, Offset, Result};

/// The leader epoch stamped on every batch (single node: leadership never changes).
pub const LEADER_EPOCH: LeaderEpoch = LeaderEpoch(0);

pub struct Partition {
    log: Log,
    /// Fetches waiting for the log end to move. Senders whose receiver is gone are pruned on
    /// every registration, so the list holds at most the waiting fetches.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Partition {
    pub async fn open(dir: &Path, config: LogConfig) -> Result<Partition> {
        Ok(Partition {
            log: Log::open(dir, config).await?,
            waiters: RefCell::default(),
        })
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn dir(&self) -> &Path {
        self.log.dir()
    }

    /// The offset after the last record a consumer may read.
    pub fn high_watermark(&self) -> Offset {
        self.log.log_end_offset()
    }

    /// Appends validated batches; with `durable`, returns only once they are fdatasync'ed.
    /// Wakes the fetches waiting for data either way.
    pub async fn append(&self, batches: &[u8], durable: bool) -> Result<AppendInfo> {
        let appended = if durable {
            self.log.append_durable(batches, LEADER_EPOCH).await
        } else {
            self.log.append(batches, LEADER_EPOCH).await
        };
        if appended.is_ok() {
            for waiter in self.waiters.borrow_mut().drain(..) {
                let _ = waiter.send(());
            }
        }
        appended
    }

    /// Resolves once the high watermark is above `seen` (at once if it already is), or when
    /// the partition is closed.
    pub fn wait_beyond(&self, seen: Offset) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.high_watermark() > seen {
            let _ = tx.send(());
        } else {
            let mut waiters = self.waiters.borrow_mut();
            waiters.retain(|w| !w.is_canceled());
            waiters.push(tx);
        }
        rx
    }

    /// Flushes and closes the log; waiting fetches are released.
    pub async fn close(&self) -> Result<()> {
        self.waiters.borrow_mut().clear();
        self.log.close().await
    }
}
