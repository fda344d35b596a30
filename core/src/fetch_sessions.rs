//! Fetch sessions (KIP-227): the broker remembers a consumer's partitions and fetch positions
//! between requests, so an incremental fetch names only what changed and its response carries
//! only the partitions with something new.
//!
//! Each shard keeps a bounded cache of the sessions it created. A session id is a random
//! positive `i32` with `id % shards == shard`, so any shard a request reaches knows the session's
//! home without asking; incremental requests run on the home shard (clients may reconnect, and
//! a new connection can land on another shard).
//!
//! Kafka's rules, kept here:
//! - epoch `-1` (final) is a sessionless full fetch; epoch `0` (initial) is a full fetch that
//!   creates a session; both close the session they name, if any. Epoch `> 0` is incremental:
//!   an unknown id is FETCH_SESSION_ID_NOT_FOUND, another epoch than the session's next one is
//!   INVALID_FETCH_SESSION_EPOCH, a switch between topic names and ids is
//!   FETCH_SESSION_TOPIC_ID_ERROR.
//! - An incremental request's partitions are added to the session or update its fetch position
//!   and byte limit; its forgotten topics leave it; the rest keep what they had.
//! - A partition is in an incremental response when it carries records or an error, or its
//!   high watermark or log start offset differs from the one last sent. Partitions that
//!   returned records move to the end of the session's order, so a response's `max_bytes`
//!   does not starve the same partitions every time.
//! - A full cache evicts the least recently used session idle for the eviction time, else the
//!   smallest session if the new one is larger (Kafka's `max.incremental.fetch.session.cache.slots`
//!   and `min.incremental.fetch.session.eviction.ms`); if neither, the new fetch is answered
//!   without a session (id 0) and the client goes on with full fetches.
//!
//! Invariant: `Session::index` maps each partition key of the session to its slot, and
//! `Session::order` lists exactly those slots once each; freed slots are in `Session::free`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use crate::fetch::{FetchInput, FetchOutput};
use crate::TopicRef;

/// The session id meaning "no session".
pub const NO_SESSION: i32 = 0;

/// What a request's `session_id` and `session_epoch` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRequest {
    /// A full fetch without a session (epoch -1); closes `close` if it is set.
    Sessionless { close: Option<i32> },
    /// A full fetch creating a session (epoch 0); closes `close` if it is set.
    Create { close: Option<i32> },
    /// An incremental fetch on session `id`, which must be at `epoch`.
    Incremental { id: i32, epoch: i32 },
}

impl SessionRequest {
    pub fn of(session_id: i32, epoch: i32) -> SessionRequest {
        let close = (session_id != NO_SESSION).then_some(session_id);
        match epoch {
            -1 => SessionRequest::Sessionless { close },
            0 => SessionRequest::Create { close },
            // Negative epochs other than -1 are not defined; Kafka treats them as incremental
            // and refuses them for the epoch.
            _ => SessionRequest::Incremental {
                id: session_id,
                epoch,
            },
        }
    }
}

/// The home shard of session `id`.
pub fn home_shard(id: i32, shards: usize) -> usize {
    (id.max(0) as usize) % shards.max(1)
}

/// A partition of a session: where the consumer reads and what it was last told.
#[derive(Debug, Clone)]
struct CachedPartition {
    topic: TopicRef,
    partition: i32,
    fetch_offset: i64,
    partition_max_bytes: i32,
    /// The high watermark last sent (-1: not sent, or last sent with an error).
    high_watermark: i64,
    /// The log start offset last sent.
    log_start_offset: i64,
}

#[derive(Debug)]
struct Session {
    epoch: i32,
    /// Created by a request naming topics by id (Fetch v13+) or by name.
    uses_topic_ids: bool,
    /// The partitions, in slots that do not move (freed slots are reused).
    slots: Vec<CachedPartition>,
    free: Vec<usize>,
    /// The slots in fetch order; rotating partitions reorders this only.
    order: Vec<usize>,
    /// Partition key → slot.
    index: HashMap<(TopicRef, i32), usize>,
    last_used: Instant,
}

impl Session {
    fn new(uses_topic_ids: bool, capacity: usize, now: Instant) -> Session {
        Session {
            epoch: 1,
            uses_topic_ids,
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            order: Vec::with_capacity(capacity),
            index: HashMap::with_capacity(capacity),
            last_used: now,
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    /// Adds the partition, or updates its position and byte limit. Returns its slot.
    fn upsert(&mut self, input: &FetchInput) -> usize {
        let key = (input.topic.clone(), input.partition);
        if let Some(&slot) = self.index.get(&key) {
            let cached = &mut self.slots[slot];
            cached.fetch_offset = input.fetch_offset;
            cached.partition_max_bytes = input.partition_max_bytes;
            return slot;
        }
        let cached = CachedPartition {
            topic: input.topic.clone(),
            partition: input.partition,
            fetch_offset: input.fetch_offset,
            partition_max_bytes: input.partition_max_bytes,
            high_watermark: -1,
            log_start_offset: -1,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = cached;
                slot
            }
            None => {
                self.slots.push(cached);
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        self.order.push(slot);
        slot
    }

    fn forget(&mut self, forgotten: &[(TopicRef, i32)]) {
        let mut freed = Vec::new();
        for key in forgotten {
            if let Some(slot) = self.index.remove(key) {
                freed.push(slot);
            }
        }
        if !freed.is_empty() {
            let gone: std::collections::HashSet<usize> = freed.iter().copied().collect();
            self.order.retain(|slot| !gone.contains(slot));
            self.free.extend(freed);
        }
    }

    fn inputs(&self) -> Vec<FetchInput> {
        self.order
            .iter()
            .map(|&slot| {
                let p = &self.slots[slot];
                FetchInput {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    fetch_offset: p.fetch_offset,
                    partition_max_bytes: p.partition_max_bytes,
                }
            })
            .collect()
    }
}

/// The epoch after `epoch` (wrapping past `i32::MAX` to 1, as Kafka does).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

/// An incremental fetch under way: the partitions to read, in the session's order, and what
/// each was last told.
#[derive(Debug)]
pub struct IncrementalFetch {
    pub id: i32,
    /// The epoch the session moved to when this fetch began.
    epoch: i32,
    pub inputs: Vec<FetchInput>,
    last_sent: Vec<(i64, i64)>,
}

/// One shard's fetch sessions.
#[derive(Debug)]
pub struct FetchSessionCache {
    shard: usize,
    shards: usize,
    slots: usize,
    eviction_after: Duration,
    sessions: HashMap<i32, Session>,
}

impl FetchSessionCache {
    /// A cache of shard `shard` (of `shards`) holding at most `slots` sessions; 0 slots: no
    /// sessions (every fetch is full).
    pub fn new(
        shard: usize,
        shards: usize,
        slots: usize,
        eviction_after: Duration,
    ) -> FetchSessionCache {
        FetchSessionCache {
            shard,
            shards: shards.max(1),
            slots,
            eviction_after,
            sessions: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Forgets session `id` (a full fetch naming it closes it). Returns whether it existed.
    pub fn close(&mut self, id: i32) -> bool {
        self.sessions.remove(&id).is_some()
    }

    /// Creates a session holding the partitions of a full fetch and what its response said.
    /// Returns the new id, or [`NO_SESSION`] when the cache is full and nothing may be evicted.
    pub fn create(
        &mut self,
        uses_topic_ids: bool,
        inputs: &[FetchInput],
        outputs: &[FetchOutput],
        now: Instant,
    ) -> i32 {
        if self.slots == 0
            || (self.sessions.len() >= self.slots && !self.evict_for(inputs.len(), now))
        {
            return NO_SESSION;
        }
        let mut session = Session::new(uses_topic_ids, inputs.len(), now);
        for (input, output) in inputs.iter().zip(outputs) {
            let slot = session.upsert(input);
            remember_sent(&mut session.slots[slot], output);
        }
        let id = self.new_id();
        self.sessions.insert(id, session);
        id
    }

    /// Begins an incremental fetch: checks the session and epoch, applies the request's
    /// partitions and forgotten partitions, and moves the session to its next epoch.
    pub fn begin_incremental(
        &mut self,
        id: i32,
        epoch: i32,
        uses_topic_ids: bool,
        changed: &[FetchInput],
        forgotten: &[(TopicRef, i32)],
        now: Instant,
    ) -> Result<IncrementalFetch, ResponseError> {
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(ResponseError::FetchSessionIdNotFound)?;
        if session.epoch != epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch);
        }
        if session.uses_topic_ids != uses_topic_ids {
            return Err(ResponseError::FetchSessionTopicIdError);
        }
        session.forget(forgotten);
        for input in changed {
            session.upsert(input);
        }
        session.epoch = next_epoch(epoch);
        session.last_used = now;
        Ok(IncrementalFetch {
            id,
            epoch: session.epoch,
            inputs: session.inputs(),
            last_sent: session
                .order
                .iter()
                .map(|&slot| {
                    let p = &session.slots[slot];
                    (p.high_watermark, p.log_start_offset)
                })
                .collect(),
        })
    }

    /// Ends an incremental fetch: which of its partitions the response carries (one flag per
    /// input), remembering what is sent and moving partitions that returned records to the end.
    /// A session closed or moved on meanwhile is left alone.
    pub fn finish_incremental(
        &mut self,
        fetch: &IncrementalFetch,
        outputs: &[FetchOutput],
    ) -> Vec<bool> {
        let include: Vec<bool> = fetch
            .last_sent
            .iter()
            .zip(outputs)
            .map(|(&(hw, log_start), out)| {
                !out.records.is_empty()
                    || out.error.is_some()
                    || out.high_watermark != hw
                    || out.log_start_offset != log_start
            })
            .collect();
        let Some(session) = self.sessions.get_mut(&fetch.id) else {
            return include;
        };
        if session.epoch != fetch.epoch {
            return include;
        }
        // Same epoch: nothing changed the session since `begin_incremental`, so its partitions
        // are the fetch's inputs, in order.
        debug_assert_eq!(session.order.len(), outputs.len());
        let mut moved = false;
        for (&slot, output) in session.order.iter().zip(outputs) {
            remember_sent(&mut session.slots[slot], output);
            moved |= !output.records.is_empty();
        }
        if moved {
            // A stable partition of the order: quiet partitions keep theirs, those that
            // returned records follow in theirs. Slots (and the index) do not move.
            let (quiet, busy): (Vec<_>, Vec<_>) = session
                .order
                .iter()
                .zip(outputs)
                .partition(|(_, out)| out.records.is_empty());
            session.order = quiet
                .into_iter()
                .chain(busy)
                .map(|(&slot, _)| slot)
                .collect();
        }
        include
    }

    /// Makes room for a session of `size` partitions. Returns false if none may go.
    fn evict_for(&mut self, size: usize, now: Instant) -> bool {
        let stale = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_used) >= self.eviction_after)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(&id, _)| id);
        let victim = stale.or_else(|| {
            self.sessions
                .iter()
                .min_by_key(|(_, s)| (s.len(), s.last_used))
                .filter(|(_, s)| s.len() < size)
                .map(|(&id, _)| id)
        });
        match victim {
            Some(id) => {
                tracing::debug!(shard = self.shard, session = id, "fetch session evicted");
                self.sessions.remove(&id);
                true
            }
            None => false,
        }
    }

    /// A fresh random id whose home is this shard.
    fn new_id(&self) -> i32 {
        let stride = (i32::MAX as usize) / self.shards;
        loop {
            let random = (uuid::Uuid::new_v4().as_u128() as u64) as usize % stride;
            let id = (random * self.shards + self.shard) as i32;
            if id != NO_SESSION && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }
}

fn remember_sent(cached: &mut CachedPartition, output: &FetchOutput) {
    // After an error the next answer is always sent (Kafka keeps -1 for the same reason).
    cached.high_watermark = if output.error.is_some() {
        -1
    } else {
        output.high_watermark
    };
    cached.log_start_offset = output.log_start_offset;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn input(p: i32, offset: i64) -> FetchInput {
        FetchInput {
            topic: TopicRef::Name("t".into()),
            partition: p,
            fetch_offset: offset,
            partition_max_bytes: 1024,
        }
    }

    fn output(hw: i64, records: &'static [u8]) -> FetchOutput {
        FetchOutput {
            error: None,
            high_watermark: hw,
            log_start_offset: 0,
            records: Bytes::from_static(records),
        }
    }

    fn cache(slots: usize) -> FetchSessionCache {
        FetchSessionCache::new(1, 4, slots, Duration::from_secs(120))
    }

    #[test]
    fn request_kinds_follow_the_epoch() {
        assert_eq!(
            SessionRequest::of(0, -1),
            SessionRequest::Sessionless { close: None }
        );
        assert_eq!(
            SessionRequest::of(7, 0),
            SessionRequest::Create { close: Some(7) }
        );
        assert_eq!(
            SessionRequest::of(7, 3),
            SessionRequest::Incremental { id: 7, epoch: 3 }
        );
    }

    #[test]
    fn ids_live_on_their_shard() {
        let mut c = cache(100);
        let now = Instant::now();
        for _ in 0..50 {
            let id = c.create(false, &[input(0, 0)], &[output(0, b"")], now);
            assert!(id > 0);
            assert_eq!(home_shard(id, 4), 1);
        }
        assert_eq!(c.len(), 50);
    }

    #[test]
    fn incremental_responses_carry_only_what_changed_and_rotate_busy_partitions() {
        let mut c = cache(10);
        let now = Instant::now();
        let inputs = [input(0, 0), input(1, 0), input(2, 0)];
        let id = c.create(
            false,
            &inputs,
            &[output(5, b""), output(5, b""), output(5, b"")],
            now,
        );
        let fetch = c
            .begin_incremental(id, 1, false, &[input(1, 3)], &[], now)
            .unwrap();
        assert_eq!(fetch.inputs[1].fetch_offset, 3);
        let include =
            c.finish_incremental(&fetch, &[output(5, b""), output(6, b"x"), output(5, b"")]);
        assert_eq!(include, vec![false, true, false]);
        // Partition 1 returned records: it now comes last.
        let fetch = c.begin_incremental(id, 2, false, &[], &[], now).unwrap();
        let order: Vec<i32> = fetch.inputs.iter().map(|i| i.partition).collect();
        assert_eq!(order, vec![0, 2, 1]);
        // A changed high watermark alone is news; an error always is.
        let mut failed = output(5, b"");
        failed.error = Some(ResponseError::NotLeaderOrFollower);
        let include = c.finish_incremental(&fetch, &[output(7, b""), failed, output(6, b"")]);
        assert_eq!(include, vec![true, true, false]);
    }

    #[test]
    fn wrong_session_epoch_or_naming_is_refused_and_forgotten_partitions_leave() {
        let mut c = cache(10);
        let now = Instant::now();
        let id = c.create(
            false,
            &[input(0, 0), input(1, 0)],
            &[output(0, b""), output(0, b"")],
            now,
        );
        assert_eq!(
            c.begin_incremental(id + 4, 1, false, &[], &[], now)
                .unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
        assert_eq!(
            c.begin_incremental(id, 2, false, &[], &[], now)
                .unwrap_err(),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert_eq!(
            c.begin_incremental(id, 1, true, &[], &[], now).unwrap_err(),
            ResponseError::FetchSessionTopicIdError
        );
        let fetch = c
            .begin_incremental(id, 1, false, &[], &[(TopicRef::Name("t".into()), 0)], now)
            .unwrap();
        assert_eq!(fetch.inputs.len(), 1);
        assert_eq!(fetch.inputs[0].partition, 1);
        // The same epoch again is stale now.
        assert_eq!(
            c.begin_incremental(id, 1, false, &[], &[], now)
                .unwrap_err(),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert!(c.close(id));
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_stale_then_smaller_sessions_or_answers_without_one() {
        let mut c = cache(2);
        let t0 = Instant::now();
        let small = c.create(false, &[input(0, 0)], &[output(0, b"")], t0);
        let big = c.create(
            false,
            &[input(0, 0), input(1, 0)],
            &[output(0, b""), output(0, b"")],
            t0,
        );
        // Nothing stale, and a session of one partition is not larger than any: refused.
        assert_eq!(
            c.create(false, &[input(0, 0)], &[output(0, b"")], t0),
            NO_SESSION
        );
        // A larger session displaces the smallest.
        let three = [input(0, 0), input(1, 0), input(2, 0)];
        let outs = [output(0, b""), output(0, b""), output(0, b"")];
        let larger = c.create(false, &three, &outs, t0);
        assert_ne!(larger, NO_SESSION);
        assert!(!c.close(small), "the smallest session was evicted");
        // Once idle past the eviction time, the least recently used goes for anything.
        let later = t0 + Duration::from_secs(121);
        c.begin_incremental(larger, 1, false, &[], &[], later)
            .unwrap();
        let tiny = c.create(false, &[input(0, 0)], &[output(0, b"")], later);
        assert_ne!(tiny, NO_SESSION);
        assert!(!c.close(big), "the stale session was evicted");
        assert!(c.close(larger));
    }

    #[test]
    fn no_slots_means_no_sessions() {
        let mut c = cache(0);
        assert_eq!(
            c.create(false, &[input(0, 0)], &[output(0, b"")], Instant::now()),
            NO_SESSION
        );
    }
}
