//! The write-buffer budget of a shard: how much DMA memory the write tails of all its logs may
//! hold before appends are slowed.
//!
//! Every log of a shard charges the memory its write tail holds (chunks and spares) to the
//! shard's budget, updating the charge whenever the tail grows or shrinks. While the shard is
//! over its limit, an append to a log with writes in flight waits for one of them to complete
//! (which frees that log's written chunks) before it returns: producers are slowed to the
//! device's pace, never failed. A log's working set (its filling chunk, the newest written one)
//! is not held back, so every log can always make progress; the limit bounds the backlog of
//! unwritten chunks, which is what grows without bound when producers outrun the disk.
//!
//! Invariant: `used` is the sum of the charges of the live logs that joined the budget.

use std::cell::Cell;
use std::rc::Rc;

/// Counters of a budget (metrics, and how tests see back-pressure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteBudgetStats {
    pub limit: usize,
    pub used: usize,
    /// The most ever charged at once.
    pub peak: usize,
    /// Appends that waited because the shard was over its limit.
    pub waits: u64,
}

struct Inner {
    limit: usize,
    used: Cell<usize>,
    peak: Cell<usize>,
    waits: Cell<u64>,
}

/// A shard's write-buffer budget. Cheap to clone (a handle); `!Send`, like the logs.
#[derive(Clone)]
pub struct WriteBudget {
    inner: Rc<Inner>,
}

impl WriteBudget {
    pub fn new(limit_bytes: usize) -> WriteBudget {
        WriteBudget {
            inner: Rc::new(Inner {
                limit: limit_bytes,
                used: Cell::new(0),
                peak: Cell::new(0),
                waits: Cell::new(0),
            }),
        }
    }

    pub fn stats(&self) -> WriteBudgetStats {
        WriteBudgetStats {
            limit: self.inner.limit,
            used: self.inner.used.get(),
            peak: self.inner.peak.get(),
            waits: self.inner.waits.get(),
        }
    }

    pub(crate) fn is_over(&self) -> bool {
        self.inner.used.get() > self.inner.limit
    }

    /// Moves a log's charge from `from` to `to` bytes.
    pub(crate) fn recharge(&self, from: usize, to: usize) {
        let used = self.inner.used.get() - from.min(self.inner.used.get()) + to;
        self.inner.used.set(used);
        self.inner.peak.set(self.inner.peak.get().max(used));
    }

    pub(crate) fn count_wait(&self) {
        self.inner.waits.set(self.inner.waits.get() + 1);
    }
}
