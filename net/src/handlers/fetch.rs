//! Fetch (key 1): stored batches, unchanged, from the owning shards; long poll with
//! `max_wait_ms` and `min_bytes`; request (`max_bytes`) and partition (`partition_max_bytes`)
//! limits. v13+ names topics by id.
//!
//! Fetch sessions (KIP-227, v7+; see `sluice_core::fetch_sessions`): a full fetch with epoch 0
//! creates a session and answers its id; incremental fetches run on the session's home shard
//! and answer only the partitions with news. read_committed fetches read up to the last stable
//! offset and carry the aborted transactions of what they read (`sluice_core::fetch`).

use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::Operation;
use sluice_core::fetch::{self, FetchInput, FetchLimits, FetchOutput};
use sluice_core::fetch_sessions::{home_shard, IncrementalRequest, SessionRequest, NO_SESSION};
use sluice_core::shard::Shard;
use sluice_core::{ResponseError, TopicRef};

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::Fetch,
    min_version: 4,
    max_version: 18,
};

/// Fetch v13 names topics by id (KIP-516).
const TOPIC_IDS_FROM: i16 = 13;

/// Fetch v7 has sessions (KIP-227); before, every fetch is full.
const SESSIONS_FROM: i16 = 7;

/// `isolation_level` of read_committed consumers (0 is read_uncommitted).
const READ_COMMITTED: i8 = 1;

/// Longest long poll honoured, whatever the client asks.
const MAX_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Topics the principal may not READ are answered TOPIC_AUTHORIZATION_FAILED (partitions of
/// an incremental fetch are checked as the request names them: a session's partitions were
/// checked when they joined it).
pub async fn handle(mut request: FetchRequest, version: i16, ctx: &Context) -> FetchResponse {
    if !ctx.has_authorizer() {
        return handle_allowed(request, version, ctx).await;
    }
    let uses_topic_ids = version >= TOPIC_IDS_FROM;
    let image = ctx.shard.image();
    let (allowed, denied): (Vec<FetchTopic>, Vec<FetchTopic>) = std::mem::take(&mut request.topics)
        .into_iter()
        .partition(|topic| {
            let name = if uses_topic_ids {
                match image.topic_by_id(topic.topic_id) {
                    Some(t) => t.name.clone(),
                    None => return true,
                }
            } else {
                topic.topic.0.to_string()
            };
            ctx.allows_topic(Operation::READ, &name)
        });
    request.topics = allowed;
    let mut response = handle_allowed(request, version, ctx).await;
    let code = ResponseError::TopicAuthorizationFailed.code();
    for topic in denied {
        ctx.shard.metrics.record_error(ApiKey::Fetch as i16, code);
        response.responses.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_topic_id(topic.topic_id)
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|p| {
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_error_code(code)
                                .with_high_watermark(-1)
                                .with_last_stable_offset(-1)
                                .with_log_start_offset(-1)
                        })
                        .collect(),
                ),
        );
    }
    response
}

async fn handle_allowed(request: FetchRequest, version: i16, ctx: &Context) -> FetchResponse {
    let limits = FetchLimits {
        max_wait: Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
            .min(MAX_WAIT_LIMIT),
        min_bytes: usize::try_from(request.min_bytes).unwrap_or(0),
        max_bytes: usize::try_from(request.max_bytes).unwrap_or(0),
        read_committed: request.isolation_level == READ_COMMITTED,
    };
    let uses_topic_ids = version >= TOPIC_IDS_FROM;
    let (create, close) = match SessionRequest::of(request.session_id, request.session_epoch) {
        SessionRequest::Sessionless { close } => (false, close),
        SessionRequest::Create { close } => (version >= SESSIONS_FROM, close),
        SessionRequest::Incremental { id, epoch } => {
            let home = home_shard(id, ctx.shard.count);
            return ctx
                .shard
                .invoke_on(home, move |shard| async move {
                    incremental(&shard, request, id, epoch, uses_topic_ids, limits).await
                })
                .await
                .unwrap_or_else(|_| {
                    FetchResponse::default()
                        .with_error_code(ResponseError::FetchSessionIdNotFound.code())
                });
        }
    };
    if let Some(id) = close {
        let home = home_shard(id, ctx.shard.count);
        let _ = ctx
            .shard
            .invoke_on(home, move |shard| async move {
                let dropped = {
                    let mut sessions = shard.fetch_sessions.borrow_mut();
                    sessions.close(id);
                    sessions.take_dropped()
                };
                fetch::drop_sessions(&shard, dropped);
            })
            .await;
    }
    let inputs = partitions_of(&request.topics, uses_topic_ids);
    let outputs = fetch::fetch(&ctx.shard, &inputs, limits).await;
    let session_id = if create {
        let resolver = fetch::ImageResolver {
            shard: &ctx.shard,
            image: ctx.shard.image(),
        };
        let (created, dropped) = {
            let mut sessions = ctx.shard.fetch_sessions.borrow_mut();
            let created =
                sessions.create(uses_topic_ids, &inputs, &outputs, &resolver, Instant::now());
            (created, sessions.take_dropped())
        };
        fetch::drop_sessions(&ctx.shard, dropped);
        match created {
            Some(created) => {
                fetch::install_session(&ctx.shard, &created).await;
                created.id
            }
            None => NO_SESSION,
        }
    } else {
        NO_SESSION
    };
    let all = vec![true; inputs.len()];
    FetchResponse::default()
        .with_session_id(session_id)
        .with_responses(responses(&ctx.shard, &inputs, outputs, &all))
}

/// An incremental fetch, on the session's home shard.
async fn incremental(
    shard: &std::rc::Rc<Shard>,
    request: FetchRequest,
    id: i32,
    epoch: i32,
    uses_topic_ids: bool,
    limits: FetchLimits,
) -> FetchResponse {
    let changed = partitions_of(&request.topics, uses_topic_ids);
    let forgotten: Vec<(TopicRef, i32)> = request
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            let topic = topic_ref(&t.topic, t.topic_id, uses_topic_ids);
            t.partitions.iter().map(move |p| (topic.clone(), *p))
        })
        .collect();
    let resolver = fetch::ImageResolver {
        shard,
        image: shard.image(),
    };
    let begun = shard.fetch_sessions.borrow_mut().begin_incremental(
        &IncrementalRequest {
            id,
            epoch,
            uses_topic_ids,
            changed: &changed,
            forgotten: &forgotten,
        },
        &resolver,
        Instant::now(),
    );
    let session_fetch = match begun {
        Ok(f) => f,
        Err(code) => return FetchResponse::default().with_error_code(code.code()),
    };
    let answers = fetch::fetch_incremental(shard, session_fetch, limits).await;
    let (inputs, outputs): (Vec<FetchInput>, Vec<FetchOutput>) = answers
        .into_iter()
        .map(|(topic, partition, out)| {
            let input = FetchInput {
                topic,
                partition,
                fetch_offset: 0,
                partition_max_bytes: 0,
                current_leader_epoch: -1,
            };
            (input, out)
        })
        .unzip();
    let all = vec![true; inputs.len()];
    FetchResponse::default()
        .with_session_id(id)
        .with_responses(responses(shard, &inputs, outputs, &all))
}

fn topic_ref(name: &TopicName, id: uuid::Uuid, uses_topic_ids: bool) -> TopicRef {
    if uses_topic_ids {
        TopicRef::Id(id)
    } else {
        TopicRef::Name(name.0.to_string())
    }
}

/// The partitions a request names, in its order.
fn partitions_of(topics: &[FetchTopic], uses_topic_ids: bool) -> Vec<FetchInput> {
    topics
        .iter()
        .flat_map(|topic| {
            let topic_ref = topic_ref(&topic.topic, topic.topic_id, uses_topic_ids);
            topic.partitions.iter().map(move |p| FetchInput {
                topic: topic_ref.clone(),
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes,
                current_leader_epoch: p.current_leader_epoch,
            })
        })
        .collect()
}

/// The response's topics: the included partitions, consecutive partitions of one topic under
/// one entry. Counts what they carry in `shard`'s metrics.
fn responses(
    shard: &Shard,
    inputs: &[FetchInput],
    outputs: Vec<FetchOutput>,
    include: &[bool],
) -> Vec<FetchableTopicResponse> {
    let image = shard.image();
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    let mut last: Option<&TopicRef> = None;
    for ((input, out), _) in inputs
        .iter()
        .zip(outputs)
        .zip(include)
        .filter(|(_, included)| **included)
    {
        if let Some(code) = out.error {
            shard
                .metrics
                .record_error(ApiKey::Fetch as i16, code.code());
        } else if let Some(topic) = sluice_core::resolve_topic(&image, &input.topic) {
            shard
                .metrics
                .record_fetched(&topic.name, input.partition, out.records.len() as u64);
        }
        let data = PartitionData::default()
            .with_partition_index(input.partition)
            .with_error_code(out.error.map_or(0, |e| e.code()))
            .with_high_watermark(out.high_watermark)
            .with_last_stable_offset(out.last_stable_offset)
            .with_log_start_offset(out.log_start_offset)
            .with_aborted_transactions(out.aborted_transactions.map(|aborted| {
                aborted
                    .into_iter()
                    .map(|a| {
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(a.producer_id))
                            .with_first_offset(a.first_offset)
                    })
                    .collect()
            }))
            .with_records(Some(out.records));
        match (last, topics.last_mut()) {
            (Some(topic), Some(entry)) if *topic == input.topic => entry.partitions.push(data),
            _ => {
                let entry = match &input.topic {
                    TopicRef::Id(id) => FetchableTopicResponse::default().with_topic_id(*id),
                    TopicRef::Name(name) => FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_string(name.clone()))),
                };
                topics.push(entry.with_partitions(vec![data]));
            }
        }
        last = Some(&input.topic);
    }
    topics
}
