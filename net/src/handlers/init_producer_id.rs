//! InitProducerId (key 22): a producer id and epoch for an idempotent producer. With its
//! current id and epoch (v3+, KIP-360) the producer gets the same id at the next epoch. With a
//! transactional id, the transaction coordinator answers (`sluice_core::transactions`): it
//! takes WRITE on the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED otherwise).

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use sluice_core::{controller, transactions, ResponseError};

use crate::apis::ApiRange;
use crate::handlers::Context;
use sluice_core::acls::{Operation, ResourceType};

pub const RANGE: ApiRange = ApiRange {
    key: ApiKey::InitProducerId,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(request: InitProducerIdRequest, ctx: &Context) -> InitProducerIdResponse {
    let failed = |code: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(id) = request.transactional_id.filter(|id| !id.0.is_empty()) {
        let id = id.0.to_string();
        if !ctx.allows(Operation::WRITE, ResourceType::TransactionalId, &id) {
            return failed(ResponseError::TransactionalIdAuthorizationFailed);
        }
        let current =
            (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
        return match transactions::init_producer_id(
            &ctx.shard,
            id,
            request.transaction_timeout_ms,
            current,
        )
        .await
        {
            Ok((id, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch),
            Err(code) => failed(code),
        };
    }
    // An idempotent producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic
    // (KIP-679).
    if !ctx.allows_cluster(Operation::IDEMPOTENT_WRITE)
        && !ctx.allows_some(Operation::WRITE, ResourceType::Topic)
    {
        return failed(ResponseError::ClusterAuthorizationFailed);
    }
    let current =
        (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
    match controller::init_producer_id(&ctx.shard, current).await {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(e) => failed(e.code),
    }
}
