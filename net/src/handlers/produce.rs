//! Produce (key 0): append each partition's record batches on its owning shard.
//!
//! Records stay slices of the request frame all the way to the log's write buffer. acks=0 gets
//! no response (the connection writes nothing for it); acks=1 is answered once the batches are
//! in the log; acks=-1 once they are fdatasync'ed. Any other acks value fails every partition
//! with INVALID_REQUIRED_ACKS. v13 names topics by id. A transactional batch needs the
//! request's transactional id and WRITE on it (TRANSACTIONAL_ID_AUTHORIZATION_FAILED), and,
//! with `transaction_partition_verification_enable`, its partition in the producer's ongoing
//! transaction before it opens one there (KIP-890 part 1: INVALID_TXN_STATE otherwise).

use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::{Operation, ResourceType};
use sluice_core::produce::{self, Acks, OrderLink, ProduceInput, ProduceOutput};
use sluice_core::{ResponseError, TopicRef};

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::Produce,
    min_version: 3,
    max_version: 13,
};

/// Produce v13 names topics by id (KIP-516).
const TOPIC_IDS_FROM: i16 = 13;

/// What a Produce request did, for its span: partitions addressed, the first partition error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub partitions: usize,
    pub first_error: Option<i16>,
}

/// The response (`None` for acks=0) and its outcome. The appends land after those of `link`'s
/// previous request.
pub async fn handle(
    mut request: ProduceRequest,
    version: i16,
    ctx: &Context,
    link: OrderLink,
) -> (Option<ProduceResponse>, Outcome) {
    // Topics the principal may not WRITE are answered TOPIC_AUTHORIZATION_FAILED and take no
    // part in the rest (an unknown topic id is left to the produce path's own answer).
    let denied: Vec<TopicProduceData> = if ctx.has_authorizer() {
        let image = (version >= TOPIC_IDS_FROM).then(|| ctx.shard.image());
        let (allowed, denied) = std::mem::take(&mut request.topic_data)
            .into_iter()
            .partition(|topic| {
                let name = match &image {
                    Some(image) => match image.topic_by_id(topic.topic_id) {
                        Some(t) => t.name.clone(),
                        None => return true,
                    },
                    None => topic.name.0.to_string(),
                };
                ctx.allows_topic(Operation::WRITE, &name)
            });
        request.topic_data = allowed;
        denied
    } else {
        Vec::new()
    };
    let acks = Acks::from_wire(request.acks);
    let mut inputs = Vec::new();
    for topic in &request.topic_data {
        let topic_ref = if version >= TOPIC_IDS_FROM {
            TopicRef::Id(topic.topic_id)
        } else {
            TopicRef::Name(topic.name.0.to_string())
        };
        for partition in &topic.partition_data {
            inputs.push(ProduceInput {
                topic: topic_ref.clone(),
                partition: partition.index,
                records: partition.records.clone(),
            });
        }
    }
    let outputs = match acks {
        Some(acks) => {
            // A transactional batch needs WRITE on the request's transactional id (Kafka's
            // rule); denied, the id is not passed on and such batches are refused
            // TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
            let transactional_id = request
                .transactional_id
                .as_ref()
                .map(|id| id.0.to_string())
                .filter(|id| ctx.allows(Operation::WRITE, ResourceType::TransactionalId, id));
            produce::produce(&ctx.shard, acks, inputs, transactional_id, link).await
        }
        None => inputs
            .iter()
            .map(|_| ProduceOutput {
                error: Some(ResponseError::InvalidRequiredAcks),
                message: Some(format!("acks must be 0, 1 or -1, not {}", request.acks)),
                base_offset: -1,
                log_start_offset: -1,
                record_errors: Vec::new(),
            })
            .collect(),
    };
    count(ctx, &request, version, &outputs);
    let denied_code = ResponseError::TopicAuthorizationFailed.code();
    let outcome = Outcome {
        partitions: outputs.len() + denied.iter().map(|t| t.partition_data.len()).sum::<usize>(),
        first_error: outputs
            .iter()
            .find_map(|o| o.error.map(|e| e.code()))
            .or((!denied.is_empty()).then_some(denied_code)),
    };
    for topic in &denied {
        for _ in &topic.partition_data {
            ctx.shard
                .metrics
                .record_error(ApiKey::Produce as i16, denied_code);
        }
    }
    if acks == Some(Acks::None) {
        return (None, outcome);
    }
    let mut outputs = outputs.into_iter();
    let refused = denied.into_iter().map(|topic| {
        let partition_responses = topic
            .partition_data
            .iter()
            .map(|p| {
                PartitionProduceResponse::default()
                    .with_index(p.index)
                    .with_error_code(denied_code)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1)
            })
            .collect();
        TopicProduceResponse::default()
            .with_name(topic.name)
            .with_topic_id(topic.topic_id)
            .with_partition_responses(partition_responses)
    });
    let responses = request
        .topic_data
        .into_iter()
        .map(|topic| {
            let partition_responses = topic
                .partition_data
                .iter()
                .map(|p| {
                    let out = outputs.next().expect("one output per partition");
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(out.error.map_or(0, |e| e.code()))
                        .with_error_message(out.message.map(StrBytes::from_string))
                        .with_base_offset(out.base_offset)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(out.log_start_offset)
                        .with_record_errors(
                            out.record_errors
                                .into_iter()
                                .map(|(i, why)| {
                                    BatchIndexAndErrorMessage::default()
                                        .with_batch_index(i)
                                        .with_batch_index_error_message(Some(
                                            StrBytes::from_string(why),
                                        ))
                                })
                                .collect(),
                        )
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
                .with_partition_responses(partition_responses)
        })
        .chain(refused)
        .collect();
    (
        Some(ProduceResponse::default().with_responses(responses)),
        outcome,
    )
}

/// Counts each partition's appended records and bytes, or its error, in the shard's metrics
/// (`outputs` in the request's partition order).
fn count(ctx: &Context, request: &ProduceRequest, version: i16, outputs: &[ProduceOutput]) {
    let metrics = &ctx.shard.metrics;
    // Only topic ids need the catalog image to be named.
    let image = (version >= TOPIC_IDS_FROM).then(|| ctx.shard.image());
    let mut outputs = outputs.iter();
    for topic in &request.topic_data {
        let name = match &image {
            Some(image) => image.topic_by_id(topic.topic_id).map(|t| t.name.as_str()),
            None => Some(topic.name.0.as_str()),
        };
        for (partition, out) in topic.partition_data.iter().zip(outputs.by_ref()) {
            match (out.error, name, &partition.records) {
                (Some(code), _, _) => metrics.record_error(ApiKey::Produce as i16, code.code()),
                (None, Some(name), Some(records)) => {
                    let count = sluice_storage::batch::read_header(records, usize::MAX)
                        .map_or(0, |h| u64::try_from(h.record_count).unwrap_or(0));
                    metrics.record_produced(name, partition.index, count, records.len() as u64);
                }
                _ => {}
            }
        }
    }
}
