//! What operators' tools ask of transactions (`kafka-transactions.sh`, admin clients, `sluice
//! txn`), answered from the transaction coordinators and the partitions
//! (`sluice_core::transactions`):
//!
//! - DescribeTransactions (key 65, v0): each transactional id's state, producer, timeout, start
//!   and partitions. DESCRIBE on the id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED otherwise);
//!   TRANSACTIONAL_ID_NOT_FOUND for an id no coordinator knows.
//! - ListTransactions (key 66, v0–2): every id with its producer and state, filtered by state
//!   (names not known come back in `unknown_state_filters`), producer id, v1's duration (only
//!   transactions open longer than it) and v2's id pattern (a regular expression the whole id
//!   must match; INVALID_REGULAR_EXPRESSION if it does not compile). Only ids the principal may
//!   DESCRIBE are listed, as Kafka does.
//! - WriteTxnMarkers (key 27, v1): a coordinator's markers, and the way
//!   `kafka-transactions.sh abort` ends a hanging transaction (one no coordinator will end)
//!   with the producer id, epoch and coordinator epoch DescribeProducers shows. CLUSTER_ACTION
//!   on the cluster (CLUSTER_AUTHORIZATION_FAILED otherwise), as Kafka's inter-broker API.

use std::time::Duration;

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as Listed;
use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TransactionalId, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::{Operation, ResourceType};
use sluice_core::transactions;
use sluice_core::ResponseError;

use crate::apis::ApiRange;
use crate::handlers::{runs_by_topic, Context};

pub const DESCRIBE_RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeTransactions,
    min_version: 0,
    max_version: 0,
};

pub const LIST_RANGE: ApiRange = ApiRange {
    key: ApiKey::ListTransactions,
    min_version: 0,
    max_version: 2,
};

pub const WRITE_MARKERS_RANGE: ApiRange = ApiRange {
    key: ApiKey::WriteTxnMarkers,
    min_version: 1,
    max_version: 1,
};

/// Every state a transaction can be listed in (Kafka's names, also those this coordinator
/// never holds a transaction in, so filtering by them is not "unknown").
const KAFKA_STATES: [&str; 8] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub async fn describe(
    request: DescribeTransactionsRequest,
    ctx: &Context,
) -> DescribeTransactionsResponse {
    let ids: Vec<String> = request
        .transactional_ids
        .iter()
        .map(|id| id.0.to_string())
        .collect();
    let allowed: Vec<bool> = ids
        .iter()
        .map(|id| ctx.allows(Operation::DESCRIBE, ResourceType::TransactionalId, id))
        .collect();
    let asked: Vec<String> = ids
        .iter()
        .zip(&allowed)
        .filter(|(_, allowed)| **allowed)
        .map(|(id, _)| id.clone())
        .collect();
    let mut found = transactions::describe(&ctx.shard, asked).await.into_iter();
    let states = ids
        .into_iter()
        .zip(allowed)
        .map(|(id, allowed)| {
            let state = TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id)));
            let answer = if allowed {
                found.next().expect("one answer per allowed id")
            } else {
                Err(ResponseError::TransactionalIdAuthorizationFailed)
            };
            match answer {
                Err(code) => state.with_error_code(code.code()),
                Ok(record) => {
                    let topics = runs_by_topic(record.partitions)
                        .into_iter()
                        .map(|(topic, partitions)| {
                            TopicData::default()
                                .with_topic(topic)
                                .with_partitions(partitions)
                        })
                        .collect();
                    state
                        .with_transaction_state(StrBytes::from_static_str(record.status.name()))
                        .with_transaction_timeout_ms(record.timeout_ms)
                        .with_transaction_start_time_ms(record.start_ms)
                        .with_producer_id(ProducerId(record.producer_id))
                        .with_producer_epoch(record.producer_epoch)
                        .with_topics(topics)
                }
            }
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub async fn list(request: ListTransactionsRequest, ctx: &Context) -> ListTransactionsResponse {
    let response = ListTransactionsResponse::default();
    let pattern = match request.transactional_id_pattern.as_ref() {
        Some(p) if !p.is_empty() => match regex::Regex::new(&format!("^(?:{})$", p.as_str())) {
            Ok(pattern) => Some(pattern),
            Err(_) => {
                return response.with_error_code(ResponseError::InvalidRegularExpression.code())
            }
        },
        _ => None,
    };
    let unknown_state_filters: Vec<StrBytes> = request
        .state_filters
        .iter()
        .filter(|s| !KAFKA_STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let all = match transactions::list(&ctx.shard).await {
        Ok(all) => all,
        Err(code) => return response.with_error_code(code.code()),
    };
    let now = sluice_storage::types::now_ms();
    // v1+: -1 (or any negative) lists all; otherwise transactions started longer ago.
    let open_longer_than = (request.duration_filter >= 0)
        .then(|| Duration::from_millis(request.duration_filter as u64));
    let states = all
        .into_iter()
        .filter(|(_, record)| {
            request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|s| s.as_str() == record.status.name())
        })
        .filter(|(_, record)| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .iter()
                    .any(|p| p.0 == record.producer_id)
        })
        .filter(|(_, record)| {
            // As Kafka: against the start of the id's last transaction, whatever its state.
            open_longer_than.is_none_or(|longer| {
                now.saturating_sub(record.start_ms) > longer.as_millis() as i64
            })
        })
        .filter(|(id, _)| pattern.as_ref().is_none_or(|p| p.is_match(id)))
        .filter(|(id, _)| {
            ctx.allows_unaudited(Operation::DESCRIBE, ResourceType::TransactionalId, id)
        })
        .map(|(id, record)| {
            Listed::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id)))
                .with_producer_id(ProducerId(record.producer_id))
                .with_transaction_state(StrBytes::from_static_str(record.status.name()))
        })
        .collect();
    response
        .with_unknown_state_filters(unknown_state_filters)
        .with_transaction_states(states)
}

pub async fn write_markers(
    request: WriteTxnMarkersRequest,
    ctx: &Context,
) -> WriteTxnMarkersResponse {
    let refused = (!ctx.allows_cluster(Operation::CLUSTER_ACTION))
        .then_some(ResponseError::ClusterAuthorizationFailed);
    sluice_core::peer_calls::write_txn_markers(&ctx.shard, request, refused).await
}
