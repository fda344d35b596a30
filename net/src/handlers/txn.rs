//! The transactional producer's APIs, answered by the transaction coordinator
//! (`sluice_core::transactions`): AddPartitionsToTxn (key 24, v0–3, the client's versions;
//! v4+ carry the brokers' batched verification) and EndTxn (key 26, v0–3). Each takes WRITE on
//! the transactional id, as Kafka's do (TRANSACTIONAL_ID_AUTHORIZATION_FAILED otherwise);
//! AddPartitionsToTxn also WRITE on each topic (TOPIC_AUTHORIZATION_FAILED for those denied,
//! OPERATION_NOT_ATTEMPTED for the rest).

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, EndTxnRequest, EndTxnResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::{Operation, ResourceType};
use sluice_core::transactions;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::Context;

pub const ADD_PARTITIONS_RANGE: ApiRange = ApiRange {
    key: ApiKey::AddPartitionsToTxn,
    min_version: 0,
    max_version: 3,
};

pub const END_RANGE: ApiRange = ApiRange {
    key: ApiKey::EndTxn,
    min_version: 0,
    max_version: 3,
};

pub async fn add_partitions(
    request: AddPartitionsToTxnRequest,
    ctx: &Context,
) -> AddPartitionsToTxnResponse {
    let id = request.v3_and_below_transactional_id.0.to_string();
    let partitions: Vec<(String, i32)> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions.iter().map(move |p| (name.clone(), *p))
        })
        .collect();
    let answers: Vec<((String, i32), Option<ResponseError>)> =
        if !ctx.allows(Operation::WRITE, ResourceType::TransactionalId, &id) {
            every(
                partitions,
                Some(ResponseError::TransactionalIdAuthorizationFailed),
            )
        } else if partitions
            .iter()
            .any(|(topic, _)| !ctx.allows_topic(Operation::WRITE, topic))
        {
            partitions
                .into_iter()
                .map(|(topic, p)| {
                    let code = if ctx.allows_topic(Operation::WRITE, &topic) {
                        ResponseError::OperationNotAttempted
                    } else {
                        ResponseError::TopicAuthorizationFailed
                    };
                    ((topic, p), Some(code))
                })
                .collect()
        } else {
            transactions::add_partitions(
                &ctx.shard,
                id,
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
                partitions,
            )
            .await
        };
    let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for ((topic, partition), code) in answers {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(partition)
            .with_partition_error_code(code.map_or(0, |c| c.code()));
        match topics.last_mut() {
            Some(last) if last.name.0.as_str() == topic => last.results_by_partition.push(result),
            _ => topics.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(TopicName(StrBytes::from_string(topic)))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics)
}

fn every(
    partitions: Vec<(String, i32)>,
    code: Option<ResponseError>,
) -> Vec<((String, i32), Option<ResponseError>)> {
    partitions.into_iter().map(|tp| (tp, code)).collect()
}

pub async fn end(request: EndTxnRequest, ctx: &Context) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let outcome = if ctx.allows(Operation::WRITE, ResourceType::TransactionalId, &id) {
        transactions::end_txn(
            &ctx.shard,
            id,
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
        .await
    } else {
        Err(ResponseError::TransactionalIdAuthorizationFailed)
    };
    EndTxnResponse::default().with_error_code(outcome.err().map_or(0, |c| c.code()))
}
