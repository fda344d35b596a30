//! The shard's feed of partition changes: which of its partitions' high watermark or log start
//! offset moved, in the order they moved, so that a fetch session of thousands of partitions
//! looks only at the partitions that changed since its last look instead of all of them.
//!
//! Every change is one entry, numbered by a sequence that only grows (`seq`). The feed keeps
//! the newest `capacity` entries; a reader whose last seen sequence fell out of the window must
//! look at everything again ([`ChangeFeed::since`] answers `None`).
//!
//! Invariant: every change of a partition's high watermark or log start offset, and its
//! closing, is pushed here by the partition (`Partition::note_changed`) before any reader
//! could observe the new value through the feed; an entry may be pushed without a change
//! (readers re-check the partition, so a spare entry costs a look, never a wrong answer).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use futures::channel::oneshot;

use crate::shard::PartitionKey;

/// Entries kept by default: at 10,000 changes per second on one shard, six seconds of them.
pub const DEFAULT_CAPACITY: usize = 1 << 16;

pub struct ChangeFeed {
    capacity: usize,
    /// The sequence number of `entries[0]`.
    first: Cell<u64>,
    entries: RefCell<VecDeque<PartitionKey>>,
    /// Readers waiting for the next entry; all are woken by every push.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl ChangeFeed {
    pub fn new(capacity: usize) -> ChangeFeed {
        ChangeFeed {
            capacity: capacity.max(1),
            first: Cell::new(0),
            entries: RefCell::new(VecDeque::new()),
            waiters: RefCell::default(),
        }
    }

    /// The sequence number the next entry will get: a reader that has looked at everything
    /// up to now remembers this.
    pub fn next_seq(&self) -> u64 {
        self.first.get() + self.entries.borrow().len() as u64
    }

    /// Records that `key` changed, and wakes every waiting reader.
    pub fn push(&self, key: PartitionKey) {
        {
            let mut entries = self.entries.borrow_mut();
            if entries.len() == self.capacity {
                entries.pop_front();
                self.first.set(self.first.get() + 1);
            }
            entries.push_back(key);
        }
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// The partitions changed at or after `seq` (with repeats), or `None` when entries from
    /// `seq` on are no longer kept.
    pub fn since(&self, seq: u64) -> Option<Vec<PartitionKey>> {
        let first = self.first.get();
        if seq < first {
            return None;
        }
        let entries = self.entries.borrow();
        let skip = usize::try_from(seq - first).unwrap_or(usize::MAX);
        Some(entries.iter().skip(skip).copied().collect())
    }

    /// Resolves once an entry numbered `seq` or later exists (at once if one does).
    pub fn wait_from(&self, seq: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.next_seq() > seq {
            let _ = tx.send(());
        } else {
            let mut waiters = self.waiters.borrow_mut();
            waiters.retain(|w| !w.is_canceled());
            waiters.push(tx);
        }
        rx
    }
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn readers_see_what_changed_since_their_last_look_until_it_falls_out_of_the_window() {
        let feed = ChangeFeed::new(3);
        let topic = Uuid::new_v4();
        let start = feed.next_seq();
        assert_eq!(feed.since(start), Some(vec![]));
        feed.push((topic, 1));
        feed.push((topic, 2));
        assert_eq!(feed.since(start), Some(vec![(topic, 1), (topic, 2)]));
        let later = feed.next_seq();
        feed.push((topic, 3));
        assert_eq!(feed.since(later), Some(vec![(topic, 3)]));
        feed.push((topic, 4));
        assert_eq!(feed.since(start), None, "entry 0 fell out of the window");
        assert_eq!(feed.since(later), Some(vec![(topic, 3), (topic, 4)]));
        assert_eq!(feed.next_seq(), 4);
    }

    #[test]
    fn a_waiting_reader_is_woken_by_the_next_push() {
        let feed = ChangeFeed::new(8);
        let mut now = feed.wait_from(feed.next_seq());
        assert_eq!(now.try_recv(), Ok(None), "nothing yet");
        let mut already = feed.wait_from(0);
        feed.push((Uuid::new_v4(), 0));
        assert_eq!(now.try_recv(), Ok(Some(())));
        let mut past = feed.wait_from(0);
        assert_eq!(past.try_recv(), Ok(Some(())), "an entry at 0 exists");
        assert_eq!(already.try_recv(), Ok(Some(())));
    }
}
