//! The transactional producer's APIs, answered by the transaction coordinator
//! (`sluice_core::transactions`): AddPartitionsToTxn (key 24, v0–3, the client's versions;
//! v4+ carry the brokers' batched verification), AddOffsetsToTxn (key 25, v0–3) and EndTxn
//! (key 26, v0–3); and TxnOffsetCommit (key 28, v0–3), answered by the group coordinator
//! (`sluice_core::groups::txn_commit_offsets`). Each takes WRITE on the transactional id, as
//! Kafka's do (TRANSACTIONAL_ID_AUTHORIZATION_FAILED otherwise); AddPartitionsToTxn also WRITE
//! on each topic (TOPIC_AUTHORIZATION_FAILED for those denied, OPERATION_NOT_ATTEMPTED for the
//! rest), AddOffsetsToTxn and TxnOffsetCommit READ on the group (GROUP_AUTHORIZATION_FAILED).

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, EndTxnRequest, EndTxnResponse, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use sluice_core::acls::{Operation, ResourceType};
use sluice_core::groups::{self, Committed};
use sluice_core::transactions;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::offset_commit::committed;
use crate::handlers::{runs_by_topic, Context};

pub const ADD_PARTITIONS_RANGE: ApiRange = ApiRange {
    key: ApiKey::AddPartitionsToTxn,
    min_version: 0,
    max_version: 3,
};

pub const ADD_OFFSETS_RANGE: ApiRange = ApiRange {
    key: ApiKey::AddOffsetsToTxn,
    min_version: 0,
    max_version: 3,
};

pub const OFFSET_COMMIT_RANGE: ApiRange = ApiRange {
    key: ApiKey::TxnOffsetCommit,
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
    let topics = runs_by_topic(answers.into_iter().map(|((topic, partition), code)| {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(partition)
            .with_partition_error_code(code.map_or(0, |c| c.code()));
        (topic, result)
    }))
    .into_iter()
    .map(|(name, results)| {
        AddPartitionsToTxnTopicResult::default()
            .with_name(name)
            .with_results_by_partition(results)
    })
    .collect();
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

pub async fn add_offsets(
    request: AddOffsetsToTxnRequest,
    ctx: &Context,
) -> AddOffsetsToTxnResponse {
    let id = request.transactional_id.0.to_string();
    let group = request.group_id.0.to_string();
    let outcome = if !ctx.allows(Operation::WRITE, ResourceType::TransactionalId, &id) {
        Err(ResponseError::TransactionalIdAuthorizationFailed)
    } else if !ctx.allows_group(Operation::READ, &group) {
        Err(ResponseError::GroupAuthorizationFailed)
    } else {
        transactions::add_offsets(
            &ctx.shard,
            id,
            request.producer_id.0,
            request.producer_epoch,
            &group,
        )
        .await
    };
    AddOffsetsToTxnResponse::default().with_error_code(outcome.err().map_or(0, |c| c.code()))
}

pub async fn commit_offsets(
    request: TxnOffsetCommitRequest,
    ctx: &Context,
) -> TxnOffsetCommitResponse {
    let id = request.transactional_id.0.to_string();
    let group = request.group_id.0.to_string();
    let now = sluice_storage::types::now_ms();
    let offsets: Vec<(String, i32, Committed)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    committed(
                        p.committed_offset,
                        p.committed_leader_epoch,
                        p.committed_metadata.as_ref(),
                        now,
                    ),
                )
            })
        })
        .collect();
    let keys: Vec<(String, i32)> = offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
    let codes = if !ctx.allows(Operation::WRITE, ResourceType::TransactionalId, &id) {
        vec![Some(ResponseError::TransactionalIdAuthorizationFailed); keys.len()]
    } else if !ctx.allows_group(Operation::READ, &group) {
        vec![Some(ResponseError::GroupAuthorizationFailed); keys.len()]
    } else {
        groups::txn_commit_offsets(
            &ctx.shard,
            groups::TxnOffsetCommit {
                transactional_id: id,
                group_id: group,
                producer_id: request.producer_id.0,
                producer_epoch: request.producer_epoch,
                generation: request.generation_id,
                member_id: request.member_id.to_string(),
                offsets,
            },
        )
        .await
    };
    let topics = runs_by_topic(
        keys.into_iter()
            .zip(codes)
            .map(|((topic, partition), code)| {
                let result = TxnOffsetCommitResponsePartition::default()
                    .with_partition_index(partition)
                    .with_error_code(code.map_or(0, |c| c.code()));
                (topic, result)
            }),
    )
    .into_iter()
    .map(|(name, partitions)| {
        TxnOffsetCommitResponseTopic::default()
            .with_name(name)
            .with_partitions(partitions)
    })
    .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}
