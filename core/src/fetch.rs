//! Fetch: read stored batches from the owning shards, long-polling until `min_bytes` are there
//! or `max_wait` has passed.
//!
//! One round reads every partition (one job per owning shard, in parallel; on each owner up to
//! [`READS_IN_FLIGHT`] reads at once, and no more reads once the owner holds `max_bytes`) and
//! gathers the stored bytes, unchanged, in request order, within the request's `max_bytes`
//! (whole batches; the first batch of the response is always whole, KIP-74). If fewer than
//! `min_bytes` came back, the fetch asks each owning shard to report when any of its
//! partitions grows past what this round saw, and reads again when one does, or answers what
//! it has at the deadline. A waiting fetch costs one registered oneshot per partition on the
//! owner; a wait whose fetch is gone is dropped there.
//!
//! Isolation (KIP-98): a read_uncommitted fetch reads up to the high watermark; a
//! read_committed one up to the last stable offset, and is told of the aborted transactions
//! whose records overlap what it read, so the client drops them.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::Either;
use kafka_protocol::ResponseError;
use sluice_storage::{Offset, StorageError};

use crate::fetch_sessions::{CreatedSession, IncrementalFetch, Place, Resolver};
use crate::session_views::{self, RoundError, ViewUpdate};
use crate::shard::Shard;
use crate::topics::Topic;
use crate::{resolve_topic, TopicRef};
use std::collections::HashMap;

/// One partition of a fetch request.
#[derive(Debug, Clone)]
pub struct FetchInput {
    pub topic: TopicRef,
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    /// The epoch the client believes current (-1: not checked; Fetch v9+).
    pub current_leader_epoch: i32,
}

/// The request's limits.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub max_wait: Duration,
    pub min_bytes: usize,
    pub max_bytes: usize,
    /// isolation.level=read_committed: records up to the last stable offset only.
    pub read_committed: bool,
}

/// The answer for one partition.
#[derive(Debug, Clone, Default)]
pub struct FetchOutput {
    pub error: Option<ResponseError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Whole batches, exactly as stored.
    pub records: Bytes,
    /// read_committed: the aborted transactions overlapping the records (`None` for
    /// read_uncommitted, as Kafka answers null).
    pub aborted_transactions: Option<Vec<crate::producers::AbortedTxn>>,
}

impl FetchOutput {
    pub fn failed(code: ResponseError) -> FetchOutput {
        FetchOutput {
            error: Some(code),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: Bytes::new(),
            aborted_transactions: None,
        }
    }

    /// The offset up to which the fetch may read: the last stable offset for read_committed,
    /// else the high watermark.
    pub fn readable_end(&self, read_committed: bool) -> i64 {
        if read_committed {
            self.last_stable_offset
        } else {
            self.high_watermark
        }
    }
}

/// A partition resolved against the catalog: where to read and how much.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Where the answer goes (the request's position, or a session's slot).
    pub index: usize,
    pub topic: Arc<Topic>,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: usize,
    pub current_leader_epoch: i32,
    pub read_committed: bool,
}

/// Serves a fetch: one output per input, in order.
pub async fn fetch(
    shard: &Rc<Shard>,
    inputs: &[FetchInput],
    limits: FetchLimits,
) -> Vec<FetchOutput> {
    let deadline = Instant::now() + limits.max_wait;
    let resolver = ImageResolver {
        shard,
        image: shard.image(),
    };
    let mut outputs: Vec<FetchOutput> = vec![FetchOutput::default(); inputs.len()];
    let mut per_shard: Vec<Vec<Target>> = vec![Vec::new(); shard.count];
    for (index, input) in inputs.iter().enumerate() {
        match resolver.place(&input.topic, input.partition) {
            Place::On { owner, topic } => per_shard[owner].push(Target {
                index,
                topic,
                partition: input.partition,
                offset: input.fetch_offset,
                max_bytes: usize::try_from(input.partition_max_bytes)
                    .unwrap_or(0)
                    .min(limits.max_bytes),
                current_leader_epoch: input.current_leader_epoch,
                read_committed: limits.read_committed,
            }),
            Place::Unknown(code) => outputs[index] = FetchOutput::failed(code),
        }
    }
    // Shared by every round's job for the owner (the targets are read-only there).
    let per_shard: Vec<Arc<Vec<Target>>> = per_shard.into_iter().map(Arc::new).collect();
    loop {
        let reads = per_shard
            .iter()
            .enumerate()
            .filter(|(_, targets)| !targets.is_empty())
            .map(|(owner, targets)| {
                let on_owner = targets.clone();
                let max_bytes = limits.max_bytes;
                let read = shard.invoke_on(owner, move |owner_shard| async move {
                    let answers = answer_targets(&owner_shard, &on_owner, max_bytes).await;
                    on_owner
                        .iter()
                        .map(|t| t.index)
                        .zip(answers)
                        .collect::<Vec<_>>()
                });
                async move {
                    read.await.unwrap_or_else(|_| {
                        targets
                            .iter()
                            .map(|t| {
                                (
                                    t.index,
                                    FetchOutput::failed(ResponseError::NotLeaderOrFollower),
                                )
                            })
                            .collect()
                    })
                }
            });
        for answers in futures::future::join_all(reads).await {
            for (index, answer) in answers {
                outputs[index] = answer;
            }
        }
        let total = fit_to_max_bytes(&mut outputs, limits.max_bytes);
        let now = Instant::now();
        let any_error = outputs.iter().any(|o| o.error.is_some());
        if total >= limits.min_bytes || any_error || now >= deadline {
            return outputs;
        }
        if !wait_for_growth(shard, &per_shard, &outputs, deadline - now).await {
            return outputs;
        }
    }
}

/// Runs on the owning shard: the answer for a partition already open that has nothing to read
/// at the fetch position (the common case of a consumer of many partitions), without building
/// a read's future; `None` when the partition must be opened or read.
pub(crate) fn answer_without_reading(shard: &Shard, target: &Target) -> Option<FetchOutput> {
    let partition = shard.open_partition((target.topic.id, target.partition))?;
    match position_answer(&partition, target) {
        Position::Answered(out) => Some(out),
        Position::Read(_) => None,
    }
}

enum Position {
    /// Nothing to read there: the answer as it stands.
    Answered(FetchOutput),
    /// Records to read; the answer's offsets filled in.
    Read(FetchOutput),
}

fn position_answer(partition: &crate::partition::Partition, target: &Target) -> Position {
    let high_watermark = partition.high_watermark().0;
    let log_start = partition.log().log_start_offset().0;
    let mut out = FetchOutput {
        error: None,
        high_watermark,
        last_stable_offset: partition.last_stable_offset().0,
        log_start_offset: log_start,
        records: Bytes::new(),
        aborted_transactions: target.read_committed.then(Vec::new),
    };
    if let Some(code) = partition.refuses(target.current_leader_epoch) {
        out.error = Some(code);
        return Position::Answered(out);
    }
    // Past the high watermark but within the log (a new leader whose high watermark has not
    // caught up with its predecessor's yet): nothing to read yet, as Kafka answers.
    let log_end = partition.log().log_end_offset().0;
    if target.offset < log_start || target.offset > high_watermark.max(log_end) {
        out.error = Some(ResponseError::OffsetOutOfRange);
        return Position::Answered(out);
    }
    if target.offset >= out.readable_end(target.read_committed) || target.max_bytes == 0 {
        return Position::Answered(out);
    }
    Position::Read(out)
}

/// Reads one owner runs at once for one fetch round. One at a time, a round that must read
/// thousands of partitions from the disk (a consumer fallen behind the tails held in memory)
/// takes one device round trip per partition: seconds at 10,000 partitions, during which the
/// consumer falls further behind. 32 reads in flight keep the device's queue busy (fio on
/// this machine's disk: 179k IOPS at queue depth 64, `docs/benchmarks.md`) and bound what
/// reads in flight hold to 32 partitions' byte limits.
const READS_IN_FLIGHT: usize = 32;

/// Runs on the owning shard: the answers to `targets`, in their order. Partitions with
/// nothing to read are answered at once; reads run [`READS_IN_FLIGHT`] at a time. Once the
/// answers hold `max_bytes` of records, later partitions are answered without their records
/// (the request's `max_bytes` would drop them anyway): a round never holds more than
/// `max_bytes` plus the reads in flight, however many partitions have records to give.
pub(crate) async fn answer_targets(
    shard: &Shard,
    targets: &[Target],
    max_bytes: usize,
) -> Vec<FetchOutput> {
    use futures::StreamExt;
    let held = std::cell::Cell::new(0usize);
    futures::stream::iter(targets)
        .map(|target| {
            let held = &held;
            async move {
                let answer = match answer_without_reading(shard, target) {
                    Some(answer) => answer,
                    None => read_one(shard, target, held.get() < max_bytes).await,
                };
                held.set(held.get() + answer.records.len());
                answer
            }
        })
        .buffered(READS_IN_FLIGHT)
        .collect()
        .await
}

/// Runs on the owning shard: one partition's answer, its records read if `read` (else only
/// its offsets: the fetch has no room left for records).
pub(crate) async fn read_one(shard: &Shard, target: &Target, read: bool) -> FetchOutput {
    let partition = match shard.partition(&target.topic, target.partition).await {
        Ok(p) => p,
        Err(e) => return FetchOutput::failed(crate::partition::unavailable_code(&e)),
    };
    let mut out = match position_answer(&partition, target) {
        Position::Answered(out) => return out,
        Position::Read(out) if !read => return out,
        Position::Read(out) => out,
    };
    let log = partition.log();
    let end = out.readable_end(target.read_committed);
    match log.read(Offset(target.offset), target.max_bytes).await {
        // Consumers see up to the high watermark (cluster mode: the log may hold entries not
        // yet committed), or the last stable offset: a read ending at or below it, always so
        // on a single node at read_uncommitted, is kept whole without walking its batches.
        Ok(read) if read.next_offset.0 <= end => out.records = read.bytes,
        Ok(read) => out.records = below_offset(read.bytes, Offset(end)),
        Err(StorageError::OffsetOutOfRange { .. }) => {
            out.error = Some(ResponseError::OffsetOutOfRange)
        }
        Err(e) => out.error = Some(crate::partition::unavailable_code(&e)),
    }
    if target.read_committed && !out.records.is_empty() {
        // The records end at or before the readable end: the aborted transactions up to it
        // cover them (a few more than needed are harmless; clients match them by offset).
        out.aborted_transactions =
            Some(partition.aborted_between(Offset(target.offset), Offset(end)));
    }
    out
}

/// The whole batches of `records` that start below `end`.
fn below_offset(records: Bytes, end: Offset) -> Bytes {
    let mut keep = 0usize;
    while keep < records.len() {
        let Ok(header) = sluice_storage::batch::read_header(&records[keep..], usize::MAX) else {
            break;
        };
        if header.base_offset >= end || keep + header.size_bytes > records.len() {
            break;
        }
        keep += header.size_bytes;
    }
    records.slice(..keep)
}

/// Drops whole batches (then whole partitions) past the request's `max_bytes`, keeping the
/// first batch of the response whole whatever its size. Returns the bytes kept.
pub(crate) fn fit_to_max_bytes(outputs: &mut [FetchOutput], max_bytes: usize) -> usize {
    let mut total = 0usize;
    for output in outputs.iter_mut() {
        if output.records.is_empty() {
            continue;
        }
        let mut keep = 0usize;
        let records = &output.records;
        while keep < records.len() {
            let Ok(size) = sluice_storage::batch::peek_batch_size(&records[keep..], usize::MAX)
            else {
                break;
            };
            let first_of_response = total == 0 && keep == 0;
            if !first_of_response && total + keep + size > max_bytes {
                break;
            }
            keep += size;
        }
        output.records = output.records.slice(..keep.min(records.len()));
        total += output.records.len();
    }
    total
}

/// Waits until a partition of this fetch grows past the high watermark the last round saw, or
/// `remaining` passes. Returns false on timeout.
async fn wait_for_growth(
    shard: &Rc<Shard>,
    per_shard: &[Arc<Vec<Target>>],
    outputs: &[FetchOutput],
    remaining: Duration,
) -> bool {
    let waits: Vec<_> = per_shard
        .iter()
        .enumerate()
        .filter(|(_, targets)| !targets.is_empty())
        .map(|(owner, targets)| {
            let watched: Vec<(Arc<Topic>, i32, i64)> = targets
                .iter()
                .map(|t| {
                    (
                        t.topic.clone(),
                        t.partition,
                        outputs[t.index].high_watermark,
                    )
                })
                .collect();
            Box::pin(
                shard.invoke_on_cancellable(owner, move |owner_shard| async move {
                    let mut signals = Vec::with_capacity(watched.len());
                    for (topic, partition, seen) in watched {
                        if let Some(p) = owner_shard.open_partition((topic.id, partition)) {
                            signals.push(p.wait_beyond(Offset(seen)));
                        }
                    }
                    if signals.is_empty() {
                        return futures::future::pending::<()>().await;
                    }
                    let _ = futures::future::select_all(signals).await;
                }),
            )
        })
        .collect();
    if waits.is_empty() {
        return false;
    }
    let timer = Box::pin(glommio::timer::sleep(remaining));
    match futures::future::select(futures::future::select_all(waits), timer).await {
        Either::Left(_) => true,
        Either::Right(_) => false,
    }
}

/// The catalog image as fetch sessions resolve their partitions against it.
pub struct ImageResolver<'a> {
    pub shard: &'a Shard,
    pub image: Arc<crate::catalog::Image>,
}

impl crate::fetch_sessions::Resolver for ImageResolver<'_> {
    fn version(&self) -> u64 {
        self.image.version
    }

    fn place(&self, topic: &TopicRef, partition: i32) -> Place {
        match resolve_topic(&self.image, topic) {
            Some(t) if (0..t.partitions).contains(&partition) => Place::On {
                owner: self.shard.owner_of(&t.name, partition),
                topic: t.clone(),
            },
            Some(_) => Place::Unknown(ResponseError::UnknownTopicOrPartition),
            None => Place::Unknown(match topic {
                TopicRef::Id(_) => ResponseError::UnknownTopicId,
                TopicRef::Name(_) => ResponseError::UnknownTopicOrPartition,
            }),
        }
    }
}

/// Gives each owner its view of a new session (before the session's id is answered, so the
/// first incremental fetch finds them).
pub async fn install_session(shard: &Rc<Shard>, created: &CreatedSession) {
    let installs = created
        .updates
        .iter()
        .enumerate()
        .filter_map(|(owner, update)| Some((owner, update.clone()?)))
        .map(|(owner, update)| {
            let id = created.id;
            shard.invoke_on(owner, move |owner_shard| async move {
                session_views::install_view(&owner_shard, id, update);
            })
        });
    futures::future::join_all(installs).await;
}

/// Drops the owners' views of sessions the home closed or evicted (in the background).
pub fn drop_sessions(shard: &Rc<Shard>, sessions: Vec<i32>) {
    if sessions.is_empty() {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let sessions = Arc::new(sessions);
        shard
            .invoke_on_all(move |owner_shard| async move {
                for id in sessions.iter() {
                    session_views::drop_view(&owner_shard, *id);
                }
            })
            .await;
    })
    .detach();
}

/// Serves an incremental fetch on the session's home: each owner answers only its partitions
/// that may have news (see `session_views`), long-polling until `min_bytes` are there or
/// `max_wait` has passed. Answers in the session's order, within `max_bytes`.
pub async fn fetch_incremental(
    shard: &Rc<Shard>,
    mut fetch: IncrementalFetch,
    limits: FetchLimits,
) -> Vec<(TopicRef, i32, FetchOutput)> {
    let deadline = Instant::now() + limits.max_wait;
    let mut answers: HashMap<usize, FetchOutput> = fetch
        .unknown
        .iter()
        .map(|&(slot, code)| (slot, FetchOutput::failed(code)))
        .collect();
    let owners: Vec<usize> = (0..fetch.owners.len())
        .filter(|&o| fetch.owners[o] || fetch.updates.get(o).is_some_and(|u| u.is_some()))
        .collect();
    let mut first_round = true;
    loop {
        // The first round of a fetch carries the session's changes, and an update for every
        // owner (an empty one at least): it moves the owners' views to this fetch's epoch.
        let updates: Vec<Option<ViewUpdate>> = owners
            .iter()
            .map(|&owner| {
                let update = fetch.updates.get_mut(owner).and_then(Option::take);
                first_round.then(|| {
                    update.unwrap_or(ViewUpdate {
                        full: false,
                        ops: Vec::new(),
                    })
                })
            })
            .collect();
        first_round = false;
        let rounds = owners
            .iter()
            .zip(updates)
            .map(|(&owner, update)| round_on(shard, &fetch, owner, update, limits));
        for result in futures::future::join_all(rounds).await {
            match result {
                Ok(included) => answers.extend(included),
                Err(RoundError::Stale) => return Vec::new(),
                Err(RoundError::Missing) => {}
            }
        }
        let total: usize = answers.values().map(|a| a.records.len()).sum();
        let any_error = answers.values().any(|a| a.error.is_some());
        let now = Instant::now();
        if total >= limits.min_bytes || any_error || now >= deadline || owners.is_empty() {
            break;
        }
        let remaining = deadline - now;
        let waits = owners.iter().map(|&owner| {
            let (id, epoch) = (fetch.id, fetch.epoch);
            Box::pin(
                shard.invoke_on_cancellable(owner, move |owner_shard| async move {
                    session_views::wait_round(&owner_shard, id, epoch, remaining).await
                }),
            )
        });
        // The first owner with news ends the wait; the others' waits are dropped there.
        let _ = futures::future::select_all(waits).await;
    }
    shard.fetch_sessions.borrow_mut().finish_incremental(
        &fetch,
        answers.into_iter().collect(),
        limits.max_bytes,
    )
}

/// One owner's round; an owner that lost its view of the session gets it whole, once.
async fn round_on(
    shard: &Rc<Shard>,
    fetch: &IncrementalFetch,
    owner: usize,
    update: Option<ViewUpdate>,
    limits: FetchLimits,
) -> Result<Vec<(usize, FetchOutput)>, RoundError> {
    let (id, epoch) = (fetch.id, fetch.epoch);
    let run = |update: Option<ViewUpdate>| {
        shard.invoke_on(owner, move |owner_shard| async move {
            session_views::answer_round(&owner_shard, id, epoch, update, limits).await
        })
    };
    match run(update).await {
        Ok(Err(RoundError::Missing)) => {
            let full = shard
                .fetch_sessions
                .borrow()
                .full_update(id, epoch, owner)
                .ok_or(RoundError::Stale)?;
            run(Some(full)).await.unwrap_or(Err(RoundError::Missing))
        }
        Ok(answered) => answered,
        Err(_gone) => Err(RoundError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::batch::build_batch;

    fn batches(sizes: &[usize]) -> Bytes {
        let mut out = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let value = vec![b'x'; *size];
            out.extend(build_batch(i as i64, &[(i as i64, b"k", &value)]));
        }
        Bytes::from(out)
    }

    #[test]
    fn max_bytes_keeps_whole_batches_and_always_the_first() {
        let one = batches(&[1000, 1000, 1000]);
        let batch = one.len() / 3;
        let mut outputs = vec![
            FetchOutput {
                records: one.clone(),
                ..FetchOutput::default()
            },
            FetchOutput {
                records: one.clone(),
                ..FetchOutput::default()
            },
        ];
        assert_eq!(fit_to_max_bytes(&mut outputs, 2 * batch + 10), 2 * batch);
        assert_eq!(outputs[0].records.len(), 2 * batch);
        assert!(outputs[1].records.is_empty());

        let mut outputs = vec![FetchOutput {
            records: one,
            ..FetchOutput::default()
        }];
        assert_eq!(
            fit_to_max_bytes(&mut outputs, 10),
            batch,
            "first batch whole"
        );
    }
}
