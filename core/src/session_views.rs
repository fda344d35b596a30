//! The owning shard's part of fetch sessions: for each session with partitions on this shard,
//! their fetch positions and what the session's consumer was last told about each, so an
//! incremental fetch looks only at the partitions that may have news, not at all of them.
//!
//! The session's home shard (`fetch_sessions`) decides what a session holds and sends each
//! owner its part as [`ViewOp`]s, once per fetch, with the first round of that fetch. A round
//! ([`answer_round`]) looks at the view's *candidates*: partitions whose high watermark or log
//! start moved since the view last looked (the shard's [`ChangeFeed`]), partitions the request
//! named (new position or limit), and partitions left *due* by the last look (records beyond
//! the fetch position not yet taken by the consumer, or an error). Any other partition would
//! answer no records, the high watermark and log start offset it last sent, and no error: an
//! incremental response leaves it out, so not looking at it changes nothing.
//!
//! Invariants:
//! - `SessionView::sent` of a partition is what the last round that included it answered
//!   (-1 for the high watermark after an error, or before anything was sent);
//! - every partition with a change after `SessionView::seen` is found through the feed, or the
//!   view looks at everything (`seen` is `None`, or the feed no longer reaches back);
//! - a round runs for the session's current fetch epoch only: a round of an older fetch is
//!   refused (`Stale`) before it looks or remembers anything.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::changes::ChangeFeed;
use crate::fetch::{answer_targets, FetchLimits, FetchOutput, Target};
use crate::shard::{PartitionKey, Shard};
use crate::topics::Topic;
use sluice_storage::Offset;

/// Sessions with at most this many partitions on a shard wait on each partition; larger ones
/// wait on the shard's change feed (woken by any change there, then filtered), so a waiting
/// fetch costs one registration, not thousands.
const PARTITION_WAITS_UP_TO: usize = 16;

/// What a consumer was last told about a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// -1: nothing sent yet, or an error was.
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

impl Sent {
    pub const NOTHING: Sent = Sent {
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
    };

    pub fn of(output: &FetchOutput) -> Sent {
        Sent {
            high_watermark: if output.error.is_some() {
                -1
            } else {
                output.high_watermark
            },
            last_stable_offset: if output.error.is_some() {
                -1
            } else {
                output.last_stable_offset
            },
            log_start_offset: output.log_start_offset,
        }
    }
}

/// A partition of a session, placed on its owning shard.
#[derive(Debug, Clone)]
pub struct ViewPartition {
    pub topic: Arc<Topic>,
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: usize,
    pub current_leader_epoch: i32,
}

/// A change the home sends an owner about one slot of a session.
#[derive(Debug, Clone)]
pub enum ViewOp {
    /// The slot now holds this partition (replacing what it held), last told `sent`.
    Put {
        slot: usize,
        partition: ViewPartition,
        sent: Sent,
    },
    /// The slot's partition has a new fetch position, byte limit and leader epoch.
    Move {
        slot: usize,
        fetch_offset: i64,
        partition_max_bytes: usize,
        current_leader_epoch: i32,
    },
    /// The slot left the session (or this shard).
    Remove { slot: usize },
}

/// A batch of ops for one owner; `full` replaces the owner's whole view with the ops' `Put`s.
#[derive(Debug, Clone)]
pub struct ViewUpdate {
    pub full: bool,
    pub ops: Vec<ViewOp>,
}

/// Why an owner could not run a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundError {
    /// The owner has no view of the session (never sent, or dropped): send a full update.
    Missing,
    /// A newer fetch of the session has begun: this one is abandoned.
    Stale,
}

#[derive(Debug)]
struct Entry {
    partition: ViewPartition,
    sent: Sent,
}

#[derive(Debug)]
struct SessionView {
    /// The fetch epoch of the session's newest fetch that reached this view.
    epoch: i32,
    entries: HashMap<usize, Entry>,
    by_key: HashMap<PartitionKey, usize>,
    /// Slots to look at next round whatever the feed says.
    due: BTreeSet<usize>,
    /// The feed sequence up to which changes have been looked at; `None`: look at everything.
    seen: Option<u64>,
    /// The slot the next round looks at first (candidates go in slot order from here, then
    /// wrap): a round reads records only until the fetch's byte limit, so each round starts
    /// after the last partition the previous one gave records of, and none starves.
    start_at: usize,
}

impl SessionView {
    fn new(epoch: i32) -> SessionView {
        SessionView {
            epoch,
            entries: HashMap::new(),
            by_key: HashMap::new(),
            due: BTreeSet::new(),
            seen: None,
            start_at: 0,
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(old) = self.entries.remove(&slot) {
            let key = (old.partition.topic.id, old.partition.partition);
            if self.by_key.get(&key) == Some(&slot) {
                self.by_key.remove(&key);
            }
        }
        self.due.remove(&slot);
    }

    fn apply(&mut self, op: ViewOp) {
        match op {
            ViewOp::Put {
                slot,
                partition,
                sent,
            } => {
                self.remove(slot);
                self.by_key
                    .insert((partition.topic.id, partition.partition), slot);
                self.entries.insert(slot, Entry { partition, sent });
                self.due.insert(slot);
            }
            ViewOp::Move {
                slot,
                fetch_offset,
                partition_max_bytes,
                current_leader_epoch,
            } => {
                if let Some(entry) = self.entries.get_mut(&slot) {
                    entry.partition.fetch_offset = fetch_offset;
                    entry.partition.partition_max_bytes = partition_max_bytes;
                    entry.partition.current_leader_epoch = current_leader_epoch;
                    self.due.insert(slot);
                }
            }
            ViewOp::Remove { slot } => self.remove(slot),
        }
    }

    /// The slots this round must look at, from `start_at` on; the view has then seen the
    /// feed up to its end.
    fn take_candidates(&mut self, feed: &ChangeFeed) -> Vec<usize> {
        let changed = self.seen.and_then(|seen| feed.since(seen));
        self.seen = Some(feed.next_seq());
        let mut candidates = std::mem::take(&mut self.due);
        match changed {
            None => candidates.extend(self.entries.keys().copied()),
            Some(keys) => {
                candidates.extend(keys.iter().filter_map(|key| self.by_key.get(key).copied()))
            }
        }
        let later = candidates.split_off(&self.start_at);
        later.into_iter().chain(candidates).collect()
    }
}

/// The views of one shard, by session id.
#[derive(Debug, Default)]
pub struct SessionViews {
    views: HashMap<i32, SessionView>,
}

impl SessionViews {
    pub fn drop_session(&mut self, session: i32) {
        self.views.remove(&session);
    }

    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }
}

/// Runs on the owner: applies the fetch's update to the session's view (a full one creates
/// it), then answers the partitions that may have news; only those the incremental response
/// must carry (records, an error, or another high watermark or log start than last sent) are
/// returned, by slot. `limits.max_bytes` is the request's limit, capping every partition's;
/// its isolation level is the request's too.
pub(crate) async fn answer_round(
    shard: &Shard,
    session: i32,
    epoch: i32,
    update: Option<ViewUpdate>,
    limits: FetchLimits,
) -> Result<Vec<(usize, FetchOutput)>, RoundError> {
    let max_bytes = limits.max_bytes;
    let targets: Vec<Target> = {
        let mut views = shard.session_views.borrow_mut();
        if update.as_ref().is_some_and(|u| u.full) {
            views.views.insert(session, SessionView::new(epoch));
        }
        let view = views.views.get_mut(&session).ok_or(RoundError::Missing)?;
        match update {
            Some(update) => {
                view.epoch = epoch;
                for op in update.ops {
                    view.apply(op);
                }
            }
            None if view.epoch != epoch => return Err(RoundError::Stale),
            None => {}
        }
        view.take_candidates(&shard.changes)
            .into_iter()
            .filter_map(|slot| {
                let p = &view.entries.get(&slot)?.partition;
                Some(Target {
                    index: slot,
                    topic: p.topic.clone(),
                    partition: p.partition,
                    offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes.min(max_bytes),
                    current_leader_epoch: p.current_leader_epoch,
                    read_committed: limits.read_committed,
                })
            })
            .collect()
    };
    let answers = answer_targets(shard, &targets, max_bytes).await;
    let mut views = shard.session_views.borrow_mut();
    let view = views.views.get_mut(&session).ok_or(RoundError::Missing)?;
    if view.epoch != epoch {
        return Err(RoundError::Stale);
    }
    if let Some(last_read) = targets
        .iter()
        .zip(&answers)
        .filter(|(_, answer)| !answer.records.is_empty())
        .last()
    {
        view.start_at = last_read.0.index + 1;
    }
    let mut included = Vec::new();
    for (target, answer) in targets.iter().zip(answers) {
        let Some(entry) = view.entries.get_mut(&target.index) else {
            continue;
        };
        if entry.partition.topic.id != target.topic.id
            || entry.partition.partition != target.partition
        {
            continue;
        }
        if is_due(&answer, target) {
            view.due.insert(target.index);
        }
        let now = Sent::of(&answer);
        if !answer.records.is_empty() || answer.error.is_some() || now != entry.sent {
            entry.sent = now;
            included.push((target.index, answer));
        }
    }
    Ok(included)
}

/// Whether a partition just answered would answer news again with nothing changed: records
/// past the consumer's position it may read (a byte limit of 0 reads none, so a long poll
/// must not spin on it), or an error.
fn is_due(answer: &FetchOutput, target: &Target) -> bool {
    answer.error.is_some()
        || (answer.readable_end(target.read_committed) > target.offset && target.max_bytes > 0)
}

/// Runs on the owner: resolves once a partition of the session's view may have news (at once
/// if one is due, the view is gone or belongs to a newer fetch), or after `limit`.
pub(crate) async fn wait_round(shard: &Shard, session: i32, epoch: i32, limit: Duration) {
    let timer = glommio::timer::sleep(limit);
    futures::pin_mut!(timer);
    let news = wait_for_news(shard, session, epoch);
    futures::pin_mut!(news);
    futures::future::select(timer, news).await;
}

/// What a waiting fetch waits on next.
enum Wait {
    /// Something may be news now.
    Done,
    /// Each partition's growth past what was last sent (none open: only the deadline).
    Partitions(Vec<futures::channel::oneshot::Receiver<()>>),
    /// The shard's next change.
    Feed(futures::channel::oneshot::Receiver<()>),
}

async fn wait_for_news(shard: &Shard, session: i32, epoch: i32) {
    loop {
        match next_wait(shard, session, epoch) {
            Wait::Done => return,
            Wait::Partitions(waits) if waits.is_empty() => futures::future::pending().await,
            Wait::Partitions(waits) => {
                let _ = futures::future::select_all(waits).await;
                return;
            }
            Wait::Feed(next) => {
                let _ = next.await;
            }
        }
    }
}

fn next_wait(shard: &Shard, session: i32, epoch: i32) -> Wait {
    let mut views = shard.session_views.borrow_mut();
    let Some(view) = views.views.get_mut(&session) else {
        return Wait::Done;
    };
    if view.epoch != epoch || !view.due.is_empty() {
        return Wait::Done;
    }
    let Some(seen) = view.seen else {
        return Wait::Done;
    };
    if view.entries.len() <= PARTITION_WAITS_UP_TO {
        return Wait::Partitions(
            view.entries
                .values()
                .filter_map(|e| {
                    shard
                        .open_partition((e.partition.topic.id, e.partition.partition))
                        .map(|p| p.wait_beyond(Offset(e.sent.high_watermark)))
                })
                .collect(),
        );
    }
    match shard.changes.since(seen) {
        None => Wait::Done,
        Some(keys) if keys.iter().any(|k| view.by_key.contains_key(k)) => Wait::Done,
        Some(_) => {
            // Nothing of this session changed: those entries need no look.
            let next = shard.changes.next_seq();
            view.seen = Some(next);
            Wait::Feed(shard.changes.wait_from(next))
        }
    }
}

/// Runs on the owner: the view of a new session (a full update).
pub(crate) fn install_view(shard: &Shard, session: i32, update: ViewUpdate) {
    let mut view = SessionView::new(0);
    for op in update.ops {
        view.apply(op);
    }
    shard.session_views.borrow_mut().views.insert(session, view);
}

/// Runs on the owner: forgets the session's view (the home closed or evicted it).
pub(crate) fn drop_view(shard: &Rc<Shard>, session: i32) {
    shard.session_views.borrow_mut().drop_session(session);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn topic() -> Arc<Topic> {
        Arc::new(Topic {
            name: "t".into(),
            id: uuid::Uuid::new_v4(),
            partitions: 100,
            configs: BTreeMap::new(),
        })
    }

    fn put(topic: &Arc<Topic>, slot: usize, partition: i32) -> ViewOp {
        ViewOp::Put {
            slot,
            partition: ViewPartition {
                topic: topic.clone(),
                partition,
                fetch_offset: 0,
                partition_max_bytes: 1024,
                current_leader_epoch: -1,
            },
            sent: Sent::NOTHING,
        }
    }

    /// A view at epoch 1 whose slots `0..slots` hold partitions `first_partition..` of `topic`.
    fn view_of(topic: &Arc<Topic>, slots: usize, first_partition: i32) -> SessionView {
        let mut view = SessionView::new(1);
        for slot in 0..slots {
            view.apply(put(topic, slot, first_partition + slot as i32));
        }
        view
    }

    #[test]
    fn a_view_looks_at_everything_first_then_at_what_changed_or_is_due() {
        let feed = ChangeFeed::new(4);
        let t = topic();
        let mut view = view_of(&t, 10, 50);
        let mut all = view.take_candidates(&feed);
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>(), "a new view looks at all");
        assert!(view.take_candidates(&feed).is_empty(), "nothing changed");
        // A change of a partition of the view, one of another, and a moved position.
        feed.push((t.id, 53));
        feed.push((t.id, 7));
        view.apply(ViewOp::Move {
            slot: 8,
            fetch_offset: 4,
            partition_max_bytes: 1024,
            current_leader_epoch: -1,
        });
        assert_eq!(view.take_candidates(&feed), vec![3, 8]);
        view.due.insert(5);
        assert_eq!(view.take_candidates(&feed), vec![5], "due until looked at");
        assert!(view.take_candidates(&feed).is_empty());
        // Removed partitions are no longer found through the feed.
        view.apply(ViewOp::Remove { slot: 1 });
        feed.push((t.id, 51));
        assert!(view.take_candidates(&feed).is_empty());
        // Changes past the feed's window: everything again.
        for p in 0..5 {
            feed.push((t.id, 90 + p));
        }
        let mut all = view.take_candidates(&feed);
        all.sort();
        assert_eq!(all, vec![0, 2, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn candidates_start_where_the_last_round_stopped_giving_records() {
        let feed = ChangeFeed::new(64);
        let mut view = view_of(&topic(), 6, 0);
        view.take_candidates(&feed);
        view.start_at = 4;
        view.due.extend([1, 3, 4, 5]);
        assert_eq!(
            view.take_candidates(&feed),
            vec![4, 5, 1, 3],
            "from slot 4 on, then from the first"
        );
        view.start_at = 6;
        view.due.extend([0, 5]);
        assert_eq!(
            view.take_candidates(&feed),
            vec![0, 5],
            "past the last slot: wrap"
        );
    }

    #[test]
    fn a_partition_is_due_while_it_has_records_to_give_or_an_error() {
        // High watermark 10, last stable offset 6.
        let answer = |error: Option<kafka_protocol::ResponseError>| FetchOutput {
            error,
            high_watermark: 10,
            last_stable_offset: 6,
            log_start_offset: 0,
            records: bytes::Bytes::new(),
            aborted_transactions: None,
        };
        let target = |offset: i64, max_bytes: usize, read_committed: bool| Target {
            index: 0,
            topic: topic(),
            partition: 0,
            offset,
            max_bytes,
            current_leader_epoch: -1,
            read_committed,
        };
        assert!(
            is_due(&answer(None), &target(4, 1024, false)),
            "records beyond the position"
        );
        assert!(
            !is_due(&answer(None), &target(10, 1024, false)),
            "read to the end"
        );
        assert!(
            !is_due(&answer(None), &target(4, 0, false)),
            "a limit of 0 bytes reads nothing: not due, or a long poll would spin"
        );
        assert!(is_due(&answer(None), &target(4, 1024, true)));
        assert!(
            !is_due(&answer(None), &target(6, 1024, true)),
            "read_committed stops at the last stable offset"
        );
        assert!(is_due(&answer(None), &target(6, 1024, false)));
        let failed = answer(Some(kafka_protocol::ResponseError::NotLeaderOrFollower));
        assert!(
            is_due(&failed, &target(4, 0, false)),
            "errors are answered every time"
        );
    }

    #[test]
    fn a_put_replaces_what_a_slot_held() {
        let feed = ChangeFeed::new(8);
        let (a, b) = (topic(), topic());
        let mut view = SessionView::new(1);
        view.apply(put(&a, 0, 1));
        view.take_candidates(&feed);
        view.apply(put(&b, 0, 1));
        assert_eq!(view.entries.len(), 1);
        assert_eq!(view.entries[&0].partition.topic.id, b.id);
        assert!(!view.by_key.contains_key(&(a.id, 1)), "the old key is gone");
        assert_eq!(
            view.take_candidates(&feed),
            vec![0],
            "a new partition is due"
        );
    }
}
