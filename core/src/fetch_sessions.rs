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
//! This module is the home's half: membership, places and order. What each partition was last
//! told, and which partitions have news, is kept by the owning shards (`session_views`); the
//! home sends them the changes of each request as [`ViewOp`]s.
//!
//! Invariants: `Session::index` maps each partition key of the session to its slot, and exactly
//! those slots are filled; freed slots are in `Session::free`. Every change of a filled slot's
//! place, position or presence is sent to its owner (old and new) as an op of the fetch that made
//! it, or the owner is sent its whole part (`full_update`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use crate::fetch::{FetchInput, FetchOutput};
use crate::session_views::{Sent, ViewOp, ViewPartition, ViewUpdate};
use crate::topics::Topic;
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

/// Where a session's partition lives, as the home last resolved it against the catalog.
#[derive(Debug, Clone)]
pub enum Place {
    /// Not a partition of the catalog: answered with this error every fetch.
    Unknown(ResponseError),
    /// On shard `owner`.
    On { owner: usize, topic: Arc<Topic> },
}

/// A partition of a session: where the consumer reads, and where it lives.
#[derive(Debug, Clone)]
struct CachedPartition {
    topic: TopicRef,
    partition: i32,
    fetch_offset: i64,
    partition_max_bytes: i32,
    current_leader_epoch: i32,
    place: Place,
    /// The response order: lowest first; a partition that returned records gets the next
    /// rank, so it goes after the others next time (`max_bytes` does not starve the same
    /// partitions every time).
    rank: u64,
}

impl CachedPartition {
    fn view_partition(&self, topic: &Arc<Topic>) -> ViewPartition {
        ViewPartition {
            topic: topic.clone(),
            partition: self.partition,
            fetch_offset: self.fetch_offset,
            partition_max_bytes: usize::try_from(self.partition_max_bytes).unwrap_or(0),
            current_leader_epoch: self.current_leader_epoch,
        }
    }
}

#[derive(Debug)]
struct Session {
    epoch: i32,
    /// Created by a request naming topics by id (Fetch v13+) or by name.
    uses_topic_ids: bool,
    /// The partitions, in slots that do not move (freed slots are reused); owners know the
    /// partitions by slot.
    slots: Vec<Option<CachedPartition>>,
    free: Vec<usize>,
    /// Partition key → slot.
    index: HashMap<(TopicRef, i32), usize>,
    next_rank: u64,
    /// The catalog version the places were resolved against.
    catalog_version: u64,
    last_used: Instant,
}

/// The catalog as a session needs it: a partition's place, and the catalog's version.
pub trait Resolver {
    fn version(&self) -> u64;
    fn place(&self, topic: &TopicRef, partition: i32) -> Place;
}

/// The updates for owners a session change produces, by owner.
type Updates = Vec<Option<ViewUpdate>>;

fn push_op(updates: &mut Updates, owner: usize, op: ViewOp) {
    if updates.len() <= owner {
        updates.resize(owner + 1, None);
    }
    updates[owner]
        .get_or_insert_with(|| ViewUpdate {
            full: false,
            ops: Vec::new(),
        })
        .ops
        .push(op);
}

impl Session {
    fn new(uses_topic_ids: bool, capacity: usize, catalog_version: u64, now: Instant) -> Session {
        Session {
            epoch: 1,
            uses_topic_ids,
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            index: HashMap::with_capacity(capacity),
            next_rank: 0,
            catalog_version,
            last_used: now,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn next_rank(&mut self) -> u64 {
        self.next_rank += 1;
        self.next_rank
    }

    /// Adds the partition, or updates its position and byte limit; the owner's op goes into
    /// `updates`.
    fn upsert(
        &mut self,
        input: &FetchInput,
        sent: Sent,
        resolver: &dyn Resolver,
        updates: &mut Updates,
    ) {
        let key = (input.topic.clone(), input.partition);
        if let Some(&slot) = self.index.get(&key) {
            let cached = self.slots[slot].as_mut().expect("indexed slots are filled");
            cached.fetch_offset = input.fetch_offset;
            cached.partition_max_bytes = input.partition_max_bytes;
            cached.current_leader_epoch = input.current_leader_epoch;
            if let Place::On { owner, .. } = cached.place {
                push_op(
                    updates,
                    owner,
                    ViewOp::Move {
                        slot,
                        fetch_offset: input.fetch_offset,
                        partition_max_bytes: usize::try_from(input.partition_max_bytes)
                            .unwrap_or(0),
                        current_leader_epoch: input.current_leader_epoch,
                    },
                );
            }
            return;
        }
        let rank = self.next_rank();
        let cached = CachedPartition {
            topic: input.topic.clone(),
            partition: input.partition,
            fetch_offset: input.fetch_offset,
            partition_max_bytes: input.partition_max_bytes,
            current_leader_epoch: input.current_leader_epoch,
            place: resolver.place(&input.topic, input.partition),
            rank,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Place::On { owner, topic } = &cached.place {
            let partition = cached.view_partition(topic);
            push_op(
                updates,
                *owner,
                ViewOp::Put {
                    slot,
                    partition,
                    sent,
                },
            );
        }
        self.slots[slot] = Some(cached);
        self.index.insert(key, slot);
    }

    fn forget(&mut self, forgotten: &[(TopicRef, i32)], updates: &mut Updates) {
        for key in forgotten {
            if let Some(slot) = self.index.remove(key) {
                if let Some(CachedPartition {
                    place: Place::On { owner, .. },
                    ..
                }) = self.slots[slot].take()
                {
                    push_op(updates, owner, ViewOp::Remove { slot });
                }
                self.free.push(slot);
            }
        }
    }

    /// Resolves every partition again after the catalog changed (a topic created, deleted,
    /// grown); partitions whose place changed move between owners.
    fn replace(&mut self, resolver: &dyn Resolver, updates: &mut Updates) {
        self.catalog_version = resolver.version();
        for slot in 0..self.slots.len() {
            let Some(cached) = self.slots[slot].as_mut() else {
                continue;
            };
            let place = resolver.place(&cached.topic, cached.partition);
            let same = match (&cached.place, &place) {
                (Place::On { owner: a, topic: x }, Place::On { owner: b, topic: y }) => {
                    a == b && x.id == y.id
                }
                (Place::Unknown(a), Place::Unknown(b)) => a == b,
                _ => false,
            };
            if same {
                continue;
            }
            if let Place::On { owner, .. } = cached.place {
                push_op(updates, owner, ViewOp::Remove { slot });
            }
            if let Place::On { owner, topic } = &place {
                let partition = cached.view_partition(topic);
                push_op(
                    updates,
                    *owner,
                    ViewOp::Put {
                        slot,
                        partition,
                        sent: Sent::NOTHING,
                    },
                );
            }
            cached.place = place;
        }
    }

    /// Every partition the session has on `owner`, as a full update for it.
    fn full_update(&self, owner: usize) -> ViewUpdate {
        let ops = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, cached)| match cached {
                Some(
                    cached @ CachedPartition {
                        place: Place::On { owner: o, topic },
                        ..
                    },
                ) if *o == owner => Some(ViewOp::Put {
                    slot,
                    partition: cached.view_partition(topic),
                    sent: Sent::NOTHING,
                }),
                _ => None,
            })
            .collect();
        ViewUpdate { full: true, ops }
    }

    /// The shards holding partitions of the session.
    fn owners(&self, shards: usize) -> Vec<bool> {
        let mut owners = vec![false; shards];
        for cached in self.slots.iter().flatten() {
            if let Place::On { owner, .. } = cached.place {
                owners[owner] = true;
            }
        }
        owners
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

/// An incremental fetch under way: what to send each owner, and the partitions answered by the
/// home itself (not in the catalog).
#[derive(Debug)]
pub struct IncrementalFetch {
    pub id: i32,
    /// The epoch the session moved to when this fetch began (owners' views follow it).
    pub epoch: i32,
    /// Per shard: whether it holds partitions of the session, and the update for it.
    pub owners: Vec<bool>,
    pub updates: Vec<Option<ViewUpdate>>,
    /// Slots answered with an error here.
    pub unknown: Vec<(usize, ResponseError)>,
}

/// What an incremental fetch request asks of its session.
#[derive(Debug, Clone, Copy)]
pub struct IncrementalRequest<'a> {
    pub id: i32,
    pub epoch: i32,
    /// Fetch v13+: topics named by id.
    pub uses_topic_ids: bool,
    /// Partitions added, or with a new position or byte limit.
    pub changed: &'a [FetchInput],
    pub forgotten: &'a [(TopicRef, i32)],
}

/// A new session: its id, and the full view each owner gets.
#[derive(Debug)]
pub struct CreatedSession {
    pub id: i32,
    pub updates: Vec<Option<ViewUpdate>>,
}

/// One shard's fetch sessions.
#[derive(Debug)]
pub struct FetchSessionCache {
    shard: usize,
    shards: usize,
    slots: usize,
    eviction_after: Duration,
    sessions: HashMap<i32, Session>,
    /// Sessions closed or evicted whose owners' views are still to be dropped.
    dropped: Vec<i32>,
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
            dropped: Vec::new(),
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
        let existed = self.sessions.remove(&id).is_some();
        if existed {
            self.dropped.push(id);
        }
        existed
    }

    /// The sessions closed or evicted since the last call: their owners' views must go.
    pub fn take_dropped(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.dropped)
    }

    /// Creates a session holding the partitions of a full fetch and what its response said.
    /// Returns `None` when the cache is full and nothing may be evicted.
    pub fn create(
        &mut self,
        uses_topic_ids: bool,
        inputs: &[FetchInput],
        outputs: &[FetchOutput],
        resolver: &dyn Resolver,
        now: Instant,
    ) -> Option<CreatedSession> {
        if self.slots == 0
            || (self.sessions.len() >= self.slots && !self.evict_for(inputs.len(), now))
        {
            return None;
        }
        let mut session = Session::new(uses_topic_ids, inputs.len(), resolver.version(), now);
        let mut updates = vec![None; self.shards];
        for (input, output) in inputs.iter().zip(outputs) {
            session.upsert(input, Sent::of(output), resolver, &mut updates);
        }
        for update in updates.iter_mut().flatten() {
            update.full = true;
        }
        let id = self.new_id();
        self.sessions.insert(id, session);
        Some(CreatedSession { id, updates })
    }

    /// Begins an incremental fetch: checks the session and epoch, applies the request's
    /// partitions and forgotten partitions, and moves the session to its next epoch.
    pub fn begin_incremental(
        &mut self,
        request: &IncrementalRequest<'_>,
        resolver: &dyn Resolver,
        now: Instant,
    ) -> Result<IncrementalFetch, ResponseError> {
        let IncrementalRequest {
            id,
            epoch,
            uses_topic_ids,
            changed,
            forgotten,
        } = *request;
        let shards = self.shards;
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
        let mut updates = vec![None; shards];
        if session.catalog_version != resolver.version() {
            session.replace(resolver, &mut updates);
        }
        session.forget(forgotten, &mut updates);
        for input in changed {
            session.upsert(input, Sent::NOTHING, resolver, &mut updates);
        }
        session.epoch = next_epoch(epoch);
        session.last_used = now;
        let unknown = session
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, cached)| match cached {
                Some(CachedPartition {
                    place: Place::Unknown(code),
                    ..
                }) => Some((slot, *code)),
                _ => None,
            })
            .collect();
        Ok(IncrementalFetch {
            id,
            epoch: session.epoch,
            owners: session.owners(shards),
            updates,
            unknown,
        })
    }

    /// The full update for `owner` of session `id`, if the session is still at `epoch` (an
    /// owner that lost its view gets everything again).
    pub fn full_update(&self, id: i32, epoch: i32, owner: usize) -> Option<ViewUpdate> {
        self.sessions
            .get(&id)
            .filter(|s| s.epoch == epoch)
            .map(|s| s.full_update(owner))
    }

    /// Ends an incremental fetch: puts its answers (by slot) in the session's order, keeps
    /// whole batches within `max_bytes`, moves the partitions that returned records to the
    /// end of the order, and names each answer's partition. A session closed or moved on
    /// meanwhile answers nothing.
    pub fn finish_incremental(
        &mut self,
        fetch: &IncrementalFetch,
        answers: Vec<(usize, FetchOutput)>,
        max_bytes: usize,
    ) -> Vec<(TopicRef, i32, FetchOutput)> {
        let Some(session) = self
            .sessions
            .get_mut(&fetch.id)
            .filter(|s| s.epoch == fetch.epoch)
        else {
            return Vec::new();
        };
        let mut answers: Vec<(u64, usize, FetchOutput)> = answers
            .into_iter()
            .filter_map(|(slot, out)| {
                let cached = session.slots.get(slot)?.as_ref()?;
                Some((cached.rank, slot, out))
            })
            .collect();
        answers.sort_unstable_by_key(|(rank, slot, _)| (*rank, *slot));
        let mut outputs: Vec<FetchOutput> = answers
            .iter_mut()
            .map(|a| std::mem::take(&mut a.2))
            .collect();
        crate::fetch::fit_to_max_bytes(&mut outputs, max_bytes);
        let mut named = Vec::with_capacity(outputs.len());
        for ((_, slot, _), out) in answers.into_iter().zip(outputs) {
            let rank = if out.records.is_empty() {
                None
            } else {
                Some(session.next_rank())
            };
            let cached = session.slots[slot]
                .as_mut()
                .expect("answered slots are filled");
            if let Some(rank) = rank {
                cached.rank = rank;
            }
            named.push((cached.topic.clone(), cached.partition, out));
        }
        named
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
                self.dropped.push(id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    /// Topic "t" with 8 partitions, partition p on shard p % 4; `version` is the catalog's.
    struct TestCatalog {
        version: u64,
        topic: Arc<Topic>,
    }

    impl TestCatalog {
        fn new(version: u64) -> TestCatalog {
            TestCatalog {
                version,
                topic: Arc::new(Topic {
                    name: "t".into(),
                    id: uuid::Uuid::new_v4(),
                    partitions: 8,
                    configs: BTreeMap::new(),
                }),
            }
        }
    }

    impl Resolver for TestCatalog {
        fn version(&self) -> u64 {
            self.version
        }
        fn place(&self, topic: &TopicRef, partition: i32) -> Place {
            match topic {
                TopicRef::Name(n) if n == "t" && (0..8).contains(&partition) => Place::On {
                    owner: partition as usize % 4,
                    topic: self.topic.clone(),
                },
                _ => Place::Unknown(ResponseError::UnknownTopicOrPartition),
            }
        }
    }

    fn input(p: i32, offset: i64) -> FetchInput {
        FetchInput {
            topic: TopicRef::Name("t".into()),
            partition: p,
            fetch_offset: offset,
            partition_max_bytes: 1024,
            current_leader_epoch: -1,
        }
    }

    /// An answer with high watermark `hw`; `records` non-empty: one real batch.
    fn output(hw: i64, records: &'static [u8]) -> FetchOutput {
        let records = if records.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(sluice_storage::batch::build_batch(0, &[(0, b"k", records)]))
        };
        FetchOutput {
            error: None,
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: 0,
            records,
            aborted_transactions: None,
        }
    }

    fn req<'a>(
        id: i32,
        epoch: i32,
        uses_topic_ids: bool,
        changed: &'a [FetchInput],
        forgotten: &'a [(TopicRef, i32)],
    ) -> IncrementalRequest<'a> {
        IncrementalRequest {
            id,
            epoch,
            uses_topic_ids,
            changed,
            forgotten,
        }
    }

    fn cache(slots: usize) -> FetchSessionCache {
        FetchSessionCache::new(1, 4, slots, Duration::from_secs(120))
    }

    fn create(c: &mut FetchSessionCache, catalog: &TestCatalog, parts: &[i32]) -> i32 {
        let inputs: Vec<_> = parts.iter().map(|&p| input(p, 0)).collect();
        let outputs: Vec<_> = parts.iter().map(|_| output(5, b"")).collect();
        c.create(false, &inputs, &outputs, catalog, Instant::now())
            .map_or(NO_SESSION, |s| s.id)
    }

    /// An op, in short: ("put"|"move"|"remove", slot, fetch offset or -1).
    fn short(op: &ViewOp) -> (&'static str, usize, i64) {
        match op {
            ViewOp::Put {
                slot, partition, ..
            } => ("put", *slot, partition.fetch_offset),
            ViewOp::Move {
                slot, fetch_offset, ..
            } => ("move", *slot, *fetch_offset),
            ViewOp::Remove { slot } => ("remove", *slot, -1),
        }
    }

    fn ops(updates: &[Option<ViewUpdate>], owner: usize) -> Vec<(&'static str, usize, i64)> {
        updates[owner]
            .as_ref()
            .map(|u| u.ops.iter().map(short).collect())
            .unwrap_or_default()
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
        let catalog = TestCatalog::new(1);
        for _ in 0..50 {
            let id = create(&mut c, &catalog, &[0]);
            assert!(id > 0);
            assert_eq!(home_shard(id, 4), 1);
        }
        assert_eq!(c.len(), 50);
    }

    #[test]
    fn a_new_session_gives_each_owner_its_partitions_whole() {
        let mut c = cache(10);
        let catalog = TestCatalog::new(1);
        let inputs = [input(0, 0), input(4, 7), input(1, 0)];
        let mut failed = output(-1, b"");
        failed.error = Some(ResponseError::NotLeaderOrFollower);
        let outputs = [output(5, b"x"), failed, output(3, b"")];
        let created = c
            .create(false, &inputs, &outputs, &catalog, Instant::now())
            .unwrap();
        let to_0 = created.updates[0].as_ref().unwrap();
        assert!(to_0.full);
        let sent: Vec<Sent> = to_0
            .ops
            .iter()
            .map(|op| match op {
                ViewOp::Put { sent, .. } => *sent,
                _ => panic!("a new view is all puts"),
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                Sent {
                    high_watermark: 5,
                    last_stable_offset: 5,
                    log_start_offset: 0
                },
                Sent {
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: 0
                }
            ],
            "what the full fetch answered, an error as no high watermark sent"
        );
        assert_eq!(ops(&created.updates, 0), vec![("put", 0, 0), ("put", 1, 7)]);
        assert_eq!(ops(&created.updates, 1), vec![("put", 2, 0)]);
        assert!(created.updates[2].is_none() && created.updates[3].is_none());
    }

    #[test]
    fn an_incremental_fetch_sends_owners_only_what_the_request_changed() {
        let mut c = cache(10);
        let catalog = TestCatalog::new(1);
        let id = create(&mut c, &catalog, &[0, 1, 2]);
        let now = Instant::now();
        // Partition 1 moves, 5 joins, 2 leaves, and an unknown partition joins.
        let fetch = c
            .begin_incremental(
                &req(
                    id,
                    1,
                    false,
                    &[input(1, 3), input(5, 0), input(9, 0)],
                    &[(TopicRef::Name("t".into()), 2)],
                ),
                &catalog,
                now,
            )
            .unwrap();
        assert_eq!(fetch.epoch, 2);
        assert_eq!(
            ops(&fetch.updates, 1),
            vec![("move", 1, 3), ("put", 2, 0)],
            "the freed slot 2 is reused"
        );
        assert_eq!(ops(&fetch.updates, 2), vec![("remove", 2, -1)]);
        assert!(fetch.updates[0].is_none() && fetch.updates[3].is_none());
        assert_eq!(fetch.owners, vec![true, true, false, false]);
        assert_eq!(
            fetch.unknown,
            vec![(3, ResponseError::UnknownTopicOrPartition)]
        );
        // An owner that lost its view gets all of its partitions.
        let full = c.full_update(id, 2, 1).unwrap();
        assert!(full.full);
        let slots: Vec<usize> = full.ops.iter().map(|op| short(op).1).collect();
        assert_eq!(slots, vec![1, 2]);
        assert!(
            c.full_update(id, 1, 1).is_none(),
            "an older fetch gets none"
        );
    }

    /// Runs fetch `epoch` of session `id` answering `answers`; the partitions in response order.
    fn response_order(
        c: &mut FetchSessionCache,
        catalog: &TestCatalog,
        id: i32,
        epoch: i32,
        answers: Vec<(usize, FetchOutput)>,
    ) -> Vec<i32> {
        let fetch = c
            .begin_incremental(&req(id, epoch, false, &[], &[]), catalog, Instant::now())
            .unwrap();
        let named = c.finish_incremental(&fetch, answers, 1 << 20);
        named.iter().map(|(_, p, _)| *p).collect()
    }

    #[test]
    fn answers_come_in_session_order_and_busy_partitions_go_last() {
        let mut c = cache(10);
        let catalog = TestCatalog::new(1);
        let id = create(&mut c, &catalog, &[0, 1, 2]);
        let answers = vec![
            (2, output(6, b"")),
            (1, output(6, b"x")),
            (0, output(7, b"")),
        ];
        assert_eq!(
            response_order(&mut c, &catalog, id, 1, answers),
            vec![0, 1, 2],
            "slots in the session's order"
        );
        let answers = vec![
            (1, output(6, b"")),
            (0, output(7, b"")),
            (2, output(8, b"")),
        ];
        assert_eq!(
            response_order(&mut c, &catalog, id, 2, answers),
            vec![0, 2, 1],
            "partition 1 returned records: it goes last"
        );
        // A fetch the session moved past answers nothing.
        let now = Instant::now();
        let stale = c
            .begin_incremental(&req(id, 3, false, &[], &[]), &catalog, now)
            .unwrap();
        let _newer = c
            .begin_incremental(&req(id, 4, false, &[], &[]), &catalog, now)
            .unwrap();
        assert!(c
            .finish_incremental(&stale, vec![(0, output(9, b""))], 1 << 20)
            .is_empty());
    }

    #[test]
    fn a_changed_catalog_moves_partitions_between_owners() {
        let mut c = cache(10);
        let catalog = TestCatalog::new(1);
        let id = create(&mut c, &catalog, &[0, 1]);
        // The topic was deleted and created again: a new id, same name.
        let recreated = TestCatalog::new(2);
        let fetch = c
            .begin_incremental(&req(id, 1, false, &[], &[]), &recreated, Instant::now())
            .unwrap();
        assert_eq!(
            ops(&fetch.updates, 0),
            vec![("remove", 0, -1), ("put", 0, 0)]
        );
        match &fetch.updates[1].as_ref().unwrap().ops[1] {
            ViewOp::Put {
                partition, sent, ..
            } => {
                assert_eq!(partition.topic.id, recreated.topic.id);
                assert_eq!(*sent, Sent::NOTHING);
            }
            op => panic!("expected a put, got {op:?}"),
        }
    }

    #[test]
    fn wrong_session_epoch_or_naming_is_refused() {
        let mut c = cache(10);
        let catalog = TestCatalog::new(1);
        let id = create(&mut c, &catalog, &[0, 1]);
        let now = Instant::now();
        assert_eq!(
            c.begin_incremental(&req(id + 4, 1, false, &[], &[]), &catalog, now)
                .unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
        assert_eq!(
            c.begin_incremental(&req(id, 2, false, &[], &[]), &catalog, now)
                .unwrap_err(),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert_eq!(
            c.begin_incremental(&req(id, 1, true, &[], &[]), &catalog, now)
                .unwrap_err(),
            ResponseError::FetchSessionTopicIdError
        );
        c.begin_incremental(&req(id, 1, false, &[], &[]), &catalog, now)
            .unwrap();
        // The same epoch again is stale now.
        assert_eq!(
            c.begin_incremental(&req(id, 1, false, &[], &[]), &catalog, now)
                .unwrap_err(),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert!(c.close(id));
        assert!(c.is_empty());
        assert_eq!(c.take_dropped(), vec![id], "the owners' views must go");
    }

    #[test]
    fn a_full_cache_evicts_stale_then_smaller_sessions_or_answers_without_one() {
        let mut c = cache(2);
        let catalog = TestCatalog::new(1);
        let t0 = Instant::now();
        let small = create(&mut c, &catalog, &[0]);
        let big = create(&mut c, &catalog, &[0, 1]);
        // Nothing stale, and a session of one partition is not larger than any: refused.
        assert_eq!(create(&mut c, &catalog, &[0]), NO_SESSION);
        // A larger session displaces the smallest.
        let larger = create(&mut c, &catalog, &[0, 1, 2]);
        assert_ne!(larger, NO_SESSION);
        assert_eq!(c.take_dropped(), vec![small]);
        assert!(!c.close(small), "the smallest session was evicted");
        // Once idle past the eviction time, the least recently used goes for anything.
        let later = t0 + Duration::from_secs(121);
        c.begin_incremental(&req(larger, 1, false, &[], &[]), &catalog, later)
            .unwrap();
        let inputs = [input(0, 0)];
        let tiny = c.create(false, &inputs, &[output(0, b"")], &catalog, later);
        assert!(tiny.is_some());
        assert!(!c.close(big), "the stale session was evicted");
        assert!(c.close(larger));
    }

    #[test]
    fn no_slots_means_no_sessions() {
        let mut c = cache(0);
        assert_eq!(create(&mut c, &TestCatalog::new(1), &[0]), NO_SESSION);
    }
}
