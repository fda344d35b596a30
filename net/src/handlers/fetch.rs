//! Fetch (key 1): stored batches, unchanged, from the owning shards; long poll with
//! `max_wait_ms` and `min_bytes`; request (`max_bytes`) and partition (`partition_max_bytes`)
//! limits. v13+ names topics by id.
//!
//! Fetch sessions (KIP-227) are not kept: every response carries session id 0, which tells
//! the client to send full requests; a request naming a session gets
//! FETCH_SESSION_ID_NOT_FOUND. Isolation levels read the same data (no transactions yet: the
//! last stable offset is the high watermark).

use std::time::Duration;

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use sluice_core::fetch::{self, FetchInput, FetchLimits};
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

/// Longest long poll honoured, whatever the client asks.
const MAX_WAIT_LIMIT: Duration = Duration::from_secs(30);

pub async fn handle(request: FetchRequest, version: i16, ctx: &Context) -> FetchResponse {
    if request.session_id != 0 {
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code());
    }
    let mut inputs = Vec::new();
    for topic in &request.topics {
        let topic_ref = if version >= TOPIC_IDS_FROM {
            TopicRef::Id(topic.topic_id)
        } else {
            TopicRef::Name(topic.topic.0.to_string())
        };
        for p in &topic.partitions {
            inputs.push(FetchInput {
                topic: topic_ref.clone(),
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes,
            });
        }
    }
    let limits = FetchLimits {
        max_wait: Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
            .min(MAX_WAIT_LIMIT),
        min_bytes: usize::try_from(request.min_bytes).unwrap_or(0),
        max_bytes: usize::try_from(request.max_bytes).unwrap_or(0),
    };
    let mut outputs = fetch::fetch(&ctx.shard, inputs, limits).await.into_iter();
    let responses = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let out = outputs.next().expect("one output per partition");
                    PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_error_code(out.error.map_or(0, |e| e.code()))
                        .with_high_watermark(out.high_watermark)
                        .with_last_stable_offset(out.high_watermark)
                        .with_log_start_offset(out.log_start_offset)
                        .with_records(Some(out.records))
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}
